//! `diskmount inspect` on a 100 GiB sparse raw image with a GPT (128-entry
//! table): wall time, the bytes the process read (`rchar` of
//! `/proc/<pid>/io`, read after it exited and before it is reaped) and,
//! under strace, exactly which reads hit the image. Two layouts: 4
//! partitions (the first holds ext4), and all 128 entries in use. `sfdisk
//! --json` (which reads the table only) is the reference.
//!
//! Run as root: `cargo bench --bench inspect` (`-- --iterations N`, default
//! 20). Prints the tables, writes `target/bench-results/inspect.json`.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Row, Table, run, stats};
use nix::sys::wait::{Id, WaitPidFlag, waitid};

const DISKMOUNT: &str = env!("CARGO_BIN_EXE_diskmount");

/// A 100 GiB sparse image with a GPT of `parts` partitions of 64 MiB, the
/// first one ext4.
fn image(path: &Path, parts: usize, scratch: &Path) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(100 << 30)
        .unwrap();
    let mut script = String::from("label: gpt\ntable-length: 128\n");
    for _ in 0..parts {
        script.push_str("size=64MiB, type=L\n");
    }
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk");
    // Partition 1 starts at 1 MiB (sfdisk's default alignment).
    let fs = scratch.join("p1.ext4");
    common::ext4_image(&fs, 64 << 20);
    let mut src = std::fs::File::open(&fs).unwrap();
    let mut dst = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    dst.seek(SeekFrom::Start(1 << 20)).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
    std::fs::remove_file(&fs).unwrap();
}

/// Runs `cmd` to its end; returns wall ms and `rchar` (bytes read through
/// read-like system calls, files and pipes alike).
fn measure(cmd: &mut Command) -> (f64, u64) {
    let t = Instant::now();
    let child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Wait for the exit but leave the zombie, whose io counters stay.
    waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).unwrap();
    let elapsed = common::ms(t.elapsed());
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let rchar = io
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut child = child;
    assert!(child.wait().unwrap().success(), "{cmd:?}");
    (elapsed, rchar)
}

/// Under strace: (number of reads of the image, bytes, largest offset).
fn image_reads(
    img: &Path,
    args: &[&str],
    program: &str,
    scratch: &Path,
) -> Option<(usize, u64, u64)> {
    let log = scratch.join("strace.log");
    let ok = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=read,pread64,readv,preadv,preadv2",
            "-o",
        ])
        .arg(&log)
        .arg(program)
        .args(args)
        .arg(img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let text = std::fs::read_to_string(&log).ok()?;
    let name = format!("<{}>", img.display());
    let (mut n, mut bytes, mut last) = (0, 0, 0);
    for line in text.lines().filter(|l| l.contains(&name)) {
        let Some(ret) = line
            .rsplit("= ")
            .next()
            .and_then(|r| r.trim().parse::<u64>().ok())
        else {
            continue;
        };
        n += 1;
        bytes += ret;
        if line.contains("pread64(")
            && let Some(off) = line
                .trim_end()
                .rsplit(')')
                .nth(1)
                .and_then(|s| s.rsplit(", ").next())
                .and_then(|o| o.trim().parse::<u64>().ok())
        {
            last = last.max(off + ret);
        }
    }
    Some((n, bytes, last))
}

fn main() {
    common::require_root("inspect");
    let iterations: usize = common::arg("--iterations").unwrap_or(20);
    let machine = common::print_machine("inspect");
    let dir = tempfile::Builder::new()
        .prefix("diskmount-bench-")
        .tempdir()
        .unwrap();
    let have_strace = Command::new("strace").arg("-V").output().is_ok();
    let mut tables = Vec::new();
    for parts in [4usize, 128] {
        let img = dir.path().join(format!("gpt{parts}.img"));
        image(&img, parts, dir.path());
        let on_disk = run(Command::new("du").args(["-k"]).arg(&img));
        println!(
            "\n{}: 100 GiB apparent, {} KiB allocated, GPT with {parts} partitions",
            img.display(),
            on_disk.split_whitespace().next().unwrap_or("?")
        );
        let variants: [(&str, &str, Vec<&str>); 3] = [
            ("diskmount inspect", DISKMOUNT, vec!["inspect"]),
            (
                "diskmount inspect --json",
                DISKMOUNT,
                vec!["inspect", "--json"],
            ),
            ("sfdisk --json (table only)", "sfdisk", vec!["--json"]),
        ];
        let mut wall: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        let mut rchar: Vec<u64> = vec![0; variants.len()];
        for _ in 0..iterations {
            for (i, (_, prog, args)) in variants.iter().enumerate() {
                let (ms, r) = measure(Command::new(prog).args(args).arg(&img));
                wall[i].push(ms);
                rchar[i] = r;
            }
        }
        let mut table = Table::new(
            &format!("inspect-gpt{parts}"),
            &format!(
                "inspect a 100 GiB sparse raw image, GPT with {parts} partitions, {iterations} runs each, interleaved"
            ),
            "ms",
            "vs diskmount inspect",
        );
        for (i, (name, prog, args)) in variants.iter().enumerate() {
            let mut extra = vec![(
                "rchar (all reads) KiB".to_string(),
                format!("{:.1}", rchar[i] as f64 / 1024.0),
            )];
            let reads = if have_strace {
                image_reads(&img, args, prog, dir.path())
            } else {
                None
            };
            extra.push((
                "reads of the image: count, KiB, highest byte".into(),
                reads.map_or("strace missing".into(), |(n, b, last)| {
                    format!("{n}, {:.1}, {last}", b as f64 / 1024.0)
                }),
            ));
            table.rows.push(Row {
                name: name.to_string(),
                stats: stats(wall[i].clone()),
                extra,
            });
        }
        table.print();
        tables.push(table);
    }
    common::write_results("inspect", &machine, &tables);
}

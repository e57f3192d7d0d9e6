//! Memory: the peak resident set of `diskmount run IMAGE -- true` (and of
//! the util-linux processes doing the same job: `mount -o loop`, `umount`),
//! and the resident set of this process over many library cycles, which
//! must not grow (nor the open descriptors).
//!
//! The peak comes from `getrusage(RUSAGE_CHILDREN).ru_maxrss` in a fresh
//! copy of this benchmark that runs only the measured command, so nothing
//! else it ever waited for counts.
//!
//! Run as root: `cargo bench --bench memory` (`-- --cycles N`, default
//! 1000; `--runs N` for the peak, default 10). Prints the tables, writes
//! `target/bench-results/memory.json`.

mod common;

use std::process::{Command, Stdio};

use common::{Row, Stats, Table, run, stats};
use nix::sys::resource::{UsageWho, getrusage};

const DISKMOUNT: &str = env!("CARGO_BIN_EXE_diskmount");

/// `VmRSS` of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Child mode: run each `;`-separated command in turn, then print the
/// largest peak RSS (KiB) of any of them.
fn peak_of_children(args: &[String]) {
    for cmd in args.split(|a| a == ";") {
        run(Command::new(&cmd[0]).args(&cmd[1..]).stdout(Stdio::null()));
    }
    println!(
        "{}",
        getrusage(UsageWho::RUSAGE_CHILDREN).unwrap().max_rss()
    );
}

/// Peak RSS (KiB) of the commands, measured in a fresh copy of this binary.
fn peak(cmds: &[&[&str]]) -> f64 {
    let mut args = vec!["--peak-of".to_string()];
    for (i, c) in cmds.iter().enumerate() {
        if i > 0 {
            args.push(";".into());
        }
        args.extend(c.iter().map(|s| s.to_string()));
    }
    let out = run(Command::new(std::env::current_exe().unwrap()).args(&args));
    out.trim().parse().unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--peak-of") {
        peak_of_children(&args[at + 1..]);
        return;
    }
    common::require_root("memory");
    let cycles: usize = common::arg("--cycles").unwrap_or(1000);
    let runs: usize = common::arg("--runs").unwrap_or(10);
    let machine = common::print_machine("memory");
    let dir = tempfile::Builder::new()
        .prefix("diskmount-bench-")
        .tempdir()
        .unwrap();
    let img = dir.path().join("mem.img");
    common::ext4_image(&img, 64 << 20);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let img_s = img.to_str().unwrap();
    let mnt_s = mnt.to_str().unwrap();

    let (mut dm, mut ul) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        dm.push(peak(&[&[DISKMOUNT, "run", img_s, "--", "true"]]));
        ul.push(peak(&[
            &["mount", "-o", "loop", img_s, mnt_s],
            &["umount", mnt_s],
        ]));
    }
    let mut peaks = Table::new(
        "peak-rss",
        &format!("peak resident set (ru_maxrss), {runs} runs each"),
        "KiB",
        "vs diskmount run",
    );
    peaks.push("diskmount run IMAGE -- true", stats(dm));
    peaks.push("util-linux: mount -o loop, umount (largest)", stats(ul));
    peaks.print();

    // In-process growth over many cycles.
    for _ in 0..10 {
        common::library_cycle(&img, &mnt);
    }
    let mut samples: Vec<(usize, u64, usize)> = Vec::new();
    for i in 1..=cycles {
        common::library_cycle(&img, &mnt);
        if i == 100 || i == cycles / 2 || i == cycles {
            samples.push((i, rss_kib(), open_fds()));
        }
    }
    let mut growth = Table::new(
        "rss-growth",
        &format!("this process's VmRSS after N library cycles (of {cycles})"),
        "KiB",
        "vs after 100",
    );
    for (i, rss, fds) in &samples {
        let v = *rss as f64;
        growth.rows.push(Row {
            name: format!("after {i} cycles"),
            stats: Stats {
                median: v,
                p10: v,
                p90: v,
                n: 1,
            },
            extra: vec![("open descriptors".into(), fds.to_string())],
        });
    }
    growth.print();
    let first = samples.first().unwrap();
    let last = samples.last().unwrap();
    println!(
        "\nRSS growth from cycle {} to {}: {} KiB; descriptors {} -> {}",
        first.0,
        last.0,
        last.1 as i64 - first.1 as i64,
        first.2,
        last.2
    );
    common::write_results("memory", &machine, &[peaks, growth]);
    common::assert_clean(dir.path());
}

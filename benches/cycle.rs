//! One full cycle (attach, map whole disk, mount, unmount, unmap, detach) of
//! a 64 MiB ext4 raw image, three ways side by side in one run:
//!
//! - `diskmount`: the library;
//! - `util-linux`: `losetup --find --show`, `mount`, `umount`,
//!   `losetup --detach`, as processes, the way Nova does it;
//! - `syscalls`: the minimal hand-written sequence of the same system calls
//!   (the floor), with and without the flushes the library does for
//!   durability.
//!
//! Run as root: `cargo bench --bench cycle` (`-- --iterations N` to change
//! the count). Prints a table of medians and spread.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use diskmount::sys::{block as blk, loop_dev};
use diskmount::{Backend, Format, Fuse, Image, Loop, MountOptions, Nbd, Partition, Unattached};
use nix::mount::{MntFlags, MsFlags};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn library(img: &Path, mnt: &Path) {
    Unattached::<Loop>::new(Image::file(img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(mnt, &MountOptions::default())
        .unwrap()
        .close()
        .unwrap();
}

fn library_image<B: Backend>(image: &Image, mnt: &Path) {
    Unattached::<B>::new(image.clone())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(mnt, &MountOptions::default())
        .unwrap()
        .close()
        .unwrap();
}

fn util_linux(img: &Path, mnt: &Path) {
    let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(img));
    let dev = dev.trim();
    run(Command::new("mount").arg(dev).arg(mnt));
    run(Command::new("umount").arg(mnt));
    run(Command::new("losetup").args(["--detach", dev]));
}

fn syscalls(img: &Path, mnt: &Path, flush: bool) {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(img)
        .unwrap();
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .unwrap();
    let nr = loop_dev::ctl_get_free(&control).unwrap();
    let node = format!("/dev/loop{nr}");
    let dev: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(&node)
        .unwrap();
    let mut info = loop_dev::empty_info();
    info.lo_flags = loop_dev::LO_FLAGS_AUTOCLEAR;
    loop_dev::configure(&dev, &loop_dev::config(backing.as_fd(), info)).unwrap();
    nix::mount::mount(
        Some(node.as_str()),
        mnt,
        Some("ext4"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(""),
    )
    .unwrap();
    if flush {
        let d = File::open(mnt).unwrap();
        nix::unistd::syncfs(&d).unwrap();
    }
    nix::mount::umount2(mnt, MntFlags::UMOUNT_NOFOLLOW).unwrap();
    if flush {
        blk::flsbuf(&dev).unwrap();
        backing.sync_all().unwrap();
    }
    loop_dev::clr_fd(&dev).unwrap();
}

/// A named way of running one cycle.
type Variant<'a> = (&'static str, Box<dyn Fn() + 'a>);

struct Stats {
    median: Duration,
    p10: Duration,
    p90: Duration,
}

fn stats(mut times: Vec<Duration>) -> Stats {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let iterations = std::env::args()
        .skip_while(|a| a != "--iterations")
        .nth(1)
        .map(|n| n.parse().expect("--iterations N"))
        .unwrap_or(200);
    assert!(
        nix::unistd::geteuid().is_root(),
        "the cycle benchmark needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("bench.img");
    File::create(&img).unwrap().set_len(64 << 20).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    if std::env::args().any(|a| a == "--once") {
        library(&img, &mnt);
        return;
    }
    // Interleave the variants round by round so drift hits them alike.
    let variants: Vec<Variant> = vec![
        ("diskmount (library)", Box::new(|| library(&img, &mnt))),
        ("util-linux processes", Box::new(|| util_linux(&img, &mnt))),
        (
            "syscalls, same flushes",
            Box::new(|| syscalls(&img, &mnt, true)),
        ),
        (
            "syscalls, no flushes",
            Box::new(|| syscalls(&img, &mnt, false)),
        ),
    ];
    compare(
        &format!("raw ext4 64 MiB, whole-disk cycle, {iterations} iterations each, interleaved"),
        &variants,
        iterations,
        10,
        "vs diskmount",
    );

    // qcow2 through qemu-storage-daemon's FUSE export, next to the raw
    // loop cycle (fewer iterations: a daemon starts every cycle).
    let qcow2 = dir.path().join("bench.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&img)
        .arg(&qcow2));
    let qimage = Image::file(&qcow2, Format::Qcow2).unwrap();
    let n = (iterations / 6).max(10);
    // The kernel-nbd path where the kernel has nbd (the kernel VM lane).
    let with_nbd = diskmount::backend::nbd::available();
    let mut variants: Vec<Variant> = vec![
        ("raw via Loop", Box::new(|| library(&img, &mnt))),
        (
            "qcow2 via Fuse",
            Box::new(|| library_image::<Fuse>(&qimage, &mnt)),
        ),
    ];
    if with_nbd {
        variants.push((
            "qcow2 via Nbd",
            Box::new(|| library_image::<Nbd>(&qimage, &mnt)),
        ));
    }
    println!();
    compare(
        &format!("qcow2 64 MiB (ext4), whole-disk cycle, {n} iterations each, interleaved"),
        &variants,
        n,
        3,
        "vs raw",
    );
}

/// Warms each variant up, then runs them in turn, one cycle each, so that
/// any drift of the machine hits all of them alike; prints a table with
/// each median relative to the first variant's.
fn compare(title: &str, variants: &[Variant], iterations: usize, warmup: usize, ratio: &str) {
    for (_, f) in variants {
        for _ in 0..warmup {
            f();
        }
    }
    let mut times: Vec<Vec<Duration>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..iterations {
        for (i, (_, f)) in variants.iter().enumerate() {
            let t = Instant::now();
            f();
            times[i].push(t.elapsed());
        }
    }
    let all: Vec<Stats> = times.into_iter().map(stats).collect();
    let base = all[0].median.as_secs_f64();
    println!("{title}");
    println!("| variant | median ms | p10 ms | p90 ms | {ratio} |");
    println!("|---|---|---|---|---|");
    for ((name, _), st) in variants.iter().zip(&all) {
        println!(
            "| {name} | {} | {} | {} | {:.2}x |",
            ms(st.median),
            ms(st.p10),
            ms(st.p90),
            st.median.as_secs_f64() / base
        );
    }
}

//! qcow2 through FUSE: the library's Fuse backend against the same job done
//! by hand with the qemu tools, the way a shell user would:
//!
//! ```sh
//! qemu-storage-daemon --blockdev driver=file,node-name=file0,filename=IMG \
//!     --blockdev driver=qcow2,node-name=disk0,file=file0 \
//!     --export type=fuse,id=export0,node-name=disk0,mountpoint=EXPORT,writable=on \
//!     --daemonize --pidfile PIDFILE      # returns once the export is live
//! dev=$(losetup --find --show EXPORT); mount $dev MNT; cat MNT/hello.txt
//! umount MNT; losetup --detach $dev; kill $(cat PIDFILE)   # and wait for it
//! ```
//!
//! Each cycle is timed phase by phase: daemon start to export ready, loop
//! attach, map, mount, first read of a file, unmount, unmap, detach (loop
//! unbind, daemon stop until it has exited). The library's attach is the
//! daemon start plus the loop attach; its detach the loop unbind plus the
//! daemon stop. By hand, the daemon's exit is waited for exactly (this
//! process is the child subreaper, so the daemonized qemu is its child).
//!
//! The library runs twice: a daemon per attach, and the process's shared
//! daemon (`AttachOptions::shared_daemon`, started in the warm-up), whose
//! attach is two `blockdev-add` and a `block-export-add` over QMP plus the
//! loop attach, and whose detach the loop unbind plus `block-export-del`
//! and two `blockdev-del`.
//!
//! Run as root: `cargo bench --bench fuse` (`-- --iterations N`, default
//! 30). Prints the tables, writes `target/bench-results/fuse.json` and
//! `docs/charts/fuse-phases.svg`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{Table, run, stats};
use diskmount::{AttachOptions, Format, Fuse, Image, MountOptions, Partition, Unattached};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LIB_PHASES: [&str; 7] = [
    "attach (daemon start, export ready, loop attach)",
    "map",
    "mount",
    "first read",
    "unmount",
    "unmap",
    "detach (loop unbind, daemon stop)",
];

const HAND_PHASES: [&str; 7] = [
    "qemu-storage-daemon --daemonize (start, export ready)",
    "losetup --find --show",
    "mount",
    "first read",
    "umount",
    "losetup --detach",
    "kill, daemon exit",
];

/// One library cycle with `options` (a daemon per attach, or the shared
/// one); the time of each phase in ms.
fn library(image: &Image, mnt: &Path, options: &AttachOptions) -> Vec<f64> {
    let mut t = Instant::now();
    let mut lap = |v: &mut Vec<f64>| {
        v.push(common::ms(t.elapsed()));
        t = Instant::now();
    };
    let mut v = Vec::new();
    let attached = Unattached::<Fuse>::with_options(image.clone(), options.clone())
        .attach()
        .unwrap();
    lap(&mut v);
    let mapped = attached.map(Partition::Whole).unwrap();
    lap(&mut v);
    let mounted = mapped.mount(mnt, &MountOptions::default()).unwrap();
    lap(&mut v);
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"hello\n");
    lap(&mut v);
    let mapped = mounted.unmount().unwrap();
    lap(&mut v);
    let attached = mapped.unmap().unwrap();
    lap(&mut v);
    drop(attached.detach().unwrap());
    lap(&mut v);
    v
}

/// One cycle by hand with the qemu tools and util-linux; phases in ms.
fn by_hand(img: &Path, work: &Path, mnt: &Path) -> Vec<f64> {
    let export = work.join("export");
    let pidfile = work.join("pid");
    std::fs::write(&export, b"").unwrap();
    let _ = std::fs::remove_file(&pidfile);
    let mut t = Instant::now();
    let mut lap = |v: &mut Vec<f64>| {
        v.push(common::ms(t.elapsed()));
        t = Instant::now();
    };
    let mut v = Vec::new();
    run(Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}",
            img.display()
        ))
        .args(["--blockdev", "driver=qcow2,node-name=disk0,file=file0"])
        .arg("--export")
        .arg(format!(
            "type=fuse,id=export0,node-name=disk0,mountpoint={},writable=on",
            export.display()
        ))
        .arg("--daemonize")
        .arg("--pidfile")
        .arg(&pidfile));
    lap(&mut v);
    let dev = run(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&export));
    let dev = dev.trim();
    lap(&mut v);
    run(Command::new("mount").arg(dev).arg(mnt));
    lap(&mut v);
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"hello\n");
    lap(&mut v);
    run(Command::new("umount").arg(mnt));
    lap(&mut v);
    run(Command::new("losetup").args(["--detach", dev]));
    lap(&mut v);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    nix::sys::wait::waitpid(Pid::from_raw(pid), None).unwrap();
    lap(&mut v);
    v
}

fn main() {
    common::require_root("fuse");
    // RUST_LOG=diskmount=debug shows the library's steps to the microsecond.
    let _ = env_logger::builder().format_timestamp_micros().try_init();
    let iterations: usize = common::arg("--iterations").unwrap_or(30);
    let machine = common::print_machine("fuse");
    // The daemonized qemu becomes our child, so its exit can be waited for.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("diskmount-bench-")
        .tempdir()
        .unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "hello\n").unwrap();
    let raw = dir.path().join("fs.img");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            "-d",
        ])
        .arg(&src)
        .arg(&raw));
    let qcow2 = dir.path().join("fs.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let image = Image::file(&qcow2, Format::Qcow2).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let work = dir.path().join("hand");
    std::fs::create_dir(&work).unwrap();

    let own = AttachOptions::default();
    // The shared daemon starts in the warm-up: its cycles are warm.
    let shared = AttachOptions::default().shared_daemon(true);
    for _ in 0..3 {
        library(&image, &mnt, &own);
        library(&image, &mnt, &shared);
        by_hand(&qcow2, &work, &mnt);
    }
    let mut lib: Vec<Vec<f64>> = vec![Vec::new(); LIB_PHASES.len()];
    let mut lib_shared: Vec<Vec<f64>> = vec![Vec::new(); LIB_PHASES.len()];
    let mut shared_total = Vec::new();
    let mut hand: Vec<Vec<f64>> = vec![Vec::new(); HAND_PHASES.len()];
    let (mut lib_total, mut hand_total) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let l = library(&image, &mnt, &own);
        lib_total.push(l.iter().sum());
        for (i, x) in l.into_iter().enumerate() {
            lib[i].push(x);
        }
        let l = library(&image, &mnt, &shared);
        shared_total.push(l.iter().sum());
        for (i, x) in l.into_iter().enumerate() {
            lib_shared[i].push(x);
        }
        let h = by_hand(&qcow2, &work, &mnt);
        hand_total.push(h.iter().sum());
        for (i, x) in h.into_iter().enumerate() {
            hand[i].push(x);
        }
    }
    let mut totals = Table::new(
        "fuse-total",
        &format!(
            "qcow2 64 MiB (ext4) through a FUSE export, whole cycle with a first read, {iterations} iterations each, interleaved"
        ),
        "ms",
        "vs diskmount",
    );
    totals.push("diskmount (library, Fuse backend)", stats(lib_total));
    totals.push(
        "diskmount, shared daemon (AttachOptions::shared_daemon, warm)",
        stats(shared_total),
    );
    totals.push(
        "by hand: qemu-storage-daemon --daemonize, losetup, mount, umount, losetup -d, kill",
        stats(hand_total),
    );
    totals.print();
    let mut phases = Table::new("fuse-phases", "qcow2 through FUSE, per phase", "ms", "");
    for (name, v) in LIB_PHASES.iter().zip(lib) {
        phases.push(&format!("diskmount: {name}"), stats(v));
    }
    for (name, v) in LIB_PHASES.iter().zip(lib_shared) {
        let name = name
            .replace(
                "daemon start, export ready",
                "blockdev-add x2, block-export-add",
            )
            .replace("daemon stop", "block-export-del, blockdev-del x2");
        phases.push(&format!("diskmount, shared daemon: {name}"), stats(v));
    }
    for (name, v) in HAND_PHASES.iter().zip(hand) {
        phases.push(&format!("by hand: {name}"), stats(v));
    }
    phases.print();
    common::bar_chart("fuse-phases", &phases, "lower is better");
    common::write_results("fuse", &machine, &[totals, phases]);
    common::assert_clean(dir.path());
}

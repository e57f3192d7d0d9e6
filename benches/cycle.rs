//! One full cycle (attach, map, mount, unmount, unmap, detach), several ways
//! side by side in one run, interleaved round by round:
//!
//! 1. a 64 MiB ext4 raw image, whole disk: the library; util-linux as
//!    processes, both Nova's four (`losetup --find --show`, `mount`,
//!    `umount`, `losetup --detach`) and a shell user's two (`mount -o loop`,
//!    `umount`); the minimal hand-written syscall sequence (the floor), with
//!    and without the library's flushes;
//! 2. an MBR *logical* partition (number 5, inside an extended partition) of
//!    a 72 MiB image. This host kernel does not parse partition tables, so
//!    nothing makes `/dev/loopNp5` by itself; like is compared with like:
//!    BLKPG (the library's automatic choice here, `partx --add` in
//!    util-linux, `BLKPG_ADD_PARTITION` in the floor) and an offset loop
//!    device (`MapStrategy::OffsetLoop`, `losetup --offset --sizelimit`,
//!    `mount -o loop,offset=,sizelimit=`, `LOOP_CONFIGURE` with offset and
//!    limit). util-linux and the floor are given the partition's offset
//!    (read once, untimed); the library reads the table every cycle;
//! 3. the same whole-disk filesystem as qcow2, through the Fuse backend with
//!    a daemon per attach and with the process's shared daemon
//!    (`AttachOptions::shared_daemon`, warm: started in the warm-up), and
//!    Nbd where the kernel has nbd (the kernel VM lane), next to raw.
//!
//! Run as root: `cargo bench --bench cycle` (`-- --iterations N`; `--once`
//! runs one library cycle and exits; `--only raw|part|qcow2`). Prints the
//! tables; writes `target/bench-results/cycle.json` and the charts
//! `docs/charts/cycle-whole.svg` and `docs/charts/cycle-partition.svg`.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use common::{Table, Variant, compare, run};
use diskmount::sys::{block as blk, loop_dev};
use diskmount::{
    AttachOptions, Backend, Format, Fuse, Image, Loop, MapOptions, MapStrategy, Mapping,
    MountOptions, Nbd, Partition, RunDir, Unattached,
};
use nix::mount::{MntFlags, MsFlags};

fn library_image<B: Backend>(image: &Image, mnt: &Path, options: &AttachOptions) {
    Unattached::<B>::with_options(image.clone(), options.clone())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(mnt, &MountOptions::default())
        .unwrap()
        .close()
        .unwrap();
}

/// The whole-disk library cycle of `img` with its records in `run_dir`.
fn library_records(img: &Path, mnt: &Path, run_dir: RunDir) {
    Unattached::<Loop>::with_options(
        Image::file(img, Format::Raw).unwrap(),
        AttachOptions::default().run_dir(run_dir),
    )
    .attach()
    .unwrap()
    .map(Partition::Whole)
    .unwrap()
    .mount(mnt, &MountOptions::default())
    .unwrap()
    .close()
    .unwrap();
}

/// Partition `number` of `img` with `strategy`; returns how it was mapped.
fn library_part(img: &Path, mnt: &Path, number: u32, strategy: MapStrategy) -> Mapping {
    let mounted = Unattached::<Loop>::new(Image::file(img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map_with(
            Partition::Number(number),
            &MapOptions::default().strategy(strategy),
        )
        .unwrap()
        .mount(mnt, &MountOptions::default())
        .unwrap();
    let how = mounted.mapped().mapping();
    mounted.close().unwrap();
    how
}

fn util_linux(img: &Path, mnt: &Path) {
    let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(img));
    let dev = dev.trim();
    run(Command::new("mount").arg(dev).arg(mnt));
    run(Command::new("umount").arg(mnt));
    run(Command::new("losetup").args(["--detach", dev]));
}

/// `mount -o loop`: mount sets up an autoclear loop device itself, and the
/// unmount frees it.
fn mount_loop(img: &Path, mnt: &Path, range: Option<(u64, u64)>) {
    let opts = match range {
        None => "loop".to_string(),
        Some((start, size)) => format!("loop,offset={start},sizelimit={size}"),
    };
    run(Command::new("mount").args(["-o", &opts]).arg(img).arg(mnt));
    run(Command::new("umount").arg(mnt));
}

/// `losetup` + `partx --add` (BLKPG) + mount + umount + `partx --delete` +
/// `losetup --detach`: six processes.
fn util_linux_partx(img: &Path, mnt: &Path, number: u32) {
    let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(img));
    let dev = dev.trim();
    let nr = number.to_string();
    run(Command::new("partx").args(["--add", "--nr", &nr, dev]));
    run(Command::new("mount")
        .arg(format!("{dev}p{number}"))
        .arg(mnt));
    run(Command::new("umount").arg(mnt));
    run(Command::new("partx").args(["--delete", "--nr", &nr, dev]));
    run(Command::new("losetup").args(["--detach", dev]));
}

/// `losetup --offset --sizelimit` + mount + umount + `losetup --detach`.
fn util_linux_offset(img: &Path, mnt: &Path, start: u64, size: u64) {
    let dev = run(Command::new("losetup")
        .args(["--find", "--show", "--offset"])
        .arg(start.to_string())
        .arg("--sizelimit")
        .arg(size.to_string())
        .arg(img));
    let dev = dev.trim();
    run(Command::new("mount").arg(dev).arg(mnt));
    run(Command::new("umount").arg(mnt));
    run(Command::new("losetup").args(["--detach", dev]));
}

fn floor_mount(node: &str, mnt: &Path, flush: bool) {
    nix::mount::mount(
        Some(node),
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
}

fn floor_detach(backing: &File, dev: File, flush: bool) {
    if flush {
        blk::flsbuf(dev.as_fd()).unwrap();
        backing.sync_all().unwrap();
    }
    loop_dev::clr_fd(dev.as_fd()).unwrap();
}

fn syscalls(img: &Path, mnt: &Path, flush: bool) {
    let backing = common::open_rw(img);
    let (node, dev) = common::floor::attach(&backing, None);
    floor_mount(&node, mnt, flush);
    floor_detach(&backing, dev, flush);
}

/// The floor doing the rest of the library's job too: the kernel's
/// partition scan (`LO_FLAGS_PARTSCAN`, which the library sets so that a
/// partitioned image gets its nodes) and one 4 KiB read of the device to
/// learn the filesystem type (the library probes; the other floors are told
/// `ext4`).
fn syscalls_scan_probe(img: &Path, mnt: &Path) {
    use std::os::unix::fs::FileExt;
    let backing = common::open_rw(img);
    let flags = loop_dev::LO_FLAGS_AUTOCLEAR | loop_dev::LO_FLAGS_PARTSCAN;
    let (node, dev) = common::floor::attach_flags(&backing, None, flags);
    let mut head = [0u8; 4096];
    dev.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head[1024 + 56..1024 + 58], &[0x53, 0xEF], "ext4 magic");
    floor_mount(&node, mnt, true);
    floor_detach(&backing, dev, true);
}

/// The floor with BLKPG: whole-disk loop, `BLKPG_ADD_PARTITION`, mount the
/// node devtmpfs made, unmount, flush, `BLKPG_DEL_PARTITION`, detach.
fn syscalls_blkpg(img: &Path, mnt: &Path, number: u32, start: u64, size: u64) {
    let backing = common::open_rw(img);
    let (node, dev) = common::floor::attach(&backing, None);
    blk::add_partition(dev.as_fd(), number, start, size).unwrap();
    let part_node = format!("{node}p{number}");
    let part = common::open_rw(&part_node);
    floor_mount(&part_node, mnt, true);
    blk::flsbuf(part.as_fd()).unwrap();
    drop(part);
    blk::del_partition(dev.as_fd(), number).unwrap();
    floor_detach(&backing, dev, true);
}

/// The floor with an offset loop device over the partition's bytes.
fn syscalls_offset(img: &Path, mnt: &Path, start: u64, size: u64) {
    let backing = common::open_rw(img);
    let (node, dev) = common::floor::attach(&backing, Some((start, size)));
    floor_mount(&node, mnt, true);
    floor_detach(&backing, dev, true);
}

/// A 72 MiB MBR image: primary 1 (8 MiB), extended 2, logical 5 (48 MiB,
/// ext4). Returns the logical partition's byte offset and size.
fn logical_image(img: &Path, scratch: &Path) -> (u64, u64) {
    File::create(img).unwrap().set_len(72 << 20).unwrap();
    let script = "label: dos\nsize=8MiB, type=83\ntype=5\nsize=48MiB, type=83\n";
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(img)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk");
    let json = run(Command::new("sfdisk").arg("--json").arg(img));
    // The fifth "start"/"size" pair after "partitions" is partition 5's
    // (sfdisk lists 1, 2, 5).
    let field = |entry: &str, key: &str| -> u64 {
        let at = entry.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
        entry[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let entry = json
        .split('{')
        .find(|e| e.contains("\"node\"") && e.contains("5\","))
        .expect("partition 5 in sfdisk --json");
    let (start, size) = (field(entry, "start") * 512, field(entry, "size") * 512);
    let fs = scratch.join("logical.ext4");
    common::ext4_image(&fs, size);
    let mut src = File::open(&fs).unwrap();
    let mut dst = OpenOptions::new().write(true).open(img).unwrap();
    dst.seek(SeekFrom::Start(start)).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
    std::fs::remove_file(&fs).unwrap();
    (start, size)
}

fn main() {
    // RUST_LOG=diskmount=debug gives each step's timeline.
    let _ = env_logger::builder().format_timestamp_micros().try_init();
    let iterations: usize = common::arg("--iterations").unwrap_or(200);
    let only: Option<String> = common::arg("--only");
    // `--quick`: the library and the syscall floors only (no util-linux
    // processes), for measuring a library change several times in a row.
    let quick = common::flag("--quick");
    let wants = |s: &str| only.as_deref().is_none_or(|o| o == s);
    common::require_root("cycle");
    let dir = tempfile::Builder::new()
        .prefix("diskmount-bench-")
        .tempdir()
        .unwrap();
    let img = dir.path().join("bench.img");
    common::ext4_image(&img, 64 << 20);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    if common::flag("--once") {
        common::library_cycle(&img, &mnt);
        return;
    }
    let machine = common::print_machine("cycle");
    let mut tables: Vec<Table> = Vec::new();

    // A run directory on tmpfs, for the records-on-tmpfs variant.
    let shm = tempfile::Builder::new()
        .prefix("diskmount-bench-run-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let shm = shm.path().join("run");
    if wants("raw") {
        let mut variants: Vec<Variant> = vec![
            (
                "diskmount (library)".into(),
                Box::new(|| common::library_cycle(&img, &mnt)),
            ),
            (
                "diskmount (library), records off".into(),
                Box::new(|| library_records(&img, &mnt, RunDir::off())),
            ),
            (
                "diskmount (library), records on tmpfs (/dev/shm)".into(),
                Box::new(|| library_records(&img, &mnt, RunDir::new(&shm))),
            ),
            (
                "syscalls, same flushes".into(),
                Box::new(|| syscalls(&img, &mnt, true)),
            ),
            (
                "syscalls, no flushes".into(),
                Box::new(|| syscalls(&img, &mnt, false)),
            ),
            (
                "syscalls, same flushes + partition scan + fs probe read".into(),
                Box::new(|| syscalls_scan_probe(&img, &mnt)),
            ),
        ];
        if !quick {
            variants.insert(
                3,
                (
                    "util-linux: losetup, mount, umount, losetup -d".into(),
                    Box::new(|| util_linux(&img, &mnt)),
                ),
            );
            variants.insert(
                4,
                (
                    "util-linux: mount -o loop, umount".into(),
                    Box::new(|| mount_loop(&img, &mnt, None)),
                ),
            );
        }
        // `--variant TEXT`: only the variants whose name contains TEXT (for
        // profiling one of them).
        if let Some(v) = common::arg::<String>("--variant") {
            variants.retain(|(name, _)| name.contains(&v));
        }
        let t = compare(
            "raw-whole",
            &format!(
                "raw ext4 64 MiB, whole-disk cycle, {iterations} iterations each, interleaved"
            ),
            &mut variants,
            iterations,
            10,
            "vs diskmount",
        );
        common::bar_chart("cycle-whole", &t, "lower is better");
        tables.push(t);
    }

    if wants("part") {
        let pimg = dir.path().join("logical.img");
        let (start, size) = logical_image(&pimg, dir.path());
        let auto = library_part(&pimg, &mnt, 5, MapStrategy::Auto);
        println!(
            "\nlogical partition 5 at byte {start}, {size} bytes; MapStrategy::Auto maps it here by {}",
            auto.as_str()
        );
        let mut variants: Vec<Variant> = vec![
            (
                format!("diskmount, Auto ({})", auto.as_str()),
                Box::new(|| {
                    library_part(&pimg, &mnt, 5, MapStrategy::Auto);
                }),
            ),
            (
                "util-linux: losetup, partx -a, mount, umount, partx -d, losetup -d".into(),
                Box::new(|| util_linux_partx(&pimg, &mnt, 5)),
            ),
            (
                "syscalls (BLKPG), same flushes".into(),
                Box::new(|| syscalls_blkpg(&pimg, &mnt, 5, start, size)),
            ),
            (
                "diskmount, OffsetLoop".into(),
                Box::new(|| {
                    library_part(&pimg, &mnt, 5, MapStrategy::OffsetLoop);
                }),
            ),
            (
                "util-linux: losetup -o --sizelimit, mount, umount, losetup -d".into(),
                Box::new(|| util_linux_offset(&pimg, &mnt, start, size)),
            ),
            (
                "util-linux: mount -o loop,offset,sizelimit, umount".into(),
                Box::new(|| mount_loop(&pimg, &mnt, Some((start, size)))),
            ),
            (
                "syscalls (offset loop), same flushes".into(),
                Box::new(|| syscalls_offset(&pimg, &mnt, start, size)),
            ),
        ];
        let t = compare(
            "raw-logical",
            &format!(
                "MBR logical partition 5 (ext4 48 MiB), cycle, {iterations} iterations each, interleaved"
            ),
            &mut variants,
            iterations,
            10,
            "vs diskmount",
        );
        common::bar_chart("cycle-partition", &t, "lower is better");
        tables.push(t);
    }

    if wants("qcow2") {
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
        let own = AttachOptions::default();
        // Warm: the shared daemon starts in the warm-up cycles.
        let shared = AttachOptions::default().shared_daemon(true);
        let mut variants: Vec<Variant> = vec![
            (
                "raw via Loop".into(),
                Box::new(|| common::library_cycle(&img, &mnt)),
            ),
            (
                "qcow2 via Fuse".into(),
                Box::new(|| library_image::<Fuse>(&qimage, &mnt, &own)),
            ),
            (
                "qcow2 via Fuse, shared daemon (warm)".into(),
                Box::new(|| library_image::<Fuse>(&qimage, &mnt, &shared)),
            ),
        ];
        if with_nbd {
            variants.push((
                "qcow2 via Nbd".into(),
                Box::new(|| library_image::<Nbd>(&qimage, &mnt, &own)),
            ));
        }
        tables.push(compare(
            "qcow2",
            &format!("qcow2 64 MiB (ext4), whole-disk cycle, {n} iterations each, interleaved"),
            &mut variants,
            n,
            3,
            "vs raw",
        ));
    }
    common::write_results("cycle", &machine, &tables);
    common::assert_clean(dir.path());
}

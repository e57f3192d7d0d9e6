//! After `close()` or `with_mounted` returns Ok, the data is in the image
//! file, round after round, through every backend this kernel has (Loop for
//! raw, Fuse for qcow2, Block over a loop device the test makes itself;
//! Nbd in tests/kernel_lane.rs). Each round writes random files and a
//! checksum list, tears down, and reads everything back through a path
//! that shares no code with diskmount: debugfs on the image file (qcow2:
//! converted to raw by qemu-img first).
//!
//! `DISKMOUNT_DURABILITY_ROUNDS` (default 100) sets the rounds per backend.
//! Two more checks go beyond the page cache: a process SIGKILLed the
//! moment it printed that close() returned, and an image on a host
//! filesystem whose device is read with O_DIRECT right after close() and
//! recovered like after a power cut (journal replay by e2fsck), so data
//! that only sat in the host's page cache would be missing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::durability::{as_raw, check_round, rounds, verify_raw, write_round};
use common::{Fixture, run};
use diskmount::{
    Backend, Block, Format, Fuse, Image, Loop, MountOptions, Partition, Unattached, with_mounted,
    with_mounted_opts,
};

/// The mount options of the rounds: a longer unmount retry than the
/// default. The tests of this binary run in parallel and fork children
/// (debugfs, qemu-img, dd, the test binary) all the time; a child holds a
/// copy of every descriptor of this process, the mount's held root among
/// them, until it execs, and on a loaded 2-core machine that once took
/// longer than the default bound (20 attempts in 0.8 s).
fn options() -> MountOptions {
    MountOptions::default().unmount_retry(diskmount::RetryPolicy {
        max_attempts: 200,
        timeout: std::time::Duration::from_secs(10),
        max_delay: std::time::Duration::from_millis(100),
    })
}

/// One round through backend `B`: odd rounds the step-by-step lifecycle and
/// close(), even rounds with_mounted (backend chosen by Auto).
fn one_round<B: Backend>(image: &Image, mnt: &Path, seed: u64) {
    if seed % 2 == 1 {
        let t = Unattached::<B>::new(image.clone())
            .attach()
            .unwrap()
            .map(Partition::Whole)
            .unwrap()
            .mount(mnt, &options())
            .unwrap();
        write_round(t.path(), seed).unwrap();
        t.close().unwrap();
    } else {
        with_mounted_opts(image, Partition::Whole, &options(), |root| {
            write_round(root, seed)
        })
        .unwrap()
        .unwrap();
    }
}

fn repeat<B: Backend>(what: &str, image: &Image, check: &dyn Fn(u64)) {
    let mut fx = Fixture::new();
    let mnt = fx.tree("mnt", &[]);
    let n = rounds();
    let start = Instant::now();
    for seed in 1..=n {
        one_round::<B>(image, &mnt, seed);
        check(seed);
    }
    eprintln!("durability {what}: {n} rounds in {:.1?}", start.elapsed());
    fx.assert_clean();
}

#[test]
fn loop_raw_rounds() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    repeat::<Loop>("loop raw", &image, &|seed| {
        verify_raw(&img, seed, fx.path(), "loop raw")
    });
    fx.assert_clean();
}

#[test]
fn fuse_qcow2_rounds() {
    let mut fx = Fixture::new();
    let raw = fx.ext4("disk.img", &[]);
    let img = fx.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img));
    std::fs::remove_file(&raw).unwrap();
    let image = Image::file(&img, Format::Qcow2).unwrap();
    repeat::<Fuse>("fuse qcow2", &image, &|seed| {
        let converted = as_raw(&img, Format::Qcow2, fx.path());
        verify_raw(&converted, seed, fx.path(), "fuse qcow2");
    });
    assert!(common::fixture_qemu(&fx).is_empty());
    fx.assert_clean();
}

#[test]
fn block_over_our_own_loop_device_rounds() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(&img))
        .trim()
        .to_string();
    let image = Image::block(&dev).unwrap();
    // The device is ours to keep: the leak check would count it, so the
    // rounds check only that no mount is left, and the device goes last.
    let mnt = fx.tree("mnt", &[]);
    let n = rounds();
    let start = Instant::now();
    for seed in 1..=n {
        one_round::<Block>(&image, &mnt, seed);
        assert!(!common::is_mount_point(&mnt));
        // Read the device's bytes the way a reader of the image file
        // would once the device is gone: debugfs on the image file.
        verify_raw(&img, seed, fx.path(), "block");
    }
    eprintln!("durability block: {n} rounds in {:.1?}", start.elapsed());
    detach(&dev);
    fx.assert_clean();
}

/// Child mode of [`killed_right_after_close`]: writes round `seed` into
/// the image through `backend`, closes, says "closed", and waits to die.
fn child_write_close_and_wait(img: &Path, backend: &str, seed: u64) -> ! {
    let mnt = tempfile::tempdir().unwrap();
    let format = if backend == "fuse" {
        Format::Qcow2
    } else {
        Format::Raw
    };
    let image = Image::file(img, format).unwrap();
    match backend {
        "fuse" => one_round::<Fuse>(&image, mnt.path(), seed),
        _ => one_round::<Loop>(&image, mnt.path(), seed),
    }
    println!("closed");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
    panic!("not killed");
}

/// A process that wrote through diskmount is SIGKILLed the moment it says
/// close() returned (each round alternates close() and with_mounted): the
/// data is in the image all the same.
#[test]
fn killed_right_after_close() {
    if let Ok(spec) = std::env::var("DISKMOUNT_DURABILITY_CHILD") {
        let mut parts = spec.splitn(3, ':');
        let (backend, seed, img) = (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().parse().unwrap(),
            PathBuf::from(parts.next().unwrap()),
        );
        child_write_close_and_wait(&img, &backend, seed);
    }
    let mut fx = Fixture::new();
    let raw = fx.ext4("disk.img", &[]);
    let qcow2 = fx.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let records = fx.records();
    let n = rounds().clamp(1, 10);
    for (backend, img, format) in [("loop", &raw, Format::Raw), ("fuse", &qcow2, Format::Qcow2)] {
        for seed in 1..=n {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "killed_right_after_close", "--nocapture"])
                .env(
                    "DISKMOUNT_DURABILITY_CHILD",
                    format!("{backend}:{seed}:{}", img.display()),
                )
                .env("DISKMOUNT_RUN_DIR", &records)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            loop {
                match lines.next() {
                    Some(Ok(l)) if l == "closed" => break,
                    Some(Ok(_)) => {}
                    other => panic!("{backend} round {seed}: child ended: {other:?}"),
                }
            }
            child.kill().unwrap();
            child.wait().unwrap();
            let converted = as_raw(img, format, fx.path());
            verify_raw(&converted, seed, fx.path(), &format!("killed {backend}"));
            assert!(common::fixture_qemu(&fx).is_empty());
            fx.assert_clean();
        }
    }
    // Each child, killed after a close that finished, leaves at most its
    // empty record slot (kept for a next attach that never came): no
    // record to act on, and the scan removes it.
    let found = diskmount::cleanup::scan(&diskmount::RunDir::new(&records)).unwrap();
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
}

/// The image on a small ext4 host filesystem on a loop device. Right after
/// close() returns, that device is read with O_DIRECT (what reached the
/// "disk", not the host's page cache of the image file), the copy is
/// recovered as after a power cut (e2fsck replays its journal), and the
/// image file is taken out of it and checked.
#[test]
fn data_is_on_the_host_disk_not_only_in_its_page_cache() {
    let mut fx = Fixture::new();
    let hostdisk = fx.blank("hostdisk", 160 << 20);
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&hostdisk));
    let hostdev = run(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&hostdisk))
    .trim()
    .to_string();
    let host = fx.tree("host", &[]);
    run(Command::new("mount").arg(&hostdev).arg(&host));
    // Taken down on every path, also when a check below fails.
    let _host_guard = scopeguard::guard((host.clone(), hostdev.clone()), |(host, dev)| {
        let _ = Command::new("umount").arg(&host).output();
        let _ = Command::new("losetup").args(["-d", &dev]).output();
    });
    let raw = host.join("disk.img");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&raw));
    let qcow2 = host.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    // mkfs and qemu-img leave their own writes in the page cache: make them
    // durable first, so that only diskmount's writes are under test.
    run(Command::new("sync").arg("-f").arg(&host));
    let mnt = fx.tree("mnt", &[]);
    let snapshot = fx.path().join("snapshot");
    for (seed, (img, format, backend)) in
        [(&raw, Format::Raw, "loop"), (&qcow2, Format::Qcow2, "fuse")]
            .into_iter()
            .enumerate()
    {
        let seed = seed as u64 + 1;
        let image = Image::file(img, format).unwrap();
        match backend {
            "fuse" => one_round::<Fuse>(&image, &mnt, seed),
            _ => one_round::<Loop>(&image, &mnt, seed),
        }
        // What the host device holds, bypassing every page cache.
        run(Command::new("dd")
            .arg(format!("if={hostdev}"))
            .arg(format!("of={}", snapshot.display()))
            .args(["bs=4M", "iflag=direct", "status=none"]));
        let out = Command::new("e2fsck")
            .args(["-fy"])
            .arg(&snapshot)
            .output()
            .unwrap();
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "the host filesystem copy does not recover: {out:?}"
        );
        let name = img.file_name().unwrap().to_string_lossy().into_owned();
        let extracted = fx.path().join(format!("extracted-{name}"));
        run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /{name} {}", extracted.display()))
            .arg(&snapshot));
        let checked = as_raw(&extracted, format, fx.path());
        verify_raw(
            &checked,
            seed,
            fx.path(),
            &format!("{backend} on the host disk"),
        );
        std::fs::remove_file(&extracted).unwrap();
    }
    // The control: the image with round 3 in it, made elsewhere, written
    // over the image file with a plain write and no fsync (its pages stay
    // dirty in the host's page cache). The same check must then miss round
    // 3, or it could not catch a diskmount that skipped the flush.
    let copy = fx.path().join("copy.img");
    std::fs::copy(&raw, &copy).unwrap();
    with_mounted(
        &Image::file(&copy, Format::Raw).unwrap(),
        Partition::Whole,
        |root| write_round(root, 3),
    )
    .unwrap()
    .unwrap();
    verify_raw(&copy, 3, fx.path(), "control copy");
    std::fs::write(&raw, std::fs::read(&copy).unwrap()).unwrap();
    run(Command::new("dd")
        .arg(format!("if={hostdev}"))
        .arg(format!("of={}", snapshot.display()))
        .args(["bs=4M", "iflag=direct", "status=none"]));
    let _ = Command::new("e2fsck").args(["-fy"]).arg(&snapshot).output();
    let extracted = fx.path().join("extracted-control");
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /disk.img {}", extracted.display()))
        .arg(&snapshot));
    assert!(
        check_round(&extracted, 3, fx.path()).is_err(),
        "unflushed writes were found on the host disk: the check proves nothing"
    );
    common::system::umount(&host);
    detach(&hostdev);
    fx.assert_clean();
}

/// `losetup -d`, and wait (bounded) for the unbind: with another opener
/// of the device at that moment the kernel only unbinds at its close.
fn detach(dev: &str) {
    run(Command::new("losetup").args(["-d", dev]));
    let start = Instant::now();
    while common::bound_loops().iter().any(|(d, _)| d == dev) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{dev} stays bound"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

//! A stopped qemu-storage-daemon (SIGSTOP) under a mount: unmount() fails
//! at once and gives the value back, a retry after SIGCONT flushes; a
//! close() kills a daemon that stays stopped and tears down. (The nbd
//! counterpart, with the device's request timeout, is in
//! tests/kernel_lane.rs.)
//!
//! The tests of this file run one at a time, apart from every other test:
//! while a daemon is stopped, any child this process starts hangs in
//! exec, which closes the inherited descriptor of the export, and FUSE
//! sends the flush of that close to the stopped daemon (docs/reliability.md).

mod common;

use std::path::Path;
use std::sync::Mutex;

use common::{Fixture, assert_no_records, fixture_qemu, signal, wait_stopped};
use diskmount::{Format, Fuse, Image, MountOptions, Partition, Step, Unattached};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn attach(img: &Path, format: Format) -> diskmount::Attached<Fuse> {
    Unattached::<Fuse>::new(Image::file(img, format).unwrap())
        .attach()
        .unwrap()
}

/// A raw and a qcow2 image with a file `f`.
fn images(fx: &Fixture) -> Vec<(std::path::PathBuf, Format)> {
    let raw = fx.ext4("disk.img", &[("f", "x")]);
    let q = fx.path().join("disk.qcow2");
    common::run(
        std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&q),
    );
    vec![(raw, Format::Raw), (q, Format::Qcow2)]
}

#[track_caller]
fn assert_nothing_left(fx: &mut Fixture) {
    assert!(fixture_qemu(fx).is_empty(), "{:?}", fixture_qemu(fx));
    fx.assert_clean();
    assert_no_records(fx);
}

/// A stopped daemon (SIGSTOP) with unflushed writes: unmount() fails at
/// once with an error naming the stopped daemon and how to go on, instead
/// of waiting in the kernel for a flush nobody answers, and gives the
/// mounted value back; after SIGCONT the retry flushes and tears down,
/// and the write is in the image.
#[test]
fn stopped_daemon_unmount_fails_then_retry_after_sigcont() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut fx = Fixture::new();
    let mnt = fx.tree("mnt", &[]);
    for (img, format) in images(&fx) {
        let t = attach(&img, format)
            .map(Partition::Whole)
            .unwrap()
            .mount(&mnt, &MountOptions::default())
            .unwrap();
        std::fs::write(t.path().join("late"), b"written before the stop").unwrap();
        let pid = fixture_qemu(&fx)[0].0;
        signal(pid, nix::sys::signal::Signal::SIGSTOP);
        wait_stopped(pid);
        let err = t.unmount().unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.step(), Some(Step::Unmount), "{msg}");
        assert!(
            msg.contains(&format!("qemu-storage-daemon (pid {pid})"))
                && msg.contains("is stopped")
                && msg.contains("kill -CONT"),
            "{msg}"
        );
        assert!(err.mounted().is_some(), "the mounted value comes back");
        assert!(common::is_mount_point(&mnt));
        signal(pid, nix::sys::signal::Signal::SIGCONT);
        let mapped = err.retry().unwrap();
        mapped.close().unwrap();
        assert_nothing_left(&mut fx);
        let read = Unattached::<Fuse>::new(Image::file(&img, format).unwrap().read_only(true))
            .attach()
            .unwrap()
            .map(Partition::Whole)
            .unwrap()
            .mount(&mnt, &MountOptions::default().read_only(true))
            .unwrap();
        assert_eq!(
            std::fs::read(read.path().join("late")).unwrap(),
            b"written before the stop"
        );
        read.close().unwrap();
        assert_nothing_left(&mut fx);
    }
}

/// A daemon that stays stopped: close() waits a moment for it, then kills
/// it so that the teardown can go on (the flush fails), reports both, and
/// leaves nothing behind.
#[test]
fn stopped_daemon_close_kills_it_and_tears_down() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut fx = Fixture::new();
    let mnt = fx.tree("mnt", &[]);
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let t = attach(&img, Format::Raw)
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    std::fs::write(t.path().join("late"), b"lost").unwrap();
    let pid = fixture_qemu(&fx)[0].0;
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    wait_stopped(pid);
    let err = t.close().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("qemu-storage-daemon (pid {pid})"))
            && msg.contains("is stopped")
            && msg.contains("was killed"),
        "{msg}"
    );
    assert!(!common::is_mount_point(&mnt));
    assert_nothing_left(&mut fx);
}

//! qemu-storage-daemon (the Fuse backend) killed with SIGKILL at each
//! state and in the middle of writing: the next step or close() names the
//! dead helper, and teardown leaves no loop device over the dead export, no
//! FUSE mount, no process and no record. (tests/fuse.rs has the kill while
//! mounted followed by close(); qemu-nbd's are in tests/kernel_lane.rs.)

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Fixture, assert_no_records, fixture_qemu};
use diskmount::{Error, Format, Fuse, Image, MountOptions, Partition, Step, Unattached};

/// SIGKILLs the fixture's daemon and waits until it is dead: a zombie
/// whose threads are all gone (only then can its parent reap it).
fn kill_daemon(fx: &Fixture) -> u32 {
    let found = fixture_qemu(fx);
    assert_eq!(found.len(), 1, "{found:?}");
    let pid = found[0].0;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let start = Instant::now();
    let dead = || {
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.contains(") Z "));
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
        zombie && threads <= 1
    };
    while !dead() {
        assert!(start.elapsed() < Duration::from_secs(5), "{pid} lives on");
        std::thread::sleep(Duration::from_millis(5));
    }
    pid
}

/// `err` has an error of `step` naming the image and the killed daemon.
#[track_caller]
fn names_the_dead_daemon(err: &Error, step: Step, img: &Path, pid: u32) {
    let msg = err.to_string();
    assert!(
        err.errors().iter().any(|e| e.step() == Some(step)
            && e.path() == Some(img)
            && e.to_string()
                .contains(&format!("qemu-storage-daemon (pid {pid})`"))
            && e.to_string().contains("killed by signal 9")),
        "no {step} error naming the dead daemon {pid}: {msg}"
    );
}

#[track_caller]
fn assert_nothing_left(fx: &mut Fixture) {
    assert!(fixture_qemu(fx).is_empty(), "{:?}", fixture_qemu(fx));
    fx.assert_clean();
    assert_no_records(fx);
}

/// The daemon's private directory (from the crash-recovery record): its
/// FUSE export is mounted there.
fn export_dir(img: &Path) -> std::path::PathBuf {
    // `<id>.helper` next to the record `<id>.json`, in the run directory.
    diskmount::cleanup::scan(&diskmount::RunDir::current_default())
        .unwrap()
        .into_iter()
        .find(|r| r.image() == Some(img))
        .map(|r| r.record().with_extension("helper"))
        .expect("a record of the image")
}

/// The export is neither mounted nor on disk any more.
#[track_caller]
fn export_gone(dir: &Path) {
    let d = dir.to_string_lossy();
    assert!(
        !common::mounts().iter().any(|(_, t)| t.starts_with(&*d)),
        "the FUSE export in {d} is left mounted"
    );
    assert!(!dir.exists(), "{d} left");
}

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

#[test]
fn killed_while_attached_then_map_or_close() {
    let mut fx = Fixture::new();
    for (img, format) in images(&fx) {
        let a = attach(&img, format);
        let export = export_dir(&img);
        let pid = kill_daemon(&fx);
        let err = a.map(Partition::Whole).unwrap_err();
        names_the_dead_daemon(&err, Step::Map, &img, pid);
        export_gone(&export);
        assert_nothing_left(&mut fx);

        let a = attach(&img, format);
        let export = export_dir(&img);
        let pid = kill_daemon(&fx);
        let err = a.close().unwrap_err();
        names_the_dead_daemon(&err, Step::Detach, &img, pid);
        export_gone(&export);
        assert_nothing_left(&mut fx);
    }
}

#[test]
fn killed_while_mapped_then_mount_or_close() {
    let mut fx = Fixture::new();
    let mnt = fx.tree("mnt", &[]);
    for (img, format) in images(&fx) {
        let m = attach(&img, format).map(Partition::Whole).unwrap();
        let export = export_dir(&img);
        let pid = kill_daemon(&fx);
        let err = m.mount(&mnt, &MountOptions::default()).unwrap_err();
        names_the_dead_daemon(&err, Step::Mount, &img, pid);
        export_gone(&export);
        assert_nothing_left(&mut fx);

        let m = attach(&img, format).map(Partition::Whole).unwrap();
        let export = export_dir(&img);
        let pid = kill_daemon(&fx);
        let err = m.close().unwrap_err();
        names_the_dead_daemon(&err, Step::Detach, &img, pid);
        export_gone(&export);
        assert_nothing_left(&mut fx);
    }
}

/// Killed while a thread writes and fsyncs through the mount: the writer
/// gets an I/O error, close() reports the lost writes and the dead daemon.
#[test]
fn killed_during_io() {
    let mut fx = Fixture::new();
    let mnt = fx.tree("mnt", &[]);
    for (img, format) in images(&fx) {
        let t = attach(&img, format)
            .map(Partition::Whole)
            .unwrap()
            .mount(&mnt, &MountOptions::default())
            .unwrap();
        let export = export_dir(&img);
        let target = t.path().join("stream");
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || -> std::io::Result<u64> {
            let mut f = std::fs::File::create(&target)?;
            let chunk = vec![0x5au8; 256 << 10];
            let mut n = 0u64;
            loop {
                f.write_all(&chunk)?;
                f.sync_data()?;
                n += 1;
                if n == 2 {
                    let _ = started_tx.send(());
                }
                if n > 4000 {
                    return Ok(n);
                }
            }
        });
        started_rx.recv().unwrap();
        let pid = kill_daemon(&fx);
        let written = writer.join().unwrap();
        assert!(
            written.is_err(),
            "writes went on after the kill: {written:?}"
        );
        let err = t.close().unwrap_err();
        names_the_dead_daemon(&err, Step::Detach, &img, pid);
        assert!(
            err.errors()
                .iter()
                .any(|e| e.step() == Some(Step::Unmount) || e.to_string().contains("fsync")),
            "the failed flush is reported too: {err}"
        );
        export_gone(&export);
        assert_nothing_left(&mut fx);
    }
}

//! The Fuse backend with `AttachOptions::shared_daemon`: one
//! qemu-storage-daemon per process serves every image over QMP (issue 17).
//! Real qcow2 images made by qemu-img, real daemons, loop devices and
//! mounts; every test checks it left nothing behind.
//!
//! The tests run one at a time: they share the process's daemon, and one
//! of them kills it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use common::{
    Fixture, bench_write_as, convert, fixture_qemu, is_mount_point, qemu_write_refused, run,
    signal, wait_stopped,
};
use diskmount::{
    AttachOptions, Attached, Format, Fuse, Image, MountOptions, Mounted, Partition, Step,
    Unattached,
};

/// Set in the child that `a_crashed_owner_is_cleaned_up` runs and kills.
const CHILD: &str = "DISKMOUNT_FUSE_SHARED_CHILD";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn shared() -> AttachOptions {
    AttachOptions::default().shared_daemon(true)
}

/// An ext4 image holding `files`, converted to qcow2.
fn qcow2(fx: &Fixture, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let raw = fx.ext4(&format!("{name}.raw"), files);
    let img = convert(fx, &raw, name, "qcow2", &[]);
    std::fs::remove_file(raw).unwrap();
    img
}

fn attach(image: Image) -> diskmount::Result<Attached<Fuse>> {
    Unattached::<Fuse>::with_options(image, shared()).attach()
}

fn mount(img: &Path, mnt: &Path) -> Mounted<Fuse> {
    attach(Image::file(img, Format::Qcow2).unwrap())
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(mnt, &MountOptions::default())
        .unwrap()
}

/// The pid of the one qemu process that has `fx`'s files open: the shared
/// daemon (QMP on descriptor 3, no image on its command line).
fn daemon(fx: &Fixture) -> u32 {
    let found = fixture_qemu(fx);
    assert_eq!(found.len(), 1, "one daemon serves the images: {found:?}");
    let pid = found[0].0;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("socket,id=qmp0,fd=3"), "{cmdline}");
    assert!(!cmdline.contains("--blockdev"), "{cmdline}");
    pid
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// What debugfs reads at `path` in the qcow2 image `img` (converted back
/// to raw by qemu-img: no code of ours reads it).
fn read_back(fx: &Fixture, img: &Path, path: &str) -> String {
    let raw = fx.path().join("readback.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(img)
        .arg(&raw));
    let got = run(Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(&raw));
    std::fs::remove_file(raw).unwrap();
    got
}

#[test]
fn many_qcow2_cycles_through_one_daemon() {
    let _serial = serial();
    let mut fx = Fixture::new();
    let img = qcow2(&fx, "disk.qcow2", &[("id", "qcow2")]);
    let mnt = fx.tree("mnt", &[]);
    let mut pids = Vec::new();
    for n in 0..20 {
        let t = mount(&img, &mnt);
        assert_eq!(std::fs::read_to_string(mnt.join("id")).unwrap(), "qcow2");
        std::fs::write(mnt.join(format!("n{n}")), n.to_string()).unwrap();
        pids.push(daemon(&fx));
        t.close().unwrap();
        // The daemon let go of the image, and keeps running.
        assert!(fixture_qemu(&fx).is_empty(), "{:?}", fixture_qemu(&fx));
        fx.assert_clean();
    }
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    assert!(running(pids[0]));
    assert_eq!(read_back(&fx, &img, "/n19"), "19");
    common::assert_no_records(&fx);
    fx.assert_clean();
}

#[test]
fn two_images_at_once_and_one_image_twice() {
    let _serial = serial();
    let mut fx = Fixture::new();
    let a = qcow2(&fx, "a.qcow2", &[("id", "a")]);
    let b = qcow2(&fx, "b.qcow2", &[("id", "b")]);
    let (ma, mb) = (fx.tree("ma", &[]), fx.tree("mb", &[]));
    let ta = mount(&a, &ma);
    let tb = mount(&b, &mb);
    let pid = daemon(&fx);
    assert_eq!(std::fs::read_to_string(ma.join("id")).unwrap(), "a");
    assert_eq!(std::fs::read_to_string(mb.join("id")).unwrap(), "b");
    // The same image again: refused while the daemon holds it.
    let err = attach(Image::file(&a, Format::Qcow2).unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("in use: process {pid} (qemu-storage-daemon)")),
        "{err}"
    );
    std::fs::write(mb.join("w"), "b written").unwrap();
    // Closed in the other order than attached.
    ta.close().unwrap();
    assert_eq!(std::fs::read_to_string(mb.join("id")).unwrap(), "b");
    assert_eq!(daemon(&fx), pid);
    tb.close().unwrap();
    assert_eq!(read_back(&fx, &b, "/w"), "b written");
    fx.assert_clean();
}

#[test]
fn read_only_images_and_qemu_locks() {
    let _serial = serial();
    let mut fx = Fixture::new();
    let img = qcow2(&fx, "disk.qcow2", &[("id", "ro")]);
    let mnt = fx.tree("mnt", &[]);
    for read_only in [true, false] {
        let image = Image::file(&img, Format::Qcow2)
            .unwrap()
            .read_only(read_only);
        let t = attach(image)
            .unwrap()
            .map(Partition::Whole)
            .unwrap()
            .mount(&mnt, &MountOptions::default())
            .unwrap();
        assert_eq!(std::fs::read_to_string(mnt.join("id")).unwrap(), "ro");
        let wrote = std::fs::write(mnt.join("w"), "x");
        if read_only {
            let e = wrote.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(nix::libc::EROFS), "{e}");
        } else {
            wrote.unwrap();
        }
        // qemu's own writers are refused while the daemon holds the image.
        qemu_write_refused(
            &format!("shared read_only={read_only}"),
            &mut bench_write_as(&img, "qcow2"),
        );
        t.close().unwrap();
        fx.assert_clean();
    }
    // The locks went with the export (this write clobbers the image).
    run(&mut bench_write_as(&img, "qcow2"));
}

#[test]
fn backing_chains_are_checked_file_by_file() {
    let _serial = serial();
    let mut fx = Fixture::new();
    let base = qcow2(&fx, "base.qcow2", &[("id", "base")]);
    let top = fx.path().join("top.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&top));
    let allowed = |p: &Path| {
        Image::file(p, Format::Qcow2)
            .unwrap()
            .allow_backing_file(true)
    };
    // Refused unless allowed, before the daemon opens anything.
    let err = attach(Image::file(&top, Format::Qcow2).unwrap()).unwrap_err();
    assert_eq!(err.step(), Some(Step::Probe), "{err}");
    assert!(err.to_string().contains("backing"), "{err}");
    // Allowed: the chain is checked, and read through the shared daemon.
    let mnt = fx.tree("mnt", &[]);
    let t = attach(allowed(&top))
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    daemon(&fx);
    assert_eq!(std::fs::read_to_string(mnt.join("id")).unwrap(), "base");
    std::fs::write(mnt.join("on-top"), "top").unwrap();
    t.close().unwrap();
    fx.assert_clean();
    // Allowed chains are still checked link by link: a second link with
    // an external data file, or naming a protocol (qemu would connect),
    // is refused although the first link is a fine image, and no daemon
    // opens any of it.
    let data = fx.path().join("data.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-o"])
        .arg(format!(
            "data_file={}",
            fx.path().join("data.raw").display()
        ))
        .arg(&data)
        .arg("64M"));
    let nbd = fx.path().join("nbd.qcow2");
    run(Command::new("qemu-img")
        .args([
            "create",
            "-f",
            "qcow2",
            "-u",
            "-F",
            "raw",
            "-b",
            "nbd:127.0.0.1:1",
        ])
        .arg(&nbd)
        .arg("64M"));
    for (middle, word) in [(&data, "data"), (&nbd, "nbd:")] {
        let top = fx.path().join("hostile.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-f", "qcow2", "-u", "-F", "qcow2", "-b"])
            .arg(middle)
            .arg(&top)
            .arg("64M"));
        let err = attach(allowed(&top)).unwrap_err();
        assert_eq!(err.step(), Some(Step::Probe), "{err}");
        assert!(err.to_string().contains(word), "{word:?} missing: {err}");
        assert!(fixture_qemu(&fx).is_empty(), "{:?}", fixture_qemu(&fx));
        std::fs::remove_file(top).unwrap();
    }
    fx.assert_clean();
}

#[test]
fn a_killed_daemon_is_reported_and_replaced() {
    let _serial = serial();
    let mut fx = Fixture::new();
    let img = qcow2(&fx, "disk.qcow2", &[("id", "x")]);
    let mnt = fx.tree("mnt", &[]);
    let t = mount(&img, &mnt);
    let old = daemon(&fx);
    run(Command::new("kill").args(["-9", &old.to_string()]));
    let err = t.close().unwrap_err();
    let all = err.errors();
    assert!(
        all.iter().any(|e| e.step() == Some(Step::Detach)
            && e.to_string()
                .contains(&format!("qemu-storage-daemon (shared, pid {old})"))
            && e.to_string().contains("killed by signal 9")),
        "{err}"
    );
    assert!(!is_mount_point(&mnt));
    fx.assert_clean();
    // The next attach starts a new daemon.
    let t = mount(&img, &mnt);
    let new = daemon(&fx);
    assert_ne!(new, old);
    assert_eq!(std::fs::read_to_string(mnt.join("id")).unwrap(), "x");
    t.close().unwrap();
    fx.assert_clean();
}

/// The shared daemon stopped (SIGSTOP) under a mount: close() waits a
/// moment, then kills it so that the teardown goes on, reports both, and
/// leaves nothing; the next attach gets a new daemon.
#[test]
fn a_stopped_daemon_is_killed_at_close_and_replaced() {
    let _serial = serial();
    let mut fx = Fixture::new();
    let img = qcow2(&fx, "disk.qcow2", &[("id", "x")]);
    let mnt = fx.tree("mnt", &[]);
    let t = mount(&img, &mnt);
    std::fs::write(mnt.join("late"), "lost").unwrap();
    let pid = daemon(&fx);
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    wait_stopped(pid);
    let msg = t.close().unwrap_err().to_string();
    assert!(
        msg.contains(&format!("qemu-storage-daemon (pid {pid})"))
            && msg.contains("is stopped")
            && msg.contains("was killed"),
        "{msg}"
    );
    assert!(!is_mount_point(&mnt));
    assert!(!running(pid));
    fx.assert_clean();
    let t = mount(&img, &mnt);
    assert_ne!(daemon(&fx), pid);
    t.close().unwrap();
    common::assert_no_records(&fx);
    fx.assert_clean();
}

/// The process `a_crashed_owner_is_cleaned_up` kills: two images served
/// by its shared daemon, one mounted, one attached; prints `READY <pid of
/// the daemon>` and waits. Does nothing unless run as that child.
#[test]
fn child_holding_two_exports() {
    let Some(spec) = std::env::var_os(CHILD) else {
        return;
    };
    common::run_dir_from_env();
    let spec = spec.to_string_lossy().into_owned();
    let parts: Vec<&str> = spec.split('|').collect();
    let [a, b, mnt] = parts[..] else {
        panic!("{CHILD}={spec}")
    };
    let mounted = mount(Path::new(a), Path::new(mnt));
    let attached = attach(Image::file(b, Format::Qcow2).unwrap()).unwrap();
    let pid = fixture_qemu_of(Path::new(a));
    println!("READY {pid}");
    loop {
        std::thread::park();
        let _ = (&mounted, &attached);
    }
}

/// The qemu process that has `img` open.
fn fixture_qemu_of(img: &Path) -> u32 {
    common::qemu_processes()
        .into_iter()
        .find(|(_, c)| c.contains(&*img.to_string_lossy()))
        .expect("a daemon has the image open")
        .0
}

#[test]
fn a_crashed_owner_is_cleaned_up() {
    let _serial = serial();
    let mut fx = Fixture::new();
    let records = fx.records();
    let a = qcow2(&fx, "a.qcow2", &[("id", "a")]);
    let b = qcow2(&fx, "b.qcow2", &[]);
    let mnt = fx.tree("mnt", &[]);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holding_two_exports",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD,
            format!("{}|{}|{}", a.display(), b.display(), mnt.display()),
        )
        .env("DISKMOUNT_RUN_DIR", &records)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pid: u32 = loop {
        let line = lines.next().expect("the child said READY").unwrap();
        // After the harness's `test NAME ... ` on the same line.
        if let Some((_, pid)) = line.split_once("READY ") {
            break pid.trim().parse().unwrap();
        }
    };
    assert!(is_mount_point(&mnt));
    // Two records, both naming the one shared daemon.
    let found = diskmount::cleanup::scan(&diskmount::RunDir::new(&records)).unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found.iter().all(|f| f.helper_pid() == Some(pid)),
        "{found:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .env("DISKMOUNT_RUN_DIR", &records)
        .arg("cleanup")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!running(pid), "the shared daemon {pid} still runs");
    assert!(!is_mount_point(&mnt));
    let left: Vec<_> = std::fs::read_dir(&records)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in the run directory: {left:?}");
    fx.assert_clean();
}

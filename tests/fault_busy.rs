//! The mount point busy at unmount because another process holds a file
//! open inside or has its working directory there, and the mount taken
//! from under us by someone else's lazy unmount. (tests/close.rs has the
//! in-process holder and the retry bound's timing.)
//!
//! A teardown that failed keeps its crash-recovery record while its
//! process lives (`diskmount cleanup` leaves live processes alone); the
//! fixture drops it once the leak check passed.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, is_mount_point, run};
use diskmount::{
    Error, Format, Image, Loop, MountOptions, Partition, RetryPolicy, Step, Unattached, adopt,
};

const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 6,
    timeout: Duration::from_millis(400),
    max_delay: Duration::from_millis(100),
};

fn mount(img: &Path, mnt: &Path) -> diskmount::Mounted<Loop> {
    Unattached::<Loop>::new(Image::file(img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(mnt, &MountOptions::default().unmount_retry(POLICY))
        .unwrap()
}

/// A `sleep` that holds `file` open (`file`: Some) or sits in `cwd`.
fn holder(cwd: &Path, file: Option<&str>) -> Child {
    let script = match file {
        Some(f) => format!("exec 3<{f}; echo held; exec sleep 60 <&3"),
        None => "echo held; exec sleep 60".to_string(),
    };
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "held\n");
    child
}

#[track_caller]
fn assert_busy(err: &Error, mnt: &Path) {
    let msg = err.to_string();
    let first = err.errors()[0];
    assert_eq!(first.step(), Some(Step::Unmount), "{msg}");
    assert_eq!(first.path(), Some(mnt), "{msg}");
    let Error::Exhausted { attempts, .. } = first else {
        panic!("not the retry bound: {msg}");
    };
    assert!(*attempts > 1, "retried: {msg}");
    assert!(msg.contains("busy"), "{msg}");
    assert_eq!(err.errno(), Some(nix::libc::EBUSY), "{msg}");
}

/// Each kind of holder in another process: close() retries within the
/// bound and reports; the mount is never lazily detached; once the holder
/// is gone, adopting the mount point tears everything down.
#[test]
fn a_process_holding_a_file_or_its_cwd_inside_then_adoption_cleans_up() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x"), ("sub/g", "y")]);
    let mnt = fx.tree("mnt", &[]);
    for file in [Some("f"), None] {
        let t = mount(&img, &mnt);
        let mut child = holder(&mnt.join("sub"), file.map(|_| "../f"));
        let start = Instant::now();
        let err = t.close().unwrap_err();
        let waited = start.elapsed();
        assert_busy(&err, &mnt);
        assert!(waited < Duration::from_secs(3), "bounded: {waited:?}");
        assert!(is_mount_point(&mnt), "never a lazy unmount");
        child.kill().unwrap();
        child.wait().unwrap();
        adopt(&mnt).unwrap().close().unwrap();
        fx.assert_clean();
    }
}

/// `diskmount run` whose command leaves a process behind in the image:
/// run's teardown gives up within the bound and says so, its record is
/// kept, and once that process is gone `diskmount cleanup` restores a
/// clean machine.
#[test]
fn run_left_busy_by_a_background_process_then_cleanup() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let pidfile = fx.path().join("bg.pid");
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .env("DISKMOUNT_RUN_DIR", &records)
        .arg("run")
        .arg(&img)
        .args(["--", "sh", "-c"])
        .arg(format!(
            "sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {}",
            pidfile.display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // The retries are logged (warn), the error is the last line.
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("diskmount: ")
            && last.contains("unmount")
            && last.contains("busy")
            && last.contains("gave up"),
        "{stderr}"
    );
    assert!(stderr.contains("retrying (attempt 2)"), "{stderr}");
    assert!(!fx.leaks().is_empty(), "the busy mount stays");
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        1,
        "record kept"
    );
    let bg = std::fs::read_to_string(&pidfile).unwrap();
    run(Command::new("kill").arg(bg.trim()));
    // The sleeper is reparented to init; wait until it is gone.
    let start = Instant::now();
    while Path::new(&format!("/proc/{}", bg.trim())).exists() {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .env("DISKMOUNT_RUN_DIR", &records)
        .arg("cleanup")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("1 torn down, 0 failed"), "{stdout}");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
    fx.assert_clean();
    // Nor is run's temporary mount point left.
    let tmp = last
        .split(": ")
        .find(|w| w.contains(".diskmount-"))
        .expect("the error names the mount point");
    assert!(!Path::new(tmp).exists(), "{tmp} left");
}

/// Someone else lazily unmounts our mount and mounts their own filesystem
/// on the same directory: our teardown flushes ours, notices the path no
/// longer shows it, leaves theirs alone, and releases our device.
#[test]
fn lazily_unmounted_and_replaced_by_someone_elses_mount_is_left_alone() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let mnt = fx.tree("mnt", &[]);
    let t = mount(&img, &mnt);
    std::fs::write(t.path().join("written"), "before the lazy unmount").unwrap();
    run(Command::new("umount").arg("-l").arg(&mnt));
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "theirs"])
        .arg(&mnt));
    std::fs::write(mnt.join("theirs"), "theirs").unwrap();
    let err = t.close().unwrap_err();
    assert_eq!(err.step(), Some(Step::Unmount), "{err}");
    assert_eq!(err.path(), Some(mnt.as_path()), "{err}");
    assert!(err.to_string().contains("no longer shows"), "{err}");
    // Theirs is untouched.
    assert_eq!(
        std::fs::read_to_string(mnt.join("theirs")).unwrap(),
        "theirs"
    );
    common::system::umount(&mnt);
    // Ours was flushed and is gone with its device.
    fx.assert_clean();
    assert_eq!(
        run(Command::new("debugfs")
            .args(["-R", "cat /written"])
            .arg(&img)),
        "before the lazy unmount"
    );
}

//! A process holding each state (attached, mapped with a BLKPG partition,
//! mounted), killed with SIGKILL, for the Loop and the Fuse backend; then
//! `diskmount cleanup` restores a clean machine: no device, mount, qemu
//! process, export directory or record. (tests/crash.rs shows what the kill
//! alone leaves with Loop; tests/cli.rs has `run` and a partition mounted
//! through Fuse, each followed by cleanup.)

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Fixture, fixture_qemu, run};

fn dm(records: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diskmount"));
    c.env("DISKMOUNT_RUN_DIR", records);
    c
}

/// Starts `diskmount hold` with `args`, waits for READY, returns the
/// record and the helper directory named after it, then SIGKILLs and
/// reaps it.
fn hold_and_kill(records: &Path, args: &[&str], paths: &[&Path]) -> (serde_json::Value, PathBuf) {
    let mut child = dm(records)
        .arg("hold")
        .args(args)
        .args(paths)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("READY "), "holder said {line:?}");
    let record = std::fs::read_dir(records)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a record");
    let fields = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    (fields, record.with_extension("helper"))
}

fn cleanup(records: &Path) -> String {
    let out = dm(records).arg("cleanup").output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 failed"), "{text}");
    text
}

#[test]
fn every_state_of_loop_and_fuse_killed_then_cleanup() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let raw = fx.mbr_image("mbr.img");
    let qcow2 = fx.path().join("mbr.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let mnt = fx.tree("mnt", &[]);
    let mut runs = 0;
    for (backend, format, img) in [
        ("loop", "raw", &raw),
        ("fuse", "raw", &raw),
        ("fuse", "qcow2", &qcow2),
    ] {
        for state in ["attached", "mapped", "mounted"] {
            let what = format!("{backend} {format} {state}");
            let mut args = vec![
                "--backend",
                backend,
                "--format",
                format,
                "--state",
                state,
                "--partition",
                "5",
            ];
            if state == "attached" {
                args.truncate(6);
            }
            let mut paths: Vec<&Path> = vec![img];
            if state == "mounted" {
                paths.push(&mnt);
            }
            let (fields, helper_dir) = hold_and_kill(&records, &args, &paths);
            let export: Option<PathBuf> = helper_dir.exists().then_some(helper_dir);
            assert_eq!(export.is_some(), backend == "fuse", "{what}: {fields}");
            assert_eq!(
                fields["helper"].is_object(),
                backend == "fuse",
                "{what}: {fields}"
            );
            let out = cleanup(&records);
            assert!(
                fixture_qemu(&fx).is_empty(),
                "{what}: {:?}\n{out}",
                fixture_qemu(&fx)
            );
            if let Some(dir) = &export {
                assert!(!dir.exists(), "{what}: {} left\n{out}", dir.display());
            }
            assert!(!common::is_mount_point(&mnt), "{what}\n{out}");
            let leaks = fx.leaks();
            assert!(leaks.is_empty(), "{what}: {leaks:?}\n{out}");
            assert_eq!(
                std::fs::read_dir(&records).unwrap().count(),
                0,
                "{what}: records left\n{out}"
            );
            runs += 1;
        }
    }
    assert_eq!(runs, 9);
    // The image is still sound: a fresh mount reads partition 5's file.
    let out = dm(&records)
        .args(["run", "--partition", "5"])
        .arg(&raw)
        .args(["--", "cat", "id"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "p5", "{out:?}");
    fx.assert_clean();
}

/// A holder killed while mounted, and its mount then moved by someone
/// (bound elsewhere, the recorded mount point unmounted): the record names
/// no mount there, so the device's mount is someone's. `cleanup` refuses
/// to release the device while it is mounted, says where, and leaves the
/// mount, the device and the record; once that mount is gone, the next
/// `cleanup` ends the rest.
#[test]
fn cleanup_leaves_a_device_whose_mount_was_moved_mounted() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.ext4("disk.img", &[("id", "moved")]);
    let mnt = fx.tree("mnt", &[]);
    let elsewhere = fx.tree("elsewhere", &[]);
    hold_and_kill(
        &records,
        &["--backend", "loop", "--state", "mounted"],
        &[&img, &mnt],
    );
    run(Command::new("mount")
        .arg("--bind")
        .arg(&mnt)
        .arg(&elsewhere));
    // Unmounted on the way out even if a check fails, so that a failure
    // leaves nothing mounted either.
    struct Bound<'a>(&'a Path);
    impl Drop for Bound<'_> {
        fn drop(&mut self) {
            if common::is_mount_point(self.0) {
                let _ = Command::new("umount").arg(self.0).status();
            }
        }
    }
    let bound = Bound(&elsewhere);
    // The recorded mount point goes; the filesystem stays mounted (the
    // device with it) at `elsewhere`.
    run(Command::new("umount").arg(&mnt));
    let out = dm(&records).arg("cleanup").output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("is mounted on {}", elsewhere.display()))
            && text.contains("left alone"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(elsewhere.join("id")).unwrap(),
        "moved",
        "{text}"
    );
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 1, "{text}");
    common::system::umount(&elsewhere);
    drop(bound);
    cleanup(&records);
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
    fx.assert_clean();
}

//! A process killed with SIGKILL while holding each state: autoclear
//! releases the loop device by itself; only a mount can outlive the process,
//! and the device goes with it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Fixture, is_mount_point};

/// Starts `diskmount hold`, waits for READY, kills it with SIGKILL and
/// reaps it. Returns the device it held.
fn hold_and_kill(fx: &Fixture, args: &[&std::ffi::OsStr]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        // Records of the killed holder go with the fixture, not /run.
        .env("DISKMOUNT_RUN_DIR", fx.path().join("records"))
        .arg("hold")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let device = line
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("holder said {line:?}"));
    let device = device.trim().to_string();
    assert!(common::bound_loops().iter().any(|(d, _)| *d == device));
    child.kill().unwrap();
    child.wait().unwrap();
    device
}

#[test]
fn killed_while_attached_or_mapped_leaves_nothing() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    for state in ["attached", "mapped"] {
        hold_and_kill(&fx, &["--state".as_ref(), state.as_ref(), img.as_os_str()]);
        fx.assert_clean();
    }
}

#[test]
fn killed_while_mounted_leaves_only_the_mount() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let mnt = fx.tree("mnt", &[]);
    let device = hold_and_kill(
        &fx,
        &[
            "--state".as_ref(),
            "mounted".as_ref(),
            img.as_os_str(),
            mnt.as_os_str(),
        ],
    );
    assert!(is_mount_point(&mnt), "the mount outlives the process");
    assert!(
        common::bound_loops().iter().any(|(d, _)| *d == device),
        "held by the mount"
    );
    // Unmounting is all it takes: the loop device is released with it.
    common::system::umount(&mnt);
    fx.assert_clean();
}

#[test]
fn killed_while_a_blkpg_partition_is_mapped_or_mounted() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    hold_and_kill(
        &fx,
        &[
            "--state".as_ref(),
            "mapped".as_ref(),
            "--partition".as_ref(),
            "5".as_ref(),
            img.as_os_str(),
        ],
    );
    fx.assert_clean();
    let mnt = fx.tree("mnt", &[]);
    hold_and_kill(
        &fx,
        &[
            "--state".as_ref(),
            "mounted".as_ref(),
            "--partition".as_ref(),
            "6".as_ref(),
            img.as_os_str(),
            mnt.as_os_str(),
        ],
    );
    common::system::umount(&mnt);
    fx.assert_clean();
}

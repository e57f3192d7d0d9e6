//! A mount that stays busy: `unmount` gives the mounted value back with
//! the error, a retry works once the holder is gone, and `close()` never
//! unmaps or detaches under the live mount.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::{Fixture, bound_loops, is_mount_point};
use diskmount::{
    ErrorKind, Format, Image, Loop, MountOptions, Mounted, Partition, RetryPolicy, Step, Unattached,
};

/// Gives up on a busy mount quickly.
const QUICK: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    timeout: Duration::from_millis(300),
    max_delay: Duration::from_millis(50),
};

fn mounted(fx: &Fixture) -> Mounted<Loop> {
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let mnt = fx.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    Unattached::<Loop>::new(Image::file(&img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default().unmount_retry(QUICK))
        .unwrap()
}

/// A process with its working directory in the mount: the mount is busy
/// while it lives.
fn holder(dir: &std::path::Path) -> Child {
    Command::new("sleep")
        .arg("60")
        .current_dir(dir)
        .spawn()
        .unwrap()
}

fn our_loop_bound(fx: &Fixture) -> bool {
    let root = fx.path().to_string_lossy().into_owned();
    bound_loops().iter().any(|(_, b)| b.starts_with(&root))
}

#[test]
fn a_busy_unmount_gives_the_mount_back_and_a_retry_works() {
    let mut fx = Fixture::new();
    let m = mounted(&fx);
    let mnt = m.path().to_path_buf();
    let mut hold = holder(&mnt);
    let err = m.unmount().expect_err("the mount is busy");
    assert_eq!(err.step(), Some(Step::Unmount), "{err}");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    assert!(err.mounted().is_some(), "the mounted value comes back");
    assert!(is_mount_point(&mnt), "still mounted");
    assert!(our_loop_bound(&fx), "the device stays under the live mount");
    hold.kill().unwrap();
    hold.wait().unwrap();
    let mapped = err
        .retry()
        .expect("the retry works once the holder is gone");
    assert!(!is_mount_point(&mnt));
    mapped.close().unwrap();
    fx.assert_clean();
}

#[test]
fn close_never_detaches_under_a_live_mount() {
    let mut fx = Fixture::new();
    let m = mounted(&fx);
    let mnt = m.path().to_path_buf();
    let mut hold = holder(&mnt);
    let err = m.close().expect_err("the mount is busy");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(is_mount_point(&mnt), "still mounted");
    // The device was not torn down under the mount: the filesystem still
    // works, and its device is still bound.
    assert!(our_loop_bound(&fx));
    assert_eq!(std::fs::read_to_string(mnt.join("f")).unwrap(), "x");
    hold.kill().unwrap();
    hold.wait().unwrap();
    // Once the holder is gone, an unmount by anyone releases it all: the
    // loop device goes with its last user (autoclear).
    common::system::umount(&mnt);
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        !our_loop_bound(&fx)
    });
    assert!(gone, "the loop device stayed after the mount went");
    fx.assert_clean();
}

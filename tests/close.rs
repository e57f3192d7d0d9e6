//! `close()` tries every teardown step and reports every error; a busy
//! mount is retried within its bound and then reported, never lazily
//! detached, and nothing under it (mapping, device) is torn down while it
//! is still mounted.

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, is_mount_point, run};
use diskmount::{
    Error, Format, Image, Loop, MountOptions, Partition, RetryPolicy, Step, Unattached,
};

#[test]
fn busy_mount_is_retried_then_every_failure_is_reported() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let mnt = fx.tree("mnt", &[]);
    let policy = RetryPolicy {
        max_attempts: 5,
        timeout: Duration::from_millis(300),
        max_delay: Duration::from_millis(100),
    };
    let mounted = Unattached::<Loop>::new(Image::file(&img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default().unmount_retry(policy))
        .unwrap();
    let device = mounted.device().to_path_buf();
    // A process holding a file open inside makes the mount busy.
    let holder = std::fs::File::open(mnt.join("f")).unwrap();
    let start = Instant::now();
    let err = mounted.close().unwrap_err();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "retried for {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "bounded: {waited:?}");
    assert_eq!(err.step(), Some(Step::Unmount), "{err}");
    assert!(matches!(err, Error::Exhausted { .. }), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    // Unmap and detach did not run under the live mount: no error of
    // theirs, and the device is still bound under it.
    assert_eq!(err.errors().len(), 1, "{err}");
    assert!(
        common::bound_loops()
            .iter()
            .any(|(d, _)| *d == device.to_string_lossy()),
        "the device was detached under a live mount"
    );
    // Never a silent lazy unmount: it is still there.
    assert!(is_mount_point(&mnt));
    // And the crash-recovery record stays, for `diskmount cleanup`.
    assert!(
        common::own_records(&fx)
            .iter()
            .any(|r| r.image() == Some(img.as_path())),
        "the record of an unfinished teardown is kept"
    );

    // Once the user lets go, an ordinary umount frees everything: the loop
    // device goes with the mount (autoclear).
    drop(holder);
    common::system::umount(&mnt);
    assert!(
        !common::bound_loops()
            .iter()
            .any(|(d, _)| *d == device.to_string_lossy())
    );
    fx.assert_clean();
}

#[test]
fn unmounted_behind_our_back_is_reported_not_guessed() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let mnt = fx.tree("mnt", &[]);
    let mounted = common::mount_whole::<Loop>(&img, &mnt);
    // A plain umount is refused while we hold the mount (EBUSY); a lazy
    // one detaches it from the path all the same.
    let out = std::process::Command::new("umount")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(!out.status.success(), "umount of a held mount succeeded");
    run(std::process::Command::new("umount").arg("-l").arg(&mnt));
    let err = mounted.close().unwrap_err();
    assert_eq!(err.step(), Some(Step::Unmount), "{err}");
    assert!(err.to_string().contains("no longer shows"), "{err}");
    // The rest of the teardown still ran.
    fx.assert_clean();
}

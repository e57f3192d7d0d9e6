//! The Fuse backend: qemu-storage-daemon's FUSE export under a loop device.

mod common;

use std::process::Command;

use common::{Fixture, is_mount_point, run};
use diskmount::{
    BackendKind, Error, Format, Fuse, Image, MountOptions, Partition, Step, Unattached,
};

#[test]
fn raw_image_through_the_daemon_reads_and_writes() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "raw")]);
    let mnt = fx.tree("mnt", &[]);
    let t = Unattached::<Fuse>::new(Image::file(&img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    assert_eq!(t.backend(), BackendKind::Fuse);
    assert!(!common::qemu_processes().is_empty());
    assert_eq!(std::fs::read_to_string(t.path().join("id")).unwrap(), "raw");
    std::fs::write(t.path().join("written"), "through fuse").unwrap();
    t.close().unwrap();
    fx.assert_clean();
    let got = run(Command::new("debugfs")
        .args(["-R", "cat /written"])
        .arg(&img));
    assert_eq!(got, "through fuse");
}

#[test]
fn a_daemon_killed_while_mounted_is_reported_and_nothing_is_left() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "x")]);
    let mnt = fx.tree("mnt", &[]);
    let t = Unattached::<Fuse>::new(Image::file(&img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    let root = fx.path().to_string_lossy().into_owned();
    let (pid, _) = common::qemu_processes()
        .into_iter()
        .find(|(_, c)| c.contains(&root))
        .expect("the daemon runs");
    run(Command::new("kill").args(["-9", &pid.to_string()]));
    let err = t.close().unwrap_err();
    let all: Vec<&Error> = err.errors();
    assert!(
        all.iter().any(|e| e.step() == Some(Step::Detach) && e.to_string().contains("killed by signal 9")),
        "{err}"
    );
    assert!(!is_mount_point(&mnt));
    fx.assert_clean();
}

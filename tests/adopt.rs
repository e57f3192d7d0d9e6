//! Adoption: devices and mounts left by another process (util-linux, or a
//! killed diskmount) are recognised from sysfs and mountinfo and torn down
//! the way they were built.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Fixture, is_mount_point, run};
use diskmount::{Adopted, BackendKind, Mapping, Step, adopt};

fn losetup(args: &[&str], img: &Path) -> String {
    run(Command::new("losetup")
        .args(["--find", "--show"])
        .args(args)
        .arg(img))
    .trim()
    .to_string()
}

#[test]
fn a_whole_loop_device_mounted_by_util_linux() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    // A mount point whose name mountinfo has to escape.
    let mnt = fx.tree("mount point", &[]);
    let dev = losetup(&[], &img);
    run(Command::new("mount").arg(&dev).arg(&mnt));
    let adopted = adopt(&mnt).unwrap();
    assert!(matches!(adopted, Adopted::Mounted(_)));
    assert_eq!(adopted.mount_point(), Some(mnt.as_path()));
    assert_eq!(adopted.device(), Path::new(&dev));
    assert_eq!(adopted.attached_device(), Path::new(&dev));
    assert_eq!(adopted.backend(), BackendKind::Loop);
    assert_eq!(adopted.mapping(), Mapping::Whole);
    assert_eq!(adopted.image(), img);
    adopted.close().unwrap();
    assert!(!is_mount_point(&mnt));
    fx.assert_clean();
}

#[test]
fn an_attached_loop_device_by_its_node() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let dev = losetup(&[], &img);
    let adopted = adopt(&dev).unwrap();
    assert!(matches!(adopted, Adopted::Attached(_)), "{adopted:?}");
    adopted.close().unwrap();
    fx.assert_clean();
}

#[test]
fn a_blkpg_partition_by_mount_point_and_by_node() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    let (_, start, size) = common::layout(&img)
        .into_iter()
        .find(|(n, ..)| *n == 5)
        .unwrap();
    for by_node in [false, true] {
        let dev = losetup(&[], &img);
        run(Command::new("addpart").args([
            &dev,
            "5",
            &(start / 512).to_string(),
            &(size / 512).to_string(),
        ]));
        let part = format!("{dev}p5");
        let mnt = fx.tree("mnt", &[]);
        run(Command::new("mount").arg(&part).arg(&mnt));
        let adopted = if by_node { adopt(&part) } else { adopt(&mnt) }.unwrap();
        assert!(matches!(adopted, Adopted::Mounted(_)));
        assert_eq!(adopted.device(), Path::new(&part));
        assert_eq!(adopted.attached_device(), Path::new(&dev));
        assert_eq!(adopted.mapping(), Mapping::Blkpg);
        assert_eq!(adopted.partition(), Some(5));
        adopted.close().unwrap();
        fx.assert_clean();
    }
}

#[test]
fn an_offset_loop_device_over_an_attached_image() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    let (_, start, size) = common::layout(&img)
        .into_iter()
        .find(|(n, ..)| *n == 6)
        .unwrap();
    let whole = losetup(&[], &img);
    let part = losetup(
        &[
            "--offset",
            &start.to_string(),
            "--sizelimit",
            &size.to_string(),
        ],
        &img,
    );
    let mnt = fx.tree("mnt", &[]);
    run(Command::new("mount").arg(&part).arg(&mnt));
    let adopted = adopt(&mnt).unwrap();
    assert_eq!(adopted.mapping(), Mapping::OffsetLoop);
    assert_eq!(adopted.device(), Path::new(&part));
    assert_eq!(adopted.attached_device(), Path::new(&whole));
    assert_eq!(adopted.partition(), Some(6));
    adopted.close().unwrap();
    fx.assert_clean();
}

#[test]
fn what_a_killed_diskmount_left_behind() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    let mnt = fx.tree("mnt", &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .env("DISKMOUNT_RUN_DIR", fx.path().join("records"))
        .args(["hold", "--state", "mounted", "--partition", "5"])
        .arg(&img)
        .arg(&mnt)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("READY"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(is_mount_point(&mnt));
    let adopted = adopt(&mnt).unwrap();
    // diskmount's loop devices scan partitions, so the node could be the
    // kernel's; either way it is removed.
    assert_eq!(adopted.mapping(), Mapping::KernelNode);
    assert_eq!(adopted.partition(), Some(5));
    adopted.close().unwrap();
    fx.assert_clean();
}

#[test]
fn neither_a_mount_point_nor_a_device() {
    let mut fx = Fixture::new();
    let dir = fx.tree("dir", &[]);
    let err = adopt(&dir).unwrap_err();
    assert_eq!(err.step(), Some(Step::Open));
    assert!(err.to_string().contains("is not a mount point"), "{err}");
    let file = fx.blank("file", 10);
    let err = adopt(&file).unwrap_err();
    assert!(
        err.to_string()
            .contains("neither a mount point nor a block device"),
        "{err}"
    );
    fx.assert_clean();
}

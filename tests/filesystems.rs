//! Every filesystem on the allow-list that this kernel has: the same test
//! body, an image made by that filesystem's own mkfs.

mod common;

use common::Fixture;
use diskmount::{Format, Image, Loop, MountOptions, Partition, Unattached};

fn round_trip(fstype: &str, writable: bool) {
    let mut fx = Fixture::new();
    let img = fx.image(
        fstype,
        "disk.img",
        &[("etc/hostname", "guest\n"), ("a/b/c", "deep")],
    );
    let mnt = fx.tree("mnt", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let t = Unattached::<Loop>::new(image.clone())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    let expected_driver = match fstype {
        "ext2" | "ext3" => "ext4",
        other => other,
    };
    assert_eq!(t.fstype(), expected_driver);
    assert_eq!(t.is_read_only(), !writable, "{fstype}");
    assert_eq!(
        std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(),
        "guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(t.path().join("a/b/c")).unwrap(),
        "deep"
    );
    if writable {
        std::fs::write(t.path().join("written"), fstype).unwrap();
    } else {
        let err = std::fs::write(t.path().join("written"), fstype).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    }
    t.close().unwrap();
    fx.assert_clean();
    if writable {
        // Mount again and find the write.
        let got = diskmount::with_mounted(&image, Partition::Whole, |root| {
            std::fs::read_to_string(root.join("written")).unwrap()
        })
        .unwrap();
        assert_eq!(got, fstype);
    }
    fx.assert_clean();
}

#[test]
fn ext2() {
    round_trip("ext2", true);
}

#[test]
fn ext3() {
    round_trip("ext3", true);
}

#[test]
fn ext4() {
    round_trip("ext4", true);
}

#[test]
fn xfs() {
    round_trip("xfs", true);
}

#[test]
fn btrfs() {
    round_trip("btrfs", true);
}

#[test]
fn squashfs_is_mounted_read_only() {
    round_trip("squashfs", false);
}

#[test]
fn erofs_is_mounted_read_only() {
    round_trip("erofs", false);
}

//! Writes reach the image before `close()` or `with_mounted` returns Ok,
//! checked through paths that do not share our code: debugfs reads the
//! ext4 image file directly, util-linux mounts the xfs image afresh.

mod common;

use std::process::Command;

use common::{Fixture, run};
use diskmount::{Format, Image, Loop, Partition, with_mounted};

/// Deterministic content that differs per file.
fn content(i: usize) -> String {
    (0..(i * 997 % 50_000 + 1))
        .map(|j| char::from(b'a' + ((i * 31 + j * 7) % 26) as u8))
        .collect()
}

#[test]
fn with_mounted_writes_are_in_the_ext4_image_file() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    with_mounted(&image, Partition::Whole, |root| {
        std::fs::create_dir(root.join("data")).unwrap();
        for i in 0..20 {
            std::fs::write(root.join(format!("data/{i}")), content(i)).unwrap();
        }
    })
    .unwrap();
    fx.assert_clean();
    // No cache of ours is involved: debugfs reads the file's bytes.
    for i in 0..20 {
        let got = run(Command::new("debugfs")
            .args(["-R", &format!("cat /data/{i}")])
            .arg(&img));
        assert_eq!(got, content(i), "file {i}");
    }
    // And the filesystem is consistent (nothing left for a journal replay).
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(&img));
}

#[test]
fn close_writes_are_in_the_xfs_image_file() {
    let mut fx = Fixture::new();
    let img = fx.image("xfs", "disk.img", &[]);
    let mnt = fx.tree("mnt", &[]);
    let t = common::mount_whole::<Loop>(&img, &mnt);
    for i in 0..20 {
        std::fs::write(t.path().join(format!("f{i}")), content(i)).unwrap();
    }
    t.close().unwrap();
    fx.assert_clean();
    run(Command::new("xfs_repair").arg("-n").arg(&img));
    run(Command::new("mount")
        .args(["-o", "loop,ro,norecovery"])
        .arg(&img)
        .arg(&mnt));
    let check = (0..20)
        .all(|i| std::fs::read_to_string(mnt.join(format!("f{i}"))).ok() == Some(content(i)));
    common::system::umount_with(&["-d"], &mnt);
    assert!(check, "xfs content differs");
    fx.assert_clean();
}

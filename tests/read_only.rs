//! Read-only means read-only: not one byte of the image changes, even when
//! the filesystem's journal asks to be replayed.

mod common;

use std::process::Command;

use common::{Fixture, run};
use diskmount::{Format, Image, Loop, MountOptions, Partition, Unattached};

/// An ext4 image whose journal still holds a committed transaction that was
/// never checkpointed: a copy of the image taken while it was mounted.
fn dirty_ext4(fx: &Fixture) -> std::path::PathBuf {
    let clean = fx.ext4("clean.img", &[("f", "x")]);
    let mnt = fx.tree("prep.mnt", &[]);
    run(Command::new("mount")
        .arg("-o")
        .arg("loop,commit=1")
        .arg(&clean)
        .arg(&mnt));
    for i in 0..50 {
        std::fs::write(mnt.join(format!("new-{i}")), "journaled").unwrap();
    }
    // Commit the journal (sync), but do not unmount: no checkpoint.
    run(Command::new("sync").arg("-f").arg(mnt.join("f")));
    let dirty = fx.path().join("dirty.img");
    std::fs::copy(&clean, &dirty).unwrap();
    common::system::umount_with(&["-d"], &mnt);
    let sb = run(Command::new("dumpe2fs").arg("-h").arg(&dirty));
    assert!(
        sb.contains("needs_recovery"),
        "the copy must need recovery:\n{sb}"
    );
    dirty
}

fn sha(path: &std::path::Path) -> String {
    run(Command::new("sha256sum").arg(path))
}

#[test]
fn read_only_mount_of_a_dirty_journal_changes_nothing() {
    let mut fx = Fixture::new();
    let dirty = dirty_ext4(&fx);
    let before = sha(&dirty);
    let mnt = fx.tree("mnt", &[]);
    // Read-write device, read-only mount: without noload the kernel would
    // replay the journal into the image.
    let image = Image::file(&dirty, Format::Raw).unwrap();
    let t = Unattached::<Loop>::new(image)
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default().read_only(true))
        .unwrap();
    assert!(t.is_read_only());
    assert!(t.path().join("f").exists());
    t.close().unwrap();
    assert_eq!(sha(&dirty), before, "a read-only mount changed the image");
    fx.assert_clean();
}

#[test]
fn read_only_image_is_read_only_all_the_way_down() {
    let mut fx = Fixture::new();
    let dirty = dirty_ext4(&fx);
    let before = sha(&dirty);
    let mnt = fx.tree("mnt", &[]);
    let image = Image::file(&dirty, Format::Raw).unwrap().read_only(true);
    let a = Unattached::<Loop>::new(image).attach().unwrap();
    assert!(a.is_read_only());
    let name = a
        .device()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let ro = std::fs::read_to_string(format!("/sys/block/{name}/ro")).unwrap();
    assert_eq!(ro.trim(), "1", "the loop device itself is read-only");
    // Default options, yet the mount is read-only because the image is.
    let t = a
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    assert!(t.is_read_only());
    let err = std::fs::write(t.path().join("g"), "y").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    t.close().unwrap();
    assert_eq!(sha(&dirty), before);
    fx.assert_clean();
}

#[test]
fn the_dirty_journal_really_would_be_replayed() {
    // The control experiment: a plain read-only mount by util-linux (no
    // noload) of a read-write loop device changes the image. If it did not,
    // the two tests above could not fail.
    let mut fx = Fixture::new();
    let dirty = dirty_ext4(&fx);
    let before = sha(&dirty);
    let mnt = fx.tree("mnt", &[]);
    let dev = run(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&dirty));
    let dev = dev.trim();
    run(Command::new("mount").args(["-o", "ro", dev]).arg(&mnt));
    common::system::umount(&mnt);
    run(Command::new("losetup").args(["-d", dev]));
    assert_ne!(sha(&dirty), before);
    fx.assert_clean();
}

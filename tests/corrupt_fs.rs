//! Filesystems whose superblock is intact but whose metadata behind it is
//! corrupt: the superblock probe still says ext4 or xfs, so diskmount
//! hands the device to the kernel, and the kernel's own checks decide.
//!
//! What the kernel does (Linux 6.x, verified by these tests): with the
//! root inode cleared (`debugfs clri <2>`), with the group descriptors
//! zeroed, or with the xfs root inode's magic cleared, `mount(2)` fails
//! with `EUCLEAN` ("Structure needs cleaning"), read-write and read-only
//! alike. With the root directory's block garbled, ext4 mounts (the
//! superblock, descriptors and root inode are fine) and reading the root
//! fails with `EBADMSG` (the block's checksum). In every case the error
//! names the step, the device or path and the cause, teardown works, and
//! nothing is left behind.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, run};
use diskmount::fs::{Detected, FsType};
use diskmount::{Error, Format, Image, Loop, MountOptions, Mounted, Partition, Step, Unattached};

/// The superblock of `img` still says `fstype`: the corruption is behind it.
#[track_caller]
fn still_identified(img: &Path, fstype: FsType) {
    let found = diskmount::fs::probe(&std::fs::File::open(img).unwrap()).unwrap();
    assert!(
        matches!(found, Detected::Filesystem { fstype: f, .. } if f == fstype),
        "{}: {found:?}",
        img.display()
    );
}

/// Attaches `img` (read-only or not) and mounts it on a new directory.
fn mount(fx: &Fixture, img: &Path, read_only: bool) -> diskmount::Result<Mounted<Loop>> {
    let dir = fx.tree(if read_only { "ro.mnt" } else { "rw.mnt" }, &[]);
    Unattached::<Loop>::new(Image::file(img, Format::Raw).unwrap().read_only(read_only))
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&dir, &MountOptions::default().read_only(read_only))
}

/// `err` is at `step` and names `path` and each of `words`.
#[track_caller]
fn says(err: &Error, step: Step, path: &str, words: &[&str]) {
    assert_eq!(err.step(), Some(step), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(path), "{path:?} missing from: {msg}");
    for w in words {
        assert!(msg.contains(w), "{w:?} missing from: {msg}");
    }
}

/// Both a read-write and a read-only mount of `img` are refused by the
/// kernel as corrupt, at the mount step, naming the loop device.
fn refused_both_ways(fx: &Fixture, img: &Path) {
    for read_only in [false, true] {
        let err = mount(fx, img, read_only).expect_err("the kernel must refuse it");
        says(
            &err,
            Step::Mount,
            "/dev/loop",
            &["Structure needs cleaning"],
        );
    }
}

/// The block size and first data block of the ext4 image `img`.
fn ext4_geometry(img: &Path) -> (u64, u64) {
    let sb = run(Command::new("dumpe2fs").arg("-h").arg(img));
    let field = |name: &str| -> u64 {
        sb.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in dumpe2fs:\n{sb}"))
            .trim()
            .parse()
            .unwrap()
    };
    (field("Block size:"), field("First block:"))
}

fn ext4(fx: &Fixture, name: &str) -> PathBuf {
    fx.ext4(name, &[("f", "content"), ("dir/g", "more")])
}

#[test]
fn ext4_with_its_root_inode_cleared() {
    let mut fx = Fixture::new();
    let img = ext4(&fx, "root.img");
    run(Command::new("debugfs")
        .args(["-w", "-R", "clri <2>"])
        .arg(&img));
    still_identified(&img, FsType::Ext4);
    refused_both_ways(&fx, &img);
    fx.assert_clean();
}

#[test]
fn ext4_with_its_group_descriptors_zeroed() {
    let mut fx = Fixture::new();
    let img = ext4(&fx, "gdt.img");
    let (block, first) = ext4_geometry(&img);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    // The descriptor table is the block after the superblock's.
    f.write_all_at(&vec![0u8; block as usize], (first + 1) * block)
        .unwrap();
    still_identified(&img, FsType::Ext4);
    refused_both_ways(&fx, &img);
    fx.assert_clean();
}

#[test]
fn ext4_with_its_root_directory_garbled_mounts_but_cannot_be_read() {
    let mut fx = Fixture::new();
    let img = ext4(&fx, "dir.img");
    let (block, _) = ext4_geometry(&img);
    let blocks = run(Command::new("debugfs").args(["-R", "blocks /"]).arg(&img));
    let root_block: u64 = blocks.split_whitespace().next().unwrap().parse().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&vec![0xA5u8; block as usize], root_block * block)
        .unwrap();
    still_identified(&img, FsType::Ext4);
    for read_only in [false, true] {
        // The kernel checks the superblock, descriptors and root inode at
        // mount time, not the root directory's contents.
        let m = mount(&fx, &img, read_only).expect("the kernel mounts it");
        let root = m.root().unwrap();
        let err = root.read_dir("/").expect_err("the root cannot be listed");
        says(
            &err,
            Step::Access,
            &m.path().display().to_string(),
            &["Bad message"],
        );
        let err = root
            .read("/f")
            .expect_err("nothing in the root can be found");
        says(&err, Step::Access, "f", &["Bad message"]);
        drop(root);
        // Teardown does not depend on the directory being readable.
        m.close().unwrap();
        fx.assert_clean();
    }
}

#[test]
fn xfs_with_its_root_inode_magic_cleared() {
    let mut fx = Fixture::new();
    let img = fx.image("xfs", "root.xfs", &[("f", "content")]);
    let out = run(Command::new("xfs_db")
        .args(["-c", "sb", "-c", "p rootino"])
        .arg(&img));
    let ino = out.trim().trim_start_matches("rootino = ").to_string();
    // -d: write it although the inode verifier objects (with a good CRC).
    run(Command::new("xfs_db")
        .args([
            "-x",
            "-c",
            &format!("inode {ino}"),
            "-c",
            "write -d core.magic 0",
        ])
        .arg(&img));
    still_identified(&img, FsType::Xfs);
    refused_both_ways(&fx, &img);
    fx.assert_clean();
}

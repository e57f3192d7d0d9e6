//! Bad input fails at the right step, with a message naming the step, the
//! path and the cause, and leaves nothing behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Fixture, run};
use diskmount::{
    Error, Format, Image, Loop, MountOptions, Partition, Step, Unattached, with_mounted,
};

fn mount_whole(img: &Path, mnt: &Path) -> Result<(), Error> {
    let image = Image::file(img, Format::Raw)?;
    Unattached::<Loop>::new(image)
        .attach()?
        .map(Partition::Whole)?
        .mount(mnt, &MountOptions::default())?
        .close()
}

#[track_caller]
fn expect(err: Error, step: Step, path: &Path, words: &[&str]) {
    let msg = err.to_string();
    assert_eq!(err.step(), Some(step), "{msg}");
    assert!(
        msg.contains(&*path.to_string_lossy()),
        "message lacks the path: {msg}"
    );
    for w in words {
        assert!(msg.contains(w), "message lacks {w:?}: {msg}");
    }
}

#[test]
fn missing_image_fails_at_open() {
    let mut fx = Fixture::new();
    let img = fx.path().join("missing.img");
    let err = Image::file(&img, Format::Raw).unwrap_err();
    expect(err, Step::Open, &img, &["No such file"]);
    fx.assert_clean();
}

#[test]
fn directory_empty_file_and_block_mixups_fail_at_open() {
    let mut fx = Fixture::new();
    let dir = fx.tree("dir", &[]);
    expect(
        Image::file(&dir, Format::Raw).unwrap_err(),
        Step::Open,
        &dir,
        &["directory"],
    );
    let empty = fx.blank("empty.img", 0);
    expect(
        Image::file(&empty, Format::Raw).unwrap_err(),
        Step::Open,
        &empty,
        &["empty"],
    );
    expect(
        Image::block(&empty).unwrap_err(),
        Step::Open,
        &empty,
        &["not a block device"],
    );
    let loop0 = Path::new("/dev/loop-control");
    expect(
        Image::block(loop0).unwrap_err(),
        Step::Open,
        loop0,
        &["character device"],
    );
    fx.assert_clean();
}

#[test]
fn image_removed_before_attach_fails_at_attach() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    std::fs::remove_file(&img).unwrap();
    let err = Unattached::<Loop>::new(image).attach().unwrap_err();
    expect(err, Step::Attach, &img, &["open image", "No such file"]);
    fx.assert_clean();
}

#[test]
fn symlinked_image_is_refused_with_no_follow() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let link = fx.path().join("link.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let image = Image::file(&link, Format::Raw).unwrap().no_follow(true);
    let err = Unattached::<Loop>::new(image).attach().unwrap_err();
    expect(err, Step::Attach, &link, &["symbolic link"]);
    // Followed by default.
    let image = Image::file(&link, Format::Raw).unwrap();
    Unattached::<Loop>::new(image)
        .attach()
        .unwrap()
        .close()
        .unwrap();
    fx.assert_clean();
}

#[test]
fn garbage_image_fails_at_mount() {
    let mut fx = Fixture::new();
    let img = fx.path().join("garbage.img");
    let bytes: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&img, bytes).unwrap();
    let mnt = fx.tree("mnt", &[]);
    let err = mount_whole(&img, &mnt).unwrap_err();
    expect(
        err,
        Step::Mount,
        Path::new("/dev/loop"),
        &["no filesystem diskmount recognises"],
    );
    let zeros = fx.blank("zeros.img", 4 << 20);
    let err = mount_whole(&zeros, &mnt).unwrap_err();
    expect(err, Step::Mount, Path::new("/dev/loop"), &["only zeros"]);
    fx.assert_clean();
}

#[test]
fn swap_and_partition_table_are_not_mounted() {
    let mut fx = Fixture::new();
    let mnt = fx.tree("mnt", &[]);
    let swap = fx.blank("swap.img", 16 << 20);
    run(Command::new("mkswap").arg(&swap));
    let err = mount_whole(&swap, &mnt).unwrap_err();
    expect(
        err,
        Step::Mount,
        Path::new("/dev/loop"),
        &["swap area", "nothing to mount"],
    );

    let disk = fx.blank("disk.img", 64 << 20);
    run(Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin_bytes("label: dos\n,,L\n"));
    let err = mount_whole(&disk, &mnt).unwrap_err();
    expect(
        err,
        Step::Mount,
        Path::new("/dev/loop"),
        &["dos partition table", "choose a partition"],
    );
    fx.assert_clean();
}

#[test]
fn corrupt_filesystem_fails_at_mount_with_the_kernel_error() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    // Keep the superblock (1 KiB blocks: block 1), wreck the group
    // descriptors right after it.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xff; 4096], 2048).unwrap();
    drop(f);
    let mnt = fx.tree("mnt", &[]);
    let err = mount_whole(&img, &mnt).unwrap_err();
    assert!(err.errno().is_some(), "the kernel's errno is kept: {err:?}");
    expect(err, Step::Mount, Path::new("/dev/loop"), &["mount -t ext4"]);
    fx.assert_clean();
}

#[test]
fn missing_mount_point_fails_at_mount() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let mnt = fx.path().join("nowhere");
    let err = mount_whole(&img, &mnt).unwrap_err();
    expect(err, Step::Mount, &mnt, &["resolve mount point"]);
    let file = fx.blank("file", 1);
    let err = mount_whole(&img, &file).unwrap_err();
    expect(err, Step::Mount, &file, &["not a directory"]);
    fx.assert_clean();
}

#[test]
fn disallowed_filesystem_is_named_and_not_mounted() {
    let mut fx = Fixture::new();
    let src = fx.tree("cd", &[("README", "on a cd")]);
    let iso = fx.path().join("cd.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "CDROM", "-o"])
        .arg(&iso)
        .arg(&src));
    let mnt = fx.tree("mnt", &[]);
    let err = mount_whole(&iso, &mnt).unwrap_err();
    expect(
        err,
        Step::Mount,
        Path::new("/dev/loop"),
        &["iso9660", "not on the allow-list", "fstype(\"iso9660\")"],
    );
    fx.assert_clean();
}

#[test]
fn explicit_wrong_type_fails_in_the_kernel() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let mnt = fx.tree("mnt", &[]);
    // An explicit type is the caller's choice: a wrong one fails in the kernel.
    let image = Image::file(&img, Format::Raw).unwrap();
    let err = Unattached::<Loop>::new(image)
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default().fstype("xfs"))
        .unwrap_err();
    expect(err, Step::Mount, Path::new("/dev/loop"), &["mount -t xfs"]);
    fx.assert_clean();
}

#[test]
fn image_in_use_is_refused() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let first = Unattached::<Loop>::new(image.clone()).attach().unwrap();
    let err = Unattached::<Loop>::new(image.clone()).attach().unwrap_err();
    expect(err, Step::Attach, &img, &["already in use"]);
    let err = Unattached::<Loop>::new(image.clone().read_only(true))
        .attach()
        .unwrap_err();
    expect(err, Step::Attach, &img, &["already in use"]);
    first.close().unwrap();

    // Two read-only users may share it.
    let ro = image.clone().read_only(true);
    let a = Unattached::<Loop>::new(ro.clone()).attach().unwrap();
    let b = Unattached::<Loop>::new(ro).attach().unwrap();
    assert_ne!(a.device(), b.device());
    a.close().unwrap();
    b.close().unwrap();

    // A loop device set up by someone else (losetup) is noticed too.
    let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(&img));
    let err = Unattached::<Loop>::new(image).attach().unwrap_err();
    expect(err, Step::Attach, &img, &["already in use", dev.trim()]);
    run(Command::new("losetup").arg("-d").arg(dev.trim()));
    fx.assert_clean();
}

#[test]
fn with_mounted_reports_the_failing_step_and_cleans_up() {
    let mut fx = Fixture::new();
    let img = fx.blank("zeros.img", 4 << 20);
    let image = Image::file(&img, Format::Raw).unwrap();
    let mut ran = false;
    let err = with_mounted(&image, Partition::Whole, |_| ran = true).unwrap_err();
    assert!(!ran);
    assert_eq!(err.step(), Some(Step::Mount));
    fx.assert_clean();
}

trait StdinBytes {
    fn stdin_bytes(&mut self, input: &str) -> &mut Self;
}

impl StdinBytes for Command {
    /// Feeds `input` through a file (sfdisk reads a script from stdin).
    fn stdin_bytes(&mut self, input: &str) -> &mut Self {
        let path =
            std::env::temp_dir().join(format!("diskmount-test-stdin-{}", std::process::id()));
        std::fs::write(&path, input).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        self.stdin(f)
    }
}

//! The OS inspection's read-only look at an xfs root, kept to become the
//! read-write mount (`MapOptions::keep_inspection_mount`, which
//! `with_mounted` turns on): taken over when it can be, never when the
//! journal needs replay (the look is made while the device is read-only),
//! and not kept at all for a plain `map`, whose device must stay free for
//! other programs. Whole-disk xfs images made by mkfs.xfs and util-linux.

mod common;

use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Fixture;
use common::system::run;
use diskmount::kernel::mountinfo;
use diskmount::{
    Format, Image, Loop, MapOptions, MountOptions, Partition, Unattached, with_mounted,
    with_mounted_opts,
};

const OS_RELEASE: &str = "ID=rocky\nVERSION_ID=9.4\nPRETTY_NAME=\"Rocky Linux 9.4\"\n";

fn os_image(fx: &Fixture, name: &str) -> PathBuf {
    fx.image(
        "xfs",
        name,
        &[
            ("etc/os-release", OS_RELEASE),
            ("etc/hostname", "kept\n"),
            ("etc/fstab", "LABEL=testfs / xfs defaults 0 0\n"),
        ],
    )
}

fn raw(img: &Path) -> Image {
    Image::file(img, Format::Raw).unwrap()
}

/// The superblock options of the mount on `dir` (`rw,nouuid,...`).
fn super_options(dir: &Path) -> Vec<String> {
    let m = mountinfo::on(dir).unwrap_or_else(|| panic!("nothing mounted on {}", dir.display()));
    m.super_options.split(',').map(str::to_string).collect()
}

/// `xfs_repair -n`: the filesystem is consistent, its log clean.
fn xfs_repair_finds_nothing(img: &Path) {
    run(Command::new("xfs_repair").arg("-n").arg(img));
}

/// Reads `path` inside the xfs image `img` through util-linux's read-only
/// loop mount (`norecovery`: what is on the disk, not in the log).
fn on_disk(fx: &Fixture, img: &Path, path: &str) -> Option<String> {
    let mnt = fx.path().join("check");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-o", "ro,loop,norecovery"])
        .arg(img)
        .arg(&mnt));
    let text = std::fs::read_to_string(mnt.join(path)).ok();
    common::system::umount(&mnt);
    text
}

#[test]
fn auto_makes_the_inspections_look_the_read_write_mount_and_writes_land() {
    let mut fx = Fixture::new();
    let img = os_image(&fx, "os.img");
    let supers = with_mounted(&raw(&img), Partition::Auto, |dir| {
        std::fs::write(dir.join("injected"), "key").unwrap();
        super_options(dir)
    })
    .unwrap();
    // Only the inspection's look is made with nouuid: this is that mount,
    // made read-write.
    assert!(supers.contains(&"rw".to_string()), "{supers:?}");
    assert!(supers.contains(&"nouuid".to_string()), "{supers:?}");
    assert_eq!(on_disk(&fx, &img, "injected").as_deref(), Some("key"));
    xfs_repair_finds_nothing(&img);
    fx.assert_clean();
}

#[test]
fn a_read_only_or_optioned_mount_does_not_take_the_look_over() {
    let mut fx = Fixture::new();
    let img = os_image(&fx, "os.img");
    let before = std::fs::read(&img).unwrap();
    for (options, expect) in [
        (MountOptions::default().read_only(true), "norecovery"),
        (MountOptions::default().options("inode64"), "rw"),
    ] {
        let supers = with_mounted_opts(&raw(&img), Partition::Auto, &options, |dir| {
            super_options(dir)
        })
        .unwrap();
        assert!(
            supers.contains(&expect.to_string()),
            "{options:?}: {supers:?}"
        );
        assert!(
            !supers.contains(&"nouuid".to_string()),
            "{options:?}: {supers:?}"
        );
        if options == MountOptions::default().read_only(true) {
            // The look let go and the read-only mount wrote nothing.
            assert_unchanged(&img, &before, "the image changed");
        }
    }
    fx.assert_clean();
}

/// An xfs image whose log holds a file's creation that is not yet written
/// in place: made, then shut down after its log was flushed (`xfs_io
/// shutdown -f`, as a crash would leave it).
fn dirty_image(fx: &Fixture, name: &str) -> PathBuf {
    let img = os_image(fx, name);
    let mnt = fx.path().join(format!("{name}.dirty"));
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    run(Command::new("xfs_io")
        .args(["-f", "-c", "pwrite -q -S 0x61 0 8", "-c", "fsync"])
        .arg(mnt.join("in-the-log")));
    run(Command::new("xfs_io")
        .args(["-x", "-c", "shutdown -f"])
        .arg(&mnt));
    common::system::umount_with(&["-d"], &mnt);
    img
}

#[test]
fn a_log_that_needs_replay_is_not_replayed_by_the_look_but_by_the_mount() {
    let mut fx = Fixture::new();
    let img = dirty_image(&fx, "dirty.img");
    assert_eq!(
        on_disk(&fx, &img, "in-the-log"),
        None,
        "the log needs replay"
    );
    let before = std::fs::read(&img).unwrap();
    // The look, kept or not, writes nothing: the device is read-only while
    // it is made, the kernel refuses the replay, and the look falls back
    // to norecovery.
    let attached = Unattached::<Loop>::new(raw(&img)).attach().unwrap();
    let keep = MapOptions::default().keep_inspection_mount(true);
    let mapped = attached.map_with(Partition::Auto, &keep).unwrap();
    mapped.close().unwrap();
    assert_unchanged(&img, &before, "the look wrote to the image");
    // The read-write mount is a mount of its own, and replays the log.
    let (text, supers) = with_mounted(&raw(&img), Partition::Auto, |dir| {
        (
            std::fs::read_to_string(dir.join("in-the-log")).unwrap(),
            super_options(dir),
        )
    })
    .unwrap();
    assert_eq!(text, "aaaaaaaa");
    assert!(!supers.contains(&"nouuid".to_string()), "{supers:?}");
    assert_eq!(
        on_disk(&fx, &img, "in-the-log").as_deref(),
        Some("aaaaaaaa")
    );
    fx.assert_clean();
}

/// Fails with `what` unless `img` holds exactly `before`.
fn assert_unchanged(img: &Path, before: &[u8], what: &str) {
    assert!(std::fs::read(img).unwrap() == before, "{what}");
}

/// The block layer's read-only flag of `device` (`blockdev --getro`).
fn read_only_flag(device: &Path) -> bool {
    run(Command::new("blockdev").arg("--getro").arg(device)).trim() == "1"
}

/// Opens `device` exclusively (`O_EXCL` on a block device: refused while a
/// filesystem or another exclusive opener holds it).
fn open_exclusive(device: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(device)
}

#[test]
fn a_plain_map_leaves_the_device_free_and_a_kept_look_holds_it_until_unmapped() {
    let mut fx = Fixture::new();
    let img = os_image(&fx, "os.img");
    let before = std::fs::read(&img).unwrap();
    let mapped = Unattached::<Loop>::new(raw(&img))
        .attach()
        .unwrap()
        .map(Partition::Auto)
        .unwrap();
    drop(open_exclusive(mapped.device()).expect("a plain map keeps no mount"));
    let attached = mapped.unmap().unwrap();
    let keep = MapOptions::default().keep_inspection_mount(true);
    let mapped = attached.map_with(Partition::Auto, &keep).unwrap();
    let err = open_exclusive(mapped.device()).expect_err("the kept look holds the device");
    assert_eq!(err.kind(), ErrorKind::ResourceBusy, "{err}");
    assert!(
        read_only_flag(mapped.device()),
        "the look's device is read-only"
    );
    // Let go with the mapping: the device is free again, and the read-only
    // look wrote nothing.
    let attached = mapped.unmap().unwrap();
    drop(open_exclusive(attached.device()).expect("the look went with the mapping"));
    assert!(!read_only_flag(attached.device()), "writable again");
    attached.close().unwrap();
    assert_unchanged(&img, &before, "the look wrote to the image");
    fx.assert_clean();
}

#[test]
fn a_read_only_look_writes_nothing_while_other_threads_fork() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut fx = Fixture::new();
    let img = os_image(&fx, "os.img");
    let before = std::fs::read(&img).unwrap();
    let image = raw(&img);
    let keep = MapOptions::default().keep_inspection_mount(true);
    let read_only = MountOptions::default().read_only(true);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Each child holds copies of this process's descriptors, the
        // look's among them, until it execs.
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    Command::new("true").status().unwrap();
                }
            });
        }
        for _ in 0..20 {
            // Kept, then let go with the mapping; kept, then let go for a
            // read-only mount.
            let attached = Unattached::<Loop>::new(image.clone()).attach().unwrap();
            attached
                .map_with(Partition::Auto, &keep)
                .unwrap()
                .close()
                .unwrap();
            with_mounted_opts(&image, Partition::Auto, &read_only, |dir| {
                std::fs::read_to_string(dir.join("etc/hostname")).unwrap()
            })
            .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_unchanged(&img, &before, "a read-only look wrote to the image");
    fx.assert_clean();
}

#[test]
fn unbinding_a_loop_device_clears_a_read_only_flag_left_on_it() {
    let mut fx = Fixture::new();
    let img = os_image(&fx, "os.img");
    let attached = Unattached::<Loop>::new(raw(&img)).attach().unwrap();
    let device = attached.device().to_path_buf();
    // As a process killed while a look held it would leave it.
    run(Command::new("blockdev").arg("--setro").arg(&device));
    attached.close().unwrap();
    // The device stays in the system for its next user.
    assert!(
        !read_only_flag(&device),
        "{} left read-only",
        device.display()
    );
    fx.assert_clean();
}

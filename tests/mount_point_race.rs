//! A symbolic link swapped into the mount point while mounts race with it
//! never redirects a mount (the runc CVE-2021-30465 class): the mount point
//! is resolved once and the mount made onto its descriptor.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Fixture, is_mount_point};
use diskmount::{Format, Image, Loop, MountOptions, Partition, Unattached};
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

#[test]
fn a_swapped_in_symlink_never_takes_the_mount_elsewhere() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("inside", "image\n")]);
    let victim = fx.tree("victim", &[("host-file", "host\n")]);
    let mnt = fx.path().join("mnt");
    let other = fx.path().join("other");
    std::fs::create_dir(&mnt).unwrap();
    std::os::unix::fs::symlink(&victim, &other).unwrap();
    // A swapper exchanges the directory `mnt` and the link `other` (to the
    // victim) atomically, as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, mnt, other) = (stop.clone(), mnt.clone(), other.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // EBUSY while `mnt` is a mount point: nothing to swap then.
                match renameat2(
                    AT_FDCWD,
                    &mnt,
                    AT_FDCWD,
                    &other,
                    RenameFlags::RENAME_EXCHANGE,
                ) {
                    Ok(()) => swaps += 1,
                    Err(nix::errno::Errno::EBUSY) => std::thread::yield_now(),
                    Err(e) => panic!("swap: {e}"),
                }
            }
            // Leave `mnt` a directory.
            if std::fs::symlink_metadata(&mnt)
                .unwrap()
                .file_type()
                .is_symlink()
            {
                renameat2(
                    AT_FDCWD,
                    &mnt,
                    AT_FDCWD,
                    &other,
                    RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
            }
            swaps
        })
    };
    let image = Image::file(&img, Format::Raw).unwrap();
    let attached = Unattached::<Loop>::new(image).attach().unwrap();
    let mut mapped = attached.map(Partition::Whole).unwrap();
    let (mut mounted_ok, mut refused) = (0, 0);
    for _ in 0..300 {
        match mapped.mount(&mnt, &MountOptions::default()) {
            Ok(m) => {
                mounted_ok += 1;
                // The mount is on the directory, never on the victim.
                assert!(
                    !is_mount_point(&victim),
                    "the mount followed a swapped-in link onto {}",
                    victim.display()
                );
                assert!(
                    std::fs::read_dir(&victim)
                        .unwrap()
                        .all(|e| e.unwrap().file_name() != "inside"),
                    "the image shows through the victim directory"
                );
                mapped = m.unmount().unwrap();
            }
            Err(e) => {
                // Refused: the path held the link at one of the checks.
                refused += 1;
                let msg = e.to_string();
                assert!(
                    msg.contains("symbolic link")
                        || msg.contains("not a directory")
                        || msg.contains("No such file"),
                    "unexpected refusal: {msg}"
                );
                // A failed mount consumed the mapping: start again.
                let image = Image::file(&img, Format::Raw).unwrap();
                mapped = Unattached::<Loop>::new(image)
                    .attach()
                    .unwrap()
                    .map(Partition::Whole)
                    .unwrap();
            }
        }
        assert!(!is_mount_point(&victim));
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    mapped.close().unwrap();
    eprintln!("{mounted_ok} mounts on the directory, {refused} refused, {swaps} swaps");
    assert!(swaps > 0, "the swapper never ran");
    assert_eq!(
        std::fs::read_to_string(victim.join("host-file")).unwrap(),
        "host\n"
    );
    assert!(!Path::new(&victim).join("inside").exists());
    fx.assert_clean();
}

#[test]
fn a_mount_point_that_is_a_symlink_is_refused() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let victim = fx.tree("victim", &[]);
    let link = fx.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let image = Image::file(&img, Format::Raw).unwrap();
    let err = Unattached::<Loop>::new(image)
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&link, &MountOptions::default())
        .unwrap_err();
    assert_eq!(err.step(), Some(diskmount::Step::Mount));
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!is_mount_point(&victim));
    fx.assert_clean();
}

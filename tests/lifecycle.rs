//! Every transition of the lifecycle, forwards and backwards, on real
//! loop devices.

mod common;

use std::path::Path;

use common::{Fixture, is_mount_point};
use diskmount::{
    Attached, Auto, BackendKind, Format, Image, Loop, Mapped, Mapping, MountOptions, Mounted,
    Partition, Unattached,
};

#[test]
fn forwards_then_back_step_by_step() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("etc/hostname", "guest\n")]);
    let mnt = fx.tree("mnt", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();

    let u: Unattached<Loop> = Unattached::new(image);
    let a: Attached<Loop> = u.attach().unwrap();
    let dev = a.device().to_path_buf();
    assert!(
        dev.to_string_lossy().starts_with("/dev/loop"),
        "{}",
        dev.display()
    );
    assert_eq!(a.backend(), BackendKind::Loop);
    assert_eq!(a.size(), 64 << 20);
    assert!(!a.is_read_only());
    assert!(
        fx.leaks()
            .iter()
            .any(|l| l.contains(&*dev.to_string_lossy()))
    );

    let m: Mapped<Loop> = a.map(Partition::Whole).unwrap();
    assert_eq!(m.device(), dev);
    assert_eq!(m.mapping(), Mapping::Whole);
    assert_eq!(m.partition(), None);

    let t: Mounted<Loop> = m.mount(&mnt, &MountOptions::default()).unwrap();
    assert_eq!(t.path(), mnt.canonicalize().unwrap());
    assert_eq!(t.fstype(), "ext4");
    assert!(is_mount_point(&mnt));
    assert_eq!(
        std::fs::read_to_string(mnt.join("etc/hostname")).unwrap(),
        "guest\n"
    );

    let m = t.unmount().unwrap();
    assert!(!is_mount_point(&mnt));
    assert!(!mnt.join("etc").exists());
    let a = m.unmap().unwrap();
    assert_eq!(a.device(), dev);
    let u = a.detach().unwrap();
    fx.assert_clean();

    // Detach hands the image back: the cycle can run again.
    let t = u.attach().unwrap().map(Partition::Whole).unwrap();
    let t = t.mount(&mnt, &MountOptions::default()).unwrap();
    assert!(is_mount_point(&mnt));
    t.close().unwrap();
    assert!(!is_mount_point(&mnt));
    fx.assert_clean();
}

#[test]
fn close_from_every_state() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let mnt = fx.tree("mnt", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let attached = || Unattached::<Loop>::new(image.clone()).attach().unwrap();

    attached().close().unwrap();
    fx.assert_clean();
    attached().map(Partition::Whole).unwrap().close().unwrap();
    fx.assert_clean();
    attached()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap()
        .close()
        .unwrap();
    fx.assert_clean();
}

#[test]
fn auto_picks_loop_for_a_raw_file() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("a", "1")]);
    let mnt = fx.tree("mnt", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let t = Unattached::<Auto>::new(image)
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    assert_eq!(t.backend(), BackendKind::Loop);
    assert_eq!(std::fs::read_to_string(t.path().join("a")).unwrap(), "1");
    t.close().unwrap();
    fx.assert_clean();
}

fn losetup(img: &Path) -> String {
    common::run(
        std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(img),
    )
    .trim()
    .to_string()
}

#[test]
fn block_backend_uses_an_existing_device_and_leaves_it() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("from-block", "yes")]);
    let mnt = fx.tree("mnt", &[]);
    let dev = losetup(&img);
    let image = Image::block(&dev).unwrap();
    for backend in ["block", "auto"] {
        let check = |t: &Path| {
            assert_eq!(
                std::fs::read_to_string(t.join("from-block")).unwrap(),
                "yes"
            );
            std::fs::write(t.join(backend), backend).unwrap();
        };
        if backend == "block" {
            let t = Unattached::<diskmount::Block>::new(image.clone())
                .attach()
                .unwrap()
                .map(Partition::Whole)
                .unwrap()
                .mount(&mnt, &MountOptions::default())
                .unwrap();
            assert_eq!(t.device(), Path::new(&dev));
            assert_eq!(t.backend(), BackendKind::Block);
            check(t.path());
            t.close().unwrap();
        } else {
            let a = Unattached::<Auto>::new(image.clone()).attach().unwrap();
            assert_eq!(a.backend(), BackendKind::Block);
            let t = a
                .map(Partition::Whole)
                .unwrap()
                .mount(&mnt, &MountOptions::default())
                .unwrap();
            check(t.path());
            t.close().unwrap();
        }
        assert!(!is_mount_point(&mnt));
        // The device is not ours: it stays attached.
        assert!(common::bound_loops().iter().any(|(d, _)| *d == dev));
    }
    common::run(std::process::Command::new("losetup").arg("-d").arg(&dev));
    let out = common::run(
        std::process::Command::new("debugfs")
            .args(["-R", "cat /auto"])
            .arg(&img),
    );
    assert_eq!(out, "auto");
    fx.assert_clean();
}

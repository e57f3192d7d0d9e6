//! The image file deleted or truncated by someone else after attach, at
//! each state, through the loop backend and through qemu-storage-daemon:
//! the next step fails naming the step, the image and what happened to it,
//! writes into a deleted image are never reported as success, and teardown
//! leaves nothing (no device, mount, qemu process or record).

mod common;

use std::path::{Path, PathBuf};

use common::{Fixture, assert_no_records, fixture_qemu};
use diskmount::{
    Backend, Error, Format, Fuse, Image, Loop, MountOptions, Partition, Step, Unattached,
};

#[track_caller]
fn expect(err: &Error, step: Step, path: &Path, words: &[&str]) {
    let msg = err.to_string();
    assert!(
        err.errors().iter().any(|e| e.step() == Some(step)
            && e.path() == Some(path)
            && words.iter().all(|w| e.to_string().contains(w))),
        "no {step} error on {} with {words:?}: {msg}",
        path.display()
    );
}

#[track_caller]
fn assert_nothing_left(fx: &mut Fixture) {
    assert!(fixture_qemu(fx).is_empty(), "{:?}", fixture_qemu(fx));
    fx.assert_clean();
    assert_no_records(fx);
}

fn shrink(img: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn attach<B: Backend>(img: &Path) -> diskmount::Attached<B> {
    Unattached::<B>::new(Image::file(img, Format::Raw).unwrap())
        .attach()
        .unwrap()
}

const DELETED: &str = "deleted while attached";

fn deleted_at_each_state<B: Backend>() {
    let mut fx = Fixture::new();
    // After attach: map refuses.
    let img = fx.ext4("a.img", &[("f", "x")]);
    let a = attach::<B>(&img);
    std::fs::remove_file(&img).unwrap();
    let err = a.map(Partition::Whole).unwrap_err();
    expect(&err, Step::Map, &img, &[DELETED]);
    assert_nothing_left(&mut fx);

    // After map: mount refuses.
    let img = fx.ext4("b.img", &[("f", "x")]);
    let m = attach::<B>(&img).map(Partition::Whole).unwrap();
    std::fs::remove_file(&img).unwrap();
    let mnt = fx.tree("mnt", &[]);
    let err = m.mount(&mnt, &MountOptions::default()).unwrap_err();
    expect(&err, Step::Mount, &img, &[DELETED]);
    assert_nothing_left(&mut fx);

    // While mounted: reads and writes go on (the device holds the file),
    // but close() says the writes are lost.
    let img = fx.ext4("c.img", &[("f", "x")]);
    let t = common::mount_whole::<B>(&img, &mnt);
    std::fs::remove_file(&img).unwrap();
    assert_eq!(std::fs::read_to_string(t.path().join("f")).unwrap(), "x");
    std::fs::write(t.path().join("g"), "lost").unwrap();
    let err = t.close().unwrap_err();
    expect(&err, Step::Detach, &img, &[DELETED, "lost"]);
    assert_nothing_left(&mut fx);

    // Read-only, nothing is lost: no error.
    let img = fx.ext4("d.img", &[("f", "x")]);
    let t = Unattached::<B>::new(Image::file(&img, Format::Raw).unwrap().read_only(true))
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    std::fs::remove_file(&img).unwrap();
    assert_eq!(std::fs::read_to_string(t.path().join("f")).unwrap(), "x");
    t.close().unwrap();
    assert_nothing_left(&mut fx);
}

#[test]
fn image_deleted_at_each_state_loop() {
    deleted_at_each_state::<Loop>();
}

#[test]
fn image_deleted_at_each_state_fuse() {
    deleted_at_each_state::<Fuse>();
}

const TRUNCATED: &str = "truncated to";

/// A partitioned image with partition 6 at its end; returns it and the
/// byte offset where partition 6 starts.
fn mbr(fx: &Fixture, name: &str) -> (PathBuf, u64) {
    let img = fx.mbr_image(name);
    let p6 = common::layout(&img)
        .into_iter()
        .find(|(n, _, _)| *n == 6)
        .unwrap();
    (img, p6.1)
}

fn truncated_at_each_state<B: Backend>() {
    let mut fx = Fixture::new();
    let mnt = fx.tree("mnt", &[]);
    // After attach, below the filesystem's end: map refuses, naming the
    // new and the old size.
    let img = fx.ext4("a.img", &[("f", "x")]);
    let a = attach::<B>(&img);
    shrink(&img, 32 << 20);
    let err = a.map(Partition::Whole).unwrap_err();
    expect(
        &err,
        Step::Map,
        &img,
        &[TRUNCATED, "33554432 bytes", "67108864 bytes"],
    );
    assert_nothing_left(&mut fx);

    // After attach, below a partition: map of that partition refuses.
    let (img, p6) = mbr(&fx, "b.img");
    let a = attach::<B>(&img);
    shrink(&img, p6 + 4096);
    let err = a.map(Partition::Number(6)).unwrap_err();
    expect(&err, Step::Map, &img, &[TRUNCATED]);
    assert_nothing_left(&mut fx);

    // After the partition is mapped: mount refuses.
    let (img, p6) = mbr(&fx, "c.img");
    let m = attach::<B>(&img).map(Partition::Number(6)).unwrap();
    shrink(&img, p6);
    let err = m.mount(&mnt, &MountOptions::default()).unwrap_err();
    expect(&err, Step::Mount, &img, &[TRUNCATED]);
    assert_nothing_left(&mut fx);

    // While mounted and written to: the I/O errors reach the caller, and
    // close() names the truncation.
    let img = fx.ext4("d.img", &[("f", "x")]);
    let t = common::mount_whole::<B>(&img, &mnt);
    shrink(&img, 1 << 20);
    let write = std::fs::write(t.path().join("g"), vec![7u8; 5 << 20]);
    let read = std::fs::read_to_string(t.path().join("f"));
    assert!(
        write.is_err() || read.is_err(),
        "the cut-off end read back fine: {write:?} {read:?}"
    );
    let err = t.close().unwrap_err();
    expect(&err, Step::Detach, &img, &[TRUNCATED]);
    assert_nothing_left(&mut fx);
}

#[test]
fn image_truncated_at_each_state_loop() {
    truncated_at_each_state::<Loop>();
}

#[test]
fn image_truncated_at_each_state_fuse() {
    truncated_at_each_state::<Fuse>();
}

//! `with_mounted`: the closure API.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Mutex;

use common::{Fixture, is_mount_point};
use diskmount::{Format, Image, MountOptions, Partition, with_mounted, with_mounted_opts};

#[test]
fn returns_the_closure_value_and_removes_the_private_dir() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("etc/os-release", "ID=test\n")]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let mut seen = PathBuf::new();
    let content = with_mounted(&image, Partition::Whole, |dir| {
        seen = dir.to_path_buf();
        assert!(is_mount_point(dir));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.parent().unwrap().join(dir.file_name().unwrap()))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o7777, 0o755, "the mounted root keeps its own mode");
        std::fs::read_to_string(dir.join("etc/os-release")).unwrap()
    })
    .unwrap();
    assert_eq!(content, "ID=test\n");
    assert!(!seen.exists(), "{} was not removed", seen.display());
    fx.assert_clean();
}

#[test]
fn a_panic_in_the_closure_tears_down_then_continues() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let seen = Mutex::new(PathBuf::new());
    let result = catch_unwind(AssertUnwindSafe(|| {
        with_mounted(&image, Partition::Whole, |dir| {
            *seen.lock().unwrap() = dir.to_path_buf();
            std::fs::write(dir.join("before-panic"), "x").unwrap();
            panic!("closure failed");
        })
    }));
    let payload = result.expect_err("the panic continues");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"closure failed"));
    let seen = seen.into_inner().unwrap();
    assert!(!seen.as_os_str().is_empty());
    assert!(!seen.exists(), "{} was not removed", seen.display());
    fx.assert_clean();
    // The write before the panic reached the image: teardown flushed it.
    let out = common::run(
        std::process::Command::new("debugfs")
            .args(["-R", "cat /before-panic"])
            .arg(&img),
    );
    assert_eq!(out, "x");
}

#[test]
fn closure_errors_pass_through_untouched() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let r: Result<Result<(), std::io::Error>, diskmount::Error> =
        with_mounted(&image, Partition::Whole, |dir| {
            std::fs::read(dir.join("missing")).map(drop)
        });
    let inner = r.expect("teardown succeeded");
    assert_eq!(inner.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    fx.assert_clean();
}

#[test]
fn read_only_options_make_a_read_only_mount() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let opts = MountOptions::default().read_only(true);
    let err = with_mounted_opts(&image, Partition::Whole, &opts, |dir| {
        std::fs::write(dir.join("g"), "y").unwrap_err()
    })
    .unwrap();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    fx.assert_clean();
}

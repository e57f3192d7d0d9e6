//! `Mount::image(..)...run(..)`: the closure API with every choice spelled
//! out, handing the closure the mounted value.

mod common;

use common::{Fixture, is_mount_point, run};
use diskmount::{Error, ErrorKind, Format, Image, Loop, Mount, MountOptions, Partition, Step};

/// The caller's own error type: a diskmount error converts into it.
#[derive(Debug)]
enum AppError {
    Disk(Error),
    NotProvisioned,
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Disk(e)
    }
}

#[test]
fn the_closure_gets_the_mounted_value_and_its_own_error_type() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("etc/hostname", "guest\n")]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let mut seen = None;
    let hostname: Result<String, AppError> = Mount::image(&image)
        .partition(Partition::Whole)
        .backend::<Loop>()
        .run(|m| {
            seen = Some(m.path().to_path_buf());
            assert!(is_mount_point(m.path()));
            assert_eq!(m.fstype(), "ext4");
            let root = m.root()?;
            root.write("/etc/motd", "from the builder\n", 0o644)?;
            Ok(root.read_to_string("/etc/hostname")?)
        });
    assert_eq!(hostname.unwrap(), "guest\n");
    assert!(
        !seen.unwrap().exists(),
        "the private mount point is removed"
    );
    // The write is in the image, read by an independent tool.
    let out = run(std::process::Command::new("debugfs")
        .args(["-R", "cat /etc/motd"])
        .arg(&img));
    assert_eq!(out, "from the builder\n");
    fx.assert_clean();
}

#[test]
fn the_closures_error_comes_back_and_everything_is_torn_down() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let got: Result<(), AppError> = Mount::image(&image).partition(Partition::Whole).run(|m| {
        assert!(m.root()?.read_to_string("/etc/hostname").is_err());
        Err(AppError::NotProvisioned)
    });
    assert!(matches!(got, Err(AppError::NotProvisioned)), "{got:?}");
    fx.assert_clean();
}

#[test]
fn a_step_error_converts_into_the_callers_type() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let got: Result<(), AppError> = Mount::image(&image)
        .partition(Partition::Number(3))
        .run(|_| panic!("the closure must not run"));
    match got {
        Err(AppError::Disk(e)) => {
            assert_eq!(e.step(), Some(Step::Map), "{e}");
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        }
        other => panic!("expected a map error, got {other:?}"),
    }
    fx.assert_clean();
}

#[test]
fn read_only_options_and_an_explicit_mount_point() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let dir = fx.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let image = Image::file(&img, Format::Raw).unwrap();
    let before = std::fs::read(&img).unwrap();
    Mount::image(&image)
        .partition(Partition::Whole)
        .options(MountOptions::default().read_only(true))
        .at(&dir)
        .run(|m| -> Result<(), Error> {
            assert_eq!(m.path(), std::fs::canonicalize(&dir).unwrap());
            assert!(m.is_read_only());
            assert!(m.root()?.write("/g", "y", 0o644).is_err());
            Ok(())
        })
        .unwrap();
    assert!(
        dir.exists() && !is_mount_point(&dir),
        "the caller's dir stays, unmounted"
    );
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a read-only mount wrote to the image"
    );
    fx.assert_clean();
}

//! A full disk while writing: inside the image (the guest filesystem is
//! full) and under it (the host filesystem holding a sparse image is full).
//! Either way the caller hears about it as an error, never only a log
//! line, and nothing is left behind.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, run};
use diskmount::{Error, Format, Image, Loop, Partition, Step, with_mounted};

/// A sparse file of `size` bytes with an ext4 filesystem holding `files`.
fn small_ext4(dir: &Path, name: &str, size: u64, files: &[(&str, &[u8])]) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    std::fs::create_dir_all(&src).unwrap();
    for (rel, content) in files {
        std::fs::write(src.join(rel), content).unwrap();
    }
    let img = dir.join(name);
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&img));
    img
}

/// Deterministic bytes, different per `seed`.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn debugfs_cat(img: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs {path}: {out:?}");
    out.stdout
}

fn fsck_clean(img: &Path) {
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(img));
}

#[test]
fn guest_filesystem_full_reaches_the_caller_and_the_image_stays_sound() {
    let mut fx = Fixture::new();
    let earlier = bytes(1, 300_000);
    let img = small_ext4(fx.path(), "small.img", 12 << 20, &[("earlier", &earlier)]);
    let image = Image::file(&img, Format::Raw).unwrap();
    // Write until the filesystem is full: the closure sees ENOSPC and
    // returns it; teardown itself succeeds.
    let result = with_mounted(&image, Partition::Whole, |root| -> std::io::Result<u64> {
        let mut f = std::fs::File::create(root.join("big"))?;
        let chunk = bytes(2, 1 << 20);
        let mut written = 0u64;
        for _ in 0..64 {
            f.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        f.sync_all()?;
        Ok(written)
    })
    .expect("teardown after ENOSPC succeeds");
    let err = result.expect_err("12 MiB cannot hold 64 MiB");
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
    fx.assert_clean();
    fsck_clean(&img);
    assert_eq!(debugfs_cat(&img, "/earlier"), earlier);

    // The same through the root handle (atomic replace): the error names the
    // step and the path inside the image; the old file survives whole.
    let got = with_mounted(&image, Partition::Whole, |dir| {
        let root = diskmount::root::Root::open(dir).unwrap();
        root.write("/earlier", bytes(3, 32 << 20), 0o644)
    })
    .expect("teardown after ENOSPC succeeds");
    let err = got.expect_err("no room for a 32 MiB replacement");
    let msg = err.to_string();
    assert_eq!(err.step(), Some(Step::Access), "{msg}");
    assert!(msg.contains("earlier"), "{msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    fx.assert_clean();
    fsck_clean(&img);
    assert_eq!(
        debugfs_cat(&img, "/earlier"),
        earlier,
        "the old file is intact"
    );

    // And it mounts again, with room once the partial file is gone.
    with_mounted(&image, Partition::Whole, |root| {
        std::fs::remove_file(root.join("big")).unwrap();
        std::fs::write(root.join("after"), b"room again").unwrap();
    })
    .unwrap();
    fx.assert_clean();
    fsck_clean(&img);
    assert_eq!(debugfs_cat(&img, "/after"), b"room again");
}

/// A tmpfs of `size` bytes mounted on a new directory `name` of the fixture;
/// unmounted by the returned guard.
struct SmallHostFs {
    dir: PathBuf,
}

impl SmallHostFs {
    fn tmpfs(fx: &Fixture, name: &str, size: u64) -> SmallHostFs {
        let dir = fx.tree(name, &[]);
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(&dir));
        SmallHostFs { dir }
    }
}

impl SmallHostFs {
    /// Everything but this host filesystem's own mount is gone.
    #[track_caller]
    fn assert_only_leak(&self, fx: &Fixture) {
        let own = format!("mount of tmpfs on {}", self.dir.display());
        let leaks: Vec<String> = fx.leaks().into_iter().filter(|l| *l != own).collect();
        assert!(leaks.is_empty(), "left behind: {leaks:?}");
    }
}

impl Drop for SmallHostFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Asserts that `err` reports lost writes at teardown: only steps after
/// the closure, each naming a path, with EIO or ENOSPC as a cause.
#[track_caller]
fn assert_write_back_error(err: &Error) {
    let msg = err.to_string();
    for e in err.errors() {
        assert!(
            e.step().is_some_and(|s| s.is_teardown()),
            "only teardown steps fail: {msg}"
        );
        assert!(
            e.path()
                .is_some_and(|p| msg.contains(&*p.to_string_lossy())),
            "{msg}"
        );
    }
    assert!(
        err.errors()
            .iter()
            .any(|e| matches!(e.errno(), Some(nix::libc::EIO) | Some(nix::libc::ENOSPC))),
        "the cause is the failed write-back: {msg}"
    );
}

#[test]
fn host_filesystem_full_under_a_sparse_image_is_an_error_of_with_mounted() {
    let mut fx = Fixture::new();
    // 48 MiB host filesystem, 256 MiB sparse image on it.
    let host = SmallHostFs::tmpfs(&fx, "host", 48 << 20);
    let earlier = bytes(4, 100_000);
    let img = small_ext4(&host.dir, "sparse.img", 256 << 20, &[("earlier", &earlier)]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let data = bytes(5, 8 << 20);
    let result = with_mounted(&image, Partition::Whole, |root| {
        // The guest has room; the host does not. The writes land in the
        // page cache and fail when they are written back.
        for i in 0..10 {
            std::fs::write(root.join(format!("f{i}")), &data)?;
        }
        Ok::<(), std::io::Error>(())
    });
    let err = match result {
        Err(e) => e,
        Ok(Err(e)) => panic!("a write failed in the closure, not at teardown: {e}"),
        Ok(Ok(())) => panic!("80 MiB written into 48 MiB of host space and nothing reported"),
    };
    assert_write_back_error(&err);
    host.assert_only_leak(&fx);
    drop(host);
    fx.assert_clean();
}

#[test]
fn host_filesystem_full_under_a_sparse_image_is_an_error_of_close() {
    let mut fx = Fixture::new();
    let host = SmallHostFs::tmpfs(&fx, "host", 48 << 20);
    let img = small_ext4(&host.dir, "sparse.img", 256 << 20, &[]);
    let mnt = fx.tree("mnt", &[]);
    let t = common::mount_whole::<Loop>(&img, &mnt);
    let data = bytes(6, 8 << 20);
    for i in 0..10 {
        std::fs::write(t.path().join(format!("f{i}")), &data).unwrap();
    }
    let err = t.close().expect_err("close must report the lost writes");
    assert_write_back_error(&err);
    host.assert_only_leak(&fx);
    drop(host);
    fx.assert_clean();
}

/// Regression: the write-back error was first seen by someone else's
/// `syncfs` (here the closure's own, as `sync -f` in `diskmount run` would):
/// the kernel reports a write-back error once per descriptor opened before
/// it, so teardown's `syncfs` must go through a descriptor held since the
/// mount, not one opened at unmount time (which returned Ok: data lost,
/// `with_mounted` returned Ok).
#[test]
fn write_back_error_already_seen_by_another_syncfs_is_still_reported() {
    let mut fx = Fixture::new();
    let host = SmallHostFs::tmpfs(&fx, "host", 48 << 20);
    let img = small_ext4(&host.dir, "sparse.img", 256 << 20, &[]);
    let image = Image::file(&img, Format::Raw).unwrap();
    let data = bytes(7, 8 << 20);
    let result = with_mounted(&image, Partition::Whole, |root| {
        for i in 0..10 {
            std::fs::write(root.join(format!("f{i}")), &data).unwrap();
        }
        let dir = std::fs::File::open(root).unwrap();
        nix::unistd::syncfs(&dir)
    });
    let err = match result {
        Err(e) => e,
        Ok(theirs) => panic!("lost writes reported only to the closure ({theirs:?})"),
    };
    assert_write_back_error(&err);
    assert!(err.to_string().contains("syncfs"), "{err}");
    host.assert_only_leak(&fx);
    drop(host);
    fx.assert_clean();
}

/// The same under qemu-storage-daemon: a qcow2 image growing on a full host
/// filesystem. The daemon's failed writes come back through the FUSE
/// export and the loop device, and `close()` reports them.
#[test]
fn host_filesystem_full_under_a_growing_qcow2_is_an_error_of_close() {
    let mut fx = Fixture::new();
    let host = SmallHostFs::tmpfs(&fx, "host", 48 << 20);
    let raw = small_ext4(fx.path(), "src.img", 256 << 20, &[]);
    let img = host.dir.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img));
    let mnt = fx.tree("mnt", &[]);
    let t =
        diskmount::Unattached::<diskmount::Fuse>::new(Image::file(&img, Format::Qcow2).unwrap())
            .attach()
            .unwrap()
            .map(Partition::Whole)
            .unwrap()
            .mount(&mnt, &diskmount::MountOptions::default())
            .unwrap();
    let data = bytes(8, 8 << 20);
    for i in 0..10 {
        std::fs::write(t.path().join(format!("f{i}")), &data).unwrap();
    }
    let err = t.close().expect_err("close must report the lost writes");
    assert_write_back_error(&err);
    host.assert_only_leak(&fx);
    drop(host);
    fx.assert_clean();
}

//! Ctrl-C and SIGTERM during the commands that do not pass signals on:
//! the copy stops at its next chunk, everything is torn down, the partial
//! entry is named and never left half-written, and diskmount exits 130
//! (SIGINT) or 143 (SIGTERM).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, run};

/// A 6 GiB sparse ext4 image (lazy init: only metadata is written).
fn big_image(fx: &Fixture) -> std::path::PathBuf {
    let img = fx.path().join("big.img");
    run(Command::new("truncate").args(["-s", "6G"]).arg(&img));
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
    img
}

/// Waits (bounded) until the image is mounted by diskmount.
fn wait_mounted(img: &Path) {
    let start = Instant::now();
    let img = std::fs::canonicalize(img)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    loop {
        let mounted = common::bound_loops().iter().any(|(dev, backing)| {
            *backing == img && common::mounts().iter().any(|(source, _)| source == dev)
        });
        if mounted {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never mounted");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs diskmount with `args`, sends `signal` once the image is mounted
/// (and the copy has had a moment to start), returns (status, stderr).
fn interrupted(fx: &Fixture, img: &Path, args: &[&std::ffi::OsStr], signal: &str) -> (i32, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .env("DISKMOUNT_RUN_DIR", fx.records())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_mounted(img);
    std::thread::sleep(Duration::from_millis(200));
    run(Command::new("kill").args([signal, &child.id().to_string()]));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

/// The image's files, through an independent util-linux mount.
fn image_listing(fx: &Fixture, img: &Path, dir: &str) -> Vec<String> {
    let mnt = fx.tree("check", &[]);
    run(Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(img)
        .arg(&mnt));
    let mut names: Vec<String> = std::fs::read_dir(mnt.join(dir))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    common::system::umount(&mnt);
    std::fs::remove_dir(&mnt).unwrap();
    names
}

#[test]
fn sigint_during_a_large_copy_in_stops_tears_down_and_exits_130() {
    let mut fx = Fixture::new();
    let img = big_image(&fx);
    let src = fx.tree("src", &[("a-small", "first")]);
    // Copied after a-small (name order): 5 GiB of holes, which the copy
    // writes out as zeros, far longer than the 200 ms before the signal.
    run(Command::new("truncate")
        .args(["-s", "5G"])
        .arg(src.join("b-huge")));
    let (code, stderr) = interrupted(
        &fx,
        &img,
        &[
            "copy-in".as_ref(),
            "--format".as_ref(),
            "raw".as_ref(),
            img.as_os_str(),
            src.as_os_str(),
            "/data".as_ref(),
        ],
        "-INT",
    );
    assert_eq!(code, 130, "{stderr}");
    assert!(
        stderr.contains("/data/src/b-huge") && stderr.contains("interrupted"),
        "the partial entry is named: {stderr}"
    );
    fx.assert_clean();
    common::assert_no_records(&fx);
    // The entry before it is there; the huge one and its temporary file
    // are not; the filesystem is clean.
    assert_eq!(image_listing(&fx, &img, "data/src"), ["a-small"]);
    run(Command::new("e2fsck").args(["-fn"]).arg(&img));
    fx.assert_clean();
}

#[test]
fn sigterm_during_a_large_copy_out_stops_tears_down_and_exits_143() {
    let mut fx = Fixture::new();
    let img = big_image(&fx);
    let mnt = fx.tree("fill", &[]);
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    run(Command::new("truncate")
        .args(["-s", "5G"])
        .arg(mnt.join("huge")));
    common::system::umount(&mnt);
    let out = fx.path().join("out");
    let (code, stderr) = interrupted(
        &fx,
        &img,
        &[
            "copy-out".as_ref(),
            "--format".as_ref(),
            "raw".as_ref(),
            img.as_os_str(),
            "/huge".as_ref(),
            out.as_os_str(),
        ],
        "-TERM",
    );
    assert_eq!(code, 143, "{stderr}");
    assert!(
        stderr.contains("/huge") && stderr.contains("interrupted"),
        "{stderr}"
    );
    assert!(!out.exists(), "no half-copied file on the host");
    fx.assert_clean();
    common::assert_no_records(&fx);
}

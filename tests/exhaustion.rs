//! Running out of devices: attach waits up to its retry bound, then fails
//! with an error naming the step, the image and the cause, and leaves
//! nothing half-made.
//!
//! On a current kernel `LOOP_CTL_GET_FREE` makes new loop devices without a
//! practical limit, so "all busy" does not happen on the host's `/dev`. It
//! does in a container whose `/dev` has a fixed set of loop nodes: the
//! kernel offers a free device that has no node there. This test builds
//! such a `/dev` for real, in a private mount namespace (`unshare --mount`
//! running this test binary again), with nodes only for four loop devices
//! the test holds busy. (nbd's "all busy" runs in the kernel VM lane:
//! `kernel_lane`, `nbd_all_devices_busy`.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Fixture, bound_loops};
use diskmount::{AttachOptions, Format, Image, Loop, RetryPolicy, Step, Unattached};

/// The bound the attach in the container gets.
const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 1000,
    timeout: Duration::from_millis(1500),
    max_delay: Duration::from_millis(100),
};

const CHILD: &str = "DISKMOUNT_EXHAUSTION_CHILD";

#[test]
fn loop_attach_in_a_dev_with_only_busy_loop_nodes() {
    if let Ok(spec) = std::env::var(CHILD) {
        return in_the_container(&spec);
    }
    let mut fx = Fixture::new();
    // Four loop devices held busy, attached by us (any numbers the kernel
    // gives; other tests may hold loop0..3).
    let held: Vec<_> = (0..4)
        .map(|i| {
            let f = fx.blank(&format!("busy{i}.img"), 1 << 20);
            Unattached::<Loop>::new(Image::file(&f, Format::Raw).unwrap())
                .attach()
                .unwrap()
        })
        .collect();
    let nodes: Vec<String> = held
        .iter()
        .map(|a| {
            let name = a
                .device()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let dev = std::fs::read_to_string(format!("/sys/block/{name}/dev")).unwrap();
            format!("{name}={}", dev.trim())
        })
        .collect();
    let img = fx.ext4("disk.img", &[("id", "x")]);
    let records = fx.path().join("records");
    let spec = format!("{}|{}", img.display(), nodes.join(","));
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "loop_attach_in_a_dev_with_only_busy_loop_nodes",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &spec)
        .env("DISKMOUNT_RUN_DIR", &records)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the attach in the container: {}\n{stdout}\n{stderr}",
        out.status
    );
    for line in stdout.lines().filter(|l| l.starts_with("exhaustion:")) {
        println!("{line}");
    }
    assert!(
        stdout.contains("exhaustion: loop: error:"),
        "the child did not report: {stdout}\n{stderr}"
    );
    // Nothing half-made: the image is bound nowhere, the busy devices are
    // still ours and bound, and no record is left.
    let image = img.to_string_lossy().into_owned();
    assert!(
        !bound_loops().iter().any(|(_, b)| *b == image),
        "{image} is bound: {:?}",
        bound_loops()
    );
    for a in &held {
        let name = a
            .device()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            Path::new(&format!("/sys/block/{name}/loop/backing_file")).exists(),
            "{name} was unbound under its holder"
        );
    }
    for a in held {
        a.close().unwrap();
    }
    let left: Vec<PathBuf> = std::fs::read_dir(&records)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "records left: {left:?}");
    fx.assert_clean();
}

/// In a private mount namespace: a tmpfs `/dev` with `loop-control`,
/// `null` and the nodes in `spec` (`image|loopN=MAJ:MIN,...`); attach must
/// wait out its bound and fail clearly.
fn in_the_container(spec: &str) {
    use nix::mount::{MsFlags, mount};
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let (img, nodes) = spec.split_once('|').unwrap();
    mount(
        Some("tmpfs"),
        "/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755,size=1m"),
    )
    .expect("mount a tmpfs on /dev (in our own mount namespace)");
    let node = |path: &str, kind: SFlag, major: u64, minor: u64| {
        mknod(
            path,
            kind,
            Mode::from_bits(0o600).unwrap(),
            makedev(major, minor),
        )
        .unwrap_or_else(|e| panic!("mknod {path}: {e}"));
    };
    let control = std::fs::read_to_string("/sys/class/misc/loop-control/dev").unwrap();
    let (maj, min) = control.trim().split_once(':').unwrap();
    node(
        "/dev/loop-control",
        SFlag::S_IFCHR,
        maj.parse().unwrap(),
        min.parse().unwrap(),
    );
    node("/dev/null", SFlag::S_IFCHR, 1, 3);
    for n in nodes.split(',') {
        let (name, dev) = n.split_once('=').unwrap();
        let (maj, min) = dev.split_once(':').unwrap();
        node(
            &format!("/dev/{name}"),
            SFlag::S_IFBLK,
            maj.parse().unwrap(),
            min.parse().unwrap(),
        );
    }
    let listing: Vec<String> = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    println!("exhaustion: loop: /dev holds {listing:?}");
    let image = Image::file(img, Format::Raw).unwrap();
    let start = Instant::now();
    let got =
        Unattached::<Loop>::with_options(image, AttachOptions::default().retry(POLICY)).attach();
    let waited = start.elapsed();
    let err = match got {
        Ok(a) => panic!(
            "attached to {} although no free loop node exists",
            a.device().display()
        ),
        Err(e) => e,
    };
    let text = err.to_string();
    println!("exhaustion: loop: waited {waited:.2?}");
    println!("exhaustion: loop: error: {text}");
    assert!(
        matches!(err, diskmount::Error::Exhausted { .. }),
        "not a retry-bound error: {err:?}"
    );
    assert_eq!(err.step(), Some(Step::Attach), "{text}");
    assert_eq!(err.path(), Some(Path::new(img)), "{text}");
    assert!(
        text.contains("no free loop device") && text.contains("/dev/loop"),
        "the error does not say what ran out: {text}"
    );
    assert!(
        waited >= POLICY.timeout && waited <= POLICY.timeout + Duration::from_secs(1),
        "waited {waited:?}, the bound is {:?}",
        POLICY.timeout
    );
    assert!(
        !bound_loops().iter().any(|(_, b)| b == img),
        "{img} is bound although attach failed"
    );
    // Without the control device, waiting cannot help: a clear error at
    // once, not after the retry bound.
    std::fs::remove_file("/dev/loop-control").unwrap();
    let start = Instant::now();
    let got = Unattached::<Loop>::with_options(
        Image::file(img, Format::Raw).unwrap(),
        AttachOptions::default().retry(POLICY),
    )
    .attach();
    let waited = start.elapsed();
    let err = got.expect_err("attached without /dev/loop-control");
    let text = err.to_string();
    println!("exhaustion: loop: without /dev/loop-control, after {waited:.2?}: {text}");
    assert_eq!(err.step(), Some(Step::Attach), "{text}");
    assert!(
        text.contains("/dev/loop-control") && text.contains("modprobe loop"),
        "{text}"
    );
    assert!(
        waited < POLICY.timeout / 3,
        "waited {waited:?} for a missing control device"
    );
}

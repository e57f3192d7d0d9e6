//! A loop device over a stopped FUSE export (someone else's
//! qemu-storage-daemon, SIGSTOP) must not hold up an unrelated attach: the
//! checks for a loop device already serving the image read every bound
//! loop device's backing file, and a plain stat of a file on a stopped
//! FUSE filesystem waits until its daemon runs again (10 to 25 s per
//! attach on the shared machine while tests/stopped_helper.rs ran).
//!
//! The neighbour is set up by other processes (qemu-storage-daemon,
//! losetup): this process holds no descriptor of its export, so the
//! children it starts do not hang in exec (see tests/stopped_helper.rs).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Fixture, run};
use diskmount::{Format, Image, Partition, with_mounted};

/// How long an attach, mount and teardown of a small image may take here.
const BOUND: Duration = Duration::from_secs(10);

/// qemu-storage-daemon exporting `file` over FUSE on `export`, and a loop
/// device over the export; stopped while held, then resumed, detached and
/// stopped for good on drop.
struct Neighbour {
    daemon: Child,
    loop_dev: String,
}

impl Neighbour {
    fn start(file: &Path, export: &Path) -> Neighbour {
        std::fs::File::create(export).unwrap();
        let daemon = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f0,filename={}",
                file.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=fuse,id=e0,node-name=f0,mountpoint={},writable=on",
                export.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut n = Neighbour {
            daemon,
            loop_dev: String::new(),
        };
        let mounted = || common::is_mount_point(export);
        for _ in 0..200 {
            if mounted() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(mounted(), "the export never appeared");
        n.loop_dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(export))
        .trim()
        .to_string();
        n.signal(nix::sys::signal::Signal::SIGSTOP);
        n
    }

    fn signal(&self, s: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.daemon.id() as i32), s).unwrap();
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        if !self.loop_dev.is_empty() {
            let _ = Command::new("losetup")
                .args(["-d", &self.loop_dev])
                .status();
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = self.daemon.wait();
    }
}

/// Runs `f` on another thread; panics if it takes longer than [`BOUND`]
/// (the caller's guard then resumes the neighbour, which lets `f` end).
fn within_bound(what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(BOUND) {
        Ok(()) => t.join().unwrap(),
        Err(_) => panic!("{what}: not done after {BOUND:?} with a stopped FUSE neighbour"),
    }
}

#[test]
fn a_stopped_fuse_export_under_another_loop_device_does_not_block_attach() {
    let mut fx = Fixture::new();
    let raw = fx.ext4("disk.img", &[("f", "raw")]);
    let qcow2 = fx.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let other = fx.blank("other.raw", 16 << 20);
    let neighbour = Neighbour::start(&other, &fx.path().join("other.export"));
    for (img, format) in [(raw, Format::Raw), (qcow2, Format::Qcow2)] {
        within_bound(&format!("{format:?}"), move || {
            let image = Image::file(&img, format).unwrap();
            let got = with_mounted(&image, Partition::Whole, |dir| {
                std::fs::read_to_string(dir.join("f")).unwrap()
            })
            .unwrap();
            assert_eq!(got, "raw");
        });
    }
    drop(neighbour);
    fx.assert_clean();
}

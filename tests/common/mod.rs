//! Shared test support: root check, images made with real mkfs tools, and
//! the leak check every test ends with.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails (never skips) when not root: these tests need real devices.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (loop devices, mount): run the suite as root, e.g. `sudo -E cargo test`"
        );
    }
}

/// Runs a command and panics with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One test's private directory for images; checks on drop that the test
/// left nothing behind that refers to it.
pub struct Fixture {
    dir: tempfile::TempDir,
    checked: bool,
}

impl Fixture {
    pub fn new() -> Fixture {
        require_root();
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = tempfile::Builder::new()
            .prefix("diskmount-test-")
            .tempdir()
            .expect("create test dir");
        Fixture {
            dir,
            checked: false,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A directory with `files` (relative path, content) in it.
    pub fn tree(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = self.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        for (rel, content) in files {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        root
    }

    /// A sparse file of `size` bytes.
    pub fn blank(&self, name: &str, size: u64) -> PathBuf {
        let p = self.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    /// An image of filesystem `fstype` holding `files`, made by that
    /// filesystem's own tools.
    pub fn image(&self, fstype: &str, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let src = self.tree(&format!("{name}.src"), files);
        let img = self.path().join(name);
        match fstype {
            "ext2" | "ext3" | "ext4" => {
                self.blank(name, 64 << 20);
                run(Command::new(format!("mkfs.{fstype}"))
                    .args(["-q", "-F", "-L", "testfs", "-d"])
                    .arg(&src)
                    .arg(&img));
            }
            "btrfs" => {
                self.blank(name, 128 << 20);
                run(Command::new("mkfs.btrfs")
                    .args(["-q", "-f", "-L", "testfs", "--rootdir"])
                    .arg(&src)
                    .arg(&img));
            }
            "xfs" => {
                self.blank(name, 300 << 20);
                run(Command::new("mkfs.xfs")
                    .args(["-q", "-f", "-L", "testfs"])
                    .arg(&img));
                // mkfs.xfs cannot fill an image; util-linux's mount can.
                let mnt = self.path().join(format!("{name}.mnt"));
                std::fs::create_dir_all(&mnt).unwrap();
                run(Command::new("mount")
                    .arg("-o")
                    .arg("loop")
                    .arg(&img)
                    .arg(&mnt));
                run(Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", src.display()))
                    .arg(&mnt));
                run(Command::new("umount").arg("-d").arg(&mnt));
            }
            "squashfs" => {
                run(Command::new("mksquashfs").arg(&src).arg(&img).args([
                    "-quiet",
                    "-noappend",
                    "-no-progress",
                ]));
            }
            "erofs" => {
                run(Command::new("mkfs.erofs").arg(&img).arg(&src));
            }
            other => panic!("no recipe for {other}"),
        }
        img
    }

    /// A 64 MiB ext4 image holding `files`.
    pub fn ext4(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        self.image("ext4", name, files)
    }

    /// Everything on this machine that refers to this fixture's files:
    /// bound loop devices and mounts (by mount point or by a source device
    /// whose backing file is ours).
    pub fn leaks(&self) -> Vec<String> {
        let root = self.path().to_string_lossy().into_owned();
        let mut leaks = Vec::new();
        let mut our_loops = BTreeSet::new();
        for (dev, backing) in bound_loops() {
            if backing.starts_with(&root) {
                leaks.push(format!("loop device {dev} still bound to {backing}"));
                our_loops.insert(dev);
            }
        }
        for (source, target) in mounts() {
            let ours_by_source = our_loops.iter().any(|d| {
                source == *d
                    || source
                        .strip_prefix(d.as_str())
                        .is_some_and(|r| r.starts_with('p'))
            });
            if target.starts_with(&root) || ours_by_source {
                leaks.push(format!("mount of {source} on {target}"));
            }
        }
        leaks
    }

    /// Panics if this test left anything behind.
    pub fn assert_clean(&mut self) {
        self.checked = true;
        let leaks = self.leaks();
        assert!(
            leaks.is_empty(),
            "the test left things behind:\n  {}",
            leaks.join("\n  ")
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !self.checked && !std::thread::panicking() {
            self.assert_clean();
        }
    }
}

/// `(device, backing file)` of every bound loop device.
pub fn bound_loops() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            out.push((format!("/dev/{name}"), b.trim_end().to_string()));
        }
    }
    out
}

/// `(source, mount point)` of every mount, from /proc/self/mountinfo.
pub fn mounts() -> Vec<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let target = unescape(fields.get(4)?);
            let sep = fields.iter().position(|f| *f == "-")?;
            let source = unescape(fields.get(sep + 2)?);
            Some((source, target))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether `path` is a mount point right now.
pub fn is_mount_point(path: &Path) -> bool {
    let p = path.to_string_lossy();
    mounts().iter().any(|(_, t)| *t == p)
}

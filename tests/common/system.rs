//! What the tests and the benchmarks share: the root check, running a
//! command, and what a run left on this machine (loop devices, partition
//! nodes, device-mapper targets, mounts, qemu processes) that refers to a
//! directory of its own. `tests/common` and `benches/common` both include
//! this file, so the leak check is one piece of code.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use diskmount::kernel::{mountinfo, sysfs};

/// Fails (never skips) unless root: `what` needs real devices.
pub fn require_root_for(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root (loop devices, mounts): run it as root, e.g. `sudo -E cargo test`"
    );
}

/// Unmounts `dir` with util-linux `umount` (`args` before it, such as
/// `-d`), retrying while it is busy: a child that another test thread is
/// forking holds copies of this thread's descriptors until it execs.
///
/// A loop device that util-linux set up for the mount (`-o loop`, with
/// autoclear) goes when its last opener closes it; another process that
/// has it open for a moment (a concurrent test's mkfs or lvm scanning
/// block devices) delays that, so the wait covers it too (5 s at most),
/// before a leak check could see the device still bound.
pub fn umount_with(args: &[&str], dir: &Path) {
    let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let autoclear_loop = mountinfo::on(&resolved).and_then(|m| {
        let name = m.source.file_name()?.to_string_lossy().into_owned();
        let nr = sysfs::loop_number(&name)?;
        let info = sysfs::loop_info(&name)?;
        info.autoclear.then_some((nr, info.backing_file))
    });
    for _ in 0..50 {
        let out = Command::new("umount").args(args).arg(dir).output().unwrap();
        if out.status.success() {
            if let Some((nr, backing)) = autoclear_loop {
                wait_loop_gone(nr, &backing);
            }
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("busy"), "umount {}: {err}", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("umount {}: still busy after 5 s", dir.display());
}

/// Waits (5 s at most) until loop device `nr` no longer serves `backing`.
fn wait_loop_gone(nr: u32, backing: &Path) {
    let name = format!("loop{nr}");
    for _ in 0..250 {
        match sysfs::loop_info(&name) {
            Some(info) if info.backing_file == backing => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => return,
        }
    }
    panic!(
        "/dev/{name} still serves {} 5 s after its unmount",
        backing.display()
    );
}

/// [`umount_with`] without options.
pub fn umount(dir: &Path) {
    umount_with(&[], dir)
}

/// Runs a command and panics with its output if it fails; returns stdout.
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

/// `(device, backing file)` of every bound loop device.
pub fn bound_loops() -> Vec<(String, String)> {
    sysfs::disks()
        .into_iter()
        .filter_map(|name| {
            let info = sysfs::loop_info(&name)?;
            let mut backing = info.backing_file.to_string_lossy().into_owned();
            if info.deleted {
                backing.push_str(" (deleted)");
            }
            Some((format!("/dev/{name}"), backing))
        })
        .collect()
}

/// `(source, mount point)` of every mount.
pub fn mounts() -> Vec<(String, String)> {
    mountinfo::mounts()
        .unwrap()
        .into_iter()
        .map(|m| {
            (
                m.source.to_string_lossy().into_owned(),
                m.target.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

/// Whether `path` is a mount point right now.
pub fn is_mount_point(path: &Path) -> bool {
    mountinfo::is_mount_point(path)
}

/// `(pid, command line)` of every qemu-nbd / qemu-storage-daemon process.
pub fn qemu_processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        let exe = cmdline.split(' ').next().unwrap_or("");
        if exe.ends_with("qemu-nbd") || exe.ends_with("qemu-storage-daemon") {
            // The files it has open too: a helper handed the checked image
            // as a descriptor names only /proc/self/fd/3 on its command line.
            let files: Vec<String> = std::fs::read_dir(entry.path().join("fd"))
                .map(|d| {
                    d.flatten()
                        .filter_map(|f| std::fs::read_link(f.path()).ok())
                        .map(|t| t.to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            out.push((pid, format!("{} {}", cmdline.trim(), files.join(" "))));
        }
    }
    out
}

/// Everything on this machine that refers to files under `root`: bound
/// loop devices and their partition nodes, device-mapper targets over
/// them, mounts (by mount point, or by a source device that is ours), and
/// qemu processes working on them.
pub fn leaks_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    let mut leaks = Vec::new();
    let mut our_loops = BTreeSet::new();
    let loops = bound_loops();
    for (dev, backing) in &loops {
        if backing.starts_with(&root) {
            leaks.push(format!("loop device {dev} still bound to {backing}"));
            our_loops.insert(dev.clone());
        }
    }
    let bound: BTreeSet<String> = loops.into_iter().map(|(d, _)| d).collect();
    // Partition nodes: on our devices, or on a loop device that stays
    // unbound (checked twice: other tests bind and unbind concurrently).
    for disk in sysfs::disks() {
        if !sysfs::is_loop_disk(&disk) {
            continue;
        }
        let dev = format!("/dev/{disk}");
        let nr = sysfs::loop_number(&disk).unwrap_or(u32::MAX);
        let unbound = || !sysfs::loop_is_bound(nr);
        for part in sysfs::partitions(&disk) {
            let is_part = || sysfs::partition_number(&part.name).is_some();
            let stale = || {
                unbound() && is_part() && {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    unbound() && is_part()
                }
            };
            if our_loops.contains(&dev) || stale() {
                leaks.push(format!("partition node {} of {dev}", part.name));
            }
        }
    }
    // Device-mapper targets over our devices.
    for disk in sysfs::disks() {
        let Some(name) = sysfs::dm_name(&disk) else {
            continue;
        };
        for slave in sysfs::slaves(&disk) {
            let dev = format!("/dev/{slave}");
            if our_loops.contains(&dev) || (dev.starts_with("/dev/loop") && !bound.contains(&dev)) {
                leaks.push(format!("device-mapper target {name} over {dev}"));
            }
        }
    }
    for (pid, cmdline) in qemu_processes() {
        if cmdline.contains(&root) {
            leaks.push(format!("process {pid}: {cmdline}"));
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

/// A sparse file of `size` bytes with an ext4 filesystem made by mkfs,
/// flushed to disk (so that no later timed or checked step pays for it).
pub fn ext4_image(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(path));
    std::fs::File::open(path).unwrap().sync_all().unwrap();
}

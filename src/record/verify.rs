//! Whether what a record names is still on the machine, and verifiably
//! the recorded thing (not a reused device number, pid or mount point):
//! the checks both the record's own teardown (is anything left?) and
//! [`crate::cleanup`] (what may be torn down?) rely on.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::libc;

use log::debug;

use super::format::{Data, Helper, Inode};
use super::start_time;
use crate::kernel::mountinfo;
use crate::sys::loop_dev;

/// What of a record is verifiably still on the machine.
#[derive(Debug, Default)]
pub(crate) struct Survey {
    /// The verified whole device (loop, nbd: ours to release).
    pub(crate) device: Option<PathBuf>,
    /// The verified mapped partition's device.
    pub(crate) mapped: Option<PathBuf>,
    /// The verified mount point.
    pub(crate) mount: Option<PathBuf>,
    /// The verified mounts of the guest's fstab over it, in mount order.
    pub(crate) tree_mounts: Vec<PathBuf>,
    /// The verified devices mapped for those mounts.
    pub(crate) tree_mapped: Vec<PathBuf>,
    /// The verified helper.
    pub(crate) helper: Option<(u32, PathBuf)>,
    /// A FUSE export still mounted in the helper directory.
    pub(crate) export: Option<PathBuf>,
    /// The helper directory, if it exists.
    pub(crate) helper_dir: Option<PathBuf>,
    /// Named by the record, but verifiably someone else's now (a reused
    /// device number, pid or mount point): left alone.
    pub(crate) unverified: Vec<String>,
    /// Named by the record, and whose it is cannot be told: left alone,
    /// and the record stays.
    pub(crate) doubtful: Vec<String>,
}

impl Survey {
    pub(crate) fn describe(&self) -> Vec<String> {
        let mut left = Vec::new();
        for m in self.tree_mounts.iter().rev() {
            left.push(format!("mount on {}", m.display()));
        }
        for d in self.tree_mapped.iter().rev() {
            left.push(d.display().to_string());
        }
        if let Some(m) = &self.mount {
            left.push(format!("mount on {}", m.display()));
        }
        for d in self.mapped.iter().chain(self.device.iter()) {
            left.push(d.display().to_string());
        }
        if let Some((pid, _)) = &self.helper {
            left.push(format!("qemu process {pid}"));
        }
        if let Some(e) = &self.export {
            left.push(format!("FUSE export mount {}", e.display()));
        }
        if let Some(d) = &self.helper_dir {
            left.push(d.display().to_string());
        }
        left.extend(self.doubtful.iter().cloned());
        left
    }
}

/// What `data` (a record in `dir`) names that is verifiably still there,
/// described (empty: nothing).
pub(crate) fn still_there(data: &Data, dir: &Path) -> Vec<String> {
    survey(data, dir).describe()
}

/// Opens a device node without following links; its metadata. `None` if
/// it is not there or not a block device.
pub(crate) fn open_node(path: &Path) -> Option<(File, std::fs::Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    meta.file_type().is_block_device().then_some((file, meta))
}

pub(crate) fn sys_dir(rdev: u64) -> PathBuf {
    PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    ))
}

/// The file bound to the loop device open as `file`: `Ok(None)` unbound.
pub(crate) fn loop_backing(file: &File) -> std::result::Result<Option<Inode>, Errno> {
    match loop_dev::backing_inode(file.as_fd()) {
        Ok((dev, ino)) => Ok(Some(Inode { dev, ino })),
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the device `rdev` still has the disk sequence number recorded
/// (true where the kernel has none).
pub(crate) fn same_binding(rdev: u64, diskseq: Option<u64>) -> bool {
    let Some(want) = diskseq else { return true };
    std::fs::read_to_string(sys_dir(rdev).join("diskseq"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        == Some(want)
}

/// Whether the loop device `rdev` is bound to the FUSE export of record
/// `id` (`<dir>/<id>.helper/export`), by the path the kernel reports.
pub(crate) fn serves_export(rdev: u64, dir: &Path, id: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let export = super::helper_dir(dir, id).join("export");
    std::fs::read(sys_dir(rdev).join("loop/backing_file"))
        .is_ok_and(|b| b.strip_suffix(b"\n").unwrap_or(&b) == export.as_os_str().as_bytes())
}

/// Whether process `pid` runs with start time `start` (not reused).
pub(crate) fn alive(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Whether a helper with this pid, start time and executable runs (not a
/// zombie).
pub(crate) fn helper_runs(h: &Helper) -> bool {
    alive(h.pid, h.start) && live_thread_exe(h.pid).is_some_and(|exe| exe == h.exe.0)
}

/// The executable of process `pid`, read through one of its threads that
/// is not a zombie; `None` if it has none. A process whose main thread
/// exited (qemu-nbd after SIGTERM, while its connection thread still
/// serves a busy nbd device) shows its leader as a zombie, with no
/// executable, but still runs.
fn live_thread_exe(pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let state = stat.get(stat.rfind(')')? + 2..)?;
            if state.starts_with('Z') {
                return None;
            }
            std::fs::read_link(t.path().join("exe")).ok()
        })
}

pub(crate) fn is_mount_point(path: &Path) -> bool {
    mountinfo::is_mount_point(path)
}

pub(crate) fn survey(data: &Data, dir: &Path) -> Survey {
    let mut s = Survey::default();
    let helper_ok = data.helper.as_ref().filter(|h| helper_runs(h));
    if let Some(h) = helper_ok {
        // The owner's shared daemon serves its other images and ends with
        // it: nothing this image left behind while the owner lives. Once
        // the owner is gone, it is stopped like a helper of its own.
        if h.shared && alive(data.pid, data.start) {
            debug!(
                "record {}: helper {} is its live owner's shared daemon",
                data.id, h.pid
            );
        } else {
            s.helper = Some((h.pid, h.exe.0.clone()));
        }
    } else if let Some(h) = &data.helper
        && start_time(h.pid).is_some()
        && !alive(h.pid, h.start)
    {
        debug!("cleanup: pid {} is now another process; left alone", h.pid);
    }
    // The whole device.
    let mut device_rdev = None;
    if let Some(dev) = &data.device {
        let path = &dev.path.0;
        let fast_gone = matches!(data.backend.as_str(), "loop" | "fuse")
            && !sys_dir(dev.rdev).join("loop/backing_file").exists();
        // An unbound loop device is not opened at all: that open is most
        // of what checking a finished teardown costs.
        let node = if fast_gone { None } else { open_node(path) };
        match node {
            None => {}
            Some((_, meta)) if meta.rdev() != dev.rdev => s.unverified.push(format!(
                "{} is now another device ({:#x}, recorded {:#x}); left alone",
                path.display(),
                meta.rdev(),
                dev.rdev
            )),
            Some((file, _)) => match data.backend.as_str() {
                "loop" | "fuse" => match (loop_backing(&file), dev.backing) {
                    (Ok(None), _) => {}
                    // A FUSE export's inode is no identity (each export
                    // is inode 1 of a fresh mount, whose anonymous device
                    // number is reused): its path, derived from the id, or
                    // the binding's disk sequence number is.
                    (Ok(Some(b)), Some(want))
                        if b == want
                            && same_binding(dev.rdev, dev.diskseq)
                            && (data.backend == "loop"
                                || dev.diskseq.is_some()
                                || serves_export(dev.rdev, dir, &data.id)) =>
                    {
                        s.device = Some(path.clone());
                        device_rdev = Some(dev.rdev);
                    }
                    // A loop device over a FUSE export whose daemon died:
                    // the kernel cannot stat the file (ENOTCONN), but the
                    // disk sequence number says it is the same binding.
                    (Err(Errno::ENOTCONN), _)
                        if data.backend == "fuse"
                            && dev.diskseq.is_some()
                            && same_binding(dev.rdev, dev.diskseq) =>
                    {
                        s.device = Some(path.clone());
                        device_rdev = Some(dev.rdev);
                    }
                    (Ok(Some(b)), _) => s.unverified.push(format!(
                        "{} serves another file now (device {:#x}, inode {}); left alone",
                        path.display(),
                        b.dev,
                        b.ino
                    )),
                    (Err(e), _) => s.doubtful.push(format!(
                        "{}: LOOP_GET_STATUS64: {e}: cannot tell whose it is; left alone",
                        path.display()
                    )),
                },
                "nbd" => {
                    // The kernel shows the thread that serves the device
                    // (qemu-nbd's connection thread): its process is the
                    // thread group it belongs to.
                    let thread = std::fs::read_to_string(sys_dir(dev.rdev).join("pid"))
                        .ok()
                        .and_then(|p| p.trim().parse::<u32>().ok());
                    let served_by = thread.map(crate::kernel::process::thread_group);
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    let recorded = data
                        .helper
                        .as_ref()
                        .filter(|h| alive(h.pid, h.start))
                        .map(|h| h.pid);
                    let ours = crate::backend::nbd::serves(name, recorded, dev.server);
                    match (served_by, helper_ok) {
                        (None, _) => {}
                        // Ours: served by the recorded qemu-nbd (its pid
                        // and start time: a qemu-nbd whose leader exited
                        // while its connection thread still serves shows no
                        // executable), or (its server gone: the kernel keeps
                        // a stale pid until the disconnect) still the
                        // recorded connection by its dead thread. Never any
                        // other qemu-nbd, even one connecting the same node
                        // (a later attach by someone else looks the same),
                        // and not by the disk sequence number, which nbd
                        // keeps across connections.
                        (Some(_), _) if ours => {
                            s.device = Some(path.clone());
                            device_rdev = Some(dev.rdev);
                        }
                        (Some(p), _) => s.unverified.push(format!(
                            "{} is served by process {p}, not by the recorded qemu-nbd ({}); \
                             left alone",
                            path.display(),
                            match &data.helper {
                                None => "none recorded".to_string(),
                                Some(h) => format!(
                                    "pid {}, {}, exe {} now {:?}",
                                    h.pid,
                                    if alive(h.pid, h.start) {
                                        "alive"
                                    } else {
                                        "gone"
                                    },
                                    h.exe.0.display(),
                                    live_thread_exe(h.pid)
                                ),
                            }
                        )),
                    }
                }
                "rbd" => {
                    // Ours: the same binding (disk sequence number), and the
                    // kernel maps the recorded pool/image@snap on it.
                    if dev.diskseq.is_some()
                        && same_binding(dev.rdev, dev.diskseq)
                        && crate::backend::rbd::maps_recorded(path, &data.image.path.0)
                    {
                        s.device = Some(path.clone());
                        device_rdev = Some(dev.rdev);
                    } else {
                        s.unverified.push(format!(
                            "{} is not the recorded rbd mapping of {} now; left alone",
                            path.display(),
                            data.image.path.0.display()
                        ));
                    }
                }
                _ => {
                    // Block: the image is the device; only its mount is ours.
                    if std::fs::metadata(&data.image.path.0).is_ok_and(|m| m.rdev() == dev.rdev) {
                        device_rdev = Some(dev.rdev);
                    }
                }
            },
        }
    }
    // The mapped partition.
    let mut mapped_rdev = None;
    // An offset loop device (a logical volume's, a partition's) reads the
    // image file itself: it outlives an attached loop device that cleared
    // itself when its holder died, and is verified by its backing file.
    let parent = device_rdev.or_else(|| {
        data.mapped
            .as_ref()
            .filter(|m| {
                m.mapping == "offset-loop"
                    && data.device.as_ref().is_some_and(|d| d.backing.is_some())
            })
            .map(|_| 0)
    });
    if let (Some(m), Some(parent)) = (&data.mapped, parent)
        && let Some((file, meta)) = open_node(&m.path.0)
        && meta.rdev() == m.rdev
    {
        if mapped_of(&file, m.rdev, parent, data) {
            mapped_rdev = Some(m.rdev);
            if data.backend != "block" {
                s.mapped = Some(m.path.0.clone());
            }
        } else {
            s.unverified.push(format!(
                "{} is not a partition of {}; left alone",
                m.path.0.display(),
                data.device
                    .as_ref()
                    .map_or(String::new(), |d| d.path.0.display().to_string())
            ));
        }
    }
    // The devices mapped for the guest's fstab ([`crate::Partition::Os`]).
    let mut ours_rdev: Vec<u64> = device_rdev.into_iter().chain(mapped_rdev).collect();
    if let Some(parent) = parent {
        for m in &data.tree_mapped {
            match open_node(&m.path.0) {
                Some((file, meta)) if meta.rdev() == m.rdev => {
                    if mapped_of(&file, m.rdev, parent, data) {
                        ours_rdev.push(m.rdev);
                        s.tree_mapped.push(m.path.0.clone());
                    } else {
                        s.unverified.push(format!(
                            "{} is not a partition of the recorded device; left alone",
                            m.path.0.display()
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    // Read only when a mount is recorded: a finished teardown has none.
    let mounts = if data.mountpoint.is_some() || !data.tree_mounts.is_empty() {
        mountinfo::mounts().unwrap_or_default()
    } else {
        Vec::new()
    };
    // The mounts of the guest's fstab, each on its recorded mount point
    // and of one of the verified devices (or an excluded mount point's
    // empty tmpfs).
    for t in &data.tree_mounts {
        let Some(entry) = mounts.iter().rev().find(|e| e.target == t.path.0) else {
            continue;
        };
        let ours = if t.rdev == 0 {
            t.device.0 == Path::new(super::format::EXCLUDED)
                && entry.fstype == "tmpfs"
                && entry.source == Path::new(super::format::EXCLUDED)
        } else {
            entry.block_device() == t.rdev && ours_rdev.contains(&t.rdev)
        };
        if ours {
            s.tree_mounts.push(t.path.0.clone());
        } else {
            s.unverified.push(format!(
                "{} is a mount of another device; left alone",
                t.path.0.display()
            ));
        }
    }
    // The mount.
    if let Some(mp) = &data.mountpoint
        && let Some(entry) = mounts.iter().rev().find(|e| e.target == mp.0)
    {
        let ours = [device_rdev, mapped_rdev].contains(&Some(entry.block_device()));
        if ours {
            s.mount = Some(mp.0.clone());
        } else if !s.doubtful.is_empty() {
            s.doubtful.push(format!(
                "{} is mounted from a device that cannot be verified; left alone",
                mp.0.display()
            ));
        } else {
            s.unverified.push(format!(
                "{} is a mount of another device; left alone",
                mp.0.display()
            ));
        }
    }
    // The helper's directory: derived from the id, never read from the
    // record. The loop and block backends run no helper and make none.
    let hdir = super::helper_dir(dir, &data.id);
    if !matches!(data.backend.as_str(), "loop" | "block")
        && std::fs::symlink_metadata(&hdir).is_ok_and(|m| m.is_dir())
    {
        let export = hdir.join("export");
        if is_mount_point(&export) {
            s.export = Some(export);
        }
        s.helper_dir = Some(hdir);
    }
    s
}

/// Whether the device open as `file` (number `rdev`) is a partition,
/// device-mapper target or offset loop device of the device `parent`.
pub(crate) fn mapped_of(file: &File, rdev: u64, parent: u64, data: &Data) -> bool {
    let sys = sys_dir(rdev);
    let dev_of = |p: &Path| {
        std::fs::read_to_string(p.join("dev"))
            .ok()
            .and_then(|s| mountinfo::dev_number(s.trim()))
    };
    if sys.join("partition").exists() {
        return std::fs::canonicalize(&sys)
            .ok()
            .and_then(|real| dev_of(real.parent()?))
            == Some(parent);
    }
    if sys.join("dm").exists() {
        // Over the device itself, or over partitions of it (an LV's
        // target over the partitions holding its PVs).
        let slaves: Vec<PathBuf> = std::fs::read_dir(sys.join("slaves"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let of_parent = |s: &PathBuf| {
            dev_of(s) == Some(parent)
                || (s.join("partition").exists()
                    && std::fs::canonicalize(s)
                        .ok()
                        .and_then(|real| dev_of(real.parent()?))
                        == Some(parent))
        };
        return !slaves.is_empty() && slaves.iter().all(of_parent);
    }
    if sys.join("loop").exists() {
        let want = data.device.as_ref().and_then(|d| d.backing);
        return want.is_some() && loop_backing(file).ok().flatten() == want;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::format::{RawPath, tests::sample};

    /// A record whose helper runs (a real process, verified by pid, start
    /// time and executable), marked shared or not, of an owner alive
    /// (this process) or gone (a child already reaped).
    #[test]
    fn a_shared_helper_is_left_behind_only_once_its_owner_is_gone() {
        let mut helper = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = helper.id();
        let exe = crate::retry::poll_until(std::time::Duration::from_secs(5), || {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .filter(|e| e.file_name().is_some_and(|n| n == "sleep"))
        })
        .unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        let gone_start = start_time(gone_pid).unwrap_or(1);
        gone.wait().unwrap();
        let me = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        let left = |owner: (u32, u64), shared: bool| {
            let mut d = sample();
            d.device = None;
            d.mountpoint = None;
            (d.pid, d.start) = owner;
            d.id = format!("{}-{}-0", owner.0, owner.1);
            d.helper = Some(Helper {
                pid,
                start: start_time(pid).unwrap(),
                exe: RawPath(exe.clone()),
                shared,
            });
            survey(&d, dir.path()).helper.is_some()
        };
        let alive = (me, start_time(me).unwrap());
        assert!(!left(alive, true), "a live owner's shared daemon");
        assert!(left(alive, false), "a helper of its own");
        assert!(
            left((gone_pid, gone_start), true),
            "a dead owner's shared daemon"
        );
        assert!(left((gone_pid, gone_start), false));
        helper.kill().unwrap();
        helper.wait().unwrap();
    }
}

//! Which loop devices serve a given file: the "already in use" check of
//! attach and the lock holder's name in its refusal.
//!
//! sysfs names each bound loop device's backing file by path
//! (`loop/backing_file`); whether that path is the file we hold is decided
//! by `st_dev`/`st_ino`. A `stat` of the path enters its filesystem, and a
//! filesystem whose server does not answer (a FUSE daemon that is stopped,
//! a hard NFS mount whose server is gone) would hang the caller in the
//! kernel, uninterruptibly. So a path is only looked at when the mount it
//! lies on (from mountinfo, which never enters a filesystem) can hold our
//! file: the same device number, or a filesystem type whose files do not
//! report the mount's device number (btrfs subvolumes, overlayfs).
//! The look itself is `statx(AT_STATX_DONT_SYNC)`, from the kernel's cache.
//! `LOOP_GET_STATUS64` is no way around it: the kernel `stat`s the backing
//! file for it too, which is why `losetup -a` hangs on such a device.

use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::debug;

use super::mountinfo::{self, Mount};
use super::sysfs;

/// Filesystems whose files' `st_dev` need not be the mount's device number.
const OWN_DEVICE_NUMBERS: &[&str] = &["btrfs", "overlay", "bcachefs"];

/// The bound loop devices (`/dev/loopN`) whose backing file is the file
/// `meta` describes; read-only devices are left out if `writable_only`.
///
/// Only loop devices with a size are looked at, as `/proc/partitions` lists
/// them: an unbound device has no `loop/backing_file`, and sysfs does not
/// cache a failed lookup (about 10 us per device asked).
pub(crate) fn loops_over(meta: &Metadata, writable_only: bool) -> Vec<PathBuf> {
    // Read only once a bound loop device is found: most attaches see none.
    let mounts = std::cell::OnceCell::new();
    let mut out = Vec::new();
    for name in sysfs::sized_disks() {
        if !sysfs::is_loop_disk(&name) {
            continue;
        }
        // Only the backing file: the other four attributes `loop_info`
        // reads do not matter here.
        let Some((backing_file, _)) = sysfs::loop_backing_file(&name) else {
            continue;
        };
        let mounts = mounts.get_or_init(|| mountinfo::mounts().unwrap_or_default());
        if !may_hold(mounts, &backing_file, meta.dev()) {
            debug!(
                "{name}: backing file {} is on another filesystem; not looked at",
                backing_file.display()
            );
            continue;
        }
        // What the kernel has cached: not even a filesystem that may hold
        // the image is asked to refresh attributes for this.
        let Ok((dev, ino)) = crate::sys::statx::cached_inode(&backing_file) else {
            continue;
        };
        if dev != meta.dev() || ino != meta.ino() {
            continue;
        }
        if !(writable_only && sysfs::is_read_only(&name)) {
            out.push(PathBuf::from(format!("/dev/{name}")));
        }
    }
    out
}

/// Whether the file at `path` may have device number `dev`, judged from
/// the mount `path` lies on (the topmost one with the longest mount point
/// that is a prefix of it). Unknown (no mount table): yes.
fn may_hold(mounts: &[Mount], path: &Path, dev: u64) -> bool {
    let Some(mount) = mount_of(mounts, path) else {
        return true;
    };
    mount.dev == dev || OWN_DEVICE_NUMBERS.contains(&mount.fstype.as_str())
}

/// The mount that `path` (absolute, as the kernel names it) lies on.
fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let path = path.as_os_str().as_bytes();
    let under = |target: &[u8]| {
        target == b"/"
            || (path.starts_with(target)
                && (path.len() == target.len() || path[target.len()] == b'/'))
    };
    // Later lines are mounted later: on the same mount point, on top.
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| under(m.target.as_os_str().as_bytes()))
        .max_by_key(|(i, m)| (m.target.as_os_str().len(), *i))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Vec<Mount> {
        mountinfo::parse(
            b"1 0 254:1 / / rw - ext4 /dev/vda1 rw\n\
              2 1 0:40 / /tmp/fuse rw - fuse.qemu-storage-daemon x rw\n\
              3 1 0:41 / /tmp/fuse2 rw - ext4 /dev/loop0 rw\n\
              4 3 0:42 / /tmp/fuse2 rw - fuse.other y rw\n\
              5 1 0:43 / /srv/btrfs rw - btrfs /dev/loop1 rw\n",
        )
    }

    fn dev(major: u64, minor: u64) -> u64 {
        nix::sys::stat::makedev(major, minor)
    }

    #[test]
    fn a_path_on_another_filesystem_is_never_looked_at() {
        let t = table();
        assert!(!may_hold(&t, Path::new("/tmp/fuse/x.raw"), dev(254, 1)));
        assert!(may_hold(&t, Path::new("/tmp/fuse/x.raw"), dev(0, 40)));
        // A prefix that is not a path component is not that mount.
        assert!(may_hold(&t, Path::new("/tmp/fusex/y.raw"), dev(254, 1)));
        // The topmost of two mounts on one point.
        assert!(!may_hold(&t, Path::new("/tmp/fuse2/z"), dev(0, 41)));
        assert!(may_hold(&t, Path::new("/tmp/fuse2/z"), dev(0, 42)));
        // btrfs subvolumes have device numbers of their own.
        assert!(may_hold(&t, Path::new("/srv/btrfs/sv/img"), dev(0, 99)));
        assert!(may_hold(&[], Path::new("/x"), dev(1, 1)));
    }
}

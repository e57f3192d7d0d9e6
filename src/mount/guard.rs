//! [`MountGuard`]: a filesystem diskmount mounted, flushed and unmounted
//! exactly once.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{debug, warn};
use nix::libc;

use super::unmount::unmount;
use crate::error::{Error, Result, Step};
use crate::retry::RetryPolicy;
use crate::sys::block as blk;

/// A filesystem we mounted, unmounted once.
pub(crate) struct MountGuard {
    pub(crate) target: PathBuf,
    pub(crate) device: PathBuf,
    /// A descriptor of the mounted device, for the flush after unmount.
    pub(crate) device_file: File,
    pub(crate) fstype: String,
    pub(crate) read_only: bool,
    /// `st_dev` of the mount's root right after mounting: proves later that
    /// the path still shows our mount and not one stacked over it.
    pub(crate) root_dev: u64,
    /// The mount's root directory, opened right after mounting (read-write
    /// mounts only): `syncfs` through it reports every write-back error
    /// since the mount, also one that another `syncfs` caller already saw
    /// (a descriptor opened at unmount time would miss those). Closed just
    /// before `umount2`.
    pub(crate) root: Option<File>,
    /// The mount's id (mountinfo), to find it again if the mount point's
    /// directory was moved (its parent renamed) while mounted.
    pub(crate) mnt_id: Option<u64>,
    pub(crate) retry: RetryPolicy,
    pub(crate) mounted: bool,
}

impl MountGuard {
    /// Flushes, unmounts (retrying `EBUSY` within the bound) and flushes the
    /// device. Runs at most once.
    ///
    /// A mount that is still there afterwards (busy past the retry bound,
    /// or covered by another mount) stays ours: [`MountGuard::is_mounted`]
    /// is then true and `release` may be called again.
    pub(crate) fn release(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        let result = self.release_once();
        self.mounted = result.is_err() && self.still_mounted();
        result
    }

    /// Whether our filesystem is (still) mounted.
    pub(crate) fn is_mounted(&self) -> bool {
        self.mounted
    }

    /// Whether our mount is in this namespace's mount table: by its id,
    /// or (no id) a mount on the target that shows our filesystem.
    fn still_mounted(&self) -> bool {
        match self.mnt_id {
            Some(id) => self.ours_by_id(id).is_some(),
            None => {
                crate::kernel::mountinfo::is_mount_point(&self.target)
                    && std::fs::metadata(&self.target).is_ok_and(|m| m.dev() == self.root_dev)
            }
        }
    }

    fn release_once(&mut self) -> Result<()> {
        let target = &self.target;
        debug!("unmount: {}", target.display());
        let mut errors = Vec::new();
        // Flush through our own descriptor first: it reaches our filesystem
        // even if the path no longer shows it.
        if let Some(root) = self.root.take() {
            if let Err(e) = nix::unistd::syncfs(&root) {
                errors.push(Error::os(Step::Unmount, target, "syncfs", e));
            }
            // Our descriptor would keep the mount busy.
            drop(root);
        }
        let shown = match std::fs::metadata(target) {
            Ok(m) if m.dev() == self.root_dev => Ok(()),
            Ok(_) => Err(Error::invalid(
                Step::Unmount,
                target,
                "no longer shows the filesystem diskmount mounted (it was unmounted, or \
                 something was mounted over it); leaving it alone",
            )),
            Err(e) => Err(Error::os(Step::Unmount, target, "stat mount point", e)),
        };
        // Not at its path: our mount may still be mounted elsewhere (its
        // directory moved with a renamed parent); it is ours by its id.
        let moved = match shown {
            Ok(()) => None,
            Err(e) => match self.relocated() {
                Some(at) => {
                    warn!(
                        "unmount: {} was moved to {} while mounted; unmounting it there",
                        target.display(),
                        at.display()
                    );
                    Some(at)
                }
                None => {
                    errors.push(e);
                    return Error::collect(errors);
                }
            },
        };
        let target = moved.as_ref().unwrap_or(target);
        if let Err(e) = unmount(Step::Unmount, target, "", self.retry) {
            errors.push(e);
            return Error::collect(errors);
        }
        if !self.read_only
            && let Err(e) = blk::flsbuf(self.device_file.as_fd())
        {
            errors.push(Error::os(Step::Unmount, &self.device, "BLKFLSBUF", e));
        }
        debug!("unmounted {}", target.display());
        Error::collect(errors)
    }
}

impl MountGuard {
    /// Where our mount (by its id) is mounted now, if not at its path and
    /// still showing our filesystem there.
    fn relocated(&self) -> Option<PathBuf> {
        let entry = self.ours_by_id(self.mnt_id?)?;
        let shows = std::fs::metadata(&entry.target).is_ok_and(|m| m.dev() == self.root_dev);
        (entry.target != self.target && shows).then_some(entry.target)
    }
}

impl MountGuard {
    /// The mount with id `id` if it is ours: of our device. The kernel
    /// reuses a mount's id once it is unmounted, so after our unmount the
    /// id can name someone else's newer mount (seen with tests mounting in
    /// parallel: the teardown took the stranger for ours, still mounted,
    /// and left the device for it).
    fn ours_by_id(&self, id: u64) -> Option<crate::kernel::mountinfo::Mount> {
        crate::kernel::mountinfo::by_id(id).filter(|m| m.source == self.device)
    }
}

/// The mount id of the mount `file` is on.
pub(crate) fn mount_id(file: &File) -> Option<u64> {
    crate::kernel::mountinfo::mount_id(std::os::fd::AsFd::as_fd(file))
}

/// Opens the root directory of the mount on `target` (`step` for errors).
pub(crate) fn open_root(step: Step, target: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(target)
        .map_err(|e| Error::os(step, target, "open mount point", e))
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            warn!("teardown: {e}");
        }
    }
}

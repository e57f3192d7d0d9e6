//! Mount and unmount: [`Mapped`] → [`Mounted`] → back.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::libc;
use nix::mount::{MntFlags, MsFlags};

use super::map::Mapped;
use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result, Step};
use crate::fs::{Detected, FsType, probe};
use crate::image::Image;
use crate::options::MountOptions;
use crate::retry::{Backoff, RetryPolicy};
use crate::sys::block as blk;

/// A filesystem we mounted, unmounted once.
pub(crate) struct MountGuard {
    target: PathBuf,
    device: PathBuf,
    /// A descriptor of the mounted device, for the flush after unmount.
    device_file: File,
    fstype: String,
    read_only: bool,
    /// `st_dev` of the mount's root right after mounting: proves later that
    /// the path still shows our mount and not one stacked over it.
    root_dev: u64,
    /// The mount's root directory, opened right after mounting (read-write
    /// mounts only): `syncfs` through it reports every write-back error
    /// since the mount, also one that another `syncfs` caller already saw
    /// (a descriptor opened at unmount time would miss those). Closed just
    /// before `umount2`.
    root: Option<File>,
    /// The mount's id (mountinfo), to find it again if the mount point's
    /// directory was moved (its parent renamed) while mounted.
    mnt_id: Option<u64>,
    retry: RetryPolicy,
    mounted: bool,
}

impl MountGuard {
    /// Flushes, unmounts (retrying `EBUSY` within the bound) and flushes the
    /// device. Runs at most once.
    fn release(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
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
        let mut backoff = Backoff::new(self.retry);
        loop {
            backoff.attempt();
            match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => break,
                Err(Errno::EBUSY) if backoff.wait() => {
                    warn!(
                        "unmount: {}: busy (a process has a file open or its working directory \
                         there); retrying (attempt {})",
                        target.display(),
                        backoff.attempts() + 1
                    );
                }
                Err(Errno::EBUSY) => {
                    errors.push(Error::Exhausted {
                        step: Step::Unmount,
                        path: target.clone(),
                        operation: "umount2 (still busy: a process has a file open or its \
                                    working directory there)"
                            .into(),
                        attempts: backoff.attempts(),
                        elapsed: backoff.elapsed(),
                        source: Errno::EBUSY.into(),
                    });
                    return Error::collect(errors);
                }
                Err(e) => {
                    errors.push(Error::os(Step::Unmount, target, "umount2", e));
                    return Error::collect(errors);
                }
            }
        }
        if !self.read_only
            && let Err(e) = blk::flsbuf(&self.device_file)
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
        let id = self.mnt_id?;
        let entry = crate::adopt::mounts()
            .ok()?
            .into_iter()
            .find(|m| m.id == id)?;
        let shows = std::fs::metadata(&entry.target).is_ok_and(|m| m.dev() == self.root_dev);
        (entry.target != self.target && shows).then_some(entry.target)
    }
}

/// The mount id of the mount `file` is on (from /proc/self/fdinfo).
fn mount_id(file: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd()))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))?
        .trim()
        .parse()
        .ok()
}

/// Opens the root directory of the mount on `target` (`step` for errors).
fn open_root(step: Step, target: &Path) -> Result<File> {
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

/// A mounted filesystem. Dropping it unmounts, unmaps and detaches;
/// [`Mounted::close`] does the same and reports every error.
///
/// A read-write mount keeps its root directory open while this value
/// lives (to hear of every write-back error), so a plain `umount` by
/// another program fails with "target is busy" until it is closed.
pub struct Mounted<B: Backend> {
    // Field order is teardown order.
    mount: MountGuard,
    mapped: Mapped<B>,
}

impl<B: Backend> std::fmt::Debug for Mounted<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("path", &self.mount.target)
            .field("fstype", &self.mount.fstype)
            .field("mapped", &self.mapped)
            .finish()
    }
}

/// Decides the filesystem type: the caller's, or the probed one if it is on
/// the allow-list.
fn choose_fstype(
    device: &Path,
    file: &File,
    options: &MountOptions,
) -> Result<(String, Option<FsType>)> {
    if let Some(name) = &options.fstype {
        return Ok((name.clone(), FsType::from_name(name)));
    }
    let detected =
        probe::probe(file).map_err(|e| Error::os(Step::Probe, device, "read superblock", e))?;
    debug!("probe: {}: {}", device.display(), detected.describe());
    match detected {
        Detected::Filesystem { fstype, .. } if fstype.is_allowed() => {
            Ok((fstype.driver().to_string(), Some(fstype)))
        }
        Detected::Filesystem { fstype, .. } => Err(Error::invalid(
            Step::Mount,
            device,
            format!(
                "holds {fstype}, which is not on the allow-list ({}); pass MountOptions::fstype(\"{fstype}\") to mount it anyway",
                crate::fs::ALLOWED.map(FsType::as_str).join(", ")
            ),
        )),
        Detected::PartitionTable(_) => Err(Error::invalid(
            Step::Mount,
            device,
            format!(
                "holds {}; choose a partition (Partition::Number or Partition::Auto)",
                detected.describe()
            ),
        )),
        other => Err(Error::invalid(
            Step::Mount,
            device,
            format!("holds {}; there is nothing to mount", other.describe()),
        )),
    }
}

impl<B: Backend> Mapped<B> {
    /// Mounts the partition's filesystem on the directory `dir`.
    ///
    /// The type is probed from the superblock (or taken from
    /// [`MountOptions::fstype`]); the mount is `nodev,nosuid`, and read-only
    /// mounts of journaled filesystems skip journal replay.
    ///
    /// # Errors
    /// [`Step::Probe`] or [`Step::Mount`]: unknown or disallowed filesystem,
    /// bad mount point, or the kernel refused (corrupt filesystem). The
    /// mapping and the device are released.
    pub fn mount(mut self, dir: impl AsRef<Path>, options: &MountOptions) -> Result<Mounted<B>> {
        let dir = dir.as_ref();
        let device = self.device().to_path_buf();
        self.attached.device.check(Step::Mount)?;
        let target = std::fs::canonicalize(dir)
            .map_err(|e| Error::os(Step::Mount, dir, "resolve mount point", e))?;
        let meta = std::fs::metadata(&target)
            .map_err(|e| Error::os(Step::Mount, &target, "stat mount point", e))?;
        if !meta.is_dir() {
            return Err(Error::invalid(
                Step::Mount,
                &target,
                "the mount point is not a directory",
            ));
        }
        let (driver, fstype) = choose_fstype(&device, self.part.file(), options)?;
        let read_only = options.read_only
            || self.attached.is_read_only()
            || fstype.is_some_and(FsType::is_read_only);
        let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        if options.noexec {
            flags |= MsFlags::MS_NOEXEC;
        }
        let mut data: Vec<&str> = Vec::new();
        if read_only {
            data.extend(fstype.and_then(FsType::no_replay_option));
        }
        if let Some(extra) = options.options.as_deref().filter(|s| !s.is_empty()) {
            data.push(extra);
        }
        let subvolume = options.subvolume_option(&device)?;
        data.extend(subvolume.as_deref());
        let data = data.join(",");
        let describe = format!(
            "mount -t {driver} -o {}{}{} on {}",
            if read_only { "ro" } else { "rw" },
            if options.noexec { ",noexec" } else { "" },
            if data.is_empty() {
                String::new()
            } else {
                format!(",{data}")
            },
            target.display()
        );
        debug!("mount: {}: {describe}", device.display());
        nix::mount::mount(
            Some(&device),
            &target,
            Some(driver.as_str()),
            flags,
            Some(data.as_str()),
        )
        .map_err(|e| {
            Error::os(
                Step::Mount,
                &device,
                format!("{describe}{}", mount_hint(e)),
                e,
            )
        })?;
        let device_file = self
            .part
            .file()
            .try_clone()
            .map_err(|e| Error::os(Step::Mount, &device, "dup device", e));
        let root = open_root(Step::Mount, &target).and_then(|f| {
            let dev = f
                .metadata()
                .map_err(|e| Error::os(Step::Mount, &target, "stat mount point", e))?
                .dev();
            Ok((f, dev))
        });
        let (device_file, (root, root_dev)) = match (device_file, root) {
            (Ok(f), Ok(r)) => (f, r),
            (Err(e), _) | (_, Err(e)) => {
                if let Err(u) = nix::mount::umount2(&target, MntFlags::UMOUNT_NOFOLLOW) {
                    warn!(
                        "mount: {}: umount2 after a failed mount: {u}",
                        target.display()
                    );
                }
                return Err(e);
            }
        };
        info!(
            "mounted {} ({driver}) on {}",
            device.display(),
            target.display()
        );
        let mut mapped = self;
        mapped
            .attached
            .record
            .set(&[("mountpoint", target.display().to_string())]);
        Ok(Mounted {
            mount: MountGuard {
                target,
                device,
                device_file,
                fstype: driver,
                read_only,
                root_dev,
                mnt_id: mount_id(&root),
                root: (!read_only).then_some(root),
                retry: options.unmount_retry,
                mounted: true,
            },
            mapped,
        })
    }
}

/// What the kernel's terse mount errors mean here.
fn mount_hint(e: Errno) -> &'static str {
    match e {
        Errno::EINVAL => " (the filesystem is corrupt, not of this type, or an option is wrong)",
        Errno::EUCLEAN => " (the filesystem is corrupt)",
        Errno::EROFS | Errno::EACCES => " (the device is read-only; mount read-only)",
        Errno::ENODEV => " (the kernel does not support this filesystem type)",
        Errno::EBUSY => " (the device or the mount point is busy)",
        _ => "",
    }
}

impl<B: Backend> Mounted<B> {
    /// Wraps a mount found on the system (adoption): `target` shows the
    /// filesystem on `mapped`'s device.
    pub(crate) fn adopt(
        target: PathBuf,
        fstype: String,
        read_only: bool,
        mapped: Mapped<B>,
    ) -> Result<Self> {
        let device = mapped.device().to_path_buf();
        let device_file = mapped
            .part
            .file()
            .try_clone()
            .map_err(|e| Error::os(Step::Unmount, &device, "dup device", e))?;
        let root = open_root(Step::Unmount, &target)?;
        let root_dev = root
            .metadata()
            .map_err(|e| Error::os(Step::Unmount, &target, "stat mount point", e))?
            .dev();
        Ok(Mounted {
            mount: MountGuard {
                target,
                device,
                device_file,
                fstype,
                read_only,
                root_dev,
                mnt_id: mount_id(&root),
                root: (!read_only).then_some(root),
                retry: RetryPolicy::UNMOUNT,
                mounted: true,
            },
            mapped,
        })
    }

    /// A handle on the mounted filesystem's root through which every path
    /// stays inside the image (guest links resolve against the image root).
    pub fn root(&self) -> Result<crate::root::Root<'_>> {
        crate::root::Root::open(&self.mount.target)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount.target
    }

    /// The mounted block device.
    pub fn device(&self) -> &Path {
        &self.mount.device
    }

    /// The filesystem driver it was mounted with (`ext4`, `xfs`, ...).
    pub fn fstype(&self) -> &str {
        &self.mount.fstype
    }

    /// Whether the mount is read-only.
    pub fn is_read_only(&self) -> bool {
        self.mount.read_only
    }

    /// The image.
    pub fn image(&self) -> &Image {
        self.mapped.attached.image()
    }

    /// The backend that attached the image.
    pub fn backend(&self) -> BackendKind {
        self.mapped.backend()
    }

    /// The mapped partition underneath.
    pub fn mapped(&self) -> &Mapped<B> {
        &self.mapped
    }

    /// Leaves the filesystem mounted after this value is gone, as `mount`
    /// does: nothing is torn down, every descriptor is closed, and the loop
    /// device is released by the kernel once the mount goes. Tear it down
    /// later with [`crate::adopt`] on the mount point. Returns the mount
    /// point.
    ///
    /// # Errors
    /// Fuse and Nbd attaches made without [`crate::AttachOptions::persistent`]
    /// are refused (and torn down): their qemu process would end with this one.
    pub fn persist(self) -> Result<PathBuf> {
        let Mounted {
            mut mount,
            mut mapped,
        } = self;
        if !mapped.attached.device.disarm() {
            let backend = mapped.backend();
            return Err(Error::invalid(
                Step::Mount,
                &mount.target,
                format!(
                    "a {backend} mount can only outlive this process if it was attached with \
                     AttachOptions::persistent(true) (its qemu process would end with this one)"
                ),
            ));
        }
        mount.mounted = false;
        mount.root = None;
        mapped.part.disarm();
        mapped.attached.record.keep();
        info!(
            "left {} mounted on {}",
            mount.device.display(),
            mount.target.display()
        );
        Ok(mount.target.clone())
    }

    /// Flushes and unmounts, giving the mapped partition back.
    ///
    /// # Errors
    /// [`Step::Unmount`]: the flush failed (writes may not have reached the
    /// image) or the mount stayed busy past the retry bound. The mapping and
    /// device are then released as far as possible.
    pub fn unmount(self) -> Result<Mapped<B>> {
        let Mounted {
            mut mount,
            mut mapped,
        } = self;
        mount.release()?;
        mapped.attached.record.unset(&["mountpoint"]);
        Ok(mapped)
    }

    /// Unmounts, unmaps and detaches, trying every step even when one fails,
    /// and reports every error ([`Error::Teardown`] if more than one).
    pub fn close(self) -> Result<()> {
        let Mounted { mut mount, mapped } = self;
        let mut errors = Vec::new();
        if let Err(e) = mount.release() {
            errors.push(e);
        }
        drop(mount);
        mapped.close_into(&mut errors);
        Error::collect(errors)
    }
}

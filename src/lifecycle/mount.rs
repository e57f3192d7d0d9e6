//! Mount and unmount: [`Mapped`] → [`Mounted`] → back.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::{info, warn};
use nix::mount::MntFlags;

use super::map::Mapped;
use crate::backend::sealed::Ops;
use crate::backend::{Backend, BackendKind};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::image::Image;
use crate::mount::guard::{MountGuard, mount_id, open_root};
use crate::mount::{by_fd, fstype, plan};
use crate::options::MountOptions;
use crate::retry::RetryPolicy;

/// A mounted filesystem. Dropping it unmounts, unmaps and detaches;
/// [`Mounted::close`] does the same and reports every error.
///
/// A read-write mount keeps its root directory open while this value
/// lives (to hear of every write-back error), so a plain `umount` by
/// another program fails with "target is busy" until it is closed.
#[must_use = "dropping a Mounted unmounts, unmaps and detaches it at once"]
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
        self.attached.device.get_mut().check(Step::Mount)?;
        let target = by_fd::resolve_mount_point(dir)?;
        let (driver, fstype) = fstype::choose(&device, self.part.file(), options)?;
        let plan = plan::plan(options, driver, fstype, self.attached.is_read_only());
        let at = by_fd::open_mount_point(&target)?;
        let device_file = self
            .part
            .file()
            .try_clone()
            .map_err(|e| Error::os(Step::Mount, &device, "dup device", e))?;
        let root = by_fd::mount(&device, &plan, at.as_fd(), &target)?;
        drop(at);
        let (driver, read_only) = (plan.driver, plan.read_only);
        let root_dev = match root.metadata() {
            Ok(m) => m.dev(),
            Err(e) => {
                drop(root);
                if let Err(u) = nix::mount::umount2(&target, MntFlags::UMOUNT_NOFOLLOW) {
                    warn!(
                        "mount: {}: umount2 after a failed mount: {u}",
                        target.display()
                    );
                }
                return Err(Error::os(Step::Mount, &target, "stat mount point", e));
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
            return Err(Error::refused(
                ErrorKind::Unsupported,
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

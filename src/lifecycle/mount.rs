//! Mount and unmount: [`Mapped`] → [`Mounted`] → back.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use nix::mount::MntFlags;

use super::map::Mapped;
use crate::backend::sealed::Ops;
use crate::backend::{Backend, BackendKind};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::image::Image;
use crate::mount::guard::{MountGuard, mount_id, open_root};
use crate::mount::{by_fd, fstype, plan};
use crate::options::MountOptions;
use crate::record::{Field, Keeper, Key};
use crate::retry::RetryPolicy;

/// A mounted filesystem. Dropping it unmounts, unmaps and detaches;
/// [`Mounted::close`] does the same and reports every error.
///
/// A read-write mount keeps its root directory open while this value
/// lives (to hear of every write-back error), so a plain `umount` by
/// another program fails with "target is busy" until it is closed.
#[must_use = "dropping a Mounted unmounts, unmaps and detaches it at once"]
pub struct Mounted<B: Backend> {
    /// `None` only once torn down or handed on (unmount, close, persist).
    inner: Option<Parts<B>>,
}

/// What a [`Mounted`] owns: the mount, and the mapped partition under it.
struct Parts<B: Backend> {
    /// [`crate::Partition::Os`]: the fstab's mounts over `mount`.
    tree: super::mount_os::Tree,
    mount: MountGuard,
    mapped: Mapped<B>,
}

impl<B: Backend> Parts<B> {
    /// Unmounts, then unmaps and detaches, pushing every error. Unmap and
    /// detach never run under a live mount: if the filesystem is still
    /// mounted (busy past the retry bound), everything under it is left
    /// for it (descriptors closed, helpers left running, the record kept
    /// for `diskmount cleanup`): a loop device goes by itself once the
    /// mount does.
    fn teardown(self, errors: &mut Vec<Error>) {
        // Behind a network image's FUSE export, a hung server would hold
        // the flush and the unmount for ever: past a bound the watchdog
        // aborts the export, and everything through it fails at once.
        let watch = self
            .mapped
            .attached
            .device
            .get()
            .watchdog()
            .and_then(|w| w.arm());
        self.teardown_unwatched(errors);
        if let Some(e) = watch.and_then(|w| w.disarm()) {
            errors.push(e);
        }
    }

    fn teardown_unwatched(self, errors: &mut Vec<Error>) {
        let Parts {
            mut tree,
            mut mount,
            mapped,
        } = self;
        let mut mapped = mapped;
        // Flushing through a stopped server would wait in the kernel until
        // it is continued (for ever behind a FUSE export): give it a
        // moment, then kill it, so that every request fails and the
        // teardown goes on, with the loss reported.
        if server_answers(&mount, &mapped).is_err()
            && crate::retry::poll_until(STOPPED_WAIT, || {
                server_answers(&mount, &mapped).is_ok().then_some(())
            })
            .is_none()
        {
            if let Err(e) = server_answers(&mount, &mapped) {
                errors.push(e);
            }
            let (name, pid) = mapped
                .attached
                .device
                .get()
                .server()
                .unwrap_or(("the helper", 0));
            warn!("teardown: killing {name} (pid {pid}), stopped for {STOPPED_WAIT:?}");
            mapped.attached.device.get_mut().kill_server();
            errors.push(Error::invalid(
                Step::Unmount,
                &mount.target,
                format!(
                    "{name} (pid {pid}) stayed stopped for {STOPPED_WAIT:?} and was killed so that \
                     the teardown could go on; writes it had not flushed are lost"
                ),
            ));
        }
        if !tree.release(errors) {
            warn!(
                "teardown: a filesystem under {} is still mounted; leaving the tree and the devices under it",
                mount.target.display()
            );
            mount.mounted = false;
            mount.root = None;
            mapped.abandon();
            return;
        }
        mapped.attached.record.unset(Key::Tree);
        if let Err(e) = mount.release() {
            errors.push(e);
        }
        if mount.is_mounted() {
            warn!(
                "teardown: {} is still mounted; leaving {} and the device under it for the mount",
                mount.target.display(),
                mapped.device().display()
            );
            mapped.abandon();
            return;
        }
        // Unmounted: the record's last check need not look for it.
        mapped.attached.record.forget(Key::Mountpoint);
        drop(mount);
        mapped.close_into(errors);
    }
}

/// How long a teardown waits for a stopped server to be continued before
/// it kills it.
const STOPPED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An error if the process serving the device (qemu-nbd,
/// qemu-storage-daemon) is stopped: it answers no I/O until continued, so
/// the flush and the unmount would wait in the kernel (for ever behind a
/// FUSE export) instead of failing.
fn server_answers<B: Backend>(mount: &MountGuard, mapped: &Mapped<B>) -> Result<()> {
    let Some((name, pid)) = mapped.attached.device.get().server() else {
        return Ok(());
    };
    if !crate::kernel::process::stopped(pid) {
        return Ok(());
    }
    warn!(
        "unmount: {name} (pid {pid}) serving {} is stopped",
        mount.device.display()
    );
    Err(Error::refused(
        ErrorKind::Busy,
        Step::Unmount,
        &mount.target,
        format!(
            "{name} (pid {pid}), which serves {}, is stopped (SIGSTOP or a debugger) and answers \
             no I/O, so the flush cannot reach the image: continue it (kill -CONT {pid}) and \
             retry, or kill it (writes not flushed yet are lost)",
            mount.device.display()
        ),
    ))
}

impl<B: Backend> Drop for Mounted<B> {
    fn drop(&mut self) {
        if let Some(parts) = self.inner.take() {
            let mut errors = Vec::new();
            parts.teardown(&mut errors);
            for e in errors {
                warn!("teardown: {e}");
            }
        }
    }
}

/// A failed [`Mounted::unmount`]: the error, and the mounted value back if
/// the filesystem is still mounted (busy past the retry bound, covered by
/// another mount), so that the caller can retry once the holder is gone.
/// It dereferences to the [`Error`], and converts into one (dropping the
/// mounted value, whose teardown then tries once more).
#[must_use = "dropping an UnmountError tries the teardown once more and then leaves the mount"]
pub struct UnmountError<B: Backend> {
    error: Error,
    mounted: Option<Box<Mounted<B>>>,
}

impl<B: Backend> UnmountError<B> {
    /// The error.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The mounted value, if the filesystem is still mounted.
    pub fn mounted(&self) -> Option<&Mounted<B>> {
        self.mounted.as_deref()
    }

    /// The error and the mounted value (if still mounted), apart.
    pub fn into_parts(self) -> (Error, Option<Mounted<B>>) {
        (self.error, self.mounted.map(|m| *m))
    }

    /// Tries the unmount again (the first error is gone if it works).
    ///
    /// # Errors
    /// The new failure; the original error if the filesystem was not
    /// mounted any more (nothing to retry).
    pub fn retry(self) -> Result<Mapped<B>, UnmountError<B>> {
        match self.mounted {
            Some(m) => (*m).unmount(),
            None => Err(self),
        }
    }
}

impl<B: Backend> std::ops::Deref for UnmountError<B> {
    type Target = Error;

    fn deref(&self) -> &Error {
        &self.error
    }
}

impl<B: Backend> std::fmt::Debug for UnmountError<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnmountError")
            .field("error", &self.error)
            .field("still_mounted", &self.mounted.is_some())
            .finish()
    }
}

impl<B: Backend> std::fmt::Display for UnmountError<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl<B: Backend> std::error::Error for UnmountError<B> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl<B: Backend> From<UnmountError<B>> for Error {
    fn from(e: UnmountError<B>) -> Error {
        e.error
    }
}

impl<B: Backend> std::fmt::Debug for Mounted<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("path", &self.mount().target)
            .field("fstype", &self.mount().fstype)
            .field("mapped", self.mapped())
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
        // An OS root found by inspection: its subvolume, and its fstab.
        let os = self.os.take();
        let found = match &os {
            Some(choice) => Some(choice.pick(options, &device)?.clone()),
            None => None,
        };
        let with_subvolume;
        let options = match found.as_ref().and_then(|f| f.location.subvolume.clone()) {
            Some(sv) if options.subvolume.is_none() => {
                with_subvolume = options.clone().subvolume(sv);
                &with_subvolume
            }
            _ => options,
        };
        self.attached.device.get_mut().check(Step::Mount)?;
        let target = by_fd::resolve_mount_point(dir)?;
        let (driver, fstype) = fstype::choose(&device, self.part.file(), options)?;
        // Checked here: a name the kernel would read as more options.
        options.subvolume_option(&device)?;
        let plan = plan::plan(options, driver, fstype, self.attached.is_read_only());
        let at = by_fd::open_mount_point(&target)?;
        let device_file = self
            .part
            .file()
            .try_clone()
            .map_err(|e| Error::os(Step::Mount, &device, "dup device", e))?;
        // Partition::Os: the fstab's filesystems are planned (their devices
        // mapped) first and mount, detached, while the root mounts; they
        // are moved into place once the root is there.
        let mut planned = match (&os, &found) {
            (Some(choice), Some(found)) if choice.tree => Some(super::mount_os::plan_tree(
                self.attached.device.core(),
                &self.part,
                choice.table.as_ref(),
                found,
                plan.read_only,
                options,
                &target,
                &mut self.attached.record,
            )?),
            _ => None,
        };
        // The inspection's read-only look at this filesystem, if it kept
        // one that can become this mount; any other goes first, before the
        // filesystem is mounted again.
        let inspected = match self.part.take_inspected() {
            Some(look) if plan.takes_over(look.driver()) => Some(look),
            _ => None,
        };
        let mount_root = || match inspected {
            Some(look) => match look.take_over() {
                Ok(d) => d.attach(&device, &plan, at.as_fd(), &target),
                Err(e) => {
                    debug!("mount: {e}; mounting it again");
                    by_fd::mount(&device, &plan, at.as_fd(), &target)
                }
            },
            None => by_fd::mount(&device, &plan, at.as_fd(), &target),
        };
        let root = match planned.as_mut() {
            Some(p) => p.mount_ahead(mount_root),
            None => mount_root(),
        }?;
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
        mapped.attached.record.set(Field::Mountpoint(&target));
        mapped.os = os;
        let mut mounted = Mounted::from_parts(Parts {
            tree: Default::default(),
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
        });
        if let Some(planned) = planned {
            // On an error the partial tree, then the root, come down.
            // The record is lent to the tree's mount for its entries.
            let parts = mounted.inner.as_mut().expect("just made");
            let mut record = std::mem::replace(&mut parts.mapped.attached.record, Keeper::none());
            let tree = mounted.root().and_then(|root| {
                let base = super::mount_os::Base {
                    root,
                    path: mounted.path(),
                    device_file: mounted.mapped().part.file(),
                };
                super::mount_os::mount_tree(base, planned, options, &mut record)
            });
            let parts = mounted.inner.as_mut().expect("just made");
            parts.mapped.attached.record = record;
            parts.tree = tree?;
        }
        Ok(mounted)
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
        Ok(Mounted::from_parts(Parts {
            tree: Default::default(),
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
        }))
    }

    /// A handle on the mounted filesystem's root through which every path
    /// stays inside the image (guest links resolve against the image root).
    ///
    /// The handle is checked to be the root of this very mount (by its
    /// mount id), not of one stacked over the mount point since, nor of
    /// the directory under it.
    ///
    /// # Errors
    /// [`Step::Access`]: the mount point does not show this mount any more.
    pub fn root(&self) -> Result<crate::root::Root<'_>> {
        let m = self.mount();
        let root = crate::root::Root::open(&m.target)?;
        if let Some(ours) = m.mnt_id
            && crate::kernel::mountinfo::mount_id(root.dir_fd()) != Some(ours)
        {
            return Err(Error::invalid(
                Step::Access,
                &m.target,
                "no longer shows the filesystem diskmount mounted (something was mounted over \
                 it, or it was unmounted); refusing to read or write there",
            ));
        }
        Ok(root)
    }

    /// Every filesystem mounted: the root first, then (with
    /// [`crate::Partition::Os`]) each guest fstab entry in mount order,
    /// parents before children; an excluded mount point shows as its
    /// read-only `tmpfs`.
    pub fn mounts(&self) -> Vec<super::mount_os::MountInfo> {
        let m = self.mount();
        let mut out = vec![super::mount_os::MountInfo {
            mount_point: m.target.clone(),
            guest_path: PathBuf::from("/"),
            device: m.device.clone(),
            fstype: m.fstype.clone(),
            read_only: m.read_only,
        }];
        out.extend(self.parts().tree.infos());
        out
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount().target
    }

    /// The mounted block device.
    pub fn device(&self) -> &Path {
        &self.mount().device
    }

    /// The filesystem driver it was mounted with (`ext4`, `xfs`, ...).
    pub fn fstype(&self) -> &str {
        &self.mount().fstype
    }

    /// Whether the mount is read-only.
    pub fn is_read_only(&self) -> bool {
        self.mount().read_only
    }

    /// The image.
    pub fn image(&self) -> &Image {
        self.mapped().attached.image()
    }

    /// The backend that attached the image.
    pub fn backend(&self) -> BackendKind {
        self.mapped().backend()
    }

    /// The mapped partition underneath.
    pub fn mapped(&self) -> &Mapped<B> {
        &self.parts().mapped
    }

    fn from_parts(parts: Parts<B>) -> Self {
        Mounted { inner: Some(parts) }
    }

    fn parts(&self) -> &Parts<B> {
        self.inner
            .as_ref()
            .expect("a Mounted is only emptied when it is consumed")
    }

    fn mount(&self) -> &MountGuard {
        &self.parts().mount
    }

    fn take(mut self) -> Parts<B> {
        self.inner
            .take()
            .expect("a Mounted is only emptied when it is consumed")
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
        let Parts {
            mut tree,
            mut mount,
            mut mapped,
        } = self.take();
        if !mapped.attached.device.disarm() {
            let backend = mapped.backend();
            let target = mount.target.clone();
            // Torn down the ordinary way (never under a live mount).
            drop(Mounted::from_parts(Parts {
                tree,
                mount,
                mapped,
            }));
            return Err(Error::refused(
                ErrorKind::Unsupported,
                Step::Mount,
                &target,
                format!(
                    "a {backend} mount can only outlive this process if it was attached with \
                     AttachOptions::persistent(true) (its qemu process would end with this one)"
                ),
            ));
        }
        tree.disarm();
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
    /// image) or the mount stayed busy past the retry bound. If the
    /// filesystem is still mounted, the [`UnmountError`] gives this value
    /// back ([`UnmountError::retry`], [`UnmountError::into_parts`]);
    /// otherwise the mapping and device are released as far as possible.
    pub fn unmount(self) -> Result<Mapped<B>, UnmountError<B>> {
        if let Err(error) = server_answers(self.mount(), self.mapped()) {
            return Err(UnmountError {
                error,
                mounted: Some(Box::new(self)),
            });
        }
        let Parts {
            mut tree,
            mut mount,
            mut mapped,
        } = self.take();
        let mut tree_errors = Vec::new();
        if !tree.release(&mut tree_errors) {
            let error = Error::collect(tree_errors)
                .err()
                .unwrap_or_else(|| Error::invalid(Step::Unmount, &mount.target, "still mounted"));
            return Err(UnmountError {
                error,
                mounted: Some(Box::new(Mounted::from_parts(Parts {
                    tree,
                    mount,
                    mapped,
                }))),
            });
        }
        drop(tree);
        mapped.attached.record.unset(Key::Tree);
        if let Err(error) = Error::collect(tree_errors) {
            drop(mount);
            drop(mapped);
            return Err(UnmountError {
                error,
                mounted: None,
            });
        }
        match mount.release() {
            Ok(()) => {
                mapped.attached.record.unset(Key::Mountpoint);
                Ok(mapped)
            }
            Err(error) if mount.is_mounted() => Err(UnmountError {
                error,
                mounted: Some(Box::new(Mounted::from_parts(Parts {
                    tree: Default::default(),
                    mount,
                    mapped,
                }))),
            }),
            Err(error) => {
                drop(mount);
                drop(mapped);
                Err(UnmountError {
                    error,
                    mounted: None,
                })
            }
        }
    }

    /// Unmounts, unmaps and detaches, trying every step even when one fails,
    /// and reports every error ([`Error::Teardown`] if more than one). If
    /// the filesystem stays mounted (busy past the retry bound), the
    /// mapping and the device under it are left for it, never torn down
    /// under a live mount (see [`Mounted::unmount`] to retry instead).
    pub fn close(self) -> Result<()> {
        let mut errors = Vec::new();
        self.take().teardown(&mut errors);
        Error::collect(errors)
    }
}

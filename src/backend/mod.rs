//! Backends: how an [`Image`] becomes a block device.
//!
//! A backend is a type parameter of the lifecycle types ([`crate::Unattached`]
//! and the rest), chosen at compile time. Each backend is one file that
//! owns the whole life of its device type ([`Backend::Device`]): attach,
//! the checks before each step, release, and adoption from what the kernel
//! shows.
//!
//! | backend | device type | serves | attach | detach |
//! |---|---|---|---|---|
//! | [`Loop`] | [`LoopDevice`] | raw image files | `LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE` | `LOOP_CLR_FD` |
//! | [`Block`] | [`BlockDevice`] | existing block devices | open the device | close it |
//! | [`Nbd`] | [`NbdDevice`] | any qemu format, URL images (`--image-opts`) | `qemu-nbd --connect` | `qemu-nbd --disconnect` |
//! | [`Rbd`] | [`RbdDevice`] | Ceph RBD images (`rbd://`, raw) | `/sys/bus/rbd/add_single_major` | `remove_single_major` |
//! | [`Fuse`] | [`FuseDevice`] | any qemu format | qemu-storage-daemon's FUSE export + a loop device | both, in reverse |
//! | [`Auto`] | [`AutoDevice`] | whatever it is given | picks one of the above at run time | as picked |
//!
//! Adding a backend is adding its file and one line in `auto.rs`'s list
//! (which also names its [`BackendKind`]). The traits are sealed: the set
//! of backends is part of diskmount.

mod auto;
mod block;
mod ceph_conf;
pub(crate) mod device;
pub(crate) mod fuse;
pub(crate) mod fuse_abort;
mod fuse_shared;
mod fuse_stall;
mod helper_dir;
pub(crate) mod r#loop;
pub mod nbd;
mod nbd_export;
pub(crate) mod qemu_blockdev;
mod qmp;
pub mod rbd;

pub use auto::{Auto, AutoDevice, BackendKind};
pub use block::{Block, BlockDevice};
pub(crate) use device::{Core, Found, Held};
pub use fuse::{Fuse, FuseDevice};
pub use r#loop::{Loop, LoopDevice};
pub use nbd::{Nbd, NbdDevice};
pub use rbd::{Rbd, RbdDevice};

use crate::error::Result;
use crate::image::Image;

pub(crate) mod sealed {
    use super::{Core, Found};
    use crate::error::{Result, Step};
    use crate::image::Image;
    use crate::options::AttachOptions;

    /// Seals [`super::Backend`].
    pub trait Sealed {}

    /// What a backend's device type does over its life. Not nameable
    /// outside the crate, which seals [`super::Device`].
    pub trait Ops: Send + Sized + 'static {
        /// Turns `image` into an attached block device.
        fn attach(image: &Image, options: &AttachOptions) -> Result<Self>;

        /// This backend's device, if `found` is one (`None`: another
        /// backend's), rebuilt from what the kernel shows.
        fn adopt(found: &Found) -> Option<Result<Self>>;

        /// What every device has.
        fn core(&self) -> &Core;

        /// The same, to change.
        fn core_mut(&mut self) -> &mut Core;

        /// Checks before a step that uses the device (errors of `step`):
        /// the image file was not deleted or truncated, and a helper
        /// serving the device still runs.
        fn check(&mut self, step: Step) -> Result<()> {
            self.core().check_image(step)
        }

        /// The process that serves the device's I/O (qemu-nbd,
        /// qemu-storage-daemon), by program name and pid; `None` for a
        /// device the kernel serves alone.
        fn server(&self) -> Option<(&'static str, u32)> {
            None
        }

        /// Kills the process that serves the device (SIGKILL), for a
        /// teardown that cannot wait for it: whatever it has not flushed
        /// is lost, and every request to it fails from then on.
        fn kill_server(&mut self) {}

        /// A watch for a teardown that can hang on a remote server (a
        /// network image's FUSE export): armed by the teardown, it aborts
        /// the export past its bound. `None` for devices whose teardown
        /// the kernel bounds.
        fn watchdog(&self) -> Option<super::fuse_abort::Watchdog> {
            None
        }

        /// What a crash-recovery record needs to find this device's helper
        /// process again.
        fn record_fields(&self) -> Vec<(&'static str, String)> {
            Vec::new()
        }

        /// Lets go without detaching: the descriptors close, and the
        /// kernel's autoclear releases a loop device once its last user
        /// (the mount) is gone; a persistent helper is left running.
        /// `Err(self)` (nothing done) if a helper is tied to this process
        /// and would die with it.
        fn disarm(self) -> std::result::Result<(), Self> {
            Ok(())
        }

        /// Lets go without detaching, also of a helper tied to this
        /// process (which then still ends with it): for a device that a
        /// mount still uses and that must not be torn down under it.
        fn abandon(self) {
            if let Err(device) = self.disarm() {
                device.disown();
            }
        }

        /// Leaves a helper that is tied to this process running when the
        /// device is dropped without a release (see [`Ops::abandon`]).
        fn disown(self) {}

        /// Detaches: flushes what the device buffered into the image and
        /// releases what the backend holds, reporting every error.
        fn release(self) -> Result<()>;
    }
}

/// A way of turning an [`Image`] into a block device: [`Loop`], [`Block`],
/// [`Nbd`], [`Fuse`], or [`Auto`] to pick one at run time. Sealed.
pub trait Backend: sealed::Sealed + Send + Sync + 'static {
    /// The backend's name, for messages.
    const NAME: &'static str;

    /// What the backend holds while an image is attached: a loop device,
    /// a daemon with its export and loop device, ... ([`crate::Attached`]
    /// owns one).
    type Device: Device;
}

/// A backend's attached device (the [`Backend::Device`] of each backend).
/// Sealed; reached through [`crate::Attached`].
pub trait Device: sealed::Ops {}

/// What the qemu-based backends check before starting qemu: an image file,
/// opened once, the format's safety rules ([`crate::format::check_file`])
/// on that open file, and that a read-write attach is one qemu can serve.
/// Returns the header's facts and the file, for qemu to open through
/// [`QemuImage::filename`].
pub(crate) fn check_qemu_image(image: &Image, backend: &str) -> Result<QemuImage> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = image.path();
    if image.kind() == crate::image::ImageKind::Url {
        return Err(crate::error::Error::refused(
            crate::error::ErrorKind::Unsupported,
            crate::error::Step::Attach,
            path,
            format!("the {backend} backend opens URL images with its own protocol node"),
        ));
    }
    if image.kind() != crate::image::ImageKind::File {
        return Err(crate::error::Error::refused(
            crate::error::ErrorKind::Unsupported,
            crate::error::Step::Attach,
            path,
            format!(
                "the {backend} backend serves image files; use the Block backend for block devices"
            ),
        ));
    }
    let mut flags = nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY;
    if image.is_no_follow() {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| crate::error::Error::os(crate::error::Step::Probe, path, "open", e))?;
    let info = crate::format::check_file(&file, path, image.format(), image.allows_backing_file())?;
    crate::format::require_writable(&info, path, image.is_read_only())?;
    Ok(QemuImage { info, file })
}

/// An image checked for qemu: what its header says, and the open file the
/// check read.
pub(crate) struct QemuImage {
    pub(crate) info: crate::format::ImageInfo,
    pub(crate) file: std::fs::File,
}

impl QemuImage {
    /// The name qemu opens the image by: the checked file itself
    /// (`/proc/self/fd/3` in the helper, see [`QemuImage::pass_to`]) where
    /// the image stands alone; its path where it has a backing chain,
    /// whose relative names qemu resolves against the image's own
    /// directory (every file of the chain was checked by path).
    pub(crate) fn filename(&self, path: &std::path::Path) -> std::path::PathBuf {
        self.name(path, || {
            format!("/proc/self/fd/{}", crate::sys::process::PASSED_FD)
        })
    }

    /// [`QemuImage::filename`] for a helper that already runs (the shared
    /// daemon, [`fuse_shared`]): the checked file as this process holds
    /// it, `/proc/<our pid>/fd/<fd>`, which qemu opens while the file is
    /// still open here.
    pub(crate) fn own_filename(&self, path: &std::path::Path) -> std::path::PathBuf {
        self.name(path, || {
            format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                std::os::fd::AsRawFd::as_raw_fd(&self.file)
            )
        })
    }

    fn name(&self, path: &std::path::Path, fd: impl Fn() -> String) -> std::path::PathBuf {
        if self.info.backing_file.is_some() {
            path.to_path_buf()
        } else {
            std::path::PathBuf::from(fd())
        }
    }

    /// Hands the checked file to the helper `cmd` starts (as descriptor 3),
    /// where [`QemuImage::filename`] names it.
    pub(crate) fn pass_to(&self, cmd: &mut std::process::Command) {
        if self.info.backing_file.is_none() {
            crate::sys::process::pass_fd(cmd, std::os::fd::AsFd::as_fd(&self.file));
        }
    }
}

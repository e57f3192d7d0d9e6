//! Attach and detach: [`Unattached`] → [`Attached`] → back.

use std::marker::PhantomData;
use std::path::Path;

use log::debug;

use crate::backend::sealed::Ops;
use crate::backend::{Backend, BackendKind, Core, Held};
use crate::error::{Error, Result};
use crate::image::{Format, Image, ImageKind};
use crate::options::AttachOptions;
use crate::record::{Attachment, Keeper};

/// An image that is not attached yet: the start of the lifecycle.
///
/// `B` is the backend ([`crate::Loop`], [`crate::Block`], [`crate::Auto`]).
#[derive(Debug, Clone)]
#[must_use = "an Unattached does nothing until attach() is called"]
pub struct Unattached<B: Backend> {
    image: Image,
    options: AttachOptions,
    backend: PhantomData<fn() -> B>,
}

impl<B: Backend> Unattached<B> {
    /// Starts the lifecycle for `image` with default [`AttachOptions`].
    pub fn new(image: Image) -> Self {
        Self::with_options(image, AttachOptions::default())
    }

    /// Starts the lifecycle for `image` with `options`.
    pub fn with_options(image: Image, options: AttachOptions) -> Self {
        Unattached {
            image,
            options,
            backend: PhantomData,
        }
    }

    /// The image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Makes the image a block device.
    ///
    /// # Errors
    /// [`crate::Step::Attach`]: the image cannot be opened, is in use, or no
    /// device could be had within the retry bound. Nothing is left attached.
    pub fn attach(self) -> Result<Attached<B>> {
        debug!(
            "attach: {} with the {} backend",
            self.image.path().display(),
            B::NAME
        );
        let mut record = Keeper::start(self.options.run_dir.as_ref(), self.image.path())?;
        let mut options = self.options.clone();
        options.helper_dir = record.helper_dir();
        let mut device = B::Device::attach(&self.image, &options)?;
        if let Some(file) = image_file(&self.image, device.core()) {
            device
                .core_mut()
                .watch_image(file, self.image.format() == Format::Raw);
        }
        let core = device.core();
        let fields = device.record_fields();
        record.attached(&Attachment {
            backend: core.kind.as_str(),
            path: core.path(),
            rdev: core.rdev,
            diskseq: core.diskseq,
            backing: core.backing(),
            helper_pid: fields
                .iter()
                .find(|(k, _)| *k == "daemon_pid")
                .and_then(|(_, pid)| pid.parse().ok()),
            helper_shared: fields.iter().any(|(k, v)| *k == "shared" && v == "true"),
            server_thread: fields
                .iter()
                .find(|(k, _)| *k == "server_thread")
                .and_then(|(_, t)| t.parse().ok()),
        });
        let device = Held::new(device);
        Ok(Attached {
            device,
            record,
            image: self.image,
            options: self.options,
            backend: PhantomData,
        })
    }
}

/// The attached image file, to watch for deletion or truncation: the loop
/// device's own backing file, or (qemu helpers) the file at the path,
/// opened `O_PATH` (only ever `fstat`ed: never blocks, reads nothing).
fn image_file(image: &Image, device: &Core) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match device.kind {
        BackendKind::Block | BackendKind::Rbd => None,
        _ if image.kind() != ImageKind::File => None,
        BackendKind::Loop => device.backing()?.try_clone().ok(),
        BackendKind::Fuse | BackendKind::Nbd => {
            let mut flags = nix::libc::O_PATH | nix::libc::O_CLOEXEC;
            if image.is_no_follow() {
                flags |= nix::libc::O_NOFOLLOW;
            }
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(image.path())
                .ok()
        }
    }
}

/// An image attached as a block device. Dropping it detaches.
#[must_use = "dropping an Attached detaches it at once"]
pub struct Attached<B: Backend> {
    pub(crate) device: Held<B::Device>,
    /// Dropped after the device: a record outlives a teardown that did
    /// not finish.
    pub(crate) record: Keeper,
    image: Image,
    options: AttachOptions,
    backend: PhantomData<fn() -> B>,
}

impl<B: Backend> std::fmt::Debug for Attached<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("backend", &self.device.core().kind)
            .field("device", &self.device.core().path)
            .field("image", &self.image.path())
            .finish()
    }
}

impl<B: Backend> Attached<B> {
    /// Wraps a device found on the system (adoption).
    pub(crate) fn from_parts(device: B::Device, image: Image) -> Self {
        Attached {
            device: Held::new(device),
            record: Keeper::none(),
            image,
            options: AttachOptions::default(),
            backend: PhantomData,
        }
    }

    /// The block device, e.g. `/dev/loop3`.
    pub fn device(&self) -> &Path {
        self.device.core().path()
    }

    /// The image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The backend that attached it (for [`crate::Auto`], the one it picked).
    pub fn backend(&self) -> BackendKind {
        self.device.core().kind
    }

    /// The format the device serves the image as: the one given, or for
    /// a URL image whose format was probed through the protocol at
    /// attach, the one found ([`Image::format`] still says raw there).
    pub fn format(&self) -> Format {
        self.device.core().probed.unwrap_or(self.image.format())
    }

    /// The device size in bytes.
    pub fn size(&self) -> u64 {
        self.device.core().size
    }

    /// The device's disk sequence number, where the kernel has them (5.15+).
    pub fn diskseq(&self) -> Option<u64> {
        self.device.core().diskseq
    }

    /// Whether the device is read-only.
    pub fn is_read_only(&self) -> bool {
        self.device.core().read_only
    }

    /// Releases the device and gives the image back, ready to attach again.
    ///
    /// # Errors
    /// [`crate::Step::Detach`]: flushing into the image failed (writes may
    /// be lost) or the device could not be released.
    pub fn detach(mut self) -> Result<Unattached<B>> {
        self.device.release()?;
        Ok(Unattached::with_options(self.image, self.options))
    }

    /// Detaches, reporting every error.
    pub fn close(self) -> Result<()> {
        let mut errors = Vec::new();
        self.close_into(&mut errors);
        Error::collect(errors)
    }

    pub(crate) fn close_into(mut self, errors: &mut Vec<Error>) {
        // A hung server behind a network image's export (see
        // `Mounted`'s teardown).
        let watch = self.device.get().watchdog().and_then(|w| w.arm());
        if let Err(e) = self.device.release() {
            errors.push(e);
        }
        if let Some(e) = watch.and_then(|w| w.disarm()) {
            errors.push(e);
        }
    }
}

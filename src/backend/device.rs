//! [`Device`]: what the attach step acquired, released exactly once.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::warn;

use super::BackendKind;
use crate::error::{Error, Result, Step};

/// What a backend holds while a device is attached; each backend releases
/// its own.
pub enum Held {
    /// A loop device we configured: its number and the backing file (which
    /// also carries our flock on the image).
    Loop { nr: u32, backing: Option<File> },
    /// A block device we only opened.
    Block,
    /// An nbd device served by our qemu-nbd.
    Nbd { server: Box<super::nbd::Server> },
    /// A loop device over a qemu-storage-daemon FUSE export.
    Fuse {
        nr: u32,
        export: File,
        daemon: Box<super::fuse::Daemon>,
    },
}

/// An attached block device. Dropping it detaches (errors are logged);
/// [`Device::release`] detaches and reports.
pub struct Device {
    pub(crate) kind: BackendKind,
    pub(crate) path: PathBuf,
    pub(crate) image: PathBuf,
    pub(crate) read_only: bool,
    pub(crate) size: u64,
    pub(crate) diskseq: Option<u64>,
    /// The device number (`st_rdev`).
    pub(crate) rdev: u64,
    /// The open device and what the backend holds; `None` once released.
    held: Option<(File, Held)>,
    /// The image file as attached, to notice it being deleted or truncated
    /// under us ([`Device::watch_image`]); `bool`: the format is raw (the
    /// file's size is the device's).
    image_file: Option<(File, bool)>,
}

impl Device {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        kind: BackendKind,
        path: PathBuf,
        image: PathBuf,
        read_only: bool,
        size: u64,
        diskseq: Option<u64>,
        file: File,
        held: Held,
    ) -> Device {
        // fstat of an open descriptor does not fail in practice; 0 matches no device.
        let rdev = file
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::rdev(&m))
            .unwrap_or(0);
        Device {
            kind,
            path,
            image,
            read_only,
            size,
            diskseq,
            rdev,
            held: Some((file, held)),
            image_file: None,
        }
    }

    /// Keeps `file`, the attached image file, to check later that it was
    /// not deleted or truncated while attached ([`Device::check_image`]).
    pub(crate) fn watch_image(&mut self, file: File, raw: bool) {
        self.image_file = Some((file, raw));
    }

    /// What happened to the image file since attach that breaks the
    /// device: deleted while attached read-write (what is written is lost
    /// with it) or, for a raw
    /// image, cut shorter than the device (its end reads as I/O errors).
    pub(crate) fn image_fault(&self) -> Option<String> {
        let (file, raw) = self.image_file.as_ref()?;
        let meta = file.metadata().ok()?;
        if meta.nlink() == 0 && !self.read_only {
            return Some(
                "the image file was deleted while attached: what is written goes into the \
                 deleted file and is lost"
                    .to_string(),
            );
        }
        if *raw && meta.len() < self.size {
            return Some(format!(
                "the image file was truncated to {} bytes while attached (the device has {} \
                 bytes): the end of the disk is gone",
                meta.len(),
                self.size
            ));
        }
        None
    }

    /// Checks before a step that uses the device: the qemu helper serving
    /// it still runs, and the image file was not deleted or truncated
    /// ([`Device::image_fault`]). Errors are of `step`.
    pub(crate) fn check(&mut self, step: Step) -> Result<()> {
        match self.held.as_mut() {
            Some((_, Held::Fuse { daemon, .. })) => daemon.check_alive(step)?,
            Some((_, Held::Nbd { server })) => server.check_alive(step)?,
            _ => {}
        }
        self.check_image(step)
    }

    /// [`Device::image_fault`] as an error of `step`.
    fn check_image(&self, step: Step) -> Result<()> {
        match self.image_fault() {
            Some(reason) => Err(Error::invalid(step, &self.image, reason)),
            None => Ok(()),
        }
    }

    /// The open device node. Only released devices have none, and those are
    /// never reachable from a lifecycle value.
    pub(crate) fn file(&self) -> &File {
        &self
            .held
            .as_ref()
            .expect("a device is only released when its owner is consumed")
            .0
    }

    /// The image file behind a loop device (where partitions can be
    /// reached directly by offset).
    pub(crate) fn backing(&self) -> Option<&File> {
        match self.held.as_ref()? {
            (_, Held::Loop { backing, .. }) => backing.as_ref(),
            (_, Held::Fuse { export, .. }) => Some(export),
            _ => None,
        }
    }

    /// What a record needs to find this device's helper process again.
    pub(crate) fn helper(&self) -> Vec<(&'static str, String)> {
        match self.held.as_ref() {
            Some((_, Held::Fuse { daemon, .. })) => daemon.record_fields(),
            Some((_, Held::Nbd { server })) => server.record_fields(),
            _ => Vec::new(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Lets go without detaching: the descriptors close, and the kernel's
    /// autoclear releases a loop device once its last user (the mount) is
    /// gone; a persistent qemu helper is left running. False (and nothing
    /// done) if a helper is tied to this process and would die with it.
    pub(crate) fn disarm(&mut self) -> bool {
        match self.held.as_mut() {
            Some((_, Held::Fuse { daemon, .. })) if !daemon.is_persistent() => return false,
            Some((_, Held::Nbd { server })) if !server.is_persistent() => return false,
            Some((_, Held::Fuse { daemon, .. })) => daemon.disown(),
            Some((_, Held::Nbd { server })) => server.disown(),
            _ => {}
        }
        self.held = None;
        true
    }

    /// Detaches: flushes what the device buffered into the image, then
    /// releases what the backend holds. Runs at most once.
    pub(crate) fn release(&mut self) -> Result<()> {
        let Some((file, held)) = self.held.take() else {
            return Ok(());
        };
        // Writes into a deleted or cut image are lost even if every flush
        // below succeeds.
        let fault = if self.read_only {
            Ok(())
        } else {
            self.check_image(Step::Detach)
        };
        let released = match held {
            Held::Loop { nr, backing } => super::r#loop::detach(self, file, nr, backing),
            Held::Block => super::block::detach(self, file),
            Held::Nbd { mut server } => super::nbd::detach(self, file, &mut server),
            Held::Fuse {
                nr,
                export,
                mut daemon,
            } => super::fuse::detach(self, file, nr, export, &mut daemon),
        };
        Error::collect(
            [released.err(), fault.err()]
                .into_iter()
                .flatten()
                .collect(),
        )
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            warn!("teardown: {e}");
        }
    }
}

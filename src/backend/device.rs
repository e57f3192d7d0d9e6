//! What every attached device has, whichever backend made it: [`Core`]
//! (the open device, its geometry, the image file behind it), the
//! [`sealed::Ops`](super::sealed::Ops) each backend's device type
//! implements, and [`Held`], the guard that releases a device exactly once.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{debug, warn};
use nix::libc;

use super::BackendKind;
use super::sealed::Ops;
use crate::error::{Error, Result, Step};
use crate::image::Format;
use crate::kernel::sysfs;
use crate::sys::block as blk;

/// The part of an attached device that every backend has.
#[derive(Debug)]
pub struct Core {
    pub(crate) kind: BackendKind,
    /// The device node, e.g. `/dev/loop3`.
    pub(crate) path: PathBuf,
    /// The image (file or block device) the device serves.
    pub(crate) image: PathBuf,
    pub(crate) read_only: bool,
    pub(crate) size: u64,
    pub(crate) diskseq: Option<u64>,
    /// The device number (`st_rdev`).
    pub(crate) rdev: u64,
    /// The open device node.
    file: File,
    /// The file a loop device reads (the image, or a FUSE export), where
    /// partitions can be reached directly by offset and writes are made
    /// durable with `fsync`.
    backing: Option<File>,
    /// The image file as attached, to notice it being deleted or truncated
    /// under us; `bool`: the format is raw (the file's size is the device's).
    image_file: Option<(File, bool)>,
    /// The format read through the protocol, for a URL image that was
    /// probed at attach (`Image::format` still says raw).
    pub(crate) probed: Option<Format>,
}

impl Core {
    /// The core of device `path`, open as `file`, serving `image`. Reads
    /// the size and the disk sequence number from the device (errors are
    /// of `step`).
    pub(crate) fn new(
        step: Step,
        kind: BackendKind,
        path: PathBuf,
        image: PathBuf,
        read_only: bool,
        file: File,
        backing: Option<File>,
    ) -> Result<Core> {
        let size =
            blk::getsize64(file.as_fd()).map_err(|e| Error::os(step, &path, "BLKGETSIZE64", e))?;
        let diskseq = blk::getdiskseq(file.as_fd()).ok();
        // fstat of an open descriptor does not fail in practice; 0 matches no device.
        let rdev = file.metadata().map(|m| m.rdev()).unwrap_or(0);
        Ok(Core {
            kind,
            path,
            image,
            read_only,
            size,
            diskseq,
            rdev,
            file,
            backing,
            image_file: None,
            probed: None,
        })
    }

    /// Keeps `file`, the attached image file, to check later that it was
    /// not deleted or truncated while attached ([`Core::check_image`]).
    pub(crate) fn watch_image(&mut self, file: File, raw: bool) {
        self.image_file = Some((file, raw));
    }

    /// What happened to the image file since attach that breaks the
    /// device: deleted while attached read-write (what is written is lost
    /// with it) or, for a raw image, cut shorter than the device (its end
    /// reads as I/O errors).
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

    /// [`Core::image_fault`] as an error of `step`.
    pub(crate) fn check_image(&self, step: Step) -> Result<()> {
        match self.image_fault() {
            Some(reason) => Err(Error::invalid(step, &self.image, reason)),
            None => Ok(()),
        }
    }

    /// The open device node.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The file under a loop device, if there is one.
    pub(crate) fn backing(&self) -> Option<&File> {
        self.backing.as_ref()
    }

    /// The device node.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the descriptors apart for a backend's release: the device
    /// node and the backing file.
    pub(crate) fn into_files(self) -> (File, Option<File>) {
        (self.file, self.backing)
    }
}

/// A whole block device found on the system, for a backend to adopt
/// ([`super::sealed::Ops::adopt`]): its kernel name, node and access mode.
#[derive(Debug)]
pub struct Found {
    /// The kernel name, e.g. `loop3`, `nbd0`, `sdb`.
    pub(crate) name: String,
    /// `/dev/NAME`.
    pub(crate) node: PathBuf,
    /// Read-only: mounted read-only, or a read-only device.
    pub(crate) read_only: bool,
}

impl Found {
    /// The device `name` as found, read-only if `read_only` or the kernel
    /// says so.
    pub(crate) fn new(name: &str, read_only: bool) -> Found {
        Found {
            name: name.to_string(),
            node: PathBuf::from("/dev").join(name),
            read_only: read_only || sysfs::is_read_only(name),
        }
    }

    /// Opens the node the way it is used.
    pub(crate) fn open(&self) -> Result<File> {
        open_node(&self.node, self.read_only, Step::Open)
    }

    /// The core of the found device serving `image`, of backend `kind`.
    pub(crate) fn core(
        &self,
        kind: BackendKind,
        image: PathBuf,
        backing: Option<File>,
    ) -> Result<Core> {
        Core::new(
            Step::Open,
            kind,
            self.node.clone(),
            image,
            self.read_only,
            self.open()?,
            backing,
        )
    }
}

/// Opens a device node or backing file, close-on-exec, for reading and
/// (unless `read_only`) writing.
pub(crate) fn open_node(path: &Path, read_only: bool, step: Step) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::os(step, path, "open device", e))
}

/// An attached device, released exactly once: by [`Held::release`], or
/// on drop (errors are logged, as on every teardown path that cannot
/// return them).
pub(crate) struct Held<D: Ops> {
    device: Option<D>,
}

impl<D: Ops> Held<D> {
    pub(crate) fn new(device: D) -> Held<D> {
        Held {
            device: Some(device),
        }
    }

    /// The device. Only released devices have none, and those are never
    /// reachable from a lifecycle value.
    pub(crate) fn get(&self) -> &D {
        self.device
            .as_ref()
            .expect("a device is only released when its owner is consumed")
    }

    pub(crate) fn get_mut(&mut self) -> &mut D {
        self.device
            .as_mut()
            .expect("a device is only released when its owner is consumed")
    }

    /// The common part of the device.
    pub(crate) fn core(&self) -> &Core {
        self.get().core()
    }

    /// Detaches: flushes what the device buffered into the image, then
    /// releases what the backend holds. Runs at most once.
    pub(crate) fn release(&mut self) -> Result<()> {
        let Some(device) = self.device.take() else {
            return Ok(());
        };
        // Writes into a deleted or cut image are lost even if every flush
        // succeeds.
        let core = device.core();
        let fault = if core.read_only {
            Ok(())
        } else {
            core.check_image(Step::Detach)
        };
        let released = device.release();
        Error::collect(
            [released.err(), fault.err()]
                .into_iter()
                .flatten()
                .collect(),
        )
    }

    /// Lets go without detaching ([`Ops::disarm`]); false (and nothing
    /// done) if the backend's helper would die with this process.
    pub(crate) fn disarm(&mut self) -> bool {
        match self.device.take().map(Ops::disarm) {
            Some(Ok(())) | None => true,
            Some(Err(device)) => {
                self.device = Some(device);
                false
            }
        }
    }
}

impl<D: Ops> Held<D> {
    /// Lets go without detaching and without stopping a helper, whatever
    /// it is ([`Ops::abandon`]): for a device a live mount still uses.
    pub(crate) fn abandon(&mut self) {
        if let Some(device) = self.device.take() {
            device.abandon();
        }
    }
}

impl<D: Ops> Drop for Held<D> {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            warn!("teardown: {e}");
        }
    }
}

/// Clears the block layer's read-only flag (`BLKROSET 0`) of a loop or nbd
/// device we configure or unbind: such a device outlives its binding, and
/// a process killed while an OS inspection's read-only look held it
/// (`mount/by_fd.rs::mount_reusable`) leaves the flag set for the device's
/// next user. A device attached read-only stays read-only all the same
/// (the driver's own flag, not this one). Failing is logged, not fatal: a
/// read-only device then fails its first write with a clear `EROFS`.
pub(crate) fn clear_stale_read_only(file: &File, node: &Path) {
    match blk::roget(file.as_fd()) {
        Ok(false) => {}
        _ => {
            if let Err(e) = blk::roset(file.as_fd(), false) {
                debug!("{}: BLKROSET 0: {e}", node.display());
            }
        }
    }
}

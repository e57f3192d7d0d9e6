//! [`Block`]: an existing block device, used as it is.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use log::{debug, info};
use nix::errno::Errno;
use nix::libc;

use super::device::{Core, Found};
use super::r#loop::lock_briefly;
use super::{Backend, BackendKind, Device, sealed};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::format::describe;
use crate::image::{Image, ImageKind};
use crate::options::AttachOptions;
use crate::sys::block as blk;
use crate::sys::flock::Lock;

/// Existing block devices: attach opens the device, detach closes it.
/// Nothing is created, so nothing but the descriptor is released.
#[derive(Debug, Clone, Copy, Default)]
pub struct Block;

impl sealed::Sealed for Block {}

impl Backend for Block {
    const NAME: &'static str = "block";
    type Device = BlockDevice;
}

/// A block device that [`Block`] opened (and locked): it is only closed
/// again, after a flush.
#[derive(Debug)]
pub struct BlockDevice {
    core: Core,
}

impl Device for BlockDevice {}

impl sealed::Ops for BlockDevice {
    fn attach(image: &Image, options: &AttachOptions) -> Result<Self> {
        attach(image, options)
    }

    /// Any block device is one: the fallback of adoption.
    fn adopt(found: &Found) -> Option<Result<Self>> {
        Some(
            found
                .core(BackendKind::Block, found.node.clone(), None)
                .map(|core| BlockDevice { core }),
        )
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    /// Flushes the device and closes it; the device itself stays.
    fn release(self) -> Result<()> {
        let core = self.core;
        debug!("detach: {} (block device, kept)", core.path().display());
        let mut errors = Vec::new();
        if !core.read_only {
            if let Err(e) = blk::flsbuf(core.file().as_fd()) {
                errors.push(Error::os(Step::Detach, core.path(), "BLKFLSBUF", e));
            }
            if let Err(e) = core.file().sync_all() {
                errors.push(Error::os(Step::Detach, core.path(), "fsync device", e));
            }
        }
        Error::collect(errors)
    }
}

fn attach(image: &Image, _options: &AttachOptions) -> Result<BlockDevice> {
    let path = image.path();
    debug!("attach: {} as a block device", path.display());
    if image.kind() != ImageKind::Block {
        return Err(Error::refused(
            ErrorKind::Unsupported,
            Step::Attach,
            path,
            "the block backend serves block devices; use the Loop backend for image files",
        ));
    }
    let mut flags = libc::O_CLOEXEC;
    if image.is_no_follow() {
        flags |= libc::O_NOFOLLOW;
    }
    let open = |extra: i32| {
        OpenOptions::new()
            .read(true)
            .write(!image.is_read_only())
            .custom_flags(flags | extra)
            .open(path)
    };
    // An exclusive open fails with EBUSY while the device is mounted or
    // claimed (by dm, md, another exclusive opener): that is "in use". The
    // claim is dropped again at once, or our own mount would fail.
    match open(libc::O_EXCL) {
        Ok(probe) => drop(probe),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(Error::refused(
                ErrorKind::InUse,
                Step::Attach,
                path,
                "the device is in use (mounted, or claimed by another program)",
            ));
        }
        Err(e) => return Err(Error::os(Step::Attach, path, "open device", e)),
    }
    let file: File = open(0).map_err(|e| Error::os(Step::Attach, path, "open device", e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::os(Step::Attach, path, "fstat device", e))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::invalid(
            Step::Attach,
            path,
            format!(
                "is not a block device (it is a {})",
                describe(meta.file_type())
            ),
        ));
    }
    let lock = if image.is_read_only() {
        Lock::Shared
    } else {
        Lock::Exclusive
    };
    lock_briefly(&file, lock).map_err(|e| match e {
        Errno::EWOULDBLOCK => Error::refused(
            ErrorKind::InUse,
            Step::Attach,
            path,
            "the device is locked by another program (udev or another diskmount user)",
        ),
        e => Error::os(Step::Attach, path, "flock device", e),
    })?;
    crate::lock::hold(&file, path, image.is_read_only())?;
    let core = Core::new(
        Step::Attach,
        BackendKind::Block,
        path.to_path_buf(),
        path.to_path_buf(),
        image.is_read_only(),
        file,
        None,
    )?;
    info!(
        "attached block device {} ({} bytes)",
        path.display(),
        core.size
    );
    Ok(BlockDevice { core })
}

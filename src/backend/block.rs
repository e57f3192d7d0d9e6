//! [`Block`]: an existing block device, used as it is.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use log::{debug, info};
use nix::errno::Errno;
use nix::libc;

use super::device::{Device, Held};
use super::r#loop::lock_briefly;
use super::{Backend, BackendKind, sealed};
use crate::error::{Error, Result, Step};
use crate::image::{Image, ImageKind, describe};
use crate::options::AttachOptions;
use crate::sys::block as blk;
use crate::sys::flock::Lock;

/// Existing block devices: attach opens the device, detach closes it.
/// Nothing is created, so nothing but the descriptor is released.
#[derive(Debug, Clone, Copy, Default)]
pub struct Block;

impl Backend for Block {
    const NAME: &'static str = "block";
}

impl sealed::Attach for Block {
    fn attach(image: &Image, options: &AttachOptions) -> Result<Device> {
        attach(image, options)
    }
}

pub(crate) fn attach(image: &Image, _options: &AttachOptions) -> Result<Device> {
    let path = image.path();
    debug!("attach: {} as a block device", path.display());
    if image.kind() != ImageKind::Block {
        return Err(Error::invalid(
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
            return Err(Error::invalid(
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
        Errno::EWOULDBLOCK => Error::invalid(
            Step::Attach,
            path,
            "the device is locked by another program (udev or another diskmount user)",
        ),
        e => Error::os(Step::Attach, path, "flock device", e),
    })?;
    crate::lock::hold(&file, path, image.is_read_only())?;
    let size =
        blk::getsize64(&file).map_err(|e| Error::os(Step::Attach, path, "BLKGETSIZE64", e))?;
    let diskseq = blk::getdiskseq(&file).ok();
    info!("attached block device {} ({size} bytes)", path.display());
    Ok(Device::new(
        BackendKind::Block,
        path.to_path_buf(),
        path.to_path_buf(),
        image.is_read_only(),
        size,
        diskseq,
        file,
        Held::Block,
    ))
}

/// Flushes the device and closes it; the device itself stays.
pub(crate) fn detach(dev: &Device, file: File) -> Result<()> {
    debug!("detach: {} (block device, kept)", dev.path().display());
    let mut errors = Vec::new();
    if !dev.read_only {
        if let Err(e) = blk::flsbuf(&file) {
            errors.push(Error::os(Step::Detach, dev.path(), "BLKFLSBUF", e));
        }
        if let Err(e) = file.sync_all() {
            errors.push(Error::os(Step::Detach, dev.path(), "fsync device", e));
        }
    }
    Error::collect(errors)
}

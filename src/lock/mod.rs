//! Image locks that qemu understands: before attaching, find the other
//! users of an image (qemu's OFD permission locks, read the way qemu reads
//! them; another diskmount's `flock`; loop devices over the same inode);
//! refuse a use that conflicts, naming the holder where the kernel tells;
//! and, for the loop and block backends, hold qemu's locks ourselves, so
//! that a VM, `qemu-img`, `qemu-nbd` or `qemu-storage-daemon` started on
//! the image afterwards is refused by qemu instead of corrupting it.
//!
//! The Fuse and Nbd backends only check ([`check`]): their qemu takes its
//! own locks on the image, and ours would conflict with it.
//!
//! (An image that is a block device in use, mounted or claimed, is found
//! by the block backend's exclusive open, `O_EXCL`.)

mod holders;
pub(crate) mod qemu;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{debug, warn};
use nix::errno::Errno;
use nix::libc;

use crate::error::{Error, Result, Step};
use crate::image::Image;
use crate::sys::flock::{Lock, flock};
use qemu::{Conflict, Perms};

fn access(read_only: bool) -> &'static str {
    if read_only { "read-only" } else { "read-write" }
}

/// The refusal for `conflict`, found on the image `path` (`meta`) when
/// asking for `read_only` use; `ours`: our descriptor holding the same
/// locks, not a holder.
fn refusal(
    path: &Path,
    meta: &std::fs::Metadata,
    conflict: Conflict,
    read_only: bool,
    ours: Option<i32>,
) -> Error {
    let byte = conflict.byte();
    let who = if conflict.pid() > 0 {
        // A classic POSIX lock (a qemu without OFD locks): the kernel says.
        holders::describe(conflict.pid() as u32)
    } else {
        let pids = holders::ofd_holders(meta, byte, ours.map(|fd| (std::process::id(), fd)));
        if pids.is_empty() {
            match loops_over(meta, false).first() {
                Some(dev) => format!(
                    "the loop device {} (whose process is gone: it keeps the locks of the file \
                     it was set up with)",
                    dev.display()
                ),
                None => "a process the kernel does not name (OFD locks belong to an open file, \
                         not a process, and no /proc/PID/fdinfo here lists this one: another \
                         pid namespace?)"
                    .to_string(),
            }
        } else {
            pids.iter()
                .map(|p| holders::describe(*p))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let what = match conflict {
        Conflict::Uses { bit, .. } => format!(
            "{who} {} it (it holds qemu's \"{}\" permission lock, byte {byte})",
            if bit == qemu::WRITE {
                "writes to"
            } else {
                "uses"
            },
            qemu::name(bit)
        ),
        Conflict::Forbids { bit, .. } => format!(
            "{who} forbids others to {} it (it holds qemu's lock against sharing \"{}\", byte \
             {byte})",
            match bit {
                qemu::CONSISTENT_READ => "read",
                qemu::WRITE => "write",
                _ => qemu::name(bit),
            },
            qemu::name(bit)
        ),
    };
    Error::invalid(
        Step::Attach,
        path,
        format!(
            "the image is in use: {what}; attaching it {} could corrupt it or show a disk \
             changing underneath. Stop that user first",
            access(read_only)
        ),
    )
}

/// Holds qemu's permission locks for `read_only` (or read-write) use on
/// `file`, the open image (or block device) the device keeps, after making
/// sure nobody else's locks conflict (taken first, then tested, as qemu
/// does). The locks last as long as the open file description: for a loop
/// device, as long as the device.
///
/// # Errors
/// [`Step::Attach`]: another user conflicts; the error names it.
pub(crate) fn hold(file: &File, path: &Path, read_only: bool) -> Result<()> {
    let perms = Perms::diskmount(read_only);
    match qemu::apply(file, perms) {
        Ok(()) => {}
        Err(e) if qemu::unsupported(e) => {
            warn!(
                "attach: {}: no OFD locks on this filesystem ({e}): qemu cannot lock it either",
                path.display()
            );
            return Ok(());
        }
        Err(e) => {
            return Err(Error::os(
                Step::Attach,
                path,
                "F_OFD_SETLK (qemu's lock bytes)",
                e,
            ));
        }
    }
    let found = qemu::conflict(file, perms)
        .map_err(|e| Error::os(Step::Attach, path, "F_OFD_GETLK (qemu's lock bytes)", e));
    match found {
        Ok(None) => {
            debug!(
                "attach: {}: holding qemu's {} locks",
                path.display(),
                access(read_only)
            );
            Ok(())
        }
        Ok(Some(c)) => {
            qemu::release(file, perms);
            let meta = file
                .metadata()
                .map_err(|e| Error::os(Step::Attach, path, "fstat image", e))?;
            Err(refusal(path, &meta, c, read_only, Some(file.as_raw_fd())))
        }
        Err(e) => {
            qemu::release(file, perms);
            Err(e)
        }
    }
}

/// Checks, before a qemu helper opens `image`, that nobody's use conflicts
/// with the image's access mode: qemu's locks (tested without holding
/// any), another diskmount's `flock`, a loop device over the same inode.
///
/// # Errors
/// [`Step::Attach`]: another user conflicts; the error names it.
pub(crate) fn check(image: &Image) -> Result<()> {
    let path = image.path();
    let read_only = image.is_read_only();
    let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if image.is_no_follow() {
        flags |= libc::O_NOFOLLOW;
    }
    // Read-only: a test needs no write access, and takes nothing.
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    else {
        // qemu reports what is wrong with the path itself.
        return Ok(());
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::os(Step::Attach, path, "fstat image", e))?;
    match qemu::conflict(&file, Perms::diskmount(read_only)) {
        Ok(Some(c)) => return Err(refusal(path, &meta, c, read_only, None)),
        Ok(None) => {}
        Err(e) if qemu::unsupported(e) => {}
        Err(e) => {
            return Err(Error::os(
                Step::Attach,
                path,
                "F_OFD_GETLK (qemu's lock bytes)",
                e,
            ));
        }
    }
    let lock = if read_only {
        Lock::Shared
    } else {
        Lock::Exclusive
    };
    match flock(file.as_fd(), lock, false) {
        Err(Errno::EWOULDBLOCK) => {
            let who = holders::flock_holders(&meta)
                .into_iter()
                .map(holders::describe)
                .collect::<Vec<_>>();
            return Err(Error::invalid(
                Step::Attach,
                path,
                format!(
                    "the image is already in use: another diskmount user{} has it attached \
                     (read-write, or read-only while this one asks for read-write)",
                    if who.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", who.join(", "))
                    }
                ),
            ));
        }
        Err(e) => return Err(Error::os(Step::Attach, path, "flock image", e)),
        Ok(()) => {}
    }
    drop(file);
    if let Some(dev) = loops_over(&meta, read_only).first() {
        return Err(Error::invalid(
            Step::Attach,
            path,
            format!(
                "the image is already in use: {} serves it; detach that first (losetup -d {0})",
                dev.display()
            ),
        ));
    }
    Ok(())
}

/// The loop devices bound to the file `meta` describes (writable ones
/// only, if `writable_only`), from sysfs and the kernel's cached
/// attributes of their backing files ([`crate::sys::statx::cached_inode`]).
fn loops_over(meta: &std::fs::Metadata, writable_only: bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        // Never waiting for the backing file's filesystem: a loop device
        // over a stopped or hung FUSE export (another diskmount's helper)
        // made a plain stat here block every attach on the host.
        let Ok((dev, ino)) =
            crate::sys::statx::cached_inode(Path::new(backing.trim_end_matches('\n')))
        else {
            continue;
        };
        if dev != meta.dev() || ino != meta.ino() {
            continue;
        }
        let ro = std::fs::read_to_string(e.path().join("ro")).is_ok_and(|s| s.trim() == "1");
        if !(writable_only && ro) {
            out.push(PathBuf::from("/dev").join(&name));
        }
    }
    out
}

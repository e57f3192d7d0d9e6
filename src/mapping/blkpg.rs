//! Strategy 2: add exactly the chosen partition with `BLKPG_ADD_PARTITION`
//! from our own parse of the table; delete it on unmap. Works where the
//! kernel has no table parsers (this project's CI machines) and on devices
//! without partition scanning.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{debug, warn};
use nix::errno::Errno;

use super::kernel_node::lookup;
use super::{MappedPart, Mapping, Undo, wait_for_node};
use crate::backend::Core;
use crate::error::{Error, ErrorKind, Result, Step};
use crate::kernel::sysfs;
use crate::partition::PartitionInfo;
use crate::retry::poll_until;
use crate::sys::block as blk;
use std::os::fd::AsFd;

pub(crate) fn add(device: &Core, part: &PartitionInfo) -> Result<MappedPart> {
    let created =
        match blk::add_partition(device.file().as_fd(), part.number, part.start, part.size) {
            Ok(()) => true,
            // The kernel (or someone) made it first: fine if the geometry matches.
            Err(Errno::EBUSY) => false,
            Err(e) => {
                return Err(Error::os(
                    Step::Map,
                    device.path(),
                    format!(
                        "BLKPG_ADD_PARTITION {} (bytes {}+{})",
                        part.number, part.start, part.size
                    ),
                    e,
                ));
            }
        };
    debug!(
        "map: {} partition {} of {}",
        if created { "added" } else { "found existing" },
        part.number,
        device.path().display()
    );
    let parent = || {
        device
            .file()
            .try_clone()
            .map_err(|e| Error::os(Step::Map, device.path(), "dup device", e))
    };
    let undo_on_error = |e: Error| {
        if created && let Err(d) = blk::del_partition(device.file().as_fd(), part.number) {
            warn!(
                "map: BLKPG_DEL_PARTITION {} after a failed map: {d}",
                part.number
            );
        }
        e
    };
    // devtmpfs makes the node before the ioctl returns; udev-managed /dev
    // may take a moment.
    if let Some(disk) = sysfs::name_of(device.rdev)
        && let Some(sys) = sysfs::partitions(&disk)
            .into_iter()
            .find(|p| p.number == part.number)
    {
        wait_for_node(
            &PathBuf::from("/dev").join(&sys.name),
            Some(sys.rdev),
            Duration::from_secs(2),
        );
    }
    let node = lookup(device, part)
        .map_err(undo_on_error)?
        .ok_or_else(|| {
            undo_on_error(Error::invalid(
                Step::Map,
                device.path(),
                if created {
                    format!(
                        "partition {} was added, but no usable node for it appeared",
                        part.number
                    )
                } else {
                    format!(
                        "partition {} already exists with another geometry than the table says",
                        part.number
                    )
                },
            ))
        })?;
    let undo = if created {
        Undo::DelPartition {
            parent: parent().map_err(undo_on_error)?,
            number: part.number,
        }
    } else {
        Undo::Nothing
    };
    Ok(node.into_mapped(device, part, Mapping::Blkpg, undo))
}

/// Deletes partition `number` of `parent`. `EBUSY` (someone still has it
/// open; a forking thread's child holds our descriptor until it execs) is
/// retried for up to a second.
pub(crate) fn delete(parent: &File, parent_path: &Path, number: u32, node: &Path) -> Result<()> {
    let deleted = poll_until(Duration::from_secs(1), || {
        match blk::del_partition(parent.as_fd(), number) {
            Err(Errno::EBUSY) => None,
            other => Some(other),
        }
    })
    .unwrap_or(Err(Errno::EBUSY));
    match deleted {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => Err(Error::refused(
            ErrorKind::Busy,
            Step::Unmap,
            node,
            format!(
                "cannot delete partition {number} of {}: still in use (mounted or open)",
                parent_path.display()
            ),
        )),
        Err(e) => Err(Error::os(
            Step::Unmap,
            node,
            format!("BLKPG_DEL_PARTITION {number} of {}", parent_path.display()),
            e,
        )),
    }
}

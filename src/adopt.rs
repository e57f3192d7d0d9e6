//! Adoption: rebuilding the lifecycle value for a device or mount point an
//! earlier process left behind, so that it can be torn down the way it was
//! built (Nova's `instance_for_device` / `reset_dev`, without guessing from
//! device names).
//!
//! Everything is found from the kernel's own records:
//! `/proc/self/mountinfo` for the mount, `/sys/dev/block/MAJ:MIN` for the
//! device, `partition` (a kernel or BLKPG partition, and its parent),
//! `dm/name` + `slaves/` + the dm table (a device-mapper mapping), and
//! `loop/{backing_file,offset,sizelimit,partscan}` (loop devices, and
//! offset loop devices over the same image as an attached one).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use log::debug;

use crate::backend::device::open_node;
use crate::backend::sealed::Ops;
use crate::backend::{Auto, AutoDevice, BackendKind, Found};
use crate::command::run;
use crate::error::{Error, Result, Step};
use crate::image::{Image, ImageKind};
use crate::kernel::mountinfo::{self, Mount};
use crate::kernel::sysfs;
use crate::lifecycle::{Attached, Mapped, Mounted};
use crate::mapping::{MappedPart, Mapping, Undo};
use crate::partition::{self, PartitionInfo};
use crate::sys::block as blk;

/// A lifecycle value rebuilt from what is on the system.
#[derive(Debug)]
pub enum Adopted {
    /// A mount on an attached (and maybe mapped) device.
    Mounted(Mounted<Auto>),
    /// A mapped partition that is not mounted.
    Mapped(Mapped<Auto>),
    /// An attached device that is neither mapped nor mounted.
    Attached(Attached<Auto>),
}

impl Adopted {
    /// Tears down everything adopted: unmount, unmap, detach, reporting
    /// every error.
    pub fn close(self) -> Result<()> {
        match self {
            Adopted::Mounted(m) => m.close(),
            Adopted::Mapped(m) => m.close(),
            Adopted::Attached(a) => a.close(),
        }
    }

    /// The mount point, if mounted.
    pub fn mount_point(&self) -> Option<&Path> {
        match self {
            Adopted::Mounted(m) => Some(m.path()),
            _ => None,
        }
    }

    /// The device that is (or would be) mounted: the partition's, or the
    /// whole device.
    pub fn device(&self) -> &Path {
        match self {
            Adopted::Mounted(m) => m.device(),
            Adopted::Mapped(m) => m.device(),
            Adopted::Attached(a) => a.device(),
        }
    }

    /// The attached whole device.
    pub fn attached_device(&self) -> &Path {
        match self {
            Adopted::Mounted(m) => m.mapped().attached().device(),
            Adopted::Mapped(m) => m.attached().device(),
            Adopted::Attached(a) => a.device(),
        }
    }

    /// How the partition was mapped ([`Mapping::Whole`] if it was not).
    pub fn mapping(&self) -> Mapping {
        match self {
            Adopted::Mounted(m) => m.mapped().mapping(),
            Adopted::Mapped(m) => m.mapping(),
            Adopted::Attached(_) => Mapping::Whole,
        }
    }

    /// The partition number, if a partition was mapped.
    pub fn partition(&self) -> Option<u32> {
        match self {
            Adopted::Mounted(m) => m.mapped().partition(),
            Adopted::Mapped(m) => m.partition(),
            Adopted::Attached(_) => None,
        }
    }

    /// The backend that attached the image.
    pub fn backend(&self) -> BackendKind {
        match self {
            Adopted::Mounted(m) => m.backend(),
            Adopted::Mapped(m) => m.backend(),
            Adopted::Attached(a) => a.backend(),
        }
    }

    /// The image (backing file, or the block device).
    pub fn image(&self) -> &Path {
        match self {
            Adopted::Mounted(m) => m.image().path(),
            Adopted::Mapped(m) => m.attached().image().path(),
            Adopted::Attached(a) => a.image().path(),
        }
    }
}

fn invalid(path: &Path, why: impl Into<String>) -> Error {
    Error::invalid(Step::Open, path, why)
}

/// Rebuilds the lifecycle value for `path`: a mount point, or a block
/// device (`/dev/loop0`, `/dev/loop0p1`, `/dev/mapper/loop0p1`, ...).
///
/// # Errors
/// [`Step::Open`]: the path is neither a mount point nor a block device, or
/// the device is mounted in several places.
pub fn adopt(path: impl AsRef<Path>) -> Result<Adopted> {
    let given = path.as_ref();
    let path =
        std::fs::canonicalize(given).map_err(|e| Error::os(Step::Open, given, "resolve", e))?;
    let meta = std::fs::metadata(&path).map_err(|e| Error::os(Step::Open, &path, "stat", e))?;
    let all = mountinfo::mounts()
        .map_err(|e| Error::os(Step::Open, "/proc/self/mountinfo", "read", e))?;
    let (rdev, mount) = if meta.is_dir() {
        let m = all
            .iter()
            .rev()
            .find(|m| m.target == path)
            .ok_or_else(|| invalid(&path, "is not a mount point"))?;
        (m.block_device(), Some(m.clone()))
    } else if meta.file_type().is_block_device() {
        let on: Vec<&Mount> = all
            .iter()
            .filter(|m| m.block_device() == meta.rdev())
            .collect();
        match on.as_slice() {
            [] => (meta.rdev(), None),
            [m] => (meta.rdev(), Some((*m).clone())),
            many => {
                return Err(invalid(
                    &path,
                    format!(
                        "is mounted in {} places ({}); adopt one mount point at a time",
                        many.len(),
                        many.iter()
                            .map(|m| m.target.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    } else {
        return Err(invalid(
            &path,
            "is neither a mount point nor a block device",
        ));
    };
    let mapped = adopt_device(&path, rdev, mount.as_ref().is_some_and(Mount::read_only))?;
    debug!(
        "adopt: {} is {} ({}) on {}",
        path.display(),
        mapped.device().display(),
        mapped.mapping().as_str(),
        mapped.attached().device().display()
    );
    match mount {
        Some(m) => {
            let read_only = m.read_only();
            Ok(Adopted::Mounted(Mounted::adopt(
                m.target, m.fstype, read_only, mapped,
            )?))
        }
        None if mapped.mapping() == Mapping::Whole => Ok(Adopted::Attached(mapped.unmap()?)),
        None => Ok(Adopted::Mapped(mapped)),
    }
}

fn open_dev(path: &Path, read_only: bool) -> Result<File> {
    open_node(path, read_only, Step::Open)
}

/// The device `rdev` as a mapped partition of an attached device.
fn adopt_device(given: &Path, rdev: u64, read_only: bool) -> Result<Mapped<Auto>> {
    let name = sysfs::name_of(rdev)
        .ok_or_else(|| invalid(given, "is not a block device the kernel knows"))?;
    let node = PathBuf::from("/dev").join(&name);
    if let Some(number) = sysfs::partition_number(&name) {
        // A partition: its parent is the directory above it in sysfs.
        let parent = sysfs::parent_disk(&name)
            .ok_or_else(|| invalid(given, "has no parent device in sysfs"))?;
        let attached = adopt_whole(&parent, read_only)?;
        let parent_loop = sysfs::loop_info(&parent);
        // On a loop device the node goes whoever made it (a BLKPG add, or
        // the kernel's scan): the device is about to be detached anyway.
        // Where partition scanning is on, the kernel may have made it; where
        // it is off, only BLKPG can have. Other disks' nodes are the kernel's.
        let mapping = match &parent_loop {
            Some(l) if !l.partscan => Mapping::Blkpg,
            _ => Mapping::KernelNode,
        };
        let undo = if parent_loop.is_some() {
            let parent_file = attached
                .device
                .core()
                .file()
                .try_clone()
                .map_err(|e| Error::os(Step::Open, attached.device(), "dup device", e))?;
            Undo::DelPartition {
                parent: parent_file,
                number,
            }
        } else {
            Undo::Nothing
        };
        let info = part_info(&name, number);
        let file = open_dev(&node, read_only)?;
        let part = MappedPart::new(
            node,
            info.as_ref(),
            mapping,
            attached.device.core(),
            file,
            undo,
        );
        return Ok(Mapped::from_parts(part, info, attached));
    }
    if let Some(dm_name) = sysfs::dm_name(&name) {
        // A device-mapper target over one parent device, or over
        // partitions of it (a logical volume's).
        let slaves = sysfs::slaves(&name);
        let disks: Vec<String> = slaves
            .iter()
            .map(|s| match sysfs::partition_number(s) {
                Some(_) => sysfs::parent_disk(s).unwrap_or_default(),
                None => s.clone(),
            })
            .collect();
        let parent = match disks.as_slice() {
            [first, rest @ ..] if !first.is_empty() && rest.iter().all(|d| d == first) => first,
            _ => {
                return Err(invalid(
                    given,
                    format!("device-mapper target {dm_name} is not over one device: {slaves:?}"),
                ));
            }
        };
        let attached = adopt_whole(parent, read_only)?;
        let path = PathBuf::from("/dev/mapper").join(&dm_name);
        let table = run(
            Step::Open,
            &path,
            Command::new("dmsetup").args(["table", &dm_name]),
        )?;
        let start = table
            .split_whitespace()
            .nth(4)
            .and_then(|s| s.parse::<u64>().ok())
            .map(|s| s * 512);
        let info = start.and_then(|start| {
            let dev = attached.device.core();
            partition::read_table(dev.file(), dev.path(), dev.size)
                .ok()
                .flatten()
                .and_then(|t| t.partitions.into_iter().find(|p| p.start == start))
        });
        let file = open_dev(&path, read_only)?;
        let part = MappedPart::new(
            path,
            info.as_ref(),
            Mapping::DeviceMapper,
            attached.device.core(),
            file,
            Undo::RemoveDm { name: dm_name },
        );
        return Ok(Mapped::from_parts(part, info, attached));
    }
    if let Some(l) = sysfs::loop_info(&name) {
        let (offset, limit) = (l.offset, l.size_limit);
        if offset != 0 || limit != 0 {
            // An offset loop device: the attached one is the loop device
            // over the same file from its start.
            if let Some(parent) = loop_over(&l.backing_file, &name) {
                let attached = adopt_whole(&parent, read_only)?;
                let nr = sysfs::loop_number(&name)
                    .ok_or_else(|| invalid(given, "unexpected loop device name"))?;
                let file = open_dev(&node, read_only)?;
                let size = blk::getsize64(file.as_fd()).unwrap_or(limit);
                let info = partition::read_table(
                    attached.device.core().file(),
                    attached.device(),
                    attached.size(),
                )
                .ok()
                .flatten()
                .and_then(|t| {
                    t.partitions
                        .into_iter()
                        .find(|p| p.start == offset && p.size == size)
                });
                let backing_file = (!l.deleted)
                    .then(|| open_dev(&l.backing_file, read_only).ok())
                    .flatten();
                let part = MappedPart::new(
                    node,
                    info.as_ref(),
                    Mapping::OffsetLoop,
                    attached.device.core(),
                    file,
                    Undo::DetachLoop {
                        nr,
                        backing: backing_file,
                    },
                );
                return Ok(Mapped::from_parts(part, info, attached));
            }
        }
    }
    let attached = adopt_whole(&name, read_only)?;
    let part = crate::mapping::whole(attached.device.core())?;
    Ok(Mapped::from_parts(part, None, attached))
}

/// The partition's geometry as sysfs records it.
fn part_info(name: &str, number: u32) -> Option<PartitionInfo> {
    let sectors = |f: &str| sysfs::number(name, f);
    Some(PartitionInfo {
        number,
        start: sectors("start")? * 512,
        size: sectors("size")? * 512,
        kind: crate::partition::PartitionType::Mbr { id: 0, name: None },
        name: None,
    })
}

/// A loop device other than `except` over `backing` from offset 0.
fn loop_over(backing: &Path, except: &str) -> Option<String> {
    sysfs::disks().into_iter().find(|name| {
        name != except
            && sysfs::loop_info(name).is_some_and(|l| l.backing_file == backing && l.offset == 0)
    })
}

/// The whole device `name` as an attached device, adopted by the backend
/// whose device it is (an nbd device, a loop device over a FUSE export, a
/// loop device, any other block device).
fn adopt_whole(name: &str, read_only: bool) -> Result<Attached<Auto>> {
    let found = Found::new(name, read_only);
    let device = AutoDevice::adopt(&found)
        .unwrap_or_else(|| Err(invalid(&found.node, "no backend recognises this device")))?;
    let core = device.core();
    // A network image (served by a qemu helper, or krbd) is named by its
    // URL, read back from what serves it.
    let url = match core.kind {
        BackendKind::Nbd | BackendKind::Fuse | BackendKind::Rbd => core
            .image
            .to_str()
            .filter(|s| s.contains("://"))
            .and_then(|s| Image::url(s).ok()),
        _ => None,
    };
    let image = match url {
        Some(image) => image.read_only(found.read_only),
        None => Image::found(
            core.image.clone(),
            if core.kind == BackendKind::Block {
                ImageKind::Block
            } else {
                ImageKind::File
            },
            found.read_only,
        ),
    };
    Ok(Attached::from_parts(device, image))
}

/// Removes the mapped device `path` (a device-mapper target, an offset
/// loop device, a partition added with BLKPG to a loop device) and only
/// it: the attached device under it stays. A partition the kernel made
/// goes with its disk and is left.
///
/// # Errors
/// [`Step::Open`]: not such a device; [`Step::Unmap`]: the removal failed.
pub(crate) fn release_mapping(path: &Path) -> Result<()> {
    // Gone already (a partition of a loop device that cleared itself
    // once its last mount went): nothing to do.
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            debug!("cleanup: {} is gone already", path.display());
            return Ok(());
        }
        other => other.map_err(|e| Error::os(Step::Open, path, "stat", e))?,
    };
    let Some(name) = sysfs::name_of(meta.rdev()) else {
        debug!("cleanup: {} is gone already", path.display());
        return Ok(());
    };
    if let Some(dm_name) = sysfs::dm_name(&name) {
        return crate::mapping::remove_dm(&dm_name, path);
    }
    if let Some(number) = sysfs::partition_number(&name) {
        let parent = sysfs::parent_disk(&name)
            .ok_or_else(|| invalid(path, "has no parent device in sysfs"))?;
        if sysfs::loop_info(&parent).is_none_or(|l| l.partscan) {
            debug!(
                "cleanup: {} is the kernel's; it goes with its disk",
                path.display()
            );
            return Ok(());
        }
        let parent_path = PathBuf::from("/dev").join(&parent);
        let parent_file = open_dev(&parent_path, true)?;
        return crate::mapping::delete_partition(&parent_file, &parent_path, number, path);
    }
    if let Some(l) = sysfs::loop_info(&name)
        && (l.offset != 0 || l.size_limit != 0)
    {
        let nr = sysfs::loop_number(&name)
            .ok_or_else(|| invalid(path, "unexpected loop device name"))?;
        let read_only = sysfs::is_read_only(&name);
        let file = open_dev(path, read_only)?;
        let backing = (!l.deleted)
            .then(|| open_dev(&l.backing_file, true).ok())
            .flatten();
        return Error::collect(crate::backend::r#loop::unbind(
            Step::Unmap,
            path,
            &l.backing_file,
            file,
            nr,
            !read_only,
            backing.as_ref(),
        ));
    }
    Err(invalid(
        path,
        "is not a device-mapper target, partition or offset loop device",
    ))
}

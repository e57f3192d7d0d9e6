//! Mapping strategies: how the chosen partition of an attached device gets
//! a block device of its own. One file per strategy:
//!
//! | strategy | file | works where | removed on unmap by |
//! |---|---|---|---|
//! | [`MapStrategy::KernelNode`] | `kernel_node.rs` | the kernel scanned the table (`loop` partscan, nbd `max_part`, disks) | nothing (the kernel owns it) |
//! | [`MapStrategy::Blkpg`] | `blkpg.rs` | any kernel with partition support, even without table parsers | `BLKPG_DEL_PARTITION` |
//! | [`MapStrategy::DeviceMapper`] | `device_mapper.rs` | kernels with device-mapper (as kpartx does it) | `dmsetup remove` by device name |
//! | [`MapStrategy::OffsetLoop`] | `offset_loop.rs` | any kernel with loop devices | `LOOP_CLR_FD` |
//!
//! An LVM2 logical volume ([`crate::Partition::LogicalVolume`]) is mapped
//! by `logical_volume.rs`, with a device-mapper target of its own or an
//! offset loop device (see there).
//!
//! [`MapStrategy::Auto`] tries them in that order. No strategy sleeps for a
//! fixed time: BLKPG and loop answer synchronously; where a node appears
//! asynchronously (udev), the wait is a bounded poll.

mod blkpg;
mod device_mapper;
mod kernel_node;
mod logical_volume;
mod offset_loop;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{debug, warn};
use nix::libc;

use crate::backend::Core;
use crate::error::{Error, ErrorKind, Result, Step};
use crate::partition::PartitionInfo;
use crate::retry::poll_until;

pub(crate) use blkpg::delete as delete_partition;
pub(crate) use device_mapper::remove as remove_dm;
pub use logical_volume::LogicalVolumeInfo;
pub(crate) use logical_volume::{map as logical_volume, map_in as logical_volume_in};

/// Which way to give a partition its device ([`MapOptions::strategy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum MapStrategy {
    /// Kernel node if there is one, else BLKPG, else device-mapper, else an
    /// offset loop device.
    #[default]
    Auto,
    /// Only a partition node the kernel already made.
    KernelNode,
    /// Add exactly this partition with `BLKPG_ADD_PARTITION`.
    Blkpg,
    /// A device-mapper linear target, named like kpartx names it.
    DeviceMapper,
    /// A second loop device over the partition's byte range.
    OffsetLoop,
}

/// How a partition got its device ([`crate::Mapped::mapping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mapping {
    /// No partition: the whole attached device.
    Whole,
    /// A node the kernel made from its own scan of the table.
    KernelNode,
    /// A node added with `BLKPG_ADD_PARTITION` (by us, or found with the
    /// same geometry after the kernel raced us).
    Blkpg,
    /// A device-mapper linear target.
    DeviceMapper,
    /// A second loop device with offset and size limit.
    OffsetLoop,
}

impl Mapping {
    /// The name used in messages and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Mapping::Whole => "whole",
            Mapping::KernelNode => "kernel-node",
            Mapping::Blkpg => "blkpg",
            Mapping::DeviceMapper => "device-mapper",
            Mapping::OffsetLoop => "offset-loop",
        }
    }
}

/// Options of [`crate::Attached::map_with`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapOptions {
    pub(crate) strategy: MapStrategy,
    pub(crate) keep_inspection_mount: bool,
}

impl MapOptions {
    /// The mapping strategy (default [`MapStrategy::Auto`]).
    pub fn strategy(mut self, strategy: MapStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Says that [`crate::Mapped::mount`] follows (default `false`), so
    /// that with [`crate::Partition::Auto`] or [`crate::Partition::Os`] the
    /// OS inspection's read-only look at the root's filesystem is kept (a
    /// detached mount, in no mount table) and the mount makes it read-write
    /// instead of mounting the filesystem a second time: one xfs mount
    /// fewer (docs/benchmarks.md, section 9: the OS-tree cycle went from
    /// 1.9-2.1x to 1.8-1.9x a single-partition cycle).
    ///
    /// Only for xfs, on a writable device that is not a
    /// [`crate::Block`] device, and only if its log is clean: the look is
    /// made while the device is read-only at the block layer, so that it
    /// never replays a journal; a log that needs replay is looked at with
    /// `norecovery` as otherwise. The mount takes it over only if it is
    /// read-write with no options of the filesystem's own
    /// ([`crate::MountOptions::options`], `noexec`, a subvolume); otherwise
    /// it is let go and the filesystem mounted as asked. The mount taken
    /// over keeps the look's `nouuid` (xfs then does not refuse a second
    /// filesystem with the same UUID, such as a copy of the image mounted
    /// at the same time). Until the mount (or until the [`crate::Mapped`]
    /// is unmapped, closed or dropped) the filesystem stays mounted and
    /// the device read-only, so it is busy for other mounts, `fsck` and
    /// exclusive opens, and refuses writes: leave this off to hand the
    /// mapped device to another program. [`crate::with_mounted`] (and so
    /// the builder) always turns it on.
    pub fn keep_inspection_mount(mut self, keep: bool) -> Self {
        self.keep_inspection_mount = keep;
        self
    }
}

/// What unmapping has to undo.
pub(crate) enum Undo {
    /// Nothing we created (whole device, kernel node, a node someone else added).
    Nothing,
    /// A partition we added with BLKPG, on this parent.
    DelPartition { parent: File, number: u32 },
    /// A device-mapper target we created.
    RemoveDm { name: String },
    /// A loop device we bound, with the image file to make durable.
    DetachLoop { nr: u32, backing: Option<File> },
}

/// The device of the chosen partition; released once.
pub(crate) struct MappedPart {
    pub(crate) path: PathBuf,
    pub(crate) number: Option<u32>,
    pub(crate) mapping: Mapping,
    parent: PathBuf,
    read_only: bool,
    /// The open partition device and what to undo; `None` once released.
    held: Option<(File, Undo)>,
    /// The logical volume this device is, if it is one.
    pub(crate) volume: Option<LogicalVolumeInfo>,
    /// OS inspection's read-only look at the filesystem on it, kept for
    /// the mount step to make read-write
    /// ([`MapOptions::keep_inspection_mount`]); let go before the device is.
    inspected: Option<crate::mount::by_fd::ReadOnlyLook>,
}

impl MappedPart {
    pub(crate) fn new(
        path: PathBuf,
        part: Option<&PartitionInfo>,
        mapping: Mapping,
        device: &Core,
        file: File,
        undo: Undo,
    ) -> Self {
        MappedPart {
            path,
            number: part.map(|p| p.number),
            mapping,
            parent: device.path().to_path_buf(),
            read_only: device.read_only,
            held: Some((file, undo)),
            volume: None,
            inspected: None,
        }
    }

    /// Keeps `look` (of the filesystem on this device) until
    /// [`Self::take_inspected`] or the release.
    pub(crate) fn keep_inspected(&mut self, look: crate::mount::by_fd::ReadOnlyLook) {
        self.inspected = Some(look);
    }

    /// The mount kept by [`Self::keep_inspected`], if any.
    pub(crate) fn take_inspected(&mut self) -> Option<crate::mount::by_fd::ReadOnlyLook> {
        self.inspected.take()
    }

    pub(crate) fn file(&self) -> &File {
        &self
            .held
            .as_ref()
            .expect("a mapping is only released when its owner is consumed")
            .0
    }

    /// Lets go without unmapping (the mapping stays for whoever adopts it).
    pub(crate) fn disarm(&mut self) {
        // A kept read-only detached mount has no one to hand it to.
        self.inspected = None;
        self.held = None;
    }

    /// Removes what the map step created. Runs at most once.
    pub(crate) fn release(&mut self) -> Result<()> {
        // Read-only: nothing to flush; gone before its device.
        self.inspected = None;
        let Some((file, undo)) = self.held.take() else {
            return Ok(());
        };
        debug!("unmap: {} ({})", self.path.display(), self.mapping.as_str());
        match undo {
            Undo::Nothing => Ok(()),
            Undo::DelPartition { parent, number } => {
                drop(file);
                blkpg::delete(&parent, &self.parent, number, &self.path)
            }
            Undo::RemoveDm { name } => {
                drop(file);
                device_mapper::remove(&name, &self.path)
            }
            Undo::DetachLoop { nr, backing } => Error::collect(crate::backend::r#loop::unbind(
                Step::Unmap,
                &self.path,
                &self.parent,
                file,
                nr,
                !self.read_only,
                backing.as_ref(),
            )),
        }
    }
}

impl Drop for MappedPart {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            warn!("teardown: {e}");
        }
    }
}

/// The whole attached device as the "partition".
pub(crate) fn whole(device: &Core) -> Result<MappedPart> {
    let file = device
        .file()
        .try_clone()
        .map_err(|e| Error::os(Step::Map, device.path(), "dup device", e))?;
    Ok(MappedPart::new(
        device.path().to_path_buf(),
        None,
        Mapping::Whole,
        device,
        file,
        Undo::Nothing,
    ))
}

/// Gives `part` of `device` a block device with `strategy`.
pub(crate) fn map(
    device: &Core,
    part: &PartitionInfo,
    strategy: MapStrategy,
) -> Result<MappedPart> {
    match strategy {
        MapStrategy::KernelNode => kernel_node::find(device, part)?.ok_or_else(|| {
            Error::refused(
                ErrorKind::KernelFeatureMissing,
                Step::Map,
                device.path(),
                format!(
                    "the kernel made no node for partition {} (it did not scan the table); \
                     use MapStrategy::Blkpg or MapStrategy::OffsetLoop",
                    part.number
                ),
            )
        }),
        MapStrategy::Blkpg => blkpg::add(device, part),
        MapStrategy::DeviceMapper => device_mapper::create(device, part),
        MapStrategy::OffsetLoop => offset_loop::attach(device, part),
        MapStrategy::Auto => {
            if let Some(m) = kernel_node::find(device, part)? {
                return Ok(m);
            }
            match blkpg::add(device, part) {
                Ok(m) => return Ok(m),
                Err(e) => debug!("map: BLKPG not possible here: {e}"),
            }
            if device_mapper::available() {
                match device_mapper::create(device, part) {
                    Ok(m) => return Ok(m),
                    Err(e) => {
                        warn!("map: device-mapper failed, falling back to an offset loop: {e}")
                    }
                }
            }
            offset_loop::attach(device, part)
        }
    }
}

/// Opens a partition device node the way the parent is open.
fn open_node(path: &Path, read_only: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Waits (bounded) for a device node to appear: immediately with devtmpfs,
/// after udev's work where udev manages /dev.
fn wait_for_node(path: &Path, rdev: Option<u64>, bound: Duration) -> bool {
    poll_until(bound, || {
        std::fs::metadata(path)
            .is_ok_and(|m| rdev.is_none_or(|r| m.rdev() == r))
            .then_some(())
    })
    .is_some()
}

//! Strategy 4: a second loop device over the partition's byte range
//! (`lo_offset`, `lo_sizelimit`). Works on any kernel with loop devices;
//! the fallback of last resort.

use std::path::PathBuf;

use super::{MappedPart, Mapping, Undo};
use crate::backend::Core;
use crate::backend::r#loop::attach_backing;
use crate::error::{Error, Result, Step};
use crate::options::AttachOptions;
use crate::partition::PartitionInfo;

pub(crate) fn attach(device: &Core, part: &PartitionInfo) -> Result<MappedPart> {
    attach_range(device, part.start, part.size, Some(part))
}

/// A loop device over bytes `start..start + size` of `device` (a
/// partition's, `part`, or a logical volume's, `None`).
pub(crate) fn attach_range(
    device: &Core,
    start: u64,
    size: u64,
    part: Option<&PartitionInfo>,
) -> Result<MappedPart> {
    // Over the image file itself where there is one (no loop over loop),
    // else over the attached device.
    let backing = device.backing().unwrap_or(device.file());
    let (nr, file) = attach_backing(
        Step::Map,
        backing,
        device.read_only,
        &AttachOptions::default(),
        device.path(),
        start,
        size,
    )?;
    let path = PathBuf::from(format!("/dev/loop{nr}"));
    let backing = device
        .backing()
        .map(|b| b.try_clone())
        .transpose()
        .map_err(|e| Error::os(Step::Map, device.path(), "dup image", e))?;
    Ok(MappedPart::new(
        path,
        part,
        Mapping::OffsetLoop,
        device,
        file,
        Undo::DetachLoop { nr, backing },
    ))
}

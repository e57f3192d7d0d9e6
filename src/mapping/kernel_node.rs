//! Strategy 1: a partition node the kernel made itself (`/dev/loop0p1`),
//! used only after checking that it is this very device's partition, with
//! the geometry of our own parse: a node can be stale.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use log::{debug, warn};

use super::{MappedPart, Mapping, Undo, open_node};
use crate::backend::Core;
use crate::error::{Error, Result, Step};
use crate::kernel::sysfs;
use crate::partition::PartitionInfo;

/// The kernel's node for `part`, checked, or `None` if there is no usable one.
pub(crate) fn find(device: &Core, part: &PartitionInfo) -> Result<Option<MappedPart>> {
    let Some(found) = lookup(device, part)? else {
        return Ok(None);
    };
    Ok(Some(found.into_mapped(
        device,
        part,
        Mapping::KernelNode,
        Undo::Nothing,
    )))
}

/// A checked, open node of partition `part` of `device`.
pub(crate) struct Node {
    pub path: PathBuf,
    pub file: std::fs::File,
}

impl Node {
    pub(crate) fn into_mapped(
        self,
        device: &Core,
        part: &PartitionInfo,
        mapping: Mapping,
        undo: Undo,
    ) -> MappedPart {
        MappedPart::new(self.path, Some(part), mapping, device, self.file, undo)
    }
}

/// Finds the kernel's partition `part.number` of `device` and checks it:
/// same parent (by device number), same geometry as our parse, same medium
/// (diskseq), and the /dev node is that very device.
pub(crate) fn lookup(device: &Core, part: &PartitionInfo) -> Result<Option<Node>> {
    let Some(disk) = sysfs::name_of(device.rdev) else {
        return Ok(None);
    };
    let Some(sys) = sysfs::partitions(&disk)
        .into_iter()
        .find(|p| p.number == part.number)
    else {
        return Ok(None);
    };
    if sys.start != part.start || sys.size != part.size {
        warn!(
            "map: kernel node {} has bytes {}+{}, the table says {}+{}; not using it",
            sys.name, sys.start, sys.size, part.start, part.size
        );
        return Ok(None);
    }
    if let (Some(now), Some(ours)) = (sysfs::diskseq(&disk), device.diskseq)
        && now != ours
    {
        warn!("map: {disk} has diskseq {now}, we attached {ours}; not using its nodes");
        return Ok(None);
    }
    let path = PathBuf::from("/dev").join(&sys.name);
    let file = match open_node(&path, device.read_only) {
        Ok(f) => f,
        Err(e) => return Err(Error::os(Step::Map, &path, "open partition node", e)),
    };
    let rdev = file
        .metadata()
        .map_err(|e| Error::os(Step::Map, &path, "fstat partition node", e))?
        .rdev();
    if rdev != sys.rdev {
        warn!(
            "map: {} is a stale node (not the kernel's {}); not using it",
            path.display(),
            sys.name
        );
        return Ok(None);
    }
    debug!(
        "map: using kernel node {} for partition {}",
        path.display(),
        part.number
    );
    Ok(Some(Node { path, file }))
}

//! The mountable candidates of a disk: its partitions (or the whole disk
//! when it has no table) and the LVM logical volumes on it, each with the
//! [`Partition`] that maps it and what its first bytes hold.
//!
//! For callers that choose what to mount (`Partition::Auto`,
//! `Partition::Os`, `inspect`): nothing is mapped or mounted, every read
//! is bounded, and the host's LVM tools never run.

use std::path::Path;

use log::debug;

use super::lvm::{LvReader, discover};
use crate::error::Result;
use crate::format::ReadAt;
use crate::fs::{Detected, FsType, probe_at};
use crate::partition::{self, Partition, PartitionInfo, PartitionTable};

/// Something on a disk that [`crate::Attached::map`] can give a device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Candidate {
    /// How to map it: [`Partition::Whole`], [`Partition::Number`] or
    /// [`Partition::LogicalVolume`].
    pub partition: Partition,
    /// Its size in bytes.
    pub size: u64,
    /// What its first bytes hold ([`crate::fs::probe_at`]).
    pub detected: Detected,
    /// The filesystem on it, if [`Candidate::detected`] is one.
    pub fstype: Option<FsType>,
    /// The filesystem's label, if it has one.
    pub label: Option<String>,
    /// The partition's table entry (`None` for the whole disk and for a
    /// logical volume).
    pub info: Option<PartitionInfo>,
    /// For a logical volume: the partitions holding its PVs (`None`: a
    /// whole-disk PV) and its number of segments.
    pub lv: Option<LvFacts>,
}

/// What a [`Candidate`] that is a logical volume is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LvFacts {
    /// The VG's UUID.
    pub vg_id: String,
    /// The LV's UUID.
    pub lv_id: String,
    /// Its segments in the metadata.
    pub segments: usize,
    /// The separate pieces it is made of on the disk (1: an offset loop
    /// device maps it anywhere; more: only device-mapper can).
    pub pieces: usize,
    /// The partitions of its PVs (`None`: a whole-disk PV).
    pub partitions: Vec<Option<u32>>,
}

fn candidate(
    partition: Partition,
    size: u64,
    detected: Detected,
    info: Option<PartitionInfo>,
    lv: Option<LvFacts>,
) -> Candidate {
    let (fstype, label) = match &detected {
        Detected::Filesystem { fstype, label } => (Some(*fstype), label.clone()),
        _ => (None, None),
    };
    Candidate {
        partition,
        size,
        detected,
        fstype,
        label,
        info,
        lv,
    }
}

/// The candidates of `device` (`size` bytes; `path` names it in errors):
/// every partition of its table (or the whole disk, if it has no table and
/// is not an LVM PV), then every logical volume diskmount can map (visible,
/// linear, all PVs present), in the order of their VGs and metadata.
/// Partitions that are PVs are listed too, with [`Detected::Other`].
///
/// Use it on an attached device: `candidates(core.file(), core.path(),
/// core.size)`.
///
/// # Errors
/// [`crate::Step::Map`]: an unreadable or inconsistent partition table.
/// A damaged PV, or an LV diskmount cannot map, is logged and left out.
pub fn candidates<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    size: u64,
) -> Result<Vec<Candidate>> {
    let table = partition::read_table_from(device, path, size)?;
    Ok(candidates_in(device, path, size, table.as_ref()))
}

/// [`candidates`] of a device whose partition table (`None`: it has none)
/// the caller has already read.
pub(crate) fn candidates_in<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    size: u64,
    table: Option<&PartitionTable>,
) -> Vec<Candidate> {
    let found = discover(device, path, size, table);
    let mut out = Vec::new();
    match table {
        Some(t) => {
            for p in &t.partitions {
                let d = probe_at(device, p.start, p.size).unwrap_or(Detected::Unknown);
                out.push(candidate(
                    Partition::Number(p.number),
                    p.size,
                    d,
                    Some(p.clone()),
                    None,
                ));
            }
        }
        None => {
            let d = probe_at(device, 0, size).unwrap_or(Detected::Unknown);
            if !found.pvs.iter().any(|p| p.partition.is_none()) {
                out.push(candidate(Partition::Whole, size, d, None, None));
            }
        }
    }
    for group in found.volume_groups() {
        for lv in group.vg.lvs.iter().filter(|l| l.visible) {
            let pieces = match group.place(&lv.name, path) {
                Ok(p) => p,
                Err(e) => {
                    debug!("candidates: {e}");
                    continue;
                }
            };
            let mut partitions = Vec::new();
            for p in &pieces {
                let at = group.found(&p.pv).and_then(|f| f.partition);
                if !partitions.contains(&at) {
                    partitions.push(at);
                }
            }
            let reader = LvReader::new(device, &pieces);
            let lv_size = pieces.iter().map(|p| p.len).sum();
            let d = probe_at(&reader, 0, lv_size).unwrap_or(Detected::Unknown);
            out.push(candidate(
                Partition::LogicalVolume {
                    vg: group.vg.name.clone(),
                    lv: lv.name.clone(),
                },
                lv_size,
                d,
                None,
                Some(LvFacts {
                    vg_id: group.vg.id.clone(),
                    lv_id: lv.id.clone(),
                    segments: lv.segments.len(),
                    pieces: pieces.len(),
                    partitions,
                }),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_disk_pv_lists_its_mappable_lvs_only() {
        let mut img = crate::volume::lvm::discover::tests::disk();
        // An ext4 superblock at the start of rl/root (1 MiB into the PV).
        img[(1 << 20) + 1024 + 0x38..(1 << 20) + 1024 + 0x3a].copy_from_slice(&[0x53, 0xef]);
        let c = candidates(&img[..], Path::new("/img"), img.len() as u64).unwrap();
        let names: Vec<String> = c.iter().map(|c| c.partition.to_string()).collect();
        assert_eq!(
            names,
            ["logical volume rl/root", "logical volume rl/data"],
            "{c:?}"
        );
        assert_eq!(c[0].size, 40 << 20);
        assert_eq!(c[0].lv.as_ref().unwrap().partitions, [None]);
        assert_eq!(c[1].lv.as_ref().unwrap().pieces, 2);
        assert_eq!(c[1].fstype, None);
    }
}

//! Which part of the image an fstab source names: `UUID=`, `LABEL=`,
//! `PARTUUID=`, `PARTLABEL=` (and their `/dev/disk/by-*` forms), and
//! `/dev/sdXN`-style names (partition N of this image's one disk).

use crate::backend::Core;
use crate::fs::{Detected, probe_at};
use crate::guest::fstab::Source;
use crate::partition::{PartitionInfo, PartitionTable};

use super::ids::{fs_uuid, part_uuid};

/// The partition `source` names (`Ok(None)`: the whole device), or why it
/// is not in this image.
pub(crate) fn resolve(
    device: &Core,
    table: Option<&PartitionTable>,
    source: &Source,
) -> Result<Option<PartitionInfo>, String> {
    let file = device.file();
    // Every filesystem of the image: (partition or whole, what it holds).
    let filesystems = || -> Vec<(Option<PartitionInfo>, Detected, u64, u64)> {
        match table {
            None => vec![(
                None,
                crate::fs::probe(file).unwrap_or(Detected::Unknown),
                0,
                device.size,
            )],
            Some(t) => t
                .partitions
                .iter()
                .map(|p| {
                    let d = probe_at(file, p.start, p.size).unwrap_or(Detected::Unknown);
                    (Some(p.clone()), d, p.start, p.size)
                })
                .collect(),
        }
    };
    let one = |hits: Vec<Option<PartitionInfo>>, what: String| match hits.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no filesystem or partition of the image has {what}"
        )),
        many => Err(format!(
            "{what} is ambiguous: {} filesystems of the image have it",
            many.len()
        )),
    };
    match source {
        Source::Uuid(want) => {
            let hits = filesystems()
                .into_iter()
                .filter(|(_, d, start, size)| match d {
                    Detected::Filesystem { fstype, .. } => fs_uuid(file, *start, *size, *fstype)
                        .is_some_and(|u| u.eq_ignore_ascii_case(want)),
                    _ => false,
                })
                .map(|(p, ..)| p)
                .collect();
            one(hits, format!("UUID {want}"))
        }
        Source::Label(want) => {
            let hits = filesystems()
                .into_iter()
                .filter(|(_, d, ..)| {
                    matches!(d, Detected::Filesystem { label: Some(l), .. } if l == want)
                })
                .map(|(p, ..)| p)
                .collect();
            one(hits, format!("label {want:?}"))
        }
        Source::PartUuid(want) => {
            let t = table.ok_or("the image has no partition table")?;
            let hits = t
                .partitions
                .iter()
                .filter(|p| part_uuid(file, t, p).is_some_and(|u| u.eq_ignore_ascii_case(want)))
                .map(|p| Some(p.clone()))
                .collect();
            one(hits, format!("partition UUID {want}"))
        }
        Source::PartLabel(want) => {
            let t = table.ok_or("the image has no partition table")?;
            let hits = t
                .partitions
                .iter()
                .filter(|p| p.name.as_deref() == Some(want.as_str()))
                .map(|p| Some(p.clone()))
                .collect();
            one(hits, format!("partition name {want:?}"))
        }
        Source::Partition(n) => match table.and_then(|t| t.get(*n)) {
            Some(p) => Ok(Some(p.clone())),
            None => Err(format!("the image has no partition {n}")),
        },
        Source::WholeDisk => match table {
            None => Ok(None),
            Some(_) => Err("names the whole disk, which holds a partition table".into()),
        },
        Source::LogicalVolume { vg, lv } => Err(format!(
            "logical volume {vg}/{lv}: LVM volumes are not mounted from an fstab yet"
        )),
        Source::Other(s) => Err(format!("{s:?} names no device of this image")),
    }
}

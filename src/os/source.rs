//! Which part of the image an fstab source names: `UUID=`, `LABEL=`,
//! `PARTUUID=`, `PARTLABEL=` (and their `/dev/disk/by-*` forms), and
//! `/dev/sdXN`-style names (partition N of this image's one disk), and
//! LVM logical volumes (`/dev/mapper/VG-LV`, `/dev/VG/LV`, or `UUID=` and
//! `LABEL=` of a filesystem on one).

use crate::backend::Core;
use crate::fs::{Detected, probe_at};
use crate::guest::fstab::Source;
use crate::partition::{PartitionInfo, PartitionTable};
use crate::read_at::ReadAt;
use crate::volume::lvm::{LvReader, discover};

use super::ids::{fs_uuid, part_uuid};

/// What an fstab source names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A partition (`None`: the whole device).
    Part(Option<PartitionInfo>),
    /// A logical volume (VG, LV).
    Lv(String, String),
}

/// The filesystems on the mappable logical volumes of `device`, with their
/// UUIDs.
fn lv_filesystems(device: &Core, table: Option<&PartitionTable>) -> Filesystems {
    let file = device.file();
    let found = discover(file, device.path(), device.size, table);
    let mut out = Vec::new();
    for group in found.volume_groups() {
        for lv in group.vg.lvs.iter().filter(|l| l.visible) {
            let Ok(pieces) = group.place(&lv.name, device.path()) else {
                continue;
            };
            let reader = LvReader::new(file, &pieces);
            let size = pieces.iter().map(|p| p.len).sum();
            let d = probe_at(&reader, 0, size).unwrap_or(Detected::Unknown);
            let uuid = uuid_of(&reader, 0, size, &d);
            out.push((Target::Lv(group.vg.name.clone(), lv.name.clone()), d, uuid));
        }
    }
    out
}

/// The UUID of the filesystem `d` found at `start..start+size` of `r`.
fn uuid_of<R: ReadAt + ?Sized>(r: &R, start: u64, size: u64, d: &Detected) -> Option<String> {
    match d {
        Detected::Filesystem { fstype, .. } => fs_uuid(r, start, size, *fstype),
        _ => None,
    }
}

/// Every filesystem of an image: where, what it holds, its UUID.
type Filesystems = Vec<(Target, Detected, Option<String>)>;

/// Resolves fstab sources on one image, probing its filesystems (and
/// scanning its logical volumes) once for all the sources asked about.
pub(crate) struct Sources<'a> {
    device: &'a Core,
    table: Option<&'a PartitionTable>,
    all: std::cell::OnceCell<Filesystems>,
    lvs: std::cell::OnceCell<Filesystems>,
}

impl<'a> Sources<'a> {
    /// The sources of `device` (whose table is `table`).
    pub(crate) fn new(device: &'a Core, table: Option<&'a PartitionTable>) -> Self {
        Sources {
            device,
            table,
            all: std::cell::OnceCell::new(),
            lvs: std::cell::OnceCell::new(),
        }
    }

    fn lvs(&self) -> &Filesystems {
        self.lvs
            .get_or_init(|| lv_filesystems(self.device, self.table))
    }

    fn all(&self) -> &Filesystems {
        self.all.get_or_init(|| {
            let (device, file) = (self.device, self.device.file());
            let mut all: Filesystems = match self.table {
                None => {
                    let d = crate::fs::probe(file).unwrap_or(Detected::Unknown);
                    let uuid = uuid_of(file, 0, device.size, &d);
                    vec![(Target::Part(None), d, uuid)]
                }
                Some(t) => t
                    .partitions
                    .iter()
                    .map(|p| {
                        let d = probe_at(file, p.start, p.size).unwrap_or(Detected::Unknown);
                        let uuid = uuid_of(file, p.start, p.size, &d);
                        (Target::Part(Some(p.clone())), d, uuid)
                    })
                    .collect(),
            };
            all.extend(self.lvs().iter().cloned());
            all
        })
    }

    /// The partition or logical volume `source` names, or why it is not
    /// in this image.
    pub(crate) fn resolve(&self, source: &Source) -> Result<Target, String> {
        let (table, file) = (self.table, self.device.file());
        let one = |hits: Vec<Target>, what: String| match hits.as_slice() {
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
                let hits = self
                    .all()
                    .iter()
                    .filter(|(_, _, uuid)| {
                        uuid.as_ref().is_some_and(|u| u.eq_ignore_ascii_case(want))
                    })
                    .map(|(p, ..)| p.clone())
                    .collect();
                one(hits, format!("UUID {want}"))
            }
            Source::Label(want) => {
                let hits = self
                .all()
                .iter()
                .filter(|(_, d, ..)| {
                    matches!(d, Detected::Filesystem { label: Some(l), .. } if l == want)
                })
                .map(|(p, ..)| p.clone())
                .collect();
                one(hits, format!("label {want:?}"))
            }
            Source::PartUuid(want) => {
                let t = table.ok_or("the image has no partition table")?;
                let hits = t
                    .partitions
                    .iter()
                    .filter(|p| part_uuid(file, t, p).is_some_and(|u| u.eq_ignore_ascii_case(want)))
                    .map(|p| Target::Part(Some(p.clone())))
                    .collect();
                one(hits, format!("partition UUID {want}"))
            }
            Source::PartLabel(want) => {
                let t = table.ok_or("the image has no partition table")?;
                let hits = t
                    .partitions
                    .iter()
                    .filter(|p| p.name.as_deref() == Some(want.as_str()))
                    .map(|p| Target::Part(Some(p.clone())))
                    .collect();
                one(hits, format!("partition name {want:?}"))
            }
            Source::Partition(n) => match table.and_then(|t| t.get(*n)) {
                Some(p) => Ok(Target::Part(Some(p.clone()))),
                None => Err(format!("the image has no partition {n}")),
            },
            Source::WholeDisk => match table {
                None => Ok(Target::Part(None)),
                Some(_) => Err("names the whole disk, which holds a partition table".into()),
            },
            Source::LogicalVolume { vg, lv } => {
                let want = Target::Lv(vg.clone(), lv.clone());
                if self.lvs().iter().any(|(t, ..)| *t == want) {
                    Ok(want)
                } else {
                    Err(format!(
                        "logical volume {vg}/{lv} is not on this image (or cannot be mapped)"
                    ))
                }
            }
            Source::Other(s) => Err(format!("{s:?} names no device of this image")),
        }
    }
}

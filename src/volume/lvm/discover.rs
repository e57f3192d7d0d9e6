//! Finding the LVM2 physical volumes of a disk: on the whole disk and on
//! every partition of its table, by their label ([`super::scan`]), grouped
//! into volume groups, and the logical volumes placed on the disk's own
//! bytes.
//!
//! Pure functions over any [`ReadAt`]: no device is touched but read, and
//! the host's LVM tools never see the disk.

use std::path::Path;

use log::{debug, warn};

use super::metadata::VolumeGroup;
use super::{PhysicalVolume, scan};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::format::ReadAt;
use crate::partition::PartitionTable;
use crate::volume::Region;

/// A physical volume found on a disk, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPv {
    /// The partition that holds it (its number in the table), `None` for a
    /// whole-disk PV.
    pub partition: Option<u32>,
    /// Its first byte on the disk.
    pub offset: u64,
    /// Its size in bytes (the partition's, or the disk's).
    pub size: u64,
    /// Its label and volume group.
    pub pv: PhysicalVolume,
}

/// Every PV of a disk, and what could not be read.
#[derive(Debug, Default)]
pub struct Discovery {
    /// The PVs found, the whole disk's first, then by partition.
    pub pvs: Vec<FoundPv>,
    /// A damaged label or metadata area, one error per place (logged; an
    /// error of [`Discovery::find`] when the wanted VG is not found).
    pub errors: Vec<Error>,
}

/// A volume group of a disk: its newest metadata and the PVs of it that
/// the disk holds.
#[derive(Debug, Clone, Copy)]
pub struct FoundVg<'a> {
    /// The newest metadata (highest sequence number) among its PVs.
    pub vg: &'a VolumeGroup,
    /// Its PVs found on the disk.
    pub pvs: &'a [FoundPv],
}

/// A run of an LV's bytes as it lies on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Where the run starts in the LV, in bytes.
    pub lv_offset: u64,
    /// Where it starts on the disk, in bytes.
    pub disk_offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The PV (its name in the metadata, `pv0`).
    pub pv: String,
}

fn same_id(a: &str, b: &str) -> bool {
    a.chars()
        .filter(|&c| c != '-')
        .eq(b.chars().filter(|&c| c != '-'))
}

/// Looks for PVs on `device` (`size` bytes, named `path` in errors): on
/// the whole disk, and on every partition of `table`.
pub fn discover<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    size: u64,
    table: Option<&PartitionTable>,
) -> Discovery {
    let mut found = Discovery::default();
    let places = std::iter::once((None, 0, size)).chain(
        table
            .into_iter()
            .flat_map(|t| &t.partitions)
            .map(|p| (Some(p.number), p.start, p.size)),
    );
    for (partition, offset, len) in places {
        let where_ = partition.map_or_else(
            || path.to_path_buf(),
            |n| Path::new(&format!("{} partition {n}", path.display())).to_path_buf(),
        );
        match scan(&Region::new(device, offset, len), &where_, len) {
            Ok(Some(pv)) => {
                debug!(
                    "lvm: {}: PV {} of volume group {}",
                    where_.display(),
                    pv.id(),
                    pv.vg.as_ref().map_or("(none)", |v| v.name.as_str())
                );
                found.pvs.push(FoundPv {
                    partition,
                    offset,
                    size: len,
                    pv,
                });
            }
            Ok(None) => {}
            Err(e) => {
                warn!("lvm: {e}");
                found.errors.push(e);
            }
        }
    }
    found
}

impl Discovery {
    /// The volume groups, by UUID, in the order their first PV was found.
    pub fn volume_groups(&self) -> Vec<FoundVg<'_>> {
        let mut ids: Vec<&str> = Vec::new();
        for p in &self.pvs {
            if let Some(vg) = &p.pv.vg
                && !ids.iter().any(|i| same_id(i, &vg.id))
            {
                ids.push(&vg.id);
            }
        }
        ids.into_iter()
            .filter_map(|id| {
                let vg = self
                    .pvs
                    .iter()
                    .filter_map(|p| p.pv.vg.as_ref())
                    .filter(|v| same_id(&v.id, id))
                    .max_by_key(|v| v.seqno)?;
                Some(FoundVg { vg, pvs: &self.pvs })
            })
            .collect()
    }

    /// The volume group called `name`.
    ///
    /// # Errors
    /// [`Step::Map`], naming `path`: no VG of that name (the message lists
    /// the VGs there are, and what could not be read), or two VGs of that
    /// name on one disk.
    pub fn find(&self, name: &str, path: &Path) -> Result<FoundVg<'_>> {
        let all = self.volume_groups();
        let named: Vec<&FoundVg<'_>> = all.iter().filter(|v| v.vg.name == name).collect();
        match named.as_slice() {
            [one] => Ok(**one),
            [] => {
                if let [e, ..] = self.errors.as_slice()
                    && all.is_empty()
                {
                    return Err(Error::invalid(
                        Step::Map,
                        path,
                        format!("volume group {name} cannot be read: {e}"),
                    ));
                }
                let names: Vec<&str> = all.iter().map(|v| v.vg.name.as_str()).collect();
                let mut why = format!(
                    "has no LVM volume group {name} (it has {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                );
                for e in &self.errors {
                    why.push_str(&format!("; unreadable: {e}"));
                }
                Err(Error::refused(ErrorKind::NotFound, Step::Map, path, why))
            }
            many => Err(Error::invalid(
                Step::Map,
                path,
                format!(
                    "holds {} different volume groups called {name} (UUIDs {}); diskmount cannot \
                     tell which one is meant",
                    many.len(),
                    many.iter()
                        .map(|v| v.vg.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

impl FoundVg<'_> {
    /// The PV of this VG with metadata name `pv` (`pv0`), if the disk
    /// holds it.
    pub fn found(&self, pv: &str) -> Option<&FoundPv> {
        let want = self.vg.pv(pv)?;
        self.pvs.iter().find(|p| same_id(p.pv.id(), &want.id))
    }

    /// Logical volume `lv` as it lies on the disk: its linear pieces with
    /// disk offsets, in LV order (one piece: an offset loop device serves
    /// it; several: device-mapper).
    ///
    /// # Errors
    /// As [`VolumeGroup::pieces`] ([`Step::Map`], naming `path` and the
    /// LV): no such LV (the message lists those there are), striped, raid,
    /// thin, cache or snapshot LVs, a PV the disk does not hold.
    pub fn place(&self, lv: &str, path: &Path) -> Result<Vec<Placed>> {
        let pieces = self.vg.pieces(lv, path, |pv| {
            self.pvs.iter().any(|p| same_id(p.pv.id(), &pv.id))
        })?;
        pieces
            .into_iter()
            .map(|piece| {
                let on = self.found(&piece.pv).ok_or_else(|| {
                    Error::invalid(
                        Step::Map,
                        path,
                        format!(
                            "logical volume {}/{lv}: physical volume {} is missing",
                            self.vg.name, piece.pv
                        ),
                    )
                })?;
                let disk_offset = on.offset.checked_add(piece.pv_offset).filter(|&o| {
                    piece.pv_offset.saturating_add(piece.len) <= on.size
                        && o.checked_add(piece.len).is_some()
                });
                let Some(disk_offset) = disk_offset else {
                    return Err(Error::invalid(
                        Step::Map,
                        path,
                        format!(
                            "logical volume {}/{lv}: a piece on {} lies beyond the end of its PV",
                            self.vg.name, piece.pv
                        ),
                    ));
                };
                Ok(Placed {
                    lv_offset: piece.lv_offset,
                    disk_offset,
                    len: piece.len,
                    pv: piece.pv,
                })
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::metadata::tests::SAMPLE;
    use super::*;

    /// A disk whose whole is the sample PV (as in the parent's tests).
    pub(crate) fn disk() -> Vec<u8> {
        let mut img = vec![0u8; 130 << 20];
        img[512..1024].copy_from_slice(&super::super::label::tests::label(
            1,
            &[(1 << 20, 0)],
            &[(4096, 0xff000)],
        ));
        let mut t = SAMPLE.as_bytes().to_vec();
        t.push(0);
        let a = super::super::mda::tests::area(4096, 0xff000, 512, &t);
        img[4096..4096 + a.len()].copy_from_slice(&a);
        img
    }

    #[test]
    fn finds_the_vg_and_places_its_lvs_on_the_disk() {
        let img = disk();
        let d = discover(&img[..], Path::new("/img"), img.len() as u64, None);
        assert_eq!(d.pvs.len(), 1);
        assert!(d.errors.is_empty());
        let vg = d.find("rl", Path::new("/img")).unwrap();
        let root = vg.place("root", Path::new("/img")).unwrap();
        assert_eq!(
            root,
            [Placed {
                lv_offset: 0,
                disk_offset: 1 << 20,
                len: 40 << 20,
                pv: "pv0".into()
            }]
        );
        assert_eq!(vg.place("data", Path::new("/img")).unwrap().len(), 2);
        let e = d
            .find("ubuntu-vg", Path::new("/img"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has no LVM volume group ubuntu-vg (it has rl)"),
            "{e}"
        );
        let e = vg.place("nope", Path::new("/img")).unwrap_err().to_string();
        assert!(e.contains("rl/nope does not exist"), "{e}");
    }

    #[test]
    fn a_damaged_pv_is_reported_when_its_vg_is_wanted() {
        let mut img = disk();
        img[4096 + 600] ^= 1;
        let d = discover(&img[..], Path::new("/img"), img.len() as u64, None);
        assert!(d.pvs.is_empty());
        let e = d.find("rl", Path::new("/img")).unwrap_err().to_string();
        assert!(e.contains("volume group rl cannot be read"), "{e}");
        assert!(e.contains("checksum is wrong"), "{e}");
    }
}

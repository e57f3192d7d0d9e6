//! How a logical volume becomes a block device: the linear pieces it is
//! made of, and whether one offset loop device serves it, device-mapper
//! is needed (with the table to load), or diskmount cannot map it.
//!
//! Pure functions over a parsed [`VolumeGroup`]: no device is touched.

use std::path::Path;

use super::metadata::{Lv, Pv, SegmentKind, VolumeGroup};
use crate::error::{Error, Result, Step};

/// A run of the LV's bytes stored contiguously on one PV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Where the run starts in the LV, in bytes.
    pub lv_offset: u64,
    /// The PV that holds it (its name in the metadata, `pv0`).
    pub pv: String,
    /// Where it starts on the PV, in bytes from the PV's first byte.
    pub pv_offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// How to give an LV a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One piece on one PV: a loop device over the PV's device with this
    /// piece's offset and size limit does it, no device-mapper needed.
    OffsetLoop(Piece),
    /// Several pieces: a device-mapper target with one linear line each
    /// ([`dm_table`]).
    DeviceMapper(Vec<Piece>),
}

impl Plan {
    /// The pieces, in LV order.
    pub fn pieces(&self) -> &[Piece] {
        match self {
            Plan::OffsetLoop(p) => std::slice::from_ref(p),
            Plan::DeviceMapper(p) => p,
        }
    }

    /// The LV's size in bytes.
    pub fn size(&self) -> u64 {
        self.pieces().iter().map(|p| p.len).sum()
    }
}

impl VolumeGroup {
    /// The linear pieces of logical volume `lv`, adjacent ones on the
    /// same PV merged. `present` says whether a PV of the metadata was
    /// found (by its UUID, [`Pv::id`]); a PV marked missing never is.
    ///
    /// # Errors
    /// [`Step::Map`], naming `path` and `VG/LV`: no such LV, a hidden LV,
    /// the origin of a snapshot, a segment type other than linear
    /// (striped over several PVs, raid, mirror, thin, cache, snapshot), a
    /// PV that is not present, extents beyond the end of their PV.
    pub fn pieces(
        &self,
        lv: &str,
        path: &Path,
        present: impl Fn(&Pv) -> bool,
    ) -> Result<Vec<Piece>> {
        let refuse = |why: String| {
            let vg = &self.name;
            Error::invalid(Step::Map, path, format!("logical volume {vg}/{lv} {why}"))
        };
        let Some(l) = self.lv(lv) else {
            let names: Vec<&str> = self
                .lvs
                .iter()
                .filter(|l| l.visible)
                .map(|l| l.name.as_str())
                .collect();
            return Err(refuse(format!(
                "does not exist (volume group {} has {})",
                self.name,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        };
        check_kind(self, l).map_err(refuse)?;
        let extent = self.extent_bytes();
        let mut pieces: Vec<Piece> = Vec::new();
        for (i, s) in l.segments.iter().enumerate() {
            let SegmentKind::Striped { stripes, .. } = &s.kind else {
                unreachable!("check_kind lets linear segments through only");
            };
            let (pv_name, pv_extent) = &stripes[0];
            let pv = self.pv(pv_name).ok_or_else(|| {
                refuse(format!("is on {pv_name}, which the metadata does not list"))
            })?;
            if pv.missing || !present(pv) {
                return Err(refuse(format!(
                    "needs physical volume {pv_name} (UUID {}), which is missing: attach every \
                     disk of volume group {}",
                    pv.id, self.name
                )));
            }
            let end = pv_extent.checked_add(s.extent_count);
            if end.is_none_or(|e| e > pv.pe_count) {
                return Err(refuse(format!(
                    "segment {}: extents {pv_extent}.. ({} of them) lie beyond the {} extents of {pv_name}",
                    i + 1,
                    s.extent_count,
                    pv.pe_count
                )));
            }
            let bytes = |sectors_or_extents: u64, unit: u64| sectors_or_extents.checked_mul(unit);
            let geometry = (|| {
                let pv_offset = bytes(pv.pe_start, 512)?.checked_add(bytes(*pv_extent, extent)?)?;
                let lv_offset = bytes(s.start_extent, extent)?;
                let len = bytes(s.extent_count, extent)?;
                pv_offset.checked_add(len)?;
                lv_offset.checked_add(len)?;
                Some((lv_offset, pv_offset, len))
            })();
            let Some((lv_offset, pv_offset, len)) = geometry else {
                return Err(refuse(format!(
                    "segment {}: its byte offsets overflow",
                    i + 1
                )));
            };
            match pieces.last_mut() {
                Some(last) if last.pv == *pv_name && last.pv_offset + last.len == pv_offset => {
                    last.len += len;
                }
                _ => pieces.push(Piece {
                    lv_offset,
                    pv: pv_name.clone(),
                    pv_offset,
                    len,
                }),
            }
        }
        Ok(pieces)
    }

    /// The plan for logical volume `lv`: [`Plan::OffsetLoop`] when it is
    /// one piece, [`Plan::DeviceMapper`] otherwise. Errors as
    /// [`VolumeGroup::pieces`].
    pub fn plan(&self, lv: &str, path: &Path, present: impl Fn(&Pv) -> bool) -> Result<Plan> {
        let mut pieces = self.pieces(lv, path, present)?;
        if pieces.is_empty() {
            return Err(Error::invalid(
                Step::Map,
                path,
                format!(
                    "logical volume {}/{lv} has no segments (no extents): nothing to map",
                    self.name
                ),
            ));
        }
        Ok(if pieces.len() == 1 {
            Plan::OffsetLoop(pieces.remove(0))
        } else {
            Plan::DeviceMapper(pieces)
        })
    }

    /// The single piece of logical volume `lv`, for a kernel without
    /// device-mapper: an error naming the LV when it has several.
    pub fn plan_without_device_mapper(
        &self,
        lv: &str,
        path: &Path,
        present: impl Fn(&Pv) -> bool,
    ) -> Result<Piece> {
        match self.plan(lv, path, present)? {
            Plan::OffsetLoop(p) => Ok(p),
            Plan::DeviceMapper(p) => Err(Error::invalid(
                Step::Map,
                path,
                format!(
                    "logical volume {}/{lv} is made of {} separate pieces, which needs \
                     device-mapper, and this kernel has none (modprobe dm-mod)",
                    self.name,
                    p.len()
                ),
            )),
        }
    }
}

/// Whether diskmount can map `lv` at all: visible, no snapshot of it, every
/// segment linear.
fn check_kind(vg: &VolumeGroup, lv: &Lv) -> std::result::Result<(), String> {
    if !lv.visible {
        return Err(
            "is a hidden part of another volume (not VISIBLE); it cannot be mapped alone".into(),
        );
    }
    for other in &vg.lvs {
        for s in &other.segments {
            if let SegmentKind::Snapshot { origin } = &s.kind
                && *origin == lv.name
            {
                return Err(format!(
                    "is the origin of snapshot {}: writes to it would bypass the snapshot's \
                     copy-on-write, and diskmount does not map snapshot origins",
                    other.name
                ));
            }
        }
    }
    for (i, s) in lv.segments.iter().enumerate() {
        let n = i + 1;
        match &s.kind {
            SegmentKind::Striped {
                stripe_count: 1, ..
            } => {}
            SegmentKind::Striped { stripe_count, .. } => {
                return Err(format!(
                    "is striped over {stripe_count} physical volumes (segment {n}); diskmount maps \
                     linear volumes only"
                ));
            }
            SegmentKind::Snapshot { origin } => {
                return Err(format!(
                    "is a snapshot of {origin}; diskmount does not map snapshots"
                ));
            }
            SegmentKind::Other(ty) => {
                let what = if ty.starts_with("raid") {
                    "a RAID volume"
                } else if ty.starts_with("thin") {
                    "a thin volume"
                } else if ty.starts_with("cache") || ty.starts_with("writecache") {
                    "a cached volume"
                } else if ty == "mirror" {
                    "a mirrored volume"
                } else {
                    "of a kind"
                };
                return Err(format!(
                    "is {what} (segment {n} has type {ty:?}); diskmount maps linear volumes only"
                ));
            }
        }
    }
    Ok(())
}

/// The device-mapper table of `pieces`: one `START LEN linear MAJ:MIN
/// OFFSET` line each, in 512-byte sectors, with `device` giving the device
/// number of each PV (by its name in the metadata, `pv0`). `OFFSET` counts
/// from the first byte of the PV, so each device must be the PV itself (a
/// partition's device, or a loop device with the partition's offset), not
/// the whole disk it is on.
///
/// # Errors
/// [`Step::Map`], naming `path`: a PV with no device, a piece not aligned
/// to sectors.
pub fn dm_table(
    pieces: &[Piece],
    path: &Path,
    device: impl Fn(&str) -> Option<(u32, u32)>,
) -> Result<Vec<String>> {
    pieces
        .iter()
        .map(|p| {
            let (major, minor) = device(&p.pv).ok_or_else(|| {
                Error::invalid(
                    Step::Map,
                    path,
                    format!("physical volume {} has no device", p.pv),
                )
            })?;
            if (p.lv_offset | p.pv_offset | p.len) % 512 != 0 {
                return Err(Error::invalid(
                    Step::Map,
                    path,
                    format!("a piece on {} is not aligned to 512-byte sectors", p.pv),
                ));
            }
            Ok(format!(
                "{} {} linear {major}:{minor} {}",
                p.lv_offset / 512,
                p.len / 512,
                p.pv_offset / 512
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::metadata::tests::{SAMPLE, sample};
    use super::*;

    const MIB: u64 = 1 << 20;

    fn all(_: &Pv) -> bool {
        true
    }

    #[test]
    fn a_linear_lv_is_one_offset_loop() {
        let vg = sample();
        let plan = vg.plan("root", Path::new("/img"), all).unwrap();
        assert_eq!(
            plan,
            Plan::OffsetLoop(Piece {
                lv_offset: 0,
                pv: "pv0".into(),
                pv_offset: MIB,
                len: 40 * MIB
            })
        );
        assert_eq!(plan.size(), 40 * MIB);
    }

    /// Found by fuzzing: an LV with `segment_count = 0` was planned as a
    /// device-mapper table of no lines.
    #[test]
    fn an_lv_without_segments_is_refused() {
        let mut vg = sample();
        let lv = vg.lvs.iter_mut().find(|l| l.name == "root").unwrap();
        lv.segments.clear();
        let err = vg.plan("root", Path::new("/img"), all).unwrap_err();
        assert_eq!(err.step(), Some(Step::Map));
        assert!(err.to_string().contains("rl/root has no segments"), "{err}");
    }

    #[test]
    fn two_segments_need_device_mapper_with_one_line_each() {
        let vg = sample();
        let plan = vg.plan("data", Path::new("/img"), all).unwrap();
        let Plan::DeviceMapper(pieces) = &plan else {
            panic!("{plan:?}")
        };
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[1].lv_offset, 12 * MIB);
        assert_eq!(pieces[1].pv_offset, MIB + 80 * MIB);
        let table = dm_table(pieces, Path::new("/img"), |pv| {
            (pv == "pv0").then_some((7, 3))
        })
        .unwrap();
        assert_eq!(
            table,
            ["0 24576 linear 7:3 83968", "24576 16384 linear 7:3 165888"]
        );
        let err = vg
            .plan_without_device_mapper("data", Path::new("/img"), all)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("rl/data is made of 2 separate pieces, which needs device-mapper"),
            "{err}"
        );
        let err = dm_table(pieces, Path::new("/img"), |_| None).unwrap_err();
        assert!(err.to_string().contains("pv0 has no device"), "{err}");
    }

    #[test]
    fn adjacent_segments_on_one_pv_merge_into_one_piece() {
        let text = SAMPLE.replacen("\"pv0\", 20", "\"pv0\", 13", 1);
        let vg = VolumeGroup::parse(text.as_bytes(), Path::new("/img")).unwrap();
        let piece = vg
            .plan_without_device_mapper("data", Path::new("/img"), all)
            .unwrap();
        assert_eq!((piece.pv_offset, piece.len), (MIB + 40 * MIB, 20 * MIB));
    }

    #[test]
    fn unsupported_volumes_are_errors_naming_the_lv_and_the_reason() {
        let vg = sample();
        let err = |lv: &str, present: &dyn Fn(&Pv) -> bool| {
            vg.plan(lv, Path::new("/img"), present)
                .unwrap_err()
                .to_string()
        };
        let e = err("wide", &all);
        assert!(
            e.contains("map: /img: logical volume rl/wide is striped over 2"),
            "{e}"
        );
        let e = err("thin", &all);
        assert!(
            e.contains("rl/thin is a thin volume (segment 1 has type \"thin\")"),
            "{e}"
        );
        let e = err("nope", &all);
        assert!(
            e.contains("rl/nope does not exist (volume group rl has root, data, wide, thin)"),
            "{e}"
        );
        let e = err("root", &|_| false);
        assert!(
            e.contains("rl/root needs physical volume pv0 (UUID UiHoyR-"),
            "{e}"
        );

        for (from, to, lv, why) in [
            (
                "\"pv0\", 0\n]",
                "\"pv0\", 29\n]",
                "root",
                "lie beyond the 31 extents of pv0",
            ),
            (
                "\"VISIBLE\"]\nflags = []\nsegment_count = 1",
                "]\nflags = []\nsegment_count = 1",
                "root",
                "is a hidden part",
            ),
            (
                "type = \"thin\"\nthin_pool = \"pool\"",
                "type = \"snapshot\"\norigin = \"root\"",
                "root",
                "is the origin of snapshot thin",
            ),
            (
                "type = \"thin\"\nthin_pool = \"pool\"",
                "type = \"snapshot\"\norigin = \"root\"",
                "thin",
                "is a snapshot of root",
            ),
            (
                "type = \"thin\"",
                "type = \"raid1\"",
                "thin",
                "is a RAID volume",
            ),
            (
                "type = \"thin\"",
                "type = \"cache\"",
                "thin",
                "is a cached volume",
            ),
            (
                "type = \"thin\"",
                "type = \"mirror\"",
                "thin",
                "is a mirrored volume",
            ),
            (
                "pe_start = 2048",
                "pe_start = 9223372036854775807",
                "root",
                "byte offsets overflow",
            ),
        ] {
            assert!(SAMPLE.contains(from), "{from}");
            let vg = VolumeGroup::parse(SAMPLE.replacen(from, to, 1).as_bytes(), Path::new("/img"))
                .unwrap();
            let e = vg.plan(lv, Path::new("/img"), all).unwrap_err().to_string();
            assert!(
                e.contains(&format!("rl/{lv} {why}")) || e.contains(why),
                "{to}: {e}"
            );
        }
    }

    #[test]
    fn a_pv_marked_missing_is_missing_whatever_the_caller_has() {
        let text = SAMPLE.replacen("\"pv0\", 20", "\"pv1\", 5", 1);
        let vg = VolumeGroup::parse(text.as_bytes(), Path::new("/img")).unwrap();
        let e = vg
            .plan("data", Path::new("/img"), all)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs physical volume pv1"), "{e}");
    }
}

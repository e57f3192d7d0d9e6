//! LVM2 read from the disk by our own bounded parsers: the label that
//! makes a partition or a whole disk a physical volume ([`label`]), its
//! metadata areas ([`mda`]), the volume group's text metadata
//! ([`metadata`], in the syntax of [`config`]), the plan that gives a
//! logical volume a device ([`plan`]), and the search of a whole disk for
//! its PVs and VGs ([`discover()`]).
//!
//! No crate on crates.io parses LVM2 well enough for us (`lvm2` 0.0.3 and
//! its fork `lamlvm` are single-PV readers without bounds; `exhume_lvm` is
//! GPL-3.0 and a forensic tool), so this is ours: every length is checked
//! against the device before it is read, every checksum is verified, the
//! text is at most [`mda::MAX_TEXT`] bytes with sections nested at most
//! [`config::MAX_DEPTH`] deep and [`config::MAX_ITEMS`] entries, and
//! everything runs on any [`ReadAt`], so it is unit-tested and fuzzed on
//! byte slices.
//!
//! The host's LVM tools never see a guest's PV, and nothing here activates
//! a volume group.

use std::path::Path;

use log::{debug, warn};

use super::ReadAt;
use crate::error::{Error, Result, Step};

pub mod config;
mod crc;
pub mod discover;
pub mod label;
pub mod mda;
pub mod metadata;
pub mod plan;
mod reader;

pub use discover::{Discovery, FoundPv, FoundVg, Placed, discover};
pub use label::{Area, Label};
pub use metadata::{Lv, Pv, Segment, SegmentKind, VolumeGroup};
pub use plan::{Piece, Plan, dm_table};
pub use reader::LvReader;

/// The unit of LVM2's on-disk offsets.
pub(crate) const SECTOR: u64 = 512;

/// A physical volume found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalVolume {
    /// What its label says: UUID, device size, data and metadata areas.
    pub label: Label,
    /// Its volume group, from the newest valid metadata area; `None` for a
    /// PV in no VG (or whose metadata areas hold none).
    pub vg: Option<VolumeGroup>,
}

impl PhysicalVolume {
    /// The PV's UUID, dashed.
    pub fn id(&self) -> &str {
        &self.label.id
    }

    /// This PV as its VG's metadata lists it (`pv0`, ...).
    pub fn in_vg(&self) -> Option<&Pv> {
        self.vg.as_ref()?.pv_by_id(&self.label.id)
    }
}

/// Looks for an LVM2 physical volume on `device` (a partition or a whole
/// disk, `size` bytes), and reads its volume group: `None` when the device
/// has no LVM2 label.
///
/// Of several metadata areas, the valid one with the highest sequence
/// number counts; a damaged one is logged and skipped while another is
/// good.
///
/// # Errors
/// [`Step::Probe`], naming `path`: a damaged label or metadata area (wrong
/// checksum, sizes beyond the device), metadata that does not parse or
/// does not list this PV, or a PV whose extents end beyond the device (a
/// truncated image).
pub fn scan<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    size: u64,
) -> Result<Option<PhysicalVolume>> {
    let disk = Disk::new(device, path, size);
    let Some(label) = label::find(&disk)? else {
        return Ok(None);
    };
    debug!(
        "lvm: {}: PV {} in sector {}, {} metadata areas",
        path.display(),
        label.id,
        label.sector,
        label.metadata_areas.len()
    );
    let mut best: Option<VolumeGroup> = None;
    let mut first_error = None;
    for (i, &area) in label.metadata_areas.iter().enumerate() {
        let vg = mda::read_text(&disk, area, i)
            .and_then(|t| t.map(|t| VolumeGroup::parse(&t, path)).transpose());
        match vg {
            Ok(Some(vg)) => {
                if best.as_ref().is_none_or(|b| vg.seqno > b.seqno) {
                    best = Some(vg);
                }
            }
            Ok(None) => debug!(
                "lvm: {}: metadata area {i} holds no metadata",
                path.display()
            ),
            Err(e) => {
                warn!("lvm: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    if best.is_none()
        && let Some(e) = first_error
    {
        return Err(e);
    }
    if let Some(vg) = &best {
        check_pv(&disk, &label, vg)?;
        debug!(
            "lvm: {}: volume group {} (seqno {}), {} LVs",
            path.display(),
            vg.name,
            vg.seqno,
            vg.lvs.len()
        );
    }
    Ok(Some(PhysicalVolume { label, vg: best }))
}

/// The VG must list this PV, and its extents must lie on the device.
fn check_pv<R: ReadAt + ?Sized>(disk: &Disk<'_, R>, label: &Label, vg: &VolumeGroup) -> Result<()> {
    let Some(pv) = vg.pv_by_id(&label.id) else {
        return Err(disk.refuse(format!(
            "the metadata of volume group {} does not list this PV ({})",
            vg.name, label.id
        )));
    };
    let end = pv
        .pe_count
        .checked_mul(vg.extent_bytes())
        .and_then(|e| e.checked_add(pv.pe_start.checked_mul(SECTOR)?));
    match end {
        Some(end) if end <= disk.size => Ok(()),
        _ => Err(disk.refuse(format!(
            "physical volume {} of volume group {} has {} extents ending at byte {}, beyond the \
             end of the {}-byte device: the image is truncated",
            pv.name,
            vg.name,
            pv.pe_count,
            end.map_or_else(|| "(overflow)".to_string(), |e| e.to_string()),
            disk.size
        ))),
    }
}

/// A device being scanned: the reader, its size, and the path every error
/// names.
pub(crate) struct Disk<'a, R: ReadAt + ?Sized> {
    r: &'a R,
    path: &'a Path,
    size: u64,
}

impl<'a, R: ReadAt + ?Sized> Disk<'a, R> {
    pub(crate) fn new(r: &'a R, path: &'a Path, size: u64) -> Self {
        Disk { r, path, size }
    }

    /// An [`Error::Invalid`] at [`Step::Probe`] naming the device.
    pub(crate) fn refuse(&self, reason: impl Into<String>) -> Error {
        Error::invalid(Step::Probe, self.path, reason)
    }

    /// Checks that bytes `offset..offset + len` lie on the device.
    pub(crate) fn within(&self, offset: u64, len: u64, what: &str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(self.refuse(format!(
                "{what} (bytes {offset}..{}) lies beyond the end of the {}-byte device",
                u128::from(offset) + u128::from(len),
                self.size
            ))),
        }
    }

    /// Fills `buf` from `offset`, which must lie on the device.
    pub(crate) fn read_exact(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        self.within(offset, buf.len() as u64, what)?;
        let n = self.read_clipped(buf, offset, what)?;
        if n < buf.len() {
            return Err(self.refuse(format!(
                "{what}: the device ended after {n} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Reads what there is of `buf.len()` bytes from `offset`.
    pub(crate) fn read_clipped(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<usize> {
        let left = usize::try_from(self.size.saturating_sub(offset)).unwrap_or(usize::MAX);
        let n = buf.len().min(left);
        self.r
            .read_at_most(&mut buf[..n], offset)
            .map_err(|e| Error::os(Step::Probe, self.path, format!("read {what}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PV image: label in sector 1, a metadata area at 4096 of 1 MiB
    /// holding `text`, data from 1 MiB.
    fn image(text: &str, size: usize) -> Vec<u8> {
        let mut img = vec![0u8; size];
        img[512..1024].copy_from_slice(&label::tests::label(
            1,
            &[(1 << 20, 0)],
            &[(4096, 0xff000)],
        ));
        let mut t = text.as_bytes().to_vec();
        t.push(0);
        let a = mda::tests::area(4096, 0xff000, 512, &t);
        img[4096..4096 + a.len()].copy_from_slice(&a);
        img
    }

    #[test]
    fn scans_a_pv_and_its_volume_group() {
        let img = image(metadata::tests::SAMPLE, 130 << 20);
        let pv = scan(&img[..], Path::new("/img"), img.len() as u64)
            .unwrap()
            .unwrap();
        assert_eq!(pv.id(), "UiHoyR-g13L-BDYy-Wnxp-iytp-5F0w-m3tXDf");
        let vg = pv.vg.as_ref().unwrap();
        assert_eq!(vg.name, "rl");
        assert_eq!(pv.in_vg().unwrap().name, "pv0");
        assert_eq!(
            scan(&[0u8; 8192][..], Path::new("/img"), 8192).unwrap(),
            None
        );
    }

    #[test]
    fn a_truncated_pv_or_a_foreign_vg_is_an_error() {
        let img = image(metadata::tests::SAMPLE, 100 << 20);
        let err = scan(&img[..], Path::new("/img"), img.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pv0 of volume group rl has 31 extents ending at byte 131072000"),
            "{err}"
        );
        assert!(err.contains("the image is truncated"), "{err}");
        let other = metadata::tests::SAMPLE.replace("UiHoyR", "XXXXXX");
        let img = image(&other, 130 << 20);
        let err = scan(&img[..], Path::new("/img"), img.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not list this PV"), "{err}");
    }

    #[test]
    fn a_corrupt_text_is_an_error_naming_the_area() {
        let mut img = image(metadata::tests::SAMPLE, 130 << 20);
        img[4096 + 600] ^= 1;
        let err = scan(&img[..], Path::new("/img"), img.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("probe: /img: LVM2 metadata area 0 (at byte 4096)"),
            "{err}"
        );
        assert!(err.contains("checksum is wrong"), "{err}");
    }
}

//! The LVM2 label: `LABELONE` in one of the first four 512-byte sectors,
//! and the physical volume header after it (the PV UUID, the device size,
//! and the lists of data and metadata areas).
//!
//! Layout (all integers little-endian), from the start of the sector:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | `LABELONE` |
//! | 8..16 | the sector number the label is in |
//! | 16..20 | checksum of bytes 20..512 (LVM2's CRC-32, see `crc.rs`) |
//! | 20..24 | offset of the PV header in the sector (32) |
//! | 24..32 | `LVM2 001` |
//! | +0..32 | PV UUID (32 characters, no dashes) |
//! | +32..40 | device size in bytes |
//! | +40.. | data areas (offset, size: u64 each) up to an entry of offset 0, then the metadata areas the same way |

use super::{Disk, ReadAt, Result, SECTOR, crc};

/// The sectors LVM2 looks for its label in.
pub const LABEL_SECTORS: u64 = 4;

/// The most metadata areas a PV has (`pvcreate --pvmetadatacopies` 0-2).
pub const MAX_METADATA_AREAS: usize = 2;

/// A stretch of the physical volume, in bytes from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// Where it starts.
    pub offset: u64,
    /// How long it is (0 for a data area: up to the end of the device).
    pub size: u64,
}

/// What the label and the PV header say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The sector the label is in (0 to 3).
    pub sector: u64,
    /// The PV UUID, in LVM's dashed form (`xxxxxx-xxxx-...-xxxxxx`).
    pub id: String,
    /// The device size the PV was made for, in bytes.
    pub device_size: u64,
    /// The data areas (one, in practice).
    pub data_areas: Vec<Area>,
    /// The metadata areas (none, one, or two: at the start and at the end).
    pub metadata_areas: Vec<Area>,
}

/// Formats 32 UUID characters the way LVM2 prints them: 6-4-4-4-4-4-6.
pub(crate) fn dashed(raw: &[u8]) -> String {
    let mut s = String::with_capacity(38);
    for (i, &c) in raw.iter().enumerate() {
        if matches!(i, 6 | 10 | 14 | 18 | 22 | 26) {
            s.push('-');
        }
        s.push(char::from(c));
    }
    s
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Looks for the label in the first [`LABEL_SECTORS`] sectors: `None` when
/// there is none.
pub(crate) fn find<R: ReadAt + ?Sized>(disk: &Disk<'_, R>) -> Result<Option<Label>> {
    for sector in 0..LABEL_SECTORS {
        let at = sector * SECTOR;
        if disk.size < at + SECTOR {
            break;
        }
        let mut magic = [0u8; 8];
        disk.read_exact(&mut magic, at, "the LVM2 label sectors")?;
        if &magic == b"LABELONE" {
            let mut b = [0u8; SECTOR as usize];
            disk.read_exact(&mut b, at, "the LVM2 label")?;
            return parse(disk, sector, &b).map(Some);
        }
    }
    Ok(None)
}

fn parse<R: ReadAt + ?Sized>(disk: &Disk<'_, R>, sector: u64, b: &[u8]) -> Result<Label> {
    let at = |what: &str| format!("the LVM2 label in sector {sector}: {what}");
    let stored = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
    let actual = crc::crc(crc::INITIAL, &b[20..]);
    if stored != actual {
        return Err(disk.refuse(at(&format!(
            "wrong checksum (stored {stored:#010x}, computed {actual:#010x}): the label is corrupt"
        ))));
    }
    if le64(b, 8) != sector {
        return Err(disk.refuse(at(&format!("it says it is in sector {}", le64(b, 8)))));
    }
    if &b[24..32] != b"LVM2 001" {
        return Err(disk.refuse(at(&format!(
            "unknown label type {:?} (diskmount reads \"LVM2 001\")",
            String::from_utf8_lossy(&b[24..32])
        ))));
    }
    let offset = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes")) as usize;
    // The header: UUID, size, and at least the two empty list ends.
    if !(32..=b.len() - 72).contains(&offset) {
        return Err(disk.refuse(at(&format!(
            "the PV header offset {offset} lies outside the sector"
        ))));
    }
    let h = &b[offset..];
    let uuid = &h[..32];
    if !uuid.iter().all(u8::is_ascii_graphic) {
        return Err(disk.refuse(at("the PV UUID is not printable")));
    }
    let device_size = le64(h, 32);
    let mut pos = 40;
    let mut lists = [Vec::new(), Vec::new()];
    for (i, list) in lists.iter_mut().enumerate() {
        loop {
            if pos + 16 > h.len() {
                let which = if i == 0 { "data" } else { "metadata" };
                return Err(disk.refuse(at(&format!(
                    "the list of {which} areas runs past the end of the sector"
                ))));
            }
            let area = Area {
                offset: le64(h, pos),
                size: le64(h, pos + 8),
            };
            pos += 16;
            if area.offset == 0 {
                break;
            }
            list.push(area);
        }
    }
    let [data_areas, metadata_areas] = lists;
    if metadata_areas.len() > MAX_METADATA_AREAS {
        return Err(disk.refuse(at(&format!(
            "{} metadata areas; LVM2 writes at most {MAX_METADATA_AREAS}",
            metadata_areas.len()
        ))));
    }
    Ok(Label {
        sector,
        id: dashed(uuid),
        device_size,
        data_areas,
        metadata_areas,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    /// A label in `sector` with the given areas, its checksum right.
    pub(crate) fn label(sector: u64, data: &[(u64, u64)], meta: &[(u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..8].copy_from_slice(b"LABELONE");
        b[8..16].copy_from_slice(&sector.to_le_bytes());
        b[20..24].copy_from_slice(&32u32.to_le_bytes());
        b[24..32].copy_from_slice(b"LVM2 001");
        b[32..64].copy_from_slice(b"UiHoyRg13LBDYyWnxpiytp5F0wm3tXDf");
        b[64..72].copy_from_slice(&(64u64 << 20).to_le_bytes());
        let mut pos = 72;
        for list in [data, meta] {
            for &(o, s) in list {
                b[pos..pos + 8].copy_from_slice(&o.to_le_bytes());
                b[pos + 8..pos + 16].copy_from_slice(&s.to_le_bytes());
                pos += 16;
            }
            pos += 16;
        }
        fix(&mut b);
        b
    }

    /// Makes the label's checksum right again.
    pub(crate) fn fix(b: &mut [u8]) {
        let c = crc::crc(crc::INITIAL, &b[20..512]);
        b[16..20].copy_from_slice(&c.to_le_bytes());
    }

    fn find_in(img: &[u8]) -> Result<Option<Label>> {
        let disk = Disk::new(img, Path::new("/img"), img.len() as u64);
        find(&disk)
    }

    #[test]
    fn finds_the_label_in_sector_one_with_its_areas() {
        let mut img = vec![0u8; 4096];
        img[512..1024].copy_from_slice(&label(1, &[(1 << 20, 0)], &[(4096, 0xff000)]));
        let l = find_in(&img).unwrap().unwrap();
        assert_eq!(l.sector, 1);
        assert_eq!(l.id, "UiHoyR-g13L-BDYy-Wnxp-iytp-5F0w-m3tXDf");
        assert_eq!(l.device_size, 64 << 20);
        assert_eq!(
            l.data_areas,
            [Area {
                offset: 1 << 20,
                size: 0
            }]
        );
        assert_eq!(
            l.metadata_areas,
            [Area {
                offset: 4096,
                size: 0xff000
            }]
        );
    }

    #[test]
    fn no_label_is_none_even_on_a_short_device() {
        assert_eq!(find_in(&[0u8; 4096]).unwrap(), None);
        assert_eq!(find_in(&[0u8; 10]).unwrap(), None);
        assert_eq!(find_in(b"").unwrap(), None);
    }

    #[test]
    fn damaged_labels_are_clear_errors() {
        let mut img = vec![0u8; 2048];
        img[512..1024].copy_from_slice(&label(1, &[(1 << 20, 0)], &[(4096, 0xff000)]));
        let mut bad = img.clone();
        bad[600] ^= 1;
        let err = find_in(&bad).unwrap_err().to_string();
        assert!(err.contains("sector 1: wrong checksum"), "{err}");
        assert!(err.contains("/img"), "{err}");

        let mut moved = img.clone();
        moved[520] = 2;
        fix(&mut moved[512..1024]);
        assert!(
            find_in(&moved)
                .unwrap_err()
                .to_string()
                .contains("says it is in sector 2")
        );

        let mut offset = img.clone();
        offset[532..536].copy_from_slice(&500u32.to_le_bytes());
        fix(&mut offset[512..1024]);
        assert!(
            find_in(&offset)
                .unwrap_err()
                .to_string()
                .contains("outside the sector")
        );

        // Areas that never end: every entry non-zero up to the sector end.
        let mut endless = img.clone();
        for p in (512 + 72..1024).step_by(8) {
            endless[p] = 1;
        }
        fix(&mut endless[512..1024]);
        let err = find_in(&endless).unwrap_err().to_string();
        assert!(err.contains("runs past the end of the sector"), "{err}");

        let three = label(
            1,
            &[(1 << 20, 0)],
            &[(4096, 512), (8192, 512), (12288, 512)],
        );
        img[512..1024].copy_from_slice(&three);
        let err = find_in(&img).unwrap_err().to_string();
        assert!(
            err.contains("3 metadata areas; LVM2 writes at most 2"),
            "{err}"
        );
    }
}

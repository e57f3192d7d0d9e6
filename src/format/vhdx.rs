//! Hyper-V VHDX: the file identifier, the two headers, the region table
//! and the metadata that give the virtual size and say whether the disk is
//! differencing.
//!
//! Checked: the `vhdxfile` identifier; the `head` signature of the two
//! headers (the one with the larger sequence number is used), its version
//! and log location; the first region table (`regi`, at most 2047
//! entries, every region 1 MiB-aligned, inside the file, not overlapping
//! another, no unknown region marked required); the metadata table
//! (`metadata`, at most 2047 entries, items inside the region, no unknown
//! item marked required); the file parameters (block size), the virtual
//! size, the logical sector size, and that the BAT region holds as many
//! entries as the virtual size needs.
//!
//! Not checked: the CRC-32C checksums of the headers and region tables
//! (a damaged copy is not told apart from a good one), and the log
//! (whether it needs replaying); neither can make qemu open another file.
//!
//! A differencing disk (the file parameters' `HasParent` bit) is reported
//! with the `relative_path` or `absolute_win32_path` of its parent locator
//! as the backing file; qemu does not open differencing VHDX images, and
//! neither does [`super::check`].
//!
//! Layout: Microsoft "VHDX Format Specification" 1.0; qemu `block/vhdx.c`.

use std::path::PathBuf;

use super::Format;
use super::ImageInfo;
use super::reader::{Src, le16, le32, le64, utf16, windows_path};
use crate::error::Result;
use crate::read_at::ReadAt;

const MIB: u64 = 1 << 20;
const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
const REGION_TABLE_OFFSET: u64 = 192 << 10;
/// The region table and the metadata table are 64 KiB each.
const TABLE_LEN: u64 = 64 << 10;
const MAX_ENTRIES: u64 = 2047;
/// qemu's `VHDX_MAX_IMAGE_SIZE`.
const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// The longest parent locator diskmount reads.
const MAX_LOCATOR: u64 = 64 << 10;

/// A GUID as VHDX stores it: the first three fields little-endian.
const fn guid(a: u32, b: u16, c: u16, d: u64) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    let d = d.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

const REGION_BAT: [u8; 16] = guid(0x2DC2_7766, 0xF623, 0x4200, 0x9D64_115E_9BFD_4A08);
const REGION_METADATA: [u8; 16] = guid(0x8B7C_A206, 0x4790, 0x4B9A, 0xB8FE_575F_050F_886E);
const ITEM_FILE_PARAMETERS: [u8; 16] = guid(0xCAA1_6737, 0xFA36, 0x4D43, 0xB3B6_33F0_AA44_E76B);
const ITEM_VIRTUAL_DISK_SIZE: [u8; 16] = guid(0x2FA5_4224, 0xCD1B, 0x4876, 0xB211_5DBE_D83B_F4B8);
const ITEM_PAGE83: [u8; 16] = guid(0xBECA_12AB, 0xB2E6, 0x4523, 0x93EF_C309_E000_C746);
const ITEM_LOGICAL_SECTOR: [u8; 16] = guid(0x8141_BF1D, 0xA96F, 0x4709, 0xBA47_F233_A8FA_AB5F);
const ITEM_PHYSICAL_SECTOR: [u8; 16] = guid(0xCDA3_48C7, 0x445D, 0x4471, 0x9CC9_E988_5251_C556);
const ITEM_PARENT_LOCATOR: [u8; 16] = guid(0xA8D3_5F2D, 0xB30B, 0x454D, 0xABF7_D3D8_4834_AB0C);
const LOCATOR_VHDX: [u8; 16] = guid(0xB04A_EFB7, 0xD19E, 0x4A81, 0xB789_25B8_E944_5913);

const PARAMS_HAS_PARENT: u32 = 1 << 1;
const REQUIRED: u32 = 1;
const ITEM_REQUIRED: u32 = 1 << 2;

/// Parses and checks the VHDX structures of `src`.
pub(crate) fn inspect<R: ReadAt + ?Sized>(src: &Src<'_, R>) -> Result<ImageInfo> {
    let inconsistent = |why: String| src.refuse(format!("the vhdx image is inconsistent: {why}"));
    if src.size < MIB {
        return Err(src.refuse(format!(
            "the file is too short ({} bytes) for a vhdx image (at least 1 MiB)",
            src.size
        )));
    }
    let ident = src.read(0, 8, "the vhdx file identifier")?;
    if ident != b"vhdxfile" {
        return Err(src.refuse("not a vhdx image: the \"vhdxfile\" identifier is missing"));
    }

    // The current header: a valid signature and the larger sequence number.
    let mut current: Option<Vec<u8>> = None;
    for offset in HEADER_OFFSETS {
        let h = src.read(offset, 80, "a vhdx header")?;
        if &h[..4] == b"head" && current.as_ref().is_none_or(|c| le64(&h, 8) > le64(c, 8)) {
            current = Some(h);
        }
    }
    let Some(h) = current else {
        return Err(inconsistent(
            "neither of its two headers has the \"head\" signature".into(),
        ));
    };
    let version = le16(&h, 66);
    if version != 1 {
        return Err(src.refuse(format!("unsupported vhdx version {version}")));
    }
    let log_length = u64::from(le32(&h, 68));
    let log_offset = le64(&h, 72);
    if !log_length.is_multiple_of(MIB) || !log_offset.is_multiple_of(MIB) {
        return Err(inconsistent(format!(
            "the log (bytes {log_offset}, {log_length} long) is not 1 MiB-aligned"
        )));
    }
    if log_length > 0 {
        src.within(log_offset, log_length, "the log")?;
    }

    // Regions.
    let rt = src.read(REGION_TABLE_OFFSET, TABLE_LEN, "the vhdx region table")?;
    if &rt[..4] != b"regi" {
        return Err(inconsistent(
            "the region table has no \"regi\" signature".into(),
        ));
    }
    let count = u64::from(le32(&rt, 8));
    if count > MAX_ENTRIES {
        return Err(inconsistent(format!(
            "{count} region table entries (at most {MAX_ENTRIES})"
        )));
    }
    let mut regions: Vec<(u64, u64)> = vec![(0, MIB)];
    let mut bat = None;
    let mut metadata = None;
    for i in 0..count as usize {
        let e = &rt[16 + i * 32..16 + (i + 1) * 32];
        let id = &e[..16];
        let offset = le64(e, 16);
        let len = u64::from(le32(e, 24));
        let required = le32(e, 28) & REQUIRED != 0;
        if !offset.is_multiple_of(MIB) || !len.is_multiple_of(MIB) || len == 0 {
            return Err(inconsistent(format!(
                "region {i} (bytes {offset}, {len} long) is not a whole number of 1 MiB blocks"
            )));
        }
        src.within(offset, len, &format!("region {i}"))?;
        let end = offset + len;
        if let Some((from, to)) = regions
            .iter()
            .find(|(from, to)| offset < *to && *from < end)
        {
            return Err(inconsistent(format!(
                "region {i} (bytes {offset}..{end}) overlaps bytes {from}..{to}"
            )));
        }
        regions.push((offset, end));
        if id == REGION_BAT {
            bat = Some((offset, len));
        } else if id == REGION_METADATA {
            metadata = Some((offset, len));
        } else if required {
            return Err(src.refuse(format!(
                "the vhdx image has a required region diskmount does not know (region {i})"
            )));
        }
    }
    let (Some((_, bat_len)), Some((md_offset, md_len))) = (bat, metadata) else {
        return Err(inconsistent(
            "the region table lacks the BAT or the metadata region".into(),
        ));
    };

    // Metadata.
    let mt = src.read(md_offset, TABLE_LEN, "the vhdx metadata table")?;
    if &mt[..8] != b"metadata" {
        return Err(inconsistent(
            "the metadata table has no \"metadata\" signature".into(),
        ));
    }
    let count = u64::from(le16(&mt, 10));
    if count > MAX_ENTRIES {
        return Err(inconsistent(format!(
            "{count} metadata entries (at most {MAX_ENTRIES})"
        )));
    }
    let mut items = Items::default();
    for i in 0..count as usize {
        let e = &mt[32 + i * 32..32 + (i + 1) * 32];
        let id: [u8; 16] = e[..16].try_into().unwrap_or_default();
        let offset = u64::from(le32(e, 16));
        let len = u64::from(le32(e, 20));
        let flags = le32(e, 24);
        if offset.saturating_add(len) > md_len {
            return Err(inconsistent(format!(
                "metadata item {i} (bytes {offset}, {len} long) lies outside the metadata \
                 region"
            )));
        }
        let place = Some((md_offset + offset, len));
        match id {
            ITEM_FILE_PARAMETERS => items.params = place,
            ITEM_VIRTUAL_DISK_SIZE => items.size = place,
            ITEM_LOGICAL_SECTOR => items.logical = place,
            ITEM_PARENT_LOCATOR => items.parent = place,
            ITEM_PAGE83 | ITEM_PHYSICAL_SECTOR => {}
            _ if flags & ITEM_REQUIRED != 0 => {
                return Err(src.refuse(format!(
                    "the vhdx image has a required metadata item diskmount does not know \
                     (item {i})"
                )));
            }
            _ => {}
        }
    }
    let item = |place: Option<(u64, u64)>, len: u64, what: &str| -> Result<Vec<u8>> {
        match place {
            Some((offset, l)) if l >= len => src.read(offset, len, what),
            _ => Err(inconsistent(format!("{what} is missing or too short"))),
        }
    };
    let params = item(items.params, 8, "the file parameters item")?;
    let block_size = u64::from(le32(&params, 0));
    let has_parent = le32(&params, 4) & PARAMS_HAS_PARENT != 0;
    let size = le64(&item(items.size, 8, "the virtual disk size item")?, 0);
    let logical = u64::from(le32(
        &item(items.logical, 4, "the logical sector size item")?,
        0,
    ));
    if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
        return Err(inconsistent(format!(
            "block size {block_size} is not a power of two between 1 MiB and 256 MiB"
        )));
    }
    if logical != 512 && logical != 4096 {
        return Err(inconsistent(format!(
            "logical sector size {logical} is neither 512 nor 4096"
        )));
    }
    if size > MAX_VIRTUAL_SIZE {
        return Err(inconsistent(format!(
            "a virtual size of {size} bytes is more than VHDX allows ({MAX_VIRTUAL_SIZE})"
        )));
    }
    // The BAT: one entry per data block, plus one sector bitmap entry per
    // chunk (interleaved, or for every chunk of a differencing disk).
    let chunk_ratio = (1u64 << 23) * logical / block_size;
    let data_blocks = size.div_ceil(block_size);
    let bitmap_blocks = data_blocks.div_ceil(chunk_ratio);
    let bat_entries = if has_parent {
        bitmap_blocks * (chunk_ratio + 1)
    } else {
        data_blocks + data_blocks.saturating_sub(1) / chunk_ratio
    };
    if bat_entries * 8 > bat_len {
        return Err(inconsistent(format!(
            "its BAT region ({bat_len} bytes) is too small for {bat_entries} entries"
        )));
    }

    let mut info = ImageInfo::new(Format::Vhdx, size);
    if has_parent {
        let Some((offset, len)) = items.parent else {
            return Err(inconsistent(
                "a differencing disk without a parent locator".into(),
            ));
        };
        if len > MAX_LOCATOR {
            return Err(inconsistent(format!(
                "a parent locator of {len} bytes (paths are shorter than {MAX_LOCATOR})"
            )));
        }
        let locator = src.read(offset, len, "the vhdx parent locator")?;
        let Some(parent) = parent_path(&locator) else {
            return Err(src.refuse(
                "a differencing vhdx image whose parent cannot be read from its locator; \
                 neither qemu nor diskmount supports it",
            ));
        };
        info.backing_file = Some(parent);
        info.backing_format = Some("vhdx".to_string());
    }
    Ok(info)
}

#[derive(Default)]
struct Items {
    params: Option<(u64, u64)>,
    size: Option<(u64, u64)>,
    logical: Option<(u64, u64)>,
    parent: Option<(u64, u64)>,
}

/// The parent path of a VHDX parent locator: `relative_path`, else
/// `absolute_win32_path`.
fn parent_path(locator: &[u8]) -> Option<PathBuf> {
    if locator.get(..16)? != LOCATOR_VHDX {
        return None;
    }
    let count = usize::from(le16(locator, 18));
    let mut relative = None;
    let mut absolute = None;
    for i in 0..count {
        let e = locator.get(20 + i * 12..20 + (i + 1) * 12)?;
        let key_offset = le32(e, 0) as usize;
        let value_offset = le32(e, 4) as usize;
        let key_len = usize::from(le16(e, 8));
        let value_len = usize::from(le16(e, 10));
        let key = locator.get(key_offset..key_offset.checked_add(key_len)?)?;
        let value = locator.get(value_offset..value_offset.checked_add(value_len)?)?;
        match utf16(key, false).as_str() {
            "relative_path" => relative = Some(utf16(value, false)),
            "absolute_win32_path" => absolute = Some(utf16(value, false)),
            _ => {}
        }
    }
    relative
        .into_iter()
        .chain(absolute)
        .find(|p| !p.is_empty())
        .map(|p| windows_path(&p))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;

    const IMG: &str = "/images/disk.vhdx";

    fn put(b: &mut [u8], off: u64, bytes: &[u8]) {
        b[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    }

    /// A 3 MiB dynamic image laid out as qemu writes one: log at 1 MiB,
    /// BAT at 2 MiB, metadata at 3 MiB.
    pub(crate) fn image() -> Vec<u8> {
        let mut b = vec![0u8; 4 << 20];
        put(&mut b, 0, b"vhdxfile");
        for (i, off) in HEADER_OFFSETS.into_iter().enumerate() {
            put(&mut b, off, b"head");
            put(&mut b, off + 8, &(i as u64 + 1).to_le_bytes());
            put(&mut b, off + 66, &1u16.to_le_bytes());
            put(&mut b, off + 68, &(MIB as u32).to_le_bytes());
            put(&mut b, off + 72, &MIB.to_le_bytes());
        }
        let rt = REGION_TABLE_OFFSET;
        put(&mut b, rt, b"regi");
        put(&mut b, rt + 8, &2u32.to_le_bytes());
        put(&mut b, rt + 16, &REGION_BAT);
        put(&mut b, rt + 32, &(2 * MIB).to_le_bytes());
        put(&mut b, rt + 40, &(MIB as u32).to_le_bytes());
        put(&mut b, rt + 44, &1u32.to_le_bytes());
        put(&mut b, rt + 48, &REGION_METADATA);
        put(&mut b, rt + 64, &(3 * MIB).to_le_bytes());
        put(&mut b, rt + 72, &(MIB as u32).to_le_bytes());
        put(&mut b, rt + 76, &1u32.to_le_bytes());
        let md = 3 * MIB;
        put(&mut b, md, b"metadata");
        put(&mut b, md + 10, &3u16.to_le_bytes());
        let items: [([u8; 16], u32, &[u8]); 3] = [
            (ITEM_FILE_PARAMETERS, 0x10000, &[0, 0, 0x80, 0, 0, 0, 0, 0]),
            (ITEM_VIRTUAL_DISK_SIZE, 0x10008, &(3 * MIB).to_le_bytes()),
            (ITEM_LOGICAL_SECTOR, 0x10010, &512u32.to_le_bytes()),
        ];
        for (i, (id, offset, value)) in items.into_iter().enumerate() {
            let e = md + 32 + i as u64 * 32;
            put(&mut b, e, &id);
            put(&mut b, e + 16, &offset.to_le_bytes());
            put(&mut b, e + 20, &(value.len() as u32).to_le_bytes());
            put(&mut b, e + 24, &ITEM_REQUIRED.to_le_bytes());
            put(&mut b, md + u64::from(offset), value);
        }
        b
    }

    fn inspect_bytes(b: &[u8]) -> Result<ImageInfo> {
        inspect(&Src::new(b, Path::new(IMG)).unwrap())
    }

    #[track_caller]
    fn refused(b: &[u8], words: &[&str]) {
        crate::format::testing::assert_refused(inspect_bytes(b), IMG, words);
    }

    #[test]
    fn guids_are_stored_mixed_endian() {
        assert_eq!(
            REGION_BAT,
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
    }

    #[test]
    fn a_dynamic_image() {
        let info = inspect_bytes(&image()).unwrap();
        assert_eq!(info.virtual_size, 3 * MIB);
        assert_eq!(info.backing_file, None);
    }

    #[test]
    fn headers() {
        let mut b = image();
        put(&mut b, 64 << 10, b"xxxx");
        inspect_bytes(&b).unwrap();
        put(&mut b, 128 << 10, b"xxxx");
        refused(&b, &["head"]);
        let mut b = image();
        put(&mut b, (128 << 10) + 66, &2u16.to_le_bytes());
        refused(&b, &["version 2"]);
        let mut b = image();
        put(&mut b, (128 << 10) + 72, &(100 * MIB).to_le_bytes());
        refused(&b, &["the log", "beyond the end"]);
        refused(&image()[..4096], &["too short"]);
        let mut b = image();
        b[0] = b'V';
        refused(&b, &["vhdxfile"]);
    }

    #[test]
    fn regions() {
        let rt = REGION_TABLE_OFFSET;
        let mut b = image();
        put(&mut b, rt + 8, &5000u32.to_le_bytes());
        refused(&b, &["5000 region table entries"]);
        let mut b = image();
        put(&mut b, rt + 64, &(2 * MIB).to_le_bytes());
        refused(&b, &["overlaps"]);
        let mut b = image();
        put(&mut b, rt + 64, &(1000 * MIB).to_le_bytes());
        refused(&b, &["region 1", "beyond the end"]);
        let mut b = image();
        put(&mut b, rt + 32, &(2 * MIB + 512).to_le_bytes());
        refused(&b, &["1 MiB"]);
        let mut b = image();
        put(&mut b, rt + 16, &[0xAB; 16]);
        refused(&b, &["required region"]);
        put(&mut b, rt + 44, &0u32.to_le_bytes());
        refused(&b, &["lacks the BAT"]);
    }

    #[test]
    fn metadata() {
        let md = 3 * MIB;
        let mut b = image();
        put(&mut b, md + 32 + 20, &(MIB as u32).to_le_bytes());
        refused(&b, &["outside the metadata region"]);
        let mut b = image();
        put(&mut b, md + 32 + 32, &[0xCD; 16]);
        refused(&b, &["required metadata item"]);
        put(&mut b, md + 32 + 32 + 24, &0u32.to_le_bytes());
        refused(&b, &["virtual disk size item is missing"]);
        let mut b = image();
        put(&mut b, md + 0x10008, &u64::MAX.to_le_bytes());
        refused(&b, &["more than VHDX allows"]);
        let mut b = image();
        put(&mut b, md + 0x10008, &(60u64 << 40).to_le_bytes());
        refused(&b, &["BAT region"]);
        let mut b = image();
        put(&mut b, md + 0x10000, &1000u32.to_le_bytes());
        refused(&b, &["block size 1000"]);
        let mut b = image();
        put(&mut b, md + 0x10010, &1000u32.to_le_bytes());
        refused(&b, &["logical sector size 1000"]);
        let mut b = image();
        put(&mut b, md + 10, &u16::MAX.to_le_bytes());
        refused(&b, &["65535 metadata entries"]);
    }

    fn utf16le(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn differencing_images_name_their_parent() {
        let md = 3 * MIB;
        let mut b = image();
        put(&mut b, md + 0x10004, &PARAMS_HAS_PARENT.to_le_bytes());
        refused(&b, &["without a parent locator"]);
        // A locator at 0x20000 in the metadata region.
        let key = utf16le("relative_path");
        let value = utf16le("..\\base.vhdx");
        let mut loc = LOCATOR_VHDX.to_vec();
        loc.extend(0u16.to_le_bytes());
        loc.extend(1u16.to_le_bytes());
        let key_at = 20 + 12;
        let value_at = key_at + key.len();
        loc.extend((key_at as u32).to_le_bytes());
        loc.extend((value_at as u32).to_le_bytes());
        loc.extend((key.len() as u16).to_le_bytes());
        loc.extend((value.len() as u16).to_le_bytes());
        loc.extend(&key);
        loc.extend(&value);
        put(&mut b, md + 10, &4u16.to_le_bytes());
        let e = md + 32 + 3 * 32;
        put(&mut b, e, &ITEM_PARENT_LOCATOR);
        put(&mut b, e + 16, &0x20000u32.to_le_bytes());
        put(&mut b, e + 20, &(loc.len() as u32).to_le_bytes());
        put(&mut b, md + 0x20000, &loc);
        let info = inspect_bytes(&b).unwrap();
        assert_eq!(info.backing_file, Some(PathBuf::from("../base.vhdx")));
        // An unknown locator type, or keys outside the item.
        put(&mut b, md + 0x20000, &[0; 16]);
        refused(&b, &["parent cannot be read"]);
        put(&mut b, md + 0x20000, &LOCATOR_VHDX);
        put(&mut b, md + 0x20000 + 20, &u32::MAX.to_le_bytes());
        refused(&b, &["parent cannot be read"]);
    }
}

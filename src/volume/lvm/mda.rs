//! A metadata area: its 512-byte header (checksum, magic
//! `" LVM2 x[5A%r0N*>"`, version, where the area is, and the raw locations
//! of the metadata text), and the text itself, which sits in a circular
//! buffer after the header and may wrap around its end.
//!
//! Header layout (little-endian), from the start of the area:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | checksum of bytes 4..512 |
//! | 4..20 | magic |
//! | 20..24 | version (1) |
//! | 24..32 | where the area starts on the PV (bytes) |
//! | 32..40 | its size (bytes) |
//! | 40.. | raw locations: offset from the area start, size, checksum of the text, flags (u64, u64, u32, u32) |
//!
//! The first raw location is the committed metadata; an offset of 0 means
//! the area holds none, flag 1 that it is ignored (`pvchange
//! --metadataignore`).

use super::label::Area;
use super::{Disk, ReadAt, Result, crc};

/// The size of the header at the start of each metadata area.
pub const HEADER_SIZE: u64 = 512;

/// The magic of a metadata area header.
pub const MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";

/// The longest metadata text diskmount reads (LVM2's default area holds
/// less than 1 MiB).
pub const MAX_TEXT: u64 = 4 << 20;

/// The raw location flag of an ignored metadata area.
const RAW_LOCN_IGNORED: u32 = 1;

/// The committed metadata text of the area, with its trailing NUL bytes
/// removed: `None` when the area holds none or is ignored.
pub(crate) fn read_text<R: ReadAt + ?Sized>(
    disk: &Disk<'_, R>,
    area: Area,
    index: usize,
) -> Result<Option<Vec<u8>>> {
    let at = |what: &str| {
        format!(
            "LVM2 metadata area {index} (at byte {}): {what}",
            area.offset
        )
    };
    if area.size <= HEADER_SIZE {
        return Err(disk.refuse(at(&format!(
            "it is {} bytes long, too short for its header",
            area.size
        ))));
    }
    disk.within(area.offset, area.size, &at("the area"))?;
    let mut h = [0u8; HEADER_SIZE as usize];
    disk.read_exact(&mut h, area.offset, &at("the header"))?;
    let u32_at = |p: usize| u32::from_le_bytes(h[p..p + 4].try_into().expect("4 bytes"));
    let u64_at = |p: usize| u64::from_le_bytes(h[p..p + 8].try_into().expect("8 bytes"));
    if &h[4..20] != MAGIC {
        return Err(disk.refuse(at("no metadata area header (wrong magic)")));
    }
    let (stored, actual) = (u32_at(0), crc::crc(crc::INITIAL, &h[4..]));
    if stored != actual {
        return Err(disk.refuse(at(&format!(
            "the header's checksum is wrong (stored {stored:#010x}, computed {actual:#010x}): \
             it is corrupt"
        ))));
    }
    if u32_at(20) != 1 {
        return Err(disk.refuse(at(&format!(
            "unknown header version {} (diskmount reads version 1)",
            u32_at(20)
        ))));
    }
    if u64_at(24) != area.offset {
        return Err(disk.refuse(at(&format!(
            "the header says the area starts at byte {}",
            u64_at(24)
        ))));
    }
    let size = u64_at(32);
    if size <= HEADER_SIZE || size > area.size {
        return Err(disk.refuse(at(&format!(
            "the header gives a size of {size} bytes for an area of {}",
            area.size
        ))));
    }
    let (offset, len, checksum, flags) = (u64_at(40), u64_at(48), u32_at(56), u32_at(60));
    if offset == 0 || len == 0 {
        return Ok(None);
    }
    if flags & RAW_LOCN_IGNORED != 0 {
        return Ok(None);
    }
    if offset < HEADER_SIZE || offset >= size || len > size - HEADER_SIZE || len > MAX_TEXT {
        return Err(disk.refuse(at(&format!(
            "the metadata text (offset {offset}, {len} bytes) does not fit the {size}-byte area"
        ))));
    }
    // The circular buffer: what does not fit before the end continues
    // right after the header.
    let first = len.min(size - offset);
    let mut text = vec![0u8; len as usize];
    let (a, b) = text.split_at_mut(first as usize);
    disk.read_exact(a, area.offset + offset, &at("the metadata text"))?;
    if !b.is_empty() {
        disk.read_exact(
            b,
            area.offset + HEADER_SIZE,
            &at("the wrapped metadata text"),
        )?;
    }
    let actual = crc::crc(crc::INITIAL, &text);
    if checksum != actual {
        return Err(disk.refuse(at(&format!(
            "the metadata text's checksum is wrong (stored {checksum:#010x}, computed \
             {actual:#010x}): it is corrupt"
        ))));
    }
    while text.last() == Some(&0) {
        text.pop();
    }
    Ok(Some(text))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    /// An area of `size` bytes at `start` whose text `text` starts at
    /// `offset` (wrapping where it must), checksums right.
    pub(crate) fn area(start: u64, size: u64, offset: u64, text: &[u8]) -> Vec<u8> {
        let mut a = vec![0u8; size as usize];
        let mut h = [0u8; 512];
        h[4..20].copy_from_slice(MAGIC);
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[24..32].copy_from_slice(&start.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        h[40..48].copy_from_slice(&offset.to_le_bytes());
        h[48..56].copy_from_slice(&(text.len() as u64).to_le_bytes());
        h[56..60].copy_from_slice(&crc::crc(crc::INITIAL, text).to_le_bytes());
        let c = crc::crc(crc::INITIAL, &h[4..]);
        h[..4].copy_from_slice(&c.to_le_bytes());
        a[..512].copy_from_slice(&h);
        for (i, &byte) in text.iter().enumerate() {
            let mut p = offset + i as u64;
            if p >= size {
                p = p - size + 512;
            }
            a[p as usize] = byte;
        }
        a
    }

    fn read(img: &[u8], start: u64, size: u64) -> Result<Option<Vec<u8>>> {
        let disk = Disk::new(img, Path::new("/img"), img.len() as u64);
        read_text(
            &disk,
            Area {
                offset: start,
                size,
            },
            0,
        )
    }

    fn place(start: u64, a: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; start as usize];
        img.extend_from_slice(a);
        img
    }

    #[test]
    fn reads_the_text_and_drops_the_nul() {
        let img = place(4096, &area(4096, 8192, 512, b"vg {\n}\n\0"));
        assert_eq!(read(&img, 4096, 8192).unwrap().unwrap(), b"vg {\n}\n");
    }

    #[test]
    fn reads_text_that_wraps_around_the_end_of_the_buffer() {
        let text: Vec<u8> = (0..1000).map(|i| b'a' + (i % 26) as u8).collect();
        let img = place(4096, &area(4096, 2048, 1500, &text));
        assert_eq!(read(&img, 4096, 2048).unwrap().unwrap(), text);
    }

    #[test]
    fn an_empty_or_ignored_area_holds_nothing() {
        let img = place(0, &area(0, 2048, 0, b""));
        assert_eq!(read(&img, 0, 2048).unwrap(), None);
        let mut img = place(0, &area(0, 2048, 512, b"x"));
        img[60] = 1;
        let c = crc::crc(crc::INITIAL, &img[4..512]);
        img[..4].copy_from_slice(&c.to_le_bytes());
        assert_eq!(read(&img, 0, 2048).unwrap(), None);
    }

    #[test]
    fn corruption_is_a_clear_error() {
        let good = place(0, &area(0, 2048, 512, b"vg {\n}\n"));
        let mut text = good.clone();
        text[514] ^= 0x20;
        let err = read(&text, 0, 2048).unwrap_err().to_string();
        assert!(err.contains("metadata text's checksum is wrong"), "{err}");
        let mut header = good.clone();
        header[33] ^= 1;
        let err = read(&header, 0, 2048).unwrap_err().to_string();
        assert!(err.contains("header's checksum is wrong"), "{err}");
        let mut magic = good.clone();
        magic[5] = b'X';
        assert!(
            read(&magic, 0, 2048)
                .unwrap_err()
                .to_string()
                .contains("wrong magic")
        );
        let err = read(&good[..1000], 0, 2048).unwrap_err().to_string();
        assert!(err.contains("beyond the end"), "{err}");
        let err = read(&good, 0, 100).unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
    }

    #[test]
    fn a_text_larger_than_its_area_is_refused_before_reading() {
        let mut img = place(0, &area(0, 2048, 512, b"x"));
        img[48..56].copy_from_slice(&u64::MAX.to_le_bytes());
        let c = crc::crc(crc::INITIAL, &img[4..512]);
        img[..4].copy_from_slice(&c.to_le_bytes());
        let err = read(&img, 0, 2048).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
    }
}

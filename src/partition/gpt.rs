//! GUID partition tables, read here: both headers checked (signature,
//! size, position, CRC32), the entry array of the one used checked against
//! its CRC32, and every claim bounded before anything is read.
//!
//! A header whose checksum is right can still be crafted: four billion
//! entries, an entry size nothing writes, an array beyond the disk. Such a
//! header is refused like a damaged one, and the other header is used if it
//! is sound. Reads are bounded by [`MAX_ENTRIES`]: two sectors and at most
//! two entry arrays of 2 MiB, read in 16 KiB chunks.
//!
//! (The `gpt` crate read them before: it checks only the checksums, and its
//! byte-at-a-time CRC32 over both 16 KiB entry arrays was most of the cost
//! of reading a table. The CRC32 is crc32fast's.)

use std::path::Path;

use log::warn;

use super::{PartitionInfo, PartitionTable, PartitionType, TableKind};
use crate::error::{Error, Result, Step};
use crate::read_at::ReadAt;

/// The most entries a table may have. UEFI requires room for 128; tools
/// write 128; nothing writes more than a few hundred.
pub const MAX_ENTRIES: u32 = 16384;

/// Discoverable Partitions Specification: the root partition of this
/// architecture.
pub const ROOT_NATIVE: &str = match std::env::consts::ARCH.as_bytes() {
    b"aarch64" => "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
    b"x86" => "44479540-F297-41B2-9AF7-D131D5F0458A",
    b"arm" => "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3",
    b"riscv64" => "72EC70A6-CF74-40E6-BD49-4BDA08E8F224",
    _ => "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
};

/// Discoverable Partitions Specification: the /usr partition of this
/// architecture.
pub const USR_NATIVE: &str = match std::env::consts::ARCH.as_bytes() {
    b"aarch64" => "B0E01050-EE5F-4390-949A-9101B17104E9",
    b"x86" => "75250D76-8CC6-458E-BD66-BD47CC81A812",
    b"arm" => "7D0359A3-02B3-4F0A-865C-654403E70625",
    b"riscv64" => "BEAEC34B-8442-439B-A40B-984381ED097D",
    _ => "8484680C-9521-48C6-9C11-B0720656F69E",
};

/// "Linux filesystem data": the generic Linux partition type.
pub const LINUX_GENERIC: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Common GPT type GUIDs and their names.
const TYPES: [(&str, &str); 15] = [
    (LINUX_GENERIC, "Linux filesystem"),
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
    ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"),
    ("3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "Linux server data"),
    (
        "4D21B016-B534-45C2-A9FB-5C16E091FD2D",
        "Linux variable data",
    ),
    (
        "BC13C2FF-59E6-4262-A352-B275FD6F7172",
        "Linux extended boot",
    ),
    (
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        "Microsoft basic data",
    ),
    (
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "Linux root (x86-64)",
    ),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM64)"),
    ("44479540-F297-41B2-9AF7-D131D5F0458A", "Linux root (x86)"),
    (
        "8484680C-9521-48C6-9C11-B0720656F69E",
        "Linux /usr (x86-64)",
    ),
    ("B0E01050-EE5F-4390-949A-9101B17104E9", "Linux /usr (ARM64)"),
];

/// [`TYPES`]' GUIDs as they are on disk, read as one little-endian
/// number: an entry's type is found by comparing integers, not text.
const TYPE_KEYS: [u128; TYPES.len()] = {
    let mut keys = [0u128; TYPES.len()];
    let mut i = 0;
    while i < TYPES.len() {
        keys[i] = u128::from_le_bytes(guid_bytes(TYPES[i].0));
        i += 1;
    }
    keys
};

/// The 16 bytes GPT stores for the upper-case hyphenated `guid` (the first
/// three fields little-endian). For constants only: it panics on anything
/// else, at compile time.
const fn guid_bytes(guid: &str) -> [u8; 16] {
    const fn hex(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not an upper-case hex digit"),
        }
    }
    let s = guid.as_bytes();
    assert!(s.len() == 36, "not a hyphenated GUID");
    // Where each stored byte's two digits are in the text.
    const AT: [usize; 16] = [6, 4, 2, 0, 11, 9, 16, 14, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = hex(s[AT[i]]) << 4 | hex(s[AT[i] + 1]);
        i += 1;
    }
    out
}

/// A name for common GPT type GUIDs.
pub fn type_name(guid: &str) -> Option<&'static str> {
    TYPES
        .iter()
        .find(|(g, _)| *g == guid)
        .map(|(_, name)| *name)
}

/// [`type_name`] of a type GUID as stored in an entry.
fn stored_type_name(raw: u128) -> Option<&'static str> {
    let i = TYPE_KEYS.iter().position(|&k| k == raw)?;
    Some(TYPES[i].1)
}

/// What a header says, as far as reading the table needs.
#[derive(Debug, Clone, Copy)]
struct Header {
    /// The sector of its entry array.
    part_start: u64,
    /// How many entries the array has.
    num_parts: u32,
    /// The CRC32 of the entry array.
    entries_crc: u32,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Reads the header at `lba` and says why it cannot be used, if it cannot:
/// signature, size, the sector it says it is at, its CRC32 (over its
/// `header_size` bytes with the CRC field zeroed, as UEFI and the kernel
/// have it), the entry size, the number of entries and where their array
/// lies.
fn read_header<R: ReadAt + ?Sized>(
    device: &R,
    sector: u64,
    lba: u64,
    size: u64,
) -> std::result::Result<Header, String> {
    // The largest header_size allowed is one sector.
    let mut sector_bytes = [0u8; 4096];
    let b = &mut sector_bytes[..sector as usize];
    let n = device
        .read_at_most(b, lba * sector)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if n < 92 {
        return Err("the disk ends before it".into());
    }
    if &b[..8] != b"EFI PART" {
        return Err("no \"EFI PART\" signature".into());
    }
    let header_size = le32(b, 12);
    if header_size < 92 || u64::from(header_size) > sector {
        return Err(format!("header size {header_size} is impossible"));
    }
    if header_size as usize > n {
        return Err("the disk ends before it".into());
    }
    let my_lba = le64(b, 24);
    if my_lba != lba {
        return Err(format!("it says it is at sector {my_lba} but is at {lba}"));
    }
    let stored = le32(b, 16);
    b[16..20].fill(0);
    let actual = crc32fast::hash(&b[..header_size as usize]);
    if stored != actual {
        return Err(format!(
            "its checksum is wrong (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    let h = Header {
        part_start: le64(b, 72),
        num_parts: le32(b, 80),
        entries_crc: le32(b, 88),
    };
    let part_size = le32(b, 84);
    if part_size != 128 {
        return Err(format!("entry size {part_size} (only 128 is in use)"));
    }
    if h.num_parts == 0 || h.num_parts > MAX_ENTRIES {
        return Err(format!(
            "it claims {} entries (diskmount reads at most {MAX_ENTRIES})",
            h.num_parts
        ));
    }
    let array_end = h
        .part_start
        .checked_mul(sector)
        .and_then(|s| s.checked_add(u64::from(h.num_parts) * 128));
    if array_end.is_none_or(|end| end > size) {
        return Err(format!(
            "its entry array (sector {}, {} entries) lies beyond the end of the disk",
            h.part_start, h.num_parts
        ));
    }
    Ok(h)
}

/// The sector size the GPT was written for: where its header is (512 if
/// neither header is found).
fn sector_size<R: ReadAt + ?Sized>(device: &R, size: u64, head: &[u8]) -> u64 {
    header_sector_size(device, size, head).unwrap_or(512)
}

/// The sector size of the GPT header found at the start of `device` (`head`
/// holds its first bytes) or, the primary header gone, in its last
/// sector; `None` if there is no GPT header at either place.
fn header_sector_size<R: ReadAt + ?Sized>(device: &R, size: u64, head: &[u8]) -> Option<u64> {
    for s in [512u64, 4096] {
        if head.get(s as usize..s as usize + 8) == Some(b"EFI PART") {
            return Some(s);
        }
    }
    // Primary header gone: look for the backup in the last sector.
    [512u64, 4096].into_iter().find(|&s| {
        let mut sig = [0u8; 8];
        size >= s && device.read_at_most(&mut sig, size - s).ok() == Some(8) && &sig == b"EFI PART"
    })
}

/// The sector size a GPT on `device` was written for (512 or 4096), if it
/// holds one: a loop device must have that logical sector size for the
/// kernel's own partition scan to find the table.
pub(crate) fn written_sector_size<R: ReadAt + ?Sized>(device: &R) -> Option<u64> {
    let mut head = [0u8; 4096 + 8];
    let n = device.read_at_most(&mut head, 0).ok()?;
    header_sector_size(device, device.size().ok()?, &head[..n])
}

/// Reads the GPT of `device` (`size` bytes, first sectors in `head`).
///
/// The primary header (sector 1) is used if it passes [`read_header`], else
/// the backup (the last sector); a used header whose entry array fails its
/// CRC32 gives way to the other header, if that one passed.
pub(crate) fn read<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    size: u64,
    head: &[u8],
) -> Result<PartitionTable> {
    let sector = sector_size(device, size, head);
    let last = (size / sector).saturating_sub(1);
    let primary = read_header(device, sector, 1, size);
    // Sector 0 holds the protective MBR and sector 1 the primary header: a
    // backup needs a third sector.
    let backup = if size / sector < 3 {
        Err("the disk is too small for one".to_string())
    } else {
        read_header(device, sector, last, size)
    };
    let refuse =
        |why: String| Error::invalid_image(Step::Map, path, format!("unusable GPT: {why}"));
    let partitions = match (&primary, &backup) {
        (Err(p), Err(b)) => {
            return Err(refuse(format!("primary header: {p}; backup header: {b}")));
        }
        (Ok(h), backup) => match entries(device, sector, h) {
            Ok(parts) => parts,
            Err(why) => {
                let Ok(b) = backup else {
                    return Err(refuse(format!("primary header: {why}")));
                };
                warn!(
                    "map: {}: primary GPT unusable ({why}); using the backup",
                    path.display()
                );
                entries(device, sector, b)
                    .map_err(|b| refuse(format!("primary header: {why}; backup header: {b}")))?
            }
        },
        (Err(why), Ok(b)) => {
            warn!(
                "map: {}: primary GPT header damaged ({why}); using the backup",
                path.display()
            );
            entries(device, sector, b).map_err(|b| refuse(format!("backup header: {b}")))?
        }
    };
    let partitions = partitions.map_err(refuse)?;
    Ok(PartitionTable {
        kind: TableKind::Gpt,
        sector_size: sector as u32,
        partitions,
    })
}

/// The entry array bytes read at once: the whole of the usual 128 entries.
const CHUNK: usize = 128 * 128;

/// Reads the entry array `h` points to, checks its CRC32, and gives its
/// partitions in use (or, the array being intact, why one of them is
/// impossible). `Err` says why the array cannot be used.
#[allow(clippy::type_complexity)]
fn entries<R: ReadAt + ?Sized>(
    device: &R,
    sector: u64,
    h: &Header,
) -> std::result::Result<std::result::Result<Vec<PartitionInfo>, String>, String> {
    let len = u64::from(h.num_parts) * 128;
    let start = h.part_start * sector;
    // Read in chunks with one buffer: a crafted header's 16384 entries cost
    // 16 KiB of memory, not 2 MiB. The checksum comes first, so an array
    // that fails it is not parsed; the usual 128 entries are one chunk,
    // read once.
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let read = |chunk: &mut [u8], done: u64| {
        let n = device
            .read_at_most(chunk, start + done)
            .map_err(|e| format!("cannot read its entry array: {e}"))?;
        if n < chunk.len() {
            return Err("the disk ends inside its entry array".to_string());
        }
        Ok(())
    };
    let chunk_len = |done: u64| (len - done).min(CHUNK as u64) as usize;
    let mut crc = crc32fast::Hasher::new();
    let mut done = 0u64;
    while done < len {
        let chunk = &mut buf[..chunk_len(done)];
        read(chunk, done)?;
        crc.update(chunk);
        done += chunk.len() as u64;
    }
    let actual = crc.finalize();
    if actual != h.entries_crc {
        return Err(format!(
            "its entry array's checksum is wrong (stored {:#010x}, computed {actual:#010x})",
            h.entries_crc
        ));
    }
    let mut partitions = Vec::new();
    let mut impossible = None;
    let mut done = 0u64;
    while done < len {
        let chunk = &mut buf[..chunk_len(done)];
        if len > CHUNK as u64 {
            read(chunk, done)?;
        }
        for (i, e) in chunk.chunks_exact(128).enumerate() {
            let number = (done / 128) as u32 + i as u32 + 1;
            match entry(number, e, sector) {
                None => {}
                Some(Ok(p)) => partitions.push(p),
                Some(Err(why)) => {
                    impossible.get_or_insert(why);
                }
            }
        }
        done += chunk.len() as u64;
    }
    Ok(match impossible {
        Some(why) => Err(why),
        None => Ok(partitions),
    })
}

/// Entry `number` (128 bytes): `None` if unused (a zero type GUID).
fn entry(number: u32, e: &[u8], sector: u64) -> Option<std::result::Result<PartitionInfo, String>> {
    let raw = u128::from_le_bytes(e[..16].try_into().expect("16 bytes"));
    if raw == 0 {
        return None;
    }
    let (first, last) = (le64(e, 32), le64(e, 40));
    if last < first {
        return Some(Err(format!(
            "partition {number} ends (sector {last}) before it starts (sector {first})"
        )));
    }
    let units = e[56..128]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    let len = units.clone().position(|c| c == 0).unwrap_or(36);
    let name: String = char::decode_utf16(units.take(len))
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    Some(Ok(PartitionInfo {
        number,
        start: first.saturating_mul(sector),
        size: (last - first).saturating_add(1).saturating_mul(sector),
        kind: PartitionType::Gpt {
            name: stored_type_name(raw),
            guid: guid(&e[..16]),
        },
        name: (!name.is_empty()).then_some(name),
    }))
}

/// A GUID as GPT stores it (the first three fields little-endian), in
/// upper-case hyphenated form.
fn guid(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    // The stored byte at each of the text's byte pairs, hyphens between.
    const ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    let mut s = String::with_capacity(36);
    for (i, &at) in ORDER.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(DIGITS[usize::from(b[at] >> 4)] as char);
        s.push(DIGITS[usize::from(b[at] & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::partition::read_table_from;

    const SECTORS: u64 = 2048;

    /// Writes the header at `lba` (entries at `array`, `entries` of them)
    /// over `d`, its CRC32 computed, after `edit`.
    fn header(d: &mut [u8], lba: u64, array: u64, entries: u32, edit: impl Fn(&mut [u8])) {
        let crc = crc32fast::hash(&d[array as usize * 512..][..entries as usize * 128]);
        let h = &mut d[lba as usize * 512..][..512];
        h.fill(0);
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&lba.to_le_bytes());
        h[72..80].copy_from_slice(&array.to_le_bytes());
        h[80..84].copy_from_slice(&entries.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc.to_le_bytes());
        edit(h);
        let size = (le32(h, 12) as usize).clamp(92, 512);
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[..size]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    /// A 1 MiB disk of 512-byte sectors with a GPT of 128 entries, both
    /// copies: entry 1 "esp" at 34..=99, entry 3 "root" at 100..=999.
    fn disk() -> Vec<u8> {
        let mut d = vec![0u8; SECTORS as usize * 512];
        d[510..512].copy_from_slice(&[0x55, 0xAA]);
        d[446 + 4] = 0xEE;
        for array in [2, SECTORS - 33] {
            let e = &mut d[array as usize * 512..];
            for (slot, first, last, name) in [(0usize, 34u64, 99u64, "esp"), (2, 100, 999, "root")]
            {
                let e = &mut e[slot * 128..][..128];
                // 0FC63DAF-8483-4772-8E79-3D69D8477DE4, as GPT stores it.
                e[..16].copy_from_slice(&[
                    0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8,
                    0x47, 0x7D, 0xE4,
                ]);
                e[16] = slot as u8 + 1;
                e[32..40].copy_from_slice(&first.to_le_bytes());
                e[40..48].copy_from_slice(&last.to_le_bytes());
                for (i, c) in name.encode_utf16().enumerate() {
                    e[56 + 2 * i..][..2].copy_from_slice(&c.to_le_bytes());
                }
            }
        }
        header(&mut d, 1, 2, 128, |_| {});
        header(&mut d, SECTORS - 1, SECTORS - 33, 128, |_| {});
        d
    }

    fn read(d: &[u8]) -> Result<PartitionTable> {
        read_table_from(d, Path::new("/img"), d.len() as u64).map(|t| t.expect("a table"))
    }

    fn summary(t: &PartitionTable) -> Vec<(u32, u64, u64, Option<&str>)> {
        t.partitions
            .iter()
            .map(|p| (p.number, p.start, p.size, p.name.as_deref()))
            .collect()
    }

    const WANT: [(u32, u64, u64, Option<&str>); 2] = [
        (1, 34 * 512, 66 * 512, Some("esp")),
        (3, 100 * 512, 900 * 512, Some("root")),
    ];

    /// The stored form of every known type GUID reads back as its text,
    /// and its name is found from either form.
    #[test]
    fn known_type_guids_round_trip() {
        for (text, name) in TYPES {
            let raw = guid_bytes(text);
            assert_eq!(guid(&raw), text);
            assert_eq!(stored_type_name(u128::from_le_bytes(raw)), Some(name));
            assert_eq!(type_name(text), Some(name));
        }
        assert_eq!(type_name("00000000-0000-0000-0000-000000000001"), None);
    }

    #[test]
    fn entries_by_index_with_type_and_name() {
        let t = read(&disk()).unwrap();
        assert_eq!(summary(&t), WANT);
        assert_eq!(
            t.partitions[0].kind,
            PartitionType::Gpt {
                guid: LINUX_GENERIC.into(),
                name: Some("Linux filesystem")
            }
        );
    }

    /// A primary header or entry array that fails its CRC32, or a primary
    /// header gone, gives way to the backup.
    #[test]
    fn the_backup_stands_in_for_a_damaged_primary() {
        let mut d = disk();
        d[512 + 56] ^= 1; // the header, under its checksum
        assert_eq!(summary(&read(&d).unwrap()), WANT);
        let mut d = disk();
        d[2 * 512 + 200] ^= 1; // the primary entry array
        assert_eq!(summary(&read(&d).unwrap()), WANT);
        let mut d = disk();
        d[512..1024].fill(0);
        assert_eq!(summary(&read(&d).unwrap()), WANT);
    }

    #[test]
    fn both_copies_damaged_is_refused_naming_both() {
        let mut d = disk();
        d[2 * 512 + 200] ^= 1;
        d[(SECTORS as usize - 33) * 512 + 200] ^= 1;
        let msg = read(&d).unwrap_err().to_string();
        assert!(
            msg.contains("/img") && msg.contains("unusable GPT"),
            "{msg}"
        );
        assert!(
            msg.contains("primary header: its entry array's checksum is wrong")
                && msg.contains("backup header: its entry array's checksum is wrong"),
            "{msg}"
        );
        let mut d = disk();
        d[512 + 56] ^= 1;
        d[(SECTORS as usize - 1) * 512 + 56] ^= 1;
        let msg = read(&d).unwrap_err().to_string();
        assert!(msg.matches("its checksum is wrong").count() == 2, "{msg}");
    }

    /// The header CRC32 covers `header_size` bytes, as UEFI and the kernel
    /// have it, not only the 92 defined ones.
    #[test]
    fn a_longer_header_is_checked_over_its_size() {
        let mut d = disk();
        header(&mut d, 1, 2, 128, |h| {
            h[12..16].copy_from_slice(&100u32.to_le_bytes());
            h[95] = 7;
        });
        assert_eq!(summary(&read(&d).unwrap()), WANT);
        d[512 + 95] = 8; // beyond 92, inside header_size: the primary fails
        d[(SECTORS as usize - 1) * 512 + 56] ^= 1; // and so does the backup
        let msg = read(&d).unwrap_err().to_string();
        assert!(
            msg.contains("primary header: its checksum is wrong"),
            "{msg}"
        );
    }

    /// Checksums right, claims insane: refused before anything is read.
    #[test]
    fn crafted_headers_are_refused_like_damaged_ones() {
        for (edit, says) in [
            (
                (|h: &mut [u8]| h[80..84].copy_from_slice(&u32::MAX.to_le_bytes()))
                    as fn(&mut [u8]),
                "4294967295 entries",
            ),
            (
                |h: &mut [u8]| h[84..88].copy_from_slice(&256u32.to_le_bytes()),
                "entry size 256",
            ),
            (
                |h: &mut [u8]| h[72..80].copy_from_slice(&(SECTORS - 1).to_le_bytes()),
                "beyond the end of the disk",
            ),
            (
                |h: &mut [u8]| h[24..32].copy_from_slice(&5u64.to_le_bytes()),
                "it says it is at sector 5",
            ),
            (
                |h: &mut [u8]| h[12..16].copy_from_slice(&600u32.to_le_bytes()),
                "header size 600",
            ),
        ] {
            let mut d = disk();
            header(&mut d, 1, 2, 128, edit);
            // The backup alone still serves.
            assert_eq!(summary(&read(&d).unwrap()), WANT, "{says}");
            let last = SECTORS - 1;
            header(&mut d, last, last - 32, 128, edit);
            let msg = read(&d).unwrap_err().to_string();
            assert!(msg.matches(says).count() == 2, "{says}: {msg}");
        }
    }

    #[test]
    fn an_entry_that_ends_before_it_starts_is_refused() {
        let mut d = disk();
        d[2 * 512 + 2 * 128 + 40..][..8].copy_from_slice(&50u64.to_le_bytes());
        header(&mut d, 1, 2, 128, |_| {});
        let msg = read(&d).unwrap_err().to_string();
        assert!(
            msg.contains("partition 3 ends (sector 50) before it starts (sector 100)"),
            "{msg}"
        );
    }

    /// More entries than one read chunk: numbered on across chunks, the
    /// checksum over all of them.
    #[test]
    fn a_large_entry_array_is_read_in_chunks() {
        let mut d = disk();
        let entries = 1024u32; // 128 KiB: sectors 2..258
        let e = &mut d[2 * 512 + 700 * 128..][..128];
        e[..16].fill(0x11);
        e[32..40].copy_from_slice(&1100u64.to_le_bytes());
        e[40..48].copy_from_slice(&1199u64.to_le_bytes());
        // Partition 1 lies at 34..=99, inside this array: move it.
        d[2 * 512 + 32..][..8].copy_from_slice(&1000u64.to_le_bytes());
        d[2 * 512 + 40..][..8].copy_from_slice(&1099u64.to_le_bytes());
        header(&mut d, 1, 2, entries, |_| {});
        let t = read(&d).unwrap();
        let got: Vec<(u32, u64)> = t.partitions.iter().map(|p| (p.number, p.start)).collect();
        assert_eq!(got, [(1, 1000 * 512), (3, 100 * 512), (701, 1100 * 512)]);
    }
}

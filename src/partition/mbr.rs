//! MBR (MS-DOS) partition tables: the four entries of sector 0 and the
//! chain of extended boot records (EBRs) that holds the logical partitions.
//!
//! Numbering follows the kernel: primaries 1-4 by slot (empty slots keep
//! their number), logical partitions from 5 in the order of the EBR chain.
//! The extended container itself is not a partition one can mount and is
//! left out.
//!
//! Read here rather than with a crate: the table is two 16-byte entry
//! formats, and a crafted one must cost bounded time and never panic. All
//! sector arithmetic is in u64 (a logical partition's start is relative to
//! its EBR, which may push it past sector 2^32), and the chain must move
//! forward (as the kernel and mbrman require) for at most [`MAX_LOGICAL`]
//! records.

use std::path::Path;

use super::{PartitionInfo, PartitionTable, PartitionType, TableKind};
use crate::error::{Error, Result, Step};
use crate::read_at::ReadAt;

/// The longest EBR chain read: the kernel makes at most 256 partitions of
/// a disk.
pub const MAX_LOGICAL: usize = 256;

/// A name for common MBR system ids.
pub fn type_name(id: u8) -> Option<&'static str> {
    Some(match id {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0e => "FAT16",
        0x05 | 0x0f | 0x85 => "Extended",
        0x07 => "NTFS/exFAT",
        0x0b | 0x0c => "FAT32",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xee => "GPT protective",
        0xef => "EFI System",
        0xfd => "Linux RAID",
        _ => return None,
    })
}

/// One 16-byte partition entry.
#[derive(Debug, Clone, Copy)]
struct Entry {
    sys: u8,
    start: u64,
    sectors: u64,
}

impl Entry {
    /// Entry `slot` (0-3) of the boot record `sector`.
    fn parse(sector: &[u8; 512], slot: usize) -> Entry {
        let e = &sector[446 + slot * 16..][..16];
        let le32 = |o: usize| u64::from(u32::from_le_bytes(e[o..o + 4].try_into().expect("4")));
        Entry {
            sys: e[4],
            start: le32(8),
            sectors: le32(12),
        }
    }

    fn is_used(self) -> bool {
        self.sys != 0
    }

    fn is_extended(self) -> bool {
        matches!(self.sys, 0x05 | 0x0f | 0x85 | 0xc5)
    }

    fn info(self, number: u32, start: u64) -> PartitionInfo {
        PartitionInfo {
            number,
            start: start * 512,
            size: self.sectors * 512,
            kind: PartitionType::Mbr {
                id: self.sys,
                name: type_name(self.sys),
            },
            name: None,
        }
    }
}

/// The boot record at `sector`, if the disk holds one there (the whole
/// sector, ending in the 0x55 0xAA signature).
fn boot_record<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    size: u64,
    sector: u64,
) -> Result<Option<[u8; 512]>> {
    let mut b = [0u8; 512];
    if sector.saturating_add(1).saturating_mul(512) > size {
        return Ok(None);
    }
    let n = device.read_at_most(&mut b, sector * 512).map_err(|e| {
        Error::os(
            Step::Map,
            path,
            format!("read boot record at sector {sector}"),
            e,
        )
    })?;
    Ok((n == 512 && b[510..] == [0x55, 0xAA]).then_some(b))
}

/// Reads the MBR of `device` (`size` bytes).
pub(crate) fn read<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    size: u64,
) -> Result<PartitionTable> {
    let refuse = |why: String| {
        Error::invalid_image(
            Step::Map,
            path,
            format!("cannot read the MBR partition table: {why}"),
        )
    };
    let mbr = boot_record(device, path, size, 0)?
        .ok_or_else(|| refuse("sector 0 is not a boot record".into()))?;
    let primaries: Vec<Entry> = (0..4).map(|slot| Entry::parse(&mbr, slot)).collect();
    let mut partitions = Vec::new();
    for (slot, e) in primaries.iter().enumerate() {
        if e.is_used() && e.start == 0 {
            return Err(refuse(format!(
                "partition {} starts at sector 0, over the partition table itself",
                slot + 1
            )));
        }
        if e.is_used() && !e.is_extended() {
            partitions.push(e.info(slot as u32 + 1, e.start));
        }
    }
    // The logical partitions: the chain of the first extended partition.
    // Each EBR holds a logical partition (relative to the EBR) and a link
    // to the next EBR (relative to the extended partition); a second entry
    // that is not an extended one, or starts at 0, ends the chain (as in
    // the kernel).
    let Some(extended) = primaries.iter().find(|e| e.is_extended()) else {
        return Ok(table(partitions));
    };
    let mut number = 5;
    let mut relative = 0;
    for _ in 0..MAX_LOGICAL {
        let at = extended.start + relative;
        let Some(ebr) = boot_record(device, path, size, at)? else {
            if relative == 0 {
                // An empty extended partition need not hold an EBR.
                return Ok(table(partitions));
            }
            return Err(refuse(format!(
                "the extended boot record at sector {at} is missing or unsigned"
            )));
        };
        let (logical, next) = (Entry::parse(&ebr, 0), Entry::parse(&ebr, 1));
        if logical.is_used() && !logical.is_extended() {
            partitions.push(logical.info(number, at + logical.start));
            number += 1;
        }
        if !next.is_extended() || next.start == 0 {
            return Ok(table(partitions));
        }
        if next.start <= relative {
            return Err(refuse(format!(
                "inconsistent extended boot record: the one at sector {at} points back to \
                 sector {} (the chain would loop)",
                extended.start + next.start
            )));
        }
        relative = next.start;
    }
    Err(refuse(format!(
        "the chain of extended boot records is longer than {MAX_LOGICAL}"
    )))
}

fn table(partitions: Vec<PartitionInfo>) -> PartitionTable {
    PartitionTable {
        kind: TableKind::Mbr,
        sector_size: 512,
        partitions,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::partition::read_table_from;

    /// A 4 MiB disk of zeros with an MBR signature and these entries
    /// (slot, type, start, sectors).
    fn disk(entries: &[(usize, u8, u32, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 4 << 20];
        for &(slot, ty, start, sectors) in entries {
            put(&mut d, 0, slot, ty, start, sectors);
        }
        d
    }

    /// Entry `slot` (0-3) of the boot record at sector `sector`.
    fn put(d: &mut [u8], sector: usize, slot: usize, ty: u8, start: u32, sectors: u32) {
        let e = &mut d[sector * 512 + 446 + slot * 16..][..16];
        e[4] = ty;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
        d[sector * 512 + 510..][..2].copy_from_slice(&[0x55, 0xAA]);
    }

    /// Found by fuzzing (partition_table): an entry in use that starts at
    /// sector 0 made mbrman (the crate that read MBRs then) unwrap `None`
    /// in its alignment search and panic.
    #[test]
    fn a_partition_at_sector_zero_is_refused() {
        let d = disk(&[(0, 0x83, 0, 100)]);
        let err = read_table_from(&d[..], Path::new("/img"), d.len() as u64).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/img") && msg.contains("sector 0"), "{msg}");
    }

    /// A logical partition whose start, relative to its EBR, runs past
    /// sector 2^32 - 1 overflowed the u32 sum mbrman made of the two.
    #[test]
    fn a_logical_partition_past_sector_2_pow_32_is_refused() {
        let mut d = disk(&[(0, 0x05, 2048, 4096)]);
        put(&mut d, 2048, 0, 0x83, u32::MAX - 100, 10);
        let err = read_table_from(&d[..], Path::new("/img"), d.len() as u64).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/img") && msg.contains("partition 5 (bytes"),
            "{msg}"
        );
        assert!(msg.contains("past the end"), "{msg}");
    }

    /// Logical partitions are numbered from 5 along the chain, at their
    /// EBR plus their relative start; a link that is not an extended entry
    /// ends the chain.
    #[test]
    fn logical_partitions_along_the_chain() {
        let mut d = disk(&[(0, 0x83, 64, 64), (1, 0x05, 2048, 4096)]);
        put(&mut d, 2048, 0, 0x83, 1, 100);
        put(&mut d, 2048, 1, 0x05, 200, 300);
        put(&mut d, 2248, 0, 0x83, 1, 100);
        put(&mut d, 2248, 1, 0x00, 400, 300);
        put(&mut d, 2448, 0, 0x83, 1, 100);
        let t = read_table_from(&d[..], Path::new("/img"), d.len() as u64)
            .unwrap()
            .unwrap();
        let got: Vec<(u32, u64)> = t.partitions.iter().map(|p| (p.number, p.start)).collect();
        assert_eq!(got, [(1, 64 * 512), (5, 2049 * 512), (6, 2249 * 512)]);
    }
}

//! MBR (MS-DOS) partition tables, read with the `mbrman` crate.
//!
//! Numbering follows the kernel: primaries 1-4 by slot (empty slots keep
//! their number), logical partitions from 5 in the order of the EBR chain.
//! The extended container itself is not a partition one can mount and is
//! left out.

use std::path::Path;

use super::reader::TableReader;
use super::{PartitionInfo, PartitionTable, PartitionType, TableKind};
use crate::error::{Error, Result, Step};
use crate::format::ReadAt;

/// The most an MBR read may consume: the sector and a chain of 256 EBRs
/// (each read as one sector), as far as the kernel follows one.
const BUDGET: u64 = 512 * 260;

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

/// Reads the MBR of `device` (`size` bytes).
pub(crate) fn read<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    size: u64,
) -> Result<PartitionTable> {
    let mut reader = TableReader::new(device, size, BUDGET);
    let mbr = mbrman::MBR::read_from(&mut reader, 512).map_err(|e| {
        Error::invalid(
            Step::Map,
            path,
            format!("cannot read the MBR partition table: {e}"),
        )
    })?;
    let partitions = mbr
        .iter()
        .filter(|(_, p)| p.is_used() && !p.is_extended())
        .map(|(n, p)| PartitionInfo {
            number: n as u32,
            start: u64::from(p.starting_lba) * 512,
            size: u64::from(p.sectors) * 512,
            kind: PartitionType::Mbr {
                id: p.sys,
                name: type_name(p.sys),
            },
            name: None,
        })
        .collect();
    Ok(PartitionTable {
        kind: TableKind::Mbr,
        sector_size: 512,
        partitions,
    })
}

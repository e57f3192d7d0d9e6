//! GUID partition tables, read with the `gpt` crate.
//!
//! The crate trusts a header whose checksum is right; a crafted one can
//! still claim four billion entries or an entry size it does not handle.
//! So both headers are checked for sanity here first, an insane one is
//! hidden from the crate (it reads zeros there and falls back to the other),
//! and every read goes through a byte budget.

use std::path::Path;

use log::warn;

use super::reader::TableReader;
use super::{PartitionInfo, PartitionTable, PartitionType, TableKind};
use crate::error::{Error, Result, Step};
use crate::read_at::ReadAt;

/// The most entries a table may have. UEFI requires room for 128; tools
/// write 128; nothing writes more than a few hundred.
pub const MAX_ENTRIES: u32 = 16384;

/// Headers plus the entry array read twice (the crate checks its CRC).
const BUDGET: u64 = 4 * 4096 + 2 * MAX_ENTRIES as u64 * 128;

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

/// A name for common GPT type GUIDs.
pub fn type_name(guid: &str) -> Option<&'static str> {
    Some(match guid {
        LINUX_GENERIC => "Linux filesystem",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        "3B8F8425-20E0-4F3B-907F-1A25A76F98E8" => "Linux server data",
        "4D21B016-B534-45C2-A9FB-5C16E091FD2D" => "Linux variable data",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE" => "Linux root (ARM64)",
        "44479540-F297-41B2-9AF7-D131D5F0458A" => "Linux root (x86)",
        "8484680C-9521-48C6-9C11-B0720656F69E" => "Linux /usr (x86-64)",
        "B0E01050-EE5F-4390-949A-9101B17104E9" => "Linux /usr (ARM64)",
        _ => return None,
    })
}

/// What a header says about the entry array, as far as sanity needs.
struct HeaderFields {
    my_lba: u64,
    part_start: u64,
    num_parts: u32,
    part_size: u32,
    header_size: u32,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Reads the header at `lba` and says why it cannot be used, if it cannot.
/// (Its checksum is the crate's to check.)
fn check_header<R: ReadAt + ?Sized>(
    device: &R,
    sector: u64,
    lba: u64,
    size: u64,
) -> std::result::Result<(), String> {
    let mut b = [0u8; 92];
    let n = device
        .read_at_most(&mut b, lba * sector)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if n < b.len() {
        return Err("the disk ends before it".into());
    }
    if &b[..8] != b"EFI PART" {
        return Err("no \"EFI PART\" signature".into());
    }
    let h = HeaderFields {
        header_size: le32(&b, 12),
        my_lba: le64(&b, 24),
        part_start: le64(&b, 72),
        num_parts: le32(&b, 80),
        part_size: le32(&b, 84),
    };
    if h.header_size < 92 || u64::from(h.header_size) > sector {
        return Err(format!("header size {} is impossible", h.header_size));
    }
    if h.my_lba != lba {
        return Err(format!(
            "it says it is at sector {} but is at {lba}",
            h.my_lba
        ));
    }
    if h.part_size != 128 {
        return Err(format!("entry size {} (only 128 is in use)", h.part_size));
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
    Ok(())
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
pub(crate) fn read<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    size: u64,
    head: &[u8],
) -> Result<PartitionTable> {
    let sector = sector_size(device, size, head);
    let last = (size / sector).saturating_sub(1);
    let primary = check_header(device, sector, 1, size);
    let backup = check_header(device, sector, last, size);
    let refuse =
        |why: String| Error::invalid_image(Step::Map, path, format!("unusable GPT: {why}"));
    if let (Err(p), Err(b)) = (&primary, &backup) {
        return Err(refuse(format!("primary header: {p}; backup header: {b}")));
    }
    let primary_range = sector..2 * sector;
    let backup_range = last * sector..(last + 1) * sector;
    let lb = if sector == 4096 {
        gpt::disk::LogicalBlockSize::Lb4096
    } else {
        gpt::disk::LogicalBlockSize::Lb512
    };
    let open = |hide_primary: bool| {
        let mut reader = TableReader::new(device, size, BUDGET);
        if hide_primary || primary.is_err() {
            reader = reader.hide(primary_range.clone());
        }
        if backup.is_err() {
            reader = reader.hide(backup_range.clone());
        }
        gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(lb)
            .open_from_device(reader)
    };
    let disk = match open(false) {
        Ok(d) => d,
        // The primary header passed, but its entry array did not: the backup
        // has its own copy.
        Err(e) if primary.is_ok() && backup.is_ok() => {
            warn!(
                "map: {}: primary GPT unusable ({e}); using the backup",
                path.display()
            );
            open(true).map_err(|e| refuse(e.to_string()))?
        }
        Err(e) => return Err(refuse(e.to_string())),
    };
    if let Err(why) = &primary {
        warn!(
            "map: {}: primary GPT header damaged ({why}); using the backup",
            path.display()
        );
    } else if disk.primary_header().is_err() {
        warn!(
            "map: {}: primary GPT header fails its checksum; using the backup",
            path.display()
        );
    }
    let mut partitions = Vec::new();
    for (&number, p) in disk.partitions() {
        if !p.is_used() {
            continue;
        }
        if p.last_lba < p.first_lba {
            return Err(refuse(format!(
                "partition {number} ends (sector {}) before it starts (sector {})",
                p.last_lba, p.first_lba
            )));
        }
        let guid = p
            .part_type_guid
            .guid
            .hyphenated()
            .to_string()
            .to_uppercase();
        let name = type_name(&guid);
        partitions.push(PartitionInfo {
            number,
            start: p.first_lba.saturating_mul(sector),
            size: (p.last_lba - p.first_lba + 1).saturating_mul(sector),
            kind: PartitionType::Gpt { guid, name },
            name: (!p.name.is_empty()).then(|| p.name.clone()),
        });
    }
    Ok(PartitionTable {
        kind: TableKind::Gpt,
        sector_size: sector as u32,
        partitions,
    })
}

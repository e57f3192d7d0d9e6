//! The identifiers an fstab names filesystems and partitions by, read from
//! the image's own bytes: a filesystem's UUID from its superblock
//! (`UUID=`), a partition's unique id from its table (`PARTUUID=`). Pure
//! and bounded: a few fixed-size reads, nothing followed.

use crate::fs::FsType;
use crate::partition::{PartitionInfo, PartitionTable, TableKind};
use crate::read_at::ReadAt;

/// `len` bytes at `offset` of `device`, or `None` if fewer are there.
fn bytes<R: ReadAt + ?Sized>(device: &R, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = device.read_at_most(&mut buf, offset).ok()?;
    (n == len).then_some(buf)
}

/// A 16-byte UUID stored in byte order (ext4, xfs, btrfs), as blkid
/// prints it: lower case, 8-4-4-4-12.
fn uuid_bytes(b: &[u8]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// A GPT GUID (first three fields little-endian), lower case.
fn guid(b: &[u8]) -> String {
    let mut v = b.to_vec();
    v[0..4].reverse();
    v[4..6].reverse();
    v[6..8].reverse();
    uuid_bytes(&v)
}

/// The UUID of the `fstype` filesystem in the `size` bytes of `device`
/// from `start`, as `UUID=` and `/dev/disk/by-uuid/` name it; `None` for a
/// type without one here or a superblock too short.
pub(crate) fn fs_uuid<R: ReadAt + ?Sized>(
    device: &R,
    start: u64,
    size: u64,
    fstype: FsType,
) -> Option<String> {
    let (at, len) = match fstype {
        FsType::Ext2 | FsType::Ext3 | FsType::Ext4 => (1024 + 0x68, 16),
        FsType::Xfs => (32, 16),
        FsType::Btrfs => (0x10000 + 0x20, 16),
        FsType::Vfat => (0, 0x5a),
        _ => return None,
    };
    if at + len as u64 > size {
        return None;
    }
    let b = bytes(device, start + at, len)?;
    if fstype == FsType::Vfat {
        // FAT32 keeps the volume id at 0x43, FAT12/16 at 0x27.
        let id = if &b[0x52..0x5a] == b"FAT32   " {
            &b[0x43..0x47]
        } else {
            &b[0x27..0x2b]
        };
        return Some(format!(
            "{:02X}{:02X}-{:02X}{:02X}",
            id[3], id[2], id[1], id[0]
        ));
    }
    (b.iter().any(|&x| x != 0)).then(|| uuid_bytes(&b))
}

/// The partition's unique id as `PARTUUID=` names it: the GPT entry's
/// unique GUID, or for MBR the disk signature and the number
/// (`1234abcd-05`).
pub(crate) fn part_uuid<R: ReadAt + ?Sized>(
    device: &R,
    table: &PartitionTable,
    part: &PartitionInfo,
) -> Option<String> {
    match table.kind {
        TableKind::Mbr => {
            let sig = bytes(device, 440, 4)?;
            let sig = u32::from_le_bytes(sig.try_into().ok()?);
            (sig != 0).then(|| format!("{sig:08x}-{:02x}", part.number))
        }
        TableKind::Gpt => {
            let sector = u64::from(table.sector_size);
            let header = bytes(device, sector, 92)?;
            if &header[0..8] != b"EFI PART" {
                return None;
            }
            let lba = u64::from_le_bytes(header[72..80].try_into().ok()?);
            let count = u32::from_le_bytes(header[80..84].try_into().ok()?);
            let esize = u32::from_le_bytes(header[84..88].try_into().ok()?);
            let index = part.number.checked_sub(1)?;
            if index >= count || !(128..=4096).contains(&esize) {
                return None;
            }
            let at = lba
                .checked_mul(sector)?
                .checked_add(u64::from(index) * u64::from(esize))?;
            let entry = bytes(device, at, 32)?;
            Some(guid(&entry[16..32]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_as_blkid_does() {
        let b: Vec<u8> = (0u8..16).collect();
        assert_eq!(uuid_bytes(&b), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(guid(&b), "03020100-0504-0706-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn ext4_uuid_is_read_at_its_offset_and_short_input_is_none() {
        let mut img = vec![0u8; 4096];
        img[1024 + 0x68..1024 + 0x78].copy_from_slice(&[0xab; 16]);
        assert_eq!(
            fs_uuid(&img[..], 0, 4096, FsType::Ext4).as_deref(),
            Some("abababab-abab-abab-abab-abababababab")
        );
        assert_eq!(fs_uuid(&img[..], 0, 1100, FsType::Ext4), None);
        assert_eq!(fs_uuid(&img[..], 0, 4096, FsType::Squashfs), None);
    }
}

//! Recognising a filesystem (or something that is not one) from the first
//! bytes of a device, without mounting it.
//!
//! [`identify`] is a pure function over a byte buffer: it never reads beyond
//! the slice it is given and is fuzzed as such. [`probe`] reads the buffer
//! from a device with one `pread`.

use std::fs::File;

use super::FsType;
use crate::read_at::ReadAt;

/// How many bytes [`identify`] looks at: up to and including the btrfs
/// superblock at 64 KiB.
pub const PROBE_BYTES: usize = 0x11000;

/// What the first bytes of a device hold.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Detected {
    /// A filesystem, with its label if it has one.
    Filesystem {
        /// The type.
        fstype: FsType,
        /// The volume label (empty labels are `None`).
        label: Option<String>,
    },
    /// A partition table (`"gpt"` or `"dos"`): pick a partition.
    PartitionTable(&'static str),
    /// Something recognised that is not a mountable filesystem (swap,
    /// LUKS, LVM, NTFS, an ext journal device).
    Other(&'static str),
    /// Only zeros.
    Empty,
    /// Nothing recognised.
    Unknown,
}

impl Detected {
    /// A phrase for error messages ("ext4", "a dos partition table", ...).
    pub fn describe(&self) -> String {
        match self {
            Detected::Filesystem { fstype, .. } => fstype.to_string(),
            Detected::PartitionTable(t) => format!("a {t} partition table, not a filesystem"),
            Detected::Other(what) => format!("{what}, not a mountable filesystem"),
            Detected::Empty => "only zeros (no filesystem)".to_string(),
            Detected::Unknown => "no filesystem diskmount recognises".to_string(),
        }
    }
}

/// How many bytes hold every signature but those of btrfs (64 KiB) and ISO
/// 9660 (32 KiB): one page.
const FIRST_READ: usize = 4096;

/// Identifies what `device` holds. Reads one page, and the rest of
/// [`PROBE_BYTES`] only if that page is not conclusive.
pub fn probe(device: &File) -> std::io::Result<Detected> {
    probe_at(device, 0, u64::MAX)
}

/// Identifies what the `len` bytes of `device` (a device, a file or a byte
/// slice) from `offset` hold (a partition), reading no further than they go.
pub fn probe_at<R: ReadAt + ?Sized>(
    device: &R,
    offset: u64,
    len: u64,
) -> std::io::Result<Detected> {
    let limit = usize::try_from(len).unwrap_or(usize::MAX).min(PROBE_BYTES);
    let first = FIRST_READ.min(limit);
    // The rest of the window is allocated (and zeroed) only when it is read.
    let mut buf = vec![0u8; first];
    let filled = device.read_at_most(&mut buf, offset)?;
    let found = identify(&buf[..filled]);
    if filled < first || limit == first || !matches!(found, Detected::Empty | Detected::Unknown) {
        return Ok(found);
    }
    buf.resize(limit, 0);
    let more = device.read_at_most(&mut buf[first..], offset.saturating_add(first as u64))?;
    Ok(identify(&buf[..first + more]))
}

fn at(buf: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    buf.get(offset..offset.checked_add(len)?)
}

fn le16(buf: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(at(buf, offset, 2)?.try_into().ok()?))
}

fn le32(buf: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(at(buf, offset, 4)?.try_into().ok()?))
}

fn label(bytes: Option<&[u8]>) -> Option<String> {
    let bytes = bytes?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let s = String::from_utf8_lossy(&bytes[..end])
        .trim_end()
        .to_string();
    (!s.is_empty()).then_some(s)
}

fn fs(fstype: FsType, label: Option<String>) -> Detected {
    Detected::Filesystem { fstype, label }
}

/// Identifies the content of `buf`, the first bytes of a device.
pub fn identify(buf: &[u8]) -> Detected {
    if let Some(d) = identify_ext(buf) {
        return d;
    }
    if at(buf, 0, 4) == Some(b"XFSB") {
        return fs(FsType::Xfs, label(at(buf, 108, 12)));
    }
    if at(buf, 0x10040, 8) == Some(b"_BHRfS_M") {
        return fs(FsType::Btrfs, label(at(buf, 0x1012b, 256)));
    }
    if at(buf, 0, 4) == Some(b"hsqs") {
        return fs(FsType::Squashfs, None);
    }
    if le32(buf, 1024) == Some(0xE0F5_E1E2) {
        return fs(FsType::Erofs, label(at(buf, 1024 + 0x50, 16)));
    }
    if at(buf, 0, 6) == Some(b"LUKS\xba\xbe") {
        return Detected::Other("a LUKS encrypted volume");
    }
    if at(buf, 3, 8) == Some(b"NTFS    ") {
        return Detected::Other("an NTFS volume");
    }
    if at(buf, 512, 8) == Some(b"LABELONE") {
        return Detected::Other("an LVM physical volume");
    }
    if matches!(at(buf, 4086, 10), Some(b"SWAPSPACE2" | b"SWAP-SPACE")) {
        return Detected::Other("a swap area");
    }
    if at(buf, 512, 8) == Some(b"EFI PART") || at(buf, 4096, 8) == Some(b"EFI PART") {
        return Detected::PartitionTable("gpt");
    }
    if le16(buf, 510) == Some(0xAA55) {
        if let Some(d) = identify_fat(buf) {
            return d;
        }
        return Detected::PartitionTable("dos");
    }
    if at(buf, 32769, 5) == Some(b"CD001") {
        return fs(FsType::Iso9660, label(at(buf, 32808, 32)));
    }
    if all_zero(buf) {
        return Detected::Empty;
    }
    Detected::Unknown
}

/// Whether `buf` holds only zeros: compared a page at a time (one `memcmp`
/// each), not a byte at a time.
fn all_zero(buf: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    buf.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

fn identify_ext(buf: &[u8]) -> Option<Detected> {
    const SB: usize = 1024;
    if le16(buf, SB + 0x38)? != 0xEF53 {
        return None;
    }
    let compat = le32(buf, SB + 0x5C)?;
    let incompat = le32(buf, SB + 0x60)?;
    let ro_compat = le32(buf, SB + 0x64)?;
    const COMPAT_HAS_JOURNAL: u32 = 0x4;
    const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
    // Features ext3 does not know: anything but FILETYPE, RECOVER and META_BG
    // in incompat, anything but SPARSE_SUPER, LARGE_FILE, BTREE_DIR in ro_compat.
    const INCOMPAT_EXT3: u32 = 0x2 | 0x4 | 0x10;
    const RO_COMPAT_EXT3: u32 = 0x1 | 0x2 | 0x4;
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Some(Detected::Other("an ext journal device"));
    }
    let label = label(at(buf, SB + 0x78, 16));
    let fstype = if incompat & !INCOMPAT_EXT3 != 0 || ro_compat & !RO_COMPAT_EXT3 != 0 {
        FsType::Ext4
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        FsType::Ext3
    } else {
        FsType::Ext2
    };
    Some(fs(fstype, label))
}

fn identify_fat(buf: &[u8]) -> Option<Detected> {
    let jump = *buf.first()?;
    if jump != 0xEB && jump != 0xE9 {
        return None;
    }
    if at(buf, 82, 5) == Some(b"FAT32") {
        return Some(fs(
            FsType::Vfat,
            label(at(buf, 71, 11)).filter(|l| l != "NO NAME"),
        ));
    }
    if matches!(at(buf, 54, 5), Some(b"FAT12" | b"FAT16" | b"FAT  ")) {
        return Some(fs(
            FsType::Vfat,
            label(at(buf, 43, 11)).filter(|l| l != "NO NAME"),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> Vec<u8> {
        vec![0u8; PROBE_BYTES]
    }

    #[test]
    fn empty_and_short_buffers() {
        assert_eq!(identify(&[]), Detected::Empty);
        assert_eq!(identify(&buf()), Detected::Empty);
        assert_eq!(identify(&[1, 2, 3]), Detected::Unknown);
    }

    #[test]
    fn ext_variants_by_feature_flags() {
        let mut b = buf();
        b[1024 + 0x38..][..2].copy_from_slice(&0xEF53u16.to_le_bytes());
        b[1024 + 0x78..][..4].copy_from_slice(b"root");
        assert_eq!(
            identify(&b),
            Detected::Filesystem {
                fstype: FsType::Ext2,
                label: Some("root".into())
            }
        );
        b[1024 + 0x5C] = 0x4;
        assert!(matches!(
            identify(&b),
            Detected::Filesystem {
                fstype: FsType::Ext3,
                ..
            }
        ));
        b[1024 + 0x60] = 0x40; // extents
        assert!(matches!(
            identify(&b),
            Detected::Filesystem {
                fstype: FsType::Ext4,
                ..
            }
        ));
        b[1024 + 0x60] = 0x8; // journal device
        assert!(matches!(identify(&b), Detected::Other(_)));
    }

    #[test]
    fn fat_and_mbr_share_the_boot_signature() {
        let mut b = buf();
        b[510] = 0x55;
        b[511] = 0xAA;
        assert_eq!(identify(&b), Detected::PartitionTable("dos"));
        b[0] = 0xEB;
        b[82..87].copy_from_slice(b"FAT32");
        b[71..82].copy_from_slice(b"EFI        ");
        assert_eq!(
            identify(&b),
            Detected::Filesystem {
                fstype: FsType::Vfat,
                label: Some("EFI".into())
            }
        );
    }

    #[test]
    fn gpt_iso_and_others() {
        let mut b = buf();
        b[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(identify(&b), Detected::PartitionTable("gpt"));
        let mut b = buf();
        b[32769..32774].copy_from_slice(b"CD001");
        assert!(matches!(
            identify(&b),
            Detected::Filesystem {
                fstype: FsType::Iso9660,
                ..
            }
        ));
        let mut b = buf();
        b[4086..4096].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(identify(&b), Detected::Other("a swap area"));
    }
}

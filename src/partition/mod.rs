//! Partitions: which part of a disk to mount ([`Partition`]), and the
//! partition tables that say where the parts are ([`mod@gpt`], [`mbr`]).

use std::fmt;

/// The partition that [`crate::Attached::map`] gives a device to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Partition {
    /// The whole device: an image without a partition table, or a
    /// partitioned disk taken as a whole on purpose.
    Whole,
    /// Partition `n`, numbered as the kernel numbers them: MBR primaries
    /// 1-4, logical partitions from 5 in chain order, GPT entries by index.
    Number(u32),
    /// Search for the partition to mount (see the crate docs for the rule).
    Auto,
    /// The partition with this GPT name or, failing that, filesystem label.
    Label(String),
    /// The guest operating system as it boots: its root filesystem (found
    /// as [`Partition::Auto`] finds it, among partitions, LVM logical
    /// volumes and btrfs subvolumes), then every local filesystem of its
    /// `/etc/fstab`, parents before children.
    Os,
    /// One LVM logical volume of a volume group found in the image.
    LogicalVolume {
        /// The volume group's name.
        vg: String,
        /// The logical volume's name.
        lv: String,
    },
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Whole => f.write_str("whole disk"),
            Partition::Number(n) => write!(f, "partition {n}"),
            Partition::Auto => f.write_str("automatic partition search"),
            Partition::Label(l) => write!(f, "partition labelled {l:?}"),
            Partition::Os => f.write_str("guest OS (root and its fstab)"),
            Partition::LogicalVolume { vg, lv } => write!(f, "logical volume {vg}/{lv}"),
        }
    }
}

pub mod gpt;
pub mod mbr;
mod select;

use std::fs::File;

use log::debug;

pub use select::{find_filesystems, select};

use crate::error::{Error, Result, Step};
use crate::read_at::ReadAt;

/// The kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TableKind {
    /// GUID Partition Table.
    Gpt,
    /// MS-DOS master boot record, with extended/logical partitions.
    Mbr,
}

impl TableKind {
    /// `"gpt"` or `"mbr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "mbr",
        }
    }
}

/// The type of a partition, as its table records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PartitionType {
    /// A GPT type GUID (upper case), with a name where diskmount knows one.
    Gpt {
        /// The type GUID.
        guid: String,
        /// A human name ("Linux filesystem", "EFI System", ...).
        name: Option<&'static str>,
    },
    /// An MBR system id.
    Mbr {
        /// The id byte (0x83 Linux, 0x0c FAT32 LBA, ...).
        id: u8,
        /// A human name, where diskmount knows one.
        name: Option<&'static str>,
    },
}

impl PartitionType {
    /// The human name, or the raw id.
    pub fn describe(&self) -> String {
        match self {
            PartitionType::Gpt { guid, name } => name.map(str::to_string).unwrap_or(guid.clone()),
            PartitionType::Mbr { id, name } => {
                name.map(str::to_string).unwrap_or(format!("0x{id:02x}"))
            }
        }
    }
}

/// One partition of a table, with its geometry in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PartitionInfo {
    /// The number the kernel gives it (MBR logical partitions from 5, GPT
    /// entries by index).
    pub number: u32,
    /// The first byte.
    pub start: u64,
    /// The length in bytes.
    pub size: u64,
    /// The type.
    pub kind: PartitionType,
    /// The GPT partition name (MBR partitions have none).
    pub name: Option<String>,
}

impl PartitionInfo {
    /// The byte after the last one.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// A partition table read from a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// GPT or MBR.
    pub kind: TableKind,
    /// The sector size the table was written for.
    pub sector_size: u32,
    /// The partitions in use, by number (MBR extended containers left out).
    pub partitions: Vec<PartitionInfo>,
}

impl PartitionTable {
    /// The partition numbered `number`.
    pub fn get(&self, number: u32) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.number == number)
    }

    /// `"1 (ext4 root, 64 MiB), 2 (...)"`: for error messages.
    pub fn summary(&self) -> String {
        if self.partitions.is_empty() {
            return "none".to_string();
        }
        self.partitions
            .iter()
            .map(|p| {
                let mut s = format!("{} ({}, {} MiB", p.number, p.kind.describe(), p.size >> 20);
                if let Some(n) = &p.name {
                    s.push_str(&format!(", name {n:?}"));
                }
                s.push(')');
                s
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reads the partition table of `device` (`size` bytes), or `None` if it
/// has none (a bare filesystem, or nothing recognisable).
///
/// A protective MBR means GPT. A damaged primary GPT header with a good
/// backup uses the backup (logged). Entries beyond the disk or overlapping
/// each other make the whole table refused.
///
/// # Errors
/// [`Step::Map`] with the device path for unreadable or inconsistent tables.
pub fn read_table(
    device: &File,
    path: &std::path::Path,
    size: u64,
) -> Result<Option<PartitionTable>> {
    read_table_from(device, path, size)
}

/// [`read_table`] over any [`ReadAt`], e.g. a byte slice (tests, fuzzing):
/// `device` holds the disk's first `size` bytes, and nothing beyond them is
/// read; `path` names it in errors.
///
/// # Errors
/// As [`read_table`].
pub fn read_table_from<R: ReadAt + ?Sized>(
    device: &R,
    path: &std::path::Path,
    size: u64,
) -> Result<Option<PartitionTable>> {
    let mut head = vec![0u8; 8192.min(usize::try_from(size).unwrap_or(usize::MAX))];
    let n = device
        .read_at_most(&mut head, 0)
        .map_err(|e| Error::os(Step::Map, path, "read sector 0", e))?;
    head.truncate(n);
    let table = match detect(&head) {
        None => {
            debug!("map: {}: no partition table", path.display());
            return Ok(None);
        }
        Some(TableKind::Gpt) => gpt::read(device, path, size, &head)?,
        Some(TableKind::Mbr) => mbr::read(device, path, size)?,
    };
    validate(&table, path, size)?;
    debug!(
        "map: {}: {} table: {}",
        path.display(),
        table.kind.as_str(),
        table.summary()
    );
    Ok(Some(table))
}

/// Which table the first sectors hold, if any.
fn detect(head: &[u8]) -> Option<TableKind> {
    if head.get(512..520) == Some(b"EFI PART") || head.get(4096..4104) == Some(b"EFI PART") {
        return Some(TableKind::Gpt);
    }
    if head.get(510..512) != Some(&[0x55, 0xAA]) {
        return None;
    }
    let types: Vec<u8> = (0..4)
        .filter_map(|i| head.get(446 + i * 16 + 4).copied())
        .collect();
    if types.contains(&0xEE) {
        // A protective MBR whose GPT header is damaged: the backup decides.
        return Some(TableKind::Gpt);
    }
    match crate::fs::identify(head) {
        crate::fs::Detected::PartitionTable(_) => Some(TableKind::Mbr),
        _ => None,
    }
}

/// Refuses entries that are empty, beyond the disk, or overlapping.
fn validate(table: &PartitionTable, path: &std::path::Path, size: u64) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::invalid_image(
            Step::Map,
            path,
            format!(
                "the {} partition table is inconsistent: {why}",
                table.kind.as_str()
            ),
        ))
    };
    for p in &table.partitions {
        if p.size == 0 {
            return refuse(format!("partition {} is empty", p.number));
        }
        if p.start.checked_add(p.size).is_none_or(|end| end > size) {
            return refuse(format!(
                "partition {} (bytes {}..{}) runs past the end of the {size}-byte disk",
                p.number,
                p.start,
                p.start as u128 + p.size as u128
            ));
        }
    }
    let mut sorted: Vec<&PartitionInfo> = table.partitions.iter().collect();
    sorted.sort_by_key(|p| p.start);
    for w in sorted.windows(2) {
        if w[1].start < w[0].end() {
            return refuse(format!(
                "partitions {} and {} overlap (bytes {}..{} and {}..{})",
                w[0].number,
                w[1].number,
                w[0].start,
                w[0].end(),
                w[1].start,
                w[1].end()
            ));
        }
    }
    Ok(())
}

//! Filesystems: what a superblock says ([`probe()`]), which types are mounted
//! without being asked ([`ALLOWED`]), and the options each one needs.

pub mod probe;

use std::fmt;

pub use probe::{Detected, identify, probe, probe_at};

/// A filesystem type diskmount recognises from its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FsType {
    /// ext2 (no journal).
    Ext2,
    /// ext3 (journal, no ext4 features).
    Ext3,
    /// ext4.
    Ext4,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
    /// SquashFS (read-only).
    Squashfs,
    /// EROFS (read-only).
    Erofs,
    /// FAT12/16/32.
    Vfat,
    /// ISO 9660 (CD-ROM).
    Iso9660,
}

/// The filesystem types mounted after probing, as systemd-dissect chooses
/// them: well-maintained drivers only, and ext2/ext3 through the ext4
/// driver. Anything else needs an explicit [`crate::MountOptions::fstype`].
pub const ALLOWED: [FsType; 8] = [
    FsType::Btrfs,
    FsType::Erofs,
    FsType::Ext2,
    FsType::Ext3,
    FsType::Ext4,
    FsType::Squashfs,
    FsType::Vfat,
    FsType::Xfs,
];

impl FsType {
    /// The name blkid and mount use for it.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext2 => "ext2",
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
            FsType::Btrfs => "btrfs",
            FsType::Squashfs => "squashfs",
            FsType::Erofs => "erofs",
            FsType::Vfat => "vfat",
            FsType::Iso9660 => "iso9660",
        }
    }

    /// The kernel driver that mounts it (ext2 and ext3 go through ext4).
    pub fn driver(self) -> &'static str {
        match self {
            FsType::Ext2 | FsType::Ext3 => "ext4",
            other => other.as_str(),
        }
    }

    /// Whether it is on the allow-list.
    pub fn is_allowed(self) -> bool {
        ALLOWED.contains(&self)
    }

    /// Whether the filesystem can only be mounted read-only.
    pub fn is_read_only(self) -> bool {
        matches!(self, FsType::Squashfs | FsType::Erofs | FsType::Iso9660)
    }

    /// The option that stops a read-only mount from replaying the journal
    /// into the image, if the filesystem has a journal.
    pub fn no_replay_option(self) -> Option<&'static str> {
        match self {
            FsType::Ext3 | FsType::Ext4 => Some("noload"),
            FsType::Xfs => Some("norecovery"),
            FsType::Btrfs => Some("rescue=nologreplay"),
            _ => None,
        }
    }

    /// Parses a filesystem or driver name.
    pub fn from_name(name: &str) -> Option<FsType> {
        [
            FsType::Ext2,
            FsType::Ext3,
            FsType::Ext4,
            FsType::Xfs,
            FsType::Btrfs,
            FsType::Squashfs,
            FsType::Erofs,
            FsType::Vfat,
            FsType::Iso9660,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

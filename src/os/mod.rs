//! OS inspection: which filesystem of an image holds a guest operating
//! system's root, and what that OS is (os-release, hostname, the mount
//! points of its fstab), as libguestfs's `inspect_os` tells it, but in the
//! host kernel.
//!
//! A filesystem (a partition, the whole disk, or a btrfs subvolume) holds
//! an OS root if it has `etc/os-release` or `usr/lib/os-release`. Each
//! candidate is mounted read-only without journal replay and *detached*
//! (`fsmount` without `move_mount`: no mount point, nothing in the mount
//! table, gone when its descriptor closes), and read through
//! [`crate::root::Root`], so a guest link never leads out of the image.
//!
//! - `inspect.rs`: finding the roots ([`crate::Attached::inspect_os`]);
//! - `choose.rs`: what [`crate::Partition::Auto`] and
//!   [`crate::Partition::Os`] make of them;
//! - `source.rs`: which part of the image an fstab source names;
//! - `ids.rs`: filesystem UUIDs and partition UUIDs from the image's bytes.

mod choose;
mod ids;
mod inspect;
pub(crate) mod source;

use crate::error::Result;
use crate::guest::fstab;
use crate::partition::PartitionInfo;

pub(crate) use choose::{Choice, choose};

/// A guest operating system found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OsInfo {
    /// Where its root is, in words: `"partition 2"`, `"whole disk"`,
    /// `"partition 2 subvolume root"`, `"lv rl/root"`.
    pub root: String,
    /// The partition holding the root (`None`: the whole disk, or a
    /// logical volume).
    pub partition: Option<u32>,
    /// The btrfs subvolume holding the root, if not the top level.
    pub subvolume: Option<String>,
    /// The LVM logical volume holding the root, as `VG/LV`
    /// ([`crate::Partition::LogicalVolume`] maps it).
    pub logical_volume: Option<String>,
    /// The root filesystem's type (`ext4`, `xfs`, `btrfs`, ...).
    pub fstype: String,
    /// os-release `ID` (`"linux"` if it has none).
    pub id: String,
    /// os-release `VERSION_ID`.
    pub version_id: Option<String>,
    /// os-release `PRETTY_NAME` (or `NAME`, or `"Linux"`).
    pub pretty_name: String,
    /// The first line of `etc/hostname`.
    pub hostname: Option<String>,
    /// The entries of its `etc/fstab`, in file order.
    pub mountpoints: Vec<OsMountpoint>,
}

/// One entry of a guest's fstab.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OsMountpoint {
    /// The mount point as written (`/boot`, `none` for swap).
    pub mountpoint: String,
    /// The source as written (`UUID=...`, `/dev/mapper/rl-home`).
    pub source: String,
    /// The filesystem type as written.
    pub fstype: String,
    /// The options.
    pub options: Vec<String>,
    /// The fstab line number.
    pub line: usize,
    /// Why [`crate::Partition::Os`] does not mount it (`"swap"`,
    /// `"noauto"`, ...), `None` if it does.
    pub skip: Option<String>,
}

impl OsMountpoint {
    fn of(e: &fstab::Entry) -> OsMountpoint {
        OsMountpoint {
            mountpoint: e.mount_point.clone(),
            source: e.spec.clone(),
            fstype: e.fstype.clone(),
            options: e.options.clone(),
            line: e.line,
            skip: e
                .skip()
                .filter(|s| *s != fstab::Skip::Root)
                .map(|s| s.as_str().to_string()),
        }
    }
}

/// Where a root is: a partition (or the whole disk), or a logical volume,
/// and a subvolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) part: Option<PartitionInfo>,
    /// A logical volume (VG, LV); `part` is then `None`.
    pub(crate) lv: Option<(String, String)>,
    pub(crate) subvolume: Option<String>,
}

impl Location {
    /// `"partition 2 subvolume root"`.
    pub(crate) fn describe(&self) -> String {
        let mut s = match (&self.part, &self.lv) {
            (_, Some((vg, lv))) => format!("lv {vg}/{lv}"),
            (Some(p), None) => format!("partition {}", p.number),
            (None, None) => "whole disk".to_string(),
        };
        if let Some(sv) = &self.subvolume {
            s.push_str(&format!(" subvolume {sv}"));
        }
        s
    }
}

/// An OS root found by the inspection, with its parsed fstab.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) location: Location,
    pub(crate) info: OsInfo,
    pub(crate) fstab: Vec<fstab::Entry>,
    /// On a GPT partition of this architecture's DPS root type.
    pub(crate) dps_root: bool,
    /// What each `fstab` entry's source names, in `fstab`'s order, as the
    /// inspection resolved it (`None`: not resolved, the root's own entry
    /// or one to skip); empty if not resolved at all. The mount of the
    /// tree uses these rather than probing the image again.
    pub(crate) sources: Vec<Option<std::result::Result<source::Target, String>>>,
}

impl Found {
    /// `partition 2 (debian 12, "Debian GNU/Linux 12 (bookworm)")`.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} ({}{}, {:?})",
            self.location.describe(),
            self.info.id,
            self.info
                .version_id
                .as_ref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            self.info.pretty_name
        )
    }
}

/// The OS roots of `device` (partitions of `table`, or the whole device).
pub(crate) fn inspect_device(
    device: &crate::backend::Core,
    table: Option<&crate::partition::PartitionTable>,
) -> Result<Vec<OsInfo>> {
    let report = inspect::inspect(device, table, inspect::Scope::Every)?;
    Ok(report.found.into_iter().map(|f| f.info).collect())
}

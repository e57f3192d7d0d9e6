//! An LVM2 logical volume of the attached device as a block device of its
//! own ([`crate::Partition::LogicalVolume`]).
//!
//! The PVs are found by their labels on the whole device and on every
//! partition of its table, and the VG's text metadata is read by our own
//! parser ([`crate::volume::lvm`]). The host's LVM tools never see a guest
//! PV and no guest VG is activated: the LV's device is diskmount's own.
//!
//! - With device-mapper: a linear target, one table line per piece, over
//!   the partition holding each PV where the kernel made a node for it (as
//!   LVM maps it; the kernel refuses to mount a partition of a disk that a
//!   target holds whole, so a guest's `/boot` could not be mounted next to
//!   its LVs), else over the attached device at the PV's offset; named
//!   `diskmount-<device>-<vg>-<lv>` (LVM's `--` escaping), so two images
//!   whose VGs share a name (two `ubuntu-vg`) map at the same time.
//! - Without it: an offset loop device, where the LV is one linear piece.
//! - Anything else is a [`Step::Map`] error naming the LV and the reason.

use std::os::unix::fs::MetadataExt;

use log::{debug, info};

use super::{MapStrategy, MappedPart, Mapping, Undo, device_mapper, offset_loop};
use crate::backend::Core;
use crate::error::{Error, ErrorKind, Result, Step};
use crate::kernel::sysfs;
use crate::partition;
use crate::volume::lvm::{Placed, discover, dm_table};

/// The logical volume a [`crate::Mapped`] gives a device to
/// ([`crate::Mapped::logical_volume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogicalVolumeInfo {
    /// The volume group's name.
    pub vg: String,
    /// The volume group's UUID.
    pub vg_id: String,
    /// The logical volume's name.
    pub lv: String,
    /// The logical volume's UUID.
    pub lv_id: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its segments in the metadata.
    pub segments: usize,
    /// Where its bytes lie on the attached device, in LV order (adjacent
    /// segments merged).
    pub pieces: Vec<Placed>,
    /// The partitions holding its PVs (`None`: a whole-disk PV), in piece
    /// order, without repeats.
    pub partitions: Vec<Option<u32>>,
}

/// The longest device-mapper name the kernel takes (`DM_NAME_LEN` 128,
/// with its NUL).
const DM_NAME_MAX: usize = 127;

/// The target name of `vg/lv` on the attached device `disk` (`loop3`):
/// `diskmount-loop3-vg-lv`, each name's `-` doubled as LVM escapes them.
/// A name with characters LVM does not allow, or too long, is replaced by
/// a hash of both names (still unique per device and LV).
pub(crate) fn dm_name(disk: &str, vg: &str, lv: &str) -> String {
    let lvm_name = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
    };
    let plain = format!(
        "diskmount-{disk}-{}-{}",
        vg.replace('-', "--"),
        lv.replace('-', "--")
    );
    if lvm_name(vg) && lvm_name(lv) && plain.len() <= DM_NAME_MAX {
        return plain;
    }
    // FNV-1a, 64 bits, over both names with a separator no name has.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vg.bytes().chain([0]).chain(lv.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("diskmount-{disk}-lv-{h:016x}")
}

/// Gives logical volume `vg/lv` of `device` a block device. `strategy`
/// [`MapStrategy::OffsetLoop`] or [`MapStrategy::DeviceMapper`] forces
/// that way; anything else picks device-mapper where the kernel has it,
/// else an offset loop device.
///
/// # Errors
/// [`Step::Map`], naming the device and the LV: no such VG or LV (the
/// message lists what exists), damaged metadata, an LV that is not
/// linear (striped, raid, thin, cache, snapshot), a missing PV, several
/// pieces without device-mapper. Nothing is left behind.
pub(crate) fn map(device: &Core, vg: &str, lv: &str, strategy: MapStrategy) -> Result<MappedPart> {
    let table = partition::read_table(device.file(), device.path(), device.size)?;
    map_in(device, table.as_ref(), vg, lv, strategy)
}

/// [`map`] on a device whose partition table (`None`: it has none) the
/// caller has already read.
pub(crate) fn map_in(
    device: &Core,
    table: Option<&partition::PartitionTable>,
    vg: &str,
    lv: &str,
    strategy: MapStrategy,
) -> Result<MappedPart> {
    let path = device.path();
    let found = discover(device.file(), path, device.size, table);
    let group = found.find(vg, path)?;
    let pieces = group.place(lv, path)?;
    let meta = group
        .vg
        .lv(lv)
        .expect("place found the LV, so the metadata has it");
    let mut partitions = Vec::new();
    for p in &pieces {
        let at = group.found(&p.pv).and_then(|f| f.partition);
        if !partitions.contains(&at) {
            partitions.push(at);
        }
    }
    let info = LogicalVolumeInfo {
        vg: vg.to_string(),
        vg_id: group.vg.id.clone(),
        lv: lv.to_string(),
        lv_id: meta.id.clone(),
        size: pieces.iter().map(|p| p.len).sum(),
        segments: meta.segments.len(),
        pieces,
        partitions,
    };
    let use_dm = match strategy {
        MapStrategy::DeviceMapper => true,
        MapStrategy::OffsetLoop => false,
        _ => device_mapper::available(),
    };
    debug!(
        "map: {}: logical volume {vg}/{lv}: {} piece(s), {} bytes, by {}",
        path.display(),
        info.pieces.len(),
        info.size,
        if use_dm {
            "device-mapper"
        } else {
            "offset loop"
        }
    );
    let mut part = if use_dm {
        // Where each piece's PV is reached: its partition's kernel node if
        // there is a checked one, else the attached device.
        let mut on = Vec::new();
        for p in &info.pieces {
            let found = group.found(&p.pv);
            let part = found
                .and_then(|f| f.partition)
                .and_then(|n| table.as_ref()?.partitions.iter().find(|t| t.number == n));
            let node = match part {
                Some(part) => super::kernel_node::lookup(device, part)?
                    .and_then(|node| Some((node.file.metadata().ok()?.rdev(), part.start))),
                None => None,
            };
            on.push(node.unwrap_or((device.rdev, 0)));
        }
        with_device_mapper(device, &info, &on)?
    } else {
        match info.pieces.as_slice() {
            [one] => offset_loop::attach_range(device, one.disk_offset, one.len, None)?,
            many => {
                return Err(Error::refused(
                    ErrorKind::KernelFeatureMissing,
                    Step::Map,
                    path,
                    format!(
                        "logical volume {vg}/{lv} is made of {} separate pieces, which needs \
                         device-mapper, and this kernel has none (modprobe dm-mod)",
                        many.len()
                    ),
                ));
            }
        }
    };
    info!(
        "map: logical volume {vg}/{lv} of {} is {} ({})",
        path.display(),
        part.path.display(),
        part.mapping.as_str()
    );
    part.volume = Some(info);
    Ok(part)
}

/// A target for `info` whose piece `i` lies on device `on[i].0`, whose
/// first byte is `on[i].1` of the attached device.
fn with_device_mapper(
    device: &Core,
    info: &LogicalVolumeInfo,
    on: &[(u64, u64)],
) -> Result<MappedPart> {
    let path = device.path();
    if !device_mapper::available() {
        return Err(Error::refused(
            ErrorKind::KernelFeatureMissing,
            Step::Map,
            path,
            format!(
                "logical volume {}/{} needs device-mapper, and this kernel has none \
                 (modprobe dm-mod)",
                info.vg, info.lv
            ),
        ));
    }
    let disk = sysfs::name_of(device.rdev)
        .ok_or_else(|| Error::invalid(Step::Map, path, "cannot find the device in sysfs"))?;
    // Each piece at its offset on the device that holds it; the piece's
    // index stands for its device in the table's lookup.
    let as_pieces: Vec<crate::volume::lvm::Piece> = info
        .pieces
        .iter()
        .zip(on)
        .enumerate()
        .map(|(i, (p, &(_, base)))| crate::volume::lvm::Piece {
            lv_offset: p.lv_offset,
            pv: i.to_string(),
            pv_offset: p.disk_offset - base,
            len: p.len,
        })
        .collect();
    let table = dm_table(&as_pieces, path, |i| {
        let (rdev, _) = on.get(i.parse::<usize>().ok()?)?;
        Some((
            nix::sys::stat::major(*rdev) as u32,
            nix::sys::stat::minor(*rdev) as u32,
        ))
    })?;
    let name = dm_name(&disk, &info.vg, &info.lv);
    let (node, file) = device_mapper::create_target(device, &name, &table)?;
    Ok(MappedPart::new(
        node,
        None,
        Mapping::DeviceMapper,
        device,
        file,
        Undo::RemoveDm { name },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_names_are_unique_per_device_and_escaped() {
        assert_eq!(dm_name("loop3", "rl", "root"), "diskmount-loop3-rl-root");
        assert_eq!(
            dm_name("loop3", "ubuntu-vg", "ubuntu-lv"),
            "diskmount-loop3-ubuntu--vg-ubuntu--lv"
        );
        assert_ne!(dm_name("loop3", "a-b", "c"), dm_name("loop3", "a", "b-c"));
        assert_ne!(
            dm_name("loop3", "rl", "root"),
            dm_name("loop4", "rl", "root")
        );
        let hostile = dm_name("loop3", "../x", "y z");
        assert!(hostile.starts_with("diskmount-loop3-lv-"), "{hostile}");
        assert_ne!(hostile, dm_name("loop3", "../x", "y  z"));
        let long = "a".repeat(128);
        let n = dm_name("loop3", &long, &long);
        assert!(n.len() <= DM_NAME_MAX, "{n}");
    }
}

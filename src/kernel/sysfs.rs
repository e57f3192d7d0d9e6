//! What sysfs says about block devices: `/sys/class/block/NAME/...` for
//! disks and partitions alike, `/sys/dev/block/MAJ:MIN` to name a device
//! number. Every attribute is read the same way: trimmed of its newline,
//! `None` when it is absent (an unbound loop device has no
//! `loop/backing_file`, a disconnected nbd device no `pid`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

pub use super::mountinfo::Mount;

/// A partition the kernel knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Partition {
    /// The kernel name (`loop0p1`, `sda2`, `nbd3p1`).
    pub name: String,
    /// The partition number.
    pub number: u32,
    /// The start in bytes.
    pub start: u64,
    /// The size in bytes.
    pub size: u64,
    /// The device number.
    pub rdev: u64,
}

/// `/sys/class/block/NAME`: the directory of disk or partition `name`.
pub fn dir(name: &str) -> PathBuf {
    Path::new("/sys/class/block").join(name)
}

/// The attribute `attr` (a path below the device's directory, such as
/// `ro` or `loop/backing_file`) of block device `name`, without its
/// trailing newline; `None` if it is absent or unreadable.
pub fn attr(name: &str, attr: &str) -> Option<String> {
    let mut s = std::fs::read_to_string(dir(name).join(attr)).ok()?;
    let kept = s.trim_end_matches('\n').len();
    s.truncate(kept);
    Some(s)
}

/// Whether block device `name` has the attribute `attr`.
pub fn has(name: &str, attr: &str) -> bool {
    dir(name).join(attr).exists()
}

/// A numeric attribute.
pub fn number(name: &str, attr_name: &str) -> Option<u64> {
    attr(name, attr_name)?.trim().parse().ok()
}

/// The kernel name of the block device `rdev` (`loop0`, `sda2`).
pub fn name_of(rdev: u64) -> Option<String> {
    let link = format!(
        "/sys/dev/block/{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The whole disks the kernel knows (`/sys/block`).
pub fn disks() -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The disks with a size, as `/proc/partitions` lists them (a cheap way to
/// skip the many unbound loop and nbd devices); all disks if it cannot be
/// read.
pub fn sized_disks() -> Vec<String> {
    match super::read_proc("/proc/partitions") {
        // "major minor #blocks name"
        Ok(text) => String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .map(str::to_owned)
            .collect(),
        Err(_) => disks(),
    }
}

/// The disk sequence number of whole disk `name`, where the kernel has one.
pub fn diskseq(name: &str) -> Option<u64> {
    number(name, "diskseq")
}

/// Whether block device `name` is read-only.
pub fn is_read_only(name: &str) -> bool {
    attr(name, "ro").as_deref() == Some("1")
}

/// The partition number of `name`, if it is a partition.
pub fn partition_number(name: &str) -> Option<u32> {
    attr(name, "partition")?.trim().parse().ok()
}

/// The disk that partition `name` belongs to (its directory's parent).
pub fn parent_disk(name: &str) -> Option<String> {
    let real = std::fs::canonicalize(dir(name)).ok()?;
    Some(real.parent()?.file_name()?.to_string_lossy().into_owned())
}

/// The devices under device-mapper target `name` (`slaves/`).
pub fn slaves(name: &str) -> Vec<String> {
    names_in(name, "slaves")
}

/// The devices over device `name` (`holders/`: device-mapper targets).
pub fn holders(name: &str) -> Vec<String> {
    names_in(name, "holders")
}

/// The device names listed in the directory `sub` of device `name`.
fn names_in(name: &str, sub: &str) -> Vec<String> {
    std::fs::read_dir(dir(name).join(sub))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What the loop driver shows of loop device `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoopInfo {
    /// The backing file as the kernel names it, exactly; a deleted file
    /// keeps its name with ` (deleted)` appended.
    pub backing_file: PathBuf,
    /// Whether the backing file was deleted while bound.
    pub deleted: bool,
    /// The offset into the backing file, in bytes.
    pub offset: u64,
    /// The size limit in bytes (0: to the end).
    pub size_limit: u64,
    /// Whether the kernel scans the device for partitions.
    pub partscan: bool,
    /// Whether the device goes away when its last user closes it.
    pub autoclear: bool,
}

/// Loop device `name`'s binding; `None` if it is not a bound loop device.
pub fn loop_info(name: &str) -> Option<LoopInfo> {
    let (backing_file, deleted) = loop_backing_file(name)?;
    let flag = |f: &str| attr(name, f).as_deref() == Some("1");
    Some(LoopInfo {
        backing_file,
        deleted,
        offset: number(name, "loop/offset").unwrap_or(0),
        size_limit: number(name, "loop/sizelimit").unwrap_or(0),
        partscan: flag("loop/partscan"),
        autoclear: flag("loop/autoclear"),
    })
}

/// The file bound to loop device `name` (as [`LoopInfo::backing_file`])
/// and whether it was deleted; `None` if unbound. One attribute read, where
/// [`loop_info`] reads five.
pub fn loop_backing_file(name: &str) -> Option<(PathBuf, bool)> {
    let raw = std::fs::read(dir(name).join("loop/backing_file")).ok()?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    let (path, deleted) = match raw.strip_suffix(b" (deleted)") {
        Some(p) => (p, true),
        None => (raw, false),
    };
    Some((PathBuf::from(OsString::from_vec(path.to_vec())), deleted))
}

/// Whether `name` is a loop device itself (`loop7`), not one of its
/// partitions (`loop7p1`).
pub fn is_loop_disk(name: &str) -> bool {
    loop_number(name).is_some()
}

/// The number of loop device `name` (`loop7` → 7).
pub fn loop_number(name: &str) -> Option<u32> {
    name.strip_prefix("loop")
        .filter(|nr| !nr.is_empty() && nr.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

/// Whether `/dev/loop<nr>` has a backing file bound.
pub fn loop_is_bound(nr: u32) -> bool {
    has(&format!("loop{nr}"), "loop/backing_file")
}

/// The pid of the server of nbd device `name`; `None` if not connected.
pub fn nbd_pid(name: &str) -> Option<u32> {
    attr(name, "pid")?.trim().parse().ok()
}

/// The device-mapper name of `name` (`dm/name`), if it is a dm device.
pub fn dm_name(name: &str) -> Option<String> {
    attr(name, "dm/name")
}

/// The partitions of whole disk `name` that the kernel knows.
pub fn partitions(name: &str) -> Vec<Partition> {
    let Ok(entries) = std::fs::read_dir(dir(name)) else {
        return Vec::new();
    };
    entries
        .flatten()
        // The kernel names a partition's directory after its disk
        // (`sda1`, `loop0p1`: block/partitions/core.c), so the disk's own
        // attributes (about thirty: size, queue, trace, ...) need not be
        // opened to be told apart; the `partition` attribute still decides.
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .starts_with(name.as_bytes())
        })
        .filter_map(|e| {
            let part = e.file_name().into_string().ok()?;
            let sectors = |f: &str| number(&part, f);
            Some(Partition {
                number: partition_number(&part)?,
                start: sectors("start")? * 512,
                size: sectors("size")? * 512,
                rdev: super::mountinfo::dev_number(&attr(&part, "dev")?)?,
                name: part,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_names() {
        assert_eq!(loop_number("loop7"), Some(7));
        assert_eq!(loop_number("loop7p1"), None);
        assert_eq!(loop_number("loop"), None);
        assert!(!is_loop_disk("nbd0"));
    }

    #[test]
    fn absent_device_has_nothing() {
        assert_eq!(attr("no-such-device", "ro"), None);
        assert!(loop_info("no-such-device").is_none());
        assert!(partitions("no-such-device").is_empty());
    }
}

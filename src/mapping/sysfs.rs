//! What sysfs says about a block device and its partitions.

use std::path::Path;

/// A partition the kernel knows of.
#[derive(Debug, Clone)]
pub(crate) struct SysPartition {
    /// The kernel name (`loop0p1`, `sda2`, `nbd3p1`).
    pub name: String,
    pub number: u32,
    /// Start and size in bytes.
    pub start: u64,
    pub size: u64,
    /// The device number.
    pub rdev: u64,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Parses `MAJ:MIN` into a device number.
pub(crate) fn parse_dev(s: &str) -> Option<u64> {
    let (maj, min) = s.trim().split_once(':')?;
    Some(nix::sys::stat::makedev(
        maj.parse().ok()?,
        min.parse().ok()?,
    ))
}

/// The kernel name of the block device `rdev` (`loop0`).
pub(crate) fn name_of(rdev: u64) -> Option<String> {
    let link = format!(
        "/sys/dev/block/{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The disk sequence number of whole disk `name`, where the kernel has one.
pub(crate) fn diskseq(name: &str) -> Option<u64> {
    read(&Path::new("/sys/block").join(name).join("diskseq"))?
        .parse()
        .ok()
}

/// The partitions of whole disk `name` that the kernel knows.
pub(crate) fn partitions(name: &str) -> Vec<SysPartition> {
    let Ok(entries) = std::fs::read_dir(Path::new("/sys/block").join(name)) else {
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
            let dir = e.path();
            let number = read(&dir.join("partition"))?.parse().ok()?;
            let sectors = |f: &str| read(&dir.join(f))?.parse::<u64>().ok();
            Some(SysPartition {
                name: e.file_name().to_string_lossy().into_owned(),
                number,
                start: sectors("start")? * 512,
                size: sectors("size")? * 512,
                rdev: parse_dev(&read(&dir.join("dev"))?)?,
            })
        })
        .collect()
}

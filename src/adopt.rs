//! Adoption: rebuilding the lifecycle value for a device or mount point an
//! earlier process left behind, so that it can be torn down the way it was
//! built (Nova's `instance_for_device` / `reset_dev`, without guessing from
//! device names).
//!
//! Everything is found from the kernel's own records:
//! `/proc/self/mountinfo` for the mount, `/sys/dev/block/MAJ:MIN` for the
//! device, `partition` (a kernel or BLKPG partition, and its parent),
//! `dm/name` + `slaves/` + the dm table (a device-mapper mapping), and
//! `loop/{backing_file,offset,sizelimit,partscan}` (loop devices, and
//! offset loop devices over the same image as an attached one).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use log::debug;
use nix::libc;

use crate::backend::device::Held;
use crate::backend::{Auto, BackendKind, Device};
use crate::command::run;
use crate::error::{Error, Result, Step};
use crate::image::{Image, ImageKind};
use crate::lifecycle::{Attached, Mapped, Mounted};
use crate::mapping::sysfs::{self, parse_dev};
use crate::mapping::{MappedPart, Mapping, Undo};
use crate::partition::{self, PartitionInfo};
use crate::sys::block as blk;

/// A lifecycle value rebuilt from what is on the system.
#[derive(Debug)]
pub enum Adopted {
    /// A mount on an attached (and maybe mapped) device.
    Mounted(Mounted<Auto>),
    /// A mapped partition that is not mounted.
    Mapped(Mapped<Auto>),
    /// An attached device that is neither mapped nor mounted.
    Attached(Attached<Auto>),
}

impl Adopted {
    /// Tears down everything adopted: unmount, unmap, detach, reporting
    /// every error.
    pub fn close(self) -> Result<()> {
        match self {
            Adopted::Mounted(m) => m.close(),
            Adopted::Mapped(m) => m.close(),
            Adopted::Attached(a) => a.close(),
        }
    }

    /// The mount point, if mounted.
    pub fn mount_point(&self) -> Option<&Path> {
        match self {
            Adopted::Mounted(m) => Some(m.path()),
            _ => None,
        }
    }

    /// The device that is (or would be) mounted: the partition's, or the
    /// whole device.
    pub fn device(&self) -> &Path {
        match self {
            Adopted::Mounted(m) => m.device(),
            Adopted::Mapped(m) => m.device(),
            Adopted::Attached(a) => a.device(),
        }
    }

    /// The attached whole device.
    pub fn attached_device(&self) -> &Path {
        match self {
            Adopted::Mounted(m) => m.mapped().attached().device(),
            Adopted::Mapped(m) => m.attached().device(),
            Adopted::Attached(a) => a.device(),
        }
    }

    /// How the partition was mapped ([`Mapping::Whole`] if it was not).
    pub fn mapping(&self) -> Mapping {
        match self {
            Adopted::Mounted(m) => m.mapped().mapping(),
            Adopted::Mapped(m) => m.mapping(),
            Adopted::Attached(_) => Mapping::Whole,
        }
    }

    /// The partition number, if a partition was mapped.
    pub fn partition(&self) -> Option<u32> {
        match self {
            Adopted::Mounted(m) => m.mapped().partition(),
            Adopted::Mapped(m) => m.partition(),
            Adopted::Attached(_) => None,
        }
    }

    /// The backend that attached the image.
    pub fn backend(&self) -> BackendKind {
        match self {
            Adopted::Mounted(m) => m.backend(),
            Adopted::Mapped(m) => m.backend(),
            Adopted::Attached(a) => a.backend(),
        }
    }

    /// The image (backing file, or the block device).
    pub fn image(&self) -> &Path {
        match self {
            Adopted::Mounted(m) => m.image().path(),
            Adopted::Mapped(m) => m.attached().image().path(),
            Adopted::Attached(a) => a.image().path(),
        }
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub(crate) struct MountEntry {
    /// The mount's id (the first field of mountinfo).
    pub id: u64,
    pub target: PathBuf,
    pub dev: u64,
    pub fstype: String,
    pub read_only: bool,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount of this mount namespace.
pub(crate) fn mounts() -> Result<Vec<MountEntry>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::os(Step::Open, "/proc/self/mountinfo", "read", e))?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let source = unescape(f.get(sep + 2)?);
            let mut dev = parse_dev(f.get(2)?)?;
            // Filesystems like btrfs report an anonymous device number; the
            // source names the block device.
            if nix::sys::stat::major(dev) == 0
                && let Ok(m) = std::fs::metadata(&source)
                && m.file_type().is_block_device()
            {
                dev = m.rdev();
            }
            Some(MountEntry {
                id: f.first()?.parse().ok()?,
                target: PathBuf::from(unescape(f.get(4)?)),
                dev,
                fstype: f.get(sep + 1)?.to_string(),
                read_only: f.get(5)?.split(',').any(|o| o == "ro"),
            })
        })
        .collect())
}

fn invalid(path: &Path, why: impl Into<String>) -> Error {
    Error::invalid(Step::Open, path, why)
}

fn read_sys(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Rebuilds the lifecycle value for `path`: a mount point, or a block
/// device (`/dev/loop0`, `/dev/loop0p1`, `/dev/mapper/loop0p1`, ...).
///
/// # Errors
/// [`Step::Open`]: the path is neither a mount point nor a block device, or
/// the device is mounted in several places.
pub fn adopt(path: impl AsRef<Path>) -> Result<Adopted> {
    let given = path.as_ref();
    let path =
        std::fs::canonicalize(given).map_err(|e| Error::os(Step::Open, given, "resolve", e))?;
    let meta = std::fs::metadata(&path).map_err(|e| Error::os(Step::Open, &path, "stat", e))?;
    let all = mounts()?;
    let (rdev, mount) = if meta.is_dir() {
        let m = all
            .iter()
            .rev()
            .find(|m| m.target == path)
            .ok_or_else(|| invalid(&path, "is not a mount point"))?;
        (m.dev, Some(m.clone()))
    } else if meta.file_type().is_block_device() {
        let on: Vec<&MountEntry> = all.iter().filter(|m| m.dev == meta.rdev()).collect();
        match on.as_slice() {
            [] => (meta.rdev(), None),
            [m] => (meta.rdev(), Some((*m).clone())),
            many => {
                return Err(invalid(
                    &path,
                    format!(
                        "is mounted in {} places ({}); adopt one mount point at a time",
                        many.len(),
                        many.iter()
                            .map(|m| m.target.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    } else {
        return Err(invalid(
            &path,
            "is neither a mount point nor a block device",
        ));
    };
    let mapped = adopt_device(&path, rdev, mount.as_ref().is_some_and(|m| m.read_only))?;
    debug!(
        "adopt: {} is {} ({}) on {}",
        path.display(),
        mapped.device().display(),
        mapped.mapping().as_str(),
        mapped.attached().device().display()
    );
    match mount {
        Some(m) => Ok(Adopted::Mounted(Mounted::adopt(
            m.target,
            m.fstype,
            m.read_only,
            mapped,
        )?)),
        None if mapped.mapping() == Mapping::Whole => Ok(Adopted::Attached(mapped.unmap()?)),
        None => Ok(Adopted::Mapped(mapped)),
    }
}

fn open_dev(path: &Path, read_only: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::os(Step::Open, path, "open device", e))
}

/// The device `rdev` as a mapped partition of an attached device.
fn adopt_device(given: &Path, rdev: u64, read_only: bool) -> Result<Mapped<Auto>> {
    let name = sysfs::name_of(rdev)
        .ok_or_else(|| invalid(given, "is not a block device the kernel knows"))?;
    let sys = Path::new("/sys/class/block").join(&name);
    let node = PathBuf::from("/dev").join(&name);
    if let Some(number) = read_sys(sys.join("partition")).and_then(|n| n.parse::<u32>().ok()) {
        // A partition: its parent is the directory above it in sysfs.
        let real =
            std::fs::canonicalize(&sys).map_err(|e| Error::os(Step::Open, &sys, "resolve", e))?;
        let parent = real
            .parent()
            .and_then(|p| p.file_name())
            .map(|p| p.to_string_lossy().into_owned())
            .ok_or_else(|| invalid(given, "has no parent device in sysfs"))?;
        let attached = adopt_whole(&parent, read_only)?;
        let partscan =
            read_sys(format!("/sys/block/{parent}/loop/partscan")).as_deref() == Some("1");
        let is_loop = Path::new(&format!("/sys/block/{parent}/loop")).exists();
        // On a loop device the node goes whoever made it (a BLKPG add, or
        // the kernel's scan): the device is about to be detached anyway.
        // Where partition scanning is on, the kernel may have made it; where
        // it is off, only BLKPG can have. Other disks' nodes are the kernel's.
        let mapping = if is_loop && !partscan {
            Mapping::Blkpg
        } else {
            Mapping::KernelNode
        };
        let undo = if is_loop {
            let parent_file = attached
                .device
                .file()
                .try_clone()
                .map_err(|e| Error::os(Step::Open, attached.device(), "dup device", e))?;
            Undo::DelPartition {
                parent: parent_file,
                number,
            }
        } else {
            Undo::Nothing
        };
        let info = part_info(&sys, number);
        let file = open_dev(&node, read_only)?;
        let part = MappedPart::new(node, info.as_ref(), mapping, &attached.device, file, undo);
        return Ok(Mapped::from_parts(part, info, attached));
    }
    if let Some(dm_name) = read_sys(sys.join("dm/name")) {
        // A device-mapper target over one parent device.
        let slaves: Vec<String> = std::fs::read_dir(sys.join("slaves"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let [parent] = slaves.as_slice() else {
            return Err(invalid(
                given,
                format!("device-mapper target {dm_name} is not over one device: {slaves:?}"),
            ));
        };
        let attached = adopt_whole(parent, read_only)?;
        let path = PathBuf::from("/dev/mapper").join(&dm_name);
        let table = run(
            Step::Open,
            &path,
            Command::new("dmsetup").args(["table", &dm_name]),
        )?;
        let start = table
            .split_whitespace()
            .nth(4)
            .and_then(|s| s.parse::<u64>().ok())
            .map(|s| s * 512);
        let info = start.and_then(|start| {
            let dev = &attached.device;
            partition::read_table(dev.file(), dev.path(), dev.size)
                .ok()
                .flatten()
                .and_then(|t| t.partitions.into_iter().find(|p| p.start == start))
        });
        let file = open_dev(&path, read_only)?;
        let part = MappedPart::new(
            path,
            info.as_ref(),
            Mapping::DeviceMapper,
            &attached.device,
            file,
            Undo::RemoveDm { name: dm_name },
        );
        return Ok(Mapped::from_parts(part, info, attached));
    }
    let loop_dir = sys.join("loop");
    if loop_dir.exists() {
        let offset: u64 = read_sys(loop_dir.join("offset"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let limit: u64 = read_sys(loop_dir.join("sizelimit"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let backing = read_sys(loop_dir.join("backing_file")).unwrap_or_default();
        if offset != 0 || limit != 0 {
            // An offset loop device: the attached one is the loop device
            // over the same file from its start.
            if let Some(parent) = loop_over(&backing, &name) {
                let attached = adopt_whole(&parent, read_only)?;
                let nr = loop_number(&name)
                    .ok_or_else(|| invalid(given, "unexpected loop device name"))?;
                let file = open_dev(&node, read_only)?;
                let size = blk::getsize64(&file).unwrap_or(limit);
                let info = partition::read_table(
                    attached.device.file(),
                    attached.device(),
                    attached.size(),
                )
                .ok()
                .flatten()
                .and_then(|t| {
                    t.partitions
                        .into_iter()
                        .find(|p| p.start == offset && p.size == size)
                });
                let backing_file = open_backing(&backing, read_only);
                let part = MappedPart::new(
                    node,
                    info.as_ref(),
                    Mapping::OffsetLoop,
                    &attached.device,
                    file,
                    Undo::DetachLoop {
                        nr,
                        backing: backing_file,
                    },
                );
                return Ok(Mapped::from_parts(part, info, attached));
            }
        }
    }
    let attached = adopt_whole(&name, read_only)?;
    let part = crate::mapping::whole(&attached.device)?;
    Ok(Mapped::from_parts(part, None, attached))
}

/// The partition's geometry as sysfs records it.
fn part_info(sys: &Path, number: u32) -> Option<PartitionInfo> {
    let sectors = |f: &str| read_sys(sys.join(f))?.parse::<u64>().ok();
    Some(PartitionInfo {
        number,
        start: sectors("start")? * 512,
        size: sectors("size")? * 512,
        kind: crate::partition::PartitionType::Mbr { id: 0, name: None },
        name: None,
    })
}

fn loop_number(name: &str) -> Option<u32> {
    name.strip_prefix("loop")?.parse().ok()
}

/// A loop device other than `except` over `backing` from offset 0.
fn loop_over(backing: &str, except: &str) -> Option<String> {
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let dir = e.path().join("loop");
            (name != except
                && read_sys(dir.join("backing_file")).as_deref() == Some(backing)
                && read_sys(dir.join("offset")).as_deref() == Some("0"))
            .then_some(name)
        })
}

fn open_backing(backing: &str, read_only: bool) -> Option<File> {
    if backing.ends_with(" (deleted)") {
        return None;
    }
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(backing)
        .ok()
}

/// The whole device `name` as an attached device: a loop device we will
/// unbind, or another block device we only close.
fn adopt_whole(name: &str, read_only: bool) -> Result<Attached<Auto>> {
    let node = PathBuf::from("/dev").join(name);
    let ro = read_only || read_sys(format!("/sys/block/{name}/ro")).as_deref() == Some("1");
    let file = open_dev(&node, ro)?;
    let size =
        blk::getsize64(&file).map_err(|e| Error::os(Step::Open, &node, "BLKGETSIZE64", e))?;
    let diskseq = blk::getdiskseq(&file).ok();
    let backing = read_sys(format!("/sys/block/{name}/loop/backing_file"));
    let nbd_pid = read_sys(format!("/sys/block/{name}/pid"));
    if name.starts_with("nbd")
        && let Some(pid) = nbd_pid
    {
        // Served by a qemu-nbd: the image is its last argument.
        let image = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|c| {
                c.split(|b| *b == 0)
                    .rfind(|a| !a.is_empty())
                    .map(|a| PathBuf::from(String::from_utf8_lossy(a).into_owned()))
            })
            .unwrap_or_else(|| node.clone());
        let server = crate::backend::nbd::adopted(&node, &image);
        let image = Image::found(image, ImageKind::File, ro);
        let held = Held::Nbd {
            server: Box::new(server),
        };
        let device = Device::new(
            BackendKind::Nbd,
            node,
            image.path().to_path_buf(),
            ro,
            size,
            diskseq,
            file,
            held,
        );
        return Ok(Attached::from_parts(device, image));
    }
    let (kind, image, held) = match (loop_number(name), backing) {
        (Some(nr), Some(backing)) => {
            let image = PathBuf::from(backing.trim_end_matches(" (deleted)"));
            let held = Held::Loop {
                nr,
                backing: open_backing(&backing, ro),
            };
            (
                BackendKind::Loop,
                Image::found(image, ImageKind::File, ro),
                held,
            )
        }
        _ => (
            BackendKind::Block,
            Image::found(node.clone(), ImageKind::Block, ro),
            Held::Block,
        ),
    };
    let device = Device::new(
        kind,
        node,
        image.path().to_path_buf(),
        ro,
        size,
        diskseq,
        file,
        held,
    );
    Ok(Attached::from_parts(device, image))
}

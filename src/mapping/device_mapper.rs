//! Strategy 3: a device-mapper linear target over the partition's range,
//! named as kpartx names it (`/dev/mapper/loop0p1`), for block devices
//! where adding partitions is not possible. Created and removed with
//! `dmsetup`, always by the target's own name, never by image path.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{MappedPart, Mapping, Undo, open_node, wait_for_node};
use crate::backend::Core;
use crate::command::run;
use crate::error::{Error, ErrorKind, Result, Step};
use crate::kernel::sysfs;
use crate::partition::PartitionInfo;

const CONTROL: &str = "/dev/mapper/control";

/// Whether this kernel has device-mapper: the control device opens (which
/// loads dm-mod on demand where the node is a static one). A node alone
/// proves nothing: `dmsetup` leaves one behind on kernels without the
/// driver, and opening it then fails with `ENODEV`.
pub(crate) fn available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(CONTROL)
        .is_ok()
}

pub(crate) fn create(device: &Core, part: &PartitionInfo) -> Result<MappedPart> {
    if !available() {
        return Err(Error::refused(
            ErrorKind::KernelFeatureMissing,
            Step::Map,
            device.path(),
            format!(
                "device-mapper is not available ({CONTROL} is missing or has no driver; modprobe dm-mod)"
            ),
        ));
    }
    let disk = sysfs::name_of(device.rdev).ok_or_else(|| {
        Error::invalid(Step::Map, device.path(), "cannot find the device in sysfs")
    })?;
    let name = format!("{disk}p{}", part.number);
    let table = format!(
        "0 {} linear {}:{} {}",
        part.size / 512,
        nix::sys::stat::major(device.rdev),
        nix::sys::stat::minor(device.rdev),
        part.start / 512
    );
    let (path, file) = create_target(device, &name, &[table])?;
    Ok(MappedPart::new(
        path,
        Some(part),
        Mapping::DeviceMapper,
        device,
        file,
        Undo::RemoveDm { name },
    ))
}

/// Creates target `name` with `table` (one line per target, over
/// `device`), waits for its node and opens it as `device` is open; checks
/// it is the target just made. On failure, the target is removed again.
pub(super) fn create_target(
    device: &Core,
    name: &str,
    table: &[String],
) -> Result<(PathBuf, std::fs::File)> {
    let path = PathBuf::from("/dev/mapper").join(name);
    if path.exists() {
        return Err(Error::invalid(
            Step::Map,
            &path,
            "exists already (left over by an earlier run? `diskmount cleanup` or `dmsetup remove`)",
        ));
    }
    let mut cmd = Command::new("dmsetup");
    // --noudevsync: without udev (containers, initramfs, the test VM),
    // dmsetup would wait for a udev cookie nobody releases; the node is
    // waited for (or made with `mknodes`) below instead.
    cmd.args(["create", "--noudevsync", name]);
    // One line goes on the command line; several in a file (`--table`
    // splits lines badly in some dmsetup versions).
    let table_file = match table {
        [one] => {
            cmd.args(["--table", one]);
            None
        }
        lines => {
            let mut f = tempfile::NamedTempFile::new()
                .map_err(|e| Error::os(Step::Map, &path, "create table file", e))?;
            std::io::Write::write_all(&mut f, (lines.join("\n") + "\n").as_bytes())
                .map_err(|e| Error::os(Step::Map, &path, "write table file", e))?;
            cmd.arg(f.path());
            Some(f)
        }
    };
    if device.read_only {
        cmd.arg("--readonly");
    }
    run(Step::Map, device.path(), &mut cmd)?;
    drop(table_file);
    let opened = (|| {
        // With udev the node appears asynchronously; without it, nobody
        // makes it but `dmsetup mknodes`.
        if !wait_for_node(&path, None, Duration::from_millis(100)) {
            run(
                Step::Map,
                &path,
                Command::new("dmsetup").args(["mknodes", name]),
            )?;
        }
        if !wait_for_node(&path, None, Duration::from_secs(5)) {
            return Err(Error::invalid(
                Step::Map,
                &path,
                "the device-mapper node did not appear",
            ));
        }
        let file = open_node(&path, device.read_only)
            .map_err(|e| Error::os(Step::Map, &path, "open device-mapper node", e))?;
        // It must be the target we just made, not a leftover of that name.
        let rdev = file
            .metadata()
            .map_err(|e| Error::os(Step::Map, &path, "fstat", e))?
            .rdev();
        let dm = sysfs::name_of(rdev).unwrap_or_default();
        let dm_name =
            std::fs::read_to_string(format!("/sys/block/{dm}/dm/name")).unwrap_or_default();
        if dm_name.trim() != name {
            return Err(Error::invalid(
                Step::Map,
                &path,
                "is not the device-mapper target just created",
            ));
        }
        Ok(file)
    })();
    match opened {
        Ok(file) => Ok((path, file)),
        Err(e) => {
            if let Err(rm) = remove(name, &path) {
                log::warn!("map: removing {name} after a failed map: {rm}");
            }
            Err(e)
        }
    }
}

/// Removes the target `name` (retrying while udev or a closing opener
/// still holds it).
pub(crate) fn remove(name: &str, path: &Path) -> Result<()> {
    run(
        Step::Unmap,
        path,
        Command::new("dmsetup").args(["remove", "--noudevsync", "--retry", name]),
    )?;
    if path.exists() {
        // No udev to remove the node: have dmsetup make /dev/mapper agree
        // with the kernel again.
        run(
            Step::Unmap,
            path,
            Command::new("dmsetup").args(["mknodes", name]),
        )?;
    }
    Ok(())
}

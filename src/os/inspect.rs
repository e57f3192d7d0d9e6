//! Finding OS roots: each filesystem of the image mounted read-only,
//! without journal replay and detached (no mount point), then read
//! through [`Root`].

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use log::{debug, warn};

use super::source::{Sources, Target};
use super::{Found, Location, OsInfo, OsMountpoint};
use crate::backend::Core;
use crate::error::Result;
use crate::fs::{Detected, FsType};
use crate::guest::fstab;
use crate::guest::os_release::{self, OsRelease};
use crate::mapping::{self, MapStrategy};
use crate::mount::{by_fd, plan};
use crate::options::MountOptions;
use crate::partition::gpt::ROOT_NATIVE;
use crate::partition::{Partition, PartitionInfo, PartitionTable, PartitionType};
use crate::root::Root;

/// The most bytes of `etc/hostname` read.
const MAX_HOSTNAME: u64 = 4096;
/// The most bytes of `etc/fstab` read.
const MAX_FSTAB: u64 = 1 << 20;

/// A logical volume: (VG, LV).
type Lv = (String, String);

/// What the inspection found, and what it could not look into.
pub(crate) struct Report {
    pub(crate) found: Vec<Found>,
    /// `"partition 3 (xfs): <why>"` for each filesystem that would not
    /// mount.
    pub(crate) failed: Vec<String>,
    /// [`Scope::ForMount`]: the devices of the filesystems roots were
    /// found on, kept mapped (not released) for the mount that follows.
    pub(crate) kept: Vec<(Location, crate::mapping::MappedPart)>,
}

/// How much of the image to look into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every filesystem ([`crate::Attached::inspect_os`]: list them all).
    Every,
    /// For a mount ([`crate::Partition::Os`], [`crate::Partition::Auto`]):
    /// the likely roots first (the DPS root partition type, an LV named
    /// `root`), and a filesystem that the fstab of a root already found
    /// mounts below `/` (its `/boot`, its `/home`) is that OS's, not a root
    /// of its own, so it is not mounted to be looked into. `keep_mount`
    /// ([`crate::MapOptions::keep_inspection_mount`]): the look at a root
    /// is made so that it can become the mount, and kept with its device.
    ForMount { keep_mount: bool },
}

/// Inspects every filesystem of `device` (partitions of `table`, or the
/// whole device if it has none), as far as `scope` says.
pub(crate) fn inspect(
    device: &Core,
    table: Option<&PartitionTable>,
    scope: Scope,
) -> Result<Report> {
    let mut report = Report {
        found: Vec::new(),
        failed: Vec::new(),
        kept: Vec::new(),
    };
    // Partitions (or the whole disk), then the logical volumes on them,
    // probed once (the table as the map step read it).
    let mut candidates: Vec<(Option<PartitionInfo>, Option<Lv>, Detected)> =
        crate::volume::candidates_in(device.file(), device.path(), device.size, table)
            .into_iter()
            .filter_map(|c| match c.partition {
                Partition::LogicalVolume { vg, lv } => Some((None, Some((vg, lv)), c.detected)),
                Partition::Number(_) | Partition::Whole => Some((c.info, None, c.detected)),
                _ => None,
            })
            .collect();
    let for_mount = matches!(scope, Scope::ForMount { .. });
    let keep_mount = matches!(scope, Scope::ForMount { keep_mount: true });
    if for_mount {
        candidates.sort_by_key(|(part, lv, _)| !likely_root(part.as_ref(), lv.as_ref()));
    }
    // What the fstabs of the roots found so far mount below `/`.
    let mut claimed: Vec<(Target, String)> = Vec::new();
    let sources = Sources::new(device, table);
    for (part, lv, detected) in candidates {
        let Detected::Filesystem { fstype, .. } = detected else {
            continue;
        };
        // The ESP holds no os-release, and this kernel may lack vfat.
        if !fstype.is_allowed() || fstype == FsType::Vfat {
            continue;
        }
        let place = Location {
            part: part.clone(),
            lv: lv.clone(),
            subvolume: None,
        };
        let target = match &lv {
            Some((vg, lv)) => Target::Lv(vg.clone(), lv.clone()),
            None => Target::Part(part.clone()),
        };
        if let Some((_, by)) = claimed.iter().find(|(t, _)| *t == target) {
            debug!(
                "inspect: {}: {} is {by}: not looked into",
                device.path().display(),
                place.describe()
            );
            continue;
        }
        let before = report.found.len();
        let keep = for_mount.then_some(&mut report.kept);
        let looked = inspect_one(
            device,
            table,
            &place,
            fstype,
            &mut report.found,
            keep,
            keep_mount,
        );
        if for_mount {
            for f in &mut report.found[before..] {
                claimed.extend(claims(&sources, f));
            }
        }
        if let Err(why) = looked {
            let what = format!("{} ({fstype}): {why}", place.describe());
            warn!(
                "inspect: {}: cannot look into {what}",
                device.path().display()
            );
            report.failed.push(what);
        }
    }
    debug!(
        "inspect: {}: {} OS root(s): {}",
        device.path().display(),
        report.found.len(),
        report
            .found
            .iter()
            .map(Found::describe)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(report)
}

/// Whether a candidate is likely an OS root: on this architecture's DPS
/// root partition type, or a logical volume named like one.
fn likely_root(part: Option<&PartitionInfo>, lv: Option<&Lv>) -> bool {
    let dps = part
        .is_some_and(|p| matches!(&p.kind, PartitionType::Gpt { guid, .. } if guid == ROOT_NATIVE));
    dps || lv.is_some_and(|(_, name)| name == "root" || name.ends_with("root"))
}

/// What the fstab of the root `found` mounts below `/` (entries it would
/// skip aside), each with what it is for the log; each entry's source, as
/// resolved, is kept in `found.sources`.
fn claims(sources: &Sources<'_>, found: &mut Found) -> Vec<(Target, String)> {
    found.sources = found
        .fstab
        .iter()
        .map(|e| (e.mount_point != "/" && e.skip().is_none()).then(|| sources.resolve(&e.source)))
        .collect();
    found
        .fstab
        .iter()
        .zip(&found.sources)
        .filter_map(|(e, resolved)| {
            let target = resolved.as_ref()?.as_ref().ok()?.clone();
            Some((target, format!("{} of {}", e.mount_point, found.describe())))
        })
        .collect()
}

/// Mounts one filesystem detached and looks for roots in it (and in its
/// subvolumes). A device it finds a root on goes into `keep` if given, and
/// with `keep_mount` the look itself with it, if it can become the mount
/// ([`by_fd::mount_reusable`]: xfs, on a writable device of ours).
fn inspect_one(
    device: &Core,
    table: Option<&PartitionTable>,
    place: &Location,
    fstype: FsType,
    found: &mut Vec<Found>,
    keep: Option<&mut Vec<(Location, crate::mapping::MappedPart)>>,
    keep_mount: bool,
) -> Result<()> {
    let mut mapped = match (&place.part, &place.lv) {
        (_, Some((vg, lv))) => {
            mapping::logical_volume_in(device, table, vg, lv, MapStrategy::Auto)?
        }
        (None, None) => mapping::whole(device)?,
        (Some(p), None) => mapping::map(device, p, MapStrategy::Auto)?,
    };
    let before = found.len();
    // `keep_mount` comes with `keep` (Scope::ForMount).
    let reusable = keep_mount
        && fstype == FsType::Xfs
        && !device.read_only
        && device.kind != crate::backend::BackendKind::Block;
    let result = look(
        &mapped.path,
        reusable.then(|| mapped.file()),
        fstype,
        place,
        found,
    );
    // Unless kept, the detached mount is gone (its descriptors closed in
    // `look`).
    match (result, keep) {
        (Ok(kept_mount), Some(keep)) if found.len() > before => {
            // A root is on it: the mount maps it the same way next.
            if let Some(look) = kept_mount {
                mapped.keep_inspected(look);
            }
            keep.push((place.clone(), mapped));
            Ok(())
        }
        (result, _) => {
            // A look, if any, goes before its device.
            let result = result.map(drop);
            let released = mapped.release();
            result.and(released)
        }
    }
}

/// Looks into the filesystem on `node` for roots. With `reusable` (the
/// device, open) the mount is tried as [`by_fd::mount_reusable`] first,
/// and returned if a root was found on it.
fn look(
    node: &Path,
    reusable: Option<&std::fs::File>,
    fstype: FsType,
    place: &Location,
    found: &mut Vec<Found>,
) -> Result<Option<by_fd::ReadOnlyLook>> {
    let part = place.part.as_ref();
    let mut extra = Vec::new();
    if fstype == FsType::Btrfs {
        // The top level, whatever the default subvolume is.
        extra.push("subvolid=5");
    }
    if fstype == FsType::Xfs {
        // Another copy of the same image may be mounted at the same time.
        extra.push("nouuid");
    }
    let mut options = MountOptions::default().read_only(true);
    if !extra.is_empty() {
        options = options.options(extra.join(","));
    }
    let plan = plan::plan(&options, fstype.driver().to_string(), Some(fstype), true);
    let kept = match reusable {
        Some(file) => {
            let plan = plan::reusable(fstype.driver().to_string(), fstype);
            by_fd::mount_reusable(node, file, &plan)?
        }
        None => None,
    };
    let (look, top) = match kept {
        Some((look, top)) => (Some(look), top),
        None => (None, by_fd::mount_detached(node, &plan)?),
    };
    let before = found.len();
    let at = format!("/proc/self/fd/{}", top.as_raw_fd());
    let root = Root::open(&at)?;
    let dps_root = part
        .is_some_and(|p| matches!(&p.kind, PartitionType::Gpt { guid, .. } if guid == ROOT_NATIVE));
    let location = |subvolume: Option<String>| Location {
        part: part.cloned(),
        lv: place.lv.clone(),
        subvolume,
    };
    if let Some(f) = read_os(&root, location(None), fstype, dps_root) {
        found.push(f);
    }
    if fstype == FsType::Btrfs {
        let subvolumes = crate::volume::btrfs::list_subvolumes(top.as_fd(), node)?;
        for sv in subvolumes {
            let name = sv.path.to_string_lossy().into_owned();
            let Ok(dir) = root.resolve(&sv.path, false) else {
                debug!(
                    "inspect: {}: subvolume {name} is not reachable by path",
                    node.display()
                );
                continue;
            };
            let Ok(sub) = Root::open(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
                continue;
            };
            if let Some(f) = read_os(&sub, location(Some(name)), fstype, dps_root) {
                found.push(f);
            }
        }
    }
    drop(root);
    drop(top);
    Ok(look.filter(|_| found.len() > before))
}

/// Reads at most `limit` bytes of the regular file `path` inside `root`;
/// `None` if there is none (or it cannot be read).
fn read_small(root: &Root<'_>, path: &str, limit: u64) -> Option<String> {
    let file = match root.open_file(path) {
        Ok(f) => f,
        Err(e) => {
            debug!("inspect: {path}: {e}");
            return None;
        }
    };
    let mut buf = Vec::new();
    file.take(limit).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// The OS whose root `root` is, if it is one.
fn read_os(root: &Root<'_>, location: Location, fstype: FsType, dps_root: bool) -> Option<Found> {
    let limit = os_release::MAX_LEN as u64;
    let release = read_small(root, "etc/os-release", limit)
        .or_else(|| read_small(root, "usr/lib/os-release", limit))?;
    let release = OsRelease::parse(&release);
    let hostname =
        read_small(root, "etc/hostname", MAX_HOSTNAME).and_then(|t| os_release::hostname(&t));
    let (entries, bad) = read_small(root, "etc/fstab", MAX_FSTAB + 1)
        .map(|mut t| {
            // Over the bound: only its whole lines are read, never the
            // start of one cut at the bound (`/boot/efi` cut to `/boot`).
            if fstab::whole_lines_within(&mut t, MAX_FSTAB as usize) {
                warn!(
                    "inspect: {}: etc/fstab is over {MAX_FSTAB} bytes; only its whole lines within them are read",
                    location.describe()
                );
            }
            fstab::parse(&t)
        })
        .unwrap_or_default();
    for b in &bad {
        warn!(
            "inspect: {}: etc/fstab line {}: {}",
            location.describe(),
            b.line,
            b.reason
        );
    }
    let info = OsInfo {
        root: location.describe(),
        partition: location.part.as_ref().map(|p| p.number),
        subvolume: location.subvolume.clone(),
        logical_volume: location.lv.as_ref().map(|(vg, lv)| format!("{vg}/{lv}")),
        fstype: fstype.as_str().to_string(),
        id: release.id().to_string(),
        version_id: release.version_id().map(str::to_string),
        pretty_name: release.pretty_name().to_string(),
        hostname,
        mountpoints: entries.iter().map(OsMountpoint::of).collect(),
    };
    debug!(
        "inspect: {} holds an OS root: {} {:?}",
        location.describe(),
        info.id,
        info.pretty_name
    );
    Some(Found {
        location,
        info,
        fstab: entries,
        dps_root,
        sources: Vec::new(),
    })
}

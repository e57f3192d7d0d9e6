//! What [`Partition::Auto`] and [`Partition::Os`] make of the OS roots the
//! inspection finds:
//!
//! - exactly one: it (a subvolume root mounts with `subvol=`);
//! - several: the one on this architecture's DPS root partition if only
//!   one partition is of that type; several subvolumes of one filesystem
//!   are left for the mount step to pick by [`MountOptions::subvolume`];
//!   anything else is an error that lists them and says how to pick one;
//! - none: `Auto` goes on with the partition rules of `partition::select`,
//!   `Os` is an error.

use std::path::Path;

use log::{debug, warn};

use super::Found;
use super::inspect::{Scope, inspect};
use crate::backend::Core;
use crate::error::{Error, ErrorKind, Result, Step};
use crate::options::MountOptions;
use crate::partition::{Partition, PartitionTable};

/// The OS root(s) the map step settled on.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    /// One root, or several subvolumes of the one mapped filesystem.
    pub(crate) roots: Vec<Found>,
    /// [`Partition::Os`]: the fstab's filesystems are mounted too.
    pub(crate) tree: bool,
    /// The image's partition table, for the fstab's sources.
    pub(crate) table: Option<PartitionTable>,
}

/// A [`Choice`], and the device of its root as the inspection mapped it
/// (by [`crate::mapping::MapStrategy::Auto`]), if it kept it.
pub(crate) struct Chosen {
    pub(crate) choice: Choice,
    pub(crate) mapped: Option<crate::mapping::MappedPart>,
}

/// How to pick one root, for the error messages.
const HOW: &str = "pick one with --partition N (Partition::Number), --partition lv=VG/LV \
                   (Partition::LogicalVolume) or --subvolume NAME (MountOptions::subvolume)";

fn list(roots: &[&Found]) -> String {
    roots
        .iter()
        .map(|f| f.describe())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Inspects `device` for [`Partition::Auto`] and [`Partition::Os`];
/// `None` for other selections, and for `Auto` when no OS root is found.
/// With `keep_mount` the inspection's look at the root is kept with its
/// device, to become the mount ([`crate::MapOptions::keep_inspection_mount`]).
///
/// # Errors
/// [`Step::Map`]: several OS roots on different partitions; `Os` and no
/// root found.
pub(crate) fn choose(
    device: &Core,
    table: Option<&PartitionTable>,
    wanted: &Partition,
    keep_mount: bool,
) -> Result<Option<Chosen>> {
    let tree = match wanted {
        Partition::Auto => false,
        Partition::Os => true,
        _ => return Ok(None),
    };
    let path = device.path();
    let report = inspect(device, table, Scope::ForMount { keep_mount })?;
    let all: Vec<&Found> = report.found.iter().collect();
    if all.is_empty() {
        if tree {
            let failed = if report.failed.is_empty() {
                String::new()
            } else {
                format!(
                    "; these filesystems could not be looked into: {}",
                    report.failed.join("; ")
                )
            };
            return Err(Error::refused(
                ErrorKind::NotFound,
                Step::Map,
                path,
                format!(
                    "holds no guest OS: no filesystem or btrfs subvolume has etc/os-release or \
                     usr/lib/os-release{failed}"
                ),
            ));
        }
        if !report.failed.is_empty() {
            warn!(
                "map: {}: no OS root found, but {} could not be looked into; using the \
                 partition rules",
                path.display(),
                report.failed.join("; ")
            );
        }
        return Ok(None);
    }
    let mut roots = all.clone();
    let same_part = |r: &[&Found]| {
        r.windows(2).all(|w| {
            w[0].location.part == w[1].location.part && w[0].location.lv == w[1].location.lv
        })
    };
    if !same_part(&roots) {
        let dps: Vec<&Found> = roots.iter().copied().filter(|f| f.dps_root).collect();
        if !dps.is_empty() && same_part(&dps) {
            debug!(
                "map: {}: the OS root on the DPS root partition wins",
                path.display()
            );
            roots = dps;
        }
    }
    if !same_part(&roots) {
        return Err(Error::invalid(
            Step::Map,
            path,
            format!("holds {} OS roots: {}; {HOW}", all.len(), list(&all)),
        ));
    }
    let at = (&roots[0].location.part, &roots[0].location.lv);
    let mut mapped = None;
    for (l, mut m) in report.kept {
        if mapped.is_none() && (&l.part, &l.lv) == at {
            mapped = Some(m);
        } else {
            // Another root's device, not the one to mount.
            m.release()?;
        }
    }
    Ok(Some(Chosen {
        choice: Choice {
            roots: roots.into_iter().cloned().collect(),
            tree,
            table: table.cloned(),
        },
        mapped,
    }))
}

impl Choice {
    /// The root to mount: the only one, or the subvolume `options` names.
    ///
    /// # Errors
    /// [`Step::Mount`] naming `device`: several subvolume roots and none
    /// (or another) named.
    pub(crate) fn pick(&self, options: &MountOptions, device: &Path) -> Result<&Found> {
        if let Some(want) = &options.subvolume {
            let trim = |s: &str| s.trim_matches('/').to_string();
            if let Some(f) = self
                .roots
                .iter()
                .find(|f| f.location.subvolume.as_deref().map(trim) == Some(trim(want)))
            {
                return Ok(f);
            }
            if self.roots.len() > 1 {
                return Err(Error::invalid(
                    Step::Mount,
                    device,
                    format!(
                        "subvolume {want:?} holds no OS root; the OS roots are: {}",
                        list(&self.roots.iter().collect::<Vec<_>>())
                    ),
                ));
            }
        }
        match self.roots.as_slice() {
            [one] => Ok(one),
            many => Err(Error::invalid(
                Step::Mount,
                device,
                format!(
                    "holds {} OS roots: {}; {HOW}",
                    many.len(),
                    list(&many.iter().collect::<Vec<_>>())
                ),
            )),
        }
    }
}

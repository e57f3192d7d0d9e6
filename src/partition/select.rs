//! Choosing the partition a [`Partition`] selection means.
//!
//! `Partition::Auto` (Nova calls it "partition search" and leaves it
//! unsupported) decides by these rules, in order:
//!
//! 1. no partition table → the whole disk;
//! 2. exactly one partition holds a filesystem diskmount mounts → it;
//! 3. GPT: the root partition of this architecture by its Discoverable
//!    Partitions Specification type, then the one generic "Linux filesystem"
//!    partition, then the /usr partition of this architecture;
//! 4. the single largest partition holding an allowed Linux filesystem
//!    (not vfat);
//! 5. otherwise an error listing the candidates and how to pick one.

use std::path::Path;

use log::debug;

use super::gpt::{LINUX_GENERIC, ROOT_NATIVE, USR_NATIVE};
use super::{Partition, PartitionInfo, PartitionTable, PartitionType};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::fs::{Detected, FsType, probe_at};
use crate::read_at::ReadAt;

/// What each partition of `table` holds, read from the partition's first
/// bytes on `device` (a device, a file or a byte slice).
pub fn find_filesystems<R: ReadAt + ?Sized>(
    device: &R,
    table: &PartitionTable,
) -> Vec<(PartitionInfo, Detected)> {
    table
        .partitions
        .iter()
        .map(|p| {
            let found = probe_at(device, p.start, p.size).unwrap_or(Detected::Unknown);
            (p.clone(), found)
        })
        .collect()
}

fn fs_of(d: &Detected) -> Option<FsType> {
    match d {
        Detected::Filesystem { fstype, .. } => Some(*fstype),
        _ => None,
    }
}

fn label_of(d: &Detected) -> Option<&str> {
    match d {
        Detected::Filesystem { label, .. } => label.as_deref(),
        _ => None,
    }
}

fn is_type(p: &PartitionInfo, guid: &str) -> bool {
    matches!(&p.kind, PartitionType::Gpt { guid: g, .. } if g == guid)
}

fn numbers(parts: &[&(PartitionInfo, Detected)]) -> String {
    parts
        .iter()
        .map(|(p, d)| format!("{} ({}, {} MiB)", p.number, d.describe(), p.size >> 20))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves `wanted` against the table of `device` (`path`): `None` means
/// the whole device.
///
/// # Errors
/// [`Step::Map`]: no such partition, no table where one is needed, an
/// ambiguous label or search; the message lists what exists.
pub fn select<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    table: Option<&PartitionTable>,
    wanted: &Partition,
) -> Result<Option<PartitionInfo>> {
    let fail = |why: String| Err(Error::refused(ErrorKind::NotFound, Step::Map, path, why));
    match (wanted, table) {
        (Partition::Whole, _) => Ok(None),
        (Partition::Number(0), _) => {
            fail("partitions are numbered from 1; use Partition::Whole for the whole disk".into())
        }
        (Partition::Number(n), None) => fail(format!(
            "has no partition table, so no partition {n}; use Partition::Whole"
        )),
        (Partition::Number(n), Some(t)) => match t.get(*n) {
            Some(p) => Ok(Some(p.clone())),
            None => fail(format!(
                "has no partition {n}; the {} table has: {}",
                t.kind.as_str(),
                t.summary()
            )),
        },
        (Partition::Label(label), None) => {
            let whole = probe_at(device, 0, u64::MAX)
                .map_err(|e| Error::os(Step::Map, path, "read superblock", e))?;
            if label_of(&whole) == Some(label.as_str()) {
                Ok(None)
            } else {
                fail(format!(
                    "has no partition table, and its filesystem is not labelled {label:?} ({})",
                    label_of(&whole).map_or("no label".to_string(), |l| format!("label {l:?}"))
                ))
            }
        }
        (Partition::Label(label), Some(t)) => by_label(device, path, t, label),
        (Partition::Auto, None) => Ok(None),
        (Partition::Auto, Some(t)) => auto(device, path, t),
        (Partition::Os, _) => Err(Error::refused(
            ErrorKind::NotFound,
            Step::Map,
            path,
            "holds no guest OS root (no etc/os-release or usr/lib/os-release)",
        )),
        (Partition::LogicalVolume { .. }, _) => Err(Error::invalid(
            Step::Map,
            path,
            format!(
                "{wanted} is not a partition of the table: Attached::map maps it \
                 (`diskmount inspect` lists the logical volumes)"
            ),
        )),
    }
}

fn by_label<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    t: &PartitionTable,
    label: &str,
) -> Result<Option<PartitionInfo>> {
    let named: Vec<&PartitionInfo> = t
        .partitions
        .iter()
        .filter(|p| p.name.as_deref() == Some(label))
        .collect();
    let ambiguous = |n: Vec<u32>| {
        Err(Error::invalid(
            Step::Map,
            path,
            format!(
                "the label {label:?} is ambiguous: partitions {n:?} have it; pick one with Partition::Number"
            ),
        ))
    };
    match named.as_slice() {
        [one] => return Ok(Some((*one).clone())),
        [] => {}
        many => return ambiguous(many.iter().map(|p| p.number).collect()),
    }
    let found = find_filesystems(device, t);
    let labelled: Vec<&(PartitionInfo, Detected)> = found
        .iter()
        .filter(|(_, d)| label_of(d) == Some(label))
        .collect();
    match labelled.as_slice() {
        [(p, _)] => Ok(Some(p.clone())),
        [] => {
            let known: Vec<String> = found
                .iter()
                .filter_map(|(p, d)| {
                    let name = p.name.as_ref().map(|n| format!("name {n:?}"));
                    let label = label_of(d).map(|l| format!("label {l:?}"));
                    let both: Vec<String> = name.into_iter().chain(label).collect();
                    (!both.is_empty()).then(|| format!("{}: {}", p.number, both.join(", ")))
                })
                .collect();
            Err(Error::refused(
                ErrorKind::NotFound,
                Step::Map,
                path,
                format!(
                    "no partition is named or labelled {label:?}; there are: {}",
                    if known.is_empty() {
                        "no names or labels".to_string()
                    } else {
                        known.join("; ")
                    }
                ),
            ))
        }
        many => ambiguous(many.iter().map(|(p, _)| p.number).collect()),
    }
}

fn auto<R: ReadAt + ?Sized>(
    device: &R,
    path: &Path,
    t: &PartitionTable,
) -> Result<Option<PartitionInfo>> {
    let found = find_filesystems(device, t);
    let candidates: Vec<&(PartitionInfo, Detected)> = found
        .iter()
        .filter(|(_, d)| fs_of(d).is_some_and(FsType::is_allowed))
        .collect();
    let pick = |p: &PartitionInfo, why: &str| {
        debug!(
            "map: {}: automatic search picked partition {} ({why})",
            path.display(),
            p.number
        );
        Ok(Some(p.clone()))
    };
    match candidates.as_slice() {
        [] => {
            return Err(Error::refused(
                ErrorKind::NotFound,
                Step::Map,
                path,
                format!(
                    "automatic partition search found no partition with a filesystem diskmount mounts; \
                     partitions: {}",
                    numbers(&found.iter().collect::<Vec<_>>())
                ),
            ));
        }
        [(p, _)] => return pick(p, "the only one with a filesystem"),
        _ => {}
    }
    for (guid, what) in [
        (ROOT_NATIVE, "root partition of this architecture"),
        (LINUX_GENERIC, "the generic Linux filesystem partition"),
        (USR_NATIVE, "/usr partition of this architecture"),
    ] {
        let typed: Vec<_> = candidates
            .iter()
            .filter(|(p, _)| is_type(p, guid))
            .collect();
        if let [(p, _)] = typed.as_slice() {
            return pick(p, what);
        }
    }
    let linux: Vec<&&(PartitionInfo, Detected)> = candidates
        .iter()
        .filter(|(_, d)| fs_of(d).is_some_and(|f| f != FsType::Vfat))
        .collect();
    if let Some(max) = linux.iter().map(|(p, _)| p.size).max() {
        let largest: Vec<_> = linux.iter().filter(|(p, _)| p.size == max).collect();
        if let [(p, _)] = largest.as_slice() {
            return pick(p, "the largest with a Linux filesystem");
        }
    }
    Err(Error::invalid(
        Step::Map,
        path,
        format!(
            "automatic partition search is ambiguous: candidates {}; pick one with \
             Partition::Number(n) or Partition::Label(name)",
            numbers(&candidates)
        ),
    ))
}

//! [`crate::Partition::Os`]: the guest's fstab mounted over its root,
//! parents before children, each mount point resolved inside the mounted
//! tree (as [`crate::root::Root`] resolves, so `..` and guest links never
//! lead out of it) and mounted by descriptor onto that directory.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::{debug, info, warn};

use crate::error::{Error, ErrorKind, Result, Step};
use crate::guest::fstab::{self, Skip};
use crate::mapping::{self, MapStrategy, MappedPart};
use crate::mount::guard::{MountGuard, mount_id};
use crate::mount::{by_fd, fstype, plan};
use crate::options::MountOptions;
use crate::os::Found;
use crate::os::source::Target;
use crate::record::{Field, Keeper};

/// One filesystem of a mounted tree, as [`crate::Mounted::mounts`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MountInfo {
    /// Where it is mounted on this host.
    pub mount_point: PathBuf,
    /// Where the guest sees it (`/`, `/boot`, ...).
    pub guest_path: PathBuf,
    /// The block device (for an excluded mount point, `"excluded"`).
    pub device: PathBuf,
    /// The filesystem driver (`tmpfs` for an excluded mount point).
    pub fstype: String,
    /// Whether it is mounted read-only.
    pub read_only: bool,
}

/// The fstab's mounts over the root, and the partition devices only they
/// use. Released in reverse.
#[derive(Default)]
pub(crate) struct Tree {
    mounts: Vec<(PathBuf, MountGuard)>,
    /// Keyed by partition number or `VG/LV`.
    parts: Vec<(String, MappedPart)>,
}

impl Tree {
    /// Unmounts every mount (children first), then removes the partition
    /// devices, pushing every error. `false` if a mount is still there
    /// (its devices are then left for it).
    ///
    /// Reverse mount order, except that the mounts no later mount is
    /// related to come down together, each on a thread of its own: their
    /// flushes and unmounts overlap instead of adding up.
    pub(crate) fn release(&mut self, errors: &mut Vec<Error>) -> bool {
        let mut clean = true;
        let mut left: Vec<usize> = (0..self.mounts.len()).collect();
        while !left.is_empty() {
            let targets: Vec<&Path> = left
                .iter()
                .map(|&i| self.mounts[i].1.target.as_path())
                .collect();
            // Reverse mount order is always safe; a mount is free when no
            // mount left that was made after it is related to it: inside
            // it, on the same path, or on a path above it (a later mount
            // there covers it: a guest link can put a mount point under
            // one the fstab lists later).
            let free: Vec<usize> = left
                .iter()
                .enumerate()
                .filter(|&(a, &i)| {
                    !left.iter().enumerate().any(|(b, &j)| {
                        j > i
                            && (targets[b].starts_with(targets[a])
                                || targets[a].starts_with(targets[b]))
                    })
                })
                .map(|(_, &i)| i)
                .collect();
            // Never empty: the last mount made is free.
            left.retain(|i| !free.contains(i));
            let mut batch: Vec<&mut MountGuard> = self
                .mounts
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| free.contains(i))
                .map(|(_, (_, m))| m)
                .rev()
                .collect();
            let results: Vec<Result<()>> = match batch.as_mut_slice() {
                [one] => vec![one.release()],
                many => std::thread::scope(|s| {
                    let handles: Vec<_> = many
                        .iter_mut()
                        .map(|m| s.spawn(move || m.release()))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect()
                }),
            };
            for (m, r) in batch.iter().zip(results) {
                if let Err(e) = r {
                    errors.push(e);
                }
                clean &= !m.is_mounted();
            }
        }
        if !clean {
            self.disarm();
            return false;
        }
        self.mounts.clear();
        while let Some((_, mut p)) = self.parts.pop() {
            if let Err(e) = p.release() {
                errors.push(e);
            }
        }
        true
    }

    /// Leaves everything as it is (persist, or a mount that stays busy).
    pub(crate) fn disarm(&mut self) {
        for (_, m) in &mut self.mounts {
            m.mounted = false;
            m.root = None;
        }
        for (_, p) in &mut self.parts {
            p.disarm();
        }
    }

    pub(crate) fn infos(&self) -> Vec<MountInfo> {
        self.mounts
            .iter()
            .map(|(guest, m)| MountInfo {
                mount_point: m.target.clone(),
                guest_path: guest.clone(),
                device: m.device.clone(),
                fstype: m.fstype.clone(),
                read_only: m.read_only,
            })
            .collect()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let mut errors = Vec::new();
        self.release(&mut errors);
        for e in errors {
            warn!("teardown: {e}");
        }
    }
}

/// One fstab entry of the tree, planned before the root is mounted: its
/// device mapped, its filesystem type and options chosen.
pub(crate) struct Child<'a> {
    guest: PathBuf,
    entry: &'a fstab::Entry,
    what: String,
    /// What to mount: `None` for an excluded mount point (an empty tmpfs
    /// goes there). A `nofail` entry whose device or filesystem was not
    /// found is not planned at all.
    mount: Option<ChildMount>,
}

/// How a child is mounted.
struct ChildMount {
    device: PathBuf,
    driver: String,
    plan: plan::MountPlan,
    /// Mounted ahead, detached, while the root mounts: the first entry on
    /// each device other than the root's (a second mount of one device,
    /// another subvolume of its btrfs, waits for the first), unless it is
    /// `nofail` (such an entry is skipped if its mount point is missing,
    /// and its filesystem is then never mounted at all, as before).
    ahead: bool,
    /// The mount made ahead (`None`: not made, it is made when attached).
    detached: Option<Result<by_fd::Detached>>,
}

/// The tree planned: the devices mapped for it, and its entries, parents
/// first.
pub(crate) struct Planned<'a> {
    // Field order is drop order: the mounts made ahead go before the
    // devices under them.
    children: Vec<Child<'a>>,
    tree: Tree,
}

/// Plans the fstab entries of `os` over the root `root_part` (of `core`,
/// whose table is `table`), to be mounted on `target`: the mapping of
/// each entry's device (into `record` as it is made), its filesystem type
/// and its options. Entries to skip (swap, `noauto`, a `nofail` entry
/// whose device is missing) are left out, as `mount -a` would.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_tree<'a>(
    core: &crate::backend::Core,
    root_part: &MappedPart,
    table: Option<&crate::partition::PartitionTable>,
    os: &'a Found,
    read_only: bool,
    options: &MountOptions,
    target: &Path,
    record: &mut Keeper,
) -> Result<Planned<'a>> {
    let mut tree = Tree::default();
    let fstab_path = target.join("etc/fstab");
    let root_key = match &os.location.lv {
        Some((vg, lv)) => format!("{vg}/{lv}"),
        None => format!("{:?}", root_part.number),
    };
    let sources = crate::os::source::Sources::new(core, table);
    let mut entries: Vec<(PathBuf, &fstab::Entry, usize)> = Vec::new();
    for (i, e) in os.fstab.iter().enumerate() {
        let what = format!("fstab line {} ({} on {})", e.line, e.spec, e.mount_point);
        match (e.skip(), e.target()) {
            (Some(Skip::Root), _) => {}
            (Some(why), _) => info!("mount: skipping {what}: {}", why.as_str()),
            (None, None) => warn!("mount: skipping {what}: the mount point is not absolute"),
            (None, Some(t)) => entries.push((t, e, i)),
        }
    }
    entries.sort_by_key(|(t, ..)| t.components().count());
    let mut children = Vec::new();
    // Devices with a mount already planned ahead (the root's never is).
    let mut ahead_of: Vec<String> = vec![root_key.clone()];
    for (guest, e, i) in entries {
        let what = format!("fstab line {} ({} on {})", e.line, e.spec, e.mount_point);
        let fail = |kind: ErrorKind, why: String| {
            Error::refused(kind, Step::Mount, &fstab_path, format!("{what}: {why}"))
        };
        let excluded = options
            .exclude
            .iter()
            .any(|x| fstab::normalize(&x.to_string_lossy()).as_deref() == Some(guest.as_path()));
        let mut child = Child {
            guest,
            entry: e,
            what: what.clone(),
            mount: None,
        };
        if excluded {
            children.push(child);
            continue;
        }
        // As the inspection resolved it, if it did (the image has not
        // changed since: nothing of it is mounted read-write yet).
        let resolved = match os.sources.get(i) {
            Some(Some(r)) => r.clone(),
            _ => sources.resolve(&e.source),
        };
        let part = match resolved {
            Ok(p) => p,
            Err(why) if e.nofail() => {
                warn!("mount: skipping {what} (nofail): {why}");
                continue;
            }
            Err(why) => {
                return Err(fail(
                    ErrorKind::NotFound,
                    format!(
                        "{why}; the entry has no nofail (exclude it with MountOptions::exclude)"
                    ),
                ));
            }
        };
        let key = match &part {
            Target::Lv(vg, lv) => format!("{vg}/{lv}"),
            Target::Part(p) => format!("{:?}", p.as_ref().map(|p| p.number)),
        };
        let (device, file) = if key == root_key {
            (root_part.path.clone(), root_part.file().try_clone())
        } else if let Some((_, p)) = tree.parts.iter().find(|(k, _)| *k == key) {
            (p.path.clone(), p.file().try_clone())
        } else {
            let m = match &part {
                Target::Lv(vg, lv) => {
                    mapping::logical_volume_in(core, table, vg, lv, MapStrategy::Auto)?
                }
                Target::Part(p) => {
                    let p = p.as_ref().expect("only the whole disk has no number");
                    mapping::map(core, p, MapStrategy::Auto)?
                }
            };
            let r = (m.path.clone(), m.file().try_clone());
            record.set(Field::TreeMapped {
                path: &m.path,
                mapping: m.mapping.as_str(),
            });
            tree.parts.push((key.clone(), m));
            r
        };
        let file = file.map_err(|err| Error::os(Step::Mount, &device, "dup device", err))?;
        let (driver, fst) = match fstype::choose(&device, &file, &MountOptions::default()) {
            Ok(x) => x,
            Err(err) if e.nofail() => {
                warn!("mount: skipping {what} (nofail): {err}");
                continue;
            }
            Err(err) => return Err(fail(err.kind(), err.to_string())),
        };
        let mut mo = MountOptions::default()
            .read_only(read_only || e.read_only())
            .noexec(options.noexec);
        if let Some(sv) = e.option("subvol") {
            mo = mo.subvolume(sv);
            mo.subvolume_option(&device)?;
        }
        if let Some(id) = e.option("subvolid") {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail(
                    ErrorKind::InvalidImage,
                    format!("bad subvolid={id:?}"),
                ));
            }
            mo = mo.options(format!("subvolid={id}"));
        }
        let ahead = !e.nofail() && !ahead_of.contains(&key);
        if ahead {
            ahead_of.push(key);
        }
        child.mount = Some(ChildMount {
            plan: plan::plan(&mo, driver.clone(), fst, core.read_only),
            device,
            driver,
            ahead,
            detached: None,
        });
        children.push(child);
    }
    Ok(Planned { tree, children })
}

impl Planned<'_> {
    /// Runs `root` (the root's mount) on this thread while every child
    /// planned ahead is mounted, detached (`fsmount` without
    /// `move_mount`), each on a thread of its own: the filesystems' mount
    /// work (reading and checking metadata, journal replay) overlaps
    /// instead of adding up. Nothing is attached anywhere yet.
    pub(crate) fn mount_ahead<T>(&mut self, root: impl FnOnce() -> T) -> T {
        let ahead: Vec<&mut ChildMount> = self
            .children
            .iter_mut()
            .filter_map(|c| c.mount.as_mut().filter(|m| m.ahead))
            .collect();
        if ahead.is_empty() {
            return root();
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = ahead
                .into_iter()
                .map(|m| {
                    s.spawn(move || {
                        // A panic is this mount's error, not an unwind
                        // past the root's mount (which would be left
                        // without its guard).
                        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            by_fd::mount_ahead(&m.device, &m.plan)
                        }));
                        m.detached = made.unwrap_or_else(|_| {
                            Some(Err(Error::invalid(
                                Step::Mount,
                                &m.device,
                                "mounting it ahead panicked (a bug in diskmount)",
                            )))
                        });
                    })
                })
                .collect();
            let out = root();
            for h in handles {
                // The thread catches its panic; only one whose payload
                // panicked when dropped gets here (its mount is then made
                // when attached).
                if h.join().is_err() {
                    warn!("mount: a thread mounting ahead panicked twice");
                }
            }
            out
        })
    }
}

/// The root's mount, which a tree's children go over.
pub(crate) struct Base<'a> {
    /// Its mounted root directory, where mount points are resolved.
    pub(crate) root: crate::root::Root<'a>,
    /// Where it is mounted on this host.
    pub(crate) path: &'a Path,
    /// Its block device, open.
    pub(crate) device_file: &'a std::fs::File,
}

/// Mounts the planned fstab entries over `base`, parents first: each
/// mount point resolved inside the tree, then the mount made ahead moved
/// onto it (or made now, onto it). Each mount goes into `record` as it is
/// made.
pub(crate) fn mount_tree(
    base: Base<'_>,
    planned: Planned<'_>,
    options: &MountOptions,
    record: &mut Keeper,
) -> Result<Tree> {
    let Planned { mut tree, children } = planned;
    let Base {
        root,
        path: base_path,
        device_file: base_device,
    } = base;
    let fstab_path = base_path.join("etc/fstab");
    for child in children {
        let Child {
            guest,
            entry: e,
            what,
            mount,
        } = child;
        let excluded = mount.is_none();
        let fail = |kind: ErrorKind, why: String| {
            Error::refused(kind, Step::Mount, &fstab_path, format!("{what}: {why}"))
        };
        // The directory it goes on, inside the tree.
        let at = match root.resolve(&guest, true) {
            Ok(fd) => fd,
            Err(err) if e.nofail() || excluded => {
                warn!("mount: skipping {what}: its mount point: {err}");
                continue;
            }
            Err(err) => return Err(fail(ErrorKind::NotFound, format!("mount point: {err}"))),
        };
        let st = nix::sys::stat::fstat(&at)
            .map_err(|err| Error::os(Step::Mount, &fstab_path, format!("{what}: fstat"), err))?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFDIR {
            return Err(fail(
                ErrorKind::InvalidInput,
                "the mount point is not a directory in the image".into(),
            ));
        }
        let host = std::fs::read_link(format!("/proc/self/fd/{}", at.as_raw_fd()))
            .map_err(|err| Error::os(Step::Mount, &fstab_path, format!("{what}: readlink"), err))?;
        if !host.starts_with(base_path) {
            return Err(fail(
                ErrorKind::InvalidImage,
                format!(
                    "the mount point resolves to {} outside the image's tree; refused",
                    host.display()
                ),
            ));
        }
        // Through a guest link (`/srv -> /`), a mount point can also land
        // on the root itself, which it would bury: the tree would show
        // another filesystem as the guest's root, and the mounts made
        // before it could no longer be reached for their teardown. (One
        // that covers an earlier child is allowed: the teardown takes the
        // later first; a_mount_covered_by_a_later_one_comes_down_after_it.)
        if host == base_path {
            return Err(fail(
                ErrorKind::InvalidImage,
                format!(
                    "the mount point resolves to the root of the tree ({}), which it would cover; refused",
                    host.display()
                ),
            ));
        }
        let Some(ChildMount {
            device,
            driver,
            plan,
            detached,
            ..
        }) = mount
        else {
            // Excluded.
            let plan = plan::plan(
                &MountOptions::default()
                    .read_only(true)
                    .options("size=4k,mode=0555"),
                "tmpfs".into(),
                None,
                true,
            );
            let device = PathBuf::from("excluded");
            let dir = by_fd::mount(&device, &plan, at.as_fd(), &host)?;
            record.set(Field::TreeMount {
                path: &host,
                device: None,
            });
            info!(
                "mount: {what} excluded: an empty read-only tmpfs on {}",
                host.display()
            );
            tree.mounts.push((
                guest,
                guard(&host, device, &dir, base_device, "tmpfs", true, options)?,
            ));
            continue;
        };
        let made = match detached {
            Some(Ok(d)) => d.attach(&device, &plan, at.as_fd(), &host),
            Some(Err(err)) => Err(err),
            None => by_fd::mount(&device, &plan, at.as_fd(), &host),
        };
        let dir = match made {
            Ok(d) => d,
            Err(err) if e.nofail() => {
                warn!("mount: skipping {what} (nofail): {err}");
                continue;
            }
            Err(err) => {
                return Err(fail(
                    err.kind(),
                    format!(
                        "{err}; exclude it with MountOptions::exclude({:?})",
                        e.mount_point
                    ),
                ));
            }
        };
        record.set(Field::TreeMount {
            path: &host,
            device: Some(&device),
        });
        debug!("mount: {what}: {} on {}", device.display(), host.display());
        info!(
            "mounted {} ({driver}) on {}",
            device.display(),
            host.display()
        );
        let g = guard(
            &host,
            device,
            &dir,
            base_device,
            &driver,
            plan.read_only,
            options,
        )?;
        tree.mounts.push((guest, g));
    }
    drop(root);
    Ok(tree)
}

#[allow(clippy::too_many_arguments)]
fn guard(
    host: &Path,
    device: PathBuf,
    dir: &std::fs::File,
    base_device: &std::fs::File,
    fstype: &str,
    read_only: bool,
    options: &MountOptions,
) -> Result<MountGuard> {
    let root_dev = dir
        .metadata()
        .map_err(|e| Error::os(Step::Mount, host, "stat mount point", e))?
        .dev();
    let device_file = base_device
        .try_clone()
        .map_err(|e| Error::os(Step::Mount, &device, "dup device", e))?;
    let device_file = if read_only {
        device_file
    } else {
        crate::backend::device::open_node(&device, false, Step::Mount)?
    };
    Ok(MountGuard {
        target: host.to_path_buf(),
        device,
        device_file,
        fstype: fstype.to_string(),
        read_only,
        root_dev,
        mnt_id: mount_id(dir),
        root: if read_only {
            None
        } else {
            dir.try_clone().ok()
        },
        retry: options.unmount_retry,
        mounted: true,
    })
}

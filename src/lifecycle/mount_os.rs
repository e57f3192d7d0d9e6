//! [`crate::Partition::Os`]: the guest's fstab mounted over its root,
//! parents before children, each mount point resolved inside the mounted
//! tree (as [`crate::root::Root`] resolves, so `..` and guest links never
//! lead out of it) and mounted by descriptor onto that directory.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::{debug, info, warn};

use super::mount::Mounted;
use crate::backend::Backend;
use crate::error::{Error, ErrorKind, Result, Step};
use crate::guest::fstab::{self, Skip};
use crate::mapping::{self, MapStrategy, MappedPart};
use crate::mount::guard::{MountGuard, mount_id};
use crate::mount::{by_fd, fstype, plan};
use crate::options::MountOptions;
use crate::os::Found;
use crate::os::source::Target;
use crate::record::{Field, Keeper};

/// One filesystem of a mounted tree, as [`Mounted::mounts`] lists it.
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
    pub(crate) fn release(&mut self, errors: &mut Vec<Error>) -> bool {
        let mut clean = true;
        for (_, m) in self.mounts.iter_mut().rev() {
            if let Err(e) = m.release() {
                errors.push(e);
            }
            clean &= !m.is_mounted();
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

/// Mounts the fstab entries of `os` over `mounted` (its root).
/// Each device it maps and each mount goes into `record` as it is made.
pub(crate) fn mount_tree<B: Backend>(
    mounted: &Mounted<B>,
    os: &Found,
    options: &MountOptions,
    record: &mut Keeper,
) -> Result<Tree> {
    let mut tree = Tree::default();
    let root = mounted.root()?;
    let fstab_path = mounted.path().join("etc/fstab");
    let core = mounted.mapped().attached.device.core();
    let table = mounted.mapped().os.as_ref().and_then(|c| c.table.clone());
    let root_key = match &os.location.lv {
        Some((vg, lv)) => format!("{vg}/{lv}"),
        None => format!("{:?}", mounted.partition_number()),
    };
    let read_only = mounted.is_read_only();
    let mut entries: Vec<(PathBuf, &fstab::Entry)> = Vec::new();
    for e in &os.fstab {
        let what = format!("fstab line {} ({} on {})", e.line, e.spec, e.mount_point);
        match (e.skip(), e.target()) {
            (Some(Skip::Root), _) => {}
            (Some(why), _) => info!("mount: skipping {what}: {}", why.as_str()),
            (None, None) => warn!("mount: skipping {what}: the mount point is not absolute"),
            (None, Some(t)) => entries.push((t, e)),
        }
    }
    entries.sort_by_key(|(t, _)| t.components().count());
    for (guest, e) in entries {
        let what = format!("fstab line {} ({} on {})", e.line, e.spec, e.mount_point);
        let fail = |kind: ErrorKind, why: String| {
            Error::refused(kind, Step::Mount, &fstab_path, format!("{what}: {why}"))
        };
        let excluded = options
            .exclude
            .iter()
            .any(|x| fstab::normalize(&x.to_string_lossy()).as_deref() == Some(guest.as_path()));
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
        if !host.starts_with(mounted.path()) {
            return Err(fail(
                ErrorKind::InvalidImage,
                format!(
                    "the mount point resolves to {} outside the image's tree; refused",
                    host.display()
                ),
            ));
        }
        if excluded {
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
                guard(&host, device, &dir, mounted, "tmpfs", true, options)?,
            ));
            continue;
        }
        let part = match crate::os::source::resolve(core, table.as_ref(), &e.source) {
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
            (
                mounted.device().to_path_buf(),
                mounted.mapped().part.file().try_clone(),
            )
        } else if let Some((_, p)) = tree.parts.iter().find(|(k, _)| *k == key) {
            (p.path.clone(), p.file().try_clone())
        } else {
            let m = match &part {
                Target::Lv(vg, lv) => mapping::logical_volume(core, vg, lv, MapStrategy::Auto)?,
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
            tree.parts.push((key, m));
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
        let plan = plan::plan(&mo, driver.clone(), fst, core.read_only);
        let dir = match by_fd::mount(&device, &plan, at.as_fd(), &host) {
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
            mounted,
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
fn guard<B: Backend>(
    host: &Path,
    device: PathBuf,
    dir: &std::fs::File,
    mounted: &Mounted<B>,
    fstype: &str,
    read_only: bool,
    options: &MountOptions,
) -> Result<MountGuard> {
    let root_dev = dir
        .metadata()
        .map_err(|e| Error::os(Step::Mount, host, "stat mount point", e))?
        .dev();
    let device_file = mounted
        .mapped()
        .part
        .file()
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

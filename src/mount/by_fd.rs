//! Mounting by file descriptor, never by path: the mount point is opened
//! once (`O_PATH`, no symbolic link anywhere on its path), and the mount is
//! made with the new mount API (`fsopen`, `fsconfig`, `fsmount`,
//! `move_mount`) onto that descriptor, so a symbolic link swapped into the
//! mount point's path after it was checked cannot redirect the mount (the
//! runc CVE-2021-30465 class). The kernel's own error text (what
//! `fsconfig` writes into the filesystem context) goes into the error.
//!
//! On a kernel without the new API (before 5.2) `mount(2)` is given the
//! descriptor's `/proc/self/fd/N` path, which names the same directory.
//!
//! rustix wraps the new mount API safely; nix does not have it.
//!
//! # References
//! - [`fsopen(2)`](https://man7.org/linux/man-pages/man2/fsopen.2.html),
//!   [`fsconfig(2)`](https://man7.org/linux/man-pages/man2/fsconfig.2.html),
//!   [`fsmount(2)`](https://man7.org/linux/man-pages/man2/fsmount.2.html),
//!   [`move_mount(2)`](https://man7.org/linux/man-pages/man2/move_mount.2.html)

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use log::{debug, warn};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::MsFlags;
use nix::sys::stat::Mode;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, FsPickFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
    fsconfig_reconfigure, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, fspick,
    move_mount,
};

use super::plan::{MountPlan, hint};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::retry::{Backoff, RetryPolicy};

/// The absolute path of the mount point `dir`: its parent directory
/// resolved (symbolic links in it are followed, once, here), its last
/// component kept as it is. A mount point that is itself a symbolic link
/// is then refused by [`open_mount_point`], where `mount(8)` would follow
/// it: whoever can swap that link could choose where the image is mounted.
pub(crate) fn resolve_mount_point(dir: &Path) -> Result<std::path::PathBuf> {
    let resolved = match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent)
                .map(|p| p.join(name))
                .and_then(|p| std::fs::symlink_metadata(&p).map(|_| p))
        }
        // "/", "..", "x/..": nothing to keep unresolved.
        _ => std::fs::canonicalize(dir),
    };
    resolved.map_err(|e| Error::os(Step::Mount, dir, "resolve mount point", e))
}

/// Opens the mount point `target` (an absolute, resolved path) as an
/// `O_PATH` directory descriptor, refusing a symbolic link anywhere on the
/// path (`RESOLVE_NO_SYMLINKS`): the directory the mount will go on, fixed
/// from here on.
pub(crate) fn open_mount_point(target: &Path) -> Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let opened = match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, target, how) {
        // No openat2 (Linux < 5.6): O_NOFOLLOW guards the last component.
        Err(Errno::ENOSYS) => nix::fcntl::open(target, flags, Mode::empty()),
        other => other,
    };
    opened.map_err(|e| match e {
        Errno::ELOOP => Error::invalid(
            Step::Mount,
            target,
            "the mount point's path holds a symbolic link (swapped in after it was \
             resolved?); refusing to mount through it",
        ),
        // O_NOFOLLOW | O_DIRECTORY on a link answers ENOTDIR.
        Errno::ENOTDIR
            if std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            Error::invalid(
                Step::Mount,
                target,
                "the mount point is a symbolic link; refusing to mount through it (give the \
                 directory it points to, if that is meant)",
            )
        }
        Errno::ENOTDIR => Error::invalid(Step::Mount, target, "the mount point is not a directory"),
        e => Error::os(Step::Mount, target, "open mount point", e),
    })
}

/// Mounts `device` as `plan` says on the directory `target` (from
/// [`open_mount_point`]; `path` names it in messages). Returns a
/// descriptor of the new mount's root directory (read-only, `O_DIRECTORY`).
pub(crate) fn mount(
    device: &Path,
    plan: &MountPlan,
    target: BorrowedFd<'_>,
    path: &Path,
) -> Result<File> {
    let describe = plan.describe(path);
    debug!("mount: {}: {describe} (by descriptor)", device.display());
    match busy_retry(device, || new_api(device, plan, target)) {
        Ok(root) => Ok(root),
        Err(Failed::NoNewApi) => {
            debug!("mount: no fsopen on this kernel; mount(2) on /proc/self/fd");
            legacy(device, plan, target, path)
        }
        Err(Failed::At(op, e, kernel)) => Err(at_error(device, &describe, op, e, kernel)),
    }
}

/// The error of `op` failing with `e` (the kernel saying `kernel`) in the
/// mount `describe` of `device`.
fn at_error(device: &Path, describe: &str, op: &str, e: Errno, kernel: Option<String>) -> Error {
    Error::os(
        Step::Mount,
        device,
        format!(
            "{describe}: {op}{}{}",
            kernel.map(|k| format!(" ({k})")).unwrap_or_default(),
            hint(e)
        ),
        e,
    )
}

/// A mount made ahead of its mount point ([`mount_ahead`]): attached
/// nowhere until [`Detached::attach`] moves it into place. Dropped
/// unattached, it is flushed (`syncfs`, for a read-write one) and let go:
/// the kernel unmounts a detached mount when its last descriptor closes.
pub(crate) struct Detached {
    mnt: Option<OwnedFd>,
    device: std::path::PathBuf,
    read_only: bool,
}

/// Mounts `device` as `plan` says, detached, to be moved onto its mount
/// point later ([`Detached::attach`]): for a tree whose filesystems mount
/// at once while the parent mounts. `None` on a kernel without the new
/// mount API: the mount is then made when attached, by [`mount`].
pub(crate) fn mount_ahead(device: &Path, plan: &MountPlan) -> Option<Result<Detached>> {
    let describe = plan.describe(Path::new("(ahead, detached)"));
    debug!("mount: {}: {describe}", device.display());
    match busy_retry(device, || detached_mount(device, plan)) {
        Ok(mnt) => Some(Ok(Detached {
            mnt: Some(mnt),
            device: device.to_path_buf(),
            read_only: plan.read_only,
        })),
        Err(Failed::NoNewApi) => None,
        Err(Failed::At(op, e, kernel)) => Some(Err(at_error(device, &describe, op, e, kernel))),
    }
}

/// Mounts `device` (open as `file`) detached as the read-only `plan`
/// ([`super::plan::reusable`]: no no-replay option) on the device made
/// read-only at the block layer (`BLKROSET`), so that the mount can later
/// become the read-write one ([`ReadOnlyLook::take_over`]) instead of the
/// filesystem being mounted a second time.
///
/// The device being read-only is what keeps this mount from writing: xfs
/// refuses to mount with a log that needs replay on a read-only device
/// (`EROFS`) rather than replay it, and writes no unmount record to one.
/// So the device stays read-only for as long as the mount lives read-only
/// ([`ReadOnlyLook`]). A failed mount, that `EROFS` included, is
/// `Ok(None)`, the device writable again: the caller then mounts the
/// filesystem as it would have, with its no-replay option, and that mount
/// reports what is wrong. A device that is already read-only, or whose
/// flag cannot be read or set, is left alone (`Ok(None)`).
///
/// Returns the look and a directory descriptor of its root.
///
/// # Errors
/// [`Step::Mount`]: the device's descriptor could not be duplicated, or
/// the device stays held (so read-only) after a failed mount.
pub(crate) fn mount_reusable(
    device: &Path,
    file: &File,
    plan: &MountPlan,
) -> Result<Option<(ReadOnlyLook, File)>> {
    let fd = file.as_fd();
    match crate::sys::block::roget(fd) {
        Ok(false) => {}
        Ok(true) => return Ok(None),
        Err(e) => {
            debug!(
                "mount: {}: BLKROGET: {e}; no reusable look",
                device.display()
            );
            return Ok(None);
        }
    }
    let device_file = file
        .try_clone()
        .map_err(|e| Error::os(Step::Mount, device, "dup device", e))?;
    if let Err(e) = crate::sys::block::roset(fd, true) {
        debug!(
            "mount: {}: BLKROSET (read-only): {e}; no reusable look",
            device.display()
        );
        return Ok(None);
    }
    let describe = plan.describe(Path::new("(detached, device read-only)"));
    debug!("mount: {}: {describe}", device.display());
    let made = busy_retry(device, || {
        let mnt = detached_mount(device, plan)?;
        open_mount_root(&mnt).map(|root| (mnt, root))
    });
    match made {
        Ok((mnt, root)) => Ok(Some((
            ReadOnlyLook {
                mnt: Some(mnt),
                device_file,
                device: device.to_path_buf(),
                driver: plan.driver.clone(),
            },
            root,
        ))),
        Err(failed) => {
            // A superblock the failed mount made may still be going away.
            if !writable_once_let_go(device, &device_file) {
                return Err(Error::refused(
                    ErrorKind::Busy,
                    Step::Mount,
                    device,
                    "is still held after a failed read-only mount; left read-only",
                ));
            }
            if let Failed::At(op, e, kernel) = failed {
                debug!(
                    "mount: {}: {describe}: {op}: {e}{}; mounting it with no journal replay \
                     instead",
                    device.display(),
                    kernel.map(|k| format!(" ({k})")).unwrap_or_default()
                );
            }
            Ok(None)
        }
    }
}

/// A read-only detached mount from [`mount_reusable`], on a device kept
/// read-only while it lives. Dropped, the mount goes first (its descriptor
/// closed: the kernel unmounts a detached mount before `close` returns),
/// then the device is made writable again.
pub(crate) struct ReadOnlyLook {
    mnt: Option<OwnedFd>,
    device_file: File,
    device: std::path::PathBuf,
    driver: String,
}

impl ReadOnlyLook {
    /// The filesystem driver it was mounted with.
    pub(crate) fn driver(&self) -> &str {
        &self.driver
    }

    /// The device made writable again, then the mount's superblock made
    /// read-write (`fspick`, `rw`, `FSCONFIG_CMD_RECONFIGURE`: what `mount
    /// -o remount,rw` does): the read-write mount of the device, to be
    /// attached.
    ///
    /// # Errors
    /// [`Step::Mount`]: the kernel refused; the look is let go as when
    /// dropped (the device read-only again first, so that it writes
    /// nothing).
    pub(crate) fn take_over(mut self) -> Result<Detached> {
        let describe = "mount -o remount,rw (the read-only look made read-write)";
        debug!("mount: {}: {describe}", self.device.display());
        let device = self.device.clone();
        crate::sys::block::roset(self.device_file.as_fd(), false)
            .map_err(|e| Error::os(Step::Mount, &device, "BLKROSET (writable again)", e))?;
        let mnt = self.mnt.as_ref().expect("taken over once");
        let fs = fspick(
            mnt,
            "",
            FsPickFlags::FSPICK_EMPTY_PATH | FsPickFlags::FSPICK_CLOEXEC,
        )
        .map_err(|e| at_error(&device, describe, "fspick", errno(e), None))?;
        let failed = |op: &'static str, e: rustix::io::Errno| {
            at_error(&device, describe, op, errno(e), messages(&fs))
        };
        fsconfig_set_flag(&fs, "rw").map_err(|e| failed("fsconfig rw", e))?;
        fsconfig_reconfigure(&fs).map_err(|e| failed("fsconfig reconfigure", e))?;
        Ok(Detached {
            mnt: self.mnt.take(),
            device,
            read_only: false,
        })
    }
}

impl Drop for ReadOnlyLook {
    fn drop(&mut self) {
        let Some(mnt) = self.mnt.take() else { return };
        // Read-only again if a failed take-over made it writable; if that
        // fails, the look is kept open (leaked) rather than let go on a
        // writable device.
        if let Err(e) = crate::sys::block::roset(self.device_file.as_fd(), true) {
            warn!(
                "teardown: {}: BLKROSET before letting a read-only look go: {e}; keeping it \
                 mounted, detached, until the process ends",
                self.device.display()
            );
            std::mem::forget(mnt);
            return;
        }
        drop(mnt);
        if !writable_once_let_go(&self.device, &self.device_file) {
            warn!(
                "teardown: {}: still held after its read-only look was let go; left \
                 read-only (the unmap removes it, a loop device's flag is cleared when it is \
                 unbound)",
                self.device.display()
            );
        }
    }
}

/// Makes `device` (open as `file`) writable again once nothing holds it
/// exclusively, the superblock of a read-only look included, within
/// [`RetryPolicy::MOUNT`]; `false` (the device left read-only) if it stays
/// held, or cannot be made writable. A look's superblock outlives the close
/// of its descriptor while a thread of this process is forking a child,
/// which holds a copy of the descriptor until it execs: made writable
/// before then, the device would let xfs write its unmount record.
fn writable_once_let_go(device: &Path, file: &File) -> bool {
    let mut backoff = Backoff::new(RetryPolicy::MOUNT);
    loop {
        backoff.attempt();
        let exclusive = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_EXCL | nix::libc::O_CLOEXEC)
            .open(device);
        match exclusive {
            Ok(free) => {
                drop(free);
                break;
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && backoff.wait() => {
                warn!(
                    "mount: {}: still held after a read-only look was let go; retrying \
                     (attempt {})",
                    device.display(),
                    backoff.attempts() + 1
                );
            }
            Err(e) => {
                debug!("mount: {}: exclusive open: {e}", device.display());
                return false;
            }
        }
    }
    match crate::sys::block::roset(file.as_fd(), false) {
        Ok(()) => true,
        Err(e) => {
            warn!(
                "teardown: {}: BLKROSET (writable again): {e}",
                device.display()
            );
            false
        }
    }
}

impl Detached {
    /// Moves the mount onto the directory `target` (from
    /// [`open_mount_point`] or a tree's own resolution; `path` names it in
    /// messages). Returns a descriptor of its root directory, as [`mount`].
    pub(crate) fn attach(
        mut self,
        device: &Path,
        plan: &MountPlan,
        target: BorrowedFd<'_>,
        path: &Path,
    ) -> Result<File> {
        let describe = plan.describe(path);
        debug!("mount: {}: {describe} (moved into place)", device.display());
        let mnt = self.mnt.take().expect("attached once");
        match move_into(&mnt, target) {
            Ok(root) => Ok(root),
            Err(Failed::At(op, e, kernel)) => {
                if op == MOVE_MOUNT {
                    // Not attached: flushed and let go as when dropped.
                    self.mnt = Some(mnt);
                }
                Err(at_error(device, &describe, op, e, kernel))
            }
            Err(Failed::NoNewApi) => unreachable!("move_mount after fsmount"),
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        let Some(mnt) = self.mnt.take() else { return };
        if self.read_only {
            return;
        }
        // Whatever the mount wrote (a journal replay) reaches the device
        // before the kernel lets the mount go.
        match open_mount_root(&mnt) {
            Ok(root) => {
                if let Err(e) = nix::unistd::syncfs(&root) {
                    warn!(
                        "teardown: {}: syncfs of a mount never attached: {e}",
                        self.device.display()
                    );
                }
            }
            Err(_) => warn!(
                "teardown: {}: could not open a mount never attached to flush it",
                self.device.display()
            ),
        }
    }
}

/// How the new mount API failed.
enum Failed {
    /// `fsopen` does not exist here.
    NoNewApi,
    /// `op` failed with an errno, and the kernel said why (if it did).
    At(&'static str, Errno, Option<String>),
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

fn new_api(device: &Path, plan: &MountPlan, target: BorrowedFd<'_>) -> Result<File, Failed> {
    let mnt = detached_mount(device, plan)?;
    // Until it is moved into place the mount is attached nowhere: a
    // failure of the move needs no unmount (closing `mnt` drops it).
    move_into(&mnt, target)
}

/// Moves the detached mount `mnt` onto the directory `target`
/// (`move_mount`), then opens the root of the mount.
fn move_into(mnt: &OwnedFd, target: BorrowedFd<'_>) -> Result<File, Failed> {
    move_mount(
        mnt,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| Failed::At(MOVE_MOUNT, errno(e), None))?;
    open_mount_root(mnt).inspect_err(|_| {
        // Attached, but with no descriptor of its root nobody guards it:
        // taken down again, through the mount's own descriptor (so that
        // nothing mounted since on the path is hit). Detached from the
        // tree (`MNT_DETACH`: that descriptor itself keeps it busy), it is
        // gone, flushed, when the descriptor closes.
        let at = format!("/proc/self/fd/{}", mnt.as_raw_fd());
        if let Err(e) = nix::mount::umount2(at.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            warn!("mount: umount2 after the new mount's root could not be opened: {e}");
        }
    })
}

/// The operation [`move_into`] names when the move itself failed (the
/// mount then is still attached nowhere).
const MOVE_MOUNT: &str = "move_mount";

/// Mounts `device` as `plan` says without attaching the mount anywhere
/// (`fsmount` without `move_mount`): for looking inside a filesystem
/// (OS inspection) with no mount point, nothing in the mount table, and
/// the mount gone when the returned root directory is closed.
///
/// # Errors
/// [`Step::Mount`], as [`mount`]; a kernel without the new mount API
/// (before 5.2) is [`crate::ErrorKind::KernelFeatureMissing`].
pub(crate) fn mount_detached(device: &Path, plan: &MountPlan) -> Result<File> {
    let describe = plan.describe(Path::new("(detached)"));
    debug!("mount: {}: {describe}", device.display());
    match busy_retry(device, || {
        detached_mount(device, plan).and_then(|mnt| open_mount_root(&mnt))
    }) {
        Ok(root) => Ok(root),
        Err(Failed::NoNewApi) => Err(Error::refused(
            crate::error::ErrorKind::KernelFeatureMissing,
            Step::Mount,
            device,
            "this kernel has no fsopen (Linux 5.2+): cannot look inside without a mount point",
        )),
        Err(Failed::At(op, e, kernel)) => Err(at_error(device, &describe, op, e, kernel)),
    }
}

/// Calls `mount` again while the kernel answers `EBUSY` to creating the
/// superblock, within [`RetryPolicy::MOUNT`]: the device's previous
/// superblock (of an unmount or of OS inspection's read-only look a moment
/// ago) lives on while a child that another thread is forking holds a copy
/// of a descriptor into it, until that child execs. A device that stays
/// busy (mounted elsewhere, held by device-mapper) fails after the bound
/// with the kernel's reason.
fn busy_retry<T>(device: &Path, mut mount: impl FnMut() -> Result<T, Failed>) -> Result<T, Failed> {
    let mut backoff = Backoff::new(RetryPolicy::MOUNT);
    loop {
        backoff.attempt();
        match mount() {
            Err(Failed::At("fsconfig create", Errno::EBUSY, kernel)) if backoff.wait() => {
                warn!(
                    "mount: {}: busy ({}); retrying (attempt {})",
                    device.display(),
                    kernel.as_deref().unwrap_or("no reason given"),
                    backoff.attempts() + 1
                );
            }
            other => return other,
        }
    }
}

/// A directory descriptor of the root of the mount `mnt` (from `fsmount`).
fn open_mount_root(mnt: &OwnedFd) -> Result<File, Failed> {
    // `mnt` is the mount's root (O_PATH); a directory descriptor of the same
    // inode, for syncfs and path resolution, through /proc/self/fd (the
    // descriptor already points inside the mount).
    let root = nix::fcntl::open(
        format!("/proc/self/fd/{}", mnt.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Failed::At("open the new mount's root", e, None))?;
    Ok(File::from(root))
}

/// `fsopen` .. `fsmount`: the mount, attached nowhere yet.
fn detached_mount(device: &Path, plan: &MountPlan) -> Result<OwnedFd, Failed> {
    let fs = match fsopen(plan.driver.as_str(), FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) if e == rustix::io::Errno::NOSYS => return Err(Failed::NoNewApi),
        Err(e) => return Err(Failed::At("fsopen", errno(e), None)),
    };
    let failed = |op: &'static str, e: rustix::io::Errno| Failed::At(op, errno(e), messages(&fs));
    fsconfig_set_string(&fs, "source", device).map_err(|e| failed("fsconfig source", e))?;
    if plan.read_only {
        fsconfig_set_flag(&fs, "ro").map_err(|e| failed("fsconfig ro", e))?;
    }
    for option in plan.data.split(',').filter(|o| !o.is_empty()) {
        let set = match option.split_once('=') {
            Some((key, value)) => fsconfig_set_string(&fs, key, value),
            None => fsconfig_set_flag(&fs, option),
        };
        set.map_err(|e| failed("fsconfig", e))?;
    }
    fsconfig_create(&fs).map_err(|e| failed("fsconfig create", e))?;
    let mut attrs = MountAttrFlags::empty();
    for (flag, attr) in [
        (MsFlags::MS_RDONLY, MountAttrFlags::MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NODEV, MountAttrFlags::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOSUID, MountAttrFlags::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NOEXEC, MountAttrFlags::MOUNT_ATTR_NOEXEC),
    ] {
        if plan.flags.contains(flag) {
            attrs |= attr;
        }
    }
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|e| failed("fsmount", e))
}

/// What the kernel wrote into the filesystem context `fs` about the
/// failure (lines `e <message>`, `w <warning>`), joined.
fn messages(fs: &OwnedFd) -> Option<String> {
    let mut file = File::from(fs.try_clone().ok()?);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // Each read returns one message; ENODATA when there are no more.
    for _ in 0..8 {
        match file.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let line = String::from_utf8_lossy(&buf[..n]);
                let line = line.trim();
                out.push(line.strip_prefix("e ").unwrap_or(line).to_string());
            }
        }
    }
    (!out.is_empty()).then(|| out.join("; "))
}

/// `mount(2)` on the descriptor's `/proc/self/fd/N` path, for kernels
/// without the new API; the root is opened through the same path.
fn legacy(device: &Path, plan: &MountPlan, target: BorrowedFd<'_>, path: &Path) -> Result<File> {
    let at = format!("/proc/self/fd/{}", target.as_raw_fd());
    nix::mount::mount(
        Some(device),
        at.as_str(),
        Some(plan.driver.as_str()),
        plan.flags,
        Some(plan.data.as_str()),
    )
    .map_err(|e| {
        Error::os(
            Step::Mount,
            device,
            format!("{}{}", plan.describe(path), hint(e)),
            e,
        )
    })?;
    super::guard::open_root(Step::Mount, path).inspect_err(|_| {
        // Mounted, but unguarded without its root: taken down again.
        if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::UMOUNT_NOFOLLOW) {
            warn!("mount: umount2 after the new mount's root could not be opened: {e}");
        }
    })
}

//! Finding and tearing down what diskmount processes that died (a crash,
//! `kill -9`) left behind, from their records in the [`RunDir`], acting
//! only on what can be verified against the kernel:
//!
//! - a loop device only if its node still has the recorded device number
//!   and `LOOP_GET_STATUS64` reports the recorded backing device and inode
//!   (the image, or the FUSE export); an nbd device only if it is connected
//!   to the recorded, verified qemu-nbd;
//! - a mount only on the recorded mount point and of a verified device;
//! - a mapped partition only if it is a partition, device-mapper target or
//!   offset loop device of the verified device;
//! - a qemu helper only if its pid, start time and executable
//!   (`/proc/PID/exe`) are the recorded ones;
//! - directories only inside the run directory, under the name derived
//!   from the record's id (`<id>.helper`), never a path read from a record.
//!
//! A record that cannot be read or does not validate is reported
//! ([`Status::Unreadable`]), not acted on; so is anything it names that
//! does not verify ([`Found::unverified`]).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, ErrorKind, Result, Step};
use crate::kernel::{mountinfo, sysfs};
use crate::record::RunDir;
use crate::record::format::{self, Data, Helper};
use crate::record::verify::{Survey, alive, helper_runs, is_mount_point, still_there, survey};
use crate::sys::flock::{Lock, flock};

/// Whose a record is, as far as its lock and its owner's pid tell.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Its owner holds its lock: in use, left alone.
    Live {
        /// The owner's pid.
        pid: u32,
    },
    /// Not locked, but its owner still runs: its teardown did not finish
    /// and it let go of the record. Left alone by `diskmount cleanup` until
    /// that process is gone; [`Found::tear_down`] acts on it if asked.
    Released {
        /// The owner's pid.
        pid: u32,
    },
    /// A mount left on purpose (`diskmount mount`) that is still there.
    Persistent,
    /// Its owner is gone: what it verifiably names is to be torn down.
    Orphan,
    /// It cannot be read or trusted; nothing it names is acted on.
    Unreadable {
        /// Why.
        reason: String,
    },
}

impl Status {
    /// A short name (`live`, `released`, `persistent`, `orphan`, `unreadable`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Live { .. } => "live",
            Status::Released { .. } => "released",
            Status::Persistent => "persistent",
            Status::Orphan => "orphan",
            Status::Unreadable { .. } => "unreadable",
        }
    }
}

/// One verified step of a teardown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Unmount the verified mount, then unmap and detach (adoption).
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Unmount one of the guest's own fstab mounts over the verified root
    /// mount ([`crate::Partition::Os`]), leaving its device for
    /// [`Action::Unmap`].
    UnmountGuestMount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Remove a verified device mapped for the guest's fstab: a partition
    /// node, device-mapper target or offset loop device of the attached
    /// device, which stays for the root's teardown.
    Unmap {
        /// The device.
        device: PathBuf,
    },
    /// Unmap and detach a verified device that is not mounted (adoption).
    Release {
        /// The mapped partition's device, or the whole device.
        device: PathBuf,
    },
    /// SIGTERM (repeated), then SIGKILL, a verified qemu helper.
    StopHelper {
        /// Its pid.
        pid: u32,
        /// Its executable, as verified.
        exe: PathBuf,
    },
    /// Unmount the stale FUSE export inside the helper's directory.
    UnmountExport {
        /// The export's path.
        path: PathBuf,
    },
    /// Remove a directory of the run directory (a helper's).
    RemoveDir {
        /// Its path.
        path: PathBuf,
    },
    /// Remove a file of the run directory (a half-written record).
    RemoveFile {
        /// Its path.
        path: PathBuf,
    },
    /// Remove the record, once nothing it names is left.
    RemoveRecord {
        /// Its path.
        path: PathBuf,
    },
}

impl Action {
    /// A short name (`unmount`, `unmount-guest-mount`, `unmap`, `release`,
    /// `stop-helper`, `unmount-export`, `remove-dir`, `remove-file`,
    /// `remove-record`).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Unmount { .. } => "unmount",
            Action::UnmountGuestMount { .. } => "unmount-guest-mount",
            Action::Unmap { .. } => "unmap",
            Action::Release { .. } => "release",
            Action::StopHelper { .. } => "stop-helper",
            Action::UnmountExport { .. } => "unmount-export",
            Action::RemoveDir { .. } => "remove-dir",
            Action::RemoveFile { .. } => "remove-file",
            Action::RemoveRecord { .. } => "remove-record",
        }
    }

    /// The path it acts on (for a helper, its executable).
    pub fn path(&self) -> &Path {
        match self {
            Action::Unmount { mountpoint } | Action::UnmountGuestMount { mountpoint } => mountpoint,
            Action::Release { device } | Action::Unmap { device } => device,
            Action::StopHelper { exe, .. } => exe,
            Action::UnmountExport { path }
            | Action::RemoveDir { path }
            | Action::RemoveFile { path }
            | Action::RemoveRecord { path } => path,
        }
    }

    /// The process it signals, if any.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Action::StopHelper { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Unmount { mountpoint } => write!(f, "unmount {}", mountpoint.display()),
            Action::UnmountGuestMount { mountpoint } => {
                write!(f, "unmount guest fstab mount {}", mountpoint.display())
            }
            Action::Unmap { device } => write!(f, "unmap {}", device.display()),
            Action::Release { device } => write!(f, "release {}", device.display()),
            Action::StopHelper { pid, exe } => {
                write!(f, "stop qemu helper {pid} ({})", exe.display())
            }
            Action::UnmountExport { path } => write!(f, "unmount stale export {}", path.display()),
            Action::RemoveDir { path } => write!(f, "remove {}", path.display()),
            Action::RemoveFile { path } => write!(f, "remove {}", path.display()),
            Action::RemoveRecord { path } => write!(f, "remove record {}", path.display()),
        }
    }
}

/// What a teardown did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The actions that were carried out (their errors aside).
    pub done: Vec<Action>,
    /// What went wrong on the way (a dead process's lost writes, often).
    pub errors: Vec<Error>,
    /// What the record names that is still there afterwards (verified).
    pub left: Vec<String>,
}

/// One entry of the run directory, verified against the system.
#[derive(Debug)]
pub struct Found {
    file: PathBuf,
    status: Status,
    data: Option<Data>,
    dir: PathBuf,
    plan: Vec<Action>,
    unverified: Vec<String>,
    /// The record's lock, held from the scan to the teardown (so two
    /// cleanups never act on one record).
    _lock: Option<File>,
}

impl Found {
    /// The record file (or the stray file or directory).
    pub fn record(&self) -> &Path {
        &self.file
    }

    /// Whose it is.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The image, as recorded.
    pub fn image(&self) -> Option<&Path> {
        self.data.as_ref().map(|d| d.image.path.0.as_path())
    }

    /// The backend, as recorded.
    pub fn backend(&self) -> Option<&str> {
        self.data.as_ref().map(|d| d.backend.as_str())
    }

    /// The pid of the qemu helper serving the image, as recorded.
    pub fn helper_pid(&self) -> Option<u32> {
        self.data
            .as_ref()
            .and_then(|d| d.helper.as_ref())
            .map(|h| h.pid)
    }

    /// The pid of the process that wrote it.
    pub fn pid(&self) -> Option<u32> {
        self.data.as_ref().map(|d| d.pid)
    }

    /// The mount point, as recorded.
    pub fn mountpoint(&self) -> Option<&Path> {
        self.data
            .as_ref()
            .and_then(|d| d.mountpoint.as_ref())
            .map(|m| m.0.as_path())
    }

    /// Whether it was a mount left on purpose.
    pub fn is_persistent(&self) -> bool {
        self.data.as_ref().is_some_and(|d| d.persistent)
    }

    /// What [`Found::tear_down`] would do: only verified objects.
    pub fn plan(&self) -> &[Action] {
        &self.plan
    }

    /// What the record names that did not verify, and is left alone.
    pub fn unverified(&self) -> &[String] {
        &self.unverified
    }

    /// Carries out only the plan's [`Action::UnmountGuestMount`] and
    /// [`Action::Unmap`] steps (nothing for a [`Status::Live`] or
    /// [`Status::Unreadable`] record): the guest's fstab mounts over the
    /// root of a [`crate::Partition::Os`] mount, so that the root can be
    /// unmounted (`diskmount umount`). The record stays.
    pub fn tear_down_guest_mounts(&self) -> Outcome {
        let mut out = Outcome::default();
        if matches!(self.status, Status::Live { .. } | Status::Unreadable { .. }) {
            return out;
        }
        for action in &self.plan {
            if matches!(
                action,
                Action::UnmountGuestMount { .. } | Action::Unmap { .. }
            ) {
                if let Err(e) = carry_out(action, None) {
                    out.errors.push(e);
                }
                out.done.push(action.clone());
            }
        }
        out
    }

    /// Carries out the plan in order, up to a step that fails and leaves a
    /// mount in place (nothing for a [`Status::Live`] or
    /// [`Status::Unreadable`] record),
    /// then removes the record if nothing it names is left. A device the
    /// record names no mount of is not released while it (a partition of
    /// it, a target over it) is mounted anywhere: that mount is someone
    /// else's.
    pub fn tear_down(self) -> Outcome {
        let mut out = Outcome::default();
        if matches!(self.status, Status::Live { .. } | Status::Unreadable { .. }) {
            return out;
        }
        // A helper is stopped only once nothing is mounted through it: a
        // step that fails and leaves its mount in place ends the plan, and
        // what is left stays in the record. (An unmount that went through
        // but reported a failed flush, say, goes on.)
        for action in &self.plan {
            let done = carry_out(action, self.data.as_ref().and_then(|d| d.helper.as_ref()));
            out.done.push(action.clone());
            if let Err(e) = done {
                out.errors.push(e);
                if leaves_a_mount(action) {
                    break;
                }
            }
        }
        if let Some(data) = &self.data {
            out.left = still_there(data, &self.dir);
            if out.left.is_empty() {
                match std::fs::remove_file(&self.file) {
                    Ok(()) => out.done.push(Action::RemoveRecord {
                        path: self.file.clone(),
                    }),
                    Err(e) => {
                        out.errors
                            .push(Error::os(Step::Cleanup, &self.file, "remove record", e))
                    }
                }
            }
        }
        out
    }
}

/// Every entry of `dir`, each verified; nothing is changed, except that
/// the empty record slots of processes that are gone are removed (a
/// process keeps its emptied records for its next attach, see
/// `record` in docs/architecture.md; a live owner's are skipped).
///
/// # Errors
/// [`Step::Cleanup`]: the run directory is unsafe (not root's, not mode
/// 0700: its contents cannot be trusted) or unreadable. A missing one has
/// nothing in it.
pub fn scan(dir: &RunDir) -> Result<Vec<Found>> {
    let Some(path) = dir.path() else {
        return Ok(Vec::new());
    };
    if !path.exists() && std::fs::symlink_metadata(path).is_err() {
        return Ok(Vec::new());
    }
    let path = dir.check(Step::Cleanup)?;
    // The path the kernel reports (loop backing files) is the real one.
    let real = std::fs::canonicalize(path)
        .map_err(|e| Error::os(Step::Cleanup, path, "resolve run directory", e))?;
    let path = real.as_path();
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(path)
        .map_err(|e| Error::os(Step::Cleanup, path, "read run directory", e))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut out = Vec::new();
    let records: Vec<String> = names
        .iter()
        .filter_map(|n| n.to_str()?.strip_suffix(".json").map(str::to_owned))
        .collect();
    for name in &names {
        let file = path.join(name);
        let Some(name) = name.to_str() else {
            out.push(unreadable(path, file, "not a name diskmount makes"));
            continue;
        };
        if let Some(stem) = name.strip_suffix(".json") {
            out.extend(read_record(path, file, stem));
        } else if let Some(id) = name.strip_suffix(".helper")
            && !records.iter().any(|r| r == id)
        {
            out.push(stray(path, file, id, true));
        } else if let Some(id) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
            out.push(stray(path, file, id, false));
        } else if name.ends_with(".helper") {
            // A record's own directory: part of that record.
        } else {
            out.push(unreadable(path, file, "not a name diskmount makes"));
        }
    }
    Ok(out)
}

fn unreadable(dir: &Path, file: PathBuf, reason: impl Into<String>) -> Found {
    Found {
        file,
        status: Status::Unreadable {
            reason: reason.into(),
        },
        data: None,
        dir: dir.to_path_buf(),
        plan: Vec::new(),
        unverified: Vec::new(),
        _lock: None,
    }
}

/// Whether process `pid` that started at `start` still runs.
/// A helper directory without a record, or a temporary file: left by a
/// process killed between making it and writing its record.
fn stray(dir: &Path, file: PathBuf, id: &str, is_dir: bool) -> Found {
    let Some((pid, start)) = format::parse_id(id) else {
        return unreadable(dir, file, "not a name diskmount makes");
    };
    let mut found = unreadable(dir, file.clone(), "");
    if alive(pid, start) {
        found.status = Status::Live { pid };
        return found;
    }
    found.status = Status::Orphan;
    if is_dir {
        let export = file.join("export");
        if is_mount_point(&export) {
            found.plan.push(Action::UnmountExport { path: export });
        }
        found.plan.push(Action::RemoveDir { path: file });
    } else {
        found.plan.push(Action::RemoveFile { path: file });
    }
    found
}

/// Opens a record, tells whose it is, parses and verifies it. `None` for
/// an empty slot (it names nothing): skipped while its owner lives,
/// removed once it is gone.
fn read_record(dir: &Path, file: PathBuf, stem: &str) -> Option<Found> {
    match read_locked(dir, file, stem) {
        Opened::EmptySlot => None,
        Opened::Known(found) => Some(*found),
        Opened::Locked { handle, file, text } => Some(record_of(dir, file, stem, handle, &text)),
    }
}

/// A record file as opened.
enum Opened {
    /// An empty slot: nothing to list.
    EmptySlot,
    /// Already told: unreadable, or a live owner's.
    Known(Box<Found>),
    /// Locked by us, its text still to be parsed and verified.
    Locked {
        handle: File,
        file: PathBuf,
        text: Vec<u8>,
    },
}

fn read_locked(dir: &Path, file: PathBuf, stem: &str) -> Opened {
    let mut attempts = 0;
    let (handle, text) = loop {
        attempts += 1;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&file);
        let handle = match opened {
            Ok(f) => f,
            Err(e) => return Opened::Known(Box::new(unreadable(dir, file, format!("open: {e}")))),
        };
        let meta = match handle.metadata() {
            Ok(m) => m,
            Err(e) => return Opened::Known(Box::new(unreadable(dir, file, format!("fstat: {e}")))),
        };
        if !meta.file_type().is_file() || meta.uid() != 0 || meta.len() > format::MAX_SIZE {
            return Opened::Known(Box::new(unreadable(
                dir,
                file,
                "not a regular file owned by root of at most 64 KiB",
            )));
        }
        let pid_of = || format::parse_id(stem).map_or(0, |(p, _)| p);
        match flock(handle.as_fd(), Lock::Exclusive, false) {
            Err(Errno::EWOULDBLOCK) => {
                let text = std::fs::read(&file).unwrap_or_default();
                if format::is_free_slot(&text, stem) {
                    return Opened::EmptySlot;
                }
                let mut f = unreadable(dir, file, "");
                f.status = Status::Live { pid: pid_of() };
                f.data = Data::parse(&text, stem).ok();
                return Opened::Known(Box::new(f));
            }
            Err(e) => return Opened::Known(Box::new(unreadable(dir, file, format!("flock: {e}")))),
            Ok(()) => {}
        }
        // Renamed over since we opened it: its owner saved again.
        let same = std::fs::symlink_metadata(&file)
            .is_ok_and(|now| now.ino() == meta.ino() && now.dev() == meta.dev());
        if !same {
            if attempts < 5 {
                continue;
            }
            return Opened::Known(Box::new(unreadable(dir, file, "keeps being replaced")));
        }
        let mut text = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut (&handle), &mut text) {
            return Opened::Known(Box::new(unreadable(dir, file, format!("read: {e}"))));
        }
        break (handle, text);
    };
    if format::is_free_slot(&text, stem) {
        // An empty slot whose owner is gone (it holds the lock for as
        // long as it lives): nothing to tear down, only the file.
        debug!(
            "cleanup: {} is an empty slot of a dead process; removed",
            file.display()
        );
        let _ = std::fs::remove_file(&file);
        return Opened::EmptySlot;
    }
    Opened::Locked { handle, file, text }
}

/// Parses and verifies a locked record's `text`.
fn record_of(dir: &Path, file: PathBuf, stem: &str, handle: File, text: &[u8]) -> Found {
    let data = match Data::parse(text, stem) {
        Ok(d) => d,
        Err(reason) => return unreadable(dir, file, reason),
    };
    // A persistent record was let go on purpose: whether its writer
    // still runs does not matter.
    let status = if !data.persistent && alive(data.pid, data.start) {
        Status::Released { pid: data.pid }
    } else {
        Status::Orphan
    };
    let survey = survey(&data, dir);
    let status = if data.persistent && survey.mount.is_some() {
        Status::Persistent
    } else {
        status
    };
    Found {
        file,
        status,
        plan: plan_of(&survey),
        unverified: survey
            .unverified
            .iter()
            .chain(&survey.doubtful)
            .cloned()
            .collect(),
        data: Some(data),
        dir: dir.to_path_buf(),
        _lock: Some(handle),
    }
}

/// How long a helper may take to stop after SIGTERM before SIGKILL.
const STOP_BOUND: Duration = Duration::from_secs(5);
/// How often SIGTERM is sent again (qemu's handler only sets a flag; a
/// signal landing just before its main loop sleeps goes unseen).
const TERM_RESEND: Duration = Duration::from_millis(250);

fn carry_out(action: &Action, helper: Option<&Helper>) -> Result<()> {
    info!("cleanup: {action}");
    match action {
        Action::Unmount { mountpoint } => {
            // `with_mounted`'s own temporary mount point (`.diskmount-*`):
            // its parent is pinned now, while the mount is verified there,
            // and only the empty directory of that name in it is removed.
            let temp = mountpoint
                .file_name()
                .filter(|n| n.as_encoded_bytes().starts_with(b".diskmount-"))
                .and_then(|n| {
                    let parent = std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                        .open(mountpoint.parent()?)
                        .ok()?;
                    Some((parent, n.to_owned()))
                });
            crate::adopt(mountpoint)?.close()?;
            if let Some((parent, name)) = temp {
                match nix::unistd::unlinkat(
                    &parent,
                    name.as_os_str(),
                    nix::unistd::UnlinkatFlags::RemoveDir,
                ) {
                    Ok(()) | Err(Errno::ENOENT | Errno::ENOTEMPTY | Errno::EBUSY) => {}
                    Err(e) => warn!("cleanup: rmdir {}: {e}", mountpoint.display()),
                }
            }
            Ok(())
        }
        Action::UnmountGuestMount { mountpoint } => crate::mount::unmount::unmount(
            Step::Cleanup,
            mountpoint,
            "",
            crate::retry::RetryPolicy::UNMOUNT,
        ),
        Action::Unmap { device } => crate::adopt::release_mapping(device),
        Action::Release { device } => {
            // The record names no mount of it: one found now (moved, or
            // made after the crash) is someone's, and stays.
            let on = mounts_over(device)?;
            if !on.is_empty() {
                return Err(Error::refused(
                    ErrorKind::InUse,
                    Step::Cleanup,
                    device,
                    format!(
                        "is mounted on {}, which its record does not name; left alone \
                         (unmount it, then run cleanup again)",
                        on.iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            crate::adopt(device)?.close()
        }
        Action::StopHelper { pid, .. } => {
            let Some(h) = helper.filter(|h| h.pid == *pid) else {
                return Ok(());
            };
            stop_helper(h)
        }
        Action::UnmountExport { path } => {
            let start = Instant::now();
            loop {
                match nix::mount::umount2(path.as_path(), nix::mount::MntFlags::UMOUNT_NOFOLLOW) {
                    Ok(()) => return Ok(()),
                    Err(Errno::EBUSY) if start.elapsed() < Duration::from_secs(2) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => {
                        return Err(Error::os(
                            Step::Cleanup,
                            path,
                            "umount2 stale FUSE export",
                            e,
                        ));
                    }
                }
            }
        }
        Action::RemoveDir { path } => std::fs::remove_dir_all(path)
            .map_err(|e| Error::os(Step::Cleanup, path, "remove directory", e)),
        Action::RemoveFile { path } | Action::RemoveRecord { path } => {
            std::fs::remove_file(path).map_err(|e| Error::os(Step::Cleanup, path, "remove file", e))
        }
    }
}

/// Whether something is still mounted where `action` (which failed) was
/// to take a mount, or a device, down.
fn leaves_a_mount(action: &Action) -> bool {
    match action {
        Action::Unmount { mountpoint } | Action::UnmountGuestMount { mountpoint } => {
            is_mount_point(mountpoint)
        }
        Action::Release { device } | Action::Unmap { device } => {
            std::fs::metadata(device).is_ok() && !mounts_over(device).is_ok_and(|on| on.is_empty())
        }
        _ => false,
    }
}

/// Where `device`, a partition of it, or a device-mapper target over
/// either is mounted, by mountinfo.
fn mounts_over(device: &Path) -> Result<Vec<PathBuf>> {
    let meta =
        std::fs::metadata(device).map_err(|e| Error::os(Step::Cleanup, device, "stat", e))?;
    let Some(name) = sysfs::name_of(meta.rdev()) else {
        return Ok(Vec::new());
    };
    let mut names = vec![name.clone()];
    names.extend(sysfs::partitions(&name).into_iter().map(|p| p.name));
    let holders: Vec<String> = names.iter().flat_map(|n| sysfs::holders(n)).collect();
    names.extend(holders);
    let rdevs: Vec<u64> = names
        .iter()
        .filter_map(|n| mountinfo::dev_number(sysfs::attr(n, "dev")?.trim()))
        .collect();
    let mounts = mountinfo::mounts()
        .map_err(|e| Error::os(Step::Cleanup, "/proc/self/mountinfo", "read", e))?;
    Ok(mounts
        .into_iter()
        .filter(|m| rdevs.contains(&m.block_device()))
        .map(|m| m.target)
        .collect())
}

/// Stops a verified helper: SIGTERM, again every [`TERM_RESEND`], SIGKILL
/// after [`STOP_BOUND`]; verified again before every signal, so a pid
/// that is reused meanwhile is never signalled.
fn stop_helper(h: &Helper) -> Result<()> {
    let pid = Pid::from_raw(h.pid as i32);
    let start = Instant::now();
    let mut signalled: Option<Instant> = None;
    while helper_runs(h) {
        if start.elapsed() >= STOP_BOUND {
            warn!("cleanup: qemu helper {} ignores SIGTERM; killing it", h.pid);
            let _ = kill(pid, Signal::SIGKILL);
            return Err(Error::invalid(
                Step::Cleanup,
                &h.exe.0,
                format!(
                    "qemu helper {} did not stop within {STOP_BOUND:?} of SIGTERM and was killed",
                    h.pid
                ),
            ));
        }
        if signalled.is_none_or(|t| t.elapsed() >= TERM_RESEND) {
            let _ = kill(pid, Signal::SIGTERM);
            signalled = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// What tearing down `s` does: only verified objects.
fn plan_of(s: &Survey) -> Vec<Action> {
    let mut plan = Vec::new();
    // The guest's fstab mounts first, children before parents, then the
    // devices only they used.
    for m in s.tree_mounts.iter().rev() {
        plan.push(Action::UnmountGuestMount {
            mountpoint: m.clone(),
        });
    }
    for d in s.tree_mapped.iter().rev() {
        plan.push(Action::Unmap { device: d.clone() });
    }
    if let Some(m) = &s.mount {
        plan.push(Action::Unmount {
            mountpoint: m.clone(),
        });
    } else if let Some(d) = s.mapped.as_ref().or(s.device.as_ref()) {
        plan.push(Action::Release { device: d.clone() });
    }
    if let Some((pid, exe)) = &s.helper {
        plan.push(Action::StopHelper {
            pid: *pid,
            exe: exe.clone(),
        });
    }
    if let Some(e) = &s.export {
        plan.push(Action::UnmountExport { path: e.clone() });
    }
    if let Some(d) = &s.helper_dir {
        plan.push(Action::RemoveDir { path: d.clone() });
    }
    plan
}

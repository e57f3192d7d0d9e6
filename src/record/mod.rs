//! Records of what this process holds, in its [`RunDir`] (default
//! `/run/diskmount`), so that [`crate::cleanup`] can find and tear down
//! exactly what a crashed or killed diskmount process left behind, and
//! nothing else.
//!
//! One file per attached image, `<id>.json` with `id` = `<pid>-<start>-<n>`
//! (the start time tells a reused pid apart), in the versioned JSON of
//! [`format`]. The first save writes a temporary `.<id>.tmp`, takes an
//! exclusive `flock` on it and renames it into place, so a reader never
//! sees a record before it is whole and locked: the lock is how others
//! tell the owner is alive (its pid and start time are the second check).
//! Later saves rewrite the locked file in place with one `pwrite` at
//! offset 0, padded with spaces (JSON whitespace) to the length it had:
//! no new inode, no directory change, so no journal work beyond the
//! file's times where the run directory is on a journalling filesystem
//! (`/run` on the root disk). A write within one page is all or nothing
//! even under `SIGKILL` (the kernel checks for a fatal signal only between
//! pages), so a killed owner leaves the old record or the new one, whole;
//! a record that would not fit in [`IN_PLACE_MAX`] bytes is still written
//! by temporary file and rename.
//!
//! A record whose teardown finished is not removed but emptied: rewritten
//! in place as an empty slot (`{"version":1,"id":..,"free":true}`), still
//! locked, and kept for this process's next attach in the same directory,
//! which writes its record into it in place. Sequential cycles thus make
//! no directory change at all (no create, rename or unlink joining the
//! journal commit that the image's `fsync` forces when the run directory
//! is on the root disk). [`crate::cleanup::scan`] skips empty slots and
//! removes those whose owner is gone; the process removes its own when it
//! exits normally (`atexit`). One whose teardown did not finish stays,
//! unlocked, for `diskmount cleanup`. A record marked `persistent`
//! (`diskmount mount`) is left alone while its mount is there.
//!
//! The qemu helpers' private directory (the FUSE export, logs) is
//! `<id>.helper` in the same directory: cleanup derives that name from the
//! record's own file name, and never removes a path read from a record.

pub(crate) mod format;
pub(crate) mod verify;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use log::{debug, warn};
use nix::libc;

pub use crate::run_dir::RunDir;

use crate::error::{Result, Step};
use crate::sys::flock::{Lock, flock};
use format::{Data, DeviceId, FileId, Helper, Inode, MappedId, RawPath, TreeMount};

/// The start time of process `pid` (field 22 of /proc/PID/stat), which
/// tells a reused pid apart.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    crate::kernel::process::start_time(pid)
}

/// The record file of `id` in `dir`.
pub(crate) fn record_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// The private directory of `id`'s qemu helper in `dir`.
pub(crate) fn helper_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.helper"))
}

/// The temporary file a save of `id` writes before its rename.
pub(crate) fn temp_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!(".{id}.tmp"))
}

/// The largest record rewritten in place (one page: a `write` within it is
/// not torn by a fatal signal).
pub(crate) const IN_PLACE_MAX: usize = 4096;

/// The most empty slots a process keeps (one per image it has attached
/// at once, up to this); more are removed.
const MAX_SLOTS: usize = 64;

/// An empty record file of this process, locked, for its next attach.
#[derive(Debug)]
struct Slot {
    dir: PathBuf,
    id: String,
    file: File,
    len: usize,
}

/// This process's empty slots (`pid`: the process they belong to; a
/// forked child inherits the memory, not the slots).
struct Pool {
    pid: u32,
    slots: Vec<Slot>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    pid: 0,
    slots: Vec::new(),
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if pool.pid != pid {
        // Inherited by fork: the descriptors share the parent's locks.
        pool.slots.clear();
        pool.pid = pid;
    }
    pool
}

/// An empty slot of this process in `dir`, if one is still in place (the
/// run directory may have been removed or replaced since).
fn take_slot(dir: &Path) -> Option<Slot> {
    let slot = {
        let mut pool = pool();
        let i = pool.slots.iter().position(|s| s.dir == dir)?;
        pool.slots.swap_remove(i)
    };
    let here = std::fs::symlink_metadata(record_path(dir, &slot.id)).ok()?;
    let open = slot.file.metadata().ok()?;
    (here.ino() == open.ino() && here.dev() == open.dev()).then_some(slot)
}

/// Empties the record `live` (its teardown finished) and keeps it as a
/// slot; gives it back if it cannot be one (then it is removed).
fn free_slot(live: Live) -> Option<Live> {
    static AT_EXIT: OnceLock<bool> = OnceLock::new();
    // Loop and block devices run no helper: no directory to look for.
    let helper = !matches!(live.data.backend.as_str(), "loop" | "block");
    let usable = live.len <= IN_PLACE_MAX
        && !live.data.persistent
        && !(helper && helper_dir(&live.dir, &live.data.id).exists())
        && *AT_EXIT.get_or_init(|| {
            crate::sys::process::at_exit(remove_slots_at_exit)
                .map_err(|e| debug!("record slots: {e}"))
                .is_ok()
        });
    let Some(file) = live.file.as_ref().filter(|_| usable) else {
        return Some(live);
    };
    let mut free = format::free_slot(&live.data.id);
    if free.len() > live.len {
        return Some(live);
    }
    free.resize(live.len, b' ');
    if !matches!(file.write_at(&free, 0), Ok(n) if n == free.len()) {
        return Some(live);
    }
    let mut pool = pool();
    if pool.slots.len() >= MAX_SLOTS {
        return Some(live);
    }
    let Live {
        dir,
        data,
        file,
        len,
        ..
    } = live;
    let file = file?;
    debug!("record {}: emptied, kept for the next attach", data.id);
    pool.slots.push(Slot {
        dir,
        id: data.id,
        file,
        len,
    });
    None
}

/// Removes this process's empty slots (run by `exit`).
extern "C" fn remove_slots_at_exit() {
    let mut pool = match POOL.try_lock() {
        Ok(p) => p,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if pool.pid != std::process::id() {
        return;
    }
    for slot in pool.slots.drain(..) {
        let _ = std::fs::remove_file(record_path(&slot.dir, &slot.id));
    }
}

/// What one attached image's record says, held while this process owns it.
#[derive(Debug)]
struct Live {
    dir: PathBuf,
    data: Data,
    /// The record file as last renamed into place, exclusively locked.
    /// `None` until the first save.
    file: Option<File>,
    /// The length of the file's contents (what an in-place rewrite must
    /// cover).
    len: usize,
}

/// The record this process keeps for one attached image; removed on drop.
#[derive(Debug)]
pub(crate) struct Keeper {
    live: Option<Live>,
}

/// A field set as the steps go ([`Keeper::set`]).
pub(crate) enum Field<'a> {
    /// The mapped partition's device and how it was mapped.
    Mapped { path: &'a Path, mapping: &'a str },
    /// Where it is mounted: the absolute, resolved path the mount step
    /// mounted on (`mount::by_fd::resolve_mount_point`), kept as it is.
    Mountpoint(&'a Path),
    /// A device mapped for the guest's fstab ([`crate::Partition::Os`]).
    TreeMapped { path: &'a Path, mapping: &'a str },
    /// A mount of the guest's fstab over the root: its mount point, and
    /// its device (`None`: an excluded mount point's tmpfs).
    TreeMount {
        path: &'a Path,
        device: Option<&'a Path>,
    },
}

/// A field removed again ([`Keeper::unset`]).
pub(crate) enum Key {
    Mapped,
    Mountpoint,
    /// Every tree entry (the fstab's mounts and their devices).
    Tree,
}

/// The absolute, normal form of `path`, as far as it can be had.
fn absolute(path: &Path) -> PathBuf {
    // A URL image's name (`nbd://...`) is no host path.
    if path.to_string_lossy().contains("://") {
        return path.to_path_buf();
    }
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// The real path of the open regular file `file`, as the kernel names it
/// (`None` if it was deleted or cannot be read).
fn served_path(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    (path.is_absolute() && !path.as_os_str().as_encoded_bytes().ends_with(b" (deleted)"))
        .then_some(path)
}

/// The real path of the run directory `dir`, resolved once per process
/// for the directory last used (the common case: one directory).
fn canonical_run_dir(dir: &Path) -> Result<PathBuf> {
    static LAST: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((given, real)) = last.as_ref()
        && given == dir
    {
        return Ok(real.clone());
    }
    let real = std::fs::canonicalize(dir)
        .map_err(|e| crate::error::Error::os(Step::Attach, dir, "resolve run directory", e))?;
    *last = Some((dir.to_path_buf(), real.clone()));
    Ok(real)
}

fn inode(meta: &std::fs::Metadata) -> Inode {
    Inode {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// What a record keeps of an attached device.
pub(crate) struct Attachment<'a> {
    /// The backend's name (`loop`, `fuse`, ...).
    pub(crate) backend: &'static str,
    /// The device node.
    pub(crate) path: &'a Path,
    /// Its device number.
    pub(crate) rdev: u64,
    /// Its disk sequence number.
    pub(crate) diskseq: Option<u64>,
    /// The file a loop device reads (the image, or a FUSE export).
    pub(crate) backing: Option<&'a std::fs::File>,
    /// The qemu helper serving it.
    pub(crate) helper_pid: Option<u32>,
    /// Whether that helper is the process's shared daemon.
    pub(crate) helper_shared: bool,
    /// An nbd device's serving thread when it came up.
    pub(crate) server_thread: Option<u32>,
}

impl Keeper {
    /// No record (an adopted device: its record, if any, is someone else's).
    pub(crate) fn none() -> Keeper {
        Keeper { live: None }
    }

    /// Starts the record of an attach of `image` with `options` (nothing is
    /// written until [`Keeper::attached`]): checks the run directory
    /// (created if missing) and reserves the record's id.
    ///
    /// # Errors
    /// [`Step::Attach`]: the run directory is unsafe (not root's, or not
    /// mode 0700) or cannot be created.
    pub(crate) fn start(run_dir: Option<&RunDir>, image: &Path) -> Result<Keeper> {
        static N: AtomicU64 = AtomicU64::new(0);
        static START: OnceLock<(u32, u64)> = OnceLock::new();
        let run_dir = run_dir.cloned().unwrap_or_default();
        let Some(dir) = run_dir.ensure(Step::Attach)? else {
            return Ok(Keeper::none());
        };
        // The path the kernel reports for loop backing files is the real one.
        let dir = canonical_run_dir(dir)?;
        let pid = std::process::id();
        // A forked child is another process: its own start time.
        let start = match START.get() {
            Some(&(p, s)) if p == pid => s,
            _ => {
                let s = start_time(pid).unwrap_or(0);
                let _ = START.set((pid, s));
                s
            }
        };
        let slot = take_slot(&dir);
        let id = match &slot {
            Some(slot) => slot.id.clone(),
            None => format!("{pid}-{start}-{}", N.fetch_add(1, Ordering::Relaxed)),
        };
        // The image's real path and identity are taken at `attached`, from
        // the file the device serves where there is one (one `readlink`
        // instead of resolving the path a component at a time).
        let data = Data {
            version: format::VERSION,
            id,
            pid,
            start,
            image: FileId {
                path: RawPath(image.to_path_buf()),
                dev: 0,
                ino: 0,
            },
            backend: String::new(),
            device: None,
            helper: None,
            mapped: None,
            mountpoint: None,
            persistent: false,
            tree_mapped: Vec::new(),
            tree_mounts: Vec::new(),
        };
        let (file, len) = slot.map_or((None, 0), |s| (Some(s.file), s.len));
        Ok(Keeper {
            live: Some(Live {
                dir,
                data,
                file,
                len,
            }),
        })
    }

    /// This record's directory for the qemu helper's private files.
    pub(crate) fn helper_dir(&self) -> Option<PathBuf> {
        self.live.as_ref().map(|l| helper_dir(&l.dir, &l.data.id))
    }

    /// Records the attached device (and its qemu helper) and writes the
    /// record.
    pub(crate) fn attached(&mut self, device: &Attachment<'_>) {
        let Some(live) = &mut self.live else { return };
        let d = &mut live.data;
        d.backend = device.backend.to_string();
        let backing = device
            .backing
            .and_then(|f| f.metadata().ok())
            .map(|m| inode(&m));
        let served = (device.backend == "loop")
            .then(|| device.backing.zip(backing))
            .flatten()
            .and_then(|(file, b)| Some((served_path(file)?, b)));
        if let Some((path, b)) = served {
            // The file the loop device serves is the image as opened, and
            // its path is the one the kernel reports for the device.
            d.image.path = RawPath(path);
            d.image.dev = b.dev;
            d.image.ino = b.ino;
        } else {
            let path = absolute(&d.image.path.0);
            if let Ok(m) = std::fs::metadata(&path) {
                d.image.dev = m.dev();
                d.image.ino = m.ino();
            }
            d.image.path = RawPath(path);
        }
        d.device = Some(DeviceId {
            path: RawPath(device.path.to_path_buf()),
            rdev: device.rdev,
            backing,
            diskseq: device.diskseq,
            server: device.server_thread,
        });
        d.helper = device.helper_pid.and_then(|pid| {
            Some(Helper {
                pid,
                start: start_time(pid)?,
                exe: RawPath(std::fs::read_link(format!("/proc/{pid}/exe")).ok()?),
                shared: device.helper_shared,
            })
        });
        self.save();
    }

    /// Sets a field and saves.
    pub(crate) fn set(&mut self, field: Field<'_>) {
        let Some(live) = &mut self.live else { return };
        match field {
            Field::Mapped { path, mapping } => {
                live.data.mapped = Some(MappedId {
                    path: RawPath(path.to_path_buf()),
                    rdev: std::fs::metadata(path).map_or(0, |m| m.rdev()),
                    mapping: mapping.to_string(),
                })
            }
            Field::Mountpoint(path) => live.data.mountpoint = Some(RawPath(path.to_path_buf())),
            Field::TreeMapped { path, mapping } => live.data.tree_mapped.push(MappedId {
                path: RawPath(path.to_path_buf()),
                rdev: std::fs::metadata(path).map_or(0, |m| m.rdev()),
                mapping: mapping.to_string(),
            }),
            Field::TreeMount { path, device } => live.data.tree_mounts.push(TreeMount {
                path: RawPath(absolute(path)),
                device: RawPath(
                    device.map_or_else(|| PathBuf::from(format::EXCLUDED), Path::to_path_buf),
                ),
                rdev: device
                    .and_then(|d| std::fs::metadata(d).ok())
                    .map_or(0, |m| m.rdev()),
            }),
        }
        self.save();
    }

    /// Removes a field and saves.
    pub(crate) fn unset(&mut self, key: Key) {
        if self.clear(key) {
            self.save();
        }
    }

    /// Removes a field without saving: for a step whose teardown just
    /// succeeded while the rest goes on. The file keeps naming it until
    /// the next save or the record's removal, which a crash in between
    /// leaves to `cleanup` (it finds the thing gone); the record's own
    /// check at the end then need not look for it (for a mount: no
    /// mountinfo read).
    pub(crate) fn forget(&mut self, key: Key) {
        self.clear(key);
    }

    /// Removes a field in memory; whether there was one.
    fn clear(&mut self, key: Key) -> bool {
        let Some(live) = &mut self.live else {
            return false;
        };
        let d = &mut live.data;
        match key {
            Key::Mapped => d.mapped.take().is_some(),
            Key::Mountpoint => d.mountpoint.take().is_some(),
            Key::Tree => {
                let had = !d.tree_mapped.is_empty() || !d.tree_mounts.is_empty();
                d.tree_mapped.clear();
                d.tree_mounts.clear();
                had
            }
        }
    }

    /// Stops managing the record: it stays on disk, unlocked, marked
    /// persistent (a mount left on purpose).
    pub(crate) fn keep(&mut self) {
        if let Some(live) = &mut self.live {
            live.data.persistent = true;
        }
        self.save();
        self.live = None;
    }

    /// Writes the record: the first time (or when it does not fit in
    /// [`IN_PLACE_MAX`]) a temporary file, locked, renamed into place; then
    /// in place, in the locked file (see the module). Records are a help
    /// for cleanup after a crash: a failure is logged, not fatal.
    fn save(&mut self) {
        let Some(live) = &mut self.live else { return };
        let mut json = live.data.to_json();
        if let Some(file) = &live.file
            && json.len() <= IN_PLACE_MAX
            && live.len <= IN_PLACE_MAX
        {
            let whole = json.len();
            let len = whole.max(live.len);
            // Spaces after the newline: whitespace to a JSON reader.
            json.resize(len, b' ');
            match file.write_at(&json, 0) {
                Ok(n) if n == len => {
                    live.len = len;
                    return;
                }
                // A short write only extends the file (ENOSPC): the
                // rename below writes a whole new one.
                Ok(n) => debug!("record rewrite: {n} of {len} bytes; writing a new file"),
                Err(e) => debug!("record rewrite: {e}; writing a new file"),
            }
            json.truncate(whole);
        }
        let tmp = temp_path(&live.dir, &live.data.id);
        let path = record_path(&live.dir, &live.data.id);
        let write = || -> std::io::Result<File> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(&json)?;
            // A new file nobody else has open: never blocks.
            flock(f.as_fd(), Lock::Exclusive, false).map_err(std::io::Error::from)?;
            std::fs::rename(&tmp, &path)?;
            Ok(f)
        };
        match write() {
            // The old file's lock goes with it.
            Ok(f) => {
                live.file = Some(f);
                live.len = json.len();
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                warn!(
                    "record {}: {e} (cleanup after a crash will not find this image)",
                    path.display()
                );
            }
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        let Some(live) = self.live.take() else { return };
        if live.file.is_none() {
            return;
        }
        let path = record_path(&live.dir, &live.data.id);
        let left = verify::still_there(&live.data, &live.dir);
        if !left.is_empty() {
            // Teardown did not finish (its errors were reported): the
            // record stays for `diskmount cleanup` once we are gone.
            warn!(
                "record {}: teardown left {} behind; kept for `diskmount cleanup`",
                path.display(),
                left.join(", ")
            );
            return;
        }
        // Kept (locked) until it is unlinked.
        let Some(_live) = free_slot(live) else {
            return;
        };
        match std::fs::remove_file(&path) {
            Ok(()) => debug!("record {} removed", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("record {}: remove: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, id: &str) -> (Vec<u8>, std::fs::Metadata) {
        let path = record_path(dir, id);
        (
            std::fs::read(&path).unwrap(),
            std::fs::metadata(&path).unwrap(),
        )
    }

    /// Later saves rewrite the first file in place (same inode, no
    /// temporary file), padded so that a shorter record still parses.
    #[test]
    fn later_saves_rewrite_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let image = dir.path().join("image");
        std::fs::write(&image, b"").unwrap();
        let mut keeper = Keeper::start(Some(&run), &image).unwrap();
        keeper.attached(&Attachment {
            backend: "loop",
            path: Path::new("/dev/loop99"),
            rdev: 0,
            diskseq: None,
            backing: None,
            helper_pid: None,
            helper_shared: false,
            server_thread: None,
        });
        let live = keeper.live.as_ref().unwrap();
        let (dir, id) = (live.dir.clone(), live.data.id.clone());
        let (first, meta) = read(&dir, &id);
        keeper.set(Field::Mountpoint(Path::new(
            "/a/long/mount/point/for/this/test",
        )));
        let (second, now) = read(&dir, &id);
        assert_eq!((now.dev(), now.ino()), (meta.dev(), meta.ino()));
        assert!(second.len() > first.len());
        let data = format::Data::parse(&second, &id).unwrap();
        assert!(data.mountpoint.is_some());
        keeper.unset(Key::Mountpoint);
        let (third, now) = read(&dir, &id);
        assert_eq!((now.dev(), now.ino()), (meta.dev(), meta.ino()));
        assert_eq!(third.len(), second.len());
        assert!(third.ends_with(b" "));
        let data = format::Data::parse(&third, &id).unwrap();
        assert_eq!(data.mountpoint, None);
        assert!(!temp_path(&dir, &id).exists());
        // Teardown verified nothing is left (no /dev/loop99 here): the
        // file is emptied in place and kept, still locked, for the next
        // attach of this process in this directory.
        drop(keeper);
        let (emptied, now) = read(&dir, &id);
        assert_eq!((now.dev(), now.ino()), (meta.dev(), meta.ino()));
        assert!(format::is_free_slot(&emptied, &id));
        let found = crate::cleanup::scan(&run).unwrap();
        assert!(found.is_empty(), "an empty slot is no record: {found:?}");
        let again = Keeper::start(Some(&run), &image).unwrap();
        let live = again.live.as_ref().unwrap();
        assert_eq!(live.data.id, id, "the slot is reused");
        assert!(live.file.is_some());
        drop(again);
        // Emptied again; once it is given up (as at exit, or by a process
        // that died holding it), a scan removes it.
        let slot = take_slot(&dir).unwrap();
        assert_eq!(slot.id, id);
        drop(slot);
        // Another test's thread may fork at any moment: its child holds a
        // copy of the descriptor, and so the lock, until it execs. The
        // scan skips a locked slot; a later one removes it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            assert!(crate::cleanup::scan(&run).unwrap().is_empty());
            if !record_path(&dir, &id).exists() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the given-up slot is still there after 10 s of scans"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

//! Records of what this process holds, under `/run/diskmount`, so that
//! `diskmount cleanup` can find and tear down exactly what a crashed or
//! killed diskmount process left behind, and nothing else.
//!
//! One file per attached image, `<pid>.<n>`, written at attach, rewritten
//! as the steps go, and removed by teardown. A record whose process is gone (the pid is
//! dead, or reused: the process start time differs) is an orphan. A record
//! marked `persistent` (`diskmount mount`) is left alone until its mount is
//! gone. `DISKMOUNT_RUN_DIR` moves the directory (tests use it to keep
//! their records apart); set empty, it switches records off.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use log::{debug, warn};

/// The directory records live in.
pub fn dir() -> PathBuf {
    std::env::var_os("DISKMOUNT_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/diskmount"))
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), which
/// tells a reused pid apart.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// One record: what one attached image holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Where the record is stored.
    pub file: PathBuf,
    /// Its fields (`pid`, `start`, `image`, `backend`, `device`, `daemon_pid`,
    /// `export_dir`, `mapped`, `mapping`, `mountpoint`, `persistent`).
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// A field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// Whether the process that wrote it is still running.
    pub fn owner_alive(&self) -> bool {
        let pid: Option<u32> = self.get("pid").and_then(|p| p.parse().ok());
        match (pid, self.get("start")) {
            (Some(pid), Some(start)) => {
                start_time(pid).map(|s| s.to_string()).as_deref() == Some(start)
            }
            _ => false,
        }
    }

    /// Whether it describes a mount left on purpose.
    pub fn persistent(&self) -> bool {
        self.get("persistent") == Some("1")
    }

    /// Reads every record in [`dir`].
    pub fn all() -> Vec<Record> {
        let Ok(entries) = std::fs::read_dir(dir()) else {
            return Vec::new();
        };
        let mut out: Vec<Record> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                let fields = text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                Some(Record {
                    file: e.path(),
                    fields,
                })
            })
            .collect();
        out.sort_by(|a, b| a.file.cmp(&b.file));
        out
    }

    /// Deletes the record file.
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_file(&self.file)
    }
}

/// The record this process keeps for one attached image; removed on drop.
#[derive(Debug)]
pub(crate) struct Keeper {
    record: Option<Record>,
}

impl Keeper {
    /// No record (an adopted device: its record, if any, is someone else's).
    pub(crate) fn none() -> Keeper {
        Keeper { record: None }
    }

    /// Starts a record for `image` attached as `device`. Records are a
    /// help for cleanup after a crash; failing to write one is logged, not
    /// fatal.
    pub(crate) fn start(fields: &[(&str, String)]) -> Keeper {
        static N: AtomicU64 = AtomicU64::new(0);
        static START: OnceLock<Option<u64>> = OnceLock::new();
        let pid = std::process::id();
        let file = dir().join(format!("{pid}.{}", N.fetch_add(1, Ordering::Relaxed)));
        let mut record = Record {
            file,
            fields: BTreeMap::new(),
        };
        record.fields.insert("pid".into(), pid.to_string());
        if let Some(s) = *START.get_or_init(|| start_time(pid)) {
            record.fields.insert("start".into(), s.to_string());
        }
        for (k, v) in fields {
            record.fields.insert((*k).into(), v.clone());
        }
        if std::env::var_os("DISKMOUNT_RUN_DIR").is_some_and(|d| d.is_empty()) {
            // Records switched off: nothing for `cleanup` to find.
            return Keeper::none();
        }
        let keeper = Keeper {
            record: Some(record),
        };
        keeper.save();
        keeper
    }

    /// Sets fields and saves.
    pub(crate) fn set(&mut self, fields: &[(&str, String)]) {
        if let Some(r) = &mut self.record {
            for (k, v) in fields {
                r.fields.insert((*k).into(), v.clone());
            }
        }
        self.save();
    }

    /// Removes fields and saves.
    pub(crate) fn unset(&mut self, keys: &[&str]) {
        if let Some(r) = &mut self.record {
            for k in keys {
                r.fields.remove(*k);
            }
        }
        self.save();
    }

    /// Stops managing the record: it stays on disk (a persistent mount).
    pub(crate) fn keep(&mut self) {
        self.set(&[("persistent", "1".into())]);
        self.record = None;
    }

    fn save(&self) {
        let Some(r) = &self.record else { return };
        // The directory is made (0700) once per process and location. The
        // record is rewritten in place: a reader takes the lines it finds,
        // and these writes sit on the attach/mount path, where a rename per
        // step would cost more than the record is worth.
        static MADE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
        let write = || -> std::io::Result<()> {
            let d = dir();
            let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
            if !made.contains(&d) {
                std::fs::create_dir_all(&d)?;
                std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
                made.push(d);
            }
            drop(made);
            let text: String = r.fields.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            std::fs::write(&r.file, text)
        };
        if let Err(e) = write() {
            warn!(
                "record {}: {e} (cleanup after a crash will not find this image)",
                r.file.display()
            );
        }
    }
}

/// Whether what `r` names is still on the machine: its loop device still
/// over the image (or FUSE export), its nbd device still connected, its
/// mount still there, its export directory still present.
fn still_held(r: &Record) -> bool {
    let device = r.get("device").unwrap_or_default();
    let name = device.trim_start_matches("/dev/");
    let backing = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"));
    let export = r.get("export_dir").map(|d| format!("{d}/export"));
    let loop_held = backing.is_ok_and(|b| {
        let b = b.trim();
        Some(b) == r.get("image") || Some(b) == export.as_deref()
    });
    let nbd_held =
        name.starts_with("nbd") && std::path::Path::new(&format!("/sys/block/{name}/pid")).exists();
    let mounted = r
        .get("mountpoint")
        .is_some_and(|m| crate::kernel::mountinfo::is_mount_point(std::path::Path::new(m)));
    let export_left = r
        .get("export_dir")
        .is_some_and(|d| std::path::Path::new(d).exists());
    loop_held || nbd_held || mounted || export_left
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            if still_held(&r) {
                // Teardown did not finish (its errors were reported): the
                // record stays for `diskmount cleanup` once we are gone.
                warn!(
                    "record {}: teardown left {} behind; kept for `diskmount cleanup`",
                    r.file.display(),
                    r.get("device").unwrap_or("?")
                );
                return;
            }
            match std::fs::remove_file(&r.file) {
                Ok(()) => debug!("record {} removed", r.file.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!("record {}: remove: {e}", r.file.display()),
            }
        }
    }
}

//! The record file format: version 1, JSON (serde_json does the escaping,
//! so no byte of a path can end a field or start another), every path
//! stored exactly and checked again when read.
//!
//! ```json
//! {"version":1,"id":"4242-98765-0","pid":4242,"start":98765,
//!  "image":{"path":"/srv/guest.img","dev":2049,"ino":1234},
//!  "backend":"loop",
//!  "device":{"path":"/dev/loop3","rdev":1795,"backing":{"dev":2049,"ino":1234},"diskseq":42},
//!  "helper":null,"mapped":null,"mountpoint":"/mnt","persistent":false}
//! ```
//!
//! A path that is valid UTF-8 is a JSON string; any other is an array of
//! its bytes. Nothing read from a record is trusted for what it names: the
//! cleanup code ([`crate::cleanup`]) verifies every object against the
//! kernel before it acts.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The one version this code writes and reads.
pub(crate) const VERSION: u32 = 1;

/// The largest record file read (a record is a few hundred bytes).
pub(crate) const MAX_SIZE: u64 = 64 * 1024;

/// A path, stored losslessly: a string if it is UTF-8, its bytes otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawPath(pub PathBuf);

impl Serialize for RawPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => s.collect_seq(self.0.as_os_str().as_bytes()),
        }
    }
}

impl<'de> Deserialize<'de> for RawPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Bytes(Vec<u8>),
        }
        Ok(RawPath(match Either::deserialize(d)? {
            Either::Text(t) => PathBuf::from(t),
            Either::Bytes(b) => PathBuf::from(OsStr::from_bytes(&b)),
        }))
    }
}

/// A file by path and identity (`st_dev`, `st_ino`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileId {
    pub path: RawPath,
    pub dev: u64,
    pub ino: u64,
}

/// A file's identity only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Inode {
    pub dev: u64,
    pub ino: u64,
}

/// The attached device: its node, its number, and (loop devices) the
/// identity of the file bound to it (the image, or the FUSE export).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceId {
    pub path: RawPath,
    pub rdev: u64,
    pub backing: Option<Inode>,
    /// The disk sequence number (Linux 5.15+): new at every bind, never
    /// reused until reboot, so it tells this binding from any later one.
    /// (Not an nbd device's: Debian 6.1 keeps it across a disconnect and
    /// a new connection; see `server`.)
    pub diskseq: Option<u64>,
    /// An nbd device's serving thread, as its `pid` attribute named it at
    /// attach: the kernel shows it until the disconnect, even once the
    /// server is gone, so a dead thread of that number is still this
    /// connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<u32>,
}

/// A qemu helper process: pid, start time (clock ticks after boot, field
/// 22 of `/proc/PID/stat`) and executable, all three checked before it is
/// signalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Helper {
    pub pid: u32,
    pub start: u64,
    pub exe: RawPath,
    /// The process's shared qemu-storage-daemon
    /// ([`crate::AttachOptions::shared_daemon`]), serving other images of
    /// the same owner too: not left behind while the owner lives (it ends
    /// with it), stopped by cleanup once the owner is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// The mapped partition's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MappedId {
    pub path: RawPath,
    pub rdev: u64,
    pub mapping: String,
}

/// One filesystem of the guest's fstab mounted over the root
/// ([`crate::Partition::Os`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TreeMount {
    /// Its mount point on the host, inside the root's.
    pub path: RawPath,
    /// The device mounted there (`excluded`: the empty read-only tmpfs of
    /// an excluded mount point).
    pub device: RawPath,
    /// That device's number (0 for an excluded mount point).
    pub rdev: u64,
}

/// The largest number of tree entries a record may hold.
pub(crate) const MAX_TREE: usize = 256;

/// The source an excluded mount point's tmpfs is mounted with.
pub(crate) const EXCLUDED: &str = "excluded";

/// One record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Data {
    pub version: u32,
    /// `<pid>-<start>-<n>`; the file is `<id>.json`, the private directory
    /// of the qemu helper `<id>.helper`, both in the run directory.
    pub id: String,
    pub pid: u32,
    pub start: u64,
    pub image: FileId,
    pub backend: String,
    pub device: Option<DeviceId>,
    pub helper: Option<Helper>,
    pub mapped: Option<MappedId>,
    pub mountpoint: Option<RawPath>,
    pub persistent: bool,
    /// [`crate::Partition::Os`]: the devices mapped for the fstab's
    /// mounts only (not the root's), in the order they were made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tree_mapped: Vec<MappedId>,
    /// [`crate::Partition::Os`]: the fstab's mounts over the root, in
    /// mount order (parents first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tree_mounts: Vec<TreeMount>,
}

/// The backends a record may name.
const BACKENDS: [&str; 5] = ["loop", "block", "fuse", "nbd", "rbd"];

/// Whether `id` has the form `<pid>-<start>-<n>`; returns pid and start.
pub(crate) fn parse_id(id: &str) -> Option<(u32, u64)> {
    let mut parts = id.split('-');
    let (pid, start, n) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if parts.next().is_some() || !digits(pid) || !digits(start) || !digits(n) {
        return None;
    }
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// Whether `name` is the name of a URL image (`rbd://...`, as
/// `Image::path` gives it): one of the schemes of `Image::url`, no control
/// characters. It names no host path; cleanup never opens or removes it.
fn is_url_name(name: &Path) -> bool {
    let bytes = name.as_os_str().as_bytes();
    const SCHEMES: [&[u8]; 6] = [
        b"rbd://",
        b"nbd://",
        b"nbd+unix://",
        b"http://",
        b"https://",
        b"iscsi://",
    ];
    SCHEMES.iter().any(|s| bytes.starts_with(s))
        && bytes.len() <= 4096
        && !bytes.iter().any(|b| b.is_ascii_control())
}

/// Why `path` is not an absolute, normal path (no NUL, no `.` or `..`
/// component, no empty component), or `None` if it is one.
pub(crate) fn path_fault(path: &Path) -> Option<&'static str> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return Some("is not absolute");
    }
    if bytes.contains(&0) {
        return Some("contains a NUL byte");
    }
    if bytes.len() > 4096 {
        return Some("is longer than PATH_MAX");
    }
    if bytes.len() > 1 {
        for part in bytes[1..].split(|b| *b == b'/') {
            match part {
                b"" => return Some("has an empty component"),
                b"." | b".." => return Some("has a . or .. component"),
                _ => {}
            }
        }
    }
    None
}

/// An empty slot: a record file its owner keeps, locked, for its next
/// attach (see the module docs of [`super`]). It names nothing.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Free {
    version: u32,
    id: String,
    free: bool,
}

/// The contents of the empty slot `id`.
pub(crate) fn free_slot(id: &str) -> Vec<u8> {
    let free = Free {
        version: VERSION,
        id: id.to_string(),
        free: true,
    };
    let mut v = serde_json::to_vec(&free).expect("a slot always serializes");
    v.push(b'\n');
    v
}

/// Whether `text`, read from `stem.json`, is an empty slot of that name.
pub(crate) fn is_free_slot(text: &[u8], stem: &str) -> bool {
    serde_json::from_slice::<Free>(text)
        .is_ok_and(|f| f.free && f.version == VERSION && f.id == stem)
}

impl Data {
    /// Parses and checks a record read from the file named `stem.json`.
    pub(crate) fn parse(text: &[u8], stem: &str) -> Result<Data, String> {
        let version: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| format!("not a JSON record: {e}"))?;
        match version.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "record version {v}; this diskmount reads {VERSION}"
                ));
            }
            None => return Err("no record version".into()),
        }
        let data: Data =
            serde_json::from_value(version).map_err(|e| format!("malformed record: {e}"))?;
        data.validate(stem)?;
        Ok(data)
    }

    /// The record as written.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a record always serializes");
        v.push(b'\n');
        v
    }

    /// Checks what a record must be to be acted on at all.
    pub(crate) fn validate(&self, stem: &str) -> Result<(), String> {
        if self.id != stem {
            return Err(format!(
                "its id {:?} is not its file name {stem:?}",
                self.id
            ));
        }
        match parse_id(&self.id) {
            Some((pid, start)) if pid == self.pid && start == self.start => {}
            _ => return Err(format!("malformed id {:?}", self.id)),
        }
        if !BACKENDS.contains(&self.backend.as_str()) {
            return Err(format!("unknown backend {:?}", self.backend));
        }
        let check = |what: &str, p: &Path| match path_fault(p) {
            Some(why) => Err(format!("{what} path {:?} {why}", p)),
            None => Ok(()),
        };
        let under_dev = |what: &str, p: &Path| {
            check(what, p)?;
            if p.starts_with("/dev") && p != Path::new("/dev") {
                Ok(())
            } else {
                Err(format!("{what} path {p:?} is not under /dev"))
            }
        };
        if !is_url_name(&self.image.path.0) {
            check("image", &self.image.path.0)?;
        }
        if let Some(d) = &self.device {
            under_dev("device", &d.path.0)?;
        }
        if let Some(m) = &self.mapped {
            under_dev("mapped", &m.path.0)?;
        }
        if let Some(m) = &self.mountpoint {
            check("mount point", &m.0)?;
        }
        if self.tree_mapped.len() > MAX_TREE || self.tree_mounts.len() > MAX_TREE {
            return Err(format!("more than {MAX_TREE} tree entries"));
        }
        for m in &self.tree_mapped {
            under_dev("tree device", &m.path.0)?;
        }
        for t in &self.tree_mounts {
            check("tree mount point", &t.path.0)?;
            // Inside the root's mount point, never the root itself.
            match &self.mountpoint {
                Some(root) if t.path.0.starts_with(&root.0) && t.path.0 != root.0 => {}
                _ => {
                    return Err(format!(
                        "tree mount point {:?} is not inside the mount point",
                        t.path.0
                    ));
                }
            }
            if t.device.0 == Path::new(EXCLUDED) {
                if t.rdev != 0 {
                    return Err("an excluded mount point with a device number".into());
                }
            } else {
                under_dev("tree mount device", &t.device.0)?;
            }
        }
        if let Some(h) = &self.helper {
            check("helper executable", &h.exe.0)?;
            if h.pid == 0 {
                return Err("helper pid 0".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record naming a fuse device and its helper, for the tests.
    pub(crate) fn sample() -> Data {
        Data {
            version: VERSION,
            id: "12-34-0".into(),
            pid: 12,
            start: 34,
            image: FileId {
                path: RawPath(PathBuf::from("/srv/a\nhelper_dir=/etc\nz/guest.img")),
                dev: 1,
                ino: 2,
            },
            backend: "fuse".into(),
            device: Some(DeviceId {
                path: RawPath("/dev/loop3".into()),
                rdev: 1795,
                backing: Some(Inode { dev: 40, ino: 2 }),
                diskseq: Some(7),
                server: None,
            }),
            helper: Some(Helper {
                pid: 99,
                start: 100,
                exe: RawPath("/usr/bin/qemu-storage-daemon".into()),
                shared: false,
            }),
            mapped: None,
            mountpoint: Some(RawPath(PathBuf::from(OsStr::from_bytes(b"/mnt/\xff\"x")))),
            persistent: false,
            tree_mapped: Vec::new(),
            tree_mounts: Vec::new(),
        }
    }

    /// A shared helper is marked; records written before the mark existed
    /// read as not shared.
    #[test]
    fn the_shared_mark_is_optional() {
        let mut d = sample();
        let old = String::from_utf8(d.to_json()).unwrap();
        assert!(!old.contains("shared"), "{old}");
        assert_eq!(Data::parse(old.as_bytes(), "12-34-0").unwrap(), d);
        d.helper.as_mut().unwrap().shared = true;
        let new = d.to_json();
        assert!(String::from_utf8_lossy(&new).contains(r#""shared":true"#));
        assert_eq!(Data::parse(&new, "12-34-0").unwrap(), d);
    }

    #[test]
    fn round_trip_keeps_every_byte() {
        let d = sample();
        let json = d.to_json();
        // One line: a newline in a path is escaped, not written.
        assert_eq!(json.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(Data::parse(&json, "12-34-0").unwrap(), d);
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let bad = |edit: &dyn Fn(&mut Data), stem: &str| {
            let mut d = sample();
            edit(&mut d);
            Data::parse(&d.to_json(), stem).unwrap_err()
        };
        bad(&|_| {}, "12-34-1");
        bad(&|d| d.image.path = RawPath("rel/x".into()), "12-34-0");
        bad(&|d| d.image.path = RawPath("/a/../etc".into()), "12-34-0");
        bad(&|d| d.image.path = RawPath("/a/\0b".into()), "12-34-0");
        bad(
            &|d| d.device.as_mut().unwrap().path = RawPath("/tmp/loop3".into()),
            "12-34-0",
        );
        bad(
            &|d| d.device.as_mut().unwrap().path = RawPath("/dev/../etc".into()),
            "12-34-0",
        );
        bad(&|d| d.backend = "x".into(), "12-34-0");
        bad(&|d| d.pid = 13, "12-34-0");
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["version"] = 2.into();
        assert!(Data::parse(v.to_string().as_bytes(), "12-34-0").is_err());
        v["version"] = 1.into();
        v["helper_dir"] = "/etc".into();
        assert!(Data::parse(v.to_string().as_bytes(), "12-34-0").is_err());
        assert!(Data::parse(b"pid=1\nhelper_dir=/etc\n", "12-34-0").is_err());
        // An empty slot is no record, and is one only under its own name.
        let free = free_slot("12-34-0");
        assert!(Data::parse(&free, "12-34-0").is_err());
        assert!(is_free_slot(&free, "12-34-0"));
        assert!(!is_free_slot(&free, "12-34-1"));
        assert!(!is_free_slot(&sample().to_json(), "12-34-0"));
        // Padded with spaces, as a slot rewritten in place is.
        let mut padded = free.clone();
        padded.resize(400, b' ');
        assert!(is_free_slot(&padded, "12-34-0"));
    }

    #[test]
    fn tree_entries_round_trip_and_stay_inside_the_mount_point() {
        let mut d = sample();
        d.mountpoint = Some(RawPath("/mnt".into()));
        // A record without a tree is written as before.
        assert!(!String::from_utf8_lossy(&d.to_json()).contains("tree"));
        d.tree_mapped.push(MappedId {
            path: RawPath("/dev/loop4".into()),
            rdev: 1796,
            mapping: "offset-loop".into(),
        });
        d.tree_mounts.push(TreeMount {
            path: RawPath("/mnt/boot".into()),
            device: RawPath("/dev/loop4".into()),
            rdev: 1796,
        });
        d.tree_mounts.push(TreeMount {
            path: RawPath("/mnt/srv".into()),
            device: RawPath(EXCLUDED.into()),
            rdev: 0,
        });
        assert_eq!(Data::parse(&d.to_json(), "12-34-0").unwrap(), d);
        let bad = |edit: &dyn Fn(&mut Data)| {
            let mut e = d.clone();
            edit(&mut e);
            Data::parse(&e.to_json(), "12-34-0").unwrap_err()
        };
        bad(&|e| e.tree_mounts[0].path = RawPath("/etc".into()));
        bad(&|e| e.tree_mounts[0].path = RawPath("/mnt".into()));
        bad(&|e| e.tree_mounts[0].path = RawPath("/mnt/../etc".into()));
        bad(&|e| e.tree_mounts[0].device = RawPath("/tmp/x".into()));
        bad(&|e| e.tree_mounts[1].rdev = 5);
        bad(&|e| e.tree_mapped[0].path = RawPath("/etc/passwd".into()));
        bad(&|e| e.mountpoint = None);
    }

    #[test]
    fn ids() {
        assert_eq!(parse_id("1-2-3"), Some((1, 2)));
        for bad in ["", "1-2", "1-2-3-4", "a-2-3", "1--3", "../1-2-3"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}

//! The guest's `etc/fstab`, parsed and classified: which entries
//! `Partition::Os` (to come) mounts (and from what), and which it skips
//! (and why). Parsing is pure and bounded; reading the file goes through
//! [`crate::root::Root`].

use std::path::{Component, Path, PathBuf};

/// The most lines an fstab may have.
pub const MAX_LINES: usize = 4096;

/// What an fstab entry's first field names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// `UUID=` or `/dev/disk/by-uuid/`: a filesystem UUID.
    Uuid(String),
    /// `LABEL=` or `/dev/disk/by-label/`: a filesystem label.
    Label(String),
    /// `PARTUUID=` or `/dev/disk/by-partuuid/`: a partition's unique id.
    PartUuid(String),
    /// `PARTLABEL=` or `/dev/disk/by-partlabel/`: a GPT partition name.
    PartLabel(String),
    /// `/dev/sdaN`, `/dev/vdaN`, `/dev/xvdaN`, `/dev/hdaN`,
    /// `/dev/nvme0n1pN`, `/dev/mmcblk0pN`: partition N of the first disk,
    /// which the image is (another disk's, `/dev/vdb1`, is [`Source::Other`]).
    Partition(u32),
    /// `/dev/sda` and the like: the whole (first) disk.
    WholeDisk,
    /// `/dev/mapper/VG-LV` (LVM's `--` escaping undone) or `/dev/VG/LV`.
    LogicalVolume {
        /// The volume group.
        vg: String,
        /// The logical volume.
        lv: String,
    },
    /// Anything else (a network share, `none`, a path diskmount does not
    /// know).
    Other(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Uuid(u) => write!(f, "UUID={u}"),
            Source::Label(l) => write!(f, "LABEL={l}"),
            Source::PartUuid(u) => write!(f, "PARTUUID={u}"),
            Source::PartLabel(l) => write!(f, "PARTLABEL={l}"),
            Source::Partition(n) => write!(f, "partition {n}"),
            Source::WholeDisk => f.write_str("the whole disk"),
            Source::LogicalVolume { vg, lv } => write!(f, "lv {vg}/{lv}"),
            Source::Other(s) => f.write_str(s),
        }
    }
}

/// One line of fstab.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The line number (1-based), for messages.
    pub line: usize,
    /// The first field as written (escapes undone).
    pub spec: String,
    /// What the first field names.
    pub source: Source,
    /// The mount point as written (escapes undone).
    pub mount_point: String,
    /// The filesystem type (`auto` where the guest lets mount probe it).
    pub fstype: String,
    /// The options, split at commas.
    pub options: Vec<String>,
}

/// Why an entry is not mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Skip {
    /// `noauto`: the guest does not mount it at boot either.
    NoAuto,
    /// Swap space.
    Swap,
    /// A pseudo filesystem (proc, sysfs, tmpfs, ...): nothing on disk.
    Pseudo,
    /// A network filesystem: not in the image.
    Network,
    /// A bind mount: another view of a tree already mounted.
    Bind,
    /// The root itself (mounted first, from the inspection).
    Root,
}

impl Skip {
    /// Why, in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NoAuto => "noauto",
            Skip::Swap => "swap",
            Skip::Pseudo => "a pseudo filesystem",
            Skip::Network => "a network filesystem",
            Skip::Bind => "a bind mount",
            Skip::Root => "the root",
        }
    }
}

const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "mqueue",
    "hugetlbfs",
    "pstore",
    "efivarfs",
    "bpf",
    "configfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
    "rpc_pipefs",
    "nfsd",
    "ramfs",
    "selinuxfs",
    "usbfs",
];

const NETWORK: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "9p",
    "afs",
    "davfs",
    "fuse.sshfs",
    "sshfs",
    "lustre",
    "gfs2",
    "ocfs2",
    "iscsi",
];

impl Entry {
    /// Whether the option `name` (exactly, or as `name=...`) is given.
    pub fn has_option(&self, name: &str) -> bool {
        self.options
            .iter()
            .any(|o| o == name || o.strip_prefix(name).is_some_and(|r| r.starts_with('=')))
    }

    /// The value of option `name=VALUE`.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
    }

    /// Whether the entry may be missing (`nofail`).
    pub fn nofail(&self) -> bool {
        self.has_option("nofail")
    }

    /// Whether it is to be mounted read-only (`ro`).
    pub fn read_only(&self) -> bool {
        self.has_option("ro")
    }

    /// Why `Partition::Os` (to come) does not mount it; `None`: it does.
    pub fn skip(&self) -> Option<Skip> {
        let t = self.fstype.as_str();
        if t == "swap" {
            return Some(Skip::Swap);
        }
        if self.has_option("noauto") {
            return Some(Skip::NoAuto);
        }
        if self.has_option("bind") || self.has_option("rbind") {
            return Some(Skip::Bind);
        }
        if PSEUDO.contains(&t) {
            return Some(Skip::Pseudo);
        }
        if NETWORK.contains(&t) || self.has_option("_netdev") || self.spec.starts_with("//") {
            return Some(Skip::Network);
        }
        if normalize(&self.mount_point).as_deref() == Some(Path::new("/")) {
            return Some(Skip::Root);
        }
        None
    }

    /// The mount point as a path inside the guest, normalized (`.`
    /// dropped, `..` resolved lexically, never above `/`); `None` if it is
    /// not absolute.
    pub fn target(&self) -> Option<PathBuf> {
        normalize(&self.mount_point)
    }
}

/// `path` made absolute and lexically clean; `..` stops at `/`. `None` if
/// it is not absolute.
pub fn normalize(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Some(out)
}

/// Undoes fstab's octal escapes (`\040` for a space), as mountinfo's.
fn unescape(field: &str) -> String {
    String::from_utf8_lossy(&crate::kernel::mountinfo::unescape(field.as_bytes())).into_owned()
}

/// Undoes udev's `\xNN` escapes in `/dev/disk/by-*` names.
fn udev_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(v) = b
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Strips one pair of surrounding quotes (`UUID="..."`).
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// Splits `/dev/mapper/` names: `VG-LV` with `--` standing for a `-`
/// inside either name.
pub fn split_mapper_name(name: &str) -> Option<(String, String)> {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'-' {
            if b.get(i + 1) == Some(&b'-') {
                i += 2;
                continue;
            }
            let (vg, lv) = (&name[..i], &name[i + 1..]);
            if vg.is_empty() || lv.is_empty() {
                return None;
            }
            return Some((vg.replace("--", "-"), lv.replace("--", "-")));
        }
        i += 1;
    }
    None
}

/// The partition number of a classic disk device name, `Some(None)` for
/// the whole disk, `None` if it is not one.
fn disk_partition(name: &str) -> Option<Option<u32>> {
    let digits_at = |s: &str| -> Option<Option<u32>> {
        if s.is_empty() {
            return Some(None);
        }
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
            .map(Some)
    };
    for prefix in ["xvd", "sd", "vd", "hd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            // The first disk only: the image is one disk, and `sdb1` is
            // partition 1 of another one, not of this.
            if &rest[..letters] != "a" {
                return None;
            }
            return digits_at(&rest[letters..]);
        }
    }
    for prefix in ["nvme0n1", "mmcblk0"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return match rest.strip_prefix('p') {
                Some(n) => digits_at(n).filter(Option::is_some),
                None if rest.is_empty() => Some(None),
                None => None,
            };
        }
    }
    None
}

/// What the first field of an fstab line names.
pub fn parse_source(spec: &str) -> Source {
    for (key, make) in [
        ("UUID=", Source::Uuid as fn(String) -> Source),
        ("LABEL=", Source::Label),
        ("PARTUUID=", Source::PartUuid),
        ("PARTLABEL=", Source::PartLabel),
    ] {
        if let Some(v) = spec.strip_prefix(key) {
            let v = unquote(v);
            return make(if key.contains("UUID") {
                v.to_ascii_lowercase()
            } else {
                v.to_string()
            });
        }
    }
    if let Some(rest) = spec.strip_prefix("/dev/disk/") {
        let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
        let name = udev_unescape(name);
        return match kind {
            "by-uuid" => Source::Uuid(name.to_ascii_lowercase()),
            "by-label" => Source::Label(name),
            "by-partuuid" => Source::PartUuid(name.to_ascii_lowercase()),
            "by-partlabel" => Source::PartLabel(name),
            _ => Source::Other(spec.to_string()),
        };
    }
    if let Some(name) = spec.strip_prefix("/dev/mapper/") {
        return match split_mapper_name(name) {
            Some((vg, lv)) => Source::LogicalVolume { vg, lv },
            None => Source::Other(spec.to_string()),
        };
    }
    if let Some(rest) = spec.strip_prefix("/dev/") {
        if let Some(p) = disk_partition(rest) {
            return match p {
                Some(n) => Source::Partition(n),
                None => Source::WholeDisk,
            };
        }
        if let Some((vg, lv)) = rest.split_once('/')
            && !vg.is_empty()
            && !lv.is_empty()
            && !lv.contains('/')
            && !["disk", "mapper", "md", "loop", "block", "char"].contains(&vg)
        {
            return Source::LogicalVolume {
                vg: vg.to_string(),
                lv: lv.to_string(),
            };
        }
    }
    Source::Other(spec.to_string())
}

/// Why a line is not an fstab entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The line number.
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// Cuts `text` to its whole lines within its first `limit` bytes, if it is
/// longer: never the start of a line cut at the bound. Whether it cut.
pub(crate) fn whole_lines_within(text: &mut String, limit: usize) -> bool {
    if text.len() <= limit {
        return false;
    }
    let whole = text.as_bytes()[..limit]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    text.truncate(whole);
    true
}

/// Parses an fstab: entries, and the lines that are not (fewer than three
/// fields). Comments and blank lines are skipped; at most
/// [`MAX_LINES`] lines are read, and a longer fstab gets a bad line saying
/// so.
pub fn parse(text: &str) -> (Vec<Entry>, Vec<BadLine>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    if text.lines().nth(MAX_LINES).is_some() {
        bad.push(BadLine {
            line: MAX_LINES + 1,
            reason: format!("the fstab has more than {MAX_LINES} lines; the rest is not read"),
        });
    }
    for (i, raw) in text.lines().take(MAX_LINES).enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            bad.push(BadLine {
                line: i + 1,
                reason: format!("{} field(s), an entry has at least 3", fields.len()),
            });
            continue;
        }
        let spec = unescape(fields[0]);
        entries.push(Entry {
            line: i + 1,
            source: parse_source(&spec),
            spec,
            mount_point: unescape(fields[1]),
            fstype: unescape(fields[2]),
            options: fields
                .get(3)
                .map(|o| o.split(',').map(unescape).collect())
                .unwrap_or_else(|| vec!["defaults".to_string()]),
        });
    }
    (entries, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_of_every_kind() {
        assert_eq!(parse_source("UUID=\"ABC-1\""), Source::Uuid("abc-1".into()));
        assert_eq!(
            parse_source("LABEL=my root"),
            Source::Label("my root".into())
        );
        assert_eq!(
            parse_source("PARTUUID=0d15c0de-06"),
            Source::PartUuid("0d15c0de-06".into())
        );
        assert_eq!(
            parse_source("PARTLABEL=EFI"),
            Source::PartLabel("EFI".into())
        );
        assert_eq!(
            parse_source("/dev/disk/by-label/my\\x20disk"),
            Source::Label("my disk".into())
        );
        assert_eq!(
            parse_source("/dev/disk/by-uuid/AB"),
            Source::Uuid("ab".into())
        );
        assert_eq!(parse_source("/dev/sda6"), Source::Partition(6));
        assert_eq!(parse_source("/dev/vda1"), Source::Partition(1));
        // Another disk's partition is not this image's partition 1.
        assert_eq!(parse_source("/dev/vdb1"), Source::Other("/dev/vdb1".into()));
        assert_eq!(parse_source("/dev/sdc"), Source::Other("/dev/sdc".into()));
        assert_eq!(parse_source("/dev/xvda2"), Source::Partition(2));
        assert_eq!(parse_source("/dev/nvme0n1p3"), Source::Partition(3));
        assert_eq!(parse_source("/dev/mmcblk0p1"), Source::Partition(1));
        assert_eq!(parse_source("/dev/sda"), Source::WholeDisk);
        assert_eq!(parse_source("/dev/nvme0n1"), Source::WholeDisk);
        assert_eq!(
            parse_source("/dev/mapper/rl-root"),
            Source::LogicalVolume {
                vg: "rl".into(),
                lv: "root".into()
            }
        );
        assert_eq!(
            parse_source("/dev/mapper/ubuntu--vg-ubuntu--lv"),
            Source::LogicalVolume {
                vg: "ubuntu-vg".into(),
                lv: "ubuntu-lv".into()
            }
        );
        assert_eq!(
            parse_source("/dev/ubuntu-vg/ubuntu-lv"),
            Source::LogicalVolume {
                vg: "ubuntu-vg".into(),
                lv: "ubuntu-lv".into()
            }
        );
        assert!(matches!(parse_source("server:/export"), Source::Other(_)));
        assert!(matches!(parse_source("/dev/md0"), Source::Other(_)));
        assert!(matches!(parse_source("/dev/sdx1y"), Source::Other(_)));
        assert!(matches!(
            parse_source("/dev/mapper/nodash"),
            Source::Other(_)
        ));
    }

    #[test]
    fn a_debian_fstab() {
        let text = "# /etc/fstab\n\
            UUID=1111 / ext4 errors=remount-ro 0 1\n\
            LABEL=var /var ext4 defaults 0 2\n\
            PARTUUID=0d15c0de-05 /boot ext4 ro 0 2\n\
            /dev/sda6 none swap sw 0 0\n\
            UUID=dead /mnt/usb ext4 nofail,noauto 0 0\n\
            UUID=gone /data xfs nofail 0 0\n\
            proc /proc proc defaults 0 0\n\
            tmpfs /tmp tmpfs defaults 0 0\n\
            server:/home /home nfs defaults 0 0\n\
            /srv/a /srv/b none bind 0 0\n\
            /dev/sr0\n";
        let (entries, bad) = parse(text);
        assert_eq!(
            bad,
            vec![BadLine {
                line: 12,
                reason: "1 field(s), an entry has at least 3".into()
            }]
        );
        let skips: Vec<_> = entries
            .iter()
            .map(|e| (e.mount_point.as_str(), e.skip()))
            .collect();
        assert_eq!(
            skips,
            vec![
                ("/", Some(Skip::Root)),
                ("/var", None),
                ("/boot", None),
                ("none", Some(Skip::Swap)),
                ("/mnt/usb", Some(Skip::NoAuto)),
                ("/data", None),
                ("/proc", Some(Skip::Pseudo)),
                ("/tmp", Some(Skip::Pseudo)),
                ("/home", Some(Skip::Network)),
                ("/srv/b", Some(Skip::Bind)),
            ]
        );
        assert!(entries[2].read_only());
        assert!(entries[5].nofail() && !entries[1].nofail());
        assert_eq!(entries[0].option("errors"), Some("remount-ro"));
    }

    #[test]
    fn btrfs_subvolume_options_and_escapes() {
        let (e, _) =
            parse("UUID=x /home btrfs subvol=home,compress=zstd:1 0 0\nLABEL=a /my\\040dir ext4\n");
        assert_eq!(e[0].option("subvol"), Some("home"));
        assert!(e[0].has_option("compress"));
        assert_eq!(e[1].mount_point, "/my dir");
        assert_eq!(e[1].options, vec!["defaults"]);
    }

    #[test]
    fn hostile_mount_points_stay_inside() {
        assert_eq!(normalize("/../../etc"), Some(PathBuf::from("/etc")));
        assert_eq!(
            normalize("/var/./lib/../log"),
            Some(PathBuf::from("/var/log"))
        );
        assert_eq!(normalize("relative/path"), None);
        assert_eq!(normalize("/"), Some(PathBuf::from("/")));
        let (e, _) = parse("UUID=x /.. ext4 defaults\n");
        assert_eq!(e[0].skip(), Some(Skip::Root), "`/..` is the root");
    }

    /// An fstab over the byte bound loses its cut line whole: `/boot/efi`
    /// cut at the bound never becomes `/boot`.
    #[test]
    fn a_line_cut_at_the_bound_is_dropped_whole() {
        let head = "UUID=a / ext4 defaults\n";
        let mut text = format!("{head}UUID=b /boot/efi vfat defaults\n");
        let limit = head.len() + "UUID=b /boot".len();
        assert!(whole_lines_within(&mut text, limit));
        assert_eq!(text, head);
        let mut short = head.to_string();
        assert!(!whole_lines_within(&mut short, 1 << 20));
        assert_eq!(short, head);
    }

    #[test]
    fn bounded_on_huge_input() {
        let text = "UUID=x /a ext4 defaults\n".repeat(MAX_LINES * 2);
        let (entries, bad) = parse(&text);
        assert_eq!(entries.len(), MAX_LINES);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].reason.contains("more than"), "{}", bad[0].reason);
    }
}

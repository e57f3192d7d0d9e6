//! `/proc/self/mountinfo`, parsed (see `proc_pid_mountinfo(5)`):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt/parent\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2)(3)   (4)   (5)              (6)      (7)       (8) (9)     (10)      (11)
//! ```
//!
//! Paths are kept as the exact bytes the kernel escaped: every `\NNN`
//! octal escape is undone (the kernel escapes space, tab, newline and
//! backslash, and a caller may meet any other), and nothing is decoded as
//! UTF-8, so a mount point whose name is not UTF-8 is still found.

use std::ffi::OsString;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// One line of mountinfo: one mount of this mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mount {
    /// The mount's id (field 1), as `statx` reports it in `stx_mnt_id`.
    pub id: u64,
    /// The parent mount's id (field 2).
    pub parent: u64,
    /// The `st_dev` of files on this filesystem (field 3, `MAJ:MIN`).
    pub dev: u64,
    /// The directory of the filesystem that is the root of the mount
    /// (field 4; `/` unless a bind mount or a btrfs subvolume).
    pub root: PathBuf,
    /// The mount point (field 5).
    pub target: PathBuf,
    /// Per-mount options (field 6: `rw`/`ro`, `nodev`, ...).
    pub options: String,
    /// The filesystem type (the field after `-`).
    pub fstype: String,
    /// The mount source (a device path, or whatever the filesystem says).
    pub source: PathBuf,
    /// Per-superblock options (the last field).
    pub super_options: String,
}

impl Mount {
    /// The block device the mount is on: its `st_dev`, or, for a
    /// filesystem that reports an anonymous device number (btrfs), the
    /// block device its source names.
    pub fn block_device(&self) -> u64 {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if nix::sys::stat::major(self.dev) == 0
            && let Ok(meta) = std::fs::metadata(&self.source)
            && meta.file_type().is_block_device()
        {
            return meta.rdev();
        }
        self.dev
    }

    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }

    /// Parses one line; `None` if it is not a mountinfo line.
    pub fn parse(line: &[u8]) -> Option<Mount> {
        let mut fields = line.split(|b| *b == b' ');
        let id = number(fields.next()?)?;
        let parent = number(fields.next()?)?;
        let dev = dev_number(std::str::from_utf8(fields.next()?).ok()?)?;
        let root = path(fields.next()?);
        let target = path(fields.next()?);
        let options = text(fields.next()?);
        // Optional fields (shared:N, master:N, ...) up to the separator.
        fields.by_ref().find(|f| *f == b"-")?;
        let fstype = text(fields.next()?);
        let source = path(fields.next()?);
        let super_options = fields.next().map(text).unwrap_or_default();
        Some(Mount {
            id,
            parent,
            dev,
            root,
            target,
            options,
            fstype,
            source,
            super_options,
        })
    }
}

/// Parses `MAJ:MIN` (as mountinfo and sysfs write device numbers).
pub(crate) fn dev_number(s: &str) -> Option<u64> {
    let (maj, min) = s.trim().split_once(':')?;
    Some(nix::sys::stat::makedev(
        maj.parse().ok()?,
        min.parse().ok()?,
    ))
}

fn number(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(b)))
}

fn text(b: &[u8]) -> String {
    // Valid UTF-8 (nearly every field) keeps its buffer.
    String::from_utf8(unescape(b))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\012` for a
/// newline, `\134` for a backslash, and any other `\NNN`). A backslash not
/// followed by three octal digits stays as it is.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    // The bytes up to each backslash are copied at once: most fields have
    // none.
    while let Some(i) = rest.iter().position(|&c| c == b'\\') {
        out.extend_from_slice(&rest[..i]);
        let octal = rest
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                // Three octal digits can spell up to 0o777; the kernel only
                // writes bytes, so the top bit of a larger value is dropped.
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                out.push(v as u8);
                rest = &rest[i + 4..];
            }
            None => {
                out.push(b'\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.extend_from_slice(rest);
    out
}

/// Parses a whole mountinfo text; lines that do not parse are skipped.
pub fn parse(text: &[u8]) -> Vec<Mount> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(Mount::parse)
        .collect()
}

/// Every mount of this process's mount namespace.
pub fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse(&super::read_proc("/proc/self/mountinfo")?))
}

/// The topmost mount on `target` (an exact, already resolved path), if any.
pub fn on(target: &Path) -> Option<Mount> {
    mounts()
        .ok()?
        .into_iter()
        .rev()
        .find(|m| m.target.as_os_str().as_bytes() == target.as_os_str().as_bytes())
}

/// Whether `target` (an exact, already resolved path) is a mount point.
pub fn is_mount_point(target: &Path) -> bool {
    on(target).is_some()
}

/// The mount with id `id`, wherever it is now.
pub fn by_id(id: u64) -> Option<Mount> {
    mounts().ok()?.into_iter().find(|m| m.id == id)
}

/// The id of the mount that `fd` is on, from `statx(STATX_MNT_ID)` (Linux
/// 5.8), or from `/proc/self/fdinfo` on older kernels.
pub fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    if let Some(id) = crate::sys::statx::mount_id(fd) {
        return Some(id);
    }
    use std::os::fd::AsRawFd;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_man_page_line() {
        let m = Mount::parse(
            b"36 35 98:0 /mnt1 /mnt/parent\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!((m.id, m.parent), (36, 35));
        assert_eq!(m.dev, nix::sys::stat::makedev(98, 0));
        assert_eq!(m.root, Path::new("/mnt1"));
        assert_eq!(m.target, Path::new("/mnt/parent dir"));
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, Path::new("/dev/root"));
        assert_eq!(m.super_options, "rw,errors=continue");
        assert!(!m.read_only());
    }

    #[test]
    fn no_optional_fields_and_read_only() {
        let m = Mount::parse(b"1 0 7:3 / /mnt ro,nodev - xfs /dev/loop3 ro").unwrap();
        assert!(m.read_only());
        assert_eq!(m.fstype, "xfs");
    }

    #[test]
    fn every_octal_escape_and_raw_bytes() {
        assert_eq!(unescape(br"a\040b\011c\012d\134e"), b"a b\tc\nd\\e");
        // Any octal escape, not only the four the kernel writes.
        assert_eq!(unescape(br"\101\377"), b"A\xff");
        // Not an escape: kept.
        assert_eq!(unescape(br"x\09y\"), b"x\\09y\\");
        let m = Mount::parse(b"5 1 0:40 / /tmp/\\303\\251t\\377 rw - tmpfs tmpfs rw").unwrap();
        assert_eq!(m.target.as_os_str().as_bytes(), b"/tmp/\xc3\xa9t\xff");
    }

    #[test]
    fn garbage_is_skipped() {
        assert!(Mount::parse(b"").is_none());
        assert!(Mount::parse(b"x y z").is_none());
        assert!(Mount::parse(b"1 2 3:4 / /mnt rw no separator").is_none());
        let all = parse(b"junk\n1 0 7:3 / /mnt rw - ext4 /dev/loop3 rw\n\n");
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn this_process_has_a_root_mount() {
        let all = mounts().unwrap();
        assert!(all.iter().any(|m| m.target == Path::new("/")));
        let root = std::fs::File::open("/").unwrap();
        use std::os::fd::AsFd;
        let id = mount_id(root.as_fd()).unwrap();
        assert!(
            all.iter().any(|m| m.id == id),
            "mount id {id} not in mountinfo"
        );
    }
}

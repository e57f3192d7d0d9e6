//! Who holds a lock on a file: the kernel's own lists, read only when a
//! conflict was found (they are the error message, not the decision).
//!
//! `F_OFD_GETLK` answers `l_pid = -1` for an OFD lock (it belongs to an
//! open file description, not a process), and so does `/proc/locks`. But
//! every descriptor's `/proc/PID/fdinfo/FD` lists the locks on its file
//! description (`lock:` lines in the `/proc/locks` format), so the processes
//! that have the description open are found by reading those. `flock`
//! locks carry their pid in `/proc/locks`.

use std::os::unix::fs::MetadataExt;

/// The `MAJ:MIN:INODE` that `/proc/locks` names a file by (the major and
/// minor in hex, at least two digits).
fn lock_id(meta: &std::fs::Metadata) -> String {
    let dev = meta.dev();
    format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    )
}

/// Whether a `/proc/locks`-format line (without its `lock:` prefix) is a
/// lock of `kind` (`OFDLCK`, `FLOCK`, `POSIX`) on `id` covering `byte`
/// (any byte if `None`); its pid field.
fn matches(line: &str, kind: &str, id: &str, byte: Option<i64>) -> Option<i64> {
    // "1: OFDLCK ADVISORY  READ -1 fe:00:10018964 100 101"
    let f: Vec<&str> = line.split_whitespace().collect();
    let at = f.iter().position(|x| *x == kind)?;
    let (pid, file, start, end) = (
        f.get(at + 3)?,
        f.get(at + 4)?,
        f.get(at + 5)?,
        f.get(at + 6)?,
    );
    if *file != id {
        return None;
    }
    if let Some(b) = byte {
        let start: i64 = start.parse().ok()?;
        let end: i64 = if *end == "EOF" {
            i64::MAX
        } else {
            end.parse().ok()?
        };
        if b < start || b > end {
            return None;
        }
    }
    pid.parse().ok()
}

/// The processes with a descriptor whose open file description holds an
/// OFD lock on the file `meta` describes, covering `byte`; `skip`: our own
/// descriptor (pid, fd) that took the same locks.
pub(crate) fn ofd_holders(
    meta: &std::fs::Metadata,
    byte: i64,
    skip: Option<(u32, i32)>,
) -> Vec<u32> {
    let id = lock_id(meta);
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let nr = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
            if skip.is_some_and(|(sp, sfd)| sp == pid && Some(sfd) == nr) {
                continue;
            }
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            if info
                .lines()
                .filter_map(|l| l.strip_prefix("lock:"))
                .any(|l| matches(l, "OFDLCK", &id, Some(byte)).is_some())
                && !pids.contains(&pid)
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The processes holding a `flock` on the file `meta` describes.
pub(crate) fn flock_holders(meta: &std::fs::Metadata) -> Vec<u32> {
    let id = lock_id(meta);
    let mut pids: Vec<u32> = std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| matches(l, "FLOCK", &id, None))
        .filter_map(|p| u32::try_from(p).ok())
        .collect();
    pids.dedup();
    pids
}

/// `PID (command)` for a message.
pub(crate) fn describe(pid: u32) -> String {
    // The executable's name (`comm` is cut at 15 bytes).
    let name = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|e| e.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .map(|n| n.trim().to_string());
    match name {
        Some(n) => format!("process {pid} ({n})"),
        None => format!("process {pid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_format() {
        let l = "1: OFDLCK ADVISORY  READ -1 fe:00:10018964 100 101";
        assert_eq!(matches(l, "OFDLCK", "fe:00:10018964", Some(101)), Some(-1));
        assert_eq!(matches(l, "OFDLCK", "fe:00:10018964", Some(102)), None);
        assert_eq!(matches(l, "OFDLCK", "fe:00:1", Some(101)), None);
        let f = "3: FLOCK  ADVISORY  WRITE 17259 fe:00:5365879 0 EOF";
        assert_eq!(matches(f, "FLOCK", "fe:00:5365879", None), Some(17259));
        assert_eq!(matches(f, "OFDLCK", "fe:00:5365879", None), None);
    }

    #[test]
    fn finds_the_process_behind_an_ofd_lock() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let held = std::fs::File::open(&path).unwrap();
        super::super::qemu::apply(&held, super::super::qemu::Perms::diskmount(false)).unwrap();
        let meta = held.metadata().unwrap();
        let me = std::process::id();
        assert_eq!(ofd_holders(&meta, 101, None), vec![me]);
        assert!(ofd_holders(&meta, 101, Some((me, held.as_raw_fd()))).is_empty());
        assert!(ofd_holders(&meta, 102, None).is_empty());
    }
}

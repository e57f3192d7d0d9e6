//! qemu's image permission locks, as its `block/file-posix.c` takes and
//! tests them, so that diskmount and qemu see each other.
//!
//! qemu describes what a user of an image does with permission bits
//! (`include/block/block-common.h`): consistent read, write, write
//! unchanged, resize. For each bit it *uses* it holds a shared OFD lock
//! (`F_OFD_SETLK`, `F_RDLCK`) on byte `100 + bit`; for each bit it does
//! not let others have, one on byte `200 + bit`. Before it starts it tests
//! (`F_OFD_GETLK` with `F_WRLCK`, which ignores the caller's own open file
//! description): for each bit it wants, whether someone holds `200 + bit`
//! (forbids it); for each bit it does not share, whether someone holds
//! `100 + bit` (uses it). Locks first, test second: of two starting at once,
//! at least one sees the other. Byte 0 belongs to libvirt; bytes 104 and 204
//! were a permission qemu 6.1 and older locked, never touched here.
//!
//! The locks belong to the open file description, so they last as long as
//! it: for the loop backend, the description the loop device keeps, i.e.
//! as long as the device exists, also after this process is gone.

use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;

/// `BLK_PERM_CONSISTENT_READ`.
pub(crate) const CONSISTENT_READ: u32 = 0x01;
/// `BLK_PERM_WRITE`.
pub(crate) const WRITE: u32 = 0x02;
/// `BLK_PERM_WRITE_UNCHANGED`.
pub(crate) const WRITE_UNCHANGED: u32 = 0x04;
/// `BLK_PERM_RESIZE`.
pub(crate) const RESIZE: u32 = 0x08;
/// The bits qemu knows (`BLK_PERM_ALL`).
const ALL: u32 = 0x0f;

/// `RAW_LOCK_PERM_BASE`: byte `100 + bit` is held by who uses the bit.
pub(crate) const PERM_BASE: i64 = 100;
/// `RAW_LOCK_SHARED_BASE`: byte `200 + bit` is held by who forbids it to others.
pub(crate) const SHARED_BASE: i64 = 200;

/// qemu's name for a permission bit (as in its "Failed to get "write"
/// lock").
pub(crate) fn name(bit: u32) -> &'static str {
    match bit {
        CONSISTENT_READ => "consistent read",
        WRITE => "write",
        WRITE_UNCHANGED => "write unchanged",
        RESIZE => "resize",
        _ => "unknown",
    }
}

/// What a user of the image does (`used`) and lets others do (`shared`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Perms {
    pub used: u32,
    pub shared: u32,
}

impl Perms {
    /// diskmount's permissions, as a qemu guest device takes them: it
    /// reads (and writes, unless `read_only`), and lets others read but
    /// neither write nor resize (a filesystem mounted from the image would
    /// see its disk change under it).
    pub(crate) fn diskmount(read_only: bool) -> Perms {
        Perms {
            used: if read_only {
                CONSISTENT_READ
            } else {
                CONSISTENT_READ | WRITE
            },
            shared: CONSISTENT_READ | WRITE_UNCHANGED,
        }
    }
}

/// Which lock of someone else's a test found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conflict {
    /// Someone uses `bit` (holds `100 + bit`), which we do not share.
    Uses { bit: u32, pid: i32 },
    /// Someone forbids `bit` (holds `200 + bit`), which we want.
    Forbids { bit: u32, pid: i32 },
}

impl Conflict {
    /// The byte of the lock found.
    pub(crate) fn byte(self) -> i64 {
        match self {
            Conflict::Uses { bit, .. } => PERM_BASE + i64::from(bit.trailing_zeros()),
            Conflict::Forbids { bit, .. } => SHARED_BASE + i64::from(bit.trailing_zeros()),
        }
    }

    /// The pid the kernel reports for it: -1 for an OFD lock (they belong
    /// to no process), the holder's for a classic POSIX lock (a qemu
    /// without OFD locks).
    pub(crate) fn pid(self) -> i32 {
        match self {
            Conflict::Uses { pid, .. } | Conflict::Forbids { pid, .. } => pid,
        }
    }
}

fn one_byte(kind: i32, byte: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        // Must be 0 for the OFD requests.
        l_pid: 0,
    }
}

fn bits(mask: u32) -> impl Iterator<Item = u32> {
    (0..4).map(|i| 1u32 << i).filter(move |b| mask & b != 0)
}

/// The bytes `perms` holds.
fn bytes(perms: Perms) -> impl Iterator<Item = i64> {
    let used = bits(perms.used).map(|b| PERM_BASE + i64::from(b.trailing_zeros()));
    let unshared = bits(ALL & !perms.shared).map(|b| SHARED_BASE + i64::from(b.trailing_zeros()));
    used.chain(unshared)
}

/// Holds `perms` on `fd`'s open file description (shared OFD locks, which
/// never wait: only a write lock could conflict, and nobody takes one).
pub(crate) fn apply(fd: impl AsFd, perms: Perms) -> nix::Result<()> {
    for byte in bytes(perms) {
        fcntl(
            fd.as_fd(),
            FcntlArg::F_OFD_SETLK(&one_byte(libc::F_RDLCK, byte)),
        )?;
    }
    Ok(())
}

/// Drops every lock of `perms` on `fd`'s description again.
pub(crate) fn release(fd: impl AsFd, perms: Perms) {
    for byte in bytes(perms) {
        let _ = fcntl(
            fd.as_fd(),
            FcntlArg::F_OFD_SETLK(&one_byte(libc::F_UNLCK, byte)),
        );
    }
}

/// Whether a write lock on `byte` would conflict with someone else's lock;
/// the pid the kernel reports for it.
fn held_by_others(fd: impl AsFd, byte: i64) -> nix::Result<Option<i32>> {
    let mut fl = one_byte(libc::F_WRLCK, byte);
    fcntl(fd.as_fd(), FcntlArg::F_OFD_GETLK(&mut fl))?;
    Ok((i32::from(fl.l_type) != libc::F_UNLCK).then_some(fl.l_pid))
}

/// The first lock of someone else's (any open file description but
/// `fd`'s) that `perms` conflicts with, tested the way qemu tests.
pub(crate) fn conflict(fd: impl AsFd, perms: Perms) -> nix::Result<Option<Conflict>> {
    let fd = fd.as_fd();
    for bit in bits(perms.used) {
        if let Some(pid) = held_by_others(fd, SHARED_BASE + i64::from(bit.trailing_zeros()))? {
            return Ok(Some(Conflict::Forbids { bit, pid }));
        }
    }
    for bit in bits(ALL & !perms.shared) {
        if let Some(pid) = held_by_others(fd, PERM_BASE + i64::from(bit.trailing_zeros()))? {
            return Ok(Some(Conflict::Uses { bit, pid }));
        }
    }
    Ok(None)
}

/// Whether `e` says the filesystem has no OFD locks (some network and
/// FUSE filesystems): then nobody can hold qemu's locks there either.
pub(crate) fn unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::ENOLCK | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bytes_qemu_would_hold() {
        let rw: Vec<i64> = bytes(Perms::diskmount(false)).collect();
        assert_eq!(rw, [100, 101, 201, 203]);
        let ro: Vec<i64> = bytes(Perms::diskmount(true)).collect();
        assert_eq!(ro, [100, 201, 203]);
    }

    #[test]
    fn own_locks_do_not_conflict_other_descriptions_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let ours = std::fs::File::open(&path).unwrap();
        apply(&ours, Perms::diskmount(false)).unwrap();
        assert_eq!(conflict(&ours, Perms::diskmount(false)).unwrap(), None);
        // Another description, even in this process, is someone else.
        let other = std::fs::File::open(&path).unwrap();
        let c = conflict(&other, Perms::diskmount(true)).unwrap().unwrap();
        assert_eq!(
            c,
            Conflict::Uses {
                bit: WRITE,
                pid: -1
            }
        );
        assert_eq!(c.byte(), 101);
        release(&ours, Perms::diskmount(false));
        assert_eq!(conflict(&other, Perms::diskmount(false)).unwrap(), None);
    }
}

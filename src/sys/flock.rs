//! `flock(2)`: advisory whole-file locks, as udev and systemd use them on
//! block devices ([systemd.io/BLOCK_DEVICE_LOCKING](https://systemd.io/BLOCK_DEVICE_LOCKING/)).
//!
//! A lock belongs to the open file description and is released when the last
//! descriptor of it is closed, so there is no unlock guard: close the file.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::libc;

/// Which lock to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// `LOCK_SH`: several holders may share it (readers, udev's probe).
    Shared,
    /// `LOCK_EX`: one holder only (whoever sets the device up).
    Exclusive,
}

/// Takes `lock` on `fd`, waiting for it when `wait` is true and failing with
/// `EWOULDBLOCK` otherwise. Taking the other kind of lock on a file that is
/// already locked through this descriptor converts it (e.g. downgrades).
///
/// # References
/// - [`flock(2)`](https://man7.org/linux/man-pages/man2/flock.2.html)
#[doc(alias = "LOCK_EX")]
#[doc(alias = "LOCK_SH")]
pub fn flock(fd: BorrowedFd<'_>, lock: Lock, wait: bool) -> nix::Result<()> {
    let mut op = match lock {
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    // SAFETY: `flock` takes a file descriptor and an integer operation; the
    // descriptor is borrowed for the duration of the call, so it is open.
    let res = unsafe { libc::flock(fd.as_raw_fd(), op) };
    Errno::result(res).map(drop)
}

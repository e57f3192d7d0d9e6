//! `statx(2)` for what std does not give: the mount id, and a look at a
//! path that never waits for its filesystem (`AT_STATX_DONT_SYNC`).
//!
//! # References
//! - [`statx(2)`](https://man7.org/linux/man-pages/man2/statx.2.html), `STATX_MNT_ID` (Linux 5.8),
//!   `AT_STATX_DONT_SYNC`

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::libc;

/// The id of the mount that `fd` is on (`stx_mnt_id`), as mountinfo's first
/// field shows it; `None` where the kernel does not report it.
#[doc(alias = "STATX_MNT_ID")]
pub fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the path is a NUL-terminated empty string and AT_EMPTY_PATH
    // makes statx describe `fd` itself; `buf` is a valid, writable statx
    // buffer of the right size that the kernel fills.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: statx returned 0, so it filled the buffer (which started
    // zeroed, so every field is initialised either way).
    let stx = unsafe { buf.assume_init() };
    (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// The device number (as `MetadataExt::dev` gives it) and inode of `path`,
/// a link in its last component not followed, from what the kernel has
/// cached (`AT_STATX_DONT_SYNC`): a network or FUSE filesystem is not asked
/// to refresh its attributes, so a FUSE daemon that is stopped or hung
/// cannot block the call where the path is its mount's root (the file a
/// qemu-storage-daemon FUSE export is mounted on). Device and inode numbers
/// never go stale. A lookup of a component inside such a filesystem can
/// still ask it.
#[doc(alias = "AT_STATX_DONT_SYNC")]
pub fn cached_inode(path: &Path) -> nix::Result<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is a NUL-terminated path that outlives the call, and
    // `buf` is a valid, writable statx buffer of the right size that the
    // kernel fills.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
            libc::STATX_INO,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: statx returned 0, so it filled the buffer (which started
    // zeroed, so every field is initialised either way).
    let stx = unsafe { buf.assume_init() };
    let dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    Ok((dev, stx.stx_ino))
}

//! `statx(2)` for the one field std does not give: the mount id.
//!
//! # References
//! - [`statx(2)`](https://man7.org/linux/man-pages/man2/statx.2.html), `STATX_MNT_ID` (Linux 5.8)

use std::os::fd::{AsRawFd, BorrowedFd};

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

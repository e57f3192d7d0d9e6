//! Network block device ioctls (`<linux/nbd.h>`).
//!
//! qemu-nbd sets the device up (socket, size, `NBD_DO_IT`); diskmount only
//! tunes a connected device.
//!
//! # References
//! - [`include/uapi/linux/nbd.h`](https://github.com/torvalds/linux/blob/master/include/uapi/linux/nbd.h)
//! - [`Documentation/admin-guide/blockdev/nbd.rst`](https://docs.kernel.org/admin-guide/blockdev/nbd.html)

use std::ffi::c_ulong;
use std::os::fd::{AsRawFd, BorrowedFd};

use linux_raw_sys::ioctl as uapi;

use super::Request;

nix::ioctl_write_int_bad!(raw_set_timeout, uapi::NBD_SET_TIMEOUT as Request);

/// Sets the device's request timeout in seconds (0: none, the kernel's
/// default, under which a request to a server that stopped answering waits
/// for ever). With a timeout, a request the server leaves unanswered that
/// long marks the connection dead and fails with `EIO`. Takes effect on a
/// connected device too.
#[doc(alias = "NBD_SET_TIMEOUT")]
pub fn set_timeout(device: BorrowedFd<'_>, seconds: u64) -> nix::Result<()> {
    let seconds = c_ulong::try_from(seconds).unwrap_or(c_ulong::MAX);
    // SAFETY: NBD_SET_TIMEOUT takes its argument by value (an unsigned
    // long); nothing is read or written through a pointer.
    unsafe { raw_set_timeout(device.as_raw_fd(), seconds as _) }.map(drop)
}

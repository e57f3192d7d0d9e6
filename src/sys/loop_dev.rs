//! Loop-device ioctls: the control device (`/dev/loop-control`) and the
//! per-device requests.
//!
//! The structures come pre-generated from the kernel's UAPI headers by
//! `linux-raw-sys`, so no layout is copied by hand.
//!
//! # References
//! - [`loop(4)`](https://man7.org/linux/man-pages/man4/loop.4.html)
//! - [`include/uapi/linux/loop.h`](https://github.com/torvalds/linux/blob/master/include/uapi/linux/loop.h)

use std::os::fd::{AsRawFd, BorrowedFd};

use linux_raw_sys::loop_device as uapi;
pub use linux_raw_sys::loop_device::{loop_config as LoopConfig, loop_info64 as LoopInfo64};

use super::Request;

/// `LO_FLAGS_READ_ONLY`: the device refuses writes.
pub const LO_FLAGS_READ_ONLY: u32 = uapi::LO_FLAGS_READ_ONLY as u32;
/// `LO_FLAGS_AUTOCLEAR`: the kernel unbinds the device when its last user closes it.
pub const LO_FLAGS_AUTOCLEAR: u32 = uapi::LO_FLAGS_AUTOCLEAR as u32;
/// `LO_FLAGS_PARTSCAN`: the kernel scans the device for a partition table.
pub const LO_FLAGS_PARTSCAN: u32 = uapi::LO_FLAGS_PARTSCAN as u32;
/// `LO_FLAGS_DIRECT_IO`: the device reads and writes its backing file with `O_DIRECT`.
pub const LO_FLAGS_DIRECT_IO: u32 = uapi::LO_FLAGS_DIRECT_IO as u32;

nix::ioctl_none_bad!(raw_ctl_get_free, uapi::LOOP_CTL_GET_FREE as Request);
nix::ioctl_write_int_bad!(raw_ctl_remove, uapi::LOOP_CTL_REMOVE as Request);
nix::ioctl_write_ptr_bad!(raw_configure, uapi::LOOP_CONFIGURE as Request, LoopConfig);
nix::ioctl_write_int_bad!(raw_set_fd, uapi::LOOP_SET_FD as Request);
nix::ioctl_write_ptr_bad!(
    raw_set_status64,
    uapi::LOOP_SET_STATUS64 as Request,
    LoopInfo64
);
nix::ioctl_read_bad!(
    raw_get_status64,
    uapi::LOOP_GET_STATUS64 as Request,
    LoopInfo64
);
nix::ioctl_none_bad!(raw_clr_fd, uapi::LOOP_CLR_FD as Request);

/// Asks the control device for the number of a free loop device, creating
/// one if none is free.
///
/// # References
/// - [`loop(4)`](https://man7.org/linux/man-pages/man4/loop.4.html), `LOOP_CTL_GET_FREE`
#[doc(alias = "LOOP_CTL_GET_FREE")]
pub fn ctl_get_free(control: BorrowedFd<'_>) -> nix::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns the device
    // number (non-negative) or fails; the descriptor is open while borrowed.
    let nr = unsafe { raw_ctl_get_free(control.as_raw_fd())? };
    Ok(nr as u32)
}

/// Removes the (unbound) loop device number `nr`.
///
/// # References
/// - [`loop(4)`](https://man7.org/linux/man-pages/man4/loop.4.html), `LOOP_CTL_REMOVE`
#[doc(alias = "LOOP_CTL_REMOVE")]
pub fn ctl_remove(control: BorrowedFd<'_>, nr: u32) -> nix::Result<()> {
    // SAFETY: LOOP_CTL_REMOVE takes the device number as an integer argument.
    unsafe { raw_ctl_remove(control.as_raw_fd(), nr as i32) }.map(drop)
}

/// Binds `backing` to the loop device and sets its status (`info`, and
/// the logical block size, 0 for the default) in one step (Linux 5.8 and
/// later).
///
/// # References
/// - [`loop(4)`](https://man7.org/linux/man-pages/man4/loop.4.html), `LOOP_CONFIGURE`
#[doc(alias = "LOOP_CONFIGURE")]
pub fn configure(
    device: BorrowedFd<'_>,
    backing: BorrowedFd<'_>,
    info: &LoopInfo64,
    block_size: u32,
) -> nix::Result<()> {
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size,
        info: *info,
        __reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `config`
    // points to for the duration of the call; its descriptor is `backing`,
    // borrowed, so it names an open file until the call returns.
    unsafe { raw_configure(device.as_raw_fd(), &config) }.map(drop)
}

/// Binds `backing` to the loop device (the pre-5.8 first half of
/// [`configure`]).
///
/// # References
/// - [`loop(4)`](https://man7.org/linux/man-pages/man4/loop.4.html), `LOOP_SET_FD`
#[doc(alias = "LOOP_SET_FD")]
pub fn set_fd(device: BorrowedFd<'_>, backing: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: LOOP_SET_FD takes an open file descriptor as its integer
    // argument; `backing` is borrowed, so it stays open during the call.
    unsafe { raw_set_fd(device.as_raw_fd(), backing.as_raw_fd()) }.map(drop)
}

/// Sets offset, size limit and flags of a bound loop device.
///
/// # References
/// - [`loop(4)`](https://man7.org/linux/man-pages/man4/loop.4.html), `LOOP_SET_STATUS64`
#[doc(alias = "LOOP_SET_STATUS64")]
pub fn set_status64(device: BorrowedFd<'_>, info: &LoopInfo64) -> nix::Result<()> {
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64` from `info`.
    unsafe { raw_set_status64(device.as_raw_fd(), info) }.map(drop)
}

/// Reads the status of a loop device; fails with `ENXIO` when it is unbound.
///
/// # References
/// - [`loop(4)`](https://man7.org/linux/man-pages/man4/loop.4.html), `LOOP_GET_STATUS64`
#[doc(alias = "LOOP_GET_STATUS64")]
pub fn get_status64(device: BorrowedFd<'_>) -> nix::Result<LoopInfo64> {
    let mut info = empty_info();
    // SAFETY: LOOP_GET_STATUS64 writes a `struct loop_info64` into `info`,
    // which is a valid, exclusively borrowed value of that type.
    unsafe { raw_get_status64(device.as_raw_fd(), &mut info)? };
    Ok(info)
}

/// The device number (`st_dev`) and inode of the file bound to a loop
/// device, as the kernel holds it (not a path, which can be renamed or
/// replaced); fails with `ENXIO` when the device is unbound.
///
/// # References
/// - [`loop(4)`](https://man7.org/linux/man-pages/man4/loop.4.html), `LOOP_GET_STATUS64`
#[doc(alias = "LOOP_GET_STATUS64")]
pub fn backing_inode(device: BorrowedFd<'_>) -> nix::Result<(u64, u64)> {
    let mut info = empty_info();
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` into
    // `info`, a valid, exclusively borrowed value of that type; `device`
    // is borrowed, so it stays open during the call.
    unsafe { raw_get_status64(device.as_raw_fd(), &mut info)? };
    Ok((info.lo_device, info.lo_inode))
}

/// Unbinds the backing file (the kernel defers it to the last close when the
/// device is still open elsewhere).
///
/// # References
/// - [`loop(4)`](https://man7.org/linux/man-pages/man4/loop.4.html), `LOOP_CLR_FD`
#[doc(alias = "LOOP_CLR_FD")]
pub fn clr_fd(device: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    unsafe { raw_clr_fd(device.as_raw_fd()) }.map(drop)
}

/// An all-zero `loop_info64`, the starting point for [`configure`].
pub fn empty_info() -> LoopInfo64 {
    LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: 0,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    }
}

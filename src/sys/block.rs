//! Block-device ioctls (`<linux/fs.h>`, `<linux/blkpg.h>`).
//!
//! # References
//! - [`ioctl(2)`](https://man7.org/linux/man-pages/man2/ioctl.2.html)
//! - [`include/uapi/linux/fs.h`](https://github.com/torvalds/linux/blob/master/include/uapi/linux/fs.h)
//! - [`include/uapi/linux/blkpg.h`](https://github.com/torvalds/linux/blob/master/include/uapi/linux/blkpg.h)

use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, BorrowedFd};

use linux_raw_sys::ioctl as uapi;

use super::Request;

nix::ioctl_none_bad!(raw_flsbuf, uapi::BLKFLSBUF as Request);
nix::ioctl_none_bad!(raw_rrpart, uapi::BLKRRPART as Request);
nix::ioctl_read_bad!(raw_getsize64, uapi::BLKGETSIZE64 as Request, u64);
nix::ioctl_read_bad!(raw_sszget, uapi::BLKSSZGET as Request, c_int);
nix::ioctl_read_bad!(raw_getdiskseq, uapi::BLKGETDISKSEQ as Request, u64);
nix::ioctl_write_ptr_bad!(raw_blkpg, uapi::BLKPG as Request, BlkpgIoctlArg);
nix::ioctl_write_ptr_bad!(raw_roset, uapi::BLKROSET as Request, c_int);
nix::ioctl_read_bad!(raw_roget, uapi::BLKROGET as Request, c_int);

/// Writes the device's dirty buffers and drops its clean cached pages.
///
/// # References
/// - [`blockdev(8)`](https://man7.org/linux/man-pages/man8/blockdev.8.html) `--flushbufs`
#[doc(alias = "BLKFLSBUF")]
pub fn flsbuf(device: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: BLKFLSBUF takes no argument.
    unsafe { raw_flsbuf(device.as_raw_fd()) }.map(drop)
}

/// Asks the kernel to re-read the partition table.
///
/// # References
/// - [`blockdev(8)`](https://man7.org/linux/man-pages/man8/blockdev.8.html) `--rereadpt`
#[doc(alias = "BLKRRPART")]
pub fn rrpart(device: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: BLKRRPART takes no argument.
    unsafe { raw_rrpart(device.as_raw_fd()) }.map(drop)
}

/// The device size in bytes.
///
/// # References
/// - [`blockdev(8)`](https://man7.org/linux/man-pages/man8/blockdev.8.html) `--getsize64`
#[doc(alias = "BLKGETSIZE64")]
pub fn getsize64(device: BorrowedFd<'_>) -> nix::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes a u64 into `size`.
    unsafe { raw_getsize64(device.as_raw_fd(), &mut size)? };
    Ok(size)
}

/// The logical sector size in bytes.
///
/// # References
/// - [`blockdev(8)`](https://man7.org/linux/man-pages/man8/blockdev.8.html) `--getss`
#[doc(alias = "BLKSSZGET")]
pub fn sszget(device: BorrowedFd<'_>) -> nix::Result<u32> {
    let mut size: c_int = 0;
    // SAFETY: BLKSSZGET writes an int into `size`.
    unsafe { raw_sszget(device.as_raw_fd(), &mut size)? };
    Ok(size as u32)
}

/// The disk sequence number (Linux 5.15 and later): unique for every medium
/// a device number has held since boot, so a reused `/dev/loop3` can be told
/// apart from the one we attached.
///
/// # References
/// - [`BLKGETDISKSEQ`](https://github.com/torvalds/linux/commit/7957d93bf32bc211415827e44fdd9cdf1388df59)
#[doc(alias = "BLKGETDISKSEQ")]
pub fn getdiskseq(device: BorrowedFd<'_>) -> nix::Result<u64> {
    let mut seq = 0u64;
    // SAFETY: BLKGETDISKSEQ writes a u64 into `seq`.
    unsafe { raw_getdiskseq(device.as_raw_fd(), &mut seq)? };
    Ok(seq)
}

/// Makes the device read-only (`true`) or writable again (`false`) at the
/// block layer (the flag `blockdev --setro` sets, apart from a driver's own
/// read-only state): opens for writing are refused, and filesystems check
/// it (xfs refuses to replay its log on such a device and writes no
/// unmount record to it).
///
/// # References
/// - [`blockdev(8)`](https://man7.org/linux/man-pages/man8/blockdev.8.html) `--setro`, `--setrw`
#[doc(alias = "BLKROSET")]
pub fn roset(device: BorrowedFd<'_>, read_only: bool) -> nix::Result<()> {
    let flag = c_int::from(read_only);
    // SAFETY: BLKROSET reads an int from the pointer, which points to `flag`
    // on this stack frame for the duration of the call.
    unsafe { raw_roset(device.as_raw_fd(), &flag) }.map(drop)
}

/// Whether the device is read-only at the block layer.
///
/// # References
/// - [`blockdev(8)`](https://man7.org/linux/man-pages/man8/blockdev.8.html) `--getro`
#[doc(alias = "BLKROGET")]
pub fn roget(device: BorrowedFd<'_>) -> nix::Result<bool> {
    let mut flag: c_int = 0;
    // SAFETY: BLKROGET writes an int into `flag`.
    unsafe { raw_roget(device.as_raw_fd(), &mut flag)? };
    Ok(flag != 0)
}

/// `struct blkpg_ioctl_arg` from `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut c_void,
}

/// `struct blkpg_partition` from `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

const BLKPG_ADD_PARTITION: c_int = 1;
const BLKPG_DEL_PARTITION: c_int = 2;

fn blkpg(
    device: BorrowedFd<'_>,
    op: c_int,
    number: u32,
    start: u64,
    length: u64,
) -> nix::Result<()> {
    let mut part = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: number as c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as c_int,
        data: (&raw mut part).cast(),
    };
    // SAFETY: BLKPG reads a `struct blkpg_ioctl_arg` whose `data` points to a
    // `struct blkpg_partition` of `datalen` bytes; both live on this stack
    // frame for the duration of the call.
    unsafe { raw_blkpg(device.as_raw_fd(), &arg) }.map(drop)
}

/// Adds partition `number` covering `length` bytes from byte `start` of the
/// whole-disk `device` (the kernel creates `<device>p<number>`).
///
/// # References
/// - [`addpart(8)`](https://man7.org/linux/man-pages/man8/addpart.8.html)
#[doc(alias = "BLKPG_ADD_PARTITION")]
pub fn add_partition(
    device: BorrowedFd<'_>,
    number: u32,
    start: u64,
    length: u64,
) -> nix::Result<()> {
    blkpg(device, BLKPG_ADD_PARTITION, number, start, length)
}

/// Deletes partition `number` of the whole-disk `device`; fails with `EBUSY`
/// while it is open or mounted.
///
/// # References
/// - [`delpart(8)`](https://man7.org/linux/man-pages/man8/delpart.8.html)
#[doc(alias = "BLKPG_DEL_PARTITION")]
pub fn del_partition(device: BorrowedFd<'_>, number: u32) -> nix::Result<()> {
    blkpg(device, BLKPG_DEL_PARTITION, number, 0, 0)
}

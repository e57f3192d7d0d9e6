//! The hand-written syscall floor's loop devices, shared by the benchmarks
//! that compare the library with the least work the kernel needs: the very
//! wrappers the library uses (`diskmount::sys`, `bench-sys` feature).

use std::fs::File;
use std::os::fd::AsFd;

use diskmount::sys::loop_dev;

/// `LOOP_CTL_GET_FREE`, open, one `LOOP_CONFIGURE` (autoclear; `range` =
/// offset and size limit).
pub fn attach(backing: &File, range: Option<(u64, u64)>) -> (String, File) {
    attach_flags(backing, range, loop_dev::LO_FLAGS_AUTOCLEAR)
}

/// [`attach`] with these `lo_flags`.
pub fn attach_flags(backing: &File, range: Option<(u64, u64)>, flags: u32) -> (String, File) {
    attach_claiming(backing, range, flags, false)
}

/// [`attach_flags`], holding an exclusive `flock` on `/dev/loop-control`
/// from `LOOP_CTL_GET_FREE` to `LOOP_CONFIGURE` if `lock_control` (as the
/// library claims a device).
pub fn attach_claiming(
    backing: &File,
    range: Option<(u64, u64)>,
    flags: u32,
    lock_control: bool,
) -> (String, File) {
    use diskmount::sys::flock::{Lock, flock};
    let control = super::open_rw("/dev/loop-control");
    if lock_control {
        flock(control.as_fd(), Lock::Exclusive, true).unwrap();
    }
    let mut info = loop_dev::empty_info();
    info.lo_flags = flags;
    if let Some((start, size)) = range {
        info.lo_offset = start;
        info.lo_sizelimit = size;
    }
    // Other processes on the machine claim loop devices too: EBUSY means
    // one took this device first; ask for another at once.
    loop {
        let nr = loop_dev::ctl_get_free(control.as_fd()).unwrap();
        let node = format!("/dev/loop{nr}");
        let dev = super::open_rw(&node);
        match loop_dev::configure(dev.as_fd(), backing.as_fd(), &info, 0) {
            Ok(()) => return (node, dev),
            Err(nix::errno::Errno::EBUSY) => continue,
            Err(e) => panic!("LOOP_CONFIGURE {node}: {e}"),
        }
    }
}

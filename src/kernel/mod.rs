//! What the kernel shows about mounts and block devices, read in one place:
//! [`mountinfo`] parses `/proc/self/mountinfo` (and asks `statx` for mount
//! ids where that answers the question without parsing), [`sysfs`] reads
//! the attributes of block devices under `/sys/block` and `/sys/dev/block`,
//! [`process`] the state of a process in `/proc/PID/stat`; `loop_backing`
//! which loop devices serve a file, never entering an unrelated filesystem.
//!
//! The library, the command-line tool and the tests all use these, so every
//! escape of mountinfo is undone the same way everywhere and every sysfs
//! attribute is read with the same rules (trimmed, absent = `None`).

pub(crate) mod loop_backing;
pub(crate) mod module;
pub mod mountinfo;
pub mod process;
pub mod sysfs;

/// A `/proc` file, read whole with a buffer of 16 KiB to start with: the
/// kernel reports no size for these, so `std::fs::read` starts at 32 bytes
/// and doubles, one `read` each (8 system calls for a mountinfo of 20
/// mounts, on every teardown's check); this makes it 2.
pub(crate) fn read_proc(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(16 * 1024);
    std::fs::File::open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

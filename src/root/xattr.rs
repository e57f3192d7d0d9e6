//! Copying an entry's extended attributes to the file that replaces it
//! (an edit by rename): the SELinux label, and also POSIX ACLs, file
//! capabilities, IMA/EVM signatures and user attributes, which a plain
//! rename would lose.

use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{XattrFlags, fgetxattr, flistxattr, fsetxattr};
use rustix::io::Errno;

use super::Root;
use crate::error::Result;

/// The most bytes of attribute names, and of one attribute's value, read.
const MAX_XATTR: usize = 64 * 1024;

/// Gives `to` every extended attribute `from` has; whether one of them was
/// the SELinux label (`security.selinux`). Call it after `to`'s owner is
/// set: a change of owner drops `security.capability`.
pub(crate) fn copy_all(
    root: &Root,
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    path: &Path,
) -> Result<bool> {
    let mut names = vec![0u8; MAX_XATTR];
    let n = match flistxattr(from, &mut names) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(false),
        Err(e) => return Err(root.err(path, "flistxattr", std::io::Error::from(e))),
    };
    let mut value = vec![0u8; MAX_XATTR];
    let mut label = false;
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let shown = String::from_utf8_lossy(name);
        let name = std::ffi::OsStr::from_bytes(name);
        let len = match fgetxattr(from, name, &mut value) {
            Ok(len) => len,
            // Gone meanwhile.
            Err(Errno::NODATA) => continue,
            Err(e) => {
                return Err(root.err(path, &format!("fgetxattr {shown}"), std::io::Error::from(e)));
            }
        };
        fsetxattr(to, name, &value[..len], XattrFlags::empty())
            .map_err(|e| root.err(path, &format!("fsetxattr {shown}"), std::io::Error::from(e)))?;
        label |= name == "security.selinux";
    }
    Ok(label)
}

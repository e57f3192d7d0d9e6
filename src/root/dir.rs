//! Directories inside the image: creating them, and removing entries.

use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::UnlinkatFlags;

use super::Root;
use crate::error::Result;

impl Root<'_> {
    /// Creates the directory `path` and any missing parents with permission
    /// bits `mode` (links in existing parents are followed inside the
    /// image). Existing directories are left as they are.
    pub fn mkdir_all(&self, path: impl AsRef<Path>, mode: u32) -> Result<()> {
        self.mkdir_all_with(path, &super::owner::NewEntry::new().mode(mode))
    }

    /// Removes the file, link or empty directory at `path` (a link itself,
    /// never what it points to).
    pub fn remove(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (dir, name) = self.parent(path)?;
        match nix::unistd::unlinkat(dir.as_fd(), name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(()),
            Err(Errno::EISDIR) => {
                nix::unistd::unlinkat(dir.as_fd(), name.as_os_str(), UnlinkatFlags::RemoveDir)
                    .map_err(|e| self.err(path, "rmdir", e))
            }
            Err(e) => Err(self.err(path, "unlink", e)),
        }
    }

    /// Removes `path` and, if it is a directory, everything below it.
    pub fn remove_all(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let meta = self.symlink_metadata(path)?;
        if meta.is_dir() {
            for name in self.read_dir(path)? {
                self.remove_all(path.join(name))?;
            }
        }
        self.remove(path)
    }

    /// The names in the directory at `path`.
    pub fn read_dir(&self, path: impl AsRef<Path>) -> Result<Vec<std::ffi::OsString>> {
        let path = path.as_ref();
        let fd = self.resolve(path, true)?;
        // The descriptor already points inside the image; listing it
        // through its /proc entry follows no guest link.
        let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        std::fs::read_dir(proc)
            .and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(|e| self.err(path, "read directory", e))
    }
}

//! Writing files inside the image: atomic replace, and append.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::Mode;

use super::entry_kind::EntryKind;
use super::owner::NewEntry;
use super::{Resolver, Root, temp_name};
use crate::error::Result;

impl Root<'_> {
    /// Creates or replaces the file at `path` with `data` and permission
    /// bits `mode`, atomically: a temporary file in the same directory,
    /// written, synced, then renamed over the name. A symbolic link at
    /// `path` is replaced, never followed.
    pub fn write(&self, path: impl AsRef<Path>, data: impl AsRef<[u8]>, mode: u32) -> Result<()> {
        self.write_from(path, &mut data.as_ref(), mode).map(drop)
    }

    /// [`Root::write`] with the content read from `reader` (streamed).
    pub fn write_from(
        &self,
        path: impl AsRef<Path>,
        reader: &mut dyn Read,
        mode: u32,
    ) -> Result<u64> {
        let path = path.as_ref();
        let (dir, name) = self.parent(path)?;
        self.write_file_at(&dir, &name, path, reader, &NewEntry::new().mode(mode), true)
    }

    /// Writes the entry `name` of the image directory `dir` (`path` in
    /// the image, for messages) from `reader`: a temporary file next to it,
    /// written, given the mode, owner and label `how` says, `fsync`ed if
    /// `sync`, renamed over the name. A `File` source
    /// is copied by the kernel (`copy_file_range`/`sendfile`) where it can.
    pub(crate) fn write_file_at<R: Read + ?Sized>(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        reader: &mut R,
        how: &NewEntry,
        sync: bool,
    ) -> Result<u64> {
        let tmp = temp_name(name);
        let fd = openat(
            dir.as_fd(),
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.err(path, "create temporary file", e))?;
        let mut file = File::from(fd);
        let written = (|| {
            // For a `File` source, `std::io::copy` uses the kernel's copy
            // (`copy_file_range`, else `sendfile`).
            let n = super::stop::copy(reader, &mut file, how.stop_flag()).map_err(|e| {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    super::stop::stopped(path)
                } else {
                    self.err(path, "write", e)
                }
            })?;
            self.set_new_attrs(file.as_fd(), dir, name, path, EntryKind::File, how)?;
            if sync {
                file.sync_all().map_err(|e| self.err(path, "fsync", e))?;
            }
            renameat(dir.as_fd(), tmp.as_os_str(), dir.as_fd(), name)
                .map_err(|e| self.err(path, "rename into place", e))?;
            Ok(n)
        })();
        if written.is_err() {
            let _ = nix::unistd::unlinkat(
                dir.as_fd(),
                tmp.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        written
    }

    /// Appends `data` to the file at `path`, creating it with `mode` if it
    /// does not exist. Links are followed inside the image; only regular
    /// files are written to.
    pub fn append(&self, path: impl AsRef<Path>, data: impl AsRef<[u8]>, mode: u32) -> Result<()> {
        let path = path.as_ref();
        let flags = OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_CREAT
            | OFlag::O_CLOEXEC
            | OFlag::O_NONBLOCK;
        let fd = if self.resolver == Resolver::Auto {
            let how = OpenHow::new()
                .flags(flags)
                .mode(Mode::from_bits_truncate(mode & 0o7777))
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            match openat2(self.fd.as_fd(), super::relative(path).as_path(), how) {
                Err(nix::errno::Errno::ENOSYS) => None,
                other => Some(other.map_err(|e| self.err(path, "open for append", e))?),
            }
        } else {
            None
        };
        let fd = match fd {
            Some(fd) => fd,
            None => {
                let (dir, name) = self.parent(path)?;
                // The last component, if a link, is resolved in the root.
                match self.resolve(path, true) {
                    Ok(existing) => super::reopen(
                        &existing,
                        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_NONBLOCK,
                    )
                    .map_err(|e| self.err(path, "open for append", e))?,
                    Err(_) => openat(
                        dir.as_fd(),
                        name.as_os_str(),
                        flags | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                        Mode::from_bits_truncate(mode & 0o7777),
                    )
                    .map_err(|e| self.err(path, "create", e))?,
                }
            }
        };
        let mut file = File::from(fd);
        let meta = file.metadata().map_err(|e| self.err(path, "fstat", e))?;
        if !meta.is_file() {
            return Err(self.refuse(path, "is not a regular file"));
        }
        file.write_all(data.as_ref())
            .map_err(|e| self.err(path, "append", e))?;
        file.sync_all().map_err(|e| self.err(path, "fsync", e))
    }
}

//! Creating files and directories with an explicit mode, owner and SELinux
//! label ([`NewEntry`]), each set on the new entry's descriptor before it
//! gets its name (files) or right after `mkdirat` (directories).

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use super::Root;
use super::entry_kind::EntryKind;
use super::owner::NewEntry;
use crate::error::Result;

impl Root<'_> {
    /// Creates or replaces the file at `path` with `data`, atomically (a
    /// temporary file in the same directory, given its mode, owner and
    /// label, synced, then renamed over the name), with what `how` says
    /// (mode `0o644` unless set). A symbolic link at `path` is replaced,
    /// never followed.
    pub fn write_with(
        &self,
        path: impl AsRef<Path>,
        data: impl AsRef<[u8]>,
        how: &NewEntry,
    ) -> Result<()> {
        self.write_from_with(path, &mut data.as_ref(), how)
            .map(drop)
    }

    /// [`Root::write_with`] with the content read from `reader`.
    pub fn write_from_with(
        &self,
        path: impl AsRef<Path>,
        reader: &mut dyn Read,
        how: &NewEntry,
    ) -> Result<u64> {
        let path = path.as_ref();
        let (dir, name) = self.parent(path)?;
        self.write_file_at(&dir, &name, path, reader, how, true)
    }

    /// Creates the directory `path` and any missing parents, each new one
    /// with what `how` says (mode `0o755` unless set). Links in existing
    /// parents are followed inside the image; existing directories are
    /// left as they are.
    pub fn mkdir_all_with(&self, path: impl AsRef<Path>, how: &NewEntry) -> Result<()> {
        let path = path.as_ref();
        let mut done = PathBuf::new();
        for part in super::components(&super::relative(path)) {
            done.push(&part);
            if part == ".." {
                continue;
            }
            let (dir, name) = self.parent(&done)?;
            match self.mkdir_at(&dir, &name, &done, how) {
                Ok(_) => {}
                Err(e) if e.errno() == Some(Errno::EEXIST as i32) => {
                    let fd = self.resolve(&done, true)?;
                    let st = nix::sys::stat::fstat(&fd).map_err(|e| self.err(&done, "fstat", e))?;
                    if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFDIR {
                        return Err(self.refuse(&done, "exists and is not a directory"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Makes the directory `name` in the image directory `dir` (`path` in
    /// the image, for messages) with what `how` says, and returns a
    /// descriptor of it, opened by its name without following links. An existing entry is an `EEXIST` error.
    pub(crate) fn mkdir_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        how: &NewEntry,
    ) -> Result<OwnedFd> {
        // Made private first: nobody else gets in before its owner and mode
        // are set.
        nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700))
            .map_err(|e| self.err(path, "mkdir", e))?;
        let fd = openat(
            dir.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err(path, "open new directory", e))?;
        self.set_new_attrs(fd.as_fd(), dir, name, path, EntryKind::Dir, how)?;
        Ok(fd)
    }
}

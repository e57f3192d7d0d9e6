//! Editing a guest file by rename, never in place: the new content goes to
//! a temporary file in the same directory, which gets the original's
//! owner, mode and `security.selinux` label, is synced, and is renamed
//! over the original (`renameat`, atomic). A crash leaves the old file or
//! the new one, never half of each.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, unlinkat};

use super::entry_kind::EntryKind;
use super::owner::{NewEntry, Ownership};
use super::{Root, temp_name};
use crate::error::Result;

/// The largest file [`Root::edit`] reads (guest configuration files are far
/// smaller; this bounds what a hostile image can make us allocate).
pub const EDIT_LIMIT: u64 = 64 << 20;

impl Root<'_> {
    /// Edits the regular file at `path` by rename: `f` gets its content and
    /// returns the new one, or `None` to leave the file as it is. The new
    /// file keeps the original's owner, group, mode and every extended
    /// attribute (SELinux label, ACLs, capabilities, IMA signature).
    /// A symbolic link at `path` is followed inside the image and the file
    /// it leads to is edited. Returns whether the file was changed.
    pub fn edit(
        &self,
        path: impl AsRef<Path>,
        f: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>>,
    ) -> Result<bool> {
        let (dir, name, path) = self.locate(path.as_ref())?;
        self.edit_at(&dir, &name, &path, None, |old| match old {
            Some(old) => f(old),
            None => Ok(None),
        })
    }

    /// [`Root::edit`], or, where `path` does not exist, creates it with
    /// what `how` says from what `f` returns for `None`. Where the original
    /// has no label, the new file gets the one `how`'s labeller gives.
    pub fn edit_or_create(
        &self,
        path: impl AsRef<Path>,
        how: &NewEntry,
        f: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>>,
    ) -> Result<bool> {
        let (dir, name, path) = self.locate(path.as_ref())?;
        self.edit_at(&dir, &name, &path, Some(how), f)
    }

    /// Writes `data` to `path` by rename. An existing regular file (a
    /// link at `path` followed inside the image) keeps its label, and its
    /// owner and mode except where `how` sets them; a missing one is
    /// created as `how` says.
    pub fn write_keeping(
        &self,
        path: impl AsRef<Path>,
        data: impl AsRef<[u8]>,
        how: &NewEntry,
    ) -> Result<()> {
        let (dir, name, path) = self.locate(path.as_ref())?;
        let data = data.as_ref();
        self.edit_at_as(&dir, &name, &path, Some(how), true, |_| {
            Ok(Some(data.to_vec()))
        })
        .map(drop)
    }

    /// The directory and name of the file `path` names, a symbolic link
    /// in its last component followed inside the image (the path returned
    /// is then the one it leads to).
    fn locate(&self, path: &Path) -> Result<(OwnedFd, OsString, PathBuf)> {
        let (dir, name) = self.parent(path)?;
        let st = match openat(
            dir.as_fd(),
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fstat(&fd).map_err(|e| self.err(path, "fstat", e))?,
            Err(Errno::ENOENT) => return Ok((dir, name, path.to_path_buf())),
            Err(e) => return Err(self.err(path, "open", e)),
        };
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFLNK {
            return Ok((dir, name, path.to_path_buf()));
        }
        let target = self.resolve(path, true)?;
        let real = self
            .guest_path_of(&target)
            .ok_or_else(|| self.refuse(path, "cannot tell where its link leads in the image"))?;
        let (dir, name) = self.parent(&real)?;
        let again = openat(
            dir.as_fd(),
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err(&real, "open", e))?;
        let (a, b) = (
            fstat(&again).map_err(|e| self.err(&real, "fstat", e))?,
            fstat(&target).map_err(|e| self.err(path, "fstat", e))?,
        );
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(self.refuse(path, "changed while it was being resolved"));
        }
        log::debug!(
            "edit {}: its link leads to {}",
            path.display(),
            real.display()
        );
        Ok((dir, name, real))
    }

    /// Edits the entry `name` of the image directory `dir` (`path`, for
    /// messages) by rename, as [`Root::edit`] says; a symbolic link there
    /// is refused, never followed. Where it does not exist, `how` (if
    /// given) says how to create it; without `how` that is an error.
    pub(crate) fn edit_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        how: Option<&NewEntry>,
        f: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>>,
    ) -> Result<bool> {
        self.edit_at_as(dir, name, path, how, false, f)
    }

    /// [`Root::edit_at`]; with `replace`, the existing content is not read
    /// (`f` gets it empty) and the mode and owner `how` sets replace the
    /// existing file's.
    fn edit_at_as(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        how: Option<&NewEntry>,
        replace: bool,
        f: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>>,
    ) -> Result<bool> {
        let old = match openat(
            dir.as_fd(),
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => {
                return Err(self.refuse(path, "is a symbolic link; not edited"));
            }
            Err(Errno::ENOENT) => {
                let Some(how) = how else {
                    return Err(self.err(path, "open", Errno::ENOENT));
                };
                return match f(None)? {
                    Some(data) => {
                        self.write_file_at(dir, name, path, &mut data.as_slice(), how, true)?;
                        Ok(true)
                    }
                    None => Ok(false),
                };
            }
            Err(e) => return Err(self.err(path, "open", e)),
        };
        let st = fstat(&old).map_err(|e| self.err(path, "fstat", e))?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            return Err(self.refuse(path, "is not a regular file; not edited"));
        }
        let content = if replace {
            Vec::new()
        } else {
            self.read_bounded(&old, path)?
        };
        let Some(new) = f(Some(&content))? else {
            return Ok(false);
        };
        let (mut mode, mut owner) = (st.st_mode & 0o7777, Ownership::new(st.st_uid, st.st_gid));
        if replace && let Some(how) = how {
            mode = how.mode_bits().unwrap_or(mode);
            owner = how.ownership().unwrap_or(owner);
        }
        self.replace_at(dir, name, path, &old, (mode, owner), &new, how)?;
        Ok(true)
    }

    /// Reads the open file `fd` whole, refusing more than [`EDIT_LIMIT`].
    fn read_bounded(&self, fd: &OwnedFd, path: &Path) -> Result<Vec<u8>> {
        let file = File::from(fd.try_clone().map_err(|e| self.err(path, "dup", e))?);
        let mut out = Vec::new();
        file.take(EDIT_LIMIT + 1)
            .read_to_end(&mut out)
            .map_err(|e| self.err(path, "read", e))?;
        if out.len() as u64 > EDIT_LIMIT {
            return Err(self.refuse(
                path,
                format!("is larger than {} MiB; not edited", EDIT_LIMIT >> 20),
            ));
        }
        Ok(out)
    }

    /// Writes `data` to a temporary file next to `name`, gives it the
    /// owner and mode `attrs` and every extended attribute of `old` (its
    /// label, ACLs, capabilities, IMA signature), syncs it and renames it
    /// over `name`.
    #[allow(clippy::too_many_arguments)]
    fn replace_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        old: &OwnedFd,
        attrs: (u32, Ownership),
        data: &[u8],
        how: Option<&NewEntry>,
    ) -> Result<()> {
        let tmp = temp_name(name);
        let fd = openat(
            dir.as_fd(),
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.err(path, "create temporary file", e))?;
        let mut file = File::from(fd);
        let done = (|| {
            file.write_all(data)
                .map_err(|e| self.err(path, "write", e))?;
            nix::unistd::fchownat(
                file.as_fd(),
                "",
                Some(Uid::from_raw(attrs.1.uid)),
                Some(Gid::from_raw(attrs.1.gid)),
                AtFlags::AT_EMPTY_PATH,
            )
            .map_err(|e| self.err(path, "chown", e))?;
            // Every attribute of the original, its label among them, once
            // the owner is set (a chown drops file capabilities).
            let had_label = super::xattr::copy_all(self, old.as_fd(), file.as_fd(), path)?;
            if !had_label && let Some(how) = how {
                // The original was never labelled: label it as new.
                let policy = NewEntry::new().labels(how.labeller());
                self.set_new_label_owner(file.as_fd(), dir, name, path, EntryKind::File, &policy)?;
            }
            nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(attrs.0))
                .map_err(|e| self.err(path, "fchmod", e))?;
            file.sync_all().map_err(|e| self.err(path, "fsync", e))?;
            renameat(dir.as_fd(), tmp.as_os_str(), dir.as_fd(), name)
                .map_err(|e| self.err(path, "rename into place", e))
        })();
        if done.is_err() {
            let _ = unlinkat(dir.as_fd(), tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        } else {
            log::debug!("edited {} by rename", self.display(path).display());
        }
        done
    }
}

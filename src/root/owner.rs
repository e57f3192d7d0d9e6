//! How diskmount makes a new entry in the image: its mode, its numeric
//! owner and group, and its SELinux label; and setting them on the
//! descriptor of the entry just created (never by path, so never through a
//! guest link).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use super::Root;
use super::entry_kind::EntryKind;
use super::label::Labels;
use crate::error::Result;

/// A numeric owner and group, as the image's inodes store them (resolve
/// guest names with [`crate::guest::OwnerSpec::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ownership {
    /// The owner's user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

impl Ownership {
    /// `0:0`, the owner of files diskmount creates unless told otherwise.
    pub const ROOT: Ownership = Ownership { uid: 0, gid: 0 };

    /// The owner `uid` and group `gid`.
    pub fn new(uid: u32, gid: u32) -> Ownership {
        Ownership { uid, gid }
    }
}

/// What a file or directory that diskmount creates gets: permission bits,
/// owner and SELinux label.
///
/// Unset, the mode is `0o644` for files and `0o755` for directories (for
/// [`Root::copy_in_with`]: the host file's own), the owner is the calling
/// process's (root) and nothing is labelled.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewEntry<'a> {
    mode: Option<u32>,
    owner: Option<Ownership>,
    labels: Option<&'a Labels>,
    stop: Option<&'a std::sync::atomic::AtomicBool>,
}

impl<'a> NewEntry<'a> {
    /// Nothing set: the defaults.
    pub fn new() -> NewEntry<'a> {
        NewEntry::default()
    }

    /// The permission bits (the `0o7777` part is used).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode & 0o7777);
        self
    }

    /// The numeric owner and group.
    pub fn owner(mut self, owner: Ownership) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Label with the guest's SELinux policy (see [`crate::guest::selinux`]);
    /// `None` labels nothing.
    pub fn labels(mut self, labels: Option<&'a Labels>) -> Self {
        self.labels = labels;
        self
    }

    /// The mode set, if any.
    pub fn mode_bits(&self) -> Option<u32> {
        self.mode
    }

    /// The owner set, if any.
    pub fn ownership(&self) -> Option<Ownership> {
        self.owner
    }

    /// Stops a copy ([`Root::copy_in_with`]) once `flag` is set (by a
    /// signal handler, another thread): it is looked at between entries
    /// and every 16 MiB of a file. The file being written is removed, never
    /// left half-written, and the copy fails with
    /// [`crate::ErrorKind::Interrupted`] naming the entry it stopped at.
    pub fn stop_when(mut self, flag: &'a std::sync::atomic::AtomicBool) -> Self {
        self.stop = Some(flag);
        self
    }

    /// The flag of [`NewEntry::stop_when`].
    pub fn stop_flag(&self) -> Option<&'a std::sync::atomic::AtomicBool> {
        self.stop
    }

    /// The labeller of [`NewEntry::labels`].
    pub fn labeller(&self) -> Option<&'a Labels> {
        self.labels
    }

    /// The same, with the mode `mode` where none is set.
    pub(crate) fn or_mode(mut self, mode: u32) -> Self {
        self.mode.get_or_insert(mode & 0o7777);
        self
    }
}

impl Root<'_> {
    /// Gives the entry just created, open as `fd` (a real descriptor, not
    /// `O_PATH`), the label, owner and mode `how` says. `dir` and `name`
    /// are where it was made (for the guest path the label is looked up
    /// for); `path` is for messages. Called before the entry gets its
    /// final name, so it never appears with the wrong attributes.
    pub(crate) fn set_new_attrs(
        &self,
        fd: BorrowedFd<'_>,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        kind: EntryKind,
        how: &NewEntry,
    ) -> Result<()> {
        self.set_new_label_owner(fd, dir, name, path, kind, how)?;
        let mode = how.mode.unwrap_or_else(|| kind.default_mode());
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode))
            .map_err(|e| self.err(path, "fchmod", e))
    }

    /// The label and the owner of [`Root::set_new_attrs`], not the mode;
    /// the label first, then the owner (a change of owner clears set-id
    /// bits, so the mode comes after both).
    pub(crate) fn set_new_label_owner(
        &self,
        fd: BorrowedFd<'_>,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        kind: EntryKind,
        how: &NewEntry,
    ) -> Result<()> {
        if let Some(labels) = how.labels {
            let guest = self.guest_path_in(dir, name, path);
            labels.label_fd(self, fd, &guest, kind, path)?;
        }
        if let Some(owner) = how.owner {
            nix::unistd::fchownat(
                fd,
                "",
                Some(Uid::from_raw(owner.uid)),
                Some(Gid::from_raw(owner.gid)),
                AtFlags::AT_EMPTY_PATH,
            )
            .map_err(|e| self.err(path, "chown", e))?;
        }
        Ok(())
    }

    /// [`Root::set_new_label_owner`] for the directory just made, open as
    /// the `O_PATH` descriptor `sub` (reopened for the attribute calls
    /// only when there is something to set).
    pub(crate) fn set_new_dir_label_owner(
        &self,
        sub: &OwnedFd,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        how: &NewEntry,
    ) -> Result<()> {
        if how.labels.is_none() && how.owner.is_none() {
            return Ok(());
        }
        let real = super::reopen(sub, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| self.err(path, "open new directory", e))?;
        self.set_new_label_owner(real.as_fd(), dir, name, path, EntryKind::Dir, how)
    }

    /// Sets the owner of the link `name` in `dir` itself (never what it
    /// points to).
    pub(crate) fn chown_link_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        owner: Ownership,
    ) -> Result<()> {
        nix::unistd::fchownat(
            dir.as_fd(),
            name,
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err(path, "chown", e))
    }
}

//! Metadata, permissions, ownership and links inside the image.

use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, Mode};
use nix::unistd::{Gid, Uid};

use super::Root;
use crate::error::Result;

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A block device node.
    BlockDevice,
    /// A character device node.
    CharDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

impl FileKind {
    /// A human name.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "regular file",
            FileKind::Dir => "directory",
            FileKind::Symlink => "symbolic link",
            FileKind::BlockDevice => "block device",
            FileKind::CharDevice => "character device",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
        }
    }
}

/// Metadata of an entry inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
}

impl Metadata {
    pub(crate) fn from_stat(st: &FileStat) -> Metadata {
        let kind = match st.st_mode & nix::libc::S_IFMT {
            nix::libc::S_IFDIR => FileKind::Dir,
            nix::libc::S_IFLNK => FileKind::Symlink,
            nix::libc::S_IFBLK => FileKind::BlockDevice,
            nix::libc::S_IFCHR => FileKind::CharDevice,
            nix::libc::S_IFIFO => FileKind::Fifo,
            nix::libc::S_IFSOCK => FileKind::Socket,
            _ => FileKind::File,
        };
        Metadata {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            nlink: st.st_nlink,
        }
    }

    /// The kind of file.
    pub fn kind(&self) -> FileKind {
        self.kind
    }
    /// Whether it is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == FileKind::File
    }
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }
    /// Whether it is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.kind == FileKind::Symlink
    }
    /// The permission bits (`0o7777` part of the mode).
    pub fn mode(&self) -> u32 {
        self.mode
    }
    /// The owner's numeric id.
    pub fn uid(&self) -> u32 {
        self.uid
    }
    /// The group's numeric id.
    pub fn gid(&self) -> u32 {
        self.gid
    }
    /// The size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }
    /// Whether the size is 0.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
    /// The number of hard links.
    pub fn nlink(&self) -> u64 {
        self.nlink
    }
}

impl Root<'_> {
    fn stat(&self, path: &Path, follow: bool) -> Result<Metadata> {
        let fd = self.resolve(path, follow)?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| self.err(path, "fstat", e))?;
        Ok(Metadata::from_stat(&st))
    }

    /// Metadata of `path`, links followed inside the image.
    pub fn metadata(&self, path: impl AsRef<Path>) -> Result<Metadata> {
        self.stat(path.as_ref(), true)
    }

    /// Metadata of `path` itself (a link is not followed).
    pub fn symlink_metadata(&self, path: impl AsRef<Path>) -> Result<Metadata> {
        self.stat(path.as_ref(), false)
    }

    /// Whether `path` exists (links followed inside the image; a dangling
    /// link does not count).
    pub fn exists(&self, path: impl AsRef<Path>) -> Result<bool> {
        match self.metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(Errno::ENOENT as i32) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets the permission bits of `path` (links followed inside the
    /// image; the change lands on what the link resolves to in the image).
    pub fn set_permissions(&self, path: impl AsRef<Path>, mode: u32) -> Result<()> {
        let path = path.as_ref();
        let fd = self.resolve(path, true)?;
        // The descriptor is not a link (resolved with follow), so chmod
        // through its /proc entry touches exactly that inode.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)).as_str(),
            Mode::from_bits_truncate(mode & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| self.err(path, "chmod", e))
    }

    /// Sets the numeric owner and group of `path` itself (a link is not
    /// followed). `None` leaves one unchanged.
    pub fn set_owner(
        &self,
        path: impl AsRef<Path>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        let path = path.as_ref();
        let fd = self.resolve(path, false)?;
        nix::unistd::fchownat(
            fd.as_fd(),
            "",
            uid.map(Uid::from_raw),
            gid.map(Gid::from_raw),
            AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| self.err(path, "chown", e))
    }

    /// Creates a symbolic link at `link` whose text is `target` (stored as
    /// given: it is resolved inside the image whenever diskmount follows it).
    pub fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<()> {
        let link = link.as_ref();
        let (dir, name) = self.parent(link)?;
        nix::unistd::symlinkat(target.as_ref(), dir.as_fd(), name.as_os_str())
            .map_err(|e| self.err(link, "symlink", e))
    }

    /// The text of the symbolic link at `path`.
    pub fn read_link(&self, path: impl AsRef<Path>) -> Result<std::path::PathBuf> {
        let path = path.as_ref();
        let (dir, name) = self.parent(path)?;
        nix::fcntl::readlinkat(dir.as_fd(), name.as_os_str())
            .map(Into::into)
            .map_err(|e| self.err(path, "readlink", e))
    }
}

//! Copying trees between the host and the image.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::libc;
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};

use super::Root;
use super::owner::NewEntry;
use crate::error::{Error, Result, Step};

/// The mode bits [`Root::copy_out`] keeps: permissions and the sticky
/// bit, not setuid or setgid.
pub const COPY_OUT_MODE: u32 = 0o1777;

impl Root<'_> {
    /// Copies the host file or directory tree `host` into the directory
    /// `image_dir` of the image (created if missing), keeping modes; host
    /// symbolic links are copied as links, never followed. Returns the bytes
    /// copied.
    ///
    /// `image_dir` is resolved inside the image like every other path
    /// (links in it followed inside the image). Below it, each entry is
    /// made relative to the descriptor of its directory, by its single name
    /// and never through a link (`O_NOFOLLOW`, `O_EXCL`); an entry that
    /// already exists is resolved inside the image as before. Each file is
    /// written to a temporary name and renamed into place, so a link at the
    /// name is replaced, not followed.
    ///
    /// The copy is durable when this returns: one `syncfs` of the image's
    /// filesystem at the end, not an `fsync` per file. A crash during the
    /// copy can leave files of the tree empty or partly written, as with
    /// `cp -a`.
    pub fn copy_in(&self, host: impl AsRef<Path>, image_dir: impl AsRef<Path>) -> Result<u64> {
        self.copy_in_with(host, image_dir, &NewEntry::new())
    }

    /// [`Root::copy_in`], with what `how` says for everything it creates:
    /// its owner and SELinux label on every file, directory (`image_dir`
    /// and its missing parents included) and link (links get the owner,
    /// not a label), and its mode on every regular file (directories made
    /// get the host's modes, or `0o755` for the missing parents of
    /// `image_dir`). Directories that already exist keep their mode, owner
    /// and label.
    pub fn copy_in_with(
        &self,
        host: impl AsRef<Path>,
        image_dir: impl AsRef<Path>,
        how: &NewEntry,
    ) -> Result<u64> {
        let host = host.as_ref();
        let image_dir = image_dir.as_ref();
        let dirs = NewEntry::new().mode(0o755).labels(how.labeller());
        let dirs = match how.ownership() {
            Some(o) => dirs.owner(o),
            None => dirs,
        };
        self.mkdir_all_with(image_dir, &dirs)?;
        let name = host
            .file_name()
            .ok_or_else(|| Error::invalid(Step::Access, host, "names no file to copy"))?;
        let dir = self.resolve(image_dir, true)?;
        let total = self.copy_in_at(host, &dir, name, &image_dir.join(name), how)?;
        let sync = super::reopen(&self.fd, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| self.err(image_dir, "open image root", e))?;
        nix::unistd::syncfs(&sync).map_err(|e| self.err(image_dir, "syncfs", e))?;
        Ok(total)
    }

    /// Copies `host` to the entry `name` of the image directory `dir`
    /// (`dest` is its path in the image, for messages and for resolving an
    /// entry that already exists).
    fn copy_in_at(
        &self,
        host: &Path,
        dir: &OwnedFd,
        name: &OsStr,
        dest: &Path,
        how: &NewEntry,
    ) -> Result<u64> {
        if super::stop::asked(how.stop_flag()) {
            return Err(super::stop::stopped(dest));
        }
        let meta = std::fs::symlink_metadata(host)
            .map_err(|e| Error::os(Step::Access, host, "lstat", e))?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(host)
                .map_err(|e| Error::os(Step::Access, host, "readlink", e))?;
            match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EISDIR) => unlinkat(dir.as_fd(), name, UnlinkatFlags::RemoveDir)
                    .map_err(|e| self.err(dest, "rmdir", e))?,
                Err(e) => return Err(self.err(dest, "unlink", e)),
            }
            symlinkat(target.as_path(), dir.as_fd(), name)
                .map_err(|e| self.err(dest, "symlink", e))?;
            if let Some(o) = how.ownership() {
                self.chown_link_at(dir, name, dest, o)?;
            }
            Ok(0)
        } else if ft.is_dir() {
            let made = mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700));
            let made_now = made.is_ok();
            let sub = match made {
                // Made just now: open it by its name, never through a link.
                Ok(()) => {
                    let sub = openat(
                        dir.as_fd(),
                        name,
                        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| self.err(dest, "open new directory", e))?;
                    self.set_new_dir_label_owner(&sub, dir, name, dest, how)?;
                    sub
                }
                // There already: resolved inside the image (a link to a
                // directory is followed there, as mkdir_all does).
                Err(Errno::EEXIST) => {
                    let fd = self.resolve(dest, true)?;
                    let st = fstat(&fd).map_err(|e| self.err(dest, "fstat", e))?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                        return Err(self.refuse(dest, "exists and is not a directory"));
                    }
                    fd
                }
                Err(e) => return Err(self.err(dest, "mkdir", e)),
            };
            let mut total = 0;
            let mut entries: Vec<_> = std::fs::read_dir(host)
                .map_err(|e| Error::os(Step::Access, host, "read directory", e))?
                .collect::<io::Result<_>>()
                .map_err(|e| Error::os(Step::Access, host, "read directory", e))?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let child = entry.file_name();
                total += self.copy_in_at(&entry.path(), &sub, &child, &dest.join(&child), how)?;
            }
            // Only a directory made here gets the host's mode: one the
            // guest had keeps its own (a guest's 1777 /tmp stays so). The
            // descriptor is a directory inside the image (not a link):
            // chmod through its /proc entry touches exactly that inode.
            if made_now {
                fchmodat(
                    nix::fcntl::AT_FDCWD,
                    format!("/proc/self/fd/{}", sub.as_raw_fd()).as_str(),
                    Mode::from_bits_truncate(mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| self.err(dest, "chmod", e))?;
            }
            Ok(total)
        } else if ft.is_file() {
            let mut src = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(host)
                .map_err(|e| Error::os(Step::Access, host, "open", e))?;
            self.write_file_at(dir, name, dest, &mut src, &how.or_mode(mode), false)
        } else {
            Err(Error::invalid(
                Step::Access,
                host,
                "is a device node, fifo or socket; only files, directories and links are copied",
            ))
        }
    }

    /// Copies the file, link or directory tree at `image_path` out of the
    /// image to `host` (which must not exist; a link there is never
    /// followed). Links inside the image are copied as links; device nodes,
    /// fifos and sockets are refused. Modes are kept but for the setuid
    /// and setgid bits ([`COPY_OUT_MODE`]): a guest file never becomes a
    /// set-id program on the host. Returns the bytes copied.
    pub fn copy_out(&self, image_path: impl AsRef<Path>, host: impl AsRef<Path>) -> Result<u64> {
        self.copy_out_until(image_path, host, None)
    }

    /// [`Root::copy_out`] that stops once `stop` is set (looked at between
    /// entries and every 16 MiB of a file): the host file being written is
    /// removed, and the copy fails with [`crate::ErrorKind::Interrupted`]
    /// naming the entry it stopped at.
    pub fn copy_out_until(
        &self,
        image_path: impl AsRef<Path>,
        host: impl AsRef<Path>,
        stop: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<u64> {
        let image_path = image_path.as_ref();
        let host = host.as_ref();
        if super::stop::asked(stop) {
            return Err(super::stop::stopped(image_path));
        }
        let meta = self.symlink_metadata(image_path)?;
        if meta.is_symlink() {
            let target = self.read_link(image_path)?;
            std::os::unix::fs::symlink(&target, host)
                .map_err(|e| Error::os(Step::Access, host, "symlink", e))?;
            Ok(0)
        } else if meta.is_dir() {
            std::fs::create_dir(host).map_err(|e| Error::os(Step::Access, host, "mkdir", e))?;
            let mut total = 0;
            let mut names = self.read_dir(image_path)?;
            names.sort();
            for name in names {
                total += self.copy_out_until(image_path.join(&name), host.join(&name), stop)?;
            }
            std::fs::set_permissions(
                host,
                std::fs::Permissions::from_mode(meta.mode() & COPY_OUT_MODE),
            )
            .map_err(|e| Error::os(Step::Access, host, "chmod", e))?;
            Ok(total)
        } else if meta.is_file() {
            let mut src = self.open_file(image_path)?;
            let mut dst: File = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(meta.mode() & 0o777)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(host)
                .map_err(|e| Error::os(Step::Access, host, "create", e))?;
            let n = match super::stop::copy(&mut src, &mut dst, stop) {
                Ok(n) => n,
                Err(e) => {
                    drop(dst);
                    // Never a half-copied file on the host.
                    let _ = std::fs::remove_file(host);
                    return Err(if e.kind() == io::ErrorKind::Interrupted {
                        super::stop::stopped(image_path)
                    } else {
                        Error::os(Step::Access, host, "copy", e)
                    });
                }
            };
            dst.set_permissions(std::fs::Permissions::from_mode(meta.mode() & COPY_OUT_MODE))
                .map_err(|e| Error::os(Step::Access, host, "chmod", e))?;
            Ok(n)
        } else {
            Err(self.refuse(
                image_path,
                format!(
                    "is a {}; only files, directories and links are copied out",
                    meta.kind().as_str()
                ),
            ))
        }
    }
}

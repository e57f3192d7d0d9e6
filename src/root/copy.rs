//! Copying trees between the host and the image.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::libc;

use super::Root;
use crate::error::{Error, Result, Step};

impl Root<'_> {
    /// Copies the host file or directory tree `host` into the directory
    /// `image_dir` of the image (created if missing), keeping modes; host
    /// symbolic links are copied as links, never followed. Returns the bytes
    /// copied.
    pub fn copy_in(&self, host: impl AsRef<Path>, image_dir: impl AsRef<Path>) -> Result<u64> {
        let host = host.as_ref();
        let image_dir = image_dir.as_ref();
        self.mkdir_all(image_dir, 0o755)?;
        let name = host
            .file_name()
            .ok_or_else(|| Error::invalid(Step::Access, host, "names no file to copy"))?;
        self.copy_in_entry(host, &image_dir.join(name))
    }

    fn copy_in_entry(&self, host: &Path, dest: &Path) -> Result<u64> {
        let meta = std::fs::symlink_metadata(host)
            .map_err(|e| Error::os(Step::Access, host, "lstat", e))?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(host)
                .map_err(|e| Error::os(Step::Access, host, "readlink", e))?;
            if self.symlink_metadata(dest).is_ok() {
                self.remove(dest)?;
            }
            self.symlink(target, dest)?;
            Ok(0)
        } else if ft.is_dir() {
            self.mkdir_all(dest, mode)?;
            let mut total = 0;
            let mut entries: Vec<_> = std::fs::read_dir(host)
                .map_err(|e| Error::os(Step::Access, host, "read directory", e))?
                .collect::<io::Result<_>>()
                .map_err(|e| Error::os(Step::Access, host, "read directory", e))?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                total += self.copy_in_entry(&entry.path(), &dest.join(entry.file_name()))?;
            }
            self.set_permissions(dest, mode)?;
            Ok(total)
        } else if ft.is_file() {
            let mut src = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(host)
                .map_err(|e| Error::os(Step::Access, host, "open", e))?;
            self.write_from(dest, &mut src, mode)
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
    /// fifos and sockets are refused. Returns the bytes copied.
    pub fn copy_out(&self, image_path: impl AsRef<Path>, host: impl AsRef<Path>) -> Result<u64> {
        let image_path = image_path.as_ref();
        let host = host.as_ref();
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
                total += self.copy_out(image_path.join(&name), host.join(&name))?;
            }
            std::fs::set_permissions(host, std::fs::Permissions::from_mode(meta.mode()))
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
            let n = io::copy(&mut src, &mut dst)
                .map_err(|e| Error::os(Step::Access, host, "copy", e))?;
            dst.set_permissions(std::fs::Permissions::from_mode(meta.mode()))
                .map_err(|e| Error::os(Step::Access, host, "chmod", e))?;
            let _ = dst.metadata().map(|m| m.ino());
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

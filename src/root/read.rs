//! Reading a file inside the image.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use nix::fcntl::OFlag;

use super::{Root, reopen};
use crate::error::Result;

impl Root<'_> {
    /// Opens the regular file at `path` for reading. Links are followed
    /// inside the image; device nodes, fifos and sockets are refused (a
    /// fifo would block, a device would read the host's hardware).
    pub fn open_file(&self, path: impl AsRef<Path>) -> Result<File> {
        let path = path.as_ref();
        let fd = self.resolve(path, true)?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| self.err(path, "fstat", e))?;
        let meta = super::meta::Metadata::from_stat(&st);
        if !meta.is_file() {
            return Err(self.refuse(
                path,
                format!("is not a regular file (it is a {})", meta.kind().as_str()),
            ));
        }
        let file = reopen(&fd, OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .map_err(|e| self.err(path, "open", e))?;
        Ok(File::from(file))
    }

    /// Reads the whole regular file at `path`.
    pub fn read(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        let path = path.as_ref();
        let mut out = Vec::new();
        self.open_file(path)?
            .read_to_end(&mut out)
            .map_err(|e| self.err(path, "read", e))?;
        Ok(out)
    }

    /// Reads the regular file at `path` as UTF-8 text.
    pub fn read_to_string(&self, path: impl AsRef<Path>) -> Result<String> {
        let path = path.as_ref();
        String::from_utf8(self.read(path)?)
            .map_err(|e| self.refuse(path, format!("is not UTF-8 text: {e}")))
    }
}

//! [`ReadAt`]: bytes at offsets with a known size, the only way the
//! parsers (image formats, partition tables, superblocks, volume metadata)
//! see an image, so that each runs unchanged on a file, a device or a byte
//! slice (unit tests, fuzzing).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;

/// Bytes at offsets, with a known size: an image file, or a byte slice.
pub trait ReadAt {
    /// The size in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Reads into `buf` from `offset` as much as there is; fewer bytes than
    /// `buf` holds only at the end.
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for File {
    fn size(&self) -> io::Result<u64> {
        let meta = self.metadata()?;
        if meta.file_type().is_block_device() {
            return crate::sys::block::getsize64(std::os::fd::AsFd::as_fd(self))
                .map_err(io::Error::from);
        }
        Ok(meta.len())
    }

    /// `pread` until `buf` is full or the file ends.
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut filled = 0;
        while filled < buf.len() {
            let at = offset.saturating_add(filled as u64);
            match self.read_at(&mut buf[filled..], at) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

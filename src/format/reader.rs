//! The only way the format parsers see bytes: positional reads of a known
//! size, each bounded, from a file or from a byte slice.
//!
//! Every parser is generic over [`ReadAt`], so it runs unchanged on a
//! `&[u8]` (unit tests, fuzzing) and on a `File`. No read is larger than
//! [`MAX_READ`], and a read that a header asks for is checked against the
//! file size before any buffer is allocated, so a header claiming a
//! gigabyte-long table costs nothing.

use std::path::Path;

use crate::error::{Error, Result, Step};
use crate::read_at::ReadAt;

/// The most any single read of a format parser asks for: one qcow2 cluster
/// of the largest size (2 MiB).
pub const MAX_READ: u64 = 2 << 20;

/// An image being parsed: the source, its size, and the path that every
/// error names.
pub(crate) struct Src<'a, R: ReadAt + ?Sized> {
    r: &'a R,
    /// The size of the image file in bytes.
    pub(crate) size: u64,
    /// The image path, for messages and for resolving relative names.
    pub(crate) path: &'a Path,
}

impl<'a, R: ReadAt + ?Sized> Src<'a, R> {
    pub(crate) fn new(r: &'a R, path: &'a Path) -> Result<Self> {
        let size = r
            .size()
            .map_err(|e| Error::os(Step::Probe, path, "stat the image", e))?;
        Ok(Src { r, size, path })
    }

    /// An [`Error::Invalid`] at [`Step::Probe`] naming the image.
    pub(crate) fn refuse(&self, reason: impl Into<String>) -> Error {
        Error::invalid_image(Step::Probe, self.path, reason)
    }

    /// Checks that bytes `offset..offset + len` lie inside the file.
    pub(crate) fn within(&self, offset: u64, len: u64, what: &str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(self.refuse(format!(
                "the image is inconsistent: {what} (bytes {offset}..{}) lies beyond the end \
                 of the {}-byte file",
                u128::from(offset) + u128::from(len),
                self.size
            ))),
        }
    }

    /// Reads exactly bytes `offset..offset + len`, which must lie inside
    /// the file and be at most [`MAX_READ`] long.
    pub(crate) fn read(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        if len > MAX_READ {
            return Err(self.refuse(format!(
                "{what} claims {len} bytes, more than diskmount reads for any header \
                 ({MAX_READ} bytes)"
            )));
        }
        self.within(offset, len, what)?;
        let mut buf = vec![0; len as usize];
        let n = self.fill(&mut buf, offset, what)?;
        if n < buf.len() {
            return Err(self.refuse(format!(
                "{what}: the file ended after {n} of {len} bytes (did it shrink while being read?)"
            )));
        }
        Ok(buf)
    }

    /// Reads up to `len` bytes from `offset` (at most [`MAX_READ`]): fewer
    /// where the file ends.
    pub(crate) fn read_clipped(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        let len = len.min(MAX_READ).min(self.size.saturating_sub(offset));
        let mut buf = vec![0; len as usize];
        let n = self.fill(&mut buf, offset, what)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn fill(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<usize> {
        self.r
            .read_at_most(buf, offset)
            .map_err(|e| Error::os(Step::Probe, self.path, format!("read {what}"), e))
    }
}

/// `N` bytes of `b` from `off`, zeros where `b` ends first.
fn field<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0; N];
    if let Some(s) = off.checked_add(N).and_then(|end| b.get(off..end)) {
        a.copy_from_slice(s);
    }
    a
}

pub(crate) fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes(field(b, off))
}

pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(field(b, off))
}

pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(field(b, off))
}

pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(field(b, off))
}

pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(field(b, off))
}

pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(field(b, off))
}

/// `b` up to its first NUL byte, as C code sees a string.
pub(crate) fn c_str(b: &[u8]) -> &[u8] {
    let end = memchr::memchr(0, b).unwrap_or(b.len());
    &b[..end]
}

/// The bytes of a name stored in an image, as a host path.
pub(crate) fn path_of(name: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name))
}

/// UTF-16 code units (little- or big-endian) up to the first NUL, as a
/// string; unpaired surrogates become U+FFFD.
pub(crate) fn utf16(b: &[u8], big_endian: bool) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| {
            let pair = [c[0], c[1]];
            if big_endian {
                u16::from_be_bytes(pair)
            } else {
                u16::from_le_bytes(pair)
            }
        })
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// A Windows path stored in a VHD or VHDX parent locator, as a host path:
/// backslashes become slashes and a leading `.\` goes.
pub(crate) fn windows_path(name: &str) -> std::path::PathBuf {
    let name = name.replace('\\', "/");
    let name = name.strip_prefix("./").unwrap_or(&name);
    std::path::PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_read_at_offsets_and_stop_at_the_end() {
        let data: &[u8] = b"0123456789";
        let mut buf = [0u8; 4];
        assert_eq!(data.read_at_most(&mut buf, 8).unwrap(), 2);
        assert_eq!(&buf[..2], b"89");
        assert_eq!(data.read_at_most(&mut buf, 10).unwrap(), 0);
        assert_eq!(data.read_at_most(&mut buf, u64::MAX).unwrap(), 0);
    }

    #[test]
    fn reads_are_bounded_and_checked_against_the_size() {
        let data = [7u8; 100];
        let src = Src::new(&data[..], Path::new("/img")).unwrap();
        assert_eq!(src.read(10, 20, "x").unwrap(), vec![7; 20]);
        let err = src.read(90, 20, "the table").unwrap_err().to_string();
        assert!(err.contains("the table (bytes 90..110)"), "{err}");
        assert!(err.contains("/img"), "{err}");
        let err = src.read(0, MAX_READ + 1, "a huge table").unwrap_err();
        assert!(
            err.to_string().contains("more than diskmount reads"),
            "{err}"
        );
        assert!(src.within(u64::MAX, 2, "wrapping").is_err());
        assert_eq!(src.read_clipped(95, 1000, "x").unwrap().len(), 5);
        assert!(src.read_clipped(200, 10, "x").unwrap().is_empty());
    }

    #[test]
    fn fields_outside_the_buffer_read_as_zero() {
        let b = [1u8, 2, 3];
        assert_eq!(be16(&b, 1), 0x0203);
        assert_eq!(be32(&b, 1), 0);
        assert_eq!(le64(&b, usize::MAX), 0);
        assert_eq!(c_str(b"ab\0cd"), b"ab");
        assert_eq!(utf16(b"a\0b\0\0\0c\0", false), "ab");
        assert_eq!(utf16(b"\0a\0b", true), "ab");
        assert_eq!(windows_path(".\\dir\\p.vhd"), Path::new("dir/p.vhd"));
    }
}

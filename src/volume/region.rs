//! A window of a device: the bytes of one partition, read through the
//! [`ReadAt`](crate::format::ReadAt) of the whole disk.

use std::io;

use super::ReadAt;

/// The `size` bytes of `inner` that start at `offset` (a partition of a
/// disk), as a [`ReadAt`](crate::format::ReadAt) of its own: reads past its end read nothing.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a, R: ReadAt + ?Sized> {
    inner: &'a R,
    offset: u64,
    size: u64,
}

impl<'a, R: ReadAt + ?Sized> Region<'a, R> {
    /// The bytes `offset..offset + size` of `inner`.
    pub fn new(inner: &'a R, offset: u64, size: u64) -> Self {
        Region {
            inner,
            offset,
            size,
        }
    }
}

impl<R: ReadAt + ?Sized> ReadAt for Region<'_, R> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let left = self.size.saturating_sub(offset);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let Some(at) = self.offset.checked_add(offset) else {
            return Ok(0);
        };
        self.inner.read_at_most(&mut buf[..n], at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_reads_its_own_bytes_only() {
        let disk: &[u8] = b"0123456789";
        let r = Region::new(disk, 3, 4);
        let mut buf = [0u8; 8];
        assert_eq!(r.read_at_most(&mut buf, 0).unwrap(), 4);
        assert_eq!(&buf[..4], b"3456");
        assert_eq!(r.read_at_most(&mut buf, 3).unwrap(), 1);
        assert_eq!(r.read_at_most(&mut buf, 9).unwrap(), 0);
        assert_eq!(
            Region::new(disk, u64::MAX, 4)
                .read_at_most(&mut buf, 1)
                .unwrap(),
            0
        );
    }
}

//! A logical volume's bytes read through its pieces on the disk, without
//! mapping it: for probing the filesystem on it.

use std::io;

use super::discover::Placed;
use crate::format::ReadAt;

/// Logical volume bytes as a [`ReadAt`]: LV offset `o` is read from the
/// disk at the offset of the piece holding it.
#[derive(Debug, Clone, Copy)]
pub struct LvReader<'a, R: ReadAt + ?Sized> {
    disk: &'a R,
    pieces: &'a [Placed],
}

impl<'a, R: ReadAt + ?Sized> LvReader<'a, R> {
    /// The LV made of `pieces` (in LV order, as
    /// [`FoundVg::place`](super::FoundVg::place) gives them) on `disk`.
    pub fn new(disk: &'a R, pieces: &'a [Placed]) -> Self {
        LvReader { disk, pieces }
    }
}

impl<R: ReadAt + ?Sized> ReadAt for LvReader<'_, R> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.pieces.iter().map(|p| p.len).sum())
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            let at = offset.saturating_add(filled as u64);
            let Some(p) = self
                .pieces
                .iter()
                .find(|p| p.lv_offset <= at && at - p.lv_offset < p.len)
            else {
                break;
            };
            let within = at - p.lv_offset;
            let n = usize::try_from(p.len - within)
                .unwrap_or(usize::MAX)
                .min(buf.len() - filled);
            let Some(disk_at) = p.disk_offset.checked_add(within) else {
                break;
            };
            let got = self
                .disk
                .read_at_most(&mut buf[filled..filled + n], disk_at)?;
            filled += got;
            if got < n {
                break;
            }
        }
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_across_pieces_in_lv_order() {
        let disk: &[u8] = b"0123456789abcdef";
        let piece = |lv_offset, disk_offset, len| Placed {
            lv_offset,
            disk_offset,
            len,
            pv: "pv0".into(),
        };
        let pieces = [piece(0, 10, 3), piece(3, 2, 4)];
        let lv = LvReader::new(disk, &pieces);
        assert_eq!(lv.size().unwrap(), 7);
        let mut buf = [0u8; 10];
        assert_eq!(lv.read_at_most(&mut buf, 0).unwrap(), 7);
        assert_eq!(&buf[..7], b"abc2345");
        assert_eq!(lv.read_at_most(&mut buf, 5).unwrap(), 2);
        assert_eq!(&buf[..2], b"45");
        assert_eq!(lv.read_at_most(&mut buf, 7).unwrap(), 0);
    }
}

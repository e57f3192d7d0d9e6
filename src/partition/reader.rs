//! The view of a device that the `gpt` crate reads the table through:
//! bounded in how much it reads, optionally blind to one sector, never
//! writing. Small reads are served from one cached 4 KiB block: the crate
//! reads one 128-byte entry at a time, and a system call per entry made
//! inspecting a GPT cost 143 reads instead of 19.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;

use crate::read_at::ReadAt;

/// The block size of the read cache.
const BLOCK: u64 = 4096;

/// A read-only, positional view of `src` (a device, a file, a byte slice)
/// of `size` bytes that fails once
/// `budget` bytes have been read (so that a crafted table claiming millions
/// of entries costs bounded time) and reads zeros in the `hidden` ranges (so that a
/// parser can be made to skip a damaged primary GPT header).
pub(crate) struct TableReader<'a, R: ReadAt + ?Sized> {
    src: &'a R,
    size: u64,
    pos: u64,
    budget: u64,
    hidden: Vec<Range<u64>>,
    /// The last block read: its offset and the bytes the device gave.
    cache: Option<(u64, Vec<u8>)>,
}

// The gpt crate wants `Debug`; the source need not be.
impl<R: ReadAt + ?Sized> fmt::Debug for TableReader<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableReader")
            .field("size", &self.size)
            .field("pos", &self.pos)
            .field("budget", &self.budget)
            .field("hidden", &self.hidden)
            .finish_non_exhaustive()
    }
}

impl<'a, R: ReadAt + ?Sized> TableReader<'a, R> {
    pub(crate) fn new(src: &'a R, size: u64, budget: u64) -> Self {
        TableReader {
            src,
            size,
            pos: 0,
            budget,
            hidden: Vec::new(),
            cache: None,
        }
    }

    pub(crate) fn hide(mut self, range: Range<u64>) -> Self {
        self.hidden.push(range);
        self
    }
}

impl<R: ReadAt + ?Sized> Read for TableReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.size.saturating_sub(self.pos));
        if want == 0 {
            return Ok(0);
        }
        if want > self.budget {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the partition table asks for more data than any sane table holds",
            ));
        }
        let n = if want >= BLOCK {
            self.src.read_at_most(&mut buf[..want as usize], self.pos)?
        } else {
            let start = self.pos - self.pos % BLOCK;
            if self.cache.as_ref().is_none_or(|(at, _)| *at != start) {
                let mut block = vec![0u8; BLOCK.min(self.size - start) as usize];
                let got = self.src.read_at_most(&mut block, start)?;
                block.truncate(got);
                self.cache = Some((start, block));
            }
            let (_, block) = self.cache.as_ref().expect("filled above");
            let from = (self.pos - start) as usize;
            let n = (want as usize).min(block.len().saturating_sub(from));
            buf[..n].copy_from_slice(&block[from..from + n]);
            n
        };
        // Each hidden range's overlap with what was read, zeroed at once (a
        // test per byte was most of reading a GPT's entry array, and more
        // under the fuzzers' instrumentation).
        let end = self.pos + n as u64;
        for hidden in &self.hidden {
            let (from, to) = (hidden.start.max(self.pos), hidden.end.min(end));
            if from < to {
                buf[(from - self.pos) as usize..(to - self.pos) as usize].fill(0);
            }
        }
        self.budget -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: ReadAt + ?Sized> Seek for TableReader<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            pos.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

impl<R: ReadAt + ?Sized> Write for TableReader<'_, R> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "partition tables are only read",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hidden ranges read as zeros, exactly their bytes, in reads of any
    /// size and alignment (small ones through the cached block).
    #[test]
    fn hidden_ranges_read_as_zeros() {
        let src: Vec<u8> = (0..10_000u32).map(|i| (i % 251 + 1) as u8).collect();
        let hidden = [100..228u64, 4090..4100, 9990..20_000];
        for chunk in [1usize, 7, 128, 4096, 5000] {
            let mut r = TableReader::new(src.as_slice(), src.len() as u64, u64::MAX);
            for h in &hidden {
                r = r.hide(h.clone());
            }
            let mut got = Vec::new();
            let mut buf = vec![0u8; chunk];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let want: Vec<u8> = src
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if hidden.iter().any(|h| h.contains(&(i as u64))) {
                        0
                    } else {
                        *b
                    }
                })
                .collect();
            assert_eq!(got, want, "reads of {chunk}");
        }
    }
}

//! The view of a device that the partition-table crates read through:
//! bounded in how much it reads, optionally blind to one sector, never
//! writing. Small reads are served from one cached 4 KiB block: the table
//! crates read field by field (mbrman one byte at a time, gpt one 128-byte
//! entry at a time), and a system call per byte cost about a millisecond
//! per MBR chain.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// The block size of the read cache.
const BLOCK: u64 = 4096;

/// A read-only, positional view of `file` of `size` bytes that fails once
/// `budget` bytes have been read (so that a crafted table claiming millions
/// of entries costs bounded time) and reads zeros in the `hidden` ranges (so that a
/// parser can be made to skip a damaged primary GPT header).
#[derive(Debug)]
pub(crate) struct TableReader<'a> {
    file: &'a File,
    size: u64,
    pos: u64,
    budget: u64,
    hidden: Vec<Range<u64>>,
    /// The last block read: its offset and the bytes the device gave.
    cache: Option<(u64, Vec<u8>)>,
}

impl<'a> TableReader<'a> {
    pub(crate) fn new(file: &'a File, size: u64, budget: u64) -> Self {
        TableReader {
            file,
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

impl Read for TableReader<'_> {
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
            self.file.read_at(&mut buf[..want as usize], self.pos)?
        } else {
            let start = self.pos - self.pos % BLOCK;
            if self.cache.as_ref().is_none_or(|(at, _)| *at != start) {
                let mut block = vec![0u8; BLOCK.min(self.size - start) as usize];
                let got = self.file.read_at(&mut block, start)?;
                block.truncate(got);
                self.cache = Some((start, block));
            }
            let (_, block) = self.cache.as_ref().expect("filled above");
            let from = (self.pos - start) as usize;
            let n = (want as usize).min(block.len().saturating_sub(from));
            buf[..n].copy_from_slice(&block[from..from + n]);
            n
        };
        for hidden in &self.hidden {
            for (i, b) in buf[..n].iter_mut().enumerate() {
                if hidden.contains(&(self.pos + i as u64)) {
                    *b = 0;
                }
            }
        }
        self.budget -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for TableReader<'_> {
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

impl Write for TableReader<'_> {
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

//! Copies that a caller can stop: a flag, checked between chunks and
//! entries, that a signal handler (Ctrl-C in the command-line tool) sets.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, ErrorKind, Step};

/// How much is copied between two looks at the flag: large enough that
/// the kernel's copy (`copy_file_range`) still does the work, small enough
/// that a stop takes effect within a fraction of a second.
const CHUNK: u64 = 16 << 20;

/// Whether `stop` says to stop.
pub(crate) fn asked(stop: Option<&AtomicBool>) -> bool {
    stop.is_some_and(|s| s.load(Ordering::Relaxed))
}

/// The error of a copy stopped at `path` (the entry it was on, which is
/// not written: a file being written is removed, never left half-written).
pub(crate) fn stopped(path: &Path) -> Error {
    Error::refused(
        ErrorKind::Interrupted,
        Step::Access,
        path,
        "the copy was interrupted here: this entry and the ones after it (in name order) \
         were not copied; the ones before it were",
    )
}

/// `std::io::copy` in chunks, with a look at `stop` after each (without a
/// flag, one call). A stop is an `Interrupted` I/O error.
pub(crate) fn copy<R: Read + ?Sized, W: Write + ?Sized>(
    reader: &mut R,
    writer: &mut W,
    stop: Option<&AtomicBool>,
) -> io::Result<u64> {
    let Some(stop) = stop else {
        return io::copy(reader, writer);
    };
    let mut total = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        let n = io::copy(&mut (&mut *reader).take(CHUNK), writer)?;
        total += n;
        if n < CHUNK {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_everything_without_a_stop_and_stops_when_asked() {
        let data = vec![7u8; 100];
        let mut out = Vec::new();
        let flag = AtomicBool::new(false);
        assert_eq!(copy(&mut &data[..], &mut out, Some(&flag)).unwrap(), 100);
        assert_eq!(out, data);
        flag.store(true, Ordering::Relaxed);
        let e = copy(&mut &data[..], &mut Vec::new(), Some(&flag)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(asked(Some(&flag)) && !asked(None));
    }
}

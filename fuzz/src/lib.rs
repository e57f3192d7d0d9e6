//! What the fuzz targets share: the image a fuzz input stands for, and the
//! checks every refusal must pass.
//!
//! An input is the image file itself, or, when it starts with [`SPARSE`],
//! a sparse image: a file size and the few non-zero stretches of a file
//! that is mostly zeros (a VHDX or a GPT disk has headers megabytes apart),
//! so that such seeds stay a few KiB and the fuzzer mutates what matters.
//!
//! Sparse layout, little-endian: `SPARSE` (8 bytes), the file size (u64),
//! then records of offset (u64), length (u32) and that many bytes; a record
//! cut short by the end of the input keeps what is there. Bytes no record
//! covers read as zeros; where records overlap, the later one wins.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::path::Path;

use diskmount::format::ReadAt;
use diskmount::{Error, Step};

/// The largest single allocation a target may make: 256 MiB, libFuzzer's
/// `-malloc_limit_mb` in `fuzz/run`. libFuzzer enforces its own limit only
/// through a sanitizer's allocator hooks; the targets fuzz without one, so
/// this allocator enforces it in every build. A parser that sizes a buffer
/// from a header field (an image-sized table) aborts here, and libFuzzer
/// keeps the input.
pub const MALLOC_LIMIT: usize = 256 << 20;

/// The system allocator, with [`MALLOC_LIMIT`] on every allocation.
pub struct Capped;

impl Capped {
    fn check(size: usize) {
        if size > MALLOC_LIMIT {
            // No allocation and no panic here: a fixed message written
            // as it is (an error writing it is ignored), then abort
            // (libFuzzer's deadly-signal handler saves the input).
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"==ERROR: diskmount-fuzz: out-of-memory (one allocation over 256 MiB)\n",
            );
            std::process::abort();
        }
    }
}

// SAFETY: every call is passed to `System` unchanged after a size check that
// allocates nothing; `System` upholds the `GlobalAlloc` contract.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: the caller's `layout` contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: as in `dealloc`; `new_size` is the caller's, checked above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// The magic of a sparse input.
pub const SPARSE: &[u8; 8] = b"DMSPARSE";

/// The largest file a sparse input may claim: big enough for a GPT's
/// backup header far away, small enough that no parser's arithmetic is
/// tested only on absurd sizes.
pub const MAX_SPARSE_SIZE: u64 = 1 << 40;

/// The path every target names the image by; every error must name it.
pub const PATH: &str = "/fuzz/image";

/// The image a fuzz input stands for.
pub enum Image<'a> {
    /// The input is the file.
    Plain(&'a [u8]),
    /// A sparse file: its size and its non-zero stretches.
    Sparse {
        /// The file size.
        size: u64,
        /// (offset, bytes), in input order.
        records: Vec<(u64, &'a [u8])>,
    },
}

impl<'a> Image<'a> {
    /// Decodes a fuzz input.
    pub fn new(data: &'a [u8]) -> Image<'a> {
        let Some(rest) = data.strip_prefix(SPARSE.as_slice()) else {
            return Image::Plain(data);
        };
        let (size, mut rest) = take_u64(rest);
        let mut records = Vec::new();
        while rest.len() >= 12 {
            let (offset, r) = take_u64(rest);
            let (len, r) = r.split_at(4);
            let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
            let (bytes, r) = r.split_at(len.min(r.len()));
            records.push((offset, bytes));
            rest = r;
        }
        Image::Sparse {
            size: size.min(MAX_SPARSE_SIZE),
            records,
        }
    }

    /// The file size.
    pub fn len(&self) -> u64 {
        match self {
            Image::Plain(d) => d.len() as u64,
            Image::Sparse { size, .. } => *size,
        }
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn take_u64(b: &[u8]) -> (u64, &[u8]) {
    let mut v = [0u8; 8];
    let n = b.len().min(8);
    v[..n].copy_from_slice(&b[..n]);
    (u64::from_le_bytes(v), &b[n..])
}

impl ReadAt for Image<'_> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len())
    }

    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let records = match self {
            Image::Plain(d) => return d.read_at_most(buf, offset),
            Image::Sparse { records, .. } => records,
        };
        let n = usize::try_from(self.len().saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let buf = &mut buf[..n];
        buf.fill(0);
        let end = offset + n as u64;
        for &(at, bytes) in records {
            let rec_end = at.saturating_add(bytes.len() as u64);
            let (lo, hi) = (at.max(offset), rec_end.min(end));
            if lo < hi {
                let (dst, src) = ((lo - offset) as usize, (lo - at) as usize);
                let len = (hi - lo) as usize;
                buf[dst..dst + len].copy_from_slice(&bytes[src..src + len]);
            }
        }
        Ok(n)
    }
}

/// An error must be at `step`, name the image, and say why.
#[track_caller]
pub fn check_error(err: &Error, step: Step) {
    assert_eq!(err.step(), Some(step), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(PATH), "the image is not named: {msg}");
    assert!(
        msg.len() > PATH.len() + step.as_str().len() + 6,
        "no cause given: {msg}"
    );
}

/// The path of the image, for the calls that take one.
pub fn path() -> &'static Path {
    Path::new(PATH)
}

/// A target that inspects every input as `format`: accepted headers say
/// `format` with a virtual size below the largest any format allows, and
/// refusals are at the probe step and name the image.
#[macro_export]
macro_rules! inspect_target {
    ($format:expr) => {
        libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            $crate::inspect($format, data);
        });
    };
}

/// The body of [`inspect_target!`].
pub fn inspect(format: diskmount::Format, data: &[u8]) {
    let img = Image::new(data);
    match diskmount::format::inspect_from(&img, path(), format) {
        Ok(info) => {
            assert_eq!(info.format, format);
            assert!(
                info.virtual_size <= diskmount::format::MAX_VIRTUAL_SIZE,
                "{info:?}"
            );
        }
        Err(e) => check_error(&e, Step::Probe),
    }
}

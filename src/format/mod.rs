//! Image formats: recognising them from their magic bytes ([`probe`]) and
//! inspecting their headers with our own code before qemu ever opens them
//! ([`inspect`], [`check`]).
//!
//! An image header is untrusted input that can make qemu open host files:
//! a qcow2 backing file or external data file (OSSA-2024-001,
//! CVE-2024-32498), a vmdk descriptor's extents and parent
//! (OSSA-2023-002, CVE-2022-47951), a qcow2 header that a guest wrote into
//! a raw disk and that a probing tool then believes (CVE-2010-3851,
//! OSSA-2026-002). So the format is always given by the caller and never
//! probed when it is raw, the given format must agree with the magic
//! bytes, and the header is parsed here, with every read bounded, before
//! anything is attached.
//!
//! Each parser (one file per format) is a function over [`ReadAt`], which
//! both [`File`] and `[u8]` implement ([`inspect_from`], [`detect`]), so
//! they can be tested and fuzzed on byte slices. Every error is
//! [`Step::Probe`](crate::Step::Probe), names the image, and for a refusal
//! names the feature and the host path it points at.
//!
//! # The policy of [`check`]
//!
//! | image | default | `allow_backing_file` |
//! |---|---|---|
//! | raw | accepted as it is, never probed | same |
//! | format given ≠ format of the magic bytes | refused | refused |
//! | qcow2 backing file | refused | the chain is checked |
//! | qcow2 external data file | refused | refused |
//! | qcow2 encrypted, corrupt, unknown incompatible features | refused | refused |
//! | vmdk createType other than monolithicSparse or streamOptimized | refused | refused |
//! | vmdk extents naming files other than the image | refused | refused |
//! | vmdk `parentFileNameHint` | refused | the chain is checked |
//! | vpc differencing disk (parent) | refused | the chain is checked |
//! | vhdx differencing disk (parent) | refused | refused (qemu cannot open them) |
//! | vdi differencing or undo image | refused | refused |
//! | QED | refused | refused |
//!
//! A checked chain is at most [`MAX_CHAIN`] files long and may not come
//! back to a file it already went through. Each link is opened
//! (`O_RDONLY | O_CLOEXEC | O_NONBLOCK`), must be a regular file (the image
//! itself may also be a block device), and is checked like the first one,
//! as the format its referrer names (qcow2's backing format; `vmdk` for a
//! vmdk parent, `vpc` for a VHD parent) or, when none is named, the format
//! its magic bytes say (as qemu probes it). Relative names are resolved
//! from the referring image's directory; names qemu would read as a
//! protocol (`nbd:...`, `json:{...}`, `file:...`) are refused.
//!
//! External data files and vmdk extents stay refused even with
//! `allow_backing_file`: they put the disk's own data in other host files
//! (for a FLAT extent, any host file read as the disk), which a backing
//! chain does not need.
//!
//! # Limits
//!
//! - [`check`] reads the files by path; whoever starts qemu opens them
//!   again. Check files that nobody else can change between the two.
//! - With `allow_backing_file`, any regular file the process can read may
//!   end up under the image (read-only): a backing chain is trusted to
//!   name the files it needs.
//! - qemu ignores the parent of a differencing VHD and reads the disk as a
//!   dynamic one; allowing its chain only checks the parent files.
//! - VHDX checksums (CRC-32C) and log are not checked (see
//!   `vhdx.rs`); neither can point qemu at another file.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::Result;

mod check;
mod kind;
mod probe;
mod qcow2;
mod reader;
mod vdi;
mod vhdx;
mod vmdk;
mod vpc;

pub use crate::read_at::ReadAt;
pub use check::MAX_CHAIN;
pub use kind::Format;
pub(crate) use kind::describe;
pub use probe::{Detected, PROBE_HEAD, PROBE_TAIL, detect, probe_from};
pub use qcow2::MAX_VIRTUAL_SIZE;
pub use reader::MAX_READ;
pub use vmdk::MAX_DESCRIPTOR;

use reader::Src;

/// What the header of an image says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageInfo {
    /// The format inspected.
    pub format: Format,
    /// The size of the disk the image holds, in bytes (as qemu computes
    /// it).
    pub virtual_size: u64,
    /// The backing file (qcow2), parent (vmdk `parentFileNameHint`) or
    /// parent disk (differencing vpc, vhdx), as the header names it:
    /// relative names are relative to the image's directory.
    pub backing_file: Option<PathBuf>,
    /// The backing file's format, where the header names one (`vmdk` for
    /// a vmdk parent, `vpc`/`vhdx` for a VHD/VHDX parent).
    pub backing_format: Option<String>,
    /// A qcow2 external data file, as the header names it.
    pub data_file: Option<PathBuf>,
    /// Files other than the image itself that a vmdk descriptor names,
    /// resolved from the image's directory.
    pub extents: Vec<PathBuf>,
    /// A vmdk's createType.
    pub create_type: Option<String>,
}

impl ImageInfo {
    /// An image of `format` holding `virtual_size` bytes, and nothing else.
    pub(crate) fn new(format: Format, virtual_size: u64) -> ImageInfo {
        ImageInfo {
            format,
            virtual_size,
            backing_file: None,
            backing_format: None,
            data_file: None,
            extents: Vec::new(),
            create_type: None,
        }
    }
}

/// The format of the image file `file` (at `path`), from its magic bytes:
/// [`Format::Raw`] when none matches.
///
/// # Errors
/// [`Step::Probe`](crate::Step::Probe): the file cannot be read, or it is
/// a QED image, which diskmount does not support.
pub fn probe(file: &File, path: &Path) -> Result<Format> {
    probe_from(file, path)
}

/// Inspects the header of `file` as `format`: parses it with diskmount's
/// own code and checks that it is consistent (tables inside the file, sizes
/// sane). The host files it names are reported, not judged: [`check`]
/// applies the policy.
///
/// # Errors
/// [`Step::Probe`](crate::Step::Probe): unreadable, not `format`,
/// inconsistent, or using a feature diskmount does not support (an
/// encrypted qcow2, a differencing vdi, ...).
pub fn inspect(file: &File, path: &Path, format: Format) -> Result<ImageInfo> {
    inspect_from(file, path, format)
}

/// [`inspect`] over any [`ReadAt`], e.g. a byte slice; `path` names the
/// image in errors and anchors relative names.
///
/// # Errors
/// As [`inspect`].
pub fn inspect_from<R: ReadAt + ?Sized>(src: &R, path: &Path, format: Format) -> Result<ImageInfo> {
    let src = Src::new(src, path)?;
    match format {
        Format::Raw => Ok(ImageInfo::new(Format::Raw, src.size)),
        Format::Qcow2 => qcow2::inspect(&src),
        Format::Vmdk => vmdk::inspect(&src),
        Format::Vdi => vdi::inspect(&src),
        Format::Vhdx => vhdx::inspect(&src),
        Format::Vpc => vpc::inspect(&src),
    }
}

/// The safety policy applied before a non-raw image is attached (see the
/// module documentation for the table): opens `path`, checks that its
/// magic bytes agree with `format` (raw is never probed), inspects it, and
/// refuses host files named in its header. With `allow_backing_file`, a
/// backing chain is allowed and every file in it is checked the same way.
///
/// Returns what the header of `path` says.
///
/// # Errors
/// [`Step::Probe`](crate::Step::Probe), naming the image, the feature and
/// the host path it points at; for a file further down a backing chain,
/// the error names the image and each backing file on the way.
pub fn check(path: &Path, format: Format, allow_backing_file: bool) -> Result<ImageInfo> {
    check::check(path, format, allow_backing_file)
}

/// [`check`] of the image already open as `file` (`path` names it in
/// errors, and backing files are found relative to it): what is checked
/// is the file the caller then hands to qemu.
///
/// # Errors
/// As [`check`].
pub fn check_file(
    file: &File,
    path: &Path,
    format: Format,
    allow_backing_file: bool,
) -> Result<ImageInfo> {
    check::check_file(file, path, format, allow_backing_file)
}

/// Refuses a read-write attach of an image qemu can only read: a
/// streamOptimized vmdk is a compressed stream that cannot be rewritten in
/// place (writes would fail as I/O errors inside the mounted filesystem).
pub fn require_writable(info: &ImageInfo, path: &Path, read_only: bool) -> Result<()> {
    if !read_only && info.create_type.as_deref() == Some("streamOptimized") {
        return Err(crate::error::Error::invalid_image(
            crate::error::Step::Attach,
            path,
            "a streamOptimized vmdk can only be read: open it read-only \
             (Image::read_only(true)), or convert it with `qemu-img convert -O vmdk -o subformat=monolithicSparse`",
        ));
    }
    Ok(())
}

/// Assertions shared by the format parsers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::ImageInfo;
    use crate::error::Result;

    /// `result` is a refusal at the probe step naming the image `img` and
    /// every one of `words`.
    #[track_caller]
    pub(crate) fn assert_refused(result: Result<ImageInfo>, img: &str, words: &[&str]) {
        let err = result.unwrap_err();
        assert_eq!(err.step(), Some(crate::Step::Probe));
        let msg = err.to_string();
        assert!(msg.contains(img), "{msg}");
        for w in words {
            assert!(msg.contains(w), "{w:?} missing from: {msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic xorshift generator: no dependency, same run every
    /// time.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A valid image, and the byte ranges (start, end) of its headers and
    /// tables.
    type Seed = (Format, Vec<u8>, Vec<(usize, usize)>);

    /// Valid images of every format.
    fn seeds() -> Vec<Seed> {
        const MIB: usize = 1 << 20;
        let qcow2 = qcow2::tests::with_backing(qcow2::tests::image(), "/etc/hostname");
        let vmdk_desc = vmdk::tests::descriptor("monolithicSparse", "RW 2048 SPARSE \"x.vmdk\"")
            + "parentFileNameHint=\"base.vmdk\"\n";
        let vmdk = vmdk::tests::sparse_image(&vmdk_desc);
        let flat = vmdk::tests::descriptor("monolithicFlat", "RW 2048 FLAT \"x-flat.vmdk\" 0");
        let vpc = vpc::tests::dynamic(4);
        let vpc_len = vpc.len();
        vec![
            (Format::Qcow2, qcow2, vec![(0, 1024)]),
            (Format::Vmdk, vmdk, vec![(0, 2048)]),
            (
                Format::Vmdk,
                flat.clone().into_bytes(),
                vec![(0, flat.len())],
            ),
            (Format::Vdi, vdi::tests::image(), vec![(0, 0x400)]),
            (
                Format::Vhdx,
                vhdx::tests::image(),
                vec![
                    (0, 16),
                    (0x10000, 0x10050),
                    (0x20000, 0x20050),
                    (0x30000, 0x30080),
                    (3 * MIB, 3 * MIB + 160),
                    (3 * MIB + 0x10000, 3 * MIB + 0x10020),
                ],
            ),
            (Format::Vpc, vpc, vec![(0, 1600), (vpc_len - 512, vpc_len)]),
            (
                Format::Vpc,
                vpc::tests::fixed(1 << 20, b"win "),
                vec![(1 << 20, (1 << 20) + 512)],
            ),
        ]
    }

    /// Random bytes and extreme values written over the headers of valid
    /// images, and random truncations: every outcome is a result, never a
    /// panic or a huge allocation. (A poor man's fuzzer; the parsers take
    /// byte slices so that a real one can drive them.)
    #[test]
    fn mutated_headers_never_panic() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let path = Path::new("/images/fuzzed");
        for (format, mut image, ranges) in seeds() {
            let original = image.clone();
            let mut refused = 0;
            for _ in 0..400 {
                let mut touched = Vec::new();
                for _ in 0..1 + rng.below(6) {
                    let (start, end) = ranges[rng.below(ranges.len())];
                    let at = start + rng.below(end - start);
                    let value: &[u8] = match rng.below(6) {
                        0 => &[0xff; 8],
                        1 => &[0; 8],
                        2 => &[0x80, 0, 0, 0, 0, 0, 0, 0],
                        3 => &[0, 0, 0, 0, 0, 0, 0, 0x80],
                        _ => &[rng.next() as u8],
                    };
                    let end = (at + value.len()).min(image.len());
                    image[at..end].copy_from_slice(&value[..end - at]);
                    touched.push(at..end);
                }
                let len = if rng.below(8) == 0 {
                    rng.below(image.len() + 1)
                } else {
                    image.len()
                };
                let bytes = &image[..len];
                let head = &bytes[..bytes.len().min(PROBE_HEAD)];
                let _ = detect(head, &bytes[bytes.len().saturating_sub(PROBE_TAIL)..]);
                match inspect_from(bytes, path, format) {
                    Ok(info) => assert!(info.virtual_size <= MAX_VIRTUAL_SIZE),
                    Err(e) => {
                        refused += 1;
                        assert_eq!(e.step(), Some(crate::Step::Probe));
                        assert!(e.to_string().contains("/images/fuzzed"), "{e}");
                    }
                }
                for r in touched {
                    image[r.clone()].copy_from_slice(&original[r]);
                }
            }
            assert!(refused > 0, "{format}: no mutation was refused");
        }
    }

    #[test]
    fn raw_is_the_whole_file() {
        let info = inspect_from(&[1u8; 1000][..], Path::new("/x"), Format::Raw).unwrap();
        assert_eq!(info, ImageInfo::new(Format::Raw, 1000));
    }
}

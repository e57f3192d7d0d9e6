//! Recognising an image format from its magic bytes.
//!
//! [`detect`] is a pure function over the first and last bytes of a file;
//! [`probe_from`] reads them (two bounded reads) and turns QED, which
//! diskmount does not handle, into an error.
//!
//! The signatures are those qemu's drivers probe for, so that what diskmount
//! says a file is matches what qemu would take it for, plus the footer of a
//! fixed-size VHD (which qemu does not probe: it sees those as raw).

use std::path::Path;

use super::Format;
use super::reader::{Src, le32};
use crate::error::Result;
use crate::read_at::ReadAt;

/// How many bytes from the start of a file [`detect`] looks at.
pub const PROBE_HEAD: usize = 4096;

/// How many bytes from the end of a file [`detect`] looks at: a VHD footer.
pub const PROBE_TAIL: usize = 512;

/// How much of a text file qemu looks at to tell a vmdk descriptor
/// (`BLOCK_PROBE_BUF_SIZE`).
const QEMU_PROBE_BYTES: usize = 2048;

/// What the magic bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Detected {
    /// A format diskmount knows; [`Format::Raw`] when no signature matched.
    Format(Format),
    /// A QEMU enhanced disk (`QED\0`): recognised, not supported.
    Qed,
}

/// Identifies the format of a file from `head`, its first bytes (up to
/// [`PROBE_HEAD`]), and `tail`, its last bytes (up to [`PROBE_TAIL`]).
///
/// Signatures at the start win over a VHD footer at the end: qemu looks at
/// the start only.
pub fn detect(head: &[u8], tail: &[u8]) -> Detected {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let format = if at(0, b"QFI\xfb") {
        Format::Qcow2
    } else if at(0, b"QED\0") {
        return Detected::Qed;
    } else if at(0, b"KDMV") || at(0, b"COWD") {
        Format::Vmdk
    } else if at(0, b"vhdxfile") {
        Format::Vhdx
    } else if at(0, b"conectix") {
        Format::Vpc
    } else if head.len() >= 0x44 && le32(head, 0x40) == 0xbeda_107f {
        Format::Vdi
    } else if is_vmdk_descriptor(head) {
        Format::Vmdk
    } else if tail[tail.len().saturating_sub(PROBE_TAIL)..].starts_with(b"conectix") {
        Format::Vpc
    } else {
        Format::Raw
    };
    Detected::Format(format)
}

/// A vmdk descriptor file: it starts with the comment VMware writes, or (as
/// qemu's `vmdk_probe` decides) its first line that is neither a comment
/// nor blank says `version=1`, `2` or `3`.
fn is_vmdk_descriptor(head: &[u8]) -> bool {
    if head.starts_with(b"# Disk DescriptorFile") {
        return true;
    }
    let buf = &head[..head.len().min(QEMU_PROBE_BYTES)];
    let end = buf.len();
    let mut p = 0;
    while p < end {
        match buf[p] {
            b'#' => {
                while p < end && buf[p] != b'\n' {
                    p += 1;
                }
                p += 1;
            }
            b' ' => {
                while p < end && buf[p] == b' ' {
                    p += 1;
                }
                if p < end && buf[p] == b'\r' {
                    p += 1;
                }
                if p == end || buf[p] != b'\n' {
                    return false;
                }
                p += 1;
            }
            _ => {
                return match buf[p..].strip_prefix(b"version=") {
                    Some([b'1'..=b'3', rest @ ..]) => {
                        rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
                    }
                    _ => false,
                };
            }
        }
    }
    false
}

/// The format of the image in `src` (at `path`, for messages).
///
/// # Errors
/// [`crate::Step::Probe`]: the file cannot be read, or it is a QED image.
pub fn probe_from<R: ReadAt + ?Sized>(src: &R, path: &Path) -> Result<Format> {
    let src = Src::new(src, path)?;
    let head = src.read_clipped(0, PROBE_HEAD as u64, "the first bytes")?;
    let tail_start = src.size.saturating_sub(PROBE_TAIL as u64);
    let tail = src.read_clipped(tail_start, PROBE_TAIL as u64, "the last bytes")?;
    match detect(&head, &tail) {
        Detected::Format(format) => Ok(format),
        Detected::Qed => Err(src.refuse(
            "the image is in qemu's QED format, which diskmount does not support \
             (convert it: qemu-img convert -f qed -O qcow2)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(magic: &[u8], at: usize) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_HEAD];
        b[at..at + magic.len()].copy_from_slice(magic);
        b
    }

    fn format(head: &[u8]) -> Detected {
        detect(head, &[])
    }

    #[test]
    fn magic_at_the_start() {
        assert_eq!(
            format(&head(b"QFI\xfb", 0)),
            Detected::Format(Format::Qcow2)
        );
        assert_eq!(format(&head(b"QED\0", 0)), Detected::Qed);
        assert_eq!(format(&head(b"KDMV", 0)), Detected::Format(Format::Vmdk));
        assert_eq!(format(&head(b"COWD", 0)), Detected::Format(Format::Vmdk));
        assert_eq!(
            format(&head(b"vhdxfile", 0)),
            Detected::Format(Format::Vhdx)
        );
        assert_eq!(format(&head(b"conectix", 0)), Detected::Format(Format::Vpc));
        assert_eq!(
            format(&head(&0xbeda_107fu32.to_le_bytes(), 0x40)),
            Detected::Format(Format::Vdi)
        );
        assert_eq!(format(&head(b"", 0)), Detected::Format(Format::Raw));
        assert_eq!(format(b""), Detected::Format(Format::Raw));
        assert_eq!(format(b"QFI"), Detected::Format(Format::Raw));
    }

    #[test]
    fn fixed_vhd_footer_at_the_end() {
        let mut tail = vec![0u8; 1024];
        tail[512..520].copy_from_slice(b"conectix");
        assert_eq!(detect(&[0; 64], &tail), Detected::Format(Format::Vpc));
        // Not at the footer position: nothing.
        assert_eq!(
            detect(&[0; 64], &tail[..600]),
            Detected::Format(Format::Raw)
        );
        // A magic at the start wins.
        assert_eq!(
            detect(&head(b"QFI\xfb", 0), &tail),
            Detected::Format(Format::Qcow2)
        );
    }

    #[test]
    fn vmdk_descriptors_as_qemu_probes_them() {
        let d = |s: &str| format(s.as_bytes());
        assert_eq!(
            d("# Disk DescriptorFile\nversion=1\n"),
            Detected::Format(Format::Vmdk)
        );
        assert_eq!(
            d("# comment\n   \r\nversion=3\r\nCID=1\n"),
            Detected::Format(Format::Vmdk)
        );
        assert_eq!(d("version=2\n"), Detected::Format(Format::Vmdk));
        assert_eq!(d("version=4\n"), Detected::Format(Format::Raw));
        assert_eq!(d("\nversion=1\n"), Detected::Format(Format::Raw));
        assert_eq!(d("  x\nversion=1\n"), Detected::Format(Format::Raw));
        assert_eq!(d("# only a comment"), Detected::Format(Format::Raw));
    }

    #[test]
    fn probe_reads_head_and_tail_and_refuses_qed() {
        let mut img = vec![0u8; 10_000];
        img[10_000 - 512..10_000 - 504].copy_from_slice(b"conectix");
        assert_eq!(probe_from(&img[..], Path::new("/i")).unwrap(), Format::Vpc);
        img[..4].copy_from_slice(b"QED\0");
        let err = probe_from(&img[..], Path::new("/images/x.qed")).unwrap_err();
        assert_eq!(err.step(), Some(crate::Step::Probe));
        assert!(err.to_string().contains("/images/x.qed"), "{err}");
        assert!(err.to_string().contains("QED"), "{err}");
    }
}

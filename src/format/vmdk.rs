//! VMDK: sparse extents (`KDMV`, monolithicSparse and streamOptimized) and
//! text descriptor files, with the host files they name.
//!
//! What qemu's `vmdk` driver opens, and so what is checked here:
//!
//! - A sparse file with a non-zero capacity is self-contained: qemu reads
//!   only that file. Its embedded descriptor's extent lines are not
//!   followed (qemu ignores them), but they are still reported when they
//!   name another file, except for the single `SPARSE` line that names the
//!   image itself, possibly under the name it was created with.
//! - A sparse file with capacity 0 and a descriptor offset, and every text
//!   descriptor file, is a list of extents: qemu opens each named file
//!   (relative names from the descriptor's directory), FLAT extents being
//!   plain host files read as the disk. All of them are reported.
//! - In both, a `parentFileNameHint="..."` in the first 10 KiB of the
//!   descriptor area (from byte 512 of a sparse file, byte 0 of a
//!   descriptor file) makes qemu open that file as a vmdk backing file.
//!
//! Layout: VMware "Virtual Disk Format 1.1"; qemu `block/vmdk.c`.

use std::path::{Path, PathBuf};

use super::Format;
use super::ImageInfo;
use super::qcow2::MAX_VIRTUAL_SIZE;
use super::reader::{Src, c_str, le16, le32, le64, path_of};
use crate::error::Result;
use crate::read_at::ReadAt;

/// The largest descriptor diskmount reads: descriptors are text of a few
/// hundred bytes (qemu writes 10 KiB areas).
pub const MAX_DESCRIPTOR: u64 = 64 << 10;

/// How much of the descriptor qemu searches for `parentFileNameHint`
/// (`DESC_SIZE`).
const QEMU_DESC_SIZE: u64 = 20 * 512;
/// Where qemu looks for the descriptor of a sparse file, whatever its
/// header says.
const QEMU_SPARSE_DESC_OFFSET: u64 = 512;
/// qemu's `auto_backing_file` is a `PATH_MAX` buffer.
const MAX_PARENT_NAME: usize = 4095;

const GD_AT_END: u64 = u64::MAX;
const FLAG_RGD: u32 = 1 << 1;
const COMPRESSION_DEFLATE: u16 = 1;
const MARKER_FOOTER: u32 = 3;
const MARKER_END_OF_STREAM: u32 = 0;

/// Extent types qemu opens.
const QEMU_EXTENT_TYPES: [&[u8]; 5] = [b"FLAT", b"SPARSE", b"VMFS", b"VMFSSPARSE", b"SESPARSE"];

/// Parses a vmdk image: a sparse extent or a descriptor file.
pub(crate) fn inspect<R: ReadAt + ?Sized>(src: &Src<'_, R>) -> Result<ImageInfo> {
    let head = src.read_clipped(0, 512, "the vmdk header")?;
    if head.starts_with(b"KDMV") {
        return sparse(src, &head);
    }
    if head.starts_with(b"COWD") {
        return Err(
            src.refuse("a VMDK3 (COWD, ESX 2) sparse extent, which diskmount does not support")
        );
    }
    descriptor_file(src)
}

/// A text descriptor file.
fn descriptor_file<R: ReadAt + ?Sized>(src: &Src<'_, R>) -> Result<ImageInfo> {
    if src.size > MAX_DESCRIPTOR {
        return Err(src.refuse(format!(
            "not a vmdk image diskmount reads: no sparse header, and at {} bytes too large \
             for a descriptor file (at most {MAX_DESCRIPTOR})",
            src.size
        )));
    }
    let text = src.read(0, src.size, "the vmdk descriptor file")?;
    let mut info = from_descriptor(src, c_str(&text), "descriptor file")?;
    parent_hint(src, &mut info, 0)?;
    Ok(info)
}

/// The ImageInfo of a descriptor that qemu follows: create type required,
/// every extent but the image itself reported.
fn from_descriptor<R: ReadAt + ?Sized>(
    src: &Src<'_, R>,
    text: &[u8],
    what: &str,
) -> Result<ImageInfo> {
    let Some(create_type) = create_type(text) else {
        return Err(src.refuse(format!(
            "the vmdk {what} has no createType=\"...\" line: not a descriptor qemu opens"
        )));
    };
    let extents = parse_extents(text);
    let size = qemu_size(&extents);
    if size > MAX_VIRTUAL_SIZE {
        return Err(src.refuse(format!(
            "the vmdk {what} is inconsistent: its extents add up to an absurd {size} bytes"
        )));
    }
    let mut info = ImageInfo::new(Format::Vmdk, size);
    info.create_type = Some(create_type);
    info.extents = external(src.path, &extents);
    Ok(info)
}

/// A sparse (`KDMV`) extent.
fn sparse<R: ReadAt + ?Sized>(src: &Src<'_, R>, head: &[u8]) -> Result<ImageInfo> {
    let inconsistent =
        |why: String| src.refuse(format!("the vmdk sparse header is inconsistent: {why}"));
    if head.len() < 512 {
        return Err(src.refuse(format!(
            "the file is too short ({} bytes) for a vmdk sparse header",
            src.size
        )));
    }
    let desc_offset = le64(head, 28);
    let desc_size = le64(head, 36);
    let capacity = le64(head, 12);
    if capacity == 0 && desc_offset != 0 {
        // qemu reads the embedded descriptor as a descriptor file, with
        // extents in other files.
        let start = desc_offset.checked_mul(512).ok_or_else(|| {
            inconsistent(format!(
                "descriptor offset {desc_offset} (sectors) overflows"
            ))
        })?;
        src.within(start, 1, "the embedded descriptor")?;
        let area = read_c_str(src, start, MAX_DESCRIPTOR + 1, "the embedded descriptor")?;
        let text = area.as_slice();
        if text.len() as u64 > MAX_DESCRIPTOR {
            return Err(inconsistent(format!(
                "its embedded descriptor runs on for more than {MAX_DESCRIPTOR} bytes"
            )));
        }
        let mut info = from_descriptor(src, text, "embedded descriptor")?;
        parent_hint(src, &mut info, QEMU_SPARSE_DESC_OFFSET)?;
        return Ok(info);
    }

    // A stream-optimized image may keep its real header in a footer.
    let footer;
    let mut h = head;
    if le64(head, 56) == GD_AT_END {
        if src.size < 1536 + 512 {
            return Err(inconsistent(
                "the grain directory is at the end, but the file is too short for a footer".into(),
            ));
        }
        footer = src.read(src.size - 1536, 1536, "the vmdk footer")?;
        let ok = &footer[512..516] == b"KDMV"
            && le32(&footer, 8) == 0
            && le32(&footer, 12) == MARKER_FOOTER
            && le64(&footer, 1024) == 0
            && le32(&footer, 1032) == 0
            && le32(&footer, 1036) == MARKER_END_OF_STREAM;
        if !ok {
            return Err(inconsistent(
                "the grain directory is at the end, but the footer is invalid".into(),
            ));
        }
        h = &footer[512..1024];
    }

    let version = le32(h, 4);
    let flags = le32(h, 8);
    let capacity = le64(h, 12);
    let grain = le64(h, 20);
    let gtes = u64::from(le32(h, 44));
    let rgd = le64(h, 48);
    let gd = le64(h, 56);
    let overhead = le64(h, 64);
    let compress = le16(h, 77);

    if !(1..=3).contains(&version) {
        return Err(src.refuse(format!("unsupported vmdk sparse version {version}")));
    }
    if capacity > MAX_VIRTUAL_SIZE / 512 {
        return Err(inconsistent(format!(
            "a capacity of {capacity} sectors is absurd"
        )));
    }
    if grain == 0 || grain > 0x20_0000 {
        return Err(inconsistent(format!(
            "a grain of {grain} sectors is outside 1..=2097152"
        )));
    }
    if gtes == 0 || gtes > 512 {
        return Err(inconsistent(format!(
            "{gtes} entries per grain table is outside 1..=512"
        )));
    }
    let l1_size = capacity.div_ceil(gtes * grain);
    if l1_size > 32 << 20 {
        return Err(inconsistent(format!(
            "a grain directory of {l1_size} entries is larger than qemu accepts"
        )));
    }
    if capacity > 0 {
        let offset = gd
            .checked_mul(512)
            .ok_or_else(|| inconsistent(format!("grain directory sector {gd} overflows")))?;
        src.within(offset, l1_size * 4, "the grain directory")?;
        if flags & FLAG_RGD != 0 {
            let offset = rgd.checked_mul(512).ok_or_else(|| {
                inconsistent(format!("redundant grain directory sector {rgd} overflows"))
            })?;
            src.within(offset, l1_size * 4, "the redundant grain directory")?;
        }
    }
    if overhead > src.size.div_ceil(512) {
        return Err(inconsistent(format!(
            "the data starts at sector {overhead}, beyond the end of the {}-byte file",
            src.size
        )));
    }

    let mut create_type = None;
    let mut extents = Vec::new();
    if desc_offset != 0 {
        let len = desc_size.saturating_mul(512);
        if len > MAX_DESCRIPTOR {
            return Err(inconsistent(format!(
                "it claims a descriptor of {len} bytes; descriptors are text of a few hundred \
                 bytes (diskmount reads at most {MAX_DESCRIPTOR})"
            )));
        }
        let start = desc_offset.checked_mul(512).ok_or_else(|| {
            inconsistent(format!(
                "descriptor offset {desc_offset} (sectors) overflows"
            ))
        })?;
        let text = src.read(start, len, "the embedded descriptor")?;
        let text = c_str(&text);
        create_type = self::create_type(text);
        extents = parse_extents(text);
    }
    let implied = if compress == COMPRESSION_DEFLATE {
        "streamOptimized"
    } else {
        "monolithicSparse"
    };
    let mut info = ImageInfo::new(Format::Vmdk, capacity * 512);
    info.create_type = Some(create_type.unwrap_or_else(|| implied.to_string()));
    // qemu does not follow these lines; the one that describes this very
    // file (under whatever name it was created with) is expected.
    let describes_itself =
        extents.len() == 1 && extents[0].kind == b"SPARSE" && !extents[0].name.contains(&b'/');
    if !describes_itself {
        info.extents = external(src.path, &extents);
    }
    parent_hint(src, &mut info, QEMU_SPARSE_DESC_OFFSET)?;
    Ok(info)
}

/// One extent line: `RW 2048 FLAT "name" 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Extent {
    access: Vec<u8>,
    sectors: Option<i64>,
    kind: Vec<u8>,
    name: Vec<u8>,
}

/// The value of the first `createType` in `text`, read the way qemu's
/// `vmdk_parse_description` does (two characters after the key, up to the
/// next quote).
fn create_type(text: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"createType";
    let start = find(text, KEY)? + KEY.len() + 2;
    let rest = text.get(start..)?;
    let end = rest.iter().position(|&c| c == b'"')?;
    (end < 128).then(|| String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Every extent line (`RW`, `RDONLY` or `NOACCESS`, a size, a type and a
/// quoted file name), whether qemu would use it or not.
fn parse_extents(text: &[u8]) -> Vec<Extent> {
    text.split(|&c| c == b'\n')
        .filter_map(extent_line)
        .collect()
}

fn extent_line(line: &[u8]) -> Option<Extent> {
    // Most lines are something else: look no further than their first
    // byte (a byte compare: fuzzed, every slice compare is an intercepted
    // memcmp).
    let start = line.trim_ascii_start();
    if !matches!(start.first(), Some(b'R' | b'N')) {
        return None;
    }
    let (access, rest) = token(start);
    if !matches!(access, b"RW" | b"RDONLY" | b"NOACCESS") {
        return None;
    }
    let (sectors, rest) = token(rest);
    let (kind, rest) = token(rest);
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = rest
        .iter()
        .position(|&c| matches!(c, b'"' | b'\r' | b'\n'))
        .unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    Some(Extent {
        access: access.to_vec(),
        sectors: std::str::from_utf8(sectors).ok()?.parse().ok(),
        kind: kind.to_vec(),
        name: rest[..end].to_vec(),
    })
}

/// The next whitespace-separated token of `s`, and what follows it.
fn token(s: &[u8]) -> (&[u8], &[u8]) {
    let s = s.trim_ascii_start();
    let end = s
        .iter()
        .position(|c| c.is_ascii_whitespace())
        .unwrap_or(s.len());
    s.split_at(end)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// What `c_str(&src.read_clipped(start, len, what)?)` is, read in pieces
/// that stop at the first NUL: a descriptor is a few hundred bytes of the
/// window that may hold it, and the rest need not be read.
fn read_c_str<R: ReadAt + ?Sized>(
    src: &Src<'_, R>,
    start: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let mut text = Vec::new();
    let mut piece = 4096;
    while (text.len() as u64) < len {
        let want = piece.min(len - text.len() as u64);
        let got = src.read_clipped(start + text.len() as u64, want, what)?;
        let nul = memchr::memchr(0, &got);
        text.extend_from_slice(&got[..nul.unwrap_or(got.len())]);
        if nul.is_some() || (got.len() as u64) < want {
            break;
        }
        piece *= 2;
    }
    Ok(text)
}

/// The virtual size qemu computes: the extents it uses, added up.
fn qemu_size(extents: &[Extent]) -> u64 {
    extents
        .iter()
        .filter(|e| e.access == b"RW" && QEMU_EXTENT_TYPES.contains(&e.kind.as_slice()))
        .filter_map(|e| e.sectors.filter(|&s| s > 0))
        .fold(0u64, |sum, s| {
            sum.saturating_add((s as u64).saturating_mul(512))
        })
}

/// The files the extents name, resolved from the image's directory, except
/// the image itself.
fn external(image: &Path, extents: &[Extent]) -> Vec<PathBuf> {
    let dir = image.parent().unwrap_or(Path::new(""));
    let mut out: Vec<PathBuf> = Vec::new();
    for e in extents {
        let name = path_of(&e.name);
        let resolved = if name.is_absolute() {
            name.clone()
        } else {
            dir.join(&name)
        };
        let is_self = resolved == image
            || (!e.name.contains(&b'/') && Some(name.as_os_str()) == image.file_name());
        if !is_self && !out.contains(&resolved) {
            out.push(resolved);
        }
    }
    out
}

/// A `parentFileNameHint` where qemu looks for one: in the first 10 KiB of
/// the file from `window`, up to the first NUL byte.
fn parent_hint<R: ReadAt + ?Sized>(
    src: &Src<'_, R>,
    info: &mut ImageInfo,
    window: u64,
) -> Result<()> {
    const KEY: &[u8] = b"parentFileNameHint";
    let area = read_c_str(src, window, QEMU_DESC_SIZE, "the vmdk descriptor")?;
    let text = area.as_slice();
    let Some(at) = find(text, KEY) else {
        return Ok(());
    };
    let rest = text.get(at + KEY.len() + 2..).unwrap_or_default();
    let Some(end) = rest.iter().position(|&c| c == b'"') else {
        return Err(src.refuse(
            "the vmdk descriptor is inconsistent: its parentFileNameHint has no closing quote",
        ));
    };
    if end > MAX_PARENT_NAME {
        return Err(src.refuse(format!(
            "the vmdk descriptor is inconsistent: its parentFileNameHint is {end} bytes long"
        )));
    }
    if end > 0 {
        info.backing_file = Some(path_of(&rest[..end]));
        info.backing_format = Some("vmdk".to_string());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const IMG: &str = "/images/disk.vmdk";

    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn descriptor(create_type: &str, extents: &str) -> String {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
             createType=\"{create_type}\"\n\n# Extent description\n{extents}\n\n\
             # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n"
        )
    }

    /// A monolithicSparse image of 1 MiB as qemu writes it: header,
    /// descriptor at sector 1 (20 sectors), grain directory at sector 21.
    pub(crate) fn sparse_image(desc: &str) -> Vec<u8> {
        let mut b = vec![0u8; 128 * 512];
        b[..4].copy_from_slice(b"KDMV");
        put32(&mut b, 4, 1);
        put32(&mut b, 8, 3);
        put64(&mut b, 12, 2048);
        put64(&mut b, 20, 128);
        put64(&mut b, 28, 1);
        put64(&mut b, 36, 20);
        put32(&mut b, 44, 512);
        put64(&mut b, 48, 21);
        put64(&mut b, 56, 26);
        put64(&mut b, 64, 128);
        b[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
        b
    }

    fn inspect_bytes(b: &[u8]) -> Result<ImageInfo> {
        inspect(&Src::new(b, Path::new(IMG)).unwrap())
    }

    #[track_caller]
    fn refused(b: &[u8], words: &[&str]) {
        crate::format::testing::assert_refused(inspect_bytes(b), IMG, words);
    }

    #[test]
    fn monolithic_sparse() {
        let b = sparse_image(&descriptor(
            "monolithicSparse",
            "RW 2048 SPARSE \"disk.vmdk\"",
        ));
        let info = inspect_bytes(&b).unwrap();
        assert_eq!(info.virtual_size, 1 << 20);
        assert_eq!(info.create_type.as_deref(), Some("monolithicSparse"));
        assert!(info.extents.is_empty());
        assert_eq!(info.backing_file, None);
    }

    #[test]
    fn a_renamed_sparse_image_still_describes_itself() {
        let b = sparse_image(&descriptor(
            "monolithicSparse",
            "RW 2048 SPARSE \"old-name.vmdk\"",
        ));
        assert!(inspect_bytes(&b).unwrap().extents.is_empty());
        // But not a path elsewhere, nor a second extent.
        let b = sparse_image(&descriptor(
            "monolithicSparse",
            "RW 2048 SPARSE \"../x/disk.vmdk\"",
        ));
        assert_eq!(
            inspect_bytes(&b).unwrap().extents,
            vec![PathBuf::from("/images/../x/disk.vmdk")]
        );
        let b = sparse_image(&descriptor(
            "monolithicSparse",
            "RW 1024 SPARSE \"disk.vmdk\"\nRW 1024 FLAT \"/etc/shadow\" 0",
        ));
        assert_eq!(
            inspect_bytes(&b).unwrap().extents,
            vec![PathBuf::from("/etc/shadow")]
        );
    }

    #[test]
    fn no_embedded_descriptor_means_monolithic_sparse() {
        let mut b = sparse_image("");
        put64(&mut b, 28, 0);
        put64(&mut b, 36, 0);
        let info = inspect_bytes(&b).unwrap();
        assert_eq!(info.create_type.as_deref(), Some("monolithicSparse"));
        b[77] = 1;
        let info = inspect_bytes(&b).unwrap();
        assert_eq!(info.create_type.as_deref(), Some("streamOptimized"));
    }

    #[test]
    fn a_huge_descriptor_claim_is_refused_without_reading_it() {
        let mut b = sparse_image("");
        put64(&mut b, 36, (10 << 20) / 512);
        refused(&b, &["descriptor of 10485760 bytes"]);
        put64(&mut b, 36, u64::MAX);
        refused(&b, &["descriptor of"]);
        let mut b = sparse_image("");
        put64(&mut b, 28, 1000);
        refused(&b, &["embedded descriptor", "beyond the end"]);
    }

    #[test]
    fn sparse_header_limits() {
        let mut b = sparse_image("");
        put32(&mut b, 4, 4);
        refused(&b, &["version 4"]);
        let mut b = sparse_image("");
        put64(&mut b, 12, u64::MAX);
        refused(&b, &["absurd"]);
        let mut b = sparse_image("");
        put64(&mut b, 20, 0);
        refused(&b, &["grain of 0"]);
        let mut b = sparse_image("");
        put32(&mut b, 44, 513);
        refused(&b, &["513 entries"]);
        let mut b = sparse_image("");
        put64(&mut b, 56, 1000);
        refused(&b, &["grain directory", "beyond the end"]);
        let mut b = sparse_image("");
        put64(&mut b, 56, u64::MAX / 2);
        refused(&b, &["grain directory"]);
        let mut b = sparse_image("");
        put64(&mut b, 48, 1000);
        refused(&b, &["redundant grain directory"]);
        let mut b = sparse_image("");
        put64(&mut b, 64, 1000);
        refused(&b, &["data starts at sector 1000"]);
        refused(&sparse_image("")[..100], &["too short"]);
        refused(b"COWD\0\0\0\0", &["COWD"]);
    }

    #[test]
    fn stream_optimized_footer() {
        let mut b = sparse_image("");
        put64(&mut b, 56, GD_AT_END);
        refused(&b, &["footer is invalid"]);
        let len = b.len();
        let header: Vec<u8> = b[..512].to_vec();
        b[len - 1536 + 12..len - 1536 + 16].copy_from_slice(&MARKER_FOOTER.to_le_bytes());
        b[len - 1024..len - 512].copy_from_slice(&header);
        put64(&mut b, len - 1024 + 56, 26);
        put64(&mut b, len - 1024 + 12, 4096);
        assert_eq!(inspect_bytes(&b).unwrap().virtual_size, 4096 * 512);
    }

    #[test]
    fn descriptor_files_list_their_extents() {
        let d = descriptor(
            "monolithicFlat",
            "RW 2048 FLAT \"disk-flat.vmdk\" 0\nRDONLY 10 FLAT \"/etc/hostname\" 0\n\
             RW 4 ZERO\nRW 8 SPARSE \"disk.vmdk\"",
        );
        let info = inspect_bytes(d.as_bytes()).unwrap();
        assert_eq!(info.create_type.as_deref(), Some("monolithicFlat"));
        assert_eq!(
            info.extents,
            vec![
                PathBuf::from("/images/disk-flat.vmdk"),
                PathBuf::from("/etc/hostname")
            ]
        );
        // qemu's size: RW extents of known types.
        assert_eq!(info.virtual_size, (2048 + 8) * 512);
    }

    #[test]
    fn descriptor_file_limits() {
        refused(b"version=1\nRW 1 FLAT \"x\" 0\n", &["no createType"]);
        let big = vec![b' '; MAX_DESCRIPTOR as usize + 1];
        refused(&big, &["too large for a descriptor file"]);
        let d = descriptor("monolithicFlat", "RW 9223372036854775807 FLAT \"x\" 0");
        refused(d.as_bytes(), &["absurd"]);
    }

    #[test]
    fn capacity_zero_with_a_descriptor_is_a_descriptor_file() {
        let mut b = sparse_image(&descriptor(
            "monolithicFlat",
            "RW 2048 FLAT \"/etc/hostname\" 0",
        ));
        put64(&mut b, 12, 0);
        let info = inspect_bytes(&b).unwrap();
        assert_eq!(info.extents, vec![PathBuf::from("/etc/hostname")]);
        assert_eq!(info.create_type.as_deref(), Some("monolithicFlat"));
    }

    #[test]
    fn parent_file_name_hint_is_a_backing_file() {
        let d = descriptor("monolithicSparse", "RW 2048 SPARSE \"disk.vmdk\"")
            + "parentFileNameHint=\"base.vmdk\"\n";
        let info = inspect_bytes(&sparse_image(&d)).unwrap();
        assert_eq!(info.backing_file, Some(PathBuf::from("base.vmdk")));
        assert_eq!(info.backing_format.as_deref(), Some("vmdk"));
        let d = descriptor("monolithicSparse", "") + "parentFileNameHint=\"base.vmdk\n";
        refused(&sparse_image(&d), &["no closing quote"]);
        // In a descriptor file too.
        let d = descriptor("monolithicFlat", "") + "parentFileNameHint=\"/etc/passwd\"";
        let info = inspect_bytes(d.as_bytes()).unwrap();
        assert_eq!(info.backing_file, Some(PathBuf::from("/etc/passwd")));
    }

    #[test]
    fn extent_lines() {
        let e = extent_line(b"  RW 2048 FLAT \"a b.vmdk\" 0\r").unwrap();
        assert_eq!(e.name, b"a b.vmdk");
        assert_eq!(e.sectors, Some(2048));
        assert_eq!(e.kind, b"FLAT");
        assert_eq!(extent_line(b"RW 2048 FLAT \"x\r\"").unwrap().name, b"x");
        assert!(extent_line(b"RW 2048 FLAT \"\"").is_none());
        assert!(extent_line(b"ddb.x = \"y\"").is_none());
        assert!(extent_line(b"RW").is_none());
        assert_eq!(
            create_type(b"createType=\"streamOptimized\""),
            Some("streamOptimized".into())
        );
        assert_eq!(create_type(b"createType"), None);
        assert_eq!(create_type(b"createType=\"x"), None);
    }

    #[test]
    fn truncated_files_never_panic() {
        let b = sparse_image(&descriptor("monolithicSparse", "RW 2048 SPARSE \"x\""));
        for len in [0, 3, 4, 100, 511, 512, 600, 5000, b.len()] {
            let _ = inspect_bytes(&b[..len]);
        }
    }
}

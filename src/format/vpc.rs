//! Virtual PC / Hyper-V VHD (qemu's `vpc` driver): fixed disks (raw data
//! and a 512-byte footer at the end), dynamic disks (a copy of the footer at
//! the start, a dynamic disk header and a block allocation table), and
//! differencing disks (dynamic disks with a parent).
//!
//! The virtual size is computed as qemu computes it: from the CHS geometry
//! for images made by Virtual PC and old qemu versions, from the footer's
//! current size otherwise.
//!
//! A differencing disk names its parent in the dynamic disk header (a
//! Unicode file name) and in parent locators (Windows relative and
//! absolute paths, a Mac URL). That name is reported as the backing file;
//! one that cannot be read is refused. qemu itself never opens a VHD
//! parent: it reads a differencing disk as if it were a dynamic one, so
//! its unallocated blocks read as zeros.
//!
//! Layout: Microsoft "Virtual Hard Disk Image Format Specification" 1.0;
//! qemu `block/vpc.c`.

use std::path::PathBuf;

use super::Format;
use super::ImageInfo;
use super::reader::{Src, be16, be32, be64, utf16, windows_path};
use crate::error::Result;
use crate::read_at::ReadAt;

const COOKIE: &[u8] = b"conectix";
const SPARSE_COOKIE: &[u8] = b"cxsparse";
const FOOTER_LEN: u64 = 512;
const DYN_HEADER_LEN: u64 = 1024;

const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFFERENCING: u32 = 4;

/// qemu's `VHD_MAX_SECTORS`: about 2040 GiB.
const MAX_SECTORS: u64 = 65535 * 255 * 255;
/// qemu's `VHD_MAX_GEOMETRY`: the largest CHS geometry, which means "use
/// the current size".
const MAX_GEOMETRY: u64 = 65535 * 16 * 255;

const LOCATOR_W2RU: u32 = u32::from_be_bytes(*b"W2ru");
const LOCATOR_W2KU: u32 = u32::from_be_bytes(*b"W2ku");
const LOCATOR_MACX: u32 = u32::from_be_bytes(*b"MacX");
/// The longest parent locator diskmount reads (a path, in UTF-16).
const MAX_LOCATOR: u64 = 64 << 10;

/// Parses and checks the VHD footer (and dynamic disk header) of `src`.
pub(crate) fn inspect<R: ReadAt + ?Sized>(src: &Src<'_, R>) -> Result<ImageInfo> {
    let inconsistent = |why: String| src.refuse(format!("the vhd image is inconsistent: {why}"));
    if src.size < FOOTER_LEN {
        return Err(src.refuse(format!(
            "the file is too short ({} bytes) for a vhd footer",
            src.size
        )));
    }
    // qemu: a footer copy at the start means a dynamic disk, a footer at
    // the end only means a fixed one.
    let start = src.read(0, FOOTER_LEN, "the vhd footer copy")?;
    let (footer, at_start) = if start.starts_with(COOKIE) {
        (start, true)
    } else {
        let end = src.read(src.size - FOOTER_LEN, FOOTER_LEN, "the vhd footer")?;
        if !end.starts_with(COOKIE) {
            return Err(
                src.refuse("not a vhd image: no \"conectix\" footer at the start or at the end")
            );
        }
        (end, false)
    };
    let stored = be32(&footer, 64);
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    if !sum != stored {
        return Err(inconsistent(format!(
            "the footer checksum is {stored:#010x}, its content sums to {:#010x}",
            !sum
        )));
    }

    let disk_type = be32(&footer, 60);
    let current_size = be64(&footer, 48);
    let chs = u64::from(be16(&footer, 56)) * u64::from(footer[58]) * u64::from(footer[59]);
    let creator = &footer[28..32];
    let use_chs = creator == b"vpc " || creator == b"qemu";
    let sectors = if !use_chs || chs == MAX_GEOMETRY {
        current_size / 512
    } else {
        chs
    };
    if sectors > MAX_SECTORS {
        return Err(inconsistent(format!(
            "a disk of {sectors} sectors is larger than qemu accepts ({MAX_SECTORS})"
        )));
    }
    let size = sectors * 512;

    if !at_start {
        if disk_type != TYPE_FIXED {
            return Err(inconsistent(format!(
                "the footer at the end says disk type {disk_type}, but only fixed disks (2) \
                 have no copy at the start"
            )));
        }
        if size > src.size - FOOTER_LEN {
            return Err(inconsistent(format!(
                "the fixed disk claims {size} bytes, but the file holds only {} before its \
                 footer",
                src.size - FOOTER_LEN
            )));
        }
        return Ok(ImageInfo::new(Format::Vpc, size));
    }

    match disk_type {
        TYPE_DYNAMIC | TYPE_DIFFERENCING => {}
        TYPE_FIXED => {
            return Err(inconsistent(
                "a fixed disk's footer is at the start of the file, where qemu takes it for \
                 a dynamic disk"
                    .into(),
            ));
        }
        t => return Err(inconsistent(format!("disk type {t} is unknown"))),
    }
    let data_offset = be64(&footer, 16);
    let d = src.read(data_offset, DYN_HEADER_LEN, "the vhd dynamic disk header")?;
    if !d.starts_with(SPARSE_COOKIE) {
        return Err(inconsistent(
            "the dynamic disk header has no \"cxsparse\" cookie".into(),
        ));
    }
    let table_offset = be64(&d, 16);
    let max_entries = u64::from(be32(&d, 28));
    let block_size = u64::from(be32(&d, 32));
    if !block_size.is_power_of_two() || block_size < 512 {
        return Err(inconsistent(format!(
            "block size {block_size} is not a power of two of at least 512"
        )));
    }
    if size / block_size > u64::from(u32::MAX) {
        return Err(inconsistent(format!(
            "{} blocks of {block_size} bytes are too many",
            size / block_size
        )));
    }
    if max_entries * block_size < size {
        return Err(inconsistent(format!(
            "its block allocation table ({max_entries} entries of {block_size} bytes) is too \
             small for {size} bytes"
        )));
    }
    if max_entries > i32::MAX as u64 / 4 {
        return Err(inconsistent(format!(
            "{max_entries} block allocation table entries are more than qemu accepts"
        )));
    }
    src.within(table_offset, max_entries * 4, "the block allocation table")?;

    let mut info = ImageInfo::new(Format::Vpc, size);
    if disk_type == TYPE_DIFFERENCING {
        let Some(parent) = parent_name(src, &d)? else {
            return Err(src.refuse(
                "a differencing vhd image whose parent cannot be read from its header; \
                 diskmount does not support it",
            ));
        };
        info.backing_file = Some(parent);
        info.backing_format = Some("vpc".to_string());
    }
    Ok(info)
}

/// The parent of a differencing disk: the relative Windows path, the Mac
/// URL, the Unicode name or the absolute Windows path, whichever is found
/// first in that order.
fn parent_name<R: ReadAt + ?Sized>(src: &Src<'_, R>, d: &[u8]) -> Result<Option<PathBuf>> {
    let mut relative = None;
    let mut absolute = None;
    let mut mac = None;
    for i in 0..8 {
        let e = &d[576 + i * 24..576 + (i + 1) * 24];
        let code = be32(e, 0);
        let len = u64::from(be32(e, 8));
        let offset = be64(e, 16);
        if !matches!(code, LOCATOR_W2RU | LOCATOR_W2KU | LOCATOR_MACX) || len == 0 {
            continue;
        }
        if len > MAX_LOCATOR {
            return Err(src.refuse(format!(
                "the vhd image is inconsistent: a parent locator of {len} bytes (paths are \
                 shorter than {MAX_LOCATOR})"
            )));
        }
        let data = src.read(offset, len, "a vhd parent locator")?;
        match code {
            LOCATOR_W2RU => relative = Some(windows_path(&utf16(&data, false))),
            LOCATOR_W2KU => absolute = Some(windows_path(&utf16(&data, false))),
            _ => {
                let url = String::from_utf8_lossy(&data);
                let path = url
                    .trim_end_matches('\0')
                    .strip_prefix("file://")
                    .map(|rest| {
                        // file://host/path or file:///path
                        rest.find('/')
                            .map_or(rest, |slash| &rest[slash..])
                            .to_string()
                    });
                mac = path.map(PathBuf::from);
            }
        }
    }
    let unicode = utf16(&d[64..576], true);
    let unicode = (!unicode.is_empty()).then(|| PathBuf::from(unicode));
    Ok([relative, mac, unicode, absolute]
        .into_iter()
        .flatten()
        .find(|p| !p.as_os_str().is_empty()))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;

    const IMG: &str = "/images/disk.vhd";

    fn footer(disk_type: u32, size: u64, creator: &[u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 512];
        f[..8].copy_from_slice(COOKIE);
        f[8..12].copy_from_slice(&2u32.to_be_bytes());
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        let data_offset = if disk_type == TYPE_FIXED {
            u64::MAX
        } else {
            512
        };
        f[16..24].copy_from_slice(&data_offset.to_be_bytes());
        f[28..32].copy_from_slice(creator);
        f[40..48].copy_from_slice(&size.to_be_bytes());
        f[48..56].copy_from_slice(&size.to_be_bytes());
        // 4 heads, 17 sectors: 1 MiB is 30 cylinders (1044480 bytes).
        f[56..58].copy_from_slice(&30u16.to_be_bytes());
        f[58] = 4;
        f[59] = 17;
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        seal(&mut f);
        f
    }

    fn seal(f: &mut [u8]) {
        f[64..68].fill(0);
        let sum = f.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    }

    pub(crate) fn fixed(size: u64, creator: &[u8; 4]) -> Vec<u8> {
        let mut b = vec![0u8; size as usize];
        b.extend(footer(TYPE_FIXED, size, creator));
        b
    }

    /// A dynamic disk: footer copy, dynamic header at 512, BAT at 1536
    /// (one entry, 2 MiB blocks), footer.
    pub(crate) fn dynamic(disk_type: u32) -> Vec<u8> {
        let f = footer(disk_type, 1 << 20, b"qem2");
        let mut b = f.clone();
        let mut d = vec![0u8; 1024];
        d[..8].copy_from_slice(SPARSE_COOKIE);
        d[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        d[16..24].copy_from_slice(&1536u64.to_be_bytes());
        d[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        d[28..32].copy_from_slice(&1u32.to_be_bytes());
        d[32..36].copy_from_slice(&(2u32 << 20).to_be_bytes());
        b.extend(d);
        b.extend([0xff; 512]);
        b.extend(f);
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
    fn fixed_disks_and_qemus_size_rule() {
        // CHS for Virtual PC and old qemu, the current size for the rest.
        assert_eq!(
            inspect_bytes(&fixed(1 << 20, b"qemu"))
                .unwrap()
                .virtual_size,
            1_044_480
        );
        assert_eq!(
            inspect_bytes(&fixed(1 << 20, b"vpc "))
                .unwrap()
                .virtual_size,
            1_044_480
        );
        assert_eq!(
            inspect_bytes(&fixed(1 << 20, b"win "))
                .unwrap()
                .virtual_size,
            1 << 20
        );
        assert_eq!(
            inspect_bytes(&fixed(1 << 20, b"qem2"))
                .unwrap()
                .virtual_size,
            1 << 20
        );
    }

    #[test]
    fn fixed_disk_limits() {
        let mut b = fixed(1 << 20, b"win ");
        let n = b.len();
        b[n - 512 + 100] ^= 1;
        refused(&b, &["checksum"]);
        let mut b = fixed(1 << 20, b"win ");
        b.drain(..4096);
        refused(&b, &["claims 1048576 bytes"]);
        let mut b = fixed(1 << 20, b"win ");
        let n = b.len();
        b[n - 512 + 48..n - 512 + 56].copy_from_slice(&u64::MAX.to_be_bytes());
        seal(&mut b[n - 512..]);
        refused(&b, &["larger than qemu accepts"]);
        let mut b = fixed(1 << 20, b"win ");
        let n = b.len();
        b[n - 512 + 63] = TYPE_DYNAMIC as u8;
        seal(&mut b[n - 512..]);
        refused(&b, &["disk type 3"]);
        refused(&[0u8; 100], &["too short"]);
        refused(&[0u8; 1000], &["not a vhd"]);
    }

    #[test]
    fn dynamic_disks() {
        let info = inspect_bytes(&dynamic(TYPE_DYNAMIC)).unwrap();
        assert_eq!(info.virtual_size, 1 << 20);
        assert_eq!(info.backing_file, None);
    }

    #[test]
    fn dynamic_disk_limits() {
        let mut b = dynamic(TYPE_DYNAMIC);
        b[512] = b'X';
        refused(&b, &["cxsparse"]);
        let mut b = dynamic(TYPE_DYNAMIC);
        b[512 + 32..512 + 36].copy_from_slice(&1000u32.to_be_bytes());
        refused(&b, &["block size 1000"]);
        let mut b = dynamic(TYPE_DYNAMIC);
        b[512 + 28..512 + 32].copy_from_slice(&0u32.to_be_bytes());
        refused(&b, &["too small"]);
        let mut b = dynamic(TYPE_DYNAMIC);
        b[512 + 28..512 + 32].copy_from_slice(&u32::MAX.to_be_bytes());
        refused(&b, &["more than qemu accepts"]);
        let mut b = dynamic(TYPE_DYNAMIC);
        b[512 + 28..512 + 32].copy_from_slice(&1_000_000u32.to_be_bytes());
        refused(&b, &["block allocation table", "beyond the end"]);
        let mut b = dynamic(TYPE_DYNAMIC);
        b[16..24].copy_from_slice(&(1u64 << 40).to_be_bytes());
        seal(&mut b[..512]);
        refused(&b, &["dynamic disk header", "beyond the end"]);
        let mut b = dynamic(TYPE_DYNAMIC);
        b[63] = TYPE_FIXED as u8;
        seal(&mut b[..512]);
        refused(&b, &["at the start"]);
    }

    fn utf16le(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn differencing_disks_report_their_parent() {
        // Nothing readable: refused.
        refused(&dynamic(TYPE_DIFFERENCING), &["differencing", "parent"]);
        // The Unicode name.
        let mut b = dynamic(TYPE_DIFFERENCING);
        let name: Vec<u8> = "base.vhd"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        b[512 + 64..512 + 64 + name.len()].copy_from_slice(&name);
        let info = inspect_bytes(&b).unwrap();
        assert_eq!(info.backing_file, Some(PathBuf::from("base.vhd")));
        assert_eq!(info.backing_format.as_deref(), Some("vpc"));
        // A relative Windows path wins, stored after the footer.
        let path = utf16le(".\\dir\\base.vhd");
        let at = b.len() as u64;
        let e = 512 + 576;
        b[e..e + 4].copy_from_slice(b"W2ru");
        b[e + 8..e + 12].copy_from_slice(&(path.len() as u32).to_be_bytes());
        b[e + 16..e + 24].copy_from_slice(&at.to_be_bytes());
        b.extend(&path);
        let info = inspect_bytes(&b).unwrap();
        assert_eq!(info.backing_file, Some(PathBuf::from("dir/base.vhd")));
        // A locator outside the file, or too long.
        b[e + 16..e + 24].copy_from_slice(&(1u64 << 40).to_be_bytes());
        refused(&b, &["parent locator", "beyond the end"]);
        b[e + 8..e + 12].copy_from_slice(&u32::MAX.to_be_bytes());
        refused(&b, &["parent locator of 4294967295 bytes"]);
    }

    #[test]
    fn mac_locators() {
        let mut b = dynamic(TYPE_DIFFERENCING);
        let url = b"file://localhost/Users/me/base.vhd";
        let at = b.len() as u64;
        let e = 512 + 576 + 24;
        b[e..e + 4].copy_from_slice(b"MacX");
        b[e + 8..e + 12].copy_from_slice(&(url.len() as u32).to_be_bytes());
        b[e + 16..e + 24].copy_from_slice(&at.to_be_bytes());
        b.extend(url);
        let info = inspect_bytes(&b).unwrap();
        assert_eq!(info.backing_file, Some(PathBuf::from("/Users/me/base.vhd")));
    }
}

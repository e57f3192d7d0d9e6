//! qcow2 (v2 and v3) headers: the fields qemu trusts when it opens an
//! image, checked for sanity, and the names of the host files the header
//! points at (backing file, external data file).
//!
//! The checks follow qemu's `qcow2_do_open` and add one qemu leaves to the
//! first I/O: every table the header locates lies inside the file.
//!
//! Layout: <https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.rst>

use std::path::PathBuf;

use super::Format;
use super::ImageInfo;
use super::reader::{Src, be32, be64, c_str, path_of};
use crate::error::{Error, Result};
use crate::read_at::ReadAt;

/// The largest virtual size diskmount accepts (32 PiB).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 55;

const MAGIC: &[u8] = b"QFI\xfb";
const V2_HEADER_LEN: u64 = 72;
const V3_HEADER_LEN: u64 = 104;

/// qemu's `QCOW_MAX_L1_SIZE`: 32 MiB of 8-byte entries.
const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;
/// qemu's `QCOW_MAX_REFTABLE_SIZE`.
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// qemu's `QCOW_MAX_SNAPSHOTS`.
const MAX_SNAPSHOTS: u64 = 65536;
/// The fixed part of a snapshot table entry.
const SNAPSHOT_HEADER_LEN: u64 = 40;
/// qemu keeps backing file names in a 1024-byte buffer.
const MAX_BACKING_NAME: u64 = 1023;
/// qemu keeps the backing format in a 16-byte buffer.
const MAX_BACKING_FORMAT: u32 = 15;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Parses and checks the qcow2 header of `src`.
pub(crate) fn inspect<R: ReadAt + ?Sized>(src: &Src<'_, R>) -> Result<ImageInfo> {
    if src.size < V2_HEADER_LEN {
        return Err(src.refuse(format!(
            "the file is too short ({} bytes) for a qcow2 header",
            src.size
        )));
    }
    let h = src.read_clipped(0, V3_HEADER_LEN + 8, "the qcow2 header")?;
    if !h.starts_with(MAGIC) {
        return Err(src.refuse("not a qcow2 image: the QFI\\xfb magic is missing"));
    }
    let version = be32(&h, 4);
    match version {
        2 | 3 => {}
        1 => {
            return Err(src.refuse(
                "a qcow version 1 image, which diskmount does not support \
                 (convert it: qemu-img convert -O qcow2)",
            ));
        }
        v => return Err(src.refuse(format!("unsupported qcow2 version {v}"))),
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(src.refuse(format!(
            "the qcow2 header is inconsistent: cluster_bits {cluster_bits} is outside 9..=21"
        )));
    }
    let cluster = 1u64 << cluster_bits;

    // The backing file name first: if anything else is wrong, the error
    // still says which host file the header points at.
    let backing = backing_name(src, &h, cluster)?;
    let body = header_body(src, &h, version, cluster_bits);
    let mut info = match (body, &backing) {
        (Ok(info), _) => info,
        (
            Err(Error::Invalid {
                step,
                path,
                reason,
                kind,
            }),
            Some(name),
        ) => {
            return Err(Error::Invalid {
                step,
                path,
                kind,
                reason: format!(
                    "{reason} (the header also names a backing file, {})",
                    name.display()
                ),
            });
        }
        (Err(e), _) => return Err(e),
    };
    info.backing_file = backing;
    Ok(info)
}

/// The backing file name, if the header has one (qemu's limits: inside
/// the first cluster, at most 1023 bytes).
fn backing_name<R: ReadAt + ?Sized>(
    src: &Src<'_, R>,
    h: &[u8],
    cluster: u64,
) -> Result<Option<PathBuf>> {
    let offset = be64(h, 8);
    let len = u64::from(be32(h, 16));
    if offset == 0 {
        return Ok(None);
    }
    if offset > cluster {
        return Err(src.refuse(format!(
            "the qcow2 header is inconsistent: the backing file name offset {offset} lies \
             beyond the first cluster ({cluster} bytes)"
        )));
    }
    if len > MAX_BACKING_NAME.min(cluster - offset) {
        return Err(src.refuse(format!(
            "the qcow2 header is inconsistent: its backing file name is {len} bytes long \
             (qemu allows at most {})",
            MAX_BACKING_NAME.min(cluster - offset)
        )));
    }
    let name = src.read(offset, len, "the backing file name")?;
    let name = c_str(&name);
    Ok((!name.is_empty()).then(|| path_of(name)))
}

/// Everything but the backing file name.
fn header_body<R: ReadAt + ?Sized>(
    src: &Src<'_, R>,
    h: &[u8],
    version: u32,
    cluster_bits: u32,
) -> Result<ImageInfo> {
    let inconsistent = |why: String| src.refuse(format!("the qcow2 header is inconsistent: {why}"));
    let cluster = 1u64 << cluster_bits;
    let size = be64(h, 24);
    let crypt_method = be32(h, 32);
    let l1_size = u64::from(be32(h, 36));
    let l1_offset = be64(h, 40);
    let reftable_offset = be64(h, 48);
    let reftable_clusters = u64::from(be32(h, 56));
    let nb_snapshots = u64::from(be32(h, 60));
    let snapshots_offset = be64(h, 64);
    let (incompat, autoclear, refcount_order, header_len) = if version == 3 {
        if (h.len() as u64) < V3_HEADER_LEN {
            return Err(inconsistent(format!(
                "the file ({} bytes) ends inside the version 3 header",
                src.size
            )));
        }
        (
            be64(h, 72),
            be64(h, 88),
            be32(h, 96),
            u64::from(be32(h, 100)),
        )
    } else {
        (0, 0, 4, V2_HEADER_LEN)
    };

    if version == 3 && header_len < V3_HEADER_LEN {
        return Err(inconsistent(format!(
            "header_length {header_len} is shorter than a version 3 header"
        )));
    }
    if header_len > cluster {
        return Err(inconsistent(format!(
            "header_length {header_len} exceeds the cluster size {cluster}"
        )));
    }
    if size > MAX_VIRTUAL_SIZE {
        return Err(inconsistent(format!(
            "a virtual size of {size} bytes is absurd (diskmount accepts up to \
             {MAX_VIRTUAL_SIZE})"
        )));
    }
    if crypt_method != 0 {
        let how = match crypt_method {
            1 => "AES",
            2 => "LUKS",
            _ => "an unknown method",
        };
        return Err(src.refuse(format!(
            "the qcow2 image is encrypted ({how}, crypt_method {crypt_method}), which \
             diskmount does not support"
        )));
    }

    // Feature bits (version 3).
    let unknown = incompat & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(src.refuse(format!(
            "the qcow2 image uses incompatible features diskmount does not know \
             (bits {unknown:#x})"
        )));
    }
    if incompat & INCOMPAT_CORRUPT != 0 {
        return Err(src
            .refuse("the qcow2 image is marked corrupt (repair it first: qemu-img check -r all)"));
    }
    let compression_type = if header_len > V3_HEADER_LEN {
        h.get(104).copied().unwrap_or(0)
    } else {
        0
    };
    match (compression_type, incompat & INCOMPAT_COMPRESSION != 0) {
        (0, false) | (1, true) => {}
        (0, true) => {
            return Err(inconsistent(
                "the compression type bit is set for the default (zlib) compression".into(),
            ));
        }
        (t, _) => {
            return Err(inconsistent(format!(
                "compression type {t} is unknown or not flagged as an incompatible feature"
            )));
        }
    }
    let l2_entry_len: u64 = if incompat & INCOMPAT_EXTL2 != 0 {
        if cluster_bits < 14 {
            return Err(inconsistent(format!(
                "extended L2 entries need clusters of at least 16 KiB, not {cluster} bytes"
            )));
        }
        16
    } else {
        8
    };
    if refcount_order > 6 {
        return Err(inconsistent(format!(
            "refcount_order {refcount_order} is larger than 6 (64-bit refcounts)"
        )));
    }

    // The tables the header locates: aligned, of a size qemu accepts, and
    // inside the file.
    let aligned = |offset: u64, what: &str| {
        if !offset.is_multiple_of(cluster) {
            Err(inconsistent(format!(
                "the {what} offset {offset} is not aligned to a cluster ({cluster} bytes)"
            )))
        } else {
            Ok(())
        }
    };
    if reftable_clusters == 0 {
        return Err(inconsistent("it has no refcount table".into()));
    }
    let reftable_len = reftable_clusters << cluster_bits;
    if reftable_len > MAX_REFTABLE_BYTES {
        return Err(inconsistent(format!(
            "a refcount table of {reftable_clusters} clusters ({reftable_len} bytes) is larger \
             than qemu accepts ({MAX_REFTABLE_BYTES})"
        )));
    }
    aligned(reftable_offset, "refcount table")?;
    src.within(reftable_offset, reftable_len, "the refcount table")?;

    if nb_snapshots > MAX_SNAPSHOTS {
        return Err(inconsistent(format!(
            "{nb_snapshots} snapshots are more than qemu accepts ({MAX_SNAPSHOTS})"
        )));
    }
    aligned(snapshots_offset, "snapshot table")?;
    if nb_snapshots > 0 {
        src.within(
            snapshots_offset,
            nb_snapshots * SNAPSHOT_HEADER_LEN,
            "the snapshot table",
        )?;
    }

    if l1_size > MAX_L1_ENTRIES {
        return Err(inconsistent(format!(
            "an L1 table of {l1_size} entries is larger than qemu accepts ({MAX_L1_ENTRIES})"
        )));
    }
    aligned(l1_offset, "L1 table")?;
    let l2_entries = cluster / l2_entry_len;
    let bytes_per_l1_entry = cluster * l2_entries;
    let needed = size.div_ceil(bytes_per_l1_entry);
    if l1_size < needed {
        return Err(inconsistent(format!(
            "its L1 table ({l1_size} entries) is too small for a virtual size of {size} bytes \
             ({needed} entries needed)"
        )));
    }
    if l1_size > 0 {
        src.within(l1_offset, l1_size * 8, "the L1 table")?;
    }

    // Header extensions: between the header and the backing file name (or
    // the end of the first cluster).
    let backing_offset = be64(h, 8);
    let ext_end = if backing_offset != 0 {
        backing_offset
    } else {
        cluster
    };
    let mut backing_format = None;
    let mut data_file = None;
    if ext_end > header_len {
        let ext = src.read_clipped(header_len, ext_end - header_len, "the header extensions")?;
        let mut off = 0usize;
        while off + 8 <= ext.len() {
            let kind = be32(&ext, off);
            let len = be32(&ext, off + 4);
            if kind == EXT_END {
                break;
            }
            let data_start = off + 8;
            let data =
                match (data_start.checked_add(len as usize)).and_then(|e| ext.get(data_start..e)) {
                    Some(d) => d,
                    None => {
                        return Err(inconsistent(format!(
                            "header extension {kind:#010x} ({len} bytes at byte {}) runs past the \
                         end of the extension area",
                            header_len + data_start as u64
                        )));
                    }
                };
            match kind {
                EXT_BACKING_FORMAT => {
                    if len > MAX_BACKING_FORMAT {
                        return Err(inconsistent(format!(
                            "the backing format name is {len} bytes long (qemu allows at most \
                             {MAX_BACKING_FORMAT})"
                        )));
                    }
                    backing_format = Some(String::from_utf8_lossy(c_str(data)).into_owned());
                }
                EXT_DATA_FILE => {
                    let name = c_str(data);
                    data_file = (!name.is_empty()).then(|| path_of(name));
                }
                _ => {}
            }
            off = data_start + (len as usize).next_multiple_of(8);
        }
    }
    if incompat & INCOMPAT_DATA_FILE != 0 && data_file.is_none() {
        return Err(src.refuse(
            "the qcow2 image keeps its data in an external data file that its header does \
             not name (qemu would need a data-file option); diskmount does not support \
             external data files",
        ));
    }
    if autoclear & AUTOCLEAR_DATA_FILE_RAW != 0 && incompat & INCOMPAT_DATA_FILE == 0 {
        return Err(inconsistent(
            "the data-file-raw bit is set but the image has no external data file".into(),
        ));
    }

    let mut info = ImageInfo::new(Format::Qcow2, size);
    info.backing_format = backing_format;
    info.data_file = data_file;
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;

    const C: usize = 65536;

    /// A valid empty qcow2 v3 image of 1 MiB virtual size, 64 KiB clusters:
    /// header, refcount table, refcount block, L1 table.
    pub(crate) fn image() -> Vec<u8> {
        let mut b = vec![0u8; 4 * C];
        b[..4].copy_from_slice(MAGIC);
        put32(&mut b, 4, 3);
        put32(&mut b, 20, 16);
        put64(&mut b, 24, 1 << 20);
        put32(&mut b, 36, 1);
        put64(&mut b, 40, 3 * C as u64);
        put64(&mut b, 48, C as u64);
        put32(&mut b, 56, 1);
        put32(&mut b, 96, 4);
        put32(&mut b, 100, 112);
        b
    }

    pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_be_bytes());
    }

    /// Adds a header extension at `*at` (starting at byte 112).
    pub(crate) fn ext(b: &mut [u8], at: &mut usize, kind: u32, data: &[u8]) {
        put32(b, *at, kind);
        put32(b, *at + 4, data.len() as u32);
        b[*at + 8..*at + 8 + data.len()].copy_from_slice(data);
        *at += 8 + data.len().next_multiple_of(8);
    }

    pub(crate) fn with_backing(mut b: Vec<u8>, name: &str) -> Vec<u8> {
        put64(&mut b, 8, 512);
        put32(&mut b, 16, name.len() as u32);
        b[512..512 + name.len()].copy_from_slice(name.as_bytes());
        b
    }

    fn inspect_bytes(b: &[u8]) -> Result<ImageInfo> {
        inspect(&Src::new(b, Path::new("/images/disk.qcow2")).unwrap())
    }

    #[track_caller]
    fn refused(b: &[u8], words: &[&str]) {
        crate::format::testing::assert_refused(inspect_bytes(b), "/images/disk.qcow2", words);
    }

    #[test]
    fn a_plain_image() {
        let info = inspect_bytes(&image()).unwrap();
        assert_eq!(info.format, Format::Qcow2);
        assert_eq!(info.virtual_size, 1 << 20);
        assert_eq!(info.backing_file, None);
        assert_eq!(info.data_file, None);
    }

    #[test]
    fn version_2_has_a_short_header() {
        let mut b = image();
        put32(&mut b, 4, 2);
        b[72..112].fill(0);
        assert_eq!(inspect_bytes(&b).unwrap().virtual_size, 1 << 20);
    }

    #[test]
    fn backing_file_and_format() {
        let mut b = with_backing(image(), "/etc/hostname");
        let mut at = 112;
        ext(&mut b, &mut at, EXT_BACKING_FORMAT, b"raw");
        let info = inspect_bytes(&b).unwrap();
        assert_eq!(info.backing_file, Some(PathBuf::from("/etc/hostname")));
        assert_eq!(info.backing_format.as_deref(), Some("raw"));
    }

    #[test]
    fn external_data_file() {
        let mut b = image();
        let mut at = 112;
        ext(&mut b, &mut at, EXT_DATA_FILE, b"/dev/sda");
        b[79] |= INCOMPAT_DATA_FILE as u8;
        let info = inspect_bytes(&b).unwrap();
        assert_eq!(info.data_file, Some(PathBuf::from("/dev/sda")));
        // The bit without a name.
        let mut b = image();
        b[79] |= INCOMPAT_DATA_FILE as u8;
        refused(&b, &["external data file", "does not name"]);
    }

    #[test]
    fn versions_and_magic() {
        let mut b = image();
        put32(&mut b, 4, 1);
        refused(&b, &["qcow version 1"]);
        put32(&mut b, 4, 4);
        refused(&b, &["version 4"]);
        b[0] = b'X';
        refused(&b, &["magic"]);
        refused(&image()[..50], &["too short"]);
    }

    #[test]
    fn cluster_bits_boundaries() {
        for bits in [8, 9, 16, 21, 22] {
            let mut b = image();
            put32(&mut b, 20, bits);
            put64(&mut b, 24, 32 << 10); // one L1 entry covers it at any size
            let r = inspect_bytes(&b);
            match bits {
                9 | 16 => {
                    r.unwrap();
                }
                // The tables at multiples of 64 KiB are not aligned to 2 MiB.
                21 => assert!(r.unwrap_err().to_string().contains("not aligned")),
                _ => assert!(r.unwrap_err().to_string().contains("cluster_bits")),
            }
        }
    }

    #[test]
    fn absurd_virtual_size() {
        let mut b = image();
        put64(&mut b, 24, MAX_VIRTUAL_SIZE + 1);
        refused(&b, &["absurd"]);
        put64(&mut b, 24, u64::MAX);
        refused(&b, &["absurd"]);
    }

    #[test]
    fn huge_l1_claims_are_refused_without_reading() {
        let mut b = image();
        put32(&mut b, 36, u32::MAX);
        refused(&b, &["L1 table of 4294967295 entries"]);
        let mut b = image();
        put32(&mut b, 36, MAX_L1_ENTRIES as u32);
        refused(&b, &["L1 table", "beyond the end"]);
    }

    #[test]
    fn l1_table_beyond_the_file() {
        let mut b = image();
        put64(&mut b, 40, 100 * C as u64);
        refused(&b, &["inconsistent", "L1 table", "beyond the end"]);
        // Still names the backing file.
        let b = with_backing(b, "/etc/hostname");
        refused(&b, &["L1 table", "/etc/hostname"]);
    }

    #[test]
    fn l1_table_too_small_or_unaligned() {
        let mut b = image();
        put64(&mut b, 24, 1 << 40);
        refused(&b, &["too small"]);
        let mut b = image();
        put64(&mut b, 40, 3 * C as u64 + 8);
        refused(&b, &["not aligned"]);
    }

    #[test]
    fn refcount_table_checks() {
        let mut b = image();
        put32(&mut b, 56, 0);
        refused(&b, &["no refcount table"]);
        put32(&mut b, 56, 1000);
        refused(&b, &["refcount table of 1000 clusters"]);
        put32(&mut b, 56, 1);
        put64(&mut b, 48, 4 * C as u64);
        refused(&b, &["refcount table", "beyond the end"]);
        let mut b = image();
        put32(&mut b, 96, 7);
        refused(&b, &["refcount_order"]);
    }

    #[test]
    fn snapshot_table_checks() {
        let mut b = image();
        put32(&mut b, 60, 70000);
        refused(&b, &["70000 snapshots"]);
        put32(&mut b, 60, 10);
        put64(&mut b, 64, 8 * C as u64);
        refused(&b, &["snapshot table", "beyond the end"]);
    }

    #[test]
    fn encryption_corruption_and_unknown_features() {
        let mut b = image();
        put32(&mut b, 32, 2);
        refused(&b, &["encrypted", "LUKS"]);
        let mut b = image();
        b[79] |= INCOMPAT_CORRUPT as u8;
        refused(&b, &["corrupt"]);
        let mut b = image();
        b[72] = 0x80;
        refused(&b, &["incompatible features"]);
        let mut b = image();
        b[104] = 1; // zstd without the bit
        refused(&b, &["compression type 1"]);
        b[79] |= INCOMPAT_COMPRESSION as u8;
        inspect_bytes(&b).unwrap();
    }

    #[test]
    fn header_length_and_backing_name_limits() {
        let mut b = image();
        put32(&mut b, 100, 100);
        refused(&b, &["header_length 100"]);
        put32(&mut b, 100, 2 * C as u32);
        refused(&b, &["exceeds the cluster size"]);
        let mut b = with_backing(image(), "x");
        put32(&mut b, 16, 1024);
        refused(&b, &["1024 bytes long"]);
        let mut b = with_backing(image(), "x");
        put64(&mut b, 8, 2 * C as u64);
        refused(&b, &["beyond the first cluster"]);
    }

    #[test]
    fn extensions_are_bounded() {
        let mut b = image();
        put32(&mut b, 112, EXT_DATA_FILE);
        put32(&mut b, 116, u32::MAX);
        refused(&b, &["runs past the end"]);
        let mut b = image();
        let mut at = 112;
        ext(&mut b, &mut at, EXT_BACKING_FORMAT, &[b'q'; 20]);
        refused(&b, &["backing format name is 20 bytes"]);
    }

    #[test]
    fn truncated_files_never_panic() {
        let b = with_backing(image(), "/etc/hostname");
        for len in [0, 1, 4, 71, 72, 100, 104, 111, 200, 600, C, 3 * C] {
            let _ = inspect_bytes(&b[..len]);
        }
    }
}

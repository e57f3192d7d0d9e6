//! VirtualBox disk images (VDI 1.1): the header qemu's `vdi` driver
//! accepts, with the block map and the data inside the file.
//!
//! VDI has no host path in its header: differencing images name their
//! parent by UUID only, and qemu refuses them; so does diskmount.
//!
//! Layout: qemu `block/vdi.c` (`VdiHeader`).

use super::Format;
use super::ImageInfo;
use super::reader::{Src, le32, le64};
use crate::error::Result;
use crate::read_at::ReadAt;

const SIGNATURE: u32 = 0xbeda_107f;
const VERSION_1_1: u32 = 0x0001_0001;
const HEADER_LEN: u64 = 0x1c8;
const SECTOR: u64 = 512;
const BLOCK_SIZE: u64 = 1 << 20;
/// qemu's `VDI_BLOCKS_IN_IMAGE_MAX`.
const MAX_BLOCKS: u64 = u32::MAX as u64 / 4;

const TYPE_DYNAMIC: u32 = 1;
const TYPE_STATIC: u32 = 2;

/// Parses and checks the VDI header of `src`.
pub(crate) fn inspect<R: ReadAt + ?Sized>(src: &Src<'_, R>) -> Result<ImageInfo> {
    let inconsistent = |why: String| src.refuse(format!("the vdi header is inconsistent: {why}"));
    if src.size < HEADER_LEN {
        return Err(src.refuse(format!(
            "the file is too short ({} bytes) for a vdi header",
            src.size
        )));
    }
    let h = src.read(0, HEADER_LEN, "the vdi header")?;
    if le32(&h, 0x40) != SIGNATURE {
        return Err(src.refuse("not a vdi image: the signature 0xbeda107f at byte 64 is missing"));
    }
    let version = le32(&h, 0x44);
    if version != VERSION_1_1 {
        return Err(src.refuse(format!(
            "unsupported vdi version {}.{} (qemu reads 1.1)",
            version >> 16,
            version & 0xffff
        )));
    }
    let image_type = le32(&h, 0x4c);
    let offset_bmap = u64::from(le32(&h, 0x154));
    let offset_data = u64::from(le32(&h, 0x158));
    let sector_size = u64::from(le32(&h, 0x168));
    let disk_size = le64(&h, 0x170);
    let block_size = u64::from(le32(&h, 0x178));
    let block_extra = u64::from(le32(&h, 0x17c));
    let blocks = u64::from(le32(&h, 0x180));
    let allocated = u64::from(le32(&h, 0x184));
    let uuid_link = &h[0x1a8..0x1b8];
    let uuid_parent = &h[0x1b8..0x1c8];

    if uuid_parent.iter().any(|&b| b != 0) || uuid_link.iter().any(|&b| b != 0) {
        return Err(src.refuse(
            "a differencing vdi image: it names a parent image by UUID (not by path), which \
             neither qemu nor diskmount supports",
        ));
    }
    match image_type {
        TYPE_DYNAMIC | TYPE_STATIC => {}
        3 | 4 => {
            return Err(src.refuse(format!(
                "a vdi {} image, which needs a parent image; diskmount does not support it",
                if image_type == 3 {
                    "undo"
                } else {
                    "differencing"
                }
            )));
        }
        t => return Err(inconsistent(format!("image type {t} is unknown"))),
    }
    if sector_size != SECTOR {
        return Err(inconsistent(format!(
            "sector size {sector_size} is not 512"
        )));
    }
    if block_size != BLOCK_SIZE {
        return Err(inconsistent(format!(
            "block size {block_size} is not 1 MiB (the only one qemu reads)"
        )));
    }
    if !offset_bmap.is_multiple_of(SECTOR) || !offset_data.is_multiple_of(SECTOR) {
        return Err(inconsistent(format!(
            "the block map ({offset_bmap}) or data ({offset_data}) offset is not \
             sector-aligned"
        )));
    }
    if blocks > MAX_BLOCKS {
        return Err(inconsistent(format!(
            "{blocks} blocks are more than qemu accepts ({MAX_BLOCKS})"
        )));
    }
    if allocated > blocks {
        return Err(inconsistent(format!(
            "{allocated} blocks allocated out of {blocks}"
        )));
    }
    if disk_size > MAX_BLOCKS * BLOCK_SIZE {
        return Err(inconsistent(format!(
            "a disk size of {disk_size} bytes is more than qemu accepts"
        )));
    }
    // Rounded up to whole sectors, as qemu does.
    let size = disk_size.div_ceil(SECTOR) * SECTOR;
    if size > blocks * block_size {
        return Err(inconsistent(format!(
            "a disk of {disk_size} bytes does not fit in {blocks} blocks of {block_size} bytes"
        )));
    }
    if offset_bmap < HEADER_LEN {
        return Err(inconsistent(format!(
            "the block map at byte {offset_bmap} overlaps the header"
        )));
    }
    let bmap_end = offset_bmap + blocks * 4;
    if bmap_end > offset_data {
        return Err(inconsistent(format!(
            "the block map (bytes {offset_bmap}..{bmap_end}) runs into the data at byte \
             {offset_data}"
        )));
    }
    src.within(offset_bmap, blocks * 4, "the block map")?;
    src.within(
        offset_data,
        allocated * (block_size + block_extra),
        "the allocated blocks",
    )?;
    Ok(ImageInfo::new(Format::Vdi, size))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;

    const IMG: &str = "/images/disk.vdi";

    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// A dynamic 3 MiB image with all three blocks allocated, as qemu
    /// writes it.
    pub(crate) fn image() -> Vec<u8> {
        let mut b = vec![0u8; 0x400 + 3 * (1 << 20)];
        b[..4].copy_from_slice(b"<<< ");
        put32(&mut b, 0x40, SIGNATURE);
        put32(&mut b, 0x44, VERSION_1_1);
        put32(&mut b, 0x48, 0x180);
        put32(&mut b, 0x4c, TYPE_DYNAMIC);
        put32(&mut b, 0x154, 0x200);
        put32(&mut b, 0x158, 0x400);
        put32(&mut b, 0x168, 512);
        b[0x170..0x178].copy_from_slice(&(3u64 << 20).to_le_bytes());
        put32(&mut b, 0x178, 1 << 20);
        put32(&mut b, 0x180, 3);
        put32(&mut b, 0x184, 3);
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
    fn a_dynamic_image() {
        assert_eq!(inspect_bytes(&image()).unwrap().virtual_size, 3 << 20);
        // Odd sizes round up to a sector.
        let mut b = image();
        b[0x170..0x178].copy_from_slice(&((2u64 << 20) + 1).to_le_bytes());
        assert_eq!(inspect_bytes(&b).unwrap().virtual_size, (2 << 20) + 512);
    }

    #[test]
    fn differencing_images_are_refused() {
        let mut b = image();
        b[0x1b8] = 1;
        refused(&b, &["differencing", "UUID"]);
        let mut b = image();
        put32(&mut b, 0x4c, 4);
        refused(&b, &["differencing"]);
        put32(&mut b, 0x4c, 9);
        refused(&b, &["image type 9"]);
    }

    #[test]
    fn header_limits() {
        let mut b = image();
        put32(&mut b, 0x44, 0x0001_0000);
        refused(&b, &["version 1.0"]);
        let mut b = image();
        put32(&mut b, 0x178, 4096);
        refused(&b, &["block size 4096"]);
        let mut b = image();
        put32(&mut b, 0x168, 4096);
        refused(&b, &["sector size 4096"]);
        let mut b = image();
        put32(&mut b, 0x154, 0x201);
        refused(&b, &["not sector-aligned"]);
        let mut b = image();
        b[0x170..0x178].copy_from_slice(&u64::MAX.to_le_bytes());
        refused(&b, &["disk size of 18446744073709551615"]);
        b[0x170..0x178].copy_from_slice(&(4u64 << 20).to_le_bytes());
        refused(&b, &["does not fit"]);
        let mut b = image();
        put32(&mut b, 0x180, u32::MAX);
        refused(&b, &["more than qemu accepts"]);
        let mut b = image();
        put32(&mut b, 0x184, 4);
        refused(&b, &["4 blocks allocated out of 3"]);
        refused(&image()[..100], &["too short"]);
        let mut b = image();
        b[0x40] = 0;
        refused(&b, &["signature"]);
    }

    #[test]
    fn tables_and_data_inside_the_file() {
        let mut b = image();
        put32(&mut b, 0x154, 0);
        refused(&b, &["overlaps the header"]);
        let mut b = image();
        put32(&mut b, 0x180, 1000);
        b[0x170..0x178].copy_from_slice(&(3u64 << 20).to_le_bytes());
        refused(&b, &["runs into the data"]);
        let b = image();
        refused(&b[..b.len() - 1], &["allocated blocks", "beyond the end"]);
        let mut b = image();
        put32(&mut b, 0x158, 0x8000_0000);
        refused(&b, &["beyond the end"]);
    }
}

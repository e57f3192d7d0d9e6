//! btrfs ioctls on a mounted filesystem: searching its trees and turning
//! an inode of a subvolume into a path.
//!
//! The structures are written out here (`linux-raw-sys` has them only
//! behind a feature this crate does not enable) and their sizes checked
//! against the kernel's at compile time.
//!
//! # References
//! - [`ioctl_btrfs(2)`](https://man7.org/linux/man-pages/man2/ioctl_btrfs.2.html)
//! - [`include/uapi/linux/btrfs.h`](https://github.com/torvalds/linux/blob/master/include/uapi/linux/btrfs.h)
//! - [btrfs-progs' `libbtrfsutil` subvolume iterator](https://github.com/kdave/btrfs-progs/blob/master/libbtrfsutil/subvolume.c)

use std::os::fd::{AsRawFd, BorrowedFd};

/// `BTRFS_IOCTL_MAGIC`.
const MAGIC: u8 = 0x94;

/// The key range of a tree search (`struct btrfs_ioctl_search_key`): the
/// items whose (objectid, type, offset) lie between the minimum and the
/// maximum, compared as one compound key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct SearchKey {
    /// The tree to search (1: the root tree).
    pub tree_id: u64,
    pub min_objectid: u64,
    pub max_objectid: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    pub min_transid: u64,
    pub max_transid: u64,
    pub min_type: u32,
    pub max_type: u32,
    /// In: the most items wanted; out: how many were returned.
    pub nr_items: u32,
    /// Zero.
    pub unused: u32,
    /// Zero.
    pub unused1: u64,
    /// Zero.
    pub unused2: u64,
    /// Zero.
    pub unused3: u64,
    /// Zero.
    pub unused4: u64,
}

/// The size of the result buffer of `BTRFS_IOC_TREE_SEARCH`.
const SEARCH_BUF: usize = 4096 - std::mem::size_of::<SearchKey>();

#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; SEARCH_BUF],
}

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

const _: () = assert!(std::mem::size_of::<SearchKey>() == 104);
const _: () = assert!(std::mem::size_of::<SearchArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);

nix::ioctl_readwrite!(raw_tree_search, MAGIC, 17, SearchArgs);
nix::ioctl_readwrite!(raw_ino_lookup, MAGIC, 18, InoLookupArgs);

/// One item a tree search returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    /// The transaction that last changed it.
    pub transid: u64,
    /// Its key.
    pub objectid: u64,
    pub item_type: u32,
    pub offset: u64,
    /// Its bytes (little-endian on-disk structures).
    pub data: Vec<u8>,
}

/// Searches a tree of the filesystem `fs` is on (needs `CAP_SYS_ADMIN`):
/// at most `key.nr_items` items from `key`'s minimum on, as many as fit
/// the kernel's 4 KiB buffer; `key.nr_items` says how many came back.
/// An empty result means the range holds no more items.
///
/// # References
/// - [`ioctl_btrfs(2)`](https://man7.org/linux/man-pages/man2/ioctl_btrfs.2.html), `BTRFS_IOC_TREE_SEARCH`
#[doc(alias = "BTRFS_IOC_TREE_SEARCH")]
pub(crate) fn tree_search(fs: BorrowedFd<'_>, key: &mut SearchKey) -> nix::Result<Vec<Item>> {
    let mut args = SearchArgs {
        key: *key,
        buf: [0; SEARCH_BUF],
    };
    // SAFETY: `args` is a live, writable struct of the size the request
    // encodes (4096 bytes, checked above); the kernel writes at most that
    // many bytes, and the descriptor is open while borrowed.
    unsafe { raw_tree_search(fs.as_raw_fd(), &mut args) }?;
    *key = args.key;
    let mut items = Vec::new();
    let mut pos = 0usize;
    let u64_at = |b: &[u8], p: usize| u64::from_ne_bytes(b[p..p + 8].try_into().expect("8 bytes"));
    let u32_at = |b: &[u8], p: usize| u32::from_ne_bytes(b[p..p + 4].try_into().expect("4 bytes"));
    for _ in 0..args.key.nr_items {
        // struct btrfs_ioctl_search_header: transid, objectid, offset, type, len.
        let Some(h) = args.buf.get(pos..pos + 32) else {
            break;
        };
        let len = u32_at(h, 28) as usize;
        let Some(data) = args.buf.get(pos + 32..pos + 32 + len) else {
            break;
        };
        items.push(Item {
            transid: u64_at(h, 0),
            objectid: u64_at(h, 8),
            offset: u64_at(h, 16),
            item_type: u32_at(h, 24),
            data: data.to_vec(),
        });
        pos += 32 + len;
    }
    Ok(items)
}

/// The path, inside subvolume `tree_id`, of the directory whose inode is
/// `objectid`, with a trailing `/` (empty for the subvolume's own top
/// directory). Needs `CAP_SYS_ADMIN`.
///
/// # References
/// - [`ioctl_btrfs(2)`](https://man7.org/linux/man-pages/man2/ioctl_btrfs.2.html), `BTRFS_IOC_INO_LOOKUP`
#[doc(alias = "BTRFS_IOC_INO_LOOKUP")]
pub(crate) fn ino_lookup(fs: BorrowedFd<'_>, tree_id: u64, objectid: u64) -> nix::Result<Vec<u8>> {
    let mut args = InoLookupArgs {
        treeid: tree_id,
        objectid,
        name: [0; 4080],
    };
    // SAFETY: `args` is a live, writable struct of the size the request
    // encodes (4096 bytes, checked above); the kernel writes a
    // NUL-terminated path into `name`, and the descriptor is open while
    // borrowed.
    unsafe { raw_ino_lookup(fs.as_raw_fd(), &mut args) }?;
    let end = args
        .name
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(args.name.len());
    Ok(args.name[..end].to_vec())
}

//! The subvolumes of a mounted btrfs filesystem, read from its root tree
//! through the kernel (`BTRFS_IOC_TREE_SEARCH` for the root back
//! references, `BTRFS_IOC_INO_LOOKUP` for the directory each subvolume
//! sits in), never from the guest's bytes by our own code.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use log::debug;

use crate::error::{Error, Result, Step};
use crate::sys::btrfs::{SearchKey, ino_lookup, tree_search};

/// The id of the top-level subvolume (`BTRFS_FS_TREE_OBJECTID`).
pub const TOP_LEVEL: u64 = 5;

/// The most subvolumes diskmount lists on one filesystem.
pub const MAX_SUBVOLUMES: usize = 1 << 16;

/// `BTRFS_ROOT_TREE_OBJECTID`: the tree of trees.
const ROOT_TREE: u64 = 1;
/// `BTRFS_ROOT_BACKREF_KEY`: "subvolume `objectid` is in subvolume `offset`".
const ROOT_BACKREF_KEY: u32 = 144;
/// `BTRFS_FIRST_FREE_OBJECTID`: the first subvolume id, and the inode of
/// every subvolume's top directory.
const FIRST_FREE: u64 = 256;
/// `BTRFS_LAST_FREE_OBJECTID` (-256 as u64).
const LAST_FREE: u64 = u64::MAX - 255;

/// A subvolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subvolume {
    /// Its id (256 and up).
    pub id: u64,
    /// The id of the subvolume it sits in ([`TOP_LEVEL`] for one in the
    /// top level).
    pub parent: u64,
    /// Its name: the last component of its path.
    pub name: String,
    /// Its path from the top level, as `subvol=` takes it (`root`,
    /// `root/var/lib/machines`).
    pub path: PathBuf,
}

/// One root back reference: where a subvolume sits.
struct Backref {
    id: u64,
    parent: u64,
    dir: u64,
    name: Vec<u8>,
}

/// Lists the subvolumes of the btrfs filesystem whose top level (subvolume
/// 5) is open as `top` (the root directory of a mount without `subvol=`),
/// sorted by id. Needs `CAP_SYS_ADMIN`.
///
/// # Errors
/// [`Step::Probe`], naming `path` (the mount point, for messages): not
/// btrfs, the ioctls refused, or a tree that does not hang together (a
/// subvolume whose parent is unknown, a cycle, more than
/// [`MAX_SUBVOLUMES`]).
pub fn list_subvolumes(top: BorrowedFd<'_>, path: &Path) -> Result<Vec<Subvolume>> {
    let refs = backrefs(top, path)?;
    let by_id: BTreeMap<u64, &Backref> = refs.iter().map(|r| (r.id, r)).collect();
    let mut paths: BTreeMap<u64, PathBuf> = BTreeMap::new();
    paths.insert(TOP_LEVEL, PathBuf::new());
    let mut out = Vec::with_capacity(refs.len());
    for r in &refs {
        // The chain of parents up to one whose path is known.
        let mut chain = vec![r.id];
        let mut at = r.parent;
        while !paths.contains_key(&at) {
            if chain.contains(&at) || chain.len() > refs.len() {
                return Err(bad(path, format!("subvolume {} is inside itself", r.id)));
            }
            let Some(p) = by_id.get(&at) else {
                return Err(bad(
                    path,
                    format!("subvolume {} sits in unknown subvolume {at}", r.id),
                ));
            };
            chain.push(at);
            at = p.parent;
        }
        for id in chain.into_iter().rev() {
            if paths.contains_key(&id) {
                continue;
            }
            let b = by_id[&id];
            let mut p = paths[&b.parent].clone();
            if b.dir != FIRST_FREE {
                let dir = ino_lookup(top, b.parent, b.dir).map_err(|e| {
                    Error::os(
                        Step::Probe,
                        path,
                        format!(
                            "BTRFS_IOC_INO_LOOKUP of directory {} in subvolume {}",
                            b.dir, b.parent
                        ),
                        e,
                    )
                })?;
                p.push(OsStr::from_bytes(dir.strip_suffix(b"/").unwrap_or(&dir)));
            }
            p.push(OsStr::from_bytes(&b.name));
            paths.insert(id, p);
        }
        out.push(Subvolume {
            id: r.id,
            parent: r.parent,
            name: String::from_utf8_lossy(&r.name).into_owned(),
            path: paths[&r.id].clone(),
        });
    }
    debug!("btrfs: {}: {} subvolumes", path.display(), out.len());
    Ok(out)
}

fn bad(path: &Path, reason: String) -> Error {
    Error::invalid(
        Step::Probe,
        path,
        format!("the btrfs root tree is inconsistent: {reason}"),
    )
}

/// Every root back reference of the root tree, in key order.
fn backrefs(top: BorrowedFd<'_>, path: &Path) -> Result<Vec<Backref>> {
    let mut key = SearchKey {
        tree_id: ROOT_TREE,
        min_objectid: FIRST_FREE,
        max_objectid: LAST_FREE,
        min_type: ROOT_BACKREF_KEY,
        max_type: ROOT_BACKREF_KEY,
        min_offset: 0,
        max_offset: u64::MAX,
        min_transid: 0,
        max_transid: u64::MAX,
        ..SearchKey::default()
    };
    let mut out = Vec::new();
    loop {
        key.nr_items = 4096;
        let items = tree_search(top, &mut key).map_err(|e| {
            let hint = if e == nix::errno::Errno::ENOTTY {
                " (not a btrfs filesystem)"
            } else {
                ""
            };
            Error::os(
                Step::Probe,
                path,
                format!("BTRFS_IOC_TREE_SEARCH of the root tree{hint}"),
                e,
            )
        })?;
        let Some(last) = items.last() else {
            return Ok(out);
        };
        // The search range is one compound key: other item types in
        // between come back too.
        (key.min_objectid, key.min_type, key.min_offset) =
            (last.objectid, last.item_type, last.offset);
        for item in items.iter().filter(|i| i.item_type == ROOT_BACKREF_KEY) {
            // struct btrfs_root_ref: dirid, sequence, name_len, then the name.
            let d = &item.data;
            let name_len = d
                .get(16..18)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
            let Some(name) = name_len.and_then(|n| d.get(18..18 + n)) else {
                return Err(bad(
                    path,
                    format!(
                        "the back reference of subvolume {} is cut short",
                        item.objectid
                    ),
                ));
            };
            out.push(Backref {
                id: item.objectid,
                parent: item.offset,
                dir: u64::from_le_bytes(d[..8].try_into().expect("8 bytes")),
                name: name.to_vec(),
            });
            if out.len() > MAX_SUBVOLUMES {
                return Err(bad(path, format!("more than {MAX_SUBVOLUMES} subvolumes")));
            }
        }
        // The next key after the last one.
        match key.min_offset.checked_add(1) {
            Some(o) => key.min_offset = o,
            None => {
                key.min_offset = 0;
                match key.min_type.checked_add(1) {
                    Some(t) => key.min_type = t,
                    None => {
                        key.min_type = 0;
                        match key.min_objectid.checked_add(1) {
                            Some(o) => key.min_objectid = o,
                            None => return Ok(out),
                        }
                    }
                }
            }
        }
        if key.min_objectid > key.max_objectid {
            return Ok(out);
        }
    }
}

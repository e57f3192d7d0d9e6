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

/// The longest subvolume path (`PATH_MAX`): `subvol=` takes no longer.
const MAX_PATH: usize = 4096;

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
    let out = resolve(&refs, path, |parent, dir| {
        ino_lookup(top, parent, dir).map_err(|e| {
            Error::os(
                Step::Probe,
                path,
                format!("BTRFS_IOC_INO_LOOKUP of directory {dir} in subvolume {parent}"),
                e,
            )
        })
    })?;
    debug!("btrfs: {}: {} subvolumes", path.display(), out.len());
    Ok(out)
}

/// The subvolumes of `refs` with their paths: each is its parent's path,
/// the directory it sits in (`lookup(parent, dir)`, asked only for
/// directories other than the parent's top one), and its name. Each
/// path is made once; a cycle or an unknown parent is an error.
fn resolve(
    refs: &[Backref],
    path: &Path,
    mut lookup: impl FnMut(u64, u64) -> Result<Vec<u8>>,
) -> Result<Vec<Subvolume>> {
    let by_id: BTreeMap<u64, &Backref> = refs.iter().map(|r| (r.id, r)).collect();
    if by_id.len() != refs.len() {
        return Err(bad(path, "a subvolume has two back references".into()));
    }
    let mut paths: BTreeMap<u64, PathBuf> = BTreeMap::new();
    paths.insert(TOP_LEVEL, PathBuf::new());
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        if r.name.is_empty()
            || r.name == b"."
            || r.name == b".."
            || r.name.iter().any(|&c| c == b'/' || c == 0)
        {
            return Err(bad(
                path,
                format!("subvolume {} has an impossible name", r.id),
            ));
        }
        // The chain of parents up to one whose path is known: at most as
        // long as there are subvolumes, or it is a cycle.
        let mut chain = vec![r.id];
        let mut at = r.parent;
        while !paths.contains_key(&at) {
            if chain.len() > refs.len() {
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
                let dir = lookup(b.parent, b.dir)?;
                p.push(OsStr::from_bytes(dir.strip_suffix(b"/").unwrap_or(&dir)));
            }
            p.push(OsStr::from_bytes(&b.name));
            if p.as_os_str().len() >= MAX_PATH {
                return Err(bad(
                    path,
                    format!("the path of subvolume {id} is longer than {MAX_PATH} bytes"),
                ));
            }
            paths.insert(id, p);
        }
        out.push(Subvolume {
            id: r.id,
            parent: r.parent,
            name: String::from_utf8_lossy(&r.name).into_owned(),
            path: paths[&r.id].clone(),
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: u64, parent: u64, dir: u64, name: &str) -> Backref {
        Backref {
            id,
            parent,
            dir,
            name: name.as_bytes().to_vec(),
        }
    }

    fn paths(refs: &[Backref]) -> Result<Vec<(u64, String)>> {
        let lookups = std::cell::Cell::new(0);
        let out = resolve(refs, Path::new("/mnt"), |parent, dir| {
            lookups.set(lookups.get() + 1);
            Ok(format!("d{parent}-{dir}/x/").into_bytes())
        })?;
        assert!(lookups.get() <= refs.len());
        Ok(out
            .into_iter()
            .map(|s| (s.id, s.path.to_string_lossy().into_owned()))
            .collect())
    }

    #[test]
    fn paths_go_through_parents_and_their_directories() {
        // Children listed before their parents, as ids need not be in order.
        let refs = [
            r(258, 257, 300, "machines"),
            r(256, 5, 256, "root"),
            r(257, 256, 256, "nested"),
            r(259, 5, 270, "deep"),
        ];
        assert_eq!(
            paths(&refs).unwrap(),
            [
                (258, "root/nested/d257-300/x/machines".to_string()),
                (256, "root".into()),
                (257, "root/nested".into()),
                (259, "d5-270/x/deep".into()),
            ]
        );
    }

    #[test]
    fn cycles_unknown_parents_and_bad_names_are_errors() {
        let err = |refs: &[Backref]| paths(refs).unwrap_err().to_string();
        assert!(err(&[r(256, 257, 256, "a"), r(257, 256, 256, "b")]).contains("is inside itself"));
        assert!(err(&[r(256, 256, 256, "a")]).contains("is inside itself"));
        assert!(err(&[r(256, 999, 256, "a")]).contains("sits in unknown subvolume 999"));
        assert!(err(&[r(256, 5, 256, "a/b")]).contains("impossible name"));
        assert!(err(&[r(256, 5, 256, "..")]).contains("impossible name"));
        assert!(err(&[r(256, 5, 256, "a"), r(256, 5, 256, "b")]).contains("two back references"));
    }

    fn chain(n: u64) -> Vec<Backref> {
        (0..n)
            .rev()
            .map(|i| r(256 + i, if i == 0 { TOP_LEVEL } else { 255 + i }, 256, "s"))
            .collect()
    }

    #[test]
    fn a_deep_chain_resolves_once_per_subvolume_and_paths_are_bounded() {
        let out = paths(&chain(2000)).unwrap();
        assert_eq!(out[0].1.len(), 3999);
        let err = paths(&chain(MAX_SUBVOLUMES as u64))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is longer than 4096 bytes"), "{err}");
    }
}

//! Safe paths inside a mounted image.
//!
//! A guest filesystem is untrusted: its symbolic links (absolute, or `..`
//! chains), hard links and special files must never make diskmount read or
//! write outside the image. [`Root`] is a handle on the mount's root
//! directory; every path given to it is resolved by the kernel with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: absolute guest links
//! resolve against the image root, as the guest would see them, and `..`
//! never climbs above it. Where `openat2` is missing (Linux < 5.6), a
//! userspace walker does the same one component at a time with `O_PATH |
//! O_NOFOLLOW` descriptors, keeping its own stack for `..`.
//!
//! One file per operation: `read.rs`, `write.rs` (atomic replace, append),
//! `dir.rs` (mkdir_all, remove), `meta.rs` (metadata, permissions, owner,
//! symlink), `copy.rs` (copy_in, copy_out); `owner.rs` (the mode, owner and
//! label of what is created), `create.rs` (creating with them), `label.rs`
//! (SELinux labels), `edit.rs` (editing guest files by rename).
//!
//! # References
//! - [`openat2(2)`](https://man7.org/linux/man-pages/man2/openat2.2.html)

mod copy;
mod create;
mod dir;
mod edit;
mod entry_kind;
mod label;
mod meta;
mod owner;
mod read;
mod stop;
mod write;
mod xattr;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::Mode;

use crate::error::{Error, Result, Step};

pub use copy::COPY_OUT_MODE;
pub use edit::EDIT_LIMIT;
pub use label::Labels;
pub use meta::{FileKind, Metadata};
pub use owner::{NewEntry, Ownership};

/// How paths are resolved inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolver {
    /// The kernel's `openat2(RESOLVE_IN_ROOT)` where it exists, the walker
    /// otherwise (the default).
    Auto,
    /// Always the userspace walker (for kernels before 5.6, and to test it).
    Walker,
}

/// A handle on the root directory of a mounted image, through which every
/// path stays inside the image.
///
/// It holds a descriptor of the mount's root, which keeps the mount busy:
/// from [`crate::Mounted::root`] it borrows the mounted value, so it is
/// gone before that can be unmounted.
#[derive(Debug)]
pub struct Root<'m> {
    fd: OwnedFd,
    path: PathBuf,
    resolver: Resolver,
    mounted: std::marker::PhantomData<&'m ()>,
}

/// A `Root` holds a descriptor inside the mount, which keeps it busy, so
/// the borrow of the [`crate::Mounted`] it came from lasts until the `Root`
/// is dropped, not only until its last use: unmounting while a `Root` is
/// alive does not compile.
///
/// ```compile_fail
/// # fn f(mounted: diskmount::Mounted<diskmount::Loop>) -> diskmount::Result<()> {
/// let root = mounted.root()?;
/// root.write("/etc/motd", "hi\n", 0o644)?;
/// mounted.close()?; // error: cannot move out of `mounted` because it is borrowed
/// # Ok(())
/// # }
/// ```
///
/// ```compile_fail
/// # fn f(mounted: diskmount::Mounted<diskmount::Loop>) -> diskmount::Result<()> {
/// let root = mounted.root()?;
/// let moved = mounted; // error: cannot move out of `mounted` because it is borrowed
/// # drop(moved);
/// # Ok(())
/// # }
/// ```
///
/// Dropping the `Root` first is what compiles:
///
/// ```no_run
/// # fn f(mounted: diskmount::Mounted<diskmount::Loop>) -> diskmount::Result<()> {
/// let root = mounted.root()?;
/// root.write("/etc/motd", "hi\n", 0o644)?;
/// drop(root);
/// mounted.close()?;
/// # Ok(())
/// # }
/// ```
impl Drop for Root<'_> {
    fn drop(&mut self) {
        // The descriptor closes with the field; the impl exists for the
        // borrow checker (see above).
    }
}

/// How many symbolic links one resolution may follow (as the kernel).
const MAX_LINKS: usize = 40;

impl Root<'_> {
    /// Opens the directory `path` (a mount point) as a root.
    pub fn open(path: impl AsRef<Path>) -> Result<Root<'static>> {
        let path = path.as_ref();
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::os(Step::Access, path, "open image root", e))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
            resolver: Resolver::Auto,
            mounted: std::marker::PhantomData,
        })
    }

    /// The descriptor of the root directory.
    pub(crate) fn dir_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Chooses the resolver (default [`Resolver::Auto`]).
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// The directory this root is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For messages: the in-image path and the root it is in.
    pub(crate) fn display(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        self.path.join(rel)
    }

    pub(crate) fn err(&self, path: &Path, op: &str, e: impl Into<std::io::Error>) -> Error {
        Error::os(Step::Access, self.display(path), op.to_string(), e)
    }

    pub(crate) fn refuse(&self, path: &Path, why: impl Into<String>) -> Error {
        Error::invalid(Step::Access, self.display(path), why)
    }

    /// Resolves `path` inside the root to an `O_PATH` descriptor. With
    /// `follow`, a symbolic link in the last component is followed (inside
    /// the root); without, the link itself is returned.
    pub(crate) fn resolve(&self, path: &Path, follow: bool) -> Result<OwnedFd> {
        let rel = relative(path);
        if self.resolver == Resolver::Auto {
            match self.openat2(&rel, follow) {
                Err(Errno::ENOSYS) => {}
                other => return other.map_err(|e| self.err(path, "resolve", e)),
            }
        }
        self.walk(&rel, follow)
            .map_err(|e| self.err(path, "resolve", e))
    }

    fn openat2(&self, rel: &Path, follow: bool) -> nix::Result<OwnedFd> {
        let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
        if !follow {
            flags |= OFlag::O_NOFOLLOW;
        }
        let how = OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // EAGAIN: a rename somewhere raced the lookup; the kernel asks to retry.
        let mut last = Errno::EAGAIN;
        for _ in 0..16 {
            match openat2(self.fd.as_fd(), rel_or_dot(rel), how) {
                Err(Errno::EAGAIN) => last = Errno::EAGAIN,
                other => return other,
            }
        }
        Err(last)
    }

    /// The userspace resolver: one component at a time, never through
    /// `..` on disk, links expanded against our own stack.
    fn walk(&self, rel: &Path, follow: bool) -> nix::Result<OwnedFd> {
        let dup = || self.fd.try_clone().map_err(|_| Errno::EMFILE);
        let mut stack: Vec<OwnedFd> = vec![dup()?];
        let mut todo: Vec<OsString> = components(rel).into_iter().rev().collect();
        let mut links = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let cur = stack.last().expect("the root is never popped");
            let next = openat(
                cur.as_fd(),
                name.as_os_str(),
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let st = nix::sys::stat::fstat(&next)?;
            let is_link = st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK;
            if is_link && (follow || !todo.is_empty()) {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Errno::ELOOP);
                }
                // The link we opened, not whatever the name points at now.
                let target = readlinkat(next.as_fd(), "")?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    stack.truncate(1);
                }
                todo.extend(components(&target).into_iter().rev());
                continue;
            }
            stack.push(next);
        }
        Ok(stack.pop().expect("at least the root"))
    }

    /// Resolves the parent of `path` (following links inside the root) and
    /// returns it with the last component, which must be a plain name.
    pub(crate) fn parent(&self, path: &Path) -> Result<(OwnedFd, OsString)> {
        let rel = relative(path);
        let mut parts = components(&rel);
        let name = parts
            .pop()
            .filter(|n| n != "..")
            .ok_or_else(|| self.refuse(path, "names no file (empty, `/`, `.` or `..`)"))?;
        let parent: PathBuf = parts.iter().collect();
        Ok((self.resolve(&parent, true)?, name))
    }
}

/// The path made relative (absolute paths mean the image root).
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect()
}

fn rel_or_dot(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// The normal components and `..`s of `path` (`.` and `/` dropped).
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// A name for a temporary file next to `name`.
pub(crate) fn temp_name(name: &OsStr) -> OsString {
    let mut t = OsString::from(".");
    t.push(OsStr::from_bytes(&name.as_bytes()[..name.len().min(200)]));
    t.push(format!(".diskmount-{}-{}", std::process::id(), unique()));
    t
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Opens an `O_PATH` descriptor for real I/O (through /proc/self/fd, on the
/// host side, which is safe: the descriptor already points inside).
pub(crate) fn reopen(fd: &OwnedFd, flags: OFlag) -> nix::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    nix::fcntl::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        flags | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

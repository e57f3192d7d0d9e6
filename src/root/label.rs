//! SELinux labels for what diskmount creates in an image: the guest's own
//! file-contexts database, looked up with libselinux's `selabel_lookup`
//! (never reimplemented), and set with `fsetfilecon` (`fsetxattr` of
//! `security.selinux`) on the entry's descriptor.
//!
//! Writing `security.selinux` needs no SELinux on the host: without an
//! SELinux security module loaded, the kernel stores the attribute as
//! given (root, `CAP_SYS_ADMIN`). Contexts are handled in raw form
//! (no `mcstrans` translation), and never validated against the host's
//! policy: they are the guest's.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

#[cfg(feature = "selinux")]
use selinux::FileAccessMode;
#[cfg(feature = "selinux")]
use selinux::label::{Labeler, back_end};

use super::Root;
use super::entry_kind::EntryKind;
use crate::error::{Error, Result, Step};

/// A guest's file-contexts database, opened by libselinux
/// (`selabel_open(SELABEL_CTX_FILE)`), which says which label a path gets.
///
/// libselinux reads the file and the `.local`, `.homedirs`, `.subs` and
/// `.subs_dist` files next to it when it is opened; they can be removed
/// afterwards.
pub struct Labels {
    #[cfg(feature = "selinux")]
    handle: Labeler<back_end::File>,
    source: PathBuf,
}

impl std::fmt::Debug for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Labels")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The cause inside a libselinux error.
#[cfg(feature = "selinux")]
fn io(e: selinux::errors::Error) -> std::io::Error {
    use selinux::errors::Error as E;
    match e {
        E::IO { source, .. }
        | E::IO1Name { source, .. }
        | E::IO1Path { source, .. }
        | E::IO1Process { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

impl Labels {
    /// Opens the file-contexts file `file_contexts` (a host path, e.g. a
    /// private copy of the guest's
    /// `etc/selinux/TYPE/contexts/files/file_contexts`).
    ///
    /// # Errors
    /// Without the `selinux` feature (libselinux), always: an
    /// [`crate::ErrorKind::Unsupported`] error, so that an SELinux guest is
    /// refused rather than left with unlabelled files.
    #[cfg(not(feature = "selinux"))]
    pub fn open(file_contexts: impl AsRef<Path>) -> Result<Labels> {
        Err(Error::refused(
            crate::error::ErrorKind::Unsupported,
            Step::Access,
            file_contexts.as_ref(),
            "the guest uses SELinux, and this diskmount was built without the `selinux` \
             feature (libselinux), so it cannot give new files the guest's labels",
        ))
    }

    /// Opens the file-contexts file `file_contexts` (see above).
    #[cfg(feature = "selinux")]
    pub fn open(file_contexts: impl AsRef<Path>) -> Result<Labels> {
        let path = file_contexts.as_ref();
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::invalid(Step::Access, path, "path holds a NUL byte"))?;
        let opt_path = selinux_sys::SELABEL_OPT_PATH;
        let handle = Labeler::new(&[(opt_path, c.as_ptr().cast())], true)
            .map_err(|e| Error::os(Step::Access, path, "selabel_open", io(e)))?;
        log::debug!("SELinux file contexts loaded from {}", path.display());
        Ok(Labels {
            handle,
            source: path.to_path_buf(),
        })
    }

    /// The label the policy gives the guest path `guest_path` (absolute, as
    /// the booted guest sees it) for a directory (`is_dir`) or a regular
    /// file; `None` where it gives none (no entry, or `<<none>>`).
    pub fn lookup(&self, guest_path: impl AsRef<Path>, is_dir: bool) -> Result<Option<String>> {
        let kind = if is_dir {
            EntryKind::Dir
        } else {
            EntryKind::File
        };
        Ok(self
            .lookup_kind(guest_path.as_ref(), kind)?
            .map(|c| c.to_string_lossy().into_owned()))
    }

    #[cfg(not(feature = "selinux"))]
    fn lookup_kind(&self, _guest_path: &Path, _kind: EntryKind) -> Result<Option<CString>> {
        // `open` never makes a `Labels` without the feature.
        Ok(None)
    }

    #[cfg(feature = "selinux")]
    fn lookup_kind(&self, guest_path: &Path, kind: EntryKind) -> Result<Option<CString>> {
        let mode = FileAccessMode::new(kind.format_bits());
        match self.handle.look_up_by_path(guest_path, mode) {
            Ok(ctx) => {
                let bytes = ctx.as_bytes();
                let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
                Ok(CString::new(bytes).ok())
            }
            Err(e) => {
                let e = io(e);
                if e.raw_os_error() == Some(nix::libc::ENOENT) {
                    Ok(None)
                } else {
                    Err(Error::os(
                        Step::Access,
                        guest_path,
                        format!("selabel_lookup in {}", self.source.display()),
                        e,
                    ))
                }
            }
        }
    }

    /// Labels the entry open as `fd` for the guest path `guest` (`path` in
    /// `root`, for messages).
    pub(crate) fn label_fd(
        &self,
        root: &Root,
        fd: BorrowedFd<'_>,
        guest: &Path,
        kind: EntryKind,
        path: &Path,
    ) -> Result<()> {
        match self.lookup_kind(guest, kind)? {
            Some(label) => {
                log::debug!("label {}: {}", guest.display(), label.to_string_lossy());
                set_label(root, fd, &label, path)
            }
            None => {
                log::debug!("label {}: the policy gives none", guest.display());
                Ok(())
            }
        }
    }
}

/// The extended attribute that holds an SELinux label.
const XATTR: &str = "security.selinux";

/// Sets `security.selinux` of the entry open as `fd` to `label` (stored
/// with its trailing NUL, as libselinux's `fsetfilecon` stores it).
fn set_label(root: &Root, fd: BorrowedFd<'_>, label: &CStr, path: &Path) -> Result<()> {
    rustix::fs::fsetxattr(
        fd,
        XATTR,
        label.to_bytes_with_nul(),
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(|e| root.err(path, "fsetxattr security.selinux", std::io::Error::from(e)))
}

impl Root<'_> {
    /// The guest path (absolute, as the booted guest sees it) of the entry
    /// `name` in the image directory `dir`: the directory's real place in
    /// the image (guest links already resolved, as `restorecon` sees it),
    /// found from the kernel's name for the descriptor; the path as given
    /// (`path`) if that cannot be read.
    pub(crate) fn guest_path_in(&self, dir: &OwnedFd, name: &OsStr, path: &Path) -> PathBuf {
        match self.guest_path_of(dir) {
            Some(d) => d.join(name),
            None => Path::new("/").join(super::relative(path)),
        }
    }

    /// Where in the image the descriptor `fd` (opened through this root)
    /// is, as an absolute guest path: the kernel's name for it less the
    /// mount point's. `None` if the kernel's names do not say (the entry
    /// was removed, or the mount point moved).
    pub(crate) fn guest_path_of(&self, fd: &OwnedFd) -> Option<PathBuf> {
        let link = |fd: &OwnedFd| std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let root = link(&self.fd).ok()?;
        let here = link(fd).ok()?;
        let rel = here.strip_prefix(&root).ok()?;
        Some(Path::new("/").join(rel))
    }
}

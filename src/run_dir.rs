//! [`RunDir`]: where records and the qemu helpers' private directories
//! live. Explicit configuration: the library never reads the environment.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::error::{Error, Result, Step};

/// The directory diskmount keeps its crash-recovery records in (one file
/// per attached image, read by [`crate::cleanup::scan`]) and the private
/// directories of its qemu helpers, or none (records switched off).
///
/// The directory must be owned by root with mode `0700`: anyone who could
/// write there could make `cleanup` act on what they wrote. It is created
/// so when missing; an existing one that is anything else is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunDir {
    path: Option<PathBuf>,
}

static DEFAULT: RwLock<Option<RunDir>> = RwLock::new(None);

impl RunDir {
    /// The default location, `/run/diskmount`.
    pub const DEFAULT_PATH: &'static str = "/run/diskmount";

    /// Records in `path`.
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir {
            path: Some(path.into()),
        }
    }

    /// No records: nothing for `cleanup` to find after a crash (qemu
    /// helpers' private directories then go under the temporary directory).
    pub fn off() -> RunDir {
        RunDir { path: None }
    }

    /// The directory, or `None` if records are off.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Sets the run directory of every attach whose
    /// [`crate::AttachOptions`] name none, for the rest of this process
    /// (a program's configuration, e.g. from its command line).
    pub fn set_default(dir: RunDir) {
        *DEFAULT.write().unwrap_or_else(|e| e.into_inner()) = Some(dir);
    }

    /// The process-wide default: what [`RunDir::set_default`] set, else
    /// [`RunDir::DEFAULT_PATH`].
    pub fn current_default() -> RunDir {
        DEFAULT
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| RunDir::new(RunDir::DEFAULT_PATH))
    }

    /// Makes sure the directory exists and is safe (see the type), creating
    /// it if missing. `Ok(None)` if records are off.
    pub(crate) fn ensure(&self, step: Step) -> Result<Option<&Path>> {
        let Some(path) = self.path() else {
            return Ok(None);
        };
        // The common case, an existing directory: one `lstat` (in `check`).
        match self.check(step) {
            Ok(path) => return Ok(Some(path)),
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Error::os(step, parent, "create run directory parent", e))?;
                }
                match std::fs::DirBuilder::new().mode(0o700).create(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::os(step, path, "create run directory", e)),
                }
            }
            Err(e) => return Err(Error::os(step, path, "stat run directory", e)),
            Ok(_) => {}
        }
        self.check(step).map(Some)
    }

    /// Checks an existing directory: a directory (not a link), owned by
    /// root, mode `0700`.
    pub(crate) fn check(&self, step: Step) -> Result<&Path> {
        let path = self.path().expect("check is only called with records on");
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| Error::os(step, path, "stat run directory", e))?;
        let mode = meta.mode() & 0o7777;
        if !meta.file_type().is_dir() || meta.uid() != 0 || mode != 0o700 {
            return Err(Error::invalid(
                step,
                path,
                format!(
                    "the run directory must be a directory owned by root with mode 0700 (it is {}, \
                     owned by uid {}, mode {mode:04o}): anyone who can write there can make \
                     `diskmount cleanup` act on what they wrote. Fix it (chown root; chmod 700) \
                     or choose another one",
                    if meta.file_type().is_symlink() {
                        "a symbolic link"
                    } else if meta.file_type().is_dir() {
                        "a directory"
                    } else {
                        "not a directory"
                    },
                    meta.uid()
                ),
            ));
        }
        Ok(path)
    }
}

impl Default for RunDir {
    /// [`RunDir::current_default`].
    fn default() -> Self {
        RunDir::current_default()
    }
}

//! The one error type: which step failed, on what, and why.
//!
//! Like libpathrs, every error carries the operation that failed; like
//! `close()` promises, teardown errors are never dropped: they are collected
//! in [`Error::Teardown`].

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lifecycle step during which an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// Looking at the image before anything is attached ([`crate::Image`]).
    Open,
    /// Reading a header, partition table or superblock.
    Probe,
    /// Turning the image into a block device ([`crate::Unattached::attach`]).
    Attach,
    /// Choosing the partition and giving it a device ([`crate::Attached::map`]).
    Map,
    /// Mounting the filesystem ([`crate::Mapped::mount`]).
    Mount,
    /// Flushing and unmounting ([`crate::Mounted::unmount`]).
    Unmount,
    /// Removing what the map step created ([`crate::Mapped::unmap`]).
    Unmap,
    /// Releasing the block device ([`crate::Attached::detach`]).
    Detach,
    /// Removing the temporary mount point of [`crate::with_mounted`].
    Cleanup,
    /// Reading or writing a path inside the mounted image ([`crate::root::Root`]).
    Access,
}

impl Step {
    /// The step's name as it appears in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Open => "open",
            Step::Probe => "probe",
            Step::Attach => "attach",
            Step::Map => "map",
            Step::Mount => "mount",
            Step::Unmount => "unmount",
            Step::Unmap => "unmap",
            Step::Detach => "detach",
            Step::Cleanup => "cleanup",
            Step::Access => "access",
        }
    }

    /// True for the steps that undo something (their failure may mean lost
    /// writes or leaked resources).
    pub fn is_teardown(self) -> bool {
        matches!(
            self,
            Step::Unmount | Step::Unmap | Step::Detach | Step::Cleanup
        )
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in diskmount.
///
/// Each variant names the [`Step`], the path of the image, device or mount
/// point involved, and the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{step}: {}: {operation}: {source}", .path.display())]
    Os {
        /// The step that failed.
        step: Step,
        /// The image, device or mount point.
        path: PathBuf,
        /// What was being done, e.g. `LOOP_CONFIGURE` or `umount2`.
        operation: Cow<'static, str>,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The input is not usable for this step (wrong kind of file, unknown
    /// or disallowed filesystem, partition out of range, ...).
    #[error("{step}: {}: {reason}", .path.display())]
    Invalid {
        /// The step that refused.
        step: Step,
        /// The image, device or mount point.
        path: PathBuf,
        /// Why, and what to try instead.
        reason: String,
        /// What kind of refusal it is ([`Error::kind`]).
        kind: ErrorKind,
    },
    /// An operation kept failing with a transient error until its retry
    /// bound ran out.
    #[error(
        "{step}: {}: {operation}: gave up after {attempts} attempts in {:.1?}: {source}",
        .path.display(), .elapsed
    )]
    Exhausted {
        /// The step that failed.
        step: Step,
        /// The image, device or mount point.
        path: PathBuf,
        /// What was retried.
        operation: Cow<'static, str>,
        /// How many times it was tried.
        attempts: u32,
        /// How long it was tried for.
        elapsed: Duration,
        /// The last error.
        #[source]
        source: io::Error,
    },
    /// An external program failed.
    #[error("{step}: {}: `{command}` {status}{}", .path.display(), stderr_suffix(.stderr))]
    Command {
        /// The step that failed.
        step: Step,
        /// The image, device or mount point.
        path: PathBuf,
        /// The command line.
        command: String,
        /// How it ended (`exited with status 1`, `was killed by signal 9`).
        status: String,
        /// What it wrote to standard error.
        stderr: String,
    },
    /// One or more teardown steps failed; every error is kept, in the order
    /// the steps ran.
    #[error("teardown failed: {}", join(.0))]
    Teardown(Vec<Error>),
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

fn join(errors: &[Error]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What kind of failure an [`Error`] is, for callers that decide what to
/// do next by it ([`Error::kind`]); the message says the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Something named does not exist: the image, a partition, a label, a
    /// device node, a volume.
    NotFound,
    /// Another user holds the image or device: a loop device, a qemu
    /// process, another diskmount user, a mount.
    InUse,
    /// What was asked is not supported: this backend for this kind of
    /// image, a filesystem off the allow-list, a volume layout diskmount
    /// does not map.
    Unsupported,
    /// The image (its format header, partition table, filesystem or
    /// volume metadata) is damaged, hostile or against the safety rules.
    InvalidImage,
    /// A resource stayed busy past its retry bound (a mount with a
    /// process in it, a partition still open).
    Busy,
    /// Every device of a kind was taken for the whole retry bound.
    Exhausted,
    /// This kernel lacks what the step needs (a driver, a system call).
    KernelFeatureMissing,
    /// A helper program (qemu-nbd, qemu-storage-daemon, dmsetup) failed or
    /// died.
    HelperFailed,
    /// Not allowed: the step needs root (CAP_SYS_ADMIN), or write access
    /// to the image.
    PermissionDenied,
    /// The caller asked the work to stop (a flag set by a signal handler,
    /// Ctrl-C in the command-line tool) and it stopped.
    Interrupted,
    /// Any other input this step cannot use (a mount point that is not a
    /// directory, a bad option).
    InvalidInput,
    /// Any other system error.
    Io,
}

impl ErrorKind {
    /// A short name, for programs (`--json`) and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::InUse => "in-use",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidImage => "invalid-image",
            ErrorKind::Busy => "busy",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::KernelFeatureMissing => "kernel-feature-missing",
            ErrorKind::HelperFailed => "helper-failed",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::Io => "io",
        }
    }

    /// The kind of a failed system call, by its error number.
    fn of_errno(errno: Option<i32>) -> ErrorKind {
        use nix::libc;
        match errno {
            Some(libc::ENOENT) => ErrorKind::NotFound,
            Some(libc::EBUSY) => ErrorKind::Busy,
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => ErrorKind::PermissionDenied,
            Some(libc::ENOTTY | libc::ENOSYS | libc::EOPNOTSUPP | libc::ENODEV) => {
                ErrorKind::KernelFeatureMissing
            }
            Some(libc::EUCLEAN | libc::EBADMSG) => ErrorKind::InvalidImage,
            _ => ErrorKind::Io,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    pub(crate) fn os(
        step: Step,
        path: impl Into<PathBuf>,
        operation: impl Into<Cow<'static, str>>,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Os {
            step,
            path: path.into(),
            operation: operation.into(),
            source: source.into(),
        }
    }

    pub(crate) fn invalid(step: Step, path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            step,
            path: path.into(),
            reason: reason.into(),
            kind: ErrorKind::InvalidInput,
        }
    }

    /// A damaged, hostile or disallowed image: its header, table,
    /// filesystem or volume metadata.
    pub(crate) fn invalid_image(
        step: Step,
        path: impl Into<PathBuf>,
        reason: impl Into<String>,
    ) -> Self {
        Error::refused(ErrorKind::InvalidImage, step, path, reason)
    }

    /// A refusal of `kind` (see [`Error::invalid`]).
    pub(crate) fn refused(
        kind: ErrorKind,
        step: Step,
        path: impl Into<PathBuf>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            step,
            path: path.into(),
            reason: reason.into(),
            kind,
        }
    }

    /// What kind of failure this is. For [`Error::Teardown`], the kind of
    /// the first error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Os { source, .. } => ErrorKind::of_errno(source.raw_os_error()),
            Error::Invalid { kind, .. } => *kind,
            // A teardown step that stayed busy to its bound: the resource
            // is in use (a process in the mount), nothing ran out.
            Error::Exhausted { step, source, .. }
                if step.is_teardown() && source.raw_os_error() == Some(nix::libc::EBUSY) =>
            {
                ErrorKind::Busy
            }
            Error::Exhausted { .. } => ErrorKind::Exhausted,
            Error::Command { .. } => ErrorKind::HelperFailed,
            Error::Teardown(errors) => errors.first().map_or(ErrorKind::Io, Error::kind),
        }
    }

    /// Folds teardown errors into one result: `Ok` if there were none, the
    /// error itself if there was one, [`Error::Teardown`] otherwise.
    pub(crate) fn collect(errors: Vec<Error>) -> Result<(), Error> {
        let mut errors: Vec<Error> = errors
            .into_iter()
            .flat_map(|e| match e {
                Error::Teardown(list) => list,
                other => vec![other],
            })
            .collect();
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Teardown(errors)),
        }
    }

    /// The step that failed (the first one, for [`Error::Teardown`]).
    pub fn step(&self) -> Option<Step> {
        match self {
            Error::Os { step, .. }
            | Error::Invalid { step, .. }
            | Error::Exhausted { step, .. }
            | Error::Command { step, .. } => Some(*step),
            Error::Teardown(errors) => errors.first().and_then(Error::step),
        }
    }

    /// The image, device or mount point involved.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Os { path, .. }
            | Error::Invalid { path, .. }
            | Error::Exhausted { path, .. }
            | Error::Command { path, .. } => Some(path),
            Error::Teardown(errors) => errors.first().and_then(Error::path),
        }
    }

    /// The OS error number, if a system call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { source, .. } | Error::Exhausted { source, .. } => source.raw_os_error(),
            Error::Teardown(errors) => errors.iter().find_map(Error::errno),
            _ => None,
        }
    }

    /// The individual errors: the list of a [`Error::Teardown`], or this one.
    pub fn errors(&self) -> Vec<&Error> {
        match self {
            Error::Teardown(errors) => errors.iter().collect(),
            other => vec![other],
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

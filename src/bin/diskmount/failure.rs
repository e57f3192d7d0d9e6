//! How the command reports a failure: the kind of error (one string a
//! program can match on), the exit status it maps to, a hint saying what to
//! do next, and the JSON object `--json` prints on stderr.
//!
//! The kind is the library's [`ErrorKind`] (its `as_str` is what `--json`
//! prints), and `usage` for a command line the command refuses; errors of
//! the command's own are classified like the library's system-call errors.

use std::io;
use std::path::{Path, PathBuf};

use diskmount::ErrorKind;
use serde::Serialize;

/// The exit statuses besides 0 (docs/cli.md lists them all).
pub mod exit {
    /// Any failure not listed below.
    pub const FAILURE: u8 = 1;
    /// The command line was wrong (clap's own status for usage errors).
    pub const USAGE: u8 = 2;
    /// The image, device or mount is in use by someone else.
    pub const IN_USE: u8 = 3;
}

/// What kind of failure it was; `as_str` is what `--json` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The command line was wrong.
    Usage,
    /// What the library (or the command, for its own errors) says.
    Error(ErrorKind),
}

impl Kind {
    /// The name `--json` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::Error(k) => k.as_str(),
        }
    }

    /// The exit status for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Usage => exit::USAGE,
            Kind::Error(ErrorKind::InUse | ErrorKind::Busy) => exit::IN_USE,
            Kind::Error(_) => exit::FAILURE,
        }
    }
}

/// A mistake on the command line the parser could not catch (an option's
/// value with a syntax of its own): exit status 2, like clap's.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A failure of the command itself (not the library's), with the step and
/// path it concerns, so that it reports like a library error.
#[derive(Debug)]
pub struct Failed {
    /// The step, as the library names them (`open`, `access`, ...).
    pub step: &'static str,
    /// The file or directory involved.
    pub path: PathBuf,
    /// What was being done.
    pub operation: &'static str,
    /// The cause.
    pub source: io::Error,
}

impl Failed {
    /// A failed `operation` on `path` during `step`.
    pub fn new(
        step: &'static str,
        path: &Path,
        operation: &'static str,
        source: io::Error,
    ) -> Self {
        Failed {
            step,
            path: path.to_path_buf(),
            operation,
            source,
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.step,
            self.path.display(),
            self.operation,
            self.source
        )
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

type Dyn = dyn std::error::Error + 'static;

/// The kind of an I/O error of the command's own, by the library's rules
/// for a failed system call.
fn io_kind(e: &io::Error) -> ErrorKind {
    use nix::errno::Errno;
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) => ErrorKind::NotFound,
        Some(Errno::EBUSY) => ErrorKind::Busy,
        Some(Errno::EACCES | Errno::EPERM | Errno::EROFS) => ErrorKind::PermissionDenied,
        Some(Errno::ENOTTY | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::ENODEV) => {
            ErrorKind::KernelFeatureMissing
        }
        _ => ErrorKind::Io,
    }
}

/// The kind of any error the command can end with.
pub fn kind(e: &Dyn) -> Kind {
    if e.is::<Usage>() {
        return Kind::Usage;
    }
    if let Some(f) = e.downcast_ref::<Failed>() {
        return Kind::Error(io_kind(&f.source));
    }
    if let Some(e) = e.downcast_ref::<io::Error>() {
        return Kind::Error(io_kind(e));
    }
    let Some(e) = e.downcast_ref::<diskmount::Error>() else {
        return Kind::Error(ErrorKind::Io);
    };
    Kind::Error(e.kind())
}

/// The step and path an error names, where it names them.
fn step_and_path(e: &Dyn) -> (Option<&'static str>, Option<PathBuf>) {
    if let Some(f) = e.downcast_ref::<Failed>() {
        return (Some(f.step), Some(f.path.clone()));
    }
    match e.downcast_ref::<diskmount::Error>() {
        Some(e) => (
            e.step().map(|s| s.as_str()),
            e.path().map(Path::to_path_buf),
        ),
        None => (None, None),
    }
}

/// The OS error number at the bottom of an error, if any.
fn errno(e: &Dyn) -> Option<i32> {
    if let Some(f) = e.downcast_ref::<Failed>() {
        return f.source.raw_os_error();
    }
    if let Some(e) = e.downcast_ref::<io::Error>() {
        return e.raw_os_error();
    }
    e.downcast_ref::<diskmount::Error>()
        .and_then(diskmount::Error::errno)
}

/// Whether this process has CAP_SYS_ADMIN (in its effective set), which
/// attaching and mounting need.
pub fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// What the failed command was asked to do, as far as the hints need it.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The image it was given.
    pub image: Option<PathBuf>,
    /// Whether `--read-only` was given.
    pub read_only: bool,
    /// Whether the command attaches (everything but `inspect` of a raw image).
    pub attaches: bool,
}

fn can(path: &Path, mode: nix::unistd::AccessFlags) -> bool {
    nix::unistd::faccessat(
        nix::fcntl::AT_FDCWD,
        path,
        mode,
        nix::fcntl::AtFlags::AT_EACCESS,
    )
    .is_ok()
}

/// What to do next, when the error says it.
pub fn hint(e: &Dyn, cx: &Context) -> Option<String> {
    use nix::errno::Errno;
    use nix::unistd::AccessFlags;
    let n = errno(e)?;
    let denied = n == Errno::EACCES as i32 || n == Errno::EPERM as i32;
    let attaching = cx.attaches || matches!(step_and_path(e).0, Some("attach" | "map" | "mount"));
    if denied && attaching && !has_cap_sys_admin() {
        return Some(
            "attaching, mounting and unmounting images needs root (CAP_SYS_ADMIN): \
             run diskmount as root, e.g. with sudo; `diskmount inspect` reads raw images \
             without it"
                .into(),
        );
    }
    if (denied || n == Errno::EROFS as i32) && !cx.read_only {
        let image = cx.image.as_deref()?;
        if can(image, AccessFlags::R_OK) && !can(image, AccessFlags::W_OK) {
            return Some(format!(
                "{} cannot be opened for writing (its mode, an immutable flag or a read-only \
                 filesystem); pass --read-only to use it read-only",
                image.display()
            ));
        }
    }
    None
}

/// The JSON object `--json` prints on stderr for a failure.
#[derive(Serialize)]
struct Json<'a> {
    step: Option<&'a str>,
    path: Option<String>,
    kind: &'a str,
    message: String,
    hint: Option<String>,
}

/// Prints the failure on stderr (one line, then the hint on a second
/// line; or one JSON object) and returns the exit status.
pub fn report(e: &Dyn, cx: &Context, json: bool) -> u8 {
    let kind = kind(e);
    let hint = hint(e, cx);
    if json {
        let (step, path) = step_and_path(e);
        let obj = Json {
            step,
            path: path.map(|p| p.to_string_lossy().into_owned()),
            kind: kind.as_str(),
            message: e.to_string(),
            hint,
        };
        eprintln!(
            "{}",
            serde_json::to_string(&obj).unwrap_or_else(|_| "{}".into())
        );
    } else {
        eprintln!("diskmount: {e}");
        if let Some(h) = hint {
            eprintln!("diskmount: hint: {h}");
        }
    }
    kind.exit_code()
}

/// Reports a command line the parser refused, as a JSON object when
/// `--json` is among the arguments; exits.
pub fn usage(err: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let wants_json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) || !wants_json
    {
        err.exit();
    }
    let text = err.render().to_string();
    // The lines before clap's usage summary, as one.
    let message = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string();
    let obj = Json {
        step: None,
        path: None,
        kind: Kind::Usage.as_str(),
        message,
        hint: Some("see `diskmount --help`".into()),
    };
    eprintln!(
        "{}",
        serde_json::to_string(&obj).unwrap_or_else(|_| "{}".into())
    );
    std::process::exit(exit::USAGE.into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use diskmount::{Error, ErrorKind, Step};
    use nix::errno::Errno;

    use super::*;

    fn os(errno: Errno) -> Error {
        Error::Os {
            step: Step::Attach,
            path: "/img".into(),
            operation: "open image".into(),
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }

    fn refused(kind: ErrorKind) -> Error {
        Error::Invalid {
            step: Step::Attach,
            path: "/img".into(),
            reason: "the image is already in use".into(),
            kind,
        }
    }

    fn exhausted(errno: Errno) -> Error {
        Error::Exhausted {
            step: Step::Unmount,
            path: "/mnt".into(),
            operation: "umount2".into(),
            attempts: 9,
            elapsed: Duration::from_secs(2),
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }

    #[test]
    fn each_error_has_its_kind_and_exit_status() {
        let cases: Vec<(Box<Dyn>, &str, u8)> = vec![
            (Box::new(os(Errno::ENOENT)), "not-found", 1),
            (Box::new(os(Errno::EACCES)), "permission-denied", 1),
            (Box::new(os(Errno::EROFS)), "permission-denied", 1),
            (Box::new(os(Errno::EBUSY)), "busy", 3),
            (Box::new(refused(ErrorKind::InUse)), "in-use", 3),
            (Box::new(refused(ErrorKind::Busy)), "busy", 3),
            (Box::new(refused(ErrorKind::Unsupported)), "unsupported", 1),
            (
                Box::new(refused(ErrorKind::InvalidImage)),
                "invalid-image",
                1,
            ),
            (Box::new(exhausted(Errno::EBUSY)), "busy", 3),
            (Box::new(exhausted(Errno::EAGAIN)), "exhausted", 1),
            (
                Box::new(Error::Command {
                    step: Step::Attach,
                    path: "/img".into(),
                    command: "qemu-nbd".into(),
                    status: "exited with status 1".into(),
                    stderr: String::new(),
                }),
                "helper-failed",
                1,
            ),
            (
                Box::new(Error::Teardown(vec![
                    exhausted(Errno::EBUSY),
                    os(Errno::ENOENT),
                ])),
                "busy",
                3,
            ),
            (Box::new(Usage("--partition x".into())), "usage", 2),
            (
                Box::new(Failed::new(
                    "run",
                    Path::new("nope"),
                    "run command",
                    io::Error::from_raw_os_error(Errno::ENOENT as i32),
                )),
                "not-found",
                1,
            ),
            ("a plain message".into(), "io", 1),
        ];
        for (e, name, code) in cases {
            let k = kind(&*e);
            assert_eq!((k.as_str(), k.exit_code()), (name, code), "{e}");
        }
    }

    #[test]
    fn the_json_object_has_step_path_kind_and_message() {
        let e: Box<Dyn> = Box::new(os(Errno::ENOENT));
        let (step, path) = step_and_path(&*e);
        assert_eq!(
            (step, path.as_deref()),
            (Some("attach"), Some(Path::new("/img")))
        );
        let obj = Json {
            step,
            path: Some("/a \"quoted\"\npath".into()),
            kind: kind(&*e).as_str(),
            message: e.to_string(),
            hint: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&obj).unwrap()).unwrap();
        assert_eq!(v["path"], "/a \"quoted\"\npath");
        assert_eq!(v["kind"], "not-found");
        assert!(v["hint"].is_null());
    }
}

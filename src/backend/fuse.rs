//! [`Fuse`]: any qemu format on kernels without nbd. qemu-storage-daemon
//! opens the image (format always named, never probed) and exports it as a
//! raw FUSE file; a loop device goes over that file.
//!
//! Attach:
//! 1. the format safety check ([`crate::format::check`]): backing files,
//!    external data files and vmdk extents are refused unless allowed;
//! 2. a private `0700` directory with an empty file to export onto;
//! 3. `qemu-storage-daemon` as our own child (not daemonized), tied to this
//!    process with `PR_SET_PDEATHSIG`, stderr captured;
//! 4. readiness is signalled, not polled: the daemon writes its pid file
//!    only once the export is live, and inotify reports the file; the
//!    daemon's exit (its stderr closing) ends the wait early with its error;
//! 5. a loop device over the export (the loop backend's code).
//!
//! Detach: unbind the loop device (flush, `fsync` of the export, which
//! qemu turns into a flush of the image), SIGTERM the daemon and wait for
//! it (bounded), make sure the FUSE mount is gone, remove the directory.
//! A daemon that died under us is an error of this step, with what it
//! printed.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::libc;
use nix::mount::MntFlags;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::device::{Device, Held};
use super::{Backend, BackendKind, sealed};
use crate::command::describe_status;
use crate::error::{Error, Result, Step};
use crate::image::{Image, ImageKind};
use crate::options::AttachOptions;
use crate::sys::block as blk;
use crate::sys::process::spawn_tied;

/// Any qemu image format, through qemu-storage-daemon's FUSE export and a
/// loop device.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fuse;

impl Backend for Fuse {
    const NAME: &'static str = "fuse";
}

impl sealed::Attach for Fuse {
    fn attach(image: &Image, options: &AttachOptions) -> Result<Device> {
        attach(image, options)
    }
}

const DAEMON: &str = "qemu-storage-daemon";

/// How long the daemon may take to start, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running qemu-storage-daemon exporting one image.
pub(crate) struct Daemon {
    child: Child,
    stderr: ChildStderr,
    /// What it printed so far.
    log: String,
    dir: Option<tempfile::TempDir>,
    export: PathBuf,
    image: PathBuf,
}

/// Escapes a value for qemu's `key=value,...` option syntax.
fn qemu_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

pub(crate) fn attach(image: &Image, options: &AttachOptions) -> Result<Device> {
    let path = image.path();
    if image.kind() != ImageKind::File {
        return Err(Error::invalid(
            Step::Attach,
            path,
            "the fuse backend serves image files; use the Block backend for block devices",
        ));
    }
    let info = crate::format::check(path, image.format(), image.allows_backing_file())?;
    crate::format::require_writable(&info, path, image.is_read_only())?;
    debug!(
        "attach: {} ({}, {} bytes virtual) through {DAEMON}",
        path.display(),
        image.format(),
        info.virtual_size
    );
    let mut daemon = Daemon::start(image)?;
    let export = match OpenOptions::new()
        .read(true)
        .write(!image.is_read_only())
        .custom_flags(libc::O_CLOEXEC)
        .open(&daemon.export)
    {
        Ok(f) => f,
        Err(e) => {
            let err = Error::os(Step::Attach, &daemon.export, "open the FUSE export", e);
            daemon.stop_into(&mut Vec::new());
            return Err(err);
        }
    };
    let (nr, file) = match super::r#loop::attach_backing(
        Step::Attach,
        &export,
        image.is_read_only(),
        options,
        path,
        0,
        0,
    ) {
        Ok(found) => found,
        Err(e) => {
            drop(export);
            daemon.stop_into(&mut Vec::new());
            return Err(e);
        }
    };
    let node = PathBuf::from(format!("/dev/loop{nr}"));
    let size = blk::getsize64(&file).unwrap_or(info.virtual_size);
    let diskseq = blk::getdiskseq(&file).ok();
    info!(
        "attached {} ({}) to {} through {DAEMON} (pid {})",
        path.display(),
        image.format(),
        node.display(),
        daemon.child.id()
    );
    Ok(Device::new(
        BackendKind::Fuse,
        node,
        path.to_path_buf(),
        image.is_read_only(),
        size,
        diskseq,
        file,
        Held::Fuse {
            nr,
            export,
            daemon: Box::new(daemon),
        },
    ))
}

impl Daemon {
    /// The daemon's pid and directory, for the cleanup record.
    pub(crate) fn record_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![("daemon_pid", self.child.id().to_string())];
        if let Some(dir) = &self.dir {
            f.push(("export_dir", dir.path().display().to_string()));
        }
        f
    }

    /// Starts the daemon and waits until its export is live.
    fn start(image: &Image) -> Result<Daemon> {
        let path = image.path();
        let dir = tempfile::Builder::new()
            .prefix("diskmount-fuse-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| {
                Error::os(
                    Step::Attach,
                    std::env::temp_dir(),
                    "create export directory",
                    e,
                )
            })?;
        let export = dir.path().join("export");
        let pidfile = dir.path().join("pid");
        File::create(&export)
            .map_err(|e| Error::os(Step::Attach, &export, "create export file", e))?;
        let ro = if image.is_read_only() { "on" } else { "off" };
        let rw = if image.is_read_only() { "off" } else { "on" };
        let mut cmd = Command::new(DAEMON);
        cmd.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={},read-only={ro},locking=on",
                qemu_escape(path)
            ))
            .arg("--blockdev")
            .arg(format!(
                "driver={},node-name=disk0,file=file0,read-only={ro}",
                image.format().as_str()
            ))
            .arg("--export")
            .arg(format!(
                "type=fuse,id=export0,node-name=disk0,mountpoint={},writable={rw},growable=off",
                qemu_escape(&export)
            ))
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Watch before starting, so the pid file cannot be missed.
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| Error::os(Step::Attach, dir.path(), "inotify_init", e))?;
        inotify
            .add_watch(
                dir.path(),
                AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
            )
            .map_err(|e| Error::os(Step::Attach, dir.path(), "inotify_add_watch", e))?;
        debug!("attach: run {cmd:?}");
        let mut child = spawn_tied(cmd).map_err(|e| {
            Error::os(
                Step::Attach,
                path,
                format!("start {DAEMON} (is qemu-utils installed?)"),
                e,
            )
        })?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut daemon = Daemon {
            child,
            stderr,
            log: String::new(),
            dir: Some(dir),
            export,
            image: path.to_path_buf(),
        };
        match daemon.wait_ready(&inotify, &pidfile) {
            Ok(()) => {
                debug!("attach: {DAEMON} exports {}", daemon.export.display());
                Ok(daemon)
            }
            Err(e) => {
                let mut errors = vec![e];
                daemon.stop_into(&mut errors);
                Err(errors.remove(0))
            }
        }
    }

    /// Waits for the pid file (the daemon is ready) or for the daemon's
    /// stderr to close (it exited), within [`START_TIMEOUT`].
    fn wait_ready(&mut self, inotify: &Inotify, pidfile: &Path) -> Result<()> {
        let start = Instant::now();
        loop {
            if pidfile.exists() {
                return Ok(());
            }
            let left = START_TIMEOUT.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Error::invalid(
                    Step::Attach,
                    &self.image,
                    format!(
                        "{DAEMON} did not export the image within {START_TIMEOUT:?}{}",
                        suffix(&self.log)
                    ),
                ));
            }
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [
                PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stderr.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::os(Step::Attach, &self.image, "poll", e)),
            }
            let _ = inotify.read_events();
            let ended = fds[1]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLIN));
            if ended && self.read_stderr() && !pidfile.exists() {
                let status = self.child.wait().map(describe_status).unwrap_or_default();
                return Err(Error::Command {
                    step: Step::Attach,
                    path: self.image.clone(),
                    command: DAEMON.to_string(),
                    status,
                    stderr: self.log.clone(),
                });
            }
        }
    }

    /// Reads what is available on stderr; true once it reached end of file.
    fn read_stderr(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            let mut fds = [PollFd::new(self.stderr.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                return false;
            }
            match self.stderr.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    if self.log.len() < 64 * 1024 {
                        self.log.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Stops the daemon (SIGTERM, bounded wait, SIGKILL), makes sure its
    /// FUSE mount is gone and removes its directory. Pushes every error.
    pub(crate) fn stop_into(&mut self, errors: &mut Vec<Error>) {
        let pid = self.child.id();
        let already = self.child.try_wait().ok().flatten();
        if already.is_none() {
            debug!("detach: stop {DAEMON} (pid {pid})");
            if let Err(e) = kill(Pid::from_raw(pid as i32), Signal::SIGTERM) {
                errors.push(Error::os(
                    Step::Detach,
                    &self.image,
                    format!("kill {DAEMON} {pid}"),
                    e,
                ));
            }
        }
        let status = match already {
            Some(s) => Ok(s),
            None => self.wait_exit(STOP_TIMEOUT),
        };
        self.read_stderr();
        match status {
            Ok(s) if s.success() => {}
            // Died under us, or did not exit cleanly on SIGTERM: its last
            // writes may not have been flushed into the image.
            Ok(s) => errors.push(self.died(describe_status(s))),
            Err(e) => errors.push(e),
        }
        // A daemon that died leaves its FUSE mount behind (ENOTCONN).
        if is_mount_point(&self.export) {
            warn!(
                "detach: {} is still mounted; unmounting it",
                self.export.display()
            );
            if let Err(e) = nix::mount::umount2(&self.export, MntFlags::UMOUNT_NOFOLLOW) {
                errors.push(Error::os(
                    Step::Detach,
                    &self.export,
                    "umount2 stale FUSE export",
                    e,
                ));
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                errors.push(Error::os(Step::Detach, path, "remove export directory", e));
            }
        }
    }

    fn died(&self, status: String) -> Error {
        Error::Command {
            step: Step::Detach,
            path: self.image.clone(),
            command: format!("{DAEMON} (pid {})", self.child.id()),
            status: format!("{status}; writes it had not flushed may be lost"),
            stderr: self.log.clone(),
        }
    }

    /// Waits for the daemon to exit: its stderr closes when it does.
    fn wait_exit(&mut self, bound: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| {
                Error::os(Step::Detach, &self.image, format!("wait for {DAEMON}"), e)
            })? {
                return Ok(status);
            }
            if start.elapsed() >= bound {
                warn!(
                    "detach: {DAEMON} (pid {}) ignores SIGTERM; killing it",
                    self.child.id()
                );
                let _ = self.child.kill();
                let status = self.child.wait();
                return Err(Error::invalid(
                    Step::Detach,
                    &self.image,
                    format!(
                        "{DAEMON} did not stop within {bound:?} and was killed ({}){}",
                        status.map(describe_status).unwrap_or_default(),
                        suffix(&self.log)
                    ),
                ));
            }
            let mut fds = [PollFd::new(self.stderr.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(50u16));
            if self.read_stderr() {
                // End of file: the process is exiting; reap it.
                return self.child.wait().map_err(|e| {
                    Error::os(Step::Detach, &self.image, format!("wait for {DAEMON}"), e)
                });
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.dir.is_some() {
            let mut errors = Vec::new();
            self.stop_into(&mut errors);
            for e in errors {
                warn!("teardown: {e}");
            }
        }
    }
}

fn suffix(log: &str) -> String {
    let log = log.trim();
    if log.is_empty() {
        String::new()
    } else {
        format!(": {log}")
    }
}

fn is_mount_point(path: &Path) -> bool {
    crate::adopt::mounts()
        .map(|m| m.iter().any(|m| m.target == path))
        .unwrap_or(false)
}

/// Detaches a Fuse device: the loop device over the export, then the daemon.
pub(crate) fn detach(
    dev: &Device,
    file: File,
    nr: u32,
    export: File,
    daemon: &mut Daemon,
) -> Result<()> {
    let mut errors = super::r#loop::unbind(
        Step::Detach,
        dev.path(),
        &dev.image,
        file,
        nr,
        !dev.read_only,
        Some(&export),
    );
    drop(export);
    daemon.stop_into(&mut errors);
    Error::collect(errors)
}

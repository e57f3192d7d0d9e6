//! [`Fuse`]: any qemu format on kernels without nbd. qemu-storage-daemon
//! opens the image (format always named, never probed) and exports it as a
//! raw FUSE file; a loop device goes over that file.
//!
//! Attach:
//! 1. the format safety check ([`crate::format::check`]): backing files,
//!    external data files and vmdk extents are refused unless allowed;
//! 2. a private `0700` directory with an empty file to export onto;
//! 3. `qemu-storage-daemon` as our own child (not daemonized), tied to this
//!    process with `PR_SET_PDEATHSIG` (unless the attach is persistent),
//!    its standard error kept in a file for the errors;
//! 4. readiness is signalled, not polled: the daemon writes its pid file
//!    only once the export is live, and inotify reports the file; the
//!    daemon's exit ends the wait early with what it printed (checked
//!    every 50 ms while waiting). The inotify descriptor is closed on a
//!    short-lived thread: its close waits for a kernel grace period;
//! 5. a loop device over the export (the loop backend's code).
//!
//! Detach: unbind the loop device (flush, `fsync` of the export, which
//! qemu turns into a flush of the image), SIGTERM the daemon and wait for
//! it (bounded), make sure the FUSE mount is gone, remove the directory.
//! A daemon that died under us is an error of this step, with what it
//! printed.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
use crate::command::{describe_status, wait_timeout};
use crate::error::{Error, Result, Step};
use crate::image::Image;
use crate::options::AttachOptions;
use crate::retry::{Backoff, RetryPolicy};
use crate::sys::block as blk;
use crate::sys::process::{spawn_detached, spawn_tied};

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

/// How long after a SIGTERM the daemon is sent another one. Its handler
/// only sets a flag for the main loop; a signal that lands just before the
/// loop goes to sleep in `ppoll` is seen at the next event, which an idle
/// daemon may never get. Found by the stress test: about 1 stop in 2000, the
/// daemon asleep in `ppoll` with SIGTERM handled and nothing pending, until
/// the SIGKILL 20 s later. A second SIGTERM interrupts the sleep.
const TERM_RESEND: Duration = Duration::from_millis(250);

/// A running qemu-storage-daemon exporting one image.
pub(crate) struct Daemon {
    child: Child,
    /// Where its standard error goes (a file: a pipe would break once a
    /// persistent daemon outlives us).
    log: PathBuf,
    dir: Option<tempfile::TempDir>,
    export: PathBuf,
    image: PathBuf,
    persistent: bool,
}

/// Escapes a value for qemu's `key=value,...` option syntax.
fn qemu_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

pub(crate) fn attach(image: &Image, options: &AttachOptions) -> Result<Device> {
    let path = image.path();
    let info = super::check_qemu_image(image, Fuse::NAME)?;
    crate::lock::check(image)?;
    debug!(
        "attach: {} ({}, {} bytes virtual) through {DAEMON}",
        path.display(),
        image.format(),
        info.virtual_size
    );
    let mut daemon = Daemon::start(image, options)?;
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

    /// Whether the daemon is not tied to this process.
    pub(crate) fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Lets the daemon run on after this value (a persistent mount): its
    /// directory is kept, and `diskmount umount` or `cleanup` stops it.
    pub(crate) fn disown(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
    }

    /// Starts the daemon and waits until its export is live.
    fn start(image: &Image, options: &AttachOptions) -> Result<Daemon> {
        let persistent = options.persistent;
        let path = image.path();
        let dir = crate::record::private_dir(options, "diskmount-fuse-")?;
        let export = dir.path().join("export");
        let pidfile = dir.path().join("pid");
        let log = dir.path().join("daemon.log");
        File::create(&export)
            .map_err(|e| Error::os(Step::Attach, &export, "create export file", e))?;
        let err = File::create(&log).map_err(|e| Error::os(Step::Attach, &log, "create log", e))?;
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
            .stderr(err);
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
        let spawned = if persistent {
            spawn_detached(cmd)
        } else {
            spawn_tied(cmd)
        };
        let child = spawned.map_err(|e| {
            Error::os(
                Step::Attach,
                path,
                format!("start {DAEMON} (is qemu-utils installed?)"),
                e,
            )
        })?;
        let mut daemon = Daemon {
            child,
            log,
            dir: Some(dir),
            export,
            image: path.to_path_buf(),
            persistent,
        };
        let ready = daemon.wait_ready(&inotify, &pidfile);
        close_in_background(inotify);
        match ready {
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

    /// What the daemon printed (bounded).
    fn output(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.truncate(16 * 1024);
        s
    }

    /// Waits for the pid file (the daemon is ready: inotify wakes us at
    /// once) or for the daemon to exit (checked between short waits),
    /// within [`START_TIMEOUT`].
    fn wait_ready(&mut self, inotify: &Inotify, pidfile: &Path) -> Result<()> {
        let start = Instant::now();
        loop {
            if pidfile.exists() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Command {
                    step: Step::Attach,
                    path: self.image.clone(),
                    command: DAEMON.to_string(),
                    status: describe_status(status),
                    stderr: self.output(),
                });
            }
            let left = START_TIMEOUT.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Error::invalid(
                    Step::Attach,
                    &self.image,
                    format!(
                        "{DAEMON} did not export the image within {START_TIMEOUT:?}{}",
                        suffix(&self.output())
                    ),
                ));
            }
            let slice = left.min(Duration::from_millis(50));
            let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(slice).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::os(Step::Attach, &self.image, "poll", e)),
            }
            let _ = inotify.read_events();
        }
    }

    /// An error of `step` if the daemon has exited (it serves the export
    /// under the loop device: nothing through it works any more).
    pub(crate) fn check_alive(&mut self, step: Step) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(Error::Command {
                step,
                path: self.image.clone(),
                command: format!("{DAEMON} (pid {})", self.child.id()),
                status: format!(
                    "{}; the FUSE export under the loop device no longer works",
                    describe_status(status)
                ),
                stderr: self.output(),
            }),
            _ => Ok(()),
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
            // The loop device that was over the export lets go of it a
            // moment after it shows unbound (the kernel drops the backing
            // file last): until then the mount is busy.
            let mut backoff = Backoff::new(RetryPolicy::UNMOUNT);
            loop {
                backoff.attempt();
                match nix::mount::umount2(&self.export, MntFlags::UMOUNT_NOFOLLOW) {
                    Ok(()) => break,
                    Err(Errno::EBUSY) if backoff.wait() => {}
                    Err(e) => {
                        errors.push(Error::os(
                            Step::Detach,
                            &self.export,
                            format!(
                                "umount2 stale FUSE export ({} attempts in {:.1?})",
                                backoff.attempts(),
                                backoff.elapsed()
                            ),
                            e,
                        ));
                        break;
                    }
                }
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
            stderr: self.output(),
        }
    }

    /// Waits for the daemon to exit after a SIGTERM, bounded, sending the
    /// signal again every [`TERM_RESEND`] (see there why).
    fn wait_exit(&mut self, bound: Duration) -> Result<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        let pid = self.child.id();
        loop {
            let left = bound.saturating_sub(start.elapsed());
            let waited = wait_timeout(&mut self.child, left.min(TERM_RESEND)).map_err(|e| {
                Error::os(Step::Detach, &self.image, format!("wait for {DAEMON}"), e)
            })?;
            if let Some(status) = waited {
                return Ok(status);
            }
            if start.elapsed() >= bound {
                break;
            }
            warn!(
                "detach: {DAEMON} (pid {pid}) still running {:.1?} after SIGTERM; retrying the signal",
                start.elapsed()
            );
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        warn!(
            "detach: {DAEMON} (pid {}) ignores SIGTERM; killing it",
            self.child.id()
        );
        let _ = self.child.kill();
        let status = self.child.wait();
        Err(Error::invalid(
            Step::Detach,
            &self.image,
            format!(
                "{DAEMON} did not stop within {bound:?} and was killed ({}){}",
                status.map(describe_status).unwrap_or_default(),
                suffix(&self.output())
            ),
        ))
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

/// Closes an inotify descriptor on a short-lived thread. Closing one waits
/// in the kernel for an SRCU grace period (`fsnotify_destroy_group`): 15 to
/// 40 ms measured on a busy machine, more than the daemon takes to start,
/// for nothing this process needs to wait for. If no thread can be
/// started, the descriptor is closed here.
fn close_in_background(inotify: Inotify) {
    let _ = std::thread::Builder::new()
        .name("diskmount-close".into())
        .spawn(move || drop(inotify));
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

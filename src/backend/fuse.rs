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
//!
//! With [`AttachOptions::shared_daemon`], an image file is served instead
//! by the process's shared daemon ([`super::fuse_shared`]): steps 3 and 4
//! become nodes and an export added over QMP, and the detach removes them.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::device::{Core, Found};
use super::fuse_abort::{TEARDOWN_BOUND, Watchdog, connection_of, limit_background};
use super::fuse_shared::Export;
use super::fuse_stall::StallWatch;
use super::r#loop::{LoopDevice, unbind_core};
use super::qemu_blockdev::{Blockdev, PROTOCOL_NODE, check_server, explain_open_failure};
use super::{Backend, BackendKind, Device, sealed};
use crate::command::{describe_status, wait_timeout};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::image::{Format, Image, Location};
use crate::kernel::{mountinfo, sysfs};
use crate::options::AttachOptions;
use crate::sys::process::{spawn_detached, spawn_tied};

/// Any qemu image format, through qemu-storage-daemon's FUSE export and a
/// loop device.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fuse;

impl sealed::Sealed for Fuse {}

impl Backend for Fuse {
    const NAME: &'static str = "fuse";
    type Device = FuseDevice;
}

/// A loop device over the FUSE export of the qemu-storage-daemon that
/// serves the image.
#[derive(Debug)]
pub struct FuseDevice {
    // Field order is teardown order: the I/O watch, the loop device, then
    // the daemon.
    /// A network image's I/O timeout ([`super::fuse_stall`]).
    stall: Option<StallWatch>,
    lo: LoopDevice,
    daemon: Server,
}

/// What serves the export: a daemon of its own, or the shared one.
#[derive(Debug)]
enum Server {
    Own(Daemon),
    Shared(Export),
}

impl Server {
    fn pid(&self) -> u32 {
        match self {
            Server::Own(d) => d.child.id(),
            Server::Shared(e) => e.pid(),
        }
    }

    fn check_alive(&mut self, step: Step) -> Result<()> {
        match self {
            Server::Own(d) => d.check_alive(step),
            Server::Shared(e) => e.check_alive(step),
        }
    }

    fn record_fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Server::Own(d) => d.record_fields(),
            Server::Shared(e) => e.record_fields(),
        }
    }

    fn watchdog(&self) -> Option<Watchdog> {
        match self {
            Server::Own(d) => d.watchdog(),
            Server::Shared(_) => None,
        }
    }

    /// What the protocol driver failed while attached (a network image's
    /// own daemon; the shared one serves only image files).
    fn io_failures(&self) -> Option<Error> {
        match self {
            Server::Own(d) => d.io_failures(),
            Server::Shared(_) => None,
        }
    }

    fn is_persistent(&self) -> bool {
        matches!(self, Server::Own(d) if d.is_persistent())
    }

    fn disown(&mut self) {
        match self {
            Server::Own(d) => d.disown(),
            Server::Shared(e) => e.disown(),
        }
    }

    fn kill(&self) {
        match self {
            Server::Own(d) => {
                let _ = kill(Pid::from_raw(d.child.id() as i32), Signal::SIGKILL);
            }
            Server::Shared(e) => e.kill_daemon(),
        }
    }

    fn stop_into(&mut self, errors: &mut Vec<Error>) {
        match self {
            Server::Own(d) => d.stop_into(errors),
            Server::Shared(e) => e.remove_into(errors),
        }
    }
}

impl Device for FuseDevice {}

impl sealed::Ops for FuseDevice {
    fn attach(image: &Image, options: &AttachOptions) -> Result<Self> {
        attach(image, options)
    }

    /// A loop device whose backing file is a FUSE mount exported by a
    /// qemu-storage-daemon: the daemon is found from the export's path on
    /// its command line, and stopped at teardown like ours.
    fn adopt(found: &Found) -> Option<Result<Self>> {
        let nr = sysfs::loop_number(&found.name)?;
        let info = sysfs::loop_info(&found.name)?;
        let export = info.backing_file;
        if !mountinfo::on(&export).is_some_and(|m| m.fstype.starts_with("fuse")) {
            return None;
        }
        let pid = daemon_exporting(&export)?;
        let image = image_of(pid).unwrap_or_else(|| export.clone());
        let daemon = Daemon {
            child: Proc::Other(pid),
            running: true,
            found_dir: export
                .parent()
                .filter(|d| {
                    // Ours: `<record id>.helper` in the run directory, or
                    // (records off) `diskmount-fuse-*`.
                    d.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.ends_with(".helper") || n.starts_with("diskmount-fuse-")
                    })
                })
                .map(Path::to_path_buf),
            log: PathBuf::new(),
            dir: None,
            export: export.clone(),
            image: image.clone(),
            persistent: true,
            network: false,
            log_mark: None,
            connection: mountinfo::on(&export).map(|m| connection_of(m.dev)),
        };
        let backing = super::device::open_node(&export, found.read_only, Step::Open).ok();
        Some(
            found
                .core(BackendKind::Fuse, image, backing)
                .map(|core| FuseDevice {
                    stall: None,
                    lo: LoopDevice::from_parts(core, nr),
                    daemon: Server::Own(daemon),
                }),
        )
    }

    fn core(&self) -> &Core {
        self.lo.core()
    }

    fn core_mut(&mut self) -> &mut Core {
        self.lo.core_mut()
    }

    fn check(&mut self, step: Step) -> Result<()> {
        if let Some(stall) = &self.stall {
            stall.check(step)?;
        }
        self.daemon.check_alive(step)?;
        self.lo.core().check_image(step)
    }

    fn server(&self) -> Option<(&'static str, u32)> {
        Some((DAEMON, self.daemon.pid()))
    }

    fn kill_server(&mut self) {
        self.daemon.kill();
    }

    fn record_fields(&self) -> Vec<(&'static str, String)> {
        self.daemon.record_fields()
    }

    /// A network image's export: the server behind it can hang.
    fn watchdog(&self) -> Option<Watchdog> {
        self.daemon.watchdog()
    }

    fn disown(mut self) {
        drop(self.stall.take());
        self.daemon.disown();
    }

    fn disarm(mut self) -> std::result::Result<(), Self> {
        if !self.daemon.is_persistent() {
            return Err(self);
        }
        drop(self.stall.take());
        self.daemon.disown();
        Ok(())
    }

    /// The loop device over the export (flush, `fsync` of the export,
    /// which qemu turns into a flush of the image), then the daemon.
    fn release(self) -> Result<()> {
        let FuseDevice {
            stall,
            lo,
            mut daemon,
        } = self;
        // A server that stopped answering while attached: said first.
        let stalled = stall.and_then(|s| s.stop(Step::Detach));
        let (core, nr) = lo.into_parts();
        let mut errors: Vec<Error> = stalled.into_iter().collect();
        errors.extend(unbind_core(Step::Detach, core, nr));
        // A server that failed requests (killed, refusing, timing out)
        // while attached: the reads and writes that got EIO are said here,
        // not only to whoever made them. (A stall already said why.)
        if errors.is_empty()
            && let Some(e) = daemon.io_failures()
        {
            errors.push(e);
        }
        daemon.stop_into(&mut errors);
        Error::collect(errors)
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
#[derive(Debug)]
struct Daemon {
    child: Proc,
    /// Until stopped or disowned.
    running: bool,
    /// The export's directory of a daemon found on the system (adopted):
    /// its known files are removed after the stop.
    found_dir: Option<PathBuf>,
    /// Where its standard error goes (a file: a pipe would break once a
    /// persistent daemon outlives us).
    log: PathBuf,
    dir: Option<tempfile::TempDir>,
    export: PathBuf,
    image: PathBuf,
    persistent: bool,
    /// It serves a network image (a server behind it can hang).
    network: bool,
    /// The export's FUSE connection number, once it is live.
    connection: Option<u64>,
    /// The length of its log once the export was live (a daemon we
    /// started for a network image): what the protocol driver prints
    /// after that is a request the server failed ([`Daemon::io_failures`]).
    log_mark: Option<u64>,
}

/// Escapes a value for qemu's `key=value,...` option syntax.
fn qemu_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// What the daemon opens: a checked image file, or a network image's
/// protocol node (with the format to put over it).
enum Source {
    File(super::QemuImage),
    Url(Blockdev, Format),
}

fn attach(image: &Image, options: &AttachOptions) -> Result<FuseDevice> {
    let path = image.path();
    let mut probed = None;
    let source = match image.location() {
        Some(location) => {
            check_server(location, path)?;
            let blockdev = Blockdev::of(location, image.is_read_only())?;
            let format = if image.needs_format_probe() {
                let format = probe_url(image, &blockdev, options)?.0;
                probed = Some(format);
                format
            } else {
                image.format()
            };
            debug!("attach: {} ({format}) through {DAEMON}", path.display());
            Source::Url(blockdev, format)
        }
        None => {
            let checked = super::check_qemu_image(image, Fuse::NAME)?;
            crate::lock::check(image)?;
            debug!(
                "attach: {} ({}, {} bytes virtual) through {DAEMON}",
                path.display(),
                image.format(),
                checked.info.virtual_size
            );
            Source::File(checked)
        }
    };
    let mut daemon = match source {
        // Image files only: a URL's protocol node takes secrets and
        // environment in the daemon's start, and a persistent attach must
        // outlive this process.
        Source::File(checked) if options.shared_daemon && !options.persistent => {
            Server::Shared(super::fuse_shared::add(image, &checked, options)?)
        }
        source => Server::Own(Daemon::start(image, &source, options, None)?),
    };
    let export_path = match &daemon {
        Server::Own(d) => d.export.clone(),
        Server::Shared(e) => e.export.clone(),
    };
    let export = match OpenOptions::new()
        .read(true)
        .write(!image.is_read_only())
        .custom_flags(libc::O_CLOEXEC)
        .open(&export_path)
    {
        Ok(f) => f,
        Err(e) => {
            let err = Error::os(Step::Attach, &export_path, "open the FUSE export", e);
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
    let mut lo = match LoopDevice::new(image, nr, file, export, BackendKind::Fuse) {
        Ok(lo) => lo,
        Err(e) => {
            daemon.stop_into(&mut Vec::new());
            return Err(e);
        }
    };
    sealed::Ops::core_mut(&mut lo).probed = probed;
    info!(
        "attached {} ({}) to {} through {DAEMON} (pid {}{})",
        path.display(),
        probed.unwrap_or(image.format()),
        sealed::Ops::core(&lo).path().display(),
        daemon.pid(),
        if matches!(daemon, Server::Shared(_)) {
            ", shared"
        } else {
            ""
        }
    );
    // A network image's I/O timeout, while attached (qemu's nbd driver
    // has none; the other protocols' own fail first).
    let network = matches!(&daemon, Server::Own(d) if d.network);
    let stall = if network && !options.persistent {
        daemon.watchdog().and_then(|w| {
            let name = sealed::Ops::core(&lo)
                .path()
                .file_name()?
                .to_str()?
                .to_string();
            StallWatch::start(&name, w, options.io_timeout)
        })
    } else {
        None
    };
    Ok(FuseDevice { stall, lo, daemon })
}

/// The format of a URL image, read through the protocol: a short-lived
/// daemon exports the protocol node read-only, and the format probe and
/// its safety rules ([`crate::format::check_file`]: a backing file or data
/// file is refused) read the header bytes from that export. Returns the
/// format and the image's virtual size. (The Nbd backend probes its URL
/// images here too.)
pub(crate) fn probe_url(
    image: &Image,
    blockdev: &Blockdev,
    options: &AttachOptions,
) -> Result<(Format, u64)> {
    let path = image.path();
    let source = Source::Url(blockdev.clone(), Format::Raw);
    let mut daemon = Daemon::start(image, &source, options, Some("diskmount-probe-"))?;
    // The header reads wait for the server: one that stops answering
    // (qemu's curl and nbd drivers can wait for ever) has the watchdog cut
    // the export after the I/O timeout, which fails the reads at once.
    let watch = daemon
        .watchdog()
        .map(|w| Watchdog {
            bound: options.io_timeout,
            step: Step::Probe,
            doing: "reading the image's header through the protocol",
            ..w
        })
        .and_then(Watchdog::arm);
    let probed = File::open(&daemon.export)
        .map_err(|e| Error::os(Step::Probe, path, "open the protocol's FUSE export", e))
        .and_then(|file| {
            let format = crate::format::probe(&file, path)?;
            let info = crate::format::check_file(&file, path, format, false)?;
            crate::format::require_writable(&info, path, image.is_read_only())?;
            Ok((format, info.virtual_size))
        });
    let cut = watch.and_then(|w| w.disarm());
    let mut errors = Vec::new();
    daemon.stop_into(&mut errors);
    if let Some(e) = cut {
        // The reads' own errors (ENOTCONN) and the daemon's exit (the
        // watchdog killed it) say less than why they failed; anything else
        // the teardown met (an export directory left) is still told.
        for t in errors {
            if t.kind() == ErrorKind::HelperFailed {
                debug!("probe: after the cut: {t}");
            } else {
                warn!("teardown: {t}");
            }
        }
        return Err(e);
    }
    let (format, size) = probed?;
    Error::collect(errors)?;
    debug!(
        "probe: {} is {format}, {size} bytes virtual (read through the protocol)",
        path.display()
    );
    Ok((format, size))
}

impl Daemon {
    /// The teardown watchdog of a network image's export (the server
    /// behind it can hang); `None` for an image file.
    fn watchdog(&self) -> Option<Watchdog> {
        self.network.then(|| Watchdog {
            image: self.image.clone(),
            connection: self.connection,
            export: self.export.clone(),
            pid: self.child.id(),
            bound: TEARDOWN_BOUND,
            step: Step::Detach,
            doing: "the teardown",
        })
    }

    /// The daemon's pid and directory, for the cleanup record.
    fn record_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![("daemon_pid", self.child.id().to_string())];
        if let Some(dir) = &self.dir {
            f.push(("export_dir", dir.path().display().to_string()));
        }
        f
    }

    /// Whether the daemon is not tied to this process.
    fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Lets the daemon run on after this value (a persistent mount): its
    /// directory is kept, and `diskmount umount` or `cleanup` stops it.
    fn disown(&mut self) {
        self.running = false;
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
    }

    /// Starts the daemon and waits until its export is live.
    /// `raw_probe`: export the protocol node itself, read-only (a probe of
    /// a URL image's header) instead of the image.
    fn start(
        image: &Image,
        source: &Source,
        options: &AttachOptions,
        raw_probe: Option<&str>,
    ) -> Result<Daemon> {
        let persistent = options.persistent;
        let path = image.path();
        let dir = match raw_probe {
            Some(prefix) => super::helper_dir::private_dir(&AttachOptions::default(), prefix)?,
            None => super::helper_dir::private_dir(options, "diskmount-fuse-")?,
        };
        let export = dir.path().join("export");
        let pidfile = dir.path().join("pid");
        let log = dir.path().join("daemon.log");
        File::create(&export)
            .map_err(|e| Error::os(Step::Attach, &export, "create export file", e))?;
        let err = File::create(&log).map_err(|e| Error::os(Step::Attach, &log, "create log", e))?;
        let read_only = image.is_read_only() || raw_probe.is_some();
        let ro = if read_only { "on" } else { "off" };
        let rw = if read_only { "off" } else { "on" };
        let mut cmd = Command::new(DAEMON);
        let mut node = "disk0";
        match source {
            Source::File(checked) => {
                cmd.arg("--blockdev")
                    .arg(format!(
                        "driver=file,node-name=file0,filename={},read-only={ro},locking=on",
                        qemu_escape(&checked.filename(path))
                    ))
                    .arg("--blockdev")
                    .arg(format!(
                        "driver={},node-name=disk0,file=file0,read-only={ro}",
                        image.format().as_str()
                    ));
            }
            Source::Url(blockdev, format) => {
                for object in &blockdev.objects {
                    cmd.arg("--object").arg(object);
                }
                for (name, value) in &blockdev.env {
                    cmd.env(name, value);
                }
                cmd.arg("--blockdev").arg(blockdev.json());
                if raw_probe.is_some() {
                    node = PROTOCOL_NODE;
                } else {
                    cmd.arg("--blockdev").arg(format!(
                        "driver={},node-name=disk0,file={PROTOCOL_NODE},read-only={ro}",
                        format.as_str()
                    ));
                }
            }
        }
        cmd.arg("--export")
            .arg(format!(
                "type=fuse,id=export0,node-name={node},mountpoint={},writable={rw},growable=off",
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
        if let Source::File(checked) = source {
            checked.pass_to(&mut cmd);
        }
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
            child: Proc::Child(child),
            running: true,
            found_dir: None,
            log,
            dir: Some(dir),
            export,
            image: path.to_path_buf(),
            persistent,
            network: image.location().is_some(),
            connection: None,
            log_mark: None,
        };
        let ready = daemon.wait_ready(&inotify, &pidfile);
        close_in_background(inotify);
        match ready {
            Ok(()) => {
                daemon.connection = mountinfo::on(&daemon.export)
                    .filter(|m| m.fstype.starts_with("fuse"))
                    .map(|m| connection_of(m.dev));
                if daemon.network {
                    daemon.log_mark = std::fs::metadata(&daemon.log).map(|m| m.len()).ok();
                }
                // qemu 10.0.2's curl driver can stop answering for good
                // when it has two requests at once (seen about 1 run in 3
                // of a probe's reads through a FUSE export, with nginx as
                // the server; never with one at a time): the kernel sends
                // it one readahead at a time.
                if let (Some(n), Some(Location::Http(_))) = (daemon.connection, image.location())
                    && let Err(e) = limit_background(n, 1)
                {
                    warn!("attach: {e}; qemu's curl driver may hang on parallel reads");
                }
                debug!(
                    "attach: {DAEMON} exports {} (FUSE connection {:?})",
                    daemon.export.display(),
                    daemon.connection
                );
                Ok(daemon)
            }
            Err(e) => {
                let e = match (&e, image.location()) {
                    (Error::Command { stderr, .. }, Some(location)) => {
                        match explain_open_failure(location, stderr) {
                            Some((kind, reason)) => {
                                debug!("attach: {e}");
                                Error::refused(kind, Step::Attach, path, reason)
                            }
                            None => e,
                        }
                    }
                    _ => e,
                };
                let mut errors = vec![e];
                daemon.stop_into(&mut errors);
                Err(errors.remove(0))
            }
        }
    }

    /// What the daemon printed (bounded).
    fn output(&self) -> String {
        self.output_from(0).unwrap_or_default()
    }

    /// At most 16 KiB of what the daemon printed from byte `offset` of its
    /// log on; `None` if the log cannot be read.
    fn output_from(&self, offset: u64) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = File::open(&self.log).ok()?;
        file.seek(SeekFrom::Start(offset)).ok()?;
        let mut bytes = Vec::new();
        file.take(16 * 1024).read_to_end(&mut bytes).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// What the protocol driver printed since the export went live (qemu
    /// prints a request the server failed, e.g. `curl: Failed to connect
    /// ...`), as an error of the detach step: the first and the last such
    /// line, bounded. `None` if it printed nothing (or the image is a file).
    fn io_failures(&self) -> Option<Error> {
        let text = self.output_from(self.log_mark?)?;
        let said: Vec<&str> = text
            .lines()
            .map(|l| l.trim().trim_start_matches(&format!("{DAEMON}: ")).trim())
            .filter(|l| !l.is_empty())
            .collect();
        let (first, last) = (said.first()?, said.last()?);
        let bounded = |l: &str| l.chars().take(300).collect::<String>();
        let quoted = if said.len() == 1 {
            bounded(first)
        } else {
            format!("{}; ... {}", bounded(first), bounded(last))
        };
        Some(Error::refused(
            crate::error::ErrorKind::Io,
            Step::Detach,
            &self.image,
            format!(
                "the server failed requests while the image was attached, so reads or writes \
                 through the device got I/O errors ({DAEMON} said: {quoted})"
            ),
        ))
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
            if let Some(status) = self.child.try_wait() {
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
    fn check_alive(&mut self, step: Step) -> Result<()> {
        match self.child.try_wait() {
            Some(status) => Err(Error::Command {
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
    fn stop_into(&mut self, errors: &mut Vec<Error>) {
        let pid = self.child.id();
        let already = self.child.try_wait();
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
        super::helper_dir::remove_export_dir(&self.export, self.dir.take(), errors);
        if let Some(dir) = self.found_dir.take() {
            remove_found_dir(&dir, errors);
        }
        self.running = false;
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
            let waited = self
                .child
                .wait_timeout(left.min(TERM_RESEND))
                .map_err(|e| {
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
        let status = self.child.kill();
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
        if self.running {
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

/// The qemu-storage-daemon whose FUSE export is `export`: the process
/// running that program with `mountpoint=EXPORT` among its arguments.
fn daemon_exporting(export: &Path) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        if exe.file_name()? != DAEMON {
            return None;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        cmdline
            .split(|b| *b == 0)
            .any(|arg| {
                let arg = String::from_utf8_lossy(arg);
                arg.match_indices("mountpoint=").any(|(i, m)| {
                    (i == 0 || arg[..i].ends_with(','))
                        && Path::new(&qemu_unescape(&arg[i + m.len()..])) == export
                })
            })
            .then_some(pid)
    })
}

/// The image a daemon serves: the `filename=` of its `driver=file` node.
fn image_of(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline.split(|b| *b == 0).find_map(|arg| {
        let arg = String::from_utf8_lossy(arg);
        let rest = arg.strip_prefix("driver=file,")?;
        let at = rest.find("filename=")? + "filename=".len();
        Some(passed_file(pid, PathBuf::from(qemu_unescape(&rest[at..]))))
    })
}

/// `name` as the helper `pid` opened it: the file behind its descriptor
/// where it was handed the checked file (`/proc/self/fd/N`).
pub(crate) fn passed_file(pid: u32, name: PathBuf) -> PathBuf {
    match name.strip_prefix("/proc/self/fd/") {
        Ok(n) => std::fs::read_link(Path::new(&format!("/proc/{pid}/fd")).join(n)).unwrap_or(name),
        Err(_) => name,
    }
}

/// Undoes [`qemu_escape`] up to the first unescaped comma.
fn qemu_unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            (',', Some(',')) => {
                out.push(',');
                chars.next();
            }
            (',', _) => break,
            (c, _) => out.push(c),
        }
    }
    out
}

/// Removes what an adopted daemon's export directory holds (the files a
/// daemon of ours makes there, and nothing else), then the directory.
fn remove_found_dir(dir: &Path, errors: &mut Vec<Error>) {
    for name in ["export", "pid", "daemon.log"] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(Error::os(Step::Detach, dir.join(name), "remove", e)),
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        errors.push(Error::os(Step::Detach, dir, "remove export directory", e));
    }
}

/// The daemon's process: our child, or one found on the system.
#[derive(Debug)]
enum Proc {
    Child(Child),
    /// Another process's daemon (adopted): its exit status is not ours to
    /// collect, so "gone" counts as a clean exit.
    Other(u32),
}

impl Proc {
    fn id(&self) -> u32 {
        match self {
            Proc::Child(c) => c.id(),
            Proc::Other(pid) => *pid,
        }
    }

    /// Its exit status if it has exited.
    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        match self {
            Proc::Child(c) => c.try_wait().ok().flatten(),
            Proc::Other(pid) => other_gone(*pid).then(clean_exit),
        }
    }

    /// Waits for the exit, up to `bound`.
    fn wait_timeout(
        &mut self,
        bound: Duration,
    ) -> std::io::Result<Option<std::process::ExitStatus>> {
        match self {
            Proc::Child(c) => wait_timeout(c, bound),
            Proc::Other(pid) => {
                let pid = *pid;
                Ok(crate::retry::poll_until(bound, || {
                    other_gone(pid).then(clean_exit)
                }))
            }
        }
    }

    /// SIGKILL, and the status once it is gone.
    fn kill(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Proc::Child(c) => {
                let _ = c.kill();
                c.wait()
            }
            Proc::Other(pid) => {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
                let pid = *pid;
                crate::retry::poll_until(STOP_TIMEOUT, || other_gone(pid).then(clean_exit))
                    .ok_or_else(|| std::io::Error::other("still running after SIGKILL"))
            }
        }
    }
}

/// Whether process `pid` (not our child) has exited: gone, or a zombie
/// waiting for its parent.
fn other_gone(pid: u32) -> bool {
    crate::kernel::process::exited(pid)
}

fn clean_exit() -> std::process::ExitStatus {
    std::os::unix::process::ExitStatusExt::from_raw(0)
}

//! [`Nbd`]: any qemu format through the kernel's network block device and
//! `qemu-nbd`.
//!
//! Attach:
//! 1. the format safety check ([`crate::format::check`]);
//! 2. claim a free `/dev/nbdX` across processes: the devices are tried in a
//!    random order (as Nova spreads them), each under a non-blocking
//!    exclusive `flock` that diskmount holds for the device's lifetime, and
//!    a device counts as free only with no `/sys/block/nbdX/pid` and size 0;
//!    while all are busy, wait and try again within [`crate::RetryPolicy`];
//! 3. `qemu-nbd --connect=/dev/nbdX -f FORMAT [--read-only]` kept in the
//!    foreground (`--verbose`) as our own child, tied to this process, its
//!    output in a private file. A URL image (`rbd://`, `nbd://`, `http(s)://`,
//!    `iscsi://`) is opened with `--image-opts` instead: its format node
//!    over the protocol node of `backend/qemu_blockdev.rs`, secrets as
//!    `--object secret` files (removed once qemu-nbd has read them, never
//!    on the command line); its format, unless given, is first read
//!    through the protocol with the rules of a file (the Fuse backend's
//!    probe: only header bytes, a backing or data file refused). HTTP(S)
//!    images and RBD snapshots are attached read-only;
//! 4. wait (bounded, with back-off) until `/sys/block/nbdX/pid` exists and
//!    the size is the image's virtual size (not zero, for a URL image
//!    whose format was given and so not read); `qemu-nbd` returns before
//!    the device is usable. A qemu-nbd that exits ends the wait with its
//!    error (for a URL, explained as the Fuse backend explains it: a
//!    refused key, a missing pool or image); a timeout disconnects and
//!    says the device did not show up.
//!
//! Detach: `BLKFLSBUF`, `qemu-nbd --disconnect`, wait for our qemu-nbd to
//! exit, check that the pid attribute is gone. A qemu-nbd that died under us
//! is an error of this step, not a hang.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::libc;

use super::device::{Core, Found};
use super::qemu_blockdev::{
    Blockdev, check_server, explain_image_opts_failure, location_of_image_opts,
};
use super::{Backend, BackendKind, Device, sealed};
use crate::command::run;
use crate::command::{describe_status, wait_timeout};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::image::{Format, Image, Location};
use crate::kernel::process::thread_group;
use crate::kernel::sysfs;
use crate::options::AttachOptions;
use crate::retry::{Backoff, RetryPolicy, poll_until, random};
use crate::sys::block as blk;
use crate::sys::flock::{Lock, flock};
use crate::sys::process::{spawn_detached, spawn_tied};

/// Any qemu image format, and URL images, through `qemu-nbd` and the
/// kernel's nbd driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nbd;

impl sealed::Sealed for Nbd {}

impl Backend for Nbd {
    const NAME: &'static str = "nbd";
    type Device = NbdDevice;
}

/// An nbd device connected to the qemu-nbd serving the image.
#[derive(Debug)]
pub struct NbdDevice {
    core: Core,
    server: Server,
}

impl Device for NbdDevice {}

impl sealed::Ops for NbdDevice {
    fn attach(image: &Image, options: &AttachOptions) -> Result<Self> {
        attach(image, options)
    }

    /// A connected nbd device; its server is found from the device's
    /// `pid` attribute, and the image is the server's last argument: a
    /// file, or (`--image-opts`) a network image, named by its URL.
    fn adopt(found: &Found) -> Option<Result<Self>> {
        if !found.name.starts_with("nbd") {
            return None;
        }
        let pid = sysfs::nbd_pid(&found.name)?;
        let image = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|c| served_image(pid, &c))
            .unwrap_or_else(|| found.node.clone());
        let server = adopted(&found.node, &image);
        Some(
            found
                .core(BackendKind::Nbd, image, None)
                .map(|core| NbdDevice { core, server }),
        )
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    fn check(&mut self, step: Step) -> Result<()> {
        self.server.check_alive(step)?;
        self.core.check_image(step)
    }

    fn server(&self) -> Option<(&'static str, u32)> {
        self.server.child.as_ref().map(|c| (QEMU_NBD, c.id()))
    }

    fn kill_server(&mut self) {
        if let Some(child) = self.server.child.as_mut() {
            let _ = child.kill();
        }
    }

    fn record_fields(&self) -> Vec<(&'static str, String)> {
        self.server.record_fields()
    }

    fn disown(mut self) {
        self.server.disown();
    }

    fn disarm(mut self) -> std::result::Result<(), Self> {
        if !self.server.is_persistent() {
            return Err(self);
        }
        self.server.disown();
        Ok(())
    }

    /// Flush, disconnect, stop qemu-nbd, release the device (closing our
    /// locked descriptor).
    fn release(self) -> Result<()> {
        let NbdDevice { core, mut server } = self;
        let mut errors = Vec::new();
        if !core.read_only
            && let Err(e) = blk::flsbuf(core.file().as_fd())
        {
            errors.push(Error::os(Step::Detach, core.path(), "BLKFLSBUF", e));
        }
        // The kernel keeps the device configured while anyone has it open.
        drop(core);
        server.stop_into(&mut errors);
        Error::collect(errors)
    }
}

const QEMU_NBD: &str = "qemu-nbd";

/// How long a connected device may take to show up, and qemu-nbd to exit.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether this kernel has nbd: the driver is loaded, or can be loaded
/// (then it is, with partition support).
pub fn available() -> bool {
    crate::kernel::module::available("nbd", &["max_part=16"], Path::new("/sys/block/nbd0"))
}

/// A qemu-nbd serving one device, our child.
#[derive(Debug)]
struct Server {
    /// Our qemu-nbd; `None` for a device adopted from another process.
    child: Option<Child>,
    /// True until stopped.
    running: bool,
    /// Not tied to this process (a persistent mount).
    persistent: bool,
    /// Our private directory (qemu-nbd's output).
    tmp: Option<tempfile::TempDir>,
    log: PathBuf,
    device: PathBuf,
    image: PathBuf,
    /// The thread that serves the device (its `pid` attribute) once it
    /// showed up connected: the kernel keeps showing it after the server
    /// is gone, until the disconnect.
    thread: Option<u32>,
}

/// Whether the connection on nbd device `name` is the one process `pid`
/// serves (its serving thread, the `pid` attribute, belongs to it), or,
/// its server gone, the one whose serving thread was `thread`: the kernel
/// shows a dead server's thread until the disconnect, and a live thread
/// of that number is someone's new connection. What the teardown and
/// `cleanup` both ask before they disconnect.
pub(crate) fn serves(name: &str, pid: Option<u32>, thread: Option<u32>) -> bool {
    let Some(t) = sysfs::nbd_pid(name) else {
        return false;
    };
    pid.is_some_and(|p| thread_group(t) == p)
        || (thread == Some(t) && !Path::new(&format!("/proc/{t}")).exists())
}

/// Claims a free nbd device: open and exclusively locked, not connected.
/// `Ok(Err(n))`: all `n` devices are connected or claimed. A device that
/// cannot be opened is passed over; if no device was busy and one could
/// not be opened, that is the error.
fn claim(image: &Path) -> Result<std::result::Result<(String, File), usize>> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .map_err(|e| Error::os(Step::Attach, "/sys/block", "read", e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("nbd")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    if names.is_empty() {
        return Err(Error::invalid(
            Step::Attach,
            image,
            "nbd is unavailable: the module is not loaded (modprobe nbd max_part=16)",
        ));
    }
    // A random rotation spreads concurrent users over the devices.
    names.sort_by_key(|n| n[3..].parse::<u32>().unwrap_or(u32::MAX));
    let start = (random() % names.len() as u64) as usize;
    names.rotate_left(start);
    let count = names.len();
    let mut busy = 0;
    let mut unopened = None;
    for name in names {
        if sysfs::has(&name, "pid") || sysfs::number(&name, "size").is_some_and(|n| n != 0) {
            busy += 1;
            continue;
        }
        let node = PathBuf::from("/dev").join(&name);
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&node)
        {
            Ok(file) => file,
            Err(e) => {
                debug!("attach: {}: {e}; passed over", node.display());
                unopened = Some((node, e));
                continue;
            }
        };
        match flock(file.as_fd(), Lock::Exclusive, false) {
            Ok(()) => {}
            Err(Errno::EWOULDBLOCK) => {
                busy += 1;
                continue;
            }
            Err(e) => return Err(Error::os(Step::Attach, &node, "flock", e)),
        }
        // Check again under the lock: someone may have connected it between.
        if sysfs::has(&name, "pid") {
            busy += 1;
            continue;
        }
        debug!("attach: claimed {}", node.display());
        return Ok(Ok((name, file)));
    }
    match unopened {
        Some((node, e)) if busy == 0 => Err(Error::os(
            Step::Attach,
            node,
            format!("open nbd device (none of the {count} could be opened)"),
            e,
        )),
        _ => Ok(Err(count)),
    }
}

/// Claims a free nbd device, waiting within `policy` while all are busy.
fn claim_within(image: &Path, policy: RetryPolicy) -> Result<(String, File)> {
    let mut backoff = Backoff::new(policy);
    loop {
        backoff.attempt();
        let count = match claim(image)? {
            Ok(found) => return Ok(found),
            Err(count) => count,
        };
        if !backoff.wait() {
            return Err(Error::Exhausted {
                step: Step::Attach,
                path: image.to_path_buf(),
                operation: format!(
                    "claim a free nbd device (no free nbd device: all {count} are connected or \
                     claimed; more with modprobe nbd nbds_max=N)"
                )
                .into(),
                attempts: backoff.attempts(),
                elapsed: backoff.elapsed(),
                source: Errno::EBUSY.into(),
            });
        }
        warn!(
            "attach: {}: all {count} nbd devices are busy; retrying (attempt {})",
            image.display(),
            backoff.attempts() + 1
        );
    }
}

/// What qemu-nbd serves: a checked image file, or a network image's
/// protocol node under its format (`--image-opts`).
enum Source<'a> {
    File(&'a super::QemuImage),
    Url {
        location: &'a Location,
        blockdev: Blockdev,
        format: Format,
    },
}

impl Source<'_> {
    /// The `--image-opts` argument of a URL image: the format node over
    /// the protocol node (`file.`). No secret in it: keys are objects.
    fn image_opts(&self) -> Option<String> {
        match self {
            Source::File(_) => None,
            Source::Url {
                blockdev, format, ..
            } => Some(format!(
                "driver={},{}",
                format.as_str(),
                blockdev.dotted("file.")
            )),
        }
    }
}

fn attach(image: &Image, options: &AttachOptions) -> Result<NbdDevice> {
    let path = image.path();
    let checked;
    let mut claimed = None;
    let mut probed = None;
    let (source, size) = match image.location() {
        // A network image: the protocol node qemu-nbd opens, its format
        // read through the protocol first with the rules of a file
        // (only header bytes; a backing or data file is refused). The
        // device is claimed first: a kernel without nbd is said before
        // any server is contacted.
        Some(location) => {
            claimed = Some(claim_within(path, options.retry)?);
            check_server(location, path)?;
            let blockdev = Blockdev::of(location, image.is_read_only())?;
            let (format, size) = if image.needs_format_probe() {
                let (format, size) = super::fuse::probe_url(image, &blockdev, options)?;
                probed = Some(format);
                (format, Some(size))
            } else {
                (image.format(), None)
            };
            debug!("attach: {} ({format}) through {QEMU_NBD}", path.display());
            let source = Source::Url {
                location,
                blockdev,
                format,
            };
            (source, size)
        }
        None => {
            checked = super::check_qemu_image(image, Nbd::NAME)?;
            crate::lock::check(image)?;
            (Source::File(&checked), Some(checked.info.virtual_size))
        }
    };
    let (name, file) = match claimed {
        Some(claimed) => claimed,
        None => claim_within(path, options.retry)?,
    };
    let node = PathBuf::from("/dev").join(&name);
    let mut server = Server::start(image, &source, &node, options)?;
    let ready = server.wait_ready(&name, size);
    // qemu-nbd has read its secret objects (at start) and opened the
    // image (before the device shows up): the key file goes now.
    let opts = source.image_opts();
    let location = match &source {
        Source::Url { location, .. } => Some(*location),
        Source::File(_) => None,
    };
    drop(source);
    if let Err(e) = ready {
        let e = match (&e, location, &opts) {
            (Error::Command { stderr, .. }, Some(location), Some(opts)) => {
                match explain_image_opts_failure(location, stderr, opts) {
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
        server.stop_into(&mut errors);
        return Err(errors.remove(0));
    }
    // Without a request timeout the kernel waits for ever on a server that
    // stopped answering (SIGSTOPped, or dying with a thread stuck): every
    // writer, the unmount and the disconnect would hang with it.
    let seconds = options.io_timeout.as_secs().max(1);
    if let Err(e) = crate::sys::nbd::set_timeout(file.as_fd(), seconds) {
        let mut errors = vec![Error::os(
            Step::Attach,
            &node,
            "set the nbd request timeout (NBD_SET_TIMEOUT)",
            e,
        )];
        server.stop_into(&mut errors);
        return Err(errors.remove(0));
    }
    debug!(
        "attach: {} has a request timeout of {seconds} s",
        node.display()
    );
    // The kernel scans the table of a newly sized nbd device at its next
    // open (GD_NEED_PART_SCAN): udev's, some time later, or this one. Our
    // descriptor predates the connection, so open it once more: the scan is
    // done (or, if udev's open runs it, waited for on the disk's open
    // mutex) before map looks for the kernel's partition nodes.
    if let Err(e) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&node)
    {
        debug!(
            "attach: reopening {} for the partition scan: {e}",
            node.display()
        );
    }
    super::device::clear_stale_read_only(&file, &node);
    let mut core = match Core::new(
        Step::Attach,
        BackendKind::Nbd,
        node,
        path.to_path_buf(),
        image.is_read_only(),
        file,
        None,
    ) {
        Ok(core) => core,
        Err(e) => {
            let mut errors = vec![e];
            server.stop_into(&mut errors);
            return Err(errors.remove(0));
        }
    };
    core.probed = probed;
    info!(
        "attached {} ({}) to {} through {QEMU_NBD} (pid {})",
        path.display(),
        probed.unwrap_or(image.format()),
        core.path().display(),
        server.child.as_ref().map_or(0, Child::id)
    );
    Ok(NbdDevice { core, server })
}

impl Server {
    /// qemu-nbd's pid and its serving thread, for the cleanup record.
    pub(crate) fn record_fields(&self) -> Vec<(&'static str, String)> {
        let mut f: Vec<(&'static str, String)> = self
            .child
            .as_ref()
            .map(|c| vec![("daemon_pid", c.id().to_string())])
            .unwrap_or_default();
        if let Some(t) = self.thread {
            f.push(("server_thread", t.to_string()));
        }
        if let Some(dir) = &self.tmp {
            f.push(("helper_dir", dir.path().display().to_string()));
        }
        f
    }

    /// Whether qemu-nbd is not tied to this process.
    pub(crate) fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Lets qemu-nbd serve on after this value (a persistent mount):
    /// `diskmount umount` (which disconnects) or `cleanup` ends it.
    pub(crate) fn disown(&mut self) {
        self.running = false;
        if let Some(dir) = self.tmp.take() {
            let _ = dir.keep();
        }
    }

    fn start(
        image: &Image,
        source: &Source<'_>,
        device: &Path,
        options: &AttachOptions,
    ) -> Result<Server> {
        let persistent = options.persistent;
        let path = image.path();
        let dir = super::helper_dir::private_dir(options, "diskmount-nbd-")?;
        let log = dir.path().join("qemu-nbd.log");
        let out = File::create(&log).map_err(|e| Error::os(Step::Attach, &log, "create", e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::os(Step::Attach, &log, "dup", e))?;
        let mut cmd = Command::new(QEMU_NBD);
        cmd.arg(format!("--connect={}", device.display()))
            .args(["--verbose", "--cache=writeback"])
            .args(image.is_read_only().then_some("--read-only"));
        match source {
            Source::File(checked) => {
                cmd.args(["--format", image.format().as_str()])
                    .arg(checked.filename(path));
                checked.pass_to(&mut cmd);
            }
            Source::Url { blockdev, .. } => {
                for object in &blockdev.objects {
                    cmd.arg("--object").arg(object);
                }
                for (name, value) in &blockdev.env {
                    cmd.env(name, value);
                }
                let opts = source.image_opts().unwrap_or_default();
                cmd.arg("--image-opts").arg(opts);
            }
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
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
                format!("start {QEMU_NBD} (is qemu-utils installed?)"),
                e,
            )
        })?;
        Ok(Server {
            child: Some(child),
            persistent,
            running: true,
            tmp: Some(dir),
            log,
            device: device.to_path_buf(),
            image: path.to_path_buf(),
            thread: None,
        })
    }

    fn output(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.truncate(16 * 1024);
        s
    }

    /// Waits until the kernel shows the device connected with the right
    /// size. qemu-nbd gives no signal of its own for it, so this polls
    /// sysfs with a growing back-off, bounded, and stops early if qemu-nbd
    /// exits.
    /// `size`: the image's virtual size where known (a URL image given
    /// its format is not read before): else any size but zero.
    fn wait_ready(&mut self, name: &str, size: Option<u64>) -> Result<()> {
        let state = |name: &str| {
            let pid = sysfs::has(name, "pid");
            let sectors = sysfs::number(name, "size");
            (pid, sectors)
        };
        let want = size.map(|s| s.div_ceil(512));
        let done = poll_until(READY_TIMEOUT, || {
            let (pid, sectors) = state(name);
            let sized = match want {
                Some(w) => sectors == Some(w),
                None => sectors.is_some_and(|n| n != 0),
            };
            if pid && sized {
                // Ours only if our qemu-nbd serves it (another program
                // may have connected the node meanwhile: the claim's lock
                // binds only diskmount).
                let thread = sysfs::nbd_pid(name);
                let ours = match (thread, self.child.as_ref()) {
                    (Some(t), Some(c)) => thread_group(t) == c.id(),
                    (_, None) => true,
                    (None, _) => false,
                };
                if ours {
                    self.thread = thread;
                    return Some(Ok(()));
                }
            }
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(Err(status)),
                _ => None,
            }
        });
        match done {
            Some(Ok(())) => Ok(()),
            Some(Err(status)) => Err(Error::Command {
                step: Step::Attach,
                path: self.image.clone(),
                command: format!("{QEMU_NBD} --connect={}", self.device.display()),
                status: describe_status(status),
                stderr: self.output(),
            }),
            None => {
                let (pid, sectors) = state(name);
                Err(Error::invalid(
                    Step::Attach,
                    &self.device,
                    format!(
                        "nbd device {} did not show up within {READY_TIMEOUT:?} (pid attribute {}, size {sectors:?} sectors, expected {})",
                        self.device.display(),
                        if pid { "present" } else { "missing" },
                        want.map_or_else(|| "more than 0".to_string(), |w| w.to_string())
                    ),
                ))
            }
        }
    }

    /// Disconnects the device and waits for our qemu-nbd to exit; removes
    /// its private directory. Pushes every error.
    /// An error of `step` if our qemu-nbd has exited (it serves the
    /// device: nothing through it works any more).
    pub(crate) fn check_alive(&mut self, step: Step) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(Some(status)) => Err(Error::Command {
                step,
                path: self.image.clone(),
                command: format!(
                    "{QEMU_NBD} (pid {}) serving {}",
                    child.id(),
                    self.device.display()
                ),
                status: format!("{}; the device no longer works", describe_status(status)),
                stderr: self.output(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether the device `name` is connected through our qemu-nbd: its
    /// serving thread is one of our child's, or the one that served it
    /// when it showed up (the server gone, the kernel still shows it). An
    /// adopted server's device (no child of ours) was verified when
    /// adopted.
    fn connection_is_ours(&self, name: &str) -> bool {
        match &self.child {
            None => sysfs::has(name, "pid"),
            Some(c) => serves(name, Some(c.id()), self.thread),
        }
    }

    pub(crate) fn stop_into(&mut self, errors: &mut Vec<Error>) {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let already = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = already {
            errors.push(Error::Command {
                step: Step::Detach,
                path: self.image.clone(),
                command: format!("{QEMU_NBD} (pid {pid})"),
                status: format!(
                    "{}; writes it had not flushed may be lost",
                    describe_status(status)
                ),
                stderr: self.output(),
            });
        }
        let name = self
            .device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Disconnect even if our server died (the kernel side may still be
        // configured), but only our connection: never one another program
        // made on the node (ours failed to connect, or ended meanwhile).
        let ours = self.connection_is_ours(&name);
        if ours
            && let Err(e) = run(
                Step::Detach,
                &self.device,
                Command::new(QEMU_NBD).arg("--disconnect").arg(&self.device),
            )
        {
            errors.push(e);
        }
        if let (Some(child), None) = (self.child.as_mut(), already) {
            // A stopped server answers nothing, the disconnect included:
            // waiting for it is pointless.
            let stopped = crate::kernel::process::stopped(pid);
            let bound = if stopped {
                Duration::ZERO
            } else {
                EXIT_TIMEOUT
            };
            match wait_timeout(child, bound) {
                Ok(Some(s)) if s.success() => {}
                Ok(Some(s)) => errors.push(Error::Command {
                    step: Step::Detach,
                    path: self.image.clone(),
                    command: format!("{QEMU_NBD} (pid {pid})"),
                    status: describe_status(s),
                    stderr: self.output(),
                }),
                Ok(None) => {
                    warn!("detach: {QEMU_NBD} (pid {pid}) did not exit; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    errors.push(Error::invalid(
                        Step::Detach,
                        &self.device,
                        if stopped {
                            format!(
                                "{QEMU_NBD} (pid {pid}) was stopped (SIGSTOP or a debugger) and answered nothing; it was killed, writes it had not flushed are lost"
                            )
                        } else if self.image.to_string_lossy().contains("://") {
                            // A network image: qemu-nbd waits on the
                            // server for the requests it still has there.
                            format!(
                                "the server stopped answering: {QEMU_NBD} (pid {pid}) did not exit within {EXIT_TIMEOUT:?} after the disconnect, waiting on it, and was killed; writes not flushed are lost"
                            )
                        } else {
                            format!(
                                "{QEMU_NBD} (pid {pid}) did not exit within {EXIT_TIMEOUT:?} after the disconnect and was killed"
                            )
                        },
                    ));
                }
                Err(e) => errors.push(Error::os(
                    Step::Detach,
                    &self.device,
                    format!("wait for {QEMU_NBD}"),
                    e,
                )),
            }
        }
        // The kernel removes the pid attribute once the server is gone; an
        // adopted server is not our child, so give it a moment.
        let gone = !ours
            || poll_until(EXIT_TIMEOUT, || (!sysfs::has(&name, "pid")).then_some(())).is_some();
        if !gone {
            errors.push(Error::refused(
                ErrorKind::Busy,
                Step::Detach,
                &self.device,
                "is still connected after qemu-nbd --disconnect",
            ));
        }
        self.running = false;
        if let Some(dir) = self.tmp.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                errors.push(Error::os(Step::Detach, path, "remove private directory", e));
            }
        }
    }
}

/// What the qemu-nbd `pid` with command line `cmdline` (NUL-separated)
/// serves: the URL of a network image (`--image-opts`, read back into
/// its location: no secret in it), else its last argument, the image file
/// (as it opened it, where it was handed a descriptor).
fn served_image(pid: u32, cmdline: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let after = |flag: &[u8]| -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| String::from_utf8_lossy(w[1]).into_owned())
            .collect()
    };
    if let Some(opts) = after(b"--image-opts").last() {
        let objects = after(b"--object");
        return Some(match location_of_image_opts(opts, &objects) {
            Some(location) => PathBuf::from(location.to_string()),
            // Options not of ours: named by the driver only, never by
            // options that could hold anything.
            None => PathBuf::from(format!(
                "{QEMU_NBD} --image-opts (not a URL diskmount knows)"
            )),
        });
    }
    let last = args.iter().rfind(|a| !a.is_empty())?;
    Some(super::fuse::passed_file(
        pid,
        PathBuf::from(std::ffi::OsStr::from_bytes(last)),
    ))
}

/// The server of an nbd device another process connected (adoption): it
/// is disconnected on teardown, like ours.
fn adopted(device: &Path, image: &Path) -> Server {
    Server {
        child: None,
        persistent: true,
        running: true,
        tmp: None,
        log: PathBuf::new(),
        device: device.to_path_buf(),
        image: image.to_path_buf(),
        thread: None,
    }
}

impl Drop for Server {
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

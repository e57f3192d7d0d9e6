//! The teardown watchdog of a FUSE export that serves a network image:
//! if the server behind qemu's protocol driver hangs (a stopped NBD
//! server, a frozen Ceph OSD), every flush and unmount through the export
//! waits for it, and qemu's nbd driver has no request timeout at all. Past
//! a bound the watchdog aborts the FUSE connection
//! (`/sys/fs/fuse/connections/N/abort`, through a private mount of
//! `fusectl` when none is mounted) and kills the daemon, so that every
//! pending and later request fails at once and the teardown goes on,
//! reporting the loss.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, warn};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result, Step};

/// How long a teardown through a network image's FUSE export may take
/// before the watchdog aborts the connection: four of qemu's I/O timeouts
/// (a flush that fails through a timeout fails within two).
pub(crate) const TEARDOWN_BOUND: Duration =
    Duration::from_secs(4 * super::qemu_blockdev::IO_TIMEOUT_SECS);

/// Where the kernel shows FUSE connections (the `fusectl` filesystem).
const CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// What the watchdog needs to abort one export: no reference to the
/// device, so that it can act while the teardown thread waits in the
/// kernel.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// The image, for the error.
    pub(crate) image: PathBuf,
    /// The FUSE connection's number (the kernel's `dev_t` of the export's
    /// superblock), if the export was found mounted.
    pub(crate) connection: Option<u64>,
    /// The export's mount point: the connection is aborted only while it
    /// is still this mount's (numbers are reused once it is gone).
    pub(crate) export: PathBuf,
    /// The daemon serving the export.
    pub(crate) pid: u32,
    /// How long before it fires.
    pub(crate) bound: Duration,
    /// The step it watches ([`Step::Detach`] for a teardown,
    /// [`Step::Probe`] for the header reads of a URL image's probe), and
    /// what that step does, for the error.
    pub(crate) step: Step,
    pub(crate) doing: &'static str,
}

/// The FUSE connection number of the filesystem with `st_dev` `dev`: the
/// kernel's encoding of the device number (`major << 20 | minor`).
pub(crate) fn connection_of(dev: u64) -> u64 {
    (nix::sys::stat::major(dev) << 20) | nix::sys::stat::minor(dev)
}

/// An armed watchdog; [`Armed::disarm`] stops it and says whether it fired.
#[derive(Debug)]
pub(crate) struct Armed {
    stop: Option<mpsc::Sender<()>>,
    fired: Arc<Mutex<Option<Error>>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watch (a thread that waits `bound` for the disarm).
    /// `None` (no watch) if no thread can be started.
    pub(crate) fn arm(self) -> Option<Armed> {
        debug!(
            "{}: watchdog armed for {} ({:?})",
            self.step,
            self.image.display(),
            self.bound
        );
        let (tx, rx) = mpsc::channel::<()>();
        let fired = Arc::new(Mutex::new(None));
        let out = fired.clone();
        let thread = std::thread::Builder::new()
            .name("diskmount-watchdog".into())
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(self.bound) {
                    let e = self.fire();
                    if let Ok(mut slot) = out.lock() {
                        *slot = Some(e);
                    }
                }
            })
            .map_err(|e| warn!("teardown: no watchdog thread: {e}"))
            .ok()?;
        Some(Armed {
            stop: Some(tx),
            fired,
            thread: Some(thread),
        })
    }

    /// Aborts the connection and kills the daemon; the error to report.
    fn fire(&self) -> Error {
        warn!(
            "{}: {} made no end within {:?}; aborting its FUSE connection{} and killing \
             qemu-storage-daemon (pid {})",
            self.step,
            self.image.display(),
            self.bound,
            self.connection.map(|n| format!(" {n}")).unwrap_or_default(),
            self.pid
        );
        let aborted = self.cut();
        Error::invalid(
            self.step,
            &self.image,
            format!(
                "the server stopped answering: {} did not end within {:?}, so the FUSE \
                 connection was {} and qemu-storage-daemon (pid {}) killed{}",
                self.doing,
                self.bound,
                if aborted { "aborted" } else { "cut" },
                self.pid,
                if self.step == Step::Detach {
                    "; writes not flushed are lost"
                } else {
                    ""
                }
            ),
        )
    }

    /// Aborts the export's FUSE connection (while it is still this
    /// export's) and kills the daemon, which ends the connection too:
    /// every pending and later request fails. Whether the abort itself
    /// worked.
    pub(crate) fn cut(&self) -> bool {
        let still_ours = |n: u64| {
            crate::kernel::mountinfo::on(&self.export)
                .is_some_and(|m| m.fstype.starts_with("fuse") && connection_of(m.dev) == n)
        };
        let aborted = match self.connection {
            Some(n) if still_ours(n) => abort_connection(n),
            Some(_) => Err(Error::invalid(
                Step::Detach,
                &self.export,
                "the export is no longer mounted",
            )),
            None => Err(Error::invalid(
                Step::Detach,
                &self.image,
                "the FUSE connection is not known",
            )),
        };
        if let Err(e) = &aborted {
            warn!("{e}; killing the daemon ends the connection too");
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        aborted.is_ok()
    }
}

impl Armed {
    /// Stops the watch; the error if it fired.
    pub(crate) fn disarm(mut self) -> Option<Error> {
        self.stop_thread();
        self.fired.lock().ok().and_then(|mut f| f.take())
    }

    fn stop_thread(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Writes to connection `n`'s `abort` file (see [`write_control`]).
fn abort_connection(n: u64) -> Result<()> {
    write_control(n, "abort", "1", Step::Detach)
}

/// Lets at most `max` background requests (readahead, asynchronous
/// reads) of connection `n` wait for the daemon at a time.
pub(crate) fn limit_background(n: u64, max: u32) -> Result<()> {
    write_control(n, "max_background", &max.to_string(), Step::Attach)
}

/// Writes `value` to connection `n`'s control file `name`: in
/// `/sys/fs/fuse/connections` if `fusectl` is mounted there, else through
/// a private mount of it (one superblock for the whole system) that is
/// gone again afterwards.
fn write_control(n: u64, name: &str, value: &str, step: Step) -> Result<()> {
    let here = Path::new(CONNECTIONS).join(n.to_string());
    if here.join(name).exists() {
        return write_file(&here, name, value, step);
    }
    let dir = super::helper_dir::private_dir(
        &crate::options::AttachOptions::default(),
        "diskmount-fusectl-",
    )
    .map_err(|e| {
        Error::invalid(
            step,
            CONNECTIONS,
            format!("no private directory to mount fusectl on: {e}"),
        )
    })?;
    nix::mount::mount(
        Some("fusectl"),
        dir.path(),
        Some("fusectl"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| Error::os(step, dir.path(), "mount fusectl", e))?;
    let written = write_file(&dir.path().join(n.to_string()), name, value, step);
    if let Err(e) = nix::mount::umount2(dir.path(), MntFlags::MNT_DETACH) {
        warn!("{step}: unmount {}: {e}", dir.path().display());
    }
    let _ = dir.close();
    written
}

fn write_file(conn: &Path, name: &str, value: &str, step: Step) -> Result<()> {
    debug!("{step}: write {value} to {}/{name}", conn.display());
    std::fs::write(conn.join(name), value).map_err(|e| {
        Error::os(
            step,
            conn,
            format!("write {name} of the FUSE connection"),
            e,
        )
    })
}

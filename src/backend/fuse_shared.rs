//! The Fuse backend's shared qemu-storage-daemon
//! ([`crate::AttachOptions::shared_daemon`]): one long-lived daemon per
//! process serves every image file attached with the option, each as a
//! block node and a FUSE export added and removed over QMP
//! ([`super::qmp`]), so that an attach does not pay for a daemon's start.
//!
//! The daemon:
//! - is spawned through [`spawn_tied`] (the long-lived spawner thread, so
//!   `PR_SET_PDEATHSIG` fires only when the process dies), and lives until
//!   the process exits; one that died is replaced at the next attach;
//! - talks QMP over a socket pair whose far end it gets as descriptor 3
//!   (`--chardev socket,id=qmp0,fd=3 --monitor chardev=qmp0`): no socket
//!   file to leak, no other process can connect;
//! - writes its standard error to an unlinked temporary file, read back
//!   for errors.
//!
//! Per image, under one mutex (the daemon's QMP is one conversation):
//! 1. `blockdev-add` of the format node `d<n>`, the format named, with its
//!    file node defined inside it (one command: fewer round trips, and the
//!    file node goes with the format node; qemu names it): the file
//!    [`crate::format::check`] read, as `/proc/<our pid>/fd/<fd>` (an image
//!    with a backing chain by its path: every file of the chain was
//!    checked by path), `locking=on`;
//! 2. `block-export-add` of the FUSE export `e<n>` on `<id>.helper/export`,
//!    the path the per-image daemon exports on (so records and cleanup
//!    find it the same way).
//!
//! Both carry no key at its default ([`blockdev_add`]): qemu's monitor
//! reads a command one byte per main-loop turn.
//!
//! Then the loop device over the export, as with a daemon of its own.
//! Teardown: the loop unbind (flush, `fsync` of the export), then
//! `block-export-del` (`hard`) with `blockdev-del` of `d<n>` (its file
//! node with it) in the same batch (the event `BLOCK_EXPORT_DELETED` comes
//! before the reply when no request is in flight; a node deleted too early
//! is deleted again after the event), and the export's directory. A refusal is one
//! error naming the step, the node and qemu's `desc`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, info, warn};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::QemuImage;
use super::qmp::{Qmp, QmpError};
use crate::command::describe_status;
use crate::error::{Error, ErrorKind, Result, Step};
use crate::image::Image;
use crate::options::AttachOptions;
use crate::sys::process::{pass_fd, spawn_tied};

const DAEMON: &str = "qemu-storage-daemon";

/// The bound on one QMP exchange (an open of the image included), and on
/// the wait for an export's deletion.
const QMP_TIMEOUT: Duration = Duration::from_secs(20);

/// How many ended daemons' exits are remembered for the exports they
/// served (an export of a replaced daemon reports its end).
const ENDED_KEPT: usize = 16;

/// The process's shared daemon, and how the last ones ended.
struct State {
    daemon: Option<Daemon>,
    /// `(generation, how it ended)` of replaced daemons, newest last.
    ended: VecDeque<(u64, String)>,
}

static STATE: Mutex<State> = Mutex::new(State {
    daemon: None,
    ended: VecDeque::new(),
});

/// Tells daemons apart (a pid can be reused).
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Numbers the node and export names (`d<n>`, `e<n>`).
static NODE: AtomicU64 = AtomicU64::new(0);

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running shared daemon.
struct Daemon {
    child: Child,
    qmp: Qmp,
    /// Its standard error (unlinked).
    log: File,
    generation: u64,
}

impl Daemon {
    /// Starts a daemon and enters QMP command mode. Errors name `image`,
    /// the attach that needed it.
    fn start(image: &Path) -> Result<Daemon> {
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| Error::os(Step::Attach, image, "socketpair for QMP", e))?;
        let log = tempfile::tempfile()
            .map_err(|e| Error::os(Step::Attach, image, "create the daemon's log", e))?;
        let stderr = log
            .try_clone()
            .map_err(|e| Error::os(Step::Attach, image, "dup the daemon's log", e))?;
        let mut cmd = Command::new(DAEMON);
        cmd.args([
            "--chardev",
            "socket,id=qmp0,fd=3",
            "--monitor",
            "chardev=qmp0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
        pass_fd(&mut cmd, theirs.as_fd());
        debug!("attach: start the shared {DAEMON}");
        let child = spawn_tied(cmd).map_err(|e| {
            Error::os(
                Step::Attach,
                image,
                format!("start the shared {DAEMON} (is qemu-utils installed?)"),
                e,
            )
        })?;
        drop(theirs);
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
        let pid = child.id();
        match Qmp::handshake(ours, QMP_TIMEOUT) {
            Ok(qmp) => {
                info!("attach: started the shared {DAEMON} (pid {pid})");
                Ok(Daemon {
                    child,
                    qmp,
                    log,
                    generation,
                })
            }
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let status = child.wait().map(describe_status).unwrap_or_default();
                Err(Error::Command {
                    step: Step::Attach,
                    path: image.to_path_buf(),
                    command: format!("{DAEMON} (shared, pid {pid})"),
                    status: format!("gave no QMP greeting ({e}); {status}"),
                    stderr: read_log(&log),
                })
            }
        }
    }

    /// How it ended, if it has.
    fn ended(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        Some(describe_status(status))
    }

    /// Kills it and collects it (its QMP broke: nothing more can be asked).
    fn kill(&mut self) -> String {
        let _ = self.child.kill();
        self.child
            .wait()
            .map(describe_status)
            .unwrap_or_else(|e| format!("could not be waited for: {e}"))
    }
}

/// What the daemon printed (the last 16 KiB).
fn read_log(log: &File) -> String {
    let mut f = log;
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

impl State {
    /// The running daemon, started (or replaced, if it died) as needed.
    fn running(&mut self, image: &Path) -> Result<&mut Daemon> {
        if let Some(d) = &mut self.daemon
            && let Some(how) = d.ended()
        {
            warn!(
                "attach: the shared {DAEMON} (pid {}) {how}; starting a new one",
                d.child.id()
            );
            self.forget(how);
        }
        if self.daemon.is_none() {
            self.daemon = Some(Daemon::start(image)?);
        }
        Ok(self.daemon.as_mut().expect("just started"))
    }

    /// Drops the current daemon (it ended `how`), remembering how.
    fn forget(&mut self, how: String) {
        if let Some(d) = self.daemon.take() {
            self.ended.push_back((d.generation, how));
            while self.ended.len() > ENDED_KEPT {
                self.ended.pop_front();
            }
        }
    }

    /// The daemon of `generation` if it still runs, else how it ended
    /// (with what it printed).
    fn of(&mut self, generation: u64) -> std::result::Result<&mut Daemon, (String, String)> {
        let gone = match &mut self.daemon {
            Some(d) if d.generation == generation => match d.ended() {
                None => None,
                Some(how) => Some((how, read_log(&d.log))),
            },
            _ => {
                let how = self
                    .ended
                    .iter()
                    .find(|(g, _)| *g == generation)
                    .map_or_else(|| "has exited".to_string(), |(_, h)| h.clone());
                return Err((how, String::new()));
            }
        };
        match gone {
            None => Ok(self.daemon.as_mut().expect("checked")),
            Some((how, log)) => {
                self.forget(how.clone());
                Err((how, log))
            }
        }
    }
}

/// One image's nodes and FUSE export in the shared daemon.
#[derive(Debug)]
pub(super) struct Export {
    generation: u64,
    pid: u32,
    n: u64,
    image: PathBuf,
    /// The FUSE export's path (`<dir>/export`).
    pub(super) export: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// Until removed or disowned.
    live: bool,
}

/// A QMP command's refusal or breakage as one error: the step, the node,
/// qemu's `desc`.
fn qmp_error(image: &Path, step: Step, pid: u32, what: &str, e: &QmpError) -> Error {
    let kind = match e {
        QmpError::Refused(desc) if desc.contains(" lock") => ErrorKind::InUse,
        QmpError::Refused(desc) if desc.contains("No such file") => ErrorKind::NotFound,
        _ => ErrorKind::HelperFailed,
    };
    Error::refused(
        kind,
        step,
        image,
        format!("the shared {DAEMON} (pid {pid}): {what}: {e}"),
    )
}

/// Runs `commands` on the daemon of `generation`, sent together (one
/// round trip: about 0.6 ms each here, most of a command's cost); each
/// one's result. A broken connection kills the daemon (the next attach
/// starts a new one).
fn execute_all(
    state: &mut State,
    generation: u64,
    commands: Vec<(&str, Value)>,
) -> Vec<std::result::Result<Value, QmpError>> {
    let Ok(daemon) = state.of(generation) else {
        return commands
            .iter()
            .map(|_| Err(QmpError::Broken("the daemon has exited".into())))
            .collect();
    };
    for (command, arguments) in &commands {
        debug!("qmp: {command} {arguments}");
    }
    let got = daemon.qmp.execute_all(commands);
    if let Some(Err(QmpError::Broken(why))) =
        got.iter().find(|r| matches!(r, Err(QmpError::Broken(_))))
    {
        warn!(
            "the shared {DAEMON} (pid {}): {why}; stopping it",
            daemon.child.id()
        );
        let how = daemon.kill();
        state.forget(how);
    }
    got
}

/// Adds `image` (checked as `checked`) to the shared daemon and exports
/// it on a fresh private directory; the export is live on return.
pub(super) fn add(image: &Image, checked: &QemuImage, options: &AttachOptions) -> Result<Export> {
    let path = image.path();
    let dir = super::helper_dir::private_dir(options, "diskmount-fuse-")?;
    let export = dir.path().join("export");
    File::create(&export).map_err(|e| Error::os(Step::Attach, &export, "create export file", e))?;
    let read_only = image.is_read_only();
    let n = NODE.fetch_add(1, Ordering::Relaxed);
    let (format_node, export_id) = (format!("d{n}"), format!("e{n}"));
    let filename = checked.own_filename(path);
    let mut state = state();
    let daemon = state.running(path)?;
    let (generation, pid) = (daemon.generation, daemon.child.id());
    let mut made = Export {
        generation,
        pid,
        n,
        image: path.to_path_buf(),
        export: export.clone(),
        dir: Some(dir),
        live: true,
    };
    let steps = [
        (
            "blockdev-add",
            format!("blockdev-add of the {} node {format_node}", image.format()),
            blockdev_add(image.format().as_str(), &format_node, &filename, read_only),
        ),
        (
            "block-export-add",
            format!("block-export-add of the FUSE export {export_id}"),
            export_add(&export_id, &format_node, &export, read_only),
        ),
    ];
    let (whats, commands): (Vec<String>, Vec<(&str, Value)>) = steps
        .into_iter()
        .map(|(command, what, arguments)| (what, (command, arguments)))
        .unzip();
    let results = execute_all(&mut state, generation, commands);
    // Each step needs the one before: the first refusal is the cause.
    if let Some(done) = results.iter().position(Result::is_err) {
        let Some(Err(e)) = results.get(done) else {
            unreachable!("position found an error")
        };
        let err = qmp_error(path, Step::Attach, pid, &whats[done], e);
        debug!("attach: {err}");
        // Undo what was added (an export is never left: it is the last
        // step).
        let mut errors = Vec::new();
        if done > 0 {
            made.remove_node(&mut state, &mut errors);
        }
        drop(state);
        made.live = false;
        super::helper_dir::remove_export_dir(&made.export, made.dir.take(), &mut errors);
        for e in errors {
            warn!("attach: undo: {e}");
        }
        return Err(err);
    }
    debug!(
        "attach: the shared {DAEMON} (pid {pid}) exports {} as {export_id}",
        path.display()
    );
    Ok(made)
}

/// The arguments of `blockdev-add` for the `format` node `node` over the
/// file `filename` (its file node defined inside it, named by qemu).
///
/// As short as qemu allows: its monitor reads a command one byte per
/// main-loop turn (`monitor_can_read` answers 1), measured at 3.7 us a
/// byte here, so every key left at its default is left out (`read-only`
/// when false). `locking` stays explicit: its default, `auto`, would
/// silently lock nothing on a filesystem without OFD locks.
fn blockdev_add(format: &str, node: &str, filename: &Path, read_only: bool) -> Value {
    let mut file = json!({"driver": "file", "filename": filename, "locking": "on"});
    let mut add = json!({"driver": format, "node-name": node});
    if read_only {
        file["read-only"] = json!(true);
        add["read-only"] = json!(true);
    }
    add["file"] = file;
    add
}

/// The arguments of `block-export-add` of the FUSE export `id` of `node`
/// on `mountpoint`; as short as [`blockdev_add`] (`writable` and
/// `growable` default to false).
fn export_add(id: &str, node: &str, mountpoint: &Path, read_only: bool) -> Value {
    let mut add = json!({"type": "fuse", "id": id, "node-name": node, "mountpoint": mountpoint});
    if !read_only {
        add["writable"] = json!(true);
    }
    add
}

impl Export {
    /// The daemon's pid.
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// For the cleanup record: the daemon, marked shared.
    pub(super) fn record_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("daemon_pid", self.pid.to_string()),
            ("shared", "true".to_string()),
        ];
        if let Some(dir) = &self.dir {
            f.push(("export_dir", dir.path().display().to_string()));
        }
        f
    }

    /// An error of `step` if the daemon serving the export has ended.
    pub(super) fn check_alive(&self, step: Step) -> Result<()> {
        match state().of(self.generation) {
            Ok(_) => Ok(()),
            Err((how, log)) => Err(self.gone(
                step,
                how,
                log,
                "the FUSE export under the loop device no longer works",
            )),
        }
    }

    fn gone(&self, step: Step, how: String, log: String, consequence: &str) -> Error {
        Error::Command {
            step,
            path: self.image.clone(),
            command: format!("{DAEMON} (shared, pid {})", self.pid),
            status: format!("{how}; {consequence}"),
            stderr: log,
        }
    }

    /// SIGKILLs the daemon (it stopped serving: every request then fails).
    pub(super) fn kill_daemon(&self) {
        if state().of(self.generation).is_ok() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    /// Leaves the export in place when dropped (a mount still uses it):
    /// it ends with the daemon, with this process.
    pub(super) fn disown(&mut self) {
        self.live = false;
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
    }

    /// Removes the export and the nodes (after the loop device let go of
    /// the export), then its directory. Pushes every error.
    pub(super) fn remove_into(&mut self, errors: &mut Vec<Error>) {
        if !self.live {
            return;
        }
        self.live = false;
        let mut state = state();
        match state.of(self.generation) {
            Err((how, log)) => errors.push(self.gone(
                Step::Detach,
                how,
                log,
                "writes it had not flushed may be lost",
            )),
            Ok(_) => {
                let id = format!("e{}", self.n);
                // `hard`: qemu's default (`safe`) refuses while a request
                // is in flight (the kernel's release of the file the loop
                // device let go of can still be on its way). The data is
                // flushed already; a per-image daemon is stopped the same
                // way. The export is gone once the event says so, which
                // qemu sends before the command's reply when no request
                // is in flight: the node's `blockdev-del` goes in the same
                // batch, and again after the event if it came too early
                // ("Node dN is in use"). Its file node goes with it.
                let d = format!("d{}", self.n);
                let results = execute_all(
                    &mut state,
                    self.generation,
                    vec![
                        ("block-export-del", json!({"id": id, "mode": "hard"})),
                        ("blockdev-del", json!({"node-name": d})),
                    ],
                );
                let deleted = match &results[0] {
                    Err(e) => Err(e.to_string()),
                    Ok(_) => state
                        .of(self.generation)
                        .map_err(|(how, _)| how)
                        .and_then(|daemon| {
                            daemon
                                .qmp
                                .wait_event(
                                    "BLOCK_EXPORT_DELETED",
                                    |d| d.get("id").and_then(Value::as_str) == Some(id.as_str()),
                                    QMP_TIMEOUT,
                                )
                                .map_err(|e| e.to_string())
                        }),
                };
                if let Err(e) = deleted {
                    errors.push(qmp_error(
                        &self.image,
                        Step::Detach,
                        self.pid,
                        &format!("block-export-del of the FUSE export {id}"),
                        &QmpError::Refused(e),
                    ));
                }
                // The node's deletion in the batch came too early (or the
                // export's deletion failed): tried again, so that the
                // image's locks go if qemu lets them (its refusal is said
                // too).
                if results[1].is_err() {
                    debug!("detach: the node of e{} is still there; again", self.n);
                    self.remove_node(&mut state, errors);
                }
            }
        }
        drop(state);
        super::helper_dir::remove_export_dir(&self.export, self.dir.take(), errors);
    }

    /// `blockdev-del` of the format node (its file node goes with it).
    fn remove_node(&self, state: &mut State, errors: &mut Vec<Error>) {
        let node = format!("d{}", self.n);
        let results = execute_all(
            state,
            self.generation,
            vec![("blockdev-del", json!({"node-name": node}))],
        );
        if let Some(Err(e)) = results.first() {
            errors.push(qmp_error(
                &self.image,
                Step::Detach,
                self.pid,
                &format!("blockdev-del of the node {node}"),
                e,
            ));
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if self.live {
            let mut errors = Vec::new();
            self.remove_into(&mut errors);
            for e in errors {
                warn!("teardown: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commands carry no key at its default: qemu reads them a byte at
    /// a time.
    #[test]
    fn commands_leave_defaults_out() {
        let f = Path::new("/proc/1/fd/5");
        assert_eq!(
            blockdev_add("qcow2", "d1", f, false).to_string(),
            r#"{"driver":"qcow2","file":{"driver":"file","filename":"/proc/1/fd/5","locking":"on"},"node-name":"d1"}"#
        );
        let ro = blockdev_add("qcow2", "d1", f, true);
        assert_eq!(
            (&ro["read-only"], &ro["file"]["read-only"]),
            (&json!(true), &json!(true))
        );
        let m = Path::new("/tmp/x/export");
        assert_eq!(
            export_add("e1", "d1", m, false).to_string(),
            r#"{"id":"e1","mountpoint":"/tmp/x/export","node-name":"d1","type":"fuse","writable":true}"#
        );
        assert!(export_add("e1", "d1", m, true).get("writable").is_none());
    }

    /// qemu's refusals become one line naming the step, the image, the
    /// node and qemu's words, with the kind the words tell.
    #[test]
    fn refusals_are_one_line_with_their_kind() {
        let img = Path::new("/srv/guest.qcow2");
        let e = qmp_error(
            img,
            Step::Attach,
            7,
            "blockdev-add of the qcow2 node d1",
            &QmpError::Refused("Failed to get \"write\" lock".into()),
        );
        assert_eq!(e.kind(), ErrorKind::InUse);
        assert_eq!(
            e.to_string(),
            "attach: /srv/guest.qcow2: the shared qemu-storage-daemon (pid 7): blockdev-add of \
             the qcow2 node d1: Failed to get \"write\" lock"
        );
        let e = qmp_error(
            img,
            Step::Detach,
            7,
            "blockdev-del of the node d1",
            &QmpError::Broken("the daemon closed the connection".into()),
        );
        assert_eq!(e.kind(), ErrorKind::HelperFailed);
        assert_eq!(e.step(), Some(Step::Detach));
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

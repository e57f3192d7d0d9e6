//! Running the few external programs diskmount needs (dmsetup, qemu), with
//! their status and standard error turned into an [`Error`].

use std::path::Path;
use std::process::Command;

use log::debug;

use crate::error::{Error, Result, Step};

/// Runs `cmd` to completion; success is its exit status, never what it
/// printed. Returns its standard output.
pub(crate) fn run(step: Step, path: &Path, cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}").replace('"', "");
    debug!("{step}: run {line}");
    unblock_signals(cmd);
    let out = cmd
        .output()
        .map_err(|e| Error::os(step, path, format!("run {line}"), e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let status = describe_status(out.status);
    Err(Error::Command {
        step,
        path: path.to_path_buf(),
        command: line,
        status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Makes `cmd`'s child start with no blocked signals, whatever the mask of
/// the thread that spawns it. A child inherits the signal mask, std does
/// not reset it (measured: a SIGTERM blocked in the parent stays blocked in
/// a `Command`'s child), and programs rarely reset it themselves: a child
/// of a process that blocks SIGTERM to tear down cleanly (as the diskmount
/// command does) would otherwise not die of SIGTERM.
pub fn unblock_signals(cmd: &mut Command) {
    crate::sys::process::unblock_signals_in_child(cmd);
}

/// "exited with status N" or "was killed by signal N".
pub(crate) fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// Waits for `child` to exit, up to `bound`; `None` if it is still running
/// then. The exit is signalled through a process descriptor (`pidfd_open`)
/// where the kernel has one (5.3); elsewhere it is polled with a growing
/// back-off (1 ms to 50 ms).
pub(crate) fn wait_timeout(
    child: &mut std::process::Child,
    bound: std::time::Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let start = std::time::Instant::now();
    if let Ok(pidfd) = crate::sys::process::pidfd_open(child.id()) {
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(Some(s));
            }
            let left = bound.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    crate::retry::poll_until(bound, || child.try_wait().transpose()).transpose()
}

//! Running the few external programs diskmount needs (dmsetup, qemu), with
//! their status and standard error turned into an [`Error`].

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use log::debug;

use crate::error::{Error, Result, Step};

/// How long an external program (dmsetup, `qemu-nbd --disconnect`,
/// modprobe) may run before it is killed: each of them answers in
/// milliseconds, unless it waits for something that will not come (udev
/// where there is none, a hung server, a module load stuck in the kernel).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`]; success is its
/// exit status, never what it printed. Returns its standard output.
pub(crate) fn run(step: Step, path: &Path, cmd: &mut Command) -> Result<String> {
    run_within(step, path, cmd, COMMAND_TIMEOUT)
}

/// [`run`] with its own bound: a program still running after `bound` is
/// killed, and that is the error. Its output goes to unnamed temporary
/// files, so a program that prints much never blocks on a full pipe.
pub(crate) fn run_within(
    step: Step,
    path: &Path,
    cmd: &mut Command,
    bound: Duration,
) -> Result<String> {
    let line = format!("{cmd:?}").replace('"', "");
    debug!("{step}: run {line}");
    unblock_signals(cmd);
    let fail = |e: std::io::Error| Error::os(step, path, format!("run {line}"), e);
    let out = tempfile::tempfile().map_err(fail)?;
    let err = tempfile::tempfile().map_err(fail)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(fail)?)
        .stderr(err.try_clone().map_err(fail)?)
        .spawn()
        .map_err(fail)?;
    let status = match wait_timeout(&mut child, bound).map_err(fail)? {
        Some(status) => describe_status_if_failed(status),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Some(format!("did not finish within {bound:?} and was killed"))
        }
    };
    // What it printed, bounded: standard output is its answer, standard
    // error only goes into a message.
    let read = |mut f: std::fs::File, limit: u64| {
        use std::io::{Read, Seek};
        let mut s = Vec::new();
        let _ = f.rewind();
        let _ = f.take(limit).read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    };
    match status {
        None => Ok(read(out, 16 << 20)),
        Some(status) => Err(Error::Command {
            step,
            path: path.to_path_buf(),
            command: line,
            status,
            stderr: read(err, 64 << 10),
        }),
    }
}

/// `None` for success, else how the program ended.
fn describe_status_if_failed(s: std::process::ExitStatus) -> Option<String> {
    (!s.success()).then(|| describe_status(s))
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
/// back-off ([`crate::retry::poll_until`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hanging_program_is_killed_at_the_bound() {
        let start = std::time::Instant::now();
        let err = run_within(
            Step::Map,
            Path::new("/dev/x"),
            Command::new("sleep").arg("30"),
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        let msg = err.to_string();
        assert!(
            msg.contains("did not finish within") && msg.contains("killed"),
            "{msg}"
        );
        assert_eq!(err.kind(), crate::ErrorKind::HelperFailed);
    }

    #[test]
    fn output_and_failure_are_reported() {
        let out = run(
            Step::Map,
            Path::new("/x"),
            Command::new("sh").args(["-c", "head -c 200000 /dev/zero | tr '\\0' a; echo"]),
        )
        .unwrap();
        assert!(
            out.len() > 200_000,
            "a full pipe would have blocked: {}",
            out.len()
        );
        let err = run(
            Step::Unmap,
            Path::new("/x"),
            Command::new("sh").args(["-c", "echo no such target >&2; exit 3"]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("exited with status 3") && msg.contains("no such target"),
            "{msg}"
        );
    }
}

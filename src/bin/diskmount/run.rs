//! `diskmount run IMAGE [OPTS] -- COMMAND [ARGS...]`: mount, run a command
//! in the image's root, tear down, exit with the command's status.
//!
//! SIGINT, SIGTERM and SIGHUP are blocked in diskmount (before any thread
//! starts) and read from a signalfd: they are passed on to the command, and
//! diskmount itself always gets to tear down.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use diskmount::{Backend, Mounted};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::failure::{Context, Failed};
use crate::opts::{self, Error, Opts, WithMounted};

#[derive(clap::Args)]
pub struct Args {
    /// The image file or block device.
    image: PathBuf,
    #[command(flatten)]
    opts: Opts,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

impl Args {
    /// What the hints on failure need to know.
    pub fn context(&self) -> Context {
        self.opts.context(&self.image)
    }
}

/// The signals diskmount passes on instead of dying of them.
pub fn signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

struct Job {
    command: Vec<OsString>,
    signals: SignalFd,
}

impl WithMounted for Job {
    type Output = u8;

    fn run<B: Backend>(self, mounted: &Mounted<B>) -> Result<u8, Error> {
        let root = mounted.path();
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .current_dir(root)
            .env("DISKMOUNT_ROOT", root);
        // diskmount blocks these signals for itself; the command must not.
        diskmount::command::unblock_signals(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| Failed::new("run", self.command[0].as_ref(), "run command", e))?;
        let pid = Pid::from_raw(child.id() as i32);
        loop {
            if let Some(status) = child.try_wait()? {
                use std::os::unix::process::ExitStatusExt;
                return Ok(match (status.code(), status.signal()) {
                    (Some(c), _) => c as u8,
                    (None, Some(s)) => 128u8.wrapping_add(s as u8),
                    _ => 1,
                });
            }
            // Blocks until a signal (SIGCHLD included) arrives.
            if let Ok(Some(info)) = self.signals.read_signal() {
                let sig = Signal::try_from(info.ssi_signo as i32).ok();
                if let Some(sig) = sig.filter(|s| *s != Signal::SIGCHLD) {
                    log::info!("run: passing {sig} on to the command");
                    let _ = kill(pid, sig);
                }
            }
        }
    }
}

pub fn run(args: Args, signals: SignalFd) -> Result<ExitCode, Error> {
    let dir = opts::temp_mount_point()?;
    let code = opts::mounted(
        &args.opts,
        &args.image,
        dir.path(),
        Job {
            command: args.command,
            signals,
        },
    )?;
    dir.close()?;
    Ok(ExitCode::from(code))
}

/// Blocks the passed-on signals in this thread (and every thread started
/// after) and returns a descriptor to read them from.
pub fn block_signals() -> Result<SignalFd, Error> {
    let set = signals();
    set.thread_block()?;
    Ok(SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)?)
}

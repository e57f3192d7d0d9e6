//! Helper processes that must not outlive us.
//!
//! `PR_SET_PDEATHSIG` asks the kernel to signal a child when the thread
//! that forked it ends, so a child spawned from a short-lived worker thread
//! would be killed when that thread returns. Children are therefore spawned
//! from one long-lived thread of the process, and get their signal only when
//! the whole process is gone (killed with SIGKILL included).
//!
//! # References
//! - [`prctl(2)`](https://man7.org/linux/man-pages/man2/prctl.2.html), `PR_SET_PDEATHSIG`

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

use nix::libc;

type Request = (Command, Sender<io::Result<Child>>);

/// Spawns `cmd` so that it receives SIGTERM when this process dies.
pub fn spawn_tied(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<Request>();
        std::thread::Builder::new()
            .name("diskmount-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_pdeathsig(&mut cmd));
                }
            })
            .expect("start the diskmount spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

fn spawn_with_pdeathsig(cmd: &mut Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed; prctl and getppid are plain
    // system calls, and nothing is allocated. (std has already emptied the
    // child's signal mask by then.)
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    };
    cmd.spawn()
}

/// Spawns `cmd` in its own process group, not tied to this process: for
/// helpers that must outlive it (a persistent mount). Something else must
/// stop them later. (Like every child std spawns, it starts with no blocked
/// signals, whatever the spawning thread's mask.)
pub fn spawn_detached(mut cmd: Command) -> io::Result<Child> {
    cmd.process_group(0);
    cmd.spawn()
}

/// A process descriptor for `pid` (`pidfd_open`, Linux 5.3): it becomes
/// readable (`POLLIN`) when the process exits, so an exit can be waited for
/// with `poll` and a timeout instead of a polling loop. `pid` must be a
/// child not yet waited for, so that the number cannot be reused meanwhile.
///
/// # References
/// - [`pidfd_open(2)`](https://man7.org/linux/man-pages/man2/pidfd_open.2.html)
pub fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and a flags word by value and returns
    // a new descriptor or -1; no memory is passed to the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) })
}

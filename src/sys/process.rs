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
    // only async-signal-safe calls are allowed; sigprocmask, prctl and
    // getppid are plain system calls, and nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            unblock_all_signals()?;
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

/// Empties the signal mask of the calling thread. Only async-signal-safe
/// calls, so it may run between fork and exec.
fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: sigemptyset initialises the set before pthread_sigmask reads
    // it; both are async-signal-safe and touch only this stack frame.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// Makes `cmd`'s child start with no blocked signals, whatever the mask of
/// the thread that spawns it (a child inherits the mask, and a program
/// rarely resets it: a blocked SIGTERM would make it unkillable by default).
pub fn unblock_signals_in_child(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls
    // async-signal-safe functions (sigemptyset, pthread_sigmask).
    unsafe {
        cmd.pre_exec(unblock_all_signals);
    }
}

/// The descriptor number a child gets for the file [`pass_fd`] hands it.
pub const PASSED_FD: i32 = 3;

/// Makes `cmd`'s child find `fd` open as descriptor [`PASSED_FD`] (and so
/// at `/proc/self/fd/3`): a helper then opens the very file that was
/// checked, not whatever its path names by then. `fd` must stay open
/// until the child is spawned (the caller borrows it across the spawn).
pub fn pass_fd(cmd: &mut Command, fd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe calls (dup2, fcntl) on descriptor numbers;
    // `raw` is open in the child because the parent holds it open across
    // the spawn. dup2 clears close-on-exec on the copy; when the number is
    // already PASSED_FD, fcntl clears it instead.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if raw == PASSED_FD {
                libc::fcntl(raw, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, PASSED_FD)
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Spawns `cmd` in its own process group, not tied to this process, with
/// no blocked signals: for helpers that must outlive it (a persistent
/// mount). Something else must stop them later.
pub fn spawn_detached(mut cmd: Command) -> io::Result<Child> {
    unblock_signals_in_child(&mut cmd);
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

/// Runs `f` when the process exits normally (`exit`, a return from
/// `main`); not on a fatal signal. For leaving nothing behind that only
/// this process uses.
///
/// # References
/// - [`atexit(3)`](https://man7.org/linux/man-pages/man3/atexit.3.html)
#[doc(alias = "atexit")]
pub fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain function with no arguments, as atexit wants;
    // registering it touches no memory of ours.
    match unsafe { libc::atexit(f) } {
        0 => Ok(()),
        _ => Err(io::Error::other("atexit: no room for another handler")),
    }
}

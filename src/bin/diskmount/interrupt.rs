//! Ctrl-C, SIGTERM and SIGHUP during the commands that do not pass them on
//! (`copy-in`, `copy-out`, `inject`, `mount`, `inspect`): they stay blocked
//! (diskmount never dies between attach and teardown), a thread reads them
//! and sets a flag; copies stop at the next chunk or entry, the command
//! tears down as on any error, and diskmount exits 128 + the signal
//! (130 for SIGINT, 143 for SIGTERM).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

static ASKED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Reads the blocked signals from `signals` in a thread of its own, for
/// the rest of the process's life.
pub fn watch(signals: SignalFd) {
    let spawned = std::thread::Builder::new()
        .name("diskmount-signals".into())
        .spawn(move || {
            loop {
                match signals.read_signal() {
                    Ok(Some(info)) => {
                        let signo = info.ssi_signo as i32;
                        if signo == Signal::SIGCHLD as i32 {
                            continue;
                        }
                        log::warn!(
                            "{}: stopping and tearing down",
                            Signal::try_from(signo).map_or("a signal", Signal::as_str)
                        );
                        SIGNAL.store(signo, Ordering::SeqCst);
                        ASKED.store(true, Ordering::SeqCst);
                    }
                    Ok(None) => {}
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        log::warn!("reading signals: {e}");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread: {e}");
    }
}

/// The flag that a stop signal sets, for copies to watch.
pub fn flag() -> &'static AtomicBool {
    &ASKED
}

/// The stop signal received, if any.
pub fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// An error if a stop signal came: for steps that would otherwise leave
/// something behind on purpose (a persistent mount).
pub fn check(what: &str) -> Result<(), Box<dyn std::error::Error>> {
    match received() {
        None => Ok(()),
        Some(s) => Err(format!(
            "{what}: interrupted by {}; everything was torn down",
            Signal::try_from(s).map_or("a signal", Signal::as_str)
        )
        .into()),
    }
}

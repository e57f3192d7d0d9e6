//! The I/O timeout of a FUSE export that serves a network image, while it
//! is attached: qemu's nbd driver has no request timeout, and a FUSE
//! request has none in the kernel, so a read through a stopped NBD server
//! would wait until the teardown's watchdog ([`super::fuse_abort`]).
//!
//! A thread watches the loop device over the export in sysfs: requests
//! in flight (`inflight`) while none completes (`stat`'s counts of
//! finished reads, writes, discards and flushes) for the whole
//! [`crate::AttachOptions::io_timeout`] means the server stopped
//! answering. Then the export's FUSE connection is aborted and the daemon
//! killed, as the teardown's watchdog does: every pending and later
//! request fails at once (EIO through the loop device), and the next step
//! and the teardown say why.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::fuse_abort::Watchdog;
use crate::error::{Error, Result, Step};

/// How often the loop device's counters are read.
const SAMPLE: Duration = Duration::from_millis(250);

/// A running watch; stopped on drop.
#[derive(Debug)]
pub(crate) struct StallWatch {
    stop: Option<mpsc::Sender<()>>,
    /// Set once the watch fired: why, for the next step and the teardown.
    fired: Arc<Mutex<Option<String>>>,
    image: PathBuf,
    thread: Option<JoinHandle<()>>,
}

/// The loop device's requests in flight and its completed ones so far.
fn counters(sys: &std::path::Path) -> Option<(u64, u64)> {
    let nums = |f: &str| -> Option<Vec<u64>> {
        let text = std::fs::read_to_string(sys.join(f)).ok()?;
        Some(
            text.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect(),
        )
    };
    let inflight: u64 = nums("inflight")?.iter().sum();
    let stat = nums("stat")?;
    // Completed reads, writes, discards, flushes (Documentation/block/stat.rst).
    let done = [0, 4, 11, 15]
        .iter()
        .filter_map(|&i| stat.get(i))
        .sum::<u64>();
    Some((inflight, done))
}

impl StallWatch {
    /// Watches loop device `loop_name` (over the export `watchdog` can
    /// abort) with bound `timeout`. `None` (no watch) if no thread can be
    /// started.
    pub(crate) fn start(loop_name: &str, watchdog: Watchdog, timeout: Duration) -> Option<Self> {
        let sys = PathBuf::from("/sys/block").join(loop_name);
        let (tx, rx) = mpsc::channel::<()>();
        let fired = Arc::new(Mutex::new(None));
        let out = fired.clone();
        let image = watchdog.image.clone();
        debug!(
            "attach: I/O watch on {loop_name} for {} ({timeout:?})",
            image.display()
        );
        let thread = std::thread::Builder::new()
            .name("diskmount-io-watch".into())
            .spawn(move || {
                let mut last_done = None;
                let mut since: Option<Instant> = None;
                loop {
                    match rx.recv_timeout(SAMPLE) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let Some((inflight, done)) = counters(&sys) else {
                        return;
                    };
                    let progressed = last_done != Some(done);
                    last_done = Some(done);
                    if inflight == 0 || progressed {
                        since = None;
                        continue;
                    }
                    let start = *since.get_or_insert_with(Instant::now);
                    if start.elapsed() < timeout {
                        continue;
                    }
                    warn!(
                        "{}: {inflight} request(s) unanswered for {timeout:?}: the server stopped \
                         answering; aborting the FUSE export",
                        watchdog.image.display()
                    );
                    let aborted = watchdog.cut();
                    let reason = format!(
                        "the server stopped answering: {inflight} request(s) had no answer \
                         within the I/O timeout ({timeout:?}), so the FUSE connection was {} and \
                         qemu-storage-daemon (pid {}) killed; every read and write fails from \
                         then on, writes not flushed are lost",
                        if aborted { "aborted" } else { "cut" },
                        watchdog.pid
                    );
                    if let Ok(mut slot) = out.lock() {
                        *slot = Some(reason);
                    }
                    return;
                }
            })
            .map_err(|e| warn!("attach: no I/O watch thread: {e}"))
            .ok()?;
        Some(StallWatch {
            stop: Some(tx),
            fired,
            image,
            thread: Some(thread),
        })
    }

    /// An error of `step` if the watch fired.
    pub(crate) fn check(&self, step: Step) -> Result<()> {
        match self.fired.lock().ok().and_then(|f| f.clone()) {
            Some(reason) => Err(Error::refused(
                crate::error::ErrorKind::Io,
                step,
                &self.image,
                reason,
            )),
            None => Ok(()),
        }
    }

    /// Stops the watch; the error (of `step`) if it fired.
    pub(crate) fn stop(mut self, step: Step) -> Option<Error> {
        self.stop_thread();
        self.check(step).err()
    }

    fn stop_thread(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_inflight_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inflight"), "       2        1\n").unwrap();
        // 17 fields: reads 5, writes 7, discards 11, flushes 13 completed.
        std::fs::write(
            dir.path().join("stat"),
            "5 0 40 1 7 0 56 2 3 9 9 11 0 88 1 13 4\n",
        )
        .unwrap();
        assert_eq!(counters(dir.path()), Some((3, 5 + 7 + 11 + 13)));
        // An older kernel's 11 fields: reads and writes only.
        std::fs::write(dir.path().join("stat"), "5 0 40 1 7 0 56 2 0 9 9\n").unwrap();
        assert_eq!(counters(dir.path()), Some((3, 12)));
        assert_eq!(counters(&dir.path().join("none")), None);
    }
}

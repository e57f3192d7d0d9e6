//! Every bounded wait of diskmount, in one place:
//!
//! - [`RetryPolicy`] and `Backoff`: retries with randomized back-off, for
//!   the races that the kernel reports as `EBUSY`/`EAGAIN` and that clear
//!   up by themselves (claiming a loop or nbd device, unmounting);
//! - `poll_until`: waiting for a condition that holds soon but gives no
//!   signal of its own (a device node appearing, a device unbinding, a
//!   short-lived lock holder letting go);
//! - `random`: the one source of jitter and unique names.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// How long and how often a step retries a transient failure.
///
/// Every retry loop is bounded in both attempts and time, and the waits are
/// randomized so that competing processes do not retry in lock step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The most attempts, the first one included.
    pub max_attempts: u32,
    /// The most time from the first attempt; no retry starts after it.
    pub timeout: Duration,
    /// The longest single wait between two attempts.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// For claiming a loop device: systemd's 64 attempts with waits growing
    /// from 0-10 ms to 0-250 ms, bounded at 10 s in all.
    ///
    /// Nova waits up to 30 s; contention for a loop device clears in
    /// milliseconds, so a longer wait would only hide a leak.
    pub const ATTACH: RetryPolicy = RetryPolicy {
        max_attempts: 64,
        timeout: Duration::from_secs(10),
        max_delay: Duration::from_millis(250),
    };

    /// For unmounting a busy filesystem: up to 2 s. A mount that is busy
    /// for longer has a process using it, and waiting will not help; the
    /// caller gets an error instead of a silent lazy unmount.
    pub const UNMOUNT: RetryPolicy = RetryPolicy {
        max_attempts: 20,
        timeout: Duration::from_secs(2),
        max_delay: Duration::from_millis(200),
    };

    /// For mounting a device whose last superblock is still going away:
    /// up to 2 s. After an unmount (or the detached read-only mount of OS
    /// inspection) the kernel keeps the old superblock while any process
    /// holds a descriptor into it, and a thread that forks at that moment
    /// gives its child a copy until the child execs; a read-write mount of
    /// the device meanwhile fails with `EBUSY` ("would change RO state").
    pub const MOUNT: RetryPolicy = RetryPolicy {
        max_attempts: 20,
        timeout: Duration::from_secs(2),
        max_delay: Duration::from_millis(200),
    };

    /// No retries at all.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        timeout: Duration::ZERO,
        max_delay: Duration::ZERO,
    };
}

/// The state of one retry loop.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    start: Instant,
    attempts: u32,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Backoff {
            policy,
            start: Instant::now(),
            attempts: 0,
        }
    }

    /// Counts one attempt.
    pub(crate) fn attempt(&mut self) {
        self.attempts += 1;
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Sleeps before the next attempt and returns true, or returns false if
    /// the bound is reached. The wait is random, up to a ceiling that grows
    /// linearly with the attempts from 10 ms to `max_delay`.
    pub(crate) fn wait(&mut self) -> bool {
        if self.attempts >= self.policy.max_attempts || self.elapsed() >= self.policy.timeout {
            return false;
        }
        let max = self.policy.max_delay.as_micros() as u64;
        let floor = 10_000u64.min(max);
        let ceiling =
            floor + (max - floor) * u64::from(self.attempts) / u64::from(self.policy.max_attempts);
        let delay = Duration::from_micros(random() % (ceiling + 1));
        let remaining = self.policy.timeout.saturating_sub(self.elapsed());
        std::thread::sleep(delay.min(remaining));
        true
    }
}

/// The first wait of [`poll_until`]; each further wait doubles, up to
/// [`POLL_MAX_DELAY`].
const POLL_FIRST_DELAY: Duration = Duration::from_micros(100);

/// The longest single wait of [`poll_until`].
const POLL_MAX_DELAY: Duration = Duration::from_millis(20);

/// Calls `step` until it answers `Some`, for at most `bound` (the first
/// call is always made), and returns that answer; `None` once `bound` has
/// passed. The waits between calls double from 100 us to 20 ms, so a
/// condition that holds within microseconds costs microseconds and a slow
/// one costs at most 50 wake-ups a second.
///
/// `step` decides what "done" means, an early failure included: a step
/// that returns `Some(Err(..))` when a helper died ends the wait at once.
pub(crate) fn poll_until<T>(bound: Duration, mut step: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut delay = POLL_FIRST_DELAY;
    loop {
        if let Some(done) = step() {
            return Some(done);
        }
        let elapsed = start.elapsed();
        if elapsed >= bound {
            return None;
        }
        std::thread::sleep(delay.min(bound - elapsed));
        delay = (delay * 2).min(POLL_MAX_DELAY);
    }
}

/// A random number from the standard library's per-process hash keys: no
/// generator crate is needed for jitter and unique names.
pub(crate) fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_until_returns_the_first_answer() {
        let mut calls = 0;
        let got = poll_until(Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
    }

    #[test]
    fn poll_until_gives_up_at_the_bound() {
        let mut calls = 0;
        let got: Option<()> = poll_until(Duration::from_millis(5), || {
            calls += 1;
            None
        });
        assert_eq!(got, None);
        assert!(calls >= 2, "called {calls} times");
    }

    #[test]
    fn poll_until_calls_once_with_no_time() {
        let mut calls = 0;
        let got: Option<()> = poll_until(Duration::ZERO, || {
            calls += 1;
            None
        });
        assert_eq!((got, calls), (None, 1));
    }

    #[test]
    fn random_differs() {
        assert_ne!(random(), random());
    }
}

//! Bounded retries with randomized back-off, for the races that the kernel
//! reports as `EBUSY`/`EAGAIN` and that clear up by themselves.

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

/// A random number from the standard library's per-process hash keys: no
/// generator crate is needed for jitter.
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

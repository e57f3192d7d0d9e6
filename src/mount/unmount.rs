//! `umount2`, retrying `EBUSY` within a [`RetryPolicy`]: a mount is busy
//! for a moment after its last user lets go (a forking thread's child
//! holding a descriptor until it execs, a loop device dropping its
//! backing file last), and for good while a process works in it.

use std::path::Path;

use log::warn;
use nix::errno::Errno;
use nix::mount::MntFlags;

use crate::error::{Error, Step};
use crate::retry::{Backoff, RetryPolicy};

/// Unmounts `target` (never following a link), retrying `EBUSY` within
/// `policy`. `what` names the mount in the errors (empty: the mount
/// point says it all).
pub(crate) fn unmount(
    step: Step,
    target: &Path,
    what: &str,
    policy: RetryPolicy,
) -> Result<(), Error> {
    let op = if what.is_empty() {
        "umount2".to_string()
    } else {
        format!("umount2 {what}")
    };
    let mut backoff = Backoff::new(policy);
    loop {
        backoff.attempt();
        match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) if backoff.wait() => {
                warn!(
                    "{step}: {}: busy (a process has a file open or its working directory \
                     there); retrying (attempt {})",
                    target.display(),
                    backoff.attempts() + 1
                );
            }
            Err(Errno::EBUSY) => {
                return Err(Error::Exhausted {
                    step,
                    path: target.to_path_buf(),
                    operation: format!(
                        "{op} (still busy: a process has a file open or its working directory \
                         there)"
                    )
                    .into(),
                    attempts: backoff.attempts(),
                    elapsed: backoff.elapsed(),
                    source: Errno::EBUSY.into(),
                });
            }
            Err(e) => return Err(Error::os(step, target, op, e)),
        }
    }
}

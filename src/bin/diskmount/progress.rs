//! Progress on stderr for the long operations (copying trees, attaching an
//! image through qemu to inspect it), shown only when stderr is a terminal:
//! a program reading stderr, or a log, gets nothing but errors.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether progress is shown at all.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal()
}

fn styled(bar: ProgressBar, template: &str, what: &str) -> ProgressBar {
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A spinner with `what` and the time taken (hidden off a terminal).
pub fn spinner(what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    styled(
        ProgressBar::new_spinner(),
        "{spinner} {msg} {elapsed}",
        what,
    )
}

/// A bar over `total` bytes (hidden off a terminal).
pub fn bytes(total: u64, what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    styled(
        ProgressBar::new(total),
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed}",
        what,
    )
}

/// The bytes of the files under `path` (not following links), as a copy
/// of it will write them.
pub fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Bytes in use on the filesystem mounted at `dir`.
fn used(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((s.blocks() - s.blocks_free()) as u64 * s.fragment_size() as u64)
}

/// Runs `work` while `bar`, from `base` on, follows the bytes the
/// filesystem at `dir` gains (the library's copy reports only at its end).
pub fn follow_fs<T>(bar: &ProgressBar, base: u64, dir: &Path, work: impl FnOnce() -> T) -> T {
    if bar.is_hidden() {
        return work();
    }
    let Some(start) = used(dir) else {
        return work();
    };
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some(now) = used(dir) {
                    let grown = base + now.saturating_sub(start);
                    bar.set_position(grown.min(bar.length().unwrap_or(u64::MAX)));
                }
                std::thread::park_timeout(Duration::from_millis(200));
            }
        });
        let out = work();
        done.store(true, Ordering::Relaxed);
        watcher.thread().unpark();
        out
    })
}

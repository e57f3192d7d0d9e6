//! [`with_mounted`]: attach, map, mount, run a closure, tear everything down.

use std::os::unix::fs::PermissionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::Path;

use log::{debug, warn};

use super::attach::Unattached;
use super::mount::Mounted;
use crate::backend::{Auto, Backend};
use crate::error::{Error, Result, Step};
use crate::image::Image;
use crate::mapping::MapOptions;
use crate::options::AttachOptions;
use crate::options::MountOptions;
use crate::partition::Partition;

/// Mounts `partition` of `image` on a fresh private directory, runs `f` with
/// that directory, and tears everything down again.
///
/// The backend is [`Auto`]; the mount is the default [`MountOptions`]
/// (read-only if the image is). The directory is a new `0700` temporary
/// directory, removed afterwards.
///
/// Teardown runs on every path, also when `f` panics (the panic then
/// continues). Its result decides the return value: if anything failed after
/// `f` ran — flushing, unmounting, detaching, removing the directory — the
/// result is `Err`, even though `f` succeeded, because writes that may not
/// have reached the image must never look like success.
///
/// # Errors
/// Any step's [`Error`]; [`Error::Teardown`] when several teardown steps
/// failed.
pub fn with_mounted<R>(
    image: &Image,
    partition: Partition,
    f: impl FnOnce(&Path) -> R,
) -> Result<R> {
    with_mounted_opts(image, partition, &MountOptions::default(), f)
}

/// [`with_mounted`] with explicit [`MountOptions`].
pub fn with_mounted_opts<R>(
    image: &Image,
    partition: Partition,
    options: &MountOptions,
    f: impl FnOnce(&Path) -> R,
) -> Result<R> {
    let (value, teardown) = run_mounted::<Auto, R>(
        image,
        partition,
        &AttachOptions::default(),
        &MapOptions::default(),
        options,
        None,
        |m| f(m.path()),
    )?;
    teardown.map(|()| value)
}

/// Attaches with `B`, maps, mounts on `at` (or a fresh `0700` temporary
/// directory, removed afterwards), runs `f`, and tears everything down.
/// `Err`: a step before `f` failed (nothing is left). `Ok((value,
/// teardown))`: `f` ran, and teardown gave `teardown`. A panic in `f` is
/// resumed after the teardown (whose errors are then logged).
pub(crate) fn run_mounted<B: Backend, R>(
    image: &Image,
    partition: Partition,
    attach: &AttachOptions,
    map: &MapOptions,
    options: &MountOptions,
    at: Option<&Path>,
    f: impl FnOnce(&Mounted<B>) -> R,
) -> Result<(R, Result<()>)> {
    let dir = match at {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix(".diskmount-")
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir()
                .map_err(|e| {
                    Error::os(
                        Step::Mount,
                        std::env::temp_dir(),
                        "create temporary mount point",
                        e,
                    )
                })?,
        ),
    };
    let target = at
        .or(dir.as_ref().map(|d| d.path()))
        .unwrap_or(Path::new("."));
    let mounted = Unattached::<B>::with_options(image.clone(), attach.clone())
        .attach()
        .and_then(|a| a.map_with(partition, &map.clone().keep_inspection_mount(true)))
        .and_then(|m| m.mount(target, options));
    let mounted = match mounted {
        Ok(m) => m,
        Err(e) => {
            if let Some(dir) = dir {
                remove_dir(dir).unwrap_or_else(|rm| warn!("teardown: {rm}"));
            }
            return Err(e);
        }
    };
    debug!(
        "with_mounted: running the closure in {}",
        mounted.path().display()
    );
    let outcome = catch_unwind(AssertUnwindSafe(|| f(&mounted)));
    let mut errors = Vec::new();
    if let Err(e) = mounted.close() {
        errors.extend(match e {
            Error::Teardown(list) => list,
            other => vec![other],
        });
    }
    if let Some(dir) = dir
        && let Err(e) = remove_dir(dir)
    {
        errors.push(e);
    }
    match outcome {
        Ok(value) => Ok((value, Error::collect(errors))),
        Err(panic) => {
            for e in errors {
                warn!("teardown after a panic: {e}");
            }
            resume_unwind(panic)
        }
    }
}
fn remove_dir(dir: tempfile::TempDir) -> Result<()> {
    let path = dir.path().to_path_buf();
    dir.close()
        .map_err(|e| Error::os(Step::Cleanup, path, "remove temporary mount point", e))
}

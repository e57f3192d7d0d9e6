//! The private directory of a qemu helper (a FUSE export's file,
//! qemu-nbd's log): made per attach, and removed at teardown once nothing
//! is mounted on what it holds.

use std::path::Path;

use log::warn;

use crate::error::{Error, Result, Step};
use crate::kernel::mountinfo;
use crate::mount::unmount::unmount;
use crate::options::AttachOptions;
use crate::retry::RetryPolicy;

/// A private `0700` directory for a qemu helper (`prefix`: what the
/// temporary-directory fallback is named): `<id>.helper` in the run
/// directory when the attach keeps a record (see `record::Keeper::helper_dir`),
/// else a fresh temporary directory.
pub(super) fn private_dir(options: &AttachOptions, prefix: &str) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let mut builder = tempfile::Builder::new();
    builder.permissions(std::fs::Permissions::from_mode(0o700));
    let made = match &options.helper_dir {
        Some(dir) => {
            let (parent, name) = (
                dir.parent().unwrap_or(dir),
                dir.file_name().unwrap_or_default(),
            );
            builder.prefix(name).rand_bytes(0).tempdir_in(parent)
        }
        None => builder.prefix(prefix).tempdir(),
    };
    made.map_err(|e| {
        let at = options
            .helper_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        Error::os(
            Step::Attach,
            at,
            "create the qemu helper's private directory",
            e,
        )
    })
}

/// Makes sure the FUSE export `export` is no longer mounted (a daemon that
/// died leaves its mount behind, `ENOTCONN`), then removes its private
/// directory `dir`. Pushes every error.
pub(super) fn remove_export_dir(
    export: &Path,
    dir: Option<tempfile::TempDir>,
    errors: &mut Vec<Error>,
) {
    if mountinfo::is_mount_point(export) {
        warn!(
            "detach: {} is still mounted; unmounting it",
            export.display()
        );
        // The loop device that was over the export lets go of it a
        // moment after it shows unbound (the kernel drops the backing
        // file last): until then the mount is busy.
        if let Err(e) = unmount(
            Step::Detach,
            export,
            "stale FUSE export",
            RetryPolicy::UNMOUNT,
        ) {
            errors.push(e);
        }
    }
    if let Some(dir) = dir {
        let path = dir.path().to_path_buf();
        if let Err(e) = dir.close() {
            errors.push(Error::os(Step::Detach, path, "remove export directory", e));
        }
    }
}

//! Which filesystem type a mount uses: the caller's (which bypasses the
//! allow-list), or the one probed from the superblock, which must be on
//! [`crate::fs::ALLOWED`]. Anything else is refused with what the device
//! holds and how to go on.

use std::fs::File;
use std::path::Path;

use log::debug;

use crate::error::{Error, ErrorKind, Result, Step};
use crate::fs::{Detected, FsType, probe};
use crate::options::MountOptions;

/// Decides the filesystem type: the caller's, or the probed one if it is on
/// the allow-list.
pub(crate) fn choose(
    device: &Path,
    file: &File,
    options: &MountOptions,
) -> Result<(String, Option<FsType>)> {
    if let Some(name) = &options.fstype {
        return Ok((name.clone(), FsType::from_name(name)));
    }
    let detected =
        probe::probe(file).map_err(|e| Error::os(Step::Probe, device, "read superblock", e))?;
    debug!("probe: {}: {}", device.display(), detected.describe());
    match detected {
        Detected::Filesystem { fstype, .. } if fstype.is_allowed() => {
            Ok((fstype.driver().to_string(), Some(fstype)))
        }
        Detected::Filesystem { fstype, .. } => Err(Error::refused(
            ErrorKind::Unsupported,
            Step::Mount,
            device,
            format!(
                "holds {fstype}, which is not on the allow-list ({}); pass MountOptions::fstype(\"{fstype}\") to mount it anyway",
                crate::fs::ALLOWED.map(FsType::as_str).join(", ")
            ),
        )),
        Detected::PartitionTable(_) => Err(Error::invalid(
            Step::Mount,
            device,
            format!(
                "holds {}; choose a partition (Partition::Number or Partition::Auto)",
                detected.describe()
            ),
        )),
        other => Err(Error::refused(
            ErrorKind::InvalidImage,
            Step::Mount,
            device,
            format!("holds {}; there is nothing to mount", other.describe()),
        )),
    }
}

//! [`Attached::inspect_os`]: the guest operating systems of an attached
//! image (the inspection itself is `crate::os`).

use super::attach::Attached;
use crate::backend::Backend;
use crate::error::Result;
use crate::os::OsInfo;

impl<B: Backend> Attached<B> {
    /// Inspects the attached image for guest operating systems: every
    /// filesystem (on a partition, or the whole disk) and every btrfs
    /// subvolume holding `etc/os-release` or `usr/lib/os-release`, each
    /// read through a read-only, detached mount without journal replay.
    /// Empty for an image without an OS. A filesystem that cannot be
    /// mounted is passed over (logged).
    ///
    /// # Errors
    /// [`crate::Step::Map`]: an unreadable or inconsistent partition table,
    /// or a partition that could not be given a device.
    pub fn inspect_os(&self) -> Result<Vec<OsInfo>> {
        let device = self.device.core();
        let table = crate::partition::read_table(device.file(), device.path(), device.size)?;
        crate::os::inspect_device(device, table.as_ref())
    }
}

//! Map and unmap: [`Attached`] → [`Mapped`] → back.

use std::path::Path;

use log::debug;

use super::attach::Attached;
use crate::backend::sealed::Ops;
use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result, Step};
use crate::mapping::{self, MapOptions, MappedPart, Mapping};
use crate::partition::{self, Partition, PartitionInfo};
use crate::record::{Field, Key};

/// The chosen partition of an attached image, as a block device. Dropping
/// it unmaps, then detaches.
#[must_use = "dropping a Mapped unmaps and detaches it at once"]
pub struct Mapped<B: Backend> {
    // Field order is teardown order.
    pub(crate) part: MappedPart,
    info: Option<PartitionInfo>,
    pub(crate) attached: Attached<B>,
    /// The OS root(s) found by inspection ([`Partition::Auto`], [`Partition::Os`]).
    pub(crate) os: Option<crate::os::Choice>,
}

impl<B: Backend> std::fmt::Debug for Mapped<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("device", &self.part.path)
            .field("partition", &self.part.number)
            .field("mapping", &self.part.mapping)
            .field("attached", &self.attached)
            .finish()
    }
}

impl<B: Backend> Attached<B> {
    /// Gives the chosen partition a block device, with the default
    /// [`MapOptions`] (strategy chosen automatically).
    ///
    /// # Errors
    /// [`crate::Step::Map`]: no such partition, an unreadable or
    /// inconsistent table, or no way to map it. The attached device is
    /// released.
    pub fn map(self, partition: Partition) -> Result<Mapped<B>> {
        self.map_with(partition, &MapOptions::default())
    }

    /// [`Attached::map`] with explicit [`MapOptions`].
    pub fn map_with(mut self, partition: Partition, options: &MapOptions) -> Result<Mapped<B>> {
        debug!("map: {} of {}", partition, self.device().display());
        self.device.get_mut().check(Step::Map)?;
        let device = self.device.core();
        let (chosen, os, kept) = match partition {
            Partition::Whole | Partition::LogicalVolume { .. } => (None, None, None),
            ref wanted => {
                let table = partition::read_table(device.file(), device.path(), device.size)?;
                match crate::os::choose(
                    device,
                    table.as_ref(),
                    wanted,
                    options.keep_inspection_mount,
                )? {
                    Some(c) => (
                        c.choice.roots[0].location.part.clone(),
                        Some(c.choice),
                        c.mapped,
                    ),
                    None => (
                        partition::select(device.file(), device.path(), table.as_ref(), wanted)?,
                        None,
                        None,
                    ),
                }
            }
        };
        // The root's device as the inspection mapped it, if it was mapped
        // the way asked for; otherwise it goes, and is mapped again below.
        let kept = match kept {
            Some(mut k) if options.strategy != mapping::MapStrategy::Auto => {
                k.release()?;
                None
            }
            k => k,
        };
        // An OS root on a logical volume maps as Partition::LogicalVolume.
        let os_lv = os.as_ref().and_then(|o| o.roots[0].location.lv.clone());
        let part = match (kept, &partition, &chosen) {
            (Some(k), ..) => k,
            (None, Partition::LogicalVolume { vg, lv }, _) => {
                mapping::logical_volume(device, vg, lv, options.strategy)?
            }
            _ if os_lv.is_some() => {
                let (vg, lv) = os_lv.as_ref().expect("checked");
                // The table as this step read it, kept in the choice.
                let table = os.as_ref().and_then(|o| o.table.as_ref());
                mapping::logical_volume_in(device, table, vg, lv, options.strategy)?
            }
            (_, _, None) => mapping::whole(device)?,
            (_, _, Some(p)) => mapping::map(device, p, options.strategy)?,
        };
        debug!(
            "map: {} is {} ({})",
            partition,
            part.path.display(),
            part.mapping.as_str()
        );
        let mut attached = self;
        if part.mapping != Mapping::Whole {
            attached.record.set(Field::Mapped {
                path: &part.path,
                mapping: part.mapping.as_str(),
            });
        }
        Ok(Mapped {
            part,
            info: chosen,
            attached,
            os,
        })
    }
}

impl<B: Backend> Mapped<B> {
    /// Wraps a mapping found on the system (adoption).
    pub(crate) fn from_parts(
        part: MappedPart,
        info: Option<PartitionInfo>,
        attached: Attached<B>,
    ) -> Self {
        Mapped {
            part,
            info,
            attached,
            os: None,
        }
    }

    /// The partition's block device, e.g. `/dev/loop3` or `/dev/loop3p2`;
    /// for a logical volume its own device (an offset loop device
    /// `/dev/loop5`, or `/dev/mapper/diskmount-loop3-rl-root`).
    pub fn device(&self) -> &Path {
        &self.part.path
    }

    /// The partition number, `None` for the whole device and for a logical
    /// volume (see [`Mapped::logical_volume`]).
    pub fn partition(&self) -> Option<u32> {
        self.part.number
    }

    /// The chosen partition's table entry, `None` for the whole device and
    /// for a logical volume (which may span several partitions: see
    /// [`Mapped::logical_volume`]).
    pub fn partition_info(&self) -> Option<&PartitionInfo> {
        self.info.as_ref()
    }

    /// The logical volume mapped ([`Partition::LogicalVolume`]): its VG,
    /// size, segments and where its pieces lie; `None` otherwise.
    pub fn logical_volume(&self) -> Option<&crate::mapping::LogicalVolumeInfo> {
        self.part.volume.as_ref()
    }

    /// How the partition got its device.
    pub fn mapping(&self) -> Mapping {
        self.part.mapping
    }

    /// The attached device underneath.
    pub fn attached(&self) -> &Attached<B> {
        &self.attached
    }

    /// The backend that attached the image.
    pub fn backend(&self) -> BackendKind {
        self.attached.backend()
    }

    /// Removes what the map step created and gives the attached device back.
    ///
    /// # Errors
    /// [`crate::Step::Unmap`]: the partition device could not be removed;
    /// the attached device is then detached too.
    pub fn unmap(self) -> Result<Attached<B>> {
        let Mapped {
            mut part,
            mut attached,
            ..
        } = self;
        part.release()?;
        attached.record.unset(Key::Mapped);
        Ok(attached)
    }

    /// Unmaps and detaches, trying every step and reporting every error.
    pub fn close(self) -> Result<()> {
        let mut errors = Vec::new();
        self.close_into(&mut errors);
        Error::collect(errors)
    }

    /// Lets go of everything without unmapping or detaching: for a
    /// filesystem still mounted on it, which must not lose its device. The
    /// record stays (its mount is still there) for `diskmount cleanup`.
    pub(crate) fn abandon(self) {
        let Mapped {
            mut part,
            mut attached,
            ..
        } = self;
        part.disarm();
        attached.device.abandon();
    }

    pub(crate) fn close_into(self, errors: &mut Vec<Error>) {
        let Mapped {
            mut part, attached, ..
        } = self;
        if let Err(e) = part.release() {
            errors.push(e);
        }
        drop(part);
        attached.close_into(errors);
    }
}

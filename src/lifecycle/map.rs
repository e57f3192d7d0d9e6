//! Map and unmap: [`Attached`] → [`Mapped`] → back.

use std::fs::File;
use std::path::{Path, PathBuf};

use log::{debug, warn};

use super::attach::Attached;
use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result, Step};
use crate::partition::Partition;

/// How a partition was given a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MapStrategy {
    /// No mapping: the whole attached device.
    Whole,
}

/// The device of the chosen partition, released once.
pub(crate) struct MappedPart {
    path: PathBuf,
    number: Option<u32>,
    strategy: MapStrategy,
    /// An open descriptor of the partition device; `None` once released.
    file: Option<File>,
}

impl MappedPart {
    pub(crate) fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("a mapping is only released when its owner is consumed")
    }

    fn release(&mut self) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        debug!("unmap: {} ({:?})", self.path.display(), self.strategy);
        drop(file);
        Ok(())
    }
}

impl Drop for MappedPart {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            warn!("teardown: {e}");
        }
    }
}

/// The chosen partition of an attached image, as a block device. Dropping
/// it unmaps, then detaches.
pub struct Mapped<B: Backend> {
    // Field order is teardown order.
    pub(crate) part: MappedPart,
    pub(crate) attached: Attached<B>,
}

impl<B: Backend> std::fmt::Debug for Mapped<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("device", &self.part.path)
            .field("partition", &self.part.number)
            .field("strategy", &self.part.strategy)
            .field("attached", &self.attached)
            .finish()
    }
}

impl<B: Backend> Attached<B> {
    /// Gives the chosen partition a block device.
    ///
    /// # Errors
    /// [`Step::Map`]: the partition does not exist or cannot be mapped. The
    /// attached device is released.
    pub fn map(self, partition: Partition) -> Result<Mapped<B>> {
        debug!("map: {} of {}", partition, self.device().display());
        match partition {
            Partition::Whole => {
                let file = self
                    .device
                    .file()
                    .try_clone()
                    .map_err(|e| Error::os(Step::Map, self.device(), "dup device", e))?;
                Ok(Mapped {
                    part: MappedPart {
                        path: self.device().to_path_buf(),
                        number: None,
                        strategy: MapStrategy::Whole,
                        file: Some(file),
                    },
                    attached: self,
                })
            }
            other => Err(Error::invalid(
                Step::Map,
                self.device(),
                format!("{other}: only Partition::Whole is supported by this version"),
            )),
        }
    }
}

impl<B: Backend> Mapped<B> {
    /// The partition's block device, e.g. `/dev/loop3` or `/dev/loop3p2`.
    pub fn device(&self) -> &Path {
        &self.part.path
    }

    /// The partition number, `None` for the whole device.
    pub fn partition(&self) -> Option<u32> {
        self.part.number
    }

    /// How the partition got its device.
    pub fn strategy(&self) -> MapStrategy {
        self.part.strategy
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
    /// [`Step::Unmap`]: the partition device could not be removed; the
    /// attached device is then detached too.
    pub fn unmap(self) -> Result<Attached<B>> {
        let Mapped { mut part, attached } = self;
        part.release()?;
        Ok(attached)
    }

    /// Unmaps and detaches, trying every step and reporting every error.
    pub fn close(self) -> Result<()> {
        let mut errors = Vec::new();
        self.close_into(&mut errors);
        Error::collect(errors)
    }

    pub(crate) fn close_into(self, errors: &mut Vec<Error>) {
        let Mapped { mut part, attached } = self;
        if let Err(e) = part.release() {
            errors.push(e);
        }
        drop(part);
        attached.close_into(errors);
    }
}

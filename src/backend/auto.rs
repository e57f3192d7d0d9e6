//! [`Auto`]: the backend chosen at run time from the image, as Nova's
//! `instance_for_format` chooses it.

use log::info;

use super::{Backend, BackendKind, Device, block, fuse, r#loop, nbd, sealed};
use crate::error::Result;
use crate::image::{Format, Image, ImageKind};
use crate::options::AttachOptions;

/// Picks the backend from the image, as Nova's `instance_for_format`
/// does: a block device → [`super::Block`]; a raw file → [`super::Loop`];
/// any other format → [`super::Nbd`] where the kernel has nbd (the module
/// loaded or loadable), else [`super::Fuse`] (qemu-storage-daemon). The choice is
/// logged and visible as [`crate::Attached::backend`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Auto;

impl Backend for Auto {
    const NAME: &'static str = "auto";
}

impl Auto {
    /// The backend [`Auto`] uses for `image` (this may load the nbd module,
    /// as deciding whether the kernel has nbd means trying).
    pub fn choose(image: &Image) -> BackendKind {
        match (image.kind(), image.format()) {
            (ImageKind::Block, _) => BackendKind::Block,
            (ImageKind::File, Format::Raw) => BackendKind::Loop,
            (ImageKind::File, _) if nbd::available() => BackendKind::Nbd,
            (ImageKind::File, _) => BackendKind::Fuse,
        }
    }
}

impl sealed::Attach for Auto {
    fn attach(image: &Image, options: &AttachOptions) -> Result<Device> {
        let kind = Auto::choose(image);
        info!(
            "auto: {} ({}) -> the {kind} backend",
            image.path().display(),
            image.format()
        );
        match kind {
            BackendKind::Block => block::attach(image, options),
            BackendKind::Loop => r#loop::attach(image, options),
            BackendKind::Fuse => fuse::attach(image, options),
            BackendKind::Nbd => nbd::attach(image, options),
        }
    }
}

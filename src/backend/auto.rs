//! [`Auto`]: the backend chosen at run time from the image, as Nova's
//! `instance_for_format` chooses it.

use log::info;

use super::{Backend, BackendKind, Device, block, fuse, r#loop, sealed};
use crate::error::Result;
use crate::image::{Format, Image, ImageKind};
use crate::options::AttachOptions;

/// Picks the backend from the image, as Nova's `instance_for_format`
/// does: a block device → [`super::Block`]; a raw file → [`super::Loop`];
/// any other format → [`super::Fuse`] (qemu-storage-daemon). The choice is
/// logged and visible as [`crate::Attached::backend`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Auto;

impl Backend for Auto {
    const NAME: &'static str = "auto";
}

/// The backend [`Auto`] uses for `image`.
pub fn choose(image: &Image) -> BackendKind {
    match (image.kind(), image.format()) {
        (ImageKind::Block, _) => BackendKind::Block,
        (ImageKind::File, Format::Raw) => BackendKind::Loop,
        (ImageKind::File, _) => BackendKind::Fuse,
    }
}

impl sealed::Attach for Auto {
    fn attach(image: &Image, options: &AttachOptions) -> Result<Device> {
        let kind = choose(image);
        info!(
            "auto: {} ({}) -> the {kind} backend",
            image.path().display(),
            image.format()
        );
        match kind {
            BackendKind::Block => block::attach(image, options),
            BackendKind::Loop => r#loop::attach(image, options),
            BackendKind::Fuse => fuse::attach(image, options),
        }
    }
}

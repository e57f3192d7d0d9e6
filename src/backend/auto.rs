//! [`Auto`]: the backend chosen at run time from the image, as Nova's
//! `instance_for_format` chooses it.

use log::debug;

use super::{Backend, BackendKind, Device, block, r#loop, sealed};
use crate::error::{Error, Result, Step};
use crate::image::{Format, Image, ImageKind};
use crate::options::AttachOptions;

/// Picks the backend from the image: a block device → [`super::Block`],
/// a raw file → [`super::Loop`]. The choice is logged and visible as
/// [`crate::Attached::backend`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Auto;

impl Backend for Auto {
    const NAME: &'static str = "auto";
}

/// The backend [`Auto`] uses for `image`.
pub fn choose(image: &Image) -> Result<BackendKind> {
    match (image.kind(), image.format()) {
        (ImageKind::Block, _) => Ok(BackendKind::Block),
        (ImageKind::File, Format::Raw) => Ok(BackendKind::Loop),
        (ImageKind::File, format) => Err(Error::invalid(
            Step::Attach,
            image.path(),
            format!(
                "{format} images need a qemu-based backend, which this build of diskmount does not have; \
                 convert the image with `qemu-img convert -f {format} -O raw`"
            ),
        )),
    }
}

impl sealed::Attach for Auto {
    fn attach(image: &Image, options: &AttachOptions) -> Result<Device> {
        let kind = choose(image)?;
        debug!(
            "auto: {} ({}) -> {kind} backend",
            image.path().display(),
            image.format()
        );
        match kind {
            BackendKind::Block => block::attach(image, options),
            BackendKind::Loop => r#loop::attach(image, options),
        }
    }
}

//! Backends: how an [`Image`] becomes a block device.
//!
//! A backend is a type parameter of the lifecycle types ([`crate::Unattached`]
//! and the rest), chosen at compile time:
//!
//! | backend | serves | attach | detach |
//! |---|---|---|---|
//! | [`Loop`] | raw image files | `LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE` | `LOOP_CLR_FD` |
//! | [`Block`] | existing block devices | open the device | close it |
//! | [`Auto`] | whatever it is given | picks one of the above at run time | as picked |
//!
//! The trait is sealed: the set of backends is part of diskmount.

mod auto;
mod block;
pub(crate) mod device;
mod fuse;
pub(crate) mod r#loop;
pub mod nbd;

use std::fmt;

pub use auto::Auto;
pub use block::Block;
pub(crate) use device::Device;
pub use fuse::Fuse;
pub use r#loop::Loop;
pub use nbd::Nbd;

use crate::error::Result;
use crate::image::Image;
use crate::options::AttachOptions;

pub(crate) mod sealed {
    use super::*;

    /// The attach step of a backend. Not nameable outside the crate, which
    /// seals [`super::Backend`].
    pub trait Attach {
        /// Turns `image` into an attached block device.
        fn attach(image: &Image, options: &AttachOptions) -> Result<Device>;
    }
}

/// What the qemu-based backends check before starting qemu: an image file,
/// the format's safety rules ([`crate::format::check`]), and that a
/// read-write attach is one qemu can serve.
pub(crate) fn check_qemu_image(image: &Image, backend: &str) -> Result<crate::format::ImageInfo> {
    let path = image.path();
    if image.kind() != crate::image::ImageKind::File {
        return Err(crate::error::Error::invalid(
            crate::error::Step::Attach,
            path,
            format!(
                "the {backend} backend serves image files; use the Block backend for block devices"
            ),
        ));
    }
    let info = crate::format::check(path, image.format(), image.allows_backing_file())?;
    crate::format::require_writable(&info, path, image.is_read_only())?;
    Ok(info)
}

/// A way of turning an [`Image`] into a block device. Implemented by
/// [`Loop`], [`Block`] and [`Auto`]; sealed.
pub trait Backend: sealed::Attach + Send + Sync + 'static {
    /// The backend's name, for messages.
    const NAME: &'static str;
}

/// Which backend actually attached an image (for [`Auto`], the one it
/// picked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// A loop device over an image file.
    Loop,
    /// An existing block device.
    Block,
    /// qemu-storage-daemon's FUSE export of the image, under a loop device.
    Fuse,
    /// qemu-nbd and the kernel's nbd driver.
    Nbd,
}

impl BackendKind {
    /// The name used in messages and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Loop => "loop",
            BackendKind::Block => "block",
            BackendKind::Fuse => "fuse",
            BackendKind::Nbd => "nbd",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

//! [`Auto`]: the backend chosen at run time from the image, as Nova's
//! `instance_for_format` chooses it.
//!
//! The list at the end of this file is the one place that names every
//! backend: it makes [`BackendKind`], [`AutoDevice`] (an enum of the other
//! backends' devices) and the order in which adoption asks them whether a
//! device found on the system is theirs (most specific first: an nbd
//! device, a loop device over a FUSE export, any loop device, any block
//! device).

use std::fmt;

use log::info;

use super::device::{Core, Found};
use super::{Backend, Device, nbd, rbd, sealed};
use super::{BlockDevice, FuseDevice, LoopDevice, NbdDevice, RbdDevice};
use crate::error::{Result, Step};
use crate::image::{Format, Image, ImageKind, Location};
use crate::options::AttachOptions;

/// Picks the backend from the image, as Nova's `instance_for_format`
/// does: a block device → [`super::Block`]; a raw file → [`super::Loop`];
/// an RBD image (raw) → [`super::Rbd`] where the kernel has rbd; any
/// other format or URL → [`super::Nbd`] where the kernel has nbd (the module
/// loaded or loadable), else [`super::Fuse`] (qemu-storage-daemon). The
/// choice is logged and visible as [`crate::Attached::backend`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Auto;

impl sealed::Sealed for Auto {}

impl Backend for Auto {
    const NAME: &'static str = "auto";
    type Device = AutoDevice;
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
            // Network images: RBD through the kernel's rbd driver (raw
            // images); every protocol through qemu's drivers and a FUSE
            // export (works on any kernel; the Nbd backend does not take
            // URLs yet).
            (ImageKind::Url, Format::Raw)
                if matches!(image.location(), Some(Location::Rbd(_))) && rbd::available() =>
            {
                BackendKind::Rbd
            }
            (ImageKind::Url, _) => BackendKind::Fuse,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Makes [`BackendKind`] and [`AutoDevice`] from the list of backends:
/// `Variant(DeviceType) = "name"`, in adoption order.
macro_rules! backends {
    ($($(#[doc = $doc:literal])* $kind:ident($device:ident) = $name:literal),* $(,)?) => {
        /// Which backend actually attached an image (for [`Auto`], the one
        /// it picked).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum BackendKind {
            $($(#[doc = $doc])* $kind,)*
        }

        impl BackendKind {
            /// The name used in messages and on the command line.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(BackendKind::$kind => $name,)*
                }
            }
        }

        /// The device of whichever backend [`Auto`] picked.
        #[derive(Debug)]
        #[non_exhaustive]
        pub enum AutoDevice {
            $($(#[doc = $doc])* $kind($device),)*
        }

        impl sealed::Ops for AutoDevice {
            fn attach(image: &Image, options: &AttachOptions) -> Result<Self> {
                let kind = Auto::choose(image);
                info!(
                    "auto: {} ({}) -> the {kind} backend",
                    image.path().display(),
                    image.format()
                );
                match kind {
                    $(BackendKind::$kind => {
                        <$device as sealed::Ops>::attach(image, options).map(AutoDevice::$kind)
                    })*
                }
            }

            fn adopt(found: &Found) -> Option<Result<Self>> {
                $(if let Some(d) = <$device as sealed::Ops>::adopt(found) {
                    return Some(d.map(AutoDevice::$kind));
                })*
                None
            }

            fn core(&self) -> &Core {
                match self {
                    $(AutoDevice::$kind(d) => d.core(),)*
                }
            }

            fn core_mut(&mut self) -> &mut Core {
                match self {
                    $(AutoDevice::$kind(d) => d.core_mut(),)*
                }
            }

            fn check(&mut self, step: Step) -> Result<()> {
                match self {
                    $(AutoDevice::$kind(d) => d.check(step),)*
                }
            }

            fn server(&self) -> Option<(&'static str, u32)> {
                match self {
                    $(AutoDevice::$kind(d) => d.server(),)*
                }
            }

            fn kill_server(&mut self) {
                match self {
                    $(AutoDevice::$kind(d) => d.kill_server(),)*
                }
            }

            fn watchdog(&self) -> Option<super::fuse_abort::Watchdog> {
                match self {
                    $(AutoDevice::$kind(d) => d.watchdog(),)*
                }
            }

            fn record_fields(&self) -> Vec<(&'static str, String)> {
                match self {
                    $(AutoDevice::$kind(d) => d.record_fields(),)*
                }
            }

            fn disarm(self) -> std::result::Result<(), Self> {
                match self {
                    $(AutoDevice::$kind(d) => d.disarm().map_err(AutoDevice::$kind),)*
                }
            }

            fn disown(self) {
                match self {
                    $(AutoDevice::$kind(d) => d.disown(),)*
                }
            }

            fn release(self) -> Result<()> {
                match self {
                    $(AutoDevice::$kind(d) => d.release(),)*
                }
            }
        }
    };
}

impl Device for AutoDevice {}

backends! {
    /// The kernel's rbd driver (a Ceph RBD image as `/dev/rbdN`).
    Rbd(RbdDevice) = "rbd",
    /// qemu-nbd and the kernel's nbd driver.
    Nbd(NbdDevice) = "nbd",
    /// qemu-storage-daemon's FUSE export of the image, under a loop device.
    Fuse(FuseDevice) = "fuse",
    /// A loop device over an image file.
    Loop(LoopDevice) = "loop",
    /// An existing block device.
    Block(BlockDevice) = "block",
}

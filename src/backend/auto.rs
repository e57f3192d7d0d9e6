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

use log::{debug, info};

use super::device::{Core, Found};
use super::{Backend, Device, nbd, rbd, sealed};
use super::{BlockDevice, FuseDevice, LoopDevice, NbdDevice, RbdDevice};
use crate::error::{Result, Step};
use crate::image::{Format, Image, ImageKind, Location};
use crate::options::AttachOptions;

/// Picks the backend from the image, as Nova's `instance_for_format`
/// does: a block device → [`super::Block`]; a raw file → [`super::Loop`];
/// any other format → [`super::Nbd`] where the kernel has nbd (the module
/// loaded or loadable), else [`super::Fuse`] (qemu-storage-daemon). An RBD
/// image goes to [`super::Rbd`] (the kernel's rbd driver, raw images),
/// then [`super::Nbd`] (librbd in qemu-nbd), then [`super::Fuse`] (librbd
/// in qemu-storage-daemon), the first this kernel has; the other URL
/// images to [`super::Fuse`]. The choice is logged and visible as
/// [`crate::Attached::backend`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Auto;

impl sealed::Sealed for Auto {}

impl Backend for Auto {
    const NAME: &'static str = "auto";
    type Device = AutoDevice;
}

impl Auto {
    /// The backend [`Auto`] uses for `image` (this may load the nbd or
    /// rbd module, as deciding whether the kernel has one means trying).
    pub fn choose(image: &Image) -> BackendKind {
        pick(
            image.kind(),
            image.format(),
            matches!(image.location(), Some(Location::Rbd(_))),
            rbd::available,
            nbd::available,
        )
    }
}

/// [`Auto::choose`] given what the image is and which drivers the kernel
/// has (asked only when the choice depends on it, in the order tried).
fn pick(
    kind: ImageKind,
    format: Format,
    is_rbd: bool,
    has_krbd: impl Fn() -> bool,
    has_nbd: impl Fn() -> bool,
) -> BackendKind {
    match (kind, format) {
        (ImageKind::Block, _) => BackendKind::Block,
        (ImageKind::File, Format::Raw) => BackendKind::Loop,
        (ImageKind::File, _) if has_nbd() => BackendKind::Nbd,
        (ImageKind::File, _) => BackendKind::Fuse,
        // RBD: krbd (raw images only), then qemu-nbd with librbd, then
        // qemu-storage-daemon with librbd and a FUSE export (any kernel).
        (ImageKind::Url, format) if is_rbd => {
            if format == Format::Raw && has_krbd() {
                BackendKind::Rbd
            } else if has_nbd() {
                debug!("auto: no krbd for this image; nbd is there");
                BackendKind::Nbd
            } else {
                debug!("auto: neither krbd nor nbd for this image");
                BackendKind::Fuse
            }
        }
        // The other protocols: qemu's drivers under a FUSE export, whose
        // teardown watchdog bounds a server that hangs.
        (ImageKind::Url, _) => BackendKind::Fuse,
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
                    if image.needs_format_probe() {
                        "format to be probed through the protocol".into()
                    } else {
                        image.format().to_string()
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Which drivers were asked about, in order.
    fn pick_asking(
        kind: ImageKind,
        format: Format,
        rbd: bool,
        krbd: bool,
        nbd: bool,
    ) -> (BackendKind, Vec<&'static str>) {
        let asked = std::cell::RefCell::new(Vec::new());
        let kind = pick(
            kind,
            format,
            rbd,
            || {
                asked.borrow_mut().push("krbd");
                krbd
            },
            || {
                asked.borrow_mut().push("nbd");
                nbd
            },
        );
        (kind, asked.into_inner())
    }

    #[test]
    fn rbd_goes_to_krbd_then_nbd_then_fuse() {
        use BackendKind::*;
        let url = ImageKind::Url;
        assert_eq!(
            pick_asking(url, Format::Raw, true, true, true),
            (Rbd, vec!["krbd"])
        );
        assert_eq!(
            pick_asking(url, Format::Raw, true, false, true),
            (Nbd, vec!["krbd", "nbd"])
        );
        assert_eq!(
            pick_asking(url, Format::Raw, true, false, false),
            (Fuse, vec!["krbd", "nbd"])
        );
        // krbd maps raw images only: a qcow2 in RBD goes to qemu.
        assert_eq!(
            pick_asking(url, Format::Qcow2, true, true, true),
            (Nbd, vec!["nbd"])
        );
        assert_eq!(
            pick_asking(url, Format::Qcow2, true, true, false),
            (Fuse, vec!["nbd"])
        );
    }

    #[test]
    fn files_devices_and_other_urls() {
        use BackendKind::*;
        assert_eq!(
            pick_asking(ImageKind::Block, Format::Raw, false, true, true),
            (Block, vec![])
        );
        assert_eq!(
            pick_asking(ImageKind::File, Format::Raw, false, true, true),
            (Loop, vec![])
        );
        assert_eq!(
            pick_asking(ImageKind::File, Format::Qcow2, false, true, true),
            (Nbd, vec!["nbd"])
        );
        assert_eq!(
            pick_asking(ImageKind::File, Format::Qcow2, false, true, false),
            (Fuse, vec!["nbd"])
        );
        assert_eq!(
            pick_asking(ImageKind::Url, Format::Raw, false, true, true),
            (Fuse, vec![])
        );
    }

    /// On this machine: what choose() picks for an rbd:// URL agrees with
    /// the order and the drivers this kernel has.
    #[test]
    fn choose_follows_this_kernels_drivers_for_rbd() {
        let image = Image::url("rbd://pool/image").unwrap();
        let want = if rbd::available() {
            BackendKind::Rbd
        } else if nbd::available() {
            BackendKind::Nbd
        } else {
            BackendKind::Fuse
        };
        assert_eq!(Auto::choose(&image), want);
    }
}

//! [`Mount`]: the closure API with every choice spelled out, for what
//! [`crate::with_mounted`] does not cover (a backend, options of every
//! step, the mount point), handing the closure the [`Mounted`] value.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use super::mount::Mounted;
use super::with_mounted::run_mounted;
use crate::backend::{Auto, Backend};
use crate::error::Error;
use crate::image::Image;
use crate::mapping::MapOptions;
use crate::options::{AttachOptions, MountOptions};
use crate::partition::Partition;

/// Attach, map and mount an image, run a closure with the [`Mounted`]
/// value, and tear everything down again, whatever happens in between:
///
/// ```no_run
/// use diskmount::{Format, Image, Loop, Mount, MountOptions, Partition};
/// # fn main() -> Result<(), diskmount::Error> {
/// let image = Image::file("guest.img", Format::Raw)?;
/// let hostname = Mount::image(&image)
///     .partition(Partition::Number(2))
///     .options(MountOptions::default().read_only(true))
///     .backend::<Loop>()
///     .run(|m| m.root()?.read_to_string("/etc/hostname"))?;
/// # Ok(())
/// # }
/// ```
///
/// The closure's error type is the caller's, so long as a diskmount
/// [`Error`] converts into it (`E: From<Error>`): no `??`. Teardown runs
/// on every path, also when the closure panics (the panic then goes on).
/// A teardown failure after a closure that succeeded is an `Err`: writes
/// that may not have reached the image never look like success. If the
/// closure failed too, its error is returned and the teardown errors are
/// logged (`warn`).
#[derive(Debug, Clone)]
#[must_use = "a Mount does nothing until run() is called"]
pub struct Mount<'i, B: Backend = Auto> {
    image: &'i Image,
    partition: Partition,
    attach: AttachOptions,
    map: MapOptions,
    options: MountOptions,
    at: Option<PathBuf>,
    backend: PhantomData<fn() -> B>,
}

impl<'i> Mount<'i, Auto> {
    /// Starts a mount of `image`: [`Partition::Auto`], the default options,
    /// the [`Auto`] backend, a fresh private mount point.
    pub fn image(image: &'i Image) -> Self {
        Mount {
            image,
            partition: Partition::Auto,
            attach: AttachOptions::default(),
            map: MapOptions::default(),
            options: MountOptions::default(),
            at: None,
            backend: PhantomData,
        }
    }
}

impl<'i, B: Backend> Mount<'i, B> {
    /// Which partition (default [`Partition::Auto`]).
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partition = partition;
        self
    }

    /// How to mount (default [`MountOptions::default`]).
    pub fn options(mut self, options: MountOptions) -> Self {
        self.options = options;
        self
    }

    /// How to attach (default [`AttachOptions::default`]).
    pub fn attach_options(mut self, options: AttachOptions) -> Self {
        self.attach = options;
        self
    }

    /// How to map the partition (default [`MapOptions::default`]).
    pub fn map_options(mut self, options: MapOptions) -> Self {
        self.map = options;
        self
    }

    /// Mounts on the existing directory `dir` instead of a fresh private
    /// temporary one.
    pub fn at(mut self, dir: impl AsRef<Path>) -> Self {
        self.at = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Uses backend `C` instead.
    pub fn backend<C: Backend>(self) -> Mount<'i, C> {
        Mount {
            image: self.image,
            partition: self.partition,
            attach: self.attach,
            map: self.map,
            options: self.options,
            at: self.at,
            backend: PhantomData,
        }
    }

    /// Mounts, runs `f` with the mounted image, tears down.
    ///
    /// # Errors
    /// Any step's [`Error`] (converted into `E`), `f`'s own error, or
    /// [`Error::Teardown`] when several teardown steps failed.
    pub fn run<T, E: From<Error>>(
        self,
        f: impl FnOnce(&Mounted<B>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mounted = run_mounted::<B, _>(
            self.image,
            self.partition,
            &self.attach,
            &self.map,
            &self.options,
            self.at.as_deref(),
            f,
        );
        match mounted {
            Ok((Ok(value), Ok(()))) => Ok(value),
            Ok((Ok(_), Err(teardown))) => Err(E::from(teardown)),
            Ok((Err(e), teardown)) => {
                if let Err(t) = teardown {
                    log::warn!("teardown after a failed closure: {t}");
                }
                Err(e)
            }
            Err(e) => Err(E::from(e)),
        }
    }
}

//! What to mount: an image file of a known format, or an existing block
//! device.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Step};
pub use crate::format::Format;
use crate::format::describe;

/// Whether an [`Image`] is a file or a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageKind {
    /// A regular file.
    File,
    /// An existing block device, used as it is.
    Block,
}

/// A disk image to attach: its path, kind, format and access mode.
///
/// Constructing an `Image` checks that the path exists and is of the right
/// kind, so that the most common mistakes fail early with a clear message;
/// the attach step checks again on the descriptor it opens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Image {
    path: PathBuf,
    kind: ImageKind,
    format: Format,
    read_only: bool,
    no_follow: bool,
    allow_backing_file: bool,
}

impl Image {
    /// A local image file of a known format. The format is taken as given
    /// and never probed.
    ///
    /// # Errors
    /// [`Step::Open`] if the path does not exist, is not a regular file, or
    /// is empty.
    pub fn file(path: impl AsRef<Path>, format: Format) -> Result<Image> {
        let path = absolute(path.as_ref())?;
        let meta = std::fs::metadata(&path).map_err(|e| Error::os(Step::Open, &path, "stat", e))?;
        let ft = meta.file_type();
        if ft.is_block_device() {
            return Err(Error::invalid(
                Step::Open,
                &path,
                "is a block device, not an image file; use Image::block",
            ));
        }
        if !ft.is_file() {
            return Err(Error::invalid(
                Step::Open,
                &path,
                format!("is not a regular file (it is a {})", describe(ft)),
            ));
        }
        if meta.len() == 0 {
            return Err(Error::invalid(
                Step::Open,
                &path,
                "the image file is empty (0 bytes)",
            ));
        }
        Ok(Image {
            path,
            kind: ImageKind::File,
            format,
            read_only: false,
            no_follow: false,
            allow_backing_file: false,
        })
    }

    /// An image file whose format is recognised from its magic bytes
    /// (qcow2, vmdk, vdi, vhdx, vpc; anything else is raw), with the safety
    /// rules applied at once: an image naming other host files (a backing
    /// file, an external data file, vmdk extents) is refused, as is one
    /// whose header is inconsistent. Probing is the caller's choice: a raw
    /// guest disk can carry any header its guest wrote, so pass the format
    /// with [`Image::file`] when it is known (that never probes). To allow a
    /// backing chain, pass the format and [`Image::allow_backing_file`].
    /// A block device is raw by definition ([`Image::block`]).
    ///
    /// # Errors
    /// [`Step::Open`] as for [`Image::file`]; [`Step::Probe`] for refused or
    /// unsupported images (QED), naming the feature and the host path it
    /// points at.
    pub fn probe(path: impl AsRef<Path>) -> Result<Image> {
        let path = absolute(path.as_ref())?;
        let meta = std::fs::metadata(&path).map_err(|e| Error::os(Step::Open, &path, "stat", e))?;
        if meta.file_type().is_block_device() {
            return Image::block(&path);
        }
        let image = Image::file(&path, Format::Raw)?;
        let file =
            std::fs::File::open(&path).map_err(|e| Error::os(Step::Open, &path, "open", e))?;
        let format = crate::format::probe(&file, &path)?;
        crate::format::check(&path, format, false)?;
        Ok(Image { format, ..image })
    }

    /// An existing block device (raw by definition).
    ///
    /// # Errors
    /// [`Step::Open`] if the path does not exist or is not a block device.
    pub fn block(path: impl AsRef<Path>) -> Result<Image> {
        let path = absolute(path.as_ref())?;
        let meta = std::fs::metadata(&path).map_err(|e| Error::os(Step::Open, &path, "stat", e))?;
        if !meta.file_type().is_block_device() {
            return Err(Error::invalid(
                Step::Open,
                &path,
                format!(
                    "is not a block device (it is a {}); use Image::file for image files",
                    describe(meta.file_type())
                ),
            ));
        }
        Ok(Image {
            path,
            kind: ImageKind::Block,
            format: Format::Raw,
            read_only: false,
            no_follow: false,
            allow_backing_file: false,
        })
    }

    /// An image found on the system (adoption): not checked, it may even be
    /// deleted already.
    pub(crate) fn found(path: PathBuf, kind: ImageKind, read_only: bool) -> Image {
        Image {
            path,
            kind,
            format: Format::Raw,
            read_only,
            no_follow: false,
            allow_backing_file: false,
        }
    }

    /// Open the image read-only, all the way down: the backing file, the
    /// block device and the mount. Default: read-write.
    pub fn read_only(mut self, read_only: bool) -> Image {
        self.read_only = read_only;
        self
    }

    /// Refuse to attach if the image path is a symbolic link (`O_NOFOLLOW`).
    /// Default: links are followed.
    pub fn no_follow(mut self, no_follow: bool) -> Image {
        self.no_follow = no_follow;
        self
    }

    /// Allow a qcow2 backing chain (or a VHD parent): every file in the
    /// chain is then checked by the same rules. Default: refused, because a
    /// backing file names a host file for qemu to open.
    pub fn allow_backing_file(mut self, allow: bool) -> Image {
        self.allow_backing_file = allow;
        self
    }

    /// Whether backing chains are allowed.
    pub fn allows_backing_file(&self) -> bool {
        self.allow_backing_file
    }

    /// The image's path (made absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File or block device.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The image format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Whether the image is opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether a symbolic link at the image path is refused.
    pub fn is_no_follow(&self) -> bool {
        self.no_follow
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::os(Step::Open, path, "resolve path", e))
}

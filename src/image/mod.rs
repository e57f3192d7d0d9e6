//! What to mount: an image file of a known format, an existing block
//! device, or a network image named by URL ([`url`]).

pub mod url;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Step};
pub use crate::format::Format;
use crate::format::describe;
pub use url::{HostPort, HttpUrl, IscsiUrl, Location, NbdServer, NbdUrl, RbdUrl};

/// Whether an [`Image`] is a file or a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageKind {
    /// A regular file.
    File,
    /// An existing block device, used as it is.
    Block,
    /// A network image named by URL ([`Image::url`]): RBD, NBD, HTTP(S)
    /// or iSCSI, reached through the protocol, never through a host path.
    Url,
}

/// A disk image to attach: its path (or URL), kind, format and access mode.
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
    /// Where a URL image lives ([`ImageKind::Url`] only).
    location: Option<Box<Location>>,
    /// A URL image whose format is still to be read through the protocol
    /// (at attach); false once a format is given.
    probe_format: bool,
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
            location: None,
            probe_format: false,
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
            location: None,
            probe_format: false,
        })
    }

    /// A network image named by URL:
    /// - `rbd://[USER@]POOL/IMAGE[@SNAP][?conf=PATH&keyring=PATH]` (Ceph),
    /// - `nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`,
    /// - `http://HOST[:PORT]/PATH`, `https://HOST[:PORT]/PATH` (always
    ///   read-only; the server's certificate is checked against the
    ///   system's CAs unless the URL ends in `#sslverify=off`),
    /// - `iscsi://[USER@]HOST[:PORT]/IQN/LUN[?password-file=PATH]`.
    ///
    /// Components are percent-decoded. A password in the URL is refused:
    /// credentials are named by file (see [`url`]). RBD is raw unless
    /// [`Image::with_format`] says otherwise (as in Nova); the other
    /// protocols are probed through the protocol when attached, with the
    /// rules of [`Image::probe`] (only header bytes are read, a backing
    /// file or data file is refused), unless a format is given. Nothing
    /// is contacted here.
    ///
    /// # Errors
    /// [`Step::Open`], naming the URL (without any secret) and what is
    /// wrong: an unknown scheme, a missing pool, image, export, path,
    /// target or LUN, a bad port, a hostile name (control characters,
    /// `.` or `..`, relative paths), an unknown parameter.
    pub fn url(url: &str) -> Result<Image> {
        let location = Location::parse(url)?;
        let probe_format = !matches!(location, Location::Rbd(_));
        let read_only = location.is_read_only();
        Ok(Image {
            path: PathBuf::from(location.to_string()),
            kind: ImageKind::Url,
            format: Format::Raw,
            read_only,
            no_follow: false,
            allow_backing_file: false,
            location: Some(Box::new(location)),
            probe_format,
        })
    }

    /// Gives the format of a URL image, so that it is not probed (for an
    /// image file the format is given to [`Image::file`]). Also sets the
    /// format of a file image as given, never probing.
    pub fn with_format(mut self, format: Format) -> Image {
        self.format = format;
        self.probe_format = false;
        self
    }

    /// Where a URL image lives ([`ImageKind::Url`]); `None` for a file or
    /// block device.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_deref()
    }

    /// Whether the format of a URL image is still to be read through the
    /// protocol when it is attached (no format was given; not RBD).
    pub fn needs_format_probe(&self) -> bool {
        self.probe_format
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
            location: None,
            probe_format: false,
        }
    }

    /// Open the image read-only, all the way down: the backing file, the
    /// block device and the mount. Default: read-write (HTTP(S) images and
    /// RBD snapshots are always read-only; `false` leaves them so).
    pub fn read_only(mut self, read_only: bool) -> Image {
        let forced = self.location.as_ref().is_some_and(|l| l.is_read_only());
        self.read_only = read_only || forced;
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

    /// The image's path (made absolute). For a URL image
    /// ([`ImageKind::Url`]) it is the URL's canonical display form (e.g.
    /// `nbd://127.0.0.1:10809/disk`; it never holds a secret), which names
    /// the image in messages and records but is not a host path: use
    /// [`Image::location`] to reach it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File, block device or URL.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_images() {
        let image = Image::url("nbd://127.0.0.1/disk").unwrap();
        assert_eq!(image.kind(), ImageKind::Url);
        assert_eq!(image.path(), Path::new("nbd://127.0.0.1:10809/disk"));
        assert!(matches!(image.location(), Some(Location::Nbd(_))));
        assert!(image.needs_format_probe());
        assert!(!image.is_read_only());
        let image = image.with_format(Format::Qcow2);
        assert_eq!(image.format(), Format::Qcow2);
        assert!(!image.needs_format_probe());

        let rbd = Image::url("rbd://pool/img").unwrap();
        assert_eq!(rbd.format(), Format::Raw);
        assert!(!rbd.needs_format_probe());

        let http = Image::url("https://127.0.0.1/d.qcow2").unwrap();
        assert!(http.is_read_only());
        assert!(http.read_only(false).is_read_only());
    }

    #[test]
    fn url_refusals_name_the_url_at_open() {
        let e = Image::url("nbd://127.0.0.1:99999/disk").unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidInput);
        assert_eq!(
            e.to_string(),
            "open: nbd://127.0.0.1:99999/disk: bad port \"99999\" (1 to 65535)"
        );
        let e = Image::url("gopher://h/x").unwrap_err().to_string();
        assert!(e.starts_with("open: gopher://h/x: unknown scheme"), "{e}");
    }
}

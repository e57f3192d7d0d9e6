//! Image formats: recognising them from their magic bytes ([`probe`]) and
//! inspecting their headers with our own code before qemu ever opens them
//! ([`inspect`], [`check`]).
//!
//! (Stub: filled in by the image-formats work.)

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Step};
use crate::image::Format;

/// What the header of an image says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageInfo {
    /// The format inspected.
    pub format: Format,
    /// The size of the disk the image holds, in bytes.
    pub virtual_size: u64,
    /// A qcow2 backing file, as the header names it.
    pub backing_file: Option<PathBuf>,
    /// The backing file's format, where the header names one.
    pub backing_format: Option<String>,
    /// A qcow2 external data file.
    pub data_file: Option<PathBuf>,
    /// Files other than the image itself that a vmdk descriptor names.
    pub extents: Vec<PathBuf>,
    /// A vmdk's createType.
    pub create_type: Option<String>,
}

/// The format of the image file `file` (at `path`), from its magic bytes.
pub fn probe(file: &File, path: &Path) -> Result<Format> {
    let _ = file;
    Err(Error::invalid(
        Step::Probe,
        path,
        "format probing is not implemented yet",
    ))
}

/// Inspects the header of `file` as `format`.
pub fn inspect(file: &File, path: &Path, format: Format) -> Result<ImageInfo> {
    let _ = file;
    Err(Error::invalid(
        Step::Probe,
        path,
        format!("{format} inspection is not implemented yet"),
    ))
}

/// The safety policy applied before a non-raw image is attached.
pub fn check(path: &Path, format: Format, allow_backing_file: bool) -> Result<ImageInfo> {
    let _ = allow_backing_file;
    if format == Format::Raw {
        let size = std::fs::metadata(path)
            .map_err(|e| Error::os(Step::Probe, path, "stat", e))?
            .len();
        return Ok(ImageInfo {
            format,
            virtual_size: size,
            backing_file: None,
            backing_format: None,
            data_file: None,
            extents: Vec::new(),
            create_type: None,
        });
    }
    Err(Error::invalid(
        Step::Probe,
        path,
        format!("{format} images are not supported yet"),
    ))
}

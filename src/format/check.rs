//! The safety policy: which of the host files an image header names are
//! acceptable, and the walk down a backing chain when backing files are
//! allowed.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::debug;
use nix::fcntl::OFlag;

use super::ImageInfo;
use super::{Format, describe};
use crate::error::{Error, Result, Step};

/// The most files a backing chain may have, the image included.
pub const MAX_CHAIN: usize = 16;

/// The vmdk create types that keep the whole disk in the image file.
const VMDK_SELF_CONTAINED: [&str; 2] = ["monolithicSparse", "streamOptimized"];

pub(crate) fn check(path: &Path, format: Format, allow_backing_file: bool) -> Result<ImageInfo> {
    let mut seen = Vec::new();
    link(path, Some(format), allow_backing_file, 1, &mut seen)
}

/// [`check`] of the image already open as `file` (what is checked is
/// then what the caller hands on, not whatever the path names later).
pub(crate) fn check_file(
    file: &File,
    path: &Path,
    format: Format,
    allow_backing_file: bool,
) -> Result<ImageInfo> {
    let meta = file
        .metadata()
        .map_err(|e| Error::os(Step::Probe, path, "fstat", e))?;
    let mut seen = Vec::new();
    link_file(
        file,
        &meta,
        path,
        Some(format),
        allow_backing_file,
        1,
        &mut seen,
    )
}

/// Checks the image at `path` (the `depth`th file of its chain) and, if
/// allowed, the rest of its chain. `format` is `None` where qemu would
/// probe it.
fn link(
    path: &Path,
    format: Option<Format>,
    allow_backing_file: bool,
    depth: usize,
    seen: &mut Vec<(u64, u64)>,
) -> Result<ImageInfo> {
    let (file, meta) = open(path, depth)?;
    link_file(&file, &meta, path, format, allow_backing_file, depth, seen)
}

/// [`link`] of the chain file open as `file`.
fn link_file(
    file: &File,
    meta: &Metadata,
    path: &Path,
    format: Option<Format>,
    allow_backing_file: bool,
    depth: usize,
    seen: &mut Vec<(u64, u64)>,
) -> Result<ImageInfo> {
    let refuse = |reason: String| Error::invalid_image(Step::Probe, path, reason);
    let id = (meta.dev(), meta.ino());
    if seen.contains(&id) {
        return Err(refuse(
            "the backing chain loops: this file is already part of it".to_string(),
        ));
    }
    seen.push(id);

    let format = match format {
        // Raw stays raw, never probed: a qcow2 header that a guest wrote
        // into its disk is data.
        Some(Format::Raw) => Format::Raw,
        Some(given) => {
            let found = super::probe(file, path)?;
            if found != given {
                let what = match found {
                    Format::Raw => {
                        "no known image signature (it looks like a raw disk)".to_string()
                    }
                    other => format!("the signature of a {other} image"),
                };
                return Err(refuse(format!(
                    "the image was given as {given}, but the file has {what}; diskmount never \
                     takes a format from the file itself: pass the right one"
                )));
            }
            given
        }
        // A backing file of no declared format: qemu would probe it.
        None => super::probe(file, path)?,
    };
    let info = super::inspect(file, path, format)?;
    debug!(
        "probe: {}: {} image of {} bytes{}",
        path.display(),
        info.format,
        info.virtual_size,
        info.backing_file
            .as_ref()
            .map(|b| format!(", backing file {}", b.display()))
            .unwrap_or_default()
    );
    policy(path, &info, allow_backing_file)?;

    if let Some(name) = &info.backing_file {
        if depth >= MAX_CHAIN {
            return Err(refuse(format!(
                "the backing chain is longer than {MAX_CHAIN} files (next: {})",
                name.display()
            )));
        }
        let next = backing_path(path, name)?;
        let next_format = match info.backing_format.as_deref() {
            None => None,
            Some(f) => Some(f.parse::<Format>().map_err(|_| {
                refuse(format!(
                    "its backing file {} is declared as format {f:?}, which diskmount does not \
                     check",
                    next.display()
                ))
            })?),
        };
        link(&next, next_format, allow_backing_file, depth + 1, seen)
            .map_err(|e| in_chain(path, e))?;
    }
    Ok(info)
}

/// Opens one file of a chain read-only, without blocking on a FIFO or
/// taking a terminal; the image itself may be a block device, the files
/// under it must be regular files.
fn open(path: &Path, depth: usize) -> Result<(File, Metadata)> {
    let flags = OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| Error::os(Step::Probe, path, "open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::os(Step::Probe, path, "fstat", e))?;
    let ft = meta.file_type();
    if !(ft.is_file() || depth == 1 && ft.is_block_device()) {
        return Err(Error::invalid_image(
            Step::Probe,
            path,
            format!(
                "is a {}, not an image file{}",
                describe(ft),
                if depth > 1 {
                    " (named as a backing file)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok((file, meta))
}

/// The refusals that do not depend on other files.
fn policy(path: &Path, info: &ImageInfo, allow_backing_file: bool) -> Result<()> {
    let refuse = |reason: String| Err(Error::invalid_image(Step::Probe, path, reason));
    if let Some(data) = &info.data_file {
        return refuse(format!(
            "the qcow2 header names an external data file, {}: qemu would read and write \
             the disk's data in that host file; diskmount refuses external data files",
            shown(path, data)
        ));
    }
    if info.format == Format::Vmdk {
        let create_type = info.create_type.as_deref().unwrap_or("");
        let files = info
            .extents
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if !VMDK_SELF_CONTAINED.contains(&create_type) {
            return refuse(format!(
                "the vmdk createType is {create_type:?}{}: only monolithicSparse and \
                 streamOptimized images, which keep the whole disk in the one file, are \
                 allowed",
                if files.is_empty() {
                    String::new()
                } else {
                    format!(", with its extents in {files}")
                }
            ));
        }
        if !files.is_empty() {
            return refuse(format!(
                "the vmdk descriptor names extent files other than the image: {files}; \
                 qemu would read them as the disk"
            ));
        }
    }
    let Some(backing) = &info.backing_file else {
        return Ok(());
    };
    let feature = match info.format {
        Format::Vmdk => "names a parent disk (parentFileNameHint)",
        Format::Vpc => "is a differencing VHD whose parent is",
        Format::Vhdx => {
            return refuse(format!(
                "a differencing vhdx image with parent {}: qemu does not open differencing \
                 VHDX images",
                shown(path, backing)
            ));
        }
        _ => "names a backing file",
    };
    if !allow_backing_file {
        return refuse(format!(
            "the {} image {feature} {}: qemu would read that host file underneath the image; \
             backing files are refused unless allowed (allow_backing_file)",
            info.format,
            shown(path, backing)
        ));
    }
    Ok(())
}

/// `name` as the host path it points at from `image`, followed by the
/// name as written when they differ.
fn shown(image: &Path, name: &Path) -> String {
    let resolved = resolve(image, name);
    if resolved == name {
        resolved.display().to_string()
    } else {
        format!("{} ({:?} in the header)", resolved.display(), name)
    }
}

/// A name from `image`'s header, relative to its directory.
fn resolve(image: &Path, name: &Path) -> PathBuf {
    if name.is_absolute() {
        name.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new("")).join(name)
    }
}

/// The host path of a backing file; names qemu would take for a protocol
/// or an option string are refused.
fn backing_path(image: &Path, name: &Path) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_os_str().as_bytes();
    // qemu's path_has_protocol: a colon before any slash.
    let colon = bytes.iter().position(|&c| c == b':');
    let slash = bytes.iter().position(|&c| c == b'/');
    if let Some(colon) = colon
        && slash.is_none_or(|slash| colon < slash)
    {
        return Err(Error::invalid_image(
            Step::Probe,
            image,
            format!(
                "its backing file name {name:?} is a qemu protocol or option string, not a \
                 host path; only plain paths are allowed in a backing chain"
            ),
        ));
    }
    Ok(resolve(image, name))
}

/// An error about a backing file of `image`: it names both.
fn in_chain(image: &Path, err: Error) -> Error {
    match err {
        Error::Invalid { path, reason, .. } => Error::invalid_image(
            Step::Probe,
            image,
            format!("backing file {}: {reason}", path.display()),
        ),
        Error::Os {
            path,
            operation,
            source,
            ..
        } => Error::os(
            Step::Probe,
            image,
            format!("backing file {}: {operation}", path.display()),
            source,
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(format: Format) -> ImageInfo {
        ImageInfo::new(format, 1 << 20)
    }

    #[test]
    fn protocols_are_not_paths() {
        let img = Path::new("/images/top.qcow2");
        for bad in [
            "nbd:localhost:10809",
            "json:{\"file\":{}}",
            "file:/etc/passwd",
            "http://x/y",
        ] {
            let err = backing_path(img, Path::new(bad)).unwrap_err().to_string();
            assert!(err.contains("protocol"), "{err}");
            assert!(err.contains("/images/top.qcow2"), "{err}");
        }
        assert_eq!(
            backing_path(img, Path::new("base.qcow2")).unwrap(),
            Path::new("/images/base.qcow2")
        );
        assert_eq!(
            backing_path(img, Path::new("./a:b")).unwrap(),
            Path::new("/images/./a:b")
        );
        assert_eq!(
            backing_path(Path::new("top.qcow2"), Path::new("base")).unwrap(),
            Path::new("base")
        );
    }

    #[test]
    fn policy_refusals() {
        let img = Path::new("/images/x");
        let mut i = info(Format::Qcow2);
        i.backing_file = Some("base.qcow2".into());
        let err = policy(img, &i, false).unwrap_err().to_string();
        assert!(err.contains("/images/base.qcow2"), "{err}");
        assert!(err.contains("\"base.qcow2\" in the header"), "{err}");
        policy(img, &i, true).unwrap();

        let mut i = info(Format::Qcow2);
        i.data_file = Some("/dev/sda".into());
        for allow in [false, true] {
            let err = policy(img, &i, allow).unwrap_err().to_string();
            assert!(err.contains("external data file, /dev/sda"), "{err}");
        }

        let mut i = info(Format::Vmdk);
        i.create_type = Some("monolithicFlat".into());
        i.extents = vec!["/images/x-flat.vmdk".into()];
        let err = policy(img, &i, true).unwrap_err().to_string();
        assert!(err.contains("monolithicFlat"), "{err}");
        assert!(err.contains("/images/x-flat.vmdk"), "{err}");
        i.create_type = Some("streamOptimized".into());
        let err = policy(img, &i, true).unwrap_err().to_string();
        assert!(err.contains("extent files"), "{err}");
        i.extents.clear();
        policy(img, &i, false).unwrap();
        i.create_type = None;
        assert!(policy(img, &i, false).is_err());

        let mut i = info(Format::Vhdx);
        i.backing_file = Some("p.vhdx".into());
        let err = policy(img, &i, true).unwrap_err().to_string();
        assert!(err.contains("differencing vhdx"), "{err}");

        let mut i = info(Format::Vpc);
        i.backing_file = Some("p.vhd".into());
        let err = policy(img, &i, false).unwrap_err().to_string();
        assert!(err.contains("differencing VHD"), "{err}");
        assert!(err.contains("/images/p.vhd"), "{err}");
        policy(img, &i, true).unwrap();
    }
}

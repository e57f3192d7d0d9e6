//! Reading a guest file whole, bounded, through [`Root`] (so a guest link
//! never leads out of the image).

use std::io::Read;
use std::path::Path;

use nix::errno::Errno;

use crate::error::{Error, ErrorKind, Result, Step};
use crate::root::Root;

/// The largest user-database or configuration file read from a guest.
pub const GUEST_FILE_LIMIT: u64 = 16 << 20;

/// The content of the guest file `path`, at most `limit` bytes (more is an
/// error naming the file); `None` if it does not exist.
pub(crate) fn read_bounded(root: &Root, path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let mut file = match root.open_file(path) {
        Ok(f) => f,
        Err(e) if e.errno() == Some(Errno::ENOENT as i32) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| root.err(path, "read", e))?;
    if out.len() as u64 > limit {
        return Err(root.refuse(
            path,
            format!("is larger than {limit} bytes; not read as a guest configuration file"),
        ));
    }
    Ok(Some(out))
}

/// [`read_bounded`] as text (invalid UTF-8 is replaced, never an error: the
/// lines diskmount looks at are ASCII).
pub(crate) fn read_text(root: &Root, path: &Path, limit: u64) -> Result<Option<String>> {
    Ok(read_bounded(root, path, limit)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// A refusal naming the guest file `path`: something the guest's files do
/// not have (an unknown user, a missing file).
pub(crate) fn not_found(root: &Root, path: &Path, why: impl Into<String>) -> Error {
    Error::refused(ErrorKind::NotFound, Step::Access, root.display(path), why)
}

/// A refusal naming the guest path `path`: what the guest holds there is
/// against the safety rules (a link where none may be) or inconsistent.
pub(crate) fn against_rules(root: &Root, path: &Path, why: impl Into<String>) -> Error {
    Error::refused(
        ErrorKind::InvalidImage,
        Step::Access,
        root.display(path),
        why,
    )
}

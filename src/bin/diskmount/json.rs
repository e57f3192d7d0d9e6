//! `--json`: results as one JSON object on stdout (docs/cli.md has the
//! schema of each command). Paths that are not UTF-8 are printed lossily.

use std::path::Path;

use serde::Serialize;

use crate::opts::Error;

/// Prints `value` as one line of JSON on stdout.
pub fn print<T: Serialize>(value: &T) -> Result<(), Error> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// A path as JSON shows it.
pub fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A path given on the command line, made absolute (not resolved).
pub fn absolute(p: &Path) -> String {
    path(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

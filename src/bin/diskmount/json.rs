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

/// Runs `f` with this process's stdout pointing at stderr, so that what
/// `f` prints for people cannot corrupt the JSON on stdout.
pub fn keep_stdout_clean<T>(f: impl FnOnce() -> T) -> Result<T, Error> {
    use std::io::Write;
    use std::os::fd::AsFd;
    std::io::stdout().flush()?;
    let saved = std::io::stdout().as_fd().try_clone_to_owned()?;
    nix::unistd::dup2_stdout(std::io::stderr().as_fd())?;
    let out = f();
    std::io::stdout().flush()?;
    nix::unistd::dup2_stdout(saved.as_fd())?;
    Ok(out)
}

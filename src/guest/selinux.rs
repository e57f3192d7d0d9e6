//! Whether a guest uses SELinux, and its policy's file contexts.
//!
//! A guest uses SELinux when its `etc/selinux/config` says
//! `SELINUX=enforcing` or `permissive` and names, with `SELINUXTYPE`, a
//! policy whose `etc/selinux/TYPE/contexts/files/file_contexts` exists.
//! That file (with the `.local`, `.homedirs`, `.subs` and `.subs_dist`
//! files next to it) is copied out of the image through [`Root`] into a
//! private directory and opened there by libselinux, so libselinux never
//! follows a guest link on the host. The compiled `file_contexts.bin` is
//! left out: libselinux then reads the text, the guest's source of truth,
//! and no binary from the image is parsed on the host.

use std::path::{Path, PathBuf};

use super::file::read_bounded;
use crate::error::{Error, Result, Step};
use crate::root::{Labels, NewEntry, Ownership, Root};

/// The guest's SELinux configuration file.
pub const CONFIG: &str = "etc/selinux/config";

/// The largest file-contexts file copied out of a guest.
const CONTEXTS_LIMIT: u64 = 64 << 20;

/// What `etc/selinux/config` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `SELINUX=`: `enforcing`, `permissive` or `disabled`, lower case.
    pub mode: String,
    /// `SELINUXTYPE=`: the policy's name (e.g. `targeted`), if given.
    pub policy: Option<String>,
}

impl Config {
    /// Parses the text of `etc/selinux/config` (`KEY=VALUE` lines, `#`
    /// comments, optional quotes). `None` without a `SELINUX=` line.
    pub fn parse(text: &str) -> Option<Config> {
        let mut mode = None;
        let mut policy = None;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
            match k.trim() {
                "SELINUX" => mode = Some(v.to_ascii_lowercase()),
                "SELINUXTYPE" => policy = Some(v),
                _ => {}
            }
        }
        Some(Config {
            mode: mode?,
            policy,
        })
    }

    /// Whether the mode is enforcing or permissive.
    pub fn enabled(&self) -> bool {
        self.mode == "enforcing" || self.mode == "permissive"
    }

    /// The policy's file contexts, relative to the guest's root: `None`
    /// without a policy, or with a name that is not a plain directory name.
    pub fn file_contexts(&self) -> Option<PathBuf> {
        let p = self.policy.as_deref()?;
        let plain = !p.is_empty()
            && p != "."
            && p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        plain.then(|| {
            Path::new("etc/selinux")
                .join(p)
                .join("contexts/files/file_contexts")
        })
    }
}

/// The guest's SELinux file contexts if it uses SELinux (see the module
/// docs), `None` if it does not (then nothing is labelled).
pub fn labels(root: &Root) -> Result<Option<Labels>> {
    let Some(text) = read_bounded(root, Path::new(CONFIG), 1 << 20)? else {
        log::debug!("no {CONFIG}: the guest does not use SELinux");
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&text);
    let Some(config) = Config::parse(&text).filter(Config::enabled) else {
        log::debug!("{CONFIG}: SELinux is disabled");
        return Ok(None);
    };
    let Some(contexts) = config.file_contexts() else {
        log::warn!(
            "{CONFIG}: SELinux is {} but SELINUXTYPE names no usable policy; nothing is labelled",
            config.mode
        );
        return Ok(None);
    };
    let Some(main) = read_bounded(root, &contexts, CONTEXTS_LIMIT)? else {
        log::warn!(
            "{CONFIG}: SELinux is {} but {} does not exist; nothing is labelled",
            config.mode,
            contexts.display()
        );
        return Ok(None);
    };
    let private = tempfile::Builder::new()
        .prefix(".diskmount-selinux-")
        .tempdir()
        .map_err(|e| {
            Error::os(
                Step::Access,
                std::env::temp_dir(),
                "create temporary directory",
                e,
            )
        })?;
    let copy = private.path().join("file_contexts");
    write_private(&copy, &main)?;
    for suffix in [".local", ".homedirs", ".subs", ".subs_dist"] {
        let mut name = contexts.as_os_str().to_owned();
        name.push(suffix);
        if let Some(data) = read_bounded(root, Path::new(&name), CONTEXTS_LIMIT)? {
            let mut dest = copy.as_os_str().to_owned();
            dest.push(suffix);
            write_private(Path::new(&dest), &data)?;
        }
    }
    // Named by its guest path: the private copy is gone by the time anyone reads the error.
    let labels = Labels::open(&copy).map_err(|e| {
        let cause = match e {
            Error::Os {
                operation, source, ..
            } => format!("{operation}: {source}"),
            other => other.to_string(),
        };
        super::file::against_rules(
            root,
            &contexts,
            format!("libselinux cannot read the guest's file contexts: {cause}"),
        )
    })?;
    log::info!(
        "the guest uses SELinux ({}, policy {}): labelling from its {}",
        config.mode,
        config.policy.as_deref().unwrap_or(""),
        contexts.display()
    );
    private
        .close()
        .map_err(|e| Error::os(Step::Access, &copy, "remove temporary directory", e))?;
    Ok(Some(labels))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(|e| Error::os(Step::Access, path, "write", e))
}

/// The guest's `/.autorelabel`: asks the guest to relabel every file at its
/// next boot.
pub const AUTORELABEL: &str = ".autorelabel";

/// Creates the guest's `/.autorelabel` (empty, `0644`, root's, labelled as
/// its policy says), as `virt-customize --selinux-relabel` does.
pub fn request_relabel(root: &Root, labels: &Labels) -> Result<()> {
    let how = NewEntry::new()
        .mode(0o644)
        .owner(Ownership::ROOT)
        .labels(Some(labels));
    root.write_with(AUTORELABEL, b"", &how)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_modes_and_policy_names() {
        let c = Config::parse("# comment\nSELINUX=enforcing\nSELINUXTYPE=targeted\n").unwrap();
        assert!(c.enabled());
        assert_eq!(
            c.file_contexts().unwrap(),
            Path::new("etc/selinux/targeted/contexts/files/file_contexts")
        );
        let c = Config::parse("SELINUX=\"Permissive\"\nSELINUXTYPE=mls\n").unwrap();
        assert!(c.enabled());
        assert!(
            !Config::parse("SELINUX=disabled\nSELINUXTYPE=targeted\n")
                .unwrap()
                .enabled()
        );
        assert!(Config::parse("SELINUXTYPE=targeted\n").is_none());
        for bad in ["../../x", "..", "", "a/b"] {
            let c = Config::parse(&format!("SELINUX=enforcing\nSELINUXTYPE={bad}\n")).unwrap();
            assert!(c.file_contexts().is_none(), "{bad:?}");
        }
    }
}

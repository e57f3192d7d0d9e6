//! `inspect`'s "os" key: the guest operating systems of the image, found
//! by [`diskmount::Attached::inspect_os`] on a read-only attach.

use diskmount::os::OsInfo;
use diskmount::{Attached, Auto, Error, Image, Unattached};
use serde::Serialize;

/// One fstab entry, as `--json` prints it (docs/cli.md).
#[derive(Serialize)]
pub struct Mountpoint {
    mountpoint: String,
    source: String,
    fstype: String,
    options: Vec<String>,
    line: usize,
    skip: Option<String>,
}

/// One OS, as `--json` prints it (docs/cli.md).
#[derive(Serialize)]
pub struct Os {
    root: String,
    id: String,
    version_id: Option<String>,
    pretty_name: String,
    hostname: Option<String>,
    fstype: String,
    mountpoints: Vec<Mountpoint>,
}

impl From<OsInfo> for Os {
    fn from(o: OsInfo) -> Os {
        Os {
            root: o.root,
            id: o.id,
            version_id: o.version_id,
            pretty_name: o.pretty_name,
            hostname: o.hostname,
            fstype: o.fstype,
            mountpoints: o
                .mountpoints
                .into_iter()
                .map(|m| Mountpoint {
                    mountpoint: m.mountpoint,
                    source: m.source,
                    fstype: m.fstype,
                    options: m.options,
                    line: m.line,
                    skip: m.skip,
                })
                .collect(),
        }
    }
}

/// The OSes of `image` (attached read-only, then detached); `None` when
/// not root (a warning says so: looking inside needs a mount).
pub fn find(image: &Image) -> Result<Option<Vec<Os>>, Error> {
    if !is_root() {
        return Ok(None);
    }
    let attached = Unattached::<Auto>::new(image.clone()).attach()?;
    let found = of(&attached);
    let closed = attached.close();
    let found = found?;
    closed?;
    Ok(found)
}

/// The OSes of an image already attached; `None` when not root.
pub fn of(attached: &Attached<Auto>) -> Result<Option<Vec<Os>>, Error> {
    if !is_root() {
        return Ok(None);
    }
    let found = attached.inspect_os()?;
    Ok(Some(found.into_iter().map(Os::from).collect()))
}

fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        log::warn!("inspect: not root, so the guest OS is not looked for (it needs a mount)");
    }
    root
}

/// Lines for the table: `OS on partition 2: Debian GNU/Linux 12 (debian 12), host debian-guest`.
pub fn lines(os: Option<&[Os]>) -> String {
    let Some(os) = os else {
        return "OS: not looked for (needs root)\n".to_string();
    };
    let mut out = String::new();
    for o in os {
        out.push_str(&format!(
            "OS on {}: {} ({}{}), host {}\n",
            o.root,
            o.pretty_name,
            o.id,
            o.version_id
                .as_ref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            o.hostname.as_deref().unwrap_or("unknown")
        ));
        for m in &o.mountpoints {
            out.push_str(&format!(
                "  fstab {} {} {}{}\n",
                m.source,
                m.mountpoint,
                m.fstype,
                m.skip
                    .as_ref()
                    .map(|s| format!(" (skipped: {s})"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

//! Everything `diskmount inject` does, as one plan applied to a mounted
//! guest: first every check (users, groups, paths, links), then the
//! writes, so that a refused part leaves the image as it was.

use std::path::PathBuf;

use super::context::Guest;
use super::owner::OwnerSpec;
use super::ssh::KeyTarget;
use super::{hostname, password, selinux};
use crate::error::Result;
use crate::root::{Labels, NewEntry, Ownership, Root};

/// A file to write into the guest.
#[derive(Debug, Clone)]
pub struct FileWrite {
    /// Where in the guest.
    pub dest: PathBuf,
    /// The content.
    pub data: Vec<u8>,
    /// The permission bits; unset: an existing file's, or `0o644`.
    pub mode: Option<u32>,
    /// The owner; unset: an existing file's, or root's.
    pub owner: Option<OwnerSpec>,
}

/// What to inject into a guest (see [`Injection::apply`]).
#[derive(Debug, Clone, Default)]
pub struct Injection {
    /// `(user, public keys)` for `~user/.ssh/authorized_keys`.
    pub ssh_keys: Vec<(String, Vec<String>)>,
    /// The host name.
    pub hostname: Option<String>,
    /// Files to write.
    pub writes: Vec<FileWrite>,
    /// `(user, crypt(3) hash)` for `etc/shadow`.
    pub password: Option<(String, String)>,
    /// Create `/.autorelabel` (SELinux guests).
    pub selinux_relabel: bool,
}

/// What [`Injection::apply`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Whether the guest uses SELinux (and so what was created was labelled).
    pub selinux: bool,
    /// How many guest files changed.
    pub changed: usize,
}

impl Injection {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ssh_keys.is_empty()
            && self.hostname.is_none()
            && self.writes.is_empty()
            && self.password.is_none()
            && !self.selinux_relabel
    }

    /// Applies everything to the guest mounted at `root`: reads its users
    /// and SELinux policy, checks every part (unknown users and groups,
    /// missing files, symlinked `.ssh`, bad host names), and only then
    /// writes: files, SSH keys, host name, password, `/.autorelabel`.
    pub fn apply(&self, root: &Root) -> Result<Applied> {
        let guest = Guest::read(root)?;
        let users = guest.users(root)?;
        let labels = guest.labels();
        // Checks: nothing has been written yet.
        let writes = self
            .writes
            .iter()
            .map(|w| Ok((w, w.owner.as_ref().map(|o| users.resolve(o)).transpose()?)))
            .collect::<Result<Vec<(&FileWrite, Option<Ownership>)>>>()?;
        let keys = self
            .ssh_keys
            .iter()
            .map(|(user, keys)| Ok((KeyTarget::check(root, users, user)?, keys)))
            .collect::<Result<Vec<_>>>()?;
        if let Some(name) = &self.hostname {
            hostname::validate(name).map_err(|e| root.refuse(hostname::HOSTNAME.as_ref(), e))?;
        }
        if let Some((user, _)) = &self.password {
            password::check(root, user)?;
        }
        if self.selinux_relabel && labels.is_none() {
            log::warn!("the guest does not use SELinux: --selinux-relabel does nothing");
        }
        // Writes.
        let mut out = Applied {
            selinux: labels.is_some(),
            changed: 0,
        };
        for (w, owner) in writes {
            out.changed += usize::from(write_file(root, labels, w, owner)?);
        }
        for (target, keys) in keys {
            out.changed += usize::from(target.add(root, labels, keys)?);
        }
        if let Some(name) = &self.hostname {
            out.changed += usize::from(hostname::set(root, labels, name)?);
        }
        if let Some((user, hash)) = &self.password {
            out.changed += usize::from(password::set(root, user, hash)?);
        }
        if self.selinux_relabel
            && let Some(labels) = labels
        {
            selinux::request_relabel(root, labels)?;
            out.changed += 1;
        }
        Ok(out)
    }
}

/// Writes one file: an existing one (a guest link followed inside the
/// image) is replaced by rename keeping its label, and its owner and mode
/// unless others are given; a new one (`0o644` and root's unless given,
/// and any missing parent directory, `0o755`, root's) is created and
/// labelled.
fn write_file(
    root: &Root,
    labels: Option<&Labels>,
    w: &FileWrite,
    owner: Option<Ownership>,
) -> Result<bool> {
    if let Some(parent) = w.dest.parent() {
        let dirs = NewEntry::new()
            .mode(0o755)
            .owner(Ownership::ROOT)
            .labels(labels);
        root.mkdir_all_with(parent, &dirs)?;
    }
    let mut how = NewEntry::new().labels(labels);
    if let Some(m) = w.mode {
        how = how.mode(m);
    }
    if let Some(o) = owner {
        how = how.owner(o);
    }
    root.write_keeping(&w.dest, &w.data, &how)?;
    log::info!("wrote {}", w.dest.display());
    Ok(true)
}

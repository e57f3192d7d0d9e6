//! SSH public keys into a guest user's `~/.ssh/authorized_keys`, as Nova's
//! `inject_data` and `virt-customize --ssh-inject` do: `~/.ssh` made
//! `0700` and `authorized_keys` `0600`, both the user's and the user's
//! primary group's, the key appended unless it is there already.
//!
//! The home directory comes from the guest's `etc/passwd` and is resolved
//! inside the image; a `.ssh` or `authorized_keys` that is a symbolic link
//! is refused (never followed, whatever it points at), and so is one that
//! is not a directory or a regular file.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, fstatat};

use super::users::Users;
use crate::error::Result;
use crate::root::{Labels, NewEntry, Ownership, Root};

/// The key types OpenSSH accepts in `authorized_keys` start with these.
const KEY_TYPES: [&str; 5] = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-", "rsa-sha2-"];

/// The `(type, base64 blob)` of an `authorized_keys` or `.pub` line
/// (options before the type, and the comment after, do not count):
/// what makes two lines the same key.
pub fn key_id(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    // Options may hold quoted spaces; the type is the first word that
    // names a key type and is followed by a base64 blob.
    words.windows(2).find_map(|w| {
        let is_type = KEY_TYPES.iter().any(|t| w[0].starts_with(t));
        let is_blob = w[1].len() >= 16
            && w[1]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
        (is_type && is_blob).then_some((w[0], w[1]))
    })
}

/// The public keys of a `.pub` file's text, one per non-comment line;
/// an error for a private key, or a line that is not a public key.
pub fn parse_public_keys(text: &str) -> Result<Vec<String>, String> {
    if text.contains("PRIVATE KEY") {
        return Err("holds a private key; give the public one (.pub)".into());
    }
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if key_id(t).is_none() {
            return Err(format!("line {} is not an SSH public key", n + 1));
        }
        keys.push(t.to_string());
    }
    if keys.is_empty() {
        return Err("holds no SSH public key".into());
    }
    Ok(keys)
}

/// `existing` with each of `keys` that it does not hold yet appended (one
/// per line); `None` if it holds them all.
pub fn merge_keys(existing: &str, keys: &[String]) -> Option<String> {
    let mut have: Vec<(String, String)> = existing
        .lines()
        .filter_map(key_id)
        .map(|(t, b)| (t.to_string(), b.to_string()))
        .collect();
    let mut out = existing.to_string();
    let mut changed = false;
    for key in keys {
        let Some((t, b)) = key_id(key) else { continue };
        if have.iter().any(|(ht, hb)| ht == t && hb == b) {
            continue;
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(key);
        out.push('\n');
        have.push((t.to_string(), b.to_string()));
        changed = true;
    }
    changed.then_some(out)
}

/// [`merge_keys`] on the file's bytes: what is there is kept byte for
/// byte, whatever its encoding (a Latin-1 comment stays Latin-1), and the
/// missing keys are appended.
fn merged_bytes(old: &[u8], keys: &[String]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(old);
    let merged = merge_keys(&text, keys)?;
    // merge_keys only appends to what it was given.
    let mut out = old.to_vec();
    out.extend_from_slice(&merged.as_bytes()[text.len()..]);
    Some(out)
}

/// Where a user's keys go, checked before anything is written.
#[derive(Debug)]
pub struct KeyTarget {
    user: String,
    home: PathBuf,
    owner: Ownership,
}

impl KeyTarget {
    /// The user `user` in the guest's `etc/passwd`, with a home directory
    /// that exists in the image, and neither `~/.ssh` nor
    /// `~/.ssh/authorized_keys` a link or of the wrong kind.
    pub fn check(root: &Root, users: &Users, user: &str) -> Result<KeyTarget> {
        let entry = users.user(user)?;
        let home = PathBuf::from(&entry.home);
        if !home.is_absolute() {
            return Err(root.refuse(
                &home,
                format!("home directory of {user:?} in the guest's etc/passwd is not absolute"),
            ));
        }
        let target = KeyTarget {
            user: user.to_string(),
            home,
            owner: Ownership::new(entry.uid, entry.gid),
        };
        let home_fd = target.home_dir(root)?;
        if let Some(ssh) = target.ssh_dir(root, &home_fd)? {
            target.keys_kind(root, &ssh)?;
        }
        Ok(target)
    }

    /// The user's home directory, resolved inside the image.
    fn home_dir(&self, root: &Root) -> Result<OwnedFd> {
        let meta = root.metadata(&self.home).map_err(|e| {
            if e.errno() == Some(Errno::ENOENT as i32) {
                super::file::not_found(
                    root,
                    &self.home,
                    format!(
                        "home directory of {:?} (the guest's etc/passwd) does not exist",
                        self.user
                    ),
                )
            } else {
                e
            }
        })?;
        if !meta.is_dir() {
            return Err(root.refuse(&self.home, "home directory is not a directory"));
        }
        root.resolve(&self.home, true)
    }

    fn ssh_path(&self) -> PathBuf {
        self.home.join(".ssh")
    }

    fn keys_path(&self) -> PathBuf {
        self.home.join(".ssh/authorized_keys")
    }

    /// `~/.ssh` opened without following a link, `None` if missing.
    fn ssh_dir(&self, root: &Root, home: &OwnedFd) -> Result<Option<OwnedFd>> {
        let path = self.ssh_path();
        match kind_at(home, OsStr::new(".ssh")) {
            Ok(nix::libc::S_IFDIR) => {}
            Ok(nix::libc::S_IFLNK) => {
                return Err(super::file::against_rules(
                    root,
                    &path,
                    "is a symbolic link; refused (never followed)",
                ));
            }
            Ok(_) => return Err(root.refuse(&path, "exists and is not a directory")),
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(root.err(&path, "lstat", e)),
        }
        openat(
            home.as_fd(),
            ".ssh",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(Some)
        .map_err(|e| root.err(&path, "open", e))
    }

    /// Checks `authorized_keys` in `ssh` is missing or a regular file.
    fn keys_kind(&self, root: &Root, ssh: &OwnedFd) -> Result<()> {
        let path = self.keys_path();
        match kind_at(ssh, OsStr::new("authorized_keys")) {
            Ok(nix::libc::S_IFREG) | Err(Errno::ENOENT) => Ok(()),
            Ok(nix::libc::S_IFLNK) => Err(super::file::against_rules(
                root,
                &path,
                "is a symbolic link; refused (never followed)",
            )),
            Ok(_) => Err(root.refuse(&path, "exists and is not a regular file")),
            Err(e) => Err(root.err(&path, "lstat", e)),
        }
    }

    /// Appends the keys not yet there; returns whether anything changed.
    pub fn add(&self, root: &Root, labels: Option<&Labels>, keys: &[String]) -> Result<bool> {
        let home = self.home_dir(root)?;
        let dir_how = NewEntry::new().mode(0o700).owner(self.owner).labels(labels);
        let ssh = match self.ssh_dir(root, &home)? {
            Some(fd) => fd,
            None => root.mkdir_at(&home, OsStr::new(".ssh"), &self.ssh_path(), &dir_how)?,
        };
        self.keys_kind(root, &ssh)?;
        let file_how = NewEntry::new().mode(0o600).owner(self.owner).labels(labels);
        let path = self.keys_path();
        let changed = root.edit_at(
            &ssh,
            OsStr::new("authorized_keys"),
            &path,
            Some(&file_how),
            |old| Ok(merged_bytes(old.unwrap_or_default(), keys)),
        )?;
        if changed {
            log::info!("ssh key added for {} in {}", self.user, path.display());
        } else {
            log::info!(
                "ssh key already there for {} in {}",
                self.user,
                path.display()
            );
        }
        Ok(changed)
    }
}

/// The `S_IFMT` bits of `name` in `dir` itself (a link not followed).
fn kind_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<u32> {
    fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| st.st_mode & nix::libc::S_IFMT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@example";

    #[test]
    fn bytes_that_are_not_utf8_are_kept() {
        let keys = parse_public_keys(&format!("{KEY}\n")).unwrap();
        let old = b"ssh-rsa AAAAB3Nza jos\xe9@host";
        let out = merged_bytes(old, &keys).unwrap();
        assert_eq!(&out[..old.len()], old);
        assert_eq!(&out[old.len()..], format!("\n{KEY}\n").as_bytes());
        assert_eq!(merged_bytes(&out, &keys), None);
    }

    #[test]
    fn the_same_key_is_added_once() {
        let keys = parse_public_keys(&format!("{KEY}\n")).unwrap();
        let once = merge_keys("", &keys).unwrap();
        assert_eq!(once, format!("{KEY}\n"));
        assert_eq!(merge_keys(&once, &keys), None);
        // The same key with another comment, or with options, is the same.
        let other = KEY.replace("admin@example", "other");
        assert_eq!(merge_keys(&format!("no-pty {other}"), &keys), None);
        // A file without a final newline gets one before the new key.
        let merged = merge_keys("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAB x", &keys).unwrap();
        assert_eq!(
            merged,
            format!("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAB x\n{KEY}\n")
        );
    }

    #[test]
    fn private_keys_and_junk_are_refused() {
        assert!(parse_public_keys("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n").is_err());
        assert!(parse_public_keys("hello world\n").is_err());
        assert!(parse_public_keys("\n# only a comment\n").is_err());
    }
}

//! The guest's host name: `etc/hostname`, and the `127.0.1.1` line of
//! `etc/hosts` where the distribution has one (Debian, Ubuntu).

use std::path::Path;

use crate::error::Result;
use crate::root::{Labels, NewEntry, Ownership, Root};

/// The guest's host name file.
pub const HOSTNAME: &str = "etc/hostname";
/// The guest's hosts file.
pub const HOSTS: &str = "etc/hosts";

/// Checks `name` is a host name by RFC 1123 (section 2.1, with RFC 952's
/// letters, digits and hyphens): dot-separated labels of 1 to 63
/// characters, not starting or ending with a hyphen, 253 characters in
/// all.
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "host name {name:?}: must be 1 to 253 characters (RFC 1123)"
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(format!(
                "host name {name:?}: {label:?} is not an RFC 1123 label (1 to 63 letters, \
                 digits and inner hyphens)"
            ));
        }
    }
    Ok(())
}

/// `hosts` with its `127.0.1.1` lines naming `name` (and, for a dotted
/// name, its first label as an alias, as Debian's installer writes it);
/// `None` if there is no such line or it says that already.
pub fn hosts_with(hosts: &str, name: &str) -> Option<String> {
    hosts_bytes_with(hosts.as_bytes(), name)
        .map(|b| String::from_utf8(b).expect("UTF-8 in, ASCII put in"))
}

/// [`hosts_with`] on the file's bytes: every other line is kept byte for
/// byte, whatever its encoding (a Latin-1 comment stays Latin-1).
fn hosts_bytes_with(hosts: &[u8], name: &str) -> Option<Vec<u8>> {
    let short = name.split('.').next().unwrap_or(name);
    let line = if short == name {
        format!("127.0.1.1\t{name}")
    } else {
        format!("127.0.1.1\t{name}\t{short}")
    };
    let mut found = false;
    let mut out = Vec::with_capacity(hosts.len() + line.len());
    for l in hosts.split_inclusive(|b| *b == b'\n') {
        let first = l.split(|b| b.is_ascii_whitespace()).find(|w| !w.is_empty());
        if first == Some(b"127.0.1.1".as_slice()) {
            found = true;
            out.extend_from_slice(line.as_bytes());
            if l.ends_with(b"\n") {
                out.push(b'\n');
            }
        } else {
            out.extend_from_slice(l);
        }
    }
    (found && out != hosts).then_some(out)
}

/// Sets the guest's host name to `name` (validated): `etc/hostname`
/// replaced by rename (keeping its owner, mode and label, or created
/// `0644`, root's, labelled), and the `127.0.1.1` line of `etc/hosts`
/// where there is one. Returns whether anything changed.
pub fn set(root: &Root, labels: Option<&Labels>, name: &str) -> Result<bool> {
    validate(name).map_err(|e| root.refuse(Path::new(HOSTNAME), e))?;
    let how = NewEntry::new()
        .mode(0o644)
        .owner(Ownership::ROOT)
        .labels(labels);
    let content = format!("{name}\n");
    let mut changed = root.edit_or_create(HOSTNAME, &how, |old| {
        Ok((old != Some(content.as_bytes())).then(|| content.clone().into_bytes()))
    })?;
    if root.exists(HOSTS)? {
        changed |= root.edit(HOSTS, |old| Ok(hosts_bytes_with(old, name)))?;
    }
    log::info!("host name set to {name}");
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1123_names() {
        for ok in ["web01", "a", "9lives", "db-1.example.com", &"a".repeat(63)] {
            assert!(validate(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a.",
            "under_score",
            "sp ace",
            "a\nb",
            "ünï",
            &"a".repeat(64),
            &format!("{}.b", "a.".repeat(126)),
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debian_hosts_line() {
        let hosts = "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n\n::1 localhost ip6-localhost\n";
        assert_eq!(
            hosts_with(hosts, "web01").unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb01\n\n::1 localhost ip6-localhost\n"
        );
        assert_eq!(
            hosts_with(hosts, "web01.example.com").unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb01.example.com\tweb01\n\n::1 localhost ip6-localhost\n"
        );
        let done = hosts_with(hosts, "web01").unwrap();
        assert_eq!(hosts_with(&done, "web01"), None);
        // No 127.0.1.1 line (Fedora, RHEL): left alone.
        assert_eq!(hosts_with("127.0.0.1 localhost\n", "web01"), None);
        // Bytes that are not UTF-8 elsewhere in the file are kept as they are.
        let latin1 = b"# caf\xe9\n127.0.1.1\told\n";
        assert_eq!(
            hosts_bytes_with(latin1, "web01").unwrap(),
            b"# caf\xe9\n127.0.1.1\tweb01\n"
        );
    }
}

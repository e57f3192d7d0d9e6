//! What the RBD backends need from a Ceph client's files: the monitors'
//! addresses from `ceph.conf`, and the user's key from a keyring. Pure,
//! bounded parsers (the files are the caller's, read with a size limit).
//!
//! The key read here is a secret: it is handed on only as a file or a
//! kernel option string written to sysfs, never logged, never in an error
//! (errors name the file and what is wrong, not what it holds).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Step};

/// The largest `ceph.conf` or keyring read.
const MAX_FILE: u64 = 1 << 20;

/// Ceph's default configuration file.
pub(crate) const DEFAULT_CONF: &str = "/etc/ceph/ceph.conf";

/// One monitor address as the kernel client takes it (`IP:PORT`), and
/// whether it is a msgr2 (`v2:`) address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MonAddr {
    pub(crate) addr: String,
    pub(crate) v2: bool,
}

/// What a client's `ceph.conf` says that diskmount uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Conf {
    /// `mon host`, every address.
    pub(crate) mons: Vec<MonAddr>,
    /// `keyring` (of `[global]`, `[client]` or `[client.USER]`).
    pub(crate) keyring: Option<String>,
}

/// Ceph spells an option with spaces, underscores or dashes alike.
fn norm_key(key: &str) -> String {
    key.trim()
        .chars()
        .map(|c| if c == ' ' || c == '-' { '_' } else { c })
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Reads `path` (at most [`MAX_FILE`] bytes); errors are of `step`.
pub(crate) fn read_limited(path: &Path, what: &str, step: Step) -> Result<String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| Error::os(step, path, format!("open {what}"), e))?;
    let mut text = String::new();
    file.take(MAX_FILE)
        .read_to_string(&mut text)
        .map_err(|e| Error::os(step, path, format!("read {what}"), e))?;
    Ok(text)
}

/// The `(section, key, value)` lines of an ini-style Ceph file.
fn entries(text: &str) -> impl Iterator<Item = (String, String, String)> + '_ {
    let mut section = String::new();
    text.lines().filter_map(move |line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            return None;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            return None;
        }
        let (key, value) = line.split_once('=')?;
        // A comment after the value.
        let value = value.split([';', '#']).next().unwrap_or("").trim();
        let value = value.trim_matches('"').to_string();
        Some((section.clone(), norm_key(key), value))
    })
}

/// Parses `ceph.conf` for client `user` (errors name `path`).
pub(crate) fn parse_conf(text: &str, user: &str, path: &Path) -> Result<Conf> {
    let mut conf = Conf::default();
    let mut keyring_rank = 0;
    let client = format!("client.{user}");
    for (section, key, value) in entries(text) {
        let rank = match section.as_str() {
            "global" => 1,
            "client" => 2,
            s if s == client => 3,
            _ => continue,
        };
        match key.as_str() {
            "mon_host" if conf.mons.is_empty() || rank > 1 => conf.mons = parse_mon_host(&value),
            "keyring" if rank >= keyring_rank => {
                keyring_rank = rank;
                conf.keyring = Some(value);
            }
            _ => {}
        }
    }
    if conf.mons.is_empty() {
        return Err(Error::invalid(
            Step::Attach,
            path,
            "the Ceph configuration names no monitor (no `mon host` in [global])",
        ));
    }
    Ok(conf)
}

/// `mon host`: addresses separated by commas or spaces, plain
/// (`IP[:PORT]`) or as address vectors (`[v2:IP:PORT/0,v1:IP:PORT/0]`).
pub(crate) fn parse_mon_host(value: &str) -> Vec<MonAddr> {
    value
        .split([',', ' ', '\t', '[', ']'])
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (v2, rest) = match item {
                s if s.starts_with("v2:") => (true, &s[3..]),
                s if s.starts_with("v1:") => (false, &s[3..]),
                s => (false, s),
            };
            // The nonce after `/`.
            let addr = rest.split('/').next().unwrap_or(rest).to_string();
            MonAddr { addr, v2 }
        })
        .collect()
}

/// The monitor addresses and the messenger mode for the kernel client:
/// the msgr1 addresses where there are any (every kernel speaks msgr1),
/// else the msgr2 ones with `ms_mode=prefer-crc` (Linux 5.11+).
pub(crate) fn kernel_mons(mons: &[MonAddr]) -> (String, Option<&'static str>) {
    let v1: Vec<&str> = mons
        .iter()
        .filter(|m| !m.v2)
        .map(|m| m.addr.as_str())
        .collect();
    if !v1.is_empty() {
        return (v1.join(","), None);
    }
    let v2: Vec<&str> = mons.iter().map(|m| m.addr.as_str()).collect();
    (v2.join(","), Some("prefer-crc"))
}

/// The keyring file of client `user`: the one given, else the
/// configuration's (`$name`/`$cluster` expanded), else Ceph's default.
pub(crate) fn keyring_path(given: Option<&Path>, conf: &Conf, user: &str) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    if let Some(k) = &conf.keyring {
        let first = k.split(',').next().unwrap_or(k).trim();
        return PathBuf::from(
            first
                .replace("$name", &format!("client.{user}"))
                .replace("$cluster", "ceph"),
        );
    }
    PathBuf::from(format!("/etc/ceph/ceph.client.{user}.keyring"))
}

/// The key of `client.{user}` in keyring text (or a bare key, as in a
/// `--keyfile`). The error names `path` only, never a byte of the file.
pub(crate) fn parse_key(text: &str, user: &str, path: &Path) -> Result<String> {
    let client = format!("client.{user}");
    let key = entries(text)
        .find(|(section, key, _)| *section == client && key == "key")
        .map(|(_, _, v)| v)
        .or_else(|| {
            let bare = text.trim();
            (!bare.contains('[') && !bare.contains('=') || bare.ends_with('='))
                .then(|| bare.to_string())
                .filter(|b| !b.contains(char::is_whitespace) && !b.contains('['))
        });
    match key {
        Some(k) if is_base64(&k) && !k.is_empty() => Ok(k),
        Some(_) => Err(Error::invalid(
            Step::Attach,
            path,
            format!("the keyring's key for {client} is not a base64 Ceph key"),
        )),
        None => Err(Error::invalid(
            Step::Attach,
            path,
            format!("the keyring has no key for {client}"),
        )),
    }
}

fn is_base64(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mon_host_forms() {
        let m = parse_mon_host("[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]");
        assert_eq!(
            m,
            vec![
                MonAddr {
                    addr: "127.0.0.1:3300".into(),
                    v2: true
                },
                MonAddr {
                    addr: "127.0.0.1:6789".into(),
                    v2: false
                }
            ]
        );
        assert_eq!(kernel_mons(&m), ("127.0.0.1:6789".into(), None));
        let v2only = parse_mon_host("v2:10.0.0.1:3300");
        assert_eq!(
            kernel_mons(&v2only),
            ("10.0.0.1:3300".into(), Some("prefer-crc"))
        );
        let plain = parse_mon_host("10.0.0.1, 10.0.0.2:6789");
        assert_eq!(kernel_mons(&plain).0, "10.0.0.1,10.0.0.2:6789");
    }

    #[test]
    fn conf_sections_and_spellings() {
        let text = "[global]\nfsid = x\nmon_host = 127.0.0.1:6789 ; comment\nkeyring = /g\n\
                    [client.bob]\nkeyring = /etc/ceph/$cluster.$name.keyring\n[osd]\nkeyring = /o\n";
        let c = parse_conf(text, "bob", Path::new("c")).unwrap();
        assert_eq!(c.mons.len(), 1);
        assert_eq!(
            keyring_path(None, &c, "bob"),
            PathBuf::from("/etc/ceph/ceph.client.bob.keyring")
        );
        let c = parse_conf(text, "alice", Path::new("c")).unwrap();
        assert_eq!(c.keyring.as_deref(), Some("/g"));
        assert!(parse_conf("[global]\nfsid = x\n", "a", Path::new("c")).is_err());
    }

    #[test]
    fn keys_never_in_errors() {
        let kr = "[client.admin]\n\tkey = AQAoABBrhH3FIRAAPuCllUDeuOk0s1ErdAIYBA==\n\tcaps mon = \"allow *\"\n";
        assert_eq!(
            parse_key(kr, "admin", Path::new("k")).unwrap(),
            "AQAoABBrhH3FIRAAPuCllUDeuOk0s1ErdAIYBA=="
        );
        let e = parse_key(kr, "bob", Path::new("k"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no key for client.bob") && !e.contains("AQAo"),
            "{e}"
        );
        let bad = "[client.admin]\nkey = not a key!\n";
        let e = parse_key(bad, "admin", Path::new("k"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("not a key"), "{e}");
        assert_eq!(
            parse_key(
                "AQAoABBrhH3FIRAAPuCllUDeuOk0s1ErdAIYBA==\n",
                "x",
                Path::new("k")
            )
            .unwrap(),
            "AQAoABBrhH3FIRAAPuCllUDeuOk0s1ErdAIYBA=="
        );
    }
}

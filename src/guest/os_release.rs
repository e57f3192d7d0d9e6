//! `os-release(5)`: what operating system a tree holds. A tree is an OS
//! root if it has `etc/os-release` or `usr/lib/os-release`; read through
//! [`crate::root::Root`], never following a guest link out of the image.

use std::collections::BTreeMap;

/// The most bytes of an os-release file that are read.
pub const MAX_LEN: usize = 64 << 10;

/// An os-release file's assignments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    fields: BTreeMap<String, String>,
}

impl OsRelease {
    /// Parses the file's text (`KEY=value` lines, values shell-quoted).
    pub fn parse(text: &str) -> OsRelease {
        let mut fields = BTreeMap::new();
        for line in text.get(..MAX_LEN.min(text.len())).unwrap_or(text).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            fields.insert(key.to_string(), unquote(value));
        }
        OsRelease { fields }
    }

    /// A field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// `ID` (`linux` if absent, as the specification says).
    pub fn id(&self) -> &str {
        self.get("ID").unwrap_or("linux")
    }

    /// `VERSION_ID`.
    pub fn version_id(&self) -> Option<&str> {
        self.get("VERSION_ID")
    }

    /// `PRETTY_NAME` (`Linux` if absent).
    pub fn pretty_name(&self) -> &str {
        self.get("PRETTY_NAME").unwrap_or("Linux")
    }
}

/// A value as the shell would read it: single quotes literal, double
/// quotes with `\"`, `\\`, `\$` and `` \` `` escapes, bare words with
/// backslash escapes.
fn unquote(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => out.extend(chars.by_ref().take_while(|&c| c != '\'')),
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => out.push(e),
                            Some(e) => {
                                out.push('\\');
                                out.push(e);
                            }
                            None => out.push('\\'),
                        },
                        c => out.push(c),
                    }
                }
            }
            '\\' => out.extend(chars.next()),
            c if c.is_whitespace() => break,
            c => out.push(c),
        }
    }
    out
}

/// The host name in an `etc/hostname` file: its first line that is not a
/// comment, trimmed; `None` if there is none.
pub fn hostname(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocky() {
        let r = OsRelease::parse(
            "NAME=\"Rocky Linux\"\nVERSION=\"9.4 (Blue Onyx)\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n\
             VERSION_ID=\"9.4\"\nPRETTY_NAME=\"Rocky Linux 9.4 (Blue Onyx)\"\n# comment\n",
        );
        assert_eq!(r.id(), "rocky");
        assert_eq!(r.version_id(), Some("9.4"));
        assert_eq!(r.pretty_name(), "Rocky Linux 9.4 (Blue Onyx)");
        assert_eq!(r.get("ID_LIKE"), Some("rhel centos fedora"));
    }

    #[test]
    fn quoting_and_defaults() {
        let r = OsRelease::parse(
            "ID=debian\nA='single $x'\nB=\"say \\\"hi\\\" \\$5\"\nC=bare\\ word\nbad line\n=x\n",
        );
        assert_eq!(r.id(), "debian");
        assert_eq!(r.get("A"), Some("single $x"));
        assert_eq!(r.get("B"), Some("say \"hi\" $5"));
        assert_eq!(r.get("C"), Some("bare word"));
        assert_eq!(r.version_id(), None);
        assert_eq!(OsRelease::parse("").id(), "linux");
        assert_eq!(OsRelease::parse("").pretty_name(), "Linux");
    }

    #[test]
    fn hostnames() {
        assert_eq!(
            hostname("# x\n\n  rocky-guest \nother\n").as_deref(),
            Some("rocky-guest")
        );
        assert_eq!(hostname("\n"), None);
    }
}

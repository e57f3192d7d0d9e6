//! Owners as people give them: guest user and group names or numbers,
//! `USER[:GROUP]`, resolved against the guest's own files ([`Users`]).

use std::fmt;
use std::str::FromStr;

use super::Users;
use crate::error::Result;
use crate::root::Ownership;

/// A guest user or group, by name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A numeric id, used as it is.
    Id(u32),
    /// A name, looked up in the guest's `etc/passwd` or `etc/group`.
    Name(String),
}

impl Owner {
    /// A number (all digits) or a name (no `:`, whitespace or NUL).
    pub fn parse(s: &str) -> Result<Owner, String> {
        if s.is_empty() {
            return Err("empty user or group name".into());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return super::passwd::parse_id(s)
                .map(Owner::Id)
                .ok_or_else(|| format!("{s:?}: id out of range (at most 4294967294)"));
        }
        if s.contains(|c: char| c == ':' || c == '\0' || c.is_whitespace()) || s.len() > 256 {
            return Err(format!("{s:?}: not a user or group name"));
        }
        Ok(Owner::Name(s.to_string()))
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Id(n) => write!(f, "{n}"),
            Owner::Name(s) => f.write_str(s),
        }
    }
}

/// `USER[:GROUP]`: a user and, optionally, a group (without one, the
/// user's primary group from the guest's `etc/passwd`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerSpec {
    /// The user.
    pub user: Owner,
    /// The group, if given.
    pub group: Option<Owner>,
}

impl OwnerSpec {
    /// Parses `USER[:GROUP]`, each a name or a number.
    pub fn parse(s: &str) -> Result<OwnerSpec, String> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        Ok(OwnerSpec {
            user: Owner::parse(user).map_err(|e| format!("owner {s:?}: {e}"))?,
            group: group
                .map(Owner::parse)
                .transpose()
                .map_err(|e| format!("owner {s:?}: {e}"))?,
        })
    }

    /// The numeric owner and group, looked up in the guest's files.
    pub fn resolve(&self, users: &Users) -> Result<Ownership> {
        users.resolve(self)
    }
}

impl FromStr for OwnerSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<OwnerSpec, String> {
        OwnerSpec::parse(s)
    }
}

impl fmt::Display for OwnerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{g}", self.user),
            None => write!(f, "{}", self.user),
        }
    }
}

/// Parses permission bits given in octal (`600`, `0600`, `0o600`), at most
/// `7777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) => Ok(m),
        _ => Err(format!(
            "mode {s:?}: expected octal permission bits such as 644 or 0600"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_bad_input() {
        assert_eq!(
            OwnerSpec::parse("cloud-user").unwrap(),
            OwnerSpec {
                user: Owner::Name("cloud-user".into()),
                group: None
            }
        );
        assert_eq!(
            OwnerSpec::parse("4242:wheel").unwrap(),
            OwnerSpec {
                user: Owner::Id(4242),
                group: Some(Owner::Name("wheel".into()))
            }
        );
        for bad in ["", ":", "a:", ":b", "a:b:c", "a b", "99999999999"] {
            assert!(OwnerSpec::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o4755"), Ok(0o4755));
        for bad in ["", "8", "17777", "rw", "0o", "+644"] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
    }
}

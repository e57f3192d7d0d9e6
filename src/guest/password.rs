//! A user's password, as a crypt(3) hash, into the guest's `etc/shadow`:
//! only that user's second field replaced, by rename, the file keeping
//! its owner, mode and label. Clear-text passwords are never taken.

use std::path::Path;

use super::shadow::{self, ShadowError};
use crate::error::Result;
use crate::root::Root;

/// The guest's shadow password file.
pub const SHADOW: &str = "etc/shadow";

/// Checks `hash` has the shape of a crypt(3) hash in the modular format,
/// `$id$...` (`$y$` yescrypt, `$6$` SHA-512, `$5$`, `$2b$` bcrypt, ...):
/// `$`, an id of lower-case letters and digits, `$`, then more `$`-separated
/// fields of crypt's alphabet (`./0-9A-Za-z`, and `=`/`,` for parameters).
/// A clear-text password fails it.
pub fn validate_hash(hash: &str) -> Result<(), String> {
    let shape = "expected a crypt(3) hash such as `$6$salt$hash` or `$y$j9T$salt$hash` \
                 (make one with `mkpasswd` or `openssl passwd -6`), never a clear-text password";
    let Some(rest) = hash.strip_prefix('$') else {
        return Err(format!("not a crypt(3) hash: {shape}"));
    };
    let fields: Vec<&str> = rest.split('$').collect();
    let id_ok = fields[0]
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !fields[0].is_empty()
        && fields[0].len() <= 8;
    let body_ok = fields.len() >= 3
        && fields[1..].iter().all(|f| {
            f.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"./=,".contains(&b))
        })
        && !fields.last().is_some_and(|f| f.is_empty());
    if !id_ok || !body_ok || hash.len() > 512 {
        return Err(format!("not a crypt(3) hash: {shape}"));
    }
    Ok(())
}

/// The hash in the text of a hash file: one line (a final newline allowed),
/// validated by [`validate_hash`].
pub fn hash_from_file_text(text: &str) -> Result<String, String> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    let t = t.strip_suffix('\r').unwrap_or(t);
    if t.contains('\n') {
        return Err("holds more than one line; expected one crypt(3) hash".into());
    }
    validate_hash(t)?;
    Ok(t.to_string())
}

/// Checks `user` has exactly one line in the guest's `etc/shadow` (which
/// must exist), without changing anything.
pub fn check(root: &Root, user: &str) -> Result<()> {
    let path = Path::new(SHADOW);
    let text = super::file::read_bounded(root, path, super::file::GUEST_FILE_LIMIT)?
        .ok_or_else(|| super::file::not_found(root, path, "the guest has no etc/shadow"))?;
    // Any valid hash: only whether the line is there is asked.
    match shadow::replace_hash(&text, user, "$6$check$check") {
        Ok(_) => Ok(()),
        Err(e) => Err(shadow_error(root, user, e)),
    }
}

fn shadow_error(root: &Root, user: &str, e: ShadowError) -> crate::error::Error {
    let why = format!("the guest's etc/shadow {e} {user:?}");
    match e {
        ShadowError::NoSuchUser => super::file::not_found(root, Path::new(SHADOW), why),
        _ => super::file::against_rules(root, Path::new(SHADOW), why),
    }
}

/// Sets `user`'s password hash in the guest's `etc/shadow` to `hash`
/// (validated). Returns whether the file changed.
pub fn set(root: &Root, user: &str, hash: &str) -> Result<bool> {
    let path = Path::new(SHADOW);
    validate_hash(hash).map_err(|e| root.refuse(path, e))?;
    if !root.exists(path)? {
        return Err(super::file::not_found(
            root,
            path,
            "the guest has no etc/shadow",
        ));
    }
    let changed = root.edit(path, |old| {
        shadow::replace_hash(old, user, hash).map_err(|e| shadow_error(root, user, e))
    })?;
    log::info!("password hash of {user} set in {SHADOW}");
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypt_shapes() {
        for ok in [
            "$6$rounds=5000$saltsalt$2Bd5b0pTq1Qmy4jlhbmTv5vE2i3H/Zk6xTuZQ7K9bT2Fz3y7RbO.f0cZ/4H1uMlG0b9c6d4e1f2A3B4C5D6E7F.",
            "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
            "$2b$12$KIXQJ7eXRg5bLl6lB6HjUuV0yLq3Ykq2rC8X9wF4F8bq1m9a6e3nS",
            "$5$salt$hash",
            "$1$salt$hash",
        ] {
            assert!(validate_hash(ok).is_ok(), "{ok}");
        }
        for bad in [
            "hunter2",
            "",
            "$",
            "$6$",
            "$6$salt$",
            "$6$salt",
            "$6$sa lt$hash",
            "$6$salt$ha:sh",
            "$X$salt$hash",
            "*",
            "!",
        ] {
            assert!(validate_hash(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            hash_from_file_text("$5$salt$hash\n").unwrap(),
            "$5$salt$hash"
        );
        assert!(hash_from_file_text("$5$salt$hash\nmore\n").is_err());
    }
}

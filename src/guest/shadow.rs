//! The guest's `etc/shadow` (shadow(5)): replacing one user's password
//! hash, every other byte of the file kept as it was.

/// Why a shadow file could not be changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowError {
    /// No line for the user.
    NoSuchUser,
    /// More than one line for the user (the file is inconsistent).
    Duplicate,
    /// The user's line has fewer than the two fields needed.
    Malformed,
}

impl std::fmt::Display for ShadowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShadowError::NoSuchUser => "has no line for the user",
            ShadowError::Duplicate => "has more than one line for the user",
            ShadowError::Malformed => "has a malformed line for the user",
        })
    }
}

/// `text` with the second field (the password hash) of `user`'s line set
/// to `hash`; all other lines, and the other fields of that line, byte for
/// byte as they were. `None` if the hash is already that.
pub fn replace_hash(text: &[u8], user: &str, hash: &str) -> Result<Option<Vec<u8>>, ShadowError> {
    let mut prefix = user.as_bytes().to_vec();
    prefix.push(b':');
    let mut found = None;
    let mut at = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(&prefix) {
            if found.is_some() {
                return Err(ShadowError::Duplicate);
            }
            found = Some((at, line.len()));
        }
        at += line.len();
    }
    let (start, len) = found.ok_or(ShadowError::NoSuchUser)?;
    let line = &text[start..start + len];
    let rest = &line[prefix.len()..];
    let end = rest
        .iter()
        .position(|&b| b == b':')
        .ok_or(ShadowError::Malformed)?;
    if &rest[..end] == hash.as_bytes() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(text.len() + hash.len());
    out.extend_from_slice(&text[..start]);
    out.extend_from_slice(&prefix);
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(&rest[end..]);
    out.extend_from_slice(&text[start + len..]);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHADOW: &[u8] = b"root:*:19000:0:99999:7:::\n\
                            cloud-user:!:19000:0:99999:7:::\n\
                            cloud:$6$x$y:19000:0:99999:7:::\n";

    #[test]
    fn only_the_users_second_field_changes() {
        let out = replace_hash(SHADOW, "cloud-user", "$6$salt$hash")
            .unwrap()
            .unwrap();
        assert_eq!(
            out,
            b"root:*:19000:0:99999:7:::\n\
              cloud-user:$6$salt$hash:19000:0:99999:7:::\n\
              cloud:$6$x$y:19000:0:99999:7:::\n"
        );
        // A user whose name is a prefix of another's is told apart.
        let out = replace_hash(SHADOW, "cloud", "$y$j9T$a$b")
            .unwrap()
            .unwrap();
        assert!(out.ends_with(b"cloud:$y$j9T$a$b:19000:0:99999:7:::\n"));
        assert!(out.starts_with(b"root:*:19000:0:99999:7:::\ncloud-user:!:"));
    }

    #[test]
    fn the_same_hash_is_no_change_and_errors_are_told_apart() {
        assert_eq!(replace_hash(SHADOW, "cloud", "$6$x$y"), Ok(None));
        assert_eq!(
            replace_hash(SHADOW, "nobody", "$6$x$y"),
            Err(ShadowError::NoSuchUser)
        );
        let dup = b"a:x:1\na:y:2\n";
        assert_eq!(
            replace_hash(dup, "a", "$6$x$y"),
            Err(ShadowError::Duplicate)
        );
        assert_eq!(
            replace_hash(b"a:\n", "a", "$6$x$y"),
            Err(ShadowError::Malformed)
        );
        // The last line without a newline.
        let out = replace_hash(b"a:old:1:2", "a", "$6$n$m").unwrap().unwrap();
        assert_eq!(out, b"a:$6$n$m:1:2");
    }
}

//! The guest's `etc/passwd`: `name:password:uid:gid:gecos:home:shell`
//! lines (passwd(5)), parsed without the host's NSS.

/// One user of the guest's `etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// The login name.
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// The home directory, as the guest sees it.
    pub home: String,
    /// The login shell.
    pub shell: String,
}

/// The longest line looked at; longer ones are skipped as malformed.
const MAX_LINE: usize = 64 << 10;

/// The users of a passwd file's text. Comments, blank, NIS (`+`/`-`) and
/// malformed lines are skipped, as glibc's files backend skips them.
pub fn parse(text: &str) -> Vec<PasswdEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// A numeric user or group id: decimal digits, below `u32::MAX`, which
/// `chown` takes as "leave it unchanged" (`(uid_t) -1`): an entry with it
/// would leave what diskmount makes owned by root instead.
pub(crate) fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|id| *id != u32::MAX)
}

fn parse_line(line: &str) -> Option<PasswdEntry> {
    if line.len() > MAX_LINE || line.starts_with(['#', '+', '-']) {
        return None;
    }
    let f: Vec<&str> = line.split(':').collect();
    if f.len() != 7 || f[0].is_empty() || f[0].contains(char::is_whitespace) {
        return None;
    }
    Some(PasswdEntry {
        name: f[0].to_string(),
        uid: parse_id(f[2])?,
        gid: parse_id(f[3])?,
        home: f[5].to_string(),
        shell: f[6].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_digits_below_the_no_change_value() {
        assert_eq!(parse_id("1000"), Some(1000));
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("4294967294"), Some(u32::MAX - 1));
        for bad in ["4294967295", "4294967296", "-1", "+5", "", "1e3", " 1"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
        let users = parse("evil:x:4294967295:0::/root:/bin/sh\nok:x:1:1::/:/bin/sh\n");
        assert_eq!(users.len(), 1);
    }

    #[test]
    fn users_and_the_lines_skipped() {
        let text = "root:x:0:0:root:/root:/bin/bash\n\
                    # comment\n\
                    \n\
                    +nis::::::\n\
                    bad:x:notanumber:0::/:/bin/sh\n\
                    short:x:1:1\n\
                    cloud-user:x:4242:4243:Cloud User,,,:/home/cloud-user:/bin/bash\n";
        let users = parse(text);
        assert_eq!(users.len(), 2);
        assert_eq!(users[1].name, "cloud-user");
        assert_eq!((users[1].uid, users[1].gid), (4242, 4243));
        assert_eq!(users[1].home, "/home/cloud-user");
    }

    #[test]
    fn overlong_lines_are_skipped() {
        let long = format!(
            "u:x:1:1:{}:/h:/bin/sh\nv:x:2:2::/v:/bin/sh\n",
            "g".repeat(MAX_LINE)
        );
        let users = parse(&long);
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].name, "v");
    }
}

//! The guest's `etc/group`: `name:password:gid:members` lines (group(5)),
//! parsed without the host's NSS.

/// One group of the guest's `etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// The group name.
    pub name: String,
    /// The group id.
    pub gid: u32,
}

/// The longest line looked at; longer ones are skipped as malformed.
const MAX_LINE: usize = 1 << 20;

/// The groups of a group file's text. Comments, blank, NIS (`+`/`-`) and
/// malformed lines are skipped.
pub fn parse(text: &str) -> Vec<GroupEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<GroupEntry> {
    if line.len() > MAX_LINE || line.starts_with(['#', '+', '-']) {
        return None;
    }
    let f: Vec<&str> = line.splitn(4, ':').collect();
    if f.len() != 4 || f[0].is_empty() || f[0].contains(char::is_whitespace) {
        return None;
    }
    Some(GroupEntry {
        name: f[0].to_string(),
        gid: super::passwd::parse_id(f[2])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_the_lines_skipped() {
        let text = "root:x:0:\nwheel:x:10:alice,bob\n#x:x:1:\nnogid:x::\ncloud:x:4243:\n";
        let groups = parse(text);
        assert_eq!(
            groups
                .iter()
                .map(|g| (g.name.as_str(), g.gid))
                .collect::<Vec<_>>(),
            [("root", 0), ("wheel", 10), ("cloud", 4243)]
        );
    }
}

//! The guest's user database: its `etc/passwd` and `etc/group`, read
//! through [`Root`] (never the host's NSS, never a guest link out of the
//! image), and owners resolved against them.

use std::path::{Path, PathBuf};

use super::file::{GUEST_FILE_LIMIT, read_text};
use super::group::{self, GroupEntry};
use super::owner::{Owner, OwnerSpec};
use super::passwd::{self, PasswdEntry};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::root::{Ownership, Root};

/// The guest's `etc/passwd`.
pub const PASSWD: &str = "etc/passwd";
/// The guest's `etc/group`.
pub const GROUP: &str = "etc/group";

/// The users and groups of a guest, as its own files say.
#[derive(Debug, Clone)]
pub struct Users {
    passwd: Option<Vec<PasswdEntry>>,
    groups: Option<Vec<GroupEntry>>,
    passwd_path: PathBuf,
    group_path: PathBuf,
}

impl Users {
    /// Reads the guest's `etc/passwd` and `etc/group` (each at most
    /// [`GUEST_FILE_LIMIT`] bytes). A missing file is no error here; looking
    /// up a name in it is.
    pub fn read(root: &Root) -> Result<Users> {
        let passwd = read_text(root, Path::new(PASSWD), GUEST_FILE_LIMIT)?;
        let groups = read_text(root, Path::new(GROUP), GUEST_FILE_LIMIT)?;
        Ok(Users {
            passwd: passwd.as_deref().map(passwd::parse),
            groups: groups.as_deref().map(group::parse),
            passwd_path: root.display(Path::new(PASSWD)),
            group_path: root.display(Path::new(GROUP)),
        })
    }

    /// Users and groups given as text (for tests and callers that have
    /// them already); `None` is a missing file.
    pub fn from_text(passwd: Option<&str>, group: Option<&str>) -> Users {
        Users {
            passwd: passwd.map(passwd::parse),
            groups: group.map(group::parse),
            passwd_path: PathBuf::from(PASSWD),
            group_path: PathBuf::from(GROUP),
        }
    }

    fn passwd(&self, wanted: &str) -> Result<&[PasswdEntry]> {
        self.passwd.as_deref().ok_or_else(|| {
            Error::refused(
                ErrorKind::NotFound,
                Step::Access,
                &self.passwd_path,
                format!("the guest has no etc/passwd (needed for {wanted})"),
            )
        })
    }

    fn groups(&self, wanted: &str) -> Result<&[GroupEntry]> {
        self.groups.as_deref().ok_or_else(|| {
            Error::refused(
                ErrorKind::NotFound,
                Step::Access,
                &self.group_path,
                format!("the guest has no etc/group (needed for {wanted})"),
            )
        })
    }

    /// The user named `name` in the guest's `etc/passwd` (the first line,
    /// as getpwnam takes it).
    pub fn user(&self, name: &str) -> Result<&PasswdEntry> {
        let wanted = format!("user {name:?}");
        self.passwd(&wanted)?
            .iter()
            .find(|u| u.name == name)
            .ok_or_else(|| {
                Error::refused(
                    ErrorKind::NotFound,
                    Step::Access,
                    &self.passwd_path,
                    format!("no user {name:?} in the guest's etc/passwd"),
                )
            })
    }

    /// The user with id `uid` in the guest's `etc/passwd`, if any.
    pub fn user_by_id(&self, uid: u32) -> Result<Option<&PasswdEntry>> {
        let wanted = format!("uid {uid}");
        Ok(self.passwd(&wanted)?.iter().find(|u| u.uid == uid))
    }

    /// The user `user` names (by name, or by number if `etc/passwd` has it).
    pub fn find(&self, user: &Owner) -> Result<&PasswdEntry> {
        match user {
            Owner::Name(n) => self.user(n),
            Owner::Id(uid) => self.user_by_id(*uid)?.ok_or_else(|| {
                Error::refused(
                    ErrorKind::NotFound,
                    Step::Access,
                    &self.passwd_path,
                    format!("no user with uid {uid} in the guest's etc/passwd"),
                )
            }),
        }
    }

    /// The group named `name` in the guest's `etc/group`.
    pub fn group(&self, name: &str) -> Result<&GroupEntry> {
        let wanted = format!("group {name:?}");
        self.groups(&wanted)?
            .iter()
            .find(|g| g.name == name)
            .ok_or_else(|| {
                Error::refused(
                    ErrorKind::NotFound,
                    Step::Access,
                    &self.group_path,
                    format!("no group {name:?} in the guest's etc/group"),
                )
            })
    }

    /// The numeric owner and group `spec` names. Without a group, the
    /// user's primary group from `etc/passwd` (a numeric user not in it
    /// then needs its group given too).
    pub fn resolve(&self, spec: &OwnerSpec) -> Result<Ownership> {
        let (uid, primary) = match &spec.user {
            Owner::Name(n) => {
                let u = self.user(n)?;
                (u.uid, Some(u.gid))
            }
            Owner::Id(uid) if spec.group.is_some() => (*uid, None),
            Owner::Id(uid) => match self.user_by_id(*uid)? {
                Some(u) => (u.uid, Some(u.gid)),
                None => {
                    return Err(Error::refused(
                        ErrorKind::NotFound,
                        Step::Access,
                        &self.passwd_path,
                        format!(
                            "no user with uid {uid} in the guest's etc/passwd to take the \
                             primary group from: give the group too ({uid}:GROUP)"
                        ),
                    ));
                }
            },
        };
        let gid = match &spec.group {
            Some(Owner::Id(g)) => *g,
            Some(Owner::Name(n)) => self.group(n)?.gid,
            None => primary.expect("set for every user without a group"),
        };
        Ok(Ownership::new(uid, gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users::from_text(
            Some("root:x:0:0::/root:/bin/sh\ncloud-user:x:4242:4243::/home/cloud-user:/bin/sh\n"),
            Some("root:x:0:\ncloud-user:x:4243:\nwheel:x:10:cloud-user\n"),
        )
    }

    fn resolve(u: &Users, s: &str) -> Result<Ownership> {
        u.resolve(&OwnerSpec::parse(s).unwrap())
    }

    #[test]
    fn names_and_numbers_resolve_against_the_guest_files() {
        let u = users();
        assert_eq!(
            resolve(&u, "cloud-user").unwrap(),
            Ownership::new(4242, 4243)
        );
        assert_eq!(
            resolve(&u, "cloud-user:wheel").unwrap(),
            Ownership::new(4242, 10)
        );
        assert_eq!(resolve(&u, "4242").unwrap(), Ownership::new(4242, 4243));
        assert_eq!(
            resolve(&u, "5000:5001").unwrap(),
            Ownership::new(5000, 5001)
        );
        assert_eq!(resolve(&u, "0:wheel").unwrap(), Ownership::new(0, 10));
    }

    #[test]
    fn unknown_names_and_missing_files_name_the_guest_file() {
        let u = users();
        let e = resolve(&u, "nobody").unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::NotFound);
        let e = e.to_string();
        assert!(e.contains("etc/passwd") && e.contains("\"nobody\""), "{e}");
        let e = resolve(&u, "cloud-user:staff").unwrap_err().to_string();
        assert!(e.contains("etc/group") && e.contains("\"staff\""), "{e}");
        let e = resolve(&u, "5000").unwrap_err().to_string();
        assert!(e.contains("etc/passwd") && e.contains("5000:GROUP"), "{e}");
        let none = Users::from_text(None, None);
        let e = resolve(&none, "cloud-user").unwrap_err().to_string();
        assert!(e.contains("no etc/passwd"), "{e}");
        let e = resolve(&none, "1:wheel").unwrap_err().to_string();
        assert!(e.contains("no etc/group"), "{e}");
    }
}

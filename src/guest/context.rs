//! One guest, as what diskmount creates in it needs it: its SELinux file
//! contexts (read once) and its user database (read when first needed).

use std::cell::OnceCell;

use super::owner::OwnerSpec;
use super::selinux;
use super::users::Users;
use crate::error::Result;
use crate::root::{Labels, NewEntry, Root};

/// A mounted guest's labelling policy and users.
#[derive(Debug)]
pub struct Guest {
    labels: Option<Labels>,
    users: OnceCell<Users>,
}

impl Guest {
    /// Reads whether the guest at `root` uses SELinux, and its file
    /// contexts if so ([`selinux::labels`]).
    pub fn read(root: &Root) -> Result<Guest> {
        Ok(Guest {
            labels: selinux::labels(root)?,
            users: OnceCell::new(),
        })
    }

    /// The guest's SELinux file contexts, `None` if it does not use SELinux.
    pub fn labels(&self) -> Option<&Labels> {
        self.labels.as_ref()
    }

    /// The guest's users and groups (read from `root` the first time).
    pub fn users(&self, root: &Root) -> Result<&Users> {
        if let Some(u) = self.users.get() {
            return Ok(u);
        }
        let users = Users::read(root)?;
        Ok(self.users.get_or_init(|| users))
    }

    /// How to create entries in this guest: owned by `owner` (resolved in
    /// the guest's files) if given, with `mode` if given, and labelled as
    /// the guest's policy says.
    pub fn new_entry(
        &self,
        root: &Root,
        owner: Option<&OwnerSpec>,
        mode: Option<u32>,
    ) -> Result<NewEntry<'_>> {
        let mut how = NewEntry::new().labels(self.labels());
        if let Some(o) = owner {
            how = how.owner(self.users(root)?.resolve(o)?);
        }
        if let Some(m) = mode {
            how = how.mode(m);
        }
        Ok(how)
    }
}

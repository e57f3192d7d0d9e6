//! What a guest operating system's own files say, read and changed through
//! [`crate::root::Root`]: its users and groups (`etc/passwd`, `etc/group`,
//! `etc/shadow`, never the host's NSS), its SELinux policy, and what
//! `diskmount inject` puts in (SSH keys, host name, password hash, files).
//!
//! Also what the guest says about itself, for OS inspection:
//! `os_release.rs` (which OS, `etc/hostname`) and `fstab.rs` (what it
//! mounts at boot, and from where).
//!
//! One file per concern: `context.rs` (a guest's policy and users, as
//! creating files needs them), `file.rs` (bounded reads of guest files),
//! `passwd.rs`, `group.rs`, `shadow.rs` (the parsers), `users.rs` (the
//! user database and owner resolution), `owner.rs` (`USER[:GROUP]`),
//! `selinux.rs` (whether the guest uses SELinux, its file contexts),
//! `ssh.rs`, `hostname.rs`, `password.rs` (the injections), `inject.rs`
//! (all of them as one checked plan).
//!
//! Every file diskmount creates gets its owner from the guest's files and,
//! on a guest that uses SELinux, the label the guest's own policy gives
//! its path ([`crate::root::Labels`]); guest files are edited by rename
//! ([`crate::root::Root::edit`]), keeping their owner, mode and label.

mod context;
mod file;
pub mod fstab;
pub mod group;
pub mod hostname;
pub mod inject;
pub mod os_release;
pub mod owner;
pub mod passwd;
pub mod password;
pub mod selinux;
pub mod shadow;
pub mod ssh;
pub mod users;

pub use context::Guest;
pub use file::GUEST_FILE_LIMIT;
pub use group::GroupEntry;
pub use inject::{Applied, FileWrite, Injection};
pub use owner::{Owner, OwnerSpec, parse_mode};
pub use passwd::PasswdEntry;
pub use users::Users;

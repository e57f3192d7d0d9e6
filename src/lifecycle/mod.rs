//! The lifecycle, one file per step and its inverse:
//!
//! | file | forward | back | state it produces |
//! |---|---|---|---|
//! | `attach.rs` | [`Unattached::attach`] | [`Attached::detach`] | [`Attached`] |
//! | `map.rs` | [`Attached::map`] | [`Mapped::unmap`] | [`Mapped`] |
//! | `mount.rs` | [`Mapped::mount`] | [`Mounted::unmount`] | [`Mounted`] |
//! | `with_mounted.rs` | all three, then the closure, then all back | | |
//! | `builder.rs` | [`Mount`]: the same with every choice spelled out | | |
//!
//! Each state owns the state before it plus what its own step acquired, in a
//! guard that releases it on drop. Struct fields drop in declaration order,
//! so dropping a [`Mounted`] unmounts, then unmaps, then detaches, on every
//! path: explicit drop, `?`, or a panic unwinding.

pub(crate) mod attach;
mod builder;
mod inspect_os;
pub(crate) mod map;
pub(crate) mod mount;
pub(crate) mod mount_os;
mod with_mounted;

pub use attach::{Attached, Unattached};
pub use builder::Mount;
pub use map::Mapped;
pub use mount::{Mounted, UnmountError};
pub use mount_os::MountInfo;
pub use with_mounted::{with_mounted, with_mounted_opts};

//! The mount step's parts, one file per concern; the step itself
//! ([`crate::Mapped::mount`]) is in `lifecycle/mount.rs` and puts them
//! together:
//!
//! | file | what |
//! |---|---|
//! | `by_fd.rs` | the mount itself, by descriptor (`fsopen` .. `move_mount`), with the kernel's error text |
//! | `fstype.rs` | which filesystem type: the caller's, or the probed one if it is on the allow-list |
//! | `plan.rs` | the flags and the option string, from the options and the type (pure, unit-tested) |
//! | `guard.rs` | the mounted filesystem, flushed and unmounted exactly once |
//! | `unmount.rs` | `umount2` with the bounded retry of `EBUSY` |

pub(crate) mod by_fd;
pub(crate) mod fstype;
pub(crate) mod guard;
pub(crate) mod plan;
pub(crate) mod unmount;

//! Volumes inside partitions: LVM2 physical volumes, volume groups and
//! logical volumes ([`lvm`]), and btrfs subvolumes ([`btrfs`]); and the
//! list of what on a disk can be mapped and mounted ([`candidates()`]).
//!
//! Everything here reads the guest's own on-disk structures with our own
//! bounded parsers; the host's LVM tools never see a guest volume, and no
//! guest volume group is ever activated in the host's LVM.

// The one place the volume parsers name the reader trait.
use crate::format::ReadAt;

pub mod btrfs;
mod candidates;
pub mod lvm;
mod region;

pub(crate) use candidates::candidates_in;
pub use candidates::{Candidate, LvFacts, candidates};
pub use region::Region;

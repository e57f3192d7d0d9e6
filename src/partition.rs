//! Which part of a disk to mount.

use std::fmt;

/// The partition that [`crate::Attached::map`] gives a device to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Partition {
    /// The whole device: an image without a partition table, or a
    /// partitioned disk taken as a whole on purpose.
    Whole,
    /// Partition `n`, numbered as the kernel numbers them: MBR primaries
    /// 1-4, logical partitions from 5 in chain order, GPT entries by index.
    Number(u32),
    /// Search for the partition to mount (see the crate docs for the rule).
    Auto,
    /// The partition with this GPT name or, failing that, filesystem label.
    Label(String),
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Whole => f.write_str("whole disk"),
            Partition::Number(n) => write!(f, "partition {n}"),
            Partition::Auto => f.write_str("automatic partition search"),
            Partition::Label(l) => write!(f, "partition labelled {l:?}"),
        }
    }
}

//! btrfs subvolumes (to come).

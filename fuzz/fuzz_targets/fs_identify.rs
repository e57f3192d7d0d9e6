//! Filesystem superblock identification (`fs::identify`) on untrusted
//! bytes, and `fs::probe_at`, which reads them in two steps.
//!
//! Invariants: no panic; a label is never empty; `probe_at` over a buffer
//! whose first page is conclusive says what `identify` says of that page.
#![no_main]

use diskmount::fs::{Detected, identify, probe_at};
use diskmount_fuzz as _; // its allocation cap (`MALLOC_LIMIT`), as in every target
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let found = identify(data);
    if let Detected::Filesystem { label: Some(l), .. } = &found {
        assert!(!l.is_empty());
    }
    let _ = found.describe();
    let page = &data[..data.len().min(4096)];
    let first = identify(page);
    let probed = probe_at(data, 0, data.len() as u64).unwrap();
    if !matches!(first, Detected::Empty | Detected::Unknown) || data.len() <= 4096 {
        assert_eq!(probed, first);
    }
});

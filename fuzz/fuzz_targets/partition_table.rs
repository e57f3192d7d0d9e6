//! Partition tables (MBR with its EBR chain, GPT of 512- and 4096-byte
//! sectors) read from untrusted bytes, then every kind of selection and the
//! filesystem probe of each partition.
//!
//! Invariants: no panic; an accepted table has only non-empty partitions
//! inside the disk that do not overlap, numbered once each; a selected
//! partition is one of the table's; every refusal is at the map step and
//! names the device.
#![no_main]

use diskmount::Step;
use diskmount::partition::{Partition, find_filesystems, read_table_from, select};
use diskmount_fuzz::{Image, check_error, path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let img = Image::new(data);
    let size = img.len();
    let table = match read_table_from(&img, path(), size) {
        Ok(t) => t,
        Err(e) => return check_error(&e, Step::Map),
    };
    let mut wanted = vec![
        Partition::Whole,
        Partition::Auto,
        Partition::Number(0),
        Partition::Number(1),
        Partition::Number(5),
        Partition::Label("root".into()),
    ];
    if let Some(t) = &table {
        assert!(matches!(t.sector_size, 512 | 4096), "{t:?}");
        let mut sorted: Vec<_> = t.partitions.iter().collect();
        sorted.sort_by_key(|p| p.start);
        for p in &sorted {
            assert!(
                p.size > 0 && p.start.checked_add(p.size).is_some_and(|e| e <= size),
                "{p:?}"
            );
        }
        for w in sorted.windows(2) {
            assert!(w[0].end() <= w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
        }
        let mut numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
        numbers.sort();
        numbers.dedup();
        assert_eq!(numbers.len(), t.partitions.len(), "{t:?}");
        let found = find_filesystems(&img, t);
        assert_eq!(found.len(), t.partitions.len());
        for (p, _) in &found {
            wanted.push(Partition::Number(p.number));
            if let Some(name) = &p.name {
                wanted.push(Partition::Label(name.clone()));
            }
        }
        let _ = t.summary();
    }
    for w in &wanted {
        match select(&img, path(), table.as_ref(), w) {
            Ok(Some(p)) => {
                let t = table.as_ref().expect("a partition without a table");
                assert!(t.partitions.contains(&p), "{p:?} not in {t:?}");
                assert_ne!(*w, Partition::Whole);
            }
            Ok(None) => assert!(
                *w == Partition::Whole || table.is_none(),
                "{w} chose the whole disk of a partitioned one"
            ),
            Err(e) => check_error(&e, Step::Map),
        }
    }
});

//! Bad partition selections and bad tables: each a clear error at the map
//! step that says what exists, and nothing left behind (no partition node,
//! no extra loop device, no attached image).

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{Fixture, Part};
use diskmount::{Error, Format, Image, Loop, MapOptions, MapStrategy, Partition, Step, Unattached};

fn map_err(img: &Path, partition: Partition) -> Error {
    let mut last = None;
    for strategy in [
        MapStrategy::Auto,
        MapStrategy::Blkpg,
        MapStrategy::OffsetLoop,
    ] {
        let err = Unattached::<Loop>::new(Image::file(img, Format::Raw).unwrap())
            .attach()
            .unwrap()
            .map_with(partition.clone(), &MapOptions::default().strategy(strategy))
            .unwrap_err();
        assert_eq!(err.step(), Some(Step::Map), "{err}");
        assert!(
            err.to_string().contains("/dev/loop"),
            "names the device: {err}"
        );
        last = Some(err);
    }
    last.unwrap()
}

#[track_caller]
fn says(err: &Error, words: &[&str]) {
    for w in words {
        assert!(err.to_string().contains(w), "{w:?} missing from: {err}");
    }
}

#[test]
fn partition_numbers_that_do_not_exist() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    says(
        &map_err(&img, Partition::Number(0)),
        &["numbered from 1", "Partition::Whole"],
    );
    says(
        &map_err(&img, Partition::Number(9)),
        &["no partition 9", "1 (Linux", "5 (Linux", "6 (Linux"],
    );
    // 3 is the extended container: not a partition one can mount.
    says(&map_err(&img, Partition::Number(3)), &["no partition 3"]);
    fx.assert_clean();
}

#[test]
fn an_empty_slot_lists_the_partitions_that_exist() {
    let mut fx = Fixture::new();
    let img = fx.partitioned(
        "gap.img",
        64 << 20,
        512,
        "label: dos",
        &[
            Part {
                sfdisk: "1 : size=16MiB, type=83",
                fs: Some(("ext4", "a")),
                id: "p1",
            },
            Part {
                sfdisk: "3 : size=16MiB, type=83",
                fs: Some(("ext4", "c")),
                id: "p3",
            },
        ],
    );
    let err = map_err(&img, Partition::Number(2));
    says(&err, &["no partition 2", "1 (Linux", "3 (Linux"]);
    fx.assert_clean();
}

#[test]
fn unknown_and_ambiguous_labels() {
    let mut fx = Fixture::new();
    let img = fx.gpt_image("gpt.img", 512);
    says(
        &map_err(&img, Partition::Label("nope".into())),
        &[
            "no partition is named or labelled \"nope\"",
            "name \"root\"",
            "label \"datafs\"",
        ],
    );
    let twins = fx.partitioned(
        "twins.img",
        128 << 20,
        512,
        "label: gpt",
        &[
            Part {
                sfdisk: "size=40MiB, type=L, name=\"same\"",
                fs: Some(("ext4", "x")),
                id: "p1",
            },
            Part {
                sfdisk: "size=40MiB, type=L, name=\"same\"",
                fs: Some(("ext4", "y")),
                id: "p2",
            },
        ],
    );
    says(
        &map_err(&twins, Partition::Label("same".into())),
        &["ambiguous", "[1, 2]"],
    );
    fx.assert_clean();
}

#[test]
fn ambiguous_auto_lists_the_candidates() {
    let mut fx = Fixture::new();
    let img = fx.partitioned(
        "twins.img",
        128 << 20,
        512,
        "label: dos",
        &[
            Part {
                sfdisk: "size=40MiB, type=83",
                fs: Some(("ext4", "x")),
                id: "p1",
            },
            Part {
                sfdisk: "size=40MiB, type=83",
                fs: Some(("ext4", "y")),
                id: "p2",
            },
        ],
    );
    says(
        &map_err(&img, Partition::Auto),
        &[
            "ambiguous",
            "1 (ext4, 40 MiB)",
            "2 (ext4, 40 MiB)",
            "Partition::Number",
        ],
    );
    let none = fx.partitioned(
        "none.img",
        64 << 20,
        512,
        "label: dos",
        &[Part {
            sfdisk: "size=16MiB, type=83",
            fs: None,
            id: "",
        }],
    );
    says(
        &map_err(&none, Partition::Auto),
        &["found no partition with a filesystem"],
    );
    fx.assert_clean();
}

#[test]
fn no_table_where_one_is_needed() {
    let mut fx = Fixture::new();
    let img = fx.ext4("plain.img", &[]);
    says(
        &map_err(&img, Partition::Number(1)),
        &["no partition table", "Partition::Whole"],
    );
    says(
        &map_err(&img, Partition::Label("other".into())),
        &["not labelled \"other\"", "label \"testfs\""],
    );
    fx.assert_clean();
}

/// Writes an MBR partition entry into slot `slot` (1-4).
fn mbr_entry(img: &Path, slot: u64, ty: u8, start: u32, sectors: u32) {
    let mut e = [0u8; 16];
    e[4] = ty;
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&e, 446 + (slot - 1) * 16).unwrap();
    f.write_all_at(&[0x55, 0xAA], 510).unwrap();
}

#[test]
fn overlapping_and_out_of_bounds_entries_are_refused() {
    let mut fx = Fixture::new();
    let img = fx.blank("overlap.img", 64 << 20);
    mbr_entry(&img, 1, 0x83, 2048, 40960);
    mbr_entry(&img, 2, 0x83, 20480, 40960);
    says(
        &map_err(&img, Partition::Number(1)),
        &["inconsistent", "partitions 1 and 2 overlap"],
    );
    let img = fx.blank("beyond.img", 64 << 20);
    mbr_entry(&img, 1, 0x83, 2048, 1 << 20);
    says(
        &map_err(&img, Partition::Number(1)),
        &["inconsistent", "partition 1", "past the end"],
    );
    // A GPT whose disk was cut short: its last partition lies beyond.
    let img = fx.gpt_image("cut.img", 512);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(150 << 20)
        .unwrap();
    says(
        &map_err(&img, Partition::Number(1)),
        &["partition 3", "past the end"],
    );
    fx.assert_clean();
}

#[test]
fn crafted_gpt_headers_are_refused_in_bounded_time() {
    let mut fx = Fixture::new();
    let img = fx.gpt_image("huge.img", 512);
    let size = std::fs::metadata(&img).unwrap().len();
    for at in [512, size - 512] {
        common::forge_gpt_header(&img, at, |h| {
            h[80..84].copy_from_slice(&u32::MAX.to_le_bytes())
        });
    }
    let start = std::time::Instant::now();
    says(
        &map_err(&img, Partition::Number(1)),
        &["unusable GPT", "4294967295 entries"],
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(5));

    let img = fx.gpt_image("entry-size.img", 512);
    for at in [512, size - 512] {
        common::forge_gpt_header(&img, at, |h| {
            h[84..88].copy_from_slice(&256u32.to_le_bytes())
        });
    }
    says(&map_err(&img, Partition::Number(1)), &["entry size 256"]);

    // Only the primary is forged: the backup is still good and is used.
    let img = fx.gpt_image("one-forged.img", 512);
    common::forge_gpt_header(&img, 512, |h| {
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    let m = Unattached::<Loop>::new(Image::file(&img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Label("root".into()))
        .unwrap();
    assert_eq!(m.partition(), Some(2));
    m.close().unwrap();
    fx.assert_clean();
}

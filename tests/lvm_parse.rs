//! Our LVM2 reader on images LVM2's own tools made: it agrees with `lvs`
//! on the same image, the offsets it plans show the files put there when
//! util-linux mounts them, and damaged metadata is a clear error.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::lvm::{LoopDev, LvmImage};
use common::{Fixture, run};
use diskmount::partition::read_table_from;
use diskmount::volume::Region;
use diskmount::volume::lvm::{PhysicalVolume, Plan, SegmentKind, dm_table, scan};

/// Our scan of the image's PV, found through our own partition table
/// reader.
fn scan_image(img: &LvmImage) -> diskmount::Result<Option<PhysicalVolume>> {
    let file = File::open(&img.path).unwrap();
    let size = file.metadata().unwrap().len();
    let table = read_table_from(&file, &img.path, size).unwrap();
    let (start, len) = match (&table, img.pv_partition) {
        (None, None) => (0, size),
        (Some(t), Some(n)) => {
            let p = t.partitions.iter().find(|p| p.number == n).unwrap();
            (p.start, p.size)
        }
        other => panic!("table and fixture disagree: {other:?}"),
    };
    assert_eq!((start, len), (img.pv_start, img.pv_size));
    scan(&Region::new(&file, start, len), &img.path, len)
}

/// Our parse agrees with `lvs` on every LV and segment.
fn assert_agrees_with_lvs(img: &LvmImage, pv: &PhysicalVolume) {
    img.assert_not_active();
    let vg = pv.vg.as_ref().expect("a volume group");
    assert_eq!(vg.name, img.vg);
    assert_eq!(vg.extent_bytes(), img.extent_size);
    let me = pv.in_vg().expect("the PV in its VG");
    assert_eq!(me.pe_start * 512, img.pe_start);
    let rows = img.lvs_rows();
    assert_eq!(
        rows.len(),
        vg.lvs.iter().map(|l| l.segments.len()).sum::<usize>(),
        "{rows:?}"
    );
    let mut names: Vec<&str> = vg.lvs.iter().map(|l| l.name.as_str()).collect();
    let mut theirs: Vec<&str> = rows.iter().map(|r| r["lv_name"].as_str()).collect();
    names.sort();
    theirs.sort();
    theirs.dedup();
    assert_eq!(names, theirs);
    for lv in &vg.lvs {
        for seg in &lv.segments {
            let row = rows
                .iter()
                .find(|r| {
                    r["lv_name"] == lv.name && r["seg_start_pe"] == seg.start_extent.to_string()
                })
                .unwrap_or_else(|| {
                    panic!(
                        "lvs has no segment of {} at {}: {rows:?}",
                        lv.name, seg.start_extent
                    )
                });
            assert_eq!(row["vg_name"], vg.name);
            assert_eq!(row["seg_count"], lv.segments.len().to_string());
            assert_eq!(
                row["lv_size"],
                (lv.extent_count() * vg.extent_bytes()).to_string()
            );
            assert_eq!(row["seg_size_pe"], seg.extent_count.to_string());
            let SegmentKind::Striped { stripes, .. } = &seg.kind else {
                panic!("{seg:?}")
            };
            let (_, at) = &stripes[0];
            let range = &row["seg_pe_ranges"];
            let (_, pes) = range.rsplit_once(':').unwrap();
            assert_eq!(
                pes,
                format!("{at}-{}", at + seg.extent_count - 1),
                "{range}"
            );
        }
        assert_eq!(
            img.lv_ranges(&lv.name).len(),
            lv.segments.len(),
            "the fixture made {} so",
            lv.name
        );
    }
}

/// `mount -o ro,loop,offset=,sizelimit=` of the planned piece of `lv`,
/// then `check` on the mount point.
fn mount_planned(
    fx: &Fixture,
    img: &LvmImage,
    pv: &PhysicalVolume,
    lv: &str,
    check: impl FnOnce(&Path),
) {
    let vg = pv.vg.as_ref().unwrap();
    let piece = vg
        .plan_without_device_mapper(lv, &img.path, |p| p.id == pv.id())
        .unwrap();
    assert_eq!(
        vec![(img.pv_start + piece.pv_offset, piece.len)],
        img.lv_ranges(lv)
    );
    let mnt = fx.path().join(format!("mnt-{lv}"));
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .arg("-o")
        .arg(format!(
            "ro,loop,offset={},sizelimit={}",
            img.pv_start + piece.pv_offset,
            piece.len
        ))
        .arg(&img.path)
        .arg(&mnt));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mnt)));
    common::system::umount(&mnt);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn rocky_layout_agrees_with_lvs_and_its_offsets_hold_the_files() {
    let mut fx = Fixture::new();
    let img = fx.rocky_image("rocky.img");
    let pv = scan_image(&img).unwrap().expect("a PV on partition 3");
    assert_agrees_with_lvs(&img, &pv);
    let vg = pv.vg.as_ref().unwrap();
    let names: Vec<&str> = vg.lvs.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["root", "home", "swap", "data"]);

    mount_planned(&fx, &img, &pv, "root", |d| {
        assert_eq!(read(d, "etc/hostname"), "rocky-guest\n");
        assert!(read(d, "etc/os-release").contains("ID=rocky\n"));
        assert!(read(d, "etc/fstab").contains("/dev/mapper/rl-home"));
        assert_eq!(read(d, "id"), "root");
    });
    mount_planned(&fx, &img, &pv, "home", |d| {
        assert_eq!(read(d, "id"), "home")
    });

    // Swap: one piece, holding the swap signature at the end of page 0.
    let swap = vg.plan("swap", &img.path, |_| true).unwrap();
    let Plan::OffsetLoop(piece) = &swap else {
        panic!("{swap:?}")
    };
    let mut sig = [0u8; 10];
    File::open(&img.path)
        .unwrap()
        .read_exact_at(&mut sig, img.pv_start + piece.pv_offset + 4086)
        .unwrap();
    assert_eq!(&sig, b"SWAPSPACE2");

    // Two segments apart: device-mapper, one line each; our pieces,
    // read back to back, are the filesystem made there.
    let err = vg
        .plan_without_device_mapper("data", &img.path, |_| true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "logical volume rl/data is made of 2 separate pieces, which needs device-mapper"
        ),
        "{err}"
    );
    let plan = vg.plan("data", &img.path, |_| true).unwrap();
    let Plan::DeviceMapper(pieces) = &plan else {
        panic!("{plan:?}")
    };
    let ranges = img.lv_ranges("data");
    assert_eq!(
        pieces
            .iter()
            .map(|p| (img.pv_start + p.pv_offset, p.len))
            .collect::<Vec<_>>(),
        ranges
    );
    let table = dm_table(pieces, &img.path, |_| Some((7, 9))).unwrap();
    let sectors = img.extent_size / 512;
    let line = |lv_at: u64, (at, len): (u64, u64)| {
        format!(
            "{} {} linear 7:9 {}",
            lv_at,
            len / 512,
            (at - img.pv_start) / 512
        )
    };
    assert_eq!(table, [line(0, ranges[0]), line(3 * sectors, ranges[1])]);
    let file = File::open(&img.path).unwrap();
    let joined = fx.path().join("data.joined");
    let out = File::create(&joined).unwrap();
    for p in pieces {
        let mut buf = vec![0u8; p.len as usize];
        file.read_exact_at(&mut buf, img.pv_start + p.pv_offset)
            .unwrap();
        out.write_all_at(&buf, p.lv_offset).unwrap();
    }
    drop(out);
    let mnt = fx.path().join("mnt-data");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .arg("-o")
        .arg("ro,loop")
        .arg(&joined)
        .arg(&mnt));
    let id = std::fs::read_to_string(mnt.join("id"));
    common::system::umount(&mnt);
    assert_eq!(id.unwrap(), "data");
    fx.assert_clean();
}

#[test]
fn ubuntu_layout_agrees_with_lvs() {
    let mut fx = Fixture::new();
    let img = fx.ubuntu_image("ubuntu.img");
    let pv = scan_image(&img).unwrap().unwrap();
    assert_agrees_with_lvs(&img, &pv);
    assert_eq!(pv.vg.as_ref().unwrap().name, "ubuntu-vg");
    mount_planned(&fx, &img, &pv, "ubuntu-lv", |d| {
        assert_eq!(read(d, "etc/hostname"), "ubuntu-guest\n");
        assert!(read(d, "etc/fstab").contains("/dev/mapper/ubuntu--vg-ubuntu--lv"));
    });
    fx.assert_clean();
}

#[test]
fn a_whole_disk_pv_agrees_with_lvs() {
    let mut fx = Fixture::new();
    let img = fx.whole_disk_pv_image("whole.img");
    let pv = scan_image(&img).unwrap().unwrap();
    assert_agrees_with_lvs(&img, &pv);
    assert_eq!(pv.label.sector, 1);
    mount_planned(&fx, &img, &pv, "root", |d| {
        assert_eq!(read(d, "etc/hostname"), "whole-guest\n");
    });
    fx.assert_clean();
}

/// Where the committed metadata text of the image's PV is (image offset,
/// length), read from the metadata area header by hand.
fn text_location(img: &LvmImage, pv: &PhysicalVolume) -> (u64, u64, u64) {
    let area = pv.label.metadata_areas[0];
    let mut h = [0u8; 512];
    File::open(&img.path)
        .unwrap()
        .read_exact_at(&mut h, img.pv_start + area.offset)
        .unwrap();
    let offset = u64::from_le_bytes(h[40..48].try_into().unwrap());
    let len = u64::from_le_bytes(h[48..56].try_into().unwrap());
    (img.pv_start + area.offset, offset, len)
}

fn patch(path: &Path, at: u64, edit: impl FnOnce(&mut [u8]), len: usize) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, at).unwrap();
    edit(&mut buf);
    f.write_all_at(&buf, at).unwrap();
}

/// LVM2's checksum (CRC-32, start 0xf597a6cf, no final inversion).
fn lvm_crc(data: &[u8]) -> u32 {
    let mut crc = 0xf597_a6cfu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[test]
fn corrupt_metadata_is_a_clear_error() {
    let mut fx = Fixture::new();
    let good = fx.whole_disk_pv_image("whole.img");
    let pv = scan_image(&good).unwrap().unwrap();
    let (area, offset, len) = text_location(&good, &pv);
    let copy = |name: &str| {
        let mut img = good.clone();
        img.path = fx.path().join(name);
        std::fs::copy(&good.path, &img.path).unwrap();
        img
    };
    let error = |img: &LvmImage| scan_image(img).unwrap_err().to_string();

    // A byte of the text flipped: its checksum no longer matches.
    let flipped = copy("flipped.img");
    patch(&flipped.path, area + offset + 10, |b| b[0] ^= 0x04, 1);
    let e = error(&flipped);
    assert!(
        e.starts_with(&format!(
            "probe: {}: LVM2 metadata area 0",
            flipped.path.display()
        )),
        "{e}"
    );
    assert!(e.contains("the metadata text's checksum is wrong"), "{e}");

    // The text changed with every checksum made right again: our parser
    // refuses what it says.
    let rewritten = copy("rewritten.img");
    let f = File::open(&rewritten.path).unwrap();
    let mut text = vec![0u8; len as usize];
    f.read_exact_at(&mut text, area + offset).unwrap();
    let at = text.windows(9).position(|w| w == b"pe_count ").unwrap();
    text[at..at + 9].copy_from_slice(b"pe_count{");
    let crc = lvm_crc(&text);
    patch(
        &rewritten.path,
        area + offset,
        |b| b.copy_from_slice(&text),
        text.len(),
    );
    patch(
        &rewritten.path,
        area,
        |h| {
            h[56..60].copy_from_slice(&crc.to_le_bytes());
            let c = lvm_crc(&h[4..]);
            h[..4].copy_from_slice(&c.to_le_bytes());
        },
        512,
    );
    let e = error(&rewritten);
    assert!(e.contains("the LVM2 metadata is invalid: line "), "{e}");

    // The header's checksum wrong.
    let header = copy("header.img");
    patch(&header.path, area, |h| h[0] ^= 1, 1);
    assert!(error(&header).contains("the header's checksum is wrong"));

    // The label damaged.
    let label = copy("label.img");
    patch(&label.path, 512 + 40, |b| b[0] ^= 1, 1);
    assert!(error(&label).contains("the LVM2 label in sector 1: wrong checksum"));

    // The image cut short in the middle of the extents.
    let truncated = copy("truncated.img");
    let cut = good.pv_start + good.pe_start + 10 * good.extent_size;
    File::options()
        .write(true)
        .open(&truncated.path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let mut t = truncated.clone();
    t.pv_size = cut;
    let file = File::open(&t.path).unwrap();
    let e = scan(&file, &t.path, cut).unwrap_err().to_string();
    assert!(e.contains("beyond the end of the"), "{e}");
    assert!(e.contains("the image is truncated"), "{e}");
    fx.assert_clean();
}

#[test]
fn a_metadata_buffer_that_wrapped_reads_as_lvm_says() {
    let mut fx = Fixture::new();
    let img = fx.blank("small.img", 8 << 20);
    let dev = LoopDev::attach(&img, 0, 8 << 20);
    let d = dev.dev.as_str();
    fx.lvm_cmd(
        "pvcreate",
        d,
        &["-q", "--metadatasize", "8k", "--dataalignment", "64k", d],
    );
    fx.lvm_cmd(
        "vgcreate",
        d,
        &["-q", "--setautoactivation", "n", "-s", "1M", "wrapvg", d],
    );
    // Commit (each commit writes the text after the last one) until the
    // text runs past the end of the 60 KiB circular buffer.
    let header = || {
        let mut h = [0u8; 64];
        File::open(&img)
            .unwrap()
            .read_exact_at(&mut h, 4096)
            .unwrap();
        let at = |p: usize| u64::from_le_bytes(h[p..p + 8].try_into().unwrap());
        (at(32), at(40), at(48))
    };
    let mut commits = 0;
    while {
        let (size, offset, len) = header();
        offset + len <= size
    } {
        assert!(commits < 300, "the metadata never wrapped: {:?}", header());
        fx.lvm_cmd(
            "vgchange",
            d,
            &["-q", "--addtag", &format!("t{commits}"), "wrapvg"],
        );
        commits += 1;
    }
    let seqno: u64 = fx
        .lvm_cmd("vgs", d, &["--noheadings", "-o", "vg_seqno", "wrapvg"])
        .trim()
        .parse()
        .unwrap();
    drop(dev);
    let pv = scan(&File::open(&img).unwrap(), &img, 8 << 20)
        .unwrap()
        .unwrap();
    let vg = pv.vg.unwrap();
    assert_eq!((vg.name.as_str(), vg.seqno), ("wrapvg", seqno));
    assert!(seqno > 20, "{seqno}");
    fx.assert_clean();
}

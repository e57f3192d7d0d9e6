//! Crafted images that attack the parsers: each is refused at the step
//! that reads it, with an error naming the step, the image or device and
//! the cause, in bounded time and memory, and nothing is left behind.
//!
//! Cases already covered elsewhere are not repeated: a GPT entry size the
//! crate cannot read, partitions past the end of the disk or overlapping
//! (tests/partition_errors.rs); truncated images, a qcow2 L1 table of 2^32
//! entries, encrypted qcow2 (tests/formats.rs). What those tests do not
//! measure, the memory a refusal takes, is measured here for the GPT of
//! 2^32 entries.
//!
//! Each case runs in a child process of its own (this test binary, that
//! test only), so that the peak memory measured around the refused call
//! (`VmHWM`, reset through `/proc/self/clear_refs` just before it) is that
//! call's alone and not another test thread's.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Fixture, Part};
use diskmount::{Auto, Error, Format, Image, Loop, Partition, Step, Unattached};

/// The environment variable that tells a child which case to run.
const CASE: &str = "DISKMOUNT_HOSTILE_CASE";
/// The longest a refusal may take.
const TIME: Duration = Duration::from_secs(2);
/// The most the process's peak memory may grow during a refusal.
const MEMORY_KIB: u64 = 64 << 10;

/// Runs `case` in a child process (test `name` of this binary, alone), or,
/// in that child, runs it.
fn isolated(name: &str, case: impl FnOnce()) {
    if std::env::var(CASE).as_deref() == Ok(name) {
        return case();
    }
    common::require_root();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE, name)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "case {name} failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "case {name} did not run:\n{text}"
    );
    for line in text
        .lines()
        .filter_map(|l| l.find("hostile:").map(|i| &l[i..]))
    {
        eprintln!("{line}");
    }
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// Runs `call`, which must fail, and checks the bounds: under [`TIME`],
/// and the peak memory of the process grows by less than [`MEMORY_KIB`].
/// Returns the error.
#[track_caller]
fn refused<T: std::fmt::Debug>(what: &str, call: impl FnOnce() -> diskmount::Result<T>) -> Error {
    // "5" resets the peak resident set size (VmHWM) to the current one.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let base = status_kib("VmRSS:");
    let start = Instant::now();
    let result = call();
    let elapsed = start.elapsed();
    let grew = status_kib("VmHWM:").saturating_sub(base);
    println!("hostile: {what}: refused in {elapsed:.1?}, peak memory +{grew} KiB");
    let err = result.expect_err("a crafted image must be refused");
    println!("hostile: {what}: {err}");
    assert!(elapsed < TIME, "{what} took {elapsed:?}");
    assert!(grew < MEMORY_KIB, "{what} took {grew} KiB");
    err
}

/// `err` is at `step`, names `path` and says each of `words`.
#[track_caller]
fn says(err: &Error, step: Step, path: &str, words: &[&str]) {
    assert_eq!(err.step(), Some(step), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(path), "{path:?} missing from: {msg}");
    for w in words {
        assert!(msg.contains(w), "{w:?} missing from: {msg}");
    }
}

/// A 16 MiB disk with a GPT of one partition, made by sfdisk.
fn small_gpt(fx: &Fixture, name: &str) -> std::path::PathBuf {
    fx.partitioned(
        name,
        16 << 20,
        512,
        "label: gpt",
        &[Part {
            sfdisk: "size=4MiB, type=L",
            fs: None,
            id: "",
        }],
    )
}

/// Attaches the raw disk `img` and maps partition 1: the map step must
/// refuse it.
fn map_refused(img: &Path, what: &str) -> Error {
    let attached = Unattached::<Loop>::new(Image::file(img, Format::Raw).unwrap())
        .attach()
        .unwrap();
    let dev = attached.device().display().to_string();
    let err = refused(what, move || attached.map(Partition::Number(1)));
    assert!(err.to_string().contains(&dev), "names {dev}: {err}");
    err
}

#[test]
fn gpt_claiming_four_billion_entries() {
    isolated("gpt_claiming_four_billion_entries", || {
        let mut fx = Fixture::new();
        let img = small_gpt(&fx, "huge.img");
        let size = std::fs::metadata(&img).unwrap().len();
        for at in [512, size - 512] {
            common::forge_gpt_header(&img, at, |h| {
                h[80..84].copy_from_slice(&u32::MAX.to_le_bytes())
            });
        }
        let err = map_refused(&img, "GPT of 2^32 entries");
        says(
            &err,
            Step::Map,
            "/dev/loop",
            &["unusable GPT", "4294967295 entries"],
        );
        fx.assert_clean();
    });
}

#[test]
fn gpt_entries_beyond_the_end_of_the_disk() {
    isolated("gpt_entries_beyond_the_end_of_the_disk", || {
        let mut fx = Fixture::new();
        let img = small_gpt(&fx, "far.img");
        let size = std::fs::metadata(&img).unwrap().len();
        for at in [512, size - 512] {
            common::forge_gpt_header(&img, at, |h| {
                h[72..80].copy_from_slice(&(1u64 << 40).to_le_bytes())
            });
        }
        let err = map_refused(&img, "GPT entry array beyond the disk");
        says(
            &err,
            Step::Map,
            "/dev/loop",
            &["unusable GPT", "entry array", "beyond the end of the disk"],
        );
        fx.assert_clean();
    });
}

/// An MBR partition entry (16 bytes) at `at` in `sector`.
fn entry(sector: &mut [u8], at: usize, ty: u8, start: u32, sectors: u32) {
    let e = &mut sector[at..at + 16];
    e[4] = ty;
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    sector[510] = 0x55;
    sector[511] = 0xAA;
}

#[test]
fn mbr_extended_chain_that_loops() {
    isolated("mbr_extended_chain_that_loops", || {
        let mut fx = Fixture::new();
        let img = fx.blank("ebr-loop.img", 16 << 20);
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        // MBR: an extended partition at sector 2048.
        let mut mbr = [0u8; 512];
        entry(&mut mbr, 446, 0x05, 2048, 20000);
        f.write_all_at(&mbr, 0).unwrap();
        // EBR 1 (extended start + 0): a logical, then "next at +100".
        let mut ebr = [0u8; 512];
        entry(&mut ebr, 446, 0x83, 1, 50);
        entry(&mut ebr, 462, 0x05, 100, 200);
        f.write_all_at(&ebr, 2048 * 512).unwrap();
        // EBR 2 (+100): a logical, then "next at +100": itself again.
        f.write_all_at(&ebr, (2048 + 100) * 512).unwrap();
        let err = map_refused(&img, "EBR chain looping on itself");
        says(
            &err,
            Step::Map,
            "/dev/loop",
            &[
                "MBR partition table",
                "inconsistent extended boot record",
                "points back",
                "loop",
            ],
        );
        fx.assert_clean();
    });
}

/// `qemu-img create -f format name size` in the fixture's directory.
fn qemu_img(fx: &Fixture, format: &str, name: &str, opts: &[&str]) -> std::path::PathBuf {
    let path = fx.path().join(name);
    common::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", format])
            .args(opts)
            .arg(&path)
            .arg("64M"),
    );
    path
}

/// Attaching `img` as `format` (probed or given) must be refused at the
/// probe step, before qemu starts.
fn attach_refused(img: &Path, format: Format, what: &str, words: &[&str]) {
    let path = img.to_str().unwrap();
    let err = refused(&format!("{what} (probed)"), || Image::probe(img));
    says(&err, Step::Probe, path, words);
    let image = Image::file(img, format).unwrap();
    let err = refused(&format!("{what} (attach)"), move || {
        Unattached::<Auto>::new(image).attach()
    });
    says(&err, Step::Probe, path, words);
}

#[test]
fn qcow2_l1_table_beyond_the_end_of_the_file() {
    isolated("qcow2_l1_table_beyond_the_end_of_the_file", || {
        let mut fx = Fixture::new();
        let img = qemu_img(&fx, "qcow2", "l1.qcow2", &[]);
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        let len = f.metadata().unwrap().len();
        let beyond = len.next_multiple_of(65536) + (1 << 30);
        f.write_all_at(&beyond.to_be_bytes(), 40).unwrap();
        attach_refused(
            &img,
            Format::Qcow2,
            "qcow2 L1 table beyond the file",
            &["inconsistent", "L1 table", "beyond the end"],
        );
        fx.assert_clean();
    });
}

#[test]
fn vmdk_with_a_ten_megabyte_descriptor() {
    isolated("vmdk_with_a_ten_megabyte_descriptor", || {
        let mut fx = Fixture::new();
        // A descriptor file: the usual lines, then 10 MiB of comments.
        let img = fx.path().join("big-descriptor.vmdk");
        let mut text = String::from(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\nRW 131072 FLAT \"big-flat.vmdk\" 0\n",
        );
        while text.len() < 10 << 20 {
            text.push_str("# padding padding padding padding padding padding padding\n");
        }
        std::fs::write(&img, &text).unwrap();
        attach_refused(
            &img,
            Format::Vmdk,
            "vmdk descriptor file of 10 MiB",
            &["too large for a descriptor file", "65536"],
        );
        // A sparse vmdk whose header claims an embedded descriptor of 10 MiB.
        let img = qemu_img(&fx, "vmdk", "big-embedded.vmdk", &[]);
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&(20480u64).to_le_bytes(), 36).unwrap();
        attach_refused(
            &img,
            Format::Vmdk,
            "vmdk header claiming a 10 MiB descriptor",
            &["a descriptor of 10485760 bytes"],
        );
        fx.assert_clean();
    });
}

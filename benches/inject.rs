//! File injection: `Mounted::root()` then `Root::copy_in` against `cp -a`
//! into the same kind of mount, for one 256 MiB file and for a tree of
//! 10,000 small files (100 directories of 100 files, 512 B to 4 KiB).
//!
//! Every run gets a fresh 1 GiB ext4 image (made by mkfs and synced,
//! untimed) mounted by the library (untimed). Timed: the copy *and* the
//! teardown (`close()`: syncfs, unmount, flush, `fsync` of the image,
//! detach), the same for both, so that both pay for getting the data into
//! the image file. The host source files stay in the page cache (read once
//! before; caches are never dropped). Variants interleaved run by run.
//!
//! Run as root: `cargo bench --bench inject` (`-- --iterations N`, default
//! 5; `--only big|tree`). Prints the tables, writes
//! `target/bench-results/inject.json` and `docs/charts/inject.svg`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{Table, run, stats};
use diskmount::Loop;

/// Deterministic incompressible bytes (xorshift).
fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

fn make_sources(dir: &Path) -> (PathBuf, PathBuf) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let big = dir.join("big.bin");
    let mut f = std::fs::File::create(&big).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..256 {
        fill(&mut buf, &mut seed);
        f.write_all(&buf).unwrap();
    }
    drop(f);
    let tree = dir.join("tree");
    for d in 0..100 {
        let sub = tree.join(format!("d{d:03}"));
        std::fs::create_dir_all(&sub).unwrap();
        for i in 0..100 {
            let len = 512 + (seed % 3585) as usize;
            fill(&mut buf[..len], &mut seed);
            std::fs::write(sub.join(format!("f{i:03}.dat")), &buf[..len]).unwrap();
        }
    }
    // Read everything once: the page cache holds the sources from here on.
    run(Command::new("cat")
        .arg(&big)
        .stdout(std::process::Stdio::null()));
    run(Command::new("tar").args(["-cf", "/dev/null"]).arg(&tree));
    (big, tree)
}

type Mounted = diskmount::Mounted<Loop>;

/// A fresh image, mounted (untimed).
fn fresh(img: &Path, mnt: &Path) -> Mounted {
    common::ext4_image(img, 1 << 30);
    common::mount_raw(img, mnt)
}

/// One timed run in ms: copy `src` into the image root, then close.
fn once(img: &Path, mnt: &Path, src: &Path, with_cp: bool) -> f64 {
    let mounted = fresh(img, mnt);
    let t = Instant::now();
    if with_cp {
        run(Command::new("cp").arg("-a").arg(src).arg(mnt));
    } else {
        mounted.root().unwrap().copy_in(src, "/").unwrap();
    }
    mounted.close().unwrap();
    let elapsed = common::ms(t.elapsed());
    std::fs::remove_file(img).unwrap();
    elapsed
}

fn main() {
    common::require_root("inject");
    let iterations: usize = common::arg("--iterations").unwrap_or(5);
    let only: Option<String> = common::arg("--only");
    let machine = common::print_machine("inject");
    let dir = tempfile::Builder::new()
        .prefix("diskmount-bench-")
        .tempdir()
        .unwrap();
    let (big, tree) = make_sources(dir.path());
    let img = dir.path().join("inject.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut tables = Vec::new();
    for (id, what, src) in [
        ("big", "one 256 MiB file", &big),
        ("tree", "10,000 small files in 100 directories", &tree),
    ] {
        if only.as_deref().is_some_and(|o| o != id) {
            continue;
        }
        // Warm-up: one of each.
        once(&img, &mnt, src, false);
        once(&img, &mnt, src, true);
        let (mut lib, mut cp) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            lib.push(once(&img, &mnt, src, false));
            cp.push(once(&img, &mnt, src, true));
        }
        let mut t = Table::new(
            &format!("inject-{id}"),
            &format!(
                "inject {what} into a fresh ext4 image, copy + close, {iterations} runs each, interleaved"
            ),
            "ms",
            "vs copy_in",
        );
        t.push("Root::copy_in", stats(lib));
        t.push("cp -a", stats(cp));
        t.print();
        tables.push(t);
    }
    if !tables.is_empty() {
        // One chart with both workloads.
        let mut all = Table::new(
            "inject",
            "Injecting files into a fresh ext4 image (copy + close)",
            "ms",
            "",
        );
        for t in &tables {
            for r in &t.rows {
                let mut r = r.clone();
                r.name = format!("{}: {}", t.id.trim_start_matches("inject-"), r.name);
                all.rows.push(r);
            }
        }
        common::bar_chart("inject", &all, "lower is better");
    }
    common::write_results("inject", &machine, &tables);
    common::assert_clean(dir.path());
}

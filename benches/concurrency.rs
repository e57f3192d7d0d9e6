//! Cycles per second with 1, 2, 4 and 8 threads, each thread cycling its own
//! 64 MiB ext4 raw image (attach, map whole disk, mount, unmount, unmap,
//! detach) on its own mount point: the library, the hand-written syscall
//! floor with the same flushes, which shows what the kernel itself allows,
//! and the floor claiming its device the library's way (under the
//! `/dev/loop-control` lock, with partition scanning), which shows what
//! that claim costs when threads compete. The library takes the `/dev/loop-control` lock only around
//! `LOOP_CTL_GET_FREE` and the claim of the device it returns
//! (`LOOP_CONFIGURE`, `LOOP_GET_STATUS64`); nothing else is shared.
//!
//! Run as root: `cargo bench --bench concurrency` (`-- --cycles N` per
//! thread per round, default 40; `--rounds R`, default 5). Thread counts
//! and variants are interleaved round by round. Prints the table, writes
//! `target/bench-results/concurrency.json` and
//! `docs/charts/concurrency.svg`.

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

use common::{Row, Stats, Table, stats};
use diskmount::sys::{block as blk, loop_dev};
use nix::mount::{MntFlags, MsFlags};

const THREADS: [usize; 4] = [1, 2, 4, 8];

/// The floor: no lock, `EBUSY` (another thread configured the device
/// `LOOP_CTL_GET_FREE` offered to both) answered by asking again. With
/// `claim_like_library`, the claim is made the library's way: under an
/// exclusive `flock` of `/dev/loop-control`, with `LO_FLAGS_PARTSCAN`
/// (which makes `LOOP_CONFIGURE` rescan the partition table).
fn syscalls(img: &Path, mnt: &Path, claim_like_library: bool) {
    let backing = common::open_rw(img);
    let mut flags = loop_dev::LO_FLAGS_AUTOCLEAR;
    if claim_like_library {
        flags |= loop_dev::LO_FLAGS_PARTSCAN;
    }
    let (node, dev) = common::floor::attach_claiming(&backing, None, flags, claim_like_library);
    nix::mount::mount(
        Some(node.as_str()),
        mnt,
        Some("ext4"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(""),
    )
    .unwrap();
    nix::unistd::syncfs(File::open(mnt).unwrap()).unwrap();
    nix::mount::umount2(mnt, MntFlags::UMOUNT_NOFOLLOW).unwrap();
    blk::flsbuf(dev.as_fd()).unwrap();
    backing.sync_all().unwrap();
    loop_dev::clr_fd(dev.as_fd()).unwrap();
}

/// `threads` threads doing `cycles` cycles each on their own image; returns
/// cycles per second over the whole run and every cycle's time in ms.
fn round(
    slots: &[(PathBuf, PathBuf)],
    threads: usize,
    cycles: usize,
    variant: usize,
) -> (f64, Vec<f64>) {
    let barrier = Barrier::new(threads + 1);
    let (start, lat) = std::thread::scope(|s| {
        let handles: Vec<_> = slots[..threads]
            .iter()
            .map(|(img, mnt)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let mut lat = Vec::with_capacity(cycles);
                    for _ in 0..cycles {
                        let t = Instant::now();
                        match variant {
                            0 => common::library_cycle(img, mnt),
                            v => syscalls(img, mnt, v == 2),
                        }
                        lat.push(common::ms(t.elapsed()));
                    }
                    lat
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let lat: Vec<f64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        (start, lat)
    });
    let secs = start.elapsed().as_secs_f64();
    ((threads * cycles) as f64 / secs, lat)
}

fn main() {
    common::require_root("concurrency");
    let cycles: usize = common::arg("--cycles").unwrap_or(40);
    let rounds: usize = common::arg("--rounds").unwrap_or(5);
    let machine = common::print_machine("concurrency");
    let dir = tempfile::Builder::new()
        .prefix("diskmount-bench-")
        .tempdir()
        .unwrap();
    let max = *THREADS.iter().max().unwrap();
    let slots: Vec<(PathBuf, PathBuf)> = (0..max)
        .map(|i| {
            let img = dir.path().join(format!("t{i}.img"));
            common::ext4_image(&img, 64 << 20);
            let mnt = dir.path().join(format!("mnt{i}"));
            std::fs::create_dir(&mnt).unwrap();
            (img, mnt)
        })
        .collect();
    // Warm-up: every image once through each variant.
    let variants = [
        "diskmount (library)",
        "syscalls, same flushes",
        "syscalls, claimed under the control lock with PARTSCAN",
    ];
    for v in 0..variants.len() {
        round(&slots, max, 2, v);
    }
    // rate[v][t] and latencies[v][t] over all rounds.
    let mut rate = vec![vec![Vec::new(); THREADS.len()]; variants.len()];
    let mut lat = vec![vec![Vec::new(); THREADS.len()]; variants.len()];
    for _ in 0..rounds {
        for (ti, &t) in THREADS.iter().enumerate() {
            for vi in 0..variants.len() {
                let (r, l) = round(&slots, t, cycles, vi);
                rate[vi][ti].push(r);
                lat[vi][ti].extend(l);
            }
        }
    }
    let mut table = Table::new(
        "concurrency",
        &format!(
            "raw ext4 64 MiB cycles per second by thread count ({cycles} cycles per thread per round, {rounds} rounds, interleaved)"
        ),
        "cycles/s",
        "",
    );
    let mut series: Vec<(String, Vec<Stats>)> = Vec::new();
    for (vi, name) in variants.iter().enumerate() {
        let one = stats(rate[vi][0].clone()).median;
        let mut line = Vec::new();
        for (ti, &t) in THREADS.iter().enumerate() {
            let st = stats(rate[vi][ti].clone());
            let l = stats(lat[vi][ti].clone());
            line.push(st);
            table.rows.push(Row {
                name: format!("{name}, {t} thread{}", if t == 1 { "" } else { "s" }),
                stats: st,
                extra: vec![
                    (
                        "scaling vs 1 thread".into(),
                        format!("{:.2}x", st.median / one),
                    ),
                    ("cycle median ms".into(), common::num(l.median)),
                    ("cycle p90 ms".into(), common::num(l.p90)),
                ],
            });
        }
        series.push((name.to_string(), line));
    }
    table.print();
    let xs: Vec<f64> = THREADS.iter().map(|&t| t as f64).collect();
    common::line_chart(
        "concurrency",
        &format!(
            "Raw image cycles per second by threads ({} cores)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        "threads (each its own image)",
        "cycles per second (median of rounds, p10-p90)",
        &xs,
        &series,
    );
    common::write_results("concurrency", &machine, &[table]);
    common::assert_clean(dir.path());
}

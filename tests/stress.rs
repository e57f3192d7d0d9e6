//! Load: threads and processes attaching, mapping, mounting and tearing
//! down at once, over a mix of raw whole disks (Loop), an MBR logical
//! partition, a GPT partition by label and qcow2 through Fuse; with values
//! dropped at every state and errors injected on purpose. Nothing may fail
//! that was not injected, and nothing may be left: no bound loop device, no
//! mount, no partition node, no qemu process, no temporary directory, no
//! crash record.
//!
//! Own harness: it prints a report (cycles per second, p50/p99/max cycle
//! time per kind, the injected drops and errors, the retries the library
//! logged) and exits non-zero on any unexpected failure or leak.
//!
//! Two phases, each in worker processes that run this binary again
//! (`--worker`), with `TMPDIR` and `DISKMOUNT_RUN_DIR` pointing into the
//! test's directory, so that leftovers of `with_mounted`, the qemu helpers
//! and the crash records are seen:
//!
//! - `one_process`: one process, `THREADS` threads;
//! - `two_processes`: `PROCESSES` processes at once (started together on a
//!   barrier), `THREADS / PROCESSES` threads each: loop devices are claimed
//!   across processes, the race `LOOP_CTL_GET_FREE` + bounded retry exists
//!   for.
//!
//! Each thread has its own images (no "image in use" refusal between
//! threads); sharing is tested on purpose inside a cycle (a second attach of
//! an image the cycle holds must be refused).
//!
//! ```sh
//! sudo -E cargo test --test stress                              # CI size: 8 threads x 100 cycles, 15-25 s
//! sudo -E DISKMOUNT_STRESS_CYCLES=200 cargo test --test stress  # by hand: 8 x 200, 35-55 s
//! ```
//!
//! Knobs: `DISKMOUNT_STRESS_CYCLES` or `--cycles N` (cycles per thread),
//! `DISKMOUNT_STRESS_THREADS` or `--threads N` (threads in all, default 8),
//! `DISKMOUNT_STRESS_PROCESSES` or `--processes N` (of the second phase,
//! default 2), `DISKMOUNT_STRESS_SEED` (repeat a run: the report prints the
//! seed). Other arguments name the phases to run (default both), e.g.
//! `cargo test --test stress -- two_processes --processes 4`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Fixture, run};
use diskmount::{
    Backend, Format, Fuse, Image, Loop, MountOptions, Partition, Step, Unattached, with_mounted,
};

const DEFAULT_CYCLES: usize = 100;
const DEFAULT_THREADS: usize = 8;
const DEFAULT_PROCESSES: usize = 2;

/// What a cycle works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A raw ext4 image, whole disk, Loop.
    Raw,
    /// Logical partition 5 of an MBR image, Loop.
    MbrLogical,
    /// The GPT partition named "data", Loop.
    GptLabel,
    /// A qcow2 image of ext4, Fuse.
    Qcow2,
}

const KINDS: [Kind; 4] = [Kind::Raw, Kind::MbrLogical, Kind::GptLabel, Kind::Qcow2];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw-loop",
            Kind::MbrLogical => "mbr-p5-loop",
            Kind::GptLabel => "gpt-label-loop",
            Kind::Qcow2 => "qcow2-fuse",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.name() == s)
    }

    fn file(self, slot: usize) -> String {
        match self {
            Kind::Raw => format!("raw{slot}.img"),
            Kind::MbrLogical => format!("mbr{slot}.img"),
            Kind::GptLabel => format!("gpt{slot}.img"),
            Kind::Qcow2 => format!("disk{slot}.qcow2"),
        }
    }

    fn format(self) -> Format {
        if self == Kind::Qcow2 {
            Format::Qcow2
        } else {
            Format::Raw
        }
    }

    fn partition(self) -> Partition {
        match self {
            Kind::Raw | Kind::Qcow2 => Partition::Whole,
            Kind::MbrLogical => Partition::Number(5),
            Kind::GptLabel => Partition::Label("data".into()),
        }
    }

    /// A partition that does not exist on this kind's image.
    fn bad_partition(self) -> Partition {
        match self {
            Kind::Raw => Partition::Number(1),
            Kind::MbrLogical => Partition::Number(9),
            Kind::GptLabel => Partition::Label("nope".into()),
            Kind::Qcow2 => Partition::Number(2),
        }
    }

    /// The content of `/id` in the filesystem a cycle mounts.
    fn id(self) -> &'static str {
        match self {
            Kind::Raw | Kind::Qcow2 => "raw",
            Kind::MbrLogical => "p5",
            Kind::GptLabel => "p3",
        }
    }
}

/// What a cycle does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// attach, map, mount, write + read back, close() == Ok.
    Full,
    /// The same through with_mounted.
    FullWithMounted,
    DropUnattached,
    DropAttached,
    DropMapped,
    /// Dropped after writing a file.
    DropMounted,
    /// The with_mounted closure returns Err.
    ErrClosure,
    /// The with_mounted closure panics.
    ErrPanic,
    /// A partition that does not exist.
    ErrPartition,
    /// A second attach of an image this cycle holds.
    ErrInUse,
}

/// Weights (percent) of the actions.
const MIX: [(Action, u64); 10] = [
    (Action::Full, 40),
    (Action::FullWithMounted, 15),
    (Action::DropUnattached, 4),
    (Action::DropAttached, 8),
    (Action::DropMapped, 8),
    (Action::DropMounted, 8),
    (Action::ErrClosure, 4),
    (Action::ErrPanic, 3),
    (Action::ErrPartition, 6),
    (Action::ErrInUse, 4),
];

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Full => "full",
            Action::FullWithMounted => "full-with_mounted",
            Action::DropUnattached => "drop-unattached",
            Action::DropAttached => "drop-attached",
            Action::DropMapped => "drop-mapped",
            Action::DropMounted => "drop-mounted",
            Action::ErrClosure => "err-closure",
            Action::ErrPanic => "err-panic",
            Action::ErrPartition => "err-partition",
            Action::ErrInUse => "err-in-use",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        MIX.iter().map(|(a, _)| *a).find(|a| a.name() == s)
    }

    fn is_full(self) -> bool {
        matches!(self, Action::Full | Action::FullWithMounted)
    }
}

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn action(&mut self) -> Action {
        let mut r = self.below(100);
        for (a, w) in MIX {
            if r < w {
                return a;
            }
            r -= w;
        }
        unreachable!("weights add up to 100")
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

// ---------------------------------------------------------------- worker

/// Counts the retries the library logs (`warn!` "... retrying ...") and
/// keeps every other warning: a drop whose teardown had trouble logs one,
/// and that is a failure here.
struct Counter {
    attach_retries: AtomicU64,
    unmount_retries: AtomicU64,
    /// The first few attach retry messages, for the report.
    samples: Mutex<Vec<String>>,
    other: Mutex<Vec<String>>,
}

static COUNTER: Counter = Counter {
    attach_retries: AtomicU64::new(0),
    unmount_retries: AtomicU64::new(0),
    samples: Mutex::new(Vec::new()),
    other: Mutex::new(Vec::new()),
};

impl log::Log for Counter {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        if msg.contains("retrying") && msg.starts_with("unmount") {
            self.unmount_retries.fetch_add(1, Ordering::Relaxed);
        } else if msg.contains("retrying") {
            self.attach_retries.fetch_add(1, Ordering::Relaxed);
            let mut samples = self.samples.lock().unwrap();
            if samples.len() < 3 {
                samples.push(msg);
            }
        } else {
            eprintln!("stress worker: {}: {msg}", record.level());
            self.other.lock().unwrap().push(msg);
        }
    }

    fn flush(&self) {}
}

/// One finished cycle, as the worker reports it.
struct Outcome {
    kind: Kind,
    action: Action,
    micros: u128,
    unexpected: Option<String>,
}

type CycleResult = Result<(), String>;

fn check_id(dir: &Path, kind: Kind) -> CycleResult {
    let id = std::fs::read_to_string(dir.join("id")).map_err(|e| format!("read id: {e}"))?;
    if id != kind.id() {
        return Err(format!("id is {id:?}, expected {:?}", kind.id()));
    }
    Ok(())
}

fn write_and_read_back(dir: &Path, name: &str, token: &str) -> CycleResult {
    let p = dir.join(name);
    std::fs::write(&p, token).map_err(|e| format!("write {}: {e}", p.display()))?;
    let back = std::fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
    if back != token {
        return Err(format!("read back {back:?}, wrote {token:?}"));
    }
    Ok(())
}

fn expect_err<T>(what: &str, r: diskmount::Result<T>) -> Result<diskmount::Error, String> {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, expected an error")),
        Err(e) => Ok(e),
    }
}

/// One cycle of `action` on `image` with backend `B`.
fn cycle<B: Backend>(
    kind: Kind,
    action: Action,
    image: &Image,
    mnt: &Path,
    name: &str,
    token: &str,
) -> CycleResult {
    let e = |what: &'static str| move |err: diskmount::Error| format!("{what}: {err}");
    let opts = MountOptions::default();
    let part = kind.partition();
    let attach = || Unattached::<B>::new(image.clone()).attach();
    match action {
        Action::Full => {
            let m = attach()
                .map_err(e("attach"))?
                .map(part)
                .map_err(e("map"))?
                .mount(mnt, &opts)
                .map_err(e("mount"))?;
            check_id(m.path(), kind)?;
            write_and_read_back(m.path(), name, token)?;
            m.close().map_err(e("close"))
        }
        Action::FullWithMounted => with_mounted(image, part, |dir| {
            check_id(dir, kind)?;
            write_and_read_back(dir, name, token)
        })
        .map_err(e("with_mounted"))?,
        Action::DropUnattached => {
            drop(Unattached::<B>::new(image.clone()));
            Ok(())
        }
        Action::DropAttached => {
            let a = attach().map_err(e("attach"))?;
            if !a.device().exists() {
                return Err(format!("{} does not exist", a.device().display()));
            }
            drop(a);
            Ok(())
        }
        Action::DropMapped => {
            let m = attach().map_err(e("attach"))?.map(part).map_err(e("map"))?;
            drop(m);
            Ok(())
        }
        Action::DropMounted => {
            let m = attach()
                .map_err(e("attach"))?
                .map(part)
                .map_err(e("map"))?
                .mount(mnt, &opts)
                .map_err(e("mount"))?;
            check_id(m.path(), kind)?;
            std::fs::write(m.path().join("dropped"), token).map_err(|e| e.to_string())?;
            drop(m);
            Ok(())
        }
        Action::ErrClosure => match with_mounted(image, part, |_| Err::<(), _>("injected error")) {
            Ok(Err("injected error")) => Ok(()),
            other => Err(format!(
                "with_mounted gave {other:?}, expected Ok(Err(injected))"
            )),
        },
        Action::ErrPanic => {
            let r = catch_unwind(AssertUnwindSafe(|| {
                with_mounted(image, part, |_| -> () { panic!("injected panic") })
            }));
            match r {
                Err(p) if p.downcast_ref::<&str>() == Some(&"injected panic") => Ok(()),
                Err(_) => Err("with_mounted panicked with another payload".into()),
                Ok(r) => Err(format!("with_mounted gave {r:?}, expected the panic")),
            }
        }
        Action::ErrPartition => {
            let a = attach().map_err(e("attach"))?;
            let dev = a.device().to_path_buf();
            let err = expect_err("map of a missing partition", a.map(kind.bad_partition()))?;
            if err.step() != Some(Step::Map) || err.path() != Some(dev.as_path()) {
                return Err(format!(
                    "map of a missing partition: expected a map error naming {}, got {err}",
                    dev.display()
                ));
            }
            Ok(())
        }
        Action::ErrInUse => {
            let a = attach().map_err(e("attach"))?;
            let err = expect_err("second attach of an image in use", attach())?;
            let text = err.to_string();
            // Loop refuses by its flock/sysfs check; Fuse by qemu's image
            // lock.
            let expected = match kind {
                Kind::Qcow2 => text.contains("lock"),
                _ => text.contains("already in use"),
            };
            if err.step() != Some(Step::Attach) || !expected {
                return Err(format!("second attach: unexpected error {text}"));
            }
            a.close()
                .map_err(e("close after the refused second attach"))
        }
    }
}

/// Mounts each image of `slot` read-only and checks every file the full
/// cycles wrote is there with its content.
fn verify_written(
    dir: &Path,
    slot: usize,
    written: &BTreeMap<(Kind, String), String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for kind in KINDS {
        let image = Image::file(dir.join(kind.file(slot)), kind.format())
            .unwrap()
            .read_only(true);
        let r = with_mounted(&image, kind.partition(), |root| {
            let mut bad = Vec::new();
            for ((k, name), token) in written {
                if *k != kind {
                    continue;
                }
                match std::fs::read_to_string(root.join(name)) {
                    Ok(t) if t == *token => {}
                    other => bad.push(format!("{}: {name}: {other:?}", kind.name())),
                }
            }
            bad
        });
        match r {
            Ok(bad) => problems.extend(bad),
            Err(e) => problems.push(format!("{}: verify: {e}", kind.name())),
        }
    }
    problems
}

fn worker(dir: &Path, first_slot: usize, threads: usize, cycles: usize, seed: u64) -> i32 {
    common::run_dir_from_env();
    log::set_logger(&COUNTER).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info.payload().downcast_ref::<&str>() == Some(&"injected panic");
        if !injected {
            default_hook(info);
        }
    }));
    // The barrier: start together with the other workers.
    let go = dir.join("go");
    std::fs::write(dir.join(format!("ready-{first_slot}")), "").unwrap();
    let wait = Instant::now();
    while !go.exists() {
        assert!(wait.elapsed() < Duration::from_secs(60), "no go signal");
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = now_micros();
    let pid = std::process::id();
    let outcomes = Mutex::new(Vec::new());
    let verify_problems = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..threads {
            let slot = first_slot + t;
            let (outcomes, verify_problems) = (&outcomes, &verify_problems);
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ (slot as u64 + 1).wrapping_mul(0x1000_0000_01B3));
                let mnt = dir.join(format!("mnt{slot}"));
                std::fs::create_dir_all(&mnt).unwrap();
                let images: Vec<Image> = KINDS
                    .iter()
                    .map(|k| Image::file(dir.join(k.file(slot)), k.format()).unwrap())
                    .collect();
                let mut written = BTreeMap::new();
                for c in 0..cycles {
                    let ki = rng.below(KINDS.len() as u64) as usize;
                    let (kind, action) = (KINDS[ki], rng.action());
                    let name = format!("f-{pid}-{slot}-{c}");
                    let token = format!("{:016x}", rng.next());
                    let began = Instant::now();
                    let r = catch_unwind(AssertUnwindSafe(|| match kind {
                        Kind::Qcow2 => {
                            cycle::<Fuse>(kind, action, &images[ki], &mnt, &name, &token)
                        }
                        _ => cycle::<Loop>(kind, action, &images[ki], &mnt, &name, &token),
                    }));
                    let micros = began.elapsed().as_micros();
                    let unexpected = match r {
                        Ok(Ok(())) => None,
                        Ok(Err(msg)) => Some(msg),
                        Err(p) => Some(format!(
                            "panicked: {}",
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        )),
                    };
                    if unexpected.is_none() && action.is_full() {
                        written.insert((kind, name), token);
                    }
                    let failed = unexpected.is_some();
                    outcomes.lock().unwrap().push(Outcome {
                        kind,
                        action,
                        micros,
                        unexpected: unexpected.map(|m| format!("slot {slot} cycle {c}: {m}")),
                    });
                    if failed {
                        break;
                    }
                }
                let problems = verify_written(dir, slot, &written);
                verify_problems.lock().unwrap().extend(problems);
            });
        }
    });
    let end = now_micros();
    let mut failed = false;
    for o in outcomes.into_inner().unwrap() {
        println!("cycle {} {} {}", o.kind.name(), o.action.name(), o.micros);
        if let Some(m) = o.unexpected {
            println!("unexpected {} {}: {m}", o.kind.name(), o.action.name());
            failed = true;
        }
    }
    for p in verify_problems.into_inner().unwrap() {
        println!("unexpected verify: {p}");
        failed = true;
    }
    for w in COUNTER.other.lock().unwrap().iter() {
        println!("unexpected warning: {w}");
        failed = true;
    }
    for m in COUNTER.samples.lock().unwrap().iter() {
        println!("retry-sample {m}");
    }
    println!(
        "retries {} {}",
        COUNTER.attach_retries.load(Ordering::Relaxed),
        COUNTER.unmount_retries.load(Ordering::Relaxed)
    );
    println!("span {start} {end}");
    i32::from(failed)
}

// ---------------------------------------------------------------- orchestrator

/// What the workers of one phase reported.
#[derive(Default)]
struct Report {
    /// (kind, action) -> cycle times in µs.
    times: BTreeMap<(Kind, Action), Vec<u128>>,
    unexpected: Vec<String>,
    retry_samples: Vec<String>,
    attach_retries: u64,
    unmount_retries: u64,
    spans: Vec<(u128, u128)>,
}

impl Report {
    fn parse(&mut self, out: &str) {
        for line in out.lines() {
            let w: Vec<&str> = line.splitn(4, ' ').collect();
            match w.as_slice() {
                ["cycle", k, a, us] => {
                    let key = (Kind::parse(k).unwrap(), Action::parse(a).unwrap());
                    self.times.entry(key).or_default().push(us.parse().unwrap());
                }
                ["unexpected", ..] => self.unexpected.push(line.to_string()),
                ["retry-sample", ..] => self.retry_samples.push(line[13..].to_string()),
                ["retries", a, u] => {
                    self.attach_retries += a.parse::<u64>().unwrap();
                    self.unmount_retries += u.parse::<u64>().unwrap();
                }
                ["span", s, e] => self.spans.push((s.parse().unwrap(), e.parse().unwrap())),
                _ => {}
            }
        }
    }
}

fn pct(sorted: &[u128], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = (sorted.len() * p).div_ceil(100).max(1) - 1;
    sorted[i] as f64 / 1000.0
}

fn print_report(
    phase: &str,
    processes: usize,
    threads: usize,
    cycles: usize,
    wall: Duration,
    r: &Report,
) {
    let total: usize = r.times.values().map(Vec::len).sum();
    println!(
        "stress {phase}: {processes} process(es) x {threads} thread(s) x {cycles} cycles = {total} cycles in {:.1} s: {:.1} cycles/s",
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64()
    );
    if r.spans.len() > 1 {
        let start = r.spans.iter().map(|s| s.0).max().unwrap();
        let end = r.spans.iter().map(|s| s.1).min().unwrap();
        println!(
            "  processes overlapped for {:.1} s (of {:.1} s)",
            end.saturating_sub(start) as f64 / 1e6,
            (r.spans.iter().map(|s| s.1).max().unwrap()
                - r.spans.iter().map(|s| s.0).min().unwrap()) as f64
                / 1e6
        );
    }
    println!(
        "  {:<15} {:>6} {:>9} {:>9} {:>9}   {:>6} {:>9} {:>9}",
        "kind", "full", "p50 ms", "p99 ms", "max ms", "all", "p50 ms", "max ms"
    );
    for kind in KINDS {
        let mut full: Vec<u128> = Vec::new();
        let mut all: Vec<u128> = Vec::new();
        for ((k, a), t) in &r.times {
            if *k == kind {
                all.extend(t);
                if a.is_full() {
                    full.extend(t);
                }
            }
        }
        full.sort_unstable();
        all.sort_unstable();
        println!(
            "  {:<15} {:>6} {:>9.1} {:>9.1} {:>9.1}   {:>6} {:>9.1} {:>9.1}",
            kind.name(),
            full.len(),
            pct(&full, 50),
            pct(&full, 99),
            pct(&full, 100),
            all.len(),
            pct(&all, 50),
            pct(&all, 100)
        );
    }
    let actions: Vec<String> = MIX
        .iter()
        .filter_map(|(a, _)| {
            let mut t: Vec<u128> = r
                .times
                .iter()
                .filter(|((_, x), _)| x == a)
                .flat_map(|(_, t)| t.iter().copied())
                .collect();
            t.sort_unstable();
            (!t.is_empty()).then(|| format!("{} {:.1}/{:.1}", a.name(), pct(&t, 50), pct(&t, 100)))
        })
        .collect();
    println!("  per action, p50/max ms: {}", actions.join(", "));
    let count = |a: Action| -> usize {
        r.times
            .iter()
            .filter(|((_, x), _)| *x == a)
            .map(|(_, t)| t.len())
            .sum()
    };
    let list = |actions: &[Action]| -> String {
        actions
            .iter()
            .map(|a| format!("{} {}", a.name(), count(*a)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  full cycles: {}",
        list(&[Action::Full, Action::FullWithMounted])
    );
    println!(
        "  injected drops: {}",
        list(&[
            Action::DropUnattached,
            Action::DropAttached,
            Action::DropMapped,
            Action::DropMounted
        ])
    );
    println!(
        "  injected errors: {}",
        list(&[
            Action::ErrClosure,
            Action::ErrPanic,
            Action::ErrPartition,
            Action::ErrInUse
        ])
    );
    println!(
        "  retries logged: attach or detach {}, unmount {}",
        r.attach_retries, r.unmount_retries
    );
    for m in &r.retry_samples {
        println!("    e.g. {m}");
    }
    println!("  unexpected failures: {}", r.unexpected.len());
    for u in &r.unexpected {
        println!("    {u}");
    }
}

/// Copies a (sparse) template.
fn copy_sparse(from: &Path, to: &Path) {
    run(Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to));
}

/// Everything a phase may have left, beyond Fixture::leaks: temporary
/// directories (with_mounted's mount points, the qemu helpers' private
/// directories) and crash records.
fn leftovers(tmp: &Path, records: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for d in [tmp, records] {
        if let Ok(entries) = std::fs::read_dir(d) {
            for e in entries.flatten() {
                left.push(format!(
                    "left in {}: {}",
                    d.display(),
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    left
}

fn run_phase(
    fx: &Fixture,
    seed: u64,
    phase: &str,
    processes: usize,
    threads: usize,
    cycles: usize,
) -> bool {
    let dir = fx.path();
    let (tmp, records) = (dir.join("tmp"), dir.join("records"));
    std::fs::create_dir_all(&tmp).unwrap();
    let _ = std::fs::remove_file(dir.join("go"));
    let per = threads / processes;
    let began = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|p| {
            let _ = std::fs::remove_file(dir.join(format!("ready-{}", p * per)));
            Command::new(std::env::current_exe().unwrap())
                .arg("--worker")
                .env(
                    "DISKMOUNT_STRESS_WORKER",
                    format!(
                        "{} {} {} {} {}",
                        dir.display(),
                        p * per,
                        per,
                        cycles,
                        seed ^ ((p as u64) << 32)
                    ),
                )
                .env("TMPDIR", &tmp)
                .env("DISKMOUNT_RUN_DIR", &records)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let wait = Instant::now();
    while !(0..processes).all(|p| dir.join(format!("ready-{}", p * per)).exists()) {
        assert!(
            wait.elapsed() < Duration::from_secs(60),
            "workers did not start"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::write(dir.join("go"), "").unwrap();
    let outputs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = children
            .into_iter()
            .map(|mut c| {
                s.spawn(move || {
                    let mut out = String::new();
                    for line in BufReader::new(c.stdout.take().unwrap()).lines() {
                        out.push_str(&line.unwrap());
                        out.push('\n');
                    }
                    (c.wait().unwrap(), out)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = began.elapsed();
    let mut report = Report::default();
    let mut ok = true;
    for (p, (status, out)) in outputs.iter().enumerate() {
        report.parse(out);
        if !status.success() {
            println!("stress {phase}: worker {p} {status}");
            ok = false;
        }
    }
    print_report(phase, processes, per, cycles, wall, &report);
    ok &= report.unexpected.is_empty();
    let mut leaks = fx.leaks();
    leaks.extend(leftovers(&tmp, &records));
    println!("  leaks: {}", leaks.len());
    for l in &leaks {
        println!("    {l}");
    }
    ok && leaks.is_empty()
}

fn main() {
    if std::env::args().any(|a| a == "--worker") {
        let spec = std::env::var("DISKMOUNT_STRESS_WORKER").expect("worker spec");
        let w: Vec<&str> = spec.rsplitn(5, ' ').collect();
        let [seed, cycles, threads, first, dir] = w.as_slice() else {
            panic!("bad worker spec {spec}")
        };
        std::process::exit(worker(
            Path::new(dir),
            first.parse().unwrap(),
            threads.parse().unwrap(),
            cycles.parse().unwrap(),
            seed.parse().unwrap(),
        ));
    }
    // `--cycles N`, `--threads N`, `--processes N` override the
    // environment; other words select phases; other flags (cargo's) are
    // ignored.
    let mut filter = Vec::new();
    let mut given = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cycles" | "--threads" | "--processes" => {
                let v = args.next().unwrap_or_default();
                let n: usize = v
                    .parse()
                    .unwrap_or_else(|_| panic!("{a} {v}: not a number"));
                given.insert(a, n);
            }
            f if f.starts_with('-') => {}
            word => filter.push(word.to_string()),
        }
    }
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let knob = |flag: &str, var: &str, default: usize| {
        given
            .get(flag)
            .copied()
            .unwrap_or_else(|| env_usize(var, default))
    };
    let cycles = knob("--cycles", "DISKMOUNT_STRESS_CYCLES", DEFAULT_CYCLES);
    let threads = knob("--threads", "DISKMOUNT_STRESS_THREADS", DEFAULT_THREADS);
    let processes = knob(
        "--processes",
        "DISKMOUNT_STRESS_PROCESSES",
        DEFAULT_PROCESSES,
    );
    assert!(
        processes >= 1 && threads >= processes && threads.is_multiple_of(processes),
        "DISKMOUNT_STRESS_THREADS ({threads}) must be a multiple of DISKMOUNT_STRESS_PROCESSES ({processes})"
    );
    let seed = match std::env::var("DISKMOUNT_STRESS_SEED") {
        Ok(s) => s.parse().expect("DISKMOUNT_STRESS_SEED: a number"),
        Err(_) => (now_micros() as u64) ^ u64::from(std::process::id()),
    };
    let phases: Vec<(&str, usize)> = [("one_process", 1), ("two_processes", processes)]
        .into_iter()
        .filter(|(n, _)| wanted(n))
        .collect();
    if phases.is_empty() {
        println!("stress: no phase matches {filter:?} (phases: one_process, two_processes)");
        return;
    }
    println!("stress: seed {seed} (DISKMOUNT_STRESS_SEED={seed} repeats this run)");
    let began = Instant::now();
    let mut fx = Fixture::new();
    let dir = fx.path().to_path_buf();
    // Templates, then a copy of each per thread.
    let raw = fx.ext4("raw.tpl", &[("id", "raw")]);
    let mbr = fx.mbr_image("mbr.tpl");
    let gpt = fx.gpt_image("gpt.tpl", 512);
    let qcow2 = dir.join("disk.tpl");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    for slot in 0..threads {
        for (kind, tpl) in [
            (Kind::Raw, &raw),
            (Kind::MbrLogical, &mbr),
            (Kind::GptLabel, &gpt),
            (Kind::Qcow2, &qcow2),
        ] {
            copy_sparse(tpl, &dir.join(kind.file(slot)));
        }
    }
    println!(
        "stress: images ready in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let mut ok = true;
    for (phase, p) in phases {
        ok &= run_phase(&fx, seed, phase, p, threads, cycles);
    }
    if ok {
        fx.assert_clean();
    }
    println!(
        "stress: {} in {:.1} s",
        if ok { "ok" } else { "FAILED" },
        began.elapsed().as_secs_f64()
    );
    if !ok {
        // The fixture's own check panics with the leaks it finds; the
        // failure is reported already, and the exit status says so.
        let _ = catch_unwind(AssertUnwindSafe(|| fx.assert_clean()));
        drop(fx);
        std::process::exit(1);
    }
}

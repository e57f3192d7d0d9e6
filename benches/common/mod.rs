//! Shared by the benchmarks: the machine description, medians and spread,
//! interleaved comparisons, the results file (JSON under
//! `target/bench-results/`) and SVG charts (under `docs/charts/`), written
//! by hand (a few lines of SVG need no plotting crate).
#![allow(dead_code)]

pub mod floor;
#[path = "../../tests/common/system.rs"]
pub mod system;

#[allow(unused_imports)]
pub use system::{ext4_image, run};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The value after `--name` on the command line, parsed.
pub fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::args().skip_while(|a| a != name).nth(1).map(|n| {
        n.parse()
            .unwrap_or_else(|_| panic!("{name}: bad value {n}"))
    })
}

/// Whether `--name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Fails unless root. Also applies `DISKMOUNT_RUN_DIR` (empty: records
/// off) the way the command line does: the library never reads it.
pub fn require_root(bench: &str) {
    system::require_root_for(&format!("the {bench} benchmark"));
    match std::env::var_os("DISKMOUNT_RUN_DIR") {
        Some(d) if d.is_empty() => diskmount::RunDir::set_default(diskmount::RunDir::off()),
        Some(d) => diskmount::RunDir::set_default(diskmount::RunDir::new(d)),
        None => {}
    }
}

/// Cores, CPU, kernel and load, one line each (printed and recorded).
pub fn machine() -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = read("/proc/meminfo")
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or("?".into(), |k| format!("{} GiB", k >> 20));
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let load = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        ("cores".into(), cores.to_string()),
        ("cpu".into(), cpu),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
        ("load average at start".into(), load),
    ]
}

/// Prints the machine description.
pub fn print_machine(bench: &str) -> Vec<(String, String)> {
    let m = machine();
    println!(
        "{bench} benchmark on {}",
        m.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    m
}

/// Median and spread of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub n: usize,
}

/// Median, 10th and 90th percentile (nearest rank) of `values`.
pub fn stats(mut values: Vec<f64>) -> Stats {
    assert!(!values.is_empty());
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
        n: values.len(),
    }
}

/// One row of a result table.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub stats: Stats,
    /// Extra columns (name, value), printed after the spread.
    pub extra: Vec<(String, String)>,
}

/// One comparison: rows with medians in `unit`, the ratio of each to the
/// first row.
#[derive(Clone, Debug)]
pub struct Table {
    pub id: String,
    pub title: String,
    pub unit: String,
    pub ratio: String,
    pub rows: Vec<Row>,
}

impl Table {
    pub fn new(id: &str, title: &str, unit: &str, ratio: &str) -> Table {
        Table {
            id: id.into(),
            title: title.into(),
            unit: unit.into(),
            ratio: ratio.into(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, name: &str, stats: Stats) {
        self.rows.push(Row {
            name: name.into(),
            stats,
            extra: Vec::new(),
        });
    }

    /// Prints the table as markdown.
    pub fn print(&self) {
        let base = self.rows.first().map_or(1.0, |r| r.stats.median);
        let extra: Vec<&str> = self
            .rows
            .first()
            .map(|r| r.extra.iter().map(|(k, _)| k.as_str()).collect())
            .unwrap_or_default();
        println!("\n{}", self.title);
        let u = &self.unit;
        let mut head = format!("| variant | median {u} | p10 {u} | p90 {u} | n |");
        if !self.ratio.is_empty() {
            head += &format!(" {} |", self.ratio);
        }
        for e in &extra {
            head += &format!(" {e} |");
        }
        println!("{head}");
        println!("{}", "|---".repeat(head.matches('|').count() - 1) + "|");
        for r in &self.rows {
            let mut line = format!(
                "| {} | {} | {} | {} | {} |",
                r.name,
                num(r.stats.median),
                num(r.stats.p10),
                num(r.stats.p90),
                r.stats.n
            );
            if !self.ratio.is_empty() {
                line += &format!(" {:.2}x |", r.stats.median / base);
            }
            for (_, v) in &r.extra {
                line += &format!(" {v} |");
            }
            println!("{line}");
        }
    }
}

/// A number with three significant decimals for small values.
pub fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A variant of an interleaved comparison: a name and one run of it.
pub type Variant<'a> = (String, Box<dyn FnMut() + 'a>);

/// Warms each variant up, then runs them in turn, one run each per round,
/// so that drift of the machine hits all of them alike; returns the table
/// of wall times in milliseconds.
pub fn compare(
    id: &str,
    title: &str,
    variants: &mut [Variant],
    iterations: usize,
    warmup: usize,
    ratio: &str,
) -> Table {
    for (_, f) in variants.iter_mut() {
        for _ in 0..warmup {
            f();
        }
    }
    let mut times: Vec<Vec<f64>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..iterations {
        for (i, (_, f)) in variants.iter_mut().enumerate() {
            let t = Instant::now();
            f();
            times[i].push(ms(t.elapsed()));
        }
    }
    let mut table = Table::new(id, title, "ms", ratio);
    for ((name, _), t) in variants.iter().zip(times) {
        table.push(name, stats(t));
    }
    table.print();
    table
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The repository (where `docs/` is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$CARGO_TARGET_DIR/bench-results`, else `target/bench-results`.
pub fn results_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target.join("bench-results")
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `<results_dir>/<bench>.json`: the machine, the command line and
/// every table; returns the path.
pub fn write_results(bench: &str, machine: &[(String, String)], tables: &[Table]) -> PathBuf {
    let mut s = String::from("{\n");
    let _ = writeln!(s, "  \"bench\": {},", json_str(bench));
    let args: Vec<String> = std::env::args().skip(1).map(|a| json_str(&a)).collect();
    let _ = writeln!(s, "  \"args\": [{}],", args.join(", "));
    let m: Vec<String> = machine
        .iter()
        .map(|(k, v)| format!("{}: {}", json_str(k), json_str(v)))
        .collect();
    let _ = writeln!(s, "  \"machine\": {{{}}},", m.join(", "));
    s.push_str("  \"tables\": [\n");
    for (i, t) in tables.iter().enumerate() {
        let base = t.rows.first().map_or(1.0, |r| r.stats.median);
        let _ = writeln!(
            s,
            "    {{\"id\": {}, \"title\": {}, \"unit\": {}, \"rows\": [",
            json_str(&t.id),
            json_str(&t.title),
            json_str(&t.unit)
        );
        for (j, r) in t.rows.iter().enumerate() {
            let extra: Vec<String> = r
                .extra
                .iter()
                .map(|(k, v)| format!(", {}: {}", json_str(k), json_str(v)))
                .collect();
            let _ = writeln!(
                s,
                "      {{\"name\": {}, \"median\": {}, \"p10\": {}, \"p90\": {}, \"n\": {}, \"ratio\": {:.4}{}}}{}",
                json_str(&r.name),
                r.stats.median,
                r.stats.p10,
                r.stats.p90,
                r.stats.n,
                r.stats.median / base,
                extra.concat(),
                if j + 1 < t.rows.len() { "," } else { "" }
            );
        }
        let _ = writeln!(s, "    ]}}{}", if i + 1 < tables.len() { "," } else { "" });
    }
    s.push_str("  ]\n}\n");
    let dir = results_dir();
    std::fs::create_dir_all(&dir).expect("create results directory");
    let path = dir.join(format!("{bench}.json"));
    std::fs::write(&path, s).expect("write results");
    println!("\nresults: {}", path.display());
    path
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart of a table's medians with p10-p90 whiskers,
/// written to `docs/charts/<name>.svg`; returns the path.
pub fn bar_chart(name: &str, table: &Table, note: &str) -> PathBuf {
    let rows = &table.rows;
    let longest = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(10);
    let label_w = (longest as f64 * 6.6 + 20.0).max(160.0);
    let plot_w = 460.0;
    let bar_h = 22.0;
    let gap = 10.0;
    let top = 48.0;
    let height = top + rows.len() as f64 * (bar_h + gap) + 56.0;
    let width = label_w + plot_w + 90.0;
    let max = rows
        .iter()
        .map(|r| r.stats.p90.max(r.stats.median))
        .fold(0.0, f64::max)
        .max(1e-9);
    let scale = nice_max(max);
    let x = |v: f64| label_w + v / scale * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        xml(&table.title)
    );
    // Grid: five ticks.
    for i in 0..=5 {
        let v = scale * i as f64 / 5.0;
        let gx = x(v);
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            height - 40.0,
            height - 26.0,
            num_short(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{} (median, whiskers p10-p90){}</text>"##,
        label_w + plot_w / 2.0,
        height - 8.0,
        xml(&table.unit),
        if note.is_empty() {
            String::new()
        } else {
            format!("; {}", xml(note))
        }
    );
    let colors = [
        "#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#9b2c2c",
    ];
    for (i, r) in rows.iter().enumerate() {
        let y = top + 4.0 + i as f64 * (bar_h + gap);
        let c = colors[i % colors.len()];
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + bar_h * 0.7,
            xml(&r.name)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{label_w}" y="{y:.1}" width="{:.1}" height="{bar_h}" fill="{c}"/>"#,
            (x(r.stats.median) - label_w).max(1.0)
        );
        let (lo, hi) = (x(r.stats.p10), x(r.stats.p90));
        let mid = y + bar_h / 2.0;
        let _ = writeln!(
            s,
            r#"<path d="M{lo:.1} {mid:.1}H{hi:.1}M{lo:.1} {:.1}V{:.1}M{hi:.1} {:.1}V{:.1}" stroke="black" fill="none"/>"#,
            mid - 5.0,
            mid + 5.0,
            mid - 5.0,
            mid + 5.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            hi.max(x(r.stats.median)) + 6.0,
            y + bar_h * 0.7,
            num(r.stats.median)
        );
    }
    s.push_str("</svg>\n");
    write_chart(name, &s)
}

fn write_chart(name: &str, svg: &str) -> PathBuf {
    let dir = repo().join("docs/charts");
    std::fs::create_dir_all(&dir).expect("create docs/charts");
    let path = dir.join(format!("{name}.svg"));
    std::fs::write(&path, svg).expect("write chart");
    println!("chart: {}", path.display());
    path
}

/// A line chart: one line per series over the same x values (with p10-p90
/// whiskers), to `docs/charts/<name>.svg`.
pub fn line_chart(
    name: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: &[f64],
    series: &[(String, Vec<Stats>)],
) -> PathBuf {
    let (left, right, top, bottom) = (70.0, 200.0, 40.0, 50.0);
    let (pw, ph) = (480.0, 300.0);
    let (width, height) = (left + pw + right, top + ph + bottom);
    let ymax = nice_max(
        series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|s| s.p90.max(s.median)))
            .fold(0.0, f64::max)
            .max(1e-9),
    );
    let xmax = xs.iter().cloned().fold(1.0, f64::max);
    // x on a log2 scale (1, 2, 4, 8 threads).
    let px = |v: f64| left + v.log2() / xmax.log2().max(1.0) * pw;
    let py = |v: f64| top + ph - v / ymax * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        xml(title)
    );
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            left + pw,
            left - 6.0,
            py(v) + 4.0,
            num_short(v),
            y = py(v)
        );
    }
    for &xv in xs {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{xv}</text>"##,
            top + ph,
            top + ph + 16.0,
            x = px(xv)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle" fill="#555">{}</text>"##,
        left + pw / 2.0,
        height - 10.0,
        xml(x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        xml(y_label)
    );
    let colors = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1"];
    for (i, (label, values)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = xs
            .iter()
            .zip(values)
            .map(|(&xv, st)| format!("{:.1},{:.1}", px(xv), py(st.median)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            pts.join(" ")
        );
        for (&xv, st) in xs.iter().zip(values) {
            let x = px(xv);
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{:.1}" r="3" fill="{c}"/><path d="M{x:.1} {:.1}V{:.1}" stroke="{c}"/>"#,
                py(st.median),
                py(st.p10),
                py(st.p90)
            );
        }
        let ly = top + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="14" height="4" fill="{c}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            left + pw + 12.0,
            ly - 4.0,
            left + pw + 30.0,
            ly + 1.0,
            xml(label)
        );
    }
    s.push_str("</svg>\n");
    write_chart(name, &s)
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_max(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn num_short(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Panics if the benchmark left a loop device, mount or qemu process that
/// refers to a file under `dir` (the same check as the tests').
pub fn assert_clean(dir: &Path) {
    let left = system::leaks_under(dir);
    assert!(left.is_empty(), "the benchmark left: {left:?}");
}

/// The raw image `img` attached by a loop device, whole disk, mounted on
/// `mnt` with the default options: the library's side of most comparisons.
pub fn mount_raw(img: &Path, mnt: &Path) -> diskmount::Mounted<diskmount::Loop> {
    use diskmount::{Format, Image, Loop, MountOptions, Partition, Unattached};
    Unattached::<Loop>::new(Image::file(img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(mnt, &MountOptions::default())
        .unwrap()
}

/// One full library cycle of the raw image `img` on `mnt`: attach, map,
/// mount, then `close()` (unmount, unmap, detach), every error a panic.
pub fn library_cycle(img: &Path, mnt: &Path) {
    mount_raw(img, mnt).close().unwrap();
}

/// Opens `path` read-write (`O_CLOEXEC`), for the hand-written floors.
pub fn open_rw(path: impl AsRef<Path>) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(path)
        .unwrap()
}

/// Runs `cmd`; its wall time in ms, or its failure with the end of stderr.
pub fn timed(cmd: &mut std::process::Command) -> Result<f64, String> {
    let t = Instant::now();
    let out = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let ms = ms(t.elapsed());
    if out.status.success() {
        Ok(ms)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        Err(format!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}

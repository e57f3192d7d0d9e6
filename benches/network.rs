//! Network images (issue #16), each job done several ways side by side,
//! interleaved run by run:
//!
//! 1. **RBD**: a 64 MiB ext4 raw image in the tests' single-node Ceph
//!    cluster (tests/common/ceph.rs: ceph-mon and one ceph-osd on memstore,
//!    pinned fsid and keys, on 127.0.0.1; in the kernel VM lane on the
//!    guest's own loopback), started for the run and stopped after it. Two
//!    jobs: a full cycle (attach, map, mount, unmount, unmap, detach) and
//!    reading one file (the same cycle with a cold read of `hello.txt`
//!    after the mount; by hand, `cat`). The ways:
//!    - the library: `Fuse` (librbd in qemu-storage-daemon, a FUSE export
//!      and a loop device: any kernel), `Rbd` (krbd) and `Nbd` (librbd in
//!      qemu-nbd) where the kernel has rbd or nbd (the kernel VM lane);
//!    - by hand: `rbd map` + `mount` + `umount` + `rbd unmap` (krbd),
//!      `rbd-nbd map` + ... + `rbd-nbd unmap` where nbd and the `rbd-nbd`
//!      package exist, and everywhere the Fuse chain:
//!
//!      ```sh
//!      qemu-storage-daemon --object secret,id=sec0,format=base64,file=KEYFILE \
//!          --blockdev driver=rbd,node-name=disk0,pool=P,image=I,conf=CONF,user=U,key-secret=sec0 \
//!          --export type=fuse,id=export0,node-name=disk0,mountpoint=EXPORT,writable=on \
//!          --daemonize --pidfile PIDFILE
//!      dev=$(losetup --find --show EXPORT); mount $dev MNT; cat MNT/hello.txt
//!      umount MNT; losetup --detach $dev; kill $(cat PIDFILE)   # and wait for it
//!      ```
//!    - for the read, also `diskmount copy-out URL /hello.txt DEST` (the
//!      command, backend Auto: krbd, then nbd, then Fuse).
//!
//!    Every way uses `client.diskmount` with its key from a file (the
//!    keyring, or the bare key for qemu's secret object).
//! 2. **HTTP**: `diskmount inspect http://127.0.0.1:PORT/NAME.qcow2` of a
//!    10 GiB sparse qcow2 (empty, and with a GPT, a 64 MiB ext4 partition
//!    and 256 MiB of random data in a second one) served by the tests' Range-capable server
//!    (tests/common/servers.rs), against `qemu-img info` of the same URL:
//!    wall time, and the body bytes the server sent per run.
//!
//! Run as root: `cargo bench --bench network` (`-- --iterations N`, default
//! 10; `--only rbd|http`). In the kernel VM lane (krbd, nbd):
//! `cargo bench --bench network --no-run`, then
//! `tests/vm/run -- target/release/deps/network-HASH --only rbd --iterations 3`.
//! Prints the tables, writes `target/bench-results/network.json` (thrown
//! away with the guest's overlay in the lane: keep the printed tables).

mod common;

#[path = "../tests/common/ceph.rs"]
mod ceph;
#[path = "../tests/common/servers.rs"]
mod servers;

// tests/common/servers.rs calls `super::run` and `super::qemu_processes`.
use common::system::{qemu_processes, run};

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Row, Table, Variant, compare, stats};
use diskmount::{Backend, Fuse, Image, MountOptions, Nbd, Partition, Rbd, Unattached};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DISKMOUNT: &str = env!("CARGO_BIN_EXE_diskmount");

/// The file every read job reads, and its content.
const FILE: &str = "hello.txt";
const CONTENT: &[u8] = b"hello from rbd\n";

/// The RBD image's name in the test pool.
const RBD_IMAGE: &str = "netbench";

/// One library cycle of `image` with backend `B`; with `read`, a cold
/// read of [`FILE`] after the mount.
fn library<B: Backend>(image: &Image, mnt: &Path, read: bool) {
    let m = Unattached::<B>::new(image.clone())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(mnt, &MountOptions::default())
        .unwrap();
    if read {
        assert_eq!(std::fs::read(m.path().join(FILE)).unwrap(), CONTENT);
    }
    m.close().unwrap();
}

/// `cat MNT/FILE` as a process, checked.
fn cat(mnt: &Path) {
    let out = run(Command::new("cat").arg(mnt.join(FILE)));
    assert_eq!(out.as_bytes(), CONTENT);
}

/// `mount DEV MNT`, the read, `umount MNT`: what every by-hand chain does
/// once it has a block device.
fn mount_read_umount(dev: &str, mnt: &Path, read: bool) {
    run(Command::new("mount").arg(dev).arg(mnt));
    if read {
        cat(mnt);
    }
    run(Command::new("umount").arg(mnt));
}

/// The `--id`, `--keyring` and `-c` arguments of the rbd tools for the
/// test user.
fn rbd_auth(c: &ceph::Cluster) -> Vec<String> {
    vec![
        "--id".into(),
        ceph::USER.into(),
        "--keyring".into(),
        c.keyring.display().to_string(),
        "-c".into(),
        c.conf.display().to_string(),
    ]
}

/// By hand with krbd: `rbd map` (no udev in the lane: `-o noudev`),
/// mount, [cat], umount, `rbd unmap`.
fn krbd_by_hand(c: &ceph::Cluster, mnt: &Path, read: bool) {
    let spec = format!("{}/{RBD_IMAGE}", ceph::POOL);
    let dev = run(Command::new("rbd")
        .args(rbd_auth(c))
        .args(["map", "-o", "noudev", &spec]));
    let dev = dev.trim();
    assert!(dev.starts_with("/dev/rbd"), "rbd map printed {dev:?}");
    mount_read_umount(dev, mnt, read);
    run(Command::new("rbd")
        .args(rbd_auth(c))
        .args(["unmap", "-o", "noudev", dev]));
}

/// By hand with rbd-nbd: `rbd-nbd map` (it forks its daemon and prints
/// `/dev/nbdN` once the device is up), mount, [cat], umount, `rbd-nbd
/// unmap`, which returns once the daemon has exited.
fn rbd_nbd_by_hand(c: &ceph::Cluster, mnt: &Path, read: bool) {
    let spec = format!("{}/{RBD_IMAGE}", ceph::POOL);
    let dev = run(Command::new("rbd-nbd")
        .args(rbd_auth(c))
        .args(["map", &spec]));
    let dev = dev.trim().to_string();
    assert!(dev.starts_with("/dev/nbd"), "rbd-nbd map printed {dev:?}");
    let daemon = daemon_of(&dev);
    mount_read_umount(&dev, mnt, read);
    // The daemon became our child (subreaper) when `rbd-nbd map` exited.
    // `rbd-nbd unmap` waits until the daemon's pid is gone, which a zombie
    // of ours would never be: reap it while unmap waits (ECHILD, and an
    // immediate return, if it is not ours).
    let reaper = std::thread::spawn(move || {
        let _ = nix::sys::wait::waitpid(Pid::from_raw(daemon), None);
    });
    run(Command::new("rbd-nbd").args(["unmap", &dev]));
    reaper.join().unwrap();
}

/// The process (thread group) serving nbd device `dev` (`/dev/nbdN`).
fn daemon_of(dev: &str) -> i32 {
    let name = dev.trim_start_matches("/dev/");
    let task = std::fs::read_to_string(format!("/sys/block/{name}/pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", task.trim())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// By hand with qemu-storage-daemon's rbd driver and FUSE export (the
/// chain in this file's header); `work` holds the key file, the export
/// and the pid file.
fn qsd_by_hand(c: &ceph::Cluster, work: &Path, mnt: &Path, read: bool) {
    let export = work.join("export");
    let pidfile = work.join("pid");
    std::fs::write(&export, b"").unwrap();
    let _ = std::fs::remove_file(&pidfile);
    run(Command::new("qemu-storage-daemon")
        .arg("--object")
        .arg(format!(
            "secret,id=sec0,format=base64,file={}",
            work.join("key").display()
        ))
        .arg("--blockdev")
        .arg(format!(
            "driver=rbd,node-name=disk0,pool={},image={RBD_IMAGE},conf={},user={},key-secret=sec0",
            ceph::POOL,
            c.conf.display(),
            ceph::USER
        ))
        .arg("--export")
        .arg(format!(
            "type=fuse,id=export0,node-name=disk0,mountpoint={},writable=on",
            export.display()
        ))
        .arg("--daemonize")
        .arg("--pidfile")
        .arg(&pidfile));
    let dev = run(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&export));
    let dev = dev.trim();
    mount_read_umount(dev, mnt, read);
    run(Command::new("losetup").args(["--detach", dev]));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    nix::sys::wait::waitpid(Pid::from_raw(pid), None).unwrap();
}

/// `diskmount copy-out URL /FILE DEST`, checked, DEST removed after.
fn cli_copy_out(url: &str, dest: &Path) {
    let _ = std::fs::remove_file(dest);
    run(Command::new(DISKMOUNT)
        .args(["copy-out", url, &format!("/{FILE}")])
        .arg(dest)
        .stderr(Stdio::piped()));
    assert_eq!(std::fs::read(dest).unwrap(), CONTENT);
    std::fs::remove_file(dest).unwrap();
}

/// Whether `program` is on PATH.
fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The rbd devices the kernel has (`/sys/bus/rbd/devices/N`).
fn rbd_devices() -> Vec<String> {
    std::fs::read_dir("/sys/bus/rbd/devices")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The nbd devices connected to a server.
fn connected_nbds() -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.starts_with("nbd") && Path::new(&format!("/sys/block/{n}/pid")).exists()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of processes whose command line starts with `program`'s name.
fn processes_of(program: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let exe = raw.split(|b| *b == 0).next()?;
            let exe = String::from_utf8_lossy(exe);
            (exe == program || exe.ends_with(&format!("/{program}"))).then_some(pid)
        })
        .collect()
}

/// The RBD comparisons: the cycle and the read job.
fn rbd(dir: &Path, iterations: usize, tables: &mut Vec<Table>) {
    let started = Instant::now();
    let c = ceph::cluster();
    println!(
        "\nceph cluster (ceph-mon + one ceph-osd on memstore, 127.0.0.1) up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The image: 64 MiB ext4 with one file, imported raw.
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join(FILE), CONTENT).unwrap();
    let raw = dir.join("rbd.img");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            "-d",
        ])
        .arg(&src)
        .arg(&raw));
    c.import(&raw, RBD_IMAGE);
    std::fs::remove_file(&raw).unwrap();
    let url = c.url(RBD_IMAGE, None);
    let image = Image::url(&url).unwrap();
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let work = dir.join("hand");
    std::fs::create_dir(&work).unwrap();
    ceph::secret_file(&work.join("key"), ceph::USER_KEY);
    let dest = dir.join("copied-out");

    let with_krbd = diskmount::backend::rbd::available();
    let with_nbd = diskmount::backend::nbd::available();
    let with_rbd_nbd = with_nbd && have("rbd-nbd");
    let auto = diskmount::Auto::choose(&image);
    println!(
        "kernel rbd driver: {}; kernel nbd: {}; rbd-nbd: {}; Auto picks {}",
        if with_krbd { "yes" } else { "no" },
        if with_nbd { "yes" } else { "no" },
        if with_rbd_nbd {
            "yes"
        } else if have("rbd-nbd") {
            "installed, no nbd"
        } else {
            "not installed"
        },
        auto.as_str()
    );
    for read in [false, true] {
        let mut variants: Vec<Variant> = Vec::new();
        if with_krbd {
            variants.push((
                "diskmount Rbd (krbd)".into(),
                Box::new(|| library::<Rbd>(&image, &mnt, read)),
            ));
        }
        variants.push((
            "diskmount Fuse (librbd in qemu-storage-daemon, FUSE export, loop)".into(),
            Box::new(|| library::<Fuse>(&image, &mnt, read)),
        ));
        if with_nbd {
            variants.push((
                "diskmount Nbd (librbd in qemu-nbd, /dev/nbdN)".into(),
                Box::new(|| library::<Nbd>(&image, &mnt, read)),
            ));
        }
        if read {
            variants.push((
                format!(
                    "diskmount copy-out URL /{FILE} DEST (the command, Auto: {})",
                    auto.as_str()
                ),
                Box::new(|| cli_copy_out(&url, &dest)),
            ));
        }
        let cat = if read { " + cat" } else { "" };
        if with_krbd {
            variants.push((
                format!("by hand: rbd map + mount{cat} + umount + rbd unmap"),
                Box::new(|| krbd_by_hand(c, &mnt, read)),
            ));
        }
        if with_rbd_nbd {
            variants.push((
                format!("by hand: rbd-nbd map + mount{cat} + umount + rbd-nbd unmap"),
                Box::new(|| rbd_nbd_by_hand(c, &mnt, read)),
            ));
        }
        variants.push((
            format!(
                "by hand: qemu-storage-daemon (rbd, FUSE export) + losetup + mount{cat} + umount + losetup -d + kill"
            ),
            Box::new(|| qsd_by_hand(c, &work, &mnt, read)),
        ));
        let (id, job) = if read {
            ("rbd-read", format!("read one file ({FILE}, cold)"))
        } else {
            ("rbd-cycle", "full cycle, no read".to_string())
        };
        let t = compare(
            id,
            &format!("RBD 64 MiB raw (ext4), {job}, {iterations} iterations each, interleaved"),
            &mut variants,
            iterations,
            1,
            "vs first row",
        );
        tables.push(t);
    }
    assert!(
        rbd_devices().is_empty(),
        "rbd devices left: {:?}",
        rbd_devices()
    );
    assert!(
        connected_nbds().is_empty(),
        "nbd devices left: {:?}",
        connected_nbds()
    );
    assert!(processes_of("rbd-nbd").is_empty(), "rbd-nbd left");
    let conf_dir = c.dir.to_string_lossy().into_owned();
    let helpers: Vec<_> = qemu_processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&conf_dir) || cmd.contains(RBD_IMAGE))
        .collect();
    assert!(helpers.is_empty(), "qemu helpers left: {helpers:?}");
    let (mon, osd) = (c.mon_pid(), c.osd_pid());
    let stopping = Instant::now();
    ceph::stop();
    println!(
        "ceph cluster stopped in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    for pid in [mon, osd] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "ceph daemon {pid} still there"
        );
    }
    assert!(!c.dir.exists(), "{} left", c.dir.display());
}

/// A 10 GiB sparse qcow2 at `path`: empty (`qemu-img create`), or
/// (`with_data`) with a GPT, a 64 MiB ext4 partition at 1 MiB and a 1 GiB
/// second partition whose first 256 MiB are random bytes, converted from a
/// sparse raw file, so only the written clusters are stored (about
/// 257 MiB): an inspect that read the whole file would show.
fn big_qcow2(path: &Path, with_data: bool, scratch: &Path) {
    if !with_data {
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(path)
            .arg("10G"));
        return;
    }
    let raw = scratch.join("big.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(10 << 30)
        .unwrap();
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&raw)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nsize=64MiB, type=L\nsize=1GiB, type=L\n")
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk");
    let fs = scratch.join("p1.ext4");
    common::ext4_image(&fs, 64 << 20);
    let mut to = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    // Partition 1 at 1 MiB, partition 2 right after it (sfdisk's 1 MiB
    // alignment).
    to.seek(SeekFrom::Start(1 << 20)).unwrap();
    std::io::copy(&mut std::fs::File::open(&fs).unwrap(), &mut to).unwrap();
    to.seek(SeekFrom::Start(65 << 20)).unwrap();
    std::io::copy(
        &mut std::fs::File::open("/dev/urandom").unwrap().take(256 << 20),
        &mut to,
    )
    .unwrap();
    drop(to);
    std::fs::remove_file(&fs).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(path));
    std::fs::remove_file(&raw).unwrap();
}

/// `inspect` over HTTP: diskmount against qemu-img info, time and bytes.
fn http(dir: &Path, iterations: usize, tables: &mut Vec<Table>) {
    for (name, with_data) in [("empty", false), ("gpt-ext4-data", true)] {
        let img: PathBuf = dir.join(format!("{name}.qcow2"));
        big_qcow2(&img, with_data, dir);
        let stored = std::fs::metadata(&img).unwrap().len();
        let server = servers::HttpServer::start(&img);
        let url = server.url(&format!("{name}.qcow2"));
        println!(
            "\n{}: 10 GiB virtual, {stored} bytes of qcow2, served at {url}",
            img.display()
        );
        let variants: [(&str, &str, Vec<&str>); 3] = [
            ("diskmount inspect URL", DISKMOUNT, vec!["inspect"]),
            (
                "diskmount inspect --json URL",
                DISKMOUNT,
                vec!["inspect", "--json"],
            ),
            ("qemu-img info URL", "qemu-img", vec!["info"]),
        ];
        // One untimed run each first (qemu's modules, the page cache).
        for (_, prog, args) in &variants {
            let _ = common::timed(Command::new(prog).args(args).arg(&url));
        }
        let mut wall: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        let mut sent: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        // Runs that failed (qemu's curl driver, 10.0.2, could stop for good
        // with two requests at once before the export was limited to one;
        // diskmount's I/O timeout then ended it with an error): counted,
        // not timed.
        let mut failed = vec![0usize; variants.len()];
        for _ in 0..iterations {
            for (i, (_, prog, args)) in variants.iter().enumerate() {
                let before = server.bytes_sent();
                match common::timed(Command::new(prog).args(args).arg(&url)) {
                    Ok(ms) => {
                        wall[i].push(ms);
                        sent[i].push((server.bytes_sent() - before) as f64);
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed[i] += 1;
                    }
                }
            }
        }
        let mut table = Table::new(
            &format!("http-inspect-{name}"),
            &format!(
                "inspect a 10 GiB sparse qcow2 ({name}) over HTTP on 127.0.0.1, {iterations} runs each, interleaved"
            ),
            "ms",
            "vs diskmount inspect",
        );
        for (i, (label, _, _)) in variants.iter().enumerate() {
            let b = stats(sent[i].clone());
            table.rows.push(Row {
                name: label.to_string(),
                stats: stats(wall[i].clone()),
                extra: vec![
                    (
                        "body bytes sent per run: median (min-max)".into(),
                        format!(
                            "{:.0} ({:.0}-{:.0})",
                            b.median,
                            min(&sent[i]),
                            max(&sent[i])
                        ),
                    ),
                    (
                        "% of the qcow2 file".into(),
                        format!("{:.1}", b.median / stored as f64 * 100.0),
                    ),
                    ("runs failed".into(), failed[i].to_string()),
                ],
            });
        }
        table.print();
        tables.push(table);
        servers::assert_no_client(&format!("127.0.0.1:{}", server.port), None);
        drop(server);
        std::fs::remove_file(&img).unwrap();
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

fn main() {
    common::require_root("network");
    let _ = env_logger::builder().format_timestamp_micros().try_init();
    let iterations: usize = common::arg("--iterations").unwrap_or(10);
    let only: Option<String> = common::arg("--only");
    let wants = |s: &str| only.as_deref().is_none_or(|o| o == s);
    let machine = common::print_machine("network");
    // Daemons of the by-hand chains (qemu-storage-daemon --daemonize,
    // rbd-nbd) become our children, so their exit can be waited for.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("diskmount-bench-")
        .tempdir()
        .unwrap();
    let mut tables = Vec::new();
    if wants("rbd") {
        rbd(dir.path(), iterations, &mut tables);
    }
    if wants("http") {
        http(dir.path(), iterations, &mut tables);
    }
    common::write_results("network", &machine, &tables);
    common::assert_clean(dir.path());
}

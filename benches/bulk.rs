//! Bulk provisioning, the job users run diskmount for: put one file (an
//! SSH key, `/root/.ssh/authorized_keys`) into each of N images (default
//! 50), once with raw images and once with qcow2, timed from the first
//! image to the last one done (durable where the variant makes it so):
//!
//! 1. the library, sequentially and with 2 and 4 threads (each thread takes
//!    every 2nd or 4th image, on its own mount point): attach (raw: a loop
//!    device; qcow2: qemu-storage-daemon's FUSE export and a loop device
//!    over it), mount, `Root::copy_in`, `close()` (syncfs, unmount, flush,
//!    `fsync` of the image, detach); qcow2 twice: a daemon per image, and
//!    the process's shared daemon (`AttachOptions::shared_daemon`, started
//!    by the warm-up);
//! 2. the chain of processes a Nova-style tool runs per image: raw:
//!    `losetup --find --show`, `mount`, `mkdir -p`, `cp`, `umount`,
//!    `losetup --detach`; qcow2 (this host kernel has no nbd, so not
//!    `qemu-nbd --connect`): `qemu-storage-daemon --daemonize` with a FUSE
//!    export, then the same, then stopping the daemon and waiting for its
//!    exit. It does not flush the image file (Nova does not either);
//! 3. `virt-copy-in` per image (libguestfs: an appliance VM boots for each
//!    image). Under software emulation that is 20 to 40 s an image, so it
//!    runs on the first `--guestfs-sample K` images (default 3) and the
//!    total for N is that median times N, marked "projected";
//! 4. one `guestfish` appliance with all N disks added (`-a` N times, then
//!    `mount`, `copy-in`, `umount` for each disk): libguestfs's fastest
//!    bulk path, once per format.
//!
//! The images hold a minimal Debian-like root (enough for libguestfs's
//! inspection, which `virt-copy-in` needs). libguestfs runs with
//! `LIBGUESTFS_BACKEND=direct` under TCG (`force_tcg`; `--kvm` lets it
//! choose: on the machine of docs/benchmarks.md qemu aborts on `/dev/kvm`).
//! If libguestfs is not installed or its appliance cannot boot, the
//! benchmark says so and measures the rest. `--no-guestfs` skips it.
//!
//! Run as root: `cargo bench --bench bulk` (`-- --images N`, `--rounds R`
//! (default 3, diskmount and the chain, interleaved), `--guestfs-sample
//! K`, `--only raw|qcow2`). Prints the tables, writes
//! `target/bench-results/bulk.json` and `docs/charts/bulk.svg`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{Stats, Table, run, stats};
use diskmount::{
    AttachOptions, Backend, Format, Fuse, Image, Loop, MountOptions, Partition, Unattached,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The file put into every image.
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBulkProvisioningBenchmarkKey0000000000 bench@diskmount\n";

/// One library run over `images`, on `mnt`: attach, mount, copy the key
/// in, close.
fn library_one<B: Backend>(
    img: &Path,
    format: Format,
    mnt: &Path,
    key: &Path,
    options: &AttachOptions,
) {
    let mounted = Unattached::<B>::with_options(Image::file(img, format).unwrap(), options.clone())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(mnt, &MountOptions::default())
        .unwrap();
    mounted.root().unwrap().copy_in(key, "/root/.ssh").unwrap();
    mounted.close().unwrap();
}

/// The library over all images with `threads` threads (qcow2: through
/// the shared daemon if `shared`); seconds.
fn library(
    images: &[PathBuf],
    format: Format,
    mnts: &[PathBuf],
    key: &Path,
    threads: usize,
    shared: bool,
) -> f64 {
    let options = &AttachOptions::default().shared_daemon(shared);
    let t = Instant::now();
    std::thread::scope(|s| {
        for (i, mnt) in mnts.iter().enumerate().take(threads) {
            s.spawn(move || {
                for img in images.iter().skip(i).step_by(threads) {
                    match format {
                        Format::Qcow2 => library_one::<Fuse>(img, format, mnt, key, options),
                        _ => library_one::<Loop>(img, format, mnt, key, options),
                    }
                }
            });
        }
    });
    t.elapsed().as_secs_f64()
}

/// The daemonized qemu-storage-daemon of `pidfile` (our child: we are the
/// child subreaper), stopped and waited for.
fn stop_daemon(pidfile: &Path) {
    let pid: i32 = std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    nix::sys::wait::waitpid(Pid::from_raw(pid), None).unwrap();
}

/// The Nova-style chain of processes for one image.
fn chain_one(img: &Path, format: Format, work: &Path, mnt: &Path, key: &Path) {
    let export = work.join("export");
    let pidfile = work.join("pid");
    let backing = if format == Format::Qcow2 {
        std::fs::write(&export, b"").unwrap();
        let _ = std::fs::remove_file(&pidfile);
        run(Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={}",
                img.display()
            ))
            .args(["--blockdev", "driver=qcow2,node-name=disk0,file=file0"])
            .arg("--export")
            .arg(format!(
                "type=fuse,id=export0,node-name=disk0,mountpoint={},writable=on",
                export.display()
            ))
            .arg("--daemonize")
            .arg("--pidfile")
            .arg(&pidfile));
        export.clone()
    } else {
        img.to_path_buf()
    };
    let dev = run(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&backing));
    let dev = dev.trim();
    run(Command::new("mount").arg(dev).arg(mnt));
    let ssh = mnt.join("root/.ssh");
    run(Command::new("mkdir").arg("-p").arg(&ssh));
    run(Command::new("cp").arg(key).arg(&ssh));
    run(Command::new("umount").arg(mnt));
    run(Command::new("losetup").args(["--detach", dev]));
    if format == Format::Qcow2 {
        stop_daemon(&pidfile);
        std::fs::remove_file(&export).unwrap();
    }
}

fn chain(images: &[PathBuf], format: Format, work: &Path, mnt: &Path, key: &Path) -> f64 {
    let t = Instant::now();
    for img in images {
        chain_one(img, format, work, mnt, key);
    }
    t.elapsed().as_secs_f64()
}

/// Runs `cmd`; its wall time in seconds (`common::timed`, in ms), or its
/// failure with the end of stderr.
fn timed(cmd: &mut Command) -> Result<f64, String> {
    common::timed(cmd).map(|ms| ms / 1000.0)
}

/// libguestfs's name of disk `i` (0: `/dev/sda`, 26: `/dev/sdaa`).
fn guest_disk(i: usize) -> String {
    let letter = |n: usize| char::from(b'a' + n as u8);
    if i < 26 {
        format!("/dev/sd{}", letter(i))
    } else {
        format!("/dev/sd{}{}", letter(i / 26 - 1), letter(i % 26))
    }
}

/// The libguestfs variants.
struct Guestfs {
    kvm: bool,
}

impl Guestfs {
    fn env(&self, cmd: &mut Command) {
        cmd.env("LIBGUESTFS_BACKEND", "direct");
        if !self.kvm {
            cmd.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
        }
    }

    fn copy_in(&self, img: &Path, format: Format, key: &Path) -> Result<f64, String> {
        let mut c = Command::new("virt-copy-in");
        self.env(&mut c);
        c.arg(format!("--format={}", format.as_str()))
            .arg("-a")
            .arg(img)
            .arg(key)
            .arg("/root/.ssh");
        timed(&mut c)
    }

    /// One appliance, all disks.
    fn fish_all(
        &self,
        images: &[PathBuf],
        format: Format,
        key: &Path,
        work: &Path,
    ) -> Result<f64, String> {
        let mut script = String::from("run\n");
        for i in 0..images.len() {
            let d = guest_disk(i);
            script += &format!(
                "mount {d} /\ncopy-in {} /root/.ssh\numount /\n",
                key.display()
            );
        }
        let file = work.join("guestfish-script");
        std::fs::write(&file, script).unwrap();
        let mut c = Command::new("guestfish");
        self.env(&mut c);
        c.arg("--rw").arg(format!("--format={}", format.as_str()));
        for img in images {
            c.arg("-a").arg(img);
        }
        c.arg("-f").arg(&file);
        timed(&mut c)
    }
}

/// Seconds for N images into a row of total seconds, with images/s.
fn push(table: &mut Table, name: &str, seconds: Vec<f64>, n: usize) {
    let s = stats(seconds);
    table.push(name, s);
    table
        .rows
        .last_mut()
        .unwrap()
        .extra
        .push(("images/s".into(), format!("{:.2}", n as f64 / s.median)));
}

/// The same rows as images per second (higher is better), for the chart.
fn rate_rows(table: &Table, n: usize, prefix: &str, chart: &mut Table) {
    for r in &table.rows {
        let rate = |s: f64| n as f64 / s;
        let mut row = r.clone();
        row.name = format!("{prefix}: {}", r.name);
        row.stats = Stats {
            median: rate(r.stats.median),
            p10: rate(r.stats.p90),
            p90: rate(r.stats.p10),
            n: r.stats.n,
        };
        row.extra.clear();
        chart.rows.push(row);
    }
}

fn main() {
    common::require_root("bulk");
    let n: usize = common::arg("--images").unwrap_or(50);
    let rounds: usize = common::arg("--rounds").unwrap_or(3);
    let sample: usize = common::arg("--guestfs-sample").unwrap_or(3).min(n);
    let only: Option<String> = common::arg("--only");
    let machine = common::print_machine("bulk");
    // The daemonized qemu of the chain becomes our child, so its exit can
    // be waited for.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("diskmount-bench-")
        .tempdir()
        .unwrap();
    let key = dir.path().join("authorized_keys");
    std::fs::write(&key, KEY).unwrap();

    // A minimal Debian-like root, for libguestfs's inspection.
    let src = dir.path().join("src");
    for d in [
        "etc",
        "bin",
        "sbin",
        "usr/bin",
        "lib",
        "var",
        "tmp",
        "root/.ssh",
    ] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("etc/hostname"), "guest\n").unwrap();
    std::fs::write(
        src.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\nNAME=\"Debian GNU/Linux\"\n",
    )
    .unwrap();
    std::fs::write(src.join("etc/fstab"), "/dev/sda / ext4 defaults 0 1\n").unwrap();
    let template = dir.path().join("template.img");
    std::fs::File::create(&template)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&template));
    let qtemplate = dir.path().join("template.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&template)
        .arg(&qtemplate));

    let guestfs = if common::flag("--no-guestfs") {
        println!("libguestfs: skipped (--no-guestfs)");
        None
    } else if Command::new("virt-copy-in")
        .arg("--version")
        .output()
        .is_err()
    {
        println!(
            "libguestfs: not installed (apt-get install --no-install-recommends libguestfs-tools); its variants are skipped"
        );
        None
    } else {
        let g = Guestfs {
            kvm: common::flag("--kvm"),
        };
        println!(
            "libguestfs: LIBGUESTFS_BACKEND=direct, appliance on {}",
            if g.kvm {
                "KVM if libguestfs finds it usable, else TCG"
            } else {
                "TCG (force_tcg; --kvm to allow KVM)"
            }
        );
        // One run first: it may build its appliance (untimed); if it
        // cannot boot here, say why and measure the rest.
        println!("libguestfs: first run (builds the appliance if needed, untimed)...");
        match g.copy_in(&template, Format::Raw, &key) {
            Ok(s) => {
                println!("libguestfs: first run took {s:.1} s");
                Some(g)
            }
            Err(e) => {
                println!(
                    "libguestfs: its appliance cannot run here, its variants are skipped:\n{e}"
                );
                None
            }
        }
    };

    let mnts: Vec<PathBuf> = (0..4)
        .map(|i| {
            let m = dir.path().join(format!("mnt{i}"));
            std::fs::create_dir(&m).unwrap();
            m
        })
        .collect();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();

    let mut tables = Vec::new();
    let mut chart = Table::new(
        "bulk",
        &format!("One file into each of {n} images: images per second"),
        "images/s",
        "",
    );
    for (format, name, tpl) in [
        (Format::Raw, "raw", &template),
        (Format::Qcow2, "qcow2", &qtemplate),
    ] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let images: Vec<PathBuf> = (0..n)
            .map(|i| {
                let p = dir.path().join(format!("{name}-{i:03}.{name}"));
                run(Command::new("cp").arg("--sparse=always").arg(tpl).arg(&p));
                p
            })
            .collect();
        // Warm-up (untimed): one image each way.
        // The shared daemon (qcow2) starts in its warm-up.
        let qcow2 = format == Format::Qcow2;
        library(&images[..1], format, &mnts, &key, 1, false);
        if qcow2 {
            library(&images[..1], format, &mnts, &key, 1, true);
        }
        chain(&images[..1], format, &work, &mnts[0], &key);

        let mut times: [Vec<f64>; 4] = Default::default();
        let mut shared: [Vec<f64>; 3] = Default::default();
        for _ in 0..rounds {
            times[0].push(library(&images, format, &mnts, &key, 1, false));
            times[1].push(library(&images, format, &mnts, &key, 2, false));
            times[2].push(library(&images, format, &mnts, &key, 4, false));
            if qcow2 {
                shared[0].push(library(&images, format, &mnts, &key, 1, true));
                shared[1].push(library(&images, format, &mnts, &key, 2, true));
                shared[2].push(library(&images, format, &mnts, &key, 4, true));
            }
            times[3].push(chain(&images, format, &work, &mnts[0], &key));
        }
        let mut t = Table::new(
            &format!("bulk-{name}"),
            &format!(
                "{name}: one file into each of {n} images (64 MiB ext4), total seconds, {rounds} rounds (libguestfs: see the rows)"
            ),
            "s",
            "vs diskmount, 1 thread",
        );
        let [one, two, four, sh] = times;
        push(&mut t, "diskmount, 1 thread", one, n);
        push(&mut t, "diskmount, 2 threads", two, n);
        push(&mut t, "diskmount, 4 threads", four, n);
        if qcow2 {
            let [one, two, four] = shared;
            push(&mut t, "diskmount, shared daemon, 1 thread", one, n);
            push(&mut t, "diskmount, shared daemon, 2 threads", two, n);
            push(&mut t, "diskmount, shared daemon, 4 threads", four, n);
        }
        let chain_name = if format == Format::Qcow2 {
            "shell chain: qemu-storage-daemon, losetup, mount, mkdir, cp, umount, losetup -d, kill"
        } else {
            "shell chain: losetup, mount, mkdir, cp, umount, losetup -d"
        };
        push(&mut t, chain_name, sh, n);
        if let Some(g) = &guestfs {
            let mut per = Vec::new();
            let mut failed = None;
            for img in &images[..sample] {
                match g.copy_in(img, format, &key) {
                    Ok(s) => per.push(s * n as f64),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => push(
                    &mut t,
                    &format!("virt-copy-in per image (measured on {sample}, projected to {n})"),
                    per,
                    n,
                ),
                Some(e) => println!("virt-copy-in failed, row skipped:\n{e}"),
            }
            match g.fish_all(&images, format, &key, &work) {
                Ok(s) => push(
                    &mut t,
                    &format!("guestfish, one appliance, {n} disks (1 run)"),
                    vec![s],
                    n,
                ),
                Err(e) => println!("guestfish with {n} disks failed, row skipped:\n{e}"),
            }
        }
        t.print();
        rate_rows(&t, n, name, &mut chart);
        tables.push(t);
        for img in &images {
            std::fs::remove_file(img).unwrap();
        }
    }
    if !chart.rows.is_empty() {
        common::bar_chart("bulk", &chart, "higher is better");
    }
    common::write_results("bulk", &machine, &tables);
    common::assert_clean(dir.path());
}

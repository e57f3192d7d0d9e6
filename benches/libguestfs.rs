//! diskmount against libguestfs for the jobs people use it for: read one
//! file out of an image (`virt-cat`, and `guestfish -m` which skips the
//! OS inspection, against `diskmount copy-out` and `diskmount run IMAGE --
//! cat`), write one file in (`virt-copy-in`, `guestfish -m ... copy-in`,
//! against `diskmount copy-in`), each on a 64 MiB ext4 raw image holding a
//! minimal Debian-like root; and provision a guest (`virt-customize
//! --ssh-inject root:file:KEY --hostname NAME` against `diskmount inject
//! --ssh-key root=KEY --hostname NAME`) on a qcow2 image of that root, a
//! fresh copy per run (copied untimed, so both add the key to a guest
//! that lacks it). Each a whole command from start to exit.
//!
//! libguestfs boots a small appliance VM for every command, with
//! `LIBGUESTFS_BACKEND=direct`. By default it is told to use software
//! emulation (`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`): on the machine these
//! numbers were first taken on, `/dev/kvm` exists but qemu aborts on it
//! (failed to set MSR 0x10a). `--kvm` lets libguestfs choose KVM.
//! Without libguestfs the comparison is skipped with a message saying what
//! to install; the benchmark does not need it otherwise.
//!
//! libguestfs's appliance needs a kernel: `/boot/vmlinuz-*`, or
//! `SUPERMIN_KERNEL` and `SUPERMIN_MODULES` (passed on to it from the
//! environment; see docs/benchmarks.md for machines without either).
//!
//! Run as root: `cargo bench --bench libguestfs` (`-- --iterations N`,
//! default 3; `--only read|write|inject`). Prints the tables, writes
//! `target/bench-results/libguestfs.json` and `docs/charts/libguestfs.svg`
//! (with `--only X`: `libguestfs-X.json`, no chart).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Table, stats};

const DISKMOUNT: &str = env!("CARGO_BIN_EXE_diskmount");

fn main() {
    common::require_root("libguestfs");
    let iterations: usize = common::arg("--iterations").unwrap_or(3);
    let machine = common::print_machine("libguestfs");
    if Command::new("virt-cat").arg("--version").output().is_err() {
        println!("libguestfs not installed: apt-get install libguestfs-tools (comparison skipped)");
        return;
    }
    let kvm = common::flag("--kvm");
    let accel = if kvm {
        "KVM if libguestfs finds it usable, else TCG"
    } else {
        "TCG (software emulation, force_tcg; --kvm to allow KVM)"
    };
    println!("libguestfs: LIBGUESTFS_BACKEND=direct, appliance accelerator: {accel}");
    let guestfs_env = |cmd: &mut Command| {
        cmd.env("LIBGUESTFS_BACKEND", "direct");
        if !kvm {
            cmd.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("diskmount-bench-")
        .tempdir()
        .unwrap();
    // Enough of a Debian root for libguestfs's inspection, which virt-cat
    // and virt-copy-in need (`-i`).
    let src = dir.path().join("src");
    for d in ["etc", "bin", "sbin", "usr/bin", "lib", "var", "tmp", "root"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("etc/hostname"), "guest\n").unwrap();
    std::fs::write(
        src.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\nNAME=\"Debian GNU/Linux\"\n",
    )
    .unwrap();
    std::fs::write(src.join("etc/fstab"), "/dev/sda / ext4 defaults 0 1\n").unwrap();
    // The user database both injectors read root's home from, and
    // Debian's hosts file (its 127.0.1.1 line names the host).
    for (rel, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/shadow", "root:*:19700:0:99999:7:::\n"),
        (
            "etc/hosts",
            "127.0.0.1\tlocalhost\n127.0.1.1\tguest\n\n::1 localhost ip6-localhost ip6-loopback\n",
        ),
    ] {
        std::fs::write(src.join(rel), text).unwrap();
    }
    let img = dir.path().join("guest.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    common::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&img),
    );
    // The qcow2 guest of the inject job, and the copy each run works on.
    let qcow2 = dir.path().join("guest.qcow2");
    common::run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&img)
            .arg(&qcow2),
    );
    let work = dir.path().join("work.qcow2");
    // Synced, so that neither injector's own flush pays for the copy.
    let fresh = || {
        std::fs::copy(&qcow2, &work).unwrap();
        std::fs::File::open(&work).unwrap().sync_all().unwrap();
    };
    let key = dir.path().join("key.pub");
    std::fs::write(
        &key,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bench@example\n",
    )
    .unwrap();
    let payload = dir.path().join("motd");
    std::fs::write(&payload, "provisioned\n").unwrap();
    let out = dir.path().join("out");

    let virt_cat = |img: &Path| {
        let mut c = Command::new("virt-cat");
        guestfs_env(&mut c);
        c.arg("-a").arg(img).arg("/etc/hostname");
        common::timed(&mut c)
    };
    let virt_copy_in = |img: &Path| {
        let mut c = Command::new("virt-copy-in");
        guestfs_env(&mut c);
        c.arg("-a").arg(img).arg(&payload).arg("/etc");
        common::timed(&mut c)
    };
    // guestfish with the filesystem named (no inspection): the cheapest
    // libguestfs way.
    let fish_cat = |img: &Path| {
        let mut c = Command::new("guestfish");
        guestfs_env(&mut c);
        c.arg("--ro")
            .arg("-a")
            .arg(img)
            .args(["-m", "/dev/sda", "cat", "/etc/hostname"]);
        common::timed(&mut c)
    };
    let fish_copy_in = |img: &Path| {
        let mut c = Command::new("guestfish");
        guestfs_env(&mut c);
        c.arg("-a")
            .arg(img)
            .args(["-m", "/dev/sda", "copy-in"])
            .arg(&payload)
            .arg("/etc");
        common::timed(&mut c)
    };
    let dm_copy_out = |img: &Path| {
        let _ = std::fs::remove_file(&out);
        common::timed(
            Command::new(DISKMOUNT)
                .arg("copy-out")
                .arg(img)
                .arg("/etc/hostname")
                .arg(&out),
        )
    };
    let dm_run_cat = |img: &Path| {
        common::timed(Command::new(DISKMOUNT).arg("run").arg(img).args([
            "--",
            "cat",
            "etc/hostname",
        ]))
    };
    let dm_copy_in = |img: &Path| {
        common::timed(
            Command::new(DISKMOUNT)
                .arg("copy-in")
                .arg(img)
                .arg(&payload)
                .arg("/etc"),
        )
    };

    // virt-customize: no network for the appliance (its default is on);
    // with a network, it would also try to set a random seed from it.
    let virt_customize = |_: &Path| {
        fresh();
        let mut c = Command::new("virt-customize");
        guestfs_env(&mut c);
        c.args(["--format", "qcow2", "-a"])
            .arg(&work)
            .args(["--no-network", "--ssh-inject"])
            .arg(format!("root:file:{}", key.display()))
            .args(["--hostname", "web01"]);
        common::timed(&mut c)
    };
    let dm_inject = |_: &Path| {
        fresh();
        common::timed(
            Command::new(DISKMOUNT)
                .arg("inject")
                .arg(&work)
                .arg("--ssh-key")
                .arg(format!("root={}", key.display()))
                .args(["--hostname", "web01"]),
        )
    };

    // One libguestfs run first: it may build its appliance (untimed), and
    // if it cannot boot here, say why and stop.
    println!("libguestfs: first run (builds the appliance if needed, untimed)...");
    if let Err(e) = virt_cat(&img) {
        println!("libguestfs cannot run here, comparison skipped:\n{e}");
        common::assert_clean(dir.path());
        return;
    }
    dm_copy_out(&img).unwrap();

    dm_inject(&img).unwrap();
    check_injected(&work);

    type Op<'a> = (&'a str, &'a dyn Fn(&Path) -> Result<f64, String>);
    let only: Option<String> = common::arg("--only");
    let jobs: [(&str, &str, Vec<Op>); 3] = [
        (
            "read",
            "read /etc/hostname out of a 64 MiB ext4 image",
            vec![
                ("diskmount copy-out", &dm_copy_out),
                ("diskmount run -- cat", &dm_run_cat),
                ("virt-cat", &virt_cat),
                ("guestfish --ro -m /dev/sda cat", &fish_cat),
            ],
        ),
        (
            "write",
            "write one small file into /etc of a 64 MiB ext4 image",
            vec![
                ("diskmount copy-in", &dm_copy_in),
                ("virt-copy-in", &virt_copy_in),
                ("guestfish -m /dev/sda copy-in", &fish_copy_in),
            ],
        ),
        (
            "inject",
            "add root's SSH key and set the host name in a qcow2 guest (a fresh copy per run)",
            vec![
                ("diskmount inject --ssh-key --hostname", &dm_inject),
                ("virt-customize --ssh-inject --hostname", &virt_customize),
            ],
        ),
    ];
    let jobs: Vec<_> = jobs
        .into_iter()
        .filter(|(id, _, _)| only.as_deref().is_none_or(|o| o == *id))
        .collect();
    assert!(!jobs.is_empty(), "--only: expected read, write or inject");
    let mut tables = Vec::new();
    let mut chart = Table::new(
        "libguestfs",
        &format!(
            "One file in or out, and inject, whole command (libguestfs on {})",
            if kvm { "KVM or TCG" } else { "TCG" }
        ),
        "ms",
        "",
    );
    for (id, what, ops) in jobs {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); ops.len()];
        for _ in 0..iterations {
            for (i, (_, op)) in ops.iter().enumerate() {
                match op(&img) {
                    Ok(ms) => times[i].push(ms),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let mut t = Table::new(
            &format!("libguestfs-{id}"),
            &format!("{what}, whole command, {iterations} runs each, interleaved"),
            "ms",
            "vs diskmount",
        );
        for ((name, _), v) in ops.iter().zip(times) {
            t.push(name, stats(v));
        }
        t.print();
        for r in &t.rows {
            let mut r = r.clone();
            r.name = format!("{id}: {}", r.name);
            chart.rows.push(r);
        }
        tables.push(t);
    }
    if only.is_none() {
        common::bar_chart("libguestfs", &chart, "lower is better");
    }
    // Both injectors did the same job: check virt-customize's last run.
    if only.as_deref().is_none_or(|o| o == "inject") {
        check_injected(&work);
    }
    common::write_results(
        &match &only {
            Some(o) => format!("libguestfs-{o}"),
            None => "libguestfs".into(),
        },
        &machine,
        &tables,
    );
    common::assert_clean(dir.path());
}

/// Panics unless the qcow2 guest `img` has root's key and the host name
/// (read back through `diskmount copy-out`).
fn check_injected(img: &Path) {
    let dir = tempfile::Builder::new()
        .prefix("diskmount-bench-check-")
        .tempdir()
        .unwrap();
    for (guest, want) in [
        ("/root/.ssh/authorized_keys", "bench@example"),
        ("/etc/hostname", "web01"),
    ] {
        let out = dir.path().join("out");
        let _ = std::fs::remove_file(&out);
        common::run(
            Command::new(DISKMOUNT)
                .arg("copy-out")
                .arg(img)
                .arg(guest)
                .arg(&out),
        );
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains(want), "{guest}: {text:?}");
    }
}

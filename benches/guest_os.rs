//! `--partition os` on the Rocky layout (GPT: BIOS boot, xfs `/boot`, an
//! LVM PV with `rl/root` xfs, `rl/home` ext4 and `rl/swap`; the guest's
//! fstab mounts `/boot` and `/home` over the root), made by LVM2's own
//! tools as the tests make it (`tests/common/lvm.rs`). Two jobs, whole
//! commands from start to exit, interleaved run by run:
//!
//! - read `/etc/hostname`: `diskmount run --partition os IMG -- cat`,
//!   the same by hand (three `losetup --offset --sizelimit`, three
//!   `mount`, `cat`, three `umount`, three `losetup -d`, with the offsets
//!   known beforehand), and `guestfish --ro -a IMG -i cat /etc/hostname`;
//! - write one small file into `/etc`: `diskmount copy-in --partition os`,
//!   by hand, and `virt-copy-in -a IMG FILE /etc`.
//!
//! And in-process, what the OS inspection costs: `Attached::inspect_os`
//! alone, and a `with_mounted` cycle of `Partition::Os` next to one of
//! `Partition::LogicalVolume rl/root` (no inspection, no fstab).
//!
//! libguestfs runs with `LIBGUESTFS_BACKEND=direct` and
//! `LIBGUESTFS_BACKEND_SETTINGS=force_tcg` (this machine's KVM aborts);
//! without a kernel in /boot, set `SUPERMIN_KERNEL`, `SUPERMIN_MODULES`
//! and `SUPERMIN_KERNEL_VERSION` (docs/benchmarks.md says how). Without
//! libguestfs, or if its appliance cannot boot, that part is skipped
//! with the reason.
//!
//! Run as root: `cargo bench --bench guest_os` (`-- --iterations N`,
//! default 20; `--guestfs-iterations N`, default 2). Writes
//! `target/bench-results/guest_os.json`.

// The benchmarks' and the tests' support both load tests/common/system.rs.
#![allow(clippy::duplicate_mod)]

#[path = "common/mod.rs"]
mod bench;
// The tests' fixtures (they name themselves `crate::common`).
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bench::{Table, stats};
use common::lvm::{Content, LvDef, fs_uuid};
use diskmount::sys::{block as blk, loop_dev};
use diskmount::{Format, Image, Loop, Partition, Unattached, with_mounted};
use nix::mount::{MntFlags, MsFlags};

const DISKMOUNT: &str = env!("CARGO_BIN_EXE_diskmount");

/// A Rocky 9 root, enough for libguestfs's inspection too.
fn rocky_root(fstab: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = vec![
        (
            "etc/os-release".into(),
            "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n\
             VERSION_ID=\"9.4\"\nPRETTY_NAME=\"Rocky Linux 9.4 (Blue Onyx)\"\n"
                .into(),
        ),
        (
            "etc/redhat-release".into(),
            "Rocky Linux release 9.4 (Blue Onyx)\n".into(),
        ),
        ("etc/hostname".into(), "rocky-guest\n".into()),
        ("etc/fstab".into(), fstab.into()),
    ];
    for d in [
        "boot", "home", "bin", "sbin", "usr/bin", "lib", "var", "tmp", "root",
    ] {
        files.push((format!("{d}/.keep"), String::new()));
    }
    files
}

/// The whole job by hand with util-linux, the offsets known: `rw`
/// mounts, `f` on the root's mount point, everything taken down again.
fn by_hand(
    img: &Path,
    ranges: &[(u64, u64); 3],
    mnt: &Path,
    f: &dyn Fn(&Path) -> Result<f64, String>,
) -> Result<f64, String> {
    let t = Instant::now();
    let mut loops = Vec::new();
    for (at, len) in ranges {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--offset", &at.to_string()])
            .args(["--sizelimit", &len.to_string()])
            .arg(img)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        loops.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    // loops: /boot, root, /home; mounted root first.
    bench::timed(Command::new("mount").arg(&loops[1]).arg(mnt))?;
    bench::timed(Command::new("mount").arg(&loops[0]).arg(mnt.join("boot")))?;
    bench::timed(Command::new("mount").arg(&loops[2]).arg(mnt.join("home")))?;
    let targets = [mnt.to_path_buf(), mnt.join("boot"), mnt.join("home")];
    f(mnt)?;
    for t in targets.iter().rev() {
        bench::timed(Command::new("umount").arg(t))?;
    }
    for l in &loops {
        bench::timed(Command::new("losetup").args(["-d", l]))?;
    }
    Ok(bench::ms(t.elapsed()))
}

/// The floor: a filesystem mounted on `target` by `mount(2)`.
fn floor_mount(node: &str, target: &Path, fstype: &str) -> Result<(), String> {
    nix::mount::mount(
        Some(node),
        target,
        Some(fstype),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(""),
    )
    .map_err(|e| format!("mount {node} on {}: {e}", target.display()))
}

/// The floor: a detached mount of `node` (fsopen .. fsmount).
fn detached(node: &str, fstype: &str) -> Result<std::os::fd::OwnedFd, String> {
    use rustix::mount::*;
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| format!("fsopen: {e}"))?;
    fsconfig_set_string(&fs, "source", node).map_err(|e| format!("fsconfig: {e}"))?;
    fsconfig_create(&fs).map_err(|e| format!("fsconfig create {node}: {e}"))?;
    fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )
    .map_err(|e| format!("fsmount {node}: {e}"))
}

/// The floor: the detached mount `m` attached on `target`.
fn attach_at(m: &std::os::fd::OwnedFd, target: &Path) -> Result<(), String> {
    use rustix::mount::*;
    move_mount(
        m,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("move_mount on {}: {e}", target.display()))
}

/// The floor's teardown of one mount: `syncfs`, `umount2`, `BLKFLSBUF`.
fn floor_unmount(target: &Path, dev: &File) -> Result<(), String> {
    let d = File::open(target).map_err(|e| e.to_string())?;
    nix::unistd::syncfs(&d).map_err(|e| format!("syncfs: {e}"))?;
    drop(d);
    nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW).map_err(|e| format!("umount: {e}"))?;
    blk::flsbuf(dev.as_fd()).map_err(|e| format!("BLKFLSBUF: {e}"))
}

/// The same-work floor by bare syscalls, told the offsets and filesystem
/// types (the library finds them: table, LVM metadata, probe, inspection):
/// `mounts` (byte range, where below `mnt`, filesystem type), parents
/// first, each an offset loop device; `etc/hostname` read; every mount
/// flushed and unmounted in reverse, the image `fsync`ed, the devices
/// detached.
fn floor(
    img: &Path,
    mnt: &Path,
    mounts: &[((u64, u64), &str, &str)],
    parallel: bool,
    all_at_once: bool,
) -> Result<f64, String> {
    let t = Instant::now();
    let backing = bench::open_rw(img);
    let mut done = Vec::new();
    let mut result = Ok(());
    let mount_one = |(range, below, fstype): &((u64, u64), &str, &str)| {
        // A device whose mount failed is cleared when `dev` is dropped
        // (autoclear); the mounted ones come down below either way.
        let (node, dev) = bench::floor::attach(&backing, Some(*range));
        let target = mnt.join(below);
        floor_mount(&node, &target, fstype).map(|()| (target, dev))
    };
    if all_at_once {
        // Every filesystem mounted at once, detached (fsmount), then
        // attached parents first (move_mount).
        let got: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = mounts
                .iter()
                .map(|(range, below, fstype)| {
                    let backing = &backing;
                    s.spawn(move || {
                        let (node, dev) = bench::floor::attach(backing, Some(*range));
                        detached(&node, fstype).map(|m| (mnt.join(below), dev, m))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for g in got {
            match g {
                Ok((target, dev, m)) => {
                    if result.is_ok() {
                        result = attach_at(&m, &target);
                        if result.is_ok() {
                            done.push((target, dev));
                        }
                    }
                }
                Err(e) => result = result.and(Err(e)),
            }
        }
    } else if parallel && mounts.len() > 1 {
        // The root first, then its children at once.
        match mount_one(&mounts[0]) {
            Ok(d) => done.push(d),
            Err(e) => result = Err(e),
        }
        if result.is_ok() {
            let got: Vec<_> = std::thread::scope(|s| {
                let hs: Vec<_> = mounts[1..]
                    .iter()
                    .map(|m| s.spawn(move || mount_one(m)))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for g in got {
                match g {
                    Ok(d) => done.push(d),
                    Err(e) => result = result.and(Err(e)),
                }
            }
        }
    } else {
        for m in mounts {
            match mount_one(m) {
                Ok(d) => done.push(d),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    if result.is_ok() {
        result = std::fs::read_to_string(mnt.join("etc/hostname"))
            .map(drop)
            .map_err(|e| e.to_string());
    }
    if (parallel || all_at_once) && done.len() > 1 {
        let children: Vec<Result<(), String>> = std::thread::scope(|s| {
            let hs: Vec<_> = done[1..]
                .iter()
                .map(|(target, dev)| s.spawn(move || floor_unmount(target, dev)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for c in children {
            result = result.and(c);
        }
        result = result.and(floor_unmount(&done[0].0, &done[0].1));
    } else {
        for (target, dev) in done.iter().rev() {
            let unmounted = floor_unmount(target, dev);
            result = result.and(unmounted);
        }
    }
    result = result.and(backing.sync_all().map_err(|e| e.to_string()));
    for (_, dev) in done {
        let cleared = loop_dev::clr_fd(dev.as_fd()).map_err(|e| format!("LOOP_CLR_FD: {e}"));
        result = result.and(cleared);
    }
    result?;
    Ok(bench::ms(t.elapsed()))
}

fn main() {
    bench::require_root("guest_os");
    let _ = env_logger::builder().format_timestamp_micros().try_init();
    let iterations: usize = bench::arg("--iterations").unwrap_or(20);
    let guestfs_iterations: usize = bench::arg("--guestfs-iterations").unwrap_or(2);
    let machine = bench::print_machine("guest_os");
    let fx = common::Fixture::new();
    let seed = |w: &str| fs_uuid(&format!("{}/bench-{w}", fx.path().display()));
    let (boot, root, home, swap) = (seed("boot"), seed("root"), seed("home"), seed("swap"));
    let fstab = format!(
        "/dev/mapper/rl-root / xfs defaults 0 0\n\
         UUID={boot} /boot xfs defaults 0 0\n\
         /dev/mapper/rl-home /home ext4 defaults 0 0\n\
         /dev/mapper/rl-swap none swap defaults 0 0\n"
    );
    let script = format!(
        "label: gpt\nsize=1MiB, type={}\nsize=300MiB, type=L\ntype={}\n",
        common::lvm::BIOS_BOOT,
        common::lvm::LINUX_LVM
    );
    let id = |s: &str| vec![("id".to_string(), s.to_string())];
    let img = fx.lvm_image(
        "rocky.img",
        724 << 20,
        Some((&script, 3)),
        &[(2, "xfs", &boot, id("boot"))],
        "rl",
        vec![
            LvDef::new(
                "root",
                &[(0, 75)],
                Content::Fs {
                    fstype: "xfs",
                    uuid: root,
                    files: rocky_root(&fstab),
                },
            ),
            LvDef::new(
                "home",
                &[(75, 8)],
                Content::Fs {
                    fstype: "ext4",
                    uuid: home,
                    files: id("home"),
                },
            ),
            LvDef::new("swap", &[(83, 4)], Content::Swap { uuid: swap }),
        ],
    );
    // As an installer leaves it: the VG autoactivates (the fixture makes
    // it with autoactivation off for the host's sake; libguestfs's
    // appliance activates only VGs that allow it). Metadata only: nothing
    // is activated here, and diskmount never asks the host's LVM.
    img.report("vgchange", &["-q", "--setautoactivation", "y", "rl"]);
    let parts = common::layout(&img.path);
    let &(_, boot_at, boot_len) = parts.iter().find(|p| p.0 == 2).unwrap();
    let ranges = [
        (boot_at, boot_len),
        img.lv_ranges("root")[0],
        img.lv_ranges("home")[0],
    ];
    let payload = fx.path().join("motd");
    std::fs::write(&payload, "provisioned\n").unwrap();
    let hand_mnt = fx.tree("hand", &[]);
    let image = || Image::file(&img.path, Format::Raw).unwrap();

    // diskmount and by hand.
    let dm_run = || {
        bench::timed(
            Command::new(DISKMOUNT)
                .args(["run", "--partition", "os"])
                .arg(&img.path)
                .args(["--", "cat", "etc/hostname"]),
        )
    };
    let dm_copy_in = || {
        bench::timed(
            Command::new(DISKMOUNT)
                .args(["copy-in", "--partition", "os"])
                .arg(&img.path)
                .arg(&payload)
                .arg("/etc"),
        )
    };
    let hand_cat = || {
        by_hand(&img.path, &ranges, &hand_mnt, &|m| {
            bench::timed(Command::new("cat").arg(m.join("etc/hostname")))
        })
    };
    let hand_copy_in = || {
        by_hand(&img.path, &ranges, &hand_mnt, &|m| {
            bench::timed(Command::new("cp").arg(&payload).arg(m.join("etc")))
        })
    };
    // In process.
    let lib_os = || {
        let t = Instant::now();
        with_mounted(&image(), Partition::Os, |d| {
            std::fs::read_to_string(d.join("etc/hostname")).unwrap()
        })
        .map_err(|e| e.to_string())?;
        Ok(bench::ms(t.elapsed()))
    };
    let lib_lv = || {
        let t = Instant::now();
        with_mounted(
            &image(),
            Partition::LogicalVolume {
                vg: "rl".into(),
                lv: "root".into(),
            },
            |d| std::fs::read_to_string(d.join("etc/hostname")).unwrap(),
        )
        .map_err(|e| e.to_string())?;
        Ok(bench::ms(t.elapsed()))
    };
    let floor_mnt = fx.tree("floor", &[]);
    let floor_single = || {
        floor(
            &img.path,
            &floor_mnt,
            &[(ranges[1], "", "xfs")],
            false,
            false,
        )
    };
    let tree_mounts = [
        (ranges[1], "", "xfs"),
        (ranges[0], "boot", "xfs"),
        (ranges[2], "home", "ext4"),
    ];
    let floor_tree = || floor(&img.path, &floor_mnt, &tree_mounts, false, false);
    let floor_tree_parallel = || floor(&img.path, &floor_mnt, &tree_mounts, true, false);
    let floor_tree_all = || floor(&img.path, &floor_mnt, &tree_mounts, false, true);
    // Inspection of a copy, attached once (an attached image is locked).
    let copy = fx.path().join("rocky-inspect.img");
    bench::run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&img.path)
            .arg(&copy),
    );
    let attached = Unattached::<Loop>::new(Image::file(&copy, Format::Raw).unwrap())
        .attach()
        .unwrap();
    let inspect = || {
        let t = Instant::now();
        let found = attached.inspect_os().map_err(|e| e.to_string())?;
        assert_eq!(found.len(), 1);
        Ok(bench::ms(t.elapsed()))
    };
    // Warm-up, and proof each works.
    for f in [
        &dm_run as &dyn Fn() -> Result<f64, String>,
        &dm_copy_in,
        &hand_cat,
        &hand_copy_in,
        &lib_os,
        &lib_lv,
        &inspect,
        &floor_single,
        &floor_tree,
        &floor_tree_parallel,
        &floor_tree_all,
    ] {
        f().unwrap();
    }
    type Op<'a> = (&'a str, &'a dyn Fn() -> Result<f64, String>);
    let mut tables = Vec::new();
    let run_table = |id: &str, what: &str, ops: &[Op], n: usize| {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); ops.len()];
        for _ in 0..n {
            for (i, (name, op)) in ops.iter().enumerate() {
                times[i].push(op().unwrap_or_else(|e| panic!("{name}: {e}")));
            }
        }
        let mut t = Table::new(id, what, "ms", "vs first");
        for ((name, _), v) in ops.iter().zip(times) {
            t.push(name, stats(v));
        }
        t.print();
        t
    };
    tables.push(run_table(
        "guest_os-inspection",
        &format!("in process: OS inspection, and a with_mounted cycle, {iterations} runs"),
        &[
            ("Attached::inspect_os (attached image)", &inspect),
            ("with_mounted(LogicalVolume rl/root)", &lib_lv),
            (
                "with_mounted(Os): inspection + root + /boot + /home",
                &lib_os,
            ),
        ],
        iterations,
    ));
    drop(attached);
    tables.push(run_table(
        "guest_os-floor",
        &format!(
            "the OS tree and one LV, library and same-work floor (bare syscalls, offsets and \
             types known), {iterations} runs"
        ),
        &[
            ("with_mounted(LogicalVolume rl/root)", &lib_lv),
            ("with_mounted(Os): root + /boot + /home", &lib_os),
            ("floor: rl/root, one offset loop and mount", &floor_single),
            ("floor: root + /boot + /home, three of each", &floor_tree),
            (
                "floor: root, then /boot and /home at once (two threads)",
                &floor_tree_parallel,
            ),
            (
                "floor: all three at once (detached, then attached)",
                &floor_tree_all,
            ),
        ],
        iterations,
    ));
    let mut read: Vec<Op> = vec![
        ("diskmount run --partition os -- cat etc/hostname", &dm_run),
        (
            "by hand: 3 losetup, 3 mount, cat, 3 umount, 3 losetup -d",
            &hand_cat,
        ),
    ];
    let mut write: Vec<Op> = vec![
        ("diskmount copy-in --partition os FILE /etc", &dm_copy_in),
        (
            "by hand: 3 losetup, 3 mount, cp, 3 umount, 3 losetup -d",
            &hand_copy_in,
        ),
    ];
    tables.push(run_table(
        "guest_os-read",
        &format!("read /etc/hostname of the Rocky layout, whole command, {iterations} runs"),
        &read,
        iterations,
    ));
    tables.push(run_table(
        "guest_os-write",
        &format!("write a file into /etc of the Rocky layout, whole command, {iterations} runs"),
        &write,
        iterations,
    ));
    // libguestfs, fewer runs, next to the first row of each job.
    let guestfs_env = |c: &mut Command| {
        c.env("LIBGUESTFS_BACKEND", "direct")
            .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
    };
    let fish = || {
        let mut c = Command::new("guestfish");
        guestfs_env(&mut c);
        c.args(["--ro", "-a"])
            .arg(&img.path)
            .args(["-i", "cat", "/etc/hostname"]);
        bench::timed(&mut c)
    };
    let copy_in = || {
        let mut c = Command::new("virt-copy-in");
        guestfs_env(&mut c);
        c.arg("-a").arg(&img.path).arg(&payload).arg("/etc");
        bench::timed(&mut c)
    };
    let guestfs = match Command::new("guestfish").arg("--version").output() {
        Err(_) => Err("libguestfs not installed: apt-get install libguestfs-tools".to_string()),
        Ok(_) => fish(),
    };
    match guestfs {
        Err(e) => {
            println!("libguestfs part skipped: {e}");
            // What libguestfs sees of the image, to say why.
            let mut c = Command::new("guestfish");
            guestfs_env(&mut c);
            c.args(["--ro", "-a"]).arg(&img.path).args([
                "run",
                ":",
                "lvs",
                ":",
                "list-filesystems",
                ":",
                "inspect-os",
            ]);
            if let Ok(out) = c.output() {
                println!(
                    "libguestfs sees:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(_) => {
            read.truncate(1);
            read.push(("guestfish --ro -a IMG -i cat /etc/hostname", &fish));
            write.truncate(1);
            write.push(("virt-copy-in -a IMG FILE /etc", &copy_in));
            tables.push(run_table(
                "guest_os-guestfs-read",
                &format!(
                    "read /etc/hostname: diskmount vs libguestfs (TCG), {guestfs_iterations} runs"
                ),
                &read,
                guestfs_iterations,
            ));
            tables.push(run_table(
                "guest_os-guestfs-write",
                &format!(
                    "write into /etc: diskmount vs libguestfs (TCG), {guestfs_iterations} runs"
                ),
                &write,
                guestfs_iterations,
            ));
        }
    }
    bench::write_results("guest_os", &machine, &tables);
    let dir: PathBuf = fx.path().to_path_buf();
    drop(fx);
    bench::assert_clean(&dir);
}

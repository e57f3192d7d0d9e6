//! btrfs subvolumes on a Fedora-like image (GPT: ext4 `/boot`, btrfs
//! with subvolumes `root` and `home`, and `root/var/lib/machines` inside
//! `root`): listed through the kernel's btrfs ioctls as `btrfs subvolume
//! list` lists them, and mounted with `MountOptions::subvolume`, every
//! write checked with an independent util-linux mount.

mod common;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::lvm::{LoopDev, fs_uuid, os_root};
use common::{Fixture, layout, run};
use diskmount::volume::btrfs::{Subvolume, TOP_LEVEL, list_subvolumes};
use diskmount::{Error, Format, Image, MountOptions, Partition, Step, with_mounted_opts};

/// A Fedora-like image and where its btrfs partition is.
struct Fedora {
    path: PathBuf,
    btrfs: (u64, u64),
    boot: (u64, u64),
}

/// GPT with an ext4 `/boot` (partition 1, file `id` = `boot`) and a btrfs
/// (partition 2) holding subvolumes `root` (an OS root, `id` = `root`),
/// `home` (`id` = `home`) and `root/var/lib/machines`, and a file `id` =
/// `top` in the top level. Made by sfdisk, mkfs and `btrfs subvolume
/// create` through loop devices of the partitions' exact sizes.
fn fedora_image(fx: &Fixture, name: &str) -> Fedora {
    let img = fx.blank(name, 400 << 20);
    let script = fx.path().join(format!("{name}.sfdisk"));
    std::fs::write(
        &script,
        "label: gpt\nsize=64MiB, type=L, name=\"boot\"\ntype=L, name=\"fedora\"\n",
    )
    .unwrap();
    run(Command::new("sh").arg("-c").arg(format!(
        "sfdisk -q --no-reread --no-tell-kernel {} < {}",
        img.display(),
        script.display()
    )));
    let parts = layout(&img);
    let (boot, btrfs) = ((parts[0].1, parts[0].2), (parts[1].1, parts[1].2));
    let boot_uuid = fs_uuid(&format!("{}/{name}-boot", fx.path().display()));
    let btrfs_uuid = fs_uuid(&format!("{}/{name}-btrfs", fx.path().display()));
    let src = fx.tree(&format!("{name}.boot"), &[("id", "boot")]);
    {
        let dev = LoopDev::attach(&img, boot.0, boot.1);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-U", &boot_uuid, "-d"])
            .arg(&src)
            .arg(&dev.dev));
    }
    let fstab = format!(
        "UUID={btrfs_uuid} /     btrfs subvol=root,compress=zstd:1 0 0\n\
         UUID={boot_uuid}  /boot ext4  defaults                  1 2\n\
         UUID={btrfs_uuid} /home btrfs subvol=home,compress=zstd:1 0 0\n"
    );
    let dev = LoopDev::attach(&img, btrfs.0, btrfs.1);
    run(Command::new("mkfs.btrfs").args(["-q", "-f", "-U", &btrfs_uuid, &dev.dev]));
    let mnt = fx.path().join(format!("{name}.mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount").arg(&dev.dev).arg(&mnt));
    let made = std::panic::catch_unwind(|| {
        for sub in ["root", "home"] {
            run(Command::new("btrfs")
                .args(["-q", "subvolume", "create"])
                .arg(mnt.join(sub)));
        }
        std::fs::create_dir_all(mnt.join("root/var/lib")).unwrap();
        run(Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(mnt.join("root/var/lib/machines")));
        for (rel, content) in os_root(
            "fedora",
            "41",
            "Fedora Linux 41 (Server Edition)",
            "fedora-guest",
            &fstab,
            "root",
        ) {
            let p = mnt.join("root").join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        std::fs::write(mnt.join("home/id"), "home").unwrap();
        std::fs::write(mnt.join("id"), "top").unwrap();
    });
    common::system::umount(&mnt);
    // mkfs.btrfs and the mount registered the loop device as this fsid's
    // device in the kernel; unregistered, a later mount of the same fsid
    // from another device never reaches for this one (its number may by
    // then serve another test's image).
    run(Command::new("btrfs")
        .args(["device", "scan", "--forget"])
        .arg(&dev.dev));
    drop(dev);
    if let Err(p) = made {
        std::panic::resume_unwind(p);
    }
    Fedora {
        path: img,
        btrfs,
        boot,
    }
}

/// Runs `f` on the btrfs partition mounted read-only by util-linux (an
/// offset loop device), with `subvol` if given.
fn independent<R>(
    fx: &Fixture,
    img: &Fedora,
    subvol: Option<&str>,
    f: impl FnOnce(&Path) -> R,
) -> R {
    mount_part(fx, &img.path, img.btrfs, subvol, f)
}

fn mount_part<R>(
    fx: &Fixture,
    img: &Path,
    (start, size): (u64, u64),
    subvol: Option<&str>,
    f: impl FnOnce(&Path) -> R,
) -> R {
    let mnt = fx.path().join(format!(
        "check-{start}-{}",
        subvol.unwrap_or("top").replace('/', "_")
    ));
    std::fs::create_dir_all(&mnt).unwrap();
    let mut opts = format!("ro,loop,offset={start},sizelimit={size}");
    if let Some(s) = subvol {
        opts += &format!(",subvol={s}");
    }
    run(Command::new("mount").arg("-o").arg(opts).arg(img).arg(&mnt));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mnt)));
    common::system::umount(&mnt);
    result.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn open_dir(dir: &Path) -> std::fs::File {
    std::fs::File::open(dir).unwrap()
}

/// The tests of this file run one at a time: btrfs keeps a registry of
/// devices by filesystem id in the kernel, and two tests making, mounting
/// and detaching btrfs loop devices at once left one test's loop device
/// held (bound past its teardown) about one run in two.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn lists_the_subvolumes_as_btrfs_progs_does() {
    let _one_at_a_time = serial();
    let mut fx = Fixture::new();
    let img = fedora_image(&fx, "fedora.img");
    let (ours, theirs) = independent(&fx, &img, None, |top| {
        let ours = list_subvolumes(open_dir(top).as_fd(), top).unwrap();
        let theirs = run(Command::new("btrfs")
            .args(["subvolume", "list", "-p"])
            .arg(top));
        (ours, theirs)
    });
    let sub = |id, parent, name: &str, path: &str| Subvolume {
        id,
        parent,
        name: name.into(),
        path: path.into(),
    };
    assert_eq!(
        ours,
        [
            sub(256, TOP_LEVEL, "root", "root"),
            sub(257, TOP_LEVEL, "home", "home"),
            sub(258, 256, "machines", "root/var/lib/machines"),
        ]
    );
    // "ID 258 gen 9 parent 256 top level 256 path root/var/lib/machines"
    let mut listed: Vec<(u64, u64, String)> = theirs
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (
                w[1].parse().unwrap(),
                w[5].parse().unwrap(),
                w[w.len() - 1].to_string(),
            )
        })
        .collect();
    listed.sort();
    let mine: Vec<(u64, u64, String)> = ours
        .iter()
        .map(|s| (s.id, s.parent, s.path.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(mine, listed, "btrfs subvolume list -p said:\n{theirs}");
    fx.assert_clean();
}

#[test]
fn listing_a_filesystem_that_is_not_btrfs_is_a_clear_error() {
    let _one_at_a_time = serial();
    let mut fx = Fixture::new();
    let img = fedora_image(&fx, "fedora.img");
    let err = mount_part(&fx, &img.path, img.boot, None, |boot| {
        list_subvolumes(open_dir(boot).as_fd(), boot).unwrap_err()
    });
    assert_eq!(err.step(), Some(Step::Probe));
    let msg = err.to_string();
    assert!(
        msg.contains("BTRFS_IOC_TREE_SEARCH of the root tree (not a btrfs filesystem)"),
        "{msg}"
    );
    fx.assert_clean();
}

#[test]
fn mounts_a_subvolume_and_writes_land_in_it_only() {
    let _one_at_a_time = serial();
    let mut fx = Fixture::new();
    let img = fedora_image(&fx, "fedora.img");
    let image = Image::file(&img.path, Format::Raw).unwrap();
    let opts = |s: &str| MountOptions::default().subvolume(s);

    let hostname = with_mounted_opts(&image, Partition::Number(2), &opts("root"), |dir| {
        std::fs::read_to_string(dir.join("etc/hostname")).unwrap()
    })
    .unwrap();
    assert_eq!(hostname, "fedora-guest\n");

    with_mounted_opts(&image, Partition::Number(2), &opts("home"), |dir| {
        assert_eq!(std::fs::read_to_string(dir.join("id")).unwrap(), "home");
        let root = diskmount::root::Root::open(dir).unwrap();
        root.mkdir_all("/alice/.ssh", 0o700).unwrap();
        root.write(
            "/alice/.ssh/authorized_keys",
            "ssh-ed25519 AAAA test\n",
            0o600,
        )
        .unwrap();
    })
    .unwrap();
    // Where it belongs, and nowhere else.
    independent(&fx, &img, Some("home"), |home| {
        assert_eq!(
            std::fs::read_to_string(home.join("alice/.ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 AAAA test\n"
        );
    });
    independent(&fx, &img, Some("root"), |root| {
        assert!(!root.join("alice").exists())
    });
    independent(&fx, &img, None, |top| {
        assert!(!top.join("alice").exists());
        assert_eq!(std::fs::read_to_string(top.join("id")).unwrap(), "top");
    });

    let nested = with_mounted_opts(
        &image,
        Partition::Number(2),
        &opts("root/var/lib/machines"),
        |dir| std::fs::read_dir(dir).unwrap().count(),
    )
    .unwrap();
    assert_eq!(nested, 0);
    fx.assert_clean();
}

#[test]
fn an_unknown_or_unpassable_subvolume_is_a_clear_error() {
    let _one_at_a_time = serial();
    let mut fx = Fixture::new();
    let img = fedora_image(&fx, "fedora.img");
    let image = Image::file(&img.path, Format::Raw).unwrap();
    let mount = |s: &str| -> Error {
        with_mounted_opts(
            &image,
            Partition::Number(2),
            &MountOptions::default().subvolume(s),
            |_| (),
        )
        .unwrap_err()
    };
    let err = mount("nope");
    assert_eq!(err.step(), Some(Step::Mount), "{err}");
    assert!(err.to_string().contains("subvol=nope"), "{err}");
    for bad in ["home,device=/dev/sda", "", "a\0b"] {
        let err = mount(bad);
        assert_eq!(err.step(), Some(Step::Mount), "{err}");
        assert!(
            err.to_string().contains("cannot be passed to the kernel"),
            "{err}"
        );
    }
    fx.assert_clean();
}

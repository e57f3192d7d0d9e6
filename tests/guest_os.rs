//! OS inspection, `Partition::Auto` finding the OS root and
//! `Partition::Os` mounting the guest's fstab, on images made with
//! sfdisk, mkfs.* and `btrfs subvolume create`; every write checked with
//! an independent util-linux mount (an offset loop, `subvol=`) of the
//! filesystem that should hold it, and the wrong one checked not to.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::lvm::{LoopDev, os_root};
use common::{Fixture, layout, run};
use diskmount::{Format, Image, MountOptions, Partition, with_mounted, with_mounted_opts};

fn raw(img: &Path) -> Image {
    Image::file(img, Format::Raw).unwrap()
}

/// One test at a time: btrfs fixtures register their loop devices.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// An image partitioned by sfdisk from `script`; returns it and its
/// `(start, size)` per data partition, by number.
fn partitioned(
    fx: &Fixture,
    name: &str,
    size: u64,
    script: &str,
) -> (PathBuf, Vec<(u32, u64, u64)>) {
    let img = fx.blank(name, size);
    let file = fx.path().join(format!("{name}.sfdisk"));
    std::fs::write(&file, script).unwrap();
    run(Command::new("sh").arg("-c").arg(format!(
        "sfdisk -q --no-reread --no-tell-kernel {} < {}",
        img.display(),
        file.display()
    )));
    let parts = layout(&img);
    (img, parts)
}

fn geometry(parts: &[(u32, u64, u64)], n: u32) -> (u64, u64) {
    let p = parts.iter().find(|p| p.0 == n).unwrap();
    (p.1, p.2)
}

/// mkfs `fstype` (ext4, vfat, swap) with `label` in the partition at
/// `at`, holding `files`.
fn make_fs(
    fx: &Fixture,
    img: &Path,
    at: (u64, u64),
    fstype: &str,
    label: &str,
    files: &[(String, String)],
) {
    let src = fx.path().join(format!("src-{}", at.0));
    std::fs::create_dir_all(&src).unwrap();
    for (rel, content) in files {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let dev = LoopDev::attach(img, at.0, at.1);
    match fstype {
        "ext4" => run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-d"])
            .arg(&src)
            .arg(&dev.dev)),
        "vfat" => run(Command::new("mkfs.vfat").args(["-n", label, &dev.dev])),
        "swap" => run(Command::new("mkswap").args(["-L", label, &dev.dev])),
        other => panic!("no recipe for {other}"),
    };
}

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Runs `f` on the partition at `at` mounted read-only by util-linux.
fn independent<R>(
    fx: &Fixture,
    img: &Path,
    at: (u64, u64),
    subvol: Option<&str>,
    f: impl FnOnce(&Path) -> R,
) -> R {
    let mnt = fx
        .path()
        .join(format!("check-{}-{}", at.0, subvol.unwrap_or("top")));
    std::fs::create_dir_all(&mnt).unwrap();
    let mut opts = format!("ro,loop,offset={},sizelimit={}", at.0, at.1);
    if let Some(s) = subvol {
        opts += &format!(",subvol={s}");
    }
    run(Command::new("mount").arg("-o").arg(opts).arg(img).arg(&mnt));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mnt)));
    common::system::umount(&mnt);
    result.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Debian-like MBR: 1 ext4 `/boot` (LABEL=boot), 2 ext4 root, extended,
/// 5 ext4 `/var` (by PARTUUID), 6 swap (`/dev/sda6`); the fstab also has
/// a missing `nofail` entry, and `extra` lines.
fn debian(fx: &Fixture, name: &str, extra: &str) -> (PathBuf, Vec<(u32, u64, u64)>) {
    let (img, parts) = partitioned(
        fx,
        name,
        200 << 20,
        "label: dos\nlabel-id: 0x1234abcd\nsize=32MiB, type=83\nsize=64MiB, type=83\ntype=5\nsize=40MiB, type=83\nsize=16MiB, type=82\n",
    );
    let fstab = format!(
        "# /etc/fstab\n\
         /dev/sda2 / ext4 errors=remount-ro 0 1\n\
         LABEL=boot /boot ext4 defaults 0 2\n\
         PARTUUID=1234abcd-05 /var ext4 defaults 0 2\n\
         /dev/sda6 none swap sw 0 0\n\
         UUID=0badc0de-0000-4000-8000-000000000000 /media/usb ext4 defaults,nofail 0 0\n\
         proc /proc proc defaults 0 0\n{extra}"
    );
    let mut root = os_root(
        "debian",
        "12",
        "Debian GNU/Linux 12 (bookworm)",
        "debian-guest",
        &fstab,
        "root",
    );
    for d in [
        "boot/.keep",
        "var/.keep",
        "media/usb/.keep",
        "boot/efi/.keep",
        "proc/.keep",
    ] {
        root.push((d.to_string(), String::new()));
    }
    make_fs(
        fx,
        &img,
        geometry(&parts, 1),
        "ext4",
        "boot",
        &files(&[("id", "boot")]),
    );
    make_fs(fx, &img, geometry(&parts, 2), "ext4", "root", &root);
    make_fs(
        fx,
        &img,
        geometry(&parts, 5),
        "ext4",
        "var",
        &files(&[("id", "var")]),
    );
    make_fs(fx, &img, geometry(&parts, 6), "swap", "swap", &[]);
    (img, parts)
}

#[test]
fn debian_layout_mounts_its_fstab_and_writes_land_in_the_right_filesystem() {
    let _s = serial();
    let mut fx = Fixture::new();
    let (img, parts) = debian(&fx, "debian.img", "");
    with_mounted(&raw(&img), Partition::Os, |dir| {
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/hostname")).unwrap(),
            "debian-guest\n"
        );
        assert_eq!(std::fs::read_to_string(dir.join("id")).unwrap(), "root");
        assert_eq!(
            std::fs::read_to_string(dir.join("boot/id")).unwrap(),
            "boot"
        );
        assert_eq!(std::fs::read_to_string(dir.join("var/id")).unwrap(), "var");
        std::fs::write(dir.join("var/written"), "into var").unwrap();
        std::fs::write(dir.join("boot/written"), "into boot").unwrap();
    })
    .unwrap();
    independent(&fx, &img, geometry(&parts, 5), None, |d| {
        assert_eq!(
            std::fs::read_to_string(d.join("written")).unwrap(),
            "into var"
        );
    });
    independent(&fx, &img, geometry(&parts, 1), None, |d| {
        assert_eq!(
            std::fs::read_to_string(d.join("written")).unwrap(),
            "into boot"
        );
    });
    independent(&fx, &img, geometry(&parts, 2), None, |d| {
        assert!(
            !d.join("var/written").exists(),
            "the root filesystem took /var's write"
        );
        assert!(
            !d.join("boot/written").exists(),
            "the root filesystem took /boot's write"
        );
    });
    fx.assert_clean();
}

#[test]
fn mounted_lists_every_mount_and_inspection_reports_the_os() {
    let _s = serial();
    let mut fx = Fixture::new();
    let (img, _) = debian(&fx, "list.img", "");
    let image = raw(&img);
    let attached = diskmount::Unattached::<diskmount::Loop>::new(image)
        .attach()
        .unwrap();
    let os = attached.inspect_os().unwrap();
    assert_eq!(os.len(), 1, "{os:?}");
    assert_eq!(os[0].root, "partition 2");
    assert_eq!(os[0].id, "debian");
    assert_eq!(os[0].version_id.as_deref(), Some("12"));
    assert_eq!(os[0].hostname.as_deref(), Some("debian-guest"));
    assert!(
        os[0]
            .mountpoints
            .iter()
            .any(|m| m.mountpoint == "/var" && m.skip.is_none())
    );
    assert!(
        os[0]
            .mountpoints
            .iter()
            .any(|m| m.mountpoint == "none" && m.skip.as_deref() == Some("swap"))
    );
    let dir = fx.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let mounted = attached
        .map(Partition::Os)
        .unwrap()
        .mount(&dir, &MountOptions::default().read_only(true))
        .unwrap();
    let list: Vec<(PathBuf, String, bool)> = mounted
        .mounts()
        .into_iter()
        .map(|m| (m.guest_path, m.fstype, m.read_only))
        .collect();
    assert_eq!(
        list,
        vec![
            (PathBuf::from("/"), "ext4".to_string(), true),
            (PathBuf::from("/boot"), "ext4".to_string(), true),
            (PathBuf::from("/var"), "ext4".to_string(), true),
        ]
    );
    assert!(
        std::fs::write(dir.join("var/x"), "x").is_err(),
        "--read-only covers /var"
    );
    mounted.close().unwrap();
    fx.assert_clean();
}

/// The mount points below `dir` (not `dir`).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    common::system::mounts()
        .into_iter()
        .map(|(_, t)| PathBuf::from(t))
        .filter(|t| t.starts_with(dir) && t != dir)
        .collect()
}

/// An MBR image: 1 ext4 (LABEL=one), 2 ext4 root with `fstab`, 3 ext4
/// (LABEL=three) holding `log/`; the root has `var/` and `srv/`.
fn nested(fx: &Fixture, name: &str, fstab: &str) -> (PathBuf, Vec<(u32, u64, u64)>) {
    let (img, parts) = partitioned(
        fx,
        name,
        160 << 20,
        "label: dos\nsize=32MiB, type=83\nsize=64MiB, type=83\ntype=83\n",
    );
    let mut root = os_root(
        "debian",
        "12",
        "Debian GNU/Linux 12",
        "nested",
        fstab,
        "root",
    );
    for d in ["var/.keep", "srv/.keep", "notadir"] {
        root.push((d.to_string(), String::new()));
    }
    make_fs(
        fx,
        &img,
        geometry(&parts, 1),
        "ext4",
        "one",
        &files(&[("id", "one")]),
    );
    make_fs(fx, &img, geometry(&parts, 2), "ext4", "root", &root);
    make_fs(
        fx,
        &img,
        geometry(&parts, 3),
        "ext4",
        "three",
        &files(&[("id", "three"), ("log/.keep", "")]),
    );
    (img, parts)
}

/// The filesystems of a tree mount while the root mounts and come down
/// together where none holds another: a mount inside another's filesystem
/// (`/var/log` on `/var`, two other devices) still goes up after and comes
/// down before it, and each write lands in its own filesystem.
#[test]
fn nested_mounts_on_other_devices_go_up_parents_first_and_come_down_children_first() {
    let _s = serial();
    let mut fx = Fixture::new();
    let fstab = "/dev/sda2 / ext4 defaults 0 1\n\
                 LABEL=one /var/log ext4 defaults 0 2\n\
                 LABEL=three /var ext4 defaults 0 2\n";
    let (img, parts) = nested(&fx, "nested.img", fstab);
    let mounts = with_mounted(&raw(&img), Partition::Os, |dir| {
        assert_eq!(
            std::fs::read_to_string(dir.join("var/id")).unwrap(),
            "three"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("var/log/id")).unwrap(),
            "one"
        );
        std::fs::write(dir.join("var/log/written"), "into one").unwrap();
        std::fs::write(dir.join("var/written"), "into three").unwrap();
        mounts_under(dir)
    })
    .unwrap();
    // The mount table lists mounts by when they were made (the kernel's
    // mount ids), not where: both made at once, either may come first.
    // That `/var/log` went up after `/var` is what the reads above show
    // (`/var`'s filesystem has an empty `log/`).
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    assert!(
        mounts.iter().any(|m| m.ends_with("var")) && mounts.iter().any(|m| m.ends_with("var/log")),
        "{mounts:?}"
    );
    independent(&fx, &img, geometry(&parts, 1), None, |d| {
        assert_eq!(
            std::fs::read_to_string(d.join("written")).unwrap(),
            "into one"
        );
    });
    independent(&fx, &img, geometry(&parts, 3), None, |d| {
        assert_eq!(
            std::fs::read_to_string(d.join("written")).unwrap(),
            "into three"
        );
        assert!(
            !d.join("log/written").exists(),
            "/var took /var/log's write"
        );
    });
    fx.assert_clean();
}

/// Mounts partition 2 (the root) of `img` by hand on `<fx>/edit`, lets
/// `f` change its tree, and unmounts it.
fn edit_root(fx: &Fixture, img: &Path, parts: &[(u32, u64, u64)], f: impl FnOnce(&Path)) {
    let (s2, z2) = geometry(parts, 2);
    let dev = LoopDev::attach(img, s2, z2);
    let mnt = fx.path().join("edit");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount").arg(&dev.dev).arg(&mnt));
    f(&mnt);
    common::system::umount(&mnt);
}

/// A guest link can put an fstab mount point under one the fstab lists
/// later (`/home` -> `var/home`, then `/var`): the later mount covers the
/// earlier, and the teardown takes it down first.
#[test]
fn a_mount_covered_by_a_later_one_comes_down_after_it() {
    let _s = serial();
    let mut fx = Fixture::new();
    let fstab = "/dev/sda2 / ext4 defaults 0 1\n\
                 LABEL=one /home ext4 defaults 0 2\n\
                 LABEL=three /var ext4 defaults 0 2\n";
    let (img, parts) = nested(&fx, "covered.img", fstab);
    edit_root(&fx, &img, &parts, |mnt| {
        std::fs::create_dir_all(mnt.join("var/home")).unwrap();
        std::os::unix::fs::symlink("var/home", mnt.join("home")).unwrap();
    });
    with_mounted(&raw(&img), Partition::Os, |dir| {
        // /var (three) covers the /home mount made on the root's var/home.
        assert_eq!(
            std::fs::read_to_string(dir.join("var/id")).unwrap(),
            "three"
        );
        assert_eq!(mounts_under(dir).len(), 2);
    })
    .unwrap();
    fx.assert_clean();
}

/// A guest link that sends an fstab mount point to the root itself
/// (`/srv -> /`): mounting there would bury the guest's root under another
/// filesystem and strand the mounts made before it. Refused, naming the
/// entry; nothing is left.
#[test]
fn a_mount_point_linked_to_the_root_is_refused() {
    let _s = serial();
    let mut fx = Fixture::new();
    let fstab = "/dev/sda2 / ext4 defaults 0 1\n\
                 LABEL=three /var ext4 defaults 0 2\n\
                 LABEL=one /srv ext4 defaults 0 2\n";
    let (img, parts) = nested(&fx, "srv-root.img", fstab);
    edit_root(&fx, &img, &parts, |mnt| {
        std::fs::remove_dir_all(mnt.join("srv")).unwrap();
        std::os::unix::fs::symlink("/", mnt.join("srv")).unwrap();
    });
    let err = with_mounted(&raw(&img), Partition::Os, |_| ()).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.step(), Some(diskmount::Step::Mount), "{msg}");
    assert!(
        msg.contains("/srv") && msg.contains("resolves to the root of the tree"),
        "{msg}"
    );
    fx.assert_clean();
}

/// The root failing to mount read-write (an option its filesystem refuses)
/// after the other filesystems were mounted ahead: the error names the
/// root's mount, and nothing is left, neither those mounts nor their
/// partition devices.
#[test]
fn a_root_that_fails_to_mount_takes_the_filesystems_mounted_ahead_down() {
    let _s = serial();
    let mut fx = Fixture::new();
    let fstab = "/dev/sda2 / ext4 defaults 0 1\n\
                 LABEL=one /srv ext4 defaults 0 2\n\
                 LABEL=three /var ext4 defaults 0 2\n";
    let (img, _) = nested(&fx, "root-fails.img", fstab);
    let err = with_mounted_opts(
        &raw(&img),
        Partition::Os,
        &MountOptions::default().options("no_such_option_here"),
        |_| (),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.step(), Some(diskmount::Step::Mount), "{msg}");
    assert!(msg.contains("no_such_option_here"), "{msg}");
    assert!(err.errors().len() == 1, "teardown trouble too: {msg}");
    fx.assert_clean();
}

/// An fstab entry whose mount point turns out bad: with `nofail` (never
/// mounted ahead) it is skipped and the rest of the tree mounts; without
/// it, the filesystem mounted ahead is let go and the whole mount fails
/// naming the entry. Nothing is left either way.
#[test]
fn a_filesystem_mounted_ahead_of_a_bad_mount_point_is_let_go() {
    let _s = serial();
    let mut fx = Fixture::new();
    let fstab = "/dev/sda2 / ext4 defaults 0 1\n\
                 LABEL=one /srv ext4 defaults 0 2\n\
                 LABEL=three /nowhere ext4 defaults,nofail 0 2\n";
    let (img, _) = nested(&fx, "ahead-nofail.img", fstab);
    let got = with_mounted(&raw(&img), Partition::Os, |dir| {
        assert_eq!(std::fs::read_to_string(dir.join("srv/id")).unwrap(), "one");
        assert!(!dir.join("nowhere").exists());
        mounts_under(dir).len()
    })
    .unwrap();
    assert_eq!(got, 1);
    fx.assert_clean();

    let fstab = "/dev/sda2 / ext4 defaults 0 1\n\
                 LABEL=one /srv ext4 defaults 0 2\n\
                 LABEL=three /notadir ext4 defaults 0 2\n";
    let (img, _) = nested(&fx, "ahead-refused.img", fstab);
    let err = with_mounted(&raw(&img), Partition::Os, |_| ()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("fstab line 3"), "{msg}");
    assert!(msg.contains("not a directory"), "{msg}");
    fx.assert_clean();
}

#[test]
fn a_missing_source_without_nofail_fails_the_whole_mount_and_leaves_nothing() {
    let _s = serial();
    let mut fx = Fixture::new();
    let (img, _) = debian(&fx, "missing.img", "LABEL=nothere /srv ext4 defaults 0 0\n");
    let err = with_mounted(&raw(&img), Partition::Os, |_| ()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("fstab line 8"), "{msg}");
    assert!(msg.contains("nothere"), "{msg}");
    fx.assert_clean();
}

#[test]
fn vfat_without_nofail_is_a_clear_error_and_exclude_covers_it_read_only() {
    let _s = serial();
    let mut fx = Fixture::new();
    let (img, parts) = partitioned(
        &fx,
        "esp.img",
        160 << 20,
        "label: gpt\nsize=32MiB, type=U, name=\"esp\"\ntype=L, name=\"root\"\n",
    );
    let fstab = "PARTLABEL=root / ext4 defaults 0 1\nPARTLABEL=esp /boot/efi vfat umask=0077 0 1\n";
    let mut root = os_root(
        "fedora",
        "41",
        "Fedora Linux 41",
        "esp-guest",
        fstab,
        "root",
    );
    root.push(("boot/efi/.keep".into(), String::new()));
    make_fs(&fx, &img, geometry(&parts, 1), "vfat", "ESP", &[]);
    make_fs(&fx, &img, geometry(&parts, 2), "ext4", "root", &root);
    let err = with_mounted(&raw(&img), Partition::Os, |_| ()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("fstab line 2") && msg.contains("/boot/efi"),
        "{msg}"
    );
    assert!(msg.contains("exclude"), "{msg}");
    fx.assert_clean();
    with_mounted_opts(
        &raw(&img),
        Partition::Os,
        &MountOptions::default().exclude("/boot/efi"),
        |dir| {
            let e = std::fs::write(dir.join("boot/efi/grub.cfg"), "x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(nix::libc::EROFS), "{e}");
            std::fs::write(dir.join("root-ok"), "x").unwrap();
        },
    )
    .unwrap();
    independent(&fx, &img, geometry(&parts, 2), None, |d| {
        assert!(d.join("root-ok").exists());
        assert!(!d.join("boot/efi/grub.cfg").exists());
    });
    fx.assert_clean();
}

#[test]
fn auto_with_several_os_roots_lists_them() {
    let _s = serial();
    let mut fx = Fixture::new();
    let (img, parts) = partitioned(
        &fx,
        "two.img",
        160 << 20,
        "label: gpt\nsize=64MiB, type=L\ntype=L\n",
    );
    let a = os_root("debian", "12", "Debian 12", "a", "", "a");
    let b = os_root("fedora", "41", "Fedora 41", "b", "", "b");
    make_fs(&fx, &img, geometry(&parts, 1), "ext4", "a", &a);
    make_fs(&fx, &img, geometry(&parts, 2), "ext4", "b", &b);
    let err = with_mounted(&raw(&img), Partition::Auto, |_| ()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("2 OS roots"), "{msg}");
    assert!(
        msg.contains("partition 1 (debian 12") && msg.contains("partition 2 (fedora 41"),
        "{msg}"
    );
    assert!(msg.contains("--partition N"), "{msg}");
    fx.assert_clean();
}

#[test]
fn a_hostile_fstab_never_mounts_over_a_host_path() {
    let _s = serial();
    let mut fx = Fixture::new();
    let host = fx.tree("host-target", &[("precious", "host")]);
    let host_s = host.display().to_string();
    // `..` climbing out, and a guest link to the host directory.
    let extra = format!(
        "LABEL=boot /../../../..{host_s} ext4 defaults 0 0\nLABEL=var /evil ext4 defaults 0 0\n"
    );
    let (img, _) = debian(&fx, "hostile.img", &extra);
    // Make /evil a symlink to the host path, and the climbing mount point
    // a directory inside the image.
    let (s2, z2) = {
        let parts = layout(&img);
        geometry(&parts, 2)
    };
    {
        let dev = LoopDev::attach(&img, s2, z2);
        let mnt = fx.path().join("edit");
        std::fs::create_dir_all(&mnt).unwrap();
        run(Command::new("mount").arg(&dev.dev).arg(&mnt));
        std::os::unix::fs::symlink(&host, mnt.join("evil")).unwrap();
        std::fs::create_dir_all(mnt.join(host_s.trim_start_matches('/'))).unwrap();
        common::system::umount(&mnt);
    }
    let result = with_mounted(&raw(&img), Partition::Os, |dir| {
        // Whatever mounted went inside the image's tree.
        assert!(
            !common::system::is_mount_point(&host),
            "a guest fstab mounted over a host path"
        );
        let inside = dir.join(host_s.trim_start_matches('/'));
        assert!(common::system::is_mount_point(&inside));
    });
    let _ = result;
    assert_eq!(
        std::fs::read_to_string(host.join("precious")).unwrap(),
        "host"
    );
    assert_eq!(std::fs::read_dir(&host).unwrap().count(), 1);
    fx.assert_clean();
}

#[test]
fn fedora_auto_mounts_the_root_subvolume_and_os_mounts_home_and_boot() {
    let _s = serial();
    let mut fx = Fixture::new();
    let common::fedora::FedoraImage {
        path: img,
        boot,
        btrfs,
    } = fx.fedora_image("fedora.img");
    with_mounted(&raw(&img), Partition::Auto, |dir| {
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/hostname")).unwrap(),
            "fedora-guest\n"
        );
        std::fs::create_dir_all(dir.join("root/.ssh")).unwrap();
        std::fs::write(
            dir.join("root/.ssh/authorized_keys"),
            "ssh-ed25519 AAAA test\n",
        )
        .unwrap();
    })
    .unwrap();
    independent(&fx, &img, btrfs, Some("root"), |d| {
        assert!(
            d.join("root/.ssh/authorized_keys").exists(),
            "not in the root subvolume's /root/.ssh"
        );
    });
    independent(&fx, &img, btrfs, None, |d| {
        assert!(!d.join(".ssh").exists(), "landed in the top level");
    });
    with_mounted(&raw(&img), Partition::Os, |dir| {
        assert_eq!(
            std::fs::read_to_string(dir.join("home/id")).unwrap(),
            "home"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("boot/id")).unwrap(),
            "boot"
        );
        std::fs::write(dir.join("home/new"), "h").unwrap();
        std::fs::write(dir.join("boot/new"), "b").unwrap();
    })
    .unwrap();
    independent(&fx, &img, btrfs, Some("home"), |d| {
        assert!(d.join("new").exists())
    });
    independent(&fx, &img, btrfs, Some("root"), |d| {
        assert!(!d.join("home/new").exists())
    });
    independent(&fx, &img, boot, None, |d| assert!(d.join("new").exists()));
    fx.assert_clean();
}

fn diskmount(records: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diskmount"));
    c.env("DISKMOUNT_RUN_DIR", records);
    c
}

fn succeeds(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{c:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The Debian layout's tree on `mnt`: `/`, `/boot`, `/var` mounted or not.
fn assert_tree(mnt: &Path, mounted: bool, context: &str) {
    for sub in ["", "boot", "var"] {
        let at = if sub.is_empty() {
            mnt.to_path_buf()
        } else {
            mnt.join(sub)
        };
        assert_eq!(common::is_mount_point(&at), mounted, "/{sub}: {context}");
    }
}

#[test]
fn cli_mount_os_then_umount_takes_the_whole_tree_down() {
    let _s = serial();
    let mut fx = Fixture::new();
    let records = fx.records();
    let (img, parts) = debian(&fx, "debian.img", "");
    let mnt = fx.tree("mnt", &[]);
    succeeds(
        diskmount(&records)
            .args(["mount", "--partition", "os"])
            .arg(&img)
            .arg(&mnt),
    );
    assert_tree(&mnt, true, "after mount");
    std::fs::write(mnt.join("var/written"), "into var").unwrap();
    // The record names every piece of the tree.
    let record = std::fs::read_dir(&records)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a record");
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(
        text.contains("tree_mounts") && text.contains("/var\"") && text.contains("/boot\""),
        "{text}"
    );
    let out = succeeds(diskmount(&records).arg("umount").arg(&mnt));
    assert_tree(&mnt, false, &out);
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0, "{out}");
    independent(&fx, &img, geometry(&parts, 5), None, |d| {
        assert_eq!(
            std::fs::read_to_string(d.join("written")).unwrap(),
            "into var"
        );
    });
    independent(&fx, &img, geometry(&parts, 2), None, |d| {
        assert!(
            !d.join("var/written").exists(),
            "the root took /var's write"
        );
    });
    fx.assert_clean();
}

#[test]
fn a_killed_holder_of_an_os_tree_on_partitions_is_cleaned_up() {
    let _s = serial();
    let mut fx = Fixture::new();
    let records = fx.records();
    let (img, _) = debian(&fx, "debian.img", "");
    let mnt = fx.tree("mnt", &[]);
    let mut child = diskmount(&records)
        .args(["hold", "--state", "mounted", "--partition", "os"])
        .arg(&img)
        .arg(&mnt)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    if !line.starts_with("READY /dev/") {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("{line:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_tree(&mnt, true, "after the kill");
    let out = succeeds(diskmount(&records).arg("cleanup"));
    assert!(out.contains("0 failed"), "{out}");
    assert!(out.contains("unmount guest fstab mount"), "{out}");
    assert_tree(&mnt, false, &out);
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0, "{out}");
    fx.assert_clean();
}

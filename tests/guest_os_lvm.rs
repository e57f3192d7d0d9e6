//! OS inspection and `Partition::Auto`/`Partition::Os` on images whose OS
//! lives on LVM logical volumes (Rocky: xfs `/boot` + a PV with rl-root,
//! rl-home, rl-swap, rl-data; Ubuntu; a whole-disk PV). Every write is
//! checked with an independent util-linux mount at the LV's offset, and
//! the wrong filesystem is checked not to hold it.

mod common;

use std::path::Path;
use std::process::Command;

use common::lvm::{Content, LvDef, LvmImage, fs_uuid, os_root, range, read_at_offset};
use common::{Fixture, kernel_has_device_mapper};
use diskmount::{Format, Image, MountOptions, Partition, with_mounted, with_mounted_opts};

fn image(path: &Path) -> Image {
    Image::file(path, Format::Raw).unwrap()
}

#[test]
fn rocky_auto_mounts_rl_root_not_boot() {
    let mut fx = Fixture::new();
    let img = fx.rocky_image("rocky.img");
    let (host, id) = with_mounted(&image(&img.path), Partition::Auto, |dir| {
        (
            std::fs::read_to_string(dir.join("etc/hostname")).unwrap(),
            std::fs::read_to_string(dir.join("id")).unwrap(),
        )
    })
    .unwrap();
    assert_eq!(host, "rocky-guest\n");
    assert_eq!(id, "root");
    img.assert_not_active();
    fx.assert_clean();
}

#[test]
fn rocky_os_mounts_boot_and_home_and_writes_land_in_rl_home() {
    let mut fx = Fixture::new();
    let img = fx.rocky_image("rocky.img");
    // rl/data has two pieces: only device-mapper maps it.
    let mut options = MountOptions::default();
    if !kernel_has_device_mapper() {
        options = options.exclude("/srv");
    }
    with_mounted_opts(&image(&img.path), Partition::Os, &options, |dir| {
        assert_eq!(std::fs::read_to_string(dir.join("id")).unwrap(), "root");
        assert_eq!(
            std::fs::read_to_string(dir.join("boot/id")).unwrap(),
            "boot"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("home/id")).unwrap(),
            "home"
        );
        std::fs::write(dir.join("home/x"), "in home").unwrap();
    })
    .unwrap();
    img.assert_not_active();
    assert_eq!(
        read_at_offset(&fx, &img.path, range(&img, "home"), "x").as_deref(),
        Some("in home")
    );
    let root = range(&img, "root");
    assert_eq!(read_at_offset(&fx, &img.path, root, "home/x"), None);
    assert_eq!(read_at_offset(&fx, &img.path, root, "x"), None);
    fx.assert_clean();
}

#[test]
fn ubuntu_and_whole_disk_pv_auto() {
    let mut fx = Fixture::new();
    let img = fx.ubuntu_image("ubuntu.img");
    let host = with_mounted(&image(&img.path), Partition::Auto, |dir| {
        std::fs::read_to_string(dir.join("etc/hostname")).unwrap()
    })
    .unwrap();
    assert_eq!(host, "ubuntu-guest\n");
    let img = fx.whole_disk_pv_image("whole.img");
    let host = with_mounted(&image(&img.path), Partition::Auto, |dir| {
        std::fs::read_to_string(dir.join("etc/hostname")).unwrap()
    })
    .unwrap();
    assert_eq!(host, "whole-guest\n");
    fx.assert_clean();
}

#[test]
fn cli_run_on_rocky_finds_rl_root() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.rocky_image("rocky.img");
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .env("DISKMOUNT_RUN_DIR", &records)
        .arg("run")
        .arg(&img.path)
        .args(["--", "cat", "etc/hostname"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rocky-guest\n");
    fx.assert_clean();
}

/// A whole-disk PV, VG `my-vg` (a `-` LVM escapes): the root's fstab names
/// its LVs by `/dev/mapper/my--vg-root`, `UUID=` and `/dev/my-vg/logs`.
fn escaped_vg_image(fx: &Fixture) -> LvmImage {
    let seed = |n: &str| fs_uuid(&format!("{}/escaped-{n}", fx.path().display()));
    let (root, data, logs) = (seed("root"), seed("data"), seed("logs"));
    let fstab = format!(
        "/dev/mapper/my--vg-root / ext4 defaults 0 1\n\
         UUID={data} /data ext4 defaults 0 2\n\
         /dev/my-vg/logs /var/log ext4 defaults 0 2\n"
    );
    let mut files = os_root("debian", "12", "Debian 12", "escaped-guest", &fstab, "root");
    files.push(("data/.keep".into(), String::new()));
    files.push(("var/log/.keep".into(), String::new()));
    let fs = |uuid: String, files: Vec<(String, String)>| Content::Fs {
        fstype: "ext4",
        uuid,
        files,
    };
    let id = |s: &str| vec![("id".to_string(), s.to_string())];
    fx.lvm_image(
        "escaped.img",
        192 << 20,
        None,
        &[],
        "my-vg",
        vec![
            LvDef::new("root", &[(2, 25)], fs(root, files)),
            LvDef::new("data", &[(27, 4)], fs(data, id("data"))),
            LvDef::new("logs", &[(31, 4)], fs(logs, id("logs"))),
        ],
    )
}

#[test]
fn os_follows_mapper_uuid_and_vg_lv_sources_on_lvs() {
    let mut fx = Fixture::new();
    let img = escaped_vg_image(&fx);
    with_mounted(&image(&img.path), Partition::Os, |dir| {
        assert_eq!(std::fs::read_to_string(dir.join("id")).unwrap(), "root");
        assert_eq!(
            std::fs::read_to_string(dir.join("data/id")).unwrap(),
            "data"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("var/log/id")).unwrap(),
            "logs"
        );
        std::fs::write(dir.join("data/x"), "in data").unwrap();
        std::fs::write(dir.join("var/log/y"), "in logs").unwrap();
    })
    .unwrap();
    img.assert_not_active();
    assert_eq!(
        read_at_offset(&fx, &img.path, range(&img, "data"), "x").as_deref(),
        Some("in data")
    );
    assert_eq!(
        read_at_offset(&fx, &img.path, range(&img, "logs"), "y").as_deref(),
        Some("in logs")
    );
    let root = range(&img, "root");
    assert_eq!(read_at_offset(&fx, &img.path, root, "data/x"), None);
    assert_eq!(read_at_offset(&fx, &img.path, root, "var/log/y"), None);
    fx.assert_clean();
}

/// Spawns `diskmount hold` with `args`, waits for its `READY` line, and
/// SIGKILLs it.
fn hold_and_kill(records: &Path, args: &[&std::ffi::OsStr]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .env("DISKMOUNT_RUN_DIR", records)
        .arg("hold")
        .args(args)
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
}

/// `diskmount cleanup` with `records`: its stdout, checked to report
/// success.
fn cleanup(records: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .env("DISKMOUNT_RUN_DIR", records)
        .arg("cleanup")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("0 failed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn a_killed_holder_of_an_os_tree_is_cleaned_up() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.rocky_image("rocky.img");
    let mnt = fx.tree("mnt", &[]);
    let mut args: Vec<&std::ffi::OsStr> = ["--state", "mounted", "--partition", "os"]
        .iter()
        .map(std::ffi::OsStr::new)
        .collect();
    // rl/data (two pieces) needs device-mapper: without it, /srv is an
    // excluded tmpfs, a piece of the tree all the same.
    if !kernel_has_device_mapper() {
        args.extend(["--exclude", "/srv"].map(std::ffi::OsStr::new));
    }
    args.push(img.path.as_os_str());
    args.push(mnt.as_os_str());
    hold_and_kill(&records, &args);
    let at = |sub: &str| {
        if sub.is_empty() {
            mnt.clone()
        } else {
            mnt.join(sub)
        }
    };
    for sub in ["", "boot", "home", "srv"] {
        assert!(
            common::is_mount_point(&at(sub)),
            "/{sub} is not mounted: the holder left no tree?"
        );
    }
    let text = cleanup(&records);
    for sub in ["srv", "home", "boot", ""] {
        assert!(!common::is_mount_point(&at(sub)), "/{sub}: {text}");
    }
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0, "{text}");
    img.assert_not_active();
    fx.assert_clean();
}

#[test]
fn two_images_with_the_same_vg_name_as_os_trees_at_once() {
    let mut fx = Fixture::new();
    let a = fx.ubuntu_image("a.img");
    let b = fx.ubuntu_image("b.img");
    with_mounted(&image(&a.path), Partition::Os, |da| {
        with_mounted(&image(&b.path), Partition::Os, |db| {
            for (d, which) in [(da, "a"), (db, "b")] {
                assert_eq!(std::fs::read_to_string(d.join("boot/id")).unwrap(), "boot");
                std::fs::write(d.join("which"), which).unwrap();
                std::fs::write(d.join("boot/which"), which).unwrap();
            }
        })
        .unwrap();
    })
    .unwrap();
    for (i, want) in [(&a, "a"), (&b, "b")] {
        i.assert_not_active();
        let root = range(i, "ubuntu-lv");
        assert_eq!(
            read_at_offset(&fx, &i.path, root, "which").as_deref(),
            Some(want)
        );
        assert_eq!(read_at_offset(&fx, &i.path, root, "boot/which"), None);
        let parts = common::layout(&i.path);
        let &(_, at, len) = parts.iter().find(|p| p.0 == 2).unwrap();
        assert_eq!(
            read_at_offset(&fx, &i.path, (at, len), "which").as_deref(),
            Some(want)
        );
    }
    fx.assert_clean();
}

/// A `/home` that itself holds an `etc/os-release` (a user's copy, a
/// container tree kept there) is, by the root's fstab, that OS's `/home`,
/// not a second OS root: `Partition::Os` mounts the root and the `/home`
/// under it instead of refusing the image as holding two OSes, and finds
/// the root without mounting the `/home` to look into it. `inspect_os`,
/// which lists everything, still reports both.
#[test]
fn a_home_holding_an_os_release_is_the_roots_home_not_a_second_root() {
    let mut fx = Fixture::new();
    let p = fx.path().display().to_string();
    let fstab = "/dev/vg0/root / ext4 defaults 0 0\n/dev/mapper/vg0-home /home ext4 defaults 0 0\n";
    let mut root_files = os_root("debian", "12", "Debian GNU/Linux 12", "deb", fstab, "root");
    root_files.push(("home/.keep".into(), String::new()));
    let home_files = os_root("alpine", "3.20", "Alpine Linux v3.20", "alp", "", "home");
    let img = fx.lvm_image(
        "home-os.img",
        160 << 20,
        None,
        &[],
        "vg0",
        vec![
            LvDef::new(
                "root",
                &[(0, 16)],
                Content::Fs {
                    fstype: "ext4",
                    uuid: fs_uuid(&format!("{p}/root")),
                    files: root_files,
                },
            ),
            LvDef::new(
                "home",
                &[(16, 16)],
                Content::Fs {
                    fstype: "ext4",
                    uuid: fs_uuid(&format!("{p}/home")),
                    files: home_files,
                },
            ),
        ],
    );
    let (id, home_id) = with_mounted(&image(&img.path), Partition::Os, |dir| {
        (
            std::fs::read_to_string(dir.join("id")).unwrap(),
            std::fs::read_to_string(dir.join("home/id")).unwrap(),
        )
    })
    .unwrap();
    assert_eq!((id.as_str(), home_id.as_str()), ("root", "home"));
    let attached = diskmount::Unattached::<diskmount::Loop>::new(image(&img.path))
        .attach()
        .unwrap();
    let all = attached.inspect_os().unwrap();
    attached.close().unwrap();
    let mut ids: Vec<&str> = all.iter().map(|o| o.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["alpine", "debian"]);
    img.assert_not_active();
    fx.assert_clean();
}

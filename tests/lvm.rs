//! LVM logical volumes mapped and mounted on this host (no device-mapper:
//! offset loop devices), on images LVM2's own tools made. Every write is
//! checked with an independent util-linux mount at the offset of the
//! filesystem that should hold it, and the wrong filesystems are checked
//! not to hold it. Errors name the LV and the reason and leave nothing
//! behind. The device-mapper paths run in the kernel VM lane
//! (tests/kernel_lane.rs).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::lvm::{Seg, range, read_at_offset};
use common::{Fixture, assert_no_records, kernel_has_device_mapper};
use diskmount::{
    Format, Image, Loop, MapOptions, MapStrategy, Mapping, MountOptions, Partition, Unattached,
    with_mounted,
};

fn lv(vg: &str, lv: &str) -> Partition {
    Partition::LogicalVolume {
        vg: vg.into(),
        lv: lv.into(),
    }
}

fn image(path: &Path) -> Image {
    Image::file(path, Format::Raw).unwrap()
}

/// The byte range of partition `n` of `img`.
fn partition(img: &Path, n: u32) -> (u64, u64) {
    let (_, s, l) = *common::layout(img).iter().find(|p| p.0 == n).unwrap();
    (s, l)
}

/// Maps `vg/name` of `img` with the loop backend and default options.
fn map(img: &Path, vg: &str, name: &str) -> diskmount::Result<diskmount::Mapped<Loop>> {
    Unattached::<Loop>::new(image(img))
        .attach()?
        .map(lv(vg, name))
}

#[test]
fn rocky_root_and_home_map_as_offset_loops_and_writes_land_in_their_lv() {
    let mut fx = Fixture::new();
    let img = fx.rocky_image("rocky.img");
    for (name, fs) in [("root", "xfs"), ("home", "ext4")] {
        let m = map(&img.path, "rl", name).unwrap();
        if !kernel_has_device_mapper() {
            assert_eq!(m.mapping(), Mapping::OffsetLoop, "{name}");
        }
        assert_eq!(m.partition(), None);
        assert!(m.partition_info().is_none());
        let info = m.logical_volume().expect("an LV").clone();
        assert_eq!((info.vg.as_str(), info.lv.as_str()), ("rl", name));
        assert_eq!(info.size, range(&img, name).1);
        assert_eq!(info.segments, 1);
        assert_eq!(info.partitions, [Some(3)]);
        assert_eq!(info.pieces[0].disk_offset, range(&img, name).0);
        let mnt = fx.tree(&format!("mnt-{name}"), &[]);
        let t = m.mount(&mnt, &MountOptions::default()).unwrap();
        assert_eq!(t.fstype(), fs);
        let id = std::fs::read_to_string(t.path().join("id")).unwrap();
        assert_eq!(id, name);
        if name == "root" {
            assert_eq!(
                std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(),
                "rocky-guest\n"
            );
        }
        std::fs::write(t.path().join("written"), format!("into {name}")).unwrap();
        t.close().unwrap();
    }
    img.assert_not_active();
    // Independent checks: each write is in its own LV, and in nothing else.
    for name in ["root", "home"] {
        assert_eq!(
            read_at_offset(&fx, &img.path, range(&img, name), "written").as_deref(),
            Some(format!("into {name}").as_str())
        );
    }
    assert_eq!(
        read_at_offset(&fx, &img.path, partition(&img.path, 2), "written"),
        None,
        "/boot took a write"
    );
    assert_eq!(
        read_at_offset(&fx, &img.path, partition(&img.path, 2), "id").as_deref(),
        Some("boot")
    );
    assert_no_records(&fx);
    fx.assert_clean();
}

#[test]
fn ubuntu_layout_with_mounted() {
    let mut fx = Fixture::new();
    let img = fx.ubuntu_image("ubuntu.img");
    let hostname = with_mounted(&image(&img.path), lv("ubuntu-vg", "ubuntu-lv"), |dir| {
        std::fs::write(dir.join("etc/written"), "ubuntu").unwrap();
        std::fs::read_to_string(dir.join("etc/hostname")).unwrap()
    })
    .unwrap();
    assert_eq!(hostname, "ubuntu-guest\n");
    img.assert_not_active();
    assert_eq!(
        read_at_offset(&fx, &img.path, range(&img, "ubuntu-lv"), "etc/written").as_deref(),
        Some("ubuntu")
    );
    assert_eq!(
        read_at_offset(&fx, &img.path, partition(&img.path, 2), "etc/written"),
        None
    );
    assert_no_records(&fx);
    fx.assert_clean();
}

#[test]
fn a_whole_disk_pv() {
    let mut fx = Fixture::new();
    let img = fx.whole_disk_pv_image("whole.img");
    let m = map(&img.path, "vg0", "root").unwrap();
    assert_eq!(m.logical_volume().unwrap().partitions, [None]);
    let mnt = fx.tree("mnt", &[]);
    let t = m.mount(&mnt, &MountOptions::default()).unwrap();
    assert_eq!(
        std::fs::read_to_string(t.path().join("id")).unwrap(),
        "root"
    );
    std::fs::write(t.path().join("written"), "whole").unwrap();
    t.close().unwrap();
    assert_eq!(
        read_at_offset(&fx, &img.path, range(&img, "root"), "written").as_deref(),
        Some("whole")
    );
    assert_no_records(&fx);
    fx.assert_clean();
}

#[test]
fn two_images_with_the_same_vg_name_at_once() {
    let mut fx = Fixture::new();
    let a = fx.ubuntu_image("a.img");
    let b = fx.ubuntu_image("b.img");
    let ma = fx.tree("mnt-a", &[]);
    let mb = fx.tree("mnt-b", &[]);
    let ta = map(&a.path, "ubuntu-vg", "ubuntu-lv")
        .unwrap()
        .mount(&ma, &MountOptions::default())
        .unwrap();
    let tb = map(&b.path, "ubuntu-vg", "ubuntu-lv")
        .unwrap()
        .mount(&mb, &MountOptions::default())
        .unwrap();
    assert_ne!(ta.device(), tb.device());
    std::fs::write(ta.path().join("which"), "a").unwrap();
    std::fs::write(tb.path().join("which"), "b").unwrap();
    tb.close().unwrap();
    ta.close().unwrap();
    a.assert_not_active();
    for (img, want) in [(&a, "a"), (&b, "b")] {
        assert_eq!(
            read_at_offset(&fx, &img.path, range(img, "ubuntu-lv"), "which").as_deref(),
            Some(want)
        );
    }
    assert_no_records(&fx);
    fx.assert_clean();
}

fn diskmount(records: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .env("DISKMOUNT_RUN_DIR", records)
        .args(args)
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn cli_run_and_copy_in_on_a_logical_volume() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.rocky_image("rocky.img");
    let out = diskmount(
        &records,
        &[
            os("run"),
            os("--partition"),
            os("lv=rl/root"),
            img.path.as_os_str(),
            os("--"),
            os("cat"),
            os("etc/hostname"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rocky-guest\n");
    let file = fx.tree("payload", &[("motd", "hello rocky")]).join("motd");
    let out = diskmount(
        &records,
        &[
            os("copy-in"),
            os("--partition"),
            os("lv=rl/root"),
            img.path.as_os_str(),
            file.as_os_str(),
            os("/etc"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read_at_offset(&fx, &img.path, range(&img, "root"), "etc/motd").as_deref(),
        Some("hello rocky")
    );
    for wrong in [partition(&img.path, 2), range(&img, "home")] {
        assert_eq!(read_at_offset(&fx, &img.path, wrong, "etc/motd"), None);
        assert_eq!(read_at_offset(&fx, &img.path, wrong, "motd"), None);
    }
    // A missing LV through the CLI: exit status and the list of LVs.
    let out = diskmount(
        &records,
        &[
            os("run"),
            os("--partition"),
            os("lv=rl/nope"),
            img.path.as_os_str(),
            os("--"),
            os("true"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rl/nope does not exist"), "{err}");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
    img.assert_not_active();
    fx.assert_clean();
}

/// `err` is a map error naming `img` and containing each of `want`.
fn assert_map_error(err: &diskmount::Error, img: &Path, want: &[&str]) {
    let text = err.to_string();
    assert_eq!(err.step(), Some(diskmount::Step::Map), "{text}");
    for w in want {
        assert!(text.contains(w), "{w:?} not in: {text}");
    }
    let _ = img;
}

#[test]
fn errors_name_the_lv_and_leave_nothing_behind() {
    let mut fx = Fixture::new();
    let img = fx.rocky_image("rocky.img");
    if !kernel_has_device_mapper() {
        let e = map(&img.path, "rl", "data").unwrap_err();
        assert_map_error(
            &e,
            &img.path,
            &[
                "logical volume rl/data",
                "2 separate pieces",
                "needs device-mapper",
            ],
        );
    }
    // Forcing an offset loop is the same refusal, with device-mapper or not.
    let e = Unattached::<Loop>::new(image(&img.path))
        .attach()
        .unwrap()
        .map_with(
            lv("rl", "data"),
            &MapOptions::default().strategy(MapStrategy::OffsetLoop),
        )
        .unwrap_err();
    assert_map_error(&e, &img.path, &["rl/data", "needs device-mapper"]);
    let e = map(&img.path, "rl", "nope").unwrap_err();
    assert_map_error(
        &e,
        &img.path,
        &["rl/nope does not exist", "root, home, swap, data"],
    );
    let e = map(&img.path, "ubuntu-vg", "ubuntu-lv").unwrap_err();
    assert_map_error(
        &e,
        &img.path,
        &["no LVM volume group ubuntu-vg (it has rl)"],
    );
    // An LV that holds swap maps, and mounting it is the clear error.
    let mnt = fx.tree("mnt", &[]);
    let e = map(&img.path, "rl", "swap")
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("swap"), "{e}");
    // An image with no LVM at all.
    let plain = fx.ext4("plain.img", &[]);
    let e = map(&plain, "rl", "root").unwrap_err();
    assert_map_error(&e, &plain, &["no LVM volume group rl (it has none)"]);
    img.assert_not_active();
    assert_no_records(&fx);
    fx.assert_clean();
}

#[test]
fn corrupt_metadata_is_a_clear_error() {
    let mut fx = Fixture::new();
    let img = fx.whole_disk_pv_image("whole.img");
    // The metadata text sits in the first MiB after the label's area
    // header; flip a byte of "root" in it (its checksum no longer holds).
    let mut bytes = std::fs::read(&img.path).unwrap();
    let head = &bytes[..1 << 20];
    let at = head
        .windows(b"logical_volumes".len())
        .rposition(|w| w == b"logical_volumes")
        .expect("the metadata text");
    bytes[at] ^= 0x20;
    std::fs::write(&img.path, &bytes).unwrap();
    drop(bytes);
    let e = map(&img.path, "vg0", "root").unwrap_err();
    assert_map_error(
        &e,
        &img.path,
        &["volume group vg0 cannot be read", "checksum"],
    );
    assert_no_records(&fx);
    fx.assert_clean();
}

#[test]
fn striped_and_missing_pv_volumes_are_refused() {
    let mut fx = Fixture::new();
    let linear = |pv, at, n| Seg {
        stripes: vec![(pv, at)],
        extents: n,
    };
    let files = Some(vec![("id".to_string(), "span".to_string())]);
    let img = fx.two_pv_image(
        "duo.img",
        &[
            (
                "wide",
                vec![Seg {
                    stripes: vec![(0, 0), (1, 0)],
                    extents: 2,
                }],
                None,
            ),
            ("span", vec![linear(0, 2, 3), linear(1, 2, 3)], files),
            ("one", vec![linear(1, 5, 2)], None),
        ],
    );
    let e = map(&img.path, "duo", "wide").unwrap_err();
    assert_map_error(
        &e,
        &img.path,
        &["logical volume duo/wide is striped over 2 physical volumes"],
    );
    if !kernel_has_device_mapper() {
        let e = map(&img.path, "duo", "span").unwrap_err();
        assert_map_error(&e, &img.path, &["duo/span", "needs device-mapper"]);
    }
    // The LV on the second PV maps where that PV is: an offset loop.
    let m = map(&img.path, "duo", "one").unwrap();
    assert_eq!(m.logical_volume().unwrap().partitions, [Some(3)]);
    m.close().unwrap();
    // Without the second PV's label, every LV on it names the missing PV.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 2048], img.pv_start[1]).unwrap();
    drop(f);
    for name in ["one", "span"] {
        let e = map(&img.path, "duo", name).unwrap_err();
        assert_map_error(
            &e,
            &img.path,
            &[
                &format!("duo/{name} needs physical volume"),
                "which is missing",
            ],
        );
    }
    assert_no_records(&fx);
    fx.assert_clean();
}

#[test]
fn a_killed_holder_of_a_logical_volume_is_cleaned_up() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.ubuntu_image("ubuntu.img");
    let mnt = fx.tree("mnt", &[]);
    for state in ["mapped", "mounted"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_diskmount"))
            .env("DISKMOUNT_RUN_DIR", &records)
            .args([
                "hold",
                "--state",
                state,
                "--partition",
                "lv=ubuntu-vg/ubuntu-lv",
            ])
            .arg(&img.path)
            .args((state == "mounted").then_some(&mnt))
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
            panic!(
                "{state}: {line:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Loop devices clear themselves once the holder's descriptors
        // close; a mount keeps its offset loop device.
        if state == "mounted" {
            assert!(!fx.leaks().is_empty(), "{state}: the holder left nothing?");
        }
        let out = diskmount(&records, &[os("cleanup")]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("0 failed"),
            "{state}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!common::is_mount_point(&mnt), "{state}: {text}");
        assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0, "{state}");
        fx.assert_clean();
    }
}

#[test]
fn inspect_lists_the_logical_volumes() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.rocky_image("rocky.img");
    let out = diskmount(
        &records,
        &[os("inspect"), os("--json"), img.path.as_os_str()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vols = v["volumes"].as_array().expect("volumes");
    let by = |name: &str| {
        vols.iter()
            .find(|x| x["lv"] == name)
            .unwrap_or_else(|| panic!("{name} in {vols:?}"))
    };
    for (name, fs, segs) in [
        ("root", Some("xfs"), 1),
        ("home", Some("ext4"), 1),
        ("swap", Some("swap area"), 1),
        ("data", Some("ext4"), 2),
    ] {
        let x = by(name);
        assert_eq!(x["vg"], "rl");
        assert_eq!(x["size"], img.lv(name).extents() * img.extent_size);
        assert_eq!(x["segments"], segs);
        assert_eq!(x["fstype"].as_str(), fs, "{name}: {x}");
        assert_eq!(x["pvs"], serde_json::json!([3]));
    }
    let out = diskmount(&records, &[os("inspect"), img.path.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("4 LVM logical volumes") && text.contains("rl/root"),
        "{text}"
    );
    img.assert_not_active();
    fx.assert_clean();
}

//! The Fuse backend: qemu-storage-daemon's FUSE export under a loop device.

mod common;

use std::process::Command;

use common::{Fixture, convert, is_mount_point, run};
use diskmount::{
    BackendKind, Error, Format, Fuse, Image, MountOptions, Partition, Step, Unattached,
};

#[test]
fn raw_image_through_the_daemon_reads_and_writes() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "raw")]);
    let mnt = fx.tree("mnt", &[]);
    let t = common::mount_whole::<Fuse>(&img, &mnt);
    assert_eq!(t.backend(), BackendKind::Fuse);
    assert!(!common::qemu_processes().is_empty());
    assert_eq!(std::fs::read_to_string(t.path().join("id")).unwrap(), "raw");
    std::fs::write(t.path().join("written"), "through fuse").unwrap();
    t.close().unwrap();
    fx.assert_clean();
    let got = run(Command::new("debugfs")
        .args(["-R", "cat /written"])
        .arg(&img));
    assert_eq!(got, "through fuse");
}

#[test]
fn a_daemon_killed_while_mounted_is_reported_and_nothing_is_left() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "x")]);
    let mnt = fx.tree("mnt", &[]);
    let t = common::mount_whole::<Fuse>(&img, &mnt);
    let root = fx.path().to_string_lossy().into_owned();
    let (pid, _) = common::qemu_processes()
        .into_iter()
        .find(|(_, c)| c.contains(&root))
        .expect("the daemon runs");
    run(Command::new("kill").args(["-9", &pid.to_string()]));
    let err = t.close().unwrap_err();
    let all: Vec<&Error> = err.errors();
    assert!(
        all.iter().any(|e| e.step() == Some(Step::Detach) && e.to_string().contains("killed by signal 9")),
        "{err}"
    );
    assert!(!is_mount_point(&mnt));
    fx.assert_clean();
}

/// Converts `img` (format `format`) back to raw, for an independent look.
fn back_to_raw(fx: &Fixture, img: &std::path::Path, format: &str) -> std::path::PathBuf {
    let out = fx.path().join(format!(
        "{}.raw",
        img.file_name().unwrap().to_string_lossy()
    ));
    run(Command::new("qemu-img")
        .args(["convert", "-f", format, "-O", "raw"])
        .arg(img)
        .arg(&out));
    out
}

/// Every format qemu-img makes, read and written through the daemon; the
/// write is found again by converting the image back to raw and reading it
/// with debugfs, which shares no code with us.
#[test]
fn every_format_reads_and_writes_through_the_daemon() {
    let mut fx = Fixture::new();
    let raw = fx.ext4("disk.img", &[("id", "from raw")]);
    let cases: [(&str, Format, &[&str]); 8] = [
        ("qcow2", Format::Qcow2, &[]),
        ("qcow2", Format::Qcow2, &["-c"]),
        ("vmdk", Format::Vmdk, &["-o", "subformat=monolithicSparse"]),
        ("vmdk", Format::Vmdk, &["-o", "subformat=streamOptimized"]),
        ("vdi", Format::Vdi, &[]),
        ("vhdx", Format::Vhdx, &[]),
        ("vpc", Format::Vpc, &["-o", "subformat=dynamic"]),
        ("vpc", Format::Vpc, &["-o", "subformat=fixed"]),
    ];
    for (i, (qemu, format, opts)) in cases.into_iter().enumerate() {
        let img = convert(&fx, &raw, &format!("case{i}.{qemu}"), qemu, opts);
        // Probing agrees with the name.
        assert_eq!(
            Image::probe(&img).unwrap().format(),
            format,
            "{qemu} {opts:?}"
        );
        let image = Image::file(&img, format).unwrap();
        if opts.contains(&"subformat=streamOptimized") {
            // A compressed stream: qemu reads it but cannot rewrite it.
            let err = Unattached::<Fuse>::new(image.clone()).attach().unwrap_err();
            assert!(err.to_string().contains("can only be read"), "{err}");
            let ro = image.read_only(true);
            let got = diskmount::with_mounted(&ro, Partition::Auto, |root| {
                std::fs::read_to_string(root.join("id")).unwrap()
            })
            .unwrap();
            assert_eq!(got, "from raw");
            fx.assert_clean();
            continue;
        }
        let written = format!("case {i}: {qemu} {opts:?}");
        let got = diskmount::with_mounted(&image, Partition::Auto, |root| {
            std::fs::write(root.join("written"), &written).unwrap();
            std::fs::read_to_string(root.join("id")).unwrap()
        })
        .unwrap_or_else(|e| panic!("{qemu} {opts:?}: {e}"));
        assert_eq!(got, "from raw");
        fx.assert_clean();
        let check = back_to_raw(&fx, &img, qemu);
        assert_eq!(
            run(Command::new("debugfs")
                .args(["-R", "cat /written"])
                .arg(&check)),
            written
        );
    }
}

#[test]
fn a_partitioned_qcow2_image() {
    let mut fx = Fixture::new();
    let raw = fx.mbr_image("mbr.img");
    let img = convert(&fx, &raw, "mbr.qcow2", "qcow2", &[]);
    let image = Image::file(&img, Format::Qcow2).unwrap();
    for n in [1, 5, 6] {
        let a = Unattached::<Fuse>::new(image.clone()).attach().unwrap();
        let t = a.map(Partition::Number(n)).unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let t = t.mount(mnt.path(), &MountOptions::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("id")).unwrap(),
            format!("p{n}")
        );
        t.close().unwrap();
    }
    fx.assert_clean();
}

#[test]
fn attack_images_are_refused_before_anything_starts() {
    let mut fx = Fixture::new();
    let base = fx.ext4("base.img", &[]);
    let with_backing = fx.path().join("backed.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&with_backing));
    let hostile = fx.path().join("hostname.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname"])
        .arg(&hostile)
        .arg("64M"));
    let data_file = fx.path().join("data.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-o"])
        .arg(format!(
            "data_file={}",
            fx.path().join("data.raw").display()
        ))
        .arg(&data_file)
        .arg("64M"));
    let flat = fx.path().join("flat.vmdk");
    std::fs::write(
        &flat,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n\
         RW 2048 FLAT \"/etc/hostname\" 0\n",
    )
    .unwrap();
    for (img, format, words) in [
        (
            &with_backing,
            Format::Qcow2,
            vec!["backing", base.to_str().unwrap()],
        ),
        (&hostile, Format::Qcow2, vec!["backing", "/etc/hostname"]),
        (&data_file, Format::Qcow2, vec!["data"]),
        (&flat, Format::Vmdk, vec!["/etc/hostname"]),
    ] {
        let err = Unattached::<Fuse>::new(Image::file(img, format).unwrap())
            .attach()
            .unwrap_err();
        assert_eq!(err.step(), Some(Step::Probe), "{err}");
        for w in words {
            assert!(err.to_string().contains(w), "{w:?} missing: {err}");
        }
        assert!(
            common::qemu_processes()
                .iter()
                .all(|(_, c)| !c.contains(&*img.to_string_lossy()))
        );
        fx.assert_clean();
    }
    // The backing chain is allowed on request, and then checked and used.
    let image = Image::file(&with_backing, Format::Qcow2)
        .unwrap()
        .allow_backing_file(true);
    diskmount::with_mounted(&image, Partition::Whole, |root| {
        std::fs::write(root.join("on-top"), "x").unwrap();
    })
    .unwrap();
    fx.assert_clean();

    // A raw disk whose first sector a guest made look like qcow2, naming a
    // host file as backing: opened as raw when given as raw, refused when probed.
    let raw = fx.blank("guest-raw.img", 64 << 20);
    let header = std::fs::read(&hostile).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&raw).unwrap(),
        &header,
        0,
    )
    .unwrap();
    let err = Image::probe(&raw).unwrap_err();
    assert!(err.to_string().contains("/etc/hostname"), "{err}");
    let a = Unattached::<Fuse>::new(Image::file(&raw, Format::Raw).unwrap())
        .attach()
        .unwrap();
    assert_eq!(
        a.size(),
        64 << 20,
        "raw stays raw: the whole file, no qcow2 view"
    );
    a.close().unwrap();
    fx.assert_clean();
}

#[test]
fn the_daemon_opens_the_file_that_was_checked_not_the_path() {
    use std::os::unix::fs::MetadataExt;
    let mut fx = Fixture::new();
    let raw = fx.ext4("disk.img", &[("id", "checked")]);
    let img = convert(&fx, &raw, "disk.qcow2", "qcow2", &[]);
    let mnt = fx.tree("mnt", &[]);
    let t = Unattached::<Fuse>::new(Image::file(&img, Format::Qcow2).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    let root = fx.path().to_string_lossy().into_owned();
    let (pid, line) = common::qemu_processes()
        .into_iter()
        .find(|(_, c)| c.contains(&root))
        .expect("the daemon runs");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("filename=/proc/self/fd/3"), "{line}");
    assert!(
        !cmdline.contains(&*img.to_string_lossy()),
        "qemu was given the path: {line}"
    );
    // Its descriptor 3 is the image diskmount checked.
    let passed = std::fs::metadata(format!("/proc/{pid}/fd/3")).unwrap();
    let image = std::fs::metadata(&img).unwrap();
    assert_eq!((passed.dev(), passed.ino()), (image.dev(), image.ino()));
    assert_eq!(
        std::fs::read_to_string(t.path().join("id")).unwrap(),
        "checked"
    );
    t.close().unwrap();
    fx.assert_clean();
}

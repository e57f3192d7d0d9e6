//! Image formats made by qemu-img: each is recognised, its virtual size
//! agrees with `qemu-img info`, and the images that would make qemu open
//! host files (backing files, data files, flat extents, a qcow2 header in
//! a raw disk) are refused with an error that names the host file.
//!
//! Needs `qemu-img`; no root, no devices.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use diskmount::format::{self, ImageInfo, MAX_CHAIN};
use diskmount::{Error, Format, Step};

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img (is it installed?)");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The top-level "virtual-size" of `qemu-img info --output=json` (the file
/// node's comes first, nested deeper).
fn qemu_size(path: &Path, format: &str) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", format])
        .arg(path)
        .output()
        .expect("run qemu-img info");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).unwrap();
    let line = json
        .lines()
        .find(|l| l.starts_with("    \"virtual-size\": "))
        .unwrap_or_else(|| panic!("no top-level virtual-size in {json}"));
    line.trim()
        .trim_start_matches("\"virtual-size\": ")
        .trim_end_matches(',')
        .parse()
        .unwrap()
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::Builder::new()
            .prefix("diskmount-formats-")
            .tempdir()
            .unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// A 3 MiB raw disk with some non-zero data.
    fn raw(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let mut data = vec![0u8; 3 << 20];
        for (i, b) in data.iter_mut().enumerate().step_by(4099) {
            *b = (i % 251) as u8 + 1;
        }
        std::fs::write(&path, data).unwrap();
        path
    }

    /// `qemu-img convert` of a small raw disk to `format` with `extra`
    /// options.
    fn convert(&self, name: &str, format: &str, extra: &[&str]) -> PathBuf {
        let src = self.raw(&format!("{name}.src"));
        let dst = self.path(name);
        let mut args = vec!["convert", "-f", "raw", "-O", format];
        args.extend(extra);
        args.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
        qemu_img(&args);
        dst
    }

    /// `qemu-img create -f format ... name 4M`.
    fn create(&self, name: &str, format: &str, extra: &[&str]) -> PathBuf {
        let dst = self.path(name);
        let mut args = vec!["create", "-q", "-f", format];
        args.extend(extra);
        args.extend([dst.to_str().unwrap(), "4M"]);
        qemu_img(&args);
        dst
    }
}

fn inspect(path: &Path, format: Format) -> diskmount::Result<ImageInfo> {
    format::inspect(&File::open(path).unwrap(), path, format)
}

fn probe(path: &Path) -> Format {
    format::probe(&File::open(path).unwrap(), path).unwrap()
}

/// A refusal: at the probe step, naming the image and each of `words`.
#[track_caller]
fn refused(result: diskmount::Result<ImageInfo>, image: &Path, words: &[&str]) -> Error {
    let err = result.expect_err("should be refused");
    assert_eq!(err.step(), Some(Step::Probe), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(image.to_str().unwrap()),
        "the image path is missing from: {msg}"
    );
    for w in words {
        assert!(msg.contains(w), "{w:?} missing from: {msg}");
    }
    err
}

/// An image qemu-img made: recognised, same size as qemu says, accepted.
#[track_caller]
fn accepted(path: &Path, format: Format) -> ImageInfo {
    assert_eq!(probe(path), format, "{}", path.display());
    let info = inspect(path, format).unwrap();
    assert_eq!(info.format, format);
    assert_eq!(
        info.virtual_size,
        qemu_size(path, format.as_str()),
        "virtual size of {}",
        path.display()
    );
    let checked = format::check(path, format, false).unwrap();
    assert_eq!(checked, info);
    info
}

#[test]
fn qcow2_plain_and_compressed() {
    let d = Dir::new();
    accepted(&d.convert("plain.qcow2", "qcow2", &[]), Format::Qcow2);
    accepted(&d.convert("zlib.qcow2", "qcow2", &["-c"]), Format::Qcow2);
    accepted(
        &d.convert(
            "zstd.qcow2",
            "qcow2",
            &["-c", "-o", "compression_type=zstd"],
        ),
        Format::Qcow2,
    );
    accepted(
        &d.convert("v2.qcow2", "qcow2", &["-o", "compat=0.10"]),
        Format::Qcow2,
    );
    accepted(
        &d.convert("small.qcow2", "qcow2", &["-o", "cluster_size=512"]),
        Format::Qcow2,
    );
    accepted(
        &d.convert("big.qcow2", "qcow2", &["-o", "cluster_size=2M"]),
        Format::Qcow2,
    );
}

#[test]
fn vmdk_sparse_and_stream_optimized() {
    let d = Dir::new();
    let info = accepted(
        &d.convert("sparse.vmdk", "vmdk", &["-o", "subformat=monolithicSparse"]),
        Format::Vmdk,
    );
    assert_eq!(info.create_type.as_deref(), Some("monolithicSparse"));
    let info = accepted(
        &d.convert("stream.vmdk", "vmdk", &["-o", "subformat=streamOptimized"]),
        Format::Vmdk,
    );
    assert_eq!(info.create_type.as_deref(), Some("streamOptimized"));
    // Renamed after creation: the descriptor still names the old file.
    let renamed = d.path("renamed.vmdk");
    std::fs::rename(d.path("sparse.vmdk"), &renamed).unwrap();
    accepted(&renamed, Format::Vmdk);
}

#[test]
fn vmdk_flat_extents_are_refused_naming_them() {
    let d = Dir::new();
    for (name, subformat, extent) in [
        ("flat.vmdk", "monolithicFlat", "flat-flat.vmdk"),
        ("two.vmdk", "twoGbMaxExtentFlat", "two-f001.vmdk"),
        ("split.vmdk", "twoGbMaxExtentSparse", "split-s001.vmdk"),
    ] {
        let path = d.convert(name, "vmdk", &["-o", &format!("subformat={subformat}")]);
        assert_eq!(probe(&path), Format::Vmdk);
        let info = inspect(&path, Format::Vmdk).unwrap();
        assert_eq!(info.create_type.as_deref(), Some(subformat));
        assert_eq!(info.extents, vec![d.path(extent)]);
        assert_eq!(info.virtual_size, qemu_size(&path, "vmdk"));
        for allow in [false, true] {
            refused(
                format::check(&path, Format::Vmdk, allow),
                &path,
                &[subformat, d.path(extent).to_str().unwrap()],
            );
        }
    }
}

#[test]
fn vmdk_descriptor_naming_a_host_file() {
    let d = Dir::new();
    let path = d.path("evil.vmdk");
    std::fs::write(
        &path,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\n# Extent description\n\
         RW 1 FLAT \"/etc/hostname\" 0\n",
    )
    .unwrap();
    assert_eq!(probe(&path), Format::Vmdk);
    assert_eq!(
        inspect(&path, Format::Vmdk).unwrap().extents,
        vec![PathBuf::from("/etc/hostname")]
    );
    refused(
        format::check(&path, Format::Vmdk, true),
        &path,
        &["/etc/hostname"],
    );
    // Even when it claims to be monolithicSparse.
    std::fs::write(
        &path,
        "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicSparse\"\n\
         RW 1 FLAT \"/etc/hostname\" 0\n",
    )
    .unwrap();
    refused(
        format::check(&path, Format::Vmdk, true),
        &path,
        &["extent", "/etc/hostname"],
    );
}

#[test]
fn vmdk_parent_is_a_backing_file() {
    let d = Dir::new();
    let base = d.create("base.vmdk", "vmdk", &[]);
    let child = d.create("child.vmdk", "vmdk", &["-b", "base.vmdk", "-F", "vmdk"]);
    let info = inspect(&child, Format::Vmdk).unwrap();
    assert_eq!(info.backing_file, Some(PathBuf::from("base.vmdk")));
    refused(
        format::check(&child, Format::Vmdk, false),
        &child,
        &["parentFileNameHint", base.to_str().unwrap()],
    );
    format::check(&child, Format::Vmdk, true).unwrap();
}

#[test]
fn vdi_vhdx_and_vpc() {
    let d = Dir::new();
    accepted(&d.convert("a.vdi", "vdi", &[]), Format::Vdi);
    accepted(
        &d.convert("static.vdi", "vdi", &["-o", "static=on"]),
        Format::Vdi,
    );
    accepted(&d.convert("a.vhdx", "vhdx", &[]), Format::Vhdx);
    accepted(
        &d.convert("fixed.vhdx", "vhdx", &["-o", "subformat=fixed"]),
        Format::Vhdx,
    );
    accepted(
        &d.convert("fixed.vhd", "vpc", &["-o", "subformat=fixed"]),
        Format::Vpc,
    );
    accepted(
        &d.convert("dynamic.vhd", "vpc", &["-o", "subformat=dynamic"]),
        Format::Vpc,
    );
    accepted(
        &d.convert(
            "sized.vhd",
            "vpc",
            &["-o", "subformat=dynamic,force_size=on"],
        ),
        Format::Vpc,
    );
}

#[test]
fn raw_is_raw_even_with_a_qcow2_header() {
    let d = Dir::new();
    // What a guest can write into the first sectors of its raw disk.
    let evil = d.create("evil.qcow2", "qcow2", &["-b", "/etc/hostname", "-F", "raw"]);
    let mut disk = std::fs::read(&evil).unwrap();
    disk.resize(8 << 20, 0);
    let raw = d.path("disk.img");
    std::fs::write(&raw, &disk).unwrap();

    assert_eq!(probe(&raw), Format::Qcow2);
    refused(
        format::check(&raw, Format::Qcow2, false),
        &raw,
        &["backing file", "/etc/hostname"],
    );
    let info = format::check(&raw, Format::Raw, false).unwrap();
    assert_eq!(info.virtual_size, 8 << 20);
    assert_eq!(info.backing_file, None);
    // Given as another format, it is refused for not being that.
    refused(
        format::check(&raw, Format::Vmdk, false),
        &raw,
        &["given as vmdk", "qcow2"],
    );
    // The header alone, too short for its tables: still names the file.
    let head = d.path("head.img");
    std::fs::write(&head, &disk[..4096]).unwrap();
    refused(
        format::check(&head, Format::Qcow2, false),
        &head,
        &["inconsistent", "/etc/hostname"],
    );
}

#[test]
fn format_mismatches() {
    let d = Dir::new();
    let raw = d.raw("disk.img");
    refused(
        format::check(&raw, Format::Qcow2, false),
        &raw,
        &["given as qcow2", "raw disk"],
    );
    let qcow2 = d.convert("disk.qcow2", "qcow2", &[]);
    for other in [Format::Vmdk, Format::Vdi, Format::Vhdx, Format::Vpc] {
        refused(
            format::check(&qcow2, other, false),
            &qcow2,
            &["signature of a qcow2 image"],
        );
    }
    let qed = d.create("disk.qed", "qed", &[]);
    refused(format::check(&qed, Format::Qcow2, false), &qed, &["QED"]);
    format::check(&qed, Format::Raw, false).unwrap();
}

#[test]
fn qcow2_backing_chains() {
    let d = Dir::new();
    let base = d.create("base.qcow2", "qcow2", &[]);
    let mid = d.create("mid.qcow2", "qcow2", &["-b", "base.qcow2", "-F", "qcow2"]);
    let top = d.create(
        "top.qcow2",
        "qcow2",
        &["-b", mid.to_str().unwrap(), "-F", "qcow2"],
    );
    let info = inspect(&top, Format::Qcow2).unwrap();
    assert_eq!(info.backing_file, Some(mid.clone()));
    assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
    refused(
        format::check(&top, Format::Qcow2, false),
        &top,
        &["backing file", mid.to_str().unwrap()],
    );
    refused(
        format::check(&mid, Format::Qcow2, false),
        &mid,
        &[base.to_str().unwrap()],
    );
    assert_eq!(format::check(&top, Format::Qcow2, true).unwrap(), info);

    // Backing files without a declared format are probed, as qemu does.
    let raw = d.raw("base.raw");
    let probed = d.create("probed.qcow2", "qcow2", &["-b", "base.raw", "-F", "raw"]);
    patch_out_backing_format(&probed);
    assert_eq!(
        inspect(&probed, Format::Qcow2).unwrap().backing_format,
        None
    );
    format::check(&probed, Format::Qcow2, true).unwrap();
    std::fs::copy(d.create("q.qed", "qed", &[]), &raw).unwrap();
    refused(
        format::check(&probed, Format::Qcow2, true),
        &probed,
        &[raw.to_str().unwrap(), "QED"],
    );

    // A missing link.
    std::fs::remove_file(&base).unwrap();
    let err = refused(
        format::check(&top, Format::Qcow2, true),
        &top,
        &[mid.to_str().unwrap(), base.to_str().unwrap()],
    );
    assert_eq!(err.errno(), Some(libc_enoent()));
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

/// Replaces the backing format extension's type by an unknown one, as in
/// images made before qemu required -F.
fn patch_out_backing_format(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let at = b
        .windows(4)
        .position(|w| w == 0xE279_2ACAu32.to_be_bytes())
        .expect("a backing format extension");
    b[at..at + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_data_file_anywhere_in_the_chain_is_refused() {
    let d = Dir::new();
    let data = d.path("base.data");
    let base = d.create(
        "base.qcow2",
        "qcow2",
        &["-o", &format!("data_file={}", data.display())],
    );
    let info = inspect(&base, Format::Qcow2).unwrap();
    assert_eq!(info.data_file, Some(data.clone()));
    for allow in [false, true] {
        refused(
            format::check(&base, Format::Qcow2, allow),
            &base,
            &["external data file", data.to_str().unwrap()],
        );
    }
    let top = d.create("top.qcow2", "qcow2", &["-b", "base.qcow2", "-F", "qcow2"]);
    refused(
        format::check(&top, Format::Qcow2, true),
        &top,
        &[
            base.to_str().unwrap(),
            "external data file",
            data.to_str().unwrap(),
        ],
    );
}

#[test]
fn chains_are_bounded_and_loops_found() {
    let d = Dir::new();
    // a -> b -> a
    d.create("b.qcow2", "qcow2", &["-u", "-b", "a.qcow2", "-F", "qcow2"]);
    let a = d.create("a.qcow2", "qcow2", &["-u", "-b", "b.qcow2", "-F", "qcow2"]);
    refused(
        format::check(&a, Format::Qcow2, true),
        &a,
        &["loops", d.path("b.qcow2").to_str().unwrap()],
    );

    // MAX_CHAIN files are fine, one more is not.
    d.create("l0.qcow2", "qcow2", &[]);
    for i in 1..=MAX_CHAIN {
        d.create(
            &format!("l{i}.qcow2"),
            "qcow2",
            &["-u", "-b", &format!("l{}.qcow2", i - 1), "-F", "qcow2"],
        );
    }
    format::check(
        &d.path(&format!("l{}.qcow2", MAX_CHAIN - 1)),
        Format::Qcow2,
        true,
    )
    .unwrap();
    let top = d.path(&format!("l{MAX_CHAIN}.qcow2"));
    refused(
        format::check(&top, Format::Qcow2, true),
        &top,
        &["longer than 16"],
    );
}

#[test]
fn backing_names_that_are_not_host_paths() {
    let d = Dir::new();
    for name in ["nbd:localhost:10809", "json:{\"driver\":\"raw\"}"] {
        let img = d.create("p.qcow2", "qcow2", &["-u", "-b", name, "-F", "raw"]);
        refused(
            format::check(&img, Format::Qcow2, true),
            &img,
            &["protocol"],
        );
    }
    // A device or a directory is not a backing file.
    let img = d.create(
        "dev.qcow2",
        "qcow2",
        &["-u", "-b", "/dev/null", "-F", "raw"],
    );
    refused(
        format::check(&img, Format::Qcow2, true),
        &img,
        &["/dev/null", "character device"],
    );
}

#[test]
fn corrupted_qcow2_headers() {
    let d = Dir::new();
    let img = d.convert("bad.qcow2", "qcow2", &[]);
    let mut b = std::fs::read(&img).unwrap();
    let len = b.len() as u64;
    b[40..48].copy_from_slice(&(len.next_multiple_of(65536) + (1 << 30)).to_be_bytes());
    std::fs::write(&img, &b).unwrap();
    refused(
        format::check(&img, Format::Qcow2, false),
        &img,
        &["inconsistent", "L1 table", "beyond the end"],
    );
    // An L1 table claiming 2^32 - 1 entries.
    b[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(&img, &b).unwrap();
    refused(
        format::check(&img, Format::Qcow2, false),
        &img,
        &["4294967295 entries"],
    );
    // Encrypted.
    let enc = d.create(
        "enc.qcow2",
        "qcow2",
        &[
            "--object",
            "secret,id=s0,data=123456",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        ],
    );
    refused(
        format::check(&enc, Format::Qcow2, false),
        &enc,
        &["encrypted", "LUKS"],
    );
}

#[test]
fn differencing_vhd_names_its_parent() {
    let d = Dir::new();
    let base = d.convert("base.vhd", "vpc", &["-o", "subformat=dynamic"]);
    let child = d.convert("child.vhd", "vpc", &["-o", "subformat=dynamic"]);
    // Make the child a differencing disk whose Unicode parent name is
    // base.vhd (qemu-img cannot make one).
    let mut b = std::fs::read(&child).unwrap();
    let n = b.len();
    for footer in [0, n - 512] {
        b[footer + 60..footer + 64].copy_from_slice(&4u32.to_be_bytes());
        b[footer + 64..footer + 68].fill(0);
        let sum = b[footer..footer + 512]
            .iter()
            .fold(0u32, |s, &x| s.wrapping_add(u32::from(x)));
        b[footer + 64..footer + 68].copy_from_slice(&(!sum).to_be_bytes());
    }
    let name: Vec<u8> = "base.vhd"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    b[512 + 64..512 + 64 + name.len()].copy_from_slice(&name);
    std::fs::write(&child, b).unwrap();

    let info = inspect(&child, Format::Vpc).unwrap();
    assert_eq!(info.backing_file, Some(PathBuf::from("base.vhd")));
    refused(
        format::check(&child, Format::Vpc, false),
        &child,
        &["differencing VHD", base.to_str().unwrap()],
    );
    format::check(&child, Format::Vpc, true).unwrap();
    std::fs::remove_file(&base).unwrap();
    refused(
        format::check(&child, Format::Vpc, true),
        &child,
        &[base.to_str().unwrap()],
    );
}

#[test]
fn truncated_images_are_refused_not_misread() {
    let d = Dir::new();
    for (name, format, fmt, extra) in [
        ("t.qcow2", Format::Qcow2, "qcow2", &[][..]),
        ("t.vmdk", Format::Vmdk, "vmdk", &[][..]),
        ("t.vdi", Format::Vdi, "vdi", &["-o", "static=on"][..]),
        ("t.vhdx", Format::Vhdx, "vhdx", &[][..]),
        ("t.vhd", Format::Vpc, "vpc", &[][..]),
    ] {
        let img = d.convert(name, fmt, extra);
        let full = std::fs::read(&img).unwrap();
        for len in [100, 600, 70_000, full.len() / 2] {
            std::fs::write(&img, &full[..len]).unwrap();
            // Either refused with a proper error or, where the truncated
            // part held no table, accepted: never a panic.
            if let Err(e) = inspect(&img, format) {
                assert_eq!(e.step(), Some(Step::Probe));
                assert!(e.to_string().contains(img.to_str().unwrap()), "{e}");
            }
        }
    }
}

//! Guest images with LVM2, made by LVM2's own tools the way this host
//! allows it without device-mapper: `pvcreate` and `vgcreate` on a loop
//! device the fixture attaches itself, then the logical volumes written
//! into a `vgcfgbackup` file and put on disk by `vgcfgrestore`, and every
//! filesystem made through a loop device with the LV's offset (a
//! two-segment LV: made in a file and written piece by piece).
//!
//! Every LVM command runs with `--devices` naming only the fixture's loop
//! device, `LVM_SUPPRESS_FD_WARNINGS=1`, and `LVM_SYSTEM_DIR` pointing at
//! a private `lvm.conf` (no backups or archives under /etc/lvm, no hints
//! under /run/lvm, locks in the fixture's directory, no udev). The VG is made with
//! `--setautoactivation n`, and nothing is ever activated: the host's LVM
//! never takes a guest VG. Loop devices are detached when their guard
//! drops, also on a failing assertion.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Fixture, layout, run};

/// The GPT type of a BIOS boot partition.
pub const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
/// The GPT type of an LVM physical volume.
pub const LINUX_LVM: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";

/// A loop device over part of a file, detached on drop.
pub struct LoopDev {
    /// `/dev/loopN`.
    pub dev: String,
}

impl LoopDev {
    /// `losetup --find --show --offset OFFSET --sizelimit SIZE IMG`.
    pub fn attach(img: &Path, offset: u64, size: u64) -> LoopDev {
        let dev = run(Command::new("losetup")
            .args(["--find", "--show", "--offset", &offset.to_string()])
            .args(["--sizelimit", &size.to_string()])
            .arg(img))
        .trim()
        .to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup said {dev:?}");
        LoopDev { dev }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let out = Command::new("losetup").args(["-d", &self.dev]).output();
        if !matches!(&out, Ok(o) if o.status.success()) && !std::thread::panicking() {
            panic!("losetup -d {} failed: {out:?}", self.dev);
        }
        // A detach while someone (a parallel test's blkid, the kernel's
        // own scan) still has the device open is deferred until they
        // close it: wait for the binding to go, so the next attach of
        // the image does not find it in use (bounded: 10 s).
        let backing = format!(
            "/sys/block/{}/loop/backing_file",
            self.dev.trim_start_matches("/dev/")
        );
        for _ in 0..1000 {
            if !Path::new(&backing).exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if !std::thread::panicking() {
            panic!("{} still bound 10 s after losetup -d", self.dev);
        }
    }
}

/// A plain filesystem in a partition: (partition number, fstype, UUID,
/// files as (path, content)).
pub type PlainFs<'a> = (u32, &'a str, &'a str, Vec<(String, String)>);

/// What goes into a logical volume.
#[derive(Debug, Clone)]
pub enum Content {
    /// Nothing (the LV stays zeros).
    Empty,
    /// A filesystem (`ext4`, `xfs`) with a UUID and files (path, content).
    Fs {
        fstype: &'static str,
        uuid: String,
        files: Vec<(String, String)>,
    },
    /// Swap space with a UUID.
    Swap { uuid: String },
}

/// A logical volume to make: its name, its segments as (first PV extent,
/// extent count), and what it holds.
#[derive(Debug, Clone)]
pub struct LvDef {
    pub name: String,
    pub segments: Vec<(u64, u64)>,
    pub content: Content,
}

impl LvDef {
    pub fn new(name: &str, segments: &[(u64, u64)], content: Content) -> LvDef {
        LvDef {
            name: name.to_string(),
            segments: segments.to_vec(),
            content,
        }
    }

    /// Its size in extents.
    pub fn extents(&self) -> u64 {
        self.segments.iter().map(|s| s.1).sum()
    }
}

/// An image with one LVM2 physical volume, and where everything is.
#[derive(Debug, Clone)]
pub struct LvmImage {
    pub path: PathBuf,
    /// The PV's bytes in the image (its partition, or the whole disk).
    pub pv_start: u64,
    pub pv_size: u64,
    /// The PV's number in the partition table (None: the whole disk).
    pub pv_partition: Option<u32>,
    pub vg: String,
    /// From `pvs`/`vgs`: where extents start on the PV, and their size (bytes).
    pub pe_start: u64,
    pub extent_size: u64,
    pub lvs: Vec<LvDef>,
    /// Other filesystems' UUIDs by what they are (`boot`).
    pub uuids: BTreeMap<String, String>,
    /// The fixture's private LVM system directory.
    sys_dir: PathBuf,
}

impl LvmImage {
    /// The LV called `name`.
    pub fn lv(&self, name: &str) -> &LvDef {
        self.lvs
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no LV {name}"))
    }

    /// The byte ranges (image offset, length) of LV `name`, in LV order.
    pub fn lv_ranges(&self, name: &str) -> Vec<(u64, u64)> {
        self.lv(name)
            .segments
            .iter()
            .map(|&(at, n)| {
                (
                    self.pv_start + self.pe_start + at * self.extent_size,
                    n * self.extent_size,
                )
            })
            .collect()
    }

    /// Panics if the host activated any of this image's LVs (a
    /// `/dev/mapper/VG-LV` or `/dev/VG/LV` node exists).
    pub fn assert_not_active(&self) {
        let esc = |s: &str| s.replace('-', "--");
        for lv in &self.lvs {
            for node in [
                PathBuf::from(format!("/dev/mapper/{}-{}", esc(&self.vg), esc(&lv.name))),
                PathBuf::from(format!("/dev/{}/{}", self.vg, lv.name)),
            ] {
                assert!(!node.exists(), "the host activated {}", node.display());
            }
        }
    }

    /// Runs an LVM2 reporting command (`lvs`, `pvs`, `vgs`) with `args`
    /// over this image's PV, through a loop device attached for it.
    pub fn report(&self, command: &str, args: &[&str]) -> String {
        let dev = LoopDev::attach(&self.path, self.pv_start, self.pv_size);
        lvm(&self.sys_dir, command, &dev.dev, args)
    }

    /// `lvs --reportformat json` of the fields the parser is compared on,
    /// one row per segment: lv_name, vg_name, seg_count, lv_size (bytes),
    /// seg_start_pe, seg_size_pe, seg_pe_ranges.
    pub fn lvs_rows(&self) -> Vec<BTreeMap<String, String>> {
        let json = self.report(
            "lvs",
            &[
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "lv_name,vg_name,seg_count,lv_size,seg_start_pe,seg_size_pe,seg_pe_ranges",
            ],
        );
        json_rows(&json)
    }
}

/// The objects of a flat JSON report (`{"key":"value", ...}` rows, as
/// LVM2 writes them) as maps.
pub fn json_rows(json: &str) -> Vec<BTreeMap<String, String>> {
    let Some(start) = json.find("\"lv\": [") else {
        panic!("no lv report in {json}");
    };
    let body = &json[start..];
    let body = &body[..body.find(']').unwrap()];
    body.split('{')
        .skip(1)
        .map(|row| {
            let row = &row[..row.find('}').unwrap()];
            row.split(", ")
                .filter_map(|kv| {
                    let (k, v) = kv.trim().split_once(':')?;
                    Some((
                        k.trim_matches('"').to_string(),
                        v.trim_matches('"').to_string(),
                    ))
                })
                .collect()
        })
        .collect()
}

/// Runs `lvm COMMAND --devices DEV ARGS...` restricted to `dev` with the
/// private configuration in `sys_dir`.
fn lvm(sys_dir: &Path, command: &str, dev: &str, args: &[&str]) -> String {
    run(Command::new(command)
        .env("LVM_SYSTEM_DIR", sys_dir)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .args(["--devices", dev])
        .args(args))
}

/// A UUID in LVM2's form (32 characters, dashed 6-4-4-4-4-4-6) made from
/// `seed`.
fn lvm_uuid(seed: &str) -> String {
    const CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut s = String::new();
    for i in 0..32 {
        for b in seed.bytes().chain([i as u8]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        if matches!(i, 6 | 10 | 14 | 18 | 22 | 26) {
            s.push('-');
        }
        s.push(char::from(CHARS[(h >> 33) as usize % CHARS.len()]));
    }
    s
}

/// A filesystem UUID made from `seed` (for fstab fixtures).
pub fn fs_uuid(seed: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let g = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        h & 0xffff,
        (g >> 52) & 0xfff,
        (g >> 40) & 0xfff,
        g & 0xffff_ffff_ffff
    )
}

/// The files of an OS root: os-release, hostname, fstab, and `id`.
pub fn os_root(
    id: &str,
    version: &str,
    pretty: &str,
    hostname: &str,
    fstab: &str,
    lv: &str,
) -> Vec<(String, String)> {
    vec![
        (
            "etc/os-release".into(),
            format!(
                "NAME=\"{pretty}\"\nID={id}\nVERSION_ID=\"{version}\"\nPRETTY_NAME=\"{pretty}\"\n"
            ),
        ),
        ("etc/hostname".into(), format!("{hostname}\n")),
        ("etc/fstab".into(), fstab.to_string()),
        ("id".into(), lv.to_string()),
    ]
}

/// `files` with an empty directory (a `.keep` file) at each of `dirs`, the
/// mount points a real root has for its fstab.
fn with_mount_points(mut files: Vec<(String, String)>, dirs: &[&str]) -> Vec<(String, String)> {
    for d in dirs {
        files.push((format!("{d}/.keep"), String::new()));
    }
    files
}

impl Fixture {
    /// Runs LVM2's `command` restricted to `dev`, with this fixture's
    /// private configuration.
    pub fn lvm_cmd(&self, command: &str, dev: &str, args: &[&str]) -> String {
        lvm(&self.lvm_sys_dir(), command, dev, args)
    }

    fn lvm_sys_dir(&self) -> PathBuf {
        let dir = self.path().join("lvm-sys");
        if !dir.exists() {
            std::fs::create_dir_all(dir.join("lock")).unwrap();
            std::fs::write(
                dir.join("lvm.conf"),
                format!(
                    "global {{ locking_dir = \"{}\" }}\n\
                     backup {{ backup = 0 archive = 0 }}\n\
                     devices {{ use_devicesfile = 0 obtain_device_list_from_udev = 0 hints = \"none\" }}\n\
                     activation {{ udev_sync = 0 udev_rules = 0 monitoring = 0 }}\n",
                    dir.join("lock").display()
                ),
            )
            .unwrap();
        }
        dir
    }

    /// Makes a filesystem `fstype` with `uuid` and `files` on `dev` (a
    /// device or a file of the right size).
    fn make_fs(&self, dev: &str, fstype: &str, uuid: &str, files: &[(String, String)]) {
        let src = self.path().join(format!("src-{uuid}"));
        for (rel, content) in files {
            let p = src.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        std::fs::create_dir_all(&src).unwrap();
        match fstype {
            "ext4" => {
                run(Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-b", "4096", "-U", uuid, "-d"])
                    .arg(&src)
                    .arg(dev));
            }
            "xfs" => {
                run(Command::new("mkfs.xfs").args([
                    "-q",
                    "-f",
                    "-m",
                    &format!("uuid={uuid}"),
                    dev,
                ]));
                // mkfs.xfs cannot fill a filesystem; util-linux's mount can.
                let mnt = self.path().join(format!("mnt-{uuid}"));
                std::fs::create_dir_all(&mnt).unwrap();
                run(Command::new("mount").arg(dev).arg(&mnt));
                let copied = Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", src.display()))
                    .arg(&mnt)
                    .status();
                super::system::umount(&mnt);
                assert!(copied.unwrap().success(), "cp into {dev}");
            }
            other => panic!("no recipe for {other}"),
        }
        std::fs::remove_dir_all(&src).unwrap();
    }

    /// An image holding one PV, made by LVM2's tools, with `lvs` in VG
    /// `vg` (4 MiB extents), their filesystems made in place.
    ///
    /// `table` is an sfdisk script whose partition `pv_partition` becomes
    /// the PV; `None` makes the whole disk the PV. `others` are
    /// (partition number, fstype, uuid, files) of plain filesystems in
    /// the other partitions.
    #[allow(clippy::too_many_arguments)]
    pub fn lvm_image(
        &self,
        name: &str,
        size: u64,
        table: Option<(&str, u32)>,
        others: &[PlainFs<'_>],
        vg: &str,
        lvs: Vec<LvDef>,
    ) -> LvmImage {
        let img = self.blank(name, size);
        let (pv_start, pv_size, pv_partition) = match table {
            None => (0, size, None),
            Some((script, number)) => {
                let script_file = self.path().join(format!("{name}.sfdisk"));
                std::fs::write(&script_file, script).unwrap();
                run(Command::new("sh").arg("-c").arg(format!(
                    "sfdisk -q --no-reread --no-tell-kernel {} < {}",
                    img.display(),
                    script_file.display()
                )));
                let parts = layout(&img);
                for (n, fstype, uuid, files) in others {
                    let &(_, start, psize) = parts.iter().find(|p| p.0 == *n).unwrap();
                    let dev = LoopDev::attach(&img, start, psize);
                    self.make_fs(&dev.dev, fstype, uuid, files);
                }
                let &(_, start, psize) = parts.iter().find(|p| p.0 == number).unwrap();
                (start, psize, Some(number))
            }
        };
        let sys_dir = self.lvm_sys_dir();
        let (pe_start, extent_size) = {
            let pv = LoopDev::attach(&img, pv_start, pv_size);
            let d = pv.dev.as_str();
            lvm(&sys_dir, "pvcreate", d, &["-q", d]);
            lvm(
                &sys_dir,
                "vgcreate",
                d,
                &["-q", "--setautoactivation", "n", "-s", "4M", vg, d],
            );
            let backup = self.path().join(format!("{name}.vg"));
            lvm(
                &sys_dir,
                "vgcfgbackup",
                d,
                &["-q", "-f", backup.to_str().unwrap(), vg],
            );
            let text = std::fs::read_to_string(&backup).unwrap();
            let text = add_lvs(&text, &lvs);
            std::fs::write(&backup, text).unwrap();
            lvm(
                &sys_dir,
                "vgcfgrestore",
                d,
                &["-q", "-f", backup.to_str().unwrap(), vg],
            );
            let number = |s: String| -> u64 { s.trim().parse().unwrap() };
            let pe_start = number(lvm(
                &sys_dir,
                "pvs",
                d,
                &[
                    "--noheadings",
                    "--nosuffix",
                    "--units",
                    "b",
                    "-o",
                    "pe_start",
                    d,
                ],
            ));
            let extent_size = number(lvm(
                &sys_dir,
                "vgs",
                d,
                &[
                    "--noheadings",
                    "--nosuffix",
                    "--units",
                    "b",
                    "-o",
                    "vg_extent_size",
                    vg,
                ],
            ));
            (pe_start, extent_size)
        };
        let image = LvmImage {
            path: img.clone(),
            pv_start,
            pv_size,
            pv_partition,
            vg: vg.to_string(),
            pe_start,
            extent_size,
            lvs,
            uuids: others
                .iter()
                .map(|(n, _, uuid, _)| (format!("p{n}"), uuid.to_string()))
                .collect(),
            sys_dir,
        };
        for lv in &image.lvs {
            let ranges = image.lv_ranges(&lv.name);
            match (&lv.content, &ranges[..]) {
                (Content::Empty, _) => {}
                (Content::Swap { uuid }, &[(at, len)]) => {
                    let dev = LoopDev::attach(&img, at, len);
                    run(Command::new("mkswap").args(["-U", uuid, &dev.dev]));
                }
                (
                    Content::Fs {
                        fstype,
                        uuid,
                        files,
                    },
                    &[(at, len)],
                ) => {
                    let dev = LoopDev::attach(&img, at, len);
                    self.make_fs(&dev.dev, fstype, uuid, files);
                }
                (
                    Content::Fs {
                        fstype,
                        uuid,
                        files,
                    },
                    _,
                ) => {
                    // Several pieces: the filesystem made in a file of the
                    // LV's size, each piece written at its own offset.
                    let file = self.path().join(format!("{name}.{}.fs", lv.name));
                    let total: u64 = ranges.iter().map(|r| r.1).sum();
                    std::fs::File::create(&file)
                        .unwrap()
                        .set_len(total)
                        .unwrap();
                    self.make_fs(file.to_str().unwrap(), fstype, uuid, files);
                    let bytes = std::fs::read(&file).unwrap();
                    let out = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
                    let mut from = 0usize;
                    for &(at, len) in &ranges {
                        out.write_all_at(&bytes[from..from + len as usize], at)
                            .unwrap();
                        from += len as usize;
                    }
                    std::fs::remove_file(&file).unwrap();
                }
                (Content::Swap { .. }, _) => panic!("swap on several segments"),
            }
        }
        image
    }

    /// Rocky/RHEL-like: GPT with a BIOS boot partition, xfs `/boot`
    /// (300 MiB) and a PV holding VG `rl`: `root` (xfs, the OS root),
    /// `home` (ext4), `swap`, and `data` (ext4 over two segments apart on
    /// the PV). Each filesystem has a file `id` naming it.
    pub fn rocky_image(&self, name: &str) -> LvmImage {
        let boot = fs_uuid(&format!("{}/{name}-boot", self.path().display()));
        let root = fs_uuid(&format!("{}/{name}-root", self.path().display()));
        let home = fs_uuid(&format!("{}/{name}-home", self.path().display()));
        let swap = fs_uuid(&format!("{}/{name}-swap", self.path().display()));
        let data = fs_uuid(&format!("{}/{name}-data", self.path().display()));
        let fstab = format!(
            "# /etc/fstab\n\
             /dev/mapper/rl-root     /                       xfs     defaults        0 0\n\
             UUID={boot} /boot                   xfs     defaults        0 0\n\
             /dev/mapper/rl-home     /home                   ext4    defaults        0 0\n\
             /dev/mapper/rl-swap     none                    swap    defaults        0 0\n\
             /dev/rl/data            /srv                    ext4    defaults        0 0\n"
        );
        let script = format!(
            "label: gpt\n\
             size=1MiB, type={BIOS_BOOT}, name=\"biosboot\"\n\
             size=300MiB, type=L, name=\"boot\"\n\
             type={LINUX_LVM}, name=\"lvm\"\n"
        );
        let files = |id: &str| vec![("id".to_string(), id.to_string())];
        self.lvm_image(
            name,
            724 << 20,
            Some((&script, 3)),
            &[(2, "xfs", &boot, files("boot"))],
            "rl",
            vec![
                LvDef::new(
                    "root",
                    &[(0, 75)],
                    Content::Fs {
                        fstype: "xfs",
                        uuid: root,
                        files: with_mount_points(
                            os_root(
                                "rocky",
                                "9.4",
                                "Rocky Linux 9.4 (Blue Onyx)",
                                "rocky-guest",
                                &fstab,
                                "root",
                            ),
                            &["boot", "home", "srv"],
                        ),
                    },
                ),
                LvDef::new(
                    "home",
                    &[(75, 8)],
                    Content::Fs {
                        fstype: "ext4",
                        uuid: home,
                        files: files("home"),
                    },
                ),
                LvDef::new("swap", &[(83, 4)], Content::Swap { uuid: swap }),
                LvDef::new(
                    "data",
                    &[(90, 3), (96, 3)],
                    Content::Fs {
                        fstype: "ext4",
                        uuid: data,
                        files: files("data"),
                    },
                ),
            ],
        )
    }

    /// Ubuntu Server-like: GPT with a BIOS boot partition, ext4 `/boot`,
    /// and a PV holding `ubuntu-vg/ubuntu-lv` (ext4, the OS root).
    pub fn ubuntu_image(&self, name: &str) -> LvmImage {
        let boot = fs_uuid(&format!("{}/{name}-boot", self.path().display()));
        let root = fs_uuid(&format!("{}/{name}-root", self.path().display()));
        let fstab = format!(
            "/dev/mapper/ubuntu--vg-ubuntu--lv / ext4 defaults 0 1\n\
             /dev/disk/by-uuid/{boot} /boot ext4 defaults 0 1\n\
             /swap.img none swap sw 0 0\n"
        );
        let script = format!(
            "label: gpt\n\
             size=1MiB, type={BIOS_BOOT}\n\
             size=64MiB, type=L\n\
             type=L\n"
        );
        self.lvm_image(
            name,
            256 << 20,
            Some((&script, 3)),
            &[(2, "ext4", &boot, vec![("id".into(), "boot".into())])],
            "ubuntu-vg",
            vec![LvDef::new(
                "ubuntu-lv",
                &[(0, 40)],
                Content::Fs {
                    fstype: "ext4",
                    uuid: root,
                    files: with_mount_points(
                        os_root(
                            "ubuntu",
                            "24.04",
                            "Ubuntu 24.04.1 LTS",
                            "ubuntu-guest",
                            &fstab,
                            "ubuntu-lv",
                        ),
                        &["boot"],
                    ),
                },
            )],
        )
    }

    /// A whole-disk PV (no partition table): VG `vg0` with `root` (ext4,
    /// the OS root).
    pub fn whole_disk_pv_image(&self, name: &str) -> LvmImage {
        let root = fs_uuid(&format!("{}/{name}-root", self.path().display()));
        let fstab = format!("UUID={root} / ext4 defaults 0 1\n");
        self.lvm_image(
            name,
            128 << 20,
            None,
            &[],
            "vg0",
            vec![LvDef::new(
                "root",
                &[(2, 25)],
                Content::Fs {
                    fstype: "ext4",
                    uuid: root,
                    files: os_root(
                        "debian",
                        "12",
                        "Debian GNU/Linux 12 (bookworm)",
                        "whole-guest",
                        &fstab,
                        "root",
                    ),
                },
            )],
        )
    }
}

/// The backup text with a `logical_volumes` section for `lvs` added to
/// the VG section (the last section of the file) and `seqno` raised.
fn add_lvs(text: &str, lvs: &[LvDef]) -> String {
    let mut section = String::from("\n\tlogical_volumes {\n");
    for lv in lvs {
        section += &format!(
            "\n\t\t{} {{\n\t\t\tid = \"{}\"\n\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\
             \t\t\tflags = []\n\t\t\tcreation_time = 1700000000\n\t\t\tcreation_host = \"guest\"\n\
             \t\t\tsegment_count = {}\n",
            lv.name,
            lvm_uuid(&lv.name),
            lv.segments.len()
        );
        let mut start = 0;
        for (i, &(at, n)) in lv.segments.iter().enumerate() {
            section += &format!(
                "\n\t\t\tsegment{} {{\n\t\t\t\tstart_extent = {start}\n\t\t\t\textent_count = {n}\n\
                 \t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n\
                 \t\t\t\tstripes = [\n\t\t\t\t\t\"pv0\", {at}\n\t\t\t\t]\n\t\t\t}}\n",
                i + 1
            );
            start += n;
        }
        section += "\t\t}\n";
    }
    section += "\t}\n";
    let end = text.rfind('}').expect("a VG section");
    let mut out = format!("{}{section}{}", &text[..end], &text[end..]);
    let seq_at = out.find("seqno = ").unwrap() + "seqno = ".len();
    let seq_end = seq_at + out[seq_at..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let seqno: u64 = out[seq_at..seq_end].parse().unwrap();
    out.replace_range(seq_at..seq_end, &(seqno + 1).to_string());
    out
}

/// An image whose VG has two PVs, each a GPT partition (2 and 3; 1 is a
/// small ext4 `boot` holding `id` = `boot`), made by LVM2's tools as
/// [`Fixture::lvm_image`] does: VG `duo`, 4 MiB extents, `pe_start` 1 MiB.
#[derive(Debug, Clone)]
pub struct TwoPvImage {
    pub path: PathBuf,
    /// Each PV's first byte in the image.
    pub pv_start: [u64; 2],
    pub pe_start: u64,
    pub extent_size: u64,
}

/// A segment of an LV on a two-PV VG: its stripes as (PV index, first PV
/// extent) and the extents it covers per stripe.
#[derive(Debug, Clone)]
pub struct Seg {
    pub stripes: Vec<(usize, u64)>,
    pub extents: u64,
}

/// An LV of a [`TwoPvImage`]: name, segments, ext4 files (`None`: left
/// empty).
pub type RawLv<'a> = (&'a str, Vec<Seg>, Option<Vec<(String, String)>>);

impl TwoPvImage {
    /// The image byte ranges of linear segments `segs`.
    pub fn ranges(&self, segs: &[Seg]) -> Vec<(u64, u64)> {
        segs.iter()
            .map(|s| {
                assert_eq!(s.stripes.len(), 1, "linear segments only");
                let (pv, at) = s.stripes[0];
                (
                    self.pv_start[pv] + self.pe_start + at * self.extent_size,
                    s.extents * self.extent_size,
                )
            })
            .collect()
    }
}

/// An image whose VG has PVs on several partitions, made by LVM2's tools
/// as [`Fixture::lvm_image`] does (4 MiB extents).
#[derive(Debug, Clone)]
pub struct MultiPvImage {
    pub path: PathBuf,
    /// Each PV's first byte in the image, in PV index order.
    pub pv_start: Vec<u64>,
    pub pe_start: u64,
    pub extent_size: u64,
    pub vg: String,
    /// The LV names, in the order given.
    pub lvs: Vec<String>,
}

impl MultiPvImage {
    /// The image byte ranges of linear segments `segs`.
    pub fn ranges(&self, segs: &[Seg]) -> Vec<(u64, u64)> {
        segs.iter()
            .map(|s| {
                assert_eq!(s.stripes.len(), 1, "linear segments only");
                let (pv, at) = s.stripes[0];
                (
                    self.pv_start[pv] + self.pe_start + at * self.extent_size,
                    s.extents * self.extent_size,
                )
            })
            .collect()
    }

    /// Panics if the host activated any of this image's LVs.
    pub fn assert_not_active(&self) {
        let esc = |s: &str| s.replace('-', "--");
        for lv in &self.lvs {
            for node in [
                PathBuf::from(format!("/dev/mapper/{}-{}", esc(&self.vg), esc(lv))),
                PathBuf::from(format!("/dev/{}/{lv}", self.vg)),
            ] {
                assert!(!node.exists(), "the host activated {}", node.display());
            }
        }
    }
}

/// An LV of a [`MultiPvImage`]: name, segments, content.
pub type MultiLv = (String, Vec<Seg>, Content);

impl Fixture {
    /// A [`TwoPvImage`] of 96 MiB (two PVs of 40 MiB) with `lvs`: (name,
    /// segments, ext4 files or `None` for an LV left empty). An LV with
    /// one stripe per segment gets its ext4 written piece by piece.
    pub fn two_pv_image(&self, name: &str, lvs: &[RawLv<'_>]) -> TwoPvImage {
        let script = format!(
            "label: gpt\nsize=8MiB, type=L, name=\"boot\"\n\
             size=40MiB, type={LINUX_LVM}\nsize=40MiB, type={LINUX_LVM}\n"
        );
        let boot = fs_uuid(&format!("{}/{name}-boot", self.path().display()));
        let lvs: Vec<MultiLv> = lvs
            .iter()
            .map(|(lv, segs, files)| {
                let content = match files {
                    None => Content::Empty,
                    Some(files) => Content::Fs {
                        fstype: "ext4",
                        uuid: fs_uuid(&format!("{}/{name}-{lv}", self.path().display())),
                        files: files.clone(),
                    },
                };
                (lv.to_string(), segs.clone(), content)
            })
            .collect();
        let m = self.multi_pv_image(
            name,
            96 << 20,
            &script,
            &[2, 3],
            &[(1, "ext4", &boot, vec![("id".into(), "boot".into())])],
            "duo",
            &lvs,
        );
        TwoPvImage {
            path: m.path,
            pv_start: [m.pv_start[0], m.pv_start[1]],
            pe_start: m.pe_start,
            extent_size: m.extent_size,
        }
    }

    /// An image of `size` with the sfdisk `script`, plain filesystems
    /// `others`, and VG `vg` over the partitions `pv_parts` (PV index i
    /// is partition `pv_parts[i]`) holding `lvs`. A filesystem on several
    /// linear segments is made in a file and written piece by piece.
    #[allow(clippy::too_many_arguments)]
    pub fn multi_pv_image(
        &self,
        name: &str,
        size: u64,
        script: &str,
        pv_parts: &[u32],
        others: &[PlainFs<'_>],
        vg: &str,
        lvs: &[MultiLv],
    ) -> MultiPvImage {
        let img = self.blank(name, size);
        let script_file = self.path().join(format!("{name}.sfdisk"));
        std::fs::write(&script_file, script).unwrap();
        run(Command::new("sh").arg("-c").arg(format!(
            "sfdisk -q --no-reread --no-tell-kernel {} < {}",
            img.display(),
            script_file.display()
        )));
        let parts = layout(&img);
        let part = |n: u32| *parts.iter().find(|p| p.0 == n).unwrap();
        for (n, fstype, uuid, files) in others {
            let (_, s, l) = part(*n);
            let dev = LoopDev::attach(&img, s, l);
            self.make_fs(&dev.dev, fstype, uuid, files);
        }
        let sys_dir = self.lvm_sys_dir();
        let pv_start: Vec<u64> = pv_parts.iter().map(|n| part(*n).1).collect();
        let (pe_start, extent_size) = {
            let devs: Vec<LoopDev> = pv_parts
                .iter()
                .map(|n| {
                    let (_, s, l) = part(*n);
                    LoopDev::attach(&img, s, l)
                })
                .collect();
            let names: Vec<&str> = devs.iter().map(|d| d.dev.as_str()).collect();
            let all = names.join(",");
            let mut args = vec!["-q"];
            args.extend(&names);
            lvm(&sys_dir, "pvcreate", &all, &args);
            let mut args = vec!["-q", "--setautoactivation", "n", "-s", "4M", vg];
            args.extend(&names);
            lvm(&sys_dir, "vgcreate", &all, &args);
            let backup = self.path().join(format!("{name}.vg"));
            let backup_s = backup.to_str().unwrap();
            lvm(&sys_dir, "vgcfgbackup", &all, &["-q", "-f", backup_s, vg]);
            let text = std::fs::read_to_string(&backup).unwrap();
            // The metadata's name of each PV, by its device hint.
            let pv_name = |dev: &str| {
                let at = text
                    .find(&format!("device = \"{dev}\""))
                    .unwrap_or_else(|| panic!("{dev} not in {text}"));
                let open = text[..at].rfind(" {").unwrap();
                let start = text[..open].rfind(|c: char| c.is_whitespace()).unwrap() + 1;
                text[start..open].to_string()
            };
            let pv_names: Vec<String> = names.iter().map(|d| pv_name(d)).collect();
            std::fs::write(&backup, add_raw_lvs(&text, lvs, &pv_names)).unwrap();
            lvm(&sys_dir, "vgcfgrestore", &all, &["-q", "-f", backup_s, vg]);
            let number = |s: String| -> u64 { s.trim().parse().unwrap() };
            let q = ["--noheadings", "--nosuffix", "--units", "b", "-o"];
            let mut pe = q.to_vec();
            pe.extend(["pe_start", names[0]]);
            let mut ext = q.to_vec();
            ext.extend(["vg_extent_size", vg]);
            (
                number(lvm(&sys_dir, "pvs", &all, &pe)),
                number(lvm(&sys_dir, "vgs", &all, &ext)),
            )
        };
        let image = MultiPvImage {
            path: img.clone(),
            pv_start,
            pe_start,
            extent_size,
            vg: vg.to_string(),
            lvs: lvs.iter().map(|l| l.0.clone()).collect(),
        };
        for (lv, segs, content) in lvs {
            if matches!(content, Content::Empty) {
                continue;
            }
            let ranges = image.ranges(segs);
            let total: u64 = ranges.iter().map(|r| r.1).sum();
            let file = self.path().join(format!("{name}.{lv}.fs"));
            match content {
                Content::Empty => continue,
                Content::Swap { uuid } => {
                    std::fs::File::create(&file)
                        .unwrap()
                        .set_len(total)
                        .unwrap();
                    run(Command::new("mkswap").args(["-U", uuid]).arg(&file));
                }
                Content::Fs {
                    fstype,
                    uuid,
                    files,
                } => {
                    std::fs::File::create(&file)
                        .unwrap()
                        .set_len(total)
                        .unwrap();
                    self.make_fs(file.to_str().unwrap(), fstype, uuid, files);
                }
            }
            let bytes = std::fs::read(&file).unwrap();
            let out = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            let mut from = 0usize;
            for &(at, len) in &ranges {
                out.write_all_at(&bytes[from..from + len as usize], at)
                    .unwrap();
                from += len as usize;
            }
            std::fs::remove_file(&file).unwrap();
        }
        image
    }

    /// Rocky/RHEL-like with the VG `rl` over two PVs (partitions 3 and 4,
    /// as after a `vgextend`): GPT with a BIOS boot partition and xfs
    /// `/boot` (partition 2); `root` (xfs, the OS root) and `swap` on PV
    /// 0, `home` (ext4) on PV 1, and `data` (ext4 on `/srv`) made of two
    /// segments, one on each PV. The fstab names them as Rocky's does.
    /// Each filesystem has a file `id` naming it. Returns the image and
    /// the segments of every LV by name.
    pub fn rocky_two_pv_image(&self, name: &str) -> (MultiPvImage, BTreeMap<String, Vec<Seg>>) {
        let seed = |what: &str| fs_uuid(&format!("{}/{name}-{what}", self.path().display()));
        let (boot, root, home, swap, data) = (
            seed("boot"),
            seed("root"),
            seed("home"),
            seed("swap"),
            seed("data"),
        );
        let fstab = format!(
            "# /etc/fstab\n\
             /dev/mapper/rl-root     /                       xfs     defaults        0 0\n\
             UUID={boot} /boot                   xfs     defaults        0 0\n\
             /dev/mapper/rl-home     /home                   ext4    defaults        0 0\n\
             /dev/mapper/rl-swap     none                    swap    defaults        0 0\n\
             UUID={data} /srv                    ext4    defaults        0 0\n"
        );
        let script = format!(
            "label: gpt\n\
             size=1MiB, type={BIOS_BOOT}, name=\"biosboot\"\n\
             size=300MiB, type=L, name=\"boot\"\n\
             size=344MiB, type={LINUX_LVM}, name=\"lvm\"\n\
             size=48MiB, type={LINUX_LVM}, name=\"lvm2\"\n"
        );
        let linear = |pv, at, n| Seg {
            stripes: vec![(pv, at)],
            extents: n,
        };
        let segs: BTreeMap<String, Vec<Seg>> = [
            ("root", vec![linear(0, 0, 75)]),
            ("swap", vec![linear(0, 75, 4)]),
            ("home", vec![linear(1, 0, 4)]),
            ("data", vec![linear(0, 80, 3), linear(1, 6, 3)]),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
        let files = |id: &str| vec![("id".to_string(), id.to_string())];
        let fs = |fstype, uuid: &str, files| Content::Fs {
            fstype,
            uuid: uuid.to_string(),
            files,
        };
        let root_files = with_mount_points(
            os_root(
                "rocky",
                "9.4",
                "Rocky Linux 9.4 (Blue Onyx)",
                "rocky-guest",
                &fstab,
                "root",
            ),
            &["boot", "home", "srv"],
        );
        let lvs: Vec<MultiLv> = vec![
            (
                "root".into(),
                segs["root"].clone(),
                fs("xfs", &root, root_files),
            ),
            (
                "swap".into(),
                segs["swap"].clone(),
                Content::Swap { uuid: swap },
            ),
            (
                "home".into(),
                segs["home"].clone(),
                fs("ext4", &home, files("home")),
            ),
            (
                "data".into(),
                segs["data"].clone(),
                fs("ext4", &data, files("data")),
            ),
        ];
        let image = self.multi_pv_image(
            name,
            700 << 20,
            &script,
            &[3, 4],
            &[(2, "xfs", &boot, files("boot"))],
            "rl",
            &lvs,
        );
        (image, segs)
    }
}

/// [`add_lvs`] for LVs whose segments may use several PVs and be striped
/// (`names`: the metadata names of the PVs, by index).
fn add_raw_lvs(text: &str, lvs: &[MultiLv], names: &[String]) -> String {
    let mut section = String::from("\n\tlogical_volumes {\n");
    for (name, segs, _) in lvs {
        section += &format!(
            "\n\t\t{name} {{\n\t\t\tid = \"{}\"\n\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\
             \t\t\tflags = []\n\t\t\tcreation_time = 1700000000\n\t\t\tcreation_host = \"guest\"\n\
             \t\t\tsegment_count = {}\n",
            lvm_uuid(name),
            segs.len()
        );
        let mut start = 0;
        for (i, s) in segs.iter().enumerate() {
            let n = s.extents * s.stripes.len() as u64;
            let stripes: Vec<String> = s
                .stripes
                .iter()
                .map(|(pv, at)| format!("\"{}\", {at}", names[*pv]))
                .collect();
            let size = if s.stripes.len() > 1 {
                "\t\t\t\tstripe_size = 128\n"
            } else {
                ""
            };
            section += &format!(
                "\n\t\t\tsegment{} {{\n\t\t\t\tstart_extent = {start}\n\t\t\t\textent_count = {n}\n\
                 \t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = {}\n{size}\
                 \t\t\t\tstripes = [\n\t\t\t\t\t{}\n\t\t\t\t]\n\t\t\t}}\n",
                i + 1,
                s.stripes.len(),
                stripes.join(",\n\t\t\t\t\t")
            );
            start += n;
        }
        section += "\t\t}\n";
    }
    section += "\t}\n";
    let end = text.rfind('}').expect("a VG section");
    let mut out = format!("{}{section}{}", &text[..end], &text[end..]);
    let seq_at = out.find("seqno = ").unwrap() + "seqno = ".len();
    let seq_end = seq_at + out[seq_at..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let seqno: u64 = out[seq_at..seq_end].parse().unwrap();
    out.replace_range(seq_at..seq_end, &(seqno + 1).to_string());
    out
}

/// Mounts bytes `at..at+len` of `img` read-only with util-linux's own loop
/// setup (`offset=`, `sizelimit=`: an independent reader of what diskmount
/// wrote) and reads `rel`.
pub fn read_at_offset(
    fx: &Fixture,
    img: &Path,
    (at, len): (u64, u64),
    rel: &str,
) -> Option<String> {
    let mnt = fx.path().join(format!("check-{at}"));
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-o", &format!("ro,loop,offset={at},sizelimit={len}")])
        .arg(img)
        .arg(&mnt));
    let got = std::fs::read_to_string(mnt.join(rel)).ok();
    super::system::umount(&mnt);
    got
}

/// The one image range of a single-segment LV.
pub fn range(img: &LvmImage, name: &str) -> (u64, u64) {
    let r = img.lv_ranges(name);
    assert_eq!(r.len(), 1, "{name}: {r:?}");
    r[0]
}

//! Shared test support: root check, images made with real mkfs tools, and
//! the leak check every test ends with.
#![allow(dead_code)]

pub mod ceph;
pub mod durability;
pub mod fedora;
pub mod guest;
pub mod lvm;
pub mod servers;
pub mod system;

#[allow(unused_imports)]
pub use system::{bound_loops, is_mount_point, mounts, qemu_processes, run};

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails (never skips) when not root: these tests need real devices.
pub fn require_root() {
    system::require_root_for("this test");
}

/// One test's private directory for images; checks on drop that the test
/// left nothing behind that refers to it.
pub struct Fixture {
    dir: tempfile::TempDir,
    checked: bool,
}

impl Fixture {
    pub fn new() -> Fixture {
        require_root();
        let _ = env_logger::builder().is_test(true).try_init();
        run_dir_from_env();
        let dir = tempfile::Builder::new()
            .prefix("diskmount-test-")
            .tempdir()
            .expect("create test dir");
        Fixture {
            dir,
            checked: false,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A directory with `files` (relative path, content) in it.
    pub fn tree(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = self.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        for (rel, content) in files {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        root
    }

    /// A run directory for records (root's, mode 0700, as diskmount
    /// requires).
    pub fn records(&self) -> PathBuf {
        let dir = self.tree("records", &[]);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        dir
    }

    /// A sparse file of `size` bytes.
    pub fn blank(&self, name: &str, size: u64) -> PathBuf {
        let p = self.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    /// An image of filesystem `fstype` holding `files`, made by that
    /// filesystem's own tools.
    pub fn image(&self, fstype: &str, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let src = self.tree(&format!("{name}.src"), files);
        let img = self.path().join(name);
        match fstype {
            "ext2" | "ext3" | "ext4" => {
                self.blank(name, 64 << 20);
                run(Command::new(format!("mkfs.{fstype}"))
                    .args(["-q", "-F", "-L", "testfs", "-d"])
                    .arg(&src)
                    .arg(&img));
            }
            "btrfs" => {
                self.blank(name, 128 << 20);
                run(Command::new("mkfs.btrfs")
                    .args(["-q", "-f", "-L", "testfs", "--rootdir"])
                    .arg(&src)
                    .arg(&img));
            }
            "xfs" => {
                self.blank(name, 300 << 20);
                run(Command::new("mkfs.xfs")
                    .args(["-q", "-f", "-L", "testfs"])
                    .arg(&img));
                // mkfs.xfs cannot fill an image; util-linux's mount can.
                let mnt = self.path().join(format!("{name}.mnt"));
                std::fs::create_dir_all(&mnt).unwrap();
                run(Command::new("mount")
                    .arg("-o")
                    .arg("loop")
                    .arg(&img)
                    .arg(&mnt));
                run(Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", src.display()))
                    .arg(&mnt));
                system::umount_with(&["-d"], &mnt);
            }
            "squashfs" => {
                run(Command::new("mksquashfs").arg(&src).arg(&img).args([
                    "-quiet",
                    "-noappend",
                    "-no-progress",
                ]));
            }
            "erofs" => {
                run(Command::new("mkfs.erofs").arg(&img).arg(&src));
            }
            other => panic!("no recipe for {other}"),
        }
        img
    }

    /// A 64 MiB ext4 image holding `files`.
    pub fn ext4(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        self.image("ext4", name, files)
    }

    /// Everything on this machine that refers to this fixture's files:
    /// bound loop devices and mounts (by mount point or by a source device
    /// whose backing file is ours).
    pub fn leaks(&self) -> Vec<String> {
        system::leaks_under(self.path())
    }

    /// Panics if this test left anything behind.
    pub fn assert_clean(&mut self) {
        self.checked = true;
        let leaks = self.leaks();
        assert!(
            leaks.is_empty(),
            "the test left things behind:\n  {}",
            leaks.join("\n  ")
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !self.checked && !std::thread::panicking() {
            self.assert_clean();
        }
        // A test that makes teardown fail on purpose (a busy mount it then
        // unmounts itself) leaves its record for `cleanup`; once the leak
        // check passed, nothing it names is left, so drop it.
        for found in own_records(self) {
            let _ = found.tear_down();
        }
    }
}

/// One partition of a test image: its sfdisk line and, optionally, the
/// filesystem to put in it (type, label) holding a file `id` with `id`.
pub struct Part<'a> {
    pub sfdisk: &'a str,
    pub fs: Option<(&'a str, &'a str)>,
    pub id: &'a str,
}

/// `(number, start, size)` in bytes of each data partition (extended
/// containers left out), from `sfdisk --json`.
pub fn layout(img: &Path) -> Vec<(u32, u64, u64)> {
    let json = run(Command::new("sfdisk").arg("--json").arg(img));
    let sector: u64 = json
        .split("\"sectorsize\":")
        .nth(1)
        .and_then(|s| s.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let mut out = Vec::new();
    for chunk in json.split("\"node\":").skip(1) {
        let field = |name: &str| -> u64 {
            chunk
                .split(&format!("\"{name}\":"))
                .nth(1)
                .unwrap()
                .trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let node = chunk.trim_start().trim_start_matches('"');
        let number: u32 = node
            .split('"')
            .next()
            .unwrap()
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ty = chunk
            .split("\"type\":")
            .nth(1)
            .unwrap()
            .trim_start()
            .trim_start_matches('"');
        let ty = ty.split('"').next().unwrap();
        if ["5", "f", "85"].contains(&ty) {
            continue;
        }
        out.push((number, field("start") * sector, field("size") * sector));
    }
    out
}

impl Fixture {
    /// A partitioned image made by sfdisk from `header` (e.g. `label: gpt`)
    /// and `parts`; each filesystem is made in a file of its own (this
    /// kernel cannot see partitions) and written in at its offset.
    /// `sector` 4096 makes the table through a 4096-byte-sector loop device.
    pub fn partitioned(
        &self,
        name: &str,
        size: u64,
        sector: u32,
        header: &str,
        parts: &[Part],
    ) -> PathBuf {
        let img = self.blank(name, size);
        let script = format!(
            "{header}\n{}\n",
            parts
                .iter()
                .map(|p| p.sfdisk)
                .collect::<Vec<_>>()
                .join("\n")
        );
        let script_file = self.path().join(format!("{name}.sfdisk"));
        std::fs::write(&script_file, script).unwrap();
        let target = if sector == 512 {
            img.to_string_lossy().into_owned()
        } else {
            run(Command::new("losetup")
                .args(["--find", "--show", "--sector-size", &sector.to_string()])
                .arg(&img))
            .trim()
            .to_string()
        };
        let status = run(Command::new("sh").arg("-c").arg(format!(
            "sfdisk -q --no-reread --no-tell-kernel {target} < {}",
            script_file.display()
        )));
        let _ = status;
        let geometry = layout(Path::new(&target));
        if sector != 512 {
            run(Command::new("losetup").args(["-d", &target]));
        }
        // Match specs to data partitions in order (extended containers are
        // not in the layout, and have no spec with a filesystem).
        let mut data = geometry.iter();
        for (i, spec) in parts.iter().enumerate() {
            if spec.sfdisk.contains("type=E") || spec.sfdisk.contains("type=5") {
                continue;
            }
            let &(number, start, psize) = data
                .next()
                .unwrap_or_else(|| panic!("no partition for spec {i}"));
            if let Some((fstype, label)) = spec.fs {
                let fs_img =
                    self.fs_file(&format!("{name}.p{number}"), fstype, label, psize, spec.id);
                let bytes = std::fs::read(&fs_img).unwrap();
                let out = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
                std::os::unix::fs::FileExt::write_all_at(&out, &bytes, start).unwrap();
                std::fs::remove_file(&fs_img).unwrap();
            }
        }
        img
    }

    /// A filesystem image of exactly `size` bytes with a file `id`.
    fn fs_file(&self, name: &str, fstype: &str, label: &str, size: u64, id: &str) -> PathBuf {
        let src = self.tree(&format!("{name}.src"), &[("id", id)]);
        let img = self.path().join(name);
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        match fstype {
            // 4096-byte blocks: they also fit a disk with 4096-byte sectors.
            "ext4" | "ext2" | "ext3" => run(Command::new(format!("mkfs.{fstype}"))
                .args(["-q", "-F", "-b", "4096", "-L", label, "-d"])
                .arg(&src)
                .arg(&img)),
            "vfat" => run(Command::new("mkfs.vfat").args(["-n", label]).arg(&img)),
            "btrfs" => run(Command::new("mkfs.btrfs")
                .args(["-q", "-f", "-L", label, "--rootdir"])
                .arg(&src)
                .arg(&img)),
            "swap" => run(Command::new("mkswap").args(["-L", label]).arg(&img)),
            other => panic!("no partition recipe for {other}"),
        };
        img
    }

    /// MBR: two primaries, an extended partition with two logicals (5, 6),
    /// each filesystem holding `id` = `p<N>`; labels `L1`, `L2`, `L5`, `L6`.
    pub fn mbr_image(&self, name: &str) -> PathBuf {
        self.partitioned(
            name,
            256 << 20,
            512,
            "label: dos",
            &[
                Part {
                    sfdisk: "size=48MiB, type=83",
                    fs: Some(("ext4", "L1")),
                    id: "p1",
                },
                Part {
                    sfdisk: "size=48MiB, type=83",
                    fs: Some(("ext4", "L2")),
                    id: "p2",
                },
                Part {
                    sfdisk: "type=E",
                    fs: None,
                    id: "",
                },
                Part {
                    sfdisk: "size=40MiB, type=83",
                    fs: Some(("ext4", "L5")),
                    id: "p5",
                },
                Part {
                    sfdisk: "size=60MiB, type=83",
                    fs: Some(("ext4", "L6")),
                    id: "p6",
                },
            ],
        )
    }

    /// GPT: an ESP (vfat, named "esp"), a root of this architecture's
    /// type (ext4, named "root"), and a generic Linux data partition
    /// (ext4, named "data"); `id` = `p<N>`.
    pub fn gpt_image(&self, name: &str, sector: u32) -> PathBuf {
        self.partitioned(
            name,
            256 << 20,
            sector,
            "label: gpt",
            &[
                Part {
                    sfdisk: "size=40MiB, type=U, name=\"esp\"",
                    fs: Some(("vfat", "ESP")),
                    id: "p1",
                },
                Part {
                    sfdisk: "size=64MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root\"",
                    fs: Some(("ext4", "rootfs")),
                    id: "p2",
                },
                Part {
                    sfdisk: "size=80MiB, type=L, name=\"data\"",
                    fs: Some(("ext4", "datafs")),
                    id: "p3",
                },
            ],
        )
    }
}

/// Whether this kernel parses partition tables itself (MSDOS/EFI partition
/// support): found by asking it, on a small MBR image behind a loop device
/// with partition scanning.
pub fn kernel_parses_partitions() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("probe.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "label: dos\n,,83\n").unwrap();
        run(Command::new("sh").arg("-c").arg(format!(
            "sfdisk -q --no-reread --no-tell-kernel {} < {}",
            img.display(),
            script.display()
        )));
        let dev = run(Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(&img));
        let dev = dev.trim();
        let name = dev.trim_start_matches("/dev/");
        let found = Path::new(&format!("/sys/block/{name}/{name}p1")).exists();
        run(Command::new("losetup").args(["-d", dev]));
        found
    })
}

/// Whether this kernel has device-mapper (loading the module if it can).
pub fn kernel_has_device_mapper() -> bool {
    let _ = Command::new("modprobe").arg("dm-mod").output();
    Path::new("/sys/module/dm_mod").exists() || Path::new("/sys/class/misc/device-mapper").exists()
}

/// The raw image file `img`, attached with backend `B`, whole disk, mounted
/// on `dir` with the default options.
pub fn mount_whole<B: diskmount::Backend>(img: &Path, dir: &Path) -> diskmount::Mounted<B> {
    use diskmount::{Format, Image, MountOptions, Partition, Unattached};
    Unattached::<B>::new(Image::file(img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(dir, &MountOptions::default())
        .unwrap()
}

/// Panics if a crash-recovery record still names one of `fx`'s files (in
/// the record directory this process uses).
pub fn assert_no_records(fx: &Fixture) {
    let left: Vec<_> = own_records(fx)
        .iter()
        .map(|f| format!("{}: {:?} {:?}", f.record().display(), f.status(), f.plan()))
        .collect();
    assert!(left.is_empty(), "records left: {left:?}");
}

/// The records in this process's run directory that name one of `fx`'s
/// files and are not held by a live lifecycle value (released by a
/// teardown that did not finish, or orphaned).
pub fn own_records(fx: &Fixture) -> Vec<diskmount::cleanup::Found> {
    use diskmount::cleanup::Status;
    let root = fx.path();
    diskmount::cleanup::scan(&diskmount::RunDir::current_default())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f.image().is_some_and(|i| i.starts_with(root)))
        .filter(|f| !matches!(f.status(), Status::Live { .. }))
        .collect()
}

/// What the command line does with `DISKMOUNT_RUN_DIR`, for test binaries
/// that run themselves as children with it set (the library never reads
/// the environment).
pub fn run_dir_from_env() {
    match std::env::var_os("DISKMOUNT_RUN_DIR") {
        Some(d) if d.is_empty() => diskmount::RunDir::set_default(diskmount::RunDir::off()),
        Some(d) => diskmount::RunDir::set_default(diskmount::RunDir::new(d)),
        None => {}
    }
}

/// The qemu helpers (qemu-nbd, qemu-storage-daemon) working on `fx`'s files.
pub fn fixture_qemu(fx: &Fixture) -> Vec<(u32, String)> {
    let root = fx.path().to_string_lossy().into_owned();
    qemu_processes()
        .into_iter()
        .filter(|(_, c)| c.contains(&root))
        .collect()
}

/// The CRC-32 (IEEE) that GPT headers carry.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Rewrites the GPT header at byte `at`: `edit` changes it, the checksum is
/// made right again, so only our sanity checks stand in the way.
pub fn forge_gpt_header(img: &Path, at: u64, edit: impl Fn(&mut [u8])) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut h = [0u8; 92];
    f.read_exact_at(&mut h, at).unwrap();
    edit(&mut h);
    h[16..20].fill(0);
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    f.write_all_at(&h, at).unwrap();
}

/// The processes whose command line or environment (`/proc/PID/cmdline`,
/// `/proc/PID/environ`) holds `secret`, as `PID: FILE`: every process on
/// the machine, not only ours.
pub fn processes_holding(secret: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() {
            continue;
        }
        for file in ["cmdline", "environ"] {
            // A process that ended meanwhile has nothing to read.
            let Ok(data) = std::fs::read(entry.path().join(file)) else {
                continue;
            };
            if data.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                found.push(format!("{name}: {file}"));
            }
        }
    }
    found
}

/// The regular files under `dir` (recursively, on `dir`'s own
/// filesystem: a FUSE export mounted on a file there is not read) and
/// those of them that hold `secret`.
pub fn files_holding(dir: &Path, secret: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).unwrap().dev();
    let (mut all, mut holding) = (Vec::new(), Vec::new());
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                todo.push(path);
            } else if meta.is_file() {
                let data = std::fs::read(&path).unwrap_or_default();
                if data.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                    holding.push(path.clone());
                }
                all.push(path);
            }
        }
    }
    (all, holding)
}

/// Reads 4 KiB at `offset` of `path` (a device or a file) with `O_DIRECT`,
/// past every cache, to whatever serves it, on a thread: its outcome, or
/// `None` if it did not end within `bound` (a read that hangs fails the
/// test instead of hanging it).
pub fn direct_read(
    path: &Path,
    offset: u64,
    bound: std::time::Duration,
) -> Option<std::io::Result<usize>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    #[repr(align(4096))]
    struct Block([u8; 4096]);
    let path = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let read = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(&path)
            .and_then(|f| {
                let mut buf = Block([0; 4096]);
                f.read_at(&mut buf.0, offset)
            });
        let _ = tx.send(read);
    });
    rx.recv_timeout(bound).ok()
}

/// `raw` converted by qemu-img to `format` (with `-o opts` if any).
pub fn convert(
    fx: &Fixture,
    raw: &std::path::Path,
    name: &str,
    format: &str,
    opts: &[&str],
) -> std::path::PathBuf {
    let out = fx.path().join(name);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", format])
        .args(opts)
        .arg(raw)
        .arg(&out));
    out
}

/// A qemu command that wants to write `path`: its stderr (it must fail).
pub fn qemu_write_refused(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what}: qemu wrote: {err}");
    assert!(
        err.contains("Failed to get \"write\" lock"),
        "{what}: {err}"
    );
    err
}

/// `qemu-img bench` writing one request to `path` (opened as raw): a
/// writer that qemu's image locks refuse while another holds the file.
pub fn bench_write(path: &Path) -> Command {
    bench_write_as(path, "raw")
}

/// [`bench_write`] of an image of `format`.
pub fn bench_write_as(path: &Path, format: &str) -> Command {
    let mut c = Command::new("qemu-img");
    c.args(["bench", "-w", "-c", "1", "-f", format]).arg(path);
    c
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// Waits (bounded) until `pid` shows the stopped state.
pub fn wait_stopped(pid: u32) {
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") T ")) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{pid} not stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

//! Ceph RBD images on this host: a real single-node cluster
//! (tests/common/ceph.rs, one per run of this binary) and images made with
//! the `rbd` tool from files made by mkfs and sfdisk.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::Fixture;
use common::ceph::{self, Cluster};
use diskmount::{Fuse, Image, MountOptions, Mounted, Partition, Unattached};

/// The cluster itself: an image imported with `rbd import` and a
/// snapshot come back byte for byte with `rbd export`, and the key of the
/// test user lists the pool.
#[test]
fn the_test_cluster_serves_images_and_snapshots() {
    let mut fx = Fixture::new();
    let c = ceph::cluster();
    let img = fx.ext4("cluster.img", &[("hello.txt", "hello from rbd\n")]);
    c.import(&img, "cluster");
    c.snap("cluster", "s1");
    let back = fx.path().join("back.img");
    c.export("cluster@s1", &back);
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&back).unwrap());
    let ls = c.rbd(&["ls", ceph::POOL]);
    assert!(ls.lines().any(|l| l == "cluster"), "{ls}");
    let right = std::process::Command::new("rbd")
        .env("CEPH_CONF", &c.conf)
        .args(["--id", ceph::USER, "--keyring"])
        .arg(&c.keyring)
        .args(["ls", ceph::POOL])
        .output()
        .unwrap();
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    assert!(!Cluster::leaks_key(&String::from_utf8_lossy(&right.stdout)));
    fx.assert_clean();
}

/// The Rbd backend on a kernel without the rbd driver (this host): a
/// clear one-line refusal naming the URL, nothing left, no key in it; Auto
/// then picks another backend.
#[test]
fn rbd_backend_without_krbd_refuses_clearly() {
    let mut fx = Fixture::new();
    let c = ceph::cluster();
    let url = c.url("nokrbd", None);
    let image = diskmount::Image::url(&url).unwrap();
    if diskmount::backend::rbd::available() {
        // The VM lane's kernel: kernel_lane covers krbd there.
        assert_eq!(diskmount::Auto::choose(&image), diskmount::BackendKind::Rbd);
        fx.assert_clean();
        return;
    }
    // Auto: krbd, then nbd (librbd in qemu-nbd), then Fuse (librbd in
    // qemu-storage-daemon).
    let want = if diskmount::backend::nbd::available() {
        diskmount::BackendKind::Nbd
    } else {
        diskmount::BackendKind::Fuse
    };
    assert_eq!(diskmount::Auto::choose(&image), want);
    let e = diskmount::Unattached::<diskmount::Rbd>::new(image)
        .attach()
        .unwrap_err();
    assert_eq!(e.kind(), diskmount::ErrorKind::KernelFeatureMissing, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("no rbd driver") && text.contains("rbd://"),
        "{text}"
    );
    assert!(!text.contains('\n') && !Cluster::leaks_key(&text), "{text}");
    fx.assert_clean();
}

// ---- The Fuse backend: librbd in qemu-storage-daemon ----

/// The Fuse cases share the one cluster and check machine-wide things (no
/// file holding a key in the temporary directory, none open): one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The qemu helpers that talk to this cluster (its configuration file is
/// on their command line).
fn cluster_clients(c: &Cluster) -> Vec<(u32, String)> {
    let conf = c.conf.display().to_string();
    common::qemu_processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&conf))
        .collect()
}

/// Nothing of the Fuse backend is left for this cluster: no helper, no key
/// file, no loop device over a FUSE export of ours that went away.
fn assert_no_rbd_helper(c: &Cluster) {
    assert_eq!(cluster_clients(c), vec![], "qemu helpers left");
    assert_eq!(c.key_copies(), Vec::<String>::new(), "key files left");
    let stale: Vec<_> = common::bound_loops()
        .into_iter()
        .filter(|(_, b)| b.contains("/diskmount-fuse-") && !Path::new(b).exists())
        .collect();
    assert_eq!(stale, vec![], "loop devices over a vanished export");
}

/// While mounted: the helper's command line and environment hold no key,
/// and no file holds the key any more, not even an open unlinked one
/// (qemu read it at start).
fn assert_key_only_in_memory(c: &Cluster) {
    let clients = cluster_clients(c);
    assert!(!clients.is_empty(), "no helper for the cluster");
    for (pid, cmd) in clients {
        assert!(!Cluster::leaks_key(&cmd), "{cmd}");
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(!Cluster::leaks_key(&String::from_utf8_lossy(&env)));
        assert!(cmd.contains("format=base64"), "{cmd}");
    }
    assert_eq!(
        c.key_copies(),
        Vec::<String>::new(),
        "the key file outlived the start"
    );
}

fn fuse_mount(url: &str, partition: Partition, dir: &Path) -> diskmount::Result<Mounted<Fuse>> {
    Unattached::<Fuse>::new(Image::url(url)?)
        .attach()?
        .map(partition)?
        .mount(dir, &MountOptions::default())
}

fn cli(args: &[&OsStr]) -> (bool, String, String) {
    let start = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .args(args)
        .output()
        .unwrap();
    eprintln!("rbd-cli: {:?} took {:.0?}", args[0], start.elapsed());
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!Cluster::leaks_key(&o) && !Cluster::leaks_key(&e), "{o}{e}");
    (out.status.success(), o, e)
}

/// A partitioned RBD image (sfdisk and mkfs, then `rbd import`) through
/// librbd: a logical partition mounted read-write, a file written, then
/// read back in a second attach; the other partitions untouched.
#[test]
fn fuse_mounts_a_partitioned_rbd_image_and_writes_through() {
    let _one = serial();
    let mut fx = Fixture::new();
    let c = ceph::cluster();
    let img = fx.mbr_image("parts.img");
    c.import(&img, "parts");
    let url = c.url("parts", None);
    let mnt = fx.tree("mnt", &[]);
    let m = fuse_mount(&url, Partition::Number(5), &mnt).unwrap();
    assert_key_only_in_memory(c);
    assert_eq!(std::fs::read_to_string(m.path().join("id")).unwrap(), "p5");
    std::fs::write(m.path().join("written"), "through librbd").unwrap();
    m.close().unwrap();
    assert_no_rbd_helper(c);
    let start = std::time::Instant::now();
    let m = fuse_mount(&url, Partition::Number(5), &mnt).unwrap();
    let mounted = start.elapsed();
    assert_eq!(
        std::fs::read_to_string(m.path().join("written")).unwrap(),
        "through librbd"
    );
    m.close().unwrap();
    eprintln!(
        "rbd-fuse: attach+map+mount {mounted:.0?}, full cycle with a file read {:.0?}",
        start.elapsed()
    );
    // What the cluster holds has the write, in partition 5 only.
    let back = fx.path().join("back.img");
    c.export("parts", &back);
    fuse_free_check(&back, &fx);
    assert_no_rbd_helper(c);
    fx.assert_clean();
}

/// The exported image, attached from the file: partition 5 has the file,
/// partition 6 does not.
fn fuse_free_check(back: &Path, fx: &Fixture) {
    let mnt = fx.tree("check", &[]);
    for (n, has) in [(5, true), (6, false)] {
        let m =
            Unattached::<diskmount::Loop>::new(Image::file(back, diskmount::Format::Raw).unwrap())
                .attach()
                .unwrap()
                .map(Partition::Number(n))
                .unwrap()
                .mount(&mnt, &MountOptions::default())
                .unwrap();
        assert_eq!(m.path().join("written").exists(), has, "partition {n}");
        m.close().unwrap();
    }
}

/// The command line on an RBD URL (`--backend fuse`, and `auto`, which
/// picks Fuse on this host): inspect lists the partitions, copy-in and
/// copy-out round-trip a file, run sees the guest's files. No key in any
/// output.
#[test]
fn cli_inspect_run_copy_in_copy_out_on_rbd() {
    let _one = serial();
    let mut fx = Fixture::new();
    let c = ceph::cluster();
    let img = fx.gpt_image("cli.img", 512);
    c.import(&img, "cli");
    let url = c.url("cli", None);
    let u = OsStr::new(&url);
    let (ok, out, err) = cli(&["inspect".as_ref(), u]);
    assert!(ok, "{out}{err}");
    for word in ["gpt", "esp", "root", "data", "ext4"] {
        assert!(out.contains(word), "{word}: {out}");
    }
    let host = fx.tree("host", &[("note.txt", "copied in over rbd")]);
    let (ok, out, err) = cli(&[
        "copy-in".as_ref(),
        "--backend".as_ref(),
        "fuse".as_ref(),
        "--partition".as_ref(),
        "3".as_ref(),
        u,
        host.join("note.txt").as_os_str(),
        "/".as_ref(),
    ]);
    assert!(ok, "{out}{err}");
    let dest = fx.path().join("out.txt");
    let (ok, out, err) = cli(&[
        "copy-out".as_ref(),
        "--partition".as_ref(),
        "3".as_ref(),
        u,
        "/note.txt".as_ref(),
        dest.as_os_str(),
    ]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "copied in over rbd"
    );
    let (ok, out, err) = cli(&[
        "run".as_ref(),
        "--partition".as_ref(),
        "2".as_ref(),
        "--read-only".as_ref(),
        u,
        "--".as_ref(),
        "sh".as_ref(),
        "-c".as_ref(),
        "cat \"$DISKMOUNT_ROOT/id\"".as_ref(),
    ]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "p2");
    // --backend rbd: krbd, which this host's kernel lacks (the VM lane's
    // krbd cases cover it): one clear line, no key.
    if !diskmount::backend::rbd::available() {
        let (ok, out, err) = cli(&[
            "copy-out".as_ref(),
            "--backend".as_ref(),
            "rbd".as_ref(),
            u,
            "/id".as_ref(),
            fx.path().join("never").as_os_str(),
        ]);
        assert!(!ok && err.contains("no rbd driver"), "{out}{err}");
    }
    assert_no_rbd_helper(c);
    fx.assert_clean();
}

/// A snapshot through librbd is read-only all the way down: it shows the
/// image as it was, and a write is refused.
#[test]
fn fuse_mounts_a_snapshot_read_only() {
    let _one = serial();
    let mut fx = Fixture::new();
    let c = ceph::cluster();
    let img = fx.ext4("snap.img", &[("id", "before")]);
    c.import(&img, "snapped");
    c.snap("snapped", "s1");
    let mnt = fx.tree("mnt", &[]);
    let m = fuse_mount(&c.url("snapped", None), Partition::Whole, &mnt).unwrap();
    std::fs::write(m.path().join("id"), "after").unwrap();
    m.close().unwrap();
    let image = Image::url(&c.url("snapped", Some("s1"))).unwrap();
    assert!(image.is_read_only(), "a snapshot is read-only");
    let m = fuse_mount(&c.url("snapped", Some("s1")), Partition::Whole, &mnt).unwrap();
    assert_eq!(
        std::fs::read_to_string(m.path().join("id")).unwrap(),
        "before"
    );
    let e = std::fs::write(m.path().join("new"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{e}");
    m.close().unwrap();
    assert_no_rbd_helper(c);
    fx.assert_clean();
}

fn libc_erofs() -> i32 {
    30 // EROFS
}

/// Two RBD images mounted at once, each through its own helper.
#[test]
fn fuse_mounts_two_rbd_images_at_once() {
    let _one = serial();
    let mut fx = Fixture::new();
    let c = ceph::cluster();
    for (name, id) in [("twin-a", "a"), ("twin-b", "b")] {
        let img = fx.ext4(&format!("{name}.img"), &[("id", id)]);
        c.import(&img, name);
    }
    let (da, db) = (fx.tree("a", &[]), fx.tree("b", &[]));
    let a = fuse_mount(&c.url("twin-a", None), Partition::Whole, &da).unwrap();
    let b = fuse_mount(&c.url("twin-b", None), Partition::Whole, &db).unwrap();
    assert_eq!(cluster_clients(c).len(), 2);
    assert_eq!(std::fs::read_to_string(a.path().join("id")).unwrap(), "a");
    assert_eq!(std::fs::read_to_string(b.path().join("id")).unwrap(), "b");
    std::fs::write(a.path().join("only-a"), "1").unwrap();
    b.close().unwrap();
    a.close().unwrap();
    assert_no_rbd_helper(c);
    fx.assert_clean();
}

/// A wrong key, a missing pool and a missing image: one clear error each,
/// naming the step and the object, no key text, nothing left.
#[test]
fn fuse_rbd_wrong_key_missing_pool_missing_image() {
    let _one = serial();
    let mut fx = Fixture::new();
    let c = ceph::cluster();
    let img = fx.ext4("faults.img", &[("id", "x")]);
    c.import(&img, "faults");
    let mnt = fx.tree("mnt", &[]);
    let cases = [
        (
            c.url_with("faults", None, &c.wrong_keyring),
            diskmount::ErrorKind::PermissionDenied,
            "refused the key of client.diskmount",
        ),
        (
            c.url("faults", None).replace("dmtest/", "nopool/"),
            diskmount::ErrorKind::NotFound,
            "the cluster has no pool nopool",
        ),
        (
            c.url("nosuchimage", None),
            diskmount::ErrorKind::NotFound,
            "the cluster has no image nosuchimage in pool dmtest",
        ),
        (
            c.url("faults", Some("nosnap")),
            diskmount::ErrorKind::NotFound,
            "or no snapshot nosnap of dmtest/faults",
        ),
    ];
    let errors: Vec<_> = cases
        .into_iter()
        .map(|(url, kind, says)| {
            let e = fuse_mount(&url, Partition::Whole, &mnt)
                .map(|_| ())
                .unwrap_err();
            eprintln!("{e}");
            (e, kind, says)
        })
        .collect();
    for (e, kind, says) in errors {
        let text = e.to_string();
        assert_eq!(e.kind(), kind, "{text}");
        assert!(text.starts_with("attach: rbd://"), "{text}");
        assert!(text.contains(says), "{says}: {text}");
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(!Cluster::leaks_key(&format!("{e:?}")), "{e:?}");
        assert!(!common::is_mount_point(&mnt));
        assert_no_rbd_helper(c);
    }
    fx.assert_clean();
}

/// Runs `f` on a thread and panics if it takes longer than `bound`
/// (a hung teardown fails the test instead of hanging it); returns its
/// result and how long it took.
fn bounded<T: Send + 'static>(
    bound: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, std::time::Duration) {
    let start = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(bound) {
        Ok(v) => (v, start.elapsed()),
        Err(_) => panic!("not done within {bound:?}"),
    }
}

/// The OSD stopped (SIGSTOP) while an image is mounted through librbd:
/// I/O fails within librados' bound instead of hanging (measured: 105 s
/// for one 4 KiB direct read, the page cache's read-ahead making several
/// requests of 15 s each), teardown ends within the watchdog's bound (60 s:
/// the FUSE connection aborted) and reports the loss, and nothing is left.
#[test]
fn fuse_rbd_frozen_osd_gives_bounded_errors_and_teardown() {
    let _one = serial();
    let mut fx = Fixture::new();
    let c = ceph::cluster();
    let img = fx.ext4("frozen.img", &[("id", "x")]);
    // Data past the filesystem's end (64 MiB), which nothing reads before
    // the test does: a read there must reach the OSD.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&vec![0x5a; 4 << 20], 66 << 20).unwrap();
    }
    c.import(&img, "frozen");
    let mnt = fx.tree("mnt", &[]);
    let m = fuse_mount(&c.url("frozen", None), Partition::Whole, &mnt).unwrap();
    std::fs::write(m.path().join("dirty"), vec![7u8; 1 << 20]).unwrap();
    let frozen = c.freeze_osd();
    // A read that must reach the cluster: fails within librados' bound.
    let dev = m.device().to_path_buf();
    let (read, took) = bounded(std::time::Duration::from_secs(200), move || {
        Command::new("dd")
            .arg(format!("if={}", dev.display()))
            .args([
                "of=/dev/null",
                "bs=4096",
                "count=1",
                "skip=17152",
                "iflag=direct",
            ])
            .output()
            .unwrap()
    });
    eprintln!("frozen OSD: direct read -> {read:?} after {took:.1?}");
    assert!(!read.status.success(), "{read:?}");
    let (closed, took) = bounded(std::time::Duration::from_secs(180), move || m.close());
    eprintln!("frozen OSD: teardown -> {closed:?} after {took:.1?}");
    let e = closed.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("server stopped answering") && text.contains("aborted"),
        "{text}"
    );
    assert!(!Cluster::leaks_key(&format!("{e:?}")));
    drop(frozen);
    assert!(!common::is_mount_point(&mnt));
    assert_no_rbd_helper(c);
    fx.assert_clean();
}

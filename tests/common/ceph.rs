//! A real single-node Ceph cluster for the RBD tests: one monitor and one
//! OSD on memstore from Debian's `ceph-mon`/`ceph-osd`, on 127.0.0.1 only,
//! everything in a temporary directory (no `/etc/ceph`, no `/var/lib/ceph`,
//! no systemd unit). No manager daemon: nothing the tests do (pools, `rbd`
//! create/import/export/snap, krbd, librbd) needs one, and leaving it out
//! saves about 35 packages and a Python process.
//!
//! The fsid and every key are pinned, so runs are repeatable and a failing
//! run can be replayed by hand. The cluster is started once per test binary
//! ([`cluster`]) by a keeper thread that lives as long as the process, and
//! stopped when the process exits (an `atexit` hook); its daemons get
//! `SIGKILL` as their parent-death signal, so a killed test binary leaves
//! none behind either. The start and stop times and the daemons' memory are
//! printed (`ceph-cluster: ...`) for docs/testing.md.
//!
//! The recipe follows what ceph/go-ceph's `micro-osd.sh` does (mkfs of the
//! monitor with a keyring, `ceph osd new`, `ceph-osd --mkfs`, memstore),
//! with cephx on (the tests need wrong keys to fail) and loopback-only
//! addresses.
//!
//! Shared with the benchmarks (benches/network.rs includes this file): it
//! needs only `crate::common::system` (tests/common/system.rs), which both
//! the tests' and the benchmarks' `common` modules have. A benchmark stops
//! the cluster itself with [`stop`] to check that nothing is left.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The cluster's fsid (pinned).
pub const FSID: &str = "6b0c3f4e-2d1a-4c7e-9e55-d15c0a7e0016";
/// The OSD's uuid (pinned).
const OSD_UUID: &str = "0a5d1e2f-0000-4000-8000-000000000016";
/// Pinned cephx keys (test-only secrets of a throwaway cluster).
const MON_KEY: &str = "AQAoABBrnvtWIBAAOvKmBEvBsOI7yOBQ973ARA==";
const ADMIN_KEY: &str = "AQAoABBrhH3FIRAAPuCllUDeuOk0s1ErdAIYBA==";
const OSD_KEY: &str = "AQBYABBr1+22JxAAv9FkNuyRwxwhKo26nS5eew==";
/// The key of `client.diskmount`, the user the tests map images as.
pub const USER_KEY: &str = "AQC0ABBr+WnCHBAAVzJuWMn2KF0x88s0sHVa4w==";
/// A well-formed key that is not `client.diskmount`'s (wrong-key tests).
pub const WRONG_KEY: &str = "AQC0ABBr26aaIBAAykonrhy6y4vvjA9dGbEO8w==";
/// The user the tests use (`client.diskmount`: `profile rbd` caps).
pub const USER: &str = "diskmount";
/// The pool every test's images live in.
pub const POOL: &str = "dmtest";

/// How long to wait for the cluster to come up, or a daemon to go.
const BOUND: Duration = Duration::from_secs(240);

/// The running cluster: its directory, configuration and keyrings.
pub struct Cluster {
    /// The temporary directory everything lives in.
    pub dir: PathBuf,
    /// `ceph.conf` (mon host on 127.0.0.1 only).
    pub conf: PathBuf,
    /// `client.admin`'s keyring (what the `ceph`/`rbd` tools use here).
    pub admin_keyring: PathBuf,
    /// `client.diskmount`'s keyring, for the code under test.
    pub keyring: PathBuf,
    /// A keyring holding a wrong key for `client.diskmount`.
    pub wrong_keyring: PathBuf,
    /// The monitor's msgr1 and msgr2 ports on 127.0.0.1.
    pub ports: (u16, u16),
    mon_pid: u32,
    osd_pid: u32,
}

struct Keeper {
    stop: mpsc::Sender<mpsc::Sender<()>>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static KEEPER: Mutex<Option<Keeper>> = Mutex::new(None);

/// The cluster of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(start)
}

/// A free TCP port on 127.0.0.1 (the monitor binds it a moment later),
/// out of the range client connections take theirs from.
fn free_port() -> u16 {
    super::servers::free_port()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A keyring entry of `name` with `key` and `caps` (`(service, cap)`).
fn keyring_entry(name: &str, key: &str, caps: &[(&str, &str)]) -> String {
    let mut s = format!("[{name}]\n\tkey = {key}\n");
    for (service, cap) in caps {
        s.push_str(&format!("\tcaps {service} = \"{cap}\"\n"));
    }
    s
}

fn conf_text(dir: &Path, v1: u16, v2: u16) -> String {
    let d = dir.display();
    format!(
        "[global]
fsid = {FSID}
mon host = [v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]
public addr = 127.0.0.1
public network = 127.0.0.1/32
cluster network = 127.0.0.1/32
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {d}/admin.keyring
run dir = {d}/run
admin socket = {d}/run/$name.$pid.asok
log file = {d}/log/$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail crit = 0
mon data avail warn = 0
mon osd down out interval = 0
[mon]
mon data = {d}/mon
keyring = {d}/mon.keyring
[osd]
osd data = {d}/osd
keyring = {d}/osd.keyring
osd objectstore = memstore
memstore device bytes = 1073741824
osd class load list = *
osd class default list = *
osd heartbeat grace = 600
"
    )
}

/// Runs a ceph tool with the cluster's configuration; panics with its
/// output on failure; returns stdout.
fn tool(conf: &Path, program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.env("CEPH_CONF", conf).args(args);
    if program == "ceph" {
        cmd.args(["--connect-timeout", "60"]);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is ceph-common installed?)"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts a daemon in the foreground, killed if this process dies.
fn daemon(conf: &Path, program: &str, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(program);
    cmd.env("CEPH_CONF", conf)
        .args(args)
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY (test code, not the library's): prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e} (is it installed?)"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn start() -> Cluster {
    crate::common::system::require_root_for("the Ceph test cluster");
    let started = Instant::now();
    if std::env::var("DISKMOUNT_VM_LANE").as_deref() == Ok("1") {
        // The VM lane's guest has no network, and its loopback starts
        // down: the cluster lives on the guest's own 127.0.0.1.
        crate::common::system::run(Command::new("ip").args(["link", "set", "lo", "up"]));
    }
    let dir = tempfile::Builder::new()
        .prefix("diskmount-ceph-")
        .tempdir()
        .expect("create the cluster's directory")
        .keep();
    for sub in ["run", "log", "mon", "osd"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    let (v1, v2) = (free_port(), free_port());
    let conf = dir.join("ceph.conf");
    std::fs::write(&conf, conf_text(&dir, v1, v2)).unwrap();
    let admin = keyring_entry(
        "client.admin",
        ADMIN_KEY,
        &[("mon", "allow *"), ("osd", "allow *"), ("mgr", "allow *")],
    );
    let osd = keyring_entry(
        "osd.0",
        OSD_KEY,
        &[
            ("mon", "allow profile osd"),
            ("osd", "allow *"),
            ("mgr", "allow profile osd"),
        ],
    );
    let user = keyring_entry(
        &format!("client.{USER}"),
        USER_KEY,
        &[
            ("mon", "profile rbd"),
            ("osd", "profile rbd"),
            ("mgr", "profile rbd"),
        ],
    );
    let mon = keyring_entry("mon.", MON_KEY, &[("mon", "allow *")]);
    write(&dir.join("admin.keyring"), &admin);
    write(&dir.join("osd.keyring"), &osd);
    write(&dir.join("mon.keyring"), &mon);
    write(&dir.join("user.keyring"), &user);
    write(
        &dir.join("wrong.keyring"),
        &keyring_entry(&format!("client.{USER}"), WRONG_KEY, &[]),
    );
    // The monitor's mkfs imports every entity of this keyring into its
    // auth database: the keys are the pinned ones.
    write(
        &dir.join("initial.keyring"),
        &format!("{mon}{admin}{osd}{user}"),
    );
    let monmap = dir.join("monmap");
    tool(
        &conf,
        "monmaptool",
        &[
            "--create",
            "--fsid",
            FSID,
            "--addv",
            "a",
            &format!("[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]"),
            monmap.to_str().unwrap(),
        ],
    );
    let initial = dir.join("initial.keyring");
    tool(
        &conf,
        "ceph-mon",
        &[
            "--mkfs",
            "-i",
            "a",
            "--monmap",
            monmap.to_str().unwrap(),
            "--keyring",
            initial.to_str().unwrap(),
        ],
    );

    // The daemons are children of a keeper thread that lives until the
    // process exits (a parent-death signal fires when the *thread* that
    // forked ends, so not a test's thread).
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<mpsc::Sender<()>>();
    let keeper_conf = conf.clone();
    let keeper_dir = dir.clone();
    std::thread::Builder::new()
        .name("ceph-keeper".into())
        .spawn(move || keep(&keeper_dir, &keeper_conf, ready_tx, stop_rx))
        .unwrap();
    let (mon_pid, osd_pid) = ready_rx
        .recv()
        .expect("the ceph keeper thread died while starting the cluster");
    *KEEPER.lock().unwrap() = Some(Keeper { stop: stop_tx });
    // SAFETY (test code): registers a plain extern "C" function.
    unsafe {
        nix::libc::atexit(stop_at_exit);
    }

    tool(&conf, "ceph", &["osd", "pool", "create", POOL, "8", "8"]);
    tool(&conf, "rbd", &["pool", "init", POOL]);
    eprintln!(
        "ceph-cluster: up in {:.1} s (mon {} KiB, osd {} KiB RSS), {}",
        started.elapsed().as_secs_f64(),
        rss_kib(mon_pid),
        rss_kib(osd_pid),
        dir.display()
    );
    Cluster {
        conf,
        admin_keyring: dir.join("admin.keyring"),
        keyring: dir.join("user.keyring"),
        wrong_keyring: dir.join("wrong.keyring"),
        dir,
        ports: (v1, v2),
        mon_pid,
        osd_pid,
    }
}

/// The keeper thread: starts the monitor and the OSD, reports their pids,
/// and on the stop request stops them (SIGTERM, then SIGKILL after a
/// bound), reaps them and removes the directory.
fn keep(
    dir: &Path,
    conf: &Path,
    ready: mpsc::Sender<(u32, u32)>,
    stop: mpsc::Receiver<mpsc::Sender<()>>,
) {
    let mut mon = daemon(conf, "ceph-mon", &["-i", "a"], &dir.join("log/mon.out"));
    tool(conf, "ceph", &["osd", "new", OSD_UUID, "0"]);
    tool(
        conf,
        "ceph-osd",
        &["-i", "0", "--mkfs", "--osd-uuid", OSD_UUID],
    );
    let mut osd = daemon(conf, "ceph-osd", &["-i", "0"], &dir.join("log/osd.out"));
    let deadline = Instant::now() + BOUND;
    loop {
        let stat = tool(conf, "ceph", &["osd", "stat", "--format", "json"]);
        if stat.contains("\"num_up_osds\":1") {
            break;
        }
        if let Ok(Some(status)) = osd.try_wait() {
            panic!(
                "ceph-osd exited ({status}) while starting: see {}",
                dir.join("log").display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the OSD did not come up within {BOUND:?}: {stat}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ready.send((mon.id(), osd.id())).unwrap();
    // A dropped sender (the process ends without the hook) stops them too.
    let done = stop.recv().ok();
    let stopping = Instant::now();
    for child in [&mut osd, &mut mon] {
        stop_child(child);
    }
    let stop_time = stopping.elapsed();
    let _ = std::fs::remove_dir_all(dir);
    eprintln!(
        "ceph-cluster: stopped in {:.2} s, {} removed",
        stop_time.as_secs_f64(),
        dir.display()
    );
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// SIGCONT (a test may have stopped it), SIGTERM, wait; SIGKILL after 20 s.
fn stop_child(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "ceph-cluster: pid {} ignored SIGTERM; killing it",
        child.id()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Stops the cluster now (if it was started) and waits until its daemons
/// have exited and its directory is gone; what the `atexit` hook does.
/// Later calls, and the hook, then do nothing.
pub fn stop() {
    stop_at_exit();
}

extern "C" fn stop_at_exit() {
    let keeper = KEEPER.lock().ok().and_then(|mut k| k.take());
    if let Some(keeper) = keeper {
        let (tx, rx) = mpsc::channel();
        if keeper.stop.send(tx).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(60));
        }
    }
}

impl Cluster {
    /// Runs `rbd` as client.admin; panics on failure; returns stdout.
    pub fn rbd(&self, args: &[&str]) -> String {
        tool(&self.conf, "rbd", args)
    }

    /// Runs `ceph` as client.admin; panics on failure; returns stdout.
    pub fn ceph(&self, args: &[&str]) -> String {
        tool(&self.conf, "ceph", args)
    }

    /// `rbd import` of a local raw file as `POOL/name`.
    pub fn import(&self, file: &Path, name: &str) {
        self.rbd(&["import", file.to_str().unwrap(), &format!("{POOL}/{name}")]);
    }

    /// `rbd create` of an empty image of `size` MiB as `POOL/name`.
    pub fn create(&self, name: &str, size_mib: u64) {
        self.rbd(&[
            "create",
            "--size",
            &size_mib.to_string(),
            &format!("{POOL}/{name}"),
        ]);
    }

    /// `rbd snap create POOL/name@snap`.
    pub fn snap(&self, name: &str, snap: &str) {
        self.rbd(&["snap", "create", &format!("{POOL}/{name}@{snap}")]);
    }

    /// `rbd export` of `POOL/spec` (`image` or `image@snap`) into `to`.
    pub fn export(&self, spec: &str, to: &Path) {
        let _ = std::fs::remove_file(to);
        self.rbd(&["export", &format!("{POOL}/{spec}"), to.to_str().unwrap()]);
    }

    /// The URL of `POOL/image[@snap]` as client.diskmount with this
    /// cluster's configuration and `keyring`.
    pub fn url_with(&self, image: &str, snap: Option<&str>, keyring: &Path) -> String {
        let snap = snap.map(|s| format!("@{s}")).unwrap_or_default();
        format!(
            "rbd://{USER}@{POOL}/{image}{snap}?conf={}&keyring={}",
            self.conf.display(),
            keyring.display()
        )
    }

    /// The URL of `POOL/image[@snap]` with the right key.
    pub fn url(&self, image: &str, snap: Option<&str>) -> String {
        self.url_with(image, snap, &self.keyring)
    }

    /// The OSD's pid (to SIGSTOP it in fault tests).
    pub fn osd_pid(&self) -> u32 {
        self.osd_pid
    }

    /// The monitor's pid.
    pub fn mon_pid(&self) -> u32 {
        self.mon_pid
    }

    /// Stops (`SIGSTOP`) the OSD until the guard drops (`SIGCONT`).
    pub fn freeze_osd(&self) -> Frozen {
        let pid = nix::unistd::Pid::from_raw(self.osd_pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Frozen(pid)
    }

    /// Whether `text` holds any of the cluster's keys (checked in every
    /// output, error and record of the tests).
    pub fn leaks_key(text: &str) -> bool {
        [MON_KEY, ADMIN_KEY, OSD_KEY, USER_KEY, WRONG_KEY]
            .iter()
            .any(|k| text.contains(k) || text.contains(&k[..20]))
    }

    /// The files that hold a key of ours outside the cluster's own
    /// directory: any regular file under the temporary directory (four
    /// levels deep) or the run directory, and any file this process has
    /// open (diskmount's key file for a qemu helper is unlinked and must
    /// be closed once the helper started).
    pub fn key_copies(&self) -> Vec<String> {
        fn scan(dir: &Path, skip: &Path, depth: u32, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if path == skip {
                    continue;
                } else if meta.is_dir() && depth > 0 {
                    scan(&path, skip, depth - 1, out);
                } else if meta.is_file()
                    && meta.len() < 1 << 20
                    && std::fs::read(&path)
                        .is_ok_and(|b| Cluster::leaks_key(&String::from_utf8_lossy(&b)))
                {
                    out.push(path.display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        scan(&std::env::temp_dir(), &self.dir, 4, &mut out);
        scan(Path::new("/run/diskmount"), &self.dir, 2, &mut out);
        for fd in std::fs::read_dir("/proc/self/fd")
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if target.starts_with(&self.dir) {
                continue;
            }
            let held = std::fs::metadata(fd.path()).is_ok_and(|m| m.is_file() && m.len() < 1 << 20)
                && std::fs::read(fd.path())
                    .is_ok_and(|b| Cluster::leaks_key(&String::from_utf8_lossy(&b)));
            if held {
                out.push(format!("{} ({})", fd.path().display(), target.display()));
            }
        }
        out
    }
}

/// An OSD stopped with SIGSTOP; continued on drop.
pub struct Frozen(nix::unistd::Pid);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Writes `data` to a new 0600 file `path`.
pub fn secret_file(path: &Path, data: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data.as_bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

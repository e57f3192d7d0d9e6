//! `diskmount inject` on the guest-OS layouts (issue 15): the Fedora
//! layout (btrfs subvolumes `root` and `home`, ext4 `/boot`) and the Rocky
//! layout (xfs `/boot`, LVM `rl/root` and `rl/home`) with
//! `--partition os`, Rocky and a whole-disk PV with the default
//! `--partition auto`. Every write is checked on an independent util-linux
//! mount of the filesystem that must hold it (`offset=` of the partition
//! or of the LV's extent range, `subvol=`): owners, modes, and labels with
//! `getfattr -n security.selinux`; and the filesystems that must not hold
//! it are checked not to.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Fixture;
use common::guest::{
    GID, HOSTS, KEY, RH_HOSTS, SHADOW, SHADOW_GID, SHADOW_LABEL, UID, USER, label,
    make_guest_homes, make_guest_root, owner_mode,
};

/// Runs `diskmount ARGS` with its temporary files and records in the
/// fixture's own directories; checks it left no temporary file behind.
fn diskmount(fx: &Fixture, args: &[&OsStr]) -> Output {
    let tmp = fx.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .args(args)
        .env("TMPDIR", &tmp)
        .env("DISKMOUNT_RUN_DIR", fx.records())
        .output()
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "diskmount left temporary files: {left:?}");
    out
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "diskmount failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn failed(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn host_file(fx: &Fixture, name: &str, content: &str) -> PathBuf {
    let p = fx.path().join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The names in directory `rel` of `dir`.
fn names(dir: &Path, rel: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir.join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// util-linux mount options for bytes `at..at+len` of the image,
/// read-only unless `rw`, and btrfs subvolume `subvol`.
fn at((at, len): (u64, u64), rw: bool, subvol: Option<&str>) -> String {
    let mut o = format!("loop,offset={at},sizelimit={len}");
    if !rw {
        o += ",ro";
    }
    if let Some(s) = subvol {
        o += &format!(",subvol={s}");
    }
    o
}

/// The arguments of one inject run: root's and the guest user's key, host
/// name, a password hash for `other`, a file into `/boot` and one into
/// `/srv` owned by the guest user, and `/.autorelabel`.
struct Inputs {
    key: String,
    user_key: String,
    hash: String,
    boot: String,
    srv: String,
}

const HASH: &str = "$6$newsalt$newhash";

fn inputs(fx: &Fixture) -> Inputs {
    let key = host_file(fx, "key.pub", &format!("{KEY}\n"));
    let hash = host_file(fx, "hash", &format!("{HASH}\n"));
    let conf = host_file(fx, "conf", "setting = 1\n");
    Inputs {
        key: format!("root={}", key.display()),
        user_key: format!("{USER}={}", key.display()),
        hash: format!("other={}", hash.display()),
        boot: format!("{}:/boot/loader.conf", conf.display()),
        srv: format!("{}:/srv/app.conf:640:{USER}", conf.display()),
    }
}

/// `diskmount --json inject IMG --partition PART` with every part of
/// `inputs`; the JSON it prints.
fn inject_all(fx: &Fixture, img: &Path, partition: &str, i: &Inputs, name: &str) -> String {
    let args: Vec<&OsStr> = [
        "--json",
        "inject",
        img.to_str().unwrap(),
        "--partition",
        partition,
        "--ssh-key",
        &i.user_key,
        "--ssh-key",
        &i.key,
        "--hostname",
        name,
        "--password",
        &i.hash,
        "--write",
        &i.boot,
        "--write",
        &i.srv,
        "--selinux-relabel",
    ]
    .into_iter()
    .map(OsStr::new)
    .collect();
    ok(&diskmount(fx, &args))
}

/// Only the keys again: must change nothing.
fn inject_keys_again(fx: &Fixture, img: &Path, partition: &str, i: &Inputs) {
    let args: Vec<&OsStr> = [
        "--json",
        "inject",
        img.to_str().unwrap(),
        "--partition",
        partition,
        "--ssh-key",
        &i.user_key,
        "--ssh-key",
        &i.key,
    ]
    .into_iter()
    .map(OsStr::new)
    .collect();
    let json = ok(&diskmount(fx, &args));
    assert!(
        json.contains("\"changed\":0"),
        "a second --ssh-key run changed something: {json}"
    );
}

const SSH_HOME: &str = "system_u:object_r:ssh_home_t:s0";
const USER_SSH_HOME: &str = "unconfined_u:object_r:ssh_home_t:s0";

/// The guest user's `.ssh` in the filesystem mounted at the guest's
/// `/home` (`home`): owner, modes, the key once, and, on an SELinux
/// guest, the policy's labels.
fn check_user_key(home: &Path, selinux: bool) {
    let ssh = home.join(USER).join(".ssh");
    assert_eq!(owner_mode(&ssh), (0o700, UID, GID));
    assert_eq!(owner_mode(&ssh.join("authorized_keys")), (0o600, UID, GID));
    assert_eq!(read(&ssh, "authorized_keys"), format!("{KEY}\n"), "once");
    let want = selinux.then(|| USER_SSH_HOME.to_string());
    assert_eq!(label(&ssh), want);
    assert_eq!(label(&ssh.join("authorized_keys")), want);
    // Another user's keys untouched.
    assert_eq!(read(home, "other/.ssh/authorized_keys"), "# other's keys\n");
}

/// The guest's root filesystem after [`inject_all`]: root's key, host
/// name (with the hosts file `hosts` expected), the password hash in
/// only `other`'s line of etc/shadow (mode, owner, label kept), the file
/// in `/srv`, `/.autorelabel` on an SELinux guest; `/home` and `/boot`
/// left as they were (`home_empty`, `boot_empty`: their own filesystems
/// were mounted there).
fn check_root(d: &Path, selinux: bool, hostname: &str, hosts: &str, home_empty: bool) {
    let l = |p: &str| label(&d.join(p));
    let sl = |s: &str| selinux.then(|| s.to_string());
    assert_eq!(owner_mode(&d.join("root/.ssh")), (0o700, 0, 0));
    assert_eq!(
        owner_mode(&d.join("root/.ssh/authorized_keys")),
        (0o600, 0, 0)
    );
    assert_eq!(read(d, "root/.ssh/authorized_keys"), format!("{KEY}\n"));
    assert_eq!(l("root/.ssh"), sl(SSH_HOME));
    assert_eq!(l("root/.ssh/authorized_keys"), sl(SSH_HOME));
    assert_eq!(read(d, "etc/hostname"), format!("{hostname}\n"));
    assert_eq!(read(d, "etc/hosts"), hosts);
    assert_eq!(
        read(d, "etc/shadow"),
        SHADOW.replace("$6$oldsalt$oldhash", HASH)
    );
    assert_eq!(owner_mode(&d.join("etc/shadow")), (0o640, 0, SHADOW_GID));
    assert_eq!(owner_mode(&d.join("etc/hostname")).0, 0o644);
    assert_eq!(l("etc/shadow"), sl(SHADOW_LABEL));
    assert_eq!(l("etc/hostname"), sl("system_u:object_r:hostname_etc_t:s0"));
    assert_eq!(l("etc/hosts"), sl("system_u:object_r:net_conf_t:s0"));
    assert_eq!(read(d, "srv/app.conf"), "setting = 1\n");
    assert_eq!(owner_mode(&d.join("srv/app.conf")), (0o640, UID, GID));
    assert_eq!(l("srv/app.conf"), sl("system_u:object_r:var_t:s0"));
    assert_eq!(d.join(".autorelabel").exists(), selinux);
    if selinux {
        assert_eq!(
            l(".autorelabel").as_deref(),
            Some("system_u:object_r:etc_runtime_t:s0")
        );
    }
    let temporaries: Vec<_> = names(d, "etc")
        .into_iter()
        .filter(|n| n.contains("diskmount"))
        .collect();
    assert!(temporaries.is_empty(), "{temporaries:?}");
    if home_empty {
        let home: Vec<_> = names(d, "home")
            .into_iter()
            .filter(|n| n != ".keep")
            .collect();
        assert!(home.is_empty(), "written into the root's /home: {home:?}");
    }
}

/// The `/boot` filesystem after [`inject_all`].
fn check_boot(d: &Path, selinux: bool) {
    assert_eq!(read(d, "loader.conf"), "setting = 1\n");
    assert_eq!(owner_mode(&d.join("loader.conf")), (0o644, 0, 0));
    assert_eq!(
        label(&d.join("loader.conf")),
        selinux.then(|| "system_u:object_r:default_t:s0".to_string())
    );
}

#[test]
fn fedora_os_injects_into_the_home_subvolume_and_the_root_subvolume() {
    let mut fx = Fixture::new();
    let img = fx.fedora_image("fedora.img");
    let (path, boot, btrfs) = (&img.path, img.boot, img.btrfs);
    fx.util_mount_opts(path, &at(btrfs, true, Some("root")), |d| {
        make_guest_root(d, true, RH_HOSTS)
    });
    fx.util_mount_opts(path, &at(btrfs, true, Some("home")), make_guest_homes);
    let i = inputs(&fx);
    let json = inject_all(&fx, path, "os", &i, "fedora-web");
    assert!(json.contains("\"selinux\":true"), "{json}");
    inject_keys_again(&fx, path, "os", &i);
    // The home subvolume, as util-linux mounts it.
    fx.util_mount_opts(path, &at(btrfs, false, Some("home")), |d| {
        check_user_key(d, true);
        assert_eq!(read(d, "id"), "home");
    });
    fx.util_mount_opts(path, &at(btrfs, false, Some("root")), |d| {
        check_root(d, true, "fedora-web", RH_HOSTS, true);
        assert!(names(d, "boot").is_empty(), "written into the root's /boot");
    });
    // The top level holds the two subvolumes and nothing else.
    fx.util_mount_opts(path, &at(btrfs, false, None), |d| {
        assert_eq!(
            names(d, ""),
            BTreeSet::from(["home".to_string(), "root".to_string()])
        );
    });
    fx.util_mount_opts(path, &at(boot, false, None), |d| check_boot(d, true));
    fx.assert_clean();
}

#[test]
fn rocky_os_injects_into_rl_home_rl_root_and_boot() {
    let mut fx = Fixture::new();
    let img = fx.rocky_image("rocky.img");
    let range = |name: &str| {
        let r = img.lv_ranges(name);
        assert_eq!(r.len(), 1, "{name}: {r:?}");
        r[0]
    };
    let (root, home) = (range("root"), range("home"));
    let boot = common::layout(&img.path)
        .into_iter()
        .find(|p| p.0 == 2)
        .map(|p| (p.1, p.2))
        .unwrap();
    fx.util_mount_opts(&img.path, &at(root, true, None), |d| {
        make_guest_root(d, true, RH_HOSTS);
        // rl/data (/srv) has two pieces, which only device-mapper maps,
        // and this kernel may have none: the guest here does without it.
        let fstab = read(d, "etc/fstab");
        let fstab: String = fstab
            .lines()
            .filter(|l| !l.contains("/srv"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(d.join("etc/fstab"), fstab).unwrap();
    });
    fx.util_mount_opts(&img.path, &at(home, true, None), make_guest_homes);
    let i = inputs(&fx);
    let json = inject_all(&fx, &img.path, "os", &i, "rocky-web");
    assert!(json.contains("\"selinux\":true"), "{json}");
    inject_keys_again(&fx, &img.path, "os", &i);
    img.assert_not_active();
    fx.util_mount_opts(&img.path, &at(home, false, None), |d| {
        check_user_key(d, true);
        assert_eq!(read(d, "id"), "home");
    });
    fx.util_mount_opts(&img.path, &at(root, false, None), |d| {
        check_root(d, true, "rocky-web", RH_HOSTS, true);
        assert_eq!(names(d, "boot"), BTreeSet::from([".keep".to_string()]));
    });
    fx.util_mount_opts(&img.path, &at(boot, false, None), |d| check_boot(d, true));
    fx.assert_clean();
}

/// `--partition auto` mounts only rl/root: root's key and the host name go
/// there; the guest user's home is on rl/home, not mounted, so a key for
/// that user is refused, naming the missing home, with nothing written.
#[test]
fn rocky_auto_injects_into_rl_root_and_refuses_a_home_it_did_not_mount() {
    let mut fx = Fixture::new();
    let img = fx.rocky_image("rocky.img");
    let r = img.lv_ranges("root");
    assert_eq!(r.len(), 1);
    let root = r[0];
    fx.util_mount_opts(&img.path, &at(root, true, None), |d| {
        make_guest_root(d, true, RH_HOSTS)
    });
    let i = inputs(&fx);
    let err = failed(&diskmount(
        &fx,
        &[
            OsStr::new("inject"),
            img.path.as_os_str(),
            OsStr::new("--hostname"),
            OsStr::new("changed"),
            OsStr::new("--ssh-key"),
            OsStr::new(&i.user_key),
        ],
    ));
    assert!(
        err.contains(&format!("home/{USER}")) && err.contains("does not exist"),
        "{err}"
    );
    fx.util_mount_opts(&img.path, &at(root, false, None), |d| {
        assert_eq!(read(d, "etc/hostname"), "rocky-guest\n", "nothing written");
    });
    ok(&diskmount(
        &fx,
        &[
            OsStr::new("inject"),
            img.path.as_os_str(),
            OsStr::new("--ssh-key"),
            OsStr::new(&i.key),
            OsStr::new("--hostname"),
            OsStr::new("rocky-auto"),
        ],
    ));
    img.assert_not_active();
    fx.util_mount_opts(&img.path, &at(root, false, None), |d| {
        assert_eq!(read(d, "etc/hostname"), "rocky-auto\n");
        assert_eq!(
            label(&d.join("etc/hostname")).as_deref(),
            Some("system_u:object_r:hostname_etc_t:s0")
        );
        assert_eq!(read(d, "root/.ssh/authorized_keys"), format!("{KEY}\n"));
        assert_eq!(owner_mode(&d.join("root/.ssh")), (0o700, 0, 0));
        assert_eq!(label(&d.join("root/.ssh")).as_deref(), Some(SSH_HOME));
        assert_eq!(
            label(&d.join("root/.ssh/authorized_keys")).as_deref(),
            Some(SSH_HOME)
        );
    });
    fx.assert_clean();
}

/// A whole-disk PV holding a Debian root (no SELinux, a `127.0.1.1`
/// line), `--partition auto`: everything in the one LV, nothing labelled.
#[test]
fn whole_disk_pv_auto_injects_into_its_root_lv() {
    let mut fx = Fixture::new();
    let img = fx.whole_disk_pv_image("whole.img");
    let r = img.lv_ranges("root");
    assert_eq!(r.len(), 1);
    let root = r[0];
    fx.util_mount_opts(&img.path, &at(root, true, None), |d| {
        make_guest_root(d, false, HOSTS);
        make_guest_homes(&d.join("home"));
    });
    let i = inputs(&fx);
    let json = inject_all(&fx, &img.path, "auto", &i, "whole2");
    assert!(json.contains("\"selinux\":false"), "{json}");
    inject_keys_again(&fx, &img.path, "auto", &i);
    img.assert_not_active();
    fx.util_mount_opts(&img.path, &at(root, false, None), |d| {
        check_user_key(&d.join("home"), false);
        check_root(
            d,
            false,
            "whole2",
            &HOSTS.replace("127.0.1.1\tdebian", "127.0.1.1\twhole2"),
            false,
        );
        // No /boot filesystem: the file is in the root's /boot.
        check_boot(&d.join("boot"), false);
    });
    fx.assert_clean();
}

/// Ubuntu Server's layout (ext4 `/boot`, `ubuntu-vg/ubuntu-lv`) with
/// `--partition os`: the `127.0.1.1` line of Ubuntu's etc/hosts names the
/// new host (and its short name), the file for `/boot` lands in the boot
/// partition, not in the root's `/boot`.
#[test]
fn ubuntu_os_sets_the_hosts_line_and_writes_boot_in_its_partition() {
    const UBUNTU_HOSTS: &str = "127.0.0.1 localhost\n\
127.0.1.1 ubuntu-guest\n\
\n\
# The following lines are desirable for IPv6 capable hosts\n\
::1     ip6-localhost ip6-loopback\n";
    let mut fx = Fixture::new();
    let img = fx.ubuntu_image("ubuntu.img");
    let r = img.lv_ranges("ubuntu-lv");
    assert_eq!(r.len(), 1);
    let root = r[0];
    let boot = common::layout(&img.path)
        .into_iter()
        .find(|p| p.0 == 2)
        .map(|p| (p.1, p.2))
        .unwrap();
    fx.util_mount_opts(&img.path, &at(root, true, None), |d| {
        make_guest_root(d, false, UBUNTU_HOSTS);
        make_guest_homes(&d.join("home"));
        std::fs::create_dir_all(d.join("boot")).unwrap();
    });
    let i = inputs(&fx);
    let json = inject_all(&fx, &img.path, "os", &i, "web01.example.com");
    assert!(json.contains("\"selinux\":false"), "{json}");
    img.assert_not_active();
    fx.util_mount_opts(&img.path, &at(root, false, None), |d| {
        check_user_key(&d.join("home"), false);
        check_root(
            d,
            false,
            "web01.example.com",
            &UBUNTU_HOSTS.replace(
                "127.0.1.1 ubuntu-guest",
                "127.0.1.1\tweb01.example.com\tweb01",
            ),
            false,
        );
        // The fixture's own mount point marker is all the root's /boot holds.
        let boot = names(d, "boot");
        assert!(
            boot.iter().all(|n| n == ".keep"),
            "written into the root's /boot: {boot:?}"
        );
    });
    fx.util_mount_opts(&img.path, &at(boot, false, None), |d| check_boot(d, false));
    fx.assert_clean();
}

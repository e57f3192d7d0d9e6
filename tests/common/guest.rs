//! Guest OS fixtures for injection: an ext4 image holding a guest's
//! etc/passwd, etc/group and etc/shadow (with users whose ids no host user
//! has), a Debian-style etc/hosts, home directories, and optionally an
//! SELinux policy's file contexts; and an independent look at the result
//! through util-linux's `mount -o loop,ro` and attr's `getfattr`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Fixture, run};

/// The guest user keys and files go to: uid and gid no host user has.
pub const USER: &str = "cloud-user";
pub const UID: u32 = 4242;
pub const GID: u32 = 4243;
/// The guest's `shadow` group (etc/shadow is `root:shadow 0640`).
pub const SHADOW_GID: u32 = 42;

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
cloud-user:x:4242:4243:Cloud User,,,:/home/cloud-user:/bin/bash\n\
other:x:4244:4244::/home/other:/bin/sh\n";

pub const GROUP: &str = "root:x:0:\n\
daemon:x:1:\n\
wheel:x:10:cloud-user\n\
shadow:x:42:\n\
cloud-user:x:4243:\n\
other:x:4244:\n";

pub const SHADOW: &str = "root:*:19700:0:99999:7:::\n\
daemon:*:19700:0:99999:7:::\n\
cloud-user:!:19700:0:99999:7:::\n\
other:$6$oldsalt$oldhash:19700:0:99999:7:::\n";

pub const HOSTS: &str = "127.0.0.1\tlocalhost\n\
127.0.1.1\tdebian\n\
\n\
# The following lines are desirable for IPv6 capable hosts\n\
::1     localhost ip6-localhost ip6-loopback\n\
ff02::1 ip6-allnodes\n";

/// The guest's SELinux file contexts: the entries of Fedora's targeted
/// policy for the paths diskmount writes (written from its documented
/// content), and a default for everything else.
pub const FILE_CONTEXTS: &str = "/.*\tsystem_u:object_r:default_t:s0\n\
/etc\t-d\tsystem_u:object_r:etc_t:s0\n\
/etc/.*\tsystem_u:object_r:etc_t:s0\n\
/etc/hostname\t--\tsystem_u:object_r:hostname_etc_t:s0\n\
/etc/hosts\t--\tsystem_u:object_r:net_conf_t:s0\n\
/etc/shadow.*\t--\tsystem_u:object_r:shadow_t:s0\n\
/root(/.*)?\tsystem_u:object_r:admin_home_t:s0\n\
/root/\\.ssh(/.*)?\tsystem_u:object_r:ssh_home_t:s0\n\
/srv(/.*)?\tsystem_u:object_r:var_t:s0\n\
/\\.autorelabel\t--\tsystem_u:object_r:etc_runtime_t:s0\n";

/// What genhomedircon makes of the policy's `HOME_DIR/\.ssh(/.*)?`
/// template: the `.homedirs` file next to file_contexts.
pub const FILE_CONTEXTS_HOMEDIRS: &str = "/home/[^/]+\t-d\tunconfined_u:object_r:user_home_dir_t:s0\n\
/home/[^/]+/.+\tunconfined_u:object_r:user_home_t:s0\n\
/home/[^/]+/\\.ssh(/.*)?\tunconfined_u:object_r:ssh_home_t:s0\n";

/// A Fedora/RHEL-style etc/hosts: no `127.0.1.1` line.
pub const RH_HOSTS: &str = "127.0.0.1   localhost localhost.localdomain localhost4\n\
::1         localhost localhost.localdomain localhost6\n";

/// The label etc/shadow has in the SELinux fixture: not the one the policy
/// would give, so that keeping it is told apart from relabelling.
pub const SHADOW_LABEL: &str = "system_u:object_r:shadow_t:s0:c1";

/// An SSH public key.
pub const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@example";
/// Another one.
pub const KEY2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFeBnQ0sZ9Z4dQ3y2p1H8Lr5nqj3mXvQ2bC7aR1tK0Wx second@example";

/// Panics if the host knows the guest's ids: the test would not tell the
/// guest's database from the host's.
pub fn assert_ids_unknown_to_host() {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    for (file, text, id) in [("passwd", &passwd, UID), ("group", &group, GID)] {
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            assert!(
                f.get(2) != Some(&id.to_string().as_str()),
                "the host's /etc/{file} has id {id}: pick ids no host user has"
            );
            assert!(
                f.first() != Some(&USER),
                "the host's /etc/{file} has {USER}: the test needs a guest-only name"
            );
        }
    }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Fixture {
    /// An ext4 image of a Debian-like guest; with `selinux`, also
    /// etc/selinux/config (enforcing, targeted) and the policy's file
    /// contexts, with etc/shadow and etc/hosts labelled as on a real guest
    /// (etc/shadow with [`SHADOW_LABEL`]). `extra` adds files.
    pub fn guest_image(&self, name: &str, selinux: bool, extra: &[(&str, &str)]) -> PathBuf {
        let mut files = vec![
            ("etc/passwd", PASSWD),
            ("etc/group", GROUP),
            ("etc/shadow", SHADOW),
            ("etc/hosts", HOSTS),
            ("etc/hostname", "debian\n"),
            ("home/other/.ssh/authorized_keys", "# other's keys\n"),
        ];
        if selinux {
            files.push((
                "etc/selinux/config",
                "# managed\nSELINUX=enforcing\nSELINUXTYPE=targeted\n",
            ));
            files.push((
                "etc/selinux/targeted/contexts/files/file_contexts",
                FILE_CONTEXTS,
            ));
            files.push((
                "etc/selinux/targeted/contexts/files/file_contexts.homedirs",
                FILE_CONTEXTS_HOMEDIRS,
            ));
        }
        files.extend_from_slice(extra);
        let src = self.tree(&format!("{name}.src"), &files);
        for d in ["root", "home/cloud-user", "srv"] {
            std::fs::create_dir_all(src.join(d)).unwrap();
        }
        chmod(&src.join("root"), 0o700);
        chmod(&src.join("home/cloud-user"), 0o750);
        chown(&src.join("home/cloud-user"), UID, GID);
        for p in [
            "home/other",
            "home/other/.ssh",
            "home/other/.ssh/authorized_keys",
        ] {
            chown(&src.join(p), 4244, 4244);
        }
        chmod(&src.join("home/other/.ssh"), 0o700);
        chmod(&src.join("home/other/.ssh/authorized_keys"), 0o600);
        chmod(&src.join("etc/shadow"), 0o640);
        chown(&src.join("etc/shadow"), 0, SHADOW_GID);
        let img = self.path().join(name);
        self.blank(name, 64 << 20);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "guest", "-d"])
            .arg(&src)
            .arg(&img));
        if selinux {
            self.util_mount(&img, false, label_guest_files);
        }
        img
    }

    /// Mounts `img` with util-linux (`mount -o loop[,ro]`), independent of
    /// diskmount, runs `f` on the mount point, and unmounts (also when `f`
    /// panics).
    pub fn util_mount<T>(&self, img: &Path, read_only: bool, f: impl FnOnce(&Path) -> T) -> T {
        let opts = if read_only { "loop,ro" } else { "loop" };
        self.util_mount_opts(img, opts, f)
    }

    /// [`Fixture::util_mount`] with util-linux's `-o opts` (e.g.
    /// `ro,loop,offset=N,sizelimit=M,subvol=home`: one filesystem of a
    /// partitioned image, an LV's extent range, a btrfs subvolume).
    pub fn util_mount_opts<T>(&self, img: &Path, opts: &str, f: impl FnOnce(&Path) -> T) -> T {
        let dir = tempfile::Builder::new()
            .prefix("check-")
            .tempdir_in(self.path())
            .unwrap();
        run(Command::new("mount")
            .args(["-o", opts])
            .arg(img)
            .arg(dir.path()));
        let guard = scopeguard::guard(dir.path().to_path_buf(), |d| super::system::umount(&d));
        let out = f(&guard);
        drop(guard);
        out
    }
}

/// Gives etc/shadow, etc/hosts and etc/hostname of the guest root at `dir`
/// the labels they have on a real SELinux guest (etc/shadow
/// [`SHADOW_LABEL`]).
fn label_guest_files(dir: &Path) {
    for (p, label) in [
        ("etc/shadow", SHADOW_LABEL),
        ("etc/hosts", "system_u:object_r:net_conf_t:s0"),
        ("etc/hostname", "system_u:object_r:hostname_etc_t:s0"),
    ] {
        run(Command::new("setfattr")
            .args(["-n", "security.selinux", "-v", label])
            .arg(dir.join(p)));
    }
}

/// Makes the OS root mounted (read-write) at `root` a guest of [`USER`]:
/// etc/passwd, etc/group, etc/shadow (`root:shadow 0640`), etc/hosts
/// holding `hosts`, `/root` (0700); with `selinux`, etc/selinux/config
/// (enforcing, targeted), the policy's file contexts, and the labels of a
/// real guest on etc/shadow, etc/hosts and etc/hostname (which the root
/// must have). For the guest-OS layouts, whose roots hold only os-release,
/// hostname and fstab.
pub fn make_guest_root(root: &Path, selinux: bool, hosts: &str) {
    let mut files = vec![
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/shadow", SHADOW),
        ("etc/hosts", hosts),
    ];
    if selinux {
        files.push((
            "etc/selinux/config",
            "# managed\nSELINUX=enforcing\nSELINUXTYPE=targeted\n",
        ));
        files.push((
            "etc/selinux/targeted/contexts/files/file_contexts",
            FILE_CONTEXTS,
        ));
        files.push((
            "etc/selinux/targeted/contexts/files/file_contexts.homedirs",
            FILE_CONTEXTS_HOMEDIRS,
        ));
    }
    for (rel, content) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    std::fs::create_dir_all(root.join("root")).unwrap();
    chmod(&root.join("root"), 0o700);
    chmod(&root.join("etc/shadow"), 0o640);
    chown(&root.join("etc/shadow"), 0, SHADOW_GID);
    if selinux {
        label_guest_files(root);
    }
}

/// Makes the home directories of the guest's users in `home` (the
/// filesystem mounted at the guest's `/home`, read-write): [`USER`]'s
/// (0750, [`UID`]:[`GID`]) and `other`'s with a `.ssh/authorized_keys`.
pub fn make_guest_homes(home: &Path) {
    let mine = home.join(USER);
    std::fs::create_dir_all(&mine).unwrap();
    chmod(&mine, 0o750);
    chown(&mine, UID, GID);
    let other = home.join("other");
    std::fs::create_dir_all(other.join(".ssh")).unwrap();
    std::fs::write(other.join(".ssh/authorized_keys"), "# other's keys\n").unwrap();
    for p in [
        &other,
        &other.join(".ssh"),
        &other.join(".ssh/authorized_keys"),
    ] {
        chown(p, 4244, 4244);
    }
    chmod(&other.join(".ssh"), 0o700);
    chmod(&other.join(".ssh/authorized_keys"), 0o600);
}

/// `(mode & 0o7777, uid, gid)` of `path` itself.
pub fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

/// The `security.selinux` label of `path` as getfattr reads it, `None` if
/// it has none.
pub fn label(path: &Path) -> Option<String> {
    let out = Command::new("getfattr")
        .args([
            "-n",
            "security.selinux",
            "--only-values",
            "--absolute-names",
        ])
        .arg(path)
        .output()
        .expect("getfattr (Debian package attr)");
    if out.status.success() {
        let v = String::from_utf8_lossy(&out.stdout).into_owned();
        Some(v.trim_end_matches('\0').to_string())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No such attribute"),
            "getfattr {}: {err}",
            path.display()
        );
        None
    }
}

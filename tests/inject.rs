//! File injection done right (issue 15), through the `diskmount` command
//! and checked on an independent mount (util-linux `mount -o loop,ro`,
//! attr's `getfattr`): owners from the guest's own etc/passwd and
//! etc/group, modes, labels from the guest's own SELinux policy, SSH keys
//! added once, symlinked `.ssh` refused with nothing written, host name
//! and hosts, the password hash replaced in only its line of etc/shadow
//! (mode, owner and label kept), and clear errors naming the guest file.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Fixture;
use common::guest::{
    GID, HOSTS, KEY, KEY2, SHADOW, SHADOW_GID, SHADOW_LABEL, UID, USER, assert_ids_unknown_to_host,
    label, owner_mode,
};

/// Runs `diskmount ARGS` with its temporary files and records in the
/// fixture's own directories; checks afterwards that it left no temporary
/// file (mount point, copy of the guest's file contexts) behind.
fn diskmount(fx: &Fixture, args: &[&OsStr]) -> Output {
    let tmp = fx.path().join("tmp");
    let runs = fx.records();
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .args(args)
        .env("TMPDIR", &tmp)
        .env("DISKMOUNT_RUN_DIR", &runs)
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

fn os(s: &str) -> &OsStr {
    s.as_ref()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "diskmount failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one line of standard error of a failed run.
fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "diskmount succeeded but should not have"
    );
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The message of a run refused as a usage error (exit status 2), before
/// anything was mounted.
fn usage(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A host file with `content`.
fn host_file(fx: &Fixture, name: &str, content: &str) -> PathBuf {
    let p = fx.path().join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn arg(prefix: &str, p: &Path) -> String {
    format!("{prefix}{}", p.display())
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn ssh_key_twice_is_added_once_owned_by_the_guest_user() {
    assert_ids_unknown_to_host();
    let mut fx = Fixture::new();
    let img = fx.guest_image("guest.img", false, &[]);
    let key = host_file(&fx, "key.pub", &format!("{KEY}\n"));
    let user_key = arg(&format!("{USER}="), &key);
    let root_key = arg("root=", &key);
    for _ in 0..2 {
        ok(&diskmount(
            &fx,
            &[
                os("inject"),
                img.as_os_str(),
                os("--ssh-key"),
                os(&user_key),
                os("--ssh-key"),
                os(&root_key),
            ],
        ));
    }
    // A second key for the same user is appended after the first.
    let key2 = host_file(&fx, "key2.pub", &format!("{KEY2}\n"));
    let out = diskmount(
        &fx,
        &[
            os("--json"),
            os("inject"),
            img.as_os_str(),
            os("--ssh-key"),
            os(&arg(&format!("{USER}="), &key2)),
        ],
    );
    ok(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "{{\"image\":\"{}\",\"changed\":1,\"selinux\":false}}",
            img.display()
        )
    );
    fx.util_mount(&img, true, |d| {
        let home = d.join("home").join(USER);
        assert_eq!(owner_mode(&home.join(".ssh")), (0o700, UID, GID));
        assert_eq!(
            owner_mode(&home.join(".ssh/authorized_keys")),
            (0o600, UID, GID)
        );
        assert_eq!(
            read(&home, ".ssh/authorized_keys"),
            format!("{KEY}\n{KEY2}\n"),
            "each key once"
        );
        assert_eq!(owner_mode(&d.join("root/.ssh")), (0o700, 0, 0));
        assert_eq!(
            owner_mode(&d.join("root/.ssh/authorized_keys")),
            (0o600, 0, 0)
        );
        assert_eq!(read(d, "root/.ssh/authorized_keys"), format!("{KEY}\n"));
        // Not an SELinux guest: nothing is labelled.
        assert_eq!(label(&home.join(".ssh")), None);
        assert_eq!(label(&home.join(".ssh/authorized_keys")), None);
    });
    fx.assert_clean();
}

#[test]
fn an_selinux_guest_gets_the_labels_of_its_own_policy() {
    let mut fx = Fixture::new();
    let img = fx.guest_image("selinux.img", true, &[]);
    let key = host_file(&fx, "key.pub", &format!("{KEY}\n"));
    let conf = host_file(&fx, "app.conf", "setting = 1\n");
    let hash = host_file(&fx, "hash", "$6$newsalt$newhash\n");
    let tree = fx.tree(
        "payload",
        &[("data/a.txt", "a\n"), ("data/sub/b.txt", "b\n")],
    );
    ok(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--ssh-key"),
            os(&arg(&format!("{USER}="), &key)),
            os("--ssh-key"),
            os(&arg("root=", &key)),
            os("--hostname"),
            os("rocky9"),
            os("--write"),
            os(&format!(
                "{}:/srv/app/app.conf:640:{USER}:wheel",
                conf.display()
            )),
            os("--password"),
            os(&arg("other=", &hash)),
            os("--selinux-relabel"),
        ],
    ));
    ok(&diskmount(
        &fx,
        &[
            os("copy-in"),
            img.as_os_str(),
            os("--owner"),
            os(USER),
            tree.join("data").as_os_str(),
            os("/srv/copied"),
        ],
    ));
    fx.util_mount(&img, true, |d| {
        let l = |p: &str| label(&d.join(p));
        let ssh_home = "system_u:object_r:ssh_home_t:s0";
        assert_eq!(l("root/.ssh").as_deref(), Some(ssh_home));
        assert_eq!(l("root/.ssh/authorized_keys").as_deref(), Some(ssh_home));
        // From file_contexts.homedirs, as genhomedircon writes it.
        let user_ssh = "unconfined_u:object_r:ssh_home_t:s0";
        assert_eq!(l("home/cloud-user/.ssh").as_deref(), Some(user_ssh));
        assert_eq!(
            l("home/cloud-user/.ssh/authorized_keys").as_deref(),
            Some(user_ssh)
        );
        // Created: the policy's label for the path and the kind (--, -d).
        assert_eq!(l("srv/app").as_deref(), Some("system_u:object_r:var_t:s0"));
        assert_eq!(
            l("srv/app/app.conf").as_deref(),
            Some("system_u:object_r:var_t:s0")
        );
        assert_eq!(owner_mode(&d.join("srv/app/app.conf")), (0o640, UID, 10));
        assert_eq!(owner_mode(&d.join("srv/app")), (0o755, 0, 0));
        assert_eq!(
            l(".autorelabel").as_deref(),
            Some("system_u:object_r:etc_runtime_t:s0")
        );
        // Edited by rename: the original's label kept.
        assert_eq!(
            l("etc/hostname").as_deref(),
            Some("system_u:object_r:hostname_etc_t:s0")
        );
        assert_eq!(l("etc/shadow").as_deref(), Some(SHADOW_LABEL));
        assert_eq!(owner_mode(&d.join("etc/shadow")), (0o640, 0, SHADOW_GID));
        assert_eq!(
            l("etc/hosts").as_deref(),
            Some("system_u:object_r:net_conf_t:s0")
        );
        // copy-in: owner and labels on every file and directory it made.
        for p in ["srv/copied", "srv/copied/data", "srv/copied/data/sub"] {
            assert_eq!(l(p).as_deref(), Some("system_u:object_r:var_t:s0"), "{p}");
        }
        for p in [
            "srv/copied/data",
            "srv/copied/data/a.txt",
            "srv/copied/data/sub/b.txt",
        ] {
            let (_, uid, gid) = owner_mode(&d.join(p));
            assert_eq!((uid, gid), (UID, GID), "{p}");
            assert_eq!(l(p).as_deref(), Some("system_u:object_r:var_t:s0"), "{p}");
        }
    });
    fx.assert_clean();
}

#[test]
fn a_symlinked_ssh_dir_or_authorized_keys_is_refused_and_nothing_is_written() {
    let mut fx = Fixture::new();
    let host = fx.tree("host", &[("keep", "host file\n")]);
    let key = host_file(&fx, "key.pub", &format!("{KEY}\n"));
    let user_key = arg(&format!("{USER}="), &key);
    let cases: [(&str, &str, String); 3] = [
        (".ssh", "a host path", host.display().to_string()),
        (".ssh", "another guest dir", "/home/other/.ssh".into()),
        (
            ".ssh/authorized_keys",
            "another guest file",
            "/home/other/.ssh/authorized_keys".into(),
        ),
    ];
    for (i, (at, what, target)) in cases.iter().enumerate() {
        let img = fx.guest_image(&format!("link{i}.img"), false, &[]);
        fx.util_mount(&img, false, |d| {
            let home = d.join("home").join(USER);
            if at.contains('/') {
                std::fs::create_dir(home.join(".ssh")).unwrap();
            }
            std::os::unix::fs::symlink(target, home.join(at)).unwrap();
        });
        let err = failed(&diskmount(
            &fx,
            &[
                os("inject"),
                img.as_os_str(),
                os("--hostname"),
                os("changed"),
                os("--ssh-key"),
                os(&user_key),
            ],
        ));
        assert!(
            err.contains("symbolic link") && err.contains(&format!("home/{USER}/{at}")),
            "{what}: {err}"
        );
        fx.util_mount(&img, true, |d| {
            assert_eq!(
                read(d, "etc/hostname"),
                "debian\n",
                "{what}: nothing written"
            );
            assert_eq!(read(d, "etc/hosts"), HOSTS, "{what}");
            assert_eq!(
                read(d, "home/other/.ssh/authorized_keys"),
                "# other's keys\n",
                "{what}"
            );
            assert_eq!(
                std::fs::read_link(d.join("home").join(USER).join(at)).unwrap(),
                Path::new(target),
                "{what}: the link is left as it was"
            );
        });
    }
    let names: Vec<_> = std::fs::read_dir(&host)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["keep"], "nothing written on the host");
    fx.assert_clean();
}

#[test]
fn hostname_writes_etc_hostname_and_the_debian_hosts_line() {
    let mut fx = Fixture::new();
    let img = fx.guest_image("host.img", false, &[]);
    ok(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--hostname"),
            os("web01.example.com"),
        ],
    ));
    fx.util_mount(&img, true, |d| {
        assert_eq!(read(d, "etc/hostname"), "web01.example.com\n");
        assert_eq!(
            read(d, "etc/hosts"),
            HOSTS.replace("127.0.1.1\tdebian", "127.0.1.1\tweb01.example.com\tweb01")
        );
        assert_eq!(owner_mode(&d.join("etc/hostname")), (0o644, 0, 0));
    });
    for bad in ["-web", "a_b", "x..y", "name.", &"a".repeat(64)] {
        let err = usage(&diskmount(
            &fx,
            &[
                os("inject"),
                img.as_os_str(),
                os(&format!("--hostname={bad}")),
            ],
        ));
        assert!(err.contains("RFC 1123"), "{bad}: {err}");
    }
    // A guest without 127.0.1.1 (Fedora, RHEL) keeps its hosts file.
    let img2 = fx.guest_image("fedora.img", false, &[]);
    fx.util_mount(&img2, false, |d| {
        std::fs::write(d.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::remove_file(d.join("etc/hostname")).unwrap();
    });
    ok(&diskmount(
        &fx,
        &[
            os("inject"),
            img2.as_os_str(),
            os("--hostname"),
            os("fedora1"),
        ],
    ));
    fx.util_mount(&img2, true, |d| {
        assert_eq!(read(d, "etc/hostname"), "fedora1\n");
        assert_eq!(owner_mode(&d.join("etc/hostname")), (0o644, 0, 0));
        assert_eq!(read(d, "etc/hosts"), "127.0.0.1 localhost\n");
    });
    fx.assert_clean();
}

#[test]
fn password_hash_replaces_only_that_users_field_and_shadow_keeps_mode_and_owner() {
    let mut fx = Fixture::new();
    let img = fx.guest_image("pw.img", false, &[]);
    let hash = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7";
    let file = host_file(&fx, "hash", &format!("{hash}\n"));
    ok(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--password"),
            os(&arg(&format!("{USER}="), &file)),
        ],
    ));
    fx.util_mount(&img, true, |d| {
        assert_eq!(
            read(d, "etc/shadow"),
            SHADOW.replace("cloud-user:!:19700", &format!("cloud-user:{hash}:19700"))
        );
        assert_eq!(owner_mode(&d.join("etc/shadow")), (0o640, 0, SHADOW_GID));
        // No temporary file left next to it.
        let names: Vec<_> = std::fs::read_dir(d.join("etc"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("diskmount"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    });
    // A clear-text password is refused before anything is mounted.
    let clear = host_file(&fx, "clear", "hunter2\n");
    let err = usage(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--password"),
            os(&arg("root=", &clear)),
        ],
    ));
    assert!(err.contains("not a crypt(3) hash"), "{err}");
    // A user the guest's shadow does not have: named, with the file.
    let err = failed(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--password"),
            os(&arg("nobody=", &file)),
        ],
    ));
    assert!(
        err.contains("etc/shadow") && err.contains("\"nobody\""),
        "{err}"
    );
    fx.assert_clean();
}

#[test]
fn unknown_users_and_missing_guest_files_are_clear_errors() {
    let mut fx = Fixture::new();
    let img = fx.guest_image("users.img", false, &[]);
    let key = host_file(&fx, "key.pub", &format!("{KEY}\n"));
    let err = failed(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--hostname"),
            os("changed"),
            os("--ssh-key"),
            os(&arg("nobody=", &key)),
        ],
    ));
    assert!(
        err.contains("etc/passwd") && err.contains("no user \"nobody\""),
        "{err}"
    );
    let err = failed(&diskmount(
        &fx,
        &[
            os("copy-in"),
            img.as_os_str(),
            os("--owner"),
            os(&format!("{USER}:staff")),
            key.as_os_str(),
            os("/srv"),
        ],
    ));
    assert!(
        err.contains("etc/group") && err.contains("no group \"staff\""),
        "{err}"
    );
    fx.util_mount(&img, true, |d| {
        assert_eq!(read(d, "etc/hostname"), "debian\n", "nothing written");
        assert!(!d.join("srv/key.pub").exists());
    });
    // A guest without etc/passwd or etc/shadow.
    let bare = fx.ext4("bare.img", &[("etc/hostname", "bare\n")]);
    let err = failed(&diskmount(
        &fx,
        &[
            os("inject"),
            bare.as_os_str(),
            os("--ssh-key"),
            os(&arg("root=", &key)),
        ],
    ));
    assert!(
        err.contains("etc/passwd") && err.contains("no etc/passwd"),
        "{err}"
    );
    let hash = host_file(&fx, "hash", "$6$salt$hash\n");
    let err = failed(&diskmount(
        &fx,
        &[
            os("inject"),
            bare.as_os_str(),
            os("--password"),
            os(&arg("root=", &hash)),
        ],
    ));
    assert!(
        err.contains("etc/shadow") && err.contains("no etc/shadow"),
        "{err}"
    );
    fx.assert_clean();
}

#[test]
fn copy_in_owner_and_mode_and_write_with_mode_and_owner() {
    let mut fx = Fixture::new();
    let img = fx.guest_image("copy.img", false, &[]);
    let tree = fx.tree(
        "payload",
        &[("app/bin/run", "#!/bin/sh\n"), ("app/etc/conf", "x\n")],
    );
    std::fs::set_permissions(
        tree.join("app/bin"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    ok(&diskmount(
        &fx,
        &[
            os("copy-in"),
            img.as_os_str(),
            os("--owner"),
            os(&format!("{UID}:wheel")),
            os("--mode"),
            os("600"),
            tree.join("app").as_os_str(),
            os("/opt"),
        ],
    ));
    let motd = host_file(&fx, "motd", "welcome\n");
    ok(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--write"),
            os(&format!("{}:/etc/motd", motd.display())),
            os("--write"),
            os(&format!("{}:/etc/hosts", motd.display())),
            os("--write"),
            os(&format!(
                "{}:/home/cloud-user/notes::{USER}",
                motd.display()
            )),
            os("--write"),
            os(&format!(
                "{}:/home/other/.ssh/authorized_keys:640",
                motd.display()
            )),
        ],
    ));
    fx.util_mount(&img, true, |d| {
        assert_eq!(owner_mode(&d.join("opt/app/bin/run")), (0o600, UID, 10));
        assert_eq!(owner_mode(&d.join("opt/app/etc/conf")), (0o600, UID, 10));
        // Directories keep the host's modes.
        assert_eq!(owner_mode(&d.join("opt/app/bin")), (0o750, UID, 10));
        // /opt was made for the copy: the owner too, mode 0755.
        assert_eq!(owner_mode(&d.join("opt")), (0o755, UID, 10));
        // New file: 0644 root's; existing file: its mode and owner kept.
        assert_eq!(read(d, "etc/motd"), "welcome\n");
        assert_eq!(owner_mode(&d.join("etc/motd")), (0o644, 0, 0));
        assert_eq!(read(d, "etc/hosts"), "welcome\n");
        assert_eq!(
            owner_mode(&d.join("home/cloud-user/notes")),
            (0o644, UID, GID)
        );
        // Existing, only the mode given: the owner kept.
        let other = d.join("home/other/.ssh/authorized_keys");
        assert_eq!(owner_mode(&other), (0o640, 4244, 4244));
        assert_eq!(read(d, "home/other/.ssh/authorized_keys"), "welcome\n");
    });
    fx.assert_clean();
}

/// The library side, with both resolvers: guest files linked to host paths
/// are read and edited inside the image only, and an edit through a guest
/// link lands on the file it leads to in the image, keeping its owner and
/// mode, the link left as it was.
#[test]
fn guest_links_never_lead_reads_or_edits_out_of_the_image() {
    use diskmount::guest::{OwnerSpec, Users};
    use diskmount::root::{NewEntry, Ownership, Resolver};
    let mut fx = Fixture::new();
    let host = fx.tree(
        "host",
        &[
            ("passwd", "hostonly:x:7777:7777::/h:/bin/sh\n"),
            ("hosts", "host file\n"),
        ],
    );
    for resolver in [Resolver::Auto, Resolver::Walker] {
        let img = fx.guest_image(&format!("links-{resolver:?}.img"), false, &[]);
        fx.util_mount(&img, false, |d| {
            std::fs::remove_file(d.join("etc/passwd")).unwrap();
            std::os::unix::fs::symlink(host.join("passwd"), d.join("etc/passwd")).unwrap();
            std::fs::rename(d.join("etc/hosts"), d.join("etc/hosts.real")).unwrap();
            std::os::unix::fs::symlink("/etc/hosts.real", d.join("etc/hosts")).unwrap();
            std::os::unix::fs::symlink(host.join("hosts"), d.join("etc/motd")).unwrap();
            std::os::unix::fs::chown(d.join("etc/hosts.real"), Some(UID), Some(GID)).unwrap();
        });
        let mnt = fx.tree(&format!("mnt-{resolver:?}"), &[]);
        let m = common::mount_whole::<diskmount::Loop>(&img, &mnt);
        {
            let root = m.root().unwrap().with_resolver(resolver);
            // etc/passwd leads to a host path: inside the image there is
            // nothing there, so the host's file is never read.
            let users = Users::read(&root).unwrap();
            let e = users
                .resolve(&OwnerSpec::parse("hostonly").unwrap())
                .unwrap_err();
            assert!(e.to_string().contains("no etc/passwd"), "{e}");
            let e = root
                .edit("/etc/motd", |_| Ok(Some(b"x".to_vec())))
                .unwrap_err();
            assert_eq!(e.errno(), Some(nix::libc::ENOENT), "{e}");
            // The link inside the image is followed there.
            assert!(
                root.edit("/etc/hosts", |old| {
                    assert_eq!(old, HOSTS.as_bytes());
                    Ok(Some(b"edited\n".to_vec()))
                })
                .unwrap()
            );
            // Unchanged content is no write at all.
            assert!(
                !root
                    .edit("/etc/hosts", |old| Ok((old != b"edited\n").then(Vec::new)))
                    .unwrap()
            );
            // New entries get the owner and mode asked for.
            let how = NewEntry::new().mode(0o4750).owner(Ownership::new(UID, GID));
            root.mkdir_all_with("/opt/a/b", &how).unwrap();
            root.write_with("/opt/a/b/tool", b"#!/bin/sh\n", &how)
                .unwrap();
        }
        m.close().unwrap();
        fx.util_mount(&img, true, |d| {
            assert_eq!(read(d, "etc/hosts.real"), "edited\n");
            assert_eq!(owner_mode(&d.join("etc/hosts.real")), (0o644, UID, GID));
            assert_eq!(
                std::fs::read_link(d.join("etc/hosts")).unwrap(),
                Path::new("/etc/hosts.real")
            );
            // The set-id bit survives the change of owner (mode after chown).
            assert_eq!(owner_mode(&d.join("opt/a/b/tool")), (0o4750, UID, GID));
            assert_eq!(owner_mode(&d.join("opt/a")), (0o4750, UID, GID));
        });
    }
    assert_eq!(
        std::fs::read_to_string(host.join("hosts")).unwrap(),
        "host file\n"
    );
    fx.assert_clean();
}

/// SELINUX=disabled labels nothing; a policy libselinux cannot read is an
/// error naming the guest's file, before anything is written.
#[test]
fn a_disabled_or_unreadable_selinux_policy() {
    let mut fx = Fixture::new();
    let key = host_file(&fx, "key.pub", &format!("{KEY}\n"));
    let img = fx.guest_image("disabled.img", true, &[]);
    fx.util_mount(&img, false, |d| {
        std::fs::write(
            d.join("etc/selinux/config"),
            "SELINUX=disabled\nSELINUXTYPE=targeted\n",
        )
        .unwrap();
    });
    ok(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--ssh-key"),
            os(&arg("root=", &key)),
        ],
    ));
    fx.util_mount(&img, true, |d| {
        assert_eq!(label(&d.join("root/.ssh")), None);
        assert_eq!(label(&d.join("root/.ssh/authorized_keys")), None);
    });
    let img = fx.guest_image("broken.img", true, &[]);
    fx.util_mount(&img, false, |d| {
        std::fs::write(
            d.join("etc/selinux/targeted/contexts/files/file_contexts"),
            "/root\t-z\tsystem_u:object_r:admin_home_t:s0\n",
        )
        .unwrap();
    });
    let err = failed(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--ssh-key"),
            os(&arg("root=", &key)),
        ],
    ));
    assert!(
        err.contains("etc/selinux/targeted/contexts/files/file_contexts"),
        "{err}"
    );
    fx.util_mount(&img, true, |d| assert!(!d.join("root/.ssh").exists()));
    fx.assert_clean();
}

/// A user whose home directory is missing, and a `.ssh` that is a file:
/// clear errors naming the guest path, and nothing written.
#[test]
fn a_missing_home_or_a_non_directory_ssh_is_refused() {
    let mut fx = Fixture::new();
    let key = host_file(&fx, "key.pub", &format!("{KEY}\n"));
    let img = fx.guest_image("home.img", false, &[]);
    fx.util_mount(&img, false, |d| {
        std::fs::remove_dir(d.join("home").join(USER)).unwrap();
        std::fs::write(d.join("home/other/.ssh2"), "").unwrap();
        std::fs::remove_dir_all(d.join("home/other/.ssh")).unwrap();
        std::fs::rename(d.join("home/other/.ssh2"), d.join("home/other/.ssh")).unwrap();
    });
    let err = failed(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--ssh-key"),
            os(&arg(&format!("{USER}="), &key)),
        ],
    ));
    assert!(
        err.contains(&format!("home/{USER}")) && err.contains("does not exist"),
        "{err}"
    );
    let err = failed(&diskmount(
        &fx,
        &[
            os("inject"),
            img.as_os_str(),
            os("--hostname"),
            os("changed"),
            os("--ssh-key"),
            os(&arg("other=", &key)),
        ],
    ));
    assert!(
        err.contains("home/other/.ssh") && err.contains("not a directory"),
        "{err}"
    );
    fx.util_mount(&img, true, |d| {
        assert_eq!(read(d, "etc/hostname"), "debian\n");
        assert!(!d.join("home").join(USER).exists());
        assert_eq!(read(d, "home/other/.ssh"), "");
    });
    fx.assert_clean();
}

/// Every part is checked before anything is written: a refused part
/// (a password for a user the guest's etc/shadow lacks, a file for an
/// owner its etc/passwd lacks, an SSH key for a user it lacks) leaves
/// every other part of the same run unwritten, on an SELinux guest.
#[test]
fn a_refused_part_leaves_every_other_part_unwritten() {
    let mut fx = Fixture::new();
    let img = fx.guest_image("refused.img", true, &[]);
    let key = host_file(&fx, "key.pub", &format!("{KEY}\n"));
    let hash = host_file(&fx, "hash", "$6$newsalt$newhash\n");
    let motd = host_file(&fx, "motd", "welcome\n");
    let good_key = arg(&format!("{USER}="), &key);
    let good_write = format!("{}:/etc/motd", motd.display());
    let good_password = arg("other=", &hash);
    let cases: [(&str, [String; 3], &str); 3] = [
        (
            "--password",
            [good_key.clone(), good_write.clone(), arg("ghost=", &hash)],
            "etc/shadow",
        ),
        (
            "--write",
            [
                good_key.clone(),
                format!("{}:/srv/x::ghost", motd.display()),
                good_password.clone(),
            ],
            "etc/passwd",
        ),
        (
            "--ssh-key",
            [
                arg("ghost=", &key),
                good_write.clone(),
                good_password.clone(),
            ],
            "etc/passwd",
        ),
    ];
    for (what, [ssh, write, password], file) in &cases {
        let err = failed(&diskmount(
            &fx,
            &[
                os("inject"),
                img.as_os_str(),
                os("--hostname"),
                os("changed"),
                os("--ssh-key"),
                os(ssh),
                os("--write"),
                os(write),
                os("--password"),
                os(password),
                os("--selinux-relabel"),
            ],
        ));
        assert!(
            err.contains(file) && err.contains("\"ghost\""),
            "{what}: {err}"
        );
        fx.util_mount(&img, true, |d| {
            assert_eq!(read(d, "etc/hostname"), "debian\n", "{what}");
            assert_eq!(read(d, "etc/hosts"), HOSTS, "{what}");
            assert_eq!(read(d, "etc/shadow"), SHADOW, "{what}");
            for p in ["etc/motd", "srv/x", ".autorelabel", "home/cloud-user/.ssh"] {
                assert!(!d.join(p).exists(), "{what}: {p} written");
            }
            let stray: Vec<_> = std::fs::read_dir(d.join("etc"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("diskmount"))
                .collect();
            assert!(stray.is_empty(), "{what}: {stray:?}");
        });
    }
    fx.assert_clean();
}

/// etc/shadow is replaced by rename (a new inode, never rewritten in
/// place), keeping its mode, owner and label; another run with
/// `--selinux-relabel` (whose `/.autorelabel` is there already) works.
#[test]
fn password_replaces_shadow_by_rename_keeping_its_label() {
    use std::os::unix::fs::MetadataExt;
    let mut fx = Fixture::new();
    let img = fx.guest_image("rename.img", true, &[]);
    let ino = |fx: &Fixture| {
        fx.util_mount(&img, true, |d| {
            d.join("etc/shadow").metadata().unwrap().ino()
        })
    };
    let before = ino(&fx);
    let hash = host_file(&fx, "hash", "$6$newsalt$newhash\n");
    for _ in 0..2 {
        ok(&diskmount(
            &fx,
            &[
                os("inject"),
                img.as_os_str(),
                os("--password"),
                os(&arg(&format!("{USER}="), &hash)),
                os("--selinux-relabel"),
            ],
        ));
    }
    assert_ne!(ino(&fx), before, "etc/shadow was rewritten in place");
    fx.util_mount(&img, true, |d| {
        assert_eq!(
            read(d, "etc/shadow"),
            SHADOW.replace("cloud-user:!:", "cloud-user:$6$newsalt$newhash:")
        );
        assert_eq!(owner_mode(&d.join("etc/shadow")), (0o640, 0, SHADOW_GID));
        assert_eq!(label(&d.join("etc/shadow")).as_deref(), Some(SHADOW_LABEL));
        assert_eq!(
            label(&d.join(".autorelabel")).as_deref(),
            Some("system_u:object_r:etc_runtime_t:s0")
        );
    });
    fx.assert_clean();
}

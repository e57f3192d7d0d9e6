//! A hostile guest tree cannot make the safe root handle read, write or
//! create anything outside the image: absolute links to host paths, `..`
//! chains, link loops, a linked directory in the middle of a path, device
//! nodes, fifos, and a file swapped for a link while we use it. The same
//! test bodies run against both resolvers (openat2, and the userspace
//! walker for kernels without it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Fixture, run};
use diskmount::root::{Resolver, Root};
use diskmount::{Format, Image, Loop, MountOptions, Partition, Step, Unattached};

const SECRET: &str = "host secret, must never change or leak\n";

struct Hostile {
    fx: Fixture,
    img: PathBuf,
    secret: PathBuf,
    secret_dir: PathBuf,
}

/// An ext4 image whose tree points at host paths in every way it can.
fn hostile() -> Hostile {
    let fx = Fixture::new();
    let secret_dir = fx.tree("host", &[("secret", SECRET)]);
    let secret = secret_dir.join("secret");
    let src = fx.tree(
        "guest",
        &[("etc/hostname", "guest\n"), ("race/real", "guest data\n")],
    );
    let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, src.join(at)).unwrap();
    link(secret.to_str().unwrap(), "abs");
    link(
        &format!("../../../../../../../../..{}", secret.display()),
        "dotdot",
    );
    link("loop2", "loop1");
    link("loop1", "loop2");
    link(secret_dir.to_str().unwrap(), "dirlink");
    link("/", "rootlink");
    run(Command::new("mknod")
        .arg(src.join("nullish"))
        .args(["c", "1", "3"]));
    run(Command::new("mkfifo").arg(src.join("fifo")));
    // Set-id modes, and a sticky world-writable directory.
    {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |at: &str, mode: u32| {
            std::fs::set_permissions(src.join(at), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        std::fs::write(src.join("suid"), "a set-uid program\n").unwrap();
        chmod("suid", 0o4755);
        std::fs::create_dir(src.join("sgid")).unwrap();
        std::fs::write(src.join("sgid/file"), "in a set-gid directory\n").unwrap();
        chmod("sgid", 0o2775);
        std::fs::create_dir(src.join("tmp")).unwrap();
        chmod("tmp", 0o1777);
    }
    let img = fx.path().join("hostile.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&img));
    Hostile {
        fx,
        img,
        secret,
        secret_dir,
    }
}

impl Hostile {
    /// The host side is exactly as it was: the secret unchanged, nothing
    /// new next to it.
    fn host_untouched(&self) {
        assert_eq!(std::fs::read_to_string(&self.secret).unwrap(), SECRET);
        let names: Vec<_> = std::fs::read_dir(&self.secret_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("secret")],
            "something was created on the host"
        );
    }
}

fn with_root(h: &Hostile, resolver: Resolver, f: impl FnOnce(&Root, &Path)) {
    let mnt = h.fx.tree(&format!("mnt-{resolver:?}"), &[]);
    let t = Unattached::<Loop>::new(Image::file(&h.img, Format::Raw).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    {
        let root = t.root().unwrap().with_resolver(resolver);
        f(&root, t.path());
    }
    t.close().unwrap();
}

#[track_caller]
fn refused<T: std::fmt::Debug>(r: diskmount::Result<T>) -> diskmount::Error {
    let e = r.unwrap_err();
    assert_eq!(e.step(), Some(Step::Access), "{e}");
    e
}

const RESOLVERS: [Resolver; 2] = [Resolver::Auto, Resolver::Walker];

#[test]
fn absolute_and_dotdot_links_resolve_inside_the_image() {
    let mut h = hostile();
    for resolver in RESOLVERS {
        with_root(&h, resolver, |root, _| {
            for link in ["abs", "dotdot", "dirlink/secret", "rootlink/abs"] {
                let e = refused(root.read(link));
                assert_eq!(e.errno(), Some(nix::libc::ENOENT), "{link}: {e}");
                assert!(!root.exists(link).unwrap(), "{link}");
            }
            // The guest's own absolute view works: /etc/hostname is the image's.
            assert_eq!(root.read_to_string("/etc/hostname").unwrap(), "guest\n");
            assert_eq!(
                root.read_to_string("rootlink/etc/hostname").unwrap(),
                "guest\n"
            );
            assert_eq!(
                root.read_to_string("../../../etc/hostname").unwrap(),
                "guest\n"
            );
        });
        h.host_untouched();
    }
    h.fx.assert_clean();
}

#[test]
fn writes_through_links_never_reach_the_host() {
    let mut h = hostile();
    for resolver in RESOLVERS {
        with_root(&h, resolver, |root, _| {
            // Append follows the link inside the image, where its target
            // does not exist.
            refused(root.append("abs", "appended\n", 0o644));
            refused(root.append("dotdot", "appended\n", 0o644));
            // A write through a linked directory in the middle of the path.
            refused(root.write("dirlink/new", "x", 0o644));
            refused(root.mkdir_all("dirlink/sub/dir", 0o755));
            refused(root.set_permissions("abs", 0o777));
            refused(root.copy_in(&h.secret, "dirlink"));
        });
        h.host_untouched();
    }
    with_root(&h, Resolver::Auto, |root, _| {
        // An atomic write replaces the link itself, inside the image.
        root.write("abs", "replaced\n", 0o600).unwrap();
        assert!(root.symlink_metadata("abs").unwrap().is_file());
        assert_eq!(root.read_to_string("abs").unwrap(), "replaced\n");
        // Ownership of a link changes the link, not its target.
        root.set_owner("dotdot", Some(1234), Some(1234)).unwrap();
        assert_eq!(root.symlink_metadata("dotdot").unwrap().uid(), 1234);
        // Removing a linked directory removes the link.
        root.remove("dirlink").unwrap();
    });
    h.host_untouched();
    h.fx.assert_clean();
}

#[test]
fn copy_in_below_existing_guest_links_stays_in_the_image() {
    let mut h = hostile();
    // A host tree whose names meet guest links to host paths: a file where
    // the guest has a link to the host secret, a directory where the guest
    // has a link to the host directory.
    let host = h.fx.tree(
        "stage",
        &[("abs", "from the host tree\n"), ("dirlink/new", "x")],
    );
    for resolver in RESOLVERS {
        with_root(&h, resolver, |root, _| {
            root.mkdir_all("/stage", 0o755).unwrap();
            root.symlink(&h.secret, "/stage/abs").unwrap();
            root.symlink(&h.secret_dir, "/stage/dirlink").unwrap();
            // The file replaces the link; the linked directory resolves
            // inside the image, where it does not exist.
            refused(root.copy_in(&host, "/"));
            assert!(root.symlink_metadata("/stage/abs").unwrap().is_file());
            assert_eq!(
                root.read_to_string("/stage/abs").unwrap(),
                "from the host tree\n"
            );
            root.remove_all("/stage").unwrap();
        });
        h.host_untouched();
    }
    h.fx.assert_clean();
}

#[test]
fn loops_devices_and_fifos_are_refused() {
    let mut h = hostile();
    for resolver in RESOLVERS {
        with_root(&h, resolver, |root, _| {
            let e = refused(root.read("loop1"));
            assert_eq!(e.errno(), Some(nix::libc::ELOOP), "{e}");
            let e = refused(root.read("nullish"));
            assert!(e.to_string().contains("character device"), "{e}");
            let e = refused(root.read("fifo"));
            assert!(e.to_string().contains("fifo"), "{e}");
            refused(root.append("nullish", "x", 0o644));
            refused(root.copy_out("fifo", h.fx.path().join("out-fifo")));
        });
    }
    h.host_untouched();
    h.fx.assert_clean();
}

#[test]
fn copy_out_copies_links_as_links_and_never_follows_the_host_side() {
    let mut h = hostile();
    with_root(&h, Resolver::Auto, |root, _| {
        let out = h.fx.path().join("out-abs");
        root.copy_out("abs", &out).unwrap();
        assert!(
            std::fs::symlink_metadata(&out)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A host destination that is a link is not followed (nor replaced).
        let trap = h.fx.path().join("trap");
        std::os::unix::fs::symlink(&h.secret, &trap).unwrap();
        refused(root.copy_out("etc/hostname", &trap));
        std::fs::remove_file(&out).unwrap();
        std::fs::remove_file(&trap).unwrap();
    });
    h.host_untouched();
    h.fx.assert_clean();
}

/// A guest's set-uid file and set-gid directory come out with their
/// permission bits but never as set-id ones on the host; a host directory
/// copied onto a directory the guest has (`/tmp`, 1777) leaves the
/// guest's mode alone.
#[test]
fn set_id_bits_stay_in_the_image_and_guest_directories_keep_their_mode() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    let mut h = hostile();
    let host = h.fx.tree("host-side", &[("tmp/new", "copied in\n")]);
    assert_eq!(mode(&host.join("tmp")), 0o755);
    with_root(&h, Resolver::Auto, |root, mnt| {
        assert_eq!(mode(&mnt.join("suid")), 0o4755, "the image's own mode");
        let out = h.fx.path().join("out-suid");
        root.copy_out("suid", &out).unwrap();
        assert_eq!(mode(&out), 0o755);
        let out = h.fx.path().join("out-sgid");
        root.copy_out("sgid", &out).unwrap();
        assert_eq!(mode(&out), 0o775);
        assert_eq!(mode(&out.join("file")), 0o644);
        let out = h.fx.path().join("out-tmp");
        root.copy_out("tmp", &out).unwrap();
        assert_eq!(mode(&out), 0o1777, "the sticky bit is kept");
        root.copy_in(host.join("tmp"), "/").unwrap();
        assert_eq!(mode(&mnt.join("tmp")), 0o1777);
        assert_eq!(
            std::fs::read_to_string(mnt.join("tmp/new")).unwrap(),
            "copied in\n"
        );
    });
    h.host_untouched();
    h.fx.assert_clean();
}

/// An edit by rename keeps every extended attribute of the file it
/// replaces, not only its SELinux label: a user attribute and a file
/// capability (set after the owner: a chown drops capabilities).
#[test]
fn an_edit_keeps_the_files_extended_attributes() {
    let mut h = hostile();
    with_root(&h, Resolver::Auto, |root, mnt| {
        let file = mnt.join("etc/hostname");
        run(Command::new("setfattr")
            .args(["-n", "user.note", "-v", "kept"])
            .arg(&file));
        run(Command::new("setcap").arg("cap_net_raw+ep").arg(&file));
        let before = std::fs::metadata(&file).unwrap();
        assert!(
            root.edit("etc/hostname", |_| Ok(Some(b"edited\n".to_vec())))
                .unwrap()
        );
        let after = std::fs::metadata(&file).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(before.ino(), after.ino(), "not replaced by rename");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "edited\n");
        assert_eq!(
            run(Command::new("getfattr")
                .args(["--only-values", "-n", "user.note"])
                .arg(&file)),
            "kept"
        );
        let caps = run(Command::new("getcap").arg(&file));
        assert!(caps.contains("cap_net_raw"), "{caps:?}");
    });
    h.host_untouched();
    h.fx.assert_clean();
}

#[test]
fn a_file_swapped_for_a_link_while_in_use_never_leaks() {
    let mut h = hostile();
    for resolver in RESOLVERS {
        with_root(&h, resolver, |root, mnt| {
            let stop = AtomicBool::new(false);
            let race = mnt.join("race");
            let _ = std::fs::remove_file(race.join("evil"));
            std::os::unix::fs::symlink(&h.secret, race.join("evil")).unwrap();
            // `race/file` exists from the start, as the link: were it
            // missing, the first `append` would create it empty, and a read
            // before the swapper's first rename would see that file.
            let _ = std::fs::remove_file(race.join("file"));
            let _ = std::fs::remove_file(race.join("tmp"));
            std::fs::hard_link(race.join("evil"), race.join("file")).unwrap();
            std::thread::scope(|s| {
                // Stop the swapper however this scope ends (a failed
                // assertion included), or the scope would wait for it forever.
                let _stop = scopeguard::guard((), |()| stop.store(true, Ordering::Relaxed));
                // The "guest" side: swap `race/file` between a real file and
                // a link to the host secret, as fast as it can.
                s.spawn(|| {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let from = if n.is_multiple_of(2) { "real" } else { "evil" };
                        let _ = std::fs::hard_link(race.join(from), race.join("tmp"));
                        let _ = std::fs::rename(race.join("tmp"), race.join("file"));
                        n += 1;
                    }
                });
                for i in 0..2000u32 {
                    match root.read_to_string("race/file") {
                        Ok(s) => assert_eq!(s, "guest data\n", "iteration {i}"),
                        Err(e) => assert_eq!(e.errno(), Some(nix::libc::ENOENT), "{e}"),
                    }
                    if i.is_multiple_of(100) {
                        // (append syncs: keep the number of journal commits small)
                        let _ = root.append("race/file", "", 0o644);
                    }
                    if i.is_multiple_of(10) {
                        let _ = root.set_permissions("race/file", 0o600);
                    }
                }
            });
        });
        h.host_untouched();
        assert_eq!(
            std::fs::metadata(&h.secret).unwrap().permissions().mode() & 0o777,
            0o644,
            "the host file's mode changed"
        );
    }
    h.fx.assert_clean();
}

use std::os::unix::fs::PermissionsExt;

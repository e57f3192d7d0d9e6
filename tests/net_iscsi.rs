//! Network images over iSCSI (`iscsi://`): Debian's tgt target on
//! 127.0.0.1 (tests/common/servers.rs), served to the Fuse backend
//! (qemu's libiscsi driver under qemu-storage-daemon's FUSE export).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::servers::{TgtTarget, assert_no_client};
use common::{Fixture, is_mount_point};
use diskmount::{
    AttachOptions, ErrorKind, Fuse, Image, MountOptions, Partition, RunDir, Unattached,
};

fn needle(t: &TgtTarget) -> String {
    format!("127.0.0.1:{}", t.port)
}

/// LUN 1 of the target mounted read-write: a file read, a file written,
/// then read back in a second attach and found in the image file.
#[test]
fn a_lun_mounts_and_writes_through() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "over iscsi")]);
    let target = TgtTarget::start(&img);
    let url = target.url(TgtTarget::IQN, 1);
    let mnt = fx.tree("mnt", &[]);
    let mount = || {
        Unattached::<Fuse>::new(Image::url(&url).unwrap())
            .attach()
            .unwrap()
            .map(Partition::Whole)
            .unwrap()
            .mount(&mnt, &MountOptions::default())
            .unwrap()
    };
    let m = mount();
    assert_eq!(
        std::fs::read_to_string(m.path().join("id")).unwrap(),
        "over iscsi"
    );
    std::fs::write(m.path().join("written"), "through libiscsi").unwrap();
    m.close().unwrap();
    assert_no_client(&needle(&target), None);
    let m = mount();
    assert_eq!(
        std::fs::read_to_string(m.path().join("written")).unwrap(),
        "through libiscsi"
    );
    m.close().unwrap();
    assert!(!is_mount_point(&mnt));
    assert_no_client(&needle(&target), None);
    drop(target);
    // The target wrote into the image file itself.
    let data = std::fs::read(&img).unwrap();
    assert!(
        data.windows(16).any(|w| w == b"through libiscsi"),
        "not in the image file"
    );
    fx.assert_clean();
}

/// A missing LUN, a missing target (IQN) and an unreachable port: one
/// clear line each, naming the URL and the object, nothing left.
#[test]
fn a_missing_lun_or_target_and_a_closed_port_are_clear_errors() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "x")]);
    let target = TgtTarget::start(&img);
    let closed = common::servers::free_port();
    let cases = [
        (
            target.url(TgtTarget::IQN, 7),
            ErrorKind::NotFound,
            "no LUN 7",
        ),
        (
            target.url("iqn.2024-01.org.diskmount:nope", 1),
            ErrorKind::NotFound,
            "no target iqn.2024-01.org.diskmount:nope",
        ),
        (
            format!("iscsi://127.0.0.1:{closed}/{}/1", TgtTarget::IQN),
            ErrorKind::Io,
            "nothing answers at 127.0.0.1",
        ),
    ];
    let errors: Vec<_> = cases
        .into_iter()
        .map(|(url, kind, says)| {
            let e = Unattached::<Fuse>::new(Image::url(&url).unwrap())
                .attach()
                .map(|_| ())
                .unwrap_err();
            eprintln!("{e}");
            (url, e, kind, says)
        })
        .collect();
    for (url, e, kind, says) in errors {
        let text = e.to_string();
        assert_eq!(e.kind(), kind, "{text}");
        let name = Image::url(&url).unwrap().path().display().to_string();
        assert!(text.starts_with(&format!("attach: {name}: ")), "{text}");
        assert!(
            text.contains(says) && !text.contains('\n'),
            "{says}: {text}"
        );
    }
    assert_no_client(&needle(&target), None);
    assert_no_client(&format!("127.0.0.1:{closed}"), None);
    drop(target);
    fx.assert_clean();
}

/// The target stopped (SIGSTOP) while mounted: the teardown ends within a
/// bound (libiscsi's timeout, else the watchdog that aborts the FUSE
/// export), reports an error, and leaves nothing.
#[test]
fn a_target_stopped_while_mounted_gives_a_bounded_teardown() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "x")]);
    let target = TgtTarget::start(&img);
    let mnt = fx.tree("mnt", &[]);
    let m = Unattached::<Fuse>::new(Image::url(&target.url(TgtTarget::IQN, 1)).unwrap())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    std::fs::write(m.path().join("dirty"), vec![7u8; 1 << 20]).unwrap();
    target.signal("STOP");
    let start = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(m.close());
    });
    let closed = rx
        .recv_timeout(std::time::Duration::from_secs(150))
        .expect("the teardown ended");
    eprintln!(
        "stopped iSCSI target: teardown -> {closed:?} after {:.1?}",
        start.elapsed()
    );
    assert!(closed.is_err());
    target.signal("CONT");
    assert!(!is_mount_point(&mnt));
    assert_no_client(&needle(&target), None);
    drop(target);
    fx.assert_clean();
}

/// The CHAP account of the target in the credential tests; the password
/// is distinctive so that a search for it cannot match anything else.
const CHAP_USER: &str = "diskmount";
const CHAP_PASSWORD: &str = "chap-Pw-4f1c9e7a";
const WRONG_PASSWORD: &str = "wrong-Pw-8d2b5a3";

/// A target that wants CHAP, and 0600 files with the right and the wrong
/// password (the file's bytes are the password: no newline).
fn chap_target(fx: &Fixture, img: &std::path::Path) -> (TgtTarget, PathBuf, PathBuf) {
    let target = TgtTarget::with_chap(img, CHAP_USER, CHAP_PASSWORD);
    let (right, wrong) = (fx.path().join("chap.pw"), fx.path().join("wrong.pw"));
    common::ceph::secret_file(&right, CHAP_PASSWORD);
    common::ceph::secret_file(&wrong, WRONG_PASSWORD);
    (target, right, wrong)
}

/// Panics if a password shows in `what` (an error, an output, a log).
fn assert_no_password(what: &str, text: &str) {
    for pw in [CHAP_PASSWORD, WRONG_PASSWORD] {
        assert!(!text.contains(pw), "the password is in {what}: {text}");
    }
}

/// While attached: no process on the machine has a password in its
/// command line or environment, and no file under the run directory
/// `records` (the record, the helper's directory and its log) holds one;
/// there is a record to search.
fn assert_no_password_while_attached(records: &std::path::Path) {
    for pw in [CHAP_PASSWORD, WRONG_PASSWORD] {
        assert_eq!(common::processes_holding(pw), Vec::<String>::new());
        let (files, holding) = common::files_holding(records, pw);
        assert!(!files.is_empty(), "no record under {}", records.display());
        assert_eq!(holding, Vec::<PathBuf>::new(), "files holding a password");
    }
}

/// CHAP through the library: the right password (a 0600 file named by
/// `password-file=`) logs in, the LUN mounts and a write reaches the
/// image file; no command line, environment or record holds the
/// password while attached. The wrong password, and no password at all,
/// are one clear `PermissionDenied` line each without it; nothing is left.
#[test]
fn chap_logs_in_with_the_password_file_and_a_wrong_one_is_one_line() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "chap")]);
    let (target, right, wrong) = chap_target(&fx, &img);
    let records = fx.records();
    let options = AttachOptions::default().run_dir(RunDir::new(&records));
    let url = target.chap_url(CHAP_USER, TgtTarget::IQN, 1, &right);
    let mnt = fx.tree("mnt", &[]);
    let m = Unattached::<Fuse>::with_options(Image::url(&url).unwrap(), options.clone())
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(m.path().join("id")).unwrap(),
        "chap"
    );
    std::fs::write(m.path().join("written"), "through CHAP login").unwrap();
    assert_no_password_while_attached(&records);
    m.close().unwrap();
    assert!(!is_mount_point(&mnt));
    assert_no_client(&needle(&target), None);
    let cases = [
        (
            target.chap_url(CHAP_USER, TgtTarget::IQN, 1, &wrong),
            "refused the login (user or password)",
        ),
        (
            target.url(TgtTarget::IQN, 1),
            "refused the login (user or password)",
        ),
    ];
    for (url, says) in cases {
        let e = Unattached::<Fuse>::with_options(Image::url(&url).unwrap(), options.clone())
            .attach()
            .map(|_| ())
            .expect_err("a login without the right password");
        let text = e.to_string();
        eprintln!("{text}");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{text}");
        let name = Image::url(&url).unwrap().path().display().to_string();
        assert!(
            text.starts_with(&format!("attach: {name}: "))
                && text.contains(says)
                && !text.contains('\n'),
            "{text}"
        );
        assert_no_password("the error", &text);
        assert_no_client(&needle(&target), None);
    }
    for pw in [CHAP_PASSWORD, WRONG_PASSWORD] {
        assert_eq!(common::files_holding(&records, pw).1, Vec::<PathBuf>::new());
    }
    drop(target);
    let data = std::fs::read(&img).unwrap();
    assert!(
        data.windows(18).any(|w| w == b"through CHAP login"),
        "not in the image file"
    );
    fx.assert_clean();
}

/// CHAP through the command line with the library's debug log on
/// (`RUST_LOG=debug`): `diskmount run` logs in with the password file and
/// writes; while its command runs, no process on the machine (diskmount,
/// its qemu-storage-daemon) and no record holds the password. The wrong
/// password fails with one line naming the login; neither run's output
/// or log holds a password, and nothing is left.
#[test]
fn chap_through_the_cli_with_debug_logging_shows_no_password() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "chap")]);
    let (target, right, wrong) = chap_target(&fx, &img);
    let records = fx.records();
    let (ready, go) = (fx.path().join("ready"), fx.path().join("go"));
    let cli = |url: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_diskmount"));
        c.env("RUST_LOG", "debug")
            .env("DISKMOUNT_RUN_DIR", &records)
            .args(["run", url, "--backend", "fuse", "--partition", "none", "--"])
            .args(["sh", "-c"])
            // Writes, says it is ready, waits (at most 60 s) for the scan.
            .arg(
                "echo via-cli > \"$DISKMOUNT_ROOT/cli\" && touch \"$1\" && i=0 && \
                 while [ ! -e \"$2\" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
            )
            .arg("sh")
            .arg(&ready)
            .arg(&go)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let child = cli(&target.chap_url(CHAP_USER, TgtTarget::IQN, 1, &right))
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the run's command did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let scanned = std::panic::catch_unwind(|| assert_no_password_while_attached(&records));
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if let Err(panic) = scanned {
        std::panic::resume_unwind(panic);
    }
    assert!(out.status.success(), "{stdout}{stderr}");
    // The debug log was on, and names the password's file, not its bytes.
    assert!(
        stderr.contains("DEBUG") && stderr.contains("password-secret"),
        "{stderr}"
    );
    assert_no_password("the output of the run", &format!("{stdout}{stderr}"));
    let out = cli(&target.chap_url(CHAP_USER, TgtTarget::IQN, 1, &wrong))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    eprintln!("{last}");
    assert!(
        last.contains("refused the login (user or password)"),
        "{stderr}"
    );
    assert_no_password("the output of the failed run", &format!("{stdout}{stderr}"));
    for pw in [CHAP_PASSWORD, WRONG_PASSWORD] {
        assert_eq!(common::files_holding(&records, pw).1, Vec::<PathBuf>::new());
    }
    assert_no_client(&needle(&target), None);
    drop(target);
    let data = std::fs::read(&img).unwrap();
    assert!(
        data.windows(7).any(|w| w == b"via-cli"),
        "not in the image file"
    );
    fx.assert_clean();
}

//! Network images over iSCSI (`iscsi://`): Debian's tgt target on
//! 127.0.0.1 (tests/common/servers.rs), served to the Fuse backend
//! (qemu's libiscsi driver under qemu-storage-daemon's FUSE export).

mod common;

use common::servers::{TgtTarget, assert_no_client};
use common::{Fixture, is_mount_point};
use diskmount::{ErrorKind, Fuse, Image, MountOptions, Partition, Unattached};

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

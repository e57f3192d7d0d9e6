//! Network images over NBD (`nbd://`, `nbd+unix://`): a real qemu-nbd on
//! 127.0.0.1 or a unix socket, served to the Fuse backend (qemu's nbd
//! driver under qemu-storage-daemon's FUSE export).

mod common;

use std::process::Command;

use common::servers::{Listen, QemuNbd, assert_no_client, free_port};
use common::{Fixture, is_mount_point, run};
use diskmount::{Fuse, Image, ImageKind, MountOptions, Mounted, Partition, Unattached};

fn mount(url: &str, dir: &std::path::Path) -> diskmount::Result<Mounted<Fuse>> {
    let image = Image::url(url)?;
    assert_eq!(image.kind(), ImageKind::Url);
    Unattached::<Fuse>::new(image)
        .attach()?
        .map(Partition::Whole)?
        .mount(dir, &MountOptions::default())
}

fn qcow2(fx: &Fixture, raw: &std::path::Path) -> std::path::PathBuf {
    let out = fx.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&out));
    out
}

/// Mounts the export, reads `id`, writes a file (copy-in), unmounts; then
/// mounts again and reads the written file back (copy-out).
fn round_trip(server: &QemuNbd, fx: &Fixture, needle: &str) {
    let mnt = fx.tree("mnt", &[]);
    let m = mount(&server.url, &mnt).unwrap();
    assert_eq!(std::fs::read_to_string(m.path().join("id")).unwrap(), "net");
    std::fs::write(m.path().join("copied-in"), "over nbd").unwrap();
    m.close().unwrap();
    assert!(!is_mount_point(&mnt));
    assert_no_client(needle, Some(server.pid()));
    let m = mount(&server.url, &mnt).unwrap();
    assert_eq!(
        std::fs::read_to_string(m.path().join("copied-in")).unwrap(),
        "over nbd"
    );
    m.close().unwrap();
    assert_no_client(needle, Some(server.pid()));
}

#[test]
fn raw_over_tcp_round_trip() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "net")]);
    let port = free_port();
    let server = QemuNbd::start(&img, "raw", Listen::Tcp(port));
    round_trip(&server, &fx, &format!("\"port\":\"{port}\""));
    drop(server);
    fx.assert_clean();
}

#[test]
fn qcow2_over_a_unix_socket_round_trip_is_probed_through_the_protocol() {
    let mut fx = Fixture::new();
    let raw = fx.ext4("disk.img", &[("id", "net")]);
    let img = qcow2(&fx, &raw);
    // qemu-nbd serves the qcow2 file's bytes as they are (-f raw): the
    // client sees a qcow2 image and must probe it through the protocol.
    let sock = fx.path().join("nbd.sock");
    let server = QemuNbd::start(&img, "raw", Listen::Unix(sock.clone()));
    let image = Image::url(&server.url).unwrap().read_only(true);
    assert!(image.needs_format_probe());
    // Read-only: a qcow2 file on a fixed-size export cannot grow.
    let mnt = fx.tree("mnt", &[]);
    let m = Unattached::<Fuse>::new(image)
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    assert_eq!(std::fs::read_to_string(m.path().join("id")).unwrap(), "net");
    assert!(std::fs::write(m.path().join("x"), "no").is_err());
    m.close().unwrap();
    assert_no_client(&sock.display().to_string(), Some(server.pid()));
    drop(server);
    fx.assert_clean();
}

#[test]
fn qcow2_decoded_by_the_server() {
    let mut fx = Fixture::new();
    let raw = fx.ext4("disk.img", &[("id", "net")]);
    let img = qcow2(&fx, &raw);
    let port = free_port();
    let server = QemuNbd::start(&img, "qcow2", Listen::Tcp(port));
    round_trip(&server, &fx, &format!("\"port\":\"{port}\""));
    drop(server);
    fx.assert_clean();
}

#[test]
fn a_backing_file_behind_the_protocol_is_refused() {
    let mut fx = Fixture::new();
    let raw = fx.ext4("disk.img", &[("id", "net")]);
    let img = fx.path().join("overlay.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&raw)
        .arg(&img));
    let sock = fx.path().join("nbd.sock");
    let server = QemuNbd::start(&img, "raw", Listen::Unix(sock.clone()));
    let mnt = fx.tree("mnt", &[]);
    let err = mount(&server.url, &mnt)
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("backing file"), "{err}");
    assert!(!is_mount_point(&mnt));
    assert_no_client(&sock.display().to_string(), Some(server.pid()));
    drop(server);
    fx.assert_clean();
}

#[test]
fn a_missing_export_and_an_unreachable_port_are_clear_errors() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "net")]);
    let port = free_port();
    let server = QemuNbd::start(&img, "raw", Listen::Tcp(port));
    let mnt = fx.tree("mnt", &[]);
    // Told by our own handshake (NBD_OPT_INFO, then NBD_OPT_LIST), in one
    // line naming the export, the server and what it has: not qemu's
    // retries for its whole open timeout.
    let url = format!("nbd://127.0.0.1:{port}/nope");
    let err = mount(&url, &mnt).map(|_| ()).expect_err("no such export");
    assert_eq!(err.kind(), diskmount::ErrorKind::NotFound, "{err}");
    let err = err.to_string();
    assert!(err.starts_with("attach: "), "{err}");
    assert!(
        err.contains(&url)
            && err.contains(&format!(
                "the NBD server at 127.0.0.1:{port} has no export \"nope\" (it has \"disk\")"
            ))
            && !err.contains('\n'),
        "{err}"
    );
    drop(server);
    let closed = free_port();
    let url = format!("nbd://127.0.0.1:{closed}/disk");
    let err = mount(&url, &mnt)
        .map(|_| ())
        .expect_err("nothing listens")
        .to_string();
    assert!(
        err.contains(&url)
            && err.contains(&format!("nothing answers at 127.0.0.1:{closed}"))
            && err.contains("refused")
            && !err.contains('\n'),
        "{err}"
    );
    // A unix socket nobody listens on.
    let url = format!("nbd+unix:///disk?socket={}/none.sock", fx.path().display());
    let err = mount(&url, &mnt)
        .map(|_| ())
        .expect_err("no socket")
        .to_string();
    assert!(
        err.contains("nothing answers at unix socket") && !err.contains('\n'),
        "{err}"
    );
    assert!(!is_mount_point(&mnt));
    assert_no_client(&format!("\"port\":\"{port}\""), None);
    assert_no_client(&format!("\"port\":\"{closed}\""), None);
    fx.assert_clean();
}

#[test]
fn a_server_killed_while_mounted_leaves_nothing() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "net")]);
    let port = free_port();
    let mut server = QemuNbd::start(&img, "raw", Listen::Tcp(port));
    let mnt = fx.tree("mnt", &[]);
    let m = mount(&server.url, &mnt).unwrap();
    server.signal("KILL");
    server.stop();
    // Reads now fail (EIO) instead of hanging; teardown ends.
    let _ = std::fs::read_dir(m.path()).map(|d| d.count());
    let _ = m.close();
    assert!(!is_mount_point(&mnt));
    assert_no_client(&format!("\"port\":\"{port}\""), None);
    fx.assert_clean();
}

/// The NBD server stopped (SIGSTOP) while an image is mounted through
/// qemu's nbd driver, which has no request timeout: the teardown's
/// watchdog aborts the FUSE export past its bound, so the teardown ends,
/// reports the loss, and leaves nothing.
#[test]
fn a_server_stopped_while_mounted_gives_a_bounded_teardown() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "net")]);
    let port = free_port();
    let mut server = QemuNbd::start(&img, "raw", Listen::Tcp(port));
    let mnt = fx.tree("mnt", &[]);
    let m = mount(&server.url, &mnt).unwrap();
    std::fs::write(m.path().join("dirty"), vec![7u8; 1 << 20]).unwrap();
    server.signal("STOP");
    let start = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(m.close());
    });
    let closed = rx
        .recv_timeout(std::time::Duration::from_secs(150))
        .expect("the teardown ended");
    let took = start.elapsed();
    eprintln!("stopped nbd server: teardown -> {closed:?} after {took:.1?}");
    let text = closed.unwrap_err().to_string();
    assert!(
        text.contains("server stopped answering") && text.contains("aborted"),
        "{text}"
    );
    server.signal("CONT");
    server.stop();
    assert!(!is_mount_point(&mnt));
    assert_no_client(&format!("\"port\":\"{port}\""), None);
    fx.assert_clean();
}

/// The Nbd backend on an nbd:// URL (`qemu-nbd --image-opts`): on a
/// kernel without nbd (this host) a clear refusal before any server is
/// contacted, nothing started; where the kernel has nbd (the VM lane's
/// `nbd_backend_serves_nbd_urls` covers it in full), the image mounts.
#[test]
fn the_nbd_backend_takes_a_url_where_the_kernel_has_nbd() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "net")]);
    let port = free_port();
    let server = QemuNbd::start(&img, "raw", Listen::Tcp(port));
    let mnt = fx.tree("mnt", &[]);
    let attached = Unattached::<diskmount::Nbd>::new(Image::url(&server.url).unwrap())
        .attach()
        .and_then(|a| a.map(Partition::Whole))
        .and_then(|m| m.mount(&mnt, &MountOptions::default()));
    if diskmount::backend::nbd::available() {
        let m = attached.unwrap();
        assert_eq!(std::fs::read_to_string(m.path().join("id")).unwrap(), "net");
        m.close().unwrap();
    } else {
        let e = attached.map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("nbd is unavailable") && !e.contains('\n'), "{e}");
        assert!(e.contains(&server.url), "{e}");
    }
    assert!(!is_mount_point(&mnt));
    assert_no_client(&format!("port={port}"), Some(server.pid()));
    assert_no_client(&format!("\"port\":\"{port}\""), Some(server.pid()));
    drop(server);
    fx.assert_clean();
}

/// The NBD server stopped (SIGSTOP) while an image is mounted through the
/// Fuse backend: qemu's nbd driver waits for ever, but the device's I/O
/// timeout (`AttachOptions::io_timeout`, 3 s here) ends a read through it
/// with EIO (the FUSE export aborted, its daemon killed); close() says the
/// server stopped answering, and nothing is left.
#[test]
fn a_read_through_a_stopped_server_fails_within_the_io_timeout() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "net")]);
    let port = free_port();
    let mut server = QemuNbd::start(&img, "raw", Listen::Tcp(port));
    let mnt = fx.tree("mnt", &[]);
    let options = diskmount::AttachOptions::default().io_timeout(std::time::Duration::from_secs(3));
    let m = Unattached::<Fuse>::with_options(Image::url(&server.url).unwrap(), options)
        .attach()
        .unwrap()
        .map(Partition::Whole)
        .unwrap()
        .mount(&mnt, &MountOptions::default())
        .unwrap();
    server.signal("STOP");
    // A direct read of the device: past every cache, to the server. Far
    // more than the timeout; without one the read waits for ever.
    let read = common::direct_read(m.device(), 4 << 20, std::time::Duration::from_secs(60));
    server.signal("CONT");
    let read = read.expect("the read through the stopped server did not end");
    let e = read.expect_err("a read through a stopped server succeeded");
    assert_eq!(e.raw_os_error(), Some(nix::libc::EIO), "{e}");
    let text = m.close().unwrap_err().to_string();
    assert!(
        text.contains(&server.url)
            && text.contains("server stopped answering")
            && text.contains("I/O timeout (3s)"),
        "{text}"
    );
    server.stop();
    assert!(!is_mount_point(&mnt));
    assert_no_client(&format!("\"port\":\"{port}\""), None);
    fx.assert_clean();
}

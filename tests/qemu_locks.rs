//! Image locks that qemu understands (issue 13), both ways, with real
//! qemu-storage-daemon, qemu-nbd and qemu-img (qemu-nbd and the daemon
//! serve on unix sockets: no kernel nbd needed):
//! - a qemu writer present: a diskmount attach is refused, naming its pid;
//! - a qemu reader that shares writing present: a read-only attach works;
//! - diskmount attached read-write (loop, block): qemu refuses to write
//!   ("Failed to get "write" lock"), also after the diskmount process was
//!   killed (the loop device keeps the locked file), until it is gone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, bench_write, fixture_qemu, qemu_write_refused, run};
use diskmount::{Backend, Block, Format, Fuse, Image, Loop, Unattached};

/// A qemu process of this test, killed (and reaped) on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Qemu {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// Starts `cmd` and waits until it serves on `socket` (its NBD greeting,
/// so the image is open and locked), or panics with what it printed.
fn serve(mut cmd: Command, socket: &Path) -> Qemu {
    let _ = std::fs::remove_file(socket);
    let mut q = Qemu(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !socket.exists() {
        if let Some(status) = q.0.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(q.0.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("{cmd:?} exited ({status}): {err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{cmd:?} never served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // qemu-nbd binds its socket before it opens (and locks) the image; the
    // server's greeting comes once its main loop runs, after the open.
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut magic = [0u8; 8];
    std::io::Read::read_exact(&mut conn, &mut magic)
        .unwrap_or_else(|e| panic!("{cmd:?} sent no greeting: {e}"));
    assert_eq!(&magic, b"NBDMAGIC", "{cmd:?}");
    q
}

fn storage_daemon(img: &Path, socket: &Path, writable: bool) -> Qemu {
    let ro = if writable { "off" } else { "on" };
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={},read-only={ro}",
            img.display()
        ))
        .arg("--blockdev")
        .arg(format!("driver=raw,node-name=d,file=f,read-only={ro}"))
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", socket.display()))
        .arg("--export")
        .arg(format!("type=nbd,id=e,node-name=d,writable={writable}"));
    serve(cmd, socket)
}

fn qemu_nbd(img: &Path, socket: &Path, read_only: bool) -> Qemu {
    let mut cmd = Command::new("qemu-nbd");
    // --persistent: the greeting check above is a client of its own.
    cmd.args(["-f", "raw", "--persistent", "-k"]).arg(socket);
    if read_only {
        cmd.arg("--read-only");
    }
    cmd.arg(img);
    serve(cmd, socket)
}

fn attach<B: Backend>(img: &Path, read_only: bool) -> diskmount::Result<diskmount::Attached<B>> {
    let image = Image::file(img, Format::Raw)?.read_only(read_only);
    Unattached::<B>::new(image).attach()
}

#[test]
fn a_qemu_writer_refuses_our_attach_and_is_named() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let sock = fx.path().join("nbd.sock");
    for name in ["qemu-storage-daemon", "qemu-nbd"] {
        // One writer at a time.
        let q = match name {
            "qemu-nbd" => qemu_nbd(&img, &sock, false),
            _ => storage_daemon(&img, &sock, true),
        };
        for read_only in [false, true] {
            let err = attach::<Loop>(&img, read_only).unwrap_err().to_string();
            assert!(
                err.contains(&format!("process {} ({name})", q.pid())),
                "{name} read_only={read_only}: {err}"
            );
            assert!(err.contains("\"write\""), "{err}");
            // The qemu backends check before their qemu starts.
            let err = attach::<Fuse>(&img, read_only).unwrap_err().to_string();
            assert!(
                err.contains(&format!("process {} ({name})", q.pid())),
                "fuse, {name} read_only={read_only}: {err}"
            );
        }
        drop(q);
    }
    // And through the command line, one line naming the holder.
    let q = qemu_nbd(&img, &sock, false);
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .env("DISKMOUNT_RUN_DIR", fx.records())
        .arg("run")
        .arg(&img)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("process {} (qemu-nbd)", q.pid())),
        "{err}"
    );
    drop(q);
    assert!(fixture_qemu(&fx).is_empty(), "{:?}", fixture_qemu(&fx));
    fx.assert_clean();
}

#[test]
fn a_sharing_qemu_reader_lets_us_attach_read_only() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("f", "x")]);
    let sock = fx.path().join("nbd.sock");
    for daemon in [false, true] {
        let q = if daemon {
            storage_daemon(&img, &sock, false)
        } else {
            qemu_nbd(&img, &sock, true)
        };
        let attached = attach::<Loop>(&img, true).expect("read-only beside a reader");
        attached.close().unwrap();
        let attached = attach::<Fuse>(&img, true).expect("fuse read-only beside a reader");
        attached.close().unwrap();
        drop(q);
    }
    assert!(fixture_qemu(&fx).is_empty(), "{:?}", fixture_qemu(&fx));
    fx.assert_clean();
}

#[test]
fn qemu_is_refused_while_we_write() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let sock = fx.path().join("nbd.sock");
    for read_only in [false, true] {
        let attached = attach::<Loop>(&img, read_only).unwrap();
        let what = format!("loop read_only={read_only}");
        qemu_write_refused(&what, &mut bench_write(&img));
        let mut qsd = Command::new("qemu-storage-daemon");
        qsd.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={}",
                img.display()
            ))
            .arg("--blockdev")
            .arg("driver=raw,node-name=d,file=f")
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", sock.display()))
            .arg("--export")
            .arg("type=nbd,id=e,node-name=d,writable=on");
        qemu_write_refused(&what, &mut qsd);
        qemu_write_refused(
            &what,
            Command::new("qemu-nbd")
                .args(["-f", "raw", "-k"])
                .arg(&sock)
                .arg(&img),
        );
        if read_only {
            // Readers that share writing are welcome beside a reader.
            let q = qemu_nbd(&img, &sock, true);
            drop(q);
        } else {
            let out = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw"])
                .arg(&img)
                .arg(fx.path().join("copy.img"))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{err}");
            assert!(err.contains("Failed to get shared \"write\" lock"), "{err}");
        }
        attached.close().unwrap();
        // Gone with the device.
        run(&mut bench_write(&img));
    }
    // A block device attached with the Block backend: qemu locks the
    // device node, and so do we.
    let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(&img));
    let dev = PathBuf::from(dev.trim());
    let attached = Unattached::<Block>::new(Image::block(&dev).unwrap())
        .attach()
        .unwrap();
    qemu_write_refused("block", &mut bench_write(&dev));
    attached.close().unwrap();
    run(&mut bench_write(&dev));
    run(Command::new("losetup").arg("-d").arg(&dev));
    assert!(fixture_qemu(&fx).is_empty(), "{:?}", fixture_qemu(&fx));
    fx.assert_clean();
}

#[test]
fn the_locks_outlive_a_killed_diskmount_with_its_loop_device() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.ext4("disk.img", &[]);
    let mnt = fx.tree("mnt", &[]);
    let dm = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_diskmount"));
        c.env("DISKMOUNT_RUN_DIR", &records);
        c
    };
    let mut holder = dm()
        .args(["hold", "--state", "mounted"])
        .arg(&img)
        .arg(&mnt)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("READY"), "{line}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    // No process holds the image now; the loop device under the mount does.
    qemu_write_refused("after the kill", &mut bench_write(&img));
    let out = dm().arg("cleanup").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    run(&mut bench_write(&img));
    assert!(fixture_qemu(&fx).is_empty(), "{:?}", fixture_qemu(&fx));
    fx.assert_clean();
}

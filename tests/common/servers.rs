//! Real servers on this machine's loopback for the network-image tests:
//! qemu-nbd (TCP on 127.0.0.1 or a unix socket) and a small HTTP server
//! with Range support. Each is stopped (and waited for) on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 for a server to listen on, below the
/// kernel's ephemeral range (32768-60999 by default): a port the kernel
/// handed out (`bind` to port 0) and we let go could be taken as the
/// source port of any client connection before the server binds it (seen:
/// qemu-nbd failing to start while other tests' clients connected). Each
/// call in a process gets another one, starting from a place of its own.
///
/// The check is a connect, refused when nothing listens: a probe that
/// bound the port itself would leave it bound for a moment after it is
/// closed, in the child of any other test thread that forked just then
/// (until it execs), and the server's bind would fail (seen: "Address
/// already in use" 1 run of `net_nbd` in 15).
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    let base = std::process::id() % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port below the ephemeral range");
        let port = (LOW + (base + n * 7) % SPAN) as u16;
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        match TcpStream::connect_timeout(&at, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return port,
            _ => continue,
        }
    }
}

/// A listener on 127.0.0.1:`port`. A bind that finds the port in use is
/// retried for a while: a socket another test had on it can live on for a
/// moment in a forked child of another thread, until that child execs.
fn listen_on(port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("bind 127.0.0.1:{port} for qemu-nbd: {e}"),
        }
    }
}

/// Where an NBD server listens.
pub enum Listen {
    Tcp(u16),
    Unix(PathBuf),
}

/// A qemu-nbd serving one image as export `disk`.
pub struct QemuNbd {
    child: Option<Child>,
    pub url: String,
}

impl QemuNbd {
    /// Serves `image` (of `format`) read-write on `listen`, export `disk`,
    /// many clients one after another (`--persistent`); waits until it
    /// accepts connections.
    ///
    /// A TCP port is bound and listened on here and handed to qemu-nbd as
    /// systemd socket activation does (descriptor 3, `LISTEN_FDS=1`,
    /// `LISTEN_PID` its pid, set by the `sh` that execs it): clients wait in
    /// the backlog from the start, and no other process can take the port
    /// between the check and qemu-nbd's own bind.
    pub fn start(image: &Path, format: &str, listen: Listen) -> QemuNbd {
        let qemu_args = ["-f", format, "-x", "disk", "--persistent", "--shared=4"];
        let mut listener = None;
        let (mut cmd, url) = match &listen {
            Listen::Tcp(port) => {
                let l = listen_on(*port);
                let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
                listener = Some(l);
                let mut cmd = Command::new("sh");
                cmd.args([
                    "-c",
                    "LISTEN_PID=$$ LISTEN_FDS=1 exec qemu-nbd \"$@\"",
                    "qemu-nbd",
                ]);
                cmd.args(qemu_args);
                // SAFETY: dup2 and fcntl are async-signal-safe; the closure
                // touches nothing but descriptor numbers.
                unsafe {
                    cmd.pre_exec(move || {
                        let r = if fd == 3 {
                            nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
                        } else {
                            nix::libc::dup2(fd, 3)
                        };
                        if r < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                (cmd, format!("nbd://127.0.0.1:{port}/disk"))
            }
            Listen::Unix(path) => {
                let mut cmd = Command::new("qemu-nbd");
                cmd.args(qemu_args).arg("-k").arg(path);
                (cmd, format!("nbd+unix:///disk?socket={}", path.display()))
            }
        };
        let log = tempfile::tempfile().unwrap();
        let child = cmd
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .expect("start qemu-nbd");
        // qemu-nbd has its own copy now.
        drop(listener);
        let mut server = QemuNbd {
            child: Some(child),
            url,
        };
        let start = Instant::now();
        let mut tries: Vec<String> = Vec::new();
        loop {
            let up = match &listen {
                Listen::Tcp(port) => TcpStream::connect(("127.0.0.1", *port)).map(drop),
                Listen::Unix(path) => std::os::unix::net::UnixStream::connect(path).map(drop),
            };
            match up {
                Ok(()) => break,
                Err(e) => {
                    let t = format!("{:?}: {e}", start.elapsed());
                    if tries.len() < 5 {
                        tries.push(t);
                    } else {
                        tries[4] = t;
                    }
                }
            }
            let said = || {
                let mut said = String::new();
                let _ = (&log).seek(SeekFrom::Start(0));
                let _ = (&log).read_to_string(&mut said);
                said
            };
            let exited = server.child.as_mut().unwrap().try_wait().unwrap();
            if let Some(status) = exited {
                panic!("qemu-nbd exited ({status}) before it listened: {}", said());
            }
            if start.elapsed() > Duration::from_secs(20) {
                let sockets = Command::new("ss").arg("-antp").output();
                panic!(
                    "qemu-nbd (pid {}) did not listen within 20 s; connects: {tries:?}; it said: {:?}; sockets: {}",
                    server.pid(),
                    said(),
                    sockets.map_or_else(
                        |e| e.to_string(),
                        |o| String::from_utf8_lossy(&o.stdout).into_owned()
                    )
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `signal` (e.g. "KILL", "STOP", "CONT") to the server.
    pub fn signal(&self, signal: &str) {
        super::run(
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid().to_string()),
        );
    }

    /// Stops the server and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A small HTTP/1.1 server for one file, with `HEAD` and `GET` with
/// `Range: bytes=A-B` (what qemu's curl driver asks), on 127.0.0.1. Counts
/// the body bytes it sent.
pub struct HttpServer {
    pub port: u16,
    pub sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// While set, a `GET` gets its status line and headers and then no
    /// body: a server that hangs mid-answer.
    hang: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `file` as `/NAME` (its file name); anything else is 404.
    pub fn start(file: &Path) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let hang = Arc::new(AtomicBool::new(false));
        let name = format!("/{}", file.file_name().unwrap().to_string_lossy());
        let file = file.to_path_buf();
        let (s, st, h) = (sent.clone(), stop.clone(), hang.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (file, name, s) = (file.clone(), name.clone(), s.clone());
                let (st, h) = (st.clone(), h.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &file, &name, &s, &Hang { on: &h, stop: &st });
                });
            }
        });
        HttpServer {
            port,
            sent,
            stop,
            hang,
            thread: Some(thread),
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// From now on (`true`), every `GET` hangs after its headers until
    /// the server is dropped; `HEAD` still answers.
    pub fn hang_gets(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }
}

/// A connection's view of [`HttpServer::hang_gets`].
struct Hang<'a> {
    on: &'a AtomicBool,
    stop: &'a AtomicBool,
}

impl Hang<'_> {
    /// Waits while hanging is on, until the server stops.
    fn wait(&self) -> bool {
        let hung = self.on.load(Ordering::SeqCst);
        while self.on.load(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        hung
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    file: &Path,
    name: &str,
    sent: &AtomicU64,
    hang: &Hang,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let (a, b) = v.trim().split_once('-').unwrap_or((v.trim(), ""));
                range = Some((a.parse::<u64>().unwrap_or(0), b.parse::<u64>().ok()));
            }
        }
        // Each request on stderr, for chasing a client that stops asking.
        if std::env::var_os("DISKMOUNT_TEST_HTTP_TRACE").is_some() {
            eprintln!("http: {method} {path} {range:?} from {:?}", out.peer_addr());
        }
        if path != name {
            out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        let mut f = std::fs::File::open(file)?;
        let size = f.metadata()?.len();
        match (method, range) {
            ("GET", Some((a, b))) => {
                let b = b.unwrap_or(size - 1).min(size - 1);
                let len = b + 1 - a;
                // The head in one write, as real servers send it.
                out.write_all(format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {len}\r\nContent-Range: bytes {a}-{b}/{size}\r\nAccept-Ranges: bytes\r\n\r\n"
                ).as_bytes())?;
                if hang.wait() {
                    return Ok(());
                }
                f.seek(SeekFrom::Start(a))?;
                let n = std::io::copy(&mut Read::by_ref(&mut f).take(len), &mut out)?;
                sent.fetch_add(n, Ordering::SeqCst);
            }
            ("HEAD", _) => out.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\n\r\n"
                )
                .as_bytes(),
            )?,
            _ => out.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")?,
        }
    }
}

/// Panics if a qemu helper of ours still talks to `needle` (a port or
/// socket path in its command line), other than the server `except`.
pub fn assert_no_client(needle: &str, except: Option<u32>) {
    let left: Vec<_> = super::qemu_processes()
        .into_iter()
        .filter(|(pid, c)| Some(*pid) != except && c.contains(needle))
        .collect();
    assert!(left.is_empty(), "qemu helpers left: {left:?}");
}

/// A TLS front for an [`HttpServer`]: socat on 127.0.0.1 with a
/// self-signed certificate (made by openssl for `127.0.0.1`), passing each
/// connection on to the plain server. It runs in its own process group
/// (socat forks one process per connection), which [`TlsFront::signal`]
/// and drop act on as a whole. Stopped on drop.
pub struct TlsFront {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsFront {
    /// Serves `backend`'s port over TLS; waits until it accepts.
    pub fn start(backend: u16) -> TlsFront {
        let dir = tempfile::Builder::new()
            .prefix("diskmount-test-tls-")
            .tempdir()
            .unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let port = free_port();
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:127.0.0.1:{backend}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (apt-get install socat)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "socat did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsFront {
            port,
            child,
            _dir: dir,
        }
    }

    /// `https://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.port)
    }

    /// Sends `signal` (e.g. `KILL`, `STOP`, `CONT`) to socat and every
    /// connection it forked (its process group).
    pub fn signal(&self, signal: &str) {
        super::run(
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg("--")
                .arg(format!("-{}", self.child.id())),
        );
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        for signal in ["-CONT", "-KILL"] {
            let _ = Command::new("kill")
                .args([signal, "--", &group])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.wait();
    }
}

/// Debian's iSCSI target (`tgtd`, from `tgt`) on 127.0.0.1 only, with its
/// own control socket (`-C N`), serving one image as LUN 1 of target
/// [`TgtTarget::IQN`] to initiators on 127.0.0.1. Killed on drop, its
/// control socket removed.
pub struct TgtTarget {
    pub port: u16,
    control: u32,
    child: Child,
}

impl TgtTarget {
    /// The target's name.
    pub const IQN: &'static str = "iqn.2024-01.org.diskmount:test";

    pub fn start(image: &Path) -> TgtTarget {
        Self::start_with(image, None)
    }

    /// [`TgtTarget::start`] with CHAP: initiators must log in as `user`
    /// with `password` (an incoming account bound to the target). The
    /// password is on tgtadm's command line for the moment it runs: the
    /// test server's setup, over before any client starts.
    pub fn with_chap(image: &Path, user: &str, password: &str) -> TgtTarget {
        Self::start_with(image, Some((user, password)))
    }

    fn start_with(image: &Path, chap: Option<(&str, &str)>) -> TgtTarget {
        let port = free_port();
        // tgtd takes small control numbers only; one not in use.
        let control = (0..8000)
            .map(|i| 1000 + (port as u32 + i) % 8000)
            .find(|n| !Path::new(&format!("/var/run/tgtd/socket.{n}")).exists())
            .unwrap();
        let child = Command::new("tgtd")
            .args(["-f", "-C", &control.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tgtd (apt-get install tgt)");
        let mut t = TgtTarget {
            port,
            control,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tgtd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        t.adm(&[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "1",
            "-T",
            Self::IQN,
        ]);
        t.adm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            image.to_str().unwrap(),
        ]);
        t.adm(&[
            "--op",
            "bind",
            "--mode",
            "target",
            "--tid",
            "1",
            "-I",
            "127.0.0.1",
        ]);
        if let Some((user, password)) = chap {
            t.adm(&[
                "--op",
                "new",
                "--mode",
                "account",
                "--user",
                user,
                "--password",
                password,
            ]);
            t.adm(&[
                "--op", "bind", "--mode", "account", "--tid", "1", "--user", user,
            ]);
        }
        t
    }

    /// Runs tgtadm on this tgtd; a request that did not reach the daemon
    /// (its control socket not there yet: it can listen on the portal
    /// first) is sent again, for up to 5 s.
    fn adm(&mut self, args: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = Command::new("tgtadm")
                .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
                .args(args)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                return;
            }
            assert!(
                said.contains("to tgt daemon") && Instant::now() < deadline,
                "tgtadm {args:?}: {said}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to tgtd.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// `iscsi://127.0.0.1:PORT/IQN/LUN`.
    pub fn url(&self, iqn: &str, lun: u32) -> String {
        format!("iscsi://127.0.0.1:{}/{iqn}/{lun}", self.port)
    }

    /// `iscsi://USER@127.0.0.1:PORT/IQN/LUN?password-file=FILE`.
    pub fn chap_url(&self, user: &str, iqn: &str, lun: u32, file: &Path) -> String {
        format!(
            "iscsi://{user}@127.0.0.1:{}/{iqn}/{lun}?password-file={}",
            self.port,
            file.display()
        )
    }
}

impl Drop for TgtTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for end in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{end}", self.control));
        }
    }
}

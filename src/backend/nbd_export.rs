//! Checking an NBD server's export before qemu opens it: the fixed
//! newstyle handshake of the NBD protocol (the NBD project's
//! `doc/proto.md`), spoken by us with time bounds, as far as
//! `NBD_OPT_INFO` for the export (and `NBD_OPT_LIST` to name what the
//! server has when it lacks it), then `NBD_OPT_ABORT`.
//!
//! Why: qemu's nbd driver retries a refused export until its open
//! timeout runs out (15 s) and then says little; this check answers at
//! once, in one line naming the export and the server. A server this
//! check cannot judge (no fixed newstyle handshake, `NBD_OPT_INFO` not
//! supported) is left to qemu.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use log::debug;

use crate::error::{Error, ErrorKind, Result, Step};
use crate::image::{NbdServer, NbdUrl};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The old-style greeting's second magic (no export names).
const OLDSTYLE: u64 = 0x0000_4202_8186_1253;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_ERR: u32 = 1 << 31;
const REP_ERR_UNSUP: u32 = REP_ERR | 1;
const REP_ERR_POLICY: u32 = REP_ERR | 2;
const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
/// The most reply bytes read for one option (a long export list aside,
/// replies are tiny; qemu-nbd's error texts are short).
const MAX_REPLY: u32 = 64 * 1024;
/// The most replies to one option (`NBD_OPT_LIST` gives one an export).
const MAX_REPLIES: usize = 4096;
/// How many export names an error lists.
const LISTED: usize = 8;

/// What the server said of the export.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// It has it.
    Present,
    /// It has no export of that name; the names it lists (if it does).
    Unknown(Vec<String>),
    /// It wants TLS first.
    TlsRequired,
    /// It refuses by policy.
    Refused(String),
    /// This check cannot tell (old-style server, `NBD_OPT_INFO` not
    /// supported): qemu's open will.
    CannotTell,
}

/// Checks that `url`'s server answers and has its export, within
/// `timeout` for the connection and each answer; `image` is the URL as
/// errors name it.
///
/// # Errors
/// [`Step::Attach`]: nothing answers (connection refused, no such
/// socket), the server did not answer in time or is not an NBD server
/// ([`ErrorKind::Io`]), it has no such export ([`ErrorKind::NotFound`],
/// with the exports it lists), it wants TLS or refuses by policy
/// ([`ErrorKind::PermissionDenied`]).
pub(crate) fn check(url: &NbdUrl, image: &Path, timeout: Duration) -> Result<()> {
    let server = describe(&url.server);
    let io_err = |what: &str, e: std::io::Error| {
        let cause = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no answer within {timeout:?}")
            }
            std::io::ErrorKind::UnexpectedEof => "it closed the connection".to_string(),
            _ => e.to_string().to_lowercase(),
        };
        Error::refused(
            ErrorKind::Io,
            Step::Attach,
            image,
            format!("the NBD server at {server} did not answer the handshake ({what}: {cause})"),
        )
    };
    let nothing_answers = |e: std::io::Error| {
        Error::refused(
            ErrorKind::Io,
            Step::Attach,
            image,
            format!(
                "nothing answers at {server} ({})",
                e.to_string().to_lowercase()
            ),
        )
    };
    let verdict = match &url.server {
        NbdServer::Tcp(hp) => {
            let stream = connect_tcp(&hp.host, hp.port, timeout).map_err(nothing_answers)?;
            stream
                .set_read_timeout(Some(timeout))
                .and_then(|()| stream.set_write_timeout(Some(timeout)))
                .map_err(|e| io_err("socket timeouts", e))?;
            handshake(stream, &url.export)
        }
        NbdServer::Unix(path) => {
            let stream = UnixStream::connect(path).map_err(nothing_answers)?;
            stream
                .set_read_timeout(Some(timeout))
                .and_then(|()| stream.set_write_timeout(Some(timeout)))
                .map_err(|e| io_err("socket timeouts", e))?;
            handshake(stream, &url.export)
        }
    };
    let verdict = verdict.map_err(|(what, e)| io_err(what, e))?;
    debug!(
        "attach: NBD server {server}, export {:?}: {verdict:?}",
        url.export
    );
    let export = &url.export;
    match verdict {
        Verdict::Present | Verdict::CannotTell => Ok(()),
        Verdict::Unknown(names) => {
            let has = if names.is_empty() {
                String::new()
            } else {
                let mut shown: Vec<String> = names
                    .iter()
                    .take(LISTED)
                    .map(|n| format!("{n:?}"))
                    .collect();
                if names.len() > LISTED {
                    shown.push(format!("and {} more", names.len() - LISTED));
                }
                format!(" (it has {})", shown.join(", "))
            };
            Err(Error::refused(
                ErrorKind::NotFound,
                Step::Attach,
                image,
                format!("the NBD server at {server} has no export {export:?}{has}"),
            ))
        }
        Verdict::TlsRequired => Err(Error::refused(
            ErrorKind::PermissionDenied,
            Step::Attach,
            image,
            format!(
                "the NBD server at {server} requires TLS for export {export:?}, which diskmount \
                 does not set up"
            ),
        )),
        Verdict::Refused(why) => Err(Error::refused(
            ErrorKind::PermissionDenied,
            Step::Attach,
            image,
            format!("the NBD server at {server} refuses export {export:?}{why}"),
        )),
    }
}

/// The server as messages name it.
fn describe(server: &NbdServer) -> String {
    match server {
        NbdServer::Tcp(hp) => hp.to_string(),
        NbdServer::Unix(path) => format!("unix socket {}", path.display()),
    }
}

/// Connects to the first address of `host` that answers, each within
/// `timeout`.
fn connect_tcp(host: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

type Step2<T> = std::result::Result<T, (&'static str, std::io::Error)>;

/// The handshake over `s`, up to the verdict on `export`; ends politely
/// (`NBD_OPT_ABORT`) where the server is still listening.
fn handshake<S: Read + Write>(mut s: S, export: &str) -> Step2<Verdict> {
    let at = |what: &'static str| move |e: std::io::Error| (what, e);
    let magic = read_u64(&mut s).map_err(at("greeting"))?;
    let second = read_u64(&mut s).map_err(at("greeting"))?;
    if magic != NBDMAGIC {
        return Err((
            "greeting",
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an NBD server"),
        ));
    }
    if second == OLDSTYLE {
        return Ok(Verdict::CannotTell);
    }
    if second != IHAVEOPT {
        return Err((
            "greeting",
            std::io::Error::new(std::io::ErrorKind::InvalidData, "an unknown NBD greeting"),
        ));
    }
    let flags = read_u16(&mut s).map_err(at("greeting"))?;
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        // Plain newstyle: no option can fail without ending the session.
        return Ok(Verdict::CannotTell);
    }
    let client = u32::from(flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    s.write_all(&client.to_be_bytes())
        .map_err(at("client flags"))?;
    let mut info = Vec::with_capacity(6 + export.len());
    info.extend_from_slice(&(export.len() as u32).to_be_bytes());
    info.extend_from_slice(export.as_bytes());
    info.extend_from_slice(&0u16.to_be_bytes());
    send_option(&mut s, OPT_INFO, &info).map_err(at("NBD_OPT_INFO"))?;
    let (kind, text) = final_reply(&mut s, OPT_INFO).map_err(at("NBD_OPT_INFO"))?;
    let verdict = match kind {
        REP_ACK => Verdict::Present,
        REP_ERR_UNKNOWN => Verdict::Unknown(list(&mut s).unwrap_or_default()),
        REP_ERR_TLS_REQD => Verdict::TlsRequired,
        REP_ERR_POLICY => Verdict::Refused(said(&text)),
        REP_ERR_UNSUP => Verdict::CannotTell,
        k if k & REP_ERR != 0 => Verdict::Refused(format!(" (error {:#x}{})", k, said(&text))),
        _ => Verdict::CannotTell,
    };
    // Leave cleanly; the answer does not matter.
    let _ = send_option(&mut s, OPT_ABORT, &[]);
    let _ = final_reply(&mut s, OPT_ABORT);
    Ok(verdict)
}

/// `: TEXT` for a server's error text (printable characters only).
fn said(text: &[u8]) -> String {
    let t: String = String::from_utf8_lossy(text)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if t.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", t.trim())
    }
}

/// The export names the server lists (`NBD_OPT_LIST`); empty if it does
/// not.
fn list<S: Read + Write>(s: &mut S) -> std::io::Result<Vec<String>> {
    send_option(s, OPT_LIST, &[])?;
    let mut names = Vec::new();
    for _ in 0..MAX_REPLIES {
        let (kind, data) = reply(s, OPT_LIST)?;
        match kind {
            REP_SERVER if data.len() >= 4 => {
                let n = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
                if let Some(name) = data.get(4..4 + n) {
                    names.push(String::from_utf8_lossy(name).into_owned());
                }
            }
            REP_SERVER => {}
            _ => return Ok(names),
        }
    }
    Ok(names)
}

fn send_option<W: Write>(w: &mut W, option: u32, data: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(16 + data.len());
    buf.extend_from_slice(&IHAVEOPT.to_be_bytes());
    buf.extend_from_slice(&option.to_be_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_be_bytes());
    buf.extend_from_slice(data);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads replies to `option` up to the last one (skipping the
/// informational `NBD_REP_INFO`s): its type and data.
fn final_reply<R: Read>(r: &mut R, option: u32) -> std::io::Result<(u32, Vec<u8>)> {
    for _ in 0..MAX_REPLIES {
        let (kind, data) = reply(r, option)?;
        // NBD_REP_INFO (3) and other non-final, non-error replies.
        if kind == REP_ACK || kind & REP_ERR != 0 {
            return Ok((kind, data));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "too many replies",
    ))
}

/// One option reply: its type and data.
fn reply<R: Read>(r: &mut R, option: u32) -> std::io::Result<(u32, Vec<u8>)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    if read_u64(r)? != REPLY_MAGIC {
        return Err(bad("a bad option reply magic"));
    }
    if read_u32(r)? != option {
        return Err(bad("a reply to another option"));
    }
    let kind = read_u32(r)?;
    let len = read_u32(r)?;
    if len > MAX_REPLY {
        return Err(bad("an option reply too long"));
    }
    let mut data = vec![0; len as usize];
    r.read_exact(&mut data)?;
    Ok((kind, data))
}

fn read_u64<R: Read>(r: &mut R) -> std::io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn read_u32<R: Read>(r: &mut R) -> std::io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u16<R: Read>(r: &mut R) -> std::io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A scripted server: what it sends, and a sink for what we send.
    struct Script {
        from: Cursor<Vec<u8>>,
        to: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.from.read(b)
        }
    }

    impl Write for Script {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.to.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn greeting(flags: u16) -> Vec<u8> {
        let mut v = NBDMAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v
    }

    fn rep(v: &mut Vec<u8>, option: u32, kind: u32, data: &[u8]) {
        v.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
    }

    fn run(from: Vec<u8>, export: &str) -> (Step2<Verdict>, Vec<u8>) {
        let mut s = Script {
            from: Cursor::new(from),
            to: Vec::new(),
        };
        let v = handshake(&mut s, export);
        (v, s.to)
    }

    #[test]
    fn present_export() {
        let mut v = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        rep(&mut v, OPT_INFO, 3, &[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 3]);
        rep(&mut v, OPT_INFO, REP_ACK, &[]);
        rep(&mut v, OPT_ABORT, REP_ACK, &[]);
        let (verdict, sent) = run(v, "disk");
        assert_eq!(verdict.unwrap(), Verdict::Present);
        // Client flags, then NBD_OPT_INFO "disk" with no info requests.
        assert_eq!(&sent[..4], &3u32.to_be_bytes());
        assert_eq!(&sent[4..12], &IHAVEOPT.to_be_bytes());
        assert_eq!(&sent[12..16], &OPT_INFO.to_be_bytes());
        assert_eq!(&sent[16..20], &10u32.to_be_bytes());
        assert_eq!(&sent[20..24], &4u32.to_be_bytes());
        assert_eq!(&sent[24..28], b"disk");
        assert_eq!(&sent[28..30], &[0, 0]);
        assert_eq!(&sent[38..42], &OPT_ABORT.to_be_bytes());
    }

    #[test]
    fn unknown_export_lists_the_others() {
        let mut v = greeting(FLAG_FIXED_NEWSTYLE);
        rep(
            &mut v,
            OPT_INFO,
            REP_ERR_UNKNOWN,
            b"export 'nope' not present",
        );
        let mut a = 4u32.to_be_bytes().to_vec();
        a.extend_from_slice(b"disk");
        rep(&mut v, OPT_LIST, REP_SERVER, &a);
        let mut b = 2u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"b2desc");
        rep(&mut v, OPT_LIST, REP_SERVER, &b);
        rep(&mut v, OPT_LIST, REP_ACK, &[]);
        let (verdict, _) = run(v, "nope");
        assert_eq!(
            verdict.unwrap(),
            Verdict::Unknown(vec!["disk".into(), "b2".into()])
        );
    }

    #[test]
    fn what_cannot_be_told_is_left_to_qemu() {
        // Old style, plain newstyle, NBD_OPT_INFO unsupported.
        let mut old = NBDMAGIC.to_be_bytes().to_vec();
        old.extend_from_slice(&OLDSTYLE.to_be_bytes());
        assert_eq!(run(old, "x").0.unwrap(), Verdict::CannotTell);
        assert_eq!(run(greeting(0), "x").0.unwrap(), Verdict::CannotTell);
        let mut v = greeting(FLAG_FIXED_NEWSTYLE);
        rep(&mut v, OPT_INFO, REP_ERR_UNSUP, &[]);
        assert_eq!(run(v, "x").0.unwrap(), Verdict::CannotTell);
        let mut v = greeting(FLAG_FIXED_NEWSTYLE);
        rep(&mut v, OPT_INFO, REP_ERR_TLS_REQD, &[]);
        assert_eq!(run(v, "x").0.unwrap(), Verdict::TlsRequired);
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        let (v, _) = run(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(), "x");
        assert_eq!(v.unwrap_err().0, "greeting");
        let (v, _) = run(greeting(1)[..10].to_vec(), "x");
        assert_eq!(v.unwrap_err().1.kind(), std::io::ErrorKind::UnexpectedEof);
        let mut v = greeting(FLAG_FIXED_NEWSTYLE);
        v.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
        v.extend_from_slice(&OPT_INFO.to_be_bytes());
        v.extend_from_slice(&REP_ACK.to_be_bytes());
        v.extend_from_slice(&u32::MAX.to_be_bytes());
        let (v, _) = run(v, "x");
        assert_eq!(v.unwrap_err().1.kind(), std::io::ErrorKind::InvalidData);
    }
}

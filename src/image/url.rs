//! Network images named by URL ([`crate::Image::url`]): the parsed
//! [`Location`], one struct per scheme, with strict checks.
//!
//! The forms:
//! - `rbd://[USER@]POOL/IMAGE[@SNAP][?conf=PATH&keyring=PATH]`
//! - `nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`
//! - `http://HOST[:PORT]/PATH`, `https://HOST[:PORT]/PATH` (always read-only)
//! - `iscsi://[USER@]HOST[:PORT]/IQN/LUN[?password-file=PATH&initiator=IQN]`
//!
//! Components are percent-decoded. A URL never carries a secret: a password
//! in the user part is refused (passwords, keyrings and secrets are named by
//! file), so the display form of a [`Location`] is safe for logs, errors and
//! records. Names that could escape or confuse (control characters,
//! whitespace, `.` or `..` segments, relative paths) are refused.
//!
//! Parsing is our own rather than the `url` crate's: each scheme here puts
//! different things in the authority (Ceph's pool, an NBD server, none for
//! `nbd+unix`), `rbd`'s `@SNAP` lives in the path, and the checks are
//! scheme-specific; the generic parser would leave all of that to do and
//! bring in its IDNA tables.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result, Step};

/// The default port of an NBD server.
pub const NBD_DEFAULT_PORT: u16 = 10809;
/// The default port of an iSCSI target.
pub const ISCSI_DEFAULT_PORT: u16 = 3260;

/// Where a network image lives: the parsed URL of [`crate::Image::url`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Location {
    /// A Ceph RBD image (`rbd://`).
    Rbd(RbdUrl),
    /// An export of an NBD server (`nbd://`, `nbd+unix://`).
    Nbd(NbdUrl),
    /// A file on an HTTP(S) server (`http://`, `https://`), read-only.
    Http(HttpUrl),
    /// A LUN of an iSCSI target (`iscsi://`).
    Iscsi(IscsiUrl),
}

/// `rbd://[USER@]POOL/IMAGE[@SNAP][?conf=PATH&keyring=PATH]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RbdUrl {
    /// The Ceph user (`client.USER`'s `USER`); Ceph's default (`admin`)
    /// when `None`.
    pub user: Option<String>,
    /// The pool.
    pub pool: String,
    /// The image in the pool.
    pub image: String,
    /// A snapshot of the image (always mapped read-only).
    pub snap: Option<String>,
    /// The `ceph.conf` to use (absolute); Ceph's default when `None`.
    pub conf: Option<PathBuf>,
    /// The keyring file (absolute); Ceph's default when `None`.
    pub keyring: Option<PathBuf>,
}

/// A host and port on the network (a name, an IPv4 or an IPv6 address,
/// the latter kept without brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct HostPort {
    /// The host name or address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How to reach an NBD server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NbdServer {
    /// TCP (`nbd://HOST[:PORT]`, port 10809 by default).
    Tcp(HostPort),
    /// A unix socket (`nbd+unix://?socket=PATH`), absolute.
    Unix(PathBuf),
}

/// `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct NbdUrl {
    /// The server.
    pub server: NbdServer,
    /// The export name (never empty).
    pub export: String,
}

/// `http://HOST[:PORT]/PATH` or `https://HOST[:PORT]/PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct HttpUrl {
    /// `https`.
    pub secure: bool,
    /// The server; the port is 80 or 443 unless given.
    pub server: HostPort,
    /// The path and query as given (still percent-encoded, starting with
    /// `/`), as the server is asked for it.
    pub path: String,
    /// https: whether the server's certificate is checked against the
    /// system's CAs (always, unless the URL ends in `#sslverify=off`).
    pub verify_tls: bool,
}

/// The fragment of an `https://` URL that turns the certificate check off
/// (for a server with a self-signed certificate one trusts).
pub const INSECURE_FRAGMENT: &str = "sslverify=off";

impl HttpUrl {
    /// The URL to fetch, e.g. `https://127.0.0.1:8443/disk.qcow2`.
    pub fn to_url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.secure { "https" } else { "http" },
            self.server,
            self.path
        )
    }
}

/// `iscsi://[USER@]HOST[:PORT]/IQN/LUN[?password-file=PATH&initiator=IQN]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct IscsiUrl {
    /// The portal (port 3260 by default).
    pub portal: HostPort,
    /// The target's name (`iqn.…`, `eui.…` or `naa.…`).
    pub target: String,
    /// The logical unit.
    pub lun: u16,
    /// The CHAP user, if the target wants one.
    pub user: Option<String>,
    /// The file holding the CHAP password (absolute); needs `user`.
    pub password_file: Option<PathBuf>,
    /// The initiator name to log in as; a fixed diskmount one when `None`.
    pub initiator: Option<String>,
}

impl Location {
    /// Parses one of the URL forms of [`crate::Image::url`].
    ///
    /// # Errors
    /// [`Step::Open`], naming the URL (without any secret) and what is
    /// wrong with it.
    pub fn parse(url: &str) -> Result<Location> {
        let bad = |reason: String| Error::invalid(Step::Open, redact(url), reason);
        if let Some(c) = url.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad(format!(
                "the URL holds a control or space character ({c:?})"
            )));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(
                "not a URL (expected rbd://, nbd://, nbd+unix://, http://, https:// or iscsi://)"
                    .into(),
            ));
        };
        // The one fragment allowed (never sent to the server): an https://
        // URL that skips the certificate check.
        let (rest, insecure) = match rest.split_once('#') {
            Some((r, INSECURE_FRAGMENT)) if scheme.eq_ignore_ascii_case("https") => (r, true),
            Some(_) => {
                return Err(bad(format!(
                    "a URL fragment (#...) is not allowed (only #{INSECURE_FRAGMENT} on https://)"
                )));
            }
            None => (rest, false),
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let raw = Raw {
            authority,
            path,
            query,
        };
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "rbd" => parse_rbd(&raw).map(Location::Rbd),
            "nbd" => parse_nbd(&raw).map(Location::Nbd),
            "nbd+unix" => parse_nbd_unix(&raw).map(Location::Nbd),
            "http" | "https" => parse_http(&raw, scheme == "https")
                .map(|h| HttpUrl {
                    verify_tls: !insecure,
                    ..h
                })
                .map(Location::Http),
            "iscsi" => parse_iscsi(&raw).map(Location::Iscsi),
            other => Err(format!(
                "unknown scheme {other:?} (expected rbd, nbd, nbd+unix, http, https or iscsi)"
            )),
        }
        .map_err(bad)
    }

    /// The scheme's protocol, for messages: `rbd`, `nbd`, `http`, `https`
    /// or `iscsi`.
    pub fn protocol(&self) -> &'static str {
        match self {
            Location::Rbd(_) => "rbd",
            Location::Nbd(_) => "nbd",
            Location::Http(h) if h.secure => "https",
            Location::Http(_) => "http",
            Location::Iscsi(_) => "iscsi",
        }
    }

    /// Whether the image can only be read: HTTP(S), and an RBD snapshot.
    pub fn is_read_only(&self) -> bool {
        match self {
            Location::Http(_) => true,
            Location::Rbd(r) => r.snap.is_some(),
            _ => false,
        }
    }
}

/// The canonical URL: components percent-encoded where needed. Never holds
/// a secret (URLs with passwords are refused).
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Rbd(r) => {
                f.write_str("rbd://")?;
                if let Some(user) = &r.user {
                    write!(f, "{}@", encode(user))?;
                }
                write!(f, "{}/{}", encode(&r.pool), encode(&r.image))?;
                if let Some(snap) = &r.snap {
                    write!(f, "@{}", encode(snap))?;
                }
                let mut sep = '?';
                if let Some(conf) = &r.conf {
                    write!(f, "{sep}conf={}", encode_path(conf))?;
                    sep = '&';
                }
                if let Some(keyring) = &r.keyring {
                    write!(f, "{sep}keyring={}", encode_path(keyring))?;
                }
                Ok(())
            }
            Location::Nbd(n) => match &n.server {
                NbdServer::Tcp(hp) => write!(f, "nbd://{hp}/{}", encode_export(&n.export)),
                NbdServer::Unix(socket) => write!(
                    f,
                    "nbd+unix:///{}?socket={}",
                    encode_export(&n.export),
                    encode_path(socket)
                ),
            },
            Location::Http(h) if !h.verify_tls => write!(f, "{}#{INSECURE_FRAGMENT}", h.to_url()),
            Location::Http(h) => f.write_str(&h.to_url()),
            Location::Iscsi(i) => {
                f.write_str("iscsi://")?;
                if let Some(user) = &i.user {
                    write!(f, "{}@", encode(user))?;
                }
                write!(f, "{}/{}/{}", i.portal, encode(&i.target), i.lun)?;
                let mut sep = '?';
                if let Some(p) = &i.password_file {
                    write!(f, "{sep}password-file={}", encode_path(p))?;
                    sep = '&';
                }
                if let Some(init) = &i.initiator {
                    write!(f, "{sep}initiator={}", encode(init))?;
                }
                Ok(())
            }
        }
    }
}

/// A URL cut at its delimiters, nothing decoded yet.
struct Raw<'a> {
    authority: &'a str,
    /// Empty or starting with `/`.
    path: &'a str,
    query: Option<&'a str>,
}

type Parsed<T> = std::result::Result<T, String>;

fn parse_rbd(raw: &Raw) -> Parsed<RbdUrl> {
    const FORM: &str = "expected rbd://[USER@]POOL/IMAGE[@SNAP][?conf=PATH&keyring=PATH]";
    let (user, pool) = match raw.authority.rsplit_once('@') {
        Some((user, pool)) => (Some(user_name(user, "Ceph user")?), pool),
        None => (None, raw.authority),
    };
    if pool.is_empty() {
        return Err(format!("missing pool ({FORM})"));
    }
    if pool.contains(':') {
        return Err(format!("a pool name cannot hold ':' ({FORM})"));
    }
    let pool = name(&decode(pool)?, "pool")?;
    let path = raw.path.strip_prefix('/').unwrap_or("");
    if path.is_empty() {
        return Err(format!("missing image ({FORM})"));
    }
    if path.contains('/') {
        return Err(format!("too many path segments ({FORM})"));
    }
    let (image, snap) = match path.split_once('@') {
        Some((image, snap)) => (image, Some(snap)),
        None => (path, None),
    };
    if image.is_empty() {
        return Err(format!("missing image ({FORM})"));
    }
    let image = name(&decode(image)?, "image")?;
    let snap = match snap {
        Some("") => return Err(format!("empty snapshot name after '@' ({FORM})")),
        Some(s) => Some(name(&decode(s)?, "snapshot")?),
        None => None,
    };
    let mut url = RbdUrl {
        user,
        pool,
        image,
        snap,
        conf: None,
        keyring: None,
    };
    for (key, value) in query_pairs(raw.query)? {
        match key.as_str() {
            "conf" => set_once(&mut url.conf, file_path(&value, "conf")?, "conf")?,
            "keyring" => set_once(&mut url.keyring, file_path(&value, "keyring")?, "keyring")?,
            _ => return Err(format!("unknown parameter {key:?} ({FORM})")),
        }
    }
    Ok(url)
}

fn parse_nbd(raw: &Raw) -> Parsed<NbdUrl> {
    const FORM: &str = "expected nbd://HOST[:PORT]/EXPORT";
    let server = host_port(raw.authority, NBD_DEFAULT_PORT, FORM)?;
    if raw.query.is_some() {
        return Err(format!("nbd:// takes no parameters ({FORM})"));
    }
    let export = export(raw.path, FORM)?;
    Ok(NbdUrl {
        server: NbdServer::Tcp(server),
        export,
    })
}

fn parse_nbd_unix(raw: &Raw) -> Parsed<NbdUrl> {
    const FORM: &str = "expected nbd+unix:///EXPORT?socket=PATH";
    if !raw.authority.is_empty() {
        return Err(format!("nbd+unix takes no host ({FORM})"));
    }
    let export = export(raw.path, FORM)?;
    let mut socket = None;
    for (key, value) in query_pairs(raw.query)? {
        match key.as_str() {
            "socket" => set_once(&mut socket, file_path(&value, "socket")?, "socket")?,
            _ => return Err(format!("unknown parameter {key:?} ({FORM})")),
        }
    }
    let socket = socket.ok_or_else(|| format!("missing socket=PATH ({FORM})"))?;
    Ok(NbdUrl {
        server: NbdServer::Unix(socket),
        export,
    })
}

fn parse_http(raw: &Raw, secure: bool) -> Parsed<HttpUrl> {
    const FORM: &str = "expected http(s)://HOST[:PORT]/PATH";
    if raw.authority.contains('@') {
        return Err(format!(
            "credentials in an http(s) URL are not supported ({FORM})"
        ));
    }
    let server = host_port(raw.authority, if secure { 443 } else { 80 }, FORM)?;
    if raw.path.len() <= 1 {
        return Err(format!("missing path to the image ({FORM})"));
    }
    // Checked decoded; passed on as given.
    let decoded = decode(raw.path)?;
    check_segments(&decoded, "path")?;
    if let Some(q) = raw.query {
        check_text(&decode(q)?, "query")?;
    }
    let path = match raw.query {
        Some(q) => format!("{}?{q}", raw.path),
        None => raw.path.to_string(),
    };
    Ok(HttpUrl {
        secure,
        server,
        path,
        verify_tls: true,
    })
}

fn parse_iscsi(raw: &Raw) -> Parsed<IscsiUrl> {
    const FORM: &str = "expected iscsi://[USER@]HOST[:PORT]/IQN/LUN[?password-file=PATH]";
    let (user, authority) = match raw.authority.rsplit_once('@') {
        Some((user, rest)) => (Some(user_name(user, "iSCSI user")?), rest),
        None => (None, raw.authority),
    };
    let portal = host_port(authority, ISCSI_DEFAULT_PORT, FORM)?;
    let path = raw.path.strip_prefix('/').unwrap_or("");
    let mut segments = path.split('/');
    let target = match segments.next() {
        Some(t) if !t.is_empty() => iqn(&decode(t)?)?,
        _ => return Err(format!("missing target IQN ({FORM})")),
    };
    let lun = match segments.next() {
        Some(l) if !l.is_empty() => lun(l)?,
        _ => return Err(format!("missing LUN ({FORM})")),
    };
    if segments.next().is_some() {
        return Err(format!("too many path segments ({FORM})"));
    }
    let mut url = IscsiUrl {
        portal,
        target,
        lun,
        user,
        password_file: None,
        initiator: None,
    };
    for (key, value) in query_pairs(raw.query)? {
        match key.as_str() {
            "password-file" => set_once(
                &mut url.password_file,
                file_path(&value, "password-file")?,
                "password-file",
            )?,
            "initiator" => set_once(&mut url.initiator, iqn(&value)?, "initiator")?,
            _ => return Err(format!("unknown parameter {key:?} ({FORM})")),
        }
    }
    if url.password_file.is_some() && url.user.is_none() {
        return Err(format!("password-file needs a USER@ ({FORM})"));
    }
    Ok(url)
}

/// `HOST[:PORT]`, `[V6][:PORT]`.
fn host_port(authority: &str, default_port: u16, form: &str) -> Parsed<HostPort> {
    if authority.contains('@') {
        return Err(format!("a user is not allowed here ({form})"));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in the host ({form})"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("bad IPv6 address {v6:?} ({form})"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("junk after the IPv6 address ({form})"))?,
            ),
        };
        (v6.to_string(), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("missing host ({form})"));
    }
    if !host.contains(':')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(format!("bad host name {host:?} ({form})"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("bad port {p:?} (1 to 65535)")),
        },
    };
    Ok(HostPort { host, port })
}

/// The NBD export: the path after the first `/`, decoded.
fn export(path: &str, form: &str) -> Parsed<String> {
    let export = decode(path.strip_prefix('/').unwrap_or(""))?;
    if export.is_empty() {
        return Err(format!("missing export name ({form})"));
    }
    check_segments(&export, "export name")?;
    Ok(export)
}

/// A user name in the authority: decoded, no password.
fn user_name(raw: &str, what: &str) -> Parsed<String> {
    if raw.contains(':') {
        return Err(
            "a password in the URL is refused: name a file holding it instead (see docs/security.md)"
                .into(),
        );
    }
    let user = decode(raw)?;
    if user.is_empty() {
        return Err(format!("empty {what} before '@'"));
    }
    name(&user, what)
}

/// A single name (pool, image, snapshot, user): no `/`, `@`, `.` or `..`.
fn name(s: &str, what: &str) -> Parsed<String> {
    check_text(s, what)?;
    if s == "." || s == ".." {
        return Err(format!("the {what} name {s:?} is not allowed"));
    }
    if s.contains('/') || s.contains('@') {
        return Err(format!("the {what} name {s:?} cannot hold '/' or '@'"));
    }
    Ok(s.to_string())
}

/// No `.` or `..` segments, no control characters.
fn check_segments(s: &str, what: &str) -> Parsed<()> {
    check_text(s, what)?;
    if s.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("the {what} holds a '.' or '..' segment"));
    }
    Ok(())
}

fn check_text(s: &str, what: &str) -> Parsed<()> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("the {what} holds a control character ({c:?})"));
    }
    Ok(())
}

/// An absolute host path without `.` or `..` components.
fn file_path(s: &str, what: &str) -> Parsed<PathBuf> {
    check_text(s, what)?;
    let path = Path::new(s);
    if !path.is_absolute() {
        return Err(format!("{what}={s:?} must be an absolute path"));
    }
    if s.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{what}={s:?} holds a '.' or '..' component"));
    }
    debug_assert!(
        path.components()
            .all(|c| !matches!(c, Component::ParentDir))
    );
    Ok(path.to_path_buf())
}

fn iqn(s: &str) -> Parsed<String> {
    let ok_prefix = ["iqn.", "eui.", "naa."].iter().any(|p| s.starts_with(p));
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b':'));
    if !ok_prefix || !ok_chars || s.len() > 223 {
        return Err(format!(
            "bad iSCSI name {s:?} (iqn./eui./naa. followed by lower-case letters, digits, '.', '-', ':')"
        ));
    }
    Ok(s.to_string())
}

fn lun(s: &str) -> Parsed<u16> {
    match s.parse::<u16>() {
        Ok(n) if n < 16384 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("bad LUN {s:?} (a number from 0 to 16383)")),
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &str) -> Parsed<()> {
    if slot.is_some() {
        return Err(format!("parameter {key:?} given twice"));
    }
    *slot = Some(value);
    Ok(())
}

/// `a=b&c=d`, decoded (`+` is not a space here).
fn query_pairs(query: Option<&str>) -> Parsed<Vec<(String, String)>> {
    let Some(query) = query else {
        return Ok(Vec::new());
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("parameter {pair:?} has no '=VALUE'"))?;
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Percent-decoding into UTF-8.
fn decode(s: &str) -> Parsed<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// Percent-encodes all but the unreserved characters.
fn encode(s: &str) -> String {
    encode_keeping(s, b"")
}

fn encode_export(s: &str) -> String {
    encode_keeping(s, b"/")
}

fn encode_path(p: &Path) -> String {
    encode_keeping(&p.to_string_lossy(), b"/")
}

fn encode_keeping(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL as errors may name it: any password in the user part replaced
/// by `***`, control characters escaped.
pub(crate) fn redact(url: &str) -> PathBuf {
    let mut shown = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***@{host}")
            } else {
                format!("{user}@{host}")
            };
            shown = format!("{scheme}://{masked}{}", &rest[end..]);
        }
    }
    PathBuf::from(shown.escape_debug().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> Location {
        Location::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn refused(url: &str, want: &str) -> String {
        let e = Location::parse(url).expect_err(url).to_string();
        assert!(e.starts_with("open: "), "{url}: {e}");
        assert!(e.contains(want), "{url}: {e:?} lacks {want:?}");
        assert!(!e.contains('\n'), "{url}: {e:?}");
        e
    }

    #[test]
    fn rbd_forms() {
        let Location::Rbd(r) = ok("rbd://rbd/disk") else {
            panic!()
        };
        assert_eq!(
            (r.user, r.pool.as_str(), r.image.as_str()),
            (None, "rbd", "disk")
        );
        assert_eq!((r.snap, r.conf, r.keyring), (None, None, None));
        let l = ok("rbd://admin@vms/my%20disk@snap1?conf=/etc/ceph/ceph.conf&keyring=/k/ring");
        let Location::Rbd(r) = &l else { panic!() };
        assert_eq!(r.user.as_deref(), Some("admin"));
        assert_eq!(r.pool, "vms");
        assert_eq!(r.image, "my disk");
        assert_eq!(r.snap.as_deref(), Some("snap1"));
        assert_eq!(r.conf.as_deref(), Some(Path::new("/etc/ceph/ceph.conf")));
        assert_eq!(r.keyring.as_deref(), Some(Path::new("/k/ring")));
        assert_eq!(
            l.to_string(),
            "rbd://admin@vms/my%20disk@snap1?conf=/etc/ceph/ceph.conf&keyring=/k/ring"
        );
        assert_eq!(ok(&l.to_string()), l);
        assert_eq!(l.protocol(), "rbd");
        assert!(l.is_read_only(), "a snapshot");
        assert_eq!(ok("RBD://p/i"), ok("rbd://p/i"));
    }

    #[test]
    fn rbd_refusals() {
        refused("rbd:///img", "missing pool");
        refused("rbd://pool", "missing image");
        refused("rbd://pool/", "missing image");
        refused("rbd://pool/@snap", "missing image");
        refused("rbd://pool/img@", "empty snapshot");
        refused("rbd://pool/ns/img", "too many path segments");
        refused("rbd://pool/..", "not allowed");
        refused("rbd://%2E%2E/img", "not allowed");
        refused("rbd://pool/a%2Fb", "cannot hold");
        refused("rbd://pool/a%0Ab", "control character");
        refused("rbd://pool/img?conf=relative.conf", "absolute");
        refused("rbd://pool/img?keyring=/etc/../root/k", "'..'");
        refused("rbd://pool/img?conf=/a&conf=/b", "twice");
        refused("rbd://pool/img?mon_host=1.2.3.4", "unknown parameter");
        refused("rbd://pool/img?conf", "no '=VALUE'");
        refused("rbd://pool/img%zz", "percent escape");
        refused("rbd://pool/img%FF", "UTF-8");
        refused("rbd://@pool/img", "empty Ceph user");
        refused("rbd://pool:6789/img", "cannot hold ':'");
    }

    #[test]
    fn a_password_never_shows() {
        for url in [
            "rbd://admin:s3cr3t@pool/img",
            "iscsi://u:s3cr3t@127.0.0.1/iqn.2024-01.x:t/0",
            "https://u:s3cr3t@example.org/disk",
            "nbd://u:s3cr3t@127.0.0.1/e",
            "bogus://u:s3cr3t@h/x",
            "rbd://admin:s3cr3t@pool/img\n",
        ] {
            let e = Location::parse(url).expect_err(url).to_string();
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        refused("rbd://admin:pw@pool/img", "password in the URL is refused");
    }

    #[test]
    fn nbd_forms() {
        let l = ok("nbd://127.0.0.1/disk");
        let Location::Nbd(n) = &l else { panic!() };
        assert_eq!(
            n.server,
            NbdServer::Tcp(HostPort {
                host: "127.0.0.1".into(),
                port: NBD_DEFAULT_PORT
            })
        );
        assert_eq!(n.export, "disk");
        assert_eq!(l.to_string(), "nbd://127.0.0.1:10809/disk");
        let l = ok("nbd://[::1]:10810/a/b%20c");
        let Location::Nbd(n) = &l else { panic!() };
        assert_eq!(
            n.server,
            NbdServer::Tcp(HostPort {
                host: "::1".into(),
                port: 10810
            })
        );
        assert_eq!(n.export, "a/b c");
        assert_eq!(l.to_string(), "nbd://[::1]:10810/a/b%20c");
        assert_eq!(ok(&l.to_string()), l);
        let l = ok("nbd+unix:///exp?socket=/run/x/nbd.sock");
        let Location::Nbd(n) = &l else { panic!() };
        assert_eq!(n.server, NbdServer::Unix("/run/x/nbd.sock".into()));
        assert_eq!(n.export, "exp");
        assert_eq!(ok(&l.to_string()), l);
        assert_eq!(ok("nbd://localhost:1/e").protocol(), "nbd");
    }

    #[test]
    fn nbd_refusals() {
        refused("nbd://127.0.0.1", "missing export");
        refused("nbd://127.0.0.1/", "missing export");
        refused("nbd:///e", "missing host");
        refused("nbd://127.0.0.1:0/e", "bad port");
        refused("nbd://127.0.0.1:65536/e", "bad port");
        refused("nbd://127.0.0.1:+1/e", "bad port");
        refused("nbd://127.0.0.1:/e", "bad port");
        refused("nbd://127.0.0.1:x/e", "bad port");
        refused("nbd://[::1/e", "unclosed");
        refused("nbd://[zz]/e", "bad IPv6");
        refused("nbd://ho%73t/e", "bad host name");
        refused("nbd://127.0.0.1/../e", "'..'");
        refused("nbd://127.0.0.1/e?x=1", "no parameters");
        refused("nbd://u@127.0.0.1/e", "user is not allowed");
        refused("nbd+unix:///e", "missing socket");
        refused("nbd+unix:///?socket=/s", "missing export");
        refused("nbd+unix://host/e?socket=/s", "no host");
        refused("nbd+unix:///e?socket=s", "absolute");
        refused("nbd+unix:///e?socket=/a/../s", "'..'");
        refused("nbd+unix:///e?socket=/s&tls=1", "unknown parameter");
        refused("nbd://127.0.0.1/e#frag", "fragment");
    }

    #[test]
    fn http_forms() {
        let l = ok("https://127.0.0.1:8443/images/disk.qcow2?sig=a%2Fb");
        let Location::Http(h) = &l else { panic!() };
        assert!(h.secure);
        assert_eq!(h.server.port, 8443);
        assert_eq!(h.path, "/images/disk.qcow2?sig=a%2Fb");
        assert_eq!(
            l.to_string(),
            "https://127.0.0.1:8443/images/disk.qcow2?sig=a%2Fb"
        );
        assert!(l.is_read_only());
        assert_eq!(l.protocol(), "https");
        assert!(h.verify_tls);
        // The certificate check off: kept in the name, never sent.
        let l = ok("https://127.0.0.1:8443/d.raw?x=1#sslverify=off");
        let Location::Http(h) = &l else { panic!() };
        assert!(!h.verify_tls);
        assert_eq!(h.to_url(), "https://127.0.0.1:8443/d.raw?x=1");
        assert_eq!(
            l.to_string(),
            "https://127.0.0.1:8443/d.raw?x=1#sslverify=off"
        );
        assert_eq!(ok(&l.to_string()), l);
        refused("http://127.0.0.1/d.raw#sslverify=off", "fragment");
        refused("https://127.0.0.1/d.raw#sslverify=no", "fragment");
        let Location::Http(h) = ok("http://example.org/d%20.raw") else {
            panic!()
        };
        assert_eq!((h.secure, h.server.port), (false, 80));
        assert_eq!(h.to_url(), "http://example.org:80/d%20.raw");
        assert_eq!(ok("https://[::1]/x").to_string(), "https://[::1]:443/x");
    }

    #[test]
    fn http_refusals() {
        refused("http://127.0.0.1", "missing path");
        refused("http://127.0.0.1/", "missing path");
        refused("http://u@127.0.0.1/x", "credentials");
        refused("http://127.0.0.1/a/%2E%2E/b", "'..'");
        refused("http://127.0.0.1/a%0d%0aHost:x", "control character");
        refused("http://127.0.0.1/a?x=%0a", "control character");
        refused("http://127.0.0.1:99999/a", "bad port");
        refused("http://bad host/a", "control or space");
    }

    #[test]
    fn iscsi_forms() {
        let l = ok("iscsi://127.0.0.1/iqn.2024-01.org.example:disk1/1");
        let Location::Iscsi(i) = &l else { panic!() };
        assert_eq!(i.portal.port, ISCSI_DEFAULT_PORT);
        assert_eq!(i.target, "iqn.2024-01.org.example:disk1");
        assert_eq!(i.lun, 1);
        assert_eq!(
            l.to_string(),
            "iscsi://127.0.0.1:3260/iqn.2024-01.org.example%3Adisk1/1"
        );
        assert_eq!(ok(&l.to_string()), l);
        let l = ok(
            "iscsi://chap@[::1]:3261/iqn.2024-01.x:t/0?password-file=/etc/pw&initiator=iqn.2024-01.y:i",
        );
        let Location::Iscsi(i) = &l else { panic!() };
        assert_eq!(i.user.as_deref(), Some("chap"));
        assert_eq!(i.password_file.as_deref(), Some(Path::new("/etc/pw")));
        assert_eq!(i.initiator.as_deref(), Some("iqn.2024-01.y:i"));
        assert_eq!(ok(&l.to_string()), l);
    }

    #[test]
    fn iscsi_refusals() {
        refused("iscsi://127.0.0.1", "missing target");
        refused("iscsi://127.0.0.1/iqn.2024-01.x:t", "missing LUN");
        refused("iscsi://127.0.0.1/iqn.2024-01.x:t/", "missing LUN");
        refused("iscsi://127.0.0.1/iqn.2024-01.x:t/16384", "bad LUN");
        refused("iscsi://127.0.0.1/iqn.2024-01.x:t/-1", "bad LUN");
        refused("iscsi://127.0.0.1/iqn.2024-01.x:t/1/2", "too many");
        refused("iscsi://127.0.0.1/IQN.X/1", "bad iSCSI name");
        refused("iscsi://127.0.0.1/iqn.x%0A/1", "bad iSCSI name");
        refused("iscsi://127.0.0.1:70000/iqn.x/1", "bad port");
        refused(
            "iscsi://127.0.0.1/iqn.x/1?password-file=/p",
            "needs a USER@",
        );
        refused("iscsi://127.0.0.1/iqn.x/1?portal=2", "unknown parameter");
    }

    #[test]
    fn other_refusals() {
        refused("ftp://h/x", "unknown scheme \"ftp\"");
        refused("/tmp/disk.img", "not a URL");
        refused("nbd:/h/e", "not a URL");
        refused("", "not a URL");
        let e = refused("nbd://h/e\nx", "control or space");
        assert!(e.contains("\\n"), "{e}");
    }
}

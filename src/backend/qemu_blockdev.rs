//! qemu blockdev options for a network image ([`Location`]): the protocol
//! node qemu-storage-daemon (`--blockdev JSON`) or qemu-nbd
//! (`--image-opts`) opens, with I/O timeouts so that a dead or hanging
//! server gives bounded errors.
//!
//! Credentials never go on a command line: a password is handed to qemu
//! as `--object secret,id=..,file=PATH` (the file the URL names); a Ceph
//! key, read by us from the keyring, as a base64 secret object whose file
//! lives in a private `0700` directory that goes with the [`Blockdev`]
//! (qemu reads it once, when the object is made). The options hold no
//! secret, so they may be logged and seen in `/proc`.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::error::{ErrorKind, Result};
use crate::image::{Location, NbdServer};

/// The node name of the protocol node.
pub(crate) const PROTOCOL_NODE: &str = "proto0";

/// How long qemu waits for a server to answer a connection or a request
/// (curl's `timeout`, nbd's `open-timeout`, iSCSI's `timeout`), in seconds.
pub(crate) const IO_TIMEOUT_SECS: u64 = 15;

/// The initiator name diskmount logs in to an iSCSI target as, unless the
/// URL names one.
const DEFAULT_INITIATOR: &str = "iqn.2024-01.org.diskmount:initiator";

/// The protocol node of `location` and the objects it needs.
#[derive(Debug, Clone)]
pub(crate) struct Blockdev {
    /// The node's options (`node-name` [`PROTOCOL_NODE`]).
    pub(crate) node: Value,
    /// `--object` arguments (secrets by file).
    pub(crate) objects: Vec<String>,
    /// Environment variables the helper needs (`CEPH_ARGS` with librados'
    /// timeouts: qemu's rbd options have none). Never a secret.
    pub(crate) env: Vec<(&'static str, String)>,
    /// The unlinked file holding a secret of ours (the Ceph key), closed
    /// with the last clone of this value: once the helpers that read it
    /// have started.
    _secrets: Option<Arc<std::fs::File>>,
}

impl Blockdev {
    /// The options of `location` opened `read_only`.
    ///
    /// # Errors
    /// [`Step::Attach`]: the Ceph configuration or keyring of an RBD image
    /// cannot be read, or its key file cannot be written.
    pub(crate) fn of(location: &Location, read_only: bool) -> Result<Blockdev> {
        let mut objects = Vec::new();
        let mut secrets = None;
        let mut env = Vec::new();
        let mut node = match location {
            Location::Nbd(n) => {
                let server = match &n.server {
                    NbdServer::Tcp(hp) => json!({
                        "type": "inet", "host": hp.host, "port": hp.port.to_string()
                    }),
                    NbdServer::Unix(path) => json!({"type": "unix", "path": path}),
                };
                json!({
                    "driver": "nbd",
                    "server": server,
                    "export": n.export,
                    "open-timeout": IO_TIMEOUT_SECS,
                    "reconnect-delay": 0,
                })
            }
            Location::Http(h) => {
                let mut o = json!({
                    "driver": if h.secure { "https" } else { "http" },
                    "url": h.to_url(),
                    "timeout": IO_TIMEOUT_SECS,
                    // Small: a probe or inspect reads kilobytes, not megabytes.
                    "readahead": 4096,
                });
                if h.secure {
                    // Certificates are verified (the system's CAs) unless
                    // the URL says #sslverify=off.
                    o["sslverify"] = json!(h.verify_tls);
                }
                o
            }
            Location::Iscsi(i) => {
                let mut o = json!({
                    "driver": "iscsi",
                    "transport": "tcp",
                    "portal": i.portal.to_string(),
                    "target": i.target,
                    "lun": i.lun,
                    "initiator-name": i.initiator.clone()
                        .unwrap_or_else(|| DEFAULT_INITIATOR.into()),
                    "timeout": IO_TIMEOUT_SECS,
                });
                if let Some(user) = &i.user {
                    o["user"] = json!(user);
                }
                if let Some(file) = &i.password_file {
                    objects.push(secret_object("iscsi-secret0", file));
                    o["password-secret"] = json!("iscsi-secret0");
                }
                o
            }
            Location::Rbd(url) => {
                let (node, mut objs, key) = super::rbd::qemu_node(url)?;
                objects.append(&mut objs);
                secrets = Some(Arc::new(key));
                env.push(("CEPH_ARGS", ceph_args()));
                node
            }
        };
        let map: &mut Map<String, Value> = node.as_object_mut().expect("an object");
        map.insert("node-name".into(), json!(PROTOCOL_NODE));
        map.insert(
            "read-only".into(),
            json!(read_only || location.is_read_only()),
        );
        Ok(Blockdev {
            node,
            objects,
            env,
            _secrets: secrets,
        })
    }

    /// The node as `--blockdev` JSON.
    pub(crate) fn json(&self) -> String {
        self.node.to_string()
    }

    /// The node as dotted `key=value` pairs under `prefix` (e.g. `file.`),
    /// commas escaped, for qemu-nbd's `--image-opts`.
    pub(crate) fn dotted(&self, prefix: &str) -> String {
        let mut out = Vec::new();
        let mut node = self.node.clone();
        if let Some(map) = node.as_object_mut() {
            map.remove("node-name");
        }
        flatten(&node, prefix, &mut out);
        out.join(",")
    }
}

/// What can be checked of `location`'s server before a qemu helper opens
/// it, quickly and with one clear line if it fails: an NBD server must
/// answer the handshake and have the export ([`super::nbd_export`]),
/// where qemu's nbd driver would retry a missing export for its whole
/// open timeout. `image` is the URL as errors name it.
///
/// # Errors
/// [`Step::Attach`]: see [`super::nbd_export::check`].
pub(crate) fn check_server(location: &Location, image: &std::path::Path) -> Result<()> {
    match location {
        Location::Nbd(n) => {
            super::nbd_export::check(n, image, std::time::Duration::from_secs(IO_TIMEOUT_SECS))
        }
        _ => Ok(()),
    }
}

/// `CEPH_ARGS` for librados in the helper: the caller's own, then time
/// bounds on connecting (`client_mount_timeout`) and on every monitor and
/// OSD request, so that a dead or stopped cluster fails I/O with an error
/// instead of hanging it (librados' defaults wait for ever, or 5 minutes).
fn ceph_args() -> String {
    let mut args = std::env::var("CEPH_ARGS").unwrap_or_default();
    for option in [
        "client_mount_timeout",
        "rados_mon_op_timeout",
        "rados_osd_op_timeout",
    ] {
        args.push_str(&format!(" --{option}={IO_TIMEOUT_SECS}"));
    }
    args.trim_start().to_string()
}

/// What qemu's protocol driver said when it could not open `location`
/// (the daemon's standard error), as a clear reason with its kind: the
/// object the server is missing, or the credential it refused. `None`
/// for what is not recognised (the caller keeps the daemon's own words).
pub(crate) fn explain_open_failure(
    location: &Location,
    stderr: &str,
) -> Option<(ErrorKind, String)> {
    // qemu prints `PROG: --blockdev {JSON}: CAUSE`; the JSON (no secret
    // in it) is long and says nothing the URL does not.
    let line = stderr.lines().find(|l| l.contains("--blockdev"))?;
    let cause = line
        .rfind("}: ")
        .map(|at| &line[at + 3..])
        .unwrap_or(line)
        .trim();
    explain_cause(location, cause)
}

/// [`explain_open_failure`] for qemu-nbd started with `--image-opts
/// OPTS`, which prints `qemu-nbd: Failed to blk_new_open 'OPTS': CAUSE`.
pub(crate) fn explain_image_opts_failure(
    location: &Location,
    stderr: &str,
    opts: &str,
) -> Option<(ErrorKind, String)> {
    let prefix = format!("Failed to blk_new_open '{opts}': ");
    let cause = stderr.lines().find_map(|l| {
        let at = l.find(&prefix)?;
        Some(l[at + prefix.len()..].trim())
    })?;
    explain_cause(location, cause)
}

/// What `cause`, the reason qemu's protocol driver gave for not opening
/// `location`, means, with its kind; `None` for what is not recognised.
fn explain_cause(location: &Location, cause: &str) -> Option<(ErrorKind, String)> {
    let driver = location.protocol();
    let said = format!("(qemu's {driver} driver: {cause})");
    match location {
        Location::Rbd(r) => {
            let user = r.user.as_deref().unwrap_or("admin");
            let what = format!("{}/{}", r.pool, r.image);
            if cause.starts_with("error connecting: Permission denied") {
                Some((
                    ErrorKind::PermissionDenied,
                    format!("the cluster refused the key of client.{user} for {what} {said}"),
                ))
            } else if cause.starts_with("error opening pool") && cause.contains("No such file") {
                Some((
                    ErrorKind::NotFound,
                    format!("the cluster has no pool {} {said}", r.pool),
                ))
            } else if cause.starts_with("error reading header") && cause.contains("No such file") {
                let reason = match &r.snap {
                    Some(snap) => format!(
                        "the cluster has no image {} in pool {}, or no snapshot {snap} of {what} {said}",
                        r.image, r.pool
                    ),
                    None => format!(
                        "the cluster has no image {} in pool {} {said}",
                        r.image, r.pool
                    ),
                };
                Some((ErrorKind::NotFound, reason))
            } else if cause.starts_with("error connecting") {
                Some((
                    ErrorKind::Io,
                    format!("no answer from the cluster's monitors for {what} {said}"),
                ))
            } else {
                None
            }
        }
        Location::Http(h) => {
            let tls = ["certificate", "SSL", "TLS", "ssl", "tls"];
            if h.secure && tls.iter().any(|w| cause.contains(w)) {
                Some((
                    ErrorKind::PermissionDenied,
                    format!(
                        "the server's TLS certificate was not accepted (self-signed, expired, \
                         for another name, or from a CA this system does not trust); if you \
                         trust this server, end the URL with #{} {said}",
                        crate::image::url::INSECURE_FRAGMENT
                    ),
                ))
            } else if cause.contains("Connection refused") || cause.contains("Couldn't connect") {
                Some((
                    ErrorKind::Io,
                    format!("nothing answers at {} {said}", h.server),
                ))
            } else {
                None
            }
        }
        Location::Iscsi(i) => {
            if cause.contains("LOGICAL_UNIT_NOT_SUPPORTED") {
                Some((
                    ErrorKind::NotFound,
                    format!("the target {} has no LUN {} {said}", i.target, i.lun),
                ))
            } else if cause.contains("Target not found") {
                Some((
                    ErrorKind::NotFound,
                    format!("the portal {} has no target {} {said}", i.portal, i.target),
                ))
            } else if cause.contains("Authentication failure")
                || cause.contains("Authorization failure")
            {
                Some((
                    ErrorKind::PermissionDenied,
                    format!(
                        "the target {} refused the login (user or password) {said}",
                        i.target
                    ),
                ))
            } else if cause.contains("Connection refused")
                || cause.contains("reconnect")
                || cause.contains("iscsi_service failed")
            {
                Some((
                    ErrorKind::Io,
                    format!(
                        "nothing answers at {} (or it closed the connection) {said}",
                        i.portal
                    ),
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The network image a qemu-nbd serves, read back from its command line
/// (adoption, cleanup): the protocol node under the `file.` prefix of its
/// `--image-opts` string, as the [`Location`] it was made from. `objects`
/// are its `--object` arguments (an iSCSI password's file is named there).
/// The URL it gives holds no secret, as none is in the options: an RBD
/// keyring, which diskmount reads itself, is not named. `None` if the
/// options are not a protocol node of [`Blockdev::of`].
pub(crate) fn location_of_image_opts(opts: &str, objects: &[String]) -> Option<Location> {
    use crate::image::url::{HostPort, HttpUrl, IscsiUrl, NbdUrl, RbdUrl};
    let pairs = qemu_pairs(opts);
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.strip_prefix("file.") == Some(key))
            .map(|(_, v)| v.clone())
    };
    let location = match get("driver")?.as_str() {
        "nbd" => {
            let server = match get("server.type")?.as_str() {
                "inet" => NbdServer::Tcp(HostPort {
                    host: get("server.host")?,
                    port: get("server.port")?.parse().ok()?,
                }),
                "unix" => NbdServer::Unix(get("server.path")?.into()),
                _ => return None,
            };
            Location::Nbd(NbdUrl {
                server,
                export: get("export")?,
            })
        }
        "rbd" => Location::Rbd(RbdUrl {
            // Ceph's default user is left out, as a URL without one says it.
            user: get("user").filter(|u| u != "admin"),
            pool: get("pool")?,
            image: get("image")?,
            snap: get("snapshot"),
            conf: get("conf").map(Into::into),
            keyring: None,
        }),
        driver @ ("http" | "https") => {
            let Location::Http(h) = Location::parse(&get("url")?).ok()? else {
                return None;
            };
            Location::Http(HttpUrl {
                secure: driver == "https",
                verify_tls: get("sslverify").as_deref() != Some("false"),
                ..h
            })
        }
        "iscsi" => {
            let portal = match Location::parse(&format!("nbd://{}/x", get("portal")?)).ok()? {
                Location::Nbd(NbdUrl {
                    server: NbdServer::Tcp(hp),
                    ..
                }) => hp,
                _ => return None,
            };
            let secret = get("password-secret");
            let password_file = secret.and_then(|id| {
                objects.iter().find_map(|o| {
                    let pairs = qemu_pairs(o);
                    let has = |k: &str, v: &str| pairs.iter().any(|(a, b)| a == k && b == v);
                    (pairs.first().is_some_and(|(k, _)| k == "secret") && has("id", &id))
                        .then(|| pairs.iter().find(|(k, _)| k == "file"))
                        .flatten()
                        .map(|(_, f)| f.into())
                })
            });
            Location::Iscsi(IscsiUrl {
                portal,
                target: get("target")?,
                lun: get("lun")?.parse().ok()?,
                user: get("user"),
                password_file,
                initiator: get("initiator-name").filter(|i| i != DEFAULT_INITIATOR),
            })
        }
        _ => return None,
    };
    // What a URL could not say is not a location of ours.
    Location::parse(&location.to_string()).ok()
}

/// qemu's `key=value,key=value` option syntax (`,,` an escaped comma); a
/// leading word without `=` (an object's type) is a key with no value.
fn qemu_pairs(s: &str) -> Vec<(String, String)> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                items.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    items
        .into_iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (item, String::new()),
        })
        .collect()
}

/// `secret,id=ID,file=PATH`: qemu reads the secret from the file.
fn secret_object(id: &str, file: &std::path::Path) -> String {
    format!(
        "secret,id={id},format=raw,file={}",
        file.to_string_lossy().replace(',', ",,")
    )
}

fn flatten(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(v, &format!("{prefix}{k}."), out);
            }
        }
        _ => {
            let key = prefix.trim_end_matches('.');
            let value = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push(format!("{key}={}", value.replace(',', ",,")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(url: &str) -> Blockdev {
        Blockdev::of(&Location::parse(url).unwrap(), false).unwrap()
    }

    #[test]
    fn nbd_options() {
        let b = of("nbd://127.0.0.1:10810/disk");
        assert_eq!(b.node["driver"], "nbd");
        assert_eq!(b.node["server"]["port"], "10810");
        assert_eq!(b.node["export"], "disk");
        assert_eq!(b.node["node-name"], PROTOCOL_NODE);
        let d = b.dotted("file.");
        assert!(d.contains("file.server.host=127.0.0.1"), "{d}");
        assert!(!d.contains("node-name"), "{d}");
        let b = of("nbd+unix:///e?socket=/run/a,b.sock");
        assert_eq!(b.node["server"]["type"], "unix");
        assert!(b.dotted("").contains("server.path=/run/a,,b.sock"));
    }

    #[test]
    fn http_is_read_only_and_verifies_tls() {
        let b = of("https://127.0.0.1:8443/d.qcow2");
        assert_eq!(b.node["driver"], "https");
        assert_eq!(b.node["read-only"], true);
        assert_eq!(b.node["sslverify"], true);
        assert_eq!(b.node["url"], "https://127.0.0.1:8443/d.qcow2");
        let b = of("https://127.0.0.1:8443/d.qcow2#sslverify=off");
        assert_eq!(b.node["sslverify"], false);
        assert_eq!(b.node["url"], "https://127.0.0.1:8443/d.qcow2");
    }

    #[test]
    fn qemu_nbd_open_failures_are_explained() {
        let location = Location::parse("rbd://bob@pool/img").unwrap();
        let opts = "driver=raw,file.driver=rbd,file.pool=pool";
        let stderr = format!(
            "qemu-nbd: Failed to blk_new_open '{opts}': error connecting: Permission denied\n"
        );
        let (kind, reason) = explain_image_opts_failure(&location, &stderr, opts).unwrap();
        assert_eq!(kind, ErrorKind::PermissionDenied);
        assert!(reason.contains("refused the key of client.bob"), "{reason}");
        assert!(explain_image_opts_failure(&location, "qemu-nbd: other\n", opts).is_none());
    }

    /// Adoption reads the URL back from qemu-nbd's `--image-opts`: the
    /// same location for every protocol, no secret in it.
    #[test]
    fn image_opts_give_the_url_back() {
        for url in [
            "nbd://127.0.0.1:10810/disk",
            "nbd://[::1]:10809/a/b%20c",
            "nbd+unix:///e?socket=/run/a,b.sock",
            "https://127.0.0.1:8443/d.qcow2?x=1#sslverify=off",
            "http://127.0.0.1:8080/d.raw",
            "iscsi://127.0.0.1:3261/iqn.2024-01.x:t/1",
            "iscsi://u@127.0.0.1:3260/iqn.2024-01.x:t/0?password-file=/etc/p,w&initiator=iqn.2024-01.y:i",
        ] {
            let location = Location::parse(url).unwrap();
            let b = Blockdev::of(&location, false).unwrap();
            let opts = format!("driver=raw,{}", b.dotted("file."));
            assert_eq!(
                location_of_image_opts(&opts, &b.objects),
                Some(location),
                "{opts}"
            );
        }
        // RBD (made here by hand: Blockdev::of reads a keyring).
        let opts = "driver=qcow2,file.driver=rbd,file.pool=vms,file.image=my,,disk,\
                    file.user=admin,file.conf=/etc/ceph/ceph.conf,file.key-secret=rbd-secret0,\
                    file.snapshot=s1";
        assert_eq!(
            location_of_image_opts(opts, &[]).unwrap().to_string(),
            "rbd://vms/my%2Cdisk@s1?conf=/etc/ceph/ceph.conf"
        );
        let opts = "driver=raw,file.driver=rbd,file.pool=p,file.image=i,file.user=bob";
        assert_eq!(
            location_of_image_opts(opts, &[]).unwrap().to_string(),
            "rbd://bob@p/i"
        );
        for other in [
            "driver=raw,file.driver=file,file.filename=/x",
            "/var/lib/disk.img",
            "driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=h",
            "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=rel,file.export=e",
        ] {
            assert_eq!(location_of_image_opts(other, &[]), None, "{other}");
        }
    }

    #[test]
    fn iscsi_password_goes_by_file() {
        let b = of("iscsi://u@127.0.0.1/iqn.2024-01.x:t/1?password-file=/etc/pw");
        assert_eq!(b.node["password-secret"], "iscsi-secret0");
        assert_eq!(
            b.objects,
            ["secret,id=iscsi-secret0,format=raw,file=/etc/pw"]
        );
    }
}

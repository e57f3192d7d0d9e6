//! qemu blockdev options for a network image ([`Location`]): the protocol
//! node qemu-storage-daemon (`--blockdev JSON`) or qemu-nbd
//! (`--image-opts`) opens, with I/O timeouts so that a dead or hanging
//! server gives bounded errors.
//!
//! Credentials never go on a command line: a password is handed to qemu
//! as `--object secret,id=..,file=PATH` (the file the URL names), a Ceph
//! keyring by its path in the options. The options hold no secret, so they
//! may be logged and seen in `/proc`.

use serde_json::{Map, Value, json};

use crate::error::{Error, ErrorKind, Result, Step};
use crate::image::{Location, NbdServer};

/// The node name of the protocol node.
pub(crate) const PROTOCOL_NODE: &str = "proto0";

/// How long qemu waits for a server to answer a connection or a request
/// (curl's `timeout`, nbd's `open-timeout`, iSCSI's `timeout`), in seconds.
pub(crate) const IO_TIMEOUT_SECS: u64 = 15;

/// The protocol node of `location` and the objects it needs.
#[derive(Debug, Clone)]
pub(crate) struct Blockdev {
    /// The node's options (`node-name` [`PROTOCOL_NODE`]).
    pub(crate) node: Value,
    /// `--object` arguments (secrets by file).
    pub(crate) objects: Vec<String>,
}

impl Blockdev {
    /// The options of `location` opened `read_only`.
    ///
    /// # Errors
    /// [`Step::Attach`] for a protocol that needs what is not built yet.
    pub(crate) fn of(location: &Location, read_only: bool) -> Result<Blockdev> {
        let mut objects = Vec::new();
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
                    // Certificates are always verified (the system's CAs).
                    o["sslverify"] = json!(true);
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
                        .unwrap_or_else(|| "iqn.2024-01.org.diskmount:initiator".into()),
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
            // rbd16: the librbd protocol node (pool, image, snapshot, user,
            // conf, key-secret by file) goes here.
            Location::Rbd(_) => {
                return Err(Error::refused(
                    ErrorKind::Unsupported,
                    Step::Attach,
                    location.to_string(),
                    "qemu's rbd driver is not wired up yet; use the Rbd backend",
                ));
            }
        };
        let map: &mut Map<String, Value> = node.as_object_mut().expect("an object");
        map.insert("node-name".into(), json!(PROTOCOL_NODE));
        map.insert(
            "read-only".into(),
            json!(read_only || location.is_read_only()),
        );
        Ok(Blockdev { node, objects })
    }

    /// The node as `--blockdev` JSON.
    pub(crate) fn json(&self) -> String {
        self.node.to_string()
    }

    /// The node as dotted `key=value` pairs under `prefix` (e.g. `file.`),
    /// commas escaped, for qemu-nbd's `--image-opts`.
    #[allow(dead_code)] // for qemu-nbd --image-opts (the Nbd backend's URL images)
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

/// `secret,id=ID,file=PATH`: qemu reads the secret from the file.
fn secret_object(id: &str, file: &std::path::Path) -> String {
    format!(
        "secret,id={id},format=raw,file={}",
        file.to_string_lossy().replace(',', ",,")
    )
}

#[allow(dead_code)]
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

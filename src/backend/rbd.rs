//! [`Rbd`]: Ceph RBD images through the kernel's rbd driver (krbd).
//!
//! Attach writes one line to `/sys/bus/rbd/add_single_major`: the
//! monitors (from the image's `ceph.conf`), the options (user, the key as
//! `secret=`, read-only for snapshots, the request and mount timeouts), the
//! pool, the image and the snapshot. The key is read by diskmount from the
//! keyring file and goes only into that write: never on a command line,
//! into a log, an error or a record. The new `/dev/rbdN` then goes on like
//! any block device; release closes it and writes `N` to
//! `/sys/bus/rbd/remove_single_major`, within a bound.
//!
//! A hung cluster cannot hang the device without end: `osd_request_timeout`
//! fails I/O that got no answer, and `mount_timeout` bounds the map itself
//! and the unmap's goodbye to the cluster. Both are the attach's
//! [`AttachOptions::io_timeout`] (whole seconds, at least one; 30 s by
//! default), and the unmap's own bound follows from it (three of them and
//! 15 s, from what the kernel took in the VM lane).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{debug, info, warn};
use nix::libc;

use super::ceph_conf::{self, DEFAULT_CONF};
use super::device::{Core, Found, open_node};
use super::{Backend, BackendKind, Device, sealed};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::image::{Format, Image, ImageKind, Location, RbdUrl};
use crate::options::AttachOptions;
use crate::retry::poll_until;
use crate::sys::block as blk;
use crate::sys::flock::{Lock, flock};

/// Where the kernel's rbd driver lives in sysfs.
const BUS: &str = "/sys/bus/rbd";

/// How long an rbd request may wait for the cluster before it fails, and
/// how long mapping (and the unmap's goodbye) may wait for the monitors:
/// `io_timeout` in whole seconds, at least one (the kernel's options take
/// seconds).
fn cluster_timeout(io_timeout: Duration) -> u64 {
    io_timeout.as_secs().max(1)
}

/// The options of a mapping (without the key): the user, the cluster
/// timeout `timeout_s` for requests and the monitors, the messenger mode,
/// read-only.
fn kernel_options(user: &str, timeout_s: u64, ms_mode: Option<&str>, read_only: bool) -> String {
    let mut opts = format!("name={user},osd_request_timeout={timeout_s},mount_timeout={timeout_s}");
    if let Some(mode) = ms_mode {
        opts.push_str(&format!(",ms_mode={mode}"));
    }
    if read_only {
        opts.push_str(",read_only");
    }
    opts
}

/// How long the unmap may take for a device mapped with `cluster_timeout`
/// seconds. With the OSD stopped, the kernel's goodbye (the watch's
/// removal and the requests behind it, each bounded by the timeouts)
/// took about 2 x timeout + 10 s in the VM lane (20.4 s at 5 s, and it
/// was done when a 30 s bound ran out at 10 s;
/// `kernel_lane::krbd_io_timeout_bounds_a_frozen_osd`): one more timeout
/// and 5 s on top are the slack for a slow machine.
fn unmap_bound(cluster_timeout: u64) -> Duration {
    Duration::from_secs(3 * cluster_timeout + 15)
}

/// The kernel's rbd driver: RBD images (`rbd://` URLs, raw) mapped as
/// `/dev/rbdN`; snapshots read-only. Needs a kernel with `CONFIG_BLK_DEV_RBD`
/// (Debian's has it as a module); elsewhere use [`super::Fuse`] (librbd in
/// qemu-storage-daemon).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rbd;

impl sealed::Sealed for Rbd {}

impl Backend for Rbd {
    const NAME: &'static str = "rbd";
    type Device = RbdDevice;
}

/// Pool, image and snapshot of a mapping, as the kernel shows them in
/// `/sys/bus/rbd/devices/N/{pool,name,current_snap}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) pool: String,
    pub(crate) image: String,
    /// `None`: the image itself (the kernel shows `-`).
    pub(crate) snap: Option<String>,
}

impl Spec {
    /// What the kernel says device `id` maps.
    pub(crate) fn of(id: u32) -> Option<Spec> {
        let dir = Path::new(BUS).join("devices").join(id.to_string());
        let read = |a: &str| {
            std::fs::read_to_string(dir.join(a))
                .ok()
                .map(|s| s.trim_end_matches('\n').to_string())
        };
        let snap = read("current_snap")?;
        Some(Spec {
            pool: read("pool")?,
            image: read("name")?,
            snap: (snap != "-").then_some(snap),
        })
    }

    /// The `rbd://POOL/IMAGE[@SNAP]` name of an adopted mapping.
    fn url(&self) -> PathBuf {
        let snap = self
            .snap
            .as_ref()
            .map(|s| format!("@{s}"))
            .unwrap_or_default();
        PathBuf::from(format!("rbd://{}/{}{snap}", self.pool, self.image))
    }
}

/// A mapped `/dev/rbdN`, unmapped at release.
#[derive(Debug)]
pub struct RbdDevice {
    core: Core,
    /// The kernel's device id (`N` of `/sys/bus/rbd/devices/N`).
    id: u32,
    spec: Spec,
    /// Unmapped at release (false for a device another process mapped and
    /// handed over, which [`sealed::Ops::disarm`] leaves).
    mapped: bool,
    /// The cluster timeout it was mapped with, in seconds
    /// ([`cluster_timeout`]); the default's for an adopted device.
    timeout_s: u64,
}

impl Device for RbdDevice {}

/// Whether this kernel has the rbd driver: loaded, or loadable (then it
/// is loaded).
pub fn available() -> bool {
    crate::kernel::module::available("rbd", &[], &Path::new(BUS).join("add_single_major"))
}

/// The user, the Ceph configuration (its path, parsed) and the key of `url`: from its
/// `conf=` and `keyring=` files, or the defaults (`/etc/ceph`, user
/// `admin`), each read with a size bound.
fn credentials(url: &RbdUrl) -> Result<(&str, PathBuf, ceph_conf::Conf, String)> {
    let user = url.user.as_deref().unwrap_or("admin");
    let conf_path = url
        .conf
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONF));
    let conf_text = ceph_conf::read_limited(&conf_path, "the Ceph configuration", Step::Attach)?;
    let conf = ceph_conf::parse_conf(&conf_text, user, &conf_path)?;
    let keyring = ceph_conf::keyring_path(url.keyring.as_deref(), &conf, user);
    let key = ceph_conf::parse_key(
        &ceph_conf::read_limited(&keyring, "the keyring", Step::Attach)?,
        user,
        &keyring,
    )?;
    Ok((user, conf_path, conf, key))
}

/// The device ids the kernel has now.
fn ids() -> Vec<u32> {
    std::fs::read_dir(Path::new(BUS).join("devices"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What a failed write to `add_single_major` means, by its errno
/// (`timeout_s`: the `mount_timeout` it was written with).
fn map_error(errno: i32, url: &RbdUrl, timeout_s: u64) -> (ErrorKind, String) {
    let what = format!(
        "{}/{}{}",
        url.pool,
        url.image,
        url.snap
            .as_ref()
            .map(|s| format!("@{s}"))
            .unwrap_or_default()
    );
    match errno {
        libc::ENOENT => (
            ErrorKind::NotFound,
            format!("the cluster has no pool, image or snapshot {what} (ENOENT)"),
        ),
        libc::EACCES | libc::EPERM | libc::EKEYREJECTED => (
            ErrorKind::PermissionDenied,
            format!(
                "the cluster refused the key of client.{} for {what}",
                url.user.as_deref().unwrap_or("admin")
            ),
        ),
        libc::ETIMEDOUT | libc::EIO => (
            ErrorKind::Io,
            format!("no answer from the cluster's monitors within {timeout_s} s for {what}"),
        ),
        e => (
            ErrorKind::Io,
            format!(
                "the kernel's rbd driver did not map {what}: {}",
                std::io::Error::from_raw_os_error(e)
            ),
        ),
    }
}

fn attach(image: &Image, options: &AttachOptions) -> Result<RbdDevice> {
    let path = image.path();
    let url = match (image.kind(), image.location()) {
        (ImageKind::Url, Some(Location::Rbd(url))) => url,
        _ => {
            return Err(Error::refused(
                ErrorKind::Unsupported,
                Step::Attach,
                path,
                "the rbd backend maps Ceph RBD images (rbd:// URLs)",
            ));
        }
    };
    if image.format() != Format::Raw {
        return Err(Error::refused(
            ErrorKind::Unsupported,
            Step::Attach,
            path,
            format!(
                "the kernel's rbd driver serves raw images; a {} image on RBD needs the Fuse \
                 or Nbd backend",
                image.format()
            ),
        ));
    }
    if !available() {
        return Err(Error::refused(
            ErrorKind::KernelFeatureMissing,
            Step::Attach,
            path,
            "this kernel has no rbd driver (CONFIG_BLK_DEV_RBD); use the Nbd or Fuse backend (librbd)",
        ));
    }
    let (user, _, conf, key) = credentials(url)?;
    // The driver's line separates its fields by spaces: a name holding
    // one would map something else.
    for (what, name) in [
        ("pool", Some(url.pool.as_str())),
        ("image", Some(url.image.as_str())),
        ("snapshot", url.snap.as_deref()),
        ("user", Some(user)),
    ] {
        if let Some(name) = name
            && name.chars().any(char::is_whitespace)
        {
            return Err(Error::refused(
                ErrorKind::InvalidInput,
                Step::Attach,
                path,
                format!(
                    "the {what} name {name:?} holds white space, which the kernel's rbd driver \
                     cannot take (its fields are separated by spaces); use the Nbd or Fuse \
                     backend (librbd)"
                ),
            ));
        }
    }
    let read_only = image.is_read_only() || url.snap.is_some();
    let (mons, ms_mode) = ceph_conf::kernel_mons(&conf.mons);
    let timeout_s = cluster_timeout(options.io_timeout);
    let opts = kernel_options(user, timeout_s, ms_mode, read_only);
    let snap = url.snap.as_deref().unwrap_or("-");
    // Logged without the key; the key is appended only to the line written.
    debug!(
        "attach: map {}/{}@{snap} for client.{user} through {BUS}/add_single_major (mons {mons}, {opts})",
        url.pool, url.image
    );
    let line = format!(
        "{mons} {opts},secret={key} {} {} {snap}",
        url.pool, url.image
    );
    drop(key);
    // Between diskmount processes, one mapping at a time: the new device
    // is told by the ids before and after the write, which another
    // process's mapping of the same image would confuse. The lock is the
    // bus file's own (`flock`), taken through the descriptor written to.
    let bus = std::fs::OpenOptions::new()
        .write(true)
        .open(Path::new(BUS).join("add_single_major"))
        .map_err(|e| {
            Error::os(
                Step::Attach,
                path,
                format!("open {BUS}/add_single_major"),
                e,
            )
        })?;
    flock(bus.as_fd(), Lock::Exclusive, true).map_err(|e| {
        Error::os(
            Step::Attach,
            path,
            format!("flock {BUS}/add_single_major"),
            e,
        )
    })?;
    let before = ids();
    // A sysfs store takes the line in one write.
    let written = (&bus).write(line.as_bytes()).and_then(|n| {
        if n == line.len() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "the rbd driver took {n} of {} bytes",
                line.len()
            )))
        }
    });
    drop(line);
    if let Err(e) = written {
        let (kind, reason) = map_error(e.raw_os_error().unwrap_or(libc::EIO), url, timeout_s);
        return Err(Error::refused(kind, Step::Attach, path, reason));
    }
    let spec = Spec {
        pool: url.pool.clone(),
        image: url.image.clone(),
        snap: url.snap.clone(),
    };
    let found = ids()
        .into_iter()
        .filter(|id| !before.contains(id) && Spec::of(*id).as_ref() == Some(&spec))
        .max();
    drop(bus);
    let Some(id) = found else {
        return Err(Error::invalid(
            Step::Attach,
            path,
            "the rbd driver accepted the mapping but no new device shows it",
        ));
    };
    let unmap_on_error = |e: Error| {
        if let Err(u) = unmap(id, path, timeout_s) {
            warn!("teardown: {u}");
        }
        e
    };
    let node = PathBuf::from(format!("/dev/rbd{id}"));
    poll_until(Duration::from_secs(10), || node.exists().then_some(())).ok_or_else(|| {
        unmap_on_error(Error::invalid(
            Step::Attach,
            &node,
            "the device node did not appear within 10 s (no devtmpfs?)",
        ))
    })?;
    let file = open_node(&node, read_only, Step::Attach).map_err(unmap_on_error)?;
    let core = Core::new(
        Step::Attach,
        BackendKind::Rbd,
        node,
        path.to_path_buf(),
        read_only,
        file,
        None,
    )
    .map_err(unmap_on_error)?;
    info!(
        "attached {}/{}@{snap} as {} ({} bytes{})",
        spec.pool,
        spec.image,
        core.path().display(),
        core.size,
        if read_only { ", read-only" } else { "" }
    );
    Ok(RbdDevice {
        core,
        id,
        spec,
        mapped: true,
        timeout_s,
    })
}

/// How long an unmap refused with `EBUSY` (an opener closing) is tried
/// again.
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// Writes `id` to `remove_single_major` from a helper thread and waits for
/// it within a bound ([`unmap_bound`] of `timeout_s`, the device's cluster
/// timeout): the kernel says goodbye to the cluster, which a hung cluster
/// answers only when the timeouts run out.
pub(crate) fn unmap(id: u32, path: &Path, timeout_s: u64) -> Result<()> {
    debug!("detach: unmap rbd device {id} through {BUS}/remove_single_major");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("rbd-unmap-{id}"))
        .spawn(move || {
            let write =
                || std::fs::write(Path::new(BUS).join("remove_single_major"), id.to_string());
            // The device may still be held a moment by a closing opener
            // (EBUSY): tried again for up to BUSY_RETRY, here, so that the
            // wait below bounds the retries too.
            let r = match write() {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    poll_until(BUSY_RETRY, || write().ok()).ok_or(e)
                }
                r => r,
            };
            let _ = tx.send(r);
        })
        .map_err(|e| Error::os(Step::Detach, path, "start the rbd unmap", e))?;
    let bound = unmap_bound(timeout_s) + BUSY_RETRY;
    match rx.recv_timeout(bound) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.raw_os_error() == Some(libc::EBUSY) => Err(Error::os(
            Step::Detach,
            path,
            "unmap rbd device (in use)",
            e,
        )),
        Ok(Err(e)) => Err(Error::os(Step::Detach, path, "unmap rbd device", e)),
        Err(_) => Err(Error::refused(
            ErrorKind::Io,
            Step::Detach,
            path,
            format!(
                "the rbd unmap did not finish within {bound:?} (the cluster does not answer); \
                 the kernel goes on with it, and the device stays until it is done"
            ),
        )),
    }
}

impl sealed::Ops for RbdDevice {
    fn attach(image: &Image, options: &AttachOptions) -> Result<Self> {
        attach(image, options)
    }

    /// An `rbdN` device the kernel's rbd driver shows: what it maps comes
    /// from `/sys/block/rbdN/device`.
    fn adopt(found: &Found) -> Option<Result<Self>> {
        let id = rbd_id(&found.name)?;
        let spec = Spec::of(id)?;
        let read_only = found.read_only || spec.snap.is_some();
        Some(
            super::device::open_node(&found.node, read_only, Step::Open)
                .and_then(|file| {
                    Core::new(
                        Step::Open,
                        BackendKind::Rbd,
                        found.node.clone(),
                        spec.url(),
                        read_only,
                        file,
                        None,
                    )
                })
                .map(|core| RbdDevice {
                    core,
                    id,
                    spec,
                    mapped: true,
                    timeout_s: cluster_timeout(crate::options::DEFAULT_IO_TIMEOUT),
                }),
        )
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    /// The mapping is still the one made (not unmapped by someone else).
    fn check(&mut self, step: Step) -> Result<()> {
        if Spec::of(self.id).as_ref() != Some(&self.spec) {
            return Err(Error::invalid(
                step,
                self.core.path(),
                "the rbd device was unmapped by someone else",
            ));
        }
        Ok(())
    }

    fn record_fields(&self) -> Vec<(&'static str, String)> {
        vec![("rbd_id", self.id.to_string())]
    }

    /// The mapping outlives this process (a persistent mount):
    /// `diskmount umount` or `cleanup` unmaps it.
    fn disarm(mut self) -> std::result::Result<(), Self> {
        self.mapped = false;
        Ok(())
    }

    /// Flushes, closes the device and unmaps it.
    fn release(self) -> Result<()> {
        let RbdDevice {
            core,
            id,
            mapped,
            timeout_s,
            ..
        } = self;
        let path = core.path().to_path_buf();
        debug!("detach: {} (rbd device {id})", path.display());
        let mut errors = Vec::new();
        if !core.read_only {
            if let Err(e) = blk::flsbuf(core.file().as_fd()) {
                errors.push(Error::os(Step::Detach, &path, "BLKFLSBUF", e));
            }
            if let Err(e) = core.file().sync_all() {
                errors.push(Error::os(Step::Detach, &path, "fsync device", e));
            }
        }
        let (file, _): (File, _) = core.into_files();
        drop(file);
        if mapped && let Err(e) = unmap(id, &path, timeout_s) {
            errors.push(e);
        }
        Error::collect(errors)
    }
}

/// `N` of a kernel name `rbdN` that the rbd driver shows.
pub(crate) fn rbd_id(name: &str) -> Option<u32> {
    let link = std::fs::read_link(format!("/sys/block/{name}/device")).ok()?;
    if !name.starts_with("rbd") {
        return None;
    }
    link.file_name()?.to_str()?.parse().ok()
}

/// The id of the qemu secret object holding the Ceph key.
pub(crate) const QEMU_SECRET_ID: &str = "rbd-secret0";

/// qemu's `rbd` protocol node (librbd, for the Fuse and Nbd backends) of
/// `url`, the `--object` it needs, and the file behind that object: the
/// key, read by us from the keyring and written as a base64 qemu secret to
/// an unlinked file (`O_TMPFILE`, 0600) that the helper opens as
/// `/proc/<our pid>/fd/<fd>`, so that it never appears on a command line
/// and no name of it is left on disk if this process is killed. Keep the
/// file open until the helper has started. The node itself holds no
/// secret and may be logged.
///
/// # Errors
/// [`Step::Attach`]: the configuration or keyring cannot be read, names no
/// monitor or holds no key for the user; the key file cannot be written.
pub(crate) fn qemu_node(url: &RbdUrl) -> Result<(serde_json::Value, Vec<String>, File)> {
    use std::os::fd::AsRawFd;
    let (user, conf_path, _, key) = credentials(url)?;
    let mut key_file = tempfile::tempfile().map_err(|e| {
        Error::os(
            Step::Attach,
            std::env::temp_dir(),
            "create the Ceph key file",
            e,
        )
    })?;
    key_file.write_all(key.as_bytes()).map_err(|e| {
        Error::os(
            Step::Attach,
            std::env::temp_dir(),
            "write the Ceph key file",
            e,
        )
    })?;
    let key_path = format!("/proc/{}/fd/{}", std::process::id(), key_file.as_raw_fd());
    let mut node = serde_json::json!({
        "driver": "rbd",
        "pool": url.pool,
        "image": url.image,
        "user": user,
        "conf": conf_path,
        "key-secret": QEMU_SECRET_ID,
    });
    if let Some(snap) = &url.snap {
        node["snapshot"] = serde_json::json!(snap);
    }
    let object = format!("secret,id={QEMU_SECRET_ID},format=base64,file={key_path}");
    Ok((node, vec![object], key_file))
}

/// Whether rbd device `node` (`/dev/rbdN`) maps the pool, image and
/// snapshot of the recorded image name `recorded` (its `rbd://` URL,
/// wherever it starts in the recorded path): what cleanup checks before it
/// unmaps.
pub(crate) fn maps_recorded(node: &Path, recorded: &Path) -> bool {
    let name = node.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some(spec) = rbd_id(name).and_then(Spec::of) else {
        return false;
    };
    let text = recorded.to_string_lossy();
    let Some(at) = text.find("rbd:/") else {
        return false;
    };
    // A path made absolute keeps `rbd:/` with one slash.
    let url = text[at..]
        .replacen("rbd:/", "rbd://", 1)
        .replacen("rbd:///", "rbd://", 1);
    match Location::parse(&url) {
        Ok(Location::Rbd(u)) => u.pool == spec.pool && u.image == spec.image && u.snap == spec.snap,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_timeout_is_the_io_timeout_in_whole_seconds() {
        // The default keeps the 30 s the kernel's SCSI and block layers use.
        assert_eq!(cluster_timeout(crate::options::DEFAULT_IO_TIMEOUT), 30);
        let short = AttachOptions::default().io_timeout(Duration::from_millis(3500));
        assert_eq!(cluster_timeout(short.io_timeout), 3);
        assert_eq!(cluster_timeout(Duration::from_millis(200)), 1);
        assert_eq!(
            kernel_options("bob", 3, Some("prefer-crc"), true),
            "name=bob,osd_request_timeout=3,mount_timeout=3,ms_mode=prefer-crc,read_only"
        );
        assert_eq!(
            kernel_options("admin", 30, None, false),
            "name=admin,osd_request_timeout=30,mount_timeout=30"
        );
        // The unmap outlasts the kernel's goodbye (2 x timeout + 10 s
        // measured) with room to spare.
        assert_eq!(unmap_bound(30), Duration::from_secs(105));
        for t in [1, 5, 10, 30] {
            assert!(unmap_bound(t) > Duration::from_secs(2 * t + 10));
        }
    }

    #[test]
    fn qemu_node_keeps_the_key_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = "AQAoABBrhH3FIRAAPuCllUDeuOk0s1ErdAIYBA==";
        std::fs::write(
            dir.path().join("ceph.conf"),
            "[global]\nmon host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("k"),
            format!("[client.bob]\n\tkey = {key}\n"),
        )
        .unwrap();
        let url = format!(
            "rbd://bob@pool/img@snap?conf={}&keyring={}",
            dir.path().join("ceph.conf").display(),
            dir.path().join("k").display()
        );
        let image = Image::url(&url).unwrap();
        let Some(Location::Rbd(u)) = image.location() else {
            panic!("not rbd")
        };
        let (node, objects, file) = qemu_node(u).unwrap();
        let text = format!("{node} {objects:?}");
        assert!(!text.contains(&key[..20]), "{text}");
        assert_eq!(node["driver"], "rbd");
        assert_eq!(node["snapshot"], "snap");
        assert_eq!(node["user"], "bob");
        assert!(objects[0].contains("format=base64"), "{objects:?}");
        // The key is in an unlinked file, named through this process's
        // descriptor only.
        let path = objects[0].split("file=").nth(1).unwrap();
        assert!(
            path.starts_with(&format!("/proc/{}/fd/", std::process::id())),
            "{path}"
        );
        assert_eq!(std::fs::read_to_string(path).unwrap(), key);
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&file.metadata().unwrap()),
            0
        );
    }
}

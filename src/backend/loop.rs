//! [`Loop`]: a raw image file behind a loop device, set up the way systemd's
//! `loop-util.c` does it, directly through ioctls.
//!
//! Attach:
//! 1. open the image once (`O_CLOEXEC`, `O_NOFOLLOW` if asked, read-only if
//!    the image is) and take a `flock` on it, so that two diskmount users
//!    cannot attach one image read-write at once;
//! 2. refuse an image some other loop device already serves;
//! 3. under an exclusive `flock` of `/dev/loop-control`: `LOOP_CTL_GET_FREE`,
//!    open `/dev/loopN`, take its `flock` (udev's protocol), and bind the image
//!    with one `LOOP_CONFIGURE` carrying `LO_FLAGS_AUTOCLEAR` and the
//!    read-only flag (falling back to `LOOP_SET_FD` + `LOOP_SET_STATUS64` on
//!    kernels older than 5.8);
//! 4. on `EBUSY`/`EAGAIN`/`ENXIO`/`ENOENT` (another process won the race,
//!    or, in a container's `/dev` with a fixed set of loop nodes, the free
//!    device has no node), retry with randomized back-off within
//!    [`crate::RetryPolicy`]; a missing `/dev/loop-control` fails at once.
//!
//! Because of autoclear, a process killed while attached leaves nothing: the
//! kernel unbinds the device when the last descriptor closes. Killed while
//! mounted, it leaves the mount, and the device goes with it.
//!
//! Detach: flush, `LOOP_CLR_FD`, close, and check that the device really is
//! unbound.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::libc;

use super::device::{Core, Found, open_node};
use super::{Backend, BackendKind, Device, sealed};
use crate::error::{Error, ErrorKind, Result, Step};
use crate::format::describe;
use crate::image::{Image, ImageKind};
use crate::kernel::sysfs;
use crate::options::AttachOptions;
use crate::retry::{Backoff, poll_until};
use crate::sys::block as blk;
use crate::sys::flock::{Lock, flock};
use crate::sys::loop_dev;

/// Raw image files, attached to a loop device.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loop;

impl sealed::Sealed for Loop {}

impl Backend for Loop {
    const NAME: &'static str = "loop";
    type Device = LoopDevice;
}

/// A loop device bound to an image file, with autoclear: it goes with
/// its last user even if this process is killed.
#[derive(Debug)]
pub struct LoopDevice {
    core: Core,
    nr: u32,
}

impl Device for LoopDevice {}

impl sealed::Ops for LoopDevice {
    fn attach(image: &Image, options: &AttachOptions) -> Result<Self> {
        let path = image.path();
        debug!("attach: {} to a loop device", path.display());
        let backing = open_backing(image)?;
        crate::lock::hold(&backing, path, image.is_read_only())?;
        let (nr, file) = attach_backing(
            Step::Attach,
            &backing,
            image.is_read_only(),
            options,
            path,
            0,
            0,
        )?;
        LoopDevice::new(image, nr, file, backing, BackendKind::Loop)
    }

    /// A bound loop device (one over a FUSE export is the Fuse backend's:
    /// adoption asks it first).
    fn adopt(found: &Found) -> Option<Result<Self>> {
        let nr = sysfs::loop_number(&found.name)?;
        let info = sysfs::loop_info(&found.name)?;
        // A deleted backing file cannot be reopened: its writes are made
        // durable by the device flush alone.
        let backing = if info.deleted {
            None
        } else {
            open_node(&info.backing_file, found.read_only, Step::Open).ok()
        };
        Some(
            found
                .core(BackendKind::Loop, info.backing_file, backing)
                .map(|core| LoopDevice { core, nr }),
        )
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    /// Writes what the device buffered into the image and makes the image
    /// durable, unbinds the device, closes it, and checks it is gone.
    fn release(self) -> Result<()> {
        let (core, nr) = self.into_parts();
        Error::collect(unbind_core(Step::Detach, core, nr))
    }
}

impl LoopDevice {
    /// Wraps loop device `nr`, configured over `backing` (the image, or
    /// for `kind` Fuse the export of the image).
    pub(crate) fn new(
        image: &Image,
        nr: u32,
        file: File,
        backing: File,
        kind: BackendKind,
    ) -> Result<LoopDevice> {
        let node = PathBuf::from(format!("/dev/loop{nr}"));
        let core = Core::new(
            Step::Attach,
            kind,
            node,
            image.path().to_path_buf(),
            image.is_read_only(),
            file,
            Some(backing),
        )?;
        info!(
            "attached {} to {} ({} bytes{}{})",
            image.path().display(),
            core.path.display(),
            core.size,
            if image.is_read_only() {
                ", read-only"
            } else {
                ""
            },
            core.diskseq
                .map(|s| format!(", diskseq {s}"))
                .unwrap_or_default()
        );
        Ok(LoopDevice { core, nr })
    }

    /// The device taken apart (for the Fuse backend, whose device is a
    /// loop device over its export): the core and the device number.
    pub(crate) fn into_parts(self) -> (Core, u32) {
        (self.core, self.nr)
    }

    /// A loop device found on the system, wrapped as `kind`'s (Fuse).
    pub(crate) fn from_parts(core: Core, nr: u32) -> LoopDevice {
        LoopDevice { core, nr }
    }
}

/// [`unbind`] for a device's core: flush (unless read-only), unbind,
/// close, check.
pub(crate) fn unbind_core(step: Step, core: Core, nr: u32) -> Vec<Error> {
    let (node, image, write) = (core.path.clone(), core.image.clone(), !core.read_only);
    let (file, backing) = core.into_files();
    unbind(step, &node, &image, file, nr, write, backing.as_ref())
}

const LOOP_CONTROL: &str = "/dev/loop-control";

/// How long one attempt waits for the lock of `/dev/loop-control`, which
/// other attaches hold for a fraction of a millisecond each.
const CONTROL_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Set once `LOOP_CONFIGURE` turned out to be missing, so later attaches go
/// straight to the two-ioctl fallback.
static CONFIGURE_MISSING: AtomicBool = AtomicBool::new(false);

/// Opens the image file for a loop device: once, close-on-exec, with the
/// image's access mode, locked against a second read-write user.
pub(crate) fn open_backing(image: &Image) -> Result<File> {
    let path = image.path();
    if image.kind() != ImageKind::File {
        return Err(Error::refused(
            ErrorKind::Unsupported,
            Step::Attach,
            path,
            "the loop backend serves image files; use the Block backend for block devices",
        ));
    }
    let mut flags = libc::O_CLOEXEC;
    if image.is_no_follow() {
        flags |= libc::O_NOFOLLOW;
    }
    let backing = OpenOptions::new()
        .read(true)
        .write(!image.is_read_only())
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if image.is_no_follow() && e.raw_os_error() == Some(libc::ELOOP) {
                Error::invalid(
                    Step::Attach,
                    path,
                    "is a symbolic link, and the image was opened with no_follow",
                )
            } else {
                Error::os(Step::Attach, path, "open image", e)
            }
        })?;
    let meta = backing
        .metadata()
        .map_err(|e| Error::os(Step::Attach, path, "fstat image", e))?;
    if !meta.file_type().is_file() {
        return Err(Error::invalid(
            Step::Attach,
            path,
            format!(
                "is not a regular file (it is a {})",
                describe(meta.file_type())
            ),
        ));
    }
    if meta.len() == 0 {
        return Err(Error::invalid(
            Step::Attach,
            path,
            "the image file is empty (0 bytes)",
        ));
    }
    let lock = if image.is_read_only() {
        Lock::Shared
    } else {
        Lock::Exclusive
    };
    lock_briefly(&backing, lock).map_err(|e| match e {
        Errno::EWOULDBLOCK => Error::refused(
            ErrorKind::InUse,
            Step::Attach,
            path,
            "the image is already in use: another diskmount user has it attached \
             (read-write, or read-only while this one asks for read-write)",
        ),
        e => Error::os(Step::Attach, path, "flock image", e),
    })?;
    if let Some(other) = crate::kernel::loop_backing::loops_over(&meta, image.is_read_only())
        .into_iter()
        .next()
    {
        return Err(Error::refused(
            ErrorKind::InUse,
            Step::Attach,
            path,
            format!(
                "the image is already in use: {} serves it; detach that first (losetup -d {0})",
                other.display()
            ),
        ));
    }
    Ok(backing)
}

/// Takes `lock` on `file` without blocking on a real holder, but waits out
/// a brief one: a thread of this process that is forking a child holds a
/// copy of every descriptor (and so of the lock) until the child execs.
pub(crate) fn lock_briefly(file: &File, lock: Lock) -> std::result::Result<(), Errno> {
    poll_until(Duration::from_millis(500), || {
        match flock(file.as_fd(), lock, false) {
            Err(Errno::EWOULDBLOCK) => None,
            other => Some(other),
        }
    })
    .unwrap_or(Err(Errno::EWOULDBLOCK))
}

/// How long a detach waits for the kernel to unbind a cleared loop device
/// whose last opener is not us (a forked child's copy of our descriptor).
const UNBIND_WAIT: Duration = Duration::from_secs(3);

/// Waits (bounded) until `/dev/loop<nr>` is unbound; true if it is.
fn wait_unbound(nr: u32, bound: Duration) -> bool {
    poll_until(bound, || (!sysfs::loop_is_bound(nr)).then_some(())).is_some()
}

fn is_transient(e: Errno) -> bool {
    matches!(
        e,
        Errno::EBUSY | Errno::EAGAIN | Errno::ENXIO | Errno::ENOENT | Errno::ENODEV
    )
}

/// Binds `backing` (bytes `offset..offset+size_limit`, 0 = to the end) to a
/// free loop device, retrying races. Returns the device number and an open,
/// shared-locked descriptor of it.
pub(crate) fn attach_backing(
    step: Step,
    backing: &File,
    read_only: bool,
    options: &AttachOptions,
    image: &Path,
    offset: u64,
    size_limit: u64,
) -> Result<(u32, File)> {
    let mut info = loop_dev::empty_info();
    info.lo_offset = offset;
    info.lo_sizelimit = size_limit;
    info.lo_flags = loop_dev::LO_FLAGS_AUTOCLEAR;
    if offset == 0 && size_limit == 0 {
        // Partition scanning on the whole-image device: where the kernel
        // parses tables it makes the partition nodes; everywhere, clearing
        // the device drops every partition node with it, also the ones we
        // add with BLKPG, also when this process is killed.
        info.lo_flags |= loop_dev::LO_FLAGS_PARTSCAN;
    }
    if read_only {
        info.lo_flags |= loop_dev::LO_FLAGS_READ_ONLY;
    }
    if options.direct_io {
        info.lo_flags |= loop_dev::LO_FLAGS_DIRECT_IO;
    }
    // A GPT written for 4096-byte sectors is only found by the kernel's
    // partition scan on a device with 4096-byte sectors.
    let block_size = if offset == 0 && size_limit == 0 {
        gpt_sector_size(backing)
    } else {
        0
    };
    let mut backoff = Backoff::new(options.retry);
    loop {
        backoff.attempt();
        // A missing control device does not clear up by waiting: no loop
        // driver, or a /dev without it (a container).
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(LOOP_CONTROL)
            .map_err(|e| {
                Error::os(
                    step,
                    image,
                    format!("open {LOOP_CONTROL} (is the loop module loaded? modprobe loop)"),
                    e,
                )
            })?;
        let attempt = try_attach(&control, backing, &info, block_size);
        // Unlocked before any wait.
        drop(control);
        match attempt {
            Ok(found) => return Ok(found),
            Err((op, e)) if is_transient(e) => {
                if !backoff.wait() {
                    return Err(Error::Exhausted {
                        step,
                        path: image.to_path_buf(),
                        operation: op.into(),
                        attempts: backoff.attempts(),
                        elapsed: backoff.elapsed(),
                        source: e.into(),
                    });
                }
                warn!(
                    "{step}: {}: {op}: {e}; retrying (attempt {})",
                    image.display(),
                    backoff.attempts() + 1
                );
            }
            Err((op, e)) => return Err(Error::os(step, image, op, e)),
        }
    }
}

type Attempt<T> = std::result::Result<T, (String, Errno)>;

/// One attempt: claim a free device under the lock of the control device
/// (`control`, open) and bind the backing file to it.
fn try_attach(
    control: &File,
    backing: &File,
    info: &loop_dev::LoopInfo64,
    block_size: u32,
) -> Attempt<(u32, File)> {
    // Bounded like every wait: a holder that never lets go (a hung
    // process) makes this attempt fail as busy, and the attach's retry
    // policy decides from there.
    poll_until(CONTROL_LOCK_WAIT, || {
        match flock(control.as_fd(), Lock::Exclusive, false) {
            Err(Errno::EWOULDBLOCK) => None,
            other => Some(other),
        }
    })
    .unwrap_or(Err(Errno::EWOULDBLOCK))
    .map_err(|e| (format!("flock {LOOP_CONTROL}"), e))?;
    let nr = loop_dev::ctl_get_free(control.as_fd())
        .map_err(|e| ("LOOP_CTL_GET_FREE".to_string(), e))?;
    let node = format!("/dev/loop{nr}");
    debug!("attach: {LOOP_CONTROL} offered {node}");
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&node)
        .map_err(|e| match errno(&e) {
            // The device exists (the kernel just offered it) but this /dev
            // has no node for it: a /dev with a fixed set of loop nodes, as
            // in a container. Retried like a race: one of the nodes here
            // may come free.
            Errno::ENOENT => (
                format!(
                    "no free loop device reachable: the kernel offers {node}, which has no \
                     node in /dev (a /dev with a fixed set of loop nodes, as in a container?)"
                ),
                Errno::ENOENT,
            ),
            e => (format!("open {node}"), e),
        })?;
    // udev holds a shared lock while it probes a device; wait for nobody.
    flock(dev.as_fd(), Lock::Exclusive, false).map_err(|e| (format!("flock {node}"), e))?;
    if !CONFIGURE_MISSING.load(Ordering::Relaxed) {
        match loop_dev::configure(dev.as_fd(), backing.as_fd(), info, block_size) {
            Ok(()) => {}
            Err(Errno::ENOTTY | Errno::EINVAL) => {
                debug!("attach: LOOP_CONFIGURE unsupported, using LOOP_SET_FD + LOOP_SET_STATUS64");
                CONFIGURE_MISSING.store(true, Ordering::Relaxed);
                set_fd_and_status(&dev, backing, info, &node)?;
            }
            Err(e) => return Err((format!("LOOP_CONFIGURE {node}"), e)),
        }
    } else {
        set_fd_and_status(&dev, backing, info, &node)?;
    }
    verify(&dev, info, &node)?;
    super::device::clear_stale_read_only(&dev, Path::new(&node));
    // Set up: from now on, let udev (and others who follow the protocol)
    // probe the device alongside us.
    flock(dev.as_fd(), Lock::Shared, true).map_err(|e| (format!("flock {node}"), e))?;
    Ok((nr, dev))
}

/// 4096 if `backing` holds a GPT written for 4096-byte sectors, else 0
/// (the default, 512).
fn gpt_sector_size(backing: &File) -> u32 {
    match crate::partition::gpt::written_sector_size(backing) {
        Some(4096) => 4096,
        _ => 0,
    }
}

/// The pre-5.8 sequence. The status ioctl races with udev's probing since
/// Linux 5.0 and answers `EAGAIN`, so it is retried briefly.
fn set_fd_and_status(
    dev: &File,
    backing: &File,
    info: &loop_dev::LoopInfo64,
    node: &str,
) -> Attempt<()> {
    loop_dev::set_fd(dev.as_fd(), backing.as_fd())
        .map_err(|e| (format!("LOOP_SET_FD {node}"), e))?;
    let set = poll_until(Duration::from_secs(2), || {
        match loop_dev::set_status64(dev.as_fd(), info) {
            Err(Errno::EAGAIN) => None,
            other => Some(other),
        }
    })
    .unwrap_or(Err(Errno::EAGAIN));
    set.map_err(|e| {
        if let Err(clr) = loop_dev::clr_fd(dev.as_fd()) {
            warn!("attach: {node}: LOOP_CLR_FD after a failed LOOP_SET_STATUS64: {clr}");
        }
        (format!("LOOP_SET_STATUS64 {node}"), e)
    })
}

/// Checks that the kernel applied what we asked for (5.8 ignored some
/// fields of `LOOP_CONFIGURE`); unbinds the device if it did not.
fn verify(dev: &File, want: &loop_dev::LoopInfo64, node: &str) -> Attempt<()> {
    let got = loop_dev::get_status64(dev.as_fd())
        .map_err(|e| (format!("LOOP_GET_STATUS64 {node}"), e))?;
    let must =
        loop_dev::LO_FLAGS_AUTOCLEAR | loop_dev::LO_FLAGS_READ_ONLY | loop_dev::LO_FLAGS_PARTSCAN;
    if got.lo_flags & must != want.lo_flags & must
        || got.lo_offset != want.lo_offset
        || got.lo_sizelimit != want.lo_sizelimit
    {
        let _ = loop_dev::clr_fd(dev.as_fd());
        return Err((
            format!(
                "verify {node} (flags {:#x}, offset {}, limit {}; asked {:#x}, {}, {})",
                got.lo_flags,
                got.lo_offset,
                got.lo_sizelimit,
                want.lo_flags,
                want.lo_offset,
                want.lo_sizelimit
            ),
            Errno::EIO,
        ));
    }
    Ok(())
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Unbinds loop device `nr` (open as `file`): when `write`, `BLKFLSBUF`
/// and `fsync` of `backing` (if known); then `LOOP_CLR_FD`, close, and a
/// bounded check that the kernel really unbound it. Returns every error.
pub(crate) fn unbind(
    step: Step,
    node: &Path,
    image: &Path,
    file: File,
    nr: u32,
    write: bool,
    backing: Option<&File>,
) -> Vec<Error> {
    debug!("{step}: unbind {}", node.display());
    let mut errors = Vec::new();
    if write {
        if let Err(e) = blk::flsbuf(file.as_fd()) {
            errors.push(Error::os(step, node, "BLKFLSBUF", e));
        }
        if let Some(Err(e)) = backing.map(File::sync_all) {
            errors.push(Error::os(step, image, "fsync image", e));
        }
    }
    // The device outlives this binding: no read-only flag of ours (a
    // read-only look's) stays on it for its next user.
    super::device::clear_stale_read_only(&file, node);
    let cleared = loop_dev::clr_fd(file.as_fd());
    match cleared {
        Ok(()) => {}
        Err(Errno::ENXIO) => errors.push(Error::invalid(
            step,
            node,
            "was already unbound by someone else (LOOP_CLR_FD: ENXIO)",
        )),
        Err(e) => errors.push(Error::os(step, node, "LOOP_CLR_FD", e)),
    }
    drop(file);
    // With autoclear the kernel unbinds on the last close, synchronously
    // unless another opener (a mount we failed to undo, another process)
    // still holds the device. A thread of this process that is forking a
    // child holds a copy of our descriptor until the child execs, so give
    // such a copy a moment to go away. Also after a failed flush: the
    // device goes all the same, and a caller (the crash-recovery record)
    // must not see it still bound for a moment and think it stays.
    // Bounded at 3 s: under load (8 threads cycling on 2 cores, daemons
    // starting) a forked child was seen to hold its copy for over a
    // second before it exec'ed (a stress run; 1 s was the bound then).
    if cleared.is_ok() {
        let waiting = std::time::Instant::now();
        if !wait_unbound(nr, UNBIND_WAIT) {
            errors.push(Error::refused(
                ErrorKind::Busy,
                step,
                node,
                "is still bound after LOOP_CLR_FD: something still has it open (a mount?); \
                 the kernel will unbind it when that user closes it",
            ));
        } else if waiting.elapsed() > Duration::from_millis(100) {
            warn!(
                "{step}: {} was still bound after LOOP_CLR_FD (another opener held it); \
                 retrying the check, unbound after {:?}",
                node.display(),
                waiting.elapsed()
            );
        }
    }
    errors
}

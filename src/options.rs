//! Options of the attach and mount steps.

use crate::retry::RetryPolicy;
use crate::run_dir::RunDir;

/// How [`crate::Unattached::attach`] sets up the block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOptions {
    pub(crate) direct_io: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) persistent: bool,
    /// `None`: the process default ([`RunDir::current_default`]).
    pub(crate) run_dir: Option<RunDir>,
    /// The qemu helper's private directory, named after the record
    /// (set by the attach step for the backend).
    pub(crate) helper_dir: Option<std::path::PathBuf>,
    pub(crate) io_timeout: std::time::Duration,
    pub(crate) shared_daemon: bool,
}

/// The default of [`AttachOptions::io_timeout`].
pub const DEFAULT_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            direct_io: false,
            retry: RetryPolicy::ATTACH,
            persistent: false,
            run_dir: None,
            helper_dir: None,
            io_timeout: DEFAULT_IO_TIMEOUT,
            shared_daemon: false,
        }
    }
}

impl AttachOptions {
    /// Let the loop device read and write its backing file with `O_DIRECT`
    /// (no double caching; the kernel falls back to buffered I/O where the
    /// backing filesystem cannot do it). Default: off.
    pub fn direct_io(mut self, on: bool) -> Self {
        self.direct_io = on;
        self
    }

    /// Prepare for a mount that outlives this process
    /// ([`crate::Mounted::persist`]): qemu helpers (Fuse, Nbd) are started in
    /// their own process group and not tied to this process, so that they
    /// survive it; `diskmount umount` or `cleanup` stops them. Default: off,
    /// helpers end with this process.
    pub fn persistent(mut self, on: bool) -> Self {
        self.persistent = on;
        self
    }

    /// Where the crash-recovery record of this attach and its qemu
    /// helper's private directory go (default: [`RunDir::current_default`],
    /// `/run/diskmount` unless the program set another).
    /// [`RunDir::off`] keeps no record.
    pub fn run_dir(mut self, dir: RunDir) -> Self {
        self.run_dir = Some(dir);
        self
    }

    /// How long one I/O request may wait for a server that serves the
    /// device (qemu-nbd behind an nbd device; network storage) before it
    /// fails with an I/O error and the connection counts as dead. A server
    /// that was killed, stopped or hangs thus gives bounded errors instead
    /// of processes stuck in the kernel, and teardown does not hang. Whole
    /// seconds, at least one. Default [`DEFAULT_IO_TIMEOUT`] (30 s), as the
    /// kernel's SCSI and block layers use.
    ///
    /// Where it applies: the nbd device's timeout (Nbd backend); the watch
    /// on a network image's FUSE export (Fuse backend: requests unanswered
    /// this long abort the export); the kernel's rbd driver
    /// (`osd_request_timeout` and `mount_timeout`, and the unmap's bound
    /// derived from them).
    pub fn io_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.io_timeout = timeout.max(std::time::Duration::from_secs(1));
        self
    }

    /// Serve image files through the Fuse backend from one long-lived
    /// qemu-storage-daemon per process, shared by every attach that asks
    /// for it, instead of starting a daemon per attach: each image becomes
    /// a block node and a FUSE export added over QMP (`blockdev-add`,
    /// `block-export-add`) and removed at detach. This saves the daemon's
    /// start (most of a qcow2 cycle). The daemon is tied to this process
    /// and ends with it; one that died is replaced at the next attach.
    /// Persistent attaches ([`AttachOptions::persistent`]) and URL images
    /// ([`crate::Image::url`]) still get a daemon of their own. Other
    /// backends ignore it. Default: off (opt in).
    pub fn shared_daemon(mut self, on: bool) -> Self {
        self.shared_daemon = on;
        self
    }

    /// The bound on retries while competing for a free device
    /// (default [`RetryPolicy::ATTACH`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
}

/// How [`crate::Mapped::mount`] mounts the filesystem.
///
/// The default is read-write, `nodev`, `nosuid`, with the filesystem type
/// probed from the superblock and checked against the allow-list
/// ([`crate::fs::ALLOWED`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub(crate) read_only: bool,
    pub(crate) fstype: Option<String>,
    pub(crate) options: Option<String>,
    pub(crate) noexec: bool,
    pub(crate) subvolume: Option<String>,
    pub(crate) unmount_retry: RetryPolicy,
    pub(crate) exclude: Vec<std::path::PathBuf>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            fstype: None,
            options: None,
            noexec: false,
            subvolume: None,
            unmount_retry: RetryPolicy::UNMOUNT,
            exclude: Vec::new(),
        }
    }
}

impl MountOptions {
    /// Mount read-only. Journaled filesystems are then mounted without
    /// journal replay (`norecovery`; ext4 `noload`), because `MS_RDONLY`
    /// alone still writes the replayed journal into the image.
    /// A read-only [`crate::Image`] is always mounted read-only.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Mount as this filesystem type instead of probing the superblock.
    /// An explicit type is the caller's choice and bypasses the allow-list.
    pub fn fstype(mut self, fstype: impl Into<String>) -> Self {
        self.fstype = Some(fstype.into());
        self
    }

    /// Extra filesystem-specific options, comma-separated as for
    /// `mount -o` (e.g. `"discard,commit=5"`), added after diskmount's own.
    pub fn options(mut self, options: impl Into<String>) -> Self {
        self.options = Some(options.into());
        self
    }

    /// Also forbid executing programs from the mount (`noexec`).
    pub fn noexec(mut self, noexec: bool) -> Self {
        self.noexec = noexec;
        self
    }

    /// Mount the btrfs subvolume `name` instead of the top level: adds
    /// `subvol=NAME` to the mount data. `name` is the subvolume's path from
    /// the top level (`"root"`, `"home"`, `"root/var/lib/machines"`), as in
    /// a guest's fstab and as [`crate::volume::btrfs::Subvolume::path`]
    /// gives it. A subvolume the filesystem does not have fails the mount
    /// ([`crate::Step::Mount`]); a name holding a comma or a NUL byte, or
    /// an empty one, is refused before the mount, since the kernel would
    /// read it as more options.
    pub fn subvolume(mut self, name: impl Into<String>) -> Self {
        self.subvolume = Some(name.into());
        self
    }

    /// The `subvol=` mount option of [`MountOptions::subvolume`], checked;
    /// errors name `device`.
    pub(crate) fn subvolume_option(
        &self,
        device: &std::path::Path,
    ) -> crate::error::Result<Option<String>> {
        let Some(name) = &self.subvolume else {
            return Ok(None);
        };
        if name.is_empty() || name.contains([',', '\0']) {
            return Err(crate::error::Error::invalid(
                crate::error::Step::Mount,
                device,
                format!(
                    "the subvolume name {name:?} cannot be passed to the kernel (empty, or a \
                     comma or NUL byte in it)"
                ),
            ));
        }
        Ok(Some(format!("subvol={name}")))
    }

    /// The bound on retrying a busy unmount (default [`RetryPolicy::UNMOUNT`]).
    pub fn unmount_retry(mut self, policy: RetryPolicy) -> Self {
        self.unmount_retry = policy;
        self
    }

    /// With [`crate::Partition::Os`], do not mount the guest's fstab entry
    /// for the mount point `mount_point` (a guest path, e.g. `"/boot/efi"`;
    /// may be given several times): for a filesystem this kernel cannot
    /// mount (the ESP's vfat) that the guest does not mark `nofail`. An
    /// empty read-only tmpfs is mounted there instead, so that nothing
    /// written to that path lands in the filesystem below it (writes fail
    /// with "read-only file system").
    pub fn exclude(mut self, mount_point: impl Into<std::path::PathBuf>) -> Self {
        self.exclude.push(mount_point.into());
        self
    }

    /// Whether the mount is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
}

//! Mount virtual disk images, and always take everything down again.
//!
//! diskmount turns an image file (or a block device) into a mounted
//! filesystem in the host kernel, in three steps that are three types:
//!
//! ```text
//! Unattached --attach--> Attached --map--> Mapped --mount--> Mounted
//!            <-detach--           <-unmap-         <-unmount-
//! ```
//!
//! Each state owns what its step acquired; a step called out of order does
//! not compile. Dropping any state undoes its steps in reverse order, on
//! error paths and during a panic too; `close()` does the same and reports
//! every error. [`with_mounted`] does the whole round trip around a closure.
//!
//! # Example
//!
//! Write a file into an ext4 image and read it back (needs root):
//!
//! ```
//! use diskmount::{Format, Image, Partition, with_mounted};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("disk.img");
//! # std::fs::File::create(&path)?.set_len(64 << 20)?;
//! # let mkfs = std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&path).status()?;
//! # assert!(mkfs.success());
//! let image = Image::file(&path, Format::Raw)?;
//! let motd = with_mounted(&image, Partition::Whole, |dir| {
//!     // Paths through `Root` stay inside the image, whatever links it holds.
//!     let root = diskmount::root::Root::open(dir)?;
//!     root.mkdir_all("/etc", 0o755)?;
//!     root.write("/etc/motd", "hello from diskmount\n", 0o644)?;
//!     root.read_to_string("/etc/motd")
//! })??;
//! assert_eq!(motd, "hello from diskmount\n");
//! # Ok(())
//! # }
//! ```
//!
//! The same, step by step, with the backend chosen at compile time:
//!
//! ```no_run
//! use diskmount::{Format, Image, Loop, MountOptions, Partition, Unattached};
//! # fn main() -> Result<(), diskmount::Error> {
//! let image = Image::file("disk.img", Format::Raw)?;
//! let mounted = Unattached::<Loop>::new(image)
//!     .attach()?                      // /dev/loopN
//!     .map(Partition::Whole)?         // the device to mount
//!     .mount("/mnt", &MountOptions::default().read_only(true))?;
//! println!("{} is on {}", mounted.device().display(), mounted.path().display());
//! mounted.close()?;                   // unmount, unmap, detach: every error reported
//! # Ok(())
//! # }
//! ```
//!
//! # Backends
//!
//! | backend | serves | how |
//! |---|---|---|
//! | [`Loop`] | raw image files | a loop device (`LOOP_CONFIGURE`, autoclear) |
//! | [`Block`] | existing block devices | the device itself |
//! | [`Nbd`] | any qemu format | `qemu-nbd` and the kernel's nbd driver |
//! | [`Fuse`] | any qemu format, no nbd needed | qemu-storage-daemon's FUSE export under a loop device |
//! | [`Auto`] | whatever it is given | block device → Block, raw → Loop, else Nbd if the kernel has it, else Fuse |
//!
//! qemu is always told the format; non-raw images are inspected by
//! [`format::check`] first: external data files and vmdk extent files are
//! always refused, backing chains unless [`Image::allow_backing_file`] (then
//! every file of the chain is checked the same way).
//!
//! # Paths inside the image
//!
//! [`Mounted::root`] gives a [`root::Root`] through which every path is
//! resolved inside the image (`openat2` with `RESOLVE_IN_ROOT`): a guest's
//! absolute or `..` links cannot reach host files.
//!
//! # Choosing a partition
//!
//! [`Partition::Whole`] is the whole device; [`Partition::Number`] counts as
//! the kernel does (MBR primaries 1-4, logical partitions from 5, GPT entries
//! by index); [`Partition::Label`] is a GPT partition name, or failing that a
//! filesystem label. [`Partition::Auto`] searches:
//!
//! 1. no partition table → the whole disk;
//! 2. exactly one partition holds a filesystem diskmount mounts → it;
//! 3. GPT: the root partition of this architecture (Discoverable Partitions
//!    Specification type GUID), then the one generic "Linux filesystem"
//!    partition, then the /usr partition of this architecture;
//! 4. the single largest partition holding an allowed Linux filesystem;
//! 5. otherwise an error listing the candidates and how to pick one.
//!
//! The partition gets a device from the kernel's own node (checked to be
//! this device's, with the geometry of our parse), a `BLKPG_ADD_PARTITION`
//! node, a device-mapper target, or an offset loop device, whichever works
//! first ([`MapOptions`]).
//!
//! # Safety defaults
//!
//! - The filesystem type is probed from the superblock and must be on
//!   [`fs::ALLOWED`] (btrfs, erofs, ext2/3/4, squashfs, vfat, xfs).
//! - Mounts are `nodev,nosuid`; read-only mounts skip journal replay.
//! - Loop devices are set up with `LO_FLAGS_AUTOCLEAR`: a killed process
//!   never leaves an orphan loop device behind.
//! - Teardown flushes (`syncfs`, `BLKFLSBUF`, `fsync` of the image) and
//!   treats a failed flush as an error.
//!
//! # Kernel features used
//!
//! | feature | kernel | used for | fallback |
//! |---|---|---|---|
//! | `LOOP_CONFIGURE` | 5.8 | attaching in one ioctl | `LOOP_SET_FD` + `LOOP_SET_STATUS64` |
//! | `BLKGETDISKSEQ` | 5.15 | telling a reused device number apart | none (reported as `None`) |
//! | `LO_FLAGS_AUTOCLEAR` | 2.6.25 | no orphan loop devices after a crash | none needed |
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod adopt;
pub mod backend;
pub mod cleanup;
pub mod command;
pub mod error;
pub mod format;
pub mod fs;
pub mod guest;
pub mod image;
pub mod kernel;
mod lifecycle;
mod lock;
pub mod mapping;
mod mount;
pub mod options;
pub mod os;
pub mod partition;
mod read_at;
pub(crate) mod record;
pub mod retry;
pub mod root;
mod run_dir;
// The benchmarks' hand-made syscall floor uses the very same wrappers; they
// see them through the `bench-sys` feature only.
#[cfg(feature = "bench-sys")]
#[doc(hidden)]
pub mod sys;
#[cfg(not(feature = "bench-sys"))]
mod sys;
pub mod volume;

pub use adopt::{Adopted, adopt};
pub use backend::{Auto, Backend, BackendKind, Block, Fuse, Loop, Nbd, Rbd};
pub use error::{Error, ErrorKind, Result, Step};
pub use image::{Format, Image, ImageKind, Location};
pub use lifecycle::{
    Attached, Mapped, Mount, MountInfo, Mounted, Unattached, UnmountError, with_mounted,
    with_mounted_opts,
};
pub use mapping::{MapOptions, MapStrategy, Mapping};
pub use options::{AttachOptions, DEFAULT_IO_TIMEOUT, MountOptions};
pub use partition::{Partition, PartitionInfo, PartitionTable, TableKind};
pub use retry::RetryPolicy;
pub use run_dir::RunDir;

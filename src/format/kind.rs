//! [`Format`]: the on-disk format of an image file, and names for file
//! types in messages.

use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::str::FromStr;

/// The on-disk format of an image file, named as qemu names its drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// A plain disk image: byte N of the file is byte N of the disk.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// VMware virtual disk (monolithicSparse or streamOptimized).
    Vmdk,
    /// VirtualBox disk image.
    Vdi,
    /// Hyper-V virtual hard disk v2.
    Vhdx,
    /// Virtual PC / Hyper-V VHD (qemu's `vpc` driver).
    Vpc,
}

impl Format {
    /// Every format, in the order of this enum.
    pub const ALL: [Format; 6] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vdi,
        Format::Vhdx,
        Format::Vpc,
    ];

    /// The qemu driver name (`-f` / `driver=`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vdi => "vdi",
            Format::Vhdx => "vhdx",
            Format::Vpc => "vpc",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s) || (s == "vhd" && *f == Format::Vpc))
            .ok_or_else(|| {
                format!("unknown image format {s:?} (known: raw, qcow2, vmdk, vdi, vhdx, vpc)")
            })
    }
}

/// A human name for a file type, for messages.
pub(crate) fn describe(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "regular file"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

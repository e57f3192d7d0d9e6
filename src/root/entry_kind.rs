//! The kind of entry diskmount makes in an image (a file or a directory):
//! what its default mode is and how its SELinux label is looked up.

/// The kind of entry being made, for the default mode and the label lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

impl EntryKind {
    /// The mode it gets unless told otherwise: `0o644` for a file,
    /// `0o755` for a directory.
    pub(crate) fn default_mode(self) -> u32 {
        match self {
            EntryKind::File => 0o644,
            EntryKind::Dir => 0o755,
        }
    }

    /// The `S_IFMT` bits, as `selabel_lookup` takes them.
    #[cfg_attr(not(feature = "selinux"), allow(dead_code))]
    pub(crate) fn format_bits(self) -> u32 {
        match self {
            EntryKind::File => nix::libc::S_IFREG,
            EntryKind::Dir => nix::libc::S_IFDIR,
        }
    }
}

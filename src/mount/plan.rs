//! How to mount: the flags and the option string, decided from the
//! caller's [`MountOptions`], the filesystem type and whether the device is
//! read-only. A pure function: no system call, unit-tested without root.

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::fs::FsType;
use crate::options::MountOptions;

/// What the mount system call gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountPlan {
    /// The filesystem driver (`ext4`, `xfs`, ...).
    pub(crate) driver: String,
    /// Whether the mount is read-only.
    pub(crate) read_only: bool,
    /// `MS_NODEV | MS_NOSUID`, plus `MS_RDONLY` and `MS_NOEXEC` as decided.
    pub(crate) flags: MsFlags,
    /// The filesystem's own options, comma-separated (may be empty).
    pub(crate) data: String,
}

/// Plans the mount of a filesystem of `driver` (`fstype` if diskmount knows
/// it) on a device that is read-only if `device_read_only`.
///
/// - always `nodev,nosuid`: the image's device nodes and set-id programs
///   are the guest's, not this host's;
/// - read-only if asked, if the device is, or if the filesystem is a
///   read-only one (squashfs, erofs); then journal replay is skipped where
///   the filesystem has an option for it, so that a read-only mount never
///   writes to the image;
/// - `noexec` if asked; the caller's extra options, then a btrfs
///   subvolume (`subvol=`), last.
pub(crate) fn plan(
    options: &MountOptions,
    driver: String,
    fstype: Option<FsType>,
    device_read_only: bool,
) -> MountPlan {
    let read_only =
        options.read_only || device_read_only || fstype.is_some_and(FsType::is_read_only);
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if options.noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    let mut data: Vec<&str> = Vec::new();
    if read_only {
        data.extend(fstype.and_then(FsType::no_replay_option));
    }
    if let Some(extra) = options.options.as_deref().filter(|s| !s.is_empty()) {
        data.push(extra);
    }
    let subvolume = options
        .subvolume
        .as_ref()
        .map(|name| format!("subvol={name}"));
    data.extend(subvolume.as_deref());
    MountPlan {
        driver,
        read_only,
        flags,
        data: data.join(","),
    }
}

/// The read-only mount that OS inspection makes of a likely root so that
/// the same mount can become the root's read-write mount later
/// ([`MountPlan::takes_over`]): the superblock read-only, the mount itself
/// `nodev,nosuid` only (a read-only superblock writes nothing through any
/// mount), and *no* no-replay option, which would forbid making it
/// read-write. Only for a device that is read-only while this mount is made
/// (`by_fd::mount_reusable`): the kernel then refuses a journal that needs
/// replay instead of replaying it. `nouuid` for xfs, as inspection's other
/// mounts: another copy of the image may be mounted.
pub(crate) fn reusable(driver: String, fstype: FsType) -> MountPlan {
    MountPlan {
        driver,
        read_only: true,
        flags: MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        data: if fstype == FsType::Xfs { "nouuid" } else { "" }.to_string(),
    }
}

impl MountPlan {
    /// Whether a [`reusable`] mount of a `driver` filesystem, made
    /// read-write, is this mount: read-write, `nodev,nosuid` only and no
    /// options of the filesystem's own.
    pub(crate) fn takes_over(&self, driver: &str) -> bool {
        !self.read_only
            && self.driver == driver
            && self.flags == MsFlags::MS_NODEV | MsFlags::MS_NOSUID
            && self.data.is_empty()
    }

    /// The mount as a `mount` command line would say it, for logs and
    /// errors: `mount -t ext4 -o ro,noload on /mnt`.
    pub(crate) fn describe(&self, target: &std::path::Path) -> String {
        format!(
            "mount -t {} -o {}{}{} on {}",
            self.driver,
            if self.read_only { "ro" } else { "rw" },
            if self.flags.contains(MsFlags::MS_NOEXEC) {
                ",noexec"
            } else {
                ""
            },
            if self.data.is_empty() {
                String::new()
            } else {
                format!(",{}", self.data)
            },
            target.display()
        )
    }
}

/// What the kernel's terse mount errors mean here.
pub(crate) fn hint(e: Errno) -> &'static str {
    match e {
        Errno::EINVAL => " (the filesystem is corrupt, not of this type, or an option is wrong)",
        Errno::EUCLEAN => " (the filesystem is corrupt)",
        Errno::EROFS | Errno::EACCES => " (the device is read-only; mount read-only)",
        Errno::ENODEV => " (the kernel does not support this filesystem type)",
        Errno::EBUSY => " (the device or the mount point is busy)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn ext4(options: &MountOptions, device_ro: bool) -> MountPlan {
        plan(options, "ext4".into(), Some(FsType::Ext4), device_ro)
    }

    #[test]
    fn read_write_is_nodev_nosuid_only() {
        let p = ext4(&MountOptions::default(), false);
        assert!(!p.read_only);
        assert_eq!(p.flags, MsFlags::MS_NODEV | MsFlags::MS_NOSUID);
        assert_eq!(p.data, "");
        assert_eq!(p.describe(Path::new("/mnt")), "mount -t ext4 -o rw on /mnt");
    }

    #[test]
    fn read_only_skips_journal_replay() {
        let p = ext4(&MountOptions::default().read_only(true), false);
        assert!(p.read_only && p.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(p.data, "noload");
        let x = plan(
            &MountOptions::default().read_only(true),
            "xfs".into(),
            Some(FsType::Xfs),
            false,
        );
        assert_eq!(x.data, "norecovery");
    }

    #[test]
    fn a_read_only_device_makes_a_read_only_mount() {
        let p = ext4(&MountOptions::default(), true);
        assert!(p.read_only && p.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(p.data, "noload");
    }

    #[test]
    fn read_only_filesystems_are_mounted_read_only() {
        let p = plan(
            &MountOptions::default(),
            "squashfs".into(),
            Some(FsType::Squashfs),
            false,
        );
        assert!(p.read_only);
        assert_eq!(p.data, "");
    }

    #[test]
    fn noexec_and_extra_options_come_last() {
        let o = MountOptions::default()
            .read_only(true)
            .noexec(true)
            .options("errors=remount-ro");
        let p = ext4(&o, false);
        assert!(p.flags.contains(MsFlags::MS_NOEXEC));
        assert_eq!(p.data, "noload,errors=remount-ro");
        assert_eq!(
            p.describe(Path::new("/m")),
            "mount -t ext4 -o ro,noexec,noload,errors=remount-ro on /m"
        );
    }

    #[test]
    fn a_subvolume_comes_last() {
        let p = plan(
            &MountOptions::default()
                .subvolume("root")
                .options("compress=zstd"),
            "btrfs".into(),
            Some(FsType::Btrfs),
            false,
        );
        assert_eq!(p.data, "compress=zstd,subvol=root");
    }

    #[test]
    fn an_unknown_type_gets_no_replay_option() {
        let p = plan(
            &MountOptions::default().read_only(true),
            "ntfs3".into(),
            None,
            false,
        );
        assert_eq!(p.data, "");
        assert!(p.read_only);
    }

    #[test]
    fn a_reusable_mount_is_read_only_without_the_no_replay_option() {
        let p = reusable("xfs".into(), FsType::Xfs);
        assert!(p.read_only);
        assert_eq!(p.flags, MsFlags::MS_NODEV | MsFlags::MS_NOSUID);
        assert_eq!(p.data, "nouuid");
        assert_eq!(reusable("ext4".into(), FsType::Ext4).data, "");
    }

    #[test]
    fn only_a_plain_read_write_mount_takes_over_a_reusable_one() {
        let rw = plan(
            &MountOptions::default(),
            "xfs".into(),
            Some(FsType::Xfs),
            false,
        );
        assert!(rw.takes_over("xfs"));
        assert!(!rw.takes_over("ext4"));
        for other in [
            MountOptions::default().read_only(true),
            MountOptions::default().noexec(true),
            MountOptions::default().options("discard"),
        ] {
            let p = plan(&other, "xfs".into(), Some(FsType::Xfs), false);
            assert!(!p.takes_over("xfs"), "{other:?}");
        }
        let ro_device = plan(
            &MountOptions::default(),
            "xfs".into(),
            Some(FsType::Xfs),
            true,
        );
        assert!(!ro_device.takes_over("xfs"));
    }

    #[test]
    fn hints_name_the_cause() {
        assert!(hint(Errno::EUCLEAN).contains("corrupt"));
        assert!(hint(Errno::EROFS).contains("read-only"));
        assert_eq!(hint(Errno::EPERM), "");
    }
}

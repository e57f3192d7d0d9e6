//! The Fedora-like guest-OS layout: GPT, ext4 `/boot` (partition 1,
//! LABEL=boot), btrfs (partition 2) with subvolumes `root` (the OS, its
//! fstab mounting `/boot` and the `home` subvolume on `/home`) and `home`.
//! Made with sfdisk, mkfs.ext4, mkfs.btrfs and `btrfs subvolume create`.

use std::path::PathBuf;
use std::process::Command;

use super::lvm::{LoopDev, fs_uuid, os_root};
use super::{Fixture, layout, run};

/// Where a Fedora-like image's filesystems are.
pub struct FedoraImage {
    pub path: PathBuf,
    /// `(offset, size)` in bytes of the ext4 `/boot` partition.
    pub boot: (u64, u64),
    /// `(offset, size)` in bytes of the btrfs partition.
    pub btrfs: (u64, u64),
}

impl Fixture {
    /// A Fedora-like image (see the module). The root subvolume holds
    /// os-release, hostname `fedora-guest`, the fstab, `id` (`root`), and
    /// empty `boot`, `home` and `root`; `/boot` holds `id` (`boot`), the
    /// `home` subvolume `id` (`home`). The btrfs device is forgotten by the
    /// kernel afterwards.
    pub fn fedora_image(&self, name: &str) -> FedoraImage {
        let path = self.blank(name, 400 << 20);
        let script = self.path().join(format!("{name}.sfdisk"));
        std::fs::write(&script, "label: gpt\nsize=64MiB, type=L\ntype=L\n").unwrap();
        run(Command::new("sh").arg("-c").arg(format!(
            "sfdisk -q --no-reread --no-tell-kernel {} < {}",
            path.display(),
            script.display()
        )));
        let parts = layout(&path);
        let at = |n: u32| {
            let p = parts.iter().find(|p| p.0 == n).unwrap();
            (p.1, p.2)
        };
        let (boot, btrfs) = (at(1), at(2));
        let uuid = fs_uuid(&format!("{}/{name}", self.path().display()));
        let boot_src = self.tree(&format!("{name}.boot"), &[("id", "boot")]);
        {
            let dev = LoopDev::attach(&path, boot.0, boot.1);
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "boot", "-d"])
                .arg(&boot_src)
                .arg(&dev.dev));
        }
        let fstab = format!(
            "UUID={uuid} / btrfs subvol=root,compress=zstd:1 0 0\n\
             LABEL=boot /boot ext4 defaults 1 2\n\
             UUID={uuid} /home btrfs subvol=home 0 0\n"
        );
        let dev = LoopDev::attach(&path, btrfs.0, btrfs.1);
        run(Command::new("mkfs.btrfs").args(["-q", "-f", "-U", &uuid, &dev.dev]));
        let mnt = self.path().join(format!("{name}.mnt"));
        std::fs::create_dir_all(&mnt).unwrap();
        run(Command::new("mount").arg(&dev.dev).arg(&mnt));
        for sub in ["root", "home"] {
            run(Command::new("btrfs")
                .args(["-q", "subvolume", "create"])
                .arg(mnt.join(sub)));
        }
        for (rel, content) in os_root(
            "fedora",
            "41",
            "Fedora Linux 41",
            "fedora-guest",
            &fstab,
            "root",
        ) {
            let p = mnt.join("root").join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        for d in ["root/boot", "root/home", "root/root"] {
            std::fs::create_dir_all(mnt.join(d)).unwrap();
        }
        std::fs::write(mnt.join("home/id"), "home").unwrap();
        super::system::umount(&mnt);
        run(Command::new("btrfs")
            .args(["device", "scan", "--forget"])
            .arg(&dev.dev));
        drop(dev);
        FedoraImage { path, boot, btrfs }
    }
}

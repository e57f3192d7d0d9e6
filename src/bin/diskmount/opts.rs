//! The options every image-taking subcommand shares, and opening the image
//! and mounting it the way they say.

use std::path::Path;

use crate::failure::{Context, Failed, Usage};
use diskmount::{
    Auto, Backend, Block, Format, Fuse, Image, Loop, MapOptions, MountOptions, Mounted, Nbd,
    Partition, Rbd, Unattached,
};

/// `--format auto|raw|qcow2|...`, `--partition auto|none|N|label=NAME`, ...
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Image format: auto (probed, with the safety rules), raw, qcow2, vmdk, vdi, vhdx, vpc.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Which partition: auto (search), none (the whole disk), a number, label=NAME,
    /// os (the guest's root and its fstab), or lv=VG/LV (an LVM logical volume).
    #[arg(long, default_value = "auto")]
    pub partition: String,
    /// How to attach: auto, loop, nbd, fuse, block, rbd (the kernel's rbd driver, for rbd:// URLs).
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Open and mount read-only, all the way down.
    #[arg(long)]
    pub read_only: bool,
    /// Mount this btrfs subvolume (by path from the top level, as subvol=).
    #[arg(long, value_name = "NAME")]
    pub subvolume: Option<String>,
    /// Mount as this filesystem type instead of probing (bypasses the allow-list).
    #[arg(long)]
    pub fstype: Option<String>,
    /// Allow a qcow2 backing chain (every file in it is checked).
    #[arg(long)]
    pub allow_backing_file: bool,
}

pub type Error = Box<dyn std::error::Error>;

/// The `--backend` names.
const BACKENDS: &str = "expected auto, loop, nbd, fuse, block or rbd";

impl Opts {
    /// What the hints on failure need to know about a command on `image`.
    pub fn context(&self, image: &Path) -> Context {
        Context {
            image: Some(image.to_path_buf()),
            read_only: self.read_only,
            attaches: true,
        }
    }

    /// Refuses option values that name nothing (a usage error, exit
    /// status 2) before anything is opened.
    pub fn validate(&self) -> Result<(), Error> {
        self.partition()?;
        if self.format != "auto" {
            self.format
                .parse::<Format>()
                .map_err(|e| Usage(format!("--format: {e}")))?;
        }
        match self.backend.as_str() {
            "auto" | "loop" | "nbd" | "fuse" | "block" | "rbd" => Ok(()),
            other => Err(Usage(format!("--backend {other:?}: {BACKENDS}")).into()),
        }
    }

    /// The image, opened as the options say.
    pub fn image(&self, path: &Path) -> Result<Image, Error> {
        // A network image by URL (rbd://, nbd://, nbd+unix://, http(s)://,
        // iscsi://): probed through the protocol unless --format is given.
        if let Some(url) = path.to_str().filter(|s| s.contains("://")) {
            let mut image = Image::url(url)?;
            if self.format != "auto" {
                let format: Format = self
                    .format
                    .parse()
                    .map_err(|e| Usage(format!("--format: {e}")))?;
                image = image.with_format(format);
            }
            return Ok(image.read_only(self.read_only));
        }
        let is_block = std::fs::metadata(path)
            .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
            .unwrap_or(false);
        let image = if is_block {
            Image::block(path)?
        } else if self.format == "auto" {
            if self.allow_backing_file {
                let file = std::fs::File::open(path)
                    .map_err(|e| Failed::new("open", path, "open image", e))?;
                let format = diskmount::format::probe(&file, path)?;
                Image::file(path, format)?.allow_backing_file(true)
            } else {
                Image::probe(path)?
            }
        } else {
            let format: Format = self
                .format
                .parse()
                .map_err(|e| Usage(format!("--format: {e}")))?;
            Image::file(path, format)?.allow_backing_file(self.allow_backing_file)
        };
        Ok(image.read_only(self.read_only))
    }

    pub fn partition(&self) -> Result<Partition, Error> {
        Ok(match self.partition.as_str() {
            "auto" => Partition::Auto,
            "none" | "whole" => Partition::Whole,
            "os" => Partition::Os,
            s if s.starts_with("label=") => Partition::Label(s["label=".len()..].to_string()),
            s if s.starts_with("lv=") => {
                let spec = &s["lv=".len()..];
                match spec.split_once('/') {
                    Some((vg, lv)) if !vg.is_empty() && !lv.is_empty() && !lv.contains('/') => {
                        Partition::LogicalVolume {
                            vg: vg.to_string(),
                            lv: lv.to_string(),
                        }
                    }
                    _ => {
                        return Err(Usage(format!(
                            "--partition {s:?}: expected lv=VG/LV (a volume group and a logical volume)"
                        ))
                        .into());
                    }
                }
            }
            s => Partition::Number(s.parse().map_err(|_| {
                Usage(format!(
                    "--partition {s:?}: expected auto, none, os, a number, label=NAME or lv=VG/LV"
                ))
            })?),
        })
    }

    pub fn mount_options(&self) -> MountOptions {
        let mut o = MountOptions::default().read_only(self.read_only);
        if let Some(t) = &self.fstype {
            o = o.fstype(t.clone());
        }
        if let Some(v) = &self.subvolume {
            o = o.subvolume(v.clone());
        }
        o
    }
}

/// What a subcommand does with a mounted image.
pub trait WithMounted {
    type Output;
    fn run<B: Backend>(self, mounted: &Mounted<B>) -> Result<Self::Output, Error>;
}

/// Mounts `image` on `dir` with the backend the options name, runs `job`,
/// and tears everything down; a teardown failure is an error even when the
/// job succeeded.
pub fn mounted<J: WithMounted>(
    opts: &Opts,
    image: &Path,
    dir: &Path,
    job: J,
) -> Result<J::Output, Error> {
    opts.validate()?;
    let image = opts.image(image)?;
    match opts.backend.as_str() {
        "auto" => go::<Auto, J>(opts, image, dir, job),
        "loop" => go::<Loop, J>(opts, image, dir, job),
        "nbd" => go::<Nbd, J>(opts, image, dir, job),
        "fuse" => go::<Fuse, J>(opts, image, dir, job),
        "block" => go::<Block, J>(opts, image, dir, job),
        "rbd" => go::<Rbd, J>(opts, image, dir, job),
        other => Err(Usage(format!("--backend {other:?}: {BACKENDS}")).into()),
    }
}

fn go<B: Backend, J: WithMounted>(
    opts: &Opts,
    image: Image,
    dir: &Path,
    job: J,
) -> Result<J::Output, Error> {
    let mounted = Unattached::<B>::new(image)
        .attach()?
        .map_with(
            opts.partition()?,
            &MapOptions::default().keep_inspection_mount(true),
        )?
        .mount(dir, &opts.mount_options())?;
    let out = job.run(&mounted);
    let closed = mounted.close();
    let out = out?;
    closed?;
    Ok(out)
}

/// A private temporary mount point, removed afterwards.
pub fn temp_mount_point() -> Result<tempfile::TempDir, Error> {
    use std::os::unix::fs::PermissionsExt;
    Ok(tempfile::Builder::new()
        .prefix(".diskmount-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()?)
}

//! `diskmount copy-in` and `copy-out`: through the safe root handle, so a
//! guest's links never lead outside the image.

use std::path::PathBuf;

use diskmount::{Backend, Mounted};
use serde::Serialize;

use crate::failure::Context;
use crate::opts::{self, Error, Opts, WithMounted};
use crate::progress;

#[derive(clap::Args)]
pub struct InArgs {
    /// The image file or block device.
    image: PathBuf,
    #[command(flatten)]
    opts: Opts,
    /// Owner of everything copied in: USER[:GROUP], names from the guest's etc/passwd and etc/group, or numbers.
    #[arg(long, value_name = "USER[:GROUP]")]
    owner: Option<diskmount::guest::OwnerSpec>,
    /// Permission bits (octal) of every regular file copied in.
    #[arg(long, value_name = "OCTAL", value_parser = diskmount::guest::parse_mode)]
    mode: Option<u32>,
    /// Host files or directories, then the directory in the image to copy them into.
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    paths: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct OutArgs {
    /// The image file or block device.
    image: PathBuf,
    #[command(flatten)]
    opts: Opts,
    /// The file or directory in the image.
    image_source: PathBuf,
    /// Where on the host (must not exist yet).
    host_dest: PathBuf,
}

impl InArgs {
    /// What the hints on failure need to know.
    pub fn context(&self) -> Context {
        self.opts.context(&self.image)
    }
}

impl OutArgs {
    /// What the hints on failure need to know.
    pub fn context(&self) -> Context {
        self.opts.context(&self.image)
    }
}

/// `--json` of copy-in and copy-out.
#[derive(Serialize)]
struct Copied {
    image: String,
    /// Bytes of file data copied.
    bytes: u64,
}

struct CopyIn(
    Vec<PathBuf>,
    PathBuf,
    Option<diskmount::guest::OwnerSpec>,
    Option<u32>,
);

impl WithMounted for CopyIn {
    type Output = u64;
    fn run<B: Backend>(self, mounted: &Mounted<B>) -> Result<u64, Error> {
        let root = mounted.root()?;
        // Owner from the guest's files, labels from the guest's policy.
        let guest = diskmount::guest::Guest::read(&root)?;
        let how = guest
            .new_entry(&root, self.2.as_ref(), self.3)?
            .stop_when(crate::interrupt::flag());
        // The bar counts the host files' bytes against what the image's
        // filesystem gains as the copy goes.
        let size = if progress::enabled() {
            self.0.iter().map(|p| progress::tree_size(p)).sum()
        } else {
            0
        };
        let bar = progress::bytes(size, &format!("copying into {}", self.1.display()));
        let mut total = 0;
        for src in &self.0 {
            total += progress::follow_fs(&bar, total, mounted.path(), || {
                root.copy_in_with(src, &self.1, &how)
            })?;
            bar.set_position(total);
        }
        bar.finish_and_clear();
        Ok(total)
    }
}

struct CopyOut(PathBuf, PathBuf);

impl WithMounted for CopyOut {
    type Output = u64;
    fn run<B: Backend>(self, mounted: &Mounted<B>) -> Result<u64, Error> {
        let bar = progress::spinner(&format!(
            "copying {} out to {}",
            self.0.display(),
            self.1.display()
        ));
        let n = mounted
            .root()?
            .copy_out_until(&self.0, &self.1, Some(crate::interrupt::flag()))?;
        bar.finish_and_clear();
        Ok(n)
    }
}

pub fn copy_in(mut args: InArgs, json: bool) -> Result<(), Error> {
    let dest = args.paths.pop().expect("clap requires two paths");
    let dir = opts::temp_mount_point()?;
    let n = opts::mounted(
        &args.opts,
        &args.image,
        dir.path(),
        CopyIn(args.paths, dest, args.owner, args.mode),
    )?;
    dir.close()?;
    log::info!("copied {n} bytes in");
    if json {
        crate::json::print(&Copied {
            image: crate::json::absolute(&args.image),
            bytes: n,
        })?;
    }
    Ok(())
}

pub fn copy_out(args: OutArgs, json: bool) -> Result<(), Error> {
    let dir = opts::temp_mount_point()?;
    let n = opts::mounted(
        &args.opts,
        &args.image,
        dir.path(),
        CopyOut(args.image_source, args.host_dest),
    )?;
    dir.close()?;
    log::info!("copied {n} bytes out");
    if json {
        crate::json::print(&Copied {
            image: crate::json::absolute(&args.image),
            bytes: n,
        })?;
    }
    Ok(())
}

//! `diskmount copy-in` and `copy-out`: through the safe root handle, so a
//! guest's links never lead outside the image.

use std::path::PathBuf;

use diskmount::{Backend, Mounted};
use indicatif::{ProgressBar, ProgressStyle};

use crate::opts::{self, Error, Opts, WithMounted};

#[derive(clap::Args)]
pub struct InArgs {
    /// The image file or block device.
    image: PathBuf,
    #[command(flatten)]
    opts: Opts,
    /// Host files or directories, then the directory in the image to copy them into.
    #[arg(required = true, num_args = 2..)]
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

/// A spinner with the bytes copied, on stderr when it is a terminal.
fn progress(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

struct CopyIn(Vec<PathBuf>, PathBuf);

impl WithMounted for CopyIn {
    type Output = u64;
    fn run<B: Backend>(self, mounted: &Mounted<B>) -> Result<u64, Error> {
        let root = mounted.root()?;
        let mut total = 0;
        for src in &self.0 {
            let bar = progress(&format!(
                "copying {} into {}",
                src.display(),
                self.1.display()
            ));
            total += root.copy_in(src, &self.1)?;
            bar.finish_and_clear();
        }
        Ok(total)
    }
}

struct CopyOut(PathBuf, PathBuf);

impl WithMounted for CopyOut {
    type Output = u64;
    fn run<B: Backend>(self, mounted: &Mounted<B>) -> Result<u64, Error> {
        let bar = progress(&format!(
            "copying {} out to {}",
            self.0.display(),
            self.1.display()
        ));
        let n = mounted.root()?.copy_out(&self.0, &self.1)?;
        bar.finish_and_clear();
        Ok(n)
    }
}

pub fn copy_in(mut args: InArgs) -> Result<(), Error> {
    let dest = args.paths.pop().expect("clap requires two paths");
    let dir = opts::temp_mount_point()?;
    let n = opts::mounted(
        &args.opts,
        &args.image,
        dir.path(),
        CopyIn(args.paths, dest),
    )?;
    dir.close()?;
    log::info!("copied {n} bytes in");
    Ok(())
}

pub fn copy_out(args: OutArgs) -> Result<(), Error> {
    let dir = opts::temp_mount_point()?;
    let n = opts::mounted(
        &args.opts,
        &args.image,
        dir.path(),
        CopyOut(args.image_source, args.host_dest),
    )?;
    dir.close()?;
    log::info!("copied {n} bytes out");
    Ok(())
}

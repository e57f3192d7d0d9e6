//! `diskmount mount IMAGE MOUNTPOINT [OPTS]` leaves the image mounted;
//! `diskmount umount MOUNTPOINT` tears down what is there, found from the
//! kernel's own records (adoption), whoever mounted it.

use std::path::PathBuf;

use diskmount::{AttachOptions, Auto, Backend, Block, Fuse, Loop, Nbd, Unattached};

use crate::opts::{Error, Opts};

#[derive(clap::Args)]
pub struct MountArgs {
    /// The image file or block device.
    image: PathBuf,
    /// An existing directory to mount on.
    mountpoint: PathBuf,
    #[command(flatten)]
    opts: Opts,
}

#[derive(clap::Args)]
pub struct UmountArgs {
    /// The mount point (or the mounted device).
    mountpoint: PathBuf,
}

fn mount_with<B: Backend>(args: &MountArgs) -> Result<(), Error> {
    let image = args.opts.image(&args.image)?;
    // qemu helpers must survive this process.
    let options = AttachOptions::default().persistent(true);
    let mounted = Unattached::<B>::with_options(image, options)
        .attach()?
        .map(args.opts.partition()?)?
        .mount(&args.mountpoint, &args.opts.mount_options())?;
    let device = mounted.device().to_path_buf();
    let path = mounted.persist()?;
    println!("{} mounted on {}", device.display(), path.display());
    Ok(())
}

pub fn mount(args: MountArgs) -> Result<(), Error> {
    match args.opts.backend.as_str() {
        "auto" => mount_with::<Auto>(&args),
        "loop" => mount_with::<Loop>(&args),
        "block" => mount_with::<Block>(&args),
        "nbd" => mount_with::<Nbd>(&args),
        "fuse" => mount_with::<Fuse>(&args),
        other => {
            Err(format!("--backend {other:?}: expected auto, loop, nbd, fuse or block").into())
        }
    }
}

pub fn umount(args: UmountArgs) -> Result<(), Error> {
    let adopted = diskmount::adopt(&args.mountpoint)?;
    let what = format!(
        "{} ({}, {})",
        adopted.device().display(),
        adopted.backend(),
        adopted.mapping().as_str()
    );
    adopted.close()?;
    // The record `mount` left, if any, is done with.
    let target = std::fs::canonicalize(&args.mountpoint).unwrap_or(args.mountpoint.clone());
    for w in crate::cleanup::release_persistent(&target)? {
        eprintln!("diskmount: warning: {w}");
    }
    println!(
        "unmounted {} and released {what}",
        args.mountpoint.display()
    );
    Ok(())
}

//! `diskmount hold`: a hidden helper for crash tests. It takes an image to
//! a lifecycle state, prints `READY <device>` and waits to be killed.

use std::io::Write;
use std::path::PathBuf;

use diskmount::{Format, Image, Loop, MountOptions, Partition, Unattached};

#[derive(clap::Args)]
pub struct Args {
    /// attached, mapped or mounted.
    #[arg(long)]
    state: String,
    /// A raw image file.
    image: PathBuf,
    /// Where to mount (state mounted).
    mountpoint: Option<PathBuf>,
    /// Partition number to map (default: the whole disk).
    #[arg(long)]
    partition: Option<u32>,
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let image = Image::file(&args.image, Format::Raw)?;
    let partition = args.partition.map_or(Partition::Whole, Partition::Number);
    let attached = Unattached::<Loop>::new(image).attach()?;
    let device = attached.device().display().to_string();
    let hold: Box<dyn std::any::Any> = match args.state.as_str() {
        "attached" => Box::new(attached),
        "mapped" => Box::new(attached.map(partition)?),
        "mounted" => {
            let dir = args.mountpoint.ok_or("state mounted needs a mount point")?;
            Box::new(
                attached
                    .map(partition)?
                    .mount(dir, &MountOptions::default())?,
            )
        }
        other => return Err(format!("unknown state {other:?}").into()),
    };
    println!("READY {device}");
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
        let _ = &hold;
    }
}

//! `diskmount hold`: a hidden helper for crash tests. It takes an image to
//! a lifecycle state, prints `READY <device>` and waits to be killed.

use std::io::Write;
use std::path::PathBuf;

use diskmount::{
    Auto, Backend, Format, Fuse, Image, Loop, MountOptions, Nbd, Partition, Rbd, Unattached,
};

#[derive(clap::Args)]
pub struct Args {
    /// attached, mapped or mounted.
    #[arg(long)]
    state: String,
    /// An image file, or a network image's URL (nbd://, rbd://, ...).
    image: PathBuf,
    /// Where to mount (state mounted).
    mountpoint: Option<PathBuf>,
    /// loop, nbd, fuse, rbd or auto.
    #[arg(long, default_value = "loop")]
    backend: String,
    /// The image format (a file's default: raw; a URL's: probed, raw for
    /// rbd://).
    #[arg(long)]
    format: Option<String>,
    /// Partition number, lv=VG/LV, or os (the guest's root and its fstab),
    /// to map (default: the whole disk).
    #[arg(long)]
    partition: Option<String>,
    /// A guest mount point of `--partition os` not to mount (repeatable).
    #[arg(long)]
    exclude: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let format: Option<Format> = args.format.as_deref().map(str::parse).transpose()?;
    let image = match args.image.to_str().filter(|s| s.contains("://")) {
        Some(url) => {
            let image = Image::url(url)?;
            match format {
                Some(f) => image.with_format(f),
                None => image,
            }
        }
        None => Image::file(&args.image, format.unwrap_or(Format::Raw))?,
    };
    let partition = match args.partition.as_deref() {
        None => Partition::Whole,
        Some("os") => Partition::Os,
        Some(s) => match s.strip_prefix("lv=").and_then(|v| v.split_once('/')) {
            Some((vg, lv)) => Partition::LogicalVolume {
                vg: vg.into(),
                lv: lv.into(),
            },
            None => Partition::Number(s.parse()?),
        },
    };
    let mut options = MountOptions::default();
    for x in args.exclude {
        options = options.exclude(x);
    }
    let (state, dir) = (args.state, args.mountpoint);
    match args.backend.as_str() {
        "loop" => hold::<Loop>(image, partition, state, dir, options),
        "nbd" => hold::<Nbd>(image, partition, state, dir, options),
        "fuse" => hold::<Fuse>(image, partition, state, dir, options),
        "auto" => hold::<Auto>(image, partition, state, dir, options),
        "rbd" => hold::<Rbd>(image, partition, state, dir, options),
        other => Err(format!("unknown backend {other:?}").into()),
    }
}

fn hold<B: Backend>(
    image: Image,
    partition: Partition,
    state: String,
    mountpoint: Option<PathBuf>,
    options: MountOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    let attached = Unattached::<B>::new(image).attach()?;
    let device = attached.device().display().to_string();
    let hold: Box<dyn std::any::Any> = match state.as_str() {
        "attached" => Box::new(attached),
        "mapped" => Box::new(attached.map(partition)?),
        "mounted" => {
            let dir = mountpoint.ok_or("state mounted needs a mount point")?;
            Box::new(attached.map(partition)?.mount(dir, &options)?)
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

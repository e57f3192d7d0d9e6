//! `diskmount inspect IMAGE [--format F] [--json]`: format, virtual size,
//! partition table, and each partition's place, type, label and filesystem,
//! read without mounting anything.

use std::fs::File;
use std::path::{Path, PathBuf};

use diskmount::fs::{Detected, probe};
use diskmount::partition::{PartitionTable, PartitionType, find_filesystems, read_table};
use diskmount::{Auto, Format, Image, ImageKind, Unattached};

use indicatif::HumanBytes;
use serde::Serialize;

use crate::failure::{Context, Failed};
use crate::opts::Error;

#[derive(clap::Args)]
pub struct Args {
    /// The image file or block device.
    image: PathBuf,
    /// The format: auto (probed, with the safety rules), raw, qcow2, ...
    #[arg(long, default_value = "auto")]
    format: String,
}

/// One partition, as `--json` prints it (docs/cli.md).
#[derive(Serialize)]
struct Part {
    number: u32,
    start: u64,
    size: u64,
    /// The type GUID or MBR id, and its name where known.
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "type_name")]
    kind_name: Option<String>,
    label: Option<String>,
    fstype: Option<String>,
}

fn format_name<S: serde::Serializer>(f: &Format, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.as_str())
}

/// What `inspect` found, as `--json` prints it (docs/cli.md).
#[derive(Serialize)]
struct Report {
    #[serde(serialize_with = "format_name")]
    format: Format,
    virtual_size: u64,
    table: Option<&'static str>,
    #[serde(rename = "partitions")]
    parts: Vec<Part>,
    fstype: Option<String>,
    volumes: Vec<crate::inspect_volumes::Volume>,
    /// The guest operating systems (inspect_os.rs); `null` when not run
    /// as root (looking inside needs a mount).
    os: Option<Vec<crate::inspect_os::Os>>,
}

fn fs_name(d: &Detected) -> Option<String> {
    match d {
        Detected::Filesystem { fstype, .. } => Some(fstype.to_string()),
        Detected::Other(what) => Some(
            what.trim_start_matches("a ")
                .trim_start_matches("an ")
                .to_string(),
        ),
        _ => None,
    }
}

/// Reads the table and superblocks from `device` (a file or block device).
fn examine(device: &File, path: &Path, size: u64, format: Format) -> Result<Report, Error> {
    let table: Option<PartitionTable> = read_table(device, path, size)?;
    let (parts, fstype) = match &table {
        Some(t) => (
            find_filesystems(device, t)
                .into_iter()
                .map(|(p, d)| Part {
                    number: p.number,
                    start: p.start,
                    size: p.size,
                    kind: match &p.kind {
                        PartitionType::Gpt { guid, .. } => guid.clone(),
                        PartitionType::Mbr { id, .. } => format!("0x{id:02x}"),
                        _ => p.kind.describe(),
                    },
                    kind_name: match &p.kind {
                        PartitionType::Gpt { name, .. } | PartitionType::Mbr { name, .. } => {
                            name.map(str::to_string)
                        }
                        _ => None,
                    },
                    label: p.name.clone().or_else(|| match &d {
                        Detected::Filesystem { label, .. } => label.clone(),
                        _ => None,
                    }),
                    fstype: fs_name(&d),
                })
                .collect(),
            None,
        ),
        None => (Vec::new(), fs_name(&probe(device)?)),
    };
    Ok(Report {
        format,
        virtual_size: size,
        volumes: crate::inspect_volumes::volumes(device, path, size, table.as_ref()),
        table: table.map(|t| t.kind.as_str()),
        parts,
        fstype,
        os: None,
    })
}

impl Args {
    /// `inspect IMAGE` with the defaults, for the demo.
    pub fn for_demo(image: &Path) -> Args {
        Args {
            image: image.to_path_buf(),
            format: "auto".into(),
        }
    }

    /// What the hints on failure need to know (inspect reads; it attaches
    /// only images that are not raw).
    pub fn context(&self) -> Context {
        Context {
            image: Some(self.image.clone()),
            read_only: true,
            attaches: false,
        }
    }
}

/// `inspect` for people (the demo calls it).
pub fn run(args: Args) -> Result<(), Error> {
    inspect(args, false)
}

/// `inspect`, as a table or (`json`) for programs.
pub fn inspect(args: Args, json: bool) -> Result<(), Error> {
    let opts = crate::opts::Opts {
        format: args.format.clone(),
        partition: "none".into(),
        backend: "auto".into(),
        read_only: true,
        fstype: None,
        subvolume: None,
        allow_backing_file: false,
    };
    let image: Image = opts.image(&args.image)?;
    let local = image.kind() != ImageKind::Url;
    let report = if local && (image.kind() == ImageKind::Block || image.format() == Format::Raw) {
        // Raw bytes: read the file or device itself; the OS is looked for
        // on one read-only attach.
        let file = File::open(image.path())
            .map_err(|e| Failed::new("probe", image.path(), "open image", e))?;
        let size = match image.kind() {
            ImageKind::Block => diskmount::format::ReadAt::size(&file)?,
            _ => file.metadata()?.len(),
        };
        let mut report = examine(&file, image.path(), size, image.format())?;
        report.os = crate::inspect_os::find(&image)?;
        report
    } else {
        // Other formats and URLs: the disk as qemu shows it, attached
        // read-only once for the table, the filesystems and the OS.
        let bar = crate::progress::spinner(&format!(
            "attaching {} ({}) read-only to read it",
            image.path().display(),
            if image.needs_format_probe() {
                "format probed through the protocol".to_string()
            } else {
                image.format().to_string()
            }
        ));
        let attached = Unattached::<Auto>::new(image.clone()).attach()?;
        bar.set_message(format!("reading {}", attached.device().display()));
        let report = File::open(attached.device())
            .map_err(|e| Error::from(Failed::new("probe", attached.device(), "open device", e)))
            .and_then(|file| examine(&file, attached.device(), attached.size(), attached.format()))
            .and_then(|mut report| {
                bar.set_message("looking for the guest OS");
                report.os = crate::inspect_os::of(&attached)?;
                Ok(report)
            });
        bar.set_message("detaching");
        let closed = attached.close();
        bar.finish_and_clear();
        let report = report?;
        closed?;
        report
    };
    if json {
        crate::json::print(&report)?;
    } else {
        print!(
            "{}{}",
            table(&args.image, &report),
            crate::inspect_volumes::table(&report.volumes)
        );
        print!("{}", crate::inspect_os::lines(report.os.as_deref()));
    }
    Ok(())
}

/// A table for people, with a bar showing where each partition lies.
fn table(path: &Path, r: &Report) -> String {
    let mut out = format!(
        "{}: {} image, {} ({} bytes)\n",
        path.display(),
        r.format,
        HumanBytes(r.virtual_size),
        r.virtual_size
    );
    let Some(kind) = r.table else {
        out.push_str(&format!(
            "no partition table; filesystem: {}\n",
            r.fstype.as_deref().unwrap_or("none recognised")
        ));
        return out;
    };
    out.push_str(&format!(
        "{kind} partition table, {} partitions\n",
        r.parts.len()
    ));
    const WIDTH: u64 = 60;
    let mut bar = vec!['.'; WIDTH as usize];
    for p in &r.parts {
        let from = (p.start * WIDTH / r.virtual_size.max(1)) as usize;
        let to = (((p.start + p.size) * WIDTH).div_ceil(r.virtual_size.max(1)) as usize)
            .clamp(from + 1, WIDTH as usize);
        let mark = std::char::from_digit(p.number % 36, 36).unwrap_or('#');
        for c in bar.iter_mut().take(to).skip(from) {
            *c = mark;
        }
    }
    out.push_str(&format!("[{}]\n", bar.into_iter().collect::<String>()));
    out.push_str(&format!(
        "{:>3}  {:>12}  {:>10}  {:<22}  {:<14}  {}\n",
        "#", "start", "size", "type", "label", "filesystem"
    ));
    for p in &r.parts {
        out.push_str(&format!(
            "{:>3}  {:>12}  {:>10}  {:<22}  {:<14}  {}\n",
            p.number,
            p.start,
            HumanBytes(p.size).to_string(),
            p.kind_name.as_deref().unwrap_or(&p.kind),
            p.label.as_deref().unwrap_or("-"),
            p.fstype.as_deref().unwrap_or("-")
        ));
    }
    out
}

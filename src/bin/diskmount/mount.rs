//! `diskmount mount IMAGE MOUNTPOINT [OPTS]` leaves the image mounted;
//! `diskmount umount MOUNTPOINT` tears down what is there, found from the
//! kernel's own records (adoption), whoever mounted it.

use std::path::PathBuf;

use diskmount::{
    AttachOptions, Auto, Backend, Block, Fuse, Loop, MapOptions, Nbd, Rbd, Unattached,
};
use serde::Serialize;

use crate::failure::Context;
use crate::json;
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

impl MountArgs {
    /// What the hints on failure need to know.
    pub fn context(&self) -> Context {
        self.opts.context(&self.image)
    }
}

/// `mount --json`.
#[derive(Serialize)]
struct Mounted {
    image: String,
    /// The device the filesystem is mounted from (a partition's own).
    device: String,
    /// Where the filesystem is mounted.
    mountpoint: String,
    /// Every mount this left: the filesystem's, then the FUSE export of
    /// the image where the backend made one.
    mount_points: Vec<String>,
    backend: &'static str,
    /// How the partition got its device (`whole`, `kernel`, ...).
    mapping: &'static str,
    partition: Option<u32>,
    fstype: String,
    read_only: bool,
    /// The record `umount` and `cleanup` find it by, if records are on.
    record: Option<String>,
    /// The qemu helper serving the image (nbd, fuse), which outlives diskmount.
    helper_pid: Option<u32>,
}

/// The record this process left for the mount on `target`.
fn own_record(target: &std::path::Path) -> Option<diskmount::cleanup::Found> {
    let pid = std::process::id();
    diskmount::cleanup::scan(&diskmount::RunDir::current_default())
        .ok()?
        .into_iter()
        .find(|f| f.is_persistent() && f.pid() == Some(pid) && f.mountpoint() == Some(target))
}

fn mount_with<B: Backend>(args: &MountArgs, as_json: bool) -> Result<(), Error> {
    args.opts.validate()?;
    let image = args.opts.image(&args.image)?;
    // qemu helpers must survive this process.
    let options = AttachOptions::default().persistent(true);
    let mounted = Unattached::<B>::with_options(image, options)
        .attach()?
        .map_with(
            args.opts.partition()?,
            &MapOptions::default().keep_inspection_mount(true),
        )?
        .mount(&args.mountpoint, &args.opts.mount_options())?;
    let device = mounted.device().to_path_buf();
    let backend = mounted.backend().as_str();
    let mapping = mounted.mapped().mapping().as_str();
    let partition = mounted.mapped().partition();
    let fstype = mounted.fstype().to_string();
    let read_only = mounted.is_read_only();
    // A stop signal before the mount is left: take it down again.
    crate::interrupt::check("mount")?;
    let path = mounted.persist()?;
    if !as_json {
        println!("{} mounted on {}", device.display(), path.display());
        return Ok(());
    }
    let record = own_record(&path);
    let mut mount_points = vec![json::path(&path)];
    // qemu-storage-daemon's FUSE export of the image, in the record's
    // helper directory.
    if backend == "fuse"
        && let Some(r) = &record
    {
        mount_points.push(json::path(
            &r.record().with_extension("helper").join("export"),
        ));
    }
    json::print(&Mounted {
        image: json::absolute(&args.image),
        device: json::path(&device),
        mountpoint: json::path(&path),
        mount_points,
        backend,
        mapping,
        partition,
        fstype,
        read_only,
        record: record.as_ref().map(|r| json::path(r.record())),
        helper_pid: record.as_ref().and_then(|r| r.helper_pid()),
    })
}

pub fn mount(args: MountArgs, json: bool) -> Result<(), Error> {
    match args.opts.backend.as_str() {
        "auto" => mount_with::<Auto>(&args, json),
        "loop" => mount_with::<Loop>(&args, json),
        "block" => mount_with::<Block>(&args, json),
        "nbd" => mount_with::<Nbd>(&args, json),
        "fuse" => mount_with::<Fuse>(&args, json),
        "rbd" => mount_with::<Rbd>(&args, json),
        _ => args.opts.validate(),
    }
}

/// `umount --json`.
#[derive(Serialize)]
struct Unmounted {
    mountpoint: String,
    device: String,
    backend: String,
    mapping: &'static str,
    /// The records of `diskmount mount` removed with it.
    records_removed: Vec<String>,
}

pub fn umount(args: UmountArgs, as_json: bool) -> Result<(), Error> {
    // A `--partition os` mount: the guest's fstab mounts over it (known
    // from the record `mount` left) come down first.
    let target = std::fs::canonicalize(&args.mountpoint).unwrap_or(args.mountpoint.clone());
    crate::cleanup::release_guest_mounts(&target)?;
    let adopted = diskmount::adopt(&args.mountpoint)?;
    let device = adopted.device().to_path_buf();
    let backend = adopted.backend().to_string();
    let mapping = adopted.mapping().as_str();
    let what = format!("{} ({backend}, {mapping})", device.display());
    adopted.close()?;
    // The record `mount` left, if any, is done with.
    let (warnings, records) = crate::cleanup::release_persistent(&target)?;
    for w in warnings {
        eprintln!("diskmount: warning: {w}");
    }
    let removed: Vec<String> = records.iter().map(|r| json::path(r)).collect();
    if as_json {
        return json::print(&Unmounted {
            mountpoint: json::path(&target),
            device: json::path(&device),
            backend,
            mapping,
            records_removed: removed,
        });
    }
    println!(
        "unmounted {} and released {what}",
        args.mountpoint.display()
    );
    Ok(())
}

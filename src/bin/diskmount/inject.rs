//! `diskmount inject IMAGE [OPTS] [--ssh-key USER=PUBKEY_FILE]...
//! [--hostname NAME] [--write FILE:DEST[:MODE[:OWNER]]]...
//! [--password USER=CRYPT_HASH_FILE] [--selinux-relabel]`: everything in one
//! mount, owners from the guest's own files, labels from the guest's own
//! SELinux policy; exit 0 only once it is all durable in the image.
//!
//! Every argument and host file is read and checked before the image is
//! mounted; in the image, every part is checked before anything is written
//! ([`diskmount::guest::Injection::apply`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use diskmount::guest::{FileWrite, Injection, OwnerSpec, hostname, parse_mode, password, ssh};
use diskmount::{Backend, Mounted};
use serde::Serialize;

use crate::failure::{Context, Failed, Usage};
use crate::opts::{self, Error, Opts, WithMounted};

#[derive(clap::Args)]
pub struct Args {
    /// The image file or block device.
    image: PathBuf,
    #[command(flatten)]
    opts: Opts,
    /// Append the public key(s) in PUBKEY_FILE to USER's ~/.ssh/authorized_keys (unless there already).
    #[arg(long = "ssh-key", value_name = "USER=PUBKEY_FILE")]
    ssh_key: Vec<String>,
    /// Set the guest's host name (etc/hostname, and the 127.0.1.1 line of etc/hosts where there is one).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Write host FILE to DEST in the guest, with octal MODE and OWNER (USER[:GROUP]) if given.
    #[arg(long, value_name = "FILE:DEST[:MODE[:OWNER]]")]
    write: Vec<String>,
    /// Set USER's password to the crypt(3) hash in CRYPT_HASH_FILE (never a clear-text password).
    #[arg(long, value_name = "USER=CRYPT_HASH_FILE")]
    password: Option<String>,
    /// Make the guest relabel all its files at next boot (/.autorelabel; SELinux guests).
    #[arg(long)]
    selinux_relabel: bool,
}

impl Args {
    /// What the hints on failure need to know.
    pub fn context(&self) -> Context {
        self.opts.context(&self.image)
    }
}

/// `--json` of inject.
#[derive(Serialize)]
struct Injected {
    image: String,
    /// How many guest files changed.
    changed: usize,
    /// Whether the guest uses SELinux (what was created got its policy's labels).
    selinux: bool,
}

/// The largest public-key or hash file read.
const SMALL_FILE: u64 = 1 << 20;

/// A host file, whole (at most `limit` bytes), for the option `what`.
fn read_host(what: &str, path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let file = std::fs::File::open(path).map_err(|e| Failed::new("open", path, "open", e))?;
    let mut out = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Failed::new("open", path, "read", e))?;
    if out.len() as u64 > limit {
        return Err(Usage(format!(
            "{what}: {}: larger than {limit} bytes",
            path.display()
        ))
        .into());
    }
    Ok(out)
}

/// `USER=FILE`.
fn user_file<'a>(what: &str, arg: &'a str) -> Result<(&'a str, &'a Path), Error> {
    match arg.split_once('=') {
        Some((u, f)) if !u.is_empty() && !f.is_empty() => Ok((u, Path::new(f))),
        _ => Err(Usage(format!("{what} {arg:?}: expected USER=FILE")).into()),
    }
}

/// `FILE:DEST[:MODE[:OWNER]]` (MODE may be empty to give only OWNER).
fn file_write(arg: &str) -> Result<FileWrite, Error> {
    let bad = |why: String| Usage(format!("--write {arg:?}: {why}"));
    let (file, rest) = arg
        .split_once(':')
        .ok_or_else(|| bad("expected FILE:DEST[:MODE[:OWNER]]".into()))?;
    let mut parts = rest.splitn(3, ':');
    let dest = parts.next().unwrap_or("");
    if file.is_empty() || !dest.starts_with('/') {
        return Err(bad("expected FILE:DEST[:MODE[:OWNER]] with an absolute DEST".into()).into());
    }
    let mode = match parts.next() {
        None | Some("") => None,
        Some(m) => Some(parse_mode(m).map_err(bad)?),
    };
    let owner = parts
        .next()
        .map(OwnerSpec::parse)
        .transpose()
        .map_err(bad)?;
    Ok(FileWrite {
        dest: PathBuf::from(dest),
        data: read_host("--write", Path::new(file), u64::MAX / 2)?,
        mode,
        owner,
    })
}

/// The whole plan, from the arguments and the host files they name.
fn plan(args: &Args) -> Result<Injection, Error> {
    let mut plan = Injection::default();
    for arg in &args.ssh_key {
        let (user, file) = user_file("--ssh-key", arg)?;
        let text = String::from_utf8(read_host("--ssh-key", file, SMALL_FILE)?)
            .map_err(|_| Usage(format!("--ssh-key: {}: not UTF-8 text", file.display())))?;
        let keys = ssh::parse_public_keys(&text)
            .map_err(|e| Usage(format!("--ssh-key: {}: {e}", file.display())))?;
        plan.ssh_keys.push((user.to_string(), keys));
    }
    if let Some(name) = &args.hostname {
        hostname::validate(name).map_err(|e| Usage(format!("--hostname: {e}")))?;
        plan.hostname = Some(name.clone());
    }
    for arg in &args.write {
        plan.writes.push(file_write(arg)?);
    }
    if let Some(arg) = &args.password {
        let (user, file) = user_file("--password", arg)?;
        let text = String::from_utf8(read_host("--password", file, SMALL_FILE)?).map_err(|_| {
            Usage(format!(
                "--password: {}: not a crypt(3) hash",
                file.display()
            ))
        })?;
        let hash = password::hash_from_file_text(&text)
            .map_err(|e| Usage(format!("--password: {}: {e}", file.display())))?;
        plan.password = Some((user.to_string(), hash));
    }
    plan.selinux_relabel = args.selinux_relabel;
    if plan.is_empty() {
        return Err(
            "nothing to inject: give --ssh-key, --hostname, --write, --password or \
                    --selinux-relabel"
                .into(),
        );
    }
    Ok(plan)
}

struct Job(Injection);

impl WithMounted for Job {
    type Output = diskmount::guest::Applied;
    fn run<B: Backend>(self, mounted: &Mounted<B>) -> Result<Self::Output, Error> {
        Ok(self.0.apply(&mounted.root()?)?)
    }
}

pub fn run(args: Args, json: bool) -> Result<(), Error> {
    if args.opts.read_only {
        return Err(Usage(
            "inject writes into the image: --read-only cannot be used with it".into(),
        )
        .into());
    }
    let plan = plan(&args)?;
    let dir = opts::temp_mount_point()?;
    // `mounted` returns only after close(): unmounted, flushed, synced.
    let applied = opts::mounted(&args.opts, &args.image, dir.path(), Job(plan))?;
    dir.close()?;
    log::info!(
        "injected: {} guest files changed{}",
        applied.changed,
        if applied.selinux {
            ", labelled from the guest's SELinux policy"
        } else {
            ""
        }
    );
    if json {
        crate::json::print(&Injected {
            image: crate::json::absolute(&args.image),
            changed: applied.changed,
            selinux: applied.selinux,
        })?;
    }
    Ok(())
}

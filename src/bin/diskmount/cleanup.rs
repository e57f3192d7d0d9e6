//! `diskmount cleanup [--dry-run] [--json]`: tear down what diskmount
//! processes that died (crash, kill -9) left behind, found from their
//! records in the run directory and verified against the kernel by the
//! library ([`diskmount::cleanup`]), and nothing else.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use diskmount::RunDir;
use diskmount::cleanup::{Action, Found, Outcome, Status};
use serde_json::{Value, json};

use crate::opts::Error;

#[derive(clap::Args)]
pub struct Args {
    /// Only list what would be torn down.
    #[arg(long)]
    dry_run: bool,
    /// Print what was found and what was torn down as a JSON array, one
    /// object per record.
    #[arg(long)]
    json: bool,
}

/// The run directory: `DISKMOUNT_RUN_DIR` if set (empty: records off),
/// else the library's default. Only the command line reads the variable.
pub fn run_dir() -> RunDir {
    match std::env::var_os("DISKMOUNT_RUN_DIR") {
        Some(d) if d.is_empty() => RunDir::off(),
        Some(d) => RunDir::new(d),
        None => RunDir::new(RunDir::DEFAULT_PATH),
    }
}

/// A path for JSON, losslessly: a string if it is UTF-8, else its bytes.
fn path_json(p: &Path) -> Value {
    match p.to_str() {
        Some(s) => Value::from(s),
        None => Value::from(p.as_os_str().as_bytes().to_vec()),
    }
}

fn action_json(a: &Action) -> Value {
    let mut v = json!({ "action": a.kind(), "path": path_json(a.path()) });
    if let Some(pid) = a.pid() {
        v["pid"] = pid.into();
    }
    v
}

fn found_json(f: &Found) -> Value {
    let mut v = json!({
        "record": path_json(f.record()),
        "status": f.status().as_str(),
        "pid": f.pid(),
        "image": f.image().map(path_json),
        "backend": f.backend(),
        "mountpoint": f.mountpoint().map(path_json),
        "persistent": f.is_persistent(),
        "planned": f.plan().iter().map(action_json).collect::<Vec<_>>(),
        "unverified": f.unverified(),
    });
    if let Status::Unreadable { reason } = f.status() {
        v["reason"] = reason.as_str().into();
    }
    v
}

fn describe(f: &Found) -> String {
    let name = f.record().display();
    let image = f
        .image()
        .map(|i| format!("{:?}", i.as_os_str()))
        .unwrap_or_else(|| "?".into());
    match f.status() {
        Status::Live { pid } => format!("{name}: in use by running process {pid}; left alone"),
        Status::Released { pid } => format!(
            "{name}: its process {pid} still runs (its teardown did not finish); left alone until it exits"
        ),
        Status::Persistent => format!(
            "{name}: mounted on purpose on {} (diskmount mount); use diskmount umount",
            f.mountpoint()
                .map(|m| m.display().to_string())
                .unwrap_or_default()
        ),
        Status::Orphan if f.pid().is_none() => {
            format!("{name}: left by a process killed while attaching")
        }
        Status::Orphan => format!(
            "{name}: left by dead process {} ({image}, {} backend)",
            f.pid().unwrap_or(0),
            f.backend().unwrap_or("?")
        ),
        Status::Unreadable { reason } => {
            format!("{name}: cannot be read or verified ({reason}); not acted on")
        }
        _ => format!("{name}: {}", f.status().as_str()),
    }
}

pub fn run(args: Args) -> Result<(), Error> {
    let found = diskmount::cleanup::scan(&run_dir())?;
    let (mut done, mut failed) = (0, 0);
    let mut report = Vec::new();
    for f in found {
        let mut entry = found_json(&f);
        if !args.json {
            println!("{}", describe(&f));
            for u in f.unverified() {
                println!("    not verified, left alone: {u}");
            }
        }
        if *f.status() != Status::Orphan {
            report.push(entry);
            continue;
        }
        if args.dry_run {
            if !args.json {
                for a in f.plan() {
                    println!("    would {a}");
                }
            }
            report.push(entry);
            continue;
        }
        let Outcome {
            done: did,
            errors,
            left,
        } = f.tear_down();
        if !args.json {
            for a in &did {
                println!("    {a}");
            }
            // Errors of a dead process's teardown are often its lost writes
            // (a flush to a killed qemu fails): reported, but what counts
            // is whether anything is left.
            for e in &errors {
                eprintln!("    warning: {e}");
            }
        }
        if left.is_empty() {
            done += 1;
        } else {
            if !args.json {
                eprintln!("    still there: {}", left.join(", "));
            }
            failed += 1;
        }
        entry["done"] = did.iter().map(action_json).collect::<Vec<_>>().into();
        entry["errors"] = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .into();
        entry["left"] = left.into();
        report.push(entry);
    }
    if args.json {
        println!("{}", Value::from(report));
    } else {
        println!("cleanup: {done} torn down, {failed} failed");
    }
    if failed > 0 {
        return Err(format!("{failed} records could not be torn down completely").into());
    }
    Ok(())
}

/// After `diskmount umount` took the mount on `target` down: tears down
/// what the persistent record of that mount still names (its qemu helper,
/// its directory) and removes the record. Returns the warnings and the
/// records it removed.
pub fn release_persistent(target: &Path) -> Result<(Vec<String>, Vec<PathBuf>), Error> {
    let mut warnings = Vec::new();
    let mut removed = Vec::new();
    for f in diskmount::cleanup::scan(&run_dir())? {
        if f.is_persistent() && f.mountpoint() == Some(target) && *f.status() == Status::Orphan {
            removed.push(f.record().to_path_buf());
            let out = f.tear_down();
            warnings.extend(out.errors.iter().map(|e| e.to_string()));
            if !out.left.is_empty() {
                warnings.push(format!("still there: {}", out.left.join(", ")));
            }
        }
    }
    Ok((warnings, removed))
}

/// Before `diskmount umount` takes the mount on `target` down: unmounts
/// the guest's fstab mounts over it and removes their devices, as the
/// persistent record of that mount names them (a `--partition os` mount).
pub fn release_guest_mounts(target: &Path) -> Result<(), Error> {
    for f in diskmount::cleanup::scan(&run_dir())? {
        if f.is_persistent() && f.mountpoint() == Some(target) {
            let out = f.tear_down_guest_mounts();
            if let Some(e) = out.errors.into_iter().next() {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

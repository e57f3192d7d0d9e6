//! `diskmount cleanup [--dry-run]`: tear down what diskmount processes that
//! died (crash, kill -9) left behind, found from their records under
//! /run/diskmount, and nothing else.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diskmount::record::Record;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::opts::Error;

#[derive(clap::Args)]
pub struct Args {
    /// Only list what would be torn down.
    #[arg(long)]
    dry_run: bool,
}

fn is_mount_point(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(path))
        })
        .unwrap_or(false)
}

fn unescape(s: &str) -> PathBuf {
    PathBuf::from(
        s.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\"),
    )
}

/// Whether `pid` runs a qemu helper working on `what`.
fn helper_alive(pid: u32, what: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(what)
        })
        .unwrap_or(false)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

pub fn run(args: Args) -> Result<(), Error> {
    let mut failed = 0;
    let mut done = 0;
    for rec in Record::all() {
        let name = rec.file.display().to_string();
        if rec.owner_alive() {
            println!(
                "{name}: in use by running process {}; left alone",
                rec.get("pid").unwrap_or("?")
            );
            continue;
        }
        let mountpoint = rec.get("mountpoint").map(PathBuf::from);
        if rec.persistent() {
            if mountpoint.as_deref().is_some_and(is_mount_point) {
                println!(
                    "{name}: mounted on purpose on {} (diskmount mount); use diskmount umount",
                    mountpoint.unwrap().display()
                );
                continue;
            }
            println!("{name}: its mount is gone; removing the stale record");
            if !args.dry_run {
                rec.remove()?;
            }
            continue;
        }
        let image = rec.get("image").unwrap_or("?");
        println!(
            "{name}: left by dead process {} ({image}, {} backend)",
            rec.get("pid").unwrap_or("?"),
            rec.get("backend").unwrap_or("?")
        );
        if args.dry_run {
            for key in ["mountpoint", "mapped", "device", "daemon_pid", "export_dir"] {
                if let Some(v) = rec.get(key) {
                    println!("    would release {key} {v}");
                }
            }
            continue;
        }
        // Errors of a dead process's teardown are often its lost writes
        // (a flush to a killed qemu fails): reported, but what counts is
        // whether anything is left.
        if let Err(e) = teardown(&rec) {
            eprintln!("    warning: {e}");
        }
        let left = leftovers(&rec);
        if left.is_empty() {
            rec.remove()?;
            done += 1;
        } else {
            eprintln!("    still there: {}", left.join(", "));
            failed += 1;
        }
    }
    println!("cleanup: {done} torn down, {failed} failed");
    if failed > 0 {
        return Err(format!("{failed} records could not be torn down completely").into());
    }
    Ok(())
}

/// What a record describes that is still on the machine.
fn leftovers(rec: &Record) -> Vec<String> {
    let mut left = Vec::new();
    if let Some(mp) = rec.get("mountpoint").map(PathBuf::from)
        && is_mount_point(&mp)
    {
        left.push(format!("mount on {}", mp.display()));
    }
    for key in ["mapped", "device"] {
        if let Some(dev) = rec.get(key).map(PathBuf::from)
            && still_ours(rec, &dev)
        {
            left.push(dev.display().to_string());
        }
    }
    if let Some(pid) = rec.get("daemon_pid").and_then(|p| p.parse::<u32>().ok()) {
        let what = rec
            .get("export_dir")
            .or(rec.get("image"))
            .unwrap_or_default();
        if helper_alive(pid, what) {
            left.push(format!("qemu process {pid}"));
        }
    }
    for key in ["export_dir", "helper_dir"] {
        if let Some(dir) = rec.get(key).filter(|d| Path::new(d).exists()) {
            left.push(dir.to_string());
        }
    }
    left
}

/// Tears down one dead process's image, step by step, from the outside in.
fn teardown(rec: &Record) -> Result<(), Error> {
    let mut errors: Vec<String> = Vec::new();
    let mut adopted_something = false;
    // 1. The mount, and with it the mapping and the device (adoption finds
    //    how they were built).
    if let Some(mp) = rec.get("mountpoint").map(PathBuf::from)
        && is_mount_point(&mp)
    {
        println!("    unmounting {}", mp.display());
        adopted_something = true;
        if let Err(e) = diskmount::adopt(&mp).and_then(|a| a.close()) {
            errors.push(e.to_string());
        }
    }
    // 2. Or a mapping / device that is still there.
    if !adopted_something {
        for key in ["mapped", "device"] {
            let Some(dev) = rec.get(key).map(PathBuf::from) else {
                continue;
            };
            if !still_ours(rec, &dev) {
                continue;
            }
            println!("    releasing {}", dev.display());
            if let Err(e) = diskmount::adopt(&dev).and_then(|a| a.close()) {
                errors.push(e.to_string());
            }
            break;
        }
    }
    // 3. The qemu helper and its directories.
    errors.extend(release_helpers(rec));
    if let Some(mp) = rec.get("mountpoint").map(PathBuf::from)
        && mp
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".diskmount-"))
        && !is_mount_point(&mp)
        && mp.exists()
    {
        let _ = std::fs::remove_dir(&mp);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; ").into())
    }
}

/// Stops a record's qemu helper if it still runs, and removes its FUSE
/// export (unmounting a stale one) and private directories. Returns the
/// errors.
pub fn release_helpers(rec: &Record) -> Vec<String> {
    let mut errors: Vec<String> = Vec::new();
    if let Some(pid) = rec.get("daemon_pid").and_then(|p| p.parse::<u32>().ok()) {
        let what = rec
            .get("export_dir")
            .or(rec.get("image"))
            .unwrap_or_default()
            .to_string();
        if helper_alive(pid, &what) {
            println!("    stopping qemu helper {pid}");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let start = Instant::now();
            let mut signalled = start;
            while helper_alive(pid, &what) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
                // qemu's handler only sets a flag for its main loop: a
                // signal landing just before the loop sleeps goes unseen
                // until the next event (see backend/fuse.rs). Send it again.
                if signalled.elapsed() >= Duration::from_millis(250) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    signalled = Instant::now();
                }
            }
            if helper_alive(pid, &what) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
    if let Some(dir) = rec.get("export_dir").map(PathBuf::from) {
        let export = dir.join("export");
        if is_mount_point(&export)
            && let Err(e) = nix::mount::umount2(&export, nix::mount::MntFlags::UMOUNT_NOFOLLOW)
        {
            errors.push(format!("umount {}: {e}", export.display()));
        }
        if dir.exists() && !is_mount_point(&export) {
            println!("    removing {}", dir.display());
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                errors.push(format!("remove {}: {e}", dir.display()));
            }
        }
    }
    if let Some(dir) = rec.get("helper_dir").map(PathBuf::from)
        && dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        errors.push(format!("remove {}: {e}", dir.display()));
    }
    errors
}

/// Whether `dev` still is the device the record describes (a device
/// number is reused quickly): a loop device still over the record's image
/// or export, an nbd device still connected.
fn still_ours(rec: &Record, dev: &Path) -> bool {
    let Some(name) = std::fs::canonicalize(dev)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        return false;
    };
    let whole = name
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches('p')
        .to_string();
    let disk = if Path::new(&format!("/sys/class/block/{name}/partition")).exists() {
        std::fs::canonicalize(format!("/sys/class/block/{name}"))
            .ok()
            .and_then(|p| {
                p.parent()
                    .and_then(|q| q.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or(whole)
    } else {
        name.clone()
    };
    let backing =
        std::fs::read_to_string(format!("/sys/block/{disk}/loop/backing_file")).unwrap_or_default();
    let backing = backing.trim();
    if !backing.is_empty() {
        let export = rec.get("export_dir").map(|d| format!("{d}/export"));
        return Some(backing) == rec.get("image") || export.as_deref() == Some(backing);
    }
    disk.starts_with("nbd") && Path::new(&format!("/sys/block/{disk}/pid")).exists()
}

//! `diskmount demo`: the quick start, on an image it builds itself.

use std::path::Path;
use std::process::Command;

use diskmount::{Format, Image, Partition, with_mounted};

fn step(text: &str) {
    println!("==> {text}");
}

pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new()
        .prefix("diskmount-demo-")
        .tempdir()?;
    let path = dir.path().join("demo.img");
    step(&format!(
        "building a 64 MiB ext4 image at {}",
        path.display()
    ));
    std::fs::File::create(&path)?.set_len(64 << 20)?;
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "demo"])
        .arg(&path)
        .status()
        .map_err(|e| format!("cannot run mkfs.ext4 (install e2fsprogs): {e}"))?;
    if !status.success() {
        return Err(format!("mkfs.ext4 failed: {status}").into());
    }
    let image = Image::file(&path, Format::Raw)?;

    step("writing /etc/motd into the image (attach, mount, write, unmount, detach)");
    with_mounted(&image, Partition::Whole, |root| {
        std::fs::create_dir_all(root.join("etc"))?;
        std::fs::write(root.join("etc/motd"), "hello from diskmount\n")
    })??;

    step("reading it back in a second, read-only round trip");
    let ro = image.clone().read_only(true);
    let motd = with_mounted(&ro, Partition::Whole, |root| {
        println!("    mounted at {}", root.display());
        std::fs::read_to_string(root.join("etc/motd"))
    })??;
    print!("    /etc/motd: {motd}");

    step("checking that nothing is left behind");
    let leftovers = leftovers(&path);
    if leftovers.is_empty() {
        println!("    no loop device, no mount, no temporary directory left");
    } else {
        return Err(format!("left behind: {}", leftovers.join(", ")).into());
    }
    dir.close()?;
    step("done");
    Ok(())
}

/// Loop devices still bound to `image` and diskmount mounts still present.
fn leftovers(image: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file"))
                && Path::new(b.trim_end()) == image
            {
                found.push(format!("/dev/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in info.lines() {
            if let Some(target) = line.split(' ').nth(4)
                && target.contains("/.diskmount-")
            {
                found.push(format!("mount on {target}"));
            }
        }
    }
    found
}

//! `diskmount demo`: the quick start, on a partitioned image it builds
//! itself (a GPT made with the gpt crate, an ext4 filesystem made by
//! mkfs.ext4 in a file of its own and written in at the partition's offset).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use diskmount::{Auto, Format, Image, MountOptions, Partition, Unattached, with_mounted};

use crate::opts::Error;

fn step(text: &str) {
    println!("==> {text}");
}

const SIZE: u64 = 128 << 20;

/// A GPT image with an EFI System partition (left empty) and a Linux root
/// partition holding an ext4 filesystem labelled `demo-root`.
fn build(dir: &Path) -> Result<std::path::PathBuf, Error> {
    let path = dir.join("demo.img");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    file.set_len(SIZE)?;
    let mut dev = file.try_clone()?;
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(SIZE / 512 - 1)?)
        .overwrite_lba0(&mut dev)?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(dev, None)?;
    disk.add_partition("esp", 16 << 20, gpt::partition_types::EFI, 0, Some(2048))?;
    let root = disk.add_partition(
        "root",
        96 << 20,
        gpt::partition_types::LINUX_ROOT_X64,
        0,
        Some(2048),
    )?;
    let (start, end) = {
        let p = &disk.partitions()[&root];
        (p.first_lba * 512, (p.last_lba + 1) * 512)
    };
    let mut dev = disk.write()?;
    dev.seek(SeekFrom::Start(0))?;
    // The filesystem is made in its own file: the host kernel may not read
    // partition tables, and mkfs needs no device.
    let fs = dir.join("root.ext4");
    File::create(&fs)?.set_len(end - start)?;
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc"))?;
    std::fs::write(tree.join("etc/os-release"), "NAME=\"diskmount demo\"\n")?;
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "demo-root", "-d"])
        .arg(&tree)
        .arg(&fs)
        .status()
        .map_err(|e| format!("cannot run mkfs.ext4 (install e2fsprogs): {e}"))?;
    if !status.success() {
        return Err(format!("mkfs.ext4 failed: {status}").into());
    }
    file.write_all_at(&std::fs::read(&fs)?, start)?;
    file.sync_all()?;
    std::fs::remove_file(&fs)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(path)
}

pub fn run() -> Result<(), Error> {
    let dir = tempfile::Builder::new()
        .prefix("diskmount-demo-")
        .tempdir()?;
    step("building a 128 MiB GPT image with an EFI partition and an ext4 root partition");
    let path = build(dir.path())?;
    let image = Image::file(&path, Format::Raw)?;

    step(&format!("diskmount inspect {}", path.display()));
    crate::inspect::run(crate::inspect::Args::for_demo(&path))?;

    step("writing /etc/motd into the root partition (found by the automatic search)");
    let attached = Unattached::<Auto>::new(image.clone()).attach()?;
    println!(
        "    attached at {} ({} backend)",
        attached.device().display(),
        attached.backend()
    );
    let mapped = attached.map(Partition::Auto)?;
    println!(
        "    partition {} mapped as {} ({})",
        mapped.partition().unwrap_or(0),
        mapped.device().display(),
        mapped.mapping().as_str()
    );
    let mnt = crate::opts::temp_mount_point()?;
    let mounted = mapped.mount(mnt.path(), &MountOptions::default())?;
    println!(
        "    mounted on {} ({})",
        mounted.path().display(),
        mounted.fstype()
    );
    mounted
        .root()?
        .write("/etc/motd", "hello from diskmount\n", 0o644)?;
    mounted.close()?;
    let mnt_path = mnt.path().to_path_buf();
    mnt.close()?;

    step("reading it back in a second, read-only round trip");
    let ro = image.clone().read_only(true);
    let mut second = std::path::PathBuf::new();
    let motd = with_mounted(&ro, Partition::Label("root".into()), |root| {
        second = root.to_path_buf();
        std::fs::read_to_string(root.join("etc/motd"))
    })??;
    print!("    /etc/motd: {motd}");

    step("checking that nothing is left behind");
    let mut left = leftovers(&path);
    // Both rounds' temporary mount points.
    left.extend(
        [&mnt_path, &second]
            .into_iter()
            .filter(|d| d.exists())
            .map(|d| format!("temporary directory {}", d.display())),
    );
    if !left.is_empty() {
        return Err(format!("left behind: {}", left.join(", ")).into());
    }
    println!("    no loop device, no partition node, no mount, no temporary directory left");
    dir.close()?;
    step("done");
    Ok(())
}

/// Loop devices still bound to `image`, their partition nodes, and mounts
/// of them (other diskmount users' mounts are not ours to count).
fn leftovers(image: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut loops = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file"))
                && Path::new(b.trim_end()) == image
            {
                let name = e.file_name().to_string_lossy().into_owned();
                let dev = format!("/dev/{name}");
                found.push(dev.clone());
                // Its partition nodes (`loop0p1`, ...) go with it.
                if let Ok(parts) = std::fs::read_dir(e.path()) {
                    found.extend(
                        parts
                            .flatten()
                            .map(|p| p.file_name().to_string_lossy().into_owned())
                            .filter(|p| p.starts_with(&format!("{name}p")))
                            .map(|p| format!("/dev/{p}")),
                    );
                }
                loops.push(dev);
            }
        }
    }
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in info.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let source = fields
                .iter()
                .position(|f| *f == "-")
                .and_then(|i| fields.get(i + 2));
            if let (Some(target), Some(source)) = (fields.get(4), source)
                && loops.iter().any(|l| source.starts_with(l.as_str()))
            {
                found.push(format!("mount on {target}"));
            }
        }
    }
    found
}

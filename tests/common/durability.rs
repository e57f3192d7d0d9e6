//! Shared by the durability tests (tests/durability_repeat.rs and the nbd
//! rounds in tests/kernel_lane.rs): the rounds' files, written through a
//! mount and read back with debugfs, which shares no code with diskmount.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use diskmount::Format;

use super::run;

/// Rounds per backend: `DISKMOUNT_DURABILITY_ROUNDS`, default 100.
pub fn rounds() -> u64 {
    std::env::var("DISKMOUNT_DURABILITY_ROUNDS")
        .ok()
        .map(|s| s.parse().expect("DISKMOUNT_DURABILITY_ROUNDS: a number"))
        .unwrap_or(100)
}

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a 64, the checksum written next to the files.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The files of round `seed`: a few KiB, ~100 KiB and a few MiB, sizes
/// varying per round, plus `SUMS` listing each one's checksum.
pub fn round_files(seed: u64) -> Vec<(String, Vec<u8>)> {
    let sizes = [
        1 + (seed * 7919) % 4096,
        100_000 + (seed * 104_729) % 20_000,
        (3 << 20) + (seed * 1_299_709) % (1 << 20),
    ];
    let mut files: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("file{i}"), bytes(seed * 10 + i as u64, n as usize)))
        .collect();
    let sums: String = files
        .iter()
        .map(|(name, data)| format!("{:016x}  {name}\n", fnv(data)))
        .collect();
    files.push(("SUMS".into(), sums.into_bytes()));
    files
}

/// Replaces the previous round's directory with round `seed`'s files.
pub fn write_round(root: &Path, seed: u64) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("round") {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    let dir = root.join(format!("round{seed}"));
    std::fs::create_dir(&dir)?;
    for (name, data) in round_files(seed) {
        std::fs::File::create(dir.join(name))?.write_all(&data)?;
    }
    Ok(())
}

/// Reads round `seed`'s directory out of the raw ext4 image `raw` with
/// debugfs and compares every byte and the checksum list.
pub fn verify_raw(raw: &Path, seed: u64, scratch: &Path, what: &str) {
    if let Err(e) = check_round(raw, seed, scratch) {
        panic!("{what} round {seed}: {e}");
    }
}

/// [`verify_raw`] without panicking: what differs, if anything.
pub fn check_round(raw: &Path, seed: u64, scratch: &Path) -> Result<(), String> {
    let out = scratch.join(format!("check{seed}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let dumped = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump /round{seed} {}", out.display()))
        .arg(raw)
        .output()
        .unwrap();
    let dir = out.join(format!("round{seed}"));
    let result = (|| {
        let sums = std::fs::read_to_string(dir.join("SUMS")).map_err(|e| {
            format!(
                "no SUMS in the image: {e} (debugfs: {})",
                String::from_utf8_lossy(&dumped.stderr).trim()
            )
        })?;
        for (name, data) in round_files(seed) {
            let got = std::fs::read(dir.join(&name)).map_err(|e| format!("{name} missing: {e}"))?;
            if got != data {
                return Err(format!(
                    "{name} differs ({} bytes, expected {})",
                    got.len(),
                    data.len()
                ));
            }
            if name != "SUMS" && !sums.contains(&format!("{:016x}  {name}\n", fnv(&got))) {
                return Err(format!("checksum of {name}"));
            }
        }
        Ok(())
    })();
    std::fs::remove_dir_all(&out).unwrap();
    result
}

/// `img` as a raw file: itself, or converted by qemu-img.
pub fn as_raw(img: &Path, format: Format, scratch: &Path) -> PathBuf {
    if format == Format::Raw {
        return img.to_path_buf();
    }
    let out = scratch.join("converted.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", format.as_str(), "-O", "raw"])
        .arg(img)
        .arg(&out));
    out
}

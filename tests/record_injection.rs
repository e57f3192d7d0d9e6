//! Records cannot be turned against root (issue 13): an image inside a
//! directory whose name holds newlines and a forged `helper_dir=` or
//! `export_dir=` line, `diskmount run` killed with SIGKILL while mounted,
//! then `diskmount cleanup`: the victim directory is still there, a decoy
//! process whose command line names the image is not signalled, and what
//! cleanup can verify (the mount, the loop device, the qemu helper, its
//! directory) is torn down. Records in the old `key=value` form, or forged
//! JSON naming other processes and paths, are reported and not acted on.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Fixture, fixture_qemu};

fn dm(records: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diskmount"));
    c.env("DISKMOUNT_RUN_DIR", records);
    c
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A process whose command line contains `path` (what the old cleanup
/// matched helpers by), in a process group of its own; killed on drop.
struct Decoy(Child);

impl Decoy {
    fn new(path: &Path) -> Decoy {
        Decoy(
            Command::new("sh")
                .arg("-c")
                .arg("while :; do sleep 1; done")
                .arg(path)
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn id(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        kill_group(&mut self.0);
    }
}

fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
}

/// `diskmount run --backend BACKEND IMG -- sh -c 'echo READY; sleep'`,
/// killed with SIGKILL (with its command) once the command runs.
fn run_and_kill(records: &Path, tmp: &Path, backend: &str, img: &Path) {
    let mut child = dm(records)
        // Its mount point (left empty by the kill) stays in the fixture.
        .env("TMPDIR", tmp)
        .args(["run", "--backend", backend])
        .arg(img)
        .args(["--", "sh", "-c", "echo READY; exec sleep 600"])
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "READY", "{backend}: run said {line:?}");
    kill_group(&mut child);
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(19).unwrap().parse().unwrap()
}

#[test]
fn injected_paths_and_forged_records_are_never_acted_on() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let victim = fx.tree("victim", &[("precious", "do not delete")]);
    let base = fx.ext4("base.img", &[("id", "injected")]);
    let tmp = fx.tree("tmp", &[]);
    for (backend, field) in [("loop", "helper_dir"), ("fuse", "export_dir")] {
        let what = format!("{backend} / {field}");
        let evil = fx
            .path()
            .join(format!("a\n{field}={}\nz", victim.display()));
        std::fs::create_dir_all(&evil).unwrap();
        let img = evil.join("disk.img");
        std::fs::copy(&base, &img).unwrap();
        let mut decoy = Decoy::new(&img);
        run_and_kill(&records, &tmp, backend, &img);
        assert!(!fx.leaks().is_empty(), "{what}: the kill left something");
        // The record holds the path exactly, escaped: no line of it is a field.
        let record = std::fs::read_dir(&records)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .expect("a record");
        let raw = std::fs::read_to_string(&record).unwrap();
        assert_eq!(raw.lines().count(), 1, "{what}: {raw}");
        let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(json["image"]["path"].as_str(), img.to_str(), "{what}");

        // A record of the old format naming the victim and the decoy, and
        // a forged JSON one: the decoy's pid and start time, but not a qemu.
        let legacy = records.join("1-1-0.json");
        std::fs::write(
            &legacy,
            format!(
                "pid=1\nstart=1\nimage={}\nhelper_dir={}\nexport_dir={}\ndaemon_pid={}\n",
                img.display(),
                victim.display(),
                victim.display(),
                decoy.id()
            ),
        )
        .unwrap();
        let forged_id = "999999999-1-0";
        let forged = records.join(format!("{forged_id}.json"));
        std::fs::write(
            &forged,
            serde_json::json!({
                "version": 1, "id": forged_id, "pid": 999999999u32, "start": 1,
                "image": {"path": img, "dev": 0, "ino": 0},
                "backend": "fuse",
                "device": null,
                "helper": {"pid": decoy.id(), "start": start_time(decoy.id()),
                           "exe": "/usr/bin/qemu-storage-daemon"},
                "mapped": null,
                "mountpoint": victim,
                "persistent": false,
            })
            .to_string(),
        )
        .unwrap();
        let stray = records.join("not-ours");
        std::fs::write(&stray, "x").unwrap();

        // A dry run, as JSON: one object per entry, nothing touched.
        let out = dm(&records)
            .args(["cleanup", "--dry-run", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{what}: {}", text(&out));
        let found: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let status = |p: &Path| {
            found
                .iter()
                .find(|f| f["record"].as_str() == p.to_str())
                .map(|f| f["status"].as_str().unwrap().to_string())
        };
        assert_eq!(
            status(&legacy).as_deref(),
            Some("unreadable"),
            "{what}: {found:?}"
        );
        assert_eq!(
            status(&stray).as_deref(),
            Some("unreadable"),
            "{what}: {found:?}"
        );
        assert_eq!(
            status(&record).as_deref(),
            Some("orphan"),
            "{what}: {found:?}"
        );
        let forged_entry = found
            .iter()
            .find(|f| f["record"].as_str() == forged.to_str())
            .unwrap();
        assert_eq!(forged_entry["planned"], serde_json::json!([]), "{what}");
        assert!(!fx.leaks().is_empty(), "{what}: a dry run touched nothing");

        let out = dm(&records).args(["cleanup", "--json"]).output().unwrap();
        let report: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what}: {e}: {}", text(&out)));
        assert!(out.status.success(), "{what}: {}", text(&out));
        // Ours, verified, torn down: the mount, the device, the helper.
        let ours = report
            .iter()
            .find(|f| f["record"].as_str() == record.to_str())
            .unwrap();
        assert_eq!(ours["left"], serde_json::json!([]), "{what}: {ours}");
        let done: Vec<&str> = ours["done"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["action"].as_str().unwrap())
            .collect();
        assert!(done.contains(&"unmount"), "{what}: {done:?}");
        assert!(done.contains(&"remove-record"), "{what}: {done:?}");
        if backend == "fuse" {
            assert!(done.contains(&"remove-dir"), "{what}: {done:?}");
        }
        // Nothing that is not ours.
        assert!(
            victim.join("precious").exists(),
            "{what}: the victim is gone"
        );
        assert!(decoy.alive(), "{what}: the decoy was signalled");
        assert!(
            legacy.exists() && stray.exists(),
            "{what}: unreadable entries are left"
        );
        assert!(
            fixture_qemu(&fx).is_empty(),
            "{what}: {:?}",
            fixture_qemu(&fx)
        );
        let leaks = fx.leaks();
        assert!(leaks.is_empty(), "{what}: {leaks:?}");
        // The forged record names nothing that verifies: it goes, alone.
        assert!(!forged.exists(), "{what}");
        std::fs::remove_file(&legacy).unwrap();
        std::fs::remove_file(&stray).unwrap();
        let left: Vec<PathBuf> = std::fs::read_dir(&records)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{what}: {left:?}");
        drop(decoy);
    }
    fx.assert_clean();
}

#[test]
fn an_unsafe_run_directory_is_refused() {
    let mut fx = Fixture::new();
    let records = fx.records();
    std::fs::set_permissions(
        &records,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let img = fx.ext4("disk.img", &[]);
    for args in [
        vec!["cleanup"],
        vec!["run", img.to_str().unwrap(), "--", "true"],
    ] {
        let out = dm(&records).args(&args).output().unwrap();
        let t = text(&out);
        assert!(!out.status.success(), "{args:?}: {t}");
        assert!(
            t.contains("mode 0700") && t.contains("0755"),
            "{args:?}: {t}"
        );
    }
    // Records off: nothing written, nothing refused.
    let out = dm(Path::new(""))
        .args(["run", img.to_str().unwrap(), "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    fx.assert_clean();
}

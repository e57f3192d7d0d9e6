//! What programs driving the command rely on: `--json` output of every
//! command that has it (parsed, not matched as text), errors as a JSON
//! object on stderr, the exit statuses, the hints saying what to do next,
//! and progress only on a terminal.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Fixture, is_mount_point, run};
use serde_json::Value;

fn dm(records: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diskmount"));
    c.env("DISKMOUNT_RUN_DIR", records);
    c
}

fn output(c: &mut Command) -> Output {
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one JSON object on stdout.
fn json_out(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    let text = stdout(o);
    assert_eq!(text.lines().count(), 1, "one line of JSON: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The one JSON error object on stderr, with the four fields programs use.
fn json_err(o: &Output) -> Value {
    assert!(!o.status.success(), "{}", stdout(o));
    let text = stderr(o);
    assert_eq!(text.lines().count(), 1, "one line of JSON: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    for field in ["step", "path", "kind", "message"] {
        assert!(v.get(field).is_some(), "{field} missing: {text}");
    }
    assert!(v["kind"].is_string() && v["message"].is_string(), "{text}");
    assert!(stdout(o).is_empty(), "nothing on stdout: {}", stdout(o));
    v
}

fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn inspect_json_parses_with_every_partition() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.mbr_image("mbr.img");
    // --json before or after the command.
    for args in [
        vec![OsStr::new("inspect"), img.as_os_str(), OsStr::new("--json")],
        vec![OsStr::new("--json"), OsStr::new("inspect"), img.as_os_str()],
    ] {
        let v = json_out(&output(dm(&records).args(&args)));
        assert_eq!(v["format"], "raw");
        assert_eq!(v["virtual_size"], 256u64 << 20);
        assert_eq!(v["table"], "mbr");
        assert!(v["fstype"].is_null());
        let parts = v["partitions"].as_array().unwrap();
        let numbers: Vec<u64> = parts
            .iter()
            .map(|p| p["number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, [1, 2, 5, 6]);
        let p5 = &parts[2];
        assert_eq!(p5["type"], "0x83");
        assert_eq!(p5["type_name"], "Linux");
        assert_eq!(p5["label"], "L5");
        assert_eq!(p5["fstype"], "ext4");
        assert!(p5["start"].as_u64().unwrap() > 0 && p5["size"].as_u64().unwrap() == 40 << 20);
    }
    fx.assert_clean();
}

#[test]
fn mount_and_umount_json_name_device_mount_points_backend_and_record() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.mbr_image("mbr.img");
    let mnt = fx.tree("mnt", &[]);
    let v = json_out(&output(
        dm(&records)
            .args(["--json", "mount"])
            .arg(&img)
            .arg(&mnt)
            .args(["--partition", "6"]),
    ));
    assert!(is_mount_point(&mnt));
    assert_eq!(v["image"], img.to_string_lossy().as_ref());
    assert_eq!(v["mountpoint"], canonical(&mnt));
    assert_eq!(v["mount_points"], serde_json::json!([canonical(&mnt)]));
    assert_eq!(v["backend"], "loop");
    assert_eq!(v["partition"], 6);
    assert_eq!(v["fstype"], "ext4");
    assert_eq!(v["read_only"], false);
    assert!(v["helper_pid"].is_null());
    let device = v["device"].as_str().unwrap();
    assert!(
        common::mounts()
            .iter()
            .any(|(s, t)| s == device && *t == canonical(&mnt)),
        "{device} is what is mounted"
    );
    let record = PathBuf::from(v["record"].as_str().expect("a record path"));
    assert!(record.starts_with(&records) && record.exists(), "{v}");
    let u = json_out(&output(dm(&records).args(["umount", "--json"]).arg(&mnt)));
    assert_eq!(u["device"], device);
    assert_eq!(u["backend"], "loop");
    assert_eq!(
        u["records_removed"],
        serde_json::json!([record.to_string_lossy()])
    );
    assert!(!record.exists());
    fx.assert_clean();

    // qcow2 through qemu-storage-daemon: two mount points (the FUSE
    // export of the image, then the filesystem), and the daemon's pid.
    let q = fx.path().join("mbr.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&img)
        .arg(&q));
    let v = json_out(&output(
        dm(&records)
            .args(["mount", "--json", "--backend", "fuse", "--partition", "5"])
            .arg(&q)
            .arg(&mnt),
    ));
    assert_eq!(v["backend"], "fuse");
    let points = v["mount_points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{v}");
    assert_eq!(points[0], canonical(&mnt));
    assert!(
        is_mount_point(Path::new(points[1].as_str().unwrap())),
        "{v}"
    );
    let pid = v["helper_pid"].as_u64().expect("the daemon's pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let u = json_out(&output(dm(&records).args(["--json", "umount"]).arg(&mnt)));
    assert_eq!(u["device"], v["device"]);
    assert_eq!(u["records_removed"].as_array().unwrap().len(), 1, "{u}");
    // The daemon is gone too (the leak check looks for it).
    fx.assert_clean();
}

#[test]
fn copy_json_counts_bytes_and_progress_shows_on_a_terminal_only() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.ext4("disk.img", &[]);
    let tree = fx.tree("payload", &[("a", "12345"), ("sub/b", "678")]);
    // stderr is a pipe here: no progress, nothing at all (the library's
    // log, which may warn about a retry, switched off).
    let out = output(
        dm(&records)
            .env("RUST_LOG", "off")
            .args(["--json", "copy-in"])
            .arg(&img)
            .arg(&tree)
            .arg("/srv"),
    );
    assert_eq!(stderr(&out), "");
    let v = json_out(&out);
    assert_eq!(v["bytes"], 8);
    assert_eq!(v["image"], img.to_string_lossy().as_ref());
    let back = fx.path().join("back");
    let out = output(
        dm(&records)
            .env("RUST_LOG", "off")
            .args(["copy-out", "--json"])
            .arg(&img)
            .arg("/srv/payload")
            .arg(&back),
    );
    assert_eq!(stderr(&out), "");
    assert_eq!(json_out(&out)["bytes"], 8);
    assert_eq!(std::fs::read_to_string(back.join("sub/b")).unwrap(), "678");
    // On a terminal (script(1) gives it one), the copy shows a bar.
    let cmd = format!(
        "{} copy-in {} {} /srv2",
        env!("CARGO_BIN_EXE_diskmount"),
        img.display(),
        tree.display()
    );
    let out = output(
        Command::new("script")
            .args(["-q", "-e", "-c", &cmd, "/dev/null"])
            .env("DISKMOUNT_RUN_DIR", &records)
            .stdin(std::process::Stdio::null()),
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("copying into /srv2"),
        "{}",
        stdout(&out)
    );
    // inspect of a qcow2 image shows what it waits for (qemu), on a
    // terminal only.
    let q = fx.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&img)
        .arg(&q));
    let cmd = format!(
        "{} inspect {}",
        env!("CARGO_BIN_EXE_diskmount"),
        q.display()
    );
    let out = output(
        Command::new("script")
            .args(["-q", "-e", "-c", &cmd, "/dev/null"])
            .env("DISKMOUNT_RUN_DIR", &records)
            .stdin(std::process::Stdio::null()),
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("attaching "), "{}", stdout(&out));
    let out = output(dm(&records).env("RUST_LOG", "off").arg("inspect").arg(&q));
    assert!(
        out.status.success() && stderr(&out).is_empty(),
        "{}",
        stderr(&out)
    );
    fx.assert_clean();
}

#[test]
fn errors_are_one_json_object_and_the_exit_status_tells_the_class() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.ext4("disk.img", &[("id", "x")]);
    let missing = fx.path().join("missing.img");

    // Everything else: 1, with the step and path.
    let out = output(
        dm(&records)
            .args(["--json", "run"])
            .arg(&missing)
            .args(["--", "true"]),
    );
    assert_eq!(out.status.code(), Some(1));
    let v = json_err(&out);
    assert_eq!(v["step"], "open");
    assert_eq!(v["path"], missing.to_string_lossy().as_ref());
    assert_eq!(v["kind"], "not-found");
    assert!(
        v["message"].as_str().unwrap().contains("No such file"),
        "{v}"
    );
    let zeros = fx.blank("zeros.img", 8 << 20);
    let mnt = fx.tree("mnt", &[]);
    let out = output(dm(&records).args(["--json", "mount"]).arg(&zeros).arg(&mnt));
    assert_eq!(out.status.code(), Some(1));
    let v = json_err(&out);
    assert_eq!(v["step"], "mount");
    assert_eq!(v["kind"], "invalid-image");

    // Usage: 2, from the parser or from an option's value.
    for args in [
        vec!["--json", "run"],
        vec!["--json", "frobnicate"],
        vec![
            "--json",
            "run",
            "x.img",
            "--partition",
            "first",
            "--",
            "true",
        ],
        vec!["--json", "mount", "x.img", "/mnt", "--backend", "floppy"],
        vec!["--json", "inspect", "x.img", "--format", "iso"],
    ] {
        let out = output(dm(&records).args(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let v = json_err(&out);
        assert_eq!(v["kind"], "usage", "{args:?}");
    }
    // Without --json, a usage error is the parser's text, still 2.
    let out = output(dm(&records).arg("--no-such-option"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--no-such-option"),
        "{}",
        stderr(&out)
    );
    let out = output(
        dm(&records)
            .args(["run"])
            .arg(&img)
            .args(["--partition", "x", "--", "true"]),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("diskmount: --partition"),
        "{}",
        stderr(&out)
    );

    // In use: 3. A loop device util-linux bound holds the image.
    let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(&img))
        .trim()
        .to_string();
    let out = output(
        dm(&records)
            .args(["--json", "run"])
            .arg(&img)
            .args(["--", "true"]),
    );
    let out_people = output(dm(&records).arg("run").arg(&img).args(["--", "true"]));
    run(Command::new("losetup").args(["-d", &dev]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v = json_err(&out);
    assert_eq!(v["kind"], "in-use");
    assert_eq!(v["step"], "attach");
    assert_eq!(out_people.status.code(), Some(3));
    assert!(
        stderr(&out_people).contains("in use"),
        "{}",
        stderr(&out_people)
    );

    // run: the command's own status, and 0.
    for (script, code) in [("exit 0", 0), ("exit 5", 5), ("cat id; exit 42", 42)] {
        let out = output(
            dm(&records)
                .arg("run")
                .arg(&img)
                .args(["--", "sh", "-c", script]),
        );
        assert_eq!(out.status.code(), Some(code), "{script}: {}", stderr(&out));
    }
    fx.assert_clean();
}

/// Runs the command as user nobody, with no capabilities.
fn as_nobody(args: &[&OsStr]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_diskmount"))
        .args(args)
        .env("DISKMOUNT_RUN_DIR", "")
        .output()
        .unwrap()
}

#[test]
fn a_normal_user_is_told_attaching_needs_root_and_can_still_inspect() {
    use std::os::unix::fs::PermissionsExt;
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[("id", "x")]);
    // Readable by everyone, writable by root only.
    std::fs::set_permissions(fx.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = as_nobody(&[
        OsStr::new("run"),
        img.as_os_str(),
        OsStr::new("--"),
        OsStr::new("true"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("needs root (CAP_SYS_ADMIN)") && err.contains("diskmount inspect"),
        "{err}"
    );
    assert!(
        err.lines().nth(1).unwrap().starts_with("diskmount: hint: "),
        "{err}"
    );
    for args in [
        vec![
            OsStr::new("--json"),
            OsStr::new("mount"),
            img.as_os_str(),
            fx.path().as_os_str(),
        ],
        vec![
            OsStr::new("--json"),
            OsStr::new("run"),
            OsStr::new("--read-only"),
            img.as_os_str(),
            OsStr::new("--"),
            OsStr::new("true"),
        ],
    ] {
        let out = as_nobody(&args);
        let v = json_err(&out);
        assert_eq!(v["kind"], "permission-denied", "{v}");
        assert!(v["hint"].as_str().unwrap().contains("CAP_SYS_ADMIN"), "{v}");
    }
    let out = as_nobody(&[OsStr::new("inspect"), OsStr::new("--json"), img.as_os_str()]);
    let v = json_out(&out);
    assert_eq!(v["fstype"], "ext4");
    fx.assert_clean();
}

#[test]
fn an_image_that_cannot_be_written_suggests_read_only() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.ext4("disk.img", &[("id", "frozen")]);
    run(Command::new("chattr").arg("+i").arg(&img));
    let _thaw = scopeguard::guard(img.clone(), |img| {
        let _ = Command::new("chattr").arg("-i").arg(&img).status();
    });
    let out = output(dm(&records).arg("run").arg(&img).args(["--", "cat", "id"]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(
        err.contains("hint:") && err.contains("pass --read-only"),
        "{err}"
    );
    let v = json_err(&output(
        dm(&records)
            .args(["--json", "mount"])
            .arg(&img)
            .arg(fx.tree("mnt", &[])),
    ));
    assert!(v["hint"].as_str().unwrap().contains("--read-only"), "{v}");
    // And --read-only works.
    let out = output(
        dm(&records)
            .args(["run", "--read-only"])
            .arg(&img)
            .args(["--", "cat", "id"]),
    );
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "frozen"),
        "{}",
        stderr(&out)
    );
    // A missing image is not one to open read-only.
    let out = output(
        dm(&records)
            .arg("run")
            .arg(fx.path().join("nope.img"))
            .args(["--", "true"]),
    );
    assert!(!stderr(&out).contains("hint"), "{}", stderr(&out));
    fx.assert_clean();
}

#[test]
fn a_mount_kept_busy_is_exit_status_3_and_umount_works_once_free() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.ext4("disk.img", &[]);
    let mnt = fx.tree("mnt", &[]);
    let out = output(dm(&records).arg("mount").arg(&img).arg(&mnt));
    assert!(out.status.success(), "{}", stderr(&out));
    // A process sitting in the mount keeps it busy.
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .current_dir(&mnt)
        .spawn()
        .unwrap();
    let out = output(
        dm(&records)
            .env("RUST_LOG", "off")
            .args(["--json", "umount"])
            .arg(&mnt),
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v = json_err(&out);
    assert_eq!(v["kind"], "busy", "{v}");
    assert_eq!(v["step"], "unmount", "{v}");
    assert!(is_mount_point(&mnt));
    let out = output(dm(&records).arg("umount").arg(&mnt));
    assert!(out.status.success(), "{}", stderr(&out));
    fx.assert_clean();
}

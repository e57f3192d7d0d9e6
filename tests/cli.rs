//! The `diskmount` command, end to end: every subcommand, the options, the
//! bad inputs, Ctrl-C and SIGTERM during `run`, and `mount` then `umount`
//! from another process.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, is_mount_point, run};

fn diskmount(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .args(args)
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn demo_runs_on_its_own_image_and_leaves_nothing() {
    common::require_root();
    let out = diskmount(&[os("demo")]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for words in [
        "gpt partition table",
        "Linux root",
        "hello from diskmount",
        "nothing is left",
        "done",
    ] {
        assert!(text.contains(words), "{words:?} missing:\n{text}");
    }
    assert!(
        !common::mounts()
            .iter()
            .any(|(_, t)| t.contains("diskmount-demo"))
    );
}

#[test]
fn inspect_for_people_and_for_programs() {
    let mut fx = Fixture::new();
    let mbr = fx.mbr_image("mbr.img");
    let out = diskmount(&[os("inspect"), mbr.as_os_str(), os("--json")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = stdout(&out);
    assert!(
        json.starts_with("{\"format\":\"raw\",\"virtual_size\":268435456,\"table\":\"mbr\""),
        "{json}"
    );
    for n in [
        "\"number\":1,",
        "\"number\":2,",
        "\"number\":5,",
        "\"number\":6,",
    ] {
        assert!(json.contains(n), "{n} missing: {json}");
    }
    assert!(
        json.contains(
            "\"type\":\"0x83\",\"type_name\":\"Linux\",\"label\":\"L5\",\"fstype\":\"ext4\""
        ),
        "{json}"
    );
    let out = diskmount(&[os("inspect"), mbr.as_os_str()]);
    let text = stdout(&out);
    assert!(
        text.contains("mbr partition table, 4 partitions") && text.contains('['),
        "{text}"
    );

    let plain = fx.ext4("plain.img", &[]);
    let q = fx.path().join("plain.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&plain)
        .arg(&q));
    let out = diskmount(&[os("inspect"), q.as_os_str(), os("--json")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "{\"format\":\"qcow2\",\"virtual_size\":67108864,\"table\":null,\"partitions\":[],\"fstype\":\"ext4\",\"volumes\":[],\"os\":[]}"
    );
    fx.assert_clean();
}

#[test]
fn run_uses_the_root_as_cwd_and_exits_with_the_command_status() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    let out = diskmount(&[
        os("run"),
        img.as_os_str(),
        os("--partition"),
        os("5"),
        os("--"),
        os("sh"),
        os("-c"),
        os("cat id; test \"$DISKMOUNT_ROOT\" = \"$PWD\" && exit 7"),
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(stdout(&out), "p5");
    let out = diskmount(&[
        os("run"),
        img.as_os_str(),
        os("--partition"),
        os("label=L6"),
        os("--"),
        os("cat"),
        os("id"),
    ]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "p6"),
        "{}",
        stderr(&out)
    );
    // Killed by a signal: 128 + N.
    let out = diskmount(&[
        os("run"),
        img.as_os_str(),
        os("--partition"),
        os("1"),
        os("--"),
        os("sh"),
        os("-c"),
        os("kill -TERM $$"),
    ]);
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    fx.assert_clean();
}

#[test]
fn ctrl_c_and_sigterm_during_run_still_tear_down() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    for sig in ["INT", "TERM"] {
        let child = Command::new(env!("CARGO_BIN_EXE_diskmount"))
            .args([os("run"), img.as_os_str(), os("--"), os("sleep"), os("60")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !common::mounts().iter().any(|(s, _)| {
            common::bound_loops()
                .iter()
                .any(|(d, b)| d == s && Path::new(b) == img)
        }) {
            assert!(start.elapsed() < Duration::from_secs(10), "never mounted");
            std::thread::sleep(Duration::from_millis(10));
        }
        run(Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]));
        let out = child.wait_with_output().unwrap();
        let expected = if sig == "INT" { 130 } else { 143 };
        assert_eq!(out.status.code(), Some(expected), "{}", stderr(&out));
        fx.assert_clean();
    }
}

#[test]
fn copy_in_then_copy_out_round_trip() {
    let mut fx = Fixture::new();
    let img = fx.ext4("disk.img", &[]);
    let tree = fx.tree("payload", &[("a.txt", "alpha"), ("sub/b.txt", "beta")]);
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    let file = fx.tree("single", &[("one", "1")]).join("one");
    let out = diskmount(&[
        os("copy-in"),
        img.as_os_str(),
        tree.as_os_str(),
        file.as_os_str(),
        os("/srv/data"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Independent check: debugfs reads the image file.
    assert_eq!(
        run(Command::new("debugfs")
            .args(["-R", "cat /srv/data/payload/sub/b.txt"])
            .arg(&img)),
        "beta"
    );
    assert_eq!(
        run(Command::new("debugfs")
            .args(["-R", "cat /srv/data/one"])
            .arg(&img)),
        "1"
    );
    let back = fx.path().join("back");
    let out = diskmount(&[
        os("copy-out"),
        img.as_os_str(),
        os("/srv/data/payload"),
        back.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(back.join("sub/b.txt")).unwrap(),
        "beta"
    );
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        Path::new("a.txt")
    );
    // copy-out never overwrites on the host.
    let out = diskmount(&[
        os("copy-out"),
        img.as_os_str(),
        os("/srv/data/one"),
        back.join("a.txt").as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("File exists"), "{}", stderr(&out));
    fx.assert_clean();
}

#[test]
fn mount_then_umount_from_another_process() {
    let mut fx = Fixture::new();
    let img = fx.mbr_image("mbr.img");
    let mnt = fx.tree("mnt", &[]);
    let out = diskmount(&[
        os("mount"),
        img.as_os_str(),
        mnt.as_os_str(),
        os("--partition"),
        os("6"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(is_mount_point(&mnt));
    assert_eq!(std::fs::read_to_string(mnt.join("id")).unwrap(), "p6");
    let out = diskmount(&[os("umount"), mnt.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("unmounted"), "{}", stdout(&out));
    fx.assert_clean();
    // A mount diskmount did not make is torn down too (adoption).
    let dev = run(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(fx.ext4("other.img", &[])));
    run(Command::new("mount").arg(dev.trim()).arg(&mnt));
    let out = diskmount(&[os("umount"), mnt.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    fx.assert_clean();
}

#[test]
fn bad_input_is_one_clear_line_and_leaves_nothing() {
    let mut fx = Fixture::new();
    let missing = fx.path().join("missing.img");
    let garbage = fx.blank("zeros.img", 8 << 20);
    let mnt = fx.tree("mnt", &[]);
    for (args, words) in [
        (
            vec![os("run"), missing.as_os_str(), os("--"), os("true")],
            vec!["open", "missing.img", "No such file"],
        ),
        (
            vec![os("run"), garbage.as_os_str(), os("--"), os("true")],
            vec!["mount", "only zeros"],
        ),
        (
            vec![
                os("run"),
                garbage.as_os_str(),
                os("--partition"),
                os("x"),
                os("--"),
                os("true"),
            ],
            vec!["--partition"],
        ),
        (
            vec![os("inspect"), missing.as_os_str()],
            vec!["missing.img"],
        ),
        (
            vec![os("mount"), garbage.as_os_str(), mnt.as_os_str()],
            vec!["only zeros"],
        ),
        (
            vec![os("umount"), mnt.as_os_str()],
            vec!["not a mount point"],
        ),
    ] {
        let out = diskmount(&args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("diskmount: "), "{err}");
        for w in words {
            assert!(err.contains(w), "{w:?} missing: {err}");
        }
        fx.assert_clean();
    }
}

/// Waits until some mount's source is a loop device over `backing`.
fn wait_mounted(backing: &Path) {
    let start = Instant::now();
    while !common::mounts().iter().any(|(s, _)| {
        common::bound_loops()
            .iter()
            .any(|(d, b)| s.starts_with(d.as_str()) && Path::new(b) == backing)
    }) {
        assert!(start.elapsed() < Duration::from_secs(20), "never mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cleanup_after_kill_9_restores_a_clean_machine() {
    use std::os::unix::process::CommandExt;
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.mbr_image("mbr.img");
    let dm = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_diskmount"));
        c.env("DISKMOUNT_RUN_DIR", &records);
        c
    };
    // `run` with a BLKPG partition, killed with its command.
    let child = dm()
        .args([
            os("run"),
            img.as_os_str(),
            os("--partition"),
            os("5"),
            os("--"),
            os("sleep"),
            os("60"),
        ])
        .process_group(0)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_mounted(&img);
    run(Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]));
    let _ = child.wait_with_output();
    assert!(!fx.leaks().is_empty(), "the kill left something to clean");
    // A dry run lists and touches nothing.
    let out = dm()
        .args([os("cleanup"), os("--dry-run")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("would unmount"), "{}", stdout(&out));
    assert!(!fx.leaks().is_empty());
    let out = dm().arg("cleanup").output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("1 torn down, 0 failed"),
        "{}",
        stdout(&out)
    );
    fx.assert_clean();
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        0,
        "records left"
    );

    // A qcow2 image through qemu-storage-daemon, its holder killed.
    let q = fx.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&img)
        .arg(&q));
    let mnt = fx.tree("mnt", &[]);
    let mut holder = dm()
        .args([
            os("hold"),
            os("--backend"),
            os("fuse"),
            os("--format"),
            os("qcow2"),
            os("--state"),
            os("mounted"),
            os("--partition"),
            os("6"),
        ])
        .arg(&q)
        .arg(&mnt)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("READY"), "{line}");
    // The record names the daemon's private export directory.
    // (`<id>.helper` next to the record `<id>.json`.)
    let record = std::fs::read_dir(&records)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a record");
    let export_dir = record.with_extension("helper");
    assert!(export_dir.exists());
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = dm().arg("cleanup").output().unwrap();
    // The daemon died with its holder: writes it had not flushed are lost,
    // and cleanup says so, but it frees everything.
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("1 torn down, 0 failed"),
        "{}",
        stdout(&out)
    );
    assert!(!is_mount_point(&mnt));
    assert!(
        common::qemu_processes()
            .iter()
            .all(|(_, c)| !c.contains(&*fx.path().to_string_lossy()))
    );
    assert!(!export_dir.exists(), "{} left", export_dir.display());
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        0,
        "records left"
    );
    fx.assert_clean();
}

#[test]
fn cleanup_leaves_running_processes_and_deliberate_mounts_alone() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let img = fx.ext4("disk.img", &[]);
    let mnt = fx.tree("mnt", &[]);
    let dm = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_diskmount"));
        c.env("DISKMOUNT_RUN_DIR", &records);
        c
    };
    let out = dm().arg("mount").arg(&img).arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut holder = dm()
        .args([os("hold"), os("--state"), os("attached")])
        .arg(fx.ext4("other.img", &[]))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let out = dm().arg("cleanup").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("mounted on purpose") && text.contains("in use by running process"),
        "{text}"
    );
    assert!(is_mount_point(&mnt));
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = dm().arg("umount").arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The attached-only holder died: autoclear freed its device; cleanup
    // drops its record.
    let out = dm().arg("cleanup").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        0,
        "records left"
    );
    fx.assert_clean();
}

#[test]
fn a_qcow2_mount_outlives_diskmount_until_umount() {
    let mut fx = Fixture::new();
    let records = fx.records();
    let raw = fx.mbr_image("mbr.img");
    let q = fx.path().join("mbr.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q));
    let mnt = fx.tree("mnt", &[]);
    let dm = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_diskmount"));
        c.env("DISKMOUNT_RUN_DIR", &records);
        c
    };
    let out = dm()
        .arg("mount")
        .arg(&q)
        .arg(&mnt)
        .args(["--partition", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The daemon outlives diskmount by design: if an assertion below fails,
    // still take it down (a panicking test skips the leak check, and its
    // daemon would run on, as two did once).
    let _umount_on_panic = scopeguard::guard((), |()| {
        if is_mount_point(&mnt) {
            let _ = dm().arg("umount").arg(&mnt).status();
        }
    });
    // diskmount has exited; the daemon serves on.
    assert!(is_mount_point(&mnt));
    assert_eq!(std::fs::read_to_string(mnt.join("id")).unwrap(), "p5");
    std::fs::write(mnt.join("written"), "persisted").unwrap();
    let root = fx.path().to_string_lossy().into_owned();
    assert!(
        common::qemu_processes()
            .iter()
            .any(|(_, c)| c.contains(&root))
    );
    let out = dm().arg("umount").arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        common::qemu_processes()
            .iter()
            .all(|(_, c)| !c.contains(&root)),
        "the daemon was stopped"
    );
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        0,
        "record removed"
    );
    fx.assert_clean();
    // The write reached the qcow2 file.
    let out = dm()
        .args([
            os("run"),
            q.as_os_str(),
            os("--partition"),
            os("5"),
            os("--"),
            os("cat"),
            os("written"),
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "persisted", "{}", stderr(&out));
    fx.assert_clean();
}

#[test]
fn every_option_does_what_it_says() {
    let mut fx = Fixture::new();
    let plain = fx.ext4("plain.img", &[("id", "plain")]);
    let q = fx.path().join("plain.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&plain)
        .arg(&q));
    let cat_id = [os("--"), os("cat"), os("id")];
    let go = |img: &Path, opts: &[&str]| {
        let mut args = vec![os("run"), img.as_os_str()];
        args.extend(opts.iter().map(|o| os(o)));
        args.extend(cat_id);
        diskmount(&args)
    };
    // --format and --backend, explicitly.
    for (img, opts) in [
        (&q, vec!["--format", "qcow2", "--backend", "fuse"]),
        (&q, vec!["--backend", "auto"]),
        (
            &plain,
            vec![
                "--format",
                "raw",
                "--backend",
                "loop",
                "--partition",
                "none",
            ],
        ),
        (&plain, vec!["--fstype", "ext4"]),
    ] {
        let out = go(img, &opts);
        assert_eq!(
            (out.status.code(), stdout(&out).as_str()),
            (Some(0), "plain"),
            "{opts:?}: {}",
            stderr(&out)
        );
    }
    // A wrong explicit format or type fails clearly.
    let out = go(&plain, &["--format", "qcow2"]);
    assert!(
        !out.status.success() && stderr(&out).contains("qcow2"),
        "{}",
        stderr(&out)
    );
    let out = go(&plain, &["--fstype", "xfs"]);
    assert!(
        !out.status.success() && stderr(&out).contains("mount -t xfs"),
        "{}",
        stderr(&out)
    );
    // --backend nbd where the kernel has no nbd.
    if !diskmount::backend::nbd::available() {
        let out = go(&q, &["--backend", "nbd"]);
        assert!(
            stderr(&out).contains("nbd is unavailable"),
            "{}",
            stderr(&out)
        );
    }
    // --read-only: nothing in the image changes.
    let before = run(Command::new("sha256sum").arg(&plain));
    let out = diskmount(&[
        os("run"),
        plain.as_os_str(),
        os("--read-only"),
        os("--"),
        os("touch"),
        os("new"),
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("Read-only"), "{}", stderr(&out));
    assert_eq!(run(Command::new("sha256sum").arg(&plain)), before);
    // --allow-backing-file.
    let backed = fx.path().join("backed.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&q)
        .arg(&backed));
    let out = go(&backed, &[]);
    assert!(
        !out.status.success() && stderr(&out).contains("backing"),
        "{}",
        stderr(&out)
    );
    let out = go(&backed, &["--allow-backing-file"]);
    assert_eq!(stdout(&out), "plain", "{}", stderr(&out));
    // --backend block on an existing device, which stays.
    let dev = run(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&plain))
    .trim()
    .to_string();
    let out = go(Path::new(&dev), &["--backend", "block"]);
    assert_eq!(stdout(&out), "plain", "{}", stderr(&out));
    assert!(common::bound_loops().iter().any(|(d, _)| *d == dev));
    run(Command::new("losetup").args(["-d", &dev]));
    // -v shows the library's log.
    let out = go(&plain, &["-v"]);
    assert!(
        stderr(&out).contains("INFO") && stderr(&out).contains("mounted"),
        "{}",
        stderr(&out)
    );
    fx.assert_clean();
}

//! The man pages and shell completions `diskmount generate` writes from
//! the command-line definition: roff that man can render, naming every
//! command and option, and completion scripts for bash, zsh and fish.
//! Needs no root.

use std::path::Path;
use std::process::Command;

/// The commands a user sees (hidden ones, `hold` and `generate`, left out).
const COMMANDS: [&str; 9] = [
    "inspect", "run", "copy-in", "copy-out", "inject", "mount", "umount", "cleanup", "demo",
];

fn generate(args: &[&str], dir: &Path) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .arg("generate")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn man_pages_name_every_command_and_render() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let written = generate(&["man"], &man);
    assert_eq!(written.len(), 1 + COMMANDS.len(), "{written:?}");
    let main = std::fs::read_to_string(man.join("diskmount.1")).unwrap();
    assert!(main.contains(".TH diskmount 1"), "roff title: {main}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(main.contains(section), "{section} missing");
    }
    for c in COMMANDS {
        let roff_name = c.replace('-', "\\-");
        assert!(main.contains(&roff_name), "{c} not in diskmount.1");
        let page = man.join(format!("diskmount-{c}.1"));
        assert!(written.contains(&page.display().to_string()), "{written:?}");
        assert!(std::fs::read_to_string(&page).unwrap().contains(".TH"));
    }
    assert!(!main.contains("hold") && !main.contains("generate"));
    // The exit statuses and the global --json are documented.
    assert!(main.contains("Exit status") && main.contains("\\-\\-json"));
    let mount = std::fs::read_to_string(man.join("diskmount-mount.1")).unwrap();
    assert!(mount.contains("\\-\\-read\\-only") && mount.contains("\\-\\-partition"));
    // man's formatter renders it without complaint.
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(man.join("diskmount.1"))
        .output()
        .expect("groff (package groff-base)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, file) in [
        ("bash", "diskmount.bash"),
        ("zsh", "_diskmount"),
        ("fish", "diskmount.fish"),
    ] {
        let written = generate(&["completions", shell], dir.path());
        let path = dir.path().join(file);
        assert_eq!(written, [path.display().to_string()]);
        let script = std::fs::read_to_string(&path).unwrap();
        for word in COMMANDS.iter().chain(&["read-only", "partition", "json"]) {
            assert!(script.contains(word), "{shell}: {word} missing");
        }
    }
    // The bash script parses.
    let status = Command::new("bash")
        .arg("-n")
        .arg(dir.path().join("diskmount.bash"))
        .status()
        .unwrap();
    assert!(status.success());
    // Without --dir, the script goes to stdout.
    let out = Command::new(env!("CARGO_BIN_EXE_diskmount"))
        .args(["generate", "completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_diskmount()"));
}

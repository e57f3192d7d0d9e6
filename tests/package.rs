//! What the crate ships: `cargo package --list` has the code, the license
//! files and the README, and none of the fuzzing corpora, charts or kernel
//! VM lane files; the crates.io metadata is there. Needs no root.

use std::path::Path;
use std::process::Command;

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        out.status.success(),
        "cargo {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_package_ships_the_code_and_licenses_and_nothing_else() {
    let list = cargo(&["package", "--list", "--allow-dirty", "--offline"]);
    let files: Vec<&str> = list.lines().collect();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "src/lib.rs",
        "src/bin/diskmount/main.rs",
        "tests/common/mod.rs",
        "tests/cli.rs",
        "docs/architecture.md",
    ] {
        assert!(files.contains(&needed), "{needed} not shipped:\n{list}");
    }
    // Every source file of the crate is shipped (a new module cannot be
    // left out by the include list).
    let mut missing = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if !files.contains(&rel.as_str()) {
                    missing.push(rel);
                }
            }
        }
    }
    assert!(missing.is_empty(), "not shipped: {missing:?}");
    for f in &files {
        assert!(
            !f.starts_with("fuzz/")
                && !f.starts_with("docs/charts/")
                && !f.starts_with("tests/vm/")
                && !f.starts_with("target/")
                && !f.starts_with(".ci/")
                && !f.contains("corpus")
                && !f.ends_with(".svg")
                && !f.ends_with(".img")
                && !f.ends_with(".qcow2"),
            "{f} must not be shipped"
        );
    }
}

#[test]
fn the_manifest_has_what_crates_io_and_docs_rs_need() {
    let meta: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--offline",
    ]))
    .unwrap();
    let p = &meta["packages"][0];
    assert_eq!(p["license"], "MIT OR Apache-2.0");
    assert_eq!(p["repository"], "https://github.com/diskmount/diskmount");
    assert_eq!(p["readme"], "README.md");
    for field in ["description", "documentation", "rust_version"] {
        assert!(p[field].is_string(), "{field} missing");
    }
    let keywords = p["keywords"].as_array().unwrap();
    assert!((1..=5).contains(&keywords.len()), "{keywords:?}");
    let categories = p["categories"].as_array().unwrap();
    assert!((1..=5).contains(&categories.len()), "{categories:?}");
    assert_eq!(
        p["metadata"]["docs"]["rs"]["targets"],
        serde_json::json!(["x86_64-unknown-linux-gnu"])
    );
    // The license files are the standard texts.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mit = std::fs::read_to_string(root.join("LICENSE-MIT")).unwrap();
    assert!(mit.starts_with("MIT License") && mit.contains("the diskmount developers"));
    let apache = std::fs::read_to_string(root.join("LICENSE-APACHE")).unwrap();
    assert!(
        apache.contains("Apache License") && apache.contains("Version 2.0, January 2004"),
        "LICENSE-APACHE"
    );
    assert!(apache.contains("END OF TERMS AND CONDITIONS"));
}

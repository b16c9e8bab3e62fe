//! `shardplan check` on the bundled specs: every valid spec passes, and each
//! spec in `specs/invalid/` produces the diagnostic its file is named after,
//! rendered as the snapshot in `tests/snapshots/`.

mod common;

use std::path::Path;

use common::shardplan;

fn yaml_files(dir: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(root).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

#[test]
fn valid_specs_pass() {
    let files = yaml_files("specs");
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        let out = shardplan(&["check", f]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{f}:\n{stdout}");
        assert!(stdout.ends_with(": ok\n"), "{f}: {stdout}");
    }
}

#[test]
fn each_invalid_spec_reports_its_code() {
    let files = yaml_files("specs/invalid");
    let mut codes_seen = std::collections::BTreeSet::new();
    for f in &files {
        let stem = Path::new(f)
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let json = shardplan(&["check", "--format", "json", f]);
        let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        let diags = doc["diagnostics"].as_array().unwrap();
        let codes: Vec<&str> = diags.iter().map(|d| d["code"].as_str().unwrap()).collect();
        assert!(
            codes.contains(&format!("shardplan::spec::{stem}").as_str()),
            "{f}: {codes:?}"
        );
        for d in diags {
            for key in [
                "code", "severity", "message", "file", "line", "column", "help",
            ] {
                assert!(!d[key].is_null(), "{f}: {key} missing in {d}");
            }
            assert!(d["line"].as_u64().unwrap() >= 1, "{f}: {d}");
        }
        // A warning alone leaves the file valid; --strict fails it.
        let expected = if stem == "unused_rule" { 0 } else { 1 };
        assert_eq!(json.status.code(), Some(expected), "{f}");
        codes_seen.insert(stem.clone());

        let text = shardplan(&["check", f]);
        insta::assert_snapshot!(stem, String::from_utf8_lossy(&text.stdout));
    }
    // One invalid spec per code.
    for code in shardplan::spec::DiagCode::ALL {
        assert!(
            codes_seen.contains(code.short()),
            "no spec in specs/invalid for {code}"
        );
    }
}

#[test]
fn exit_codes() {
    let out = shardplan(&["check", "--strict", "specs/invalid/unused_rule.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    // Every file is checked, not only the first bad one.
    let out = shardplan(&[
        "check",
        "specs/invalid/unknown_axis.yaml",
        "specs/invalid/dim_count.yaml",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("unknown_axis.yaml: 1 error(s)"), "{stdout}");
    assert!(stdout.contains("dim_count.yaml: 1 error(s)"), "{stdout}");
    assert_eq!(out.status.code(), Some(1));
    // Usage errors.
    assert_eq!(shardplan(&["check"]).status.code(), Some(2));
    assert_eq!(
        shardplan(&["check", "--format", "xml", "specs/single-device.yaml"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        shardplan(&["check", "no/such/file.yaml"]).status.code(),
        Some(2)
    );
}

#[test]
fn show_draws_a_grid() {
    let out = shardplan(&[
        "show",
        "specs/uneven-vocab.yaml",
        "--strategy",
        "padded",
        "--tensor",
        "lm_head.weight",
    ]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
    let out = shardplan(&[
        "show",
        "specs/uneven-vocab.yaml",
        "--strategy",
        "padded",
        "--tensor",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tensor `nope`"));
}

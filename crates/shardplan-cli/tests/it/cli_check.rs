//! `shardplan check` on the bundled specs: every valid spec passes, and each
//! spec in `specs/invalid/` produces the diagnostic its file is named after,
//! rendered as the snapshot in `tests/snapshots/`.

use crate::common;

use std::path::Path;

use common::shardplan;

fn yaml_files(dir: &str) -> Vec<String> {
    let root = crate::common::repo_root();
    let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
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

/// A file that opens but is not a spec (binary bytes, text that is not
/// YAML) is an invalid spec, exit 1, with the file and where; only files
/// that cannot be read exit 2. The JSON form gives every file an entry and
/// never says valid for a run that fails.
#[test]
fn garbage_is_invalid_and_json_lists_every_file() {
    let dir = std::env::temp_dir().join(format!("shardplan-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, &[u8], &str, u64); 3] = [
        (
            "png.yaml",
            b"\x89PNG\r\n\x1a\n\x00\x00",
            "shardplan::spec::encoding",
            1,
        ),
        (
            "late.yaml",
            b"version: 1\nmeshes: \xc3\x28",
            "shardplan::spec::encoding",
            2,
        ),
        (
            "nul.yaml",
            b"\x00\x01{{[ :: ]]",
            "shardplan::spec::syntax",
            1,
        ),
    ];
    for (name, bytes, code, line) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let p = path.to_str().unwrap();
        let out = shardplan(&["check", "--format", "json", p]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["valid"], false, "{name}");
        let d = &doc["diagnostics"][0];
        assert_eq!(d["code"], code, "{name}: {d}");
        assert_eq!(
            (d["file"].as_str(), d["line"].as_u64()),
            (Some(p), Some(line)),
            "{name}"
        );
        if code.ends_with("encoding") {
            let at = bytes.iter().position(|b| *b >= 0x80).unwrap();
            assert!(
                d["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("byte {at} ")),
                "{d}"
            );
        }
    }
    // A valid file, an unreadable one, a binary one: exit 2, not valid, an
    // entry each.
    let png = dir.join("png.yaml");
    let out = shardplan(&[
        "check",
        "--format",
        "json",
        "specs/single-device.yaml",
        "no/such/file.yaml",
        png.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    let files: Vec<(&str, bool)> = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["file"].as_str().unwrap(), f["valid"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        files,
        [
            ("specs/single-device.yaml", true),
            ("no/such/file.yaml", false),
            (png.to_str().unwrap(), false),
        ]
    );
    assert!(
        doc["files"][1]["unreadable"]
            .as_str()
            .unwrap()
            .contains("cannot read")
    );
    // Valid alone: valid.
    let out = shardplan(&["check", "--format", "json", "specs/single-device.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], true);
    // A warning under --strict fails, and says so.
    let out = shardplan(&[
        "check",
        "--strict",
        "--format",
        "json",
        "specs/invalid/unused_rule.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["valid"].as_bool(), doc["files"][0]["valid"].as_bool()),
        (Some(false), Some(false))
    );
    std::fs::remove_dir_all(&dir).unwrap();
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

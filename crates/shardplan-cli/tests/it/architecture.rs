//! The layering invariants of docs/ARCHITECTURE.md that a machine can
//! check: what each crate may depend on, read from `cargo metadata`.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

/// The declared dependencies of every workspace package: (package,
/// dependency, kind, features).
fn dependencies() -> Vec<(String, String, String, Vec<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(crate::common::repo_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut deps = Vec::new();
    for p in doc["packages"].as_array().unwrap() {
        for d in p["dependencies"].as_array().unwrap() {
            deps.push((
                p["name"].as_str().unwrap().to_string(),
                d["name"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap_or("normal").to_string(),
                d["features"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect(),
            ));
        }
    }
    deps
}

/// The normal dependencies of `package`, by name.
fn normal(deps: &[(String, String, String, Vec<String>)], package: &str) -> BTreeSet<String> {
    deps.iter()
        .filter(|(p, _, kind, _)| p == package && kind == "normal")
        .map(|(_, d, _, _)| d.clone())
        .collect()
}

#[test]
fn core_dependencies_are_pure() {
    let deps = dependencies();
    let core = normal(&deps, "shardplan-core");
    let allowed: BTreeSet<String> = ["half", "miette", "petgraph", "rayon", "thiserror"]
        .map(String::from)
        .into();
    assert!(
        core.is_subset(&allowed),
        "shardplan-core depends on {:?}: the core does no IO and reads no file format",
        core.difference(&allowed).collect::<Vec<_>>()
    );
    // miette for its Diagnostic derive only: rendering is the CLI's.
    for (p, d, _, features) in &deps {
        if d == "miette" && features.iter().any(|f| f == "fancy") {
            assert_eq!(p, "shardplan-cli", "{p} turns on miette's fancy rendering");
        }
    }
}

#[test]
fn layers_depend_downwards_only() {
    let deps = dependencies();
    let edge = normal(&deps, "shardplan");
    assert!(edge.contains("shardplan-core"));
    for cli_only in ["clap", "indicatif", "shardplan-cli"] {
        assert!(
            !edge.contains(cli_only),
            "the library depends on {cli_only}"
        );
    }
    let core = normal(&deps, "shardplan-core");
    for above in ["shardplan", "shardplan-cli"] {
        assert!(!core.contains(above), "the core depends on {above}");
    }
    // The Python binding is the top layer: pyo3 and numpy stay in it.
    for (p, d, _, _) in &deps {
        assert_ne!(d, "shardplan-python", "{p} depends on the Python binding");
        if d == "pyo3" || d == "numpy" {
            assert_eq!(p, "shardplan-python", "{p} depends on {d}");
        }
    }
    let binding = normal(&deps, "shardplan-python");
    assert!(binding.contains("shardplan") && binding.contains("shardplan-cli"));
}

#[test]
fn the_core_forbids_unsafe_code() {
    let lib = std::fs::read_to_string(
        crate::common::repo_root().join("crates/shardplan-core/src/lib.rs"),
    )
    .unwrap();
    assert!(lib.contains("#![forbid(unsafe_code)]"));
}

/// Every error code the sources define (`code(shardplan::...)` on a
/// diagnostic, or a code string of `DiagCode` and `PieceFault`) is listed in
/// docs/errors.md; `scripts/gen_error_codes.py` rewrites the page.
#[test]
fn every_error_code_is_documented() {
    let root = crate::common::repo_root();
    let doc = std::fs::read_to_string(root.join("docs/errors.md")).unwrap();
    let mut missing = Vec::new();
    let mut seen = 0;
    let mut stack = vec![root.join("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("tests") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs")
                || !path.to_string_lossy().contains("/src/")
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices("shardplan::") {
                let before = &text[..at];
                let is_code = before.ends_with("code(") || before.ends_with("=> \"");
                if !is_code {
                    continue;
                }
                let code: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == ':')
                    .collect();
                seen += 1;
                if !doc.contains(&format!("`{code}`")) {
                    missing.push(format!("{code} ({})", path.display()));
                }
            }
        }
    }
    assert!(seen > 100, "found only {seen} codes");
    assert!(
        missing.is_empty(),
        "codes missing from docs/errors.md (run scripts/gen_error_codes.py): {missing:?}"
    );
}

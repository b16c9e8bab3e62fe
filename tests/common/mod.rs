//! Helpers shared by the integration tests: the MindSpore conformance
//! cases, their layouts, and running the binary. Each test file uses a part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use shardplan::notation::mindspore::MindSporeLayout;

/// `../shared/conformance/mindspore`: the cases MindSpore 2.10 produced,
/// beside the repository.
pub fn shared_cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/mindspore")
}

/// The copies of a few cases kept in the repository.
pub fn fixture_cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mindspore")
}

/// The case folders (those with a `case.json`) under `root`, sorted.
pub fn case_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// Every case of `../shared` when it is there, else the fixtures, saying
/// so.
pub fn conformance_cases() -> Vec<PathBuf> {
    let shared = shared_cases_dir();
    if shared.is_dir() {
        return case_dirs(&shared);
    }
    eprintln!(
        "SKIPPED: {} is absent; running the copies in tests/fixtures/mindspore only",
        shared.display()
    );
    case_dirs(&fixture_cases_dir())
}

/// A parameter's layout as a case's JSON records it, on stage `stage` of
/// `stage_count`.
pub fn ms_layout(entry: &Value, stage: u64, stage_count: u64) -> MindSporeLayout {
    let ints = |v: &Value| -> Vec<i64> {
        match v {
            Value::Array(a) => a.iter().map(|x| x.as_i64().unwrap()).collect(),
            x => vec![x.as_i64().unwrap()],
        }
    };
    MindSporeLayout {
        dev_matrix: entry["dev_matrix"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect(),
        tensor_map: entry["tensor_map"]
            .as_array()
            .unwrap()
            .iter()
            .map(ints)
            .collect(),
        opt_weight_shard_size: entry["opt_weight_shard_size"].as_i64().unwrap_or(0),
        opt_weight_shard_step: entry["opt_weight_shard_step"].as_i64().unwrap_or(0),
        param_split_shape: Vec::new(),
        stage,
        stage_count,
    }
}

/// Runs the binary in the repository folder, without colours.
pub fn shardplan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardplan"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run shardplan")
}

/// Standard output then standard error.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

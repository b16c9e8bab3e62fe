//! Helpers shared by the library's tests: where the repository, the test
//! data and `../shared` are, the MindSpore conformance cases, their layouts
//! and value rules. Each test file uses a part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use shardplan::notation::mindspore::MindSporeLayout;

/// The repository's root (the workspace), where `specs/` and `docs/` are.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// This test binary's own data: fixtures, fuzz regressions, snapshots.
pub fn test_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it")
}

/// `../shared/conformance/mindspore`: the cases MindSpore 2.10 produced,
/// beside the repository.
pub fn shared_cases_dir() -> PathBuf {
    repo_root().join("../shared/conformance/mindspore")
}

/// The copies of a few cases kept in the repository.
pub fn fixture_cases_dir() -> PathBuf {
    test_data().join("fixtures/mindspore")
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

/// `../shared/conformance/mindspore_random`: 160 randomized cases run
/// through MindSpore 2.10.
pub fn random_cases_dir() -> PathBuf {
    repo_root().join("../shared/conformance/mindspore_random")
}

/// True under CI (`CI=true`), where a missing `../shared` is a failure.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `dir` when it exists. When it is missing, fails under CI and elsewhere
/// says what is skipped (`what`) and returns `None`.
#[track_caller]
pub fn shared_or_skip(dir: &Path, what: &str) -> Option<PathBuf> {
    if dir.is_dir() {
        return Some(dir.to_path_buf());
    }
    assert!(
        !is_ci(),
        "{} is missing under CI: the copy of shared/ beside the clone is required ({what})",
        dir.display()
    );
    eprintln!("SKIPPED: {} is absent; {what}", dir.display());
    None
}

/// Every case of `../shared` when it is there, else the fixtures, saying
/// so (and failing under CI).
pub fn conformance_cases() -> Vec<PathBuf> {
    match shared_or_skip(
        &shared_cases_dir(),
        "running the copies in tests/fixtures/mindspore only",
    ) {
        Some(shared) => case_dirs(&shared),
        None => case_dirs(&fixture_cases_dir()),
    }
}

/// The randomized cases, or none (saying so, and failing under CI).
pub fn random_cases() -> Vec<PathBuf> {
    shared_or_skip(
        &random_cases_dir(),
        "the randomized MindSpore cases are not run",
    )
    .map(|d| case_dirs(&d))
    .unwrap_or_default()
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

/// Element `flat` of a case's parameter under its value rule,
/// `dtype(arange(numel) + base)`, as little-endian bytes.
pub fn value_rule_bytes(dtype: &str, base: f64, flat: u64) -> Vec<u8> {
    let v = flat as f64 + base;
    match dtype {
        "float32" => (v as f32).to_le_bytes().to_vec(),
        "float16" => half::f16::from_f64(v).to_le_bytes().to_vec(),
        "bfloat16" => half::bf16::from_f64(v).to_le_bytes().to_vec(),
        "int32" => (v as i32).to_le_bytes().to_vec(),
        "int64" => (v as i64).to_le_bytes().to_vec(),
        other => panic!("no value rule for {other}"),
    }
}

/// The base of a value rule such as `"float32(arange(numel) + 1000) row-major"`.
pub fn value_rule_base(rule: &str) -> f64 {
    let plus = rule.split('+').nth(1).expect("value rule has a `+`");
    plus.split(')').next().unwrap().trim().parse().unwrap()
}

/// The bytes of `region` of a case's parameter `param` (its `case.json`
/// entry) under the value rule, row-major.
pub fn value_rule_slice(param: &Value, region: &shardplan::Region) -> Vec<u8> {
    let shape: Vec<u64> = serde_json::from_value(param["full_shape"].clone()).unwrap();
    let dtype = param["dtype"].as_str().unwrap();
    let base = value_rule_base(param["value_rule"].as_str().unwrap());
    let mut out = Vec::new();
    let n = region.volume();
    let mut local = vec![0u64; shape.len()];
    for i in 0..n {
        let mut rem = i;
        for d in (0..shape.len()).rev() {
            local[d] = rem % region.extent()[d];
            rem /= region.extent()[d];
        }
        let flat = (0..shape.len()).fold(0u64, |f, d| f * shape[d] + region.offset()[d] + local[d]);
        out.extend(value_rule_bytes(dtype, base, flat));
    }
    out
}

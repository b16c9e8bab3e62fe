//! Helpers shared by the binary's tests: running it, and where the test
//! data of the workspace is (the library keeps the fixtures, since they
//! test its formats; `../shared` beside the repository).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root (the workspace), where `specs/` and `docs/` are.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixtures of the library's tests, which the binary's tests read too.
pub fn fixtures() -> PathBuf {
    repo_root().join("crates/shardplan/tests/it/fixtures")
}

/// `../shared/conformance/mindspore`: the cases MindSpore 2.10 produced.
pub fn shared_cases_dir() -> PathBuf {
    repo_root().join("../shared/conformance/mindspore")
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

/// `../shared/conformance/torch`, or (failing under CI) the copies of its
/// cases kept in the fixtures.
pub fn torch_cases() -> Option<PathBuf> {
    shared_or_skip(
        &repo_root().join("../shared/conformance/torch"),
        "running the copies in fixtures/torch",
    )
    .or_else(|| Some(fixtures().join("torch")))
}

/// Runs the binary in the repository folder, without colours.
pub fn shardplan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardplan"))
        .args(args)
        .current_dir(repo_root())
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

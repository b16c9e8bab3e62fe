//! The docs name only what exists, and the code map names everything that
//! does: a file moved, added or deleted without its docs fails here.

use std::path::{Path, PathBuf};

use crate::common::repo_root;

/// The folders a repository path in backticks starts with.
const TOP_FOLDERS: [&str; 8] = [
    "crates/",
    "bindings/",
    "scripts/",
    "specs/",
    "fuzz/",
    "docs/",
    "benches/",
    ".ci/",
];

/// The Markdown pages checked: the README and every page of `docs/`.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

/// Text between backticks, in order.
fn code_spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// A repository path as written in the docs, without a `:line` suffix;
/// `None` for what is not a concrete path (a glob, a placeholder, a
/// command line).
fn repo_path(span: &str) -> Option<&str> {
    let path = span.split(':').next()?;
    let concrete = !path.contains(['*', '<', '{', ' ', '$']);
    (concrete && TOP_FOLDERS.iter().any(|top| path.starts_with(top))).then_some(path)
}

#[test]
fn every_path_the_docs_name_exists() {
    let root = repo_root();
    let mut missing = Vec::new();
    for page in pages(&root) {
        let text = std::fs::read_to_string(&page).unwrap();
        for path in code_spans(&text).filter_map(repo_path) {
            if !root.join(path).exists() {
                missing.push(format!("{}: `{path}`", page.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs name paths that do not exist: {missing:#?}"
    );
}

/// The code map of docs/ARCHITECTURE.md: per `### \`folder\`` section, the
/// paths its table rows start with.
fn code_map(text: &str) -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            let folder = code_spans(heading).next().unwrap_or("").to_string();
            sections.push((folder, Vec::new()));
        } else if let (Some(first), Some((_, rows))) =
            (line.strip_prefix("| "), sections.last_mut())
        {
            let cell = first.split(" |").next().unwrap_or("");
            rows.extend(code_spans(cell).map(str::to_string));
        }
    }
    sections
}

/// A path of a code-map row, relative to its section's folder or, for
/// `tests/it/`, `benches/` and `examples/` rows of a `src` section, to the
/// crate above it.
fn resolve(root: &Path, folder: &str, path: &str) -> Option<PathBuf> {
    let base = root.join(folder);
    [base.join(path), base.parent()?.join(path), root.join(path)]
        .into_iter()
        .find(|p| p.exists())
}

#[test]
fn the_code_map_names_every_module_and_only_modules_that_exist() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let map = code_map(&text);
    let mut faults = Vec::new();
    for (folder, rows) in &map {
        for path in rows {
            if resolve(&root, folder, path).is_none() {
                faults.push(format!(
                    "section `{folder}` names `{path}`, which does not exist"
                ));
            }
        }
    }
    for src in ["crates/shardplan-core/src", "crates/shardplan/src"] {
        let rows = &map
            .iter()
            .find(|(folder, _)| folder == src)
            .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has no section `{src}`"))
            .1;
        for entry in std::fs::read_dir(root.join(src)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let named = if path.is_dir() {
                format!("{name}/")
            } else {
                name.clone()
            };
            let documented = rows.iter().any(|r| *r == named || *r == name);
            if name != "lib.rs" && !documented {
                faults.push(format!("`{src}/{named}` is not in the code map"));
            }
        }
    }
    assert!(
        faults.is_empty(),
        "docs/ARCHITECTURE.md's code map: {faults:#?}"
    );
}

/// Every fuzz target is named in the code map and run by `.ci/run`.
#[test]
fn every_fuzz_target_is_documented_and_run() {
    let root = repo_root();
    let arch = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let mut targets = Vec::new();
    for entry in std::fs::read_dir(root.join("fuzz/fuzz_targets")).unwrap() {
        let path = entry.unwrap().path();
        targets.push(path.file_stem().unwrap().to_string_lossy().into_owned());
    }
    assert!(targets.len() >= 8, "found only {targets:?}");
    for target in &targets {
        assert!(
            arch.contains(&format!("`{target}`")),
            "docs/ARCHITECTURE.md does not name fuzz target {target}"
        );
        assert!(
            ci.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|w| w == target),
            ".ci/run does not run fuzz target {target}"
        );
    }
}

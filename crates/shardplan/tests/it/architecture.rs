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

/// The Rust files under `dir`, recursively.
fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The core and the CLI forbid `unsafe`; the library denies it at its root
/// and only functions of its file formats' IO allow it, each by name (an
/// outer `#[allow(unsafe_code)]` on the `fn`), each block with a `SAFETY`
/// comment just above.
#[test]
fn unsafe_code_is_only_where_io_needs_it() {
    let root = crate::common::repo_root();
    let has_line = |p: &str, want: &str| {
        std::fs::read_to_string(root.join(p))
            .unwrap()
            .lines()
            .any(|l| l.trim() == want)
    };
    for forbidding in [
        "crates/shardplan-core/src/lib.rs",
        "crates/shardplan-cli/src/lib.rs",
        "crates/shardplan-cli/src/main.rs",
    ] {
        assert!(
            has_line(forbidding, "#![forbid(unsafe_code)]"),
            "{forbidding}"
        );
    }
    assert!(has_line(
        "crates/shardplan/src/lib.rs",
        "#![deny(unsafe_code)]"
    ));
    let (mut blocks, mut allowing) = (0, 0);
    for path in rust_files(&root.join("crates/shardplan/src")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let in_formats = path.to_string_lossy().contains("/src/formats/");
        let at = |i: usize| format!("{}:{}", path.display(), i + 1);
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains("unsafe_code") && !code.contains("#![deny(unsafe_code)]") {
                // Only `#[allow(unsafe_code)]` right above a function of
                // the formats: no module-wide allow, no `expect`.
                let next_is_fn = lines[i + 1..]
                    .iter()
                    .map(|l| l.trim_start())
                    .find(|l| !l.starts_with("#["))
                    .is_some_and(|l| l.starts_with("fn ") || l.starts_with("pub"));
                assert!(
                    in_formats && code.trim() == "#[allow(unsafe_code)]" && next_is_fn,
                    "{}: unsafe code allowed other than on one IO function",
                    at(i)
                );
                allowing += 1;
            }
            if code.contains("unsafe {") {
                blocks += 1;
                let above = &lines[i.saturating_sub(8)..i];
                assert!(
                    above
                        .iter()
                        .any(|l| l.trim_start().starts_with("// SAFETY:")),
                    "{}: an unsafe block without a SAFETY comment",
                    at(i)
                );
            }
        }
    }
    assert!(
        blocks > 0 && allowing > 0,
        "no unsafe block found: is the search right?"
    );
    // docs/ARCHITECTURE.md counts them.
    assert_eq!(allowing, 5, "update the count in docs/ARCHITECTURE.md");
}

/// Every error code the sources define (`code(shardplan::...)` on a
/// diagnostic, a code string of `DiagCode` and `PieceFault`, or a code the
/// Python package passes to its exceptions) is listed in docs/errors.md with
/// a meaning; `scripts/gen_error_codes.py` rewrites the page.
#[test]
fn every_error_code_is_documented() {
    let root = crate::common::repo_root();
    let doc = std::fs::read_to_string(root.join("docs/errors.md")).unwrap();
    let mut missing = Vec::new();
    let mut seen = 0;
    let mut stack = vec![root.join("crates"), root.join("bindings/python")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("tests") && !path.ends_with("target") {
                    stack.push(path);
                }
                continue;
            }
            let source = path.extension().is_some_and(|e| e == "rs" || e == "py");
            if !source
                || !path.to_string_lossy().contains("/src/")
                    && !path.to_string_lossy().contains("/python/shardplan/")
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for code in error_codes_in(&text) {
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
    let blank: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("| `shardplan::"))
        .filter(|l| {
            l.trim_end()
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .is_none_or(|m| m.trim().is_empty())
        })
        .collect();
    assert!(
        blank.is_empty(),
        "codes without a meaning in docs/errors.md (give the variant a doc comment, then run scripts/gen_error_codes.py): {blank:?}"
    );
}

/// The error codes a source file defines or raises: what follows `code(`
/// (a diagnostic attribute), `=> "` (a code string of `DiagCode` or
/// `PieceFault`), `code="` (Python), `code: Some("` or `with_class(..., "`
/// (the extension).
fn error_codes_in(text: &str) -> Vec<String> {
    const BEFORE: [&str; 5] = ["code(", "=> \"", "code=\"", "code: Some(\"", ", \""];
    text.match_indices("shardplan::")
        .filter(|(at, _)| BEFORE.iter().any(|b| text[..*at].ends_with(b)))
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == ':')
                .collect::<String>()
                .trim_end_matches(':')
                .to_string()
        })
        .collect()
}

/// A crate's layers, bottom first: module path prefixes (`notation/fault`
/// is the file `notation/fault.rs`) and their layer. A file may name, by a
/// `crate::` path, its own top-level module or a module on a lower layer,
/// never one on its own layer or above.
struct Layering {
    src: &'static str,
    layers: &'static [(&'static str, u32)],
}

const LAYERINGS: [Layering; 2] = [
    Layering {
        src: "crates/shardplan-core/src",
        layers: &[
            ("notation/fault", 0),
            ("dtype", 0),
            ("pattern", 0),
            ("error", 1),
            ("mesh", 2),
            ("geometry", 2),
            ("layout", 3),
            ("notation", 4),
            ("strategy", 5),
            ("plan", 6),
            // The verifier shares no code with the planner or its bounds.
            ("bounds", 7),
            ("verify", 7),
            ("planner", 8),
            ("execute", 9),
            ("model", 10),
            ("derive", 10),
            ("storage", 10),
        ],
    },
    Layering {
        src: "crates/shardplan/src",
        // What is not a module of this crate is the core, below all.
        layers: &[
            // A spec knows no file format and a format builds no spec ...
            ("spec", 1),
            ("formats", 1),
            // An engine's destination is built from a config, knowing no file
            // format beyond reading that config.
            ("engine", 1),
            // ... reading files into a spec (the import of strategy files,
            // and the one loader that tells every format apart) sits on both.
            ("import", 2),
            ("reshard", 3),
            ("report", 3),
            ("show", 3),
            ("arbitrary", 3),
            ("fuzzing", 4),
        ],
    },
];

impl Layering {
    /// The layer of a module path, by its longest listed prefix.
    fn layer_of(&self, path: &[&str]) -> Option<u32> {
        self.layers
            .iter()
            .filter(|(prefix, _)| {
                let p: Vec<&str> = prefix.split('/').collect();
                path.len() >= p.len() && path[..p.len()] == p[..]
            })
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|&(_, layer)| layer)
    }
}

/// Root re-exports of `lib.rs`: item name to its module.
fn reexports(lib: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        for name in names.trim_matches(|c| "{} \n".contains(c)).split(',') {
            let name = name.trim().rsplit(' ').next().unwrap_or("");
            if !name.is_empty() {
                out.insert(name.to_string(), module.to_string());
            }
        }
    }
    out
}

/// The module paths a source text names with `crate::`, outside comments,
/// test modules and `#[cfg(doc)]` imports: `crate::a::b::C` gives
/// `[a, b]`, `crate::{a::X, Y}` each entry's.
fn crate_paths(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    let mut doc_only = false;
    for line in code.lines() {
        let t = line.trim();
        if t.starts_with("//") {
            continue;
        }
        if std::mem::replace(&mut doc_only, t == "#[cfg(doc)]") {
            continue;
        }
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let entries: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group.split([',', '}']).collect(),
                None => vec![rest],
            };
            for e in entries {
                let path: String = e
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                if !path.is_empty() {
                    out.push(path);
                }
            }
        }
    }
    out
}

#[test]
fn modules_import_only_layers_below() {
    let root = crate::common::repo_root();
    let mut checked = 0;
    for layering in &LAYERINGS {
        let src = root.join(layering.src);
        let names = reexports(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
        let is_module = |m: &str| src.join(format!("{m}.rs")).exists() || src.join(m).is_dir();
        let mut files = vec![src.clone()];
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap().with_extension("");
            let rel = rel.to_str().unwrap().to_string();
            if rel == "lib" || rel == "main" || rel.ends_with("tests") {
                continue;
            }
            let here: Vec<&str> = rel.split('/').collect();
            let layer = layering
                .layer_of(&here)
                .unwrap_or_else(|| panic!("{rel}.rs is in no layer of {}", layering.src));
            for path in crate_paths(&std::fs::read_to_string(&p).unwrap()) {
                let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
                let Some(&first) = segs.first() else { continue };
                if !is_module(first) {
                    // A root re-export, or (in the edge crate) the core.
                    let Some(m) = names.get(first) else { continue };
                    segs = vec![m.as_str()];
                }
                if segs[0] == here[0] || !is_module(segs[0]) {
                    continue;
                }
                let target: Vec<&str> = segs
                    .iter()
                    .take(2)
                    .copied()
                    .filter(|s| s.chars().next().is_some_and(|c| c.is_lowercase()))
                    .collect();
                let theirs = layering.layer_of(&target).unwrap();
                assert!(
                    theirs < layer,
                    "{}/{rel}.rs (layer {layer}) names crate::{path} (layer {theirs}); see the layers in docs/ARCHITECTURE.md",
                    layering.src
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "only {checked} imports checked");
}

/// The module paths, from the crate root, that the code of a file at
/// module path `here` names by `crate::` or `super::` (outside comments,
/// test modules and `#[cfg(doc)]` imports): in `formats/hf/folder.rs`
/// (`here` = `[formats, hf, folder]`), `super::single::f` gives
/// `[formats, hf, single, f]` and `crate::formats::{io, chunked::X}` gives
/// `[formats, io]` and `[formats, chunked, X]`.
fn named_paths(text: &str, here: &[&str]) -> Vec<Vec<String>> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    let mut doc_only = false;
    for line in code.lines() {
        let t = line.trim();
        if t.starts_with("//") {
            continue;
        }
        if std::mem::replace(&mut doc_only, t == "#[cfg(doc)]") {
            continue;
        }
        let mut at = 0;
        while at < line.len() {
            let rest = &line[at..];
            let starts_path = at == 0
                || !line[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            let (base, mut rest): (Vec<&str>, &str) = if !starts_path {
                at += rest.chars().next().map_or(1, char::len_utf8);
                continue;
            } else if let Some(r) = rest.strip_prefix("crate::") {
                (Vec::new(), r)
            } else if rest.starts_with("super::") {
                let mut up = 0;
                let mut r = rest;
                while let Some(next) = r.strip_prefix("super::") {
                    up += 1;
                    r = next;
                }
                (here[..here.len().saturating_sub(up)].to_vec(), r)
            } else {
                at += rest.chars().next().map_or(1, char::len_utf8);
                continue;
            };
            at = line.len() - rest.len();
            // `a::b::{c, d::E}`: the prefix `a::b::`, then each entry.
            let prefix_len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let (prefix, after) = rest.split_at(prefix_len);
            let entries: Vec<&str> = match after.strip_prefix('{') {
                Some(group) if prefix.is_empty() || prefix.ends_with("::") => {
                    rest = group.split('}').next().unwrap_or("");
                    rest.split(',').collect()
                }
                _ => vec![""],
            };
            for e in entries {
                let e = format!("{prefix}{}", e.trim());
                let path: String = e
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut full: Vec<String> = base.iter().map(|s| s.to_string()).collect();
                full.extend(path.split("::").filter(|s| !s.is_empty()).map(String::from));
                out.push(full);
            }
        }
    }
    out
}

/// A cycle of `graph`, as the nodes along it with the first repeated at
/// the end, or `None`.
fn find_cycle(graph: &std::collections::BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // 0 unseen, 1 on the current path, 2 done.
    fn visit(
        n: &str,
        graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
        state: &mut std::collections::BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = path.iter().position(|p| p == m).unwrap();
                    let mut cycle = path[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = std::collections::BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn find_cycle_names_a_cycle() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(
        find_cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])),
        None
    );
    assert_eq!(
        find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "b")])),
        Some(vec!["b".to_string(), "c".to_string(), "b".to_string()])
    );
    let here = ["formats", "hf", "folder"];
    assert_eq!(
        named_paths(
            "use super::single::f;\nuse crate::formats::{io, chunked::X};\n// crate::formats::torch\n",
            &here
        ),
        [
            vec!["formats", "hf", "single", "f"],
            vec!["formats", "io"],
            vec!["formats", "chunked", "X"],
        ]
    );
}

/// The families of `formats/` (a top-level file or folder of it: `hf`,
/// `mindspore`, `torch`, `checkpoint`, `io`, ...) name each other without a
/// circle: for each file, the families its code names by a
/// `crate::formats::` or `super::` path, and no chain of those comes back.
#[test]
fn formats_families_import_no_circle() {
    let src = crate::common::repo_root().join("crates/shardplan/src");
    let formats = src.join("formats");
    let is_family = |m: &str| formats.join(format!("{m}.rs")).exists() || formats.join(m).is_dir();
    // `crate::formats::write_atomic` is `io`'s, re-exported.
    let reexported = reexports(&std::fs::read_to_string(formats.join("mod.rs")).unwrap());
    let mut graph = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
    let mut edges = 0;
    for path in rust_files(&formats) {
        let rel = path.strip_prefix(&src).unwrap().with_extension("");
        let rel = rel.to_str().unwrap().to_string();
        let mut here: Vec<&str> = rel.split('/').collect();
        if here.last() == Some(&"mod") {
            here.pop();
        }
        if here.len() < 2 || here.last().is_some_and(|l| l.ends_with("tests")) {
            // formats/mod.rs declares the families; tests name what they test.
            continue;
        }
        let family = here[1].to_string();
        graph.entry(family.clone()).or_default();
        for mut named in named_paths(&std::fs::read_to_string(&path).unwrap(), &here) {
            if let Some(m) = named.get(1).and_then(|n| reexported.get(n)) {
                named[1] = m.clone();
            }
            if named.len() >= 2
                && named[0] == "formats"
                && is_family(&named[1])
                && named[1] != family
            {
                edges += 1;
                graph.get_mut(&family).unwrap().insert(named[1].clone());
            }
        }
    }
    assert!(
        graph.len() > 8 && edges > 20,
        "only {} families and {edges} references found: is the search right?",
        graph.len()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "an import circle inside crates/shardplan/src/formats: {}",
            cycle.join(" -> ")
        );
    }
}

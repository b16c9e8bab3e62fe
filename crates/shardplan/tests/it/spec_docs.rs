//! The examples in `docs/spec.md` stay true.
//!
//! Every fenced code block whose info string is exactly `yaml` is a complete,
//! valid spec: it must read without an error-severity diagnostic. A block
//! whose info string is `yaml-invalid <code>` must produce a diagnostic with
//! that short code. Other blocks (`yaml-fragment`, `text`, ...) are prose.
//! Diagnostics name the block `docs/spec.md#N`, N counting every fenced
//! block of the file from 1; failures also give the line of the fence.

use std::collections::BTreeSet;

use shardplan::spec::{DiagCode, SpecDiagnostic, parse_spec};

/// A fenced code block: its info string, body and the line of its opening
/// fence (1-based).
struct Block {
    info: String,
    text: String,
    line: usize,
}

fn doc() -> String {
    let path = crate::common::repo_root().join("docs/spec.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Fenced blocks opened by three or more backticks, closed by a line of at
/// least as many backticks and nothing else.
fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Block)> = None;
    for (i, line) in doc.lines().enumerate() {
        let trimmed = line.trim_start();
        let ticks = trimmed.chars().take_while(|&c| c == '`').count();
        match &mut open {
            None if ticks >= 3 => {
                let block = Block {
                    info: trimmed[ticks..].trim().to_string(),
                    text: String::new(),
                    line: i + 1,
                };
                open = Some((ticks, block));
            }
            None => {}
            Some((fence, _)) if ticks >= *fence && trimmed[ticks..].trim().is_empty() => {
                out.push(open.take().expect("a block is open").1);
            }
            Some((_, block)) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
        }
    }
    assert!(open.is_none(), "docs/spec.md ends inside a fenced block");
    out
}

fn listing(diags: &[SpecDiagnostic]) -> String {
    diags
        .iter()
        .map(|d| format!("  {}\n    help: {}", d.one_line(), d.help))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn yaml_examples_are_valid_specs() {
    let doc = doc();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (n, b) in blocks(&doc).iter().enumerate() {
        if b.info != "yaml" {
            continue;
        }
        checked += 1;
        let file = format!("docs/spec.md#{}", n + 1);
        let (spec, diags) = parse_spec(&file, &b.text);
        if spec.is_none() || diags.iter().any(SpecDiagnostic::is_error) {
            failures.push(format!(
                "block at line {} ({file}) is not a valid spec:\n{}",
                b.line,
                listing(&diags)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        checked >= 8,
        "docs/spec.md has {checked} ```yaml blocks, expected at least 8"
    );
}

#[test]
fn invalid_examples_report_their_code() {
    let doc = doc();
    let known: BTreeSet<&str> = DiagCode::ALL.iter().map(|c| c.short()).collect();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (n, b) in blocks(&doc).iter().enumerate() {
        let Some(code) = b.info.strip_prefix("yaml-invalid") else {
            continue;
        };
        let code = code.trim();
        checked += 1;
        if !known.contains(code) {
            failures.push(format!(
                "block at line {}: `{code}` is not a diagnostic code",
                b.line
            ));
            continue;
        }
        let file = format!("docs/spec.md#{}", n + 1);
        let (_, diags) = parse_spec(&file, &b.text);
        if !diags.iter().any(|d| d.code.short() == code) {
            failures.push(format!(
                "block at line {} ({file}) should report `{code}`, got:\n{}",
                b.line,
                listing(&diags)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        checked >= 3,
        "docs/spec.md has {checked} ```yaml-invalid blocks"
    );
}

#[test]
fn every_diagnostic_code_is_documented() {
    let doc = doc();
    let missing: Vec<&str> = DiagCode::ALL
        .iter()
        .map(|c| c.short())
        .filter(|short| {
            !doc.lines()
                .any(|l| l.starts_with('|') && l.contains(&format!("`{short}`")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "codes without a row in the diagnostics table of docs/spec.md: {missing:?}"
    );
}

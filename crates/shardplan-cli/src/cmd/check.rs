//! `shardplan check`: every problem of every file, as text or JSON.

use crate::Status;
use std::io::Write;
use std::path::PathBuf;

use miette::IntoDiagnostic;
use shardplan::spec::{SpecDiagnostic, parse_spec_bytes};

use crate::args::*;
use crate::common::*;

/// One file given to `check`: its diagnostics, or why it could not be read.
enum CheckedFile {
    Parsed(Vec<SpecDiagnostic>),
    Unreadable(String),
}

impl CheckedFile {
    fn is_valid(&self, strict: bool) -> bool {
        match self {
            CheckedFile::Parsed(ds) => !ds.iter().any(|d| d.is_error() || strict),
            CheckedFile::Unreadable(_) => false,
        }
    }
}

pub(crate) fn check(files: &[PathBuf], format: Format, strict: bool) -> miette::Result<Status> {
    let all: Vec<(&PathBuf, CheckedFile)> = files.iter().map(|p| (p, check_file(p))).collect();
    let unreadable = all
        .iter()
        .any(|(_, c)| matches!(c, CheckedFile::Unreadable(_)));
    let failed = all.iter().any(|(_, c)| !c.is_valid(strict));
    let mut stdout = std::io::stdout().lock();
    match format {
        Format::Text => write_text(&mut stdout, &all)?,
        Format::Json => {
            let doc = json_report(&all, strict, failed);
            let text = serde_json::to_string_pretty(&doc).into_diagnostic()?;
            writeln!(stdout, "{text}").into_diagnostic()?;
        }
    }
    Ok(if unreadable {
        Status::from(2)
    } else if failed {
        Status::from(1)
    } else {
        Status::SUCCESS
    })
}

/// Reads and checks one file. An unreadable file is a usage error, but the
/// others are still checked; a file that reads but is not text is an
/// invalid spec.
fn check_file(path: &PathBuf) -> CheckedFile {
    match std::fs::read(path) {
        Ok(bytes) => CheckedFile::Parsed(parse_spec_bytes(&path.display().to_string(), &bytes).1),
        Err(e) => CheckedFile::Unreadable(format!("cannot read {}: {e}", path.display())),
    }
}

/// Each file's diagnostics, rendered, then its one-line verdict; an
/// unreadable file's error on stderr.
fn write_text(out: &mut impl Write, all: &[(&PathBuf, CheckedFile)]) -> miette::Result<()> {
    for (path, checked) in all {
        let diags = match checked {
            CheckedFile::Parsed(ds) => ds,
            CheckedFile::Unreadable(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        write!(out, "{}", render(diags)).into_diagnostic()?;
        let errors = diags.iter().filter(|d| d.is_error()).count();
        let verdict = match (errors, diags.len() - errors) {
            (0, 0) => "ok".to_string(),
            (e, w) => format!("{e} error(s), {w} warning(s)"),
        };
        writeln!(out, "{}: {verdict}", path.display()).into_diagnostic()?;
    }
    Ok(())
}

fn diagnostic_json(d: &SpecDiagnostic) -> serde_json::Value {
    serde_json::json!({
        "code": d.code.as_str(),
        "severity": d.severity.as_str(),
        "message": d.message,
        "file": d.file,
        "line": d.line,
        "column": d.column,
        "help": d.help,
    })
}

/// The JSON report: the verdict, an entry for every file (an unreadable
/// one with its error) and every diagnostic.
fn json_report(all: &[(&PathBuf, CheckedFile)], strict: bool, failed: bool) -> serde_json::Value {
    let items: Vec<serde_json::Value> = all
        .iter()
        .filter_map(|(_, c)| match c {
            CheckedFile::Parsed(ds) => Some(ds.iter().map(diagnostic_json)),
            CheckedFile::Unreadable(_) => None,
        })
        .flatten()
        .collect();
    let entries: Vec<serde_json::Value> = all
        .iter()
        .map(|(path, c)| match c {
            CheckedFile::Parsed(ds) => serde_json::json!({
                "file": path.display().to_string(),
                "valid": c.is_valid(strict),
                "errors": ds.iter().filter(|d| d.is_error()).count(),
                "warnings": ds.iter().filter(|d| !d.is_error()).count(),
            }),
            CheckedFile::Unreadable(e) => serde_json::json!({
                "file": path.display().to_string(),
                "valid": false,
                "unreadable": e,
            }),
        })
        .collect();
    serde_json::json!({ "valid": !failed, "files": entries, "diagnostics": items })
}

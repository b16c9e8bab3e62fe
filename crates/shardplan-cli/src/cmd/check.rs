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
    let mut all = Vec::new();
    for path in files {
        // An unreadable file is a usage error, but the others are still
        // checked; a file that reads but is not text is an invalid spec.
        let checked = match std::fs::read(path) {
            Ok(bytes) => {
                CheckedFile::Parsed(parse_spec_bytes(&path.display().to_string(), &bytes).1)
            }
            Err(e) => CheckedFile::Unreadable(format!("cannot read {}: {e}", path.display())),
        };
        all.push((path, checked));
    }
    let unreadable = all
        .iter()
        .any(|(_, c)| matches!(c, CheckedFile::Unreadable(_)));
    let failed = all.iter().any(|(_, c)| !c.is_valid(strict));
    let mut stdout = std::io::stdout().lock();
    match format {
        Format::Text => {
            for (path, checked) in &all {
                let diags = match checked {
                    CheckedFile::Parsed(ds) => ds,
                    CheckedFile::Unreadable(e) => {
                        eprintln!("error: {e}");
                        continue;
                    }
                };
                write!(stdout, "{}", render(diags)).into_diagnostic()?;
                let errors = diags.iter().filter(|d| d.is_error()).count();
                let warnings = diags.len() - errors;
                writeln!(
                    stdout,
                    "{}: {}",
                    path.display(),
                    match (errors, warnings) {
                        (0, 0) => "ok".to_string(),
                        (e, w) => format!("{e} error(s), {w} warning(s)"),
                    }
                )
                .into_diagnostic()?;
            }
        }
        Format::Json => {
            let diag_json = |d: &SpecDiagnostic| {
                serde_json::json!({
                    "code": d.code.as_str(),
                    "severity": d.severity.as_str(),
                    "message": d.message,
                    "file": d.file,
                    "line": d.line,
                    "column": d.column,
                    "help": d.help,
                })
            };
            let items: Vec<serde_json::Value> = all
                .iter()
                .filter_map(|(_, c)| match c {
                    CheckedFile::Parsed(ds) => Some(ds.iter().map(diag_json)),
                    CheckedFile::Unreadable(_) => None,
                })
                .flatten()
                .collect();
            // Every file gets an entry, an unreadable one with its error.
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
            let doc =
                serde_json::json!({ "valid": !failed, "files": entries, "diagnostics": items });
            writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(&doc).into_diagnostic()?
            )
            .into_diagnostic()?;
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

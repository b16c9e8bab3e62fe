//! `check`: every diagnostic of spec files, as `shardplan.Diagnostic`s.

use std::path::PathBuf;

use pyo3::prelude::*;
use shardplan::spec::{SpecDiagnostic, parse_spec_bytes};

use crate::errors::{Class, Fault};

/// `d` as a `shardplan.Diagnostic`.
pub(crate) fn diagnostic<'py>(py: Python<'py>, d: &SpecDiagnostic) -> PyResult<Bound<'py, PyAny>> {
    let class = py.import("shardplan._errors")?.getattr("Diagnostic")?;
    class.call1((
        d.code.as_str(),
        d.severity.as_str(),
        &d.message,
        &d.file,
        d.line,
        d.column,
        &d.help,
    ))
}

/// Checks the spec files and returns every diagnostic, warnings included,
/// in file order.
#[pyfunction]
pub(crate) fn _check<'py>(
    py: Python<'py>,
    files: Vec<PathBuf>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let mut all = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| {
            Fault::usage(
                format!("cannot read {}: {e}", path.display()),
                "check the path",
            )
            .with_class(Class::File, "shardplan::python::read")
            .file(path.display().to_string())
        })?;
        let name = path.display().to_string();
        let diags = py.detach(|| parse_spec_bytes(&name, &bytes).1);
        for d in &diags {
            all.push(diagnostic(py, d)?);
        }
    }
    Ok(all)
}

//! Reading files into a [`Spec`], in one place: one entry point for every
//! file a spec can come from ([`load`]: a YAML spec, or a MindSpore strategy
//! file, JSON or protobuf, standing where a spec is expected; the format is
//! told from the file itself), and the import of strategy files as specs
//! ([`import_strategy`], [`import_spec`]). This module sits above
//! [`crate::spec`] and [`crate::formats`], which know nothing of each other.

use std::path::Path;

mod strategy_files;

pub use strategy_files::{ImportError, ShapeSource, import_spec, import_strategy};

use crate::DType;
use crate::spec::{Spec, SpecDiagnostic, parse_spec_bytes};

/// What a file given as a spec holds, as [`detect`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecSource {
    /// A YAML spec (docs/spec.md).
    Yaml,
    /// A MindSpore strategy file: JSON with `parallel_layout_item`, or a
    /// protobuf `ParallelStrategyMap` (`.ckpt`, `.pb`).
    MindSporeStrategy,
}

/// Tells what `bytes` (the file at `path`) hold: `.yaml`/`.yml` files are
/// specs; otherwise a file is a strategy file when its first 4 KiB name
/// `parallel_layout_item` or its extension is `.ckpt` or `.pb`.
pub fn detect(path: &Path, bytes: &[u8]) -> SpecSource {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "yaml" | "yml") {
        return SpecSource::Yaml;
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    if head.contains("parallel_layout_item") || ext == "ckpt" || ext == "pb" {
        SpecSource::MindSporeStrategy
    } else {
        SpecSource::Yaml
    }
}

/// Why [`load`] gave no spec.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    #[diagnostic(code(shardplan::spec::load::read), help("check the path"))]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A YAML spec with errors: every diagnostic, warnings included.
    #[error("{path} is not a valid spec ({} diagnostics)", diagnostics.len())]
    #[diagnostic(code(shardplan::spec::load::invalid))]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, in file order.
        #[related]
        diagnostics: Vec<SpecDiagnostic>,
    },
    /// A strategy file that does not import.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Import(#[from] ImportError),
}

/// Reads the spec at `path`, whatever its format ([`detect`]): a YAML spec
/// is checked ([`crate::spec::parse_spec`]); a MindSpore strategy file is
/// imported with the shapes it records (JSON), as one strategy named after
/// the file's stem, every tensor `f32` (strategy files record no dtype).
/// Returns the spec and its warnings.
///
/// # Errors
///
/// [`LoadError`]: the file cannot be read, the spec has errors, or the
/// strategy file does not import (protobuf files record no shapes: import
/// those with the checkpoint's shapes, [`import_strategy`]).
///
/// # Example
///
/// ```
/// let (spec, warnings) = shardplan::import::load("../../specs/tiny-model.yaml".as_ref()).unwrap();
/// assert!(warnings.is_empty());
/// assert!(spec.transfer().is_some());
/// assert!(shardplan::import::load("no/such/spec.yaml".as_ref()).is_err());
/// ```
pub fn load(path: &Path) -> Result<(Spec, Vec<SpecDiagnostic>), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    match detect(path, &bytes) {
        SpecSource::MindSporeStrategy => {
            let name = path
                .file_stem()
                .map_or("imported".into(), |s| s.to_string_lossy().into_owned());
            let spec = import_strategy(&[path], ShapeSource::Recorded(DType::F32), &name)?;
            Ok((spec, Vec::new()))
        }
        SpecSource::Yaml => {
            let (spec, diagnostics) = parse_spec_bytes(&path.display().to_string(), &bytes);
            match spec {
                Some(spec) => Ok((spec, diagnostics)),
                None => Err(LoadError::Invalid {
                    path: path.display().to_string(),
                    diagnostics,
                }),
            }
        }
    }
}

//! `shardplan import`, `export` and `merge-stages`: MindSpore strategy files.

use crate::Status;
use std::io::Write;
use std::path::{Path, PathBuf};

use miette::{IntoDiagnostic, WrapErr};
use shardplan::formats;

use crate::args::*;
use crate::common::*;

pub(crate) fn import(
    files: &[PathBuf],
    output: &Path,
    name: &str,
    shapes_from: Option<&Path>,
    dtype: &str,
) -> miette::Result<Status> {
    use shardplan::import::{ShapeSource, import_spec};
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let dtype: shardplan::DType = dtype.parse().map_err(|e| miette::miette!("--dtype: {e}"))?;
    let tensors = match shapes_from {
        Some(dir) => {
            let f = shardplan::formats::mindspore::strategy::read_strategy_files(&refs)?;
            Some(shardplan::reshard::tensors_from_checkpoints(dir, Some(&f))?)
        }
        None => None,
    };
    let shapes = match &tensors {
        Some(t) => ShapeSource::Tensors(t),
        None => ShapeSource::Recorded(dtype),
    };
    let yaml = import_spec(&refs, shapes, name)?;
    formats::write_atomic(output, yaml.as_bytes())
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write {}", output.display()))?;
    eprintln!("wrote {}", output.display());
    Ok(Status::SUCCESS)
}

pub(crate) fn export(
    path: &Path,
    strategy: &str,
    format: ExportFormat,
    output: Option<&Path>,
) -> miette::Result<Status> {
    use shardplan::formats::mindspore::strategy::{StrategyFormat, write_strategy_file};
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let s = named_strategy(&spec, strategy, path)?;
    let bytes = write_strategy_file(
        &s,
        match format {
            ExportFormat::MindsporeJson => StrategyFormat::Json,
            ExportFormat::MindsporePb => StrategyFormat::Protobuf,
        },
    )?;
    match output {
        Some(out) => {
            formats::write_atomic(out, &bytes)
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {}", out.display());
        }
        None => {
            let _ = std::io::stdout().lock().write_all(&bytes);
        }
    }
    Ok(Status::SUCCESS)
}

pub(crate) fn merge_stages(dir: &Path, output: &Path) -> miette::Result<Status> {
    use shardplan::formats::mindspore::strategy::{StrategyFormat, read_strategy_files};
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(miette::miette!("{} holds no strategy files", dir.display()));
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let merged = read_strategy_files(&refs)?;
    let format = if output.extension().is_some_and(|e| e == "json") {
        StrategyFormat::Json
    } else {
        StrategyFormat::Protobuf
    };
    let bytes = merged.write_merged(format)?;
    formats::write_atomic(output, &bytes)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write {}", output.display()))?;
    eprintln!(
        "merged {} files, {} stages, into {}",
        files.len(),
        merged.stage_count,
        output.display()
    );
    Ok(Status::SUCCESS)
}

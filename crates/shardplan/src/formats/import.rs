//! MindSpore strategy files as specs: the `import` command, and reading a
//! strategy file wherever a spec is expected.

use std::path::Path;

use crate::DType;
use crate::TensorInfo;
use crate::formats::mindspore_strategy::{StrategyFile, read_strategy_files};
use crate::spec::Spec;

/// Where imported tensors get their shapes and dtypes.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum ShapeSource<'a> {
    /// The shapes JSON strategy files record, all with one dtype.
    Recorded(DType),
    /// Given tensors (e.g. read from a checkpoint or a spec).
    Tensors(&'a [TensorInfo]),
}

/// An import that cannot be made: the message, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[error("{0}")]
#[diagnostic(code(shardplan::formats::import))]
pub struct ImportError(pub String, #[help] pub String);

impl ImportError {
    fn reading(message: impl Into<String>) -> Self {
        ImportError(
            message.into(),
            "pass the strategy files MindSpore wrote: one file, the merged file, or one per stage"
                .into(),
        )
    }

    fn shapes(message: impl Into<String>) -> Self {
        ImportError(
            message.into(),
            "protobuf strategies record no shapes: give them with --shapes-from CKPT_DIR".into(),
        )
    }

    fn layout(message: impl Into<String>) -> Self {
        ImportError(
            message.into(),
            "the layout named does not fit its tensor; check the strategy files against the checkpoint".into(),
        )
    }
}

/// The strategy in `paths` (one file, a merged file, or one per stage) as a
/// spec with one strategy called `name` on a mesh of the same name
/// (`[rank = n]`, or `[stage = S, rank = n]`). The optimizer shard of every
/// parameter is recorded ([`Spec::optimizer_shards`]), as a `mindspore`
/// rule would record it, for derivation.
///
/// # Errors
///
/// [`ImportError`] for unreadable files, missing shapes, or layouts that do
/// not fit.
pub fn import_strategy(
    paths: &[&Path],
    shapes: ShapeSource<'_>,
    name: &str,
) -> Result<Spec, ImportError> {
    let file: StrategyFile =
        read_strategy_files(paths).map_err(|e| ImportError::reading(e.to_string()))?;
    let tensors = match shapes {
        ShapeSource::Recorded(dtype) => file.tensors(dtype).map_err(ImportError::shapes)?,
        ShapeSource::Tensors(t) => t.to_vec(),
    };
    let strategy = file
        .to_strategy(name, &tensors)
        .map_err(ImportError::layout)?;
    let mut shards = std::collections::BTreeMap::new();
    for t in &tensors {
        let Some(p) = file.params.iter().find(|p| p.name == t.name) else {
            continue;
        };
        // The layout was built from the same entry, so it reads.
        let ways = p
            .mindspore_layout(t.shape.len(), file.stage_count)
            .and_then(|ms| ms.opt_shard_group_size().map_err(|e| e.to_string()))
            .map_err(ImportError::layout)?;
        shards.insert(t.name.clone(), ways);
    }
    let mesh = strategy.mesh().clone();
    Spec::from_parts(
        vec![(name.to_string(), mesh)],
        vec![(name.to_string(), strategy)],
        None,
    )
    .map(|spec| spec.with_optimizer_shards(name, shards))
    .map_err(|e| ImportError::layout(e.to_string()))
}

/// [`import_strategy`] written as the text of a spec, headed by a comment
/// naming the files.
///
/// # Errors
///
/// As [`import_strategy`]; [`ImportError`] for a layout the spec format
/// cannot express.
pub fn import_spec(
    paths: &[&Path],
    shapes: ShapeSource<'_>,
    name: &str,
) -> Result<String, ImportError> {
    let spec = import_strategy(paths, shapes, name)?;
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    spec.to_yaml(&format!(
        "Imported by shardplan from MindSpore strategy file(s): {}",
        list.join(", ")
    ))
    .map_err(|e| ImportError::layout(e.to_string()))
}

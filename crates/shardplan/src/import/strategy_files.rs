//! MindSpore strategy files as specs: the `import` command, and reading a
//! strategy file wherever a spec is expected.

use std::path::Path;

use crate::DType;
use crate::TensorInfo;
use crate::formats::mindspore::strategy::{
    StrategyFile, StrategyFileError, StrategyLayoutError, read_strategy_files,
};
use crate::spec::write::WriteError;
use crate::spec::{MeshId, Spec, SpecError};

/// Where imported tensors get their shapes and dtypes.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum ShapeSource<'a> {
    /// The shapes JSON strategy files record, all with one dtype.
    Recorded(DType),
    /// Given tensors (e.g. read from a checkpoint or a spec).
    Tensors(&'a [TensorInfo]),
}

const LAYOUT: &str =
    "the layout named does not fit its tensor; check the strategy files against the checkpoint";

/// An import that cannot be made, one variant per fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ImportError {
    /// A strategy file that cannot be read; it names the file and its
    /// fault.
    #[error(transparent)]
    #[diagnostic(
        code(shardplan::formats::import::read),
        help(
            "pass the strategy files MindSpore wrote: one file, the merged file, or one per stage"
        )
    )]
    Read(StrategyFileError),
    /// A parameter whose shape the files do not record (protobuf files
    /// record none), with no shapes given.
    #[error(
        "parameter `{parameter}` has no tensor_shape (protobuf strategies record none); give the shapes with a checkpoint"
    )]
    #[diagnostic(
        code(shardplan::formats::import::no_shape),
        help("protobuf strategies record no shapes: give them with --shapes-from CKPT_DIR")
    )]
    NoShape {
        /// The parameter.
        parameter: String,
    },
    /// A layout of the files that does not fit its tensor, or files that
    /// disagree on the devices per stage; its code and help are the
    /// fault's.
    #[error(transparent)]
    #[diagnostic(forward(0))]
    Layout(StrategyLayoutError),
    /// An optimizer shard (`opt_weight_shard_size`,
    /// `opt_weight_shard_step`) that does not fit its parameter's layout.
    #[error(transparent)]
    #[diagnostic(code(shardplan::formats::import::optimizer_shard), help("{}", LAYOUT))]
    OptimizerShard(crate::LayoutError),
    /// The imported strategy that does not make a spec.
    #[error(transparent)]
    #[diagnostic(code(shardplan::formats::import::spec), help("{}", LAYOUT))]
    Spec(SpecError),
    /// A layout that the spec format cannot express.
    #[error(transparent)]
    #[diagnostic(code(shardplan::formats::import::write), help("{}", LAYOUT))]
    Write(WriteError),
}

/// The strategy in `paths` (one file, a merged file, or one per stage) as a
/// spec with one strategy called `name` on a mesh of the same name
/// (`[rank = n]`, or `[stage = S, rank = n]`). The optimizer shard of every
/// parameter is recorded ([`Spec::optimizer_shards`]), as a `mindspore`
/// rule would record it, for derivation.
///
/// # Errors
///
/// [`ImportError::Read`] for unreadable files, [`ImportError::NoShape`] for
/// missing shapes, [`ImportError::Layout`] (and, for the optimizer shard,
/// [`ImportError::OptimizerShard`]) for layouts that do not fit,
/// [`ImportError::Spec`] for a strategy that makes no spec.
pub fn import_strategy(
    paths: &[&Path],
    shapes: ShapeSource<'_>,
    name: &str,
) -> Result<Spec, ImportError> {
    let file: StrategyFile = read_strategy_files(paths).map_err(ImportError::Read)?;
    let tensors = match shapes {
        ShapeSource::Recorded(dtype) => file
            .tensors(dtype)
            .map_err(|parameter| ImportError::NoShape { parameter })?,
        ShapeSource::Tensors(t) => t.to_vec(),
    };
    let strategy = file
        .to_strategy(name, &tensors)
        .map_err(ImportError::Layout)?;
    let mut shards = std::collections::BTreeMap::new();
    for t in &tensors {
        let Some(p) = file.params.iter().find(|p| p.name == t.name) else {
            continue;
        };
        // The layout was built from the same entry, so it reads.
        let ways = p
            .mindspore_layout(t.shape.len(), file.stage_count)
            .map_err(ImportError::Layout)?
            .opt_shard_group_size()
            .map_err(ImportError::OptimizerShard)?;
        shards.insert(t.name.clone(), ways);
    }
    let mesh = strategy.mesh().clone();
    Spec::from_parts(
        vec![(name.to_string(), mesh)],
        vec![(name.to_string(), MeshId::new(name), strategy)],
        None,
    )
    .map(|spec| spec.with_optimizer_shards(name, shards))
    .map_err(ImportError::Spec)
}

/// [`import_strategy`] written as the text of a spec, headed by a comment
/// naming the files.
///
/// # Errors
///
/// As [`import_strategy`]; [`ImportError::Write`] for a layout the spec
/// format cannot express.
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
    .map_err(ImportError::Write)
}

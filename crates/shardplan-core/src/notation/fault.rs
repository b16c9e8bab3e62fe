//! The notations' fault types, apart from the conversions so that
//! [`LayoutError`], which wraps them, depends on no notation code: this
//! file imports nothing of the crate but for doc links. Each is re-exported
//! by its notation's module, which is its public path and the root of its
//! codes.

#[cfg(doc)]
use crate::LayoutError;

/// Help of each notation's fault for a layout given box by box.
const EXPLICIT_HELP: &str = "keep the boxes (as a spec's `boxes` or the checkpoint's own index), or give the layout in mesh axes";

/// Help for placements that do not parse or do not fit the mesh.
pub(super) const PLACEMENT_HELP: &str =
    "write one placement per mesh dimension: Shard(d), Replicate() or Partial()";

/// Help for a `PartitionSpec` that does not parse or does not fit.
pub(super) const SPEC_HELP: &str = "write a PartitionSpec such as P('dp', ('tp', 'sp'), None)";
#[cfg(doc)]
use crate::notation::mindspore::MindSporeLayout;

/// What is wrong with a MindSpore layout, or with a layout MindSpore cannot
/// express, one variant per fault ([`LayoutError::MindSpore`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum MindSporeFault {
    /// A tensor on other stages too, of a layout with one stage.
    #[error("the tensor is on stages {stage} and {also_on:?}, but the layout has one stage")]
    #[diagnostic(
        code(shardplan::notation::mindspore::extra_stages),
        help("give the strategy's stage count (stage_count)")
    )]
    ExtraStages {
        /// The layout's stage.
        stage: u64,
        /// The other stages.
        also_on: Vec<u64>,
    },
    /// A tensor map without one entry per tensor dimension.
    #[error("tensor_map has {entries} entries but the tensor has {tensor_dims} dimensions")]
    #[diagnostic(
        code(shardplan::notation::mindspore::tensor_map_length),
        help("give one tensor_map entry per dimension, -1 for a dimension that is not split")
    )]
    TensorMapLength {
        /// Entries of the tensor map.
        entries: usize,
        /// Dimensions of the tensor.
        tensor_dims: usize,
    },
    /// A stage beyond the stage count, or a stage count of 0.
    #[error("stage {stage} of {stage_count} stages")]
    #[diagnostic(
        code(shardplan::notation::mindspore::stage_out_of_range),
        help("stages count from 0 and there is at least one")
    )]
    StageOutOfRange {
        /// The stage.
        stage: u64,
        /// The stage count.
        stage_count: u64,
    },
    /// A tensor map entry naming no device-matrix axis.
    #[error("tensor_map entry {entry} is outside a device matrix of {axes} axes")]
    #[diagnostic(
        code(shardplan::notation::mindspore::map_entry_out_of_range),
        help("entries count device-matrix axes from the right, from 0, or are -1")
    )]
    MapEntryOutOfRange {
        /// The entry.
        entry: i64,
        /// Axes of the device matrix.
        axes: usize,
    },
    /// A device-matrix axis the tensor map names twice.
    #[error("tensor_map uses device-matrix axis {axis} twice")]
    #[diagnostic(
        code(shardplan::notation::mindspore::map_axis_twice),
        help("each device-matrix axis splits at most one dimension once")
    )]
    MapAxisTwice {
        /// The axis, counted from the right as in the tensor map.
        axis: i64,
    },
    /// An optimizer shard of a scalar.
    #[error("optimizer sharding of a scalar")]
    #[diagnostic(
        code(shardplan::notation::mindspore::scalar_optimizer_shard),
        help("drop opt_weight_shard_size for scalars")
    )]
    ScalarOptimizerShard,
    /// An optimizer shard size the replicated axes cannot make.
    #[error(
        "opt_weight_shard_size {size} does not divide into the {replicas} ranks that hold each model-parallel slice"
    )]
    #[diagnostic(
        code(shardplan::notation::mindspore::shard_size_indivisible),
        help(
            "the optimizer shard takes whole replicated axes from the innermost outwards, then a divisor of the next one; pick a size that fits, or -1 for all of them"
        )
    )]
    ShardSizeIndivisible {
        /// Ranks of the optimizer shard group.
        size: u64,
        /// Ranks holding each model-parallel slice.
        replicas: u64,
    },
    /// A recorded step other than the one MindSpore records for the group.
    #[error(
        "opt_weight_shard_step {step} is not what MindSpore records for this group: {recorded} ((last - first) / (len - 1) over the {size} ranks of rank 0's group)"
    )]
    #[diagnostic(
        code(shardplan::notation::mindspore::step_mismatch),
        help(
            "check that dev_matrix, tensor_map and opt_weight_shard_size belong to this parameter"
        )
    )]
    StepMismatch {
        /// The step given.
        step: i64,
        /// The step MindSpore records ([`MindSporeLayout::recorded_step`]).
        recorded: i64,
        /// Ranks of the optimizer shard group.
        size: u64,
    },
    /// Explicit block sizes on a scalar.
    #[error("param_split_shape on a scalar")]
    #[diagnostic(
        code(shardplan::notation::mindspore::scalar_split_shape),
        help("drop param_split_shape")
    )]
    ScalarSplitShape,
    /// A layout given box by box, which no device matrix writes.
    #[error("layout {layout} is given box by box, not by mesh axes")]
    #[diagnostic(
        code(shardplan::notation::mindspore::explicit),
        help("{}", EXPLICIT_HELP)
    )]
    Explicit {
        /// The layout.
        layout: String,
    },
    /// A layout with partial-sum axes.
    #[error("layout {layout} has partial-sum axes")]
    #[diagnostic(
        code(shardplan::notation::mindspore::partial),
        help("MindSpore strategy files hold reduced weights; reduce the partial sums first")
    )]
    Partial {
        /// The layout.
        layout: String,
    },
    /// A mesh whose ranks run on other device ids.
    #[error("the mesh maps ranks to other device ids")]
    #[diagnostic(
        code(shardplan::notation::mindspore::device_ids),
        help("MindSpore runs rank r on device r; renumber the ranks instead")
    )]
    DeviceIds,
    /// A layout on several pipeline stages.
    #[error("layout {layout} is on several pipeline stages")]
    #[diagnostic(
        code(shardplan::notation::mindspore::several_stages),
        help(
            "a MindSpore strategy file holds a parameter once per stage file: export the stages separately, or place the tensor on one stage"
        )
    )]
    SeveralStages {
        /// The layout.
        layout: String,
    },
    /// A layout pinned on an axis other than the mesh's first.
    #[error("layout {layout} is pinned on an axis that is not the first of its mesh")]
    #[diagnostic(
        code(shardplan::notation::mindspore::pin_not_first),
        help("put the pipeline axis first in the mesh")
    )]
    PinNotFirst {
        /// The layout.
        layout: String,
    },
    /// Uneven blocks other than explicit sizes on dimension 0.
    #[error("dimension {dim} of layout {layout} has uneven blocks")]
    #[diagnostic(
        code(shardplan::notation::mindspore::uneven_blocks),
        help("MindSpore splits evenly, except for explicit block sizes on dimension 0")
    )]
    UnevenBlocks {
        /// The tensor dimension.
        dim: usize,
        /// The layout.
        layout: String,
    },
    /// An optimizer shard size below `-1` or a negative step.
    #[error("opt_weight_shard_size {size} with opt_weight_shard_step {step}")]
    #[diagnostic(
        code(shardplan::notation::mindspore::shard_fields),
        help(
            "the size is -1 (the whole group), 0 (none) or a group size; the step is 0 (none) or positive"
        )
    )]
    ShardFields {
        /// `opt_weight_shard_size`.
        size: i64,
        /// `opt_weight_shard_step`.
        step: i64,
    },
    /// An optimizer shard of more ranks than hold each model-parallel slice.
    #[error(
        "opt_weight_shard_size {size} is more than the {replicas} ranks that hold each model-parallel slice"
    )]
    #[diagnostic(
        code(shardplan::notation::mindspore::shard_size_too_large),
        help(
            "the optimizer shard divides the ranks holding one slice; pick a size that divides them, or -1 for all of them"
        )
    )]
    ShardSizeTooLarge {
        /// Ranks of the optimizer shard group.
        size: u64,
        /// Ranks holding each model-parallel slice.
        replicas: u64,
    },
}

/// What is wrong with DTensor placements, or with a layout DTensor cannot
/// express, one variant per fault ([`LayoutError::DTensor`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DTensorFault {
    /// Text that is not `Shard(d)`, `Replicate()` or `Partial()`.
    #[error("`{text}` is not a placement")]
    #[diagnostic(
        code(shardplan::notation::dtensor::not_a_placement),
        help("{}", PLACEMENT_HELP)
    )]
    NotAPlacement {
        /// The text, as given.
        text: String,
    },
    /// A placement count other than the mesh's dimension count.
    #[error("{placements} placements for a mesh of {mesh_dims} dimensions")]
    #[diagnostic(
        code(shardplan::notation::dtensor::placement_count),
        help("{}", PLACEMENT_HELP)
    )]
    PlacementCount {
        /// Placements given.
        placements: usize,
        /// Dimensions of the mesh.
        mesh_dims: usize,
    },
    /// A `Shard` of a tensor dimension the tensor does not have.
    #[error(
        "Shard({dim}) on mesh dimension `{axis}` is out of range for a tensor of {tensor_dims} dimensions"
    )]
    #[diagnostic(
        code(shardplan::notation::dtensor::shard_out_of_range),
        help("{}", PLACEMENT_HELP)
    )]
    ShardOutOfRange {
        /// The sharded dimension, as given (negative counts from the end).
        dim: i64,
        /// The mesh dimension holding the placement.
        axis: String,
        /// Dimensions of the tensor.
        tensor_dims: usize,
    },
    /// A layout given box by box, which no placement writes.
    #[error("layout {layout} is given box by box, not by mesh axes")]
    #[diagnostic(
        code(shardplan::notation::dtensor::explicit),
        help("{}", EXPLICIT_HELP)
    )]
    Explicit {
        /// The layout.
        layout: String,
    },
    /// A layout pinned to a sub-mesh.
    #[error("layout {layout} is pinned to a sub-mesh")]
    #[diagnostic(
        code(shardplan::notation::dtensor::pinned),
        help("build the DTensor on the sub-mesh of the stage instead")
    )]
    Pinned {
        /// The layout.
        layout: String,
    },
    /// A dimension split by mesh axes in another order than the mesh's.
    #[error("dimension {dim} of layout {layout} is split by axes out of mesh order")]
    #[diagnostic(
        code(shardplan::notation::dtensor::axes_out_of_order),
        help("DTensor splits a dimension over mesh dimensions in mesh order; reorder the mesh")
    )]
    AxesOutOfOrder {
        /// The tensor dimension.
        dim: usize,
        /// The layout.
        layout: String,
    },
    /// A dimension whose blocks are not (nested) `torch.chunk` blocks.
    #[error("dimension {dim} of layout {layout} does not use torch.chunk blocks")]
    #[diagnostic(
        code(shardplan::notation::dtensor::not_chunk_blocks),
        help("use the chunk policy, or sizes the split divides")
    )]
    NotChunkBlocks {
        /// The tensor dimension.
        dim: usize,
        /// The layout.
        layout: String,
    },
}

/// What is wrong with a JAX `PartitionSpec`, or with a layout a
/// `PartitionSpec` cannot express, one variant per fault
/// ([`LayoutError::Jax`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum JaxFault {
    /// Text that is not `P(...)` or `PartitionSpec(...)`.
    #[error("`{text}` is not of the form P(...)")]
    #[diagnostic(
        code(shardplan::notation::jax::not_a_partition_spec),
        help("{}", SPEC_HELP)
    )]
    NotAPartitionSpec {
        /// The text, as given.
        text: String,
    },
    /// A tuple of axis names without its closing parenthesis.
    #[error("unclosed tuple in `{text}`")]
    #[diagnostic(code(shardplan::notation::jax::unclosed_tuple), help("{}", SPEC_HELP))]
    UnclosedTuple {
        /// The text, as given.
        text: String,
    },
    /// Two entries without a comma between them.
    #[error("expected `,` in `{text}`")]
    #[diagnostic(code(shardplan::notation::jax::expected_comma), help("{}", SPEC_HELP))]
    ExpectedComma {
        /// The text, as given.
        text: String,
    },
    /// An entry that is not `None`, a quoted axis name or a tuple of them.
    #[error("`{item}` in `{text}` is not None, a quoted axis name or a tuple of them")]
    #[diagnostic(code(shardplan::notation::jax::bad_entry), help("{}", SPEC_HELP))]
    BadEntry {
        /// The entry.
        item: String,
        /// The whole text, as given.
        text: String,
    },
    /// A spec with more entries than the tensor has dimensions.
    #[error("{spec} has {entries} entries but the tensor has {tensor_dims} dimensions")]
    #[diagnostic(
        code(shardplan::notation::jax::too_many_entries),
        help("{}", SPEC_HELP)
    )]
    TooManyEntries {
        /// The spec, written as `P(...)`.
        spec: String,
        /// Its entries.
        entries: usize,
        /// Dimensions of the tensor.
        tensor_dims: usize,
    },
    /// A layout given box by box, which no `PartitionSpec` writes.
    #[error("layout {layout} is given box by box, not by mesh axes")]
    #[diagnostic(code(shardplan::notation::jax::explicit), help("{}", EXPLICIT_HELP))]
    Explicit {
        /// The layout.
        layout: String,
    },
    /// A layout with partial-sum axes.
    #[error("layout {layout} has partial-sum axes")]
    #[diagnostic(
        code(shardplan::notation::jax::partial),
        help("reduce the partial sums first; a PartitionSpec has no partial state")
    )]
    Partial {
        /// The layout.
        layout: String,
    },
    /// A layout pinned to a sub-mesh.
    #[error("layout {layout} is pinned to a sub-mesh")]
    #[diagnostic(
        code(shardplan::notation::jax::pinned),
        help("express the pipeline stage as a mesh of its own")
    )]
    Pinned {
        /// The layout.
        layout: String,
    },
    /// A dimension whose blocks are not equal.
    #[error("dimension {dim} of layout {layout} has uneven blocks")]
    #[diagnostic(
        code(shardplan::notation::jax::uneven_blocks),
        help("use a size the split divides, or another notation")
    )]
    UnevenBlocks {
        /// The tensor dimension.
        dim: usize,
        /// The layout.
        layout: String,
    },
}

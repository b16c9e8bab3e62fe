//! Why a strategy file cannot be read or its layouts used, one variant per
//! fault.

use super::*;

/// A strategy file that cannot be read or written: the file, and what is
/// wrong with it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{file}: {fault}")]
#[diagnostic(forward(fault))]
pub struct StrategyFileError {
    /// File name (or what was being written: `merged strategy`,
    /// ``strategy `name` ``).
    pub file: String,
    /// What is wrong with it; its code and help are the error's.
    pub fault: StrategyFileFault,
}

pub(super) const INT32: &str = "MindSpore stores it as int32";

/// What is wrong with a strategy file being read, or with a strategy being
/// written as one, one variant per fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StrategyFileFault {
    /// A file that cannot be read.
    #[error(transparent)]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::read),
        help("check the path")
    )]
    Read(std::io::Error),
    /// JSON that is not a strategy document: a syntax error, or a top-level
    /// field missing or of the wrong type.
    #[error("line {line}, column {column}: {source}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::json),
        help("a MindSpore JSON strategy has `current_stage` and `parallel_layout_item`")
    )]
    Json {
        /// Line of the fault, from 1.
        line: usize,
        /// Column of the fault, from 1.
        column: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON layout with a field missing or of the wrong type.
    #[error("parameter `{parameter}`: {source}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::malformed_layout),
        help(
            "each layout has dev_matrix, tensor_map and (optionally) tensor_shape, opt_weight_shard_size, opt_weight_shard_step"
        )
    )]
    MalformedLayout {
        /// The parameter.
        parameter: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON tensor map entry that is not an integer (a nested map, which
    /// only the protobuf form holds).
    #[error("parameter `{parameter}`: tensor_map entry {entry} is not an integer")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::tensor_map_entry),
        help("JSON strategies hold flat tensor maps; nested maps need the protobuf form")
    )]
    TensorMapEntry {
        /// The parameter.
        parameter: String,
        /// The entry (boxed: errors stay small).
        entry: Box<serde_json::Value>,
    },
    /// A file that is neither JSON nor a protobuf `ParallelStrategyMap`.
    #[error("neither JSON nor a protobuf ParallelStrategyMap: {0}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::not_a_strategy),
        help("pass the strategy file MindSpore wrote (strategy.json or strategy.ckpt)")
    )]
    NotAStrategy(#[source] prost::DecodeError),
    /// A parameter with an empty name.
    #[error("a parameter has an empty name")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::empty_name),
        help("every parameter needs a name")
    )]
    EmptyName,
    /// A parameter listed twice for one stage in one file.
    #[error("parameter `{parameter}` is listed twice for stage {stage}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::listed_twice),
        help("each parameter has one layout per stage")
    )]
    ListedTwice {
        /// The parameter.
        parameter: String,
        /// The stage.
        stage: u64,
    },
    /// A parameter on two stages of one file with different layouts.
    #[error("parameter `{parameter}` is on stages {first} and {second} with different layouts")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::different_layouts),
        help("a parameter shared by several stages (a tied embedding) must be cut alike on each")
    )]
    DifferentLayouts {
        /// The parameter.
        parameter: String,
        /// The stage of its layout read before (the lowest so far).
        first: u64,
        /// The stage whose layout differs.
        second: u64,
    },
    /// A parameter listed for one stage in two of the files read together.
    #[error("parameter `{parameter}` is listed twice for stage {stage}, counting the other files")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::listed_twice_across_files),
        help("pass each stage's file once")
    )]
    ListedTwiceAcrossFiles {
        /// The parameter.
        parameter: String,
        /// The stage.
        stage: u64,
    },
    /// A parameter on two stages, in two of the files read together, with
    /// different layouts.
    #[error(
        "parameter `{parameter}` is on stages {first} and {second} with different layouts, counting the other files"
    )]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::different_layouts_across_files),
        help("pass each stage's file once")
    )]
    DifferentLayoutsAcrossFiles {
        /// The parameter.
        parameter: String,
        /// The stage of its layout read before (the lowest so far).
        first: u64,
        /// The stage whose layout differs.
        second: u64,
    },
    /// A nested tensor map merged into the JSON form, which holds flat
    /// maps only.
    #[error("parameter `{parameter}` has a nested tensor map")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::merge_nested_map),
        help("merge into the protobuf form (.ckpt)")
    )]
    MergeNestedMap {
        /// The parameter.
        parameter: String,
    },
    /// A tensor map entry or optimizer shard value merged into the
    /// protobuf form that does not fit its int32 field.
    #[error("parameter `{parameter}`: {value} does not fit int32")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::merge_out_of_range),
        help("{}", INT32)
    )]
    MergeOutOfRange {
        /// The parameter.
        parameter: String,
        /// The value.
        value: i64,
    },
    /// A layout MindSpore's notation cannot express (partial sums, pins
    /// other than a first-axis stage, uneven splits other than
    /// `param_split_shape`).
    #[error("tensor `{tensor}`: {source}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::inexpressible),
        help("express the layout in MindSpore terms or leave it out")
    )]
    Inexpressible {
        /// The tensor.
        tensor: String,
        /// Why the notation cannot express it (boxed: errors stay small).
        #[source]
        source: Box<crate::LayoutError>,
    },
    /// A dimension split over several axes (a nested tensor map) written in
    /// the JSON form, which holds flat maps only.
    #[error("tensor `{tensor}` splits a dimension over several axes")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::split_over_axes),
        help("write the protobuf form (--format mindspore-pb), which holds nested tensor maps")
    )]
    SplitOverAxes {
        /// The tensor.
        tensor: String,
    },
    /// A value written in the protobuf form that does not fit its int32
    /// field.
    #[error("tensor `{tensor}`: {field} {value} does not fit int32")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::out_of_range),
        help("{}", INT32)
    )]
    OutOfRange {
        /// The tensor.
        tensor: String,
        /// The field (`tensor_map entry`, `opt_weight_shard_step`,
        /// `opt_weight_shard_size`).
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// A device matrix entry written in the protobuf form that does not
    /// fit its uint32 field.
    #[error("tensor `{tensor}`: device matrix entry {value} too large")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::device_matrix_entry),
        help("MindSpore stores it as uint32")
    )]
    DeviceMatrixEntry {
        /// The tensor.
        tensor: String,
        /// The entry.
        value: u64,
    },
}

impl StrategyFileFault {
    /// The fault in `file`.
    pub(super) fn of(self, file: &str) -> StrategyFileError {
        StrategyFileError {
            file: file.to_string(),
            fault: self,
        }
    }
}

pub(super) const SAME_RUN: &str =
    "pass the strategy files and the checkpoint (or spec) of the same run";

/// A strategy file's layout that does not fit the tensors it is applied
/// to, one variant per fault. Each names the parameter when one is at
/// fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StrategyLayoutError {
    /// A tensor map with another number of dimensions than the tensor.
    #[error(
        "parameter `{parameter}`: tensor_map {tensor_map:?} does not fit a tensor of {rank} dimensions"
    )]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::tensor_map_rank),
        help("a tensor map has one entry per dimension of its tensor; {}", SAME_RUN)
    )]
    TensorMapRank {
        /// The parameter.
        parameter: String,
        /// The tensor map as stored.
        tensor_map: Vec<Vec<i64>>,
        /// The tensor's number of dimensions.
        rank: usize,
    },
    /// A tensor map with another number of dimensions than the shape it is
    /// laid over.
    #[error(
        "parameter `{parameter}`: tensor_map {tensor_map:?} does not fit a tensor of shape {shape:?}"
    )]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::tensor_map_shape),
        help("a tensor map has one entry per dimension of its tensor; {}", SAME_RUN)
    )]
    TensorMapShape {
        /// The parameter.
        parameter: String,
        /// The tensor map as stored.
        tensor_map: Vec<Vec<i64>>,
        /// The tensor's shape.
        shape: Vec<u64>,
    },
    /// A layout whose device matrix, tensor map, optimizer shard or stages
    /// do not make a layout of its tensor.
    #[error("parameter `{parameter}`: {source}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::layout),
        help(
            "the device matrix, tensor map, optimizer shard and stages must make a layout of the tensor; {}",
            SAME_RUN
        )
    )]
    Layout {
        /// The parameter.
        parameter: String,
        /// Why the layout does not fit.
        #[source]
        source: LayoutError,
    },
    /// A device matrix whose product overflows 64 bits.
    #[error("parameter `{parameter}`: dev_matrix {dev_matrix:?} overflows")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::dev_matrix_overflow),
        help("a device matrix's product is the devices of one stage; fix the file's dev_matrix")
    )]
    DevMatrixOverflow {
        /// The parameter.
        parameter: String,
        /// The device matrix.
        dev_matrix: Vec<u64>,
    },
    /// Parameters whose device matrices span different numbers of devices.
    #[error("parameter `{parameter}` spans {devices} devices per stage, others {others}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::stage_devices),
        help("every stage has as many devices; pass the files of one run")
    )]
    StageDevices {
        /// The parameter that differs from those before it.
        parameter: String,
        /// Its devices per stage.
        devices: u64,
        /// The devices per stage of the parameters before it.
        others: u64,
    },
    /// A parameter with another shape in the files than in the tensors
    /// given.
    #[error(
        "parameter `{parameter}` has shape {in_strategy:?} in the strategy but {given:?} in the checkpoint"
    )]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::shape_mismatch),
        help("{}", SAME_RUN)
    )]
    ShapeMismatch {
        /// The parameter.
        parameter: String,
        /// Its shape in the strategy file.
        in_strategy: Vec<u64>,
        /// Its shape in the tensors given.
        given: Vec<u64>,
    },
    /// The mesh of the files (stages by devices per stage) that cannot be
    /// built.
    #[error("{0}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::mesh),
        help(
            "the stages and devices per stage make the mesh; fix the file's current_stage or dev_matrix"
        )
    )]
    Mesh(#[source] LayoutError),
    /// A tensor the files do not lay out that cannot be held whole.
    #[error("{source}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::replicated),
        help("a tensor missing from the files is held whole by every rank; check its shape")
    )]
    Replicated {
        /// The tensor.
        tensor: String,
        /// Why it cannot be held whole.
        #[source]
        source: LayoutError,
    },
    /// The layouts, each fitting, that do not make a strategy.
    #[error("{0}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::strategy),
        help("{}", SAME_RUN)
    )]
    Strategy(#[source] StrategyError),
}

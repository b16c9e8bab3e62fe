//! Why operators could not be laid out: [`OpsError`] and its
//! [`StrategyFault`] details.

use super::OpKind;
#[cfg(doc)]
use super::OperatorGraph;
use crate::error::LayoutError;
use crate::strategy::StrategyError;

/// Why operators could not be laid out. Each variant names the operator
/// (its index in [`OperatorGraph::ops`]) and has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum OpsError {
    /// Zero devices or a zero batch.
    #[error(
        "operators need at least one device and a batch of at least 1 (devices {devices}, batch {batch})"
    )]
    #[diagnostic(
        code(shardplan::ops::empty),
        help("set `operators: {{devices: N, batch: B}}` with N, B >= 1")
    )]
    Empty {
        /// Devices.
        devices: u64,
        /// Batch.
        batch: u64,
    },
    /// An input that is neither a weight, a graph input nor an earlier output.
    #[error(
        "operator #{op}: input `{name}` is not a tensor of the spec, a graph input or the output of an earlier operator"
    )]
    #[diagnostic(
        code(shardplan::ops::unknown_input),
        help("list graph inputs under `operators.inputs`, and operators in execution order")
    )]
    UnknownInput {
        /// Operator.
        op: usize,
        /// Position among its inputs.
        input: usize,
        /// The name.
        name: String,
    },
    /// An output name that is already taken.
    #[error(
        "operator #{op}: output `{name}` is already a tensor, a graph input or another operator's output"
    )]
    #[diagnostic(
        code(shardplan::ops::duplicate_output),
        help("give every operator output a new name")
    )]
    DuplicateOutput {
        /// Operator.
        op: usize,
        /// The name.
        name: String,
    },
    /// The stage's mesh cannot be built (too many devices).
    #[error("the mesh of the operators (stages x devices): {0}")]
    #[diagnostic(code(shardplan::ops::mesh), help("use fewer devices or stages"))]
    Mesh(#[source] LayoutError),
    /// A graph input whose name is a tensor's or another input's.
    #[error("graph input `{name}` is already a tensor or another graph input")]
    #[diagnostic(
        code(shardplan::ops::duplicate_input),
        help("give graph inputs names of their own")
    )]
    DuplicateInput {
        /// The name.
        name: String,
    },
    /// A strategy that does not fit the operator or its inputs.
    #[error("operator #{op} ({kind}): {fault}")]
    #[diagnostic(
        code(shardplan::ops::strategy),
        help(
            "give one strategy per input, one entry per input dimension, consistent as the operator requires (see docs/derive.md)"
        )
    )]
    Strategy {
        /// Operator.
        op: usize,
        /// Its input, when one is at fault.
        input: Option<usize>,
        /// Its kind.
        kind: OpKind,
        /// What is wrong.
        fault: StrategyFault,
    },
    /// An operator on a stage the graph does not have.
    #[error("operator #{op}: stage {stage} is beyond the graph's {stages} stages")]
    #[diagnostic(
        code(shardplan::ops::stage),
        help("stages count from 0; raise `stages` or lower the operator's `stage`")
    )]
    Stage {
        /// Operator.
        op: usize,
        /// Its stage.
        stage: u64,
        /// Stages of the graph.
        stages: u64,
    },
    /// An activation flowing to an earlier stage.
    #[error(
        "operator #{op} on stage {stage} reads `{name}`, which operator #{producer} produces on the later stage {producer_stage}"
    )]
    #[diagnostic(
        code(shardplan::ops::stage_order),
        help(
            "a pipeline runs its stages in order: an operator may read outputs of its own or earlier stages only"
        )
    )]
    StageOrder {
        /// Operator.
        op: usize,
        /// Position of the input.
        input: usize,
        /// The activation.
        name: String,
        /// Its stage.
        stage: u64,
        /// The producer.
        producer: usize,
        /// The producer's stage.
        producer_stage: u64,
    },
    /// A strategy whose device count does not divide the stage's.
    #[error(
        "operator #{op}: the strategy uses {product} devices, which does not divide the stage's {devices}"
    )]
    #[diagnostic(
        code(shardplan::ops::devices),
        help(
            "the product of a strategy's entries (its device matrix) must divide the devices of the stage"
        )
    )]
    Devices {
        /// Operator.
        op: usize,
        /// Devices the strategy uses.
        product: u64,
        /// Devices of the stage.
        devices: u64,
    },
    /// A dimension its strategy does not divide.
    #[error("operator #{op}: input `{tensor}` dimension {dim} ({size}) does not split {ways} ways")]
    #[diagnostic(
        code(shardplan::ops::indivisible),
        help(
            "MindSpore splits evenly: pick a strategy entry that divides the dimension, or another batch"
        )
    )]
    Indivisible {
        /// Operator.
        op: usize,
        /// Position of the input (or `None` for the output).
        input: Option<usize>,
        /// Tensor or activation.
        tensor: String,
        /// Dimension.
        dim: usize,
        /// Its size.
        size: u64,
        /// Ways.
        ways: u64,
    },
    /// A layout the core refuses (an internal inconsistency).
    #[error("operator #{op}: `{tensor}`: {source}")]
    #[diagnostic(code(shardplan::ops::layout))]
    Layout {
        /// Operator.
        op: usize,
        /// Tensor.
        tensor: String,
        /// The refusal.
        #[source]
        source: LayoutError,
    },
    /// The derived strategy could not be built.
    #[error(transparent)]
    #[diagnostic(transparent)]
    StrategyBuild(#[from] StrategyError),
}

/// How an operator's strategy does not fit it or its inputs, one variant
/// per fault. Every fault shares the code and help of
/// [`OpsError::Strategy`]; shapes and splits are as the graph gives them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StrategyFault {
    /// Not as many inputs as the operator's kind takes.
    #[error("takes {takes:?} inputs, got {got}")]
    Arity {
        /// The input counts the kind takes.
        takes: Vec<usize>,
        /// Inputs given.
        got: usize,
    },
    /// Not one strategy per input.
    #[error("{strategies} strategies for {inputs} inputs")]
    StrategyCount {
        /// Strategies given.
        strategies: usize,
        /// Inputs given.
        inputs: usize,
    },
    /// A strategy with another number of entries than its input has dimensions.
    #[error("input `{input}` has {} dimensions {shape:?}, its strategy {entries} entries", shape.len())]
    StrategyRank {
        /// The input's name.
        input: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Entries of its strategy.
        entries: usize,
    },
    /// A strategy entry of 0, which splits nothing.
    #[error("a strategy entry is 0")]
    ZeroEntry,
    /// A matrix product of an input with fewer than 2 dimensions.
    #[error("inputs need at least 2 dimensions, got {a:?} and {b:?}")]
    TooFewDims {
        /// The first input's shape.
        a: Vec<u64>,
        /// The second input's shape.
        b: Vec<u64>,
    },
    /// A `MatMul` of inputs other than 2-D.
    #[error("MatMul multiplies 2-D inputs, got {a:?} and {b:?}; use BatchMatMul")]
    NotTwoDims {
        /// The first input's shape.
        a: Vec<u64>,
        /// The second input's shape.
        b: Vec<u64>,
    },
    /// Reduction dimensions of different sizes.
    #[error("the reduction dimensions differ: {a} and {b} (transpose_b: {transpose_b})")]
    ReductionSizes {
        /// Size in the first input.
        a: u64,
        /// Size in the second input.
        b: u64,
        /// Whether the second input is transposed.
        transpose_b: bool,
    },
    /// The reduction dimension split unlike in the two inputs.
    #[error("the reduction dimension is split {a} ways in the first input and {b} in the second")]
    ReductionSplit {
        /// Ways in the first input.
        a: u64,
        /// Ways in the second input.
        b: u64,
    },
    /// A batch dimension split unlike in the two inputs.
    #[error(
        "batch dimension {dim} is split {a} and {b} ways; the strategies of batch dimensions must be equal"
    )]
    BatchSplit {
        /// The batch dimension, counted in the shorter input.
        dim: usize,
        /// Ways in the longer input.
        a: u64,
        /// Ways in the shorter input.
        b: u64,
    },
    /// Batch dimensions of different sizes.
    #[error("batch dimensions differ: {a:?} and {b:?}")]
    BatchSizes {
        /// The longer input's shape.
        a: Vec<u64>,
        /// The shorter input's shape.
        b: Vec<u64>,
    },
    /// A `Gather` from a scalar table.
    #[error("the table cannot be a scalar")]
    ScalarTable,
    /// A table split along the vocabulary with more than 2 dimensions.
    #[error("a table split along the vocabulary must have 1 or 2 dimensions")]
    VocabTableRank,
    /// Indices split while the vocabulary is.
    #[error(
        "with the vocabulary split, the indices cannot be split (except [[v, 1], [b, 1]] with v * b = devices)"
    )]
    VocabIndicesSplit,
    /// A table split along vocabulary and hidden dimension that repeats
    /// the calculation.
    #[error(
        "with the vocabulary split and the hidden dimension split too, the table's strategy must use every device (no repeated calculation)"
    )]
    VocabRepeated,
    /// Shapes that do not broadcast.
    #[error("shapes {a:?} and {b:?} do not broadcast")]
    NoBroadcast {
        /// The first input's shape.
        a: Vec<u64>,
        /// The second input's shape.
        b: Vec<u64>,
    },
    /// An element-wise dimension split unlike in the two inputs, or a
    /// broadcast dimension split.
    #[error(
        "dimension {dim} (right-aligned) is split {a} and {b} ways; equal sizes need equal strategies, and a broadcast dimension of size 1 is not split"
    )]
    BroadcastSplit {
        /// The dimension, right-aligned.
        dim: usize,
        /// Ways in the first input.
        a: u64,
        /// Ways in the second input.
        b: u64,
    },
    /// A normalization weight whose shape does not end the input's.
    #[error("{normalized:?} is not the trailing part of the input's shape {shape:?}")]
    NotTrailing {
        /// The weight's shape.
        normalized: Vec<u64>,
        /// The input's shape.
        shape: Vec<u64>,
    },
    /// Normalized dimensions split.
    #[error("the normalized dimensions cannot be split")]
    NormalizedSplit,
}

impl OpsError {
    /// The operator at fault and, when one is, its input position.
    pub fn location(&self) -> Option<(usize, Option<usize>)> {
        match self {
            OpsError::UnknownInput { op, input, .. } => Some((*op, Some(*input))),
            OpsError::StageOrder { op, input, .. } => Some((*op, Some(*input))),
            OpsError::Strategy { op, input, .. } => Some((*op, *input)),
            OpsError::Indivisible { op, input, .. } => Some((*op, *input)),
            OpsError::DuplicateOutput { op, .. }
            | OpsError::Stage { op, .. }
            | OpsError::Devices { op, .. }
            | OpsError::Layout { op, .. } => Some((*op, None)),
            OpsError::Empty { .. }
            | OpsError::Mesh(_)
            | OpsError::DuplicateInput { .. }
            | OpsError::StrategyBuild(_) => None,
        }
    }
}

/// A strategy fault of operator `op`, at `input` when one is to blame.
pub(super) fn bad_strategy(
    op: usize,
    kind: OpKind,
    input: Option<usize>,
    fault: StrategyFault,
) -> OpsError {
    OpsError::Strategy {
        op,
        input,
        kind,
        fault,
    }
}

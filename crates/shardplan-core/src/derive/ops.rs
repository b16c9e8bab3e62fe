//! Inference layouts from MindSpore operator shard strategies (semi-auto
//! parallel).
//!
//! An [`OperatorGraph`] lists operators in execution order, each with its
//! inputs (weights of the spec, graph inputs, or outputs of earlier
//! operators) and one shard strategy per input, as
//! `ops.MatMul().shard(((2, 1), (1, 4)))` states it. For each operator,
//! [`derive_from_operators`] builds the device matrix and tensor maps the
//! way MindSpore's operator infos do (`MatMulBase`, `GatherInfo`,
//! `ArithmeticBase`, the norm infos), including the repeated-calculation
//! factor when the strategy uses fewer devices than the stage has; gives
//! every weight the layout of the first operator that reads it; and lists
//! where an operator needs an activation in another layout than its
//! producer left it in: a redistribution the runtime inserts, with the
//! bytes it must move over the network.
//!
//! # Operators
//!
//! Tensor maps count device-matrix axes from the right; `-1` = not split.
//!
//! - `MatMul`, `BatchMatMul` (`a [.., M, K]`, `b [.., K, N]`, or
//!   `b [.., N, K]` with `transpose_b`): strategies `sa`, `sb`; the device
//!   matrix is the batch strategy of the longer input, then `sa[-2]`,
//!   `sa[-1]`, and `sb[-1]` (`sb[-2]` with `transpose_b`). `sa[-1]` must
//!   equal the strategy of `b`'s reduction dimension, and the batch
//!   strategies must agree. With `[[a, b], [b, c]]` the device matrix is
//!   `[a, b, c]`, `a`'s map `[2, 1]`, `b`'s `[1, 0]` (`[0, 1]` transposed),
//!   the output's `[2, 0]`. A split reduction dimension (`b > 1`) makes the
//!   output partial: the operator all-reduces it over `b` ranks.
//! - `Gather` (`table [V, ..]`, `indices [..]`, axis 0): with the
//!   vocabulary not split (`[[1, h], [i..]]`) the device matrix is the
//!   indices strategy followed by the table's, and the output `[i.., h]`
//!   keeps both splits. With the vocabulary split over `v` ranks the
//!   indices must not be split (the device matrix is the table's strategy,
//!   and the output, reduce-scattered over the `v` ranks, is split along
//!   its first dimension, or all-reduced and replicated when `v` does not
//!   divide it), except in MindSpore's "shard batch and axis" mode
//!   (`[[v, 1], [b, 1]]` with `v * b` the stage's devices): device matrix
//!   `[b, v]`, all-reduced output split along the batch over `b`.
//! - `Add`, `Mul` (broadcasting): the strategies, right-aligned, must be
//!   equal where both dimensions have the same size, and 1 on a
//!   broadcast dimension of size 1; the device matrix is the larger of the
//!   two per dimension, a dimension whose strategy is 1 under a larger
//!   device-matrix entry is not split.
//! - `RmsNorm`, `LayerNorm` (`x`, `gamma`, optional `beta`): the device
//!   matrix is `x`'s strategy; the normalized (trailing, `gamma`-shaped)
//!   dimensions must not be split; the output has `x`'s layout.
//!
//! **Repeated calculation.** When a strategy's product `P` is less than
//! the stage's devices `N` (it must divide them), the device matrix gets
//! one more axis of size `N / P`. MindSpore 2.x puts it last (rightmost,
//! [`RepeatSide::Right`], the default: every tensor-map entry then moves up
//! by one); earlier MindSpore versions, and 2.x's `Gather` when the table's
//! strategy uses neither one nor all devices, put it first
//! ([`RepeatSide::Left`]).
//!
//! # Example
//!
//! ```
//! use shardplan_core::derive::ops::*;
//! use shardplan_core::{DType, TensorInfo};
//!
//! let w = TensorInfo { name: "w".into(), shape: vec![64, 32], dtype: DType::F32 };
//! let graph = OperatorGraph {
//!     devices: 8,
//!     stages: 1,
//!     batch: 16,
//!     repeated_calc: RepeatSide::Right,
//!     inputs: vec![ActivationInput {
//!         name: "x".into(),
//!         shape: vec![DimSize::Batch, DimSize::Fixed(64)],
//!         dtype: DType::F32,
//!     }],
//!     ops: vec![Operator {
//!         kind: OpKind::MatMul,
//!         name: "fc".into(),
//!         inputs: vec!["x".into(), "w".into()],
//!         strategy: vec![vec![2, 1], vec![1, 4]],
//!         transpose_b: false,
//!         transpose_a: false,
//!         stage: 0,
//!         output: "y".into(),
//!     }],
//! };
//! let d = derive_from_operators(&graph, &[w])?;
//! // dev_matrix [a, b, c] = [2, 1, 4]; w = [K, N] has tensor map [1, 0].
//! assert_eq!(d.ops[0].dev_matrix, vec![2, 1, 4]);
//! assert_eq!(d.ops[0].inputs[1], vec![1, 0]);
//! let l = d.strategy.layout("w").unwrap();
//! assert_eq!(l.region_of(1).unwrap().to_string(), "[0..64, 8..16]");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::bounds::volume_lower_bound;
use crate::dtype::DType;
use crate::error::LayoutError;
use crate::layout::TensorLayout;
use crate::mesh::DeviceMesh;
use crate::notation::mindspore::MindSporeLayout;
use crate::strategy::{Strategy, StrategyError, TensorInfo};

/// An operator kind, by its MindSpore primitive name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// `MatMul`: two inputs, the second usually a weight.
    MatMul,
    /// `BatchMatMul`: as `MatMul`, with batch dimensions.
    BatchMatMul,
    /// `Gather` on axis 0: an embedding lookup (table, indices).
    Gather,
    /// Element-wise `Add`, broadcasting.
    Add,
    /// Element-wise `Mul`, broadcasting.
    Mul,
    /// `RmsNorm` (x, gamma).
    RmsNorm,
    /// `LayerNorm` (x, gamma, beta).
    LayerNorm,
}

impl OpKind {
    /// Every kind, as written in specs.
    pub const ALL: [OpKind; 7] = [
        OpKind::MatMul,
        OpKind::BatchMatMul,
        OpKind::Gather,
        OpKind::Add,
        OpKind::Mul,
        OpKind::RmsNorm,
        OpKind::LayerNorm,
    ];

    /// The MindSpore primitive name.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::MatMul => "MatMul",
            OpKind::BatchMatMul => "BatchMatMul",
            OpKind::Gather => "Gather",
            OpKind::Add => "Add",
            OpKind::Mul => "Mul",
            OpKind::RmsNorm => "RmsNorm",
            OpKind::LayerNorm => "LayerNorm",
        }
    }

    /// Accepted input counts.
    fn arity(self) -> &'static [usize] {
        match self {
            OpKind::LayerNorm => &[2, 3],
            _ => &[2],
        }
    }
}

impl std::str::FromStr for OpKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        OpKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = OpKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown operator `{s}`: use one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the repeated-calculation factor goes in the device matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RepeatSide {
    /// Last (rightmost): MindSpore 2.x's default.
    #[default]
    Right,
    /// First (leftmost, outermost): earlier MindSpore versions.
    Left,
}

impl std::str::FromStr for RepeatSide {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "right" => Ok(RepeatSide::Right),
            "left" => Ok(RepeatSide::Left),
            other => Err(format!(
                "unknown repeated_calc `{other}`: use right (MindSpore 2.x) or left"
            )),
        }
    }
}

/// A dimension of a graph input: a size, or the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimSize {
    /// A fixed size.
    Fixed(u64),
    /// [`OperatorGraph::batch`].
    Batch,
}

/// A graph input that is not a weight (token ids, hidden states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationInput {
    /// Name the operators use.
    pub name: String,
    /// Shape; [`DimSize::Batch`] entries take the graph's batch.
    pub shape: Vec<DimSize>,
    /// Element type.
    pub dtype: DType,
}

/// One operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Kind.
    pub kind: OpKind,
    /// Name for reports.
    pub name: String,
    /// Input names: weights, graph inputs, or earlier outputs.
    pub inputs: Vec<String>,
    /// One strategy per input, one entry per input dimension.
    pub strategy: Vec<Vec<u64>>,
    /// `MatMul`/`BatchMatMul`: the second input is `[.., N, K]`.
    pub transpose_b: bool,
    /// `MatMul`/`BatchMatMul`: the first input is `[.., K, M]`, its strategy
    /// given in that stored order. Some MindSpore versions refuse it in
    /// semi-auto parallel; later ones swap the last two entries of the
    /// first input's strategy and tensor map, as modelled here.
    pub transpose_a: bool,
    /// Pipeline stage the operator runs on (`< OperatorGraph::stages`).
    pub stage: u64,
    /// Name of the output.
    pub output: String,
}

/// Operators in execution order, on `stages` pipeline stages of `devices`
/// devices each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorGraph {
    /// Devices of each stage.
    pub devices: u64,
    /// Pipeline stages (1 = none). Operators run on the stage they name,
    /// in non-decreasing stage order along the data flow.
    pub stages: u64,
    /// The batch size in graph-input shapes.
    pub batch: u64,
    /// Where the repeated-calculation factor goes.
    pub repeated_calc: RepeatSide,
    /// Graph inputs that are not weights.
    pub inputs: Vec<ActivationInput>,
    /// The operators.
    pub ops: Vec<Operator>,
}

/// A collective an operator performs on its own output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Collective {
    /// All-reduce of partial sums.
    AllReduce,
    /// Reduce-scatter of partial sums.
    ReduceScatter,
}

impl fmt::Display for Collective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Collective::AllReduce => "all-reduce",
            Collective::ReduceScatter => "reduce-scatter",
        })
    }
}

/// The forward communication inside an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardComm {
    /// Which collective.
    pub collective: Collective,
    /// Ranks per group.
    pub ranks: u64,
    /// Bytes of the operator's (full) output.
    pub output_bytes: u64,
}

/// Device matrix and tensor maps of one operator, as MindSpore builds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpLayout {
    /// Device matrix of the inputs, repeated-calculation axis included.
    pub dev_matrix: Vec<u64>,
    /// The repeated-calculation factor (1 = none).
    pub repeat: u64,
    /// Tensor map of each input.
    pub inputs: Vec<Vec<i64>>,
    /// Device matrix of the output (differs for a vocabulary-split Gather).
    pub output_dev_matrix: Vec<u64>,
    /// Tensor map of the output.
    pub output: Vec<i64>,
    /// Shape of the output.
    pub output_shape: Vec<u64>,
    /// The operator's own collective, if any.
    pub forward: Option<ForwardComm>,
}

/// A layout as MindSpore states it: device matrix and tensor map.
fn ms(dev: &[u64], map: &[i64]) -> MindSporeLayout {
    MindSporeLayout {
        dev_matrix: dev.to_vec(),
        tensor_map: map.iter().map(|&k| vec![k]).collect(),
        ..MindSporeLayout::default()
    }
}

fn show_ms(l: &MindSporeLayout) -> String {
    let tm: Vec<String> = l
        .tensor_map
        .iter()
        .map(|e| e.first().copied().unwrap_or(-1).to_string())
        .collect();
    format!("dev {:?} map [{}]", l.dev_matrix, tm.join(", "))
}

/// Which operator decided a weight's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSource {
    /// Index of the operator.
    pub op: usize,
    /// Position of the weight among its inputs.
    pub input: usize,
    /// The layout, in MindSpore terms (of its first stage).
    pub layout: MindSporeLayout,
    /// The stages whose operators read it, ascending: several for a tied
    /// embedding read by a `Gather` on the first stage and a `MatMul` on
    /// the last.
    pub stages: Vec<u64>,
}

/// An activation an operator needs in another layout than its producer
/// left it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redistribution {
    /// The activation.
    pub activation: String,
    /// Index of the producing operator.
    pub producer: usize,
    /// Index of the consuming operator.
    pub consumer: usize,
    /// Layout the producer leaves.
    pub from: MindSporeLayout,
    /// Layout the consumer needs.
    pub to: MindSporeLayout,
    /// Bytes that must cross the network (the lower bound, which
    /// [`crate::plan_transfer`] attains).
    pub bytes: u64,
}

/// A weight two operators read in different layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightConflict {
    /// The weight.
    pub tensor: String,
    /// The operator whose layout it keeps.
    pub first: usize,
    /// The operator that wants another one.
    pub other: usize,
    /// The layout the other operator wants.
    pub wanted: MindSporeLayout,
    /// Bytes the other operator must fetch each time (lower bound).
    pub bytes: u64,
}

/// The result of [`derive_from_operators`].
#[derive(Debug, Clone)]
pub struct OperatorDerivation {
    /// The weights' layouts (weights no operator reads are replicated),
    /// named `derived`, on the mesh `[rank=devices]`.
    pub strategy: Strategy,
    /// Per operator, its device matrix and tensor maps.
    pub ops: Vec<OpLayout>,
    /// Per tensor of the strategy, the operator that decided its layout.
    pub weights: Vec<Option<WeightSource>>,
    /// Activation layout changes between operators.
    pub redistributions: Vec<Redistribution>,
    /// Weights read in two layouts.
    pub conflicts: Vec<WeightConflict>,
}

impl OperatorDerivation {
    /// The same derivation with the strategy called `name`.
    ///
    /// # Errors
    ///
    /// None in practice: the strategy is rebuilt from its own parts.
    pub fn renamed(self, name: &str) -> Result<Self, OpsError> {
        let strategy = self.strategy.renamed(name);
        Ok(OperatorDerivation { strategy, ..self })
    }

    /// Total bytes of the redistributions.
    pub fn redistribution_bytes(&self) -> u64 {
        self.redistributions.iter().map(|r| r.bytes).sum()
    }

    /// A text report: every operator's device matrix and tensor maps, each
    /// weight's source, and the redistributions.
    pub fn report(&self, graph: &OperatorGraph) -> String {
        let mut out = report_header(graph);
        for (i, (op, l)) in graph.ops.iter().zip(&self.ops).enumerate() {
            write_operator(&mut out, i, op, l, graph.stages > 1);
        }
        self.write_weights(&mut out, graph);
        self.write_conflicts(&mut out, graph);
        self.write_redistributions(&mut out, graph);
        out
    }

    /// One line per tensor: the operator input whose layout it takes, or
    /// replicated.
    fn write_weights(&self, out: &mut String, graph: &OperatorGraph) {
        use std::fmt::Write;
        let _ = writeln!(out, "weights:");
        for (t, w) in self.strategy.tensors().iter().zip(&self.weights) {
            let Some(w) = w else {
                let _ = writeln!(out, "  {}: replicated (no operator reads it)", t.name);
                continue;
            };
            let _ = write!(
                out,
                "  {}: {} (input {} of #{} `{}`)",
                t.name,
                show_ms(&w.layout),
                w.input,
                w.op,
                graph.ops[w.op].name
            );
            if graph.stages > 1 {
                let st: Vec<String> = w.stages.iter().map(u64::to_string).collect();
                let _ = write!(out, " on stage {}", st.join(", "));
            }
            out.push('\n');
        }
    }

    fn write_conflicts(&self, out: &mut String, graph: &OperatorGraph) {
        use std::fmt::Write;
        for c in &self.conflicts {
            let _ = writeln!(
                out,
                "conflict: {} is read by #{} `{}` as {}, {} B to fetch; it keeps the layout of #{} `{}`",
                c.tensor,
                c.other,
                graph.ops[c.other].name,
                show_ms(&c.wanted),
                c.bytes,
                c.first,
                graph.ops[c.first].name
            );
        }
    }

    fn write_redistributions(&self, out: &mut String, graph: &OperatorGraph) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "redistributions: {} ({} B)",
            self.redistributions.len(),
            self.redistribution_bytes()
        );
        for r in &self.redistributions {
            let _ = writeln!(
                out,
                "  {}: #{} `{}` leaves {}, #{} `{}` needs {}: {} B",
                r.activation,
                r.producer,
                graph.ops[r.producer].name,
                show_ms(&r.from),
                r.consumer,
                graph.ops[r.consumer].name,
                show_ms(&r.to),
                r.bytes
            );
        }
    }
}

/// The report's first line: devices, stages, batch, repeated calculation.
fn report_header(graph: &OperatorGraph) -> String {
    let stages = if graph.stages > 1 {
        format!("{} stages of ", graph.stages)
    } else {
        String::new()
    };
    let repeat = match graph.repeated_calc {
        RepeatSide::Right => "right",
        RepeatSide::Left => "left",
    };
    format!(
        "operators on {stages}{} devices, batch {} (repeated calculation: {repeat})\n",
        graph.devices, graph.batch
    )
}

/// Operator `i`'s line: its device matrix, input and output maps, and the
/// collective its output needs.
fn write_operator(out: &mut String, i: usize, op: &Operator, l: &OpLayout, staged: bool) {
    use std::fmt::Write;
    let maps: Vec<String> = op
        .inputs
        .iter()
        .zip(&l.inputs)
        .map(|(n, m)| format!("{n} {m:?}"))
        .collect();
    let _ = write!(out, "  #{i} {} `{}`", op.kind, op.name);
    if staged {
        let _ = write!(out, " (stage {})", op.stage);
    }
    let _ = write!(out, ": dev_matrix {:?}", l.dev_matrix);
    if l.repeat > 1 {
        let _ = write!(out, " (repeated x{})", l.repeat);
    }
    let _ = write!(
        out,
        "; {}; -> {} {:?}",
        maps.join(", "),
        op.output,
        l.output
    );
    if l.output_dev_matrix != l.dev_matrix {
        let _ = write!(out, " on {:?}", l.output_dev_matrix);
    }
    if let Some(c) = l.forward {
        let _ = write!(
            out,
            "; {} over {} ranks of {} B",
            c.collective, c.ranks, c.output_bytes
        );
    }
    out.push('\n');
}

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

/// A value flowing between operators.
#[derive(Debug, Clone)]
struct Value {
    shape: Vec<u64>,
    dtype: DType,
    /// Producer and its output layout; `None` for weights and graph inputs.
    produced: Option<(usize, MindSporeLayout)>,
    /// Index into the weights, for weights.
    weight: Option<usize>,
}

/// Device matrix without repetition, input maps, output device matrix and
/// map, collective, and the repeat side for this operator.
struct Raw {
    dev: Vec<u64>,
    inputs: Vec<Vec<i64>>,
    out_dev: Vec<u64>,
    output: Vec<i64>,
    output_shape: Vec<u64>,
    forward: Option<(Collective, u64)>,
    side: Option<RepeatSide>,
}

fn descending(n: usize) -> Vec<i64> {
    (0..n).rev().map(|k| k as i64).collect()
}

fn product(v: &[u64]) -> u64 {
    v.iter().product()
}

/// A strategy fault of operator `op`, at `input` when one is to blame.
fn bad_strategy(op: usize, kind: OpKind, input: Option<usize>, fault: StrategyFault) -> OpsError {
    OpsError::Strategy {
        op,
        input,
        kind,
        fault,
    }
}

/// Lays out a `MatMul`/`BatchMatMul` as MindSpore's `MatMulBase` does.
fn matmul(
    op: usize,
    kind: OpKind,
    shapes: &[&[u64]],
    st: &[Vec<u64>],
    transpose: (bool, bool),
    devices: u64,
) -> Result<Raw, OpsError> {
    if shapes[0].len() < 2 || shapes[1].len() < 2 {
        let (a, b) = (shapes[0], shapes[1]);
        return Err(bad_strategy(
            op,
            kind,
            Some(usize::from(a.len() >= 2)),
            StrategyFault::TooFewDims {
                a: a.to_vec(),
                b: b.to_vec(),
            },
        ));
    }
    let inputs = MatMulInputs::new(shapes, st, transpose);
    inputs.check_shapes(op, kind)?;
    if let Some(raw) = inputs.whole_stage(kind, devices) {
        return Ok(raw);
    }
    inputs.check_strategies(op, kind)?;
    Ok(inputs.layout())
}

/// The two inputs of a `MatMul`/`BatchMatMul` with their strategies, the
/// first as `[.., M, K]` and the second as stored (`[.., K, N]`, or
/// `[.., N, K]` with `transpose_b`).
struct MatMulInputs<'a> {
    a: Vec<u64>,
    sa: Vec<u64>,
    b: &'a [u64],
    sb: &'a [u64],
    transpose_a: bool,
    transpose_b: bool,
}

/// An input's shape and its strategy.
type Operand<'s> = (&'s [u64], &'s [u64]);

impl<'a> MatMulInputs<'a> {
    /// With `transpose_a`, `a` is stored `[.., K, M]`: reason on
    /// `[.., M, K]` and swap its tensor map back at the end.
    fn new(shapes: &[&'a [u64]], st: &'a [Vec<u64>], (ta, tb): (bool, bool)) -> Self {
        let stored = |v: &[u64]| {
            let mut v = v.to_vec();
            if ta {
                let n = v.len();
                v.swap(n - 1, n - 2);
            }
            v
        };
        MatMulInputs {
            a: stored(shapes[0]),
            sa: stored(&st[0]),
            b: shapes[1],
            sb: &st[1],
            transpose_a: ta,
            transpose_b: tb,
        }
    }

    /// Positions of `b`'s reduction dimension (K) and its output one (N).
    fn b_dims(&self) -> (usize, usize) {
        let lb = self.b.len();
        if self.transpose_b {
            (lb - 1, lb - 2)
        } else {
            (lb - 2, lb - 1)
        }
    }

    /// The longer input's shape and strategy, then the shorter one's (`a`
    /// first when their ranks are equal).
    fn longer_first(&self) -> (Operand<'_>, Operand<'_>) {
        let a = (self.a.as_slice(), self.sa.as_slice());
        let b = (self.b, self.sb);
        if self.a.len() >= self.b.len() {
            (a, b)
        } else {
            (b, a)
        }
    }

    /// `MatMul` takes 2-D inputs only, and both inputs must agree on K.
    fn check_shapes(&self, op: usize, kind: OpKind) -> Result<(), OpsError> {
        let (a, b) = (&self.a, self.b);
        if kind == OpKind::MatMul && (a.len() != 2 || b.len() != 2) {
            return Err(bad_strategy(
                op,
                kind,
                None,
                StrategyFault::NotTwoDims {
                    a: a.to_vec(),
                    b: b.to_vec(),
                },
            ));
        }
        let (k_a, k_b) = (a[a.len() - 1], b[self.b_dims().0]);
        if k_a != k_b {
            return Err(bad_strategy(
                op,
                kind,
                Some(1),
                StrategyFault::ReductionSizes {
                    a: k_a,
                    b: k_b,
                    transpose_b: self.transpose_b,
                },
            ));
        }
        Ok(())
    }

    /// MindSpore's special case: a 2-D MatMul whose inputs have the same
    /// strategy using every device of the stage keeps that strategy as the
    /// device matrix, with maps [1, 0] on both inputs and the output and no
    /// collective of its own.
    fn whole_stage(&self, kind: OpKind, devices: u64) -> Option<Raw> {
        let plain = !self.transpose_a && !self.transpose_b;
        if kind != OpKind::MatMul || !plain || self.sa != self.sb || product(&self.sa) != devices {
            return None;
        }
        Some(Raw {
            dev: self.sa.clone(),
            out_dev: self.sa.clone(),
            inputs: vec![vec![1, 0], vec![1, 0]],
            output: vec![1, 0],
            output_shape: vec![self.a[0], self.b[1]],
            forward: None,
            side: None,
        })
    }

    /// The reduction dimension must be split alike in both inputs, and the
    /// batch dimensions, right-aligned, alike where both have them.
    fn check_strategies(&self, op: usize, kind: OpKind) -> Result<(), OpsError> {
        let s_ka = self.sa[self.a.len() - 1];
        let s_kb = self.sb[self.b_dims().0];
        if s_ka != s_kb {
            return Err(bad_strategy(
                op,
                kind,
                Some(1),
                StrategyFault::ReductionSplit { a: s_ka, b: s_kb },
            ));
        }
        let ((long, ls), (short, ss)) = self.longer_first();
        let diff = long.len() - short.len();
        for j in 0..short.len() - 2 {
            if ls[diff + j] != ss[j] {
                return Err(bad_strategy(
                    op,
                    kind,
                    None,
                    StrategyFault::BatchSplit {
                        dim: j,
                        a: ls[diff + j],
                        b: ss[j],
                    },
                ));
            }
            if long[diff + j] != short[j] {
                return Err(bad_strategy(
                    op,
                    kind,
                    None,
                    StrategyFault::BatchSizes {
                        a: long.to_vec(),
                        b: short.to_vec(),
                    },
                ));
            }
        }
        Ok(())
    }

    /// Device matrix `[batch.., M, K, N]` (the longer input's batch
    /// strategy), the tensor maps, the output shape, and the all-reduce a
    /// split K needs.
    fn layout(&self) -> Raw {
        let la = self.a.len();
        let ((long, ls), _) = self.longer_first();
        let n = self.b_dims().1;
        let mut dev: Vec<u64> = ls[..ls.len() - 2].to_vec();
        dev.push(self.sa[la - 2]);
        dev.push(self.sa[la - 1]);
        dev.push(self.sb[n]);
        let size = dev.len();
        let mut output = descending(size);
        output.remove(size - 2);
        let mut output_shape: Vec<u64> = long[..long.len() - 2].to_vec();
        output_shape.push(self.a[la - 2]);
        output_shape.push(self.b[n]);
        let forward = (self.sa[la - 1] > 1).then_some((Collective::AllReduce, self.sa[la - 1]));
        Raw {
            inputs: vec![self.a_map(size), self.b_map(size)],
            out_dev: dev.clone(),
            dev,
            output,
            output_shape,
            forward,
            side: None,
        }
    }

    /// `a`'s tensor map over a device matrix of `size` axes: its batch
    /// axes, M and K, in stored order.
    fn a_map(&self, size: usize) -> Vec<i64> {
        let la = self.a.len();
        let mut map = descending(size);
        map.pop();
        map.drain(..size - 1 - la);
        if self.transpose_a {
            map.swap(la - 1, la - 2);
        }
        map
    }

    /// `b`'s tensor map over a device matrix of `size` axes: its batch
    /// axes, K and N, in stored order.
    fn b_map(&self, size: usize) -> Vec<i64> {
        let lb = self.b.len();
        let mut map = descending(size);
        map.remove(size - 3);
        map.drain(..size - 1 - lb);
        if self.transpose_b {
            let n = map.len();
            map.swap(n - 1, n - 2);
        }
        map
    }
}

fn gather(op: usize, shapes: &[&[u64]], st: &[Vec<u64>], devices: u64) -> Result<Raw, OpsError> {
    let (p, i) = (shapes[0], shapes[1]);
    let (ps, is) = (&st[0], &st[1]);
    if p.is_empty() {
        return Err(gather_fault(op, 0, StrategyFault::ScalarTable));
    }
    let mut output_shape = i.to_vec();
    output_shape.extend_from_slice(&p[1..]);
    if ps[0] == 1 {
        return Ok(gather_whole_vocab(p, i, ps, is, output_shape));
    }
    if p.len() == 2
        && i.len() == 2
        && ps[1] == 1
        && is[1] == 1
        && ps[0] * is[0] == devices
        && ps[0] != devices
        && is[0] != devices
    {
        return Ok(gather_batch_and_vocab(ps, is, output_shape));
    }
    gather_split_vocab(op, p, i, ps, is, devices, output_shape)
}

/// Gather with the batch and the vocabulary both split over all devices:
/// device matrix `[b, v]`, the outputs all-reduced.
fn gather_batch_and_vocab(ps: &[u64], is: &[u64], output_shape: Vec<u64>) -> Raw {
    let dev = vec![is[0], ps[0]];
    Raw {
        out_dev: dev.clone(),
        dev,
        inputs: vec![vec![0, -1], vec![1, -1]],
        output: vec![1, -1, -1],
        output_shape,
        forward: Some((Collective::AllReduce, ps[0])),
        side: None,
    }
}

/// A Gather strategy's fault at input `input` of operator `op`.
fn gather_fault(op: usize, input: usize, fault: StrategyFault) -> OpsError {
    OpsError::Strategy {
        op,
        input: Some(input),
        kind: OpKind::Gather,
        fault,
    }
}

/// Gather in normal mode (the vocabulary whole): the device matrix is the
/// indices' strategy then the table's.
fn gather_whole_vocab(p: &[u64], i: &[u64], ps: &[u64], is: &[u64], output_shape: Vec<u64>) -> Raw {
    let mut dev = is.to_vec();
    dev.extend_from_slice(ps);
    let tmp = descending(i.len() + p.len());
    let param_map = tmp[i.len()..].to_vec();
    let indices_map = tmp[..i.len()].to_vec();
    let mut out = indices_map.clone();
    out.extend_from_slice(&param_map[1..]);
    Raw {
        out_dev: dev.clone(),
        dev,
        inputs: vec![param_map, indices_map],
        output: out,
        output_shape,
        forward: None,
        side: None,
    }
}

/// Gather with the vocabulary split and the indices whole: each rank
/// looks up its rows, and the outputs are reduce-scattered along the first
/// output dimension when it divides, else all-reduced.
fn gather_split_vocab(
    op: usize,
    p: &[u64],
    i: &[u64],
    ps: &[u64],
    is: &[u64],
    devices: u64,
    output_shape: Vec<u64>,
) -> Result<Raw, OpsError> {
    if p.len() > 2 {
        return Err(gather_fault(op, 0, StrategyFault::VocabTableRank));
    }
    if product(is) != 1 {
        return Err(gather_fault(op, 1, StrategyFault::VocabIndicesSplit));
    }
    let pp = product(ps);
    if pp != devices && p.len() == 2 && ps[1] != 1 {
        return Err(gather_fault(op, 0, StrategyFault::VocabRepeated));
    }
    let param_map = descending(p.len());
    let indices_map = vec![-1; i.len()];
    let all_reduce = i.first().is_none_or(|&d| !d.is_multiple_of(ps[0]));
    let mut out = vec![if all_reduce { -1 } else { p.len() as i64 - 1 }];
    out.extend(std::iter::repeat_n(-1, i.len().saturating_sub(1)));
    out.extend(param_map[1..].iter().copied());
    if i.is_empty() {
        // A scalar index: the output is the table's other dimensions.
        out = param_map[1..].to_vec();
    }
    let side = if pp == devices || pp == 1 {
        RepeatSide::Right
    } else {
        RepeatSide::Left
    };
    let collective = if all_reduce {
        Collective::AllReduce
    } else {
        Collective::ReduceScatter
    };
    Ok(Raw {
        out_dev: ps.to_vec(),
        dev: ps.to_vec(),
        inputs: vec![param_map, indices_map],
        output: out,
        output_shape,
        forward: Some((collective, ps[0])),
        side: Some(side),
    })
}

fn elementwise(
    op: usize,
    kind: OpKind,
    shapes: &[&[u64]],
    st: &[Vec<u64>],
) -> Result<Raw, OpsError> {
    let n = shapes[0].len().max(shapes[1].len());
    let expand = |v: &[u64]| -> Vec<u64> {
        let mut e = vec![1; n - v.len()];
        e.extend_from_slice(v);
        e
    };
    let (a, b) = (expand(shapes[0]), expand(shapes[1]));
    let (sa, sb) = (expand(&st[0]), expand(&st[1]));
    let mut dev = Vec::with_capacity(n);
    let mut output_shape = Vec::with_capacity(n);
    for d in 0..n {
        let (x, y) = (a[d], b[d]);
        if x != y && x != 1 && y != 1 {
            return Err(OpsError::Strategy {
                op,
                input: None,
                kind,
                fault: StrategyFault::NoBroadcast {
                    a: shapes[0].to_vec(),
                    b: shapes[1].to_vec(),
                },
            });
        }
        let ok = if x == y {
            sa[d] == sb[d]
        } else if x == 1 {
            sa[d] == 1
        } else {
            sb[d] == 1
        };
        if !ok {
            return Err(OpsError::Strategy {
                op,
                input: Some(1),
                kind,
                fault: StrategyFault::BroadcastSplit {
                    dim: d,
                    a: sa[d],
                    b: sb[d],
                },
            });
        }
        dev.push(sa[d].max(sb[d]));
        output_shape.push(x.max(y));
    }
    let index = descending(n);
    let map = |s: &[u64], rank: usize| -> Vec<i64> {
        let full: Vec<i64> = (0..n)
            .map(|d| {
                if s[d] == 1 && dev[d] > 1 {
                    -1
                } else {
                    index[d]
                }
            })
            .collect();
        full[n - rank..].to_vec()
    };
    Ok(Raw {
        inputs: vec![map(&sa, shapes[0].len()), map(&sb, shapes[1].len())],
        out_dev: dev.clone(),
        dev,
        output: index,
        output_shape,
        forward: None,
        side: None,
    })
}

fn norm(op: usize, kind: OpKind, shapes: &[&[u64]], st: &[Vec<u64>]) -> Result<Raw, OpsError> {
    let x = shapes[0];
    let n = x.len();
    let mut inputs = vec![descending(n)];
    for (k, (g, sg)) in shapes.iter().zip(st).enumerate().skip(1) {
        if g.len() > n || x[n - g.len()..] != **g {
            return Err(OpsError::Strategy {
                op,
                input: Some(k),
                kind,
                fault: StrategyFault::NotTrailing {
                    normalized: g.to_vec(),
                    shape: x.to_vec(),
                },
            });
        }
        if sg.iter().chain(&st[0][n - g.len()..]).any(|&s| s != 1) {
            return Err(OpsError::Strategy {
                op,
                input: Some(k),
                kind,
                fault: StrategyFault::NormalizedSplit,
            });
        }
        inputs.push(descending(g.len()));
    }
    Ok(Raw {
        dev: st[0].clone(),
        out_dev: st[0].clone(),
        inputs,
        output: descending(n),
        output_shape: x.to_vec(),
        forward: None,
        side: None,
    })
}

/// Adds the repeated-calculation axis.
fn with_repeat(dev: &[u64], repeat: u64, side: RepeatSide) -> Vec<u64> {
    let mut d = dev.to_vec();
    if repeat > 1 {
        match side {
            RepeatSide::Right => d.push(repeat),
            RepeatSide::Left => d.insert(0, repeat),
        }
    }
    d
}

fn shift(map: &[i64], repeat: u64, side: RepeatSide) -> Vec<i64> {
    if repeat > 1 && side == RepeatSide::Right {
        map.iter()
            .map(|&k| if k >= 0 { k + 1 } else { k })
            .collect()
    } else {
        map.to_vec()
    }
}

/// A one-tensor strategy for measuring a redistribution.
fn single(
    name: &str,
    info: &TensorInfo,
    layout: TensorLayout,
    mesh: &Arc<DeviceMesh>,
) -> Option<Strategy> {
    let info = TensorInfo {
        name: name.to_string(),
        ..info.clone()
    };
    Strategy::new(name, mesh.clone(), vec![info], vec![layout]).ok()
}

fn moved_bytes(
    name: &str,
    shape: &[u64],
    dtype: DType,
    from: &TensorLayout,
    to: &TensorLayout,
    mesh: &Arc<DeviceMesh>,
) -> u64 {
    let info = TensorInfo {
        name: name.to_string(),
        shape: shape.to_vec(),
        dtype,
    };
    match (
        single(name, &info, from.clone(), mesh),
        single(name, &info, to.clone(), mesh),
    ) {
        (Some(a), Some(b)) => volume_lower_bound(&a, &b, &[name]),
        _ => 0,
    }
}

/// Lays out every operator of `graph` over `graph.devices` devices, gives
/// each weight in `tensors` the layout of the first operator that reads it
/// (others are replicated), and measures the redistributions between
/// operators.
///
/// # Errors
///
/// [`OpsError`] for the first operator whose inputs, strategy or output do
/// not fit, naming it.
pub fn derive_from_operators(
    graph: &OperatorGraph,
    tensors: &[TensorInfo],
) -> Result<OperatorDerivation, OpsError> {
    let mut walk = Walk::new(graph, tensors)?;
    for (o, op) in graph.ops.iter().enumerate() {
        walk.operator(o, op)?;
    }
    walk.finish()
}

/// The walk over the operators in execution order: every value named so
/// far, and what the operators decided or need.
struct Walk<'g> {
    graph: &'g OperatorGraph,
    tensors: &'g [TensorInfo],
    /// Stages of the graph, at least 1.
    stages: u64,
    /// One stage's devices: layouts are compared within a stage.
    mesh: Arc<DeviceMesh>,
    /// Weights, graph inputs and the outputs of the operators walked.
    values: BTreeMap<String, Value>,
    /// Per weight: who decided it, its layout on one stage.
    weights: Vec<Option<(WeightSource, TensorLayout)>>,
    ops: Vec<OpLayout>,
    redistributions: Vec<Redistribution>,
    conflicts: Vec<WeightConflict>,
}

/// One input of an operator and the layout the operator needs it in.
struct Read<'a> {
    /// Index of the operator.
    op: usize,
    /// Its stage.
    stage: u64,
    /// Position of the input.
    input: usize,
    name: &'a str,
    value: &'a Value,
    /// The layout needed, as MindSpore states it.
    want_ms: MindSporeLayout,
    /// The same layout on the stage's mesh.
    want: TensorLayout,
}

impl<'g> Walk<'g> {
    /// Checks the graph has devices and a batch, builds one stage's mesh,
    /// and names the weights and graph inputs.
    fn new(graph: &'g OperatorGraph, tensors: &'g [TensorInfo]) -> Result<Self, OpsError> {
        let (devices, batch) = (graph.devices, graph.batch);
        if devices == 0 || batch == 0 {
            return Err(OpsError::Empty { devices, batch });
        }
        let mesh = Arc::new(DeviceMesh::new([("rank", devices)]).map_err(OpsError::Mesh)?);
        Ok(Walk {
            graph,
            tensors,
            stages: graph.stages.max(1),
            mesh,
            values: seed_values(graph, tensors)?,
            weights: vec![None; tensors.len()],
            ops: Vec::with_capacity(graph.ops.len()),
            redistributions: Vec::new(),
            conflicts: Vec::new(),
        })
    }

    /// Lays out operator `o`, records what it reads and names its output;
    /// checks run in the order errors are reported.
    fn operator(&mut self, o: usize, op: &Operator) -> Result<(), OpsError> {
        check_operator(o, op, self.stages)?;
        let ins = self.resolve_inputs(o, op)?;
        let shapes: Vec<&[u64]> = ins.iter().map(|v| v.shape.as_slice()).collect();
        let raw = raw_layout(o, op, &shapes, self.graph.devices)?;
        let dtype = output_dtype(op.kind, &ins);
        let layout = op_layout(o, raw, self.graph, dtype)?;
        self.record_inputs(o, op, &ins, &layout)?;
        self.record_output(o, op, layout, dtype)
    }

    /// The values `op` reads, in input order.
    fn resolve_inputs(&self, o: usize, op: &Operator) -> Result<Vec<Value>, OpsError> {
        (0..op.inputs.len())
            .map(|k| self.resolve_input(o, op, k))
            .collect()
    }

    /// Input `k` of `op`: a known value its strategy fits, produced on the
    /// operator's stage or an earlier one.
    fn resolve_input(&self, o: usize, op: &Operator, k: usize) -> Result<Value, OpsError> {
        let name = &op.inputs[k];
        let v = self
            .values
            .get(name)
            .ok_or_else(|| OpsError::UnknownInput {
                op: o,
                input: k,
                name: name.clone(),
            })?;
        let s = &op.strategy[k];
        if s.len() != v.shape.len() {
            return Err(bad_strategy(
                o,
                op.kind,
                Some(k),
                StrategyFault::StrategyRank {
                    input: name.clone(),
                    shape: v.shape.clone(),
                    entries: s.len(),
                },
            ));
        }
        if s.contains(&0) {
            return Err(bad_strategy(o, op.kind, Some(k), StrategyFault::ZeroEntry));
        }
        if let Some((producer, _)) = &v.produced
            && self.graph.ops[*producer].stage > op.stage
        {
            return Err(OpsError::StageOrder {
                op: o,
                input: k,
                name: name.clone(),
                stage: op.stage,
                producer: *producer,
                producer_stage: self.graph.ops[*producer].stage,
            });
        }
        Ok(v.clone())
    }

    /// Checks every input fits the layout operator `o` needs it in, then
    /// notes weight sources, conflicts and redistributions, input by input.
    fn record_inputs(
        &mut self,
        o: usize,
        op: &Operator,
        ins: &[Value],
        layout: &OpLayout,
    ) -> Result<(), OpsError> {
        for (k, (v, map)) in ins.iter().zip(&layout.inputs).enumerate() {
            let name = &op.inputs[k];
            let want_ms = ms(&layout.dev_matrix, map);
            let want = tensor_layout(o, &want_ms, &v.shape, name, Some(k))?;
            let read = Read {
                op: o,
                stage: op.stage,
                input: k,
                name,
                value: v,
                want_ms,
                want,
            };
            if let Some(w) = v.weight {
                self.read_weight(w, read);
            } else if let Some((producer, from_ms)) = &v.produced {
                self.read_activation(*producer, from_ms, read)?;
            }
        }
        Ok(())
    }

    /// The first operator to read weight `w` decides its layout; a later
    /// one wanting another cut is a conflict, one on another stage wanting
    /// the same cut puts the weight on that stage too.
    fn read_weight(&mut self, w: usize, read: Read<'_>) {
        let Read { op, stage, .. } = read;
        match &self.weights[w] {
            None => {
                let source = WeightSource {
                    op,
                    input: read.input,
                    layout: read.want_ms,
                    stages: vec![stage],
                };
                self.weights[w] = Some((source, read.want.clone()));
            }
            Some((first, have)) if !have.same_placement(&read.want) => {
                let v = read.value;
                self.conflicts.push(WeightConflict {
                    tensor: read.name.to_string(),
                    first: first.op,
                    other: op,
                    bytes: moved_bytes(read.name, &v.shape, v.dtype, have, &read.want, &self.mesh),
                    wanted: read.want_ms,
                });
            }
            Some(_) => {}
        }
        if let Some((src, have)) = &mut self.weights[w]
            && have.same_placement(&read.want)
            && !src.stages.contains(&stage)
        {
            src.stages.push(stage);
            src.stages.sort_unstable();
        }
    }

    /// An activation `producer` left in `from_ms`: when the reader needs
    /// another placement, the runtime redistributes it.
    fn read_activation(
        &mut self,
        producer: usize,
        from_ms: &MindSporeLayout,
        read: Read<'_>,
    ) -> Result<(), OpsError> {
        let v = read.value;
        let from = tensor_layout(read.op, from_ms, &v.shape, read.name, None)?;
        if !from.same_placement(&read.want) {
            self.redistributions.push(Redistribution {
                activation: read.name.to_string(),
                producer,
                consumer: read.op,
                from: from_ms.clone(),
                bytes: moved_bytes(read.name, &v.shape, v.dtype, &from, &read.want, &self.mesh),
                to: read.want_ms,
            });
        }
        Ok(())
    }

    /// Checks operator `o`'s output fits its layout and has a new name,
    /// then names it and keeps the operator's layout.
    fn record_output(
        &mut self,
        o: usize,
        op: &Operator,
        layout: OpLayout,
        dtype: DType,
    ) -> Result<(), OpsError> {
        let out_ms = ms(&layout.output_dev_matrix, &layout.output);
        tensor_layout(o, &out_ms, &layout.output_shape, &op.output, None)?;
        if self.values.contains_key(&op.output) {
            return Err(OpsError::DuplicateOutput {
                op: o,
                name: op.output.clone(),
            });
        }
        let value = Value {
            shape: layout.output_shape.clone(),
            dtype,
            produced: Some((o, out_ms)),
            weight: None,
        };
        self.values.insert(op.output.clone(), value);
        self.ops.push(layout);
        Ok(())
    }

    /// The strategy of the weights' layouts and the derivation around it.
    fn finish(self) -> Result<OperatorDerivation, OpsError> {
        let Walk {
            graph,
            tensors,
            stages,
            mesh,
            weights,
            ops,
            redistributions,
            conflicts,
            ..
        } = self;
        // With stages, each weight lives on the stages that read it; the
        // activations' comparisons above stay within one stage's devices.
        let mesh = if stages > 1 {
            let axes = [("stage", stages), ("rank", graph.devices)];
            Arc::new(DeviceMesh::new(axes).map_err(OpsError::Mesh)?)
        } else {
            mesh
        };
        let layouts = tensors
            .iter()
            .zip(&weights)
            .map(|(t, w)| weight_layout(t, w.as_ref(), stages, &mesh))
            .collect::<Result<Vec<_>, _>>()?;
        let strategy = Strategy::new("derived", mesh, tensors.to_vec(), layouts)?;
        Ok(OperatorDerivation {
            strategy,
            ops,
            weights: weights.into_iter().map(|w| w.map(|(s, _)| s)).collect(),
            redistributions,
            conflicts,
        })
    }
}

/// The values before any operator: the weights, then the graph inputs
/// with the graph's batch, which must not reuse a name.
fn seed_values(
    graph: &OperatorGraph,
    tensors: &[TensorInfo],
) -> Result<BTreeMap<String, Value>, OpsError> {
    let mut values = BTreeMap::new();
    for (i, t) in tensors.iter().enumerate() {
        let value = Value {
            shape: t.shape.clone(),
            dtype: t.dtype,
            produced: None,
            weight: Some(i),
        };
        values.insert(t.name.clone(), value);
    }
    for a in &graph.inputs {
        if values.contains_key(&a.name) {
            return Err(OpsError::DuplicateInput {
                name: a.name.clone(),
            });
        }
        let shape = a
            .shape
            .iter()
            .map(|d| match d {
                DimSize::Fixed(n) => *n,
                DimSize::Batch => graph.batch,
            })
            .collect();
        let value = Value {
            shape,
            dtype: a.dtype,
            produced: None,
            weight: None,
        };
        values.insert(a.name.clone(), value);
    }
    Ok(values)
}

/// Checks operator `o` is on a stage of the graph and has as many inputs
/// as its kind takes, with one strategy each.
fn check_operator(o: usize, op: &Operator, stages: u64) -> Result<(), OpsError> {
    if op.stage >= stages {
        return Err(OpsError::Stage {
            op: o,
            stage: op.stage,
            stages,
        });
    }
    let n = op.inputs.len();
    if !op.kind.arity().contains(&n) {
        let fault = StrategyFault::Arity {
            takes: op.kind.arity().to_vec(),
            got: n,
        };
        return Err(bad_strategy(o, op.kind, None, fault));
    }
    if op.strategy.len() != n {
        let fault = StrategyFault::StrategyCount {
            strategies: op.strategy.len(),
            inputs: n,
        };
        return Err(bad_strategy(o, op.kind, None, fault));
    }
    Ok(())
}

/// The layout operator `o`'s kind builds from its inputs' shapes and its
/// strategy, before the repeated-calculation axis.
fn raw_layout(o: usize, op: &Operator, shapes: &[&[u64]], devices: u64) -> Result<Raw, OpsError> {
    let st = &op.strategy;
    match op.kind {
        OpKind::MatMul | OpKind::BatchMatMul => {
            let t = (op.transpose_a, op.transpose_b);
            matmul(o, op.kind, shapes, st, t, devices)
        }
        OpKind::Gather => gather(o, shapes, st, devices),
        OpKind::Add | OpKind::Mul => elementwise(o, op.kind, shapes, st),
        OpKind::RmsNorm | OpKind::LayerNorm => norm(o, op.kind, shapes, st),
    }
}

/// The output's element type: a `Gather` returns its table's, the others
/// their first floating-point input's (else the first input's).
fn output_dtype(kind: OpKind, ins: &[Value]) -> DType {
    match kind {
        OpKind::Gather => ins[0].dtype,
        _ => ins
            .iter()
            .map(|v| v.dtype)
            .find(|d| matches!(d, DType::F64 | DType::F32 | DType::F16 | DType::BF16))
            .unwrap_or(ins[0].dtype),
    }
}

/// Operator `o`'s layout on the stage: `raw` with the repeated-calculation
/// axis for the devices its strategy leaves idle, and its collective
/// sized by an output of `dtype`.
fn op_layout(
    o: usize,
    raw: Raw,
    graph: &OperatorGraph,
    dtype: DType,
) -> Result<OpLayout, OpsError> {
    let devices = graph.devices;
    let used = raw
        .dev
        .iter()
        .try_fold(1u64, |a, &b| a.checked_mul(b))
        .unwrap_or(u64::MAX);
    if used > devices || !devices.is_multiple_of(used) {
        return Err(OpsError::Devices {
            op: o,
            product: used,
            devices,
        });
    }
    let repeat = devices / used;
    let side = raw.side.unwrap_or(graph.repeated_calc);
    let output_bytes = raw
        .output_shape
        .iter()
        .try_fold(dtype.size_bytes(), |a, &b| a.checked_mul(b))
        .unwrap_or(u64::MAX);
    Ok(OpLayout {
        dev_matrix: with_repeat(&raw.dev, repeat, side),
        repeat,
        inputs: raw.inputs.iter().map(|m| shift(m, repeat, side)).collect(),
        output_dev_matrix: with_repeat(&raw.out_dev, repeat, side),
        output: shift(&raw.output, repeat, side),
        output_shape: raw.output_shape,
        forward: raw.forward.map(|(collective, ranks)| ForwardComm {
            collective,
            ranks,
            output_bytes,
        }),
    })
}

/// `ml` as a layout of `shape`, refusals named after operator `o` and the
/// tensor: an uneven split is the strategy's fault, anything else the
/// core's.
fn tensor_layout(
    o: usize,
    ml: &MindSporeLayout,
    shape: &[u64],
    name: &str,
    input: Option<usize>,
) -> Result<TensorLayout, OpsError> {
    ml.to_layout(shape).map_err(|e| match e {
        LayoutError::UnevenSplit { dim, size, blocks } => OpsError::Indivisible {
            op: o,
            input,
            tensor: name.to_string(),
            dim,
            size,
            ways: blocks,
        },
        source => OpsError::Layout {
            op: o,
            tensor: name.to_string(),
            source,
        },
    })
}

/// Weight `t`'s layout in the strategy: the one its first reader decided,
/// on every stage that reads it, or replicated when no operator reads it.
fn weight_layout(
    t: &TensorInfo,
    w: Option<&(WeightSource, TensorLayout)>,
    stages: u64,
    mesh: &Arc<DeviceMesh>,
) -> Result<TensorLayout, OpsError> {
    let fail = |source| OpsError::Layout {
        op: w.map_or(0, |(s, _)| s.op),
        tensor: t.name.clone(),
        source,
    };
    match w {
        Some((_, l)) if stages == 1 => Ok(l.clone()),
        Some((src, _)) => {
            let staged = MindSporeLayout {
                stage: src.stages[0],
                stage_count: stages,
                ..src.layout.clone()
            };
            staged
                .to_layout_on_stages(&t.shape, &src.stages[1..])
                .map_err(fail)
        }
        None => TensorLayout::replicated(mesh.clone(), &t.shape).map_err(fail),
    }
}

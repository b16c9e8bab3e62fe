//! The input of an operator derivation: the [`OperatorGraph`], its
//! operators ([`OpKind`], [`Operator`]) and graph inputs.

use std::fmt;

use crate::dtype::DType;

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
    pub(super) fn arity(self) -> &'static [usize] {
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

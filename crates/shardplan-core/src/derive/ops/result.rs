//! The result of an operator derivation: [`OperatorDerivation`], with each
//! operator's device matrix and tensor maps, weight sources, conflicts and
//! redistributions.

use std::fmt;

use super::OpsError;
#[cfg(doc)]
use super::derive_from_operators;
use crate::notation::mindspore::MindSporeLayout;
use crate::strategy::Strategy;

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
}

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

mod elementwise;
mod error;
mod gather;
mod graph;
mod matmul;
mod norm;
mod raw;
mod report;
mod result;
mod walk;

pub use error::{OpsError, StrategyFault};
pub use graph::{ActivationInput, DimSize, OpKind, Operator, OperatorGraph, RepeatSide};
pub use result::{
    Collective, ForwardComm, OpLayout, OperatorDerivation, Redistribution, WeightConflict,
    WeightSource,
};
pub use walk::derive_from_operators;

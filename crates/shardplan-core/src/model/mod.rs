//! A tiny Llama-like model for checking inference numerics after a
//! transfer.
//!
//! The model: a token embedding, `layers` transformer blocks (RMSNorm,
//! causal multi-head attention with rotary position embeddings and q/k/v/o
//! projections, RMSNorm, a SwiGLU MLP `down(silu(gate(x)) * up(x))`, each
//! with a residual connection), a final RMSNorm and an output projection,
//! which is the token embedding itself when the weights are tied
//! ([`ModelConfig::tie_embeddings`]: a spec without `lm_head.weight`).
//! Tensors carry Hugging Face Llama names and `[out, in]` weights
//! (`y = x @ W^T`); the rows of q/k/v are head-major, so rows
//! `h * head_dim .. (h + 1) * head_dim` are head `h`.
//!
//! [`forward_single`] runs the model on one device from full tensors.
//! [`forward_sharded`] runs it from the shards a [`ShardStore`] holds for a
//! [`Strategy`], simulating every rank in a loop: each rank computes only
//! with its own buffers, and the collectives a real run needs (all-reduce
//! after a row-parallel matmul, all-gather of vocabulary slices) are
//! explicit sums and concatenations. [`check_layout`] decides before any
//! arithmetic whether the strategy's layouts fit the model, and refuses
//! with a [`ModelError`] naming the tensor otherwise. [`check_model`] ties
//! it together: full weights laid out on a source strategy, planned,
//! verified and executed into a destination strategy, then both forwards
//! compared.
//!
//! # What a sharded run supports
//!
//! Per block (the embedding; each layer's attention; each layer's MLP; the
//! final norm with the output projection) one list of mesh axes, the
//! block's *tensor-parallel axes*, may split its matmul weights, each along
//! one dimension:
//!
//! - attention: q, k and v split their rows (whole heads) over the same
//!   axes with the same heads on every rank, and o splits its columns (its
//!   input) exactly like q's rows; each rank attends over its own heads and
//!   the o outputs are summed over the ranks (all-reduce);
//! - MLP: gate and up split their rows alike, down its columns like them;
//!   the down outputs are summed;
//! - embedding: rows (vocabulary-parallel: each rank looks up the ids it
//!   holds, zeros elsewhere, then a sum) or columns (hidden slices,
//!   concatenated);
//! - output projection: rows (vocabulary slices of the logits,
//!   concatenated) or columns (partial logits, summed);
//! - norm weights whole on the ranks that use them; any tensor may instead
//!   be whole (replicated).
//!
//! Uneven split policies are fine as long as these conditions hold rank by
//! rank. Pins place blocks on pipeline stages: every tensor of a layer must
//! be on the same stage (the final norm and the output projection too; a
//! tied embedding is on the first stage for the lookup and on the final
//! norm's stage for the logits, `at: {pp: [0, 2]}`), and
//! the blocks run in model order, each on the ranks of its stage, the
//! activations handed from stage to stage. Axes that neither split nor pin
//! a block's tensors hold replicas (data parallelism); the run uses the
//! replica at coordinate 0 of each. Partial sums, a tensor split in both
//! dimensions, a layout on a mesh other than the strategy's and grouped
//! query attention with k/v heads replicated over the tensor-parallel ranks
//! are refused.
//!
//! # Tolerance
//!
//! Sharding changes only the order of f32 summations: a row-parallel matmul
//! adds per-rank partial dot products instead of one running sum, and a
//! vocabulary-parallel lookup adds zeros. Each such step differs from the
//! single-device result by a few units in the last place (2^-24 ≈ 6e-8
//! relative), and two layers, norms and a softmax amplify that only
//! modestly. For `specs/tiny-model.yaml`, train → infer gives a largest
//! difference of 4.8e-7 with logits up to 2.2 (2.2e-7 relative; two units
//! in the last place), and a one-device destination gives exactly the
//! single-device logits. [`DEFAULT_TOLERANCE`] = 1e-4, relative to the
//! largest logit magnitude, leaves a margin of several hundred over that,
//! while a misplaced or missing weight gives errors of order 1e-2 to 1.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use shardplan_core::model::{ModelConfig, Weights, forward_sharded, forward_single};
//! use shardplan_core::{DeviceMesh, Strategy, TensorLayout};
//!
//! // The model of `specs/tiny-model.yaml`, with one layer instead of two.
//! let mut config = ModelConfig::tiny();
//! config.layers = 1;
//! let weights = Weights::generate(&config, 7)?;
//! let mesh = Arc::new(DeviceMesh::new(Vec::<(&str, u64)>::new())?);
//! let tensors = config.tensors();
//! let layouts = tensors
//!     .iter()
//!     .map(|t| TensorLayout::replicated(mesh.clone(), &t.shape))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let single = Strategy::new("single", mesh, tensors, layouts)?;
//! let store = weights.to_store(&single)?;
//! let tokens = vec![vec![1, 2, 3], vec![15, 0]];
//! let logits = forward_single(&weights, &tokens)?;
//! assert_eq!(logits.len(), 5 * config.vocab);
//! assert_eq!(forward_sharded(&config, &single, &store, &tokens)?, logits);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// An error ends the run once; its size does not matter (as in verify.rs).
#![allow(clippy::result_large_err)]

use crate::execute::{ShardStore, execute_plan};
use crate::plan::ReplicaChoice;
use crate::planner::{PlanConfig, plan_transfer};
use crate::strategy::Strategy;
use crate::verify::verify_plan;

mod config;
mod error;
mod forward;
mod kernels;
mod layout_check;
mod weights;

pub use config::*;
pub use error::*;
pub use forward::*;
use kernels::*;
pub use layout_check::*;
pub use weights::*;

/// What [`check_model`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReport {
    /// Largest absolute difference between the two logits.
    pub max_abs_err: f32,
    /// `max_abs_err` relative to the largest single-device logit magnitude.
    pub max_rel_err: f32,
    /// Largest single-device logit magnitude.
    pub max_abs_logit: f32,
    /// Single-device logits, `[total tokens, vocab]`.
    pub logits_single: Vec<f32>,
    /// Logits of the sharded run on the destination strategy.
    pub logits_sharded: Vec<f32>,
}

/// Runs the model after a transfer and compares it with a single device.
///
/// Reads the model's sizes from the tensors of `src` (head size [`DEFAULT_HEAD_DIM`]),
/// checks `dst` with [`check_layout`], generates the weights from
/// [`DEFAULT_SEED`], lays them out on `src` ([`Weights::to_store`]), plans
/// `src` → `dst` ([`plan_transfer`], balanced), verifies the plan
/// ([`verify_plan`]), executes it into a zeroed store for `dst`
/// ([`execute_plan`]), runs [`forward_sharded`] on the result and
/// [`forward_single`] on the full weights, and compares the logits.
/// `tolerance` bounds `max_rel_err`; [`DEFAULT_TOLERANCE`] is the
/// documented choice.
///
/// # Errors
///
/// Any [`ModelError`]: the model or a layout does not fit, planning,
/// verification or execution failed, or [`ModelError::Tolerance`] when the
/// logits differ by more than `tolerance` (or are not finite).
pub fn check_model(
    src: &Strategy,
    dst: &Strategy,
    tokens: &[Vec<u32>],
    tolerance: f32,
) -> Result<ModelReport, ModelError> {
    let config = ModelConfig::from_tensors(src.tensors(), DEFAULT_HEAD_DIM)?;
    check_layout(&config, dst)?;
    let weights = Weights::generate(&config, DEFAULT_SEED)?;
    let src_store = weights.to_store(src)?;
    let plan = plan_transfer(src, dst, &PlanConfig::new(ReplicaChoice::Balance))?;
    let plan = verify_plan(plan, src, dst)?;
    let mut dst_store = ShardStore::zeroed(dst);
    execute_plan(&plan, &src_store, &mut dst_store)?;
    let logits_sharded = forward_sharded(&config, dst, &dst_store, tokens)?;
    let logits_single = forward_single(&weights, tokens)?;
    let report = compare(logits_single, logits_sharded);
    let (row, column) = report.worst(config.vocab);
    // NaN compares false: not within.
    let within = report.max_rel_err <= tolerance;
    if !within {
        return Err(ModelError::Tolerance {
            max_abs_err: report.max_abs_err,
            max_rel_err: report.max_rel_err,
            tolerance,
            row,
            column,
        });
    }
    Ok(report)
}

/// The error measures of two logit vectors; a NaN anywhere (or a length
/// mismatch) makes them NaN.
fn compare(single: Vec<f32>, sharded: Vec<f32>) -> ModelReport {
    let mut nan = single.len() != sharded.len();
    let (mut max_abs_err, mut max_abs_logit) = (0.0f32, 0.0f32);
    for (a, b) in single.iter().zip(&sharded) {
        let e = (a - b).abs();
        nan |= e.is_nan() || a.is_nan();
        max_abs_err = max_abs_err.max(e);
        max_abs_logit = max_abs_logit.max(a.abs());
    }
    if nan {
        max_abs_err = f32::NAN;
    }
    let max_rel_err = max_abs_err / max_abs_logit.max(f32::MIN_POSITIVE);
    ModelReport {
        max_abs_err,
        max_rel_err,
        max_abs_logit,
        logits_single: single,
        logits_sharded: sharded,
    }
}

impl ModelReport {
    /// Row and column of the largest difference (NaN first).
    fn worst(&self, vocab: usize) -> (usize, usize) {
        let mut best = (0usize, -1.0f32);
        for (i, (a, b)) in self
            .logits_single
            .iter()
            .zip(&self.logits_sharded)
            .enumerate()
        {
            let e = (a - b).abs();
            let e = if e.is_nan() { f32::INFINITY } else { e };
            if e > best.1 {
                best = (i, e);
            }
        }
        (best.0 / vocab.max(1), best.0 % vocab.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Region;

    #[test]
    fn extract_boxes() {
        let full: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let r = Region::new(vec![1, 2], vec![2, 2]);
        assert_eq!(extract(&full, &[3, 4], &r), vec![6.0, 7.0, 10.0, 11.0]);
        assert!(extract(&full, &[3, 4], &Region::new(vec![0, 0], vec![0, 4])).is_empty());
    }

    #[test]
    fn attention_is_causal_and_per_sequence() {
        // One head of size 2; a later token must not change earlier outputs.
        let q = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let k = q;
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let one = |n: usize| vec![0..n, n..n];
        let all = attention(&q, &k, &v, 3, 1, 1, 2, &one(3));
        let two = attention(&q[..4], &k[..4], &v[..4], 2, 1, 1, 2, &one(2));
        assert_eq!(&all[..4], &two[..]);
        assert_eq!(&all[..2], &v[..2]); // the first token sees only itself
        // Separate sequences do not see each other.
        let split = attention(&q, &k, &v, 3, 1, 1, 2, &[0..1, 1..3]);
        assert_eq!(&split[2..4], &v[2..4]);
    }

    #[test]
    fn compare_flags_nan() {
        let r = compare(vec![1.0, 2.0], vec![1.0, f32::NAN]);
        assert!(r.max_abs_err.is_nan());
        assert!(r.max_rel_err.is_nan());
        assert_eq!(r.worst(2), (0, 1));
    }

    #[test]
    fn sizes_that_make_no_model_are_refused() {
        let c = ModelConfig::tiny();
        let cases = [
            (
                ModelConfig { vocab: 0, ..c },
                ConfigFault::ZeroSize {
                    vocab: 0,
                    hidden: c.hidden,
                },
            ),
            (ModelConfig { heads: 0, ..c }, ConfigFault::ZeroHeads),
            (
                ModelConfig { kv_heads: 3, ..c },
                ConfigFault::KvHeads {
                    kv_heads: 3,
                    heads: c.heads,
                },
            ),
            (ModelConfig { head_dim: 7, ..c }, ConfigFault::OddHeadDim(7)),
        ];
        for (config, fault) in cases {
            assert_eq!(config.validate(), Err(ModelError::Config { fault }));
        }
        let mut short = c.tensors();
        short[0].shape.truncate(1);
        assert!(matches!(
            ModelConfig::from_tensors(&short, 8),
            Err(ModelError::Config {
                fault: ConfigFault::TooFewDimensions { .. }
            })
        ));
        assert_eq!(
            ModelConfig::from_tensors(&c.tensors(), 0),
            Err(ModelError::Config {
                fault: ConfigFault::ZeroHeadDim
            })
        );
    }

    #[test]
    fn config_from_tensors() {
        let c = ModelConfig::tiny();
        assert_eq!(ModelConfig::from_tensors(&c.tensors(), 8).unwrap(), c);
        assert!(matches!(
            ModelConfig::from_tensors(&c.tensors(), 3),
            Err(ModelError::Config {
                fault: ConfigFault::HeadRows { head_dim: 3, .. }
            })
        ));
        let mut t = c.tensors();
        t.retain(|t| t.name != FINAL_NORM);
        let err = ModelConfig::from_tensors(&t, 8).unwrap_err();
        assert!(err.to_string().contains(FINAL_NORM), "{err}");
        // Without an output projection the weights are tied: the logits
        // come from the embedding.
        let tied = ModelConfig {
            tie_embeddings: true,
            ..c
        };
        assert!(!tied.tensors().iter().any(|t| t.name == LM_HEAD));
        assert_eq!(ModelConfig::from_tensors(&tied.tensors(), 8).unwrap(), tied);
        assert_eq!(tied.head_tensor(), EMBED);
        let w = Weights::generate(&tied, 1).unwrap();
        let tokens = vec![vec![1u32, 5, 9]];
        let logits = forward_single(&w, &tokens).unwrap();
        assert_eq!(logits.len(), 3 * tied.vocab);
    }
}

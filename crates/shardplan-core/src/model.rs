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

use std::collections::BTreeMap;
use std::ops::Range;

use crate::dtype::DType;
use crate::execute::{ExecError, ShardStore, execute_plan};
use crate::geometry::Region;
use crate::layout::TensorLayout;
use crate::plan::ReplicaChoice;
use crate::planner::{PlanConfig, PlanError, plan_transfer};
use crate::strategy::{Strategy, TensorInfo};
use crate::verify::{PlanDefect, verify_plan};

/// Epsilon of every RMSNorm.
pub const RMS_EPS: f32 = 1e-5;
/// Base of the rotary position embedding frequencies.
pub const ROPE_THETA: f64 = 10_000.0;
/// Head size [`check_model`] assumes (that of `specs/tiny-model.yaml`): the
/// shapes give the number of rows of q, not how they divide into heads.
pub const DEFAULT_HEAD_DIM: usize = 8;
/// Seed of the weights [`check_model`] generates.
pub const DEFAULT_SEED: u64 = 0x5eed_0001;
/// Largest accepted difference between sharded and single-device logits,
/// relative to the largest single-device logit magnitude; see the module
/// documentation for why.
pub const DEFAULT_TOLERANCE: f32 = 1e-4;

/// Name of the token embedding, `[vocab, hidden]`.
pub const EMBED: &str = "model.embed_tokens.weight";
/// Name of the final norm weight, `[hidden]`.
pub const FINAL_NORM: &str = "model.norm.weight";
/// Name of the output projection, `[vocab, hidden]`.
pub const LM_HEAD: &str = "lm_head.weight";

/// The tensors of one layer, as suffixes of `model.layers.{i}.`.
const LAYER_PARTS: [&str; 9] = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

/// Name of tensor `part` (e.g. `self_attn.q_proj.weight`) of layer `layer`.
pub fn layer_tensor(layer: usize, part: &str) -> String {
    format!("model.layers.{layer}.{part}")
}

/// Sizes of the model.
///
/// Built with [`ModelConfig::tiny`] or [`ModelConfig::from_tensors`]; the
/// fields can be read and changed directly, and [`ModelConfig::validate`]
/// checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelConfig {
    /// Vocabulary size: rows of the embedding and of the output projection.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Number of transformer layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; divides `heads` (fewer is grouped-query attention).
    pub kv_heads: usize,
    /// Size of one head; even (rotary embeddings rotate pairs).
    pub head_dim: usize,
    /// MLP inner size: rows of gate and up, columns of down.
    pub intermediate: usize,
    /// The output projection is the token embedding (tied weights, as in
    /// Gemma or Qwen2-0.5B): there is no `lm_head.weight`, and the logits
    /// are `h @ embed^T`.
    pub tie_embeddings: bool,
}

impl ModelConfig {
    /// The model of `specs/tiny-model.yaml`: vocab 64, hidden 32, 2 layers,
    /// 4 heads of 8, MLP 64.
    pub fn tiny() -> Self {
        ModelConfig {
            vocab: 64,
            hidden: 32,
            layers: 2,
            heads: 4,
            kv_heads: 4,
            head_dim: 8,
            intermediate: 64,
            tie_embeddings: false,
        }
    }

    /// The output projection's tensor: `lm_head.weight`, or the embedding
    /// when the weights are tied.
    pub fn head_tensor(&self) -> &'static str {
        if self.tie_embeddings { EMBED } else { LM_HEAD }
    }

    /// Reads the sizes from the shapes of `tensors` (a spec's tensor list),
    /// given the head size, and checks that every tensor of the model is
    /// there, f32, with its shape. Layers are counted from 0 while layer
    /// `i`'s q projection exists. Tensors the model does not use are
    /// ignored.
    ///
    /// # Errors
    ///
    /// [`ModelError::MissingTensor`], [`ModelError::Shape`],
    /// [`ModelError::DType`], or [`ModelError::Config`] when the sizes do
    /// not make a model (q rows not a multiple of `head_dim`, ...).
    pub fn from_tensors(tensors: &[TensorInfo], head_dim: usize) -> Result<Self, ModelError> {
        let by_name: BTreeMap<&str, &TensorInfo> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let get = |name: &str| -> Result<&TensorInfo, ModelError> {
            by_name
                .get(name)
                .copied()
                .ok_or_else(|| ModelError::MissingTensor {
                    tensor: name.to_string(),
                    place: "the tensors".into(),
                })
        };
        let dim = |t: &TensorInfo, d: usize| -> Result<usize, ModelError> {
            t.shape
                .get(d)
                .map(|&s| s as usize)
                .ok_or_else(|| ModelError::Config {
                    reason: format!("`{}` has shape {:?}, too few dimensions", t.name, t.shape),
                })
        };
        let embed = get(EMBED)?;
        let (vocab, hidden) = (dim(embed, 0)?, dim(embed, 1)?);
        let mut layers = 0;
        while by_name.contains_key(layer_tensor(layers, "self_attn.q_proj.weight").as_str()) {
            layers += 1;
        }
        let (mut heads, mut kv_heads, mut intermediate) = (0, 0, 0);
        if layers > 0 {
            if head_dim == 0 {
                return Err(ModelError::Config {
                    reason: "head_dim is 0".into(),
                });
            }
            let q = dim(get(&layer_tensor(0, "self_attn.q_proj.weight"))?, 0)?;
            let k = dim(get(&layer_tensor(0, "self_attn.k_proj.weight"))?, 0)?;
            for (what, rows) in [("q_proj", q), ("k_proj", k)] {
                if !rows.is_multiple_of(head_dim) {
                    return Err(ModelError::Config {
                        reason: format!(
                            "layer 0 {what} has {rows} rows, not a multiple of head_dim {head_dim}"
                        ),
                    });
                }
            }
            heads = q / head_dim;
            kv_heads = k / head_dim;
            intermediate = dim(get(&layer_tensor(0, "mlp.gate_proj.weight"))?, 0)?;
        }
        let config = ModelConfig {
            vocab,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            intermediate,
            // Tied models (Hugging Face's `tie_word_embeddings`) store no
            // output projection.
            tie_embeddings: !by_name.contains_key(LM_HEAD),
        };
        config.validate()?;
        for want in config.tensors() {
            let t = get(&want.name)?;
            if t.shape != want.shape {
                return Err(ModelError::Shape {
                    tensor: want.name,
                    expected: want.shape,
                    found: t.shape.clone(),
                });
            }
            if t.dtype != DType::F32 {
                return Err(ModelError::DType {
                    tensor: want.name,
                    dtype: t.dtype,
                });
            }
        }
        Ok(config)
    }

    /// Checks the sizes make a model.
    ///
    /// # Errors
    ///
    /// [`ModelError::Config`] when a size is zero, `kv_heads` does not
    /// divide `heads`, or `head_dim` is odd.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |reason: String| Err(ModelError::Config { reason });
        if self.vocab == 0 || self.hidden == 0 {
            return bad(format!(
                "vocab {} and hidden {} must be positive",
                self.vocab, self.hidden
            ));
        }
        if self.layers > 0 {
            if self.heads == 0 || self.kv_heads == 0 || self.head_dim == 0 {
                return bad("heads, kv_heads and head_dim must be positive".into());
            }
            if !self.heads.is_multiple_of(self.kv_heads) {
                return bad(format!(
                    "{} kv heads do not divide {} query heads",
                    self.kv_heads, self.heads
                ));
            }
            if !self.head_dim.is_multiple_of(2) {
                return bad(format!(
                    "head_dim {} is odd; rotary embeddings rotate pairs",
                    self.head_dim
                ));
            }
        }
        Ok(())
    }

    /// Every tensor of the model with its shape (all f32), in model order.
    pub fn tensors(&self) -> Vec<TensorInfo> {
        let t = |name: String, shape: &[usize]| TensorInfo {
            name,
            shape: shape.iter().map(|&s| s as u64).collect(),
            dtype: DType::F32,
        };
        let (h, q, kv, m) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        );
        let mut out = vec![t(EMBED.into(), &[self.vocab, h])];
        for i in 0..self.layers {
            let shapes: [&[usize]; 9] = [
                &[h],
                &[q, h],
                &[kv, h],
                &[kv, h],
                &[h, q],
                &[h],
                &[m, h],
                &[m, h],
                &[h, m],
            ];
            for (part, shape) in LAYER_PARTS.iter().zip(shapes) {
                out.push(t(layer_tensor(i, part), shape));
            }
        }
        out.push(t(FINAL_NORM.into(), &[h]));
        if !self.tie_embeddings {
            out.push(t(LM_HEAD.into(), &[self.vocab, h]));
        }
        out
    }
}

/// Why the model cannot run, or did not match.
#[derive(Debug, Clone, PartialEq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ModelError {
    /// A tensor the model needs is absent.
    #[error("tensor `{tensor}` is missing from {place}")]
    #[diagnostic(
        code(shardplan::model::missing_tensor),
        help(
            "the model needs every tensor of ModelConfig::tensors, with Hugging Face Llama names"
        )
    )]
    MissingTensor {
        /// Tensor name.
        tensor: String,
        /// Where it was looked for.
        place: String,
    },
    /// A tensor with another shape than the model's.
    #[error("tensor `{tensor}` has shape {found:?}, the model expects {expected:?}")]
    #[diagnostic(
        code(shardplan::model::shape),
        help("weights are [out, in]; check the sizes against the embedding and layer 0")
    )]
    Shape {
        /// Tensor name.
        tensor: String,
        /// Shape the model expects.
        expected: Vec<u64>,
        /// Shape found.
        found: Vec<u64>,
    },
    /// A tensor that is not f32.
    #[error("tensor `{tensor}` is {dtype}; the model computes in f32")]
    #[diagnostic(
        code(shardplan::model::dtype),
        help("declare the model's tensors as f32")
    )]
    DType {
        /// Tensor name.
        tensor: String,
        /// Its dtype.
        dtype: DType,
    },
    /// Sizes that do not make a model.
    #[error("model configuration: {reason}")]
    #[diagnostic(code(shardplan::model::config))]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A token id outside the vocabulary.
    #[error(
        "sequence {sequence}, position {position}: token id {token} is outside the vocabulary of {vocab}"
    )]
    #[diagnostic(code(shardplan::model::token))]
    Token {
        /// Sequence of the batch.
        sequence: usize,
        /// Position in the sequence.
        position: usize,
        /// The id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A layout the sharded forward does not support for this tensor.
    #[error("strategy `{strategy}`: tensor `{tensor}` {layout}: {reason}")]
    #[diagnostic(
        code(shardplan::model::unsupported_layout),
        help(
            "split a matmul weight along one dimension only (rows: column-parallel, columns: row-parallel), keep norms whole, and hold reduced values"
        )
    )]
    UnsupportedLayout {
        /// Strategy name.
        strategy: String,
        /// Tensor name.
        tensor: String,
        /// Its layout.
        layout: String,
        /// What is wrong.
        reason: String,
    },
    /// Two tensors of a block split in ways that do not compose.
    #[error(
        "strategy `{strategy}`: tensor `{tensor}` {layout} does not fit `{other}` {other_layout}: {reason}"
    )]
    #[diagnostic(
        code(shardplan::model::inconsistent_split),
        help(
            "attention: split q/k/v rows (heads) and o columns over the same axes; MLP: split gate/up rows and down columns over the same axes"
        )
    )]
    InconsistentSplit {
        /// Strategy name.
        strategy: String,
        /// The tensor at fault.
        tensor: String,
        /// Its layout.
        layout: String,
        /// The tensor it must agree with.
        other: String,
        /// That tensor's layout.
        other_layout: String,
        /// How they disagree.
        reason: String,
    },
    /// A split of q/k/v rows that cuts a head.
    #[error(
        "strategy `{strategy}`: tensor `{tensor}` {layout}: rank {rank} holds rows {rows}, which cut a head of {head_dim} rows"
    )]
    #[diagnostic(
        code(shardplan::model::head_split),
        help(
            "each rank must hold whole heads: the rows of q, k and v per rank must start and end at multiples of head_dim"
        )
    )]
    HeadSplit {
        /// Strategy name.
        strategy: String,
        /// Tensor name.
        tensor: String,
        /// Its layout.
        layout: String,
        /// The rank.
        rank: u64,
        /// The rows it holds, `a..b`.
        rows: String,
        /// Rows per head.
        head_dim: usize,
    },
    /// Tensors of one block pinned to different pipeline stages.
    #[error(
        "strategy `{strategy}`: `{tensor}` is on {pin} but `{other}` is on {other_pin}: {reason}"
    )]
    #[diagnostic(
        code(shardplan::model::stages),
        help(
            "pin all tensors of a layer (and the final norm with the output projection) to the same stage"
        )
    )]
    Stages {
        /// Strategy name.
        strategy: String,
        /// Tensor name.
        tensor: String,
        /// Its pins, `pp=1`.
        pin: String,
        /// The tensor it conflicts with.
        other: String,
        /// That tensor's pins.
        other_pin: String,
        /// What is wrong.
        reason: String,
    },
    /// A shard store that does not hold what the strategy assigns.
    #[error("store: tensor `{tensor}`, rank {rank}: {reason}")]
    #[diagnostic(
        code(shardplan::model::store),
        help("run the model with a store built for the same strategy")
    )]
    Store {
        /// Tensor name.
        tensor: String,
        /// Rank.
        rank: u64,
        /// What is wrong.
        reason: String,
    },
    /// Planning the transfer failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),
    /// The plan did not verify.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Verify(#[from] PlanDefect),
    /// Executing the plan failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Exec(#[from] ExecError),
    /// Sharded and single-device logits differ beyond the tolerance.
    #[error(
        "logits differ by up to {max_abs_err:e} (relative {max_rel_err:e}, tolerance {tolerance:e}) at token {row}, vocabulary entry {column}"
    )]
    #[diagnostic(
        code(shardplan::model::tolerance),
        help(
            "summation order alone stays far below the tolerance; a weight is misplaced or the layout is computed wrongly"
        )
    )]
    Tolerance {
        /// Largest absolute difference.
        max_abs_err: f32,
        /// It, relative to the largest single-device logit magnitude.
        max_rel_err: f32,
        /// The tolerance.
        tolerance: f32,
        /// Token (row of the logits) of the largest difference.
        row: usize,
        /// Vocabulary entry of the largest difference.
        column: usize,
    },
}

// ---------------------------------------------------------------------------
// Weights

/// splitmix64: a small, well-mixed generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-a, a)`.
    fn uniform(&mut self, a: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * a
    }
}

/// FNV-1a of a name: each tensor draws from its own stream.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Full f32 tensors of a model, generated deterministically from a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    config: ModelConfig,
    tensors: BTreeMap<String, Vec<f32>>,
}

impl Weights {
    /// Weights for `config` from `seed`. Each tensor draws from a stream of
    /// its own (seeded by `seed` and its name): the embedding uniform in
    /// [-1, 1], norm weights in [0.9, 1.1], a matmul weight `[out, in]`
    /// uniform in ±1/√in (so activations stay of order 1).
    ///
    /// # Errors
    ///
    /// [`ModelError::Config`] when `config` does not validate.
    pub fn generate(config: &ModelConfig, seed: u64) -> Result<Self, ModelError> {
        config.validate()?;
        let mut tensors = BTreeMap::new();
        for t in config.tensors() {
            let mut rng = Rng(seed ^ name_hash(&t.name));
            let n: u64 = t.shape.iter().product();
            let data: Vec<f32> = if t.shape.len() == 1 {
                (0..n).map(|_| 1.0 + rng.uniform(0.1)).collect()
            } else if t.name == EMBED {
                (0..n).map(|_| rng.uniform(1.0)).collect()
            } else {
                let a = 1.0 / (t.shape[1] as f32).sqrt();
                (0..n).map(|_| rng.uniform(a)).collect()
            };
            tensors.insert(t.name, data);
        }
        Ok(Weights {
            config: *config,
            tensors,
        })
    }

    /// The sizes.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The full tensor `name`, row-major.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors.get(name).map(Vec::as_slice)
    }

    fn need(&self, name: &str) -> &[f32] {
        self.get(name)
            .expect("generated weights hold every tensor of their config")
    }

    /// A store for `strategy` whose every buffer holds the slice of these
    /// weights its layout assigns (`ShardStore::zeroed`, then each rank's
    /// `region_of` box copied in). For a layout with partial-sum axes, the
    /// rank at coordinate 0 of those axes holds the values and the others
    /// zeros, so the terms sum to the weights exactly.
    ///
    /// # Errors
    ///
    /// [`ModelError::MissingTensor`] for a tensor of the strategy that is
    /// not a tensor of the model, [`ModelError::Shape`] or
    /// [`ModelError::DType`] when it disagrees with the model.
    pub fn to_store(&self, strategy: &Strategy) -> Result<ShardStore, ModelError> {
        let mut store = ShardStore::zeroed(strategy);
        for (t, (info, layout)) in strategy
            .tensors()
            .iter()
            .zip(strategy.layouts())
            .enumerate()
        {
            let full = self
                .get(&info.name)
                .ok_or_else(|| ModelError::MissingTensor {
                    tensor: info.name.clone(),
                    place: "the model's weights".into(),
                })?;
            let shape = self
                .config
                .tensors()
                .into_iter()
                .find(|x| x.name == info.name)
                .map(|x| x.shape)
                .expect("weights and config list the same tensors");
            if info.shape != shape {
                return Err(ModelError::Shape {
                    tensor: info.name.clone(),
                    expected: shape,
                    found: info.shape.clone(),
                });
            }
            if info.dtype != DType::F32 {
                return Err(ModelError::DType {
                    tensor: info.name.clone(),
                    dtype: info.dtype,
                });
            }
            for rank in 0..strategy.mesh().rank_count() {
                let Some(region) = layout.region_of(rank) else {
                    continue;
                };
                let coords = layout.mesh().coords(rank).expect("rank of the mesh");
                if layout.partial().iter().any(|&a| coords[a] != 0) {
                    continue; // a zero term
                }
                let bytes: Vec<u8> = extract(full, &shape, &region)
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                let buf = store
                    .buffer_mut(t, rank)
                    .expect("zeroed store has a buffer wherever a region is");
                buf.copy_from_slice(&bytes);
            }
        }
        Ok(store)
    }
}

/// The elements of `region` of the row-major tensor `full` of `shape`.
fn extract(full: &[f32], shape: &[u64], region: &Region) -> Vec<f32> {
    let mut out = Vec::with_capacity(region.volume() as usize);
    if region.is_empty() {
        return out;
    }
    let n = shape.len();
    let mut idx = region.offset().to_vec();
    loop {
        let flat = shape.iter().zip(&idx).fold(0u64, |acc, (s, i)| acc * s + i);
        out.push(full[flat as usize]);
        let mut k = n;
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < region.end(k) {
                break;
            }
            idx[k] = region.offset()[k];
        }
    }
}

// ---------------------------------------------------------------------------
// Kernels, shared by both forwards so that a single-rank run is bitwise equal.

/// `x [rows, inp] @ w[out, inp]^T`, each dot product summed in order.
fn linear(x: &[f32], rows: usize, inp: usize, w: &[f32], out: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * out];
    for r in 0..rows {
        let xr = &x[r * inp..(r + 1) * inp];
        for o in 0..out {
            let wo = &w[o * inp..(o + 1) * inp];
            let mut acc = 0.0f32;
            for (a, b) in xr.iter().zip(wo) {
                acc += a * b;
            }
            y[r * out + o] = acc;
        }
    }
    y
}

/// RMSNorm of each row of `x [rows, dim]`, scaled by `w`.
fn rmsnorm(x: &[f32], dim: usize, w: &[f32]) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
        let mut ss = 0.0f32;
        for v in row {
            ss += v * v;
        }
        let inv = 1.0 / (ss / dim as f32 + RMS_EPS).sqrt();
        y.extend(row.iter().zip(w).map(|(v, g)| v * inv * g));
    }
    y
}

/// Rotary embedding (rotate-half convention) of every head of `x [rows,
/// heads * head_dim]`, row `r` at position `pos[r]`.
fn rope(x: &mut [f32], heads: usize, head_dim: usize, pos: &[usize]) {
    if heads == 0 {
        return;
    }
    let half = head_dim / 2;
    for (r, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let inv_freq = ROPE_THETA.powf(-((2 * i) as f64) / head_dim as f64);
                let angle = pos[r] as f64 * inv_freq;
                let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos - b * sin;
                head[i + half] = b * cos + a * sin;
            }
        }
    }
}

/// Causal attention within each sequence. `q [rows, heads * d]`, `k` and
/// `v [rows, kv_heads * d]`; query head `h` reads kv head
/// `h / (heads / kv_heads)`. Returns `[rows, heads * d]`.
#[allow(clippy::too_many_arguments)]
fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    seqs: &[Range<usize>],
) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * heads * d];
    if heads == 0 {
        return out;
    }
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let (qw, kw) = (heads * d, kv_heads * d);
    let mut scores = Vec::new();
    for seq in seqs {
        for i in seq.clone() {
            for h in 0..heads {
                let kh = h / group;
                let qi = &q[i * qw + h * d..i * qw + (h + 1) * d];
                scores.clear();
                for j in seq.start..=i {
                    let kj = &k[j * kw + kh * d..j * kw + (kh + 1) * d];
                    let mut s = 0.0f32;
                    for (a, b) in qi.iter().zip(kj) {
                        s += a * b;
                    }
                    scores.push(s * scale);
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let o = &mut out[i * qw + h * d..i * qw + (h + 1) * d];
                for (p, j) in scores.iter().zip(seq.start..=i) {
                    let w = p / sum;
                    let vj = &v[j * kw + kh * d..j * kw + (kh + 1) * d];
                    for (ot, vt) in o.iter_mut().zip(vj) {
                        *ot += w * vt;
                    }
                }
            }
        }
    }
    out
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `silu(g) * u`, elementwise.
fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter().zip(u).map(|(g, u)| silu(*g) * u).collect()
}

/// Columns `lo..hi` of `x [rows, width]`.
fn columns(x: &[f32], width: usize, lo: usize, hi: usize) -> Vec<f32> {
    x.chunks_exact(width)
        .flat_map(|row| row[lo..hi].iter().copied())
        .collect()
}

/// Writes `part [rows, w]` into columns `lo..lo + w` of `x [rows, width]`.
fn put_columns(x: &mut [f32], width: usize, lo: usize, part: &[f32], w: usize) {
    if w == 0 {
        return;
    }
    for (row, p) in x.chunks_exact_mut(width).zip(part.chunks_exact(w)) {
        row[lo..lo + w].copy_from_slice(p);
    }
}

/// Adds `part` into `acc`, or starts `acc` with it: a sum over ranks that
/// starts from the first rank's value, not from zero.
fn all_reduce(acc: &mut Option<Vec<f32>>, part: Vec<f32>) {
    match acc {
        None => *acc = Some(part),
        Some(a) => a.iter_mut().zip(&part).for_each(|(a, p)| *a += p),
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// A batch flattened: token ids, each sequence's rows, positions.
struct Batch {
    ids: Vec<usize>,
    seqs: Vec<Range<usize>>,
    pos: Vec<usize>,
}

impl Batch {
    fn new(tokens: &[Vec<u32>], vocab: usize) -> Result<Self, ModelError> {
        let mut b = Batch {
            ids: Vec::new(),
            seqs: Vec::new(),
            pos: Vec::new(),
        };
        for (s, seq) in tokens.iter().enumerate() {
            let start = b.ids.len();
            for (p, &tok) in seq.iter().enumerate() {
                if !((tok as usize) < vocab) {
                    return Err(ModelError::Token {
                        sequence: s,
                        position: p,
                        token: tok,
                        vocab,
                    });
                }
                b.ids.push(tok as usize);
                b.pos.push(p);
            }
            b.seqs.push(start..b.ids.len());
        }
        Ok(b)
    }

    fn rows(&self) -> usize {
        self.ids.len()
    }
}

/// The single-device reference forward. `tokens` is a batch of sequences
/// (of any lengths; each attends causally within itself). Returns the
/// logits `[total tokens, vocab]`, row-major, sequences one after another.
///
/// # Errors
///
/// [`ModelError::Token`] for an id outside the vocabulary.
pub fn forward_single(weights: &Weights, tokens: &[Vec<u32>]) -> Result<Vec<f32>, ModelError> {
    let c = &weights.config;
    let b = Batch::new(tokens, c.vocab)?;
    let (n, hd) = (b.rows(), c.hidden);
    let embed = weights.need(EMBED);
    let mut x: Vec<f32> = b
        .ids
        .iter()
        .flat_map(|&t| embed[t * hd..(t + 1) * hd].iter().copied())
        .collect();
    let (qn, kvn) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    for i in 0..c.layers {
        let w = |part: &str| weights.need(&layer_tensor(i, part));
        let h = rmsnorm(&x, hd, w("input_layernorm.weight"));
        let mut q = linear(&h, n, hd, w("self_attn.q_proj.weight"), qn);
        let mut k = linear(&h, n, hd, w("self_attn.k_proj.weight"), kvn);
        let v = linear(&h, n, hd, w("self_attn.v_proj.weight"), kvn);
        rope(&mut q, c.heads, c.head_dim, &b.pos);
        rope(&mut k, c.kv_heads, c.head_dim, &b.pos);
        let a = attention(&q, &k, &v, n, c.heads, c.kv_heads, c.head_dim, &b.seqs);
        let o = linear(&a, n, qn, w("self_attn.o_proj.weight"), hd);
        add_into(&mut x, &o);
        let h = rmsnorm(&x, hd, w("post_attention_layernorm.weight"));
        let g = linear(&h, n, hd, w("mlp.gate_proj.weight"), c.intermediate);
        let u = linear(&h, n, hd, w("mlp.up_proj.weight"), c.intermediate);
        let d = linear(
            &swiglu(&g, &u),
            n,
            c.intermediate,
            w("mlp.down_proj.weight"),
            hd,
        );
        add_into(&mut x, &d);
    }
    let h = rmsnorm(&x, hd, weights.need(FINAL_NORM));
    Ok(linear(&h, n, hd, weights.need(c.head_tensor()), c.vocab))
}

// ---------------------------------------------------------------------------
// Layout analysis

/// The ranks that compute each block, found by [`check_layout`].
struct Schedule {
    /// Embedding ranks and the dimension they split (none when whole).
    embed: (Vec<u64>, Option<usize>),
    /// Per layer: attention ranks, MLP ranks.
    layers: Vec<(Vec<u64>, Vec<u64>)>,
    /// Final norm and output projection ranks, and the dimension of the
    /// projection they split.
    head: (Vec<u64>, Option<usize>),
}

struct Checker<'a> {
    config: &'a ModelConfig,
    s: &'a Strategy,
}

fn axis_names(l: &TensorLayout, axes: &[usize]) -> String {
    let names: Vec<&str> = axes.iter().map(|&a| l.axis_name(a)).collect();
    match names.len() {
        1 => names[0].to_string(),
        _ => format!("({})", names.join(", ")),
    }
}

fn pin_text(l: &TensorLayout) -> String {
    if l.pin().is_empty() {
        return "every stage".into();
    }
    l.pin_text()
}

/// Rows (dim 0) of `r`, as a range.
fn span(r: &Region, d: usize) -> Range<u64> {
    r.offset()[d]..r.end(d)
}

fn range_text(r: &Range<u64>) -> String {
    format!("{}..{}", r.start, r.end)
}

impl<'a> Checker<'a> {
    fn layout(&self, name: &str) -> Result<&'a TensorLayout, ModelError> {
        let info = self
            .s
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: name.to_string(),
                place: format!("strategy `{}`", self.s.name()),
            })?;
        if info.dtype != DType::F32 {
            return Err(ModelError::DType {
                tensor: name.to_string(),
                dtype: info.dtype,
            });
        }
        let l = self.s.layout(name).expect("a tensor of the strategy");
        let unsupported = |reason: String| ModelError::UnsupportedLayout {
            strategy: self.s.name().to_string(),
            tensor: name.to_string(),
            layout: l.to_string(),
            reason,
        };
        if l.is_explicit() {
            return Err(unsupported(
                "the layout is given box by box; the model reads splits by mesh axis".to_string(),
            ));
        }
        if l.mesh().axes() != self.s.mesh().axes() {
            return Err(unsupported(format!(
                "the layout is on mesh {}, not on the strategy's mesh {}; the model reads axes by name from one mesh",
                l.mesh(),
                self.s.mesh()
            )));
        }
        if !l.partial().is_empty() {
            return Err(unsupported(format!(
                "holds partial sums over {}; the model needs reduced weights",
                axis_names(l, l.partial())
            )));
        }
        let split: Vec<usize> = (0..l.dims().len())
            .filter(|&d| !l.dims()[d].axes().is_empty())
            .collect();
        if split.len() > 1 {
            let parts: Vec<String> = split
                .iter()
                .map(|&d| format!("dimension {d} over {}", axis_names(l, l.dims()[d].axes())))
                .collect();
            return Err(unsupported(format!(
                "split in both dimensions ({}); a weight may be split along one dimension only",
                parts.join(", ")
            )));
        }
        Ok(l)
    }

    fn whole(&self, name: &str) -> Result<&'a TensorLayout, ModelError> {
        let l = self.layout(name)?;
        if let Some(d) = l.dims().iter().find(|d| !d.axes().is_empty()) {
            return Err(ModelError::UnsupportedLayout {
                strategy: self.s.name().to_string(),
                tensor: name.to_string(),
                layout: l.to_string(),
                reason: format!(
                    "split over {}; a norm weight must be whole on every rank that uses it",
                    axis_names(l, d.axes())
                ),
            });
        }
        Ok(l)
    }

    /// The stage the block of `names` runs on: on each pinned axis, the
    /// first coordinate every tensor pinning that axis is on (a tensor on
    /// several stages, such as a tied embedding, joins the block's stage).
    fn stage(&self, names: &[String], reason: &str) -> Result<Vec<(usize, u64)>, ModelError> {
        // Per axis: the coordinates still shared, and the tensor that
        // narrowed them last (for the error).
        let mut pins: BTreeMap<usize, (Vec<u64>, &str)> = BTreeMap::new();
        for name in names {
            let l = self.layout(name)?;
            for run in l.pin().chunk_by(|x, y| x.0 == y.0) {
                let a = run[0].0;
                let mine: Vec<u64> = run.iter().map(|&(_, c)| c).collect();
                match pins.get_mut(&a) {
                    Some((common, first)) => {
                        let kept: Vec<u64> = common
                            .iter()
                            .copied()
                            .filter(|c| mine.contains(c))
                            .collect();
                        if kept.is_empty() {
                            let other = self.s.layout(first).expect("checked");
                            return Err(ModelError::Stages {
                                strategy: self.s.name().to_string(),
                                tensor: name.clone(),
                                pin: pin_text(l),
                                other: first.to_string(),
                                other_pin: pin_text(other),
                                reason: reason.to_string(),
                            });
                        }
                        *common = kept;
                        *first = name;
                    }
                    None => {
                        pins.insert(a, (mine, name));
                    }
                }
            }
        }
        Ok(pins.into_iter().map(|(a, (c, _))| (a, c[0])).collect())
    }

    /// The ranks of one replica of a block: pinned axes at the stage,
    /// `axes` ranging over all positions (block order), every other axis
    /// at 0. Every tensor of `names` must be on each of them.
    fn group(
        &self,
        stage: &[(usize, u64)],
        axes: &[usize],
        lead: &str,
        names: &[String],
    ) -> Result<Vec<u64>, ModelError> {
        let mesh = self.s.mesh();
        let lead_layout = self.layout(lead)?;
        if let Some(&(a, c)) = stage.iter().find(|(a, _)| axes.contains(a)) {
            let other = names
                .iter()
                .find(|n| {
                    self.s
                        .layout(n)
                        .is_some_and(|l| l.pin().iter().any(|&(p, _)| p == a))
                })
                .cloned()
                .unwrap_or_default();
            return Err(ModelError::Stages {
                strategy: self.s.name().to_string(),
                tensor: lead.to_string(),
                pin: format!("every position of {}", lead_layout.axis_name(a)),
                other,
                other_pin: format!("{}={c}", lead_layout.axis_name(a)),
                reason: "a block cannot split over the axis that pins it to a stage".into(),
            });
        }
        let count: u64 = axes.iter().map(|&a| mesh.axis_size(a)).product();
        let mut ranks = Vec::with_capacity(count as usize);
        for block in 0..count {
            let mut coords = vec![0u64; mesh.axes().len()];
            for &(a, c) in stage {
                coords[a] = c;
            }
            let mut b = block;
            for &a in axes.iter().rev() {
                coords[a] = b % mesh.axis_size(a);
                b /= mesh.axis_size(a);
            }
            let rank = mesh.rank_of(&coords).expect("coordinates inside the mesh");
            for name in names {
                let l = self.layout(name)?;
                if !l.holds(rank) {
                    return Err(ModelError::Stages {
                        strategy: self.s.name().to_string(),
                        tensor: name.clone(),
                        pin: pin_text(l),
                        other: lead.to_string(),
                        other_pin: format!("rank {rank}"),
                        reason: "the block's rank does not hold the tensor".into(),
                    });
                }
            }
            ranks.push(rank);
        }
        Ok(ranks)
    }

    fn inconsistent(&self, tensor: &str, other: &str, reason: String) -> ModelError {
        ModelError::InconsistentSplit {
            strategy: self.s.name().to_string(),
            tensor: tensor.to_string(),
            layout: self
                .s
                .layout(tensor)
                .map(|l| l.to_string())
                .unwrap_or_default(),
            other: other.to_string(),
            other_layout: self
                .s
                .layout(other)
                .map(|l| l.to_string())
                .unwrap_or_default(),
            reason,
        }
    }

    fn describe(l: &TensorLayout) -> String {
        match l.dims().iter().position(|d| !d.axes().is_empty()) {
            None => "whole".into(),
            Some(0) => format!("split by rows over {}", axis_names(l, l.dims()[0].axes())),
            Some(d) => format!(
                "split by columns over {}",
                axis_names(l, l.dims()[d].axes())
            ),
        }
    }

    fn head_rows(&self, name: &str, rank: u64) -> Result<Range<u64>, ModelError> {
        let l = self.s.layout(name).expect("checked");
        let rows = span(&l.region_of(rank).expect("held"), 0);
        let hd = self.config.head_dim as u64;
        if !rows.start.is_multiple_of(hd) || !rows.end.is_multiple_of(hd) {
            return Err(ModelError::HeadSplit {
                strategy: self.s.name().to_string(),
                tensor: name.to_string(),
                layout: l.to_string(),
                rank,
                rows: range_text(&rows),
                head_dim: self.config.head_dim,
            });
        }
        Ok(rows.start / hd..rows.end / hd)
    }

    fn attention(&self, i: usize, stage: &[(usize, u64)]) -> Result<Vec<u64>, ModelError> {
        let [norm, q, k, v, o] = [
            "input_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
        ]
        .map(|p| layer_tensor(i, p));
        self.whole(&norm)?;
        let lq = self.layout(&q)?;
        if !lq.dims()[1].axes().is_empty() {
            return Err(ModelError::UnsupportedLayout {
                strategy: self.s.name().to_string(),
                tensor: q.clone(),
                layout: lq.to_string(),
                reason: format!(
                    "split by columns (its input) over {}; q, k and v may split only their rows, by whole heads",
                    axis_names(lq, lq.dims()[1].axes())
                ),
            });
        }
        let axes = lq.dims()[0].axes();
        let q_how = Self::describe(lq);
        for t in [&k, &v] {
            let l = self.layout(t)?;
            if !l.dims()[1].axes().is_empty() || l.dims()[0].axes() != axes {
                return Err(self.inconsistent(
                    t,
                    &q,
                    format!(
                        "it is {} but q is {q_how}; q, k and v must split their rows (heads) over the same axes, so that each rank holds the keys and values of its query heads",
                        Self::describe(l)
                    ),
                ));
            }
        }
        let lo = self.layout(&o)?;
        if !lo.dims()[0].axes().is_empty() {
            return Err(self.inconsistent(
                &o,
                &q,
                format!(
                    "o_proj is split by rows (column-parallel) over {}; its columns (input, the heads) must be split like the rows of q ({q_how}) so that each rank multiplies its own heads and the results are summed",
                    axis_names(lo, lo.dims()[0].axes())
                ),
            ));
        }
        if lo.dims()[1].axes() != axes {
            return Err(self.inconsistent(
                &o,
                &q,
                format!(
                    "o_proj is {} but q is {q_how}; the columns of o must be split over the axes that split the heads",
                    Self::describe(lo)
                ),
            ));
        }
        let names = [norm, q.clone(), k.clone(), v.clone(), o.clone()];
        let ranks = self.group(stage, axes, &q, &names)?;
        let group = (self.config.heads / self.config.kv_heads.max(1)) as u64;
        for &r in &ranks {
            let qh = self.head_rows(&q, r)?;
            for t in [&k, &v] {
                let kh = self.head_rows(t, r)?;
                if qh.start != kh.start * group || qh.end != kh.end * group {
                    return Err(self.inconsistent(
                        t,
                        &q,
                        format!(
                            "rank {r} holds q heads {} but k/v heads {}, which serve q heads {}..{}",
                            range_text(&qh),
                            range_text(&kh),
                            kh.start * group,
                            kh.end * group
                        ),
                    ));
                }
            }
            let q_rows = span(&lq.region_of(r).expect("held"), 0);
            let o_cols = span(&lo.region_of(r).expect("held"), 1);
            if o_cols != q_rows {
                return Err(self.inconsistent(
                    &o,
                    &q,
                    format!(
                        "rank {r} holds columns {} of o_proj but rows {} of q; they must be the same heads",
                        range_text(&o_cols),
                        range_text(&q_rows)
                    ),
                ));
            }
        }
        Ok(ranks)
    }

    fn mlp(&self, i: usize, stage: &[(usize, u64)]) -> Result<Vec<u64>, ModelError> {
        let [norm, gate, up, down] = [
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ]
        .map(|p| layer_tensor(i, p));
        self.whole(&norm)?;
        let lg = self.layout(&gate)?;
        if !lg.dims()[1].axes().is_empty() {
            return Err(ModelError::UnsupportedLayout {
                strategy: self.s.name().to_string(),
                tensor: gate.clone(),
                layout: lg.to_string(),
                reason: format!(
                    "split by columns (its input) over {}; gate and up may split only their rows",
                    axis_names(lg, lg.dims()[1].axes())
                ),
            });
        }
        let axes = lg.dims()[0].axes();
        let g_how = Self::describe(lg);
        let lu = self.layout(&up)?;
        if !lu.dims()[1].axes().is_empty() || lu.dims()[0].axes() != axes {
            return Err(self.inconsistent(
                &up,
                &gate,
                format!(
                    "it is {} but gate is {g_how}; gate and up must split their rows over the same axes",
                    Self::describe(lu)
                ),
            ));
        }
        let ld = self.layout(&down)?;
        if !ld.dims()[0].axes().is_empty() || ld.dims()[1].axes() != axes {
            return Err(self.inconsistent(
                &down,
                &gate,
                format!(
                    "down_proj is {} but gate is {g_how}; the columns (input) of down must be split over the axes that split the rows of gate and up",
                    Self::describe(ld)
                ),
            ));
        }
        let names = [norm, gate.clone(), up.clone(), down.clone()];
        let ranks = self.group(stage, axes, &gate, &names)?;
        for &r in &ranks {
            let g_rows = span(&lg.region_of(r).expect("held"), 0);
            let u_rows = span(&lu.region_of(r).expect("held"), 0);
            let d_cols = span(&ld.region_of(r).expect("held"), 1);
            if u_rows != g_rows {
                return Err(self.inconsistent(
                    &up,
                    &gate,
                    format!(
                        "rank {r} holds rows {} of up but rows {} of gate",
                        range_text(&u_rows),
                        range_text(&g_rows)
                    ),
                ));
            }
            if d_cols != g_rows {
                return Err(self.inconsistent(
                    &down,
                    &gate,
                    format!(
                        "rank {r} holds columns {} of down_proj but rows {} of gate and up",
                        range_text(&d_cols),
                        range_text(&g_rows)
                    ),
                ));
            }
        }
        Ok(ranks)
    }

    /// The one split dimension of `name` (if any) and its axes.
    fn split_axes(&self, name: &str) -> Result<(Option<usize>, &'a [usize]), ModelError> {
        let l = self.layout(name)?;
        Ok(match l.dims().iter().position(|d| !d.axes().is_empty()) {
            Some(d) => (Some(d), l.dims()[d].axes()),
            None => (None, &[]),
        })
    }

    fn run(&self) -> Result<Schedule, ModelError> {
        self.config.validate()?;
        for want in self.config.tensors() {
            let info = self
                .s
                .tensor(&want.name)
                .ok_or_else(|| ModelError::MissingTensor {
                    tensor: want.name.clone(),
                    place: format!("strategy `{}`", self.s.name()),
                })?;
            if info.shape != want.shape {
                return Err(ModelError::Shape {
                    tensor: want.name,
                    expected: want.shape,
                    found: info.shape.clone(),
                });
            }
        }
        let embed_names = [EMBED.to_string()];
        let embed_stage = self.stage(&embed_names, "")?;
        let (embed_dim, embed_axes) = self.split_axes(EMBED)?;
        let embed = (
            self.group(&embed_stage, embed_axes, EMBED, &embed_names)?,
            embed_dim,
        );
        let mut layers = Vec::with_capacity(self.config.layers);
        for i in 0..self.config.layers {
            let names: Vec<String> = LAYER_PARTS.iter().map(|p| layer_tensor(i, p)).collect();
            // Every tensor is checked on its own before the stage is taken.
            for n in &names {
                self.layout(n)?;
            }
            let stage = self.stage(
                &names,
                "the tensors of one layer must be on one pipeline stage",
            )?;
            layers.push((self.attention(i, &stage)?, self.mlp(i, &stage)?));
        }
        // With tied weights the embedding is the output projection too: it
        // must also be on the final norm's stage.
        let head_tensor = self.config.head_tensor();
        let head_names = [FINAL_NORM.to_string(), head_tensor.to_string()];
        self.whole(FINAL_NORM)?;
        self.layout(head_tensor)?;
        let head_stage = self.stage(
            &head_names,
            "the final norm and the output projection must be on one pipeline stage",
        )?;
        let (head_dim, head_axes) = self.split_axes(head_tensor)?;
        let head = (
            self.group(&head_stage, head_axes, head_tensor, &head_names)?,
            head_dim,
        );
        Ok(Schedule {
            embed,
            layers,
            head,
        })
    }
}

/// Checks that `strategy` lays out the model of `config` in a way
/// [`forward_sharded`] can compute correctly (see the module
/// documentation), without computing anything.
///
/// # Errors
///
/// The first problem found, in model order: [`ModelError::MissingTensor`],
/// [`ModelError::Shape`], [`ModelError::DType`],
/// [`ModelError::UnsupportedLayout`], [`ModelError::InconsistentSplit`],
/// [`ModelError::HeadSplit`] or [`ModelError::Stages`], naming the tensor.
pub fn check_layout(config: &ModelConfig, strategy: &Strategy) -> Result<(), ModelError> {
    Checker {
        config,
        s: strategy,
    }
    .run()
    .map(|_| ())
}

// ---------------------------------------------------------------------------
// Sharded forward

/// Reads rank-local shards out of a store, checked against the strategy.
struct Shards<'a> {
    s: &'a Strategy,
    store: &'a ShardStore,
}

impl Shards<'_> {
    /// The box rank `rank` holds of `name` and its values.
    fn local(&self, name: &str, rank: u64) -> Result<(Region, Vec<f32>), ModelError> {
        let err = |reason: String| ModelError::Store {
            tensor: name.to_string(),
            rank,
            reason,
        };
        let t = self
            .store
            .tensor_index(name)
            .ok_or_else(|| err("the store has no such tensor".into()))?;
        let want = self
            .s
            .layout(name)
            .and_then(|l| l.region_of(rank))
            .ok_or_else(|| err("the strategy assigns the rank nothing".into()))?;
        match self.store.region(t, rank) {
            Some(r) if *r == want => {}
            other => {
                return Err(err(format!(
                    "the store holds {}, the strategy assigns {want}",
                    other.map_or("nothing".to_string(), |r| r.to_string())
                )));
            }
        }
        let buf = self
            .store
            .buffer(t, rank)
            .ok_or_else(|| err("no buffer".into()))?;
        if buf.len() as u64 != want.volume() * 4 {
            return Err(err(format!(
                "the buffer has {} bytes for {} f32 elements",
                buf.len(),
                want.volume()
            )));
        }
        let values = buf
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((want, values))
    }

    fn layer(&self, i: usize, part: &str, rank: u64) -> Result<(Region, Vec<f32>), ModelError> {
        self.local(&layer_tensor(i, part), rank)
    }
}

/// Runs the model from the shards `store` holds for `strategy`, simulating
/// the ranks one after another (see the module documentation for the
/// supported layouts). Returns the logits as [`forward_single`] does.
///
/// # Errors
///
/// Whatever [`check_layout`] finds, before any arithmetic;
/// [`ModelError::Store`] when the store does not hold what the strategy
/// assigns; [`ModelError::Token`] for an id outside the vocabulary.
pub fn forward_sharded(
    config: &ModelConfig,
    strategy: &Strategy,
    store: &ShardStore,
    tokens: &[Vec<u32>],
) -> Result<Vec<f32>, ModelError> {
    let schedule = Checker {
        config,
        s: strategy,
    }
    .run()?;
    let b = Batch::new(tokens, config.vocab)?;
    let sh = Shards { s: strategy, store };
    let (n, hd, d) = (b.rows(), config.hidden, config.head_dim);

    // Embedding: rows (vocabulary-parallel: masked lookup, all-reduce),
    // columns (hidden slices, all-gather) or whole.
    let (embed_ranks, embed_split) = &schedule.embed;
    let mut acc = None;
    let mut gathered = vec![0.0f32; n * hd];
    for &r in embed_ranks {
        let (reg, w) = sh.local(EMBED, r)?;
        let (rows, cols) = (span(&reg, 0), span(&reg, 1));
        let width = (cols.end - cols.start) as usize;
        let mut part = vec![0.0f32; n * width];
        if width > 0 {
            for (row, &t) in part.chunks_exact_mut(width).zip(&b.ids) {
                if rows.contains(&(t as u64)) {
                    let lt = t - rows.start as usize;
                    row.copy_from_slice(&w[lt * width..(lt + 1) * width]);
                }
            }
        }
        if *embed_split == Some(1) {
            put_columns(&mut gathered, hd, cols.start as usize, &part, width);
        } else {
            all_reduce(&mut acc, part);
        }
    }
    let mut x = match embed_split {
        Some(1) => gathered,
        _ => acc.expect("a block has at least one rank"),
    };

    for (i, (attn_ranks, mlp_ranks)) in schedule.layers.iter().enumerate() {
        // Attention: each rank on its own heads; o outputs all-reduced.
        let mut acc = None;
        for &r in attn_ranks {
            let (_, norm) = sh.layer(i, "input_layernorm.weight", r)?;
            let h = rmsnorm(&x, hd, &norm);
            let (qr, wq) = sh.layer(i, "self_attn.q_proj.weight", r)?;
            let (kr, wk) = sh.layer(i, "self_attn.k_proj.weight", r)?;
            let (_, wv) = sh.layer(i, "self_attn.v_proj.weight", r)?;
            let (or, wo) = sh.layer(i, "self_attn.o_proj.weight", r)?;
            let (qn, kvn) = (qr.extent()[0] as usize, kr.extent()[0] as usize);
            let mut q = linear(&h, n, hd, &wq, qn);
            let mut k = linear(&h, n, hd, &wk, kvn);
            let v = linear(&h, n, hd, &wv, kvn);
            rope(&mut q, qn / d, d, &b.pos);
            rope(&mut k, kvn / d, d, &b.pos);
            let a = attention(&q, &k, &v, n, qn / d, kvn / d, d, &b.seqs);
            let o_in = or.extent()[1] as usize;
            all_reduce(&mut acc, linear(&a, n, o_in, &wo, hd));
        }
        add_into(&mut x, &acc.expect("a block has at least one rank"));

        // MLP: each rank on its slice of the inner dimension; all-reduce.
        let mut acc = None;
        for &r in mlp_ranks {
            let (_, norm) = sh.layer(i, "post_attention_layernorm.weight", r)?;
            let h = rmsnorm(&x, hd, &norm);
            let (gr, wg) = sh.layer(i, "mlp.gate_proj.weight", r)?;
            let (_, wu) = sh.layer(i, "mlp.up_proj.weight", r)?;
            let (_, wd) = sh.layer(i, "mlp.down_proj.weight", r)?;
            let m = gr.extent()[0] as usize;
            let g = linear(&h, n, hd, &wg, m);
            let u = linear(&h, n, hd, &wu, m);
            all_reduce(&mut acc, linear(&swiglu(&g, &u), n, m, &wd, hd));
        }
        add_into(&mut x, &acc.expect("a block has at least one rank"));
    }

    // Final norm and output projection: rows (vocabulary slices,
    // all-gather), columns (partial logits, all-reduce) or whole.
    let (head_ranks, head_split) = &schedule.head;
    let mut acc = None;
    let mut gathered = vec![0.0f32; n * config.vocab];
    for &r in head_ranks {
        let (_, norm) = sh.local(FINAL_NORM, r)?;
        let h = rmsnorm(&x, hd, &norm);
        let (reg, w) = sh.local(config.head_tensor(), r)?;
        let (rows, cols) = (span(&reg, 0), span(&reg, 1));
        let (vr, width) = (
            (rows.end - rows.start) as usize,
            (cols.end - cols.start) as usize,
        );
        match head_split {
            Some(0) => {
                let part = linear(&h, n, hd, &w, vr);
                put_columns(&mut gathered, config.vocab, rows.start as usize, &part, vr);
            }
            Some(_) => {
                let hs = columns(&h, hd, cols.start as usize, cols.end as usize);
                all_reduce(&mut acc, linear(&hs, n, width, &w, vr));
            }
            None => all_reduce(&mut acc, linear(&h, n, hd, &w, vr)),
        }
    }
    Ok(match head_split {
        Some(0) => gathered,
        _ => acc.expect("a block has at least one rank"),
    })
}

// ---------------------------------------------------------------------------
// The end-to-end check

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
    fn config_from_tensors() {
        let c = ModelConfig::tiny();
        assert_eq!(ModelConfig::from_tensors(&c.tensors(), 8).unwrap(), c);
        assert!(matches!(
            ModelConfig::from_tensors(&c.tensors(), 3),
            Err(ModelError::Config { .. })
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

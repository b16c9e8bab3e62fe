//! The model's sizes and tensor names.

use std::collections::BTreeMap;

use super::*;
use crate::dtype::DType;
use crate::strategy::TensorInfo;

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
pub(super) const LAYER_PARTS: [&str; 9] = [
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
                    fault: ConfigFault::TooFewDimensions {
                        tensor: t.name.clone(),
                        shape: t.shape.clone(),
                    },
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
                    fault: ConfigFault::ZeroHeadDim,
                });
            }
            let q = dim(get(&layer_tensor(0, "self_attn.q_proj.weight"))?, 0)?;
            let k = dim(get(&layer_tensor(0, "self_attn.k_proj.weight"))?, 0)?;
            for (what, rows) in [("q_proj", q), ("k_proj", k)] {
                if !rows.is_multiple_of(head_dim) {
                    return Err(ModelError::Config {
                        fault: ConfigFault::HeadRows {
                            projection: what,
                            rows,
                            head_dim,
                        },
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
        let bad = |fault: ConfigFault| Err(ModelError::Config { fault });
        if self.vocab == 0 || self.hidden == 0 {
            return bad(ConfigFault::ZeroSize {
                vocab: self.vocab,
                hidden: self.hidden,
            });
        }
        if self.layers > 0 {
            if self.heads == 0 || self.kv_heads == 0 || self.head_dim == 0 {
                return bad(ConfigFault::ZeroHeads);
            }
            if !self.heads.is_multiple_of(self.kv_heads) {
                return bad(ConfigFault::KvHeads {
                    kv_heads: self.kv_heads,
                    heads: self.heads,
                });
            }
            if !self.head_dim.is_multiple_of(2) {
                return bad(ConfigFault::OddHeadDim(self.head_dim));
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

//! A Hugging Face model's `config.json`: the sizes an engine's parameters
//! follow.

use std::path::Path;

use serde::Deserialize;

use super::EngineError;

/// The sizes of a decoder-only transformer, as its `config.json` states
/// them; absent optional fields take Hugging Face's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelConfig {
    /// `architectures[0]`, e.g. `LlamaForCausalLM`.
    pub architecture: String,
    /// `hidden_size`.
    pub hidden: u64,
    /// `num_attention_heads`.
    pub heads: u64,
    /// `num_key_value_heads` (default: `heads`).
    pub kv_heads: u64,
    /// `head_dim` (default: `hidden / heads`).
    pub head_dim: u64,
    /// `intermediate_size`.
    pub intermediate: u64,
    /// `num_hidden_layers`.
    pub layers: u64,
    /// `vocab_size`.
    pub vocab: u64,
    /// `tie_word_embeddings` (default: false).
    pub tied_embeddings: bool,
    /// Routed experts: `num_experts`, `n_routed_experts` or
    /// `num_local_experts` (0 for a dense model).
    pub experts: u64,
    /// `moe_intermediate_size`, each expert's MLP width (Mixtral's:
    /// `intermediate_size`; 0 for a dense model).
    pub moe_intermediate: u64,
}

/// The fields read, as the file spells them.
#[derive(Deserialize)]
struct RawConfig {
    architectures: Vec<String>,
    hidden_size: u64,
    num_attention_heads: u64,
    num_key_value_heads: Option<u64>,
    head_dim: Option<u64>,
    intermediate_size: u64,
    num_hidden_layers: u64,
    vocab_size: u64,
    #[serde(default)]
    tie_word_embeddings: bool,
    num_experts: Option<u64>,
    n_routed_experts: Option<u64>,
    num_local_experts: Option<u64>,
    moe_intermediate_size: Option<u64>,
}

/// `config.json` is small; a larger file is not one.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl ModelConfig {
    /// Reads a `config.json`.
    ///
    /// # Errors
    ///
    /// [`EngineError::Io`] when the file cannot be read or is over
    /// [`MAX_CONFIG_BYTES`]; [`EngineError::Config`] with the line and
    /// column when it is not JSON or lacks a field; [`EngineError::Sizes`]
    /// when the sizes contradict each other.
    pub fn read(path: &Path) -> Result<Self, EngineError> {
        let io = |e: std::io::Error| EngineError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(io(std::io::Error::other(format!(
                "{len} bytes, over the {MAX_CONFIG_BYTES} a config.json may have"
            ))));
        }
        Self::parse(path, &std::fs::read(path).map_err(io)?)
    }

    /// Parses the bytes of a `config.json` read from `path`.
    ///
    /// # Errors
    ///
    /// As [`ModelConfig::read`], but no IO.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, EngineError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| EngineError::Config {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        let sizes = |why: &str| EngineError::Sizes {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        let architecture = raw
            .architectures
            .first()
            .cloned()
            .ok_or_else(|| sizes("`architectures` is empty"))?;
        let positive = [
            raw.hidden_size,
            raw.num_attention_heads,
            raw.intermediate_size,
            raw.num_hidden_layers,
            raw.vocab_size,
        ];
        if positive.contains(&0) {
            return Err(sizes("a size is 0"));
        }
        let kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if kv_heads == 0 || !raw.num_attention_heads.is_multiple_of(kv_heads) {
            return Err(sizes(
                "num_attention_heads is not a multiple of num_key_value_heads",
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) if d > 0 => d,
            Some(_) => return Err(sizes("head_dim is 0")),
            None if raw.hidden_size.is_multiple_of(raw.num_attention_heads) => {
                raw.hidden_size / raw.num_attention_heads
            }
            None => {
                return Err(sizes(
                    "hidden_size is not a multiple of num_attention_heads; give head_dim",
                ));
            }
        };
        let experts = raw
            .num_experts
            .or(raw.n_routed_experts)
            .or(raw.num_local_experts)
            .unwrap_or(0);
        Ok(ModelConfig {
            architecture,
            hidden: raw.hidden_size,
            heads: raw.num_attention_heads,
            kv_heads,
            head_dim,
            intermediate: raw.intermediate_size,
            layers: raw.num_hidden_layers,
            vocab: raw.vocab_size,
            tied_embeddings: raw.tie_word_embeddings,
            experts,
            // Mixtral's experts are `intermediate_size` wide.
            moe_intermediate: raw.moe_intermediate_size.unwrap_or(if experts > 0 {
                raw.intermediate_size
            } else {
                0
            }),
        })
    }
}

//! Inference engines' own parameters: the destination an engine's ranks
//! hold, built from a model's `config.json` and the parallel degrees.
//!
//! An [`EngineLayout`] is two things: a [`Strategy`] over the model's
//! logical (Hugging Face) tensors, laid out as the engine's ranks hold them,
//! which plans and the verifier use as any other; and a
//! [`StorageMap`] that says where each rank's
//! boxes live in the engine's parameters (fused, padded, renamed), which
//! execution and files follow.
//!
//! Supported: vLLM ([`Engine::Vllm`]) for the Llama, Qwen2 and Qwen3
//! families (tensor parallelism) and Qwen3-MoE and Mixtral (tensor
//! parallelism, experts split by tensor or expert parallelism). Other
//! engines, families and degrees are refused with what is supported.

mod config;
mod vllm;

use std::path::PathBuf;

pub use config::{MAX_CONFIG_BYTES, ModelConfig};
pub use vllm::VOCAB_PADDING;

use crate::storage::{StorageError, StorageMap};
use crate::{DType, LayoutError, Strategy, StrategyError};

/// An inference engine whose parameters shardplan writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Engine {
    /// vLLM.
    Vllm,
}

/// What an engine's ranks hold: the logical tensors' layouts and where they
/// live in the engine's parameters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineLayout {
    /// The logical tensors, laid out as the engine's ranks hold them.
    pub strategy: Strategy,
    /// Each rank's parameters, checked against `strategy`.
    pub map: StorageMap,
}

/// The parallel degrees of an engine's deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineDegrees {
    /// Tensor-parallel ranks.
    pub tp: u64,
    /// Experts spread over the same ranks, each held whole (vLLM's
    /// `enable_expert_parallel`), instead of split by tensor parallelism.
    pub expert_parallel: bool,
}

impl EngineDegrees {
    /// `tp` tensor-parallel ranks, experts split by tensor parallelism.
    pub fn tp(tp: u64) -> Self {
        EngineDegrees {
            tp,
            expert_parallel: false,
        }
    }

    /// Experts spread whole over the ranks instead.
    pub fn with_expert_parallel(mut self) -> Self {
        self.expert_parallel = true;
        self
    }
}

/// An engine's destination for `config` at `degrees`, with tensors of
/// `dtype`.
///
/// # Errors
///
/// [`EngineError::Architecture`] for a model family the engine's preset
/// does not cover; [`EngineError::Degree`] when `tp` does not split the
/// heads, the MLP or the padded vocabulary as the engine requires.
///
/// # Example
///
/// ```
/// use std::path::Path;
/// use shardplan::engine::{Engine, EngineDegrees, ModelConfig, engine_layout};
///
/// let json = br#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
///   "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 96,
///   "num_hidden_layers": 1, "vocab_size": 100}"#;
/// let config = ModelConfig::parse(Path::new("config.json"), json)?;
/// let layout = engine_layout(Engine::Vllm, &config, EngineDegrees::tp(4), shardplan::DType::BF16)?;
/// // At tp 4 with 2 kv heads, ranks 2 and 3 share kv head 1: rows 8..16 of k.
/// let k = layout.strategy.layout("model.layers.0.self_attn.k_proj.weight").unwrap();
/// assert_eq!(k.region_of(3).unwrap().offset(), &[8, 0]);
/// let qkv = &layout.map.params(3)[3];
/// assert_eq!((qkv.name.as_str(), qkv.shape.as_slice()), ("model.layers.0.self_attn.qkv_proj.weight", &[32, 64][..]));
/// // 8 attention heads do not split over 3 ranks.
/// assert!(engine_layout(Engine::Vllm, &config, EngineDegrees::tp(3), shardplan::DType::BF16).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn engine_layout(
    engine: Engine,
    config: &ModelConfig,
    degrees: EngineDegrees,
    dtype: DType,
) -> Result<EngineLayout, EngineError> {
    match engine {
        Engine::Vllm => vllm::layout(config, degrees.tp, degrees.expert_parallel, dtype),
    }
}

/// Why an engine's destination cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum EngineError {
    /// The config file cannot be read.
    #[error("cannot read {}: {message}", path.display())]
    #[diagnostic(
        code(shardplan::engine::io),
        help("check the path to the model's config.json")
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's words.
        message: String,
    },
    /// The config file is not JSON or lacks a field.
    #[error("{}:{line}:{column}: {message}", path.display())]
    #[diagnostic(
        code(shardplan::engine::config),
        help(
            "give the model's Hugging Face config.json (architectures, hidden_size, num_attention_heads, intermediate_size, num_hidden_layers, vocab_size)"
        )
    )]
    Config {
        /// The file.
        path: PathBuf,
        /// Line of the fault.
        line: usize,
        /// Column of the fault.
        column: usize,
        /// serde_json's words.
        message: String,
    },
    /// Sizes in the config that contradict each other.
    #[error("{}: {why}", path.display())]
    #[diagnostic(code(shardplan::engine::sizes), help("fix the config's sizes"))]
    Sizes {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A model family the engine's preset does not cover.
    #[error("no preset for architecture `{architecture}` (supported: {supported})")]
    #[diagnostic(
        code(shardplan::engine::architecture),
        help("describe the destination as a spec instead, or add the family's preset")
    )]
    Architecture {
        /// The config's architecture.
        architecture: String,
        /// Those supported.
        supported: String,
    },
    /// A degree the model does not split into as the engine needs.
    #[error("tensor parallel degree {tp}: {why}")]
    #[diagnostic(
        code(shardplan::engine::degree),
        help("choose a degree that divides the heads, the MLP and the padded vocabulary")
    )]
    Degree {
        /// The degree.
        tp: u64,
        /// What does not split.
        why: String,
    },
    /// A layout the core refuses (an inconsistent preset).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Layout(LayoutError),
    /// A strategy the core refuses (an inconsistent preset).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Strategy(StrategyError),
    /// A storage map the core refuses (an inconsistent preset).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Storage(StorageError),
}

//! vLLM's tensor-parallel parameters for the Llama family, as data: which
//! Hugging Face tensors each vLLM parameter holds, how they are fused, and
//! which mesh axes split them.
//!
//! Facts from vLLM's loaders (checked bit for bit against files vLLM 0.33
//! wrote, `crates/shardplan/tests/it/fixtures/engines/`): `qkv_proj` on
//! rank r is r's q rows, then its k rows, then its v rows; when tp exceeds
//! the kv-head count each kv head is copied to `tp / kv` ranks (rank r holds
//! head `r / (tp / kv)`); `gate_up_proj` is r's gate rows then its up rows;
//! `o_proj` and `down_proj` are split by columns; the vocabulary is padded to
//! a multiple of 64 and split evenly, the padding rows zero.

use std::sync::Arc;

use crate::storage::{Param, Segment, StorageMap};
use crate::{
    DType, DeviceMesh, DimSplit, LayoutConfig, Region, SplitPolicy, Strategy, TensorInfo,
    TensorLayout,
};

use super::{EngineError, EngineLayout, ModelConfig};

/// vLLM pads the vocabulary to a multiple of this (`DEFAULT_VOCAB_PADDING_SIZE`).
pub const VOCAB_PADDING: u64 = 64;

/// Which mesh axes split a tensor's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Every tensor-parallel rank its own block (query heads, MLP rows).
    AllRanks,
    /// One block per kv head group: ranks that share a kv head share it.
    KvHeads,
}

/// How one vLLM parameter of a layer holds logical tensors.
#[derive(Debug, Clone, Copy)]
enum Build {
    /// The rank's rows of each tensor, one after the other.
    FusedRows(&'static [(&'static str, Rows)]),
    /// The rank's columns of the tensor (row-parallel layers).
    Columns(&'static str),
    /// The whole tensor on every rank.
    Whole(&'static str),
}

/// A vLLM parameter of every layer, named after `model.layers.<i>.`.
struct LayerParam {
    engine: &'static str,
    build: Build,
}

/// The Llama family's layer, one row per vLLM parameter.
const LLAMA_LAYER: &[LayerParam] = &[
    LayerParam {
        engine: "input_layernorm.weight",
        build: Build::Whole("input_layernorm.weight"),
    },
    LayerParam {
        engine: "self_attn.qkv_proj.weight",
        build: Build::FusedRows(&[
            ("self_attn.q_proj.weight", Rows::AllRanks),
            ("self_attn.k_proj.weight", Rows::KvHeads),
            ("self_attn.v_proj.weight", Rows::KvHeads),
        ]),
    },
    LayerParam {
        engine: "self_attn.o_proj.weight",
        build: Build::Columns("self_attn.o_proj.weight"),
    },
    LayerParam {
        engine: "post_attention_layernorm.weight",
        build: Build::Whole("post_attention_layernorm.weight"),
    },
    LayerParam {
        engine: "mlp.gate_up_proj.weight",
        build: Build::FusedRows(&[
            ("mlp.gate_proj.weight", Rows::AllRanks),
            ("mlp.up_proj.weight", Rows::AllRanks),
        ]),
    },
    LayerParam {
        engine: "mlp.down_proj.weight",
        build: Build::Columns("mlp.down_proj.weight"),
    },
];

/// How a layer's logical tensor is split: by rows, by columns, or (`None`
/// from [`split_of`]) not at all.
#[derive(Debug, Clone, Copy)]
enum Split {
    Rows(Rows),
    Columns,
}

/// The split of the layer tensor named `suffix` (after `model.layers.<i>.`),
/// read from [`LLAMA_LAYER`].
fn split_of(suffix: &str) -> Option<Split> {
    LLAMA_LAYER.iter().find_map(|p| match p.build {
        Build::FusedRows(parts) => parts
            .iter()
            .find(|(n, _)| *n == suffix)
            .map(|&(_, r)| Split::Rows(r)),
        Build::Columns(n) if n == suffix => Some(Split::Columns),
        _ => None,
    })
}

/// Architectures whose layers are [`LLAMA_LAYER`].
const LLAMA_ARCHITECTURES: [&str; 2] = ["LlamaForCausalLM", "MistralForCausalLM"];

/// The tensor-parallel mesh: one axis `tp`, or, when tp exceeds the kv-head
/// count, `tp` over the kv heads and `kv_copy` over the ranks sharing one.
struct Axes {
    mesh: Arc<DeviceMesh>,
    all: Vec<&'static str>,
    kv: Vec<&'static str>,
}

fn axes(config: &ModelConfig, tp: u64) -> Result<Axes, EngineError> {
    let degree = |why: String| EngineError::Degree { tp, why };
    if tp == 0 {
        return Err(degree("a degree of 0".into()));
    }
    if !config.heads.is_multiple_of(tp) {
        return Err(degree(format!(
            "{} attention heads do not split over {tp} ranks",
            config.heads
        )));
    }
    if !config.intermediate.is_multiple_of(tp) {
        return Err(degree(format!(
            "intermediate size {} does not split over {tp} ranks",
            config.intermediate
        )));
    }
    let mesh = |axes: &[(&str, u64)]| {
        DeviceMesh::new(axes.iter().map(|&(n, s)| (n, s)))
            .map(Arc::new)
            .map_err(EngineError::Layout)
    };
    if tp <= config.kv_heads {
        if !config.kv_heads.is_multiple_of(tp) {
            return Err(degree(format!(
                "{} kv heads do not split over {tp} ranks",
                config.kv_heads
            )));
        }
        return Ok(Axes {
            mesh: mesh(&[("tp", tp)])?,
            all: vec!["tp"],
            kv: vec!["tp"],
        });
    }
    if !tp.is_multiple_of(config.kv_heads) {
        return Err(degree(format!(
            "{} kv heads cannot be copied evenly to {tp} ranks (vLLM needs tp to be a multiple of them)",
            config.kv_heads
        )));
    }
    Ok(Axes {
        mesh: mesh(&[("tp", config.kv_heads), ("kv_copy", tp / config.kv_heads)])?,
        all: vec!["tp", "kv_copy"],
        kv: vec!["tp"],
    })
}

/// The logical (Hugging Face) tensors of a Llama-family model.
fn llama_tensors(config: &ModelConfig, dtype: DType) -> Vec<TensorInfo> {
    let (h, q, kv, i) = (
        config.hidden,
        config.heads * config.head_dim,
        config.kv_heads * config.head_dim,
        config.intermediate,
    );
    let t = |name: String, shape: Vec<u64>| TensorInfo { name, shape, dtype };
    let mut out = vec![t("model.embed_tokens.weight".into(), vec![config.vocab, h])];
    for l in 0..config.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        out.extend([
            t(p("input_layernorm.weight"), vec![h]),
            t(p("self_attn.q_proj.weight"), vec![q, h]),
            t(p("self_attn.k_proj.weight"), vec![kv, h]),
            t(p("self_attn.v_proj.weight"), vec![kv, h]),
            t(p("self_attn.o_proj.weight"), vec![h, q]),
            t(p("post_attention_layernorm.weight"), vec![h]),
            t(p("mlp.gate_proj.weight"), vec![i, h]),
            t(p("mlp.up_proj.weight"), vec![i, h]),
            t(p("mlp.down_proj.weight"), vec![h, i]),
        ]);
    }
    out.push(t("model.norm.weight".into(), vec![h]));
    if !config.tied_embeddings {
        out.push(t("lm_head.weight".into(), vec![config.vocab, h]));
    }
    out
}

/// vLLM's destination for a Llama-family model at tensor-parallel degree
/// `tp`: the Hugging Face tensors laid out as vLLM's ranks hold them, and
/// the storage map of vLLM's parameter names.
pub(super) fn llama(
    config: &ModelConfig,
    tp: u64,
    dtype: DType,
) -> Result<EngineLayout, EngineError> {
    if !LLAMA_ARCHITECTURES.contains(&config.architecture.as_str()) {
        return Err(EngineError::Architecture {
            architecture: config.architecture.clone(),
            supported: LLAMA_ARCHITECTURES.join(", "),
        });
    }
    let axes = axes(config, tp)?;
    let tensors = llama_tensors(config, dtype);
    let vocab = vocab_blocks(config.vocab, tp)?;
    let split = |dims: Vec<DimSplit>, shape: &[u64]| {
        TensorLayout::new(axes.mesh.clone(), shape, &LayoutConfig::new(dims))
            .map_err(EngineError::Layout)
    };
    let rows = |over: Rows| {
        DimSplit::over(if over == Rows::KvHeads {
            axes.kv.clone()
        } else {
            axes.all.clone()
        })
    };
    // Each tensor's layout follows from the parameter that holds it.
    let mut layouts = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let suffix = t.name.splitn(4, '.').nth(3).unwrap_or("");
        let layout = match (t.name.as_str(), split_of(suffix)) {
            ("model.embed_tokens.weight" | "lm_head.weight", _) => {
                let by_vocab = DimSplit {
                    axes: axes.all.iter().map(|a| a.to_string()).collect(),
                    policy: SplitPolicy::Blocks(vocab.clone()),
                };
                split(vec![by_vocab, DimSplit::none()], &t.shape)?
            }
            (_, Some(Split::Rows(over))) => split(vec![rows(over), DimSplit::none()], &t.shape)?,
            (_, Some(Split::Columns)) => {
                split(vec![DimSplit::none(), rows(Rows::AllRanks)], &t.shape)?
            }
            _ => TensorLayout::replicated(axes.mesh.clone(), &t.shape)
                .map_err(EngineError::Layout)?,
        };
        layouts.push(layout);
    }
    let strategy = Strategy::new("vllm", axes.mesh.clone(), tensors, layouts)
        .map_err(EngineError::Strategy)?;
    let per_rank = vocab.iter().copied().max().unwrap_or(0);
    let ranks = (0..tp)
        .map(|r| llama_params(config, &strategy, r, per_rank))
        .collect();
    let map = StorageMap::new(&strategy, ranks).map_err(EngineError::Storage)?;
    Ok(EngineLayout { strategy, map })
}

/// Rows of the padded vocabulary each rank holds, the real ones only: the
/// vocabulary padded to [`VOCAB_PADDING`], split evenly.
fn vocab_blocks(vocab: u64, tp: u64) -> Result<Vec<u64>, EngineError> {
    let padded = vocab.div_ceil(VOCAB_PADDING) * VOCAB_PADDING;
    if !padded.is_multiple_of(tp) {
        return Err(EngineError::Degree {
            tp,
            why: format!("the vocabulary padded to {padded} rows does not split over {tp} ranks"),
        });
    }
    let per = padded / tp;
    Ok((0..tp)
        .map(|r| per.min(vocab.saturating_sub(r * per)))
        .collect())
}

/// Rank `rank`'s vLLM parameters: per layer the table's, then the
/// embedding, the final norm and the head, padded to `vocab_rows`.
fn llama_params(
    config: &ModelConfig,
    strategy: &Strategy,
    rank: u64,
    vocab_rows: u64,
) -> Vec<Param> {
    let held = |name: &str| {
        strategy
            .layout(name)
            .and_then(|l| l.region_of(rank))
            .filter(|r| !r.is_empty())
    };
    let dtype = strategy.tensors()[0].dtype;
    let mut params = Vec::new();
    let vocab_param = |name: &str| {
        let segments: Vec<Segment> = held(name)
            .map(|r| Segment::new(name, r, vec![0, 0]))
            .into_iter()
            .collect();
        Param::new(name, dtype, vec![vocab_rows, config.hidden], segments)
    };
    params.push(vocab_param("model.embed_tokens.weight"));
    if !config.tied_embeddings {
        params.push(vocab_param("lm_head.weight"));
    }
    for l in 0..config.layers {
        for p in LLAMA_LAYER {
            let full = |s: &str| format!("model.layers.{l}.{s}");
            let name = full(p.engine);
            let param = match p.build {
                Build::FusedRows(parts) => {
                    let mut row = 0;
                    let mut segments = Vec::new();
                    for (part, _) in parts {
                        if let Some(r) = held(&full(part)) {
                            let rows = r.extent()[0];
                            segments.push(Segment::new(full(part), r, vec![row, 0]));
                            row += rows;
                        }
                    }
                    Param::new(name, dtype, vec![row, config.hidden], segments)
                }
                Build::Columns(t) | Build::Whole(t) => {
                    let r =
                        held(&full(t)).expect("replicated or split evenly: every rank holds a box");
                    let at = vec![0; r.rank()];
                    Param::new(
                        name,
                        dtype,
                        r.extent().to_vec(),
                        vec![Segment::new(full(t), r, at)],
                    )
                }
            };
            params.push(param);
        }
    }
    params.push(Param::new(
        "model.norm.weight",
        dtype,
        vec![config.hidden],
        vec![Segment::new(
            "model.norm.weight",
            Region::whole(&[config.hidden]),
            vec![0],
        )],
    ));
    params
}

//! vLLM's tensor- and expert-parallel parameters, as data: per model family,
//! which Hugging Face tensors each vLLM parameter holds, how they are fused
//! or stacked, and which mesh axes split them.
//!
//! Facts from vLLM's loaders (checked bit for bit against files vLLM 0.33
//! wrote, `crates/shardplan/tests/it/fixtures/engines/`): `qkv_proj` on
//! rank r is r's q rows, then its k rows, then its v rows; when tp exceeds
//! the kv-head count each kv head is copied to `tp / kv` ranks (rank r holds
//! head `r / (tp / kv)`); `gate_up_proj` is r's gate rows then its up rows;
//! `o_proj` and `down_proj` are split by columns; the vocabulary is padded to
//! a multiple of 64 and split evenly, the padding rows zero. Experts are
//! stacked along a leading dimension: `w13_weight` [experts, 2·I/tp, H] (each
//! expert's gate rows then up rows) and `w2_weight` [experts, H, I/tp]; with
//! expert parallelism rank r holds whole experts, a contiguous block.

use std::sync::Arc;

use crate::storage::{Param, Segment, StorageMap};
use crate::{
    DType, DeviceMesh, DimSplit, LayoutConfig, SplitPolicy, Strategy, TensorInfo, TensorLayout,
};

use super::{EngineError, EngineLayout, ModelConfig};

/// vLLM pads the vocabulary to a multiple of this (`DEFAULT_VOCAB_PADDING_SIZE`).
pub const VOCAB_PADDING: u64 = 64;

/// How a logical tensor is split over the tensor-parallel ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Rows, every rank its own block (query heads, MLP and expert rows).
    Rows,
    /// Rows, one block per kv head: ranks that share a kv head share it.
    KvRows,
    /// Columns (row-parallel layers).
    Columns,
    /// Not split.
    Whole,
}

/// A logical tensor of a layer, after `model.layers.<i>.` (or, for an
/// expert, after `model.layers.<i>.mlp.experts.<e>.`), with its split.
type Part = (&'static str, Split);

/// A vLLM parameter of every layer: its name after `model.layers.<i>.`,
/// and the logical tensors it holds, the rank's block of each one after the
/// other along dimension 0.
struct LayerParam {
    engine: &'static str,
    parts: &'static [Part],
}

/// A vLLM parameter stacking every expert (of the rank, under expert
/// parallelism) along a new leading dimension, each slot holding the
/// expert's `parts` one after the other.
struct ExpertParam {
    engine: &'static str,
    parts: &'static [Part],
}

/// A model family: the architectures it covers, its layer's parameters, its
/// experts' parameters and where the checkpoint keeps each expert's tensors
/// (`model.layers.<i>.<expert_prefix>.<e>.`).
struct Family {
    architectures: &'static [&'static str],
    layer: &'static [LayerParam],
    experts: &'static [ExpertParam],
    expert_prefix: &'static str,
}

const fn param(engine: &'static str, parts: &'static [Part]) -> LayerParam {
    LayerParam { engine, parts }
}

/// What every family's attention block has.
const QKV: LayerParam = param(
    "self_attn.qkv_proj.weight",
    &[
        ("self_attn.q_proj.weight", Split::Rows),
        ("self_attn.k_proj.weight", Split::KvRows),
        ("self_attn.v_proj.weight", Split::KvRows),
    ],
);
const O_PROJ: LayerParam = param(
    "self_attn.o_proj.weight",
    &[("self_attn.o_proj.weight", Split::Columns)],
);
const INPUT_NORM: LayerParam = param(
    "input_layernorm.weight",
    &[("input_layernorm.weight", Split::Whole)],
);
const POST_NORM: LayerParam = param(
    "post_attention_layernorm.weight",
    &[("post_attention_layernorm.weight", Split::Whole)],
);
const GATE_UP: LayerParam = param(
    "mlp.gate_up_proj.weight",
    &[
        ("mlp.gate_proj.weight", Split::Rows),
        ("mlp.up_proj.weight", Split::Rows),
    ],
);
const DOWN: LayerParam = param(
    "mlp.down_proj.weight",
    &[("mlp.down_proj.weight", Split::Columns)],
);
const Q_NORM: LayerParam = param(
    "self_attn.q_norm.weight",
    &[("self_attn.q_norm.weight", Split::Whole)],
);
const K_NORM: LayerParam = param(
    "self_attn.k_norm.weight",
    &[("self_attn.k_norm.weight", Split::Whole)],
);

/// The families vLLM's presets cover, one row each.
const FAMILIES: &[Family] = &[
    Family {
        architectures: &["LlamaForCausalLM", "MistralForCausalLM"],
        layer: &[INPUT_NORM, QKV, O_PROJ, POST_NORM, GATE_UP, DOWN],
        experts: &[],
        expert_prefix: "",
    },
    Family {
        architectures: &["Qwen2ForCausalLM"],
        layer: &[
            INPUT_NORM,
            QKV,
            param(
                "self_attn.qkv_proj.bias",
                &[
                    ("self_attn.q_proj.bias", Split::Rows),
                    ("self_attn.k_proj.bias", Split::KvRows),
                    ("self_attn.v_proj.bias", Split::KvRows),
                ],
            ),
            O_PROJ,
            POST_NORM,
            GATE_UP,
            DOWN,
        ],
        experts: &[],
        expert_prefix: "",
    },
    Family {
        architectures: &["Qwen3ForCausalLM"],
        layer: &[
            INPUT_NORM, QKV, O_PROJ, Q_NORM, K_NORM, POST_NORM, GATE_UP, DOWN,
        ],
        experts: &[],
        expert_prefix: "",
    },
    Family {
        architectures: &["Qwen3MoeForCausalLM"],
        layer: &[
            INPUT_NORM,
            QKV,
            O_PROJ,
            Q_NORM,
            K_NORM,
            POST_NORM,
            param("mlp.gate.weight", &[("mlp.gate.weight", Split::Whole)]),
        ],
        experts: &[
            ExpertParam {
                engine: "mlp.experts.routed_experts.w13_weight",
                parts: &[
                    ("gate_proj.weight", Split::Rows),
                    ("up_proj.weight", Split::Rows),
                ],
            },
            ExpertParam {
                engine: "mlp.experts.routed_experts.w2_weight",
                parts: &[("down_proj.weight", Split::Columns)],
            },
        ],
        expert_prefix: "mlp.experts",
    },
    Family {
        architectures: &["MixtralForCausalLM"],
        layer: &[
            INPUT_NORM,
            QKV,
            O_PROJ,
            POST_NORM,
            param(
                "block_sparse_moe.gate.weight",
                &[("block_sparse_moe.gate.weight", Split::Whole)],
            ),
        ],
        experts: &[
            ExpertParam {
                engine: "block_sparse_moe.experts.routed_experts.w13_weight",
                parts: &[("w1.weight", Split::Rows), ("w3.weight", Split::Rows)],
            },
            ExpertParam {
                engine: "block_sparse_moe.experts.routed_experts.w2_weight",
                parts: &[("w2.weight", Split::Columns)],
            },
        ],
        expert_prefix: "block_sparse_moe.experts",
    },
];

/// The shape of a layer's logical tensor named `suffix`, from the config.
fn layer_shape(suffix: &str, c: &ModelConfig) -> Vec<u64> {
    let (h, q, kv) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    match suffix {
        "self_attn.q_proj.weight" => vec![q, h],
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, h],
        "self_attn.o_proj.weight" => vec![h, q],
        "self_attn.q_norm.weight" | "self_attn.k_norm.weight" => vec![c.head_dim],
        "self_attn.q_proj.bias" => vec![q],
        "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => vec![kv],
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![c.intermediate, h],
        "mlp.down_proj.weight" => vec![h, c.intermediate],
        "mlp.gate.weight" | "block_sparse_moe.gate.weight" => vec![c.experts, h],
        _ => vec![h],
    }
}

/// The shape of an expert's logical tensor, split as `split`: the down
/// projection (split by columns) is [hidden, width], the others [width,
/// hidden].
fn expert_shape(split: Split, c: &ModelConfig) -> Vec<u64> {
    match split {
        Split::Columns => vec![c.hidden, c.moe_intermediate],
        _ => vec![c.moe_intermediate, c.hidden],
    }
}

/// The tensor-parallel mesh: one axis `tp`, or, when tp exceeds the kv-head
/// count, `tp` over the kv heads and `kv_copy` over the ranks sharing one.
struct Axes {
    mesh: Arc<DeviceMesh>,
    all: Vec<&'static str>,
    kv: Vec<&'static str>,
}

fn axes(c: &ModelConfig, tp: u64) -> Result<Axes, EngineError> {
    let degree = |why: String| EngineError::Degree { tp, why };
    if tp == 0 {
        return Err(degree("a degree of 0".into()));
    }
    let must_split = [
        ("attention heads", c.heads),
        ("the intermediate size", c.intermediate),
        ("the expert intermediate size", c.moe_intermediate),
    ];
    for (what, n) in must_split {
        if !n.is_multiple_of(tp) {
            return Err(degree(format!("{what} ({n}) do not split over {tp} ranks")));
        }
    }
    let mesh = |axes: &[(&str, u64)]| {
        DeviceMesh::new(axes.iter().map(|&(n, s)| (n, s)))
            .map(Arc::new)
            .map_err(EngineError::Layout)
    };
    if tp <= c.kv_heads {
        if !c.kv_heads.is_multiple_of(tp) {
            return Err(degree(format!(
                "{} kv heads do not split over {tp} ranks",
                c.kv_heads
            )));
        }
        return Ok(Axes {
            mesh: mesh(&[("tp", tp)])?,
            all: vec!["tp"],
            kv: vec!["tp"],
        });
    }
    if !tp.is_multiple_of(c.kv_heads) {
        return Err(degree(format!(
            "{} kv heads cannot be copied evenly to {tp} ranks (vLLM needs tp to be a multiple of them)",
            c.kv_heads
        )));
    }
    Ok(Axes {
        mesh: mesh(&[("tp", c.kv_heads), ("kv_copy", tp / c.kv_heads)])?,
        all: vec!["tp", "kv_copy"],
        kv: vec!["tp"],
    })
}

/// vLLM's destination for `config` at tensor-parallel degree `tp`, experts
/// over the same ranks when `expert_parallel`: the Hugging Face tensors laid
/// out as vLLM's ranks hold them, and the storage map of vLLM's names.
pub(super) fn layout(
    config: &ModelConfig,
    tp: u64,
    expert_parallel: bool,
    dtype: DType,
) -> Result<EngineLayout, EngineError> {
    let family = FAMILIES
        .iter()
        .find(|f| f.architectures.contains(&config.architecture.as_str()))
        .ok_or_else(|| EngineError::Architecture {
            architecture: config.architecture.clone(),
            supported: FAMILIES
                .iter()
                .flat_map(|f| f.architectures)
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let axes = axes(config, tp)?;
    let vocab = vocab_blocks(config.vocab, tp)?;
    let experts_per_rank = experts_per_rank(config, family, tp, expert_parallel)?;
    let builder = Builder {
        config,
        axes: &axes,
        dtype,
        vocab,
        experts_per_rank,
    };
    let (tensors, layouts) = builder.tensors(family)?;
    let strategy = Strategy::new("vllm", axes.mesh.clone(), tensors, layouts)
        .map_err(EngineError::Strategy)?;
    let ranks = (0..tp)
        .map(|r| builder.params(family, &strategy, r))
        .collect();
    let map = StorageMap::new(&strategy, ranks).map_err(EngineError::Storage)?;
    Ok(EngineLayout { strategy, map })
}

/// Under expert parallelism, the experts each rank holds whole (a
/// contiguous block); `None` when the experts are tensor-parallel.
fn experts_per_rank(
    c: &ModelConfig,
    f: &Family,
    tp: u64,
    expert_parallel: bool,
) -> Result<Option<u64>, EngineError> {
    if !expert_parallel {
        return Ok(None);
    }
    if f.experts.is_empty() || !c.experts.is_multiple_of(tp) {
        return Err(EngineError::Degree {
            tp,
            why: format!(
                "expert parallelism needs experts that split over the ranks ({} experts)",
                c.experts
            ),
        });
    }
    Ok(Some(c.experts / tp))
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

/// Dimension 0 split as `split`, the other `rank - 1` dimensions whole.
fn first_split(split: DimSplit, rank: usize) -> Vec<DimSplit> {
    let mut dims = vec![split];
    dims.resize(rank.max(1), DimSplit::none());
    dims
}

/// What building a family's tensors and parameters shares.
struct Builder<'a> {
    config: &'a ModelConfig,
    axes: &'a Axes,
    dtype: DType,
    vocab: Vec<u64>,
    experts_per_rank: Option<u64>,
}

impl Builder<'_> {
    /// The logical tensors and their layouts: the embedding, every layer's
    /// and expert's tensors, the final norm, the head.
    fn tensors(&self, f: &Family) -> Result<(Vec<TensorInfo>, Vec<TensorLayout>), EngineError> {
        let c = self.config;
        // Name, shape, split (`None`: the padded vocabulary), expert.
        type Planned = (String, Vec<u64>, Option<Split>, Option<u64>);
        let mut out: Vec<Planned> = Vec::new();
        out.push((
            "model.embed_tokens.weight".into(),
            vec![c.vocab, c.hidden],
            None,
            None,
        ));
        for l in 0..c.layers {
            for p in f.layer {
                for &(suffix, split) in p.parts {
                    out.push((
                        format!("model.layers.{l}.{suffix}"),
                        layer_shape(suffix, c),
                        Some(split),
                        None,
                    ));
                }
            }
            for e in 0..if f.experts.is_empty() { 0 } else { c.experts } {
                for p in f.experts {
                    for &(suffix, split) in p.parts {
                        let name = format!("model.layers.{l}.{}.{e}.{suffix}", f.expert_prefix);
                        out.push((name, expert_shape(split, c), Some(split), Some(e)));
                    }
                }
            }
        }
        out.push((
            "model.norm.weight".into(),
            vec![c.hidden],
            Some(Split::Whole),
            None,
        ));
        if !c.tied_embeddings {
            out.push(("lm_head.weight".into(), vec![c.vocab, c.hidden], None, None));
        }
        let mut tensors = Vec::with_capacity(out.len());
        let mut layouts = Vec::with_capacity(out.len());
        for (name, shape, split, expert) in out {
            layouts.push(self.layout_of(&shape, split, expert)?);
            tensors.push(TensorInfo {
                name,
                shape,
                dtype: self.dtype,
            });
        }
        Ok((tensors, layouts))
    }

    /// A tensor's layout: `split` (`None`: the padded vocabulary), or, for
    /// an expert under expert parallelism, whole on the rank holding it.
    fn layout_of(
        &self,
        shape: &[u64],
        split: Option<Split>,
        expert: Option<u64>,
    ) -> Result<TensorLayout, EngineError> {
        let mesh = self.axes.mesh.clone();
        let over = |axes: &[&str]| DimSplit::over(axes.iter().copied());
        let config = match (split, expert.zip(self.experts_per_rank)) {
            (_, Some((e, per))) => {
                // Pinned to the rank holding expert e: its coordinates.
                let coords = mesh.coords(e / per).map_err(EngineError::Layout)?;
                let pins: Vec<(String, u64)> = mesh
                    .axes()
                    .iter()
                    .map(|a| a.name.clone())
                    .zip(coords)
                    .collect();
                LayoutConfig::new(vec![DimSplit::none(); shape.len()]).with_pin(pins)
            }
            (None, _) => {
                let by_vocab = DimSplit {
                    axes: self.axes.all.iter().map(|a| a.to_string()).collect(),
                    policy: SplitPolicy::Blocks(self.vocab.clone()),
                };
                LayoutConfig::new(vec![by_vocab, DimSplit::none()])
            }
            (Some(Split::Rows), _) => {
                LayoutConfig::new(first_split(over(&self.axes.all), shape.len()))
            }
            (Some(Split::KvRows), _) => {
                LayoutConfig::new(first_split(over(&self.axes.kv), shape.len()))
            }
            (Some(Split::Columns), _) => {
                LayoutConfig::new(vec![DimSplit::none(), over(&self.axes.all)])
            }
            (Some(Split::Whole), _) => LayoutConfig::new(vec![DimSplit::none(); shape.len()]),
        };
        TensorLayout::new(mesh, shape, &config).map_err(EngineError::Layout)
    }

    /// Rank `rank`'s vLLM parameters: the embedding and head padded to the
    /// vocabulary block, per layer the family's table, the final norm.
    fn params(&self, f: &Family, strategy: &Strategy, rank: u64) -> Vec<Param> {
        let c = self.config;
        let held = |name: &str| {
            strategy
                .layout(name)
                .and_then(|l| l.region_of(rank))
                .filter(|r| !r.is_empty())
        };
        let rows = self.vocab.iter().copied().max().unwrap_or(0);
        let vocab_param = |name: &str| {
            let segments = held(name)
                .map(|r| Segment::new(name, r, vec![0, 0]))
                .into_iter()
                .collect();
            Param::new(name, self.dtype, vec![rows, c.hidden], segments)
        };
        let mut params = vec![vocab_param("model.embed_tokens.weight")];
        if !c.tied_embeddings {
            params.push(vocab_param("lm_head.weight"));
        }
        for l in 0..c.layers {
            let full = |s: &str| format!("model.layers.{l}.{s}");
            for p in f.layer {
                let parts: Vec<String> = p.parts.iter().map(|(s, _)| full(s)).collect();
                params.push(self.fused(full(p.engine), &parts, &[], &held));
            }
            let experts: Vec<u64> = match self.experts_per_rank {
                _ if f.experts.is_empty() => Vec::new(),
                Some(per) => (rank * per..(rank + 1) * per).collect(),
                None => (0..c.experts).collect(),
            };
            for p in f.experts {
                let slots: Vec<Vec<String>> = experts
                    .iter()
                    .map(|e| {
                        p.parts
                            .iter()
                            .map(|(s, _)| full(&format!("{}.{e}.{s}", f.expert_prefix)))
                            .collect()
                    })
                    .collect();
                let first = slots.first().cloned().unwrap_or_default();
                params.push(self.fused(full(p.engine), &first, &slots, &held));
            }
        }
        let norm = "model.norm.weight";
        params.push(self.fused(norm.into(), &[norm.into()], &[], &held));
        params
    }

    /// A parameter holding the rank's block of each of `parts` one after the
    /// other along dimension 0; with `slots`, one such group per slot of a
    /// new leading dimension.
    fn fused(
        &self,
        name: String,
        parts: &[String],
        slots: &[Vec<String>],
        held: &dyn Fn(&str) -> Option<crate::Region>,
    ) -> Param {
        let group = |parts: &[String], lead: &[u64]| {
            let mut row = 0;
            let mut segments = Vec::new();
            let mut trailing = Vec::new();
            for part in parts {
                let Some(r) = held(part) else { continue };
                trailing = r.extent().to_vec();
                let mut at = lead.to_vec();
                at.push(row);
                at.extend(std::iter::repeat_n(0, r.rank().saturating_sub(1)));
                row += r.extent().first().copied().unwrap_or(1);
                segments.push(Segment::new(part.clone(), r, at));
            }
            let shape = match trailing.split_first() {
                Some((_, rest)) => [vec![row], rest.to_vec()].concat(),
                None => Vec::new(),
            };
            (segments, shape)
        };
        if slots.is_empty() {
            let (segments, shape) = group(parts, &[]);
            return Param::new(name, self.dtype, shape, segments);
        }
        let mut all = Vec::new();
        let mut shape = Vec::new();
        for (k, slot) in slots.iter().enumerate() {
            let (segments, s) = group(slot, &[k as u64]);
            all.extend(segments);
            shape = s;
        }
        Param::new(
            name,
            self.dtype,
            [vec![slots.len() as u64], shape].concat(),
            all,
        )
    }
}

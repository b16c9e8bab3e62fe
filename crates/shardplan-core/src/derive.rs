//! Deriving inference layouts from a training strategy (`shardplan derive`).
//!
//! MindSpore's `infer_predict_layout` recompiles the network for the
//! inference devices: the weights then carry no optimizer shard and the
//! data-parallel axes only hold replicas. [`derive_strategy`] does the same
//! from parameter layouts alone, for any framework:
//!
//! - every axis of the training strategy has a role (see [`AxisRole`] and
//!   [`DeriveRules`]): tensor-parallel, data-parallel or pipeline;
//! - splits over data-parallel axes are dropped (the optimizer shard, the
//!   innermost data-parallel split of dimension 0, and FSDP-style shards),
//!   and so are partial-sum axes (the transfer reduces them) and pins on
//!   axes other than the pipeline axis;
//! - a dimension split over tensor-parallel axes keeps a split over the
//!   target's tensor-parallel axes when their size divides it (`even`), or
//!   whatever `chunk`/`balanced` policy training used; otherwise the rules'
//!   [`Fallback`] decides. When several dimensions are split over
//!   tensor-parallel axes, the one split most ways (the first on a tie)
//!   keeps the split;
//! - tensors with a layer index go to the pipeline stage that holds their
//!   layer, each stage holding a contiguous range of layers; other pinned
//!   tensors keep their relative stage (first stays first, last stays
//!   last), and a tensor on several training stages (a tied embedding)
//!   goes to each of their counterparts; a shared tensor goes to the
//!   stages of the layers that use it ([`SharedTensors`]), or to every
//!   stage, and so does a tensor on every training stage;
//! - a one-device target gets every tensor whole.
//!
//! For every tensor the result lists the rules that decided it
//! ([`DeriveNote`]).
//!
//! The other way, from MindSpore operator shard strategies, is in [`ops`].
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use shardplan_core::derive::{DeriveRules, DeriveTarget, derive_strategy};
//! use shardplan_core::*;
//!
//! // Training: data parallel 2 x tensor parallel 4, rows over tp, then
//! // optimizer-sharded over dp (the innermost split of dimension 0).
//! let train = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 4)])?);
//! let w = TensorInfo { name: "w".into(), shape: vec![4096, 1024], dtype: DType::BF16 };
//! let cfg = LayoutConfig::new(vec![DimSplit::over(["tp", "dp"]), DimSplit::none()]);
//! let layout = TensorLayout::new(train.clone(), &w.shape, &cfg)?;
//! let src = Strategy::new("train", train, vec![w], vec![layout])?;
//!
//! // Inference on 2 devices, tensor parallel 2.
//! let target = DeriveTarget::from_degrees(2, 2, 1)?;
//! let derived = derive_strategy(&src, &target, &DeriveRules::default())?;
//! assert_eq!(derived.strategy.layout("w").unwrap().to_string(), "[tp, -]");
//! assert_eq!(
//!     derived.reasons[0].to_string(),
//!     "optimizer shard over dp (2 ways) dropped; tp split of dim 0 kept: 4 -> 2"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod ops;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::error::LayoutError;
use crate::layout::{DimSplit, LayoutConfig, SplitPolicy, TensorLayout};
use crate::mesh::DeviceMesh;
use crate::notation::mindspore::MindSporeLayout;
use crate::pattern::{Glob, LayerPattern, PatternError};
use crate::strategy::{Strategy, StrategyError, TensorInfo};

/// What a tensor whose tensor-parallel split the target's degree does not
/// divide gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fallback {
    /// Refuse: [`DeriveError::Indivisible`] lists every such tensor.
    #[default]
    Error,
    /// The tensor is replicated over the tensor-parallel ranks.
    Replicate,
    /// The split is kept with `chunk` blocks (`torch.chunk`: the trailing
    /// blocks shorter or empty).
    Chunk,
}

impl Fallback {
    /// `error`, `replicate` or `chunk`, as written in a spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Error => "error",
            Fallback::Replicate => "replicate",
            Fallback::Chunk => "chunk",
        }
    }
}

impl std::str::FromStr for Fallback {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "error" => Ok(Fallback::Error),
            "replicate" => Ok(Fallback::Replicate),
            "chunk" => Ok(Fallback::Chunk),
            other => Err(format!(
                "unknown fallback `{other}`: use error, replicate or chunk"
            )),
        }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role of a mesh axis in a parallel layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AxisRole {
    /// Tensor (model) parallelism: its splits are kept, rescaled.
    Tensor,
    /// Data parallelism: its splits (optimizer shard, FSDP) are dropped and
    /// it only holds replicas.
    Data,
    /// Pipeline parallelism: it places tensors on stages.
    Pipeline,
}

impl AxisRole {
    /// `tp`, `dp` or `pp`.
    pub fn as_str(self) -> &'static str {
        match self {
            AxisRole::Tensor => "tp",
            AxisRole::Data => "dp",
            AxisRole::Pipeline => "pp",
        }
    }
}

impl fmt::Display for AxisRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role an axis name suggests, case-insensitively: a name that is, or
/// starts with (followed by a non-letter, as in `tp_inner` or `dp2`), one of
/// `tp`, `mp`, `model`, `tensor` is [`AxisRole::Tensor`]; `dp`, `ddp`,
/// `fsdp`, `zero`, `data` is [`AxisRole::Data`]; `pp`, `pipe`, `pipeline`,
/// `stage`, `stages` is [`AxisRole::Pipeline`]. Other names suggest nothing.
///
/// ```
/// use shardplan_core::derive::{AxisRole, guess_role};
/// assert_eq!(guess_role("tp"), Some(AxisRole::Tensor));
/// assert_eq!(guess_role("dp_shard"), Some(AxisRole::Data));
/// assert_eq!(guess_role("Stage"), Some(AxisRole::Pipeline));
/// assert_eq!(guess_role("tpu"), None);
/// assert_eq!(guess_role("sp"), None);
/// ```
pub fn guess_role(name: &str) -> Option<AxisRole> {
    const WORDS: [(&str, AxisRole); 14] = [
        ("tp", AxisRole::Tensor),
        ("mp", AxisRole::Tensor),
        ("model", AxisRole::Tensor),
        ("tensor", AxisRole::Tensor),
        ("dp", AxisRole::Data),
        ("ddp", AxisRole::Data),
        ("fsdp", AxisRole::Data),
        ("zero", AxisRole::Data),
        ("data", AxisRole::Data),
        ("pp", AxisRole::Pipeline),
        ("pipe", AxisRole::Pipeline),
        ("pipeline", AxisRole::Pipeline),
        ("stage", AxisRole::Pipeline),
        ("stages", AxisRole::Pipeline),
    ];
    let lower = name.to_ascii_lowercase();
    WORDS.iter().find_map(|&(w, role)| {
        let rest = lower.strip_prefix(w)?;
        rest.chars()
            .next()
            .is_none_or(|c| !c.is_ascii_alphabetic())
            .then_some(role)
    })
}

/// The configurable rules of a derivation: the spec's `derive:` section
/// (see `docs/derive.md`). Plain data; [`derive_strategy`] checks it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeriveRules {
    /// Axes (of any mesh) that are tensor-parallel, whatever their names say.
    pub tp_axes: Vec<String>,
    /// Axes (of any mesh) that are data-parallel.
    pub dp_axes: Vec<String>,
    /// The pipeline axis (of any mesh).
    pub pp_axis: Option<String>,
    /// What an indivisible tensor-parallel split gets.
    pub fallback: Fallback,
    /// Layer pattern with one `{}` where the layer index is, e.g.
    /// `model.layers.{}.*`; defaults to the training strategy's `stages`
    /// pattern when read from a spec (`shardplan::spec::rules_for`).
    pub layer: Option<String>,
    /// Inclusive layer ranges of the target's pipeline stages, one per
    /// stage; `None` = balanced contiguous ranges.
    pub ranges: Option<Vec<[u64; 2]>>,
    /// Tensors several stages use (tied embeddings): on the stages holding
    /// the layers that use them, or on every target stage.
    pub shared: Vec<SharedTensors>,
    /// Globs of tensors to replicate over the target's tensor-parallel
    /// ranks whatever training did.
    pub replicate: Vec<String>,
    /// Per tensor, the ways of its optimizer shard as MindSpore records it
    /// (`opt_weight_shard_size`; 0 or 1 = none). A layout on a mesh of its
    /// own cannot tell an optimizer shard over a whole replicated axis from
    /// a tensor-map split of dimension 0 over that axis; this says which.
    /// Without an entry, the reading of
    /// [`MindSporeLayout::from_layout`] is used (an optimizer shard only
    /// for the trailing axes of a dimension 0 split several ways). `shardplan::spec::rules_for` fills it from the spec's `mindspore` rules.
    pub optimizer_shards: BTreeMap<String, u64>,
}

/// A `derive.shared` entry: tensors used by several pipeline stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTensors {
    /// Glob of tensor names.
    pub pattern: String,
    /// The layers that use them: the tensors go to the stages holding
    /// these layers. Empty = every stage.
    pub layers: Vec<LayerRef>,
}

impl SharedTensors {
    /// Tensors matching `pattern`, on every stage.
    pub fn everywhere(pattern: impl Into<String>) -> Self {
        SharedTensors {
            pattern: pattern.into(),
            layers: Vec::new(),
        }
    }
}

/// A layer named in a rule: by index, or the first or last layer of the
/// model (a tied embedding is used before the first layer and after the
/// last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerRef {
    /// Layer `i`.
    Index(u64),
    /// Layer 0.
    First,
    /// The highest layer index found.
    Last,
}

impl fmt::Display for LayerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerRef::Index(i) => write!(f, "{i}"),
            LayerRef::First => f.write_str("first"),
            LayerRef::Last => f.write_str("last"),
        }
    }
}

impl DeriveRules {
    /// The role the rules give axis `name`: configured, else guessed from
    /// the name ([`guess_role`]).
    pub fn role_of(&self, name: &str) -> Option<AxisRole> {
        if self.tp_axes.iter().any(|a| a == name) {
            Some(AxisRole::Tensor)
        } else if self.dp_axes.iter().any(|a| a == name) {
            Some(AxisRole::Data)
        } else if self.pp_axis.as_deref() == Some(name) {
            Some(AxisRole::Pipeline)
        } else {
            guess_role(name)
        }
    }
}

/// Where a derived strategy goes: a mesh and which of its axes are
/// tensor-parallel and pipeline; the others hold replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeriveTarget {
    mesh: Arc<DeviceMesh>,
    tp_axes: Vec<String>,
    pp_axis: Option<String>,
}

impl DeriveTarget {
    /// A target on `mesh` whose tensor-parallel axes (outermost first) and
    /// pipeline axis are named.
    ///
    /// # Errors
    ///
    /// [`DeriveError::UnknownAxis`] for a name not on the mesh,
    /// [`DeriveError::TargetRoles`] for an axis named twice.
    pub fn new(
        mesh: Arc<DeviceMesh>,
        tp_axes: Vec<String>,
        pp_axis: Option<String>,
    ) -> Result<Self, DeriveError> {
        for a in tp_axes.iter().chain(&pp_axis) {
            if mesh.axis_index(a).is_none() {
                return Err(DeriveError::UnknownAxis {
                    axis: a.clone(),
                    mesh: mesh.to_string(),
                });
            }
        }
        let mut all: Vec<&String> = tp_axes.iter().chain(&pp_axis).collect();
        all.sort();
        if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
            return Err(DeriveError::TargetRoles {
                mesh: mesh.to_string(),
                axes: vec![w[0].clone()],
            });
        }
        // Splits name axes outermost first.
        let mut tp_axes = tp_axes;
        tp_axes.sort_by_key(|a| mesh.axis_index(a));
        Ok(DeriveTarget {
            mesh,
            tp_axes,
            pp_axis,
        })
    }

    /// The target for `devices` devices with tensor-parallel degree `tp`
    /// and `pp` pipeline stages: the mesh `[pp, dp, tp]`, `dp = devices /
    /// (tp * pp)`, without the axes of size 1 (one device gives a mesh
    /// without axes). Ranks are numbered row-major: the ranks of a stage
    /// are consecutive, and so are those of a tensor-parallel group.
    ///
    /// # Errors
    ///
    /// [`DeriveError::TargetShape`] when a degree is 0 or `tp * pp` does
    /// not divide `devices`; [`DeriveError::TargetMesh`] when the mesh has
    /// more ranks than [`crate::MAX_RANKS`].
    pub fn from_degrees(devices: u64, tp: u64, pp: u64) -> Result<Self, DeriveError> {
        let bad = DeriveError::TargetShape { devices, tp, pp };
        let group = tp.checked_mul(pp).ok_or_else(|| bad.clone())?;
        if devices == 0 || group == 0 || !devices.is_multiple_of(group) {
            return Err(bad);
        }
        let dp = devices / group;
        let axes: Vec<(&str, u64)> = [("pp", pp), ("dp", dp), ("tp", tp)]
            .into_iter()
            .filter(|&(_, n)| n > 1)
            .collect();
        let mesh = DeviceMesh::new(axes).map_err(DeriveError::TargetMesh)?;
        Ok(DeriveTarget {
            tp_axes: (tp > 1).then(|| "tp".to_string()).into_iter().collect(),
            pp_axis: (pp > 1).then(|| "pp".to_string()),
            mesh: Arc::new(mesh),
        })
    }

    /// A target on `mesh` with the axis roles `rules` give
    /// ([`DeriveRules::role_of`]); axes without a role hold replicas.
    ///
    /// # Errors
    ///
    /// [`DeriveError::TargetRoles`] when several axes would be pipeline axes.
    pub fn from_mesh(mesh: Arc<DeviceMesh>, rules: &DeriveRules) -> Result<Self, DeriveError> {
        let mut tp = Vec::new();
        let mut pp = Vec::new();
        for a in mesh.axes() {
            match rules.role_of(&a.name) {
                Some(AxisRole::Tensor) => tp.push(a.name.clone()),
                Some(AxisRole::Pipeline) => pp.push(a.name.clone()),
                Some(AxisRole::Data) | None => {}
            }
        }
        if pp.len() > 1 {
            return Err(DeriveError::TargetRoles {
                mesh: mesh.to_string(),
                axes: pp,
            });
        }
        DeriveTarget::new(mesh, tp, pp.pop())
    }

    /// The mesh.
    pub fn mesh(&self) -> &Arc<DeviceMesh> {
        &self.mesh
    }

    /// Tensor-parallel axes, outermost first.
    pub fn tp_axes(&self) -> &[String] {
        &self.tp_axes
    }

    /// The pipeline axis.
    pub fn pp_axis(&self) -> Option<&str> {
        self.pp_axis.as_deref()
    }

    /// Product of the tensor-parallel axis sizes.
    pub fn tp_degree(&self) -> u64 {
        self.tp_axes
            .iter()
            .filter_map(|a| self.mesh.axis_index(a))
            .map(|i| self.mesh.axis_size(i))
            .product()
    }

    /// Number of pipeline stages.
    pub fn pp_degree(&self) -> u64 {
        self.pp_axis
            .as_deref()
            .and_then(|a| self.mesh.axis_index(a))
            .map_or(1, |i| self.mesh.axis_size(i))
    }
}

impl fmt::Display for DeriveTarget {
    /// `[pp=2, tp=4] (tp over tp, pp over pp)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.mesh)?;
        let tp = if self.tp_axes.is_empty() {
            "none".to_string()
        } else {
            self.tp_axes.join(", ")
        };
        write!(
            f,
            " (tp over {tp}, pp over {})",
            self.pp_axis.as_deref().unwrap_or("none")
        )
    }
}

/// One rule that decided part of a tensor's derived layout.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeriveNote {
    /// Not split over tensor-parallel axes in training: not split.
    NotSplit,
    /// Replicated because a `derive.replicate` glob matches.
    ForcedReplicate,
    /// A tensor-parallel split kept on its dimension, rescaled.
    TpKept {
        /// Dimension.
        dim: usize,
        /// Ways in training.
        from: u64,
        /// Ways in the target.
        to: u64,
        /// Block policy of the target split.
        policy: SplitPolicy,
    },
    /// A tensor-parallel split merged: the target has no tensor parallelism.
    TpMerged {
        /// Dimension.
        dim: usize,
        /// Ways in training.
        from: u64,
    },
    /// A tensor-parallel split dropped because another dimension keeps the
    /// target's split.
    TpDropped {
        /// Dimension.
        dim: usize,
        /// Ways in training.
        from: u64,
        /// The dimension that keeps the split.
        kept: usize,
    },
    /// The target's degree does not divide the dimension: the fallback.
    Fallback {
        /// Dimension.
        dim: usize,
        /// Its size.
        size: u64,
        /// The target's tensor-parallel degree.
        tp: u64,
        /// What was done.
        fallback: Fallback,
    },
    /// The optimizer shard (the innermost data-parallel split of
    /// dimension 0) dropped.
    OptimizerShardDropped {
        /// Axes of the shard, outermost first.
        axes: Vec<String>,
        /// Ways.
        ways: u64,
    },
    /// A data-parallel (FSDP-style) split dropped.
    DataSplitDropped {
        /// Dimension.
        dim: usize,
        /// Axes, outermost first.
        axes: Vec<String>,
        /// Ways.
        ways: u64,
    },
    /// Partial sums over these axes, reduced by the transfer.
    PartialReduced {
        /// Axes.
        axes: Vec<String>,
    },
    /// A pin on a non-pipeline axis dropped.
    PinDropped {
        /// Axis.
        axis: String,
        /// Coordinate.
        coord: u64,
    },
    /// Placed on the stage holding its layer.
    StageByLayer {
        /// Layer index.
        layer: u64,
        /// Target stage.
        stage: u64,
        /// Target stage count.
        stages: u64,
        /// First layer of the stage.
        first: u64,
        /// Last layer of the stage.
        last: u64,
    },
    /// Training stages without a layer index, mapped by relative position
    /// (several for a tensor on several stages, such as a tied embedding).
    StageMapped {
        /// Training stages, ascending.
        from: Vec<u64>,
        /// Training stage count.
        from_count: u64,
        /// Target stages, ascending.
        to: Vec<u64>,
        /// Target stage count.
        to_count: u64,
    },
    /// Training stages merged: the target has one stage.
    StagesMerged {
        /// Training stages, ascending.
        from: Vec<u64>,
        /// Training stage count.
        from_count: u64,
    },
    /// A shared tensor (`derive.shared`) without layers: on every target
    /// stage.
    Shared {
        /// Target stage count.
        stages: u64,
    },
    /// A shared tensor (`derive.shared`) used by the given layers: on the
    /// stages holding them.
    SharedByLayers {
        /// Layer indices, ascending.
        layers: Vec<u64>,
        /// Target stages, ascending.
        to: Vec<u64>,
        /// Target stage count.
        stages: u64,
    },
    /// On every training stage and without a layer index: on every target
    /// stage.
    EveryStage {
        /// Target stage count.
        stages: u64,
    },
}

impl fmt::Display for DeriveNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let axes = |a: &[String]| a.join(", ");
        match self {
            DeriveNote::NotSplit => write!(f, "no tensor-parallel split in training: not split"),
            DeriveNote::ForcedReplicate => write!(f, "replicated (derive.replicate)"),
            DeriveNote::TpKept {
                dim,
                from,
                to,
                policy,
            } => {
                let p = match policy {
                    SplitPolicy::Even => "",
                    SplitPolicy::Chunk => "chunk ",
                    SplitPolicy::Balanced => "balanced ",
                    SplitPolicy::Blocks(_) => "blocks ",
                };
                write!(f, "{p}tp split of dim {dim} kept: {from} -> {to}")
            }
            DeriveNote::TpMerged { dim, from } => {
                write!(
                    f,
                    "tp split of dim {dim} ({from} ways) merged: no tp in the target"
                )
            }
            DeriveNote::TpDropped { dim, from, kept } => write!(
                f,
                "tp split of dim {dim} ({from} ways) dropped: dim {kept} keeps the split"
            ),
            DeriveNote::Fallback {
                dim,
                size,
                tp,
                fallback,
            } => match fallback {
                Fallback::Replicate => write!(
                    f,
                    "dim {dim} ({size}) not divisible by tp {tp}: replicated (fallback)"
                ),
                Fallback::Chunk => write!(
                    f,
                    "dim {dim} ({size}) not divisible by tp {tp}: chunk split (fallback)"
                ),
                Fallback::Error => {
                    write!(f, "dim {dim} ({size}) not divisible by tp {tp}")
                }
            },
            DeriveNote::OptimizerShardDropped { axes: a, ways } => {
                write!(f, "optimizer shard over {} ({ways} ways) dropped", axes(a))
            }
            DeriveNote::DataSplitDropped { dim, axes: a, ways } => write!(
                f,
                "data-parallel split of dim {dim} over {} ({ways} ways) dropped",
                axes(a)
            ),
            DeriveNote::PartialReduced { axes: a } => {
                write!(f, "partial sums over {} reduced", axes(a))
            }
            DeriveNote::PinDropped { axis, coord } => {
                write!(f, "pin {axis}={coord} dropped")
            }
            DeriveNote::StageByLayer {
                layer,
                stage,
                stages,
                first,
                last,
            } => write!(
                f,
                "layer {layer} -> stage {stage} of {stages} (layers {first}-{last})"
            ),
            DeriveNote::StageMapped {
                from,
                from_count,
                to,
                to_count,
            } => write!(
                f,
                "{} of {from_count} -> {} of {to_count}",
                stage_list(from),
                stage_list(to)
            ),
            DeriveNote::StagesMerged { from, from_count } => {
                write!(
                    f,
                    "{} of {from_count} -> the single stage",
                    stage_list(from)
                )
            }
            DeriveNote::Shared { stages } => {
                write!(f, "shared (derive.shared): on all {stages} stages")
            }
            DeriveNote::SharedByLayers { layers, to, stages } => {
                let l: Vec<String> = layers.iter().map(u64::to_string).collect();
                write!(
                    f,
                    "shared (derive.shared) by layers {}: {} of {stages}",
                    l.join(", "),
                    stage_list(to)
                )
            }
            DeriveNote::EveryStage { stages } => write!(
                f,
                "no layer index, on every training stage: on all {stages} stages"
            ),
        }
    }
}

/// `stage 3`, or `stages 0, 3`.
fn stage_list(stages: &[u64]) -> String {
    let v: Vec<String> = stages.iter().map(u64::to_string).collect();
    match v.len() {
        1 => format!("stage {}", v[0]),
        _ => format!("stages {}", v.join(", ")),
    }
}

/// Why one tensor got its derived layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorReason {
    /// Tensor name.
    pub tensor: String,
    /// The rules that decided it, in the order applied.
    pub notes: Vec<DeriveNote>,
}

impl fmt::Display for TensorReason {
    /// The notes, separated by `; `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.notes.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

/// A derived strategy with, per tensor, the reason for its layout.
#[derive(Debug, Clone)]
pub struct Derived {
    /// The derived strategy, named `derived` (see [`Derived::renamed`]).
    pub strategy: Strategy,
    /// One reason per tensor, parallel to the strategy's tensors.
    pub reasons: Vec<TensorReason>,
    /// The role of each axis of the training strategy's mesh.
    pub roles: Vec<(String, AxisRole)>,
    /// The target.
    pub target: DeriveTarget,
}

impl Derived {
    /// The same derivation with the strategy called `name`.
    ///
    /// # Errors
    ///
    /// None in practice: the strategy is rebuilt from its own parts.
    pub fn renamed(self, name: &str) -> Result<Self, DeriveError> {
        let strategy = self.strategy.renamed(name);
        Ok(Derived { strategy, ..self })
    }

    /// The reason for tensor `name`.
    pub fn reason(&self, name: &str) -> Option<&TensorReason> {
        self.reasons.iter().find(|r| r.tensor == name)
    }

    /// A text table: one line per tensor with its derived layout and the
    /// reason, after a header naming the source roles and the target.
    pub fn explain(&self, source: &str) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let roles: Vec<String> = self
            .roles
            .iter()
            .map(|(a, r)| format!("{a}: {r}"))
            .collect();
        let _ = writeln!(
            out,
            "derive `{source}` -> `{}` on {}",
            self.strategy.name(),
            self.target
        );
        if !roles.is_empty() {
            let _ = writeln!(out, "training axes: {}", roles.join(", "));
        }
        let width = self
            .reasons
            .iter()
            .map(|r| r.tensor.chars().count())
            .max()
            .unwrap_or(0)
            .min(60);
        let layouts: Vec<String> = self
            .strategy
            .layouts()
            .iter()
            .map(|l| l.to_string())
            .collect();
        let lw = layouts.iter().map(|l| l.len()).max().unwrap_or(0).min(40);
        for (r, l) in self.reasons.iter().zip(&layouts) {
            let _ = writeln!(out, "{:width$}  {l:lw$}  {r}", r.tensor);
        }
        out
    }
}

/// A tensor whose tensor-parallel split the target's degree does not divide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndivisibleTensor {
    /// Tensor name.
    pub tensor: String,
    /// Dimension.
    pub dim: usize,
    /// Its size.
    pub size: u64,
}

fn list_indivisible(v: &[IndivisibleTensor]) -> String {
    let mut s: Vec<String> = v
        .iter()
        .take(5)
        .map(|t| format!("`{}` dim {} ({})", t.tensor, t.dim, t.size))
        .collect();
    if v.len() > 5 {
        s.push(format!("and {} more", v.len() - 5));
    }
    s.join(", ")
}

/// Why a derivation failed. Each variant has a stable code
/// (`shardplan::derive::*`) and a help line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DeriveError {
    /// A training layout given box by box, which names no axis to derive from.
    #[error("tensor `{tensor}` of the training strategy is laid out box by box, not by mesh axes")]
    #[diagnostic(
        code(shardplan::derive::explicit_boxes),
        help(
            "derive from the strategy that produced the checkpoint (its spec or strategy file), or give the inference layout directly"
        )
    )]
    ExplicitBoxes {
        /// The tensor.
        tensor: String,
    },
    /// The device count does not split into the degrees.
    #[error("{devices} devices cannot be arranged as tp {tp} x pp {pp} (x dp)")]
    #[diagnostic(
        code(shardplan::derive::target_shape),
        help("tp and pp must be at least 1 and tp * pp must divide the device count")
    )]
    TargetShape {
        /// Devices.
        devices: u64,
        /// Tensor-parallel degree.
        tp: u64,
        /// Pipeline stages.
        pp: u64,
    },
    /// The target mesh cannot be built (too many devices).
    #[error("target mesh: {0}")]
    #[diagnostic(code(shardplan::derive::target_mesh), help("derive for fewer devices"))]
    TargetMesh(#[source] LayoutError),
    /// A target axis name that is not on the target mesh.
    #[error("axis `{axis}` is not on the target mesh {mesh}")]
    #[diagnostic(
        code(shardplan::derive::unknown_axis),
        help("name axes of the target mesh")
    )]
    UnknownAxis {
        /// Axis.
        axis: String,
        /// Target mesh.
        mesh: String,
    },
    /// Target axes with conflicting roles.
    #[error(
        "the target mesh {mesh} gives axes {axes:?} conflicting roles (named twice, or several pipeline axes)"
    )]
    #[diagnostic(
        code(shardplan::derive::target_roles),
        help("name each axis once; set `derive: {{pp_axis: NAME}}` to pick the pipeline axis")
    )]
    TargetRoles {
        /// Target mesh.
        mesh: String,
        /// The axes.
        axes: Vec<String>,
    },
    /// The training strategy's axes have conflicting roles.
    #[error("strategy `{strategy}`: {fault}")]
    #[diagnostic(
        code(shardplan::derive::axis_roles),
        help(
            "say which axes are which in the spec: `derive: {{tp_axes: [..], dp_axes: [..], pp_axis: ..}}`"
        )
    )]
    AxisRoles {
        /// Strategy.
        strategy: String,
        /// What conflicts.
        fault: AxisRoleFault,
    },
    /// A tensor split over the pipeline axis.
    #[error("strategy `{strategy}`: tensor `{tensor}` is split over `{axis}`, a pipeline axis")]
    #[diagnostic(
        code(shardplan::derive::pipeline_split),
        help(
            "if `{axis}` is not a pipeline axis, list it under `derive: {{tp_axes: [..]}}` or `dp_axes`"
        )
    )]
    PipelineSplit {
        /// Strategy.
        strategy: String,
        /// Tensor.
        tensor: String,
        /// Axis.
        axis: String,
    },
    /// Tensor-parallel splits the target's degree does not divide, with
    /// the `error` fallback.
    #[error("{} tensor(s) cannot keep their tensor-parallel split at tp {tp}: {}", tensors.len(), list_indivisible(tensors))]
    #[diagnostic(
        code(shardplan::derive::indivisible),
        help(
            "pick a tp degree that divides these sizes, or set `derive: {{fallback: replicate}}` (or `chunk`)"
        )
    )]
    Indivisible {
        /// The target's tensor-parallel degree.
        tp: u64,
        /// The tensors, in declaration order.
        tensors: Vec<IndivisibleTensor>,
    },
    /// A pipelined target without a way to place layers.
    #[error(
        "the target has {stages} pipeline stages, but the training strategy has none and no layer pattern says where each tensor goes"
    )]
    #[diagnostic(
        code(shardplan::derive::no_layer_pattern),
        help(
            "set `derive: {{layer: \"model.layers.{{}}.*\"}}` with {{}} where the layer index is"
        )
    )]
    NoLayerPattern {
        /// Target stages.
        stages: u64,
    },
    /// A malformed layer pattern or glob.
    #[error("pattern `{pattern}`: {fault}")]
    #[diagnostic(
        code(shardplan::derive::pattern),
        help("layer patterns have one {{}} where the layer index is; globs use * and ?")
    )]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        fault: PatternError,
    },
    /// Stage ranges that do not fit the target.
    #[error("stage ranges: {fault}")]
    #[diagnostic(
        code(shardplan::derive::ranges),
        help("give one [first, last] range per target stage, covering every layer")
    )]
    Ranges {
        /// What is wrong.
        fault: RangeFault,
    },
    /// A `derive.shared` entry naming a layer the model does not have.
    #[error(
        "derive.shared `{pattern}` (tensor `{tensor}`): layer {layer} is not a layer of the model, which has {layers} layer(s)"
    )]
    #[diagnostic(
        code(shardplan::derive::shared_layer),
        help(
            "name layers by index from 0 to the last, or write `first` / `last`; the layer pattern decides which tensors are layers"
        )
    )]
    SharedLayer {
        /// The entry's glob.
        pattern: String,
        /// A tensor it matched.
        tensor: String,
        /// The layer named.
        layer: String,
        /// Layers found by the layer pattern.
        layers: u64,
    },
    /// A derived layout the core refuses (an internal inconsistency).
    #[error("tensor `{tensor}`: {source}")]
    #[diagnostic(code(shardplan::derive::layout))]
    Layout {
        /// Tensor.
        tensor: String,
        /// The refusal.
        #[source]
        source: LayoutError,
    },
    /// The derived strategy could not be built.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Strategy(#[from] StrategyError),
}

/// Why the training axes' roles conflict, one variant per fault. Every
/// fault shares the code and help of [`DeriveError::AxisRoles`]: the fix is
/// to name the roles in the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AxisRoleFault {
    /// An unnamed axis that both splits some tensor and pins another.
    #[error("axis `{axis}` both splits tensors and pins them, so its role is unclear")]
    SplitsAndPins {
        /// The axis.
        axis: String,
    },
    /// More than one axis read as the pipeline.
    #[error("axes {axes:?} would all be pipeline axes")]
    SeveralPipelines {
        /// The axes, in mesh order.
        axes: Vec<String>,
    },
    /// A recorded optimizer shard the layout's dimension 0 does not carry.
    #[error(
        "tensor `{tensor}` records an optimizer shard of {ways} ways, but its layout {layout} does not split dimension 0 innermost that way"
    )]
    OptimizerShard {
        /// The tensor.
        tensor: String,
        /// The recorded shard size.
        ways: u64,
        /// Its training layout.
        layout: String,
    },
}

/// Why explicit stage ranges do not fit the target, one variant per fault.
/// Every fault shares the code and help of [`DeriveError::Ranges`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeFault {
    /// Not one range per target stage.
    #[error("{ranges} ranges for {stages} target stages")]
    Count {
        /// Ranges given.
        ranges: usize,
        /// Target pipeline stages.
        stages: u64,
    },
    /// A range whose first layer is after its last.
    #[error("range [{first}, {last}] is empty")]
    Empty {
        /// First layer.
        first: u64,
        /// Last layer.
        last: u64,
    },
    /// A layer that no range holds.
    #[error("tensor `{tensor}` is in layer {layer}, which no range holds")]
    Unheld {
        /// A tensor of that layer.
        tensor: String,
        /// The layer.
        layer: u64,
    },
}

/// One dimension of a training layout, sorted by role.
#[derive(Debug, Default)]
struct SrcDim {
    /// Tensor-parallel axes (name, size), outermost first.
    tp: Vec<(String, u64)>,
    /// Data-parallel axes (name, size), outermost first.
    dp: Vec<(String, u64)>,
    /// The data-parallel axes are the optimizer shard.
    opt: bool,
    policy: SplitPolicy,
}

impl SrcDim {
    fn tp_ways(&self) -> u64 {
        self.tp.iter().map(|(_, n)| n).product()
    }
}

/// A training layout, sorted by role.
#[derive(Debug, Default)]
struct SrcView {
    dims: Vec<SrcDim>,
    /// (stages, ascending; stage count).
    stage: Option<(Vec<u64>, u64)>,
    partial: Vec<String>,
    dropped_pins: Vec<(String, u64)>,
}

/// Axis roles of the training strategy's own mesh: configured, named, or
/// by use (splits a tensor: tensor-parallel; only pins: pipeline; neither:
/// data-parallel).
fn strategy_roles(train: &Strategy, rules: &DeriveRules) -> Result<Vec<AxisRole>, DeriveError> {
    let mesh = train.mesh();
    let n = mesh.axes().len();
    let mut splits = vec![false; n];
    let mut pins = vec![false; n];
    for l in train.layouts() {
        if **l.mesh() != **mesh {
            continue;
        }
        for d in l.dims() {
            for &a in d.axes() {
                splits[a] = true;
            }
        }
        for &(a, _) in l.pin() {
            pins[a] = true;
        }
    }
    let mut roles = Vec::with_capacity(n);
    for (i, a) in mesh.axes().iter().enumerate() {
        let role = match rules.role_of(&a.name) {
            Some(r) => r,
            None => match (splits[i], pins[i]) {
                (true, true) => {
                    return Err(DeriveError::AxisRoles {
                        strategy: train.name().to_string(),
                        fault: AxisRoleFault::SplitsAndPins {
                            axis: a.name.clone(),
                        },
                    });
                }
                (true, false) => AxisRole::Tensor,
                (false, true) => AxisRole::Pipeline,
                (false, false) => AxisRole::Data,
            },
        };
        roles.push(role);
    }
    let pp: Vec<String> = mesh
        .axes()
        .iter()
        .zip(&roles)
        .filter(|(_, r)| **r == AxisRole::Pipeline)
        .map(|(a, _)| a.name.clone())
        .collect();
    if pp.len() > 1 {
        return Err(DeriveError::AxisRoles {
            strategy: train.name().to_string(),
            fault: AxisRoleFault::SeveralPipelines { axes: pp },
        });
    }
    Ok(roles)
}

/// Sorts a layout on the strategy's mesh by the strategy's axis roles.
fn view_native(
    strategy: &str,
    tensor: &str,
    l: &TensorLayout,
    roles: &[AxisRole],
) -> Result<SrcView, DeriveError> {
    let mesh = l.mesh();
    let name = |a: usize| (l.axis_name(a).to_string(), mesh.axis_size(a));
    let mut view = SrcView::default();
    for (d, dim) in l.dims().iter().enumerate() {
        let mut sd = SrcDim {
            policy: dim.policy().clone(),
            ..Default::default()
        };
        for &a in dim.axes() {
            match roles[a] {
                AxisRole::Tensor => sd.tp.push(name(a)),
                AxisRole::Data => sd.dp.push(name(a)),
                AxisRole::Pipeline => {
                    return Err(DeriveError::PipelineSplit {
                        strategy: strategy.to_string(),
                        tensor: tensor.to_string(),
                        axis: l.axis_name(a).to_string(),
                    });
                }
            }
        }
        // The optimizer shard: the innermost split of dimension 0, all
        // data-parallel after every tensor-parallel axis.
        let n_dp = sd.dp.len();
        let axes = dim.axes();
        sd.opt = d == 0
            && n_dp > 0
            && axes[axes.len() - n_dp..]
                .iter()
                .all(|&a| roles[a] == AxisRole::Data);
        view.dims.push(sd);
    }
    view.partial = l
        .partial()
        .iter()
        .map(|&a| l.axis_name(a).to_string())
        .collect();
    for &(a, c) in l.pin() {
        if roles[a] == AxisRole::Pipeline {
            view.stage
                .get_or_insert_with(|| (Vec::new(), mesh.axis_size(a)))
                .0
                .push(c);
        } else {
            view.dropped_pins.push((l.axis_name(a).to_string(), c));
        }
    }
    Ok(view)
}

/// Sorts a layout on a mesh of its own (a MindSpore parameter's device
/// matrix): the optimizer shard is the innermost split of dimension 0 of
/// the size the rules record for the tensor, or, without a record,
/// MindSpore's reading of the layout; the other split axes are
/// tensor-parallel unless their names say otherwise, and a pin is the
/// pipeline stage unless its axis's name says otherwise.
fn view_own(
    strategy: &str,
    tensor: &str,
    l: &TensorLayout,
    rules: &DeriveRules,
) -> Result<SrcView, DeriveError> {
    let mesh = l.mesh();
    // Axes of dimension 0 that form the optimizer shard.
    let opt: Vec<usize> = match rules.optimizer_shards.get(tensor) {
        Some(&ways) => {
            let mut out = Vec::new();
            let mut prod = 1u64;
            if let Some(d0) = l.dims().first() {
                for &a in d0.axes().iter().rev() {
                    if prod >= ways {
                        break;
                    }
                    prod *= mesh.axis_size(a);
                    out.push(a);
                }
            }
            if prod != ways.max(1) {
                return Err(DeriveError::AxisRoles {
                    strategy: strategy.to_string(),
                    fault: AxisRoleFault::OptimizerShard {
                        tensor: tensor.to_string(),
                        ways,
                        layout: l.to_string(),
                    },
                });
            }
            out
        }
        None => match MindSporeLayout::from_layout(&first_stage_only(l)) {
            Ok(ms) => {
                let first = usize::from(ms.stage_count > 1);
                let n = mesh.axes().len() - first;
                let mapped: Vec<usize> = ms
                    .tensor_map
                    .first()
                    .into_iter()
                    .flatten()
                    .filter(|&&k| k >= 0)
                    .map(|&k| first + n - 1 - k as usize)
                    .collect();
                l.dims()
                    .first()
                    .map(|d| {
                        d.axes()
                            .iter()
                            .copied()
                            .filter(|a| !mapped.contains(a))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Err(_) => Vec::new(),
        },
    };
    let roles: Vec<AxisRole> = (0..mesh.axes().len())
        .map(|a| {
            let named = rules.role_of(l.axis_name(a));
            if opt.contains(&a) {
                AxisRole::Data
            } else if l.pin().iter().any(|&(p, _)| p == a) {
                named.unwrap_or(AxisRole::Pipeline)
            } else if l.dims().iter().any(|d| d.axes().contains(&a)) {
                named.unwrap_or(AxisRole::Tensor)
            } else {
                named.unwrap_or(AxisRole::Data)
            }
        })
        .collect();
    let mut view = view_native(strategy, tensor, l, &roles)?;
    if let Some(d0) = view.dims.first_mut() {
        d0.opt = !opt.is_empty();
    }
    Ok(view)
}

/// `l` with each pinned axis at its first coordinate only: a MindSpore
/// layout describes one stage, and a parameter on several stages is cut
/// alike on each.
fn first_stage_only(l: &TensorLayout) -> TensorLayout {
    l.split_pins().swap_remove(0)
}

/// Contiguous layer ranges of the target stages.
fn stage_ranges(
    rules: &DeriveRules,
    stages: u64,
    layers: u64,
) -> Result<Vec<[u64; 2]>, DeriveError> {
    if let Some(r) = &rules.ranges {
        if r.len() as u64 != stages {
            return Err(DeriveError::Ranges {
                fault: RangeFault::Count {
                    ranges: r.len(),
                    stages,
                },
            });
        }
        if let Some(w) = r.iter().find(|w| w[0] > w[1]) {
            return Err(DeriveError::Ranges {
                fault: RangeFault::Empty {
                    first: w[0],
                    last: w[1],
                },
            });
        }
        return Ok(r.clone());
    }
    // Balanced: the first `layers % stages` stages hold one layer more.
    let (q, rem) = (layers / stages, layers % stages);
    let mut out = Vec::with_capacity(stages as usize);
    let mut start = 0u64;
    for s in 0..stages {
        let n = q + u64::from(s < rem);
        // An empty stage (fewer layers than stages) gets [start, start - 1],
        // or [0, 0] at the start, which `Cx::stage` never matches.
        out.push([start, (start + n).saturating_sub(1)]);
        start += n;
    }
    Ok(out)
}

fn compile_globs(globs: &[String]) -> Result<Vec<Glob>, DeriveError> {
    globs
        .iter()
        .map(|g| {
            Glob::new(g).map_err(|fault| DeriveError::Pattern {
                pattern: g.clone(),
                fault,
            })
        })
        .collect()
}

/// What is dropped from a training layout: data-parallel splits, partial
/// sums and pins on axes other than the pipeline.
fn dropped(view: &SrcView) -> Vec<DeriveNote> {
    let mut notes = Vec::new();
    for (d, sd) in view.dims.iter().enumerate() {
        if sd.dp.is_empty() {
            continue;
        }
        let axes: Vec<String> = sd.dp.iter().map(|(a, _)| a.clone()).collect();
        let ways = sd.dp.iter().map(|(_, n)| n).product();
        notes.push(if sd.opt {
            DeriveNote::OptimizerShardDropped { axes, ways }
        } else {
            DeriveNote::DataSplitDropped { dim: d, axes, ways }
        });
    }
    if !view.partial.is_empty() {
        notes.push(DeriveNote::PartialReduced {
            axes: view.partial.clone(),
        });
    }
    for (axis, coord) in &view.dropped_pins {
        notes.push(DeriveNote::PinDropped {
            axis: axis.clone(),
            coord: *coord,
        });
    }
    notes
}

/// The target stages of a tensor in no layer: the source's stages at the
/// same relative position (the last stays last), or every stage (empty)
/// when the source holds it on all.
fn mapped_stages(view: &SrcView, stages: u64, notes: &mut Vec<DeriveNote>) -> Vec<u64> {
    let Some((from, from_count)) = &view.stage else {
        notes.push(DeriveNote::EveryStage { stages });
        return Vec::new();
    };
    let mut to: Vec<u64> = from
        .iter()
        .map(|&f| {
            if f + 1 == *from_count {
                stages - 1
            } else {
                f * stages / from_count
            }
        })
        .collect();
    to.dedup();
    notes.push(DeriveNote::StageMapped {
        from: from.clone(),
        from_count: *from_count,
        to: to.clone(),
        to_count: stages,
    });
    to
}

/// Everything a derivation decides per tensor from.
struct Cx<'a> {
    target: &'a DeriveTarget,
    rules: &'a DeriveRules,
    shared: Vec<Glob>,
    replicate: Vec<Glob>,
    /// Layer ranges of the target stages (empty with one stage).
    ranges: Vec<[u64; 2]>,
    /// Number of layers found.
    layers: u64,
}

impl<'a> Cx<'a> {
    /// The rules compiled for `train`, and the layer of each of its
    /// tensors: the globs, the layer pattern, and with several target
    /// stages the layer range of each (which needs a layer pattern unless
    /// the source is pipelined itself).
    fn new(
        train: &Strategy,
        target: &'a DeriveTarget,
        rules: &'a DeriveRules,
        roles: &[AxisRole],
    ) -> Result<(Self, Vec<Option<u64>>), DeriveError> {
        let shared_patterns: Vec<String> = rules.shared.iter().map(|r| r.pattern.clone()).collect();
        let shared = compile_globs(&shared_patterns)?;
        let replicate = compile_globs(&rules.replicate)?;
        let pattern = layer_pattern(rules)?;
        let layer_of: Vec<Option<u64>> = train
            .tensors()
            .iter()
            .map(|t| pattern.as_ref().and_then(|p| p.capture(&t.name)))
            .collect();
        let stages = target.pp_degree();
        let layers = layer_of.iter().flatten().max().map_or(0, |m| m + 1);
        let ranges = if stages > 1 {
            let source_pipelined = roles.contains(&AxisRole::Pipeline)
                || train
                    .layouts()
                    .iter()
                    .any(|l| **l.mesh() != **train.mesh() && !l.pin().is_empty());
            if pattern.is_none() && !source_pipelined {
                return Err(DeriveError::NoLayerPattern { stages });
            }
            stage_ranges(rules, stages, layers)?
        } else {
            Vec::new()
        };
        let cx = Cx {
            target,
            rules,
            shared,
            replicate,
            ranges,
            layers,
        };
        Ok((cx, layer_of))
    }
}

impl Cx<'_> {
    /// Tensor `t`'s target layout and the notes saying why, from its
    /// source view; an indivisible split is pushed to `indivisible`.
    fn derive_tensor(
        &self,
        t: &TensorInfo,
        view: &SrcView,
        layer: Option<u64>,
        indivisible: &mut Vec<IndivisibleTensor>,
    ) -> Result<(TensorLayout, Vec<DeriveNote>), DeriveError> {
        let mut notes = dropped(view);
        let dims = self.tp_dims(t, view, &mut notes, indivisible);
        let pin = self.stage(t, layer, view, &mut notes)?;
        let cfg = LayoutConfig::new(dims).with_pin(pin);
        let layout =
            TensorLayout::new(self.target.mesh.clone(), &t.shape, &cfg).map_err(|source| {
                DeriveError::Layout {
                    tensor: t.name.clone(),
                    source,
                }
            })?;
        Ok((layout, notes))
    }

    /// The target splits of tensor `t`: the dimension split most ways over
    /// tensor-parallel axes keeps a split over the target's. An
    /// indivisible split under the `error` fallback is pushed to
    /// `indivisible`.
    fn tp_dims(
        &self,
        t: &TensorInfo,
        view: &SrcView,
        notes: &mut Vec<DeriveNote>,
        indivisible: &mut Vec<IndivisibleTensor>,
    ) -> Vec<DimSplit> {
        let tp = self.target.tp_degree();
        let mut dims = vec![DimSplit::none(); t.shape.len()];
        let tp_dims: Vec<(usize, u64)> = view
            .dims
            .iter()
            .enumerate()
            .map(|(d, sd)| (d, sd.tp_ways()))
            .filter(|&(_, w)| w > 1)
            .collect();
        // The most ways; the first dimension on a tie.
        let keep = tp_dims
            .iter()
            .copied()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
        if self.replicate.iter().any(|g| g.matches(&t.name)) {
            notes.push(DeriveNote::ForcedReplicate);
            return dims;
        }
        let Some((kd, from)) = keep else {
            notes.push(DeriveNote::NotSplit);
            return dims;
        };
        for &(d, w) in tp_dims.iter().filter(|(d, _)| *d != kd) {
            notes.push(if tp > 1 {
                DeriveNote::TpDropped {
                    dim: d,
                    from: w,
                    kept: kd,
                }
            } else {
                DeriveNote::TpMerged { dim: d, from: w }
            });
        }
        if tp == 1 {
            notes.push(DeriveNote::TpMerged { dim: kd, from });
            return dims;
        }
        let policy = self.kept_policy(t, kd, from, view, notes, indivisible);
        if let Some(policy) = policy {
            dims[kd] = DimSplit {
                axes: self.target.tp_axes.clone(),
                policy,
            };
        }
        dims
    }

    /// How the kept dimension `kd` (split `from` ways in the source) is
    /// split over the target's tensor-parallel axes: a `chunk` or
    /// `balanced` source keeps its policy; an even one, or one of explicit
    /// block sizes, is split evenly where the target's degree divides the
    /// size; otherwise the fallback's (`None`: replicated, or an
    /// indivisible tensor pushed to `indivisible`).
    fn kept_policy(
        &self,
        t: &TensorInfo,
        kd: usize,
        from: u64,
        view: &SrcView,
        notes: &mut Vec<DeriveNote>,
        indivisible: &mut Vec<IndivisibleTensor>,
    ) -> Option<SplitPolicy> {
        let tp = self.target.tp_degree();
        let size = t.shape[kd];
        let policy = match &view.dims[kd].policy {
            p @ (SplitPolicy::Chunk | SplitPolicy::Balanced) => Some(p.clone()),
            SplitPolicy::Even | SplitPolicy::Blocks(_) => {
                size.is_multiple_of(tp).then_some(SplitPolicy::Even)
            }
        };
        match policy {
            Some(policy) => {
                notes.push(DeriveNote::TpKept {
                    dim: kd,
                    from,
                    to: tp,
                    policy: policy.clone(),
                });
                Some(policy)
            }
            None => {
                notes.push(DeriveNote::Fallback {
                    dim: kd,
                    size,
                    tp,
                    fallback: self.rules.fallback,
                });
                match self.rules.fallback {
                    Fallback::Error => {
                        indivisible.push(IndivisibleTensor {
                            tensor: t.name.clone(),
                            dim: kd,
                            size,
                        });
                        None
                    }
                    Fallback::Replicate => None,
                    Fallback::Chunk => Some(SplitPolicy::Chunk),
                }
            }
        }
    }

    /// The target stages of tensor `t` (in layer `layer`), as pins on the
    /// target's pipeline axis; empty = every stage.
    fn stage(
        &self,
        t: &TensorInfo,
        layer: Option<u64>,
        view: &SrcView,
        notes: &mut Vec<DeriveNote>,
    ) -> Result<Vec<(String, u64)>, DeriveError> {
        let stages = self.target.pp_degree();
        if stages == 1 {
            if let Some((from, from_count)) = &view.stage {
                notes.push(DeriveNote::StagesMerged {
                    from: from.clone(),
                    from_count: *from_count,
                });
            }
            return Ok(Vec::new());
        }
        let shared = self
            .shared
            .iter()
            .zip(&self.rules.shared)
            .find(|(g, _)| g.matches(&t.name));
        let to = if let Some((_, rule)) = shared {
            self.shared_stages(t, rule, notes)?
        } else if let Some(layer) = layer {
            let s = self.stage_of_layer(&t.name, layer)?;
            let [first, last] = self.ranges[s as usize];
            notes.push(DeriveNote::StageByLayer {
                layer,
                stage: s,
                stages,
                first,
                last,
            });
            vec![s]
        } else {
            mapped_stages(view, stages, notes)
        };
        let pp = self.target.pp_axis.clone().unwrap_or_default();
        Ok(to.into_iter().map(|s| (pp.clone(), s)).collect())
    }

    /// The stages of a tensor a `derive.shared` rule names: every stage
    /// (empty) without layers, else the stages of the layers it lists.
    fn shared_stages(
        &self,
        t: &TensorInfo,
        rule: &SharedTensors,
        notes: &mut Vec<DeriveNote>,
    ) -> Result<Vec<u64>, DeriveError> {
        let stages = self.target.pp_degree();
        if rule.layers.is_empty() {
            notes.push(DeriveNote::Shared { stages });
            return Ok(Vec::new());
        }
        let mut layers: Vec<u64> = Vec::with_capacity(rule.layers.len());
        for r in &rule.layers {
            let l = match r {
                LayerRef::Index(i) => *i,
                LayerRef::First => 0,
                LayerRef::Last => self.layers.saturating_sub(1),
            };
            if l >= self.layers {
                return Err(DeriveError::SharedLayer {
                    pattern: rule.pattern.clone(),
                    tensor: t.name.clone(),
                    layer: r.to_string(),
                    layers: self.layers,
                });
            }
            layers.push(l);
        }
        layers.sort_unstable();
        layers.dedup();
        let mut to = Vec::with_capacity(layers.len());
        for &l in &layers {
            to.push(self.stage_of_layer(&t.name, l)?);
        }
        to.sort_unstable();
        to.dedup();
        notes.push(DeriveNote::SharedByLayers {
            layers,
            to: to.clone(),
            stages,
        });
        Ok(to)
    }

    /// The target stage whose layer range holds `layer`.
    fn stage_of_layer(&self, tensor: &str, layer: u64) -> Result<u64, DeriveError> {
        let stages = self.target.pp_degree();
        let explicit = self.rules.ranges.is_some();
        self.ranges
            .iter()
            .zip(0u64..)
            .find(|([a, b], s)| {
                *a <= layer && layer <= *b && (explicit || non_empty(self.layers, stages, *s))
            })
            .map(|(_, s)| s)
            .ok_or_else(|| DeriveError::Ranges {
                fault: RangeFault::Unheld {
                    tensor: tensor.to_string(),
                    layer,
                },
            })
    }
}

/// Derives the inference layout of every tensor of `train` for `target`.
///
/// See the [module documentation](self) for the rules and
/// `docs/derive.md` for the details.
///
/// # Errors
///
/// - [`DeriveError::ExplicitBoxes`]: a training layout is given box by box;
/// - [`DeriveError::AxisRoles`]: the training axes' roles conflict;
/// - [`DeriveError::PipelineSplit`]: a tensor is split over the pipeline axis;
/// - [`DeriveError::Indivisible`]: with the `error` fallback, tensors whose
///   tensor-parallel split the target does not divide (all of them listed);
/// - [`DeriveError::NoLayerPattern`], [`DeriveError::Ranges`],
///   [`DeriveError::Pattern`]: the pipeline placement cannot be decided;
/// - [`DeriveError::Layout`], [`DeriveError::Strategy`]: internal
///   inconsistencies, reported rather than panicking.
pub fn derive_strategy(
    train: &Strategy,
    target: &DeriveTarget,
    rules: &DeriveRules,
) -> Result<Derived, DeriveError> {
    refuse_explicit_boxes(train)?;
    let roles = strategy_roles(train, rules)?;
    let (cx, layer_of) = Cx::new(train, target, rules, &roles)?;
    let mut layouts = Vec::with_capacity(train.tensors().len());
    let mut reasons = Vec::with_capacity(train.tensors().len());
    let mut indivisible = Vec::new();
    for ((t, l), layer) in train.tensors().iter().zip(train.layouts()).zip(&layer_of) {
        let view = if **l.mesh() == **train.mesh() {
            view_native(train.name(), &t.name, l, &roles)?
        } else {
            view_own(train.name(), &t.name, l, rules)?
        };
        let (layout, notes) = cx.derive_tensor(t, &view, *layer, &mut indivisible)?;
        layouts.push(layout);
        reasons.push(TensorReason {
            tensor: t.name.clone(),
            notes,
        });
    }
    if !indivisible.is_empty() {
        return Err(DeriveError::Indivisible {
            tp: target.tp_degree(),
            tensors: indivisible,
        });
    }
    let strategy = Strategy::new(
        "derived",
        target.mesh.clone(),
        train.tensors().to_vec(),
        layouts,
    )?;
    Ok(Derived {
        strategy,
        reasons,
        roles: train
            .mesh()
            .axes()
            .iter()
            .zip(roles)
            .map(|(a, r)| (a.name.clone(), r))
            .collect(),
        target: target.clone(),
    })
}

/// Explicit boxes say nothing about how a tensor was split: nothing to
/// derive from.
fn refuse_explicit_boxes(train: &Strategy) -> Result<(), DeriveError> {
    match train
        .tensors()
        .iter()
        .zip(train.layouts())
        .find(|(_, l)| l.is_explicit())
    {
        Some((t, _)) => Err(DeriveError::ExplicitBoxes {
            tensor: t.name.clone(),
        }),
        None => Ok(()),
    }
}

/// The rules' layer pattern, compiled.
fn layer_pattern(rules: &DeriveRules) -> Result<Option<LayerPattern>, DeriveError> {
    rules
        .layer
        .as_deref()
        .map(|p| {
            LayerPattern::new(p).map_err(|fault| DeriveError::Pattern {
                pattern: p.to_string(),
                fault,
            })
        })
        .transpose()
}

/// Whether balanced stage `s` holds any layer.
fn non_empty(layers: u64, stages: u64, s: u64) -> bool {
    layers / stages + u64::from(s < layers % stages) > 0
}

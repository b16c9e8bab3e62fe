//! The rules of a derivation: axis roles, the fallback for indivisible
//! splits, and the spec's `derive:` section ([`DeriveRules`]).

use std::collections::BTreeMap;
use std::fmt;

#[cfg(doc)]
use super::{DeriveError, derive_strategy};
#[cfg(doc)]
use crate::notation::mindspore::MindSporeLayout;

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

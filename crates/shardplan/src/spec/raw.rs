//! Serde mirror of the YAML spec. Only this module derives `Deserialize`;
//! `lower` turns it into the checked core types.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_saphyr::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpec {
    pub version: S<u64>,
    #[serde(default)]
    pub meshes: BTreeMap<String, RawMesh>,
    #[serde(default)]
    pub tensors: Vec<RawTensor>,
    #[serde(default)]
    pub strategies: BTreeMap<String, RawStrategy>,
    pub transfer: Option<RawTransfer>,
    pub derive: Option<S<RawDerive>>,
    pub operators: Option<S<RawOperators>>,
}

/// The `operators:` section: MindSpore operator shard strategies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOperators {
    pub devices: S<u64>,
    pub stages: Option<S<u64>>,
    pub batch: Option<S<u64>>,
    pub repeated_calc: Option<S<String>>,
    #[serde(default)]
    pub inputs: Vec<S<RawActivation>>,
    pub ops: S<Vec<S<RawOp>>>,
}

/// A graph input: name, shape (sizes or the word `batch`), dtype.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawActivation {
    pub name: S<String>,
    pub shape: S<Vec<S<RawSize>>>,
    pub dtype: S<String>,
}

/// One operator with its shard strategy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOp {
    pub op: S<String>,
    pub name: Option<S<String>>,
    pub inputs: S<Vec<S<String>>>,
    pub strategy: S<Vec<Vec<u64>>>,
    #[serde(default)]
    pub transpose_b: bool,
    #[serde(default)]
    pub transpose_a: bool,
    pub stage: Option<S<u64>>,
    pub output: Option<S<String>>,
}

/// A dimension of a graph input: a size, or a word (`batch`).
#[derive(Debug)]
pub(crate) enum RawSize {
    Fixed(u64),
    Word(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a dimension size or `batch`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Fixed(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                u64::try_from(v)
                    .map(RawSize::Fixed)
                    .map_err(|_| E::custom("a dimension size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Word(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The `derive:` section: how `shardplan derive` reads the training
/// strategy's axes and what it does with what does not fit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDerive {
    #[serde(default)]
    pub tp_axes: Vec<S<String>>,
    #[serde(default)]
    pub dp_axes: Vec<S<String>>,
    pub pp_axis: Option<S<String>>,
    pub fallback: Option<S<String>>,
    pub layer: Option<S<String>>,
    pub ranges: Option<S<Vec<S<[u64; 2]>>>>,
    #[serde(default)]
    pub shared: Vec<S<RawShared>>,
    #[serde(default)]
    pub replicate: Vec<S<String>>,
}

/// A `derive.shared` entry: a glob (every stage), or
/// `{match: GLOB, layers: [first, 12, last]}`.
#[derive(Debug)]
pub(crate) struct RawShared {
    pub pattern: String,
    pub layers: Vec<RawLayerRef>,
    /// `layers` was written (possibly empty).
    pub layers_given: bool,
}

/// A layer in a rule: an index, `first` or `last` (checked later).
#[derive(Debug)]
pub(crate) enum RawLayerRef {
    Index(u64),
    Word(String),
}

impl<'de> Deserialize<'de> for RawLayerRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawLayerRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a layer index, `first` or `last`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawLayerRef, E> {
                Ok(RawLayerRef::Index(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawLayerRef, E> {
                Ok(RawLayerRef::Word(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawShared {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawShared;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a tensor pattern, or `{match: PATTERN, layers: [first, last]}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawShared, E> {
                Ok(RawShared {
                    pattern: v.to_string(),
                    layers: Vec::new(),
                    layers_given: false,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<RawShared, A::Error> {
                let (mut pattern, mut layers) = (None, None);
                while let Some(key) = a.next_key::<String>()? {
                    match key.as_str() {
                        "match" if pattern.is_none() => pattern = Some(a.next_value::<String>()?),
                        "layers" if layers.is_none() => {
                            layers = Some(a.next_value::<Vec<RawLayerRef>>()?)
                        }
                        "match" => return Err(de::Error::duplicate_field("match")),
                        "layers" => return Err(de::Error::duplicate_field("layers")),
                        other => return Err(de::Error::unknown_field(other, &["match", "layers"])),
                    }
                }
                Ok(RawShared {
                    pattern: pattern.ok_or_else(|| de::Error::missing_field("match"))?,
                    layers_given: layers.is_some(),
                    layers: layers.unwrap_or_default(),
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMesh {
    pub shape: S<Vec<S<u64>>>,
    pub axes: S<Vec<S<String>>>,
    pub devices: Option<S<Vec<u64>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTensor {
    pub name: S<String>,
    pub shape: S<Vec<u64>>,
    pub dtype: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStrategy {
    pub mesh: S<String>,
    pub stages: Option<RawStages>,
    pub rules: S<Vec<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStages {
    pub axis: S<String>,
    pub layer: S<String>,
    pub layers_per_stage: Option<S<u64>>,
    pub ranges: Option<S<Vec<S<[u64; 2]>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    #[serde(rename = "match")]
    pub pattern: S<String>,
    pub dims: Option<S<RawDims>>,
    pub split: Option<S<RawSplit>>,
    pub partial: Option<S<Vec<S<String>>>>,
    pub at: Option<S<BTreeMap<String, S<RawCoords>>>>,
    pub mindspore: Option<S<RawMindSpore>>,
    pub placements: Option<S<Vec<S<String>>>>,
    pub spec: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMindSpore {
    pub dev_matrix: Vec<u64>,
    pub tensor_map: Vec<RawMapEntry>,
    #[serde(default)]
    pub opt_weight_shard_size: i64,
    /// Absent: the step MindSpore would record (not checked).
    #[serde(default)]
    pub opt_weight_shard_step: Option<i64>,
    #[serde(default)]
    pub param_split_shape: Vec<u64>,
}

/// A tensor-map entry: `-1`, `k`, or a nested list `[k1, k2]`.
#[derive(Debug)]
pub(crate) enum RawMapEntry {
    One(i64),
    Many(Vec<i64>),
}

impl<'de> Deserialize<'de> for RawMapEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMapEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a tensor-map entry: -1, an axis index, or a list of axis indices")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawMapEntry, E> {
                Ok(RawMapEntry::One(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawMapEntry, E> {
                i64::try_from(v)
                    .map(RawMapEntry::One)
                    .map_err(|_| E::custom("tensor-map entry out of range"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawMapEntry, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = a.next_element::<i64>()? {
                    out.push(x);
                }
                Ok(RawMapEntry::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Pinned coordinates of one axis: `1`, or a list `[0, 3]` for a tensor on
/// several stages.
#[derive(Debug)]
pub(crate) struct RawCoords(pub Vec<u64>);

impl<'de> Deserialize<'de> for RawCoords {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCoords;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a coordinate or a list of coordinates")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawCoords, E> {
                Ok(RawCoords(vec![v]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawCoords, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = a.next_element::<u64>()? {
                    out.push(x);
                }
                Ok(RawCoords(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTransfer {
    pub from: S<String>,
    pub to: S<String>,
}

/// `dims:` is either the word `replicated` or one entry per dimension.
#[derive(Debug)]
pub(crate) enum RawDims {
    Replicated(String),
    PerDim(Vec<S<RawDim>>),
}

/// One dimension: `null`, an axis, or a list of axes (outermost first).
#[derive(Debug)]
pub(crate) enum RawDim {
    None,
    Axes(Vec<S<String>>),
}

/// `split:` is one policy for every split dimension, or one per dimension.
#[derive(Debug)]
pub(crate) enum RawSplit {
    All(RawPolicy),
    PerDim(Vec<S<RawPolicy>>),
}

/// `even`, `chunk`, `balanced`, or `{blocks: [..]}`.
#[derive(Debug)]
pub(crate) enum RawPolicy {
    Named(String),
    Blocks(Vec<u64>),
}

// The "one of several shapes" fields are read with `deserialize_any` by hand:
// serde's untagged enums buffer the input and lose every span inside.

impl<'de> Deserialize<'de> for RawDims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDims;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`replicated` or a list with one entry per tensor dimension")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDims, E> {
                Ok(RawDims::Replicated(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawDims, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = a.next_element::<S<RawDim>>()? {
                    out.push(x);
                }
                Ok(RawDims::PerDim(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawDim {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDim;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("null, an axis name, or a list of axis names")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawDim, E> {
                Ok(RawDim::None)
            }
            fn visit_none<E: de::Error>(self) -> Result<RawDim, E> {
                Ok(RawDim::None)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDim, E> {
                // The span of a single name is the span of the whole entry;
                // lowering fills it in.
                Ok(RawDim::Axes(vec![Spanned::new(
                    v.to_string(),
                    serde_saphyr::Location::UNKNOWN,
                    serde_saphyr::Location::UNKNOWN,
                )]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawDim, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = a.next_element::<S<String>>()? {
                    out.push(x);
                }
                Ok(RawDim::Axes(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawSplit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSplit;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a split policy, or a list with one policy per tensor dimension")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSplit, E> {
                Ok(RawSplit::All(RawPolicy::Named(v.to_string())))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, a: A) -> Result<RawSplit, A::Error> {
                let b = BlocksOnly::deserialize(de::value::MapAccessDeserializer::new(a))?;
                Ok(RawSplit::All(RawPolicy::Blocks(b.blocks)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawSplit, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = a.next_element::<S<RawPolicy>>()? {
                    out.push(x);
                }
                Ok(RawSplit::PerDim(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlocksOnly {
    blocks: Vec<u64>,
}

impl<'de> Deserialize<'de> for RawPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawPolicy;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("even, chunk, balanced, or {blocks: [sizes]}")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawPolicy, E> {
                Ok(RawPolicy::Named("even".into()))
            }
            fn visit_none<E: de::Error>(self) -> Result<RawPolicy, E> {
                Ok(RawPolicy::Named("even".into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPolicy, E> {
                Ok(RawPolicy::Named(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, a: A) -> Result<RawPolicy, A::Error> {
                let b = BlocksOnly::deserialize(de::value::MapAccessDeserializer::new(a))?;
                Ok(RawPolicy::Blocks(b.blocks))
            }
        }
        d.deserialize_any(V)
    }
}

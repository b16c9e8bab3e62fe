//! MindSpore strategy files: the JSON form of its C++ strategy writer and
//! the protobuf `ParallelStrategyMap` (`strategy.ckpt`), one file per
//! pipeline stage or merged with `"<stage>-"` name prefixes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use prost::Message;

use crate::DType;
use crate::DeviceMesh;
use crate::TensorLayout;
use crate::notation::mindspore::{MindSporeLayout, STAGE_AXIS};
use crate::{LayoutError, Strategy, StrategyError, TensorInfo};

/// Messages generated from `proto/node_strategy.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/mindspore.straspb.rs"));
}

/// One parameter's layout as a strategy file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    /// Parameter name, without a merged-form stage prefix.
    pub name: String,
    /// Pipeline stage.
    pub stage: u64,
    /// Further stages holding the same parameter with the same layout
    /// (a tied embedding used by the first and the last stage), ascending.
    pub also_on: Vec<u64>,
    /// Device matrix of one stage.
    pub dev_matrix: Vec<u64>,
    /// Tensor map as stored: one list holding every dimension's entry, or
    /// (nested maps, protobuf only) one list per dimension. Resolved
    /// against the shape by [`ParamEntry::layout`].
    pub tensor_map: Vec<Vec<i64>>,
    /// Global shape, when the file records it (JSON does, protobuf not).
    pub shape: Option<Vec<u64>>,
    /// Optimizer shard size (0 or 1 = none).
    pub opt_weight_shard_size: i64,
    /// Optimizer shard step.
    pub opt_weight_shard_step: i64,
    /// Explicit dimension-0 block sizes.
    pub param_split_shape: Vec<u64>,
}

/// Every parameter of one or more strategy files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StrategyFile {
    /// Parameters, in file order.
    pub params: Vec<ParamEntry>,
    /// Number of pipeline stages (at least 1).
    pub stage_count: u64,
}

/// A strategy file that cannot be read or written: the file, and what is
/// wrong with it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{file}: {fault}")]
#[diagnostic(forward(fault))]
pub struct StrategyFileError {
    /// File name (or what was being written: `merged strategy`,
    /// ``strategy `name` ``).
    pub file: String,
    /// What is wrong with it; its code and help are the error's.
    pub fault: StrategyFileFault,
}

const INT32: &str = "MindSpore stores it as int32";

/// What is wrong with a strategy file being read, or with a strategy being
/// written as one, one variant per fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StrategyFileFault {
    /// A file that cannot be read.
    #[error(transparent)]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::read),
        help("check the path")
    )]
    Read(std::io::Error),
    /// JSON that is not a strategy document: a syntax error, or a top-level
    /// field missing or of the wrong type.
    #[error("line {line}, column {column}: {source}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::json),
        help("a MindSpore JSON strategy has `current_stage` and `parallel_layout_item`")
    )]
    Json {
        /// Line of the fault, from 1.
        line: usize,
        /// Column of the fault, from 1.
        column: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON layout with a field missing or of the wrong type.
    #[error("parameter `{parameter}`: {source}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::malformed_layout),
        help(
            "each layout has dev_matrix, tensor_map and (optionally) tensor_shape, opt_weight_shard_size, opt_weight_shard_step"
        )
    )]
    MalformedLayout {
        /// The parameter.
        parameter: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON tensor map entry that is not an integer (a nested map, which
    /// only the protobuf form holds).
    #[error("parameter `{parameter}`: tensor_map entry {entry} is not an integer")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::tensor_map_entry),
        help("JSON strategies hold flat tensor maps; nested maps need the protobuf form")
    )]
    TensorMapEntry {
        /// The parameter.
        parameter: String,
        /// The entry (boxed: errors stay small).
        entry: Box<serde_json::Value>,
    },
    /// A file that is neither JSON nor a protobuf `ParallelStrategyMap`.
    #[error("neither JSON nor a protobuf ParallelStrategyMap: {0}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::not_a_strategy),
        help("pass the strategy file MindSpore wrote (strategy.json or strategy.ckpt)")
    )]
    NotAStrategy(#[source] prost::DecodeError),
    /// A parameter with an empty name.
    #[error("a parameter has an empty name")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::empty_name),
        help("every parameter needs a name")
    )]
    EmptyName,
    /// A parameter listed twice for one stage in one file.
    #[error("parameter `{parameter}` is listed twice for stage {stage}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::listed_twice),
        help("each parameter has one layout per stage")
    )]
    ListedTwice {
        /// The parameter.
        parameter: String,
        /// The stage.
        stage: u64,
    },
    /// A parameter on two stages of one file with different layouts.
    #[error("parameter `{parameter}` is on stages {first} and {second} with different layouts")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::different_layouts),
        help("a parameter shared by several stages (a tied embedding) must be cut alike on each")
    )]
    DifferentLayouts {
        /// The parameter.
        parameter: String,
        /// The stage of its layout read before (the lowest so far).
        first: u64,
        /// The stage whose layout differs.
        second: u64,
    },
    /// A parameter listed for one stage in two of the files read together.
    #[error("parameter `{parameter}` is listed twice for stage {stage}, counting the other files")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::listed_twice_across_files),
        help("pass each stage's file once")
    )]
    ListedTwiceAcrossFiles {
        /// The parameter.
        parameter: String,
        /// The stage.
        stage: u64,
    },
    /// A parameter on two stages, in two of the files read together, with
    /// different layouts.
    #[error(
        "parameter `{parameter}` is on stages {first} and {second} with different layouts, counting the other files"
    )]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::different_layouts_across_files),
        help("pass each stage's file once")
    )]
    DifferentLayoutsAcrossFiles {
        /// The parameter.
        parameter: String,
        /// The stage of its layout read before (the lowest so far).
        first: u64,
        /// The stage whose layout differs.
        second: u64,
    },
    /// A nested tensor map merged into the JSON form, which holds flat
    /// maps only.
    #[error("parameter `{parameter}` has a nested tensor map")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::merge_nested_map),
        help("merge into the protobuf form (.ckpt)")
    )]
    MergeNestedMap {
        /// The parameter.
        parameter: String,
    },
    /// A tensor map entry or optimizer shard value merged into the
    /// protobuf form that does not fit its int32 field.
    #[error("parameter `{parameter}`: {value} does not fit int32")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::merge_out_of_range),
        help("{}", INT32)
    )]
    MergeOutOfRange {
        /// The parameter.
        parameter: String,
        /// The value.
        value: i64,
    },
    /// A layout MindSpore's notation cannot express (partial sums, pins
    /// other than a first-axis stage, uneven splits other than
    /// `param_split_shape`).
    #[error("tensor `{tensor}`: {source}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::inexpressible),
        help("express the layout in MindSpore terms or leave it out")
    )]
    Inexpressible {
        /// The tensor.
        tensor: String,
        /// Why the notation cannot express it (boxed: errors stay small).
        #[source]
        source: Box<crate::LayoutError>,
    },
    /// A dimension split over several axes (a nested tensor map) written in
    /// the JSON form, which holds flat maps only.
    #[error("tensor `{tensor}` splits a dimension over several axes")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::split_over_axes),
        help("write the protobuf form (--format mindspore-pb), which holds nested tensor maps")
    )]
    SplitOverAxes {
        /// The tensor.
        tensor: String,
    },
    /// A value written in the protobuf form that does not fit its int32
    /// field.
    #[error("tensor `{tensor}`: {field} {value} does not fit int32")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::out_of_range),
        help("{}", INT32)
    )]
    OutOfRange {
        /// The tensor.
        tensor: String,
        /// The field (`tensor_map entry`, `opt_weight_shard_step`,
        /// `opt_weight_shard_size`).
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// A device matrix entry written in the protobuf form that does not
    /// fit its uint32 field.
    #[error("tensor `{tensor}`: device matrix entry {value} too large")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::device_matrix_entry),
        help("MindSpore stores it as uint32")
    )]
    DeviceMatrixEntry {
        /// The tensor.
        tensor: String,
        /// The entry.
        value: u64,
    },
}

impl StrategyFileFault {
    /// The fault in `file`.
    fn of(self, file: &str) -> StrategyFileError {
        StrategyFileError {
            file: file.to_string(),
            fault: self,
        }
    }
}

const SAME_RUN: &str = "pass the strategy files and the checkpoint (or spec) of the same run";

/// A strategy file's layout that does not fit the tensors it is applied
/// to, one variant per fault. Each names the parameter when one is at
/// fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StrategyLayoutError {
    /// A tensor map with another number of dimensions than the tensor.
    #[error(
        "parameter `{parameter}`: tensor_map {tensor_map:?} does not fit a tensor of {rank} dimensions"
    )]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::tensor_map_rank),
        help("a tensor map has one entry per dimension of its tensor; {}", SAME_RUN)
    )]
    TensorMapRank {
        /// The parameter.
        parameter: String,
        /// The tensor map as stored.
        tensor_map: Vec<Vec<i64>>,
        /// The tensor's number of dimensions.
        rank: usize,
    },
    /// A tensor map with another number of dimensions than the shape it is
    /// laid over.
    #[error(
        "parameter `{parameter}`: tensor_map {tensor_map:?} does not fit a tensor of shape {shape:?}"
    )]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::tensor_map_shape),
        help("a tensor map has one entry per dimension of its tensor; {}", SAME_RUN)
    )]
    TensorMapShape {
        /// The parameter.
        parameter: String,
        /// The tensor map as stored.
        tensor_map: Vec<Vec<i64>>,
        /// The tensor's shape.
        shape: Vec<u64>,
    },
    /// A layout whose device matrix, tensor map, optimizer shard or stages
    /// do not make a layout of its tensor.
    #[error("parameter `{parameter}`: {source}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::layout),
        help(
            "the device matrix, tensor map, optimizer shard and stages must make a layout of the tensor; {}",
            SAME_RUN
        )
    )]
    Layout {
        /// The parameter.
        parameter: String,
        /// Why the layout does not fit.
        #[source]
        source: LayoutError,
    },
    /// A device matrix whose product overflows 64 bits.
    #[error("parameter `{parameter}`: dev_matrix {dev_matrix:?} overflows")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::dev_matrix_overflow),
        help("a device matrix's product is the devices of one stage; fix the file's dev_matrix")
    )]
    DevMatrixOverflow {
        /// The parameter.
        parameter: String,
        /// The device matrix.
        dev_matrix: Vec<u64>,
    },
    /// Parameters whose device matrices span different numbers of devices.
    #[error("parameter `{parameter}` spans {devices} devices per stage, others {others}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::stage_devices),
        help("every stage has as many devices; pass the files of one run")
    )]
    StageDevices {
        /// The parameter that differs from those before it.
        parameter: String,
        /// Its devices per stage.
        devices: u64,
        /// The devices per stage of the parameters before it.
        others: u64,
    },
    /// A parameter with another shape in the files than in the tensors
    /// given.
    #[error(
        "parameter `{parameter}` has shape {in_strategy:?} in the strategy but {given:?} in the checkpoint"
    )]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::shape_mismatch),
        help("{}", SAME_RUN)
    )]
    ShapeMismatch {
        /// The parameter.
        parameter: String,
        /// Its shape in the strategy file.
        in_strategy: Vec<u64>,
        /// Its shape in the tensors given.
        given: Vec<u64>,
    },
    /// The mesh of the files (stages by devices per stage) that cannot be
    /// built.
    #[error("{0}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::mesh),
        help(
            "the stages and devices per stage make the mesh; fix the file's current_stage or dev_matrix"
        )
    )]
    Mesh(#[source] LayoutError),
    /// A tensor the files do not lay out that cannot be held whole.
    #[error("{source}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::replicated),
        help("a tensor missing from the files is held whole by every rank; check its shape")
    )]
    Replicated {
        /// The tensor.
        tensor: String,
        /// Why it cannot be held whole.
        #[source]
        source: LayoutError,
    },
    /// The layouts, each fitting, that do not make a strategy.
    #[error("{0}")]
    #[diagnostic(
        code(shardplan::formats::mindspore_strategy::strategy),
        help("{}", SAME_RUN)
    )]
    Strategy(#[source] StrategyError),
}

#[derive(serde::Deserialize, serde::Serialize)]
struct JsonFile {
    #[serde(default)]
    current_stage: u64,
    #[serde(default)]
    parallel_strategy_item: serde_json::Map<String, serde_json::Value>,
    parallel_layout_item: serde_json::Map<String, serde_json::Value>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct JsonLayout {
    dev_matrix: Vec<u64>,
    tensor_map: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tensor_shape: Option<Vec<u64>>,
    #[serde(default)]
    field: i64,
    #[serde(default)]
    opt_weight_shard_step: i64,
    #[serde(default)]
    opt_weight_shard_size: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    param_split_shape: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    indices_offset: Vec<u64>,
}

/// Splits a merged-form name `"<stage>-<name>"`.
fn stage_prefix(name: &str) -> Option<(u64, &str)> {
    let (head, rest) = name.split_once('-')?;
    if head.is_empty() || !head.bytes().all(|b| b.is_ascii_digit()) || rest.is_empty() {
        return None;
    }
    Some((head.parse().ok()?, rest))
}

/// Reads one strategy file (JSON or protobuf, told apart by content).
///
/// A file is in the merged form when every parameter name carries a
/// `"<stage>-"` prefix; then the prefix gives the stage and is stripped
/// (only the first `-` is split on, so names containing `-` survive).
/// Otherwise every parameter is on the file's `current_stage`.
///
/// # Errors
///
/// [`StrategyFileError`] naming `file`, with its [`StrategyFileFault`]:
/// [`NotAStrategy`](StrategyFileFault::NotAStrategy) for a file that is
/// neither; [`Json`](StrategyFileFault::Json) for JSON with a syntax error
/// or a missing top-level field (line and column named);
/// [`MalformedLayout`](StrategyFileFault::MalformedLayout) and
/// [`TensorMapEntry`](StrategyFileFault::TensorMapEntry) for a layout with
/// a malformed field; [`EmptyName`](StrategyFileFault::EmptyName);
/// [`ListedTwice`](StrategyFileFault::ListedTwice) and
/// [`DifferentLayouts`](StrategyFileFault::DifferentLayouts) for a
/// parameter listed twice for one stage, or on two with different layouts.
pub fn parse_strategy_file(file: &str, bytes: &[u8]) -> Result<StrategyFile, StrategyFileError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let (current, raw): (u64, Vec<(String, ParamEntry)>) = if first == Some(&b'{') {
        parse_json(file, bytes)?
    } else {
        parse_pb(file, bytes)?
    };
    let merged = !raw.is_empty() && raw.iter().all(|(n, _)| stage_prefix(n).is_some());
    let mut params: Vec<ParamEntry> = Vec::with_capacity(raw.len());
    for (name, mut p) in raw {
        if merged {
            let (stage, bare) = stage_prefix(&name).expect("checked");
            p.stage = stage;
            p.name = bare.to_string();
        } else {
            p.stage = current;
            p.name = name;
        }
        if p.name.is_empty() {
            return Err(StrategyFileFault::EmptyName.of(file));
        }
        add_param(&mut params, p).map_err(|c| c.in_one_file().of(file))?;
    }
    // Stage numbers come from the file: a huge one must fail later, when
    // its mesh is built, not overflow here.
    let stage_count = params
        .iter()
        .map(|p| {
            p.also_on
                .last()
                .copied()
                .unwrap_or(p.stage)
                .saturating_add(1)
        })
        .max()
        .unwrap_or(1)
        .max(current.saturating_add(1));
    Ok(StrategyFile {
        params,
        stage_count,
    })
}

/// Why [`add_param`] refused an entry: the fault of one file, or of the
/// files read together.
enum Clash {
    /// Listed twice for one stage.
    Twice { parameter: String, stage: u64 },
    /// On two stages with different layouts.
    Differ {
        parameter: String,
        first: u64,
        second: u64,
    },
}

impl Clash {
    fn in_one_file(self) -> StrategyFileFault {
        match self {
            Clash::Twice { parameter, stage } => {
                StrategyFileFault::ListedTwice { parameter, stage }
            }
            Clash::Differ {
                parameter,
                first,
                second,
            } => StrategyFileFault::DifferentLayouts {
                parameter,
                first,
                second,
            },
        }
    }

    fn across_files(self) -> StrategyFileFault {
        match self {
            Clash::Twice { parameter, stage } => {
                StrategyFileFault::ListedTwiceAcrossFiles { parameter, stage }
            }
            Clash::Differ {
                parameter,
                first,
                second,
            } => StrategyFileFault::DifferentLayoutsAcrossFiles {
                parameter,
                first,
                second,
            },
        }
    }
}

/// Adds `p` to `params`, or, when the parameter is already there for
/// another stage with the same layout, records the stage on that entry.
///
/// # Errors
///
/// [`Clash`] when the parameter is listed twice for one stage, or on two
/// stages with different layouts.
fn add_param(params: &mut Vec<ParamEntry>, p: ParamEntry) -> Result<(), Clash> {
    let Some(old) = params.iter_mut().find(|q| q.name == p.name) else {
        params.push(p);
        return Ok(());
    };
    if old.stage == p.stage || old.also_on.contains(&p.stage) {
        return Err(Clash::Twice {
            parameter: p.name,
            stage: p.stage,
        });
    }
    let same_cut = old.dev_matrix == p.dev_matrix
        && old.tensor_map == p.tensor_map
        && old.opt_weight_shard_size == p.opt_weight_shard_size
        && old.opt_weight_shard_step == p.opt_weight_shard_step
        && old.param_split_shape == p.param_split_shape
        && (old.shape.is_none() || p.shape.is_none() || old.shape == p.shape);
    if !same_cut {
        return Err(Clash::Differ {
            parameter: p.name,
            first: old.stage,
            second: p.stage,
        });
    }
    old.shape = old.shape.take().or(p.shape);
    // Keep the lowest stage first and the others ascending.
    let mut all: Vec<u64> = std::iter::once(old.stage)
        .chain(old.also_on.iter().copied())
        .chain([p.stage])
        .collect();
    all.sort_unstable();
    old.stage = all[0];
    old.also_on = all[1..].to_vec();
    Ok(())
}

type Parsed = (u64, Vec<(String, ParamEntry)>);

fn parse_json(file: &str, bytes: &[u8]) -> Result<Parsed, StrategyFileError> {
    let doc: JsonFile = serde_json::from_slice(bytes).map_err(|source| {
        StrategyFileFault::Json {
            line: source.line(),
            column: source.column(),
            source,
        }
        .of(file)
    })?;
    let mut out = Vec::new();
    for (name, v) in doc.parallel_layout_item {
        let l: JsonLayout = serde_json::from_value(v).map_err(|source| {
            StrategyFileFault::MalformedLayout {
                parameter: name.clone(),
                source,
            }
            .of(file)
        })?;
        let mut flat = Vec::with_capacity(l.tensor_map.len());
        for e in &l.tensor_map {
            match e.as_i64() {
                Some(k) => flat.push(k),
                None => {
                    return Err(StrategyFileFault::TensorMapEntry {
                        parameter: name,
                        entry: Box::new(e.clone()),
                    }
                    .of(file));
                }
            }
        }
        out.push((
            name.clone(),
            ParamEntry {
                name,
                stage: 0,
                also_on: Vec::new(),
                dev_matrix: l.dev_matrix,
                tensor_map: vec![flat],
                shape: l.tensor_shape,
                opt_weight_shard_size: l.opt_weight_shard_size,
                opt_weight_shard_step: l.opt_weight_shard_step,
                param_split_shape: l.param_split_shape,
            },
        ));
    }
    Ok((doc.current_stage, out))
}

fn parse_pb(file: &str, bytes: &[u8]) -> Result<Parsed, StrategyFileError> {
    let map = pb::ParallelStrategyMap::decode(bytes)
        .map_err(|e| StrategyFileFault::NotAStrategy(e).of(file))?;
    let mut out = Vec::new();
    for item in map.parallel_layout_item {
        let l = item.parallel_layouts;
        let dev: Vec<u64> = l
            .dev_matrix
            .iter()
            .flat_map(|d| d.dim.iter().map(|&x| u64::from(x)))
            .collect();
        let split: Vec<u64> = l
            .param_split_shape
            .iter()
            .flat_map(|d| d.dim.iter().copied())
            .map(|x| u64::try_from(x).unwrap_or(0))
            .collect();
        out.push((
            item.param_name.clone(),
            ParamEntry {
                name: item.param_name,
                stage: 0,
                also_on: Vec::new(),
                dev_matrix: dev,
                tensor_map: l
                    .tensor_map
                    .iter()
                    .map(|t| t.dim.iter().map(|&x| i64::from(x)).collect())
                    .collect(),
                shape: None,
                opt_weight_shard_size: i64::from(l.opt_weight_shard_size),
                opt_weight_shard_step: i64::from(l.opt_weight_shard_step),
                param_split_shape: split,
            },
        ));
    }
    Ok((u64::from(map.current_stage), out))
}

/// Reads several files (per-stage files, or one merged file) as one
/// strategy.
///
/// # Errors
///
/// [`StrategyFileError`] naming the file: [`StrategyFileFault::Read`] for a
/// file that cannot be read, the faults of [`parse_strategy_file`], and
/// [`ListedTwiceAcrossFiles`](StrategyFileFault::ListedTwiceAcrossFiles) or
/// [`DifferentLayoutsAcrossFiles`](StrategyFileFault::DifferentLayoutsAcrossFiles)
/// for a parameter in two files.
pub fn read_strategy_files(paths: &[&Path]) -> Result<StrategyFile, StrategyFileError> {
    let mut all = StrategyFile {
        params: Vec::new(),
        stage_count: 1,
    };
    for path in paths {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| StrategyFileFault::Read(e).of(&name))?;
        let f = parse_strategy_file(&name, &bytes)?;
        all.stage_count = all.stage_count.max(f.stage_count);
        for p in f.params {
            // Stages one by one: a parameter on several stages is in
            // several files.
            for one in p.per_stage() {
                add_param(&mut all.params, one).map_err(|c| c.across_files().of(&name))?;
            }
        }
    }
    Ok(all)
}

impl ParamEntry {
    /// The entry once per stage it is on, each on that stage alone.
    fn per_stage(&self) -> impl Iterator<Item = ParamEntry> + '_ {
        std::iter::once(self.stage)
            .chain(self.also_on.iter().copied())
            .map(|stage| ParamEntry {
                stage,
                also_on: Vec::new(),
                ..self.clone()
            })
    }

    /// The tensor map per dimension, resolved against a tensor of `rank`
    /// dimensions. A single stored map is flat (an entry per dimension), as
    /// MindSpore reads it; several are nested (one per dimension), where
    /// the empty entries are dropped: MindSpore's writer pads the nested map
    /// of a 1-D tensor with an empty one so that it is not read as flat.
    fn tensor_map_for(&self, rank: usize) -> Option<Vec<Vec<i64>>> {
        match self.tensor_map.as_slice() {
            [flat] => (flat.len() == rank).then(|| flat.iter().map(|&k| vec![k]).collect()),
            nested => {
                let per_dim: Vec<Vec<i64>> =
                    nested.iter().filter(|e| !e.is_empty()).cloned().collect();
                (per_dim.len() == rank).then_some(per_dim)
            }
        }
    }

    /// This entry in MindSpore's notation, for a tensor of `rank`
    /// dimensions on a strategy of `stage_count` stages.
    ///
    /// # Errors
    ///
    /// [`StrategyLayoutError::TensorMapRank`] when the tensor map does not
    /// fit that many dimensions.
    pub fn mindspore_layout(
        &self,
        rank: usize,
        stage_count: u64,
    ) -> Result<MindSporeLayout, StrategyLayoutError> {
        let tensor_map =
            self.tensor_map_for(rank)
                .ok_or_else(|| StrategyLayoutError::TensorMapRank {
                    parameter: self.name.clone(),
                    tensor_map: self.tensor_map.clone(),
                    rank,
                })?;
        Ok(MindSporeLayout {
            dev_matrix: self.dev_matrix.clone(),
            tensor_map,
            opt_weight_shard_size: self.opt_weight_shard_size,
            opt_weight_shard_step: self.opt_weight_shard_step,
            param_split_shape: self.param_split_shape.clone(),
            stage: self.stage,
            stage_count,
        })
    }

    /// The layout of this parameter for a tensor of `shape` on a strategy of
    /// `stage_count` stages.
    ///
    /// # Errors
    ///
    /// [`StrategyLayoutError::TensorMapShape`] when the tensor map does not
    /// fit the shape, [`StrategyLayoutError::Layout`] when the entry does
    /// not make a layout of it.
    pub fn layout(
        &self,
        shape: &[u64],
        stage_count: u64,
    ) -> Result<TensorLayout, StrategyLayoutError> {
        let ms = self
            .mindspore_layout(shape.len(), stage_count)
            .map_err(|_| StrategyLayoutError::TensorMapShape {
                parameter: self.name.clone(),
                tensor_map: self.tensor_map.clone(),
                shape: shape.to_vec(),
            })?;
        ms.to_layout_on_stages(shape, &self.also_on)
            .map_err(|source| StrategyLayoutError::Layout {
                parameter: self.name.clone(),
                source,
            })
    }

    /// Devices of one stage this entry spans (its device matrix's product).
    fn stage_devices(&self) -> Result<u64, StrategyLayoutError> {
        self.dev_matrix
            .iter()
            .try_fold(1u64, |a, &b| a.checked_mul(b))
            .ok_or_else(|| StrategyLayoutError::DevMatrixOverflow {
                parameter: self.name.clone(),
                dev_matrix: self.dev_matrix.clone(),
            })
    }
}

impl StrategyFile {
    /// Devices of one stage (the device matrices' product).
    ///
    /// # Errors
    ///
    /// [`StrategyLayoutError::DevMatrixOverflow`] when a product
    /// overflows, [`StrategyLayoutError::StageDevices`] when parameters
    /// disagree.
    pub fn stage_devices(&self) -> Result<u64, StrategyLayoutError> {
        let mut n: Option<u64> = None;
        for p in &self.params {
            let devices = p.stage_devices()?;
            match n {
                Some(others) if others != devices => {
                    return Err(StrategyLayoutError::StageDevices {
                        parameter: p.name.clone(),
                        devices,
                        others,
                    });
                }
                _ => n = Some(devices),
            }
        }
        Ok(n.unwrap_or(1))
    }

    /// The mesh of these files: `[rank = n]`, or `[stage = S, rank = n]`
    /// with pipeline stages.
    fn mesh(&self) -> Result<Arc<DeviceMesh>, StrategyLayoutError> {
        let n = self.stage_devices()?;
        let axes: Vec<(&str, u64)> = if self.stage_count > 1 {
            vec![(STAGE_AXIS, self.stage_count), ("rank", n)]
        } else {
            vec![("rank", n)]
        };
        DeviceMesh::new(axes)
            .map(Arc::new)
            .map_err(StrategyLayoutError::Mesh)
    }

    /// The layout of tensor `t` on `mesh`: its entry's, or whole on every
    /// rank when the files do not name it.
    fn layout_of(
        &self,
        entry: Option<&ParamEntry>,
        t: &TensorInfo,
        mesh: &Arc<DeviceMesh>,
    ) -> Result<TensorLayout, StrategyLayoutError> {
        let Some(p) = entry else {
            return TensorLayout::replicated(mesh.clone(), &t.shape).map_err(|source| {
                StrategyLayoutError::Replicated {
                    tensor: t.name.clone(),
                    source,
                }
            });
        };
        if let Some(s) = p.shape.as_ref().filter(|s| **s != t.shape) {
            return Err(StrategyLayoutError::ShapeMismatch {
                parameter: t.name.clone(),
                in_strategy: s.clone(),
                given: t.shape.clone(),
            });
        }
        p.layout(&t.shape, self.stage_count)
    }

    /// The strategy these files describe, for the tensors in `tensors`
    /// (shapes and dtypes come from there, e.g. from a checkpoint or a
    /// spec). A tensor the files do not lay out is held whole by every rank,
    /// as MindSpore does with parameters missing from a strategy.
    ///
    /// The mesh is `[rank = n]`, or `[stage = S, rank = n]` with pipeline
    /// stages.
    ///
    /// # Errors
    ///
    /// A [`StrategyLayoutError`], naming the parameter when a layout does
    /// not fit.
    pub fn to_strategy(
        &self,
        name: &str,
        tensors: &[TensorInfo],
    ) -> Result<Strategy, StrategyLayoutError> {
        let mesh = self.mesh()?;
        let by_name: BTreeMap<&str, &ParamEntry> =
            self.params.iter().map(|p| (p.name.as_str(), p)).collect();
        let layouts = tensors
            .iter()
            .map(|t| self.layout_of(by_name.get(t.name.as_str()).copied(), t, &mesh))
            .collect::<Result<Vec<_>, _>>()?;
        Strategy::new(name, mesh, tensors.to_vec(), layouts).map_err(StrategyLayoutError::Strategy)
    }

    /// Tensors with the shapes the files record (JSON only), in file order.
    ///
    /// # Errors
    ///
    /// The name of the first parameter without a recorded shape.
    pub fn tensors(&self, dtype: DType) -> Result<Vec<TensorInfo>, String> {
        self.params
            .iter()
            .map(|p| {
                let shape = p.shape.clone().ok_or_else(|| p.name.clone())?;
                Ok(TensorInfo {
                    name: p.name.clone(),
                    shape,
                    dtype,
                })
            })
            .collect()
    }
}

impl StrategyFile {
    /// The parameters as one merged file (names prefixed `"<stage>-"`), the
    /// counterpart of MindSpore's `merge_pipeline_strategys`. Works on the
    /// entries as read, so protobuf files without shapes merge too.
    ///
    /// # Errors
    ///
    /// [`StrategyFileError`] naming `merged strategy`:
    /// [`MergeNestedMap`](StrategyFileFault::MergeNestedMap) for a nested
    /// tensor map in JSON, [`MergeOutOfRange`](StrategyFileFault::MergeOutOfRange)
    /// for a value that does not fit protobuf's integer fields.
    pub fn write_merged(&self, format: StrategyFormat) -> Result<Vec<u8>, StrategyFileError> {
        let what = "merged strategy";
        let current = self.stage_count.max(1) - 1;
        let name = |p: &ParamEntry| format!("{}-{}", p.stage, p.name);
        // One entry per stage of a parameter on several.
        let per_stage: Vec<ParamEntry> =
            self.params.iter().flat_map(ParamEntry::per_stage).collect();
        match format {
            StrategyFormat::Json => {
                let mut items = serde_json::Map::new();
                for p in &per_stage {
                    let [flat] = p.tensor_map.as_slice() else {
                        return Err(StrategyFileFault::MergeNestedMap {
                            parameter: p.name.clone(),
                        }
                        .of(what));
                    };
                    let l = JsonLayout {
                        dev_matrix: p.dev_matrix.clone(),
                        tensor_map: flat.iter().map(|&k| serde_json::Value::from(k)).collect(),
                        tensor_shape: p.shape.clone(),
                        field: 0,
                        opt_weight_shard_step: p.opt_weight_shard_step,
                        opt_weight_shard_size: p.opt_weight_shard_size,
                        param_split_shape: p.param_split_shape.clone(),
                        indices_offset: Vec::new(),
                    };
                    items.insert(name(p), serde_json::to_value(l).expect("serializes"));
                }
                let doc = JsonFile {
                    current_stage: current,
                    parallel_strategy_item: serde_json::Map::new(),
                    parallel_layout_item: items,
                };
                Ok(serde_json::to_vec(&doc).expect("serializes"))
            }
            StrategyFormat::Protobuf => {
                let int = |v: i64, p: &ParamEntry| {
                    i32::try_from(v).map_err(|_| {
                        StrategyFileFault::MergeOutOfRange {
                            parameter: p.name.clone(),
                            value: v,
                        }
                        .of(what)
                    })
                };
                let mut items = Vec::new();
                for p in &per_stage {
                    items.push(pb::ParallelLayoutItem {
                        param_name: name(p),
                        parallel_layouts: pb::ParallelLayouts {
                            dev_matrix: vec![pb::DevMatrix {
                                dim: p
                                    .dev_matrix
                                    .iter()
                                    .map(|&d| u32::try_from(d).unwrap_or(u32::MAX))
                                    .collect(),
                            }],
                            tensor_map: p
                                .tensor_map
                                .iter()
                                .map(|e| {
                                    Ok(pb::TensorMap {
                                        dim: e
                                            .iter()
                                            .map(|&k| int(k, p))
                                            .collect::<Result<_, _>>()?,
                                    })
                                })
                                .collect::<Result<_, StrategyFileError>>()?,
                            param_split_shape: vec![pb::ParamSplitShape {
                                dim: p.param_split_shape.iter().map(|&x| x as i64).collect(),
                            }],
                            indices_offset: vec![pb::IndicesOffset { dim: Vec::new() }],
                            field: 0,
                            opt_weight_shard_step: int(p.opt_weight_shard_step, p)?,
                            opt_weight_shard_size: int(p.opt_weight_shard_size, p)?,
                        },
                    });
                }
                let map = pb::ParallelStrategyMap {
                    current_stage: u32::try_from(current).unwrap_or(u32::MAX),
                    parallel_strategy_item: Vec::new(),
                    parallel_layout_item: items,
                };
                Ok(map.encode_to_vec())
            }
        }
    }
}

/// Output form of [`write_strategy_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StrategyFormat {
    /// JSON, as MindSpore's C++ writer produces (flat tensor maps only).
    Json,
    /// Protobuf `ParallelStrategyMap`.
    Protobuf,
}

/// Writes `strategy` as one MindSpore strategy file. With several pipeline
/// stages, the merged form is written (names prefixed `"<stage>-"`), as
/// `merge_pipeline_strategys` does; also when every name already looks
/// like `"<digits>-<rest>"`, which [`parse_strategy_file`] would otherwise
/// take for the merged form.
///
/// # Errors
///
/// [`StrategyFileError`] naming ``strategy `name` ``:
/// [`Inexpressible`](StrategyFileFault::Inexpressible) for a layout
/// MindSpore cannot express (partial sums, pins other than a first-axis
/// stage, uneven splits other than `param_split_shape`);
/// [`SplitOverAxes`](StrategyFileFault::SplitOverAxes) for a nested tensor
/// map in JSON; [`OutOfRange`](StrategyFileFault::OutOfRange) and
/// [`DeviceMatrixEntry`](StrategyFileFault::DeviceMatrixEntry) for a value
/// that does not fit protobuf's integer fields.
pub fn write_strategy_file(
    strategy: &Strategy,
    format: StrategyFormat,
) -> Result<Vec<u8>, StrategyFileError> {
    let what = format!("strategy `{}`", strategy.name());
    let entries = stage_entries(strategy, &what)?;
    // Names that all look stage-prefixed would be read as the merged form
    // and lose their first part, so they are written prefixed too.
    let merged = entries.iter().any(|(_, ms)| ms.stage_count > 1)
        || (!entries.is_empty() && entries.iter().all(|(t, _)| stage_prefix(&t.name).is_some()));
    let named: Vec<(String, &TensorInfo, &MindSporeLayout)> = entries
        .iter()
        .map(|(t, ms)| {
            let name = if merged {
                format!("{}-{}", ms.stage, t.name)
            } else {
                t.name.clone()
            };
            (name, *t, ms)
        })
        .collect();
    // The last stage's index, as merge_pipeline_strategys writes it; it
    // also carries the stage count when the last stage holds no parameter.
    let current = entries
        .iter()
        .map(|(_, ms)| ms.stage_count)
        .max()
        .unwrap_or(1)
        - 1;
    match format {
        StrategyFormat::Json => json_strategy(&named, current, &what),
        StrategyFormat::Protobuf => {
            let items = named
                .iter()
                .map(|(name, t, ms)| protobuf_item(name, t, ms, &what))
                .collect::<Result<Vec<_>, _>>()?;
            let map = pb::ParallelStrategyMap {
                current_stage: u32::try_from(current).unwrap_or(u32::MAX),
                parallel_strategy_item: Vec::new(),
                parallel_layout_item: items,
            };
            Ok(map.encode_to_vec())
        }
    }
}

/// Each tensor of `strategy` in MindSpore's notation, once per stage it
/// is on.
fn stage_entries<'s>(
    strategy: &'s Strategy,
    what: &str,
) -> Result<Vec<(&'s TensorInfo, MindSporeLayout)>, StrategyFileError> {
    let mut entries = Vec::new();
    let staged = strategy
        .layouts()
        .iter()
        .any(|l| l.pinned_coords(0).next().is_some());
    for (t, l) in strategy.tensors().iter().zip(strategy.layouts()) {
        // A tensor on several stages is one entry per stage; one on every
        // stage has no stage pin left, and is one entry per stage too. The
        // first axis is the stage axis when some tensor is pinned on it.
        let on_every_stage = staged && l.pinned_coords(0).next().is_none();
        let per_stage = if on_every_stage {
            l.pinned_each(0)
        } else {
            l.split_pins()
        };
        for one in per_stage {
            let ms = MindSporeLayout::from_layout(&one).map_err(|source| {
                StrategyFileFault::Inexpressible {
                    tensor: t.name.clone(),
                    source: Box::new(source),
                }
                .of(what)
            })?;
            entries.push((t, ms));
        }
    }
    Ok(entries)
}

/// The entries as a JSON strategy file (flat tensor maps only).
fn json_strategy(
    named: &[(String, &TensorInfo, &MindSporeLayout)],
    current: u64,
    what: &str,
) -> Result<Vec<u8>, StrategyFileError> {
    let mut items = serde_json::Map::new();
    for (name, t, ms) in named {
        if !ms.is_flat() {
            return Err(StrategyFileFault::SplitOverAxes {
                tensor: t.name.clone(),
            }
            .of(what));
        }
        let l = JsonLayout {
            dev_matrix: ms.dev_matrix.clone(),
            tensor_map: ms
                .tensor_map
                .iter()
                .map(|e| serde_json::Value::from(e[0]))
                .collect(),
            tensor_shape: Some(t.shape.clone()),
            field: 0,
            opt_weight_shard_step: ms.opt_weight_shard_step,
            opt_weight_shard_size: ms.opt_weight_shard_size,
            param_split_shape: ms.param_split_shape.clone(),
            indices_offset: Vec::new(),
        };
        items.insert(name.clone(), serde_json::to_value(l).expect("serializes"));
    }
    let doc = JsonFile {
        current_stage: current,
        parallel_strategy_item: serde_json::Map::new(),
        parallel_layout_item: items,
    };
    Ok(serde_json::to_vec(&doc).expect("serializes"))
}

/// One entry as a protobuf layout item, its values checked against the
/// protobuf fields' integer types.
fn protobuf_item(
    name: &str,
    t: &TensorInfo,
    ms: &MindSporeLayout,
    what: &str,
) -> Result<pb::ParallelLayoutItem, StrategyFileError> {
    let to_i32 = |v: i64, field: &'static str| {
        i32::try_from(v).map_err(|_| {
            StrategyFileFault::OutOfRange {
                tensor: t.name.clone(),
                field,
                value: v,
            }
            .of(what)
        })
    };
    let dev = ms
        .dev_matrix
        .iter()
        .map(|&d| {
            u32::try_from(d).map_err(|_| {
                StrategyFileFault::DeviceMatrixEntry {
                    tensor: t.name.clone(),
                    value: d,
                }
                .of(what)
            })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let map_of = |e: &[i64]| -> Result<pb::TensorMap, StrategyFileError> {
        Ok(pb::TensorMap {
            dim: e
                .iter()
                .map(|&k| to_i32(k, "tensor_map entry"))
                .collect::<Result<_, _>>()?,
        })
    };
    let tensor_map = if ms.is_flat() {
        let flat: Vec<i64> = ms.tensor_map.iter().map(|e| e[0]).collect();
        vec![map_of(&flat)?]
    } else {
        let mut nested = ms
            .tensor_map
            .iter()
            .map(|e| map_of(e))
            .collect::<Result<Vec<_>, _>>()?;
        if nested.len() == 1 {
            // MindSpore reads a single map as flat: a 1-D tensor's nested
            // map gets an empty one after it, as MindSpore's writer does.
            nested.push(pb::TensorMap { dim: Vec::new() });
        }
        nested
    };
    Ok(pb::ParallelLayoutItem {
        param_name: name.to_string(),
        parallel_layouts: pb::ParallelLayouts {
            dev_matrix: vec![pb::DevMatrix { dim: dev }],
            tensor_map,
            param_split_shape: vec![pb::ParamSplitShape {
                dim: ms.param_split_shape.iter().map(|&x| x as i64).collect(),
            }],
            indices_offset: vec![pb::IndicesOffset { dim: Vec::new() }],
            field: 0,
            opt_weight_shard_step: to_i32(ms.opt_weight_shard_step, "opt_weight_shard_step")?,
            opt_weight_shard_size: to_i32(ms.opt_weight_shard_size, "opt_weight_shard_size")?,
        },
    })
}

//! MindSpore strategy files: the JSON form of its C++ strategy writer and
//! the protobuf `ParallelStrategyMap` (`strategy.ckpt`), one file per
//! pipeline stage or merged with `"<stage>-"` name prefixes.
//!
//! One file per job: `mod.rs` the file types, `error.rs` the errors,
//! `parse.rs` reading JSON and protobuf, `layout.rs` the layouts and
//! `to_strategy`, `write.rs` merging and writing files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use prost::Message;

use crate::DType;
use crate::DeviceMesh;
use crate::TensorLayout;
use crate::notation::mindspore::{MindSporeLayout, STAGE_AXIS};
use crate::{LayoutError, Strategy, StrategyError, TensorInfo};

mod error;
mod layout;
mod parse;
mod write;

pub use error::{StrategyFileError, StrategyFileFault, StrategyLayoutError};
use parse::{JsonFile, JsonLayout, stage_prefix};
pub use parse::{parse_strategy_file, read_strategy_files};
pub use write::{StrategyFormat, write_strategy_file};

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

//! MindSpore strategy files: every conformance case's strategy files read
//! back as the layouts its `case.json` states; written files read back the
//! same.
//!
//! This file holds the shared imports and helpers; the checks are in
//! `strategy_files.rs`, `bad_inputs.rs`, `checkpoints.rs` and `encodings.rs`.

mod bad_inputs;
mod checkpoints;
mod encodings;
mod strategy_files;

use std::path::{Path, PathBuf};

use crate::common;

use common::conformance_cases;
use serde_json::Value;
use shardplan::formats::mindspore::strategy::{
    StrategyFileFault, StrategyFormat, StrategyLayoutError, parse_strategy_file,
    read_strategy_files, write_strategy_file,
};
use shardplan::import::{ShapeSource, import_spec};
use shardplan::notation::mindspore::{MindSporeFault, MindSporeLayout};
use shardplan::{DType, LayoutError, TensorInfo};

pub(super) fn code_of(e: &dyn miette::Diagnostic) -> String {
    e.code().map(|c| c.to_string()).unwrap_or_default()
}

/// A one-tensor strategy on `ms`'s own mesh.
pub(super) fn one_tensor(ms: &MindSporeLayout, shape: &[u64]) -> shardplan::Strategy {
    let layout = ms.to_layout(shape).unwrap();
    let t = TensorInfo {
        name: "w".into(),
        shape: shape.to_vec(),
        dtype: DType::F32,
    };
    shardplan::Strategy::new("s", layout.mesh().clone(), vec![t], vec![layout]).unwrap()
}

//! Engine destinations (`engine="vllm"`) for `reshard` and
//! `load_distributed_checkpoint`: the engine's layout built from the
//! source, its `config.json` and the degrees, as `shardplan reshard
//! --engine` builds it.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use shardplan::engine::{Engine, EngineDegrees, EngineLayout};
use shardplan::reshard::{self, ENGINE_DTYPE_FROM, ReshardError};

use crate::errors::{Fault, Faulty, fault};

/// An engine destination's arguments.
pub(crate) struct EngineArgs {
    engine: Engine,
    degrees: EngineDegrees,
    config: Option<PathBuf>,
}

/// The engine arguments, or `None` without `engine`. `engine` refuses a
/// `dst_strategy` or a `format`; `tp`, `ep` and `config` need `engine`.
pub(crate) fn engine_args(
    engine: Option<&str>,
    tp: u64,
    ep: bool,
    config: Option<PathBuf>,
    dst_strategy: Option<&Bound<'_, PyAny>>,
    format: Option<&str>,
) -> PyResult<Option<EngineArgs>> {
    let Some(engine) = engine else {
        if tp != 1 || ep || config.is_some() {
            return Err(Fault::usage(
                "`tp`, `ep` and `config` describe an engine destination, but no `engine` was given",
                "pass engine=\"vllm\" with them, or leave them out",
            )
            .into());
        }
        return Ok(None);
    };
    let engine = match engine {
        "vllm" => Engine::Vllm,
        other => {
            return Err(
                Fault::usage(format!("`{other}` is not an engine"), "use engine=\"vllm\"").into(),
            );
        }
    };
    if dst_strategy.is_some_and(|d| !d.is_none()) {
        return Err(Fault::usage(
            "`engine` and `dst_strategy` were both given",
            "give one: the engine's destination is built from its config and `tp`",
        )
        .into());
    }
    if format.is_some() {
        return Err(Fault::usage(
            "`engine` and `format` were both given",
            "leave `format` out: an engine's ranks are written as rank_<r>/model.safetensors",
        )
        .into());
    }
    if tp == 0 {
        return Err(Fault::usage("`tp` is 0", "give at least one rank").into());
    }
    let mut degrees = EngineDegrees::tp(tp);
    if ep {
        degrees = degrees.with_expert_parallel();
    }
    Ok(Some(EngineArgs {
        engine,
        degrees,
        config,
    }))
}

/// The one source path an engine destination reads (a folder or a file,
/// not a list of per-rank files).
pub(crate) fn source_path(src: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    if src.is_instance_of::<PyList>() || src.is_instance_of::<PyTuple>() {
        return Err(Fault::usage(
            "an engine destination reads one source, not a list of files",
            "pass a Hugging Face folder, a DCP folder or a safetensors file",
        )
        .into());
    }
    src.extract()
}

/// The engine's layout for the source at `src`, as `shardplan reshard
/// --engine` builds it ([`shardplan::reshard::engine_destination`]). A
/// config that cannot be read raises `FileError` and a model the preset
/// refuses `ReshardError`, each with the engine's own code; a source
/// without the Hugging Face tensors is a `UsageError`.
pub(crate) fn engine_destination(src: &Path, args: &EngineArgs) -> Faulty<EngineLayout> {
    reshard::engine_destination(src, args.engine, args.degrees, args.config.as_deref()).map_err(|e| match e {
        ReshardError::Engine(inner) => fault(*inner),
        ReshardError::EngineSource { path } => Fault::usage(
            format!("{path} has no `{ENGINE_DTYPE_FROM}`"),
            "engine outputs read a Hugging Face folder, a DCP folder or a safetensors file holding the model's Hugging Face tensors",
        ),
        other => fault(other),
    })
}

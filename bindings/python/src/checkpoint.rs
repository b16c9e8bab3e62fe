//! `load_distributed_checkpoint` and `reshard`: checkpoints read into
//! numpy arrays or resharded into files, with a verified plan.

use std::collections::BTreeMap;
use std::path::PathBuf;

use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use shardplan::reshard::{
    LayoutSource, OutputFormat, ReshardConfig, WriteConfig, engine_rank_path, prepare,
    read_engine_rank, write_engine_rank,
};

use crate::engine::{EngineArgs, engine_args, engine_destination, source_path};
use crate::errors::{Fault, Faulty, fault};
use crate::plan::replica_choice;
use crate::strategy::PyStrategy;

/// A side's layouts: `None` (one device holding whole tensors), a
/// MindSpore strategy file, a list of them (one per pipeline stage), or a
/// `Strategy`.
fn layout_source(side: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<LayoutSource> {
    let Some(v) = value.filter(|v| !v.is_none()) else {
        return Ok(LayoutSource::SingleDevice);
    };
    if let Ok(s) = v.cast::<PyStrategy>() {
        return Ok(LayoutSource::Strategy(Box::new((*s.get().inner).clone())));
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let paths: Vec<PathBuf> = v.extract()?;
        return Ok(LayoutSource::MindSpore(paths));
    }
    match v.extract::<PathBuf>() {
        Ok(p) => Ok(LayoutSource::MindSpore(vec![p])),
        Err(_) => Err(Fault::usage(
            format!("{side}: `{}` is not a strategy", v.repr()?),
            "pass None, a MindSpore strategy file, a list of per-stage files, or a shardplan.Strategy",
        )
        .into()),
    }
}

/// The configuration for `checkpoint`: a folder of `rank_<r>/` folders, or
/// a list of files (file `r` is rank `r`'s, as MindSpore's
/// `ckpt_file_list`).
fn config(
    checkpoint: &Bound<'_, PyAny>,
    src: LayoutSource,
    dst: LayoutSource,
    replicas: &str,
    any_device_count: bool,
) -> PyResult<ReshardConfig> {
    let is_list = checkpoint.is_instance_of::<PyList>() || checkpoint.is_instance_of::<PyTuple>();
    let mut cfg = if is_list {
        let files: Vec<PathBuf> = checkpoint.extract()?;
        if files.is_empty() {
            return Err(Fault::usage(
                "the checkpoint file list is empty",
                "list one file per source rank, in rank order",
            )
            .into());
        }
        let dir = files[0].parent().map(PathBuf::from).unwrap_or_default();
        let mut cfg = ReshardConfig::new(dir, src, dst);
        cfg.src_files = Some(
            files
                .into_iter()
                .enumerate()
                .map(|(r, f)| (r as u64, vec![f]))
                .collect::<BTreeMap<_, _>>(),
        );
        cfg
    } else {
        ReshardConfig::new(checkpoint.extract::<PathBuf>()?, src, dst)
    };
    cfg.replica_choice = replica_choice(replicas)?;
    cfg.any_device_count = any_device_count;
    Ok(cfg)
}

/// One tensor read for Python: name, dtype name, shape, raw bytes.
type RawTensor<'py> = (String, &'static str, Vec<u64>, Bound<'py, PyArray1<u8>>);

/// Reads destination rank `rank`'s tensors as raw byte arrays (the
/// package's `load_distributed_checkpoint` views them with their dtypes),
/// with the warnings about parameters copied through. With `engine`, the
/// tensors are the engine's parameters of the rank, by its names and
/// shapes.
#[pyfunction]
#[pyo3(signature = (checkpoint, src_strategy, dst_strategy, rank, replicas, any_device_count,
    engine = None, tp = 1, ep = false, config = None))]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn _load_rank<'py>(
    py: Python<'py>,
    checkpoint: &Bound<'py, PyAny>,
    src_strategy: Option<&Bound<'py, PyAny>>,
    dst_strategy: Option<&Bound<'py, PyAny>>,
    rank: u64,
    replicas: &str,
    any_device_count: bool,
    engine: Option<&str>,
    tp: u64,
    ep: bool,
    config: Option<PathBuf>,
) -> PyResult<(Vec<RawTensor<'py>>, Vec<String>)> {
    if let Some(args) = engine_args(engine, tp, ep, config, dst_strategy, None)? {
        return load_engine_rank(
            py,
            checkpoint,
            src_strategy,
            rank,
            replicas,
            any_device_count,
            &args,
        );
    }
    let cfg = self::config(
        checkpoint,
        layout_source("src_strategy", src_strategy)?,
        layout_source("dst_strategy", dst_strategy)?,
        replicas,
        any_device_count,
    )?;
    let prepared = py.detach(|| prepare(&cfg)).map_err(fault)?;
    let slices = prepared.rank_slices(rank).map_err(fault)?;
    let arrays: Vec<Bound<'py, PyArray1<u8>>> = slices
        .iter()
        .map(|s| {
            let n = usize::try_from(s.bytes).map_err(|_| {
                Fault::usage(
                    format!("tensor `{}` is too large for this machine", s.name),
                    "read it on a 64-bit machine",
                )
            })?;
            Ok(PyArray1::<u8>::zeros(py, n, false))
        })
        .collect::<PyResult<_>>()?;
    {
        let mut bufs: Vec<&mut [u8]> = arrays
            .iter()
            // SAFETY: each array was just created here, is contiguous and
            // is referenced by nothing else until it is returned.
            .map(|a| unsafe { a.as_slice_mut() }.expect("a new array is contiguous"))
            .collect();
        py.detach(|| prepared.read_rank_into(rank, &mut bufs))
            .map_err(fault)?;
    }
    let out = slices
        .into_iter()
        .zip(arrays)
        .map(|(s, a)| (s.name, s.dtype.name(), s.shape, a))
        .collect();
    Ok((out, prepared.warnings().to_vec()))
}

/// Rank `rank`'s engine parameters, packed from the logical slices it
/// holds under the engine's layout.
#[allow(clippy::type_complexity)]
fn load_engine_rank<'py>(
    py: Python<'py>,
    checkpoint: &Bound<'py, PyAny>,
    src_strategy: Option<&Bound<'py, PyAny>>,
    rank: u64,
    replicas: &str,
    any_device_count: bool,
    args: &EngineArgs,
) -> PyResult<(Vec<RawTensor<'py>>, Vec<String>)> {
    let src = source_path(checkpoint)?;
    let mut cfg = self::config(
        checkpoint,
        layout_source("src_strategy", src_strategy)?,
        LayoutSource::SingleDevice,
        replicas,
        any_device_count,
    )?;
    let (layout, params, warnings) = py.detach(|| -> Faulty<_> {
        let layout = engine_destination(&src, args)?;
        cfg.dst = LayoutSource::Strategy(Box::new(layout.strategy.clone()));
        let prepared = prepare(&cfg).map_err(fault)?;
        let params = read_engine_rank(&prepared, &layout, rank).map_err(fault)?;
        Ok((layout, params, prepared.warnings().to_vec()))
    })?;
    let out = layout
        .map
        .params(rank)
        .iter()
        .zip(params)
        .map(|(p, bytes)| {
            (
                p.name.clone(),
                p.dtype.name(),
                p.shape.clone(),
                PyArray1::from_vec(py, bytes),
            )
        })
        .collect();
    Ok((out, warnings))
}

/// Reshards a checkpoint folder into `out_dir`, one file per destination
/// rank (or only `rank`), and returns what was written. With `engine`,
/// the destination is the engine's ranks (`rank_<r>/model.safetensors`),
/// as `shardplan reshard --engine` writes them.
#[pyfunction]
#[pyo3(signature = (src_dir, out_dir, *, src_strategy = None, dst_strategy = None,
    format = None, rank = None, replicas = "min_files", any_device_count = false,
    direct_io = true, max_shard_bytes = shardplan::reshard::DEFAULT_MAX_SHARD_BYTES,
    engine = None, tp = 1, ep = false, config = None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn reshard<'py>(
    py: Python<'py>,
    src_dir: &Bound<'py, PyAny>,
    out_dir: PathBuf,
    src_strategy: Option<&Bound<'py, PyAny>>,
    dst_strategy: Option<&Bound<'py, PyAny>>,
    format: Option<&str>,
    rank: Option<u64>,
    replicas: &str,
    any_device_count: bool,
    direct_io: bool,
    max_shard_bytes: u64,
    engine: Option<&str>,
    tp: u64,
    ep: bool,
    config: Option<PathBuf>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    if let Some(args) = engine_args(engine, tp, ep, config, dst_strategy, format)? {
        let src = source_path(src_dir)?;
        let mut cfg = self::config(
            src_dir,
            layout_source("src_strategy", src_strategy)?,
            LayoutSource::SingleDevice,
            replicas,
            any_device_count,
        )?;
        let outcomes = py.detach(|| -> Faulty<Vec<_>> {
            let layout = engine_destination(&src, &args)?;
            cfg.dst = LayoutSource::Strategy(Box::new(layout.strategy.clone()));
            let prepared = prepare(&cfg).map_err(fault)?;
            let ranks: Vec<u64> = match rank {
                Some(r) => vec![r],
                None => (0..layout.map.rank_count()).collect(),
            };
            let mut out = Vec::with_capacity(ranks.len());
            for r in ranks {
                let bytes = write_engine_rank(&prepared, &layout, r, &out_dir).map_err(fault)?;
                out.push((r, engine_rank_path(&out_dir, r), bytes));
            }
            Ok(out)
        })?;
        return outcomes
            .into_iter()
            .map(|(r, path, bytes)| {
                let d = PyDict::new(py);
                d.set_item("rank", r)?;
                d.set_item("path", &path)?;
                d.set_item("files", vec![path])?;
                d.set_item("bytes", bytes)?;
                d.set_item("resumed", false)?;
                Ok(d)
            })
            .collect();
    }
    let cfg = self::config(
        src_dir,
        layout_source("src_strategy", src_strategy)?,
        layout_source("dst_strategy", dst_strategy)?,
        replicas,
        any_device_count,
    )?;
    let mut write = WriteConfig::new(out_dir);
    write.format = match format {
        None => None,
        Some("ckpt") => Some(OutputFormat::Ckpt),
        Some("safetensors") => Some(OutputFormat::Safetensors),
        Some("hf") => Some(OutputFormat::HuggingFace),
        Some("dcp") => Some(OutputFormat::Dcp),
        Some(other) => {
            return Err(Fault::usage(
                format!("`{other}` is not a checkpoint format"),
                "use \"ckpt\", \"safetensors\", \"hf\" or \"dcp\", or None for the source's",
            )
            .into());
        }
    };
    write.max_shard_bytes = max_shard_bytes;
    write.direct_io = direct_io;
    let outcomes = py.detach(|| -> Faulty<Vec<_>> {
        let prepared = prepare(&cfg).map_err(fault)?;
        let ranks: Vec<u64> = match rank {
            Some(r) => vec![r],
            None => (0..prepared.dst().mesh().rank_count()).collect(),
        };
        let mut out = Vec::with_capacity(ranks.len());
        for r in ranks {
            out.push(prepared.write_rank(&write, r, &mut |_| {}).map_err(fault)?);
        }
        Ok(out)
    })?;
    outcomes
        .into_iter()
        .map(|o| {
            let d = PyDict::new(py);
            d.set_item("rank", o.rank)?;
            d.set_item("path", o.path)?;
            d.set_item("files", o.files)?;
            d.set_item("bytes", o.bytes)?;
            d.set_item("resumed", o.resumed)?;
            Ok(d)
        })
        .collect()
}

/// Bytes of a `max_shard_size` text such as `5GB` or `1GiB`.
#[pyfunction]
pub(crate) fn _parse_shard_size(text: &str) -> PyResult<u64> {
    shardplan::formats::hf::parse_shard_size(text).map_err(|e| fault(e).into())
}

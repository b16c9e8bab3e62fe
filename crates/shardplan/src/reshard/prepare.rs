//! Reading and checking the inputs and planning the transfer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::DeviceMesh;
use crate::TensorLayout;
use crate::formats::checkpoint::{CheckpointFormat, TensorEntry, read_index};
use crate::formats::mindspore::rank_files;
use crate::formats::mindspore::strategy::{StrategyFile, read_strategy_files};
use crate::{PlanConfig, plan_transfer};
use crate::{Strategy, TensorInfo};

use super::copy_through::copy_through;
use super::error::internal;
use super::{
    LayoutSource, Located, OutputFormat, Prepared, RankSources, ReshardConfig, ReshardError, Side,
};

/// Reads and checks every input and plans the transfer, without writing.
/// The source's format is detected from `src_dir` ([`read_chunked`]): a
/// PyTorch DCP folder, a Hugging Face folder or a safetensors file is laid
/// out by its own index ([`prepare_chunked`]); otherwise it is a MindSpore
/// folder of rank folders (or `src_files`).
///
/// # Errors
///
/// [`ReshardError`] naming the file, tensor or rank at fault: a source of
/// no known format, unreadable, truncated or corrupt checkpoints or
/// indexes, duplicate or missing rank folders, a tensor missing from a rank
/// that should hold it, a dtype or shape that does not match the strategy,
/// device counts MindSpore refuses.
pub fn prepare(cfg: &ReshardConfig) -> Result<Prepared, ReshardError> {
    if cfg.src_files.is_none()
        && let Some(ck) = read_chunked(&cfg.src_dir)?
    {
        return prepare_chunked(cfg, &ck);
    }
    let files = match &cfg.src_files {
        Some(files) => files.clone(),
        None => rank_files(&cfg.src_dir)?,
    };
    let (sources, format) = index_sources(&files)?;
    let src_file = read_layout_file(&cfg.src)?;
    let tensors = global_tensors(&cfg.src, src_file.as_ref(), &sources)?;
    let src = match (&cfg.src, &src_file) {
        (LayoutSource::Strategy(s), _) => (**s).clone(),
        (LayoutSource::MindSpore(_), Some(f)) => f
            .to_strategy("source", &tensors)
            .map_err(Side::Source.layouts_error())?,
        _ => single_device("source", &tensors)?,
    };
    let n = src.mesh().rank_count();
    if files.len() as u64 != n {
        return Err(ReshardError::RankCount {
            folder: cfg
                .src_files
                .is_none()
                .then(|| cfg.src_dir.display().to_string()),
            files: files.len() as u64,
            ranks: n,
        });
    }
    check_sources(&src, &sources)?;
    let source = Source {
        strategy: src,
        file: src_file,
        tensors,
        sources,
        dirs: source_dirs(cfg, &files),
        format: match format {
            Some(CheckpointFormat::Safetensors) => OutputFormat::Safetensors,
            _ => OutputFormat::Ckpt,
        },
        mindspore: true,
    };
    plan_from(cfg, source)
}

/// The index of a chunked checkpoint at `path` (DCP, Hugging Face,
/// safetensors), or `None` for a MindSpore folder of rank folders.
///
/// # Errors
///
/// [`ReshardError::HuggingFace`] when the format cannot be told or a
/// Hugging Face index is malformed; [`ReshardError::DcpRead`] for a DCP
/// folder that cannot be read.
pub fn read_chunked(
    path: &Path,
) -> Result<Option<crate::formats::chunked::ChunkedCheckpoint>, ReshardError> {
    use crate::formats::chunked::SourceFormat;
    use crate::formats::detect::detect;
    use crate::formats::hf;
    use crate::formats::torch::dcp;
    Ok(Some(match detect(path)? {
        SourceFormat::MindSpore => return Ok(None),
        SourceFormat::DcpTorchSave | SourceFormat::DcpSafetensors => dcp::read_dcp(path)?,
        SourceFormat::DcpHuggingFace => hf::read_dcp_hf_folder(path)?,
        SourceFormat::HuggingFace => hf::read_hf_folder(path)?,
        SourceFormat::Safetensors => hf::read_safetensors_file(path)?,
    }))
}

/// A source read and checked: its strategy, the tensors' global shapes and
/// where each rank's slices are.
struct Source {
    strategy: Strategy,
    file: Option<StrategyFile>,
    tensors: Vec<TensorInfo>,
    sources: RankSources,
    dirs: Vec<PathBuf>,
    format: OutputFormat,
    /// A MindSpore source, held to MindSpore's rule on device counts.
    mindspore: bool,
}

/// The strategy file a side names, read.
fn read_layout_file(side: &LayoutSource) -> Result<Option<StrategyFile>, ReshardError> {
    match side {
        LayoutSource::MindSpore(paths) => {
            let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
            Ok(Some(read_strategy_files(&refs)?))
        }
        _ => Ok(None),
    }
}

/// Every rank that holds a tensor has it, with the layout's shape and the
/// dtype.
fn check_sources(src: &Strategy, sources: &RankSources) -> Result<(), ReshardError> {
    for (t, l) in src.tensors().iter().zip(src.layouts()) {
        for r in 0..src.mesh().rank_count() {
            let Some(region) = l.region_of(r) else {
                continue;
            };
            let loc = sources
                .get(&r)
                .and_then(|s| s.get(&t.name))
                .ok_or_else(|| ReshardError::MissingTensor {
                    rank: r,
                    tensor: t.name.clone(),
                })?;
            if loc.entry.shape != region.extent() || loc.entry.dtype != t.dtype {
                return Err(ReshardError::SliceShape {
                    file: loc.path.display().to_string(),
                    tensor: t.name.clone(),
                    stored_dtype: loc.entry.dtype,
                    stored_shape: loc.entry.shape.clone(),
                    rank: r,
                    dtype: t.dtype,
                    shape: region.extent().to_vec(),
                });
            }
        }
    }
    Ok(())
}

/// The destination strategy, the plan and its verification, from a source
/// read and checked.
fn plan_from(cfg: &ReshardConfig, source: Source) -> Result<Prepared, ReshardError> {
    let Source {
        strategy: src,
        file: src_file,
        tensors,
        sources,
        dirs,
        format,
        mindspore,
    } = source;
    let dst_file = read_layout_file(&cfg.dst)?;
    let mut warnings = Vec::new();
    let (dst, copies) = match (&cfg.dst, &dst_file) {
        (LayoutSource::Strategy(s), _) => ((**s).clone(), Vec::new()),
        (LayoutSource::MindSpore(_), Some(f)) => {
            copy_through(&src, src_file.as_ref(), f, &tensors, &mut warnings)?
        }
        _ => (single_device("destination", &tensors)?, Vec::new()),
    };
    let (n, m) = (src.mesh().rank_count(), dst.mesh().rank_count());
    if mindspore && !cfg.any_device_count && n % m != 0 && m % n != 0 {
        return Err(ReshardError::IndivisibleRanks { src: n, dst: m });
    }
    // Tensors copied through are not planned: the plan moves the others.
    let planned =
        (!copies.is_empty()).then(|| dst.tensors().iter().map(|t| t.name.clone()).collect());
    let mut config = PlanConfig::new(cfg.replica_choice);
    config.tensors = planned;
    let plan = plan_transfer(&src, &dst, &config)?;
    let plan = crate::verify_plan(plan, &src, &dst)
        .map_err(|d| internal(format!(", invalid plan: {d}")))?;
    Ok(Prepared {
        src,
        dst,
        plan,
        copies,
        warnings,
        sources,
        src_dirs: dirs,
        source_format: format,
        dcp: std::sync::OnceLock::new(),
    })
}

/// Reshards a chunked checkpoint (PyTorch DCP, Hugging Face): its index is
/// its layout, each writer rank holding its chunks as boxes.
///
/// # Errors
///
/// As [`prepare`]; [`ReshardError::Boxes`] when a tensor's chunks do not
/// tile it, [`ReshardError::ChunksOnOneRank`] when one rank holds two chunks
/// of a tensor.
pub fn prepare_chunked(
    cfg: &ReshardConfig,
    ck: &crate::formats::chunked::ChunkedCheckpoint,
) -> Result<Prepared, ReshardError> {
    use crate::formats::chunked::SourceFormat;
    if !matches!(cfg.src, LayoutSource::SingleDevice) {
        return Err(ReshardError::NeedlessStrategy {
            root: ck.root.display().to_string(),
            format: ck.format.to_string(),
        });
    }
    let (strategy, sources) = chunked_strategy(ck)?;
    let source = Source {
        tensors: strategy.tensors().to_vec(),
        strategy,
        file: None,
        sources,
        dirs: vec![ck.root.clone()],
        format: match ck.format {
            SourceFormat::HuggingFace | SourceFormat::DcpHuggingFace => OutputFormat::HuggingFace,
            SourceFormat::Safetensors | SourceFormat::MindSpore => OutputFormat::Safetensors,
            _ => OutputFormat::Dcp,
        },
        mindspore: false,
    };
    plan_from(cfg, source)
}

/// The strategy a chunked checkpoint's index describes: a mesh `rank` of
/// its writer ranks, each tensor laid out by its chunks
/// ([`TensorLayout::from_boxes`]).
///
/// # Errors
///
/// [`ReshardError::Boxes`] when a tensor's chunks do not tile it,
/// [`ReshardError::ChunksOnOneRank`] when one rank holds two chunks of a
/// tensor.
pub fn checkpoint_strategy(
    ck: &crate::formats::chunked::ChunkedCheckpoint,
) -> Result<Strategy, ReshardError> {
    chunked_strategy(ck).map(|(s, _)| s)
}

/// The strategy of a chunked checkpoint and where each rank's chunks are.
fn chunked_strategy(
    ck: &crate::formats::chunked::ChunkedCheckpoint,
) -> Result<(Strategy, RankSources), ReshardError> {
    let mesh = Arc::new(
        DeviceMesh::new([("rank", ck.ranks.max(1))]).map_err(|source| ReshardError::Boxes {
            tensor: String::new(),
            source,
        })?,
    );
    let mut sources: RankSources = BTreeMap::new();
    let mut infos = Vec::with_capacity(ck.tensors.len());
    let mut layouts = Vec::with_capacity(ck.tensors.len());
    for t in &ck.tensors {
        let mut boxes = Vec::with_capacity(t.chunks.len());
        for c in &t.chunks {
            let slot = sources.entry(c.rank).or_default();
            if let Some(first) = slot.get(&t.name) {
                return Err(ReshardError::ChunksOnOneRank {
                    tensor: t.name.clone(),
                    rank: c.rank,
                    first: first.path.display().to_string(),
                    second: c.file.display().to_string(),
                });
            }
            let region =
                crate::Region::try_new(c.offsets.clone(), c.sizes.clone()).ok_or_else(|| {
                    ReshardError::Boxes {
                        tensor: t.name.clone(),
                        source: crate::LayoutError::BoxOutside {
                            rank: c.rank,
                            region: format!("offsets {:?} sizes {:?}", c.offsets, c.sizes),
                            shape: t.shape.clone(),
                        },
                    }
                })?;
            slot.insert(
                t.name.clone(),
                Located {
                    path: c.file.clone(),
                    entry: TensorEntry {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape: c.sizes.clone(),
                        offset: c.byte_offset,
                        len: c.byte_len,
                    },
                },
            );
            boxes.push((c.rank, region));
        }
        let layout = TensorLayout::from_boxes(mesh.clone(), &t.shape, boxes).map_err(|source| {
            ReshardError::Boxes {
                tensor: t.name.clone(),
                source,
            }
        })?;
        infos.push(TensorInfo {
            name: t.name.clone(),
            shape: t.shape.clone(),
            dtype: t.dtype,
        });
        layouts.push(layout);
    }
    let strategy = Strategy::new(ck.format.name(), mesh, infos, layouts).map_err(|source| {
        ReshardError::CheckpointStrategy {
            source,
            help: "check the checkpoint's index",
        }
    })?;
    Ok((strategy, sources))
}

/// The folders holding the sources: `src_dir`, or each given file's.
fn source_dirs(cfg: &ReshardConfig, files: &BTreeMap<u64, Vec<PathBuf>>) -> Vec<PathBuf> {
    if cfg.src_files.is_none() {
        return vec![cfg.src_dir.clone()];
    }
    let mut dirs: Vec<PathBuf> = files
        .values()
        .flatten()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Each rank's tensors, indexed from its files, and the format of the
/// first file.
///
/// # Errors
///
/// [`ReshardError`] for an unreadable or corrupt file, or a tensor two of a
/// rank's files hold.
fn index_sources(
    files: &BTreeMap<u64, Vec<PathBuf>>,
) -> Result<(RankSources, Option<CheckpointFormat>), ReshardError> {
    let mut sources: RankSources = BTreeMap::new();
    let mut format = None;
    for (rank, paths) in files {
        let mut tensors = BTreeMap::new();
        for p in paths {
            let idx = read_index(p)?;
            format.get_or_insert(idx.format);
            for (name, entry) in idx.tensors {
                if tensors.contains_key(&name) {
                    return Err(ReshardError::TensorTwice {
                        rank: *rank,
                        tensor: name,
                    });
                }
                let path = p.clone();
                tensors.insert(name, Located { path, entry });
            }
        }
        sources.insert(*rank, tensors);
    }
    Ok((sources, format))
}

/// Global tensors (name, full shape, dtype) of the checkpoints in
/// `src_dir` (`rank_<r>/` folders) laid out by `file` (or whole, without
/// one), e.g. to give a protobuf strategy its shapes.
///
/// # Errors
///
/// [`ReshardError`] for unreadable checkpoints, a tensor two files of one
/// rank hold, or a slice that its layout cannot size.
pub fn tensors_from_checkpoints(
    src_dir: &Path,
    file: Option<&StrategyFile>,
) -> Result<Vec<TensorInfo>, ReshardError> {
    let (sources, _) = index_sources(&rank_files(src_dir)?)?;
    let src = match file {
        Some(_) => LayoutSource::MindSpore(Vec::new()),
        None => LayoutSource::SingleDevice,
    };
    global_tensors(&src, file, &sources)
}

/// Global tensors (name, full shape, dtype) from the source checkpoints:
/// a laid-out tensor's full shape is its slice times the blocks of each
/// dimension (or the recorded `tensor_shape`); other tensors are whole.
fn global_tensors(
    src: &LayoutSource,
    file: Option<&StrategyFile>,
    sources: &RankSources,
) -> Result<Vec<TensorInfo>, ReshardError> {
    if let LayoutSource::Strategy(s) = src {
        return Ok(s.tensors().to_vec());
    }
    let by_name: BTreeMap<&str, &crate::formats::mindspore::strategy::ParamEntry> = file
        .map(|f| f.params.iter().map(|p| (p.name.as_str(), p)).collect())
        .unwrap_or_default();
    let mut out: BTreeMap<String, TensorInfo> = BTreeMap::new();
    for tensors in sources.values() {
        for (name, loc) in tensors {
            if out.contains_key(name) {
                continue;
            }
            let shape = match by_name.get(name.as_str()) {
                None => loc.entry.shape.clone(),
                Some(p) => match &p.shape {
                    Some(s) => s.clone(),
                    None => full_shape(p, &loc.entry.shape).ok_or_else(|| {
                        ReshardError::UnsizedTensor {
                            file: loc.path.display().to_string(),
                            tensor: name.clone(),
                            slice: loc.entry.shape.clone(),
                        }
                    })?,
                },
            };
            out.insert(
                name.clone(),
                TensorInfo {
                    name: name.clone(),
                    shape,
                    dtype: loc.entry.dtype,
                },
            );
        }
    }
    Ok(out.into_values().collect())
}

/// The full shape of a protobuf-strategy parameter (no `tensor_shape`)
/// from one slice.
fn full_shape(
    p: &crate::formats::mindspore::strategy::ParamEntry,
    local: &[u64],
) -> Option<Vec<u64>> {
    p.mindspore_layout(local.len(), 1).ok()?.full_shape(local)
}

fn single_device(name: &str, tensors: &[TensorInfo]) -> Result<Strategy, ReshardError> {
    let mesh = Arc::new(DeviceMesh::new(Vec::<(String, u64)>::new()).expect("a mesh without axes"));
    let layouts = tensors
        .iter()
        .map(|t| TensorLayout::replicated(mesh.clone(), &t.shape))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ReshardError::CheckpointLayout {
            source,
            help: "check the checkpoint",
        })?;
    Strategy::new(name, mesh, tensors.to_vec(), layouts).map_err(|source| {
        ReshardError::CheckpointStrategy {
            source,
            help: "check the checkpoint",
        }
    })
}

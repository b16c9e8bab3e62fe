//! Streaming N-to-M checkpoint resharding, file by file. This module is at
//! the edge: it reads checkpoint and strategy files and writes checkpoints;
//! the plan it follows comes from the core planner and verifier.
//!
//! Each destination rank reads only the source files its pieces name, and
//! only the bytes the pieces cover, straight into the output's windows
//! ([`WriteConfig::window_bytes`], four in memory), which background
//! threads write (with direct IO where possible, see
//! [`crate::formats::stream`]). Outputs are written to a temporary name,
//! fsynced and renamed;
//! a manifest per rank records each file's size and checksum, so an
//! interrupted run resumes where it stopped. Sources are only ever opened
//! for reading.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::BoxRuns;
use crate::DeviceMesh;
use crate::TensorLayout;
use crate::formats::checkpoint::{
    CheckpointFormat, CheckpointWriter, Checksum, Frame, TensorEntry, rank_files, read_index,
};
use crate::formats::mindspore_strategy::{StrategyFile, read_strategy_files};
use crate::{DType, Strategy, TensorInfo};
use crate::{PlanConfig, plan_transfer};
use crate::{ReplicaChoice, VerifiedPlan};

/// Where a side's layouts come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LayoutSource {
    /// One device holding every tensor whole (MindSpore's `None`).
    SingleDevice,
    /// MindSpore strategy files: one file, a merged file, or one per stage.
    MindSpore(Vec<PathBuf>),
    /// A strategy already built (e.g. from a spec).
    Strategy(Box<Strategy>),
}

/// What [`prepare`] reads and checks: the sources, the two layouts, how
/// replicas are chosen. Where and how outputs are written is
/// [`WriteConfig`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReshardConfig {
    /// Source directory of `rank_<r>/` folders.
    pub src_dir: PathBuf,
    /// Source layouts.
    pub src: LayoutSource,
    /// Destination layouts.
    pub dst: LayoutSource,
    /// How replicas are chosen.
    pub replica_choice: ReplicaChoice,
    /// Allow device counts that do not divide each other, which MindSpore
    /// refuses (for MindSpore sources only; other sources take any count).
    pub any_device_count: bool,
    /// The source checkpoint files of each rank, given instead of found
    /// under `src_dir`'s `rank_<r>/` folders (MindSpore's
    /// `ckpt_file_list`: file `r` is rank `r`'s).
    pub src_files: Option<BTreeMap<u64, Vec<PathBuf>>>,
}

impl ReshardConfig {
    /// Resharding `src_dir` from `src` to `dst`, reading as few files as
    /// possible per destination ([`ReplicaChoice::MinFiles`]) and refusing
    /// device counts MindSpore refuses.
    pub fn new(src_dir: impl Into<PathBuf>, src: LayoutSource, dst: LayoutSource) -> Self {
        ReshardConfig {
            src_dir: src_dir.into(),
            src,
            dst,
            replica_choice: ReplicaChoice::MinFiles,
            any_device_count: false,
            src_files: None,
        }
    }
}

/// What [`Prepared::write_rank`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutputFormat {
    /// MindSpore `.ckpt`: `rank_<r>/checkpoint_<r>.ckpt`.
    Ckpt,
    /// safetensors: `rank_<r>/checkpoint_<r>.safetensors`.
    Safetensors,
    /// A Hugging Face model folder (`model-0000i-of-0000n.safetensors` and
    /// `model.safetensors.index.json`, or one `model.safetensors`): in the
    /// output folder for one destination rank, in `rank_<r>/` for several.
    HuggingFace,
    /// A PyTorch DCP folder that `torch.distributed.checkpoint.load` reads:
    /// `__<r>_0.distcp` per rank and one `.metadata`; replicas are stored
    /// once, by the lowest rank holding them.
    Dcp,
}

impl OutputFormat {
    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Ckpt => "ckpt",
            OutputFormat::Safetensors => "safetensors",
            OutputFormat::HuggingFace => "hf",
            OutputFormat::Dcp => "dcp",
        }
    }
}

impl From<CheckpointFormat> for OutputFormat {
    fn from(f: CheckpointFormat) -> Self {
        match f {
            CheckpointFormat::Ckpt => OutputFormat::Ckpt,
            CheckpointFormat::Safetensors => OutputFormat::Safetensors,
        }
    }
}

/// Where and how [`Prepared::write_rank`] writes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WriteConfig {
    /// Output directory (created; must not overlap the sources).
    pub out_dir: PathBuf,
    /// Output format; `None` keeps the source's.
    pub format: Option<OutputFormat>,
    /// Largest tensor bytes of one Hugging Face shard (a larger tensor gets
    /// a shard of its own), as `huggingface_hub`'s `max_shard_size`.
    pub max_shard_bytes: u64,
    /// Bytes of each output window: the writer fills one while two are
    /// written, four in all (rounded up to 4 KiB, at most 1 GiB).
    pub window_bytes: u64,
    /// Write outputs with direct IO (Linux `O_DIRECT`) where the file
    /// system allows it: they bypass the page cache, which then keeps the
    /// sources.
    pub direct_io: bool,
}

impl WriteConfig {
    /// Writing under `out_dir` in the source's format, 32 MiB windows,
    /// direct IO where the file system allows it.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        WriteConfig {
            out_dir: out_dir.into(),
            format: None,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            window_bytes: 32 << 20,
            direct_io: true,
        }
    }
}

/// `huggingface_hub`'s default `max_shard_size`, 5 GB.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Why a reshard failed. Nothing is written under a final name then.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ReshardError {
    /// A checkpoint, or the folder of rank folders, is unreadable or
    /// malformed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Checkpoint(#[from] crate::formats::checkpoint::CheckpointError),
    /// A strategy file is unreadable or malformed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    StrategyFile(#[from] crate::formats::mindspore_strategy::StrategyFileError),
    /// One rank's checkpoint files holding a tensor twice.
    #[error("rank {rank}: tensor `{tensor}` is in two files")]
    #[diagnostic(code(shardplan::reshard::tensor_twice), help("keep one copy per rank"))]
    TensorTwice {
        /// The rank.
        rank: u64,
        /// The tensor.
        tensor: String,
    },
    /// A MindSpore strategy file whose layouts do not fit the checkpoint's
    /// tensors.
    #[error("{source}")]
    #[diagnostic(code(shardplan::reshard::strategy_layouts), help("{}", side.check()))]
    StrategyLayouts {
        /// Which strategy.
        side: Side,
        /// What does not fit.
        #[source]
        source: crate::formats::mindspore_strategy::StrategyLayoutError,
    },
    /// A source strategy with another rank count than the checkpoint.
    #[error(
        "{} but the source strategy has {ranks} ranks",
        match folder { Some(d) => format!("{d} has {files} rank folders"), None => format!("{files} ranks' checkpoint files were given") }
    )]
    #[diagnostic(
        code(shardplan::reshard::rank_count),
        help("pass the checkpoint directory and strategy of the same run")
    )]
    RankCount {
        /// The folder of rank folders, when the files were found in one.
        folder: Option<String>,
        /// Ranks found.
        files: u64,
        /// Ranks of the strategy.
        ranks: u64,
    },
    /// A tensor the strategy puts on a rank whose checkpoint lacks it.
    #[error("rank {rank} should hold tensor `{tensor}` but its checkpoint lacks it")]
    #[diagnostic(
        code(shardplan::reshard::missing_tensor),
        help("check that the strategy belongs to this checkpoint")
    )]
    MissingTensor {
        /// The rank.
        rank: u64,
        /// The tensor.
        tensor: String,
    },
    /// A stored slice of another dtype or shape than the strategy gives.
    #[error(
        "{file}: tensor `{tensor}` is {stored_dtype} {stored_shape:?}, the strategy gives rank {rank} {dtype} {shape:?}"
    )]
    #[diagnostic(
        code(shardplan::reshard::slice_shape),
        help("check that the strategy belongs to this checkpoint")
    )]
    SliceShape {
        /// The file.
        file: String,
        /// The tensor.
        tensor: String,
        /// What the file holds.
        stored_dtype: crate::DType,
        /// Its shape there.
        stored_shape: Vec<u64>,
        /// The rank.
        rank: u64,
        /// What the strategy gives the rank.
        dtype: crate::DType,
        /// The shape it gives.
        shape: Vec<u64>,
    },
    /// A stored slice whose whole tensor its layout cannot size.
    #[error("{file}: cannot size tensor `{tensor}` from its slice {slice:?} and its layout")]
    #[diagnostic(
        code(shardplan::reshard::unsized_tensor),
        help("check that the strategy belongs to this checkpoint")
    )]
    UnsizedTensor {
        /// The file.
        file: String,
        /// The tensor.
        tensor: String,
        /// The slice's shape.
        slice: Vec<u64>,
    },
    /// MindSpore rank counts neither of which divides the other.
    #[error("{src} source ranks and {dst} destination ranks: neither count divides the other")]
    #[diagnostic(
        code(shardplan::reshard::indivisible_ranks),
        help("MindSpore refuses such transfers; pass --any-device-count to reshard anyway")
    )]
    IndivisibleRanks {
        /// Source ranks.
        src: u64,
        /// Destination ranks.
        dst: u64,
    },
    /// A source strategy given for a checkpoint whose index is its layout.
    #[error("{root} is a {format}: its index is its layout, so it takes no source strategy")]
    #[diagnostic(
        code(shardplan::reshard::needless_strategy),
        help("drop --src-strategy")
    )]
    NeedlessStrategy {
        /// The checkpoint.
        root: String,
        /// Its format.
        format: String,
    },
    /// A checkpoint whose tensors make no strategy.
    #[error("{source}")]
    #[diagnostic(code(shardplan::reshard::checkpoint_strategy), help("{help}"))]
    CheckpointStrategy {
        /// Why.
        #[source]
        source: crate::StrategyError,
        /// What to check.
        help: &'static str,
    },
    /// A checkpoint tensor no layout replicates (a shape that overflows).
    #[error("{source}")]
    #[diagnostic(code(shardplan::reshard::checkpoint_layout), help("{help}"))]
    CheckpointLayout {
        /// Why.
        #[source]
        source: crate::LayoutError,
        /// What to check.
        help: &'static str,
    },
    /// A tensor without destination layout that no source rank holds.
    #[error("tensor `{tensor}` has no destination layout and no source rank holds it")]
    #[diagnostic(
        code(shardplan::reshard::no_copy_source),
        help("give it a destination layout")
    )]
    NoCopySource {
        /// The tensor.
        tensor: String,
    },
    /// An output folder inside a source folder, or around one.
    #[error("the output {out} overlaps the source {src}")]
    #[diagnostic(
        code(shardplan::reshard::output_overlaps),
        help("write the output elsewhere; sources are never modified")
    )]
    OutputOverlaps {
        /// The output folder.
        out: String,
        /// The source folder.
        src: String,
    },
    /// Buffers given for a rank's slices, not one per slice.
    #[error("rank {rank} receives {slices} tensors but {buffers} buffers were given")]
    #[diagnostic(
        code(shardplan::reshard::buffer_count),
        help("pass one buffer per tensor of `rank_slices`")
    )]
    BufferCount {
        /// The rank.
        rank: u64,
        /// Its slices.
        slices: usize,
        /// The buffers given.
        buffers: usize,
    },
    /// A buffer of another size than its slice.
    #[error("tensor `{tensor}` of rank {rank} is {bytes} bytes but its buffer holds {len}")]
    #[diagnostic(
        code(shardplan::reshard::buffer_size),
        help("size each buffer as `rank_slices` says")
    )]
    BufferSize {
        /// The tensor.
        tensor: String,
        /// The rank.
        rank: u64,
        /// The slice's bytes.
        bytes: u64,
        /// The buffer's.
        len: usize,
    },
    /// A rank outside the destination.
    #[error("rank {rank} is not a destination rank: the destination has {ranks}")]
    #[diagnostic(
        code(shardplan::reshard::no_such_rank),
        help("pick a rank from 0 to {}", ranks.saturating_sub(1))
    )]
    NoSuchRank {
        /// The rank.
        rank: u64,
        /// The destination's ranks.
        ranks: u64,
    },
    /// A fault of shardplan itself: a plan the verifier refused, a file or
    /// shard the writer lost.
    #[error("internal error{}", internal_detail(.what))]
    #[diagnostic(code(shardplan::reshard::internal), help("report this"))]
    Internal {
        /// What went wrong.
        what: String,
    },
    /// Planning failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] crate::PlanError),
    /// A chunked checkpoint whose chunks do not tile a tensor.
    #[error("tensor `{tensor}`: its chunks are not a layout: {source}")]
    #[diagnostic(
        code(shardplan::reshard::boxes),
        help("the checkpoint's index is damaged or incomplete; save it again")
    )]
    Boxes {
        /// The tensor.
        tensor: String,
        /// What is wrong with its chunks.
        #[source]
        source: crate::LayoutError,
    },
    /// One writer rank holding two chunks of one tensor.
    #[error("rank {rank} holds two chunks of tensor `{tensor}` ({first} and {second})")]
    #[diagnostic(
        code(shardplan::reshard::chunks_on_one_rank),
        help("shardplan reads one chunk of each tensor per rank; save with one shard per rank")
    )]
    ChunksOnOneRank {
        /// The tensor.
        tensor: String,
        /// The rank.
        rank: u64,
        /// The file of the first chunk.
        first: String,
        /// The file of the second.
        second: String,
    },
    /// A Hugging Face folder that cannot be planned.
    #[error(transparent)]
    #[diagnostic(transparent)]
    HuggingFace(#[from] crate::formats::hf::HfError),
    /// A DCP folder that cannot be read.
    #[error(transparent)]
    #[diagnostic(transparent)]
    DcpRead(Box<crate::formats::dcp::DcpError>),
    /// A DCP folder that cannot be planned.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Dcp(#[from] crate::formats::dcp_write::DcpWriteError),
    /// Writing failed.
    #[error("{path}: {source}")]
    #[diagnostic(code(shardplan::reshard::io))]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

impl From<crate::formats::dcp::DcpError> for ReshardError {
    fn from(e: crate::formats::dcp::DcpError) -> Self {
        ReshardError::DcpRead(Box::new(e))
    }
}

/// Which strategy of a reshard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Side {
    /// The source's.
    Source,
    /// The destination's.
    Destination,
}

impl Side {
    /// Wraps a strategy file's layout fault as this side's.
    fn layouts_error(
        self,
    ) -> impl FnOnce(crate::formats::mindspore_strategy::StrategyLayoutError) -> ReshardError {
        move |source| ReshardError::StrategyLayouts { side: self, source }
    }

    fn check(self) -> &'static str {
        match self {
            Side::Source => "check the source strategy against the checkpoints",
            Side::Destination => "check the destination strategy",
        }
    }
}

/// The internal error's text after "internal error": its own punctuation
/// kept (", invalid plan: ..." or ": no DCP file ...").
fn internal_detail(what: &str) -> String {
    if what.starts_with(',') {
        what.to_string()
    } else {
        format!(": {what}")
    }
}

fn internal(what: impl Into<String>) -> ReshardError {
    ReshardError::Internal { what: what.into() }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReshardError + '_ {
    move |source| ReshardError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A destination's DCP folder and, per rank, the slice of each chunk.
type DcpPlan = (crate::formats::dcp_write::DcpLayout, Vec<Vec<usize>>);

/// Per source rank, its tensors by name.
type RankSources = BTreeMap<u64, BTreeMap<String, Located>>;

/// One source tensor: its file and where its data lies.
#[derive(Debug, Clone)]
struct Located {
    path: PathBuf,
    entry: TensorEntry,
}

/// Everything known before writing: sources indexed and checked, the
/// strategies, the verified plan, warnings. Read-only: what
/// [`Prepared::write_rank`] writes is the plan verified against these
/// strategies, and nothing can swap one of them in between.
#[derive(Debug)]
pub struct Prepared {
    src: Strategy,
    dst: Strategy,
    plan: VerifiedPlan,
    copies: Vec<CopyThrough>,
    warnings: Vec<String>,
    sources: RankSources,
    /// The folders the sources are in: no output may be written there.
    src_dirs: Vec<PathBuf>,
    source_format: OutputFormat,
    /// The DCP folder's plan, made once: it depends on the destination
    /// alone, and every rank's file needs all of it.
    dcp: std::sync::OnceLock<DcpPlan>,
}

impl Prepared {
    /// The source strategy.
    pub fn src(&self) -> &Strategy {
        &self.src
    }

    /// The destination strategy (without the tensors copied through).
    pub fn dst(&self) -> &Strategy {
        &self.dst
    }

    /// The verified plan of the tensors the destination lays out.
    pub fn plan(&self) -> &VerifiedPlan {
        &self.plan
    }

    /// Tensors without a destination layout, copied unchanged.
    pub fn copies(&self) -> &[CopyThrough] {
        &self.copies
    }

    /// Messages about parameters handled by MindSpore's rules for
    /// parameters missing from a strategy.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

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
    let mut sources: RankSources = BTreeMap::new();
    let mut format = None;
    for (rank, paths) in &files {
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
                tensors.insert(
                    name,
                    Located {
                        path: p.clone(),
                        entry,
                    },
                );
            }
        }
        sources.insert(*rank, tensors);
    }
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
    use crate::formats::{dcp, hf};
    Ok(Some(match hf::detect(path)? {
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

/// Global tensors (name, full shape, dtype) of the checkpoints in
/// `src_dir` (`rank_<r>/` folders) laid out by `file` (or whole, without
/// one), e.g. to give a protobuf strategy its shapes.
///
/// # Errors
///
/// [`ReshardError`] for unreadable checkpoints or a slice that its layout
/// cannot size.
pub fn tensors_from_checkpoints(
    src_dir: &Path,
    file: Option<&StrategyFile>,
) -> Result<Vec<TensorInfo>, ReshardError> {
    let files = rank_files(src_dir)?;
    let mut sources: RankSources = BTreeMap::new();
    for (rank, paths) in &files {
        let mut tensors = BTreeMap::new();
        for p in paths {
            let idx = read_index(p)?;
            for (name, entry) in idx.tensors {
                tensors.insert(
                    name,
                    Located {
                        path: p.clone(),
                        entry,
                    },
                );
            }
        }
        sources.insert(*rank, tensors);
    }
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
    let by_name: BTreeMap<&str, &crate::formats::mindspore_strategy::ParamEntry> = file
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
    p: &crate::formats::mindspore_strategy::ParamEntry,
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

/// A tensor that the destination strategy does not lay out. MindSpore copies
/// it unchanged to every destination rank: rank `k` receives the slice of
/// the source rank with the same position inside its stage, stage-local
/// rank `(k mod dst_stage_devices) mod src_stage_devices` of the first
/// source stage holding the tensor. The copy is not planned: its bytes are
/// one source tensor's, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyThrough {
    /// The tensor, with its global shape.
    pub tensor: TensorInfo,
    /// Per destination rank, the source rank whose slice it receives.
    pub from: Vec<u64>,
}

/// The source rank whose slice destination rank `k` receives under the
/// copy-through rule, or `None` when no source stage holds the tensor.
fn copy_source(
    k: u64,
    dst_stage_devices: u64,
    src_stage_devices: u64,
    src: &TensorLayout,
) -> Option<u64> {
    let position = (k % dst_stage_devices.max(1)) % src_stage_devices.max(1);
    let stages = src.mesh().rank_count() / src_stage_devices.max(1);
    (0..stages)
        .map(|s| s * src_stage_devices + position)
        .find(|&g| src.holds(g))
}

/// The destination strategy with MindSpore's rules for parameters missing
/// from one side: with no source layout, a parameter is copied through
/// whole (replicated); with no destination layout, it is left out of the
/// strategy and copied as [`CopyThrough`] says.
fn copy_through(
    src: &Strategy,
    src_file: Option<&StrategyFile>,
    dst_file: &StrategyFile,
    tensors: &[TensorInfo],
    warnings: &mut Vec<String>,
) -> Result<(Strategy, Vec<CopyThrough>), ReshardError> {
    let in_dst: std::collections::BTreeSet<&str> =
        dst_file.params.iter().map(|p| p.name.as_str()).collect();
    let in_src: std::collections::BTreeSet<&str> = src_file
        .map(|f| f.params.iter().map(|p| p.name.as_str()).collect())
        .unwrap_or_default();
    let (copied, laid_out): (Vec<TensorInfo>, Vec<TensorInfo>) = tensors
        .iter()
        .cloned()
        .partition(|t| in_src.contains(t.name.as_str()) && !in_dst.contains(t.name.as_str()));
    let mut dst = dst_file
        .to_strategy("destination", &laid_out)
        .map_err(Side::Destination.layouts_error())?;
    let mut layouts = dst.layouts().to_vec();
    let mut changed = false;
    for (i, t) in laid_out.iter().enumerate() {
        if src_file.is_some()
            && !in_src.contains(t.name.as_str())
            && in_dst.contains(t.name.as_str())
        {
            warnings.push(format!(
                "tensor `{}` has no source layout: copied through whole, as MindSpore does",
                t.name
            ));
            layouts[i] = TensorLayout::replicated(dst.mesh().clone(), &t.shape)
                .map_err(|source| ReshardError::CheckpointLayout { source, help: "" })?;
            changed = true;
        }
    }
    if changed {
        dst = Strategy::new("destination", dst.mesh().clone(), laid_out, layouts)
            .map_err(|source| ReshardError::CheckpointStrategy { source, help: "" })?;
    }
    let m = dst.mesh().rank_count();
    let dst_stage = dst_file
        .stage_devices()
        .map_err(Side::Destination.layouts_error())?;
    let src_stage = match src_file {
        Some(f) => f.stage_devices().map_err(Side::Source.layouts_error())?,
        None => src.mesh().rank_count(),
    };
    let mut copies = Vec::with_capacity(copied.len());
    for t in copied {
        let l = src.layout(&t.name).expect("a source tensor");
        let from = (0..m)
            .map(|k| copy_source(k, dst_stage, src_stage, l))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| ReshardError::NoCopySource {
                tensor: t.name.clone(),
            })?;
        warnings.push(format!(
            "tensor `{}` has no destination layout: destination rank k receives the slice of source stage-local rank (k mod {dst_stage}) mod {src_stage}, unchanged, as MindSpore does",
            t.name
        ));
        copies.push(CopyThrough { tensor: t, from });
    }
    Ok((dst, copies))
}

/// What one destination rank's run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankOutcome {
    /// Destination rank.
    pub rank: u64,
    /// Its main file (see [`Prepared::output_path`]).
    pub path: PathBuf,
    /// Every data file written (or found complete).
    pub files: Vec<PathBuf>,
    /// Bytes of the file.
    pub bytes: u64,
    /// True when a previous run had already completed it.
    pub resumed: bool,
}

fn file_checksum(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
    }
    Ok((sum.len(), sum.hex()))
}

/// What a rank's run wrote: each file with its size and checksum, so a
/// later run can tell the files complete.
#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    files: Vec<ManifestEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ManifestEntry {
    file: String,
    bytes: u64,
    checksum: String,
}

/// One file a destination rank writes: its path, which of the rank's
/// slices it holds (indices into [`Prepared::rank_slices`], in file
/// order), and how they are framed.
struct OutFile {
    path: PathBuf,
    slices: Vec<usize>,
    framing: OutFraming,
}

enum OutFraming {
    /// A ckpt or safetensors checkpoint of the slices.
    Checkpoint(CheckpointFormat),
    /// A Hugging Face shard: its header, then the data.
    Shard(Vec<u8>),
    /// A DCP file: one `torch.save` archive around each slice.
    Archives(Vec<crate::formats::dcp_write::TorchSaveItem>),
}

/// Everything a destination rank writes.
struct RankOutput {
    /// The folder its files are in.
    dir: PathBuf,
    /// Its manifest.
    manifest: PathBuf,
    files: Vec<OutFile>,
    /// Small files written whole after the data files (an index, DCP's
    /// `.metadata`): every process writing a rank writes the same bytes.
    extras: Vec<(PathBuf, Vec<u8>)>,
}

impl Prepared {
    /// The tensors copied through to destination rank `rank`, with the
    /// source tensor each is copied from.
    fn copied_to(&self, rank: u64) -> Vec<(&TensorInfo, &Located)> {
        self.copies
            .iter()
            .filter_map(|c| {
                let from = *c.from.get(usize::try_from(rank).ok()?)?;
                Some((&c.tensor, self.sources.get(&from)?.get(&c.tensor.name)?))
            })
            .collect()
    }

    /// Bytes of tensor data destination rank `rank` receives: its slices
    /// under the destination strategy and the tensors copied through (0 for
    /// a rank outside the destination).
    pub fn rank_bytes(&self, rank: u64) -> u64 {
        self.rank_slices(rank)
            .map_or(0, |slices| slices.iter().map(|s| s.bytes).sum())
    }

    /// The format outputs are written in under `cfg`.
    pub fn output_format(&self, cfg: &WriteConfig) -> OutputFormat {
        cfg.format.unwrap_or(self.source_format)
    }

    /// The main output file of destination rank `rank`: its checkpoint, its
    /// first Hugging Face shard, or its DCP file.
    ///
    /// # Errors
    ///
    /// As [`Prepared::write_rank`] before it writes anything.
    pub fn output_path(&self, cfg: &WriteConfig, rank: u64) -> Result<PathBuf, ReshardError> {
        let out = self.rank_output(cfg, rank)?;
        Ok(out
            .files
            .first()
            .map_or_else(|| out.dir.clone(), |f| f.path.clone()))
    }

    /// The files destination rank `rank` writes under `cfg`.
    fn rank_output(&self, cfg: &WriteConfig, rank: u64) -> Result<RankOutput, ReshardError> {
        let slices = self.rank_slices(rank)?;
        let all: Vec<usize> = (0..slices.len()).collect();
        match self.output_format(cfg) {
            f @ (OutputFormat::Ckpt | OutputFormat::Safetensors) => {
                let format = match f {
                    OutputFormat::Ckpt => CheckpointFormat::Ckpt,
                    _ => CheckpointFormat::Safetensors,
                };
                let dir = cfg.out_dir.join(format!("rank_{rank}"));
                Ok(RankOutput {
                    manifest: dir.join("MANIFEST.json"),
                    files: vec![OutFile {
                        path: dir.join(format!("checkpoint_{rank}.{}", format.extension())),
                        slices: all,
                        framing: OutFraming::Checkpoint(format),
                    }],
                    extras: Vec::new(),
                    dir,
                })
            }
            OutputFormat::HuggingFace => self.hf_output(cfg, rank, &slices),
            OutputFormat::Dcp => self.dcp_output(cfg, rank, &slices),
        }
    }

    /// A Hugging Face model folder of the rank's slices.
    fn hf_output(
        &self,
        cfg: &WriteConfig,
        rank: u64,
        slices: &[RankSlice],
    ) -> Result<RankOutput, ReshardError> {
        use crate::formats::hf::HfLayout;
        let dir = if self.dst.mesh().rank_count() == 1 {
            cfg.out_dir.clone()
        } else {
            cfg.out_dir.join(format!("rank_{rank}"))
        };
        let infos: Vec<TensorInfo> = slices
            .iter()
            .map(|s| TensorInfo {
                name: s.name.clone(),
                shape: s.shape.clone(),
                dtype: s.dtype,
            })
            .collect();
        let layout = HfLayout::new(&infos, cfg.max_shard_bytes)?;
        let index: BTreeMap<&str, usize> = slices
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let files = layout
            .shards()
            .iter()
            .map(|sh| OutFile {
                path: dir.join(sh.file_name()),
                slices: sh
                    .tensors()
                    .iter()
                    .map(|t| index[t.name.as_str()])
                    .collect(),
                framing: OutFraming::Shard(sh.header().to_vec()),
            })
            .collect();
        let extras = if layout.is_sharded() {
            vec![(
                dir.join(crate::formats::hf::INDEX_NAME),
                layout.index_json().into_bytes(),
            )]
        } else {
            Vec::new()
        };
        Ok(RankOutput {
            manifest: dir.join(format!(".shardplan-rank_{rank}.json")),
            files,
            extras,
            dir,
        })
    }

    /// The rank's file of a DCP folder and the folder's `.metadata`.
    fn dcp_output(
        &self,
        cfg: &WriteConfig,
        rank: u64,
        slices: &[RankSlice],
    ) -> Result<RankOutput, ReshardError> {
        use crate::formats::dcp_write::METADATA_FILE;
        let (layout, slice_of) = self.dcp_plan()?;
        let file = layout
            .files()
            .get(rank as usize)
            .ok_or_else(|| internal(format!("no DCP file for rank {rank}")))?;
        debug_assert!(slices.len() >= file.items.len());
        Ok(RankOutput {
            manifest: cfg.out_dir.join(format!(".shardplan-rank_{rank}.json")),
            files: vec![OutFile {
                path: cfg.out_dir.join(&file.name),
                slices: file
                    .items
                    .iter()
                    .map(|it| slice_of[it.source.0][it.source.1])
                    .collect(),
                framing: OutFraming::Archives(
                    file.items.iter().map(|it| it.archive.clone()).collect(),
                ),
            }],
            extras: vec![(
                cfg.out_dir.join(METADATA_FILE),
                layout.metadata_bytes().to_vec(),
            )],
            dir: cfg.out_dir.clone(),
        })
    }

    /// The DCP folder of the destination and, per rank, which of its
    /// slices each of its chunks is; planned on first use.
    fn dcp_plan(&self) -> Result<&DcpPlan, ReshardError> {
        if let Some(p) = self.dcp.get() {
            return Ok(p);
        }
        let ranks = self.dst.mesh().rank_count();
        let mut chunks = Vec::with_capacity(ranks as usize);
        let mut slice_of: Vec<Vec<usize>> = Vec::with_capacity(ranks as usize);
        for r in 0..ranks {
            let (c, k) = self.dcp_chunks(r)?;
            chunks.push(c);
            slice_of.push(k);
        }
        let layout = crate::formats::dcp_write::DcpLayout::new(chunks)?;
        Ok(self.dcp.get_or_init(|| (layout, slice_of)))
    }

    /// The DCP chunks of rank `r`, one per slice it receives (empty slices
    /// left out, unless the whole tensor is empty), with the index of the
    /// slice each is.
    fn dcp_chunks(
        &self,
        r: u64,
    ) -> Result<(Vec<crate::formats::dcp_write::DcpChunkOut>, Vec<usize>), ReshardError> {
        use crate::formats::dcp_write::DcpChunkOut;
        let mut chunks = Vec::new();
        let mut index = Vec::new();
        let mut k = 0usize;
        for (t, l) in self.dst.tensors().iter().zip(self.dst.layouts()) {
            let Some(region) = l.region_of(r) else {
                continue;
            };
            let whole_empty = t.shape.contains(&0);
            // An empty tensor is recorded once, by the first rank holding it.
            let first = (0..r).all(|q| l.region_of(q).is_none());
            if !region.is_empty() || (whole_empty && first) {
                chunks.push(DcpChunkOut {
                    fqn: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    offsets: region.offset().to_vec(),
                    sizes: region.extent().to_vec(),
                });
                index.push(k);
            }
            k += 1;
        }
        for (t, loc) in self.copied_to(r) {
            chunks.push(DcpChunkOut {
                fqn: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                offsets: vec![0; loc.entry.shape.len()],
                sizes: loc.entry.shape.clone(),
            });
            index.push(k);
            k += 1;
        }
        Ok((chunks, index))
    }

    /// Writes destination rank `rank`'s files under `cfg.out_dir`, or finds
    /// them complete from an earlier run. `progress` receives the bytes of
    /// each tensor written.
    ///
    /// # Errors
    ///
    /// [`ReshardError::OutputOverlaps`] when the output folder overlaps the
    /// sources (which are never written); [`ReshardError::Io`] naming the
    /// file; temporary files are removed.
    pub fn write_rank(
        &self,
        cfg: &WriteConfig,
        rank: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RankOutcome, ReshardError> {
        if let Some(src) = self
            .src_dirs
            .iter()
            .find(|d| paths_overlap(d, &cfg.out_dir))
        {
            return Err(ReshardError::OutputOverlaps {
                out: cfg.out_dir.display().to_string(),
                src: src.display().to_string(),
            });
        }
        let out = self.rank_output(cfg, rank)?;
        std::fs::create_dir_all(&out.dir).map_err(io(&out.dir))?;
        let paths: Vec<PathBuf> = out.files.iter().map(|f| f.path.clone()).collect();
        if let Some(bytes) = vouched(&out.manifest, &paths) {
            write_extras(&out.extras)?;
            return Ok(RankOutcome {
                rank,
                path: paths.first().cloned().unwrap_or_else(|| out.dir.clone()),
                files: paths,
                bytes,
                resumed: true,
            });
        }
        remove_leftovers(&out.dir, &paths);
        let mut entries = Vec::with_capacity(out.files.len());
        let mut files = SourceFiles::default();
        let runs = self.rank_runs(rank, &mut files)?;
        for f in &out.files {
            let name = f.path.file_name().expect("file").to_string_lossy();
            let tmp = out.dir.join(format!(".{name}.tmp-{}", std::process::id()));
            let sum = match self.write_file(&tmp, f, &runs, &files, cfg, progress) {
                Ok(sum) => sum,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            std::fs::rename(&tmp, &f.path).map_err(io(&f.path))?;
            entries.push(ManifestEntry {
                file: name.into_owned(),
                bytes: sum.len(),
                checksum: sum.hex(),
            });
        }
        write_extras(&out.extras)?;
        let bytes = entries.iter().map(|e| e.bytes).sum();
        let manifest = Manifest { files: entries };
        crate::formats::write_atomic(
            &out.manifest,
            serde_json::to_string_pretty(&manifest)
                .expect("serializes")
                .as_bytes(),
        )
        .map_err(io(&out.manifest))?;
        Ok(RankOutcome {
            rank,
            path: paths.first().cloned().unwrap_or_else(|| out.dir.clone()),
            files: paths,
            bytes,
            resumed: false,
        })
    }

    /// Writes one output file to `tmp`, summed on the way out (the file is
    /// not read again).
    fn write_file(
        &self,
        tmp: &Path,
        f: &OutFile,
        runs: &[(RankSlice, Vec<PieceRuns>)],
        files: &SourceFiles,
        cfg: &WriteConfig,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Checksum, ReshardError> {
        let decl: Vec<(String, DType, Vec<u64>)> = f
            .slices
            .iter()
            .map(|&i| {
                let s = &runs[i].0;
                (s.name.clone(), s.dtype, s.shape.clone())
            })
            .collect();
        let window = usize::try_from(cfg.window_bytes).unwrap_or(usize::MAX);
        let out = &f.path;
        let mut writer = match &f.framing {
            OutFraming::Checkpoint(format) => {
                CheckpointWriter::create_streamed(tmp, *format, decl, window, cfg.direct_io)
            }
            OutFraming::Shard(header) => {
                let frames = (0..decl.len())
                    .map(|i| Frame {
                        prefix: if i == 0 { header.clone() } else { Vec::new() },
                        suffix: None,
                    })
                    .collect();
                CheckpointWriter::create_framed(tmp, decl, frames, window, cfg.direct_io)
            }
            OutFraming::Archives(items) => {
                let frames = items
                    .iter()
                    .map(|item| {
                        let item = item.clone();
                        Frame {
                            prefix: item.prefix().to_vec(),
                            suffix: Some(Box::new(move |crc| item.suffix(crc))),
                        }
                    })
                    .collect();
                CheckpointWriter::create_framed(tmp, decl, frames, window, cfg.direct_io)
            }
        }
        .map_err(io(out))?;
        if matches!(&f.framing, OutFraming::Shard(_)) && f.slices.is_empty() {
            // A shard of no tensors is only its header.
            return Err(internal(format!("empty shard {}", out.display())));
        }
        for &i in &f.slices {
            let (slice, pieces) = &runs[i];
            write_tensor(&mut writer, files, pieces, out)?;
            progress(slice.bytes);
        }
        let (_, sum) = writer.finish_summed().map_err(io(out))?;
        Ok(sum)
    }

    /// The tensors destination rank `rank` receives, in the order its
    /// checkpoint lists them: its slices under the destination strategy
    /// (strategy order), then the tensors copied through.
    ///
    /// # Errors
    ///
    /// [`ReshardError::NoSuchRank`] for a rank outside the destination.
    pub fn rank_slices(&self, rank: u64) -> Result<Vec<RankSlice>, ReshardError> {
        self.check_rank(rank)?;
        let planned = self
            .dst
            .tensors()
            .iter()
            .zip(self.dst.layouts())
            .filter_map(|(t, l)| Some(RankSlice::new(t, l.region_of(rank)?.extent().to_vec())));
        let copied = self
            .copied_to(rank)
            .into_iter()
            .map(|(t, loc)| RankSlice::new(t, loc.entry.shape.clone()));
        Ok(planned.chain(copied).collect())
    }

    /// Reads destination rank `rank`'s tensors into memory, without writing
    /// a file: `bufs[i]` receives the bytes of [`Prepared::rank_slices`]'s
    /// `i`-th tensor, row-major. Only the bytes the rank's pieces cover are
    /// read, with positional reads, from the source files they name.
    ///
    /// # Errors
    ///
    /// [`ReshardError::NoSuchRank`] for a rank outside the destination;
    /// [`ReshardError::BufferCount`] or [`ReshardError::BufferSize`] for
    /// buffers that do not match the slices in number or size;
    /// [`ReshardError::Io`] naming the source file of a failed read.
    pub fn read_rank_into(&self, rank: u64, bufs: &mut [&mut [u8]]) -> Result<(), ReshardError> {
        let mut files = SourceFiles::default();
        let slices = self.rank_runs(rank, &mut files)?;
        if slices.len() != bufs.len() {
            return Err(ReshardError::BufferCount {
                rank,
                slices: slices.len(),
                buffers: bufs.len(),
            });
        }
        for ((slice, pieces), buf) in slices.iter().zip(bufs.iter_mut()) {
            if buf.len() as u64 != slice.bytes {
                return Err(ReshardError::BufferSize {
                    tensor: slice.name.clone(),
                    rank,
                    bytes: slice.bytes,
                    len: buf.len(),
                });
            }
            fill_range(&files.0, pieces, 0, buf).map_err(|(path, e)| io(path)(e))?;
        }
        Ok(())
    }

    fn check_rank(&self, rank: u64) -> Result<(), ReshardError> {
        let ranks = self.dst.mesh().rank_count();
        if rank >= ranks {
            return Err(ReshardError::NoSuchRank { rank, ranks });
        }
        Ok(())
    }

    /// Each tensor of [`Prepared::rank_slices`] with the byte runs that
    /// fill it, its source files opened in `files`.
    fn rank_runs(
        &self,
        rank: u64,
        files: &mut SourceFiles,
    ) -> Result<Vec<(RankSlice, Vec<PieceRuns>)>, ReshardError> {
        self.check_rank(rank)?;
        let mut out = Vec::new();
        for (t, l) in self.dst.tensors().iter().zip(self.dst.layouts()) {
            let Some(region) = l.region_of(rank) else {
                continue;
            };
            let tp = self
                .plan
                .tensors
                .iter()
                .find(|p| p.name == t.name)
                .ok_or_else(|| internal(format!("tensor `{}` is not in the plan", t.name)))?;
            let size = t.dtype.size_bytes();
            let mut pieces: Vec<PieceRuns> = Vec::new();
            for p in tp.pieces.iter().filter(|p| p.dst_rank == rank) {
                let loc = &self.sources[&p.src_rank][&t.name];
                pieces.push(PieceRuns::new(
                    files.open(&loc.path)?,
                    loc.entry.offset,
                    size,
                    &loc.entry.shape,
                    p.src_box.offset(),
                    region.extent(),
                    &p.dst_local_offset,
                    p.dst_box.extent(),
                ));
            }
            let slice = RankSlice::new(t, region.extent().to_vec());
            // The verified plan covers the slice exactly once: the runs add
            // up to it (windows and buffers are reused, so a gap would
            // leave old bytes).
            debug_assert_eq!(
                pieces.iter().map(PieceRuns::bytes).sum::<u64>(),
                slice.bytes
            );
            out.push((slice, pieces));
        }
        for (t, loc) in self.copied_to(rank) {
            // The whole source tensor, as it is.
            let shape = &loc.entry.shape;
            let zeros = vec![0; shape.len()];
            let piece = PieceRuns::new(
                files.open(&loc.path)?,
                loc.entry.offset,
                t.dtype.size_bytes(),
                shape,
                &zeros,
                shape,
                &zeros,
                shape,
            );
            out.push((RankSlice::new(t, shape.clone()), vec![piece]));
        }
        Ok(out)
    }
}

/// One tensor a destination rank receives: its name, dtype, the shape of
/// its slice and the slice's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankSlice {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape of the rank's slice.
    pub shape: Vec<u64>,
    /// Bytes of the slice.
    pub bytes: u64,
}

impl RankSlice {
    fn new(t: &TensorInfo, shape: Vec<u64>) -> Self {
        // Slices of tensors whose sizes the strategy checked: no overflow.
        let bytes = shape
            .iter()
            .product::<u64>()
            .saturating_mul(t.dtype.size_bytes());
        RankSlice {
            name: t.name.clone(),
            dtype: t.dtype,
            shape,
            bytes,
        }
    }
}

/// The bytes of `paths` when `manifest` vouches for every one of them
/// (size and checksum): an earlier run completed them.
fn vouched(manifest: &Path, paths: &[PathBuf]) -> Option<u64> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let m: Manifest = serde_json::from_str(&text).ok()?;
    if m.files.len() != paths.len() {
        return None;
    }
    let mut total = 0u64;
    for (e, p) in m.files.iter().zip(paths) {
        if p.file_name()?.to_string_lossy() != e.file || !p.is_file() {
            return None;
        }
        let (bytes, sum) = file_checksum(p).ok()?;
        if bytes != e.bytes || sum != e.checksum {
            return None;
        }
        total += bytes;
    }
    Some(total)
}

/// Removes what an interrupted run of these files left under a temporary
/// name; other ranks' files in a shared folder are left alone.
fn remove_leftovers(dir: &Path, paths: &[PathBuf]) {
    let prefixes: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| format!(".{}.tmp-", n.to_string_lossy()))
        .collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes each small file whole, atomically.
fn write_extras(extras: &[(PathBuf, Vec<u8>)]) -> Result<(), ReshardError> {
    for (path, bytes) in extras {
        crate::formats::write_atomic(path, bytes).map_err(io(path))?;
    }
    Ok(())
}

/// True when one of the two folders is inside the other, after resolving
/// both (symbolic links, `.` and `..`; the part of a path that does not
/// exist yet is taken as written, less its `.` and `..`): an output there
/// could replace a source.
pub fn paths_overlap(src: &Path, out: &Path) -> bool {
    // Both readings: `..` after a symbolic link means its target's parent
    // to the system but the link's parent lexically; either may be meant.
    let inside = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
    inside(&resolved(src), &resolved(out)) || inside(&lexical(src), &lexical(out))
}

/// `path` made absolute, with `.` and `..` taken out as written.
fn lexical(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `path` made absolute with its deepest existing ancestor canonicalized.
fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            // A `..` or the root: resolve lexically from here.
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(existing).unwrap_or_else(|_| lexical(existing));
    for part in rest.into_iter().rev() {
        match part.to_str() {
            Some(".") => {}
            Some("..") => {
                out.pop();
            }
            _ => out.push(part),
        }
    }
    out
}

/// The source files one destination rank reads, each opened once.
#[derive(Default)]
struct SourceFiles(Vec<(PathBuf, File)>);

impl SourceFiles {
    /// The index of `path`, opening it on first use.
    fn open(&mut self, path: &Path) -> Result<usize, ReshardError> {
        if let Some(i) = self.0.iter().position(|(p, _)| p == path) {
            return Ok(i);
        }
        let f = File::open(path).map_err(io(path))?;
        self.0.push((path.to_path_buf(), f));
        Ok(self.0.len() - 1)
    }
}

/// Streams one output tensor from `pieces`. A failed read names its source
/// file, a failed write the output `out`.
fn write_tensor(
    writer: &mut CheckpointWriter,
    files: &SourceFiles,
    pieces: &[PieceRuns],
    out: &Path,
) -> Result<(), ReshardError> {
    let mut read_error = None;
    let written = writer.write_tensor_with(|at, dst| {
        fill_range(&files.0, pieces, at, dst).map_err(|(path, e)| {
            let kind = e.kind();
            read_error = Some(io(path)(e));
            std::io::Error::new(kind, "reading a source failed")
        })
    });
    match written {
        Ok(()) => Ok(()),
        Err(e) => Err(read_error.unwrap_or_else(|| io(out)(e))),
    }
}

/// The byte runs of one piece: its box's runs in bytes ([`BoxRuns`]),
/// from `base` in one source file to the destination slice.
#[derive(Debug)]
struct PieceRuns {
    file: usize,
    base: u64,
    runs: BoxRuns,
}

impl PieceRuns {
    #[allow(clippy::too_many_arguments)]
    fn new(
        file: usize,
        base: u64,
        size: u64,
        src_shape: &[u64],
        src_off: &[u64],
        dst_shape: &[u64],
        dst_off: &[u64],
        extent: &[u64],
    ) -> Self {
        PieceRuns {
            file,
            base,
            runs: BoxRuns::new(src_shape, src_off, dst_shape, dst_off, extent, size),
        }
    }

    /// The bytes the piece fills.
    fn bytes(&self) -> u64 {
        self.runs.count() * self.runs.run()
    }
}

/// Fills `out`, bytes `at..at + out.len()` of a destination slice, from
/// the pieces' runs: each piece's runs that overlap the range, clipped,
/// read with one vectored positional read per stretch of contiguous
/// source bytes (a piece of whole source rows scattering into strided
/// destination rows is one read per 1024 rows), straight into `out`.
///
/// # Errors
///
/// The source file and the error of a failed read.
fn fill_range<'a>(
    files: &'a [(PathBuf, File)],
    pieces: &[PieceRuns],
    at: u64,
    out: &mut [u8],
) -> Result<(), (&'a Path, std::io::Error)> {
    let end = at + out.len() as u64;
    for p in pieces {
        let (path, f) = &files[p.file];
        let mut batch = ReadBatch::new(f);
        // `out` is carved front to back; `rest` starts at `rest_at`.
        let mut rest: &mut [u8] = &mut *out;
        let mut rest_at = at;
        let run = p.runs.run();
        for r in p.runs.first_after(at)..p.runs.count() {
            let (src, dst) = p.runs.at(r);
            let src = p.base + src;
            if dst >= end {
                break;
            }
            let a = dst.max(at);
            let b = (dst + run).min(end);
            let (_, tail) = std::mem::take(&mut rest).split_at_mut((a - rest_at) as usize);
            let (piece, tail) = tail.split_at_mut((b - a) as usize);
            rest = tail;
            rest_at = b;
            batch
                .push(src + (a - dst), piece)
                .map_err(|e| (path.as_path(), e))?;
        }
        batch.flush().map_err(|e| (path.as_path(), e))?;
    }
    Ok(())
}

/// Destination slices that a stretch of contiguous source bytes fills,
/// read together.
struct ReadBatch<'f, 'b> {
    file: &'f File,
    /// Source offset of the first slice and of the byte after the last.
    start: u64,
    next: u64,
    bufs: Vec<std::io::IoSliceMut<'b>>,
}

/// Slices per vectored read (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

impl<'f, 'b> ReadBatch<'f, 'b> {
    fn new(file: &'f File) -> Self {
        ReadBatch {
            file,
            start: 0,
            next: 0,
            bufs: Vec::new(),
        }
    }

    fn push(&mut self, src: u64, buf: &'b mut [u8]) -> std::io::Result<()> {
        if !self.bufs.is_empty() && (src != self.next || self.bufs.len() == MAX_SLICES) {
            self.flush()?;
        }
        if self.bufs.is_empty() {
            self.start = src;
            self.next = src;
        }
        self.next += buf.len() as u64;
        self.bufs.push(std::io::IoSliceMut::new(buf));
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        read_exact_vectored_at(self.file, &mut self.bufs, self.start)?;
        self.bufs.clear();
        Ok(())
    }
}

/// Reads `bufs.len()` slices' worth of bytes at `offset`, in order, until
/// every slice is full.
fn read_exact_vectored_at(
    file: &File,
    mut bufs: &mut [std::io::IoSliceMut<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    std::io::IoSliceMut::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = read_vectored_at(file, bufs, offset)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file ends before the tensor data",
            ));
        }
        offset += n as u64;
        std::io::IoSliceMut::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn read_vectored_at(
    file: &File,
    bufs: &mut [std::io::IoSliceMut<'_>],
    offset: u64,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let count = bufs.len().min(MAX_SLICES) as libc::c_int;
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "offset too large"))?;
    loop {
        // SAFETY: `IoSliceMut` is ABI-compatible with `iovec` on Unix (its
        // documented guarantee); the slices are valid, exclusively borrowed
        // buffers for the duration of the call, and `count` does not exceed
        // their number.
        let n = unsafe {
            libc::preadv(
                file.as_raw_fd(),
                bufs.as_mut_ptr().cast::<libc::iovec>(),
                count,
                offset,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Without `preadv`: the first non-empty slice by itself.
#[cfg(not(target_os = "linux"))]
fn read_vectored_at(
    file: &File,
    bufs: &mut [std::io::IoSliceMut<'_>],
    offset: u64,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let Some(b) = bufs.iter_mut().find(|b| !b.is_empty()) else {
        return Ok(0);
    };
    loop {
        match file.read_at(&mut b[..], offset) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// The destination ranks this process produces: `--rank`, else the
/// launcher's rank among its world (`RANK`/`WORLD_SIZE`,
/// `SLURM_PROCID`/`SLURM_NTASKS`, `OMPI_COMM_WORLD_RANK`/`OMPI_COMM_WORLD_SIZE`)
/// taking every world-size-th rank, else all.
pub fn ranks_for_process(
    explicit: Option<u64>,
    ranks: u64,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<u64> {
    if let Some(r) = explicit {
        return vec![r];
    }
    for (rank_var, size_var) in [
        ("RANK", "WORLD_SIZE"),
        ("SLURM_PROCID", "SLURM_NTASKS"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ] {
        if let Some(r) = env(rank_var).and_then(|v| v.trim().parse::<u64>().ok()) {
            let world = env(size_var)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&w| w > 0)
                .unwrap_or(ranks);
            return (r..ranks).step_by(world as usize).collect();
        }
    }
    (0..ranks).collect()
}

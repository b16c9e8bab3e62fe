//! Streaming N-to-M checkpoint resharding, file by file. This module is at
//! the edge: it reads checkpoint and strategy files and writes checkpoints;
//! the plan it follows comes from the core planner and verifier.
//!
//! Each destination rank reads only the source files its pieces name, and
//! only the bytes the pieces cover, straight into the output's windows
//! ([`WriteConfig::window_bytes`], four in memory), which background
//! threads write (with direct IO where possible, see
//! `formats/io/stream.rs`). Outputs are written to a temporary name,
//! fsynced and renamed;
//! a manifest per rank records each file's size and checksum, so an
//! interrupted run resumes where it stopped. Sources are only ever opened
//! for reading.

mod copy_through;
mod engine;
mod error;
mod prepare;
mod read;
mod write;

pub use copy_through::CopyThrough;
pub use engine::{
    ENGINE_DTYPE_FROM, engine_destination, engine_rank_path, read_engine_rank, write_engine_rank,
};
pub use error::{ReshardError, Side};
pub use prepare::{
    checkpoint_strategy, prepare, prepare_chunked, read_chunked, tensors_from_checkpoints,
};
pub use write::{RankOutcome, RankSlice, paths_overlap};

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::Strategy;
use crate::formats::checkpoint::{CheckpointFormat, TensorEntry};
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

/// What [`prepare()`] reads and checks: the sources, the two layouts, how
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

/// A destination's DCP folder and, per rank, the slice of each chunk.
type DcpPlan = (crate::formats::torch::dcp_write::DcpLayout, Vec<Vec<usize>>);

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

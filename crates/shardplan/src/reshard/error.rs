//! Why a reshard failed, one variant per fault.

use std::path::Path;

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
    StrategyFile(#[from] crate::formats::mindspore::strategy::StrategyFileError),
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
        source: crate::formats::mindspore::strategy::StrategyLayoutError,
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
    DcpRead(Box<crate::formats::torch::dcp::DcpError>),
    /// A DCP folder that cannot be planned.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Dcp(#[from] crate::formats::torch::dcp_write::DcpWriteError),
    /// An engine's storage map that does not match the prepared
    /// destination (prepare with the engine layout's strategy).
    #[error("rank {rank}: the engine's parameters cannot be packed: {source}")]
    #[diagnostic(
        code(shardplan::reshard::storage),
        help("prepare the reshard with the engine layout's strategy as its destination")
    )]
    Storage {
        /// The destination rank.
        rank: u64,
        /// What did not match.
        source: Box<crate::storage::StorageError>,
    },
    /// An engine destination that cannot be built: its config, or the
    /// model at the degrees asked.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Engine(Box<crate::engine::EngineError>),
    /// A source without the tensor an engine destination takes its dtype
    /// from.
    #[error("{path} has no `model.embed_tokens.weight`")]
    #[diagnostic(
        code(shardplan::reshard::engine_source),
        help(
            "engine outputs read a Hugging Face folder, a DCP folder or a safetensors file holding the model's Hugging Face tensors"
        )
    )]
    EngineSource {
        /// The source.
        path: String,
    },
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

impl From<crate::formats::torch::dcp::DcpError> for ReshardError {
    fn from(e: crate::formats::torch::dcp::DcpError) -> Self {
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
    pub(super) fn layouts_error(
        self,
    ) -> impl FnOnce(crate::formats::mindspore::strategy::StrategyLayoutError) -> ReshardError {
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

pub(super) fn internal(what: impl Into<String>) -> ReshardError {
    ReshardError::Internal { what: what.into() }
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReshardError + '_ {
    move |source| ReshardError::Io {
        path: path.display().to_string(),
        source,
    }
}

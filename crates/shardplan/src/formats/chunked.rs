//! Checkpoints that store each tensor as chunks: boxes of the global tensor,
//! each a row-major run of bytes somewhere in a file (PyTorch DCP, the
//! Hugging Face storage writer, Hugging Face model folders). Readers of
//! those formats produce a [`ChunkedCheckpoint`]; bytes are read later,
//! positionally.

use std::path::PathBuf;

use crate::DType;

/// The format a checkpoint folder or file was written in, as detected from
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourceFormat {
    /// MindSpore `rank_<r>/` folders of `.ckpt` or `.safetensors` files.
    MindSpore,
    /// PyTorch DCP, default writer: `.metadata` + `.distcp` files of
    /// `torch.save` archives.
    DcpTorchSave,
    /// PyTorch DCP with `serialization_format=SAFETENSORS`: `.metadata` +
    /// `.distcp` files that are safetensors.
    DcpSafetensors,
    /// PyTorch DCP's `HuggingFaceStorageWriter`: `shard-*.safetensors` whose
    /// headers hold `DCP_SHARDING_INFO`, no `.metadata`.
    DcpHuggingFace,
    /// A Hugging Face model folder: `model.safetensors.index.json` + shards.
    HuggingFace,
    /// One safetensors file of whole tensors.
    Safetensors,
}

impl SourceFormat {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::MindSpore => "MindSpore checkpoint folder",
            SourceFormat::DcpTorchSave => "PyTorch DCP checkpoint (torch.save items)",
            SourceFormat::DcpSafetensors => "PyTorch DCP checkpoint (safetensors items)",
            SourceFormat::DcpHuggingFace => "PyTorch DCP Hugging Face writer folder",
            SourceFormat::HuggingFace => "Hugging Face model folder",
            SourceFormat::Safetensors => "safetensors file",
        }
    }
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One stored chunk of a tensor: the box it covers and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    /// The rank that wrote it (files of one rank share it).
    pub rank: u64,
    /// Start of the box in the global tensor, one entry per dimension.
    pub offsets: Vec<u64>,
    /// Extent of the box, one entry per dimension.
    pub sizes: Vec<u64>,
    /// The file holding the bytes.
    pub file: PathBuf,
    /// Absolute byte offset of the first element in `file`.
    pub byte_offset: u64,
    /// Byte length: the element count of `sizes` times the dtype's width.
    pub byte_len: u64,
}

/// One tensor and its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTensor {
    /// Fully qualified name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Global shape.
    pub shape: Vec<u64>,
    /// Chunks, in the order the index lists them.
    pub chunks: Vec<StoredChunk>,
}

/// The index of a chunked checkpoint: every tensor and where its chunks are.
/// Readers check that each chunk's byte range lies inside its file and
/// matches its box and dtype; that the chunks tile the tensor is checked
/// when they become a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedCheckpoint {
    /// What was read.
    pub format: SourceFormat,
    /// The folder or file read.
    pub root: PathBuf,
    /// Number of writer ranks: one more than the largest chunk rank.
    pub ranks: u64,
    /// Tensors, in name order.
    pub tensors: Vec<StoredTensor>,
}

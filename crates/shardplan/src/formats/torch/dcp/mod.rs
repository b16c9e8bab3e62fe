//! PyTorch Distributed Checkpoint (DCP) folders: `.metadata`, a pickle of
//! `torch.distributed.checkpoint.metadata.Metadata`, and `.distcp` files
//! holding the chunks, either as `torch.save` archives one after another
//! (the default writer) or as one safetensors file per writer
//! (`serialization_format=SAFETENSORS`).
//!
//! [`read_dcp`] decodes `.metadata` with the restricted
//! `pickle` machine of `torch/pickle/` (nothing is imported or run), maps
//! every chunk of `state_dict_metadata` to its item of `storage_data`,
//! and finds the chunk's raw bytes inside the item, checking every byte
//! range against its file. No tensor bytes are read.

mod data;
mod metadata;

use data::DataFiles;
use metadata::{Schema, StorageInfo, TensorMeta};

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use super::pickle::{DCP_METADATA_GLOBALS, PickleError, PickleLimits, Value, unpickle};
use super::zip::{TorchItemError, read_torch_save_item};
use crate::DType;
use crate::formats::checkpoint::{CheckpointError, CheckpointFormat, TensorEntry, parse_index};
use crate::formats::chunked::{ChunkedCheckpoint, SourceFormat, StoredChunk, StoredTensor};
use crate::formats::dtype_names::torch_dtype;

/// A DCP checkpoint's index and the entries it does not index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcpIndex {
    /// Every tensor and where its chunks are.
    pub checkpoint: ChunkedCheckpoint,
    /// Keys of `BytesStorageMetadata` entries (pickled Python objects
    /// such as optimizer hyper-parameters), which are not tensors and are
    /// not read.
    pub skipped: Vec<String>,
}

/// A DCP checkpoint that cannot be read.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DcpError {
    /// A file that cannot be opened or mapped.
    #[error("{}: {message}", file.display())]
    #[diagnostic(
        code(shardplan::formats::dcp::io),
        help("check the path and permissions")
    )]
    Io {
        /// The file.
        file: PathBuf,
        /// The IO error.
        message: String,
    },
    /// A folder without `.metadata`.
    #[error("{}: no .metadata file; this is not a PyTorch DCP checkpoint folder", dir.display())]
    #[diagnostic(
        code(shardplan::formats::dcp::no_metadata),
        help(
            "point at the folder dcp.save wrote (it holds .metadata and __<rank>_<n>.distcp files)"
        )
    )]
    NoMetadata {
        /// The folder.
        dir: PathBuf,
    },
    /// `.metadata` refused by the pickle machine.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Pickle(Box<PickleError>),
    /// `.metadata` decodes, but not to the `Metadata` PyTorch writes.
    #[error("{}: {at} is not {expected}", file.display())]
    #[diagnostic(
        code(shardplan::formats::dcp::schema),
        help(
            "the metadata was written by an unknown PyTorch version or altered; write it again with torch.distributed.checkpoint"
        )
    )]
    Schema {
        /// `.metadata`.
        file: PathBuf,
        /// Where in the metadata, such as `state_dict_metadata['w'].size`.
        at: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A tensor of a dtype the crate does not move.
    #[error("{}: tensor {tensor} has dtype torch.{dtype}, which is not supported", file.display())]
    #[diagnostic(
        code(shardplan::formats::dcp::unsupported_dtype),
        help(
            "supported: float64 float32 float16 bfloat16 int64 int32 int16 int8 uint64 uint32 uint16 uint8 bool"
        )
    )]
    UnsupportedDtype {
        /// `.metadata`.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// The torch dtype name.
        dtype: String,
    },
    /// A chunk that does not fit its tensor's shape.
    #[error(
        "{}: tensor {tensor} of shape {shape:?}: chunk at {offsets:?} of size {sizes:?} lies outside it",
        file.display()
    )]
    #[diagnostic(
        code(shardplan::formats::dcp::chunk_outside),
        help("the metadata is inconsistent; write the checkpoint again")
    )]
    ChunkOutside {
        /// `.metadata`.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// The chunk's offsets.
        offsets: Vec<u64>,
        /// The chunk's sizes.
        sizes: Vec<u64>,
    },
    /// A chunk without an entry in `storage_data`.
    #[error("{}: tensor {tensor}: no storage item for the chunk at {offsets:?}", file.display())]
    #[diagnostic(
        code(shardplan::formats::dcp::missing_storage),
        help("the metadata is incomplete (a rank's write failed?); write the checkpoint again")
    )]
    MissingStorage {
        /// `.metadata`.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// The chunk's offsets.
        offsets: Vec<u64>,
    },
    /// Two `storage_data` entries for one chunk.
    #[error("{}: tensor {tensor}: two storage items for the chunk at {offsets:?}", file.display())]
    #[diagnostic(
        code(shardplan::formats::dcp::duplicate_storage),
        help("the metadata is inconsistent; write the checkpoint again")
    )]
    DuplicateStorage {
        /// `.metadata`.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// The chunk's offsets.
        offsets: Vec<u64>,
    },
    /// A storage path that leaves the checkpoint folder.
    #[error("{}: tensor {tensor}: storage path {path:?} is not a file name inside the folder", file.display())]
    #[diagnostic(
        code(shardplan::formats::dcp::relative_path),
        help("DCP writes plain file names such as __0_0.distcp; the metadata was altered")
    )]
    RelativePath {
        /// `.metadata`.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// The recorded path.
        path: String,
    },
    /// A byte range past the end of its file.
    #[error(
        "{}: tensor {tensor}: bytes {start}..{end} are recorded but the file has {len} bytes",
        file.display()
    )]
    #[diagnostic(
        code(shardplan::formats::dcp::short_file),
        help("the file is truncated (an interrupted copy or write?); copy or write it again")
    )]
    ShortFile {
        /// The data file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// Start of the missing range.
        start: u64,
        /// End of the recorded range.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// A `.distcp` file that is neither a torch.save stream nor
    /// safetensors, or a folder mixing both.
    #[error("{}: {reason}", file.display())]
    #[diagnostic(
        code(shardplan::formats::dcp::unknown_item),
        help(
            "DCP data files are torch.save archives or safetensors; the file is corrupt or not DCP's"
        )
    )]
    UnknownItem {
        /// The data file.
        file: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A torch.save item that cannot be read.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Item(Box<TorchItemError>),
    /// A safetensors data file that cannot be read.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Safetensors(Box<CheckpointError>),
    /// An item whose tensor differs from the chunk the metadata records.
    #[error(
        "{}: tensor {tensor}, chunk at {offsets:?}: the item holds {found}, the metadata says {expected}",
        file.display()
    )]
    #[diagnostic(
        code(shardplan::formats::dcp::item_mismatch),
        help(
            "the data files do not belong to this .metadata; copy the whole checkpoint folder again"
        )
    )]
    ItemMismatch {
        /// The data file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// The chunk's offsets.
        offsets: Vec<u64>,
        /// What the item holds.
        found: String,
        /// What the metadata says.
        expected: String,
    },
}

impl From<PickleError> for DcpError {
    #[cold]
    fn from(e: PickleError) -> Self {
        DcpError::Pickle(Box::new(e))
    }
}

impl From<TorchItemError> for DcpError {
    #[cold]
    fn from(e: TorchItemError) -> Self {
        DcpError::Item(Box::new(e))
    }
}

impl From<CheckpointError> for DcpError {
    #[cold]
    fn from(e: CheckpointError) -> Self {
        DcpError::Safetensors(Box::new(e))
    }
}

/// Reads the index of the DCP checkpoint folder `dir`.
///
/// # Errors
///
/// As [`read_dcp_index`].
pub fn read_dcp(dir: &Path) -> Result<ChunkedCheckpoint, DcpError> {
    read_dcp_index(dir).map(|i| i.checkpoint)
}

/// Reads the index of the DCP checkpoint folder `dir`, and the names of
/// the non-tensor entries it skips.
///
/// # Errors
///
/// [`DcpError`] when `.metadata` is missing or unreadable, refused by the
/// pickle machine (a global outside the allow-list, a budget exceeded, a
/// truncated pickle), or not shaped like `Metadata`; a dtype is not
/// supported; a chunk lies outside its tensor or has no (or two) storage
/// items; a storage path leaves the folder; a byte range lies past the end
/// of its file; a data file is neither torch.save nor safetensors; an item
/// cannot be read; or an item's dtype, shape or length differs from its
/// chunk's.
pub fn read_dcp_index(dir: &Path) -> Result<DcpIndex, DcpError> {
    let meta_path = dir.join(".metadata");
    if !meta_path.is_file() {
        return Err(DcpError::NoMetadata {
            dir: dir.to_path_buf(),
        });
    }
    let meta_bytes = std::fs::read(&meta_path).map_err(|e| io(&meta_path, &e))?;
    let value = unpickle(
        &meta_path,
        &meta_bytes,
        DCP_METADATA_GLOBALS,
        &PickleLimits::STANDARD,
    )?;
    let meta = Schema { file: &meta_path }.metadata(&value)?;
    let mut files = DataFiles::new(dir, &meta_path);
    let mut tensors = Vec::with_capacity(meta.tensors.len());
    for t in &meta.tensors {
        tensors.push(files.locate(t, &meta.storage)?);
    }
    let format = files.format()?;
    // Ranks are known once every file is: without `__R_K` names they are
    // the files' order.
    let rank_of = files.ranks();
    for c in tensors.iter_mut().flat_map(|t| &mut t.chunks) {
        c.rank = rank_of.get(&c.file).copied().unwrap_or(0);
    }
    let ranks = tensors
        .iter()
        .flat_map(|t| &t.chunks)
        .map(|c| c.rank + 1)
        .max()
        .unwrap_or(0);
    Ok(DcpIndex {
        checkpoint: ChunkedCheckpoint {
            format,
            root: dir.to_path_buf(),
            ranks,
            tensors,
        },
        skipped: meta.skipped,
    })
}

fn io(file: &Path, e: &std::io::Error) -> DcpError {
    DcpError::Io {
        file: file.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests;

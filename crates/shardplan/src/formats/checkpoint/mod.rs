//! Checkpoint files: MindSpore `.ckpt` (protobuf `Checkpoint`) and
//! safetensors. Reading builds an index of tensors (name, dtype, shape, byte
//! range) without loading data; tensors are then read by byte range.
//! Writing streams one tensor at a time.
//!
//! The readers and writers live with their families (`mindspore/ckpt.rs`,
//! `safetensors/`), the types they share in `tensor_index/`; this module
//! tells the formats apart by extension and is their public face.

use std::path::Path;

pub use super::io::checksum::Checksum;
pub use super::tensor_index::{
    CheckpointError, CheckpointFault, CheckpointFormat, CheckpointIndex, TensorEntry,
};
use super::tensor_index::{bad, open_map};
use super::{mindspore, safetensors};

mod writer;

pub use writer::{CheckpointWriter, Frame};

/// Reads the index of a checkpoint file (format by extension).
///
/// The file is memory-mapped and only its headers are touched; tensor
/// data is not read.
///
/// # Errors
///
/// [`CheckpointError`] for an unreadable file, an unknown extension, a
/// truncated file, wrong magic or header, a header that lies about sizes
/// (data past the end, overlapping tensors, a byte count that does not
/// match dtype and shape), an unknown dtype, or a name listed twice.
pub fn read_index(path: &Path) -> Result<CheckpointIndex, CheckpointError> {
    let format =
        CheckpointFormat::of_path(path).ok_or_else(|| bad(path, CheckpointFault::Extension))?;
    let map = open_map(path)?;
    parse_index(path, &map, format)
}

/// The index of checkpoint bytes already in memory (`path` only names them
/// in errors). [`read_index`] calls this on a memory map.
///
/// # Errors
///
/// As [`read_index`], for the content checks.
pub fn parse_index(
    path: &Path,
    bytes: &[u8],
    format: CheckpointFormat,
) -> Result<CheckpointIndex, CheckpointError> {
    if bytes.is_empty() {
        return Err(bad(path, CheckpointFault::Empty));
    }
    let tensors = match format {
        CheckpointFormat::Ckpt => mindspore::ckpt::index_ckpt(path, bytes)?,
        CheckpointFormat::Safetensors => safetensors::index_safetensors(path, bytes)?,
    };
    Ok(CheckpointIndex {
        path: path.to_path_buf(),
        format,
        tensors,
    })
}

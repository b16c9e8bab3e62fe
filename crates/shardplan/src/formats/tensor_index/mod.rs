//! What every single-file checkpoint reader shares: the index of one file
//! (its format, its tensors by name with their byte ranges), its errors,
//! the check that a tensor's bytes fit its dtype and shape, and the memory
//! map the readers parse. The families' readers (`mindspore/ckpt.rs`,
//! `safetensors/`) build on this; [`crate::formats::checkpoint`] is their
//! public face.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::DType;

mod error;

pub use error::{CheckpointError, CheckpointFault};
pub(crate) use error::{MAX_ST_HEADER, bad};

/// Checkpoint file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointFormat {
    /// MindSpore protobuf `.ckpt`.
    Ckpt,
    /// safetensors.
    Safetensors,
}

impl CheckpointFormat {
    /// File extension.
    pub fn extension(self) -> &'static str {
        match self {
            CheckpointFormat::Ckpt => "ckpt",
            CheckpointFormat::Safetensors => "safetensors",
        }
    }

    /// The format of `path`, by extension.
    pub fn of_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "ckpt" => Some(CheckpointFormat::Ckpt),
            "safetensors" => Some(CheckpointFormat::Safetensors),
            _ => None,
        }
    }
}

/// One tensor of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape of the stored slice.
    pub shape: Vec<u64>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte length of the data.
    pub len: u64,
}

/// The tensors of one checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointIndex {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: CheckpointFormat,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorEntry>,
}

/// Opens a non-empty file and maps it.
pub(crate) fn open_map(path: &Path) -> Result<memmap2::Mmap, CheckpointError> {
    let file = File::open(path).map_err(|e| bad(path, CheckpointFault::Open(e)))?;
    let len = file
        .metadata()
        .map_err(|e| bad(path, CheckpointFault::Stat(e)))?
        .len();
    if len == 0 {
        return Err(bad(path, CheckpointFault::Empty));
    }
    map_file(path, &file)
}

#[allow(unsafe_code)] // IO: see the SAFETY comment inside
fn map_file(path: &Path, file: &File) -> Result<memmap2::Mmap, CheckpointError> {
    // SAFETY: the map is read-only and private to the caller; a concurrent
    // truncation of the file by another process could fault, which is the
    // documented hazard of memory-mapping and the reason sources must not
    // be modified while a reshard runs.
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| bad(path, CheckpointFault::Map(e)))
}

/// Checks that `len` bytes hold a `dtype` tensor of `shape`.
pub(crate) fn entry(
    path: &Path,
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    offset: u64,
    len: u64,
) -> Result<TensorEntry, CheckpointError> {
    let want = crate::element_count(&shape)
        .ok()
        .and_then(|n| n.checked_mul(dtype.size_bytes()));
    if want != Some(len) {
        return Err(bad(
            path,
            CheckpointFault::ByteCount {
                tensor: name,
                shape,
                dtype,
                needs: want,
                holds: len,
            },
        ));
    }
    Ok(TensorEntry {
        name,
        dtype,
        shape,
        offset,
        len,
    })
}

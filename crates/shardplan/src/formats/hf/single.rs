//! One safetensors file as a checkpoint of whole tensors.

use super::*;

/// Reads one safetensors file of whole tensors: each tensor one chunk,
/// rank 0, offsets zero.
///
/// # Errors
///
/// [`HfError::Safetensors`] for a file that cannot be read;
/// [`HfError::ShardedFile`] for one whose header holds `DCP_SHARDING_INFO`
/// (its tensors are chunks of larger ones).
pub fn read_safetensors_file(path: &Path) -> Result<ChunkedCheckpoint, HfError> {
    let index = read_whole_file(path)?;
    Ok(whole_checkpoint(SourceFormat::Safetensors, path, &[index]))
}

/// The index of a safetensors file whose tensors must be whole.
pub(super) fn read_whole_file(path: &Path) -> Result<CheckpointIndex, HfError> {
    let (index, metadata) = read_safetensors(path)?;
    if metadata.contains_key(SHARDING_INFO_KEY) {
        return Err(HfError::ShardedFile {
            path: path.to_path_buf(),
        });
    }
    Ok(index)
}

/// A checkpoint of whole tensors, one chunk each, from files whose tensor
/// names are disjoint (checked by the callers).
pub(super) fn whole_checkpoint(
    format: SourceFormat,
    root: &Path,
    files: &[CheckpointIndex],
) -> ChunkedCheckpoint {
    let mut tensors: Vec<StoredTensor> = files
        .iter()
        .flat_map(|f| f.tensors.values().map(move |e| (f, e)))
        .map(|(f, e)| StoredTensor {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            chunks: vec![StoredChunk {
                rank: 0,
                offsets: vec![0; e.shape.len()],
                sizes: e.shape.clone(),
                file: f.path.clone(),
                byte_offset: e.offset,
                byte_len: e.len,
            }],
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    ChunkedCheckpoint {
        format,
        root: root.to_path_buf(),
        ranks: 1,
        tensors,
    }
}

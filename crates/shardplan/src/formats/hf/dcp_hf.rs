//! The folders PyTorch DCP's `HuggingFaceStorageWriter` writes:
//! `shard-*.safetensors` whose headers record each chunk's offsets.

use super::*;

/// One entry of `DCP_SHARDING_INFO`; other fields are ignored.
#[derive(Deserialize)]
pub(super) struct RawChunkInfo {
    saved_offsets: Vec<u64>,
}

/// Parses a `DCP_SHARDING_INFO` string: tensor name to the chunk's
/// `saved_offsets` (`path` names the file in errors).
///
/// # Errors
///
/// [`HfError::ShardingInfoTooLarge`] beyond [`MAX_SHARDING_INFO_BYTES`];
/// [`HfError::ShardingInfoJson`] for text that is not a JSON object whose
/// values are objects with a `saved_offsets` array of non-negative
/// integers.
pub fn parse_sharding_info(path: &Path, text: &str) -> Result<BTreeMap<String, Vec<u64>>, HfError> {
    if text.len() > MAX_SHARDING_INFO_BYTES {
        return Err(HfError::ShardingInfoTooLarge {
            path: path.to_path_buf(),
            len: text.len(),
            budget: MAX_SHARDING_INFO_BYTES,
        });
    }
    let raw: BTreeMap<String, RawChunkInfo> =
        serde_json::from_str(text).map_err(|e| HfError::ShardingInfoJson {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(raw.into_iter().map(|(k, v)| (k, v.saved_offsets)).collect())
}

/// The sharding info of a DCP Hugging Face shard (empty when the header has
/// none: every tensor of the file is then whole).
pub(super) fn sharding_info(
    path: &Path,
    metadata: &StMetadata,
) -> Result<BTreeMap<String, Vec<u64>>, HfError> {
    match metadata.get(SHARDING_INFO_KEY) {
        None => Ok(BTreeMap::new()),
        Some(serde_json::Value::String(text)) => parse_sharding_info(path, text),
        Some(_) => Err(HfError::ShardingInfoJson {
            path: path.to_path_buf(),
            message: "the value is not a string".into(),
        }),
    }
}

/// The `shard-*.safetensors` files of `dir`, sorted by name, each with the
/// rank that wrote it.
pub(super) fn dcp_shard_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, HfError> {
    let entries = std::fs::read_dir(dir).map_err(|e| HfError::io(dir, &e))?;
    let mut files = Vec::new();
    for e in entries {
        let e = e.map_err(|e| HfError::io(dir, &e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("shard-") && name.ends_with(".safetensors") && e.path().is_file() {
            files.push((name, e.path()));
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(HfError::NoShards {
            dir: dir.to_path_buf(),
        });
    }
    let parsed: Option<Vec<u64>> = files.iter().map(|(n, _)| rank_of_shard_name(n)).collect();
    Ok(match parsed {
        Some(ranks) => ranks
            .into_iter()
            .zip(files)
            .map(|(r, (_, p))| (r, p))
            .collect(),
        // Names that do not follow the writer's pattern: ranks in name order.
        None => (0u64..).zip(files).map(|(r, (_, p))| (r, p)).collect(),
    })
}

/// The rank of `shard-<R>-...`: the writer numbers ranks from 1.
pub(super) fn rank_of_shard_name(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("shard-")?;
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_sub(1)
}

/// A tensor's chunks as they are gathered from the shards.
pub(super) struct Gathered {
    dtype: DType,
    dims: usize,
    ends: Vec<u64>,
    chunks: Vec<StoredChunk>,
}

/// Reads a folder PyTorch DCP's `HuggingFaceStorageWriter` wrote: every
/// `shard-<R>-model-<i>-of-<n>.safetensors` is written by rank `R - 1` (by
/// name order when the names do not follow that pattern); each tensor entry
/// is one chunk at the `saved_offsets` its header's `DCP_SHARDING_INFO`
/// gives (zero when the entry has none: the tensor is whole). A tensor's
/// shape is not recorded: it is, per dimension, the largest offset + size
/// over its chunks. Replicated tensors appear once.
///
/// # Errors
///
/// [`HfError::NoShards`] without shard files; the errors of
/// [`parse_sharding_info`]; [`HfError::ShardingInfoTensor`] when the info
/// names a tensor the file lacks; [`HfError::OffsetsArity`],
/// [`HfError::ChunkDims`], [`HfError::DtypeMismatch`] between chunks;
/// [`HfError::Overflow`] when an offset plus a size, or the shape, overflows;
/// [`HfError::Safetensors`] for a shard that cannot be read; [`HfError::Io`].
pub fn read_dcp_hf_folder(dir: &Path) -> Result<ChunkedCheckpoint, HfError> {
    let files = dcp_shard_files(dir)?;
    let ranks = files.iter().map(|(r, _)| r + 1).max().unwrap_or(1);
    let mut gathered: BTreeMap<String, Gathered> = BTreeMap::new();
    for (rank, path) in &files {
        let (index, metadata) = read_safetensors(path)?;
        let info = sharding_info(path, &metadata)?;
        if let Some(name) = info.keys().find(|n| !index.tensors.contains_key(*n)) {
            return Err(HfError::ShardingInfoTensor {
                path: path.clone(),
                tensor: name.clone(),
            });
        }
        for entry in index.tensors.values() {
            let chunk = chunk_of(*rank, path, entry, info.get(&entry.name))?;
            add_chunk(&mut gathered, path, entry, chunk)?;
        }
    }
    let tensors = gathered
        .into_iter()
        .map(|(name, g)| finish_tensor(name, g))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ChunkedCheckpoint {
        format: SourceFormat::DcpHuggingFace,
        root: dir.to_path_buf(),
        ranks,
        tensors,
    })
}

/// The chunk a safetensors entry stores, at `offsets` (zero when absent).
pub(super) fn chunk_of(
    rank: u64,
    path: &Path,
    entry: &crate::formats::tensor_index::TensorEntry,
    offsets: Option<&Vec<u64>>,
) -> Result<StoredChunk, HfError> {
    let offsets = offsets
        .cloned()
        .unwrap_or_else(|| vec![0; entry.shape.len()]);
    if offsets.len() != entry.shape.len() {
        return Err(HfError::OffsetsArity {
            path: path.to_path_buf(),
            tensor: entry.name.clone(),
            offsets: offsets.len(),
            dims: entry.shape.len(),
        });
    }
    Ok(StoredChunk {
        rank,
        offsets,
        sizes: entry.shape.clone(),
        file: path.to_path_buf(),
        byte_offset: entry.offset,
        byte_len: entry.len,
    })
}

/// Adds a chunk to its tensor, checking it agrees with the chunks before.
pub(super) fn add_chunk(
    gathered: &mut BTreeMap<String, Gathered>,
    path: &Path,
    entry: &crate::formats::tensor_index::TensorEntry,
    chunk: StoredChunk,
) -> Result<(), HfError> {
    let ends = chunk
        .offsets
        .iter()
        .zip(&chunk.sizes)
        .map(|(o, s)| o.checked_add(*s))
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| HfError::Overflow {
            tensor: entry.name.clone(),
            what: format!("saved offset + size in {}", path.display()),
        })?;
    let Some(g) = gathered.get_mut(&entry.name) else {
        gathered.insert(
            entry.name.clone(),
            Gathered {
                dtype: entry.dtype,
                dims: ends.len(),
                ends,
                chunks: vec![chunk],
            },
        );
        return Ok(());
    };
    if g.dtype != entry.dtype {
        return Err(HfError::DtypeMismatch {
            path: path.to_path_buf(),
            tensor: entry.name.clone(),
            first: g.dtype,
            other: entry.dtype,
        });
    }
    if g.dims != ends.len() {
        return Err(HfError::ChunkDims {
            path: path.to_path_buf(),
            tensor: entry.name.clone(),
            first: g.dims,
            other: ends.len(),
        });
    }
    for (have, e) in g.ends.iter_mut().zip(ends) {
        *have = (*have).max(e);
    }
    g.chunks.push(chunk);
    Ok(())
}

/// A gathered tensor, its shape the chunks' extent, checked to be countable.
pub(super) fn finish_tensor(name: String, g: Gathered) -> Result<StoredTensor, HfError> {
    let fits = crate::element_count(&g.ends)
        .ok()
        .and_then(|n| n.checked_mul(g.dtype.size_bytes()))
        .is_some();
    if !fits {
        return Err(HfError::Overflow {
            what: format!("shape {:?}", g.ends),
            tensor: name,
        });
    }
    Ok(StoredTensor {
        name,
        dtype: g.dtype,
        shape: g.ends,
        chunks: g.chunks,
    })
}

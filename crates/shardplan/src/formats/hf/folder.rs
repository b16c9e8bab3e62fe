//! A Hugging Face model folder: its index and shards, or a lone
//! `model.safetensors`.

use super::*;

/// Reads a Hugging Face model folder: `model.safetensors.index.json` and
/// the shards it names, or, without an index, a lone `model.safetensors`
/// (what `huggingface_hub` writes when everything fits one shard). Every
/// tensor is whole: one chunk, rank 0, offsets zero.
///
/// # Errors
///
/// [`HfError::NotAModelFolder`] without either file; the errors of
/// [`parse_index_json`]; [`HfError::MissingShard`],
/// [`HfError::TensorNotInShard`], [`HfError::DuplicateTensor`] (a tensor in
/// a second shard), [`HfError::UnlistedTensor`], [`HfError::ShardedFile`]
/// (a shard holding DCP chunks), [`HfError::TotalSize`] when
/// `metadata.total_size` is present and wrong; [`HfError::Safetensors`] for
/// a shard that cannot be read; [`HfError::Io`].
pub fn read_hf_folder(dir: &Path) -> Result<ChunkedCheckpoint, HfError> {
    let index_path = dir.join(INDEX_NAME);
    if !index_path.is_file() {
        let single = dir.join(SINGLE_NAME);
        if !single.is_file() {
            return Err(HfError::NotAModelFolder {
                dir: dir.to_path_buf(),
            });
        }
        let index = read_whole_file(&single)?;
        return Ok(whole_checkpoint(SourceFormat::HuggingFace, dir, &[index]));
    }
    let bytes = read_budgeted(&index_path, MAX_INDEX_BYTES)?;
    let index = parse_index_json(&index_path, &bytes)?;
    let shards = read_mapped_shards(dir, &index)?;
    if let Some(declared) = index.total_size {
        let actual = shards
            .iter()
            .flat_map(|s| s.tensors.values())
            .try_fold(0u64, |sum, t| sum.checked_add(t.len))
            .ok_or_else(|| HfError::Overflow {
                tensor: String::new(),
                what: format!("the sum of tensor bytes in {}", dir.display()),
            })?;
        if declared != actual {
            return Err(HfError::TotalSize {
                path: index_path,
                declared,
                actual,
            });
        }
    }
    Ok(whole_checkpoint(SourceFormat::HuggingFace, dir, &shards))
}

/// Reads each shard the index names, once, and checks that the shards
/// hold exactly the tensors mapped to them.
pub(super) fn read_mapped_shards(
    dir: &Path,
    index: &HfIndex,
) -> Result<Vec<CheckpointIndex>, HfError> {
    let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, file) in &index.weight_map {
        by_file.entry(file).or_default().push(tensor);
    }
    let mut shards = Vec::with_capacity(by_file.len());
    for (file, tensors) in by_file {
        let path = dir.join(file);
        if !path.is_file() {
            return Err(HfError::MissingShard {
                path,
                tensor: tensors.first().map(|t| t.to_string()).unwrap_or_default(),
            });
        }
        let shard = read_whole_file(&path)?;
        if let Some(t) = tensors.iter().find(|t| !shard.tensors.contains_key(**t)) {
            return Err(HfError::TensorNotInShard {
                path,
                tensor: t.to_string(),
            });
        }
        for name in shard.tensors.keys() {
            match index.weight_map.get(name) {
                Some(mapped) if mapped == file => {}
                Some(mapped) => {
                    return Err(HfError::DuplicateTensor {
                        tensor: name.clone(),
                        first: mapped.clone(),
                        second: file.to_string(),
                    });
                }
                None => {
                    return Err(HfError::UnlistedTensor {
                        path,
                        tensor: name.clone(),
                    });
                }
            }
        }
        shards.push(shard);
    }
    Ok(shards)
}

/// Reads at most `budget` bytes of `path`, refusing a longer file.
pub(super) fn read_budgeted(path: &Path, budget: u64) -> Result<Vec<u8>, HfError> {
    let file = std::fs::File::open(path).map_err(|e| HfError::io(path, &e))?;
    let mut bytes = Vec::new();
    // One byte past the budget tells a file at the budget from a longer one
    // without trusting the length the file system reports.
    file.take(budget.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| HfError::io(path, &e))?;
    if bytes.len() as u64 > budget {
        let len = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(HfError::IndexTooLarge {
            path: path.to_path_buf(),
            len,
            budget,
        });
    }
    Ok(bytes)
}

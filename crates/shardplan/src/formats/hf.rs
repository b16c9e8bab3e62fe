//! Hugging Face checkpoints: model folders (`model.safetensors.index.json`
//! and its shards, or a lone `model.safetensors`), single safetensors files,
//! and the folders PyTorch DCP's `HuggingFaceStorageWriter` writes
//! (`shard-*.safetensors` whose headers carry `DCP_SHARDING_INFO`). Each
//! reader builds a [`ChunkedCheckpoint`] from the safetensors headers only;
//! tensor data is read later, by byte range.
//!
//! Also here: [`detect`], which tells every source format apart, and
//! [`HfLayout`], the plan of a Hugging Face model folder to write (shard
//! assignment, file names, header bytes, index), with
//! [`write_hf_folder`] writing a whole folder from bytes in memory.
//!
//! # Example
//!
//! ```
//! use shardplan::formats::hf::{HfLayout, parse_shard_size};
//! use shardplan::{DType, TensorInfo};
//!
//! let t = |name: &str, rows| TensorInfo { name: name.into(), shape: vec![rows, 1000], dtype: DType::BF16 };
//! let max = parse_shard_size("24KB").unwrap();
//! assert_eq!(max, 24_000);
//! let layout = HfLayout::new(&[t("a", 6), t("b", 6), t("c", 6)], max).unwrap();
//! let names: Vec<_> = layout.shards().iter().map(|s| s.file_name()).collect();
//! assert_eq!(names, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
//! assert!(layout.index_json().contains("\"total_size\": 36000"));
//! assert!(parse_shard_size("24 parsecs").is_err());
//! ```

mod detect;
mod write;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::checkpoint::{CheckpointError, CheckpointIndex, StMetadata, read_safetensors};
use super::chunked::{ChunkedCheckpoint, SourceFormat, StoredChunk, StoredTensor};
use crate::DType;

pub use detect::detect;
pub use write::{HfLayout, HfShard, ShardTensor, parse_shard_size, write_hf_folder};

/// The index file of a sharded Hugging Face model folder.
pub const INDEX_NAME: &str = "model.safetensors.index.json";

/// The weights file of an unsharded Hugging Face model folder.
pub const SINGLE_NAME: &str = "model.safetensors";

/// The `__metadata__` key where DCP's Hugging Face writer records each
/// tensor's chunk offsets.
pub const SHARDING_INFO_KEY: &str = "DCP_SHARDING_INFO";

/// The largest index file read. The largest published indexes (mixtures of
/// experts with ~100k tensors) are about 10 MB; the budget leaves room while
/// keeping a hostile file from making the JSON parser allocate without
/// bound.
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// The largest `DCP_SHARDING_INFO` string parsed, for the same reason.
pub const MAX_SHARDING_INFO_BYTES: usize = 64 << 20;

/// A Hugging Face or DCP Hugging Face checkpoint that cannot be read, a
/// folder whose format cannot be told, or a model folder that cannot be
/// planned or written.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum HfError {
    /// A file or folder could not be opened, listed, read or written.
    #[error("{path}: {message}")]
    #[diagnostic(
        code(shardplan::formats::hf::io),
        help("check the path and its permissions")
    )]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's message.
        message: String,
    },

    /// A safetensors file whose header cannot be read (its own code says
    /// why).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Safetensors(#[from] CheckpointError),

    /// The index file is larger than [`MAX_INDEX_BYTES`].
    #[error("{path}: {len} bytes, more than the {budget} an index may have")]
    #[diagnostic(
        code(shardplan::formats::hf::index_too_large),
        help("an index maps tensor names to file names; this file is not one, or is corrupt")
    )]
    IndexTooLarge {
        /// The index file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The budget.
        budget: u64,
    },

    /// The index is not JSON of the expected shape.
    #[error("{path}: not a model.safetensors.index.json: {message}")]
    #[diagnostic(
        code(shardplan::formats::hf::index_json),
        help(
            "the index is a JSON object with `weight_map` (tensor name to shard file name) and optionally `metadata.total_size`"
        )
    )]
    IndexJson {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A `weight_map` value that is not a plain file name in the folder.
    #[error("tensor `{tensor}` is mapped to `{file}`, {reason}")]
    #[diagnostic(
        code(shardplan::formats::hf::bad_shard_name),
        help(
            "weight_map values are file names inside the model folder, e.g. model-00001-of-00002.safetensors; paths are refused so an index cannot point outside its folder"
        )
    )]
    BadShardName {
        /// The tensor.
        tensor: String,
        /// The value of its entry.
        file: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A shard the index names does not exist.
    #[error("{path}: missing, but the index maps `{tensor}` to it")]
    #[diagnostic(
        code(shardplan::formats::hf::missing_shard),
        help(
            "copy every shard the index names into the folder (an interrupted download leaves some out)"
        )
    )]
    MissingShard {
        /// The shard's path.
        path: PathBuf,
        /// A tensor mapped to it.
        tensor: String,
    },

    /// A shard lacks a tensor the index maps to it.
    #[error("{path}: has no tensor `{tensor}`, but the index maps it here")]
    #[diagnostic(
        code(shardplan::formats::hf::tensor_not_in_shard),
        help("the index and the shards come from different saves; download the model again")
    )]
    TensorNotInShard {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },

    /// One tensor stored in two shards, or listed twice in the index.
    #[error("tensor `{tensor}` is in both {first} and {second}")]
    #[diagnostic(
        code(shardplan::formats::hf::duplicate_tensor),
        help("a tensor must be stored once; the folder mixes files of different saves")
    )]
    DuplicateTensor {
        /// The tensor.
        tensor: String,
        /// Where the index maps it.
        first: String,
        /// The other place.
        second: String,
    },

    /// A shard holds a tensor the index does not list.
    #[error("{path}: holds tensor `{tensor}`, which the index does not list")]
    #[diagnostic(
        code(shardplan::formats::hf::unlisted_tensor),
        help(
            "loaders ignore tensors the index does not list; add it to the weight_map, or remove it from the shard"
        )
    )]
    UnlistedTensor {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },

    /// `metadata.total_size` is not the sum of the tensors' bytes.
    #[error("{path}: metadata.total_size is {declared} but the tensors hold {actual} bytes")]
    #[diagnostic(
        code(shardplan::formats::hf::total_size),
        help("the index and the shards come from different saves; download the model again")
    )]
    TotalSize {
        /// The index file.
        path: PathBuf,
        /// What the index says.
        declared: u64,
        /// The sum over the shards.
        actual: u64,
    },

    /// A folder with neither an index nor `model.safetensors`.
    #[error("{dir}: has neither {INDEX_NAME} nor {SINGLE_NAME}")]
    #[diagnostic(
        code(shardplan::formats::hf::not_a_model_folder),
        help("pass the folder that holds the model's safetensors files")
    )]
    NotAModelFolder {
        /// The folder.
        dir: PathBuf,
    },

    /// A DCP Hugging Face folder without `shard-*.safetensors` files.
    #[error("{dir}: holds no shard-*.safetensors file")]
    #[diagnostic(
        code(shardplan::formats::hf::no_shards),
        help("pass the folder HuggingFaceStorageWriter wrote (its `path`)")
    )]
    NoShards {
        /// The folder.
        dir: PathBuf,
    },

    /// `DCP_SHARDING_INFO` is larger than [`MAX_SHARDING_INFO_BYTES`].
    #[error("{path}: DCP_SHARDING_INFO has {len} bytes, more than the {budget} allowed")]
    #[diagnostic(
        code(shardplan::formats::hf::sharding_info_too_large),
        help("the header is corrupt; rewrite the checkpoint")
    )]
    ShardingInfoTooLarge {
        /// The shard.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The budget.
        budget: usize,
    },

    /// `DCP_SHARDING_INFO` is not a JSON object of
    /// `{"saved_offsets": [...]}` objects.
    #[error("{path}: DCP_SHARDING_INFO is not valid: {message}")]
    #[diagnostic(
        code(shardplan::formats::hf::sharding_info_json),
        help(
            "DCP_SHARDING_INFO is a JSON string mapping each tensor to {{\"saved_offsets\": [...]}}; the header is corrupt"
        )
    )]
    ShardingInfoJson {
        /// The shard.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// `DCP_SHARDING_INFO` names a tensor its file does not hold.
    #[error("{path}: DCP_SHARDING_INFO names `{tensor}`, which the file does not hold")]
    #[diagnostic(
        code(shardplan::formats::hf::sharding_info_tensor),
        help("the header is corrupt; rewrite the checkpoint")
    )]
    ShardingInfoTensor {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },

    /// A chunk's offsets do not have one entry per dimension of its shape.
    #[error("{path}: tensor `{tensor}` has {offsets} saved offsets for {dims} dimensions")]
    #[diagnostic(
        code(shardplan::formats::hf::offsets_arity),
        help("saved_offsets has one entry per dimension; the header is corrupt")
    )]
    OffsetsArity {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Offsets given.
        offsets: usize,
        /// Dimensions of the chunk.
        dims: usize,
    },

    /// Chunks of one tensor with different numbers of dimensions.
    #[error("{path}: a chunk of `{tensor}` has {other} dimensions, another has {first}")]
    #[diagnostic(
        code(shardplan::formats::hf::chunk_dims),
        help("the shards come from different saves; rewrite the checkpoint")
    )]
    ChunkDims {
        /// The shard of the second chunk.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Dimensions of the first chunk.
        first: usize,
        /// Dimensions of this one.
        other: usize,
    },

    /// Chunks of one tensor with different dtypes.
    #[error("{path}: a chunk of `{tensor}` is {other}, another is {first}")]
    #[diagnostic(
        code(shardplan::formats::hf::dtype_mismatch),
        help("the shards come from different saves; rewrite the checkpoint")
    )]
    DtypeMismatch {
        /// The shard of the second chunk.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The first chunk's dtype.
        first: DType,
        /// This chunk's dtype.
        other: DType,
    },

    /// Sizes that overflow 64 bits or the element limit.
    #[error("tensor `{tensor}`: {what} overflows")]
    #[diagnostic(
        code(shardplan::formats::hf::overflow),
        help("the offsets or shapes are corrupt")
    )]
    Overflow {
        /// The tensor.
        tensor: String,
        /// What overflows, and where.
        what: String,
    },

    /// A safetensors file read as whole tensors holds chunks.
    #[error("{path}: holds chunks (DCP_SHARDING_INFO), not whole tensors")]
    #[diagnostic(
        code(shardplan::formats::hf::sharded_file),
        help("read the folder it is in as a DCP Hugging Face checkpoint")
    )]
    ShardedFile {
        /// The file.
        path: PathBuf,
    },

    /// Nothing at the path looks like a checkpoint shardplan reads.
    #[error("{path}: not a checkpoint shardplan can read; looked for {looked_for}")]
    #[diagnostic(
        code(shardplan::formats::hf::unknown_format),
        help(
            "pass a DCP folder (.metadata), a Hugging Face model folder (model.safetensors.index.json or model.safetensors), a HuggingFaceStorageWriter folder (shard-*.safetensors), a MindSpore folder (rank_<r>/), or a .safetensors file"
        )
    )]
    UnknownFormat {
        /// The path.
        path: PathBuf,
        /// What was looked for, and what was found.
        looked_for: String,
    },

    /// A `--max-shard-size` that is not a size.
    #[error("`{text}` is not a shard size: {reason}")]
    #[diagnostic(
        code(shardplan::formats::hf::shard_size),
        help(
            "give bytes, or a number with KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 5GB"
        )
    )]
    ShardSize {
        /// The text given.
        text: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A layout of no tensors.
    #[error("a model folder needs at least one tensor")]
    #[diagnostic(
        code(shardplan::formats::hf::no_tensors),
        help("pass the tensors to write")
    )]
    NoTensors,

    /// A name given twice, or one safetensors reserves, to the writer.
    #[error("tensor name `{name}` {reason}")]
    #[diagnostic(
        code(shardplan::formats::hf::bad_tensor_name),
        help("tensor names are unique, and `__metadata__` is the safetensors header's own key")
    )]
    BadTensorName {
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// Bytes given for a tensor that do not match its dtype and shape.
    #[error("tensor `{tensor}`: {actual} bytes given, its dtype and shape need {expected}")]
    #[diagnostic(
        code(shardplan::formats::hf::data_length),
        help("give each tensor's bytes whole, row-major")
    )]
    DataLength {
        /// The tensor.
        tensor: String,
        /// Bytes its dtype and shape need.
        expected: u64,
        /// Bytes given (`u64::MAX` when none were).
        actual: u64,
    },

    /// The target folder already holds a Hugging Face save.
    #[error("{path}: exists; writing here would mix two saves")]
    #[diagnostic(
        code(shardplan::formats::hf::stale_files),
        help("write into an empty folder, or remove the earlier save first")
    )]
    StaleFiles {
        /// The file found.
        path: PathBuf,
    },
}

impl HfError {
    fn io(path: &Path, e: &std::io::Error) -> Self {
        HfError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    fn index_json(path: &Path, message: impl Into<String>) -> Self {
        HfError::IndexJson {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// A parsed `model.safetensors.index.json`: names are checked, files are
/// not looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfIndex {
    /// `metadata.total_size`, when present.
    pub total_size: Option<u64>,
    /// Tensor name to shard file name, sorted by name.
    pub weight_map: BTreeMap<String, String>,
}

impl HfIndex {
    /// The index as Hugging Face tools write it: two-space indents,
    /// `metadata` then `weight_map` sorted by name, a final newline
    /// (`transformers` writes `json.dumps(index, indent=2, sort_keys=True)`).
    pub fn to_json(&self) -> String {
        let mut metadata = serde_json::Map::new();
        if let Some(n) = self.total_size {
            metadata.insert("total_size".into(), n.into());
        }
        let doc = serde_json::json!({ "metadata": metadata, "weight_map": self.weight_map });
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// The index file's shape, as deserialized before checks.
#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    weight_map: Pairs,
}

/// A JSON object kept as its pairs, so a key given twice is seen (a map
/// type would keep the last silently).
struct Pairs(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = m.next_entry()? {
                    out.push(pair);
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Parses index bytes (`path` names them in errors) and checks every
/// `weight_map` value is a plain shard file name.
///
/// # Errors
///
/// [`HfError::IndexTooLarge`] beyond [`MAX_INDEX_BYTES`];
/// [`HfError::IndexJson`] for bytes that are not an object with a
/// `weight_map` object of strings, or a `metadata.total_size` that is not a
/// non-negative integer; [`HfError::DuplicateTensor`] for a name listed
/// twice; [`HfError::BadShardName`] for a value that is not a plain
/// `.safetensors` file name.
pub fn parse_index_json(path: &Path, bytes: &[u8]) -> Result<HfIndex, HfError> {
    let len = bytes.len() as u64;
    if len > MAX_INDEX_BYTES {
        return Err(HfError::IndexTooLarge {
            path: path.to_path_buf(),
            len,
            budget: MAX_INDEX_BYTES,
        });
    }
    let raw: RawIndex =
        serde_json::from_slice(bytes).map_err(|e| HfError::index_json(path, e.to_string()))?;
    let total_size = match raw.metadata.as_ref().and_then(|m| m.get("total_size")) {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(total_size_value(v).ok_or_else(|| {
            HfError::index_json(
                path,
                format!("metadata.total_size is {v}, not a byte count"),
            )
        })?),
    };
    let mut weight_map = BTreeMap::new();
    for (tensor, file) in raw.weight_map.0 {
        let serde_json::Value::String(file) = file else {
            return Err(HfError::index_json(
                path,
                format!("weight_map entry `{tensor}` is not a file name"),
            ));
        };
        check_shard_name(&tensor, &file)?;
        if let Some(first) = weight_map.get(&tensor) {
            return Err(HfError::DuplicateTensor {
                second: format!("{file} (listed twice in the index)"),
                first: String::clone(first),
                tensor,
            });
        }
        weight_map.insert(tensor, file);
    }
    Ok(HfIndex {
        total_size,
        weight_map,
    })
}

/// A byte count: an integer, or a float with an integral value (some
/// writers emit `1234.0`).
fn total_size_value(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    // 2^64 as f64; every integral f64 below it converts exactly.
    let in_range = (0.0..18_446_744_073_709_551_616.0).contains(&f);
    (in_range && f.fract() == 0.0).then_some(f as u64)
}

/// Checks `file` is a plain `.safetensors` file name: no path, so an index
/// cannot make the reader open anything outside its folder.
fn check_shard_name(tensor: &str, file: &str) -> Result<(), HfError> {
    let reason = if file.is_empty() {
        Some("an empty name")
    } else if file == "." || file == ".." {
        Some("a parent or current folder")
    } else if file.contains(['/', '\\']) {
        Some("a path (file names only)")
    } else if file.contains([':', '\0']) {
        Some("a name with `:` or NUL")
    } else if !file.ends_with(".safetensors") {
        Some("not a .safetensors file")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(HfError::BadShardName {
            tensor: tensor.to_string(),
            file: file.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

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
fn read_mapped_shards(dir: &Path, index: &HfIndex) -> Result<Vec<CheckpointIndex>, HfError> {
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
fn read_whole_file(path: &Path) -> Result<CheckpointIndex, HfError> {
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
fn whole_checkpoint(
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

/// Reads at most `budget` bytes of `path`, refusing a longer file.
fn read_budgeted(path: &Path, budget: u64) -> Result<Vec<u8>, HfError> {
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

/// One entry of `DCP_SHARDING_INFO`; other fields are ignored.
#[derive(Deserialize)]
struct RawChunkInfo {
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
fn sharding_info(
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
fn dcp_shard_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, HfError> {
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
fn rank_of_shard_name(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("shard-")?;
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_sub(1)
}

/// A tensor's chunks as they are gathered from the shards.
struct Gathered {
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
fn chunk_of(
    rank: u64,
    path: &Path,
    entry: &super::checkpoint::TensorEntry,
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
fn add_chunk(
    gathered: &mut BTreeMap<String, Gathered>,
    path: &Path,
    entry: &super::checkpoint::TensorEntry,
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
fn finish_tensor(name: String, g: Gathered) -> Result<StoredTensor, HfError> {
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

#[cfg(test)]
mod tests;

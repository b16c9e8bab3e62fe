//! Hugging Face checkpoints: model folders (`model.safetensors.index.json`
//! and its shards, or a lone `model.safetensors`), single safetensors files,
//! and the folders PyTorch DCP's `HuggingFaceStorageWriter` writes
//! (`shard-*.safetensors` whose headers carry `DCP_SHARDING_INFO`). Each
//! reader builds a [`ChunkedCheckpoint`] from the safetensors headers only;
//! tensor data is read later, by byte range.
//!
//! Also here: [`HfLayout`], the plan of a Hugging Face model folder to write (shard
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
//!
//! One file per reader: `folder.rs` (a model folder: `index.rs`, its
//! index JSON), `single.rs` (one safetensors file), `dcp_hf.rs` (DCP's
//! Hugging Face writer); `error.rs` their error, `write.rs` the writer.

mod dcp_hf;
mod error;
mod folder;
mod index;
mod single;
mod write;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::DType;
use crate::formats::chunked::{ChunkedCheckpoint, SourceFormat, StoredChunk, StoredTensor};
use crate::formats::safetensors::{StMetadata, read_safetensors};
use crate::formats::tensor_index::{CheckpointError, CheckpointIndex};

pub use dcp_hf::{parse_sharding_info, read_dcp_hf_folder};
pub use error::HfError;
pub use folder::read_hf_folder;
pub use index::{HfIndex, parse_index_json};
pub use single::read_safetensors_file;
use single::{read_whole_file, whole_checkpoint};
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

#[cfg(test)]
mod tests;

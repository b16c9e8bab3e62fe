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

// --- the metadata, decoded from the value tree ---

/// A tensor entry of `state_dict_metadata`.
struct TensorMeta {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    /// (offsets, sizes) per chunk.
    chunks: Vec<(Vec<u64>, Vec<u64>)>,
}

/// A `_StorageInfo`.
struct StorageInfo {
    relative_path: String,
    offset: u64,
    length: u64,
}

struct Metadata {
    tensors: Vec<TensorMeta>,
    skipped: Vec<String>,
    /// By (fqn, chunk offsets).
    storage: HashMap<(String, Vec<u64>), StorageInfo>,
}

const META_MODULE: &str = "torch.distributed.checkpoint.metadata";

/// Decodes the value tree, naming `file` in errors.
struct Schema<'a> {
    file: &'a Path,
}

impl Schema<'_> {
    fn err(&self, at: impl Into<String>, expected: &'static str) -> DcpError {
        DcpError::Schema {
            file: self.file.to_path_buf(),
            at: at.into(),
            expected,
        }
    }

    fn metadata(&self, v: &Value) -> Result<Metadata, DcpError> {
        let state = object_state(v, META_MODULE, "Metadata")
            .ok_or_else(|| self.err("the pickle", "a Metadata object"))?;
        let sdm = field(state, "state_dict_metadata")
            .ok_or_else(|| self.err("Metadata", "an object with state_dict_metadata"))?;
        let Value::Dict(entries) = sdm else {
            return Err(self.err("state_dict_metadata", "a dict"));
        };
        let mut tensors = Vec::new();
        let mut skipped = Vec::new();
        for (k, v) in entries {
            let name = k
                .as_str()
                .ok_or_else(|| self.err("a state_dict_metadata key", "a string"))?;
            if object_state(v, META_MODULE, "BytesStorageMetadata").is_some()
                || is_object(v, META_MODULE, "BytesStorageMetadata")
            {
                skipped.push(name.to_string());
                continue;
            }
            tensors.push(self.tensor(name, v)?);
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        skipped.sort();
        let storage = self.storage(state)?;
        Ok(Metadata {
            tensors,
            skipped,
            storage,
        })
    }

    fn tensor(&self, name: &str, v: &Value) -> Result<TensorMeta, DcpError> {
        let at = |f: &str| format!("state_dict_metadata[{name:?}].{f}");
        let state = object_state(v, META_MODULE, "TensorStorageMetadata").ok_or_else(|| {
            self.err(
                format!("state_dict_metadata[{name:?}]"),
                "a TensorStorageMetadata or BytesStorageMetadata",
            )
        })?;
        let dtype = self.dtype(name, field(state, "properties"))?;
        let shape = field(state, "size")
            .and_then(size)
            .ok_or_else(|| self.err(at("size"), "a torch.Size"))?;
        let chunks = field(state, "chunks")
            .and_then(Value::as_seq)
            .ok_or_else(|| self.err(at("chunks"), "a list"))?;
        let chunks = chunks
            .iter()
            .map(|c| {
                let s = object_state(c, META_MODULE, "ChunkStorageMetadata")
                    .ok_or_else(|| self.err(at("chunks[..]"), "a ChunkStorageMetadata"))?;
                let offsets = field(s, "offsets").and_then(size);
                let sizes = field(s, "sizes").and_then(size);
                offsets
                    .zip(sizes)
                    .ok_or_else(|| self.err(at("chunks[..]"), "offsets and sizes as torch.Size"))
            })
            .collect::<Result<_, _>>()?;
        Ok(TensorMeta {
            name: name.to_string(),
            dtype,
            shape,
            chunks,
        })
    }

    /// The dtype of `TensorProperties`, whose pickled state is the tuple
    /// of its `__getstate__` (dtype first), or a field dict.
    fn dtype(&self, tensor: &str, props: Option<&Value>) -> Result<DType, DcpError> {
        let at = format!("state_dict_metadata[{tensor:?}].properties");
        let state = props
            .and_then(|p| object_state(p, META_MODULE, "TensorProperties"))
            .ok_or_else(|| self.err(at.clone(), "a TensorProperties"))?;
        let dtype = match state {
            Value::Tuple(items) => items.first(),
            _ => field(state, "dtype"),
        };
        let Some(Value::Global(g)) =
            dtype.filter(|d| matches!(d, Value::Global(g) if g.module == "torch"))
        else {
            return Err(self.err(at, "properties with a torch dtype"));
        };
        torch_dtype(&g.name).ok_or_else(|| DcpError::UnsupportedDtype {
            file: self.file.to_path_buf(),
            tensor: tensor.to_string(),
            dtype: g.name.clone(),
        })
    }

    fn storage(&self, state: &Value) -> Result<HashMap<(String, Vec<u64>), StorageInfo>, DcpError> {
        let Some(Value::Dict(entries)) = field(state, "storage_data") else {
            return Err(self.err("Metadata.storage_data", "a dict"));
        };
        let mut out = HashMap::new();
        for (k, v) in entries {
            let index = object_state(k, META_MODULE, "MetadataIndex")
                .ok_or_else(|| self.err("a storage_data key", "a MetadataIndex"))?;
            let fqn = field(index, "fqn")
                .and_then(Value::as_str)
                .ok_or_else(|| self.err("MetadataIndex.fqn", "a string"))?;
            // Bytes entries have no offset; they are not indexed.
            let Some(offsets) = field(index, "offset").and_then(size) else {
                continue;
            };
            let info =
                object_state(v, "torch.distributed.checkpoint.filesystem", "_StorageInfo")
                    .ok_or_else(|| self.err(format!("storage_data[{fqn:?}]"), "a _StorageInfo"))?;
            let relative_path = field(info, "relative_path").and_then(Value::as_str);
            let offset = field(info, "offset").and_then(count);
            let length = field(info, "length").and_then(count);
            let (Some(relative_path), Some(offset), Some(length)) = (relative_path, offset, length)
            else {
                return Err(self.err(
                    format!("storage_data[{fqn:?}]"),
                    "a _StorageInfo with relative_path, offset and length",
                ));
            };
            let key = (fqn.to_string(), offsets);
            if out.contains_key(&key) {
                return Err(DcpError::DuplicateStorage {
                    file: self.file.to_path_buf(),
                    tensor: key.0,
                    offsets: key.1,
                });
            }
            out.insert(
                key,
                StorageInfo {
                    relative_path: relative_path.to_string(),
                    offset,
                    length,
                },
            );
        }
        Ok(out)
    }
}

/// The state of an object of class `module.name` (its `BUILD` state, or,
/// for a call without state, its arguments as a tuple).
fn object_state<'v>(v: &'v Value, module: &str, name: &str) -> Option<&'v Value> {
    match v {
        Value::Object {
            class,
            state: Some(state),
            ..
        } if class.is(module, name) => Some(state),
        _ => None,
    }
}

fn is_object(v: &Value, module: &str, name: &str) -> bool {
    matches!(v, Value::Object { class, .. } if class.is(module, name))
}

/// A field of a dataclass state: a dict, or the `(dict, slots)` pair of
/// a class with `__slots__`.
fn field<'v>(state: &'v Value, name: &str) -> Option<&'v Value> {
    match state {
        Value::Dict(_) => state.get(name),
        Value::Tuple(parts) => parts.iter().find_map(|p| p.get(name)),
        _ => None,
    }
}

fn count(v: &Value) -> Option<u64> {
    v.as_int().and_then(|i| u64::try_from(i).ok())
}

/// A `torch.Size(...)` (or a plain tuple) of counts.
fn size(v: &Value) -> Option<Vec<u64>> {
    let items = match v {
        Value::Object { class, args, .. } if class.is("torch", "Size") => match args.as_slice() {
            [] => return Some(Vec::new()),
            [dims] => dims.as_seq()?,
            _ => return None,
        },
        other => other.as_seq()?,
    };
    items.iter().map(count).collect()
}

// --- the data files ---

/// The data files of the folder, each mapped once, and what they are.
struct DataFiles<'a> {
    dir: &'a Path,
    meta_path: &'a Path,
    files: BTreeMap<String, DataFile>,
}

struct DataFile {
    path: PathBuf,
    map: memmap2::Mmap,
    kind: ItemKind,
    /// The safetensors index, for safetensors files.
    safetensors: Option<SafetensorsFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    TorchSave,
    Safetensors,
}

struct SafetensorsFile {
    tensors: BTreeMap<String, TensorEntry>,
    /// `saved_offsets` per fqn, from `DCP_SHARDING_INFO`.
    saved_offsets: HashMap<String, Vec<u64>>,
}

impl<'a> DataFiles<'a> {
    fn new(dir: &'a Path, meta_path: &'a Path) -> Self {
        DataFiles {
            dir,
            meta_path,
            files: BTreeMap::new(),
        }
    }

    /// The checkpoint's format: that of all its data files.
    fn format(&self) -> Result<SourceFormat, DcpError> {
        let mut kinds = self.files.values().map(|f| (f.kind, &f.path));
        let Some((first, _)) = kinds.next() else {
            return Ok(SourceFormat::DcpTorchSave);
        };
        if let Some((_, path)) = kinds.find(|(k, _)| *k != first) {
            return Err(DcpError::UnknownItem {
                file: path.clone(),
                reason: "the folder mixes torch.save and safetensors data files",
            });
        }
        Ok(match first {
            ItemKind::TorchSave => SourceFormat::DcpTorchSave,
            ItemKind::Safetensors => SourceFormat::DcpSafetensors,
        })
    }

    /// The tensor with the byte range of every chunk.
    fn locate(
        &mut self,
        t: &TensorMeta,
        storage: &HashMap<(String, Vec<u64>), StorageInfo>,
    ) -> Result<StoredTensor, DcpError> {
        let mut chunks = Vec::with_capacity(t.chunks.len());
        for (offsets, sizes) in &t.chunks {
            self.check_inside(t, offsets, sizes)?;
            let info = storage
                .get(&(t.name.clone(), offsets.clone()))
                .ok_or_else(|| DcpError::MissingStorage {
                    file: self.meta_path.to_path_buf(),
                    tensor: t.name.clone(),
                    offsets: offsets.clone(),
                })?;
            chunks.push(self.chunk(t, offsets, sizes, info)?);
        }
        Ok(StoredTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            chunks,
        })
    }

    fn check_inside(&self, t: &TensorMeta, offsets: &[u64], sizes: &[u64]) -> Result<(), DcpError> {
        let fits = offsets.len() == t.shape.len()
            && sizes.len() == t.shape.len()
            && t.shape
                .iter()
                .zip(offsets.iter().zip(sizes))
                .all(|(&d, (&o, &s))| o.checked_add(s).is_some_and(|e| e <= d));
        if fits {
            return Ok(());
        }
        Err(DcpError::ChunkOutside {
            file: self.meta_path.to_path_buf(),
            tensor: t.name.clone(),
            shape: t.shape.clone(),
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
        })
    }

    /// Rank of each file: R of `__R_K.distcp` when every file is named so,
    /// else the file's place in name order.
    fn ranks(&self) -> HashMap<PathBuf, u64> {
        let parsed: Option<Vec<u64>> = self.files.keys().map(|n| rank_of_name(n)).collect();
        match parsed {
            Some(ranks) => self
                .files
                .values()
                .zip(ranks)
                .map(|(f, r)| (f.path.clone(), r))
                .collect(),
            None => self
                .files
                .values()
                .zip(0u64..)
                .map(|(f, r)| (f.path.clone(), r))
                .collect(),
        }
    }

    fn chunk(
        &mut self,
        t: &TensorMeta,
        offsets: &[u64],
        sizes: &[u64],
        info: &StorageInfo,
    ) -> Result<StoredChunk, DcpError> {
        let file = self.open(&t.name, &info.relative_path)?;
        let path = file.path.clone();
        let numel = sizes.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let expected_len = numel.and_then(|n| n.checked_mul(t.dtype.size_bytes()));
        let mismatch = |found: String, expected: String| DcpError::ItemMismatch {
            file: path.clone(),
            tensor: t.name.clone(),
            offsets: offsets.to_vec(),
            found,
            expected,
        };
        let expected = format!("{:?} {sizes:?}", t.dtype);
        let (dtype, shape, byte_offset, byte_len) = match file.kind {
            ItemKind::TorchSave => {
                let end = info.offset.checked_add(info.length);
                let len = file.map.len() as u64;
                let range = end.filter(|&e| e <= len).and_then(|e| {
                    file.map
                        .get(usize::try_from(info.offset).ok()?..usize::try_from(e).ok()?)
                });
                let Some(item) = range else {
                    return Err(DcpError::ShortFile {
                        file: path,
                        tensor: t.name.clone(),
                        start: info.offset.max(len),
                        end: end.unwrap_or(u64::MAX),
                        len,
                    });
                };
                let what = format!("tensor {}, chunk at {offsets:?}", t.name);
                let item = read_torch_save_item(&path, info.offset, &what, item);
                release_pages(&file.map, info.offset, info.length);
                let item = item?;
                (
                    item.dtype,
                    item.shape,
                    info.offset + item.data_offset,
                    item.data_len,
                )
            }
            ItemKind::Safetensors => {
                let st = file.safetensors.as_ref();
                let entry = st
                    .and_then(|s| s.tensors.get(&t.name))
                    .ok_or_else(|| mismatch("no tensor of this name".into(), expected.clone()))?;
                let saved = st.and_then(|s| s.saved_offsets.get(&t.name));
                if saved.is_some_and(|s| s.as_slice() != offsets) {
                    return Err(mismatch(
                        format!("DCP_SHARDING_INFO saved_offsets {saved:?}"),
                        format!("offsets {offsets:?}"),
                    ));
                }
                // `_StorageInfo.offset` of this writer is not a file
                // offset (it is 0 for every item); the header says where
                // the bytes are, and the length must agree.
                if entry.len != info.length {
                    return Err(mismatch(
                        format!("{} bytes", entry.len),
                        format!("{} bytes (_StorageInfo.length)", info.length),
                    ));
                }
                (entry.dtype, entry.shape.clone(), entry.offset, entry.len)
            }
        };
        if dtype != t.dtype || shape.as_slice() != sizes || Some(byte_len) != expected_len {
            return Err(mismatch(
                format!("{dtype:?} {shape:?} ({byte_len} bytes)"),
                expected,
            ));
        }
        Ok(StoredChunk {
            rank: 0,
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
            file: path,
            byte_offset,
            byte_len,
        })
    }

    /// The data file `relative_path`, mapped and classified on first use.
    fn open(&mut self, tensor: &str, relative_path: &str) -> Result<&DataFile, DcpError> {
        let plain = {
            let mut parts = Path::new(relative_path).components();
            matches!(
                (parts.next(), parts.next()),
                (Some(Component::Normal(_)), None)
            )
        };
        if !plain {
            return Err(DcpError::RelativePath {
                file: self.meta_path.to_path_buf(),
                tensor: tensor.to_string(),
                path: relative_path.to_string(),
            });
        }
        if !self.files.contains_key(relative_path) {
            let path = self.dir.join(relative_path);
            let file = open_data_file(path)?;
            self.files.insert(relative_path.to_string(), file);
        }
        self.files
            .get(relative_path)
            .ok_or_else(|| DcpError::UnknownItem {
                file: self.dir.join(relative_path),
                reason: "the data file vanished from the index",
            })
    }
}

/// Unmaps the pages of one item once its records are read. Each read of
/// a header maps the page cache's whole folio around it (up to megabytes
/// for files read ahead), so indexing a 16 GB checkpoint of 2,328 items
/// otherwise peaked at 3 GB resident.
#[allow(unsafe_code)] // IO: see the SAFETY comment inside
fn release_pages(map: &memmap2::Mmap, offset: u64, len: u64) {
    #[cfg(unix)]
    {
        let page = 4096u64;
        let start = offset / page * page;
        let end = offset.saturating_add(len).min(map.len() as u64);
        if let (Ok(start), Ok(len)) = (
            usize::try_from(start),
            usize::try_from(end.saturating_sub(start)),
        ) {
            // SAFETY: the map is a read-only view of a file that no one
            // writes while it is read; dropping its pages only makes a
            // later access read them again from the page cache.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
    }
}

#[allow(unsafe_code)] // IO: see the SAFETY comment inside
fn open_data_file(path: PathBuf) -> Result<DataFile, DcpError> {
    let f = File::open(&path).map_err(|e| io(&path, &e))?;
    // SAFETY: the map is read-only and private to this reader; a
    // concurrent truncation by another process could fault, the
    // documented hazard of memory-mapping (sources must not change while
    // they are read), as in `checkpoint::read_index`.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io(&path, &e))?;
    let kind = if map.get(..4) == Some(b"PK\x03\x04".as_slice()) {
        ItemKind::TorchSave
    } else if map.get(8) == Some(&b'{') {
        ItemKind::Safetensors
    } else {
        return Err(DcpError::UnknownItem {
            file: path,
            reason: "the data file starts neither as a zip (torch.save) nor as safetensors",
        });
    };
    let safetensors = match kind {
        ItemKind::TorchSave => None,
        ItemKind::Safetensors => Some(read_safetensors(&path, &map)?),
    };
    Ok(DataFile {
        path,
        map,
        kind,
        safetensors,
    })
}

fn read_safetensors(path: &Path, map: &[u8]) -> Result<SafetensorsFile, DcpError> {
    let index = parse_index(path, map, CheckpointFormat::Safetensors)?;
    Ok(SafetensorsFile {
        tensors: index.tensors,
        saved_offsets: sharding_info(map).unwrap_or_default(),
    })
}

/// `saved_offsets` per fqn from the header's `__metadata__`
/// `DCP_SHARDING_INFO` (a JSON string in the JSON header), when there.
/// `parse_index` has checked the header's bounds and JSON.
fn sharding_info(map: &[u8]) -> Option<HashMap<String, Vec<u64>>> {
    let n = u64::from_le_bytes(map.get(..8)?.try_into().ok()?);
    let header = map.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    let header: serde_json::Value = serde_json::from_slice(header).ok()?;
    let info = header
        .get("__metadata__")?
        .get("DCP_SHARDING_INFO")?
        .as_str()?;
    let info: serde_json::Value = serde_json::from_str(info).ok()?;
    let mut out = HashMap::new();
    for (fqn, v) in info.as_object()? {
        let offsets: Vec<u64> = serde_json::from_value(v.get("saved_offsets")?.clone()).ok()?;
        out.insert(fqn.clone(), offsets);
    }
    Some(out)
}

/// R of `__R_K.distcp`.
fn rank_of_name(name: &str) -> Option<u64> {
    let stem = name.strip_prefix("__")?.strip_suffix(".distcp")?;
    let (rank, index) = stem.split_once('_')?;
    index.parse::<u64>().ok()?;
    rank.parse().ok()
}

#[cfg(test)]
mod tests;

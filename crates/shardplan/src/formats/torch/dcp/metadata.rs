//! The metadata, decoded from the value tree of `.metadata`: tensors,
//! their chunks and where each chunk's bytes are stored.

use super::*;

/// A tensor entry of `state_dict_metadata`.
pub(super) struct TensorMeta {
    pub(super) name: String,
    pub(super) dtype: DType,
    pub(super) shape: Vec<u64>,
    /// (offsets, sizes) per chunk.
    pub(super) chunks: Vec<(Vec<u64>, Vec<u64>)>,
}

/// A `_StorageInfo`.
pub(super) struct StorageInfo {
    pub(super) relative_path: String,
    pub(super) offset: u64,
    pub(super) length: u64,
}

pub(super) struct Metadata {
    pub(super) tensors: Vec<TensorMeta>,
    pub(super) skipped: Vec<String>,
    /// By (fqn, chunk offsets).
    pub(super) storage: HashMap<(String, Vec<u64>), StorageInfo>,
}

pub(super) const META_MODULE: &str = "torch.distributed.checkpoint.metadata";

/// Decodes the value tree, naming `file` in errors.
pub(super) struct Schema<'a> {
    pub(super) file: &'a Path,
}

impl Schema<'_> {
    pub(super) fn err(&self, at: impl Into<String>, expected: &'static str) -> DcpError {
        DcpError::Schema {
            file: self.file.to_path_buf(),
            at: at.into(),
            expected,
        }
    }

    pub(super) fn metadata(&self, v: &Value) -> Result<Metadata, DcpError> {
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

    pub(super) fn tensor(&self, name: &str, v: &Value) -> Result<TensorMeta, DcpError> {
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
    pub(super) fn dtype(&self, tensor: &str, props: Option<&Value>) -> Result<DType, DcpError> {
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

    pub(super) fn storage(
        &self,
        state: &Value,
    ) -> Result<HashMap<(String, Vec<u64>), StorageInfo>, DcpError> {
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
pub(super) fn object_state<'v>(v: &'v Value, module: &str, name: &str) -> Option<&'v Value> {
    match v {
        Value::Object {
            class,
            state: Some(state),
            ..
        } if class.is(module, name) => Some(state),
        _ => None,
    }
}

pub(super) fn is_object(v: &Value, module: &str, name: &str) -> bool {
    matches!(v, Value::Object { class, .. } if class.is(module, name))
}

/// A field of a dataclass state: a dict, or the `(dict, slots)` pair of
/// a class with `__slots__`.
pub(super) fn field<'v>(state: &'v Value, name: &str) -> Option<&'v Value> {
    match state {
        Value::Dict(_) => state.get(name),
        Value::Tuple(parts) => parts.iter().find_map(|p| p.get(name)),
        _ => None,
    }
}

pub(super) fn count(v: &Value) -> Option<u64> {
    v.as_int().and_then(|i| u64::try_from(i).ok())
}

/// A `torch.Size(...)` (or a plain tuple) of counts.
pub(super) fn size(v: &Value) -> Option<Vec<u64>> {
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

//! safetensors files: the index of a file's tensors (and its
//! `__metadata__`) from the JSON header, without loading data, and the
//! header the checkpoint writer puts first.

use std::collections::BTreeMap;
use std::path::Path;

use crate::formats::dtype_names::st_dtype;
use crate::formats::tensor_index::{
    CheckpointError, CheckpointFault, CheckpointFormat, CheckpointIndex, MAX_ST_HEADER,
    TensorEntry, bad, entry, open_map,
};

pub(crate) mod write;

/// The `__metadata__` object of a safetensors header (string keys to, per
/// the format, string values; kept as JSON so callers judge the values).
pub(crate) type StMetadata = serde_json::Map<String, serde_json::Value>;

/// Reads the index of a safetensors file and its `__metadata__` (empty when
/// the header has none), whatever the file's extension.
///
/// # Errors
///
/// As [`read_index`].
pub(crate) fn read_safetensors(
    path: &Path,
) -> Result<(CheckpointIndex, StMetadata), CheckpointError> {
    let map = open_map(path)?;
    let (tensors, metadata) = index_safetensors_with_metadata(path, &map)?;
    let index = CheckpointIndex {
        path: path.to_path_buf(),
        format: CheckpointFormat::Safetensors,
        tensors,
    };
    Ok((index, metadata))
}

/// The tensors of a safetensors file's bytes.
pub(crate) fn index_safetensors(
    path: &Path,
    b: &[u8],
) -> Result<BTreeMap<String, TensorEntry>, CheckpointError> {
    index_safetensors_with_metadata(path, b).map(|(tensors, _)| tensors)
}

/// The tensors of a safetensors file's bytes and its `__metadata__`.
fn index_safetensors_with_metadata(
    path: &Path,
    b: &[u8],
) -> Result<(BTreeMap<String, TensorEntry>, StMetadata), CheckpointError> {
    let corrupt = |fault: CheckpointFault| bad(path, fault);
    let field = |tensor: &str, field: &'static str| {
        corrupt(CheckpointFault::HeaderField {
            tensor: tensor.to_string(),
            field,
        })
    };
    if b.len() < 8 {
        return Err(corrupt(CheckpointFault::ShortHeader));
    }
    let n = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let header_end = 8u64
        .checked_add(n)
        .filter(|&e| e <= b.len() as u64)
        .ok_or_else(|| {
            corrupt(CheckpointFault::HeaderPastEnd {
                claims: n,
                len: b.len() as u64,
            })
        })? as usize;
    if n > MAX_ST_HEADER {
        return Err(corrupt(CheckpointFault::HeaderTooLong { claims: n }));
    }
    if b.get(8) != Some(&b'{') {
        return Err(corrupt(CheckpointFault::Magic));
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&b[8..header_end])
            .map_err(|e| corrupt(CheckpointFault::HeaderJson(e)))?;
    let data_len = (b.len() - header_end) as u64;
    let mut out = BTreeMap::new();
    let mut ranges = Vec::new();
    let mut metadata = StMetadata::new();
    for (name, v) in header {
        if name == "__metadata__" {
            metadata = match v {
                serde_json::Value::Object(m) => m,
                _ => return Err(field("__metadata__", "__metadata__")),
            };
            continue;
        }
        let dtype_name = v["dtype"].as_str().ok_or_else(|| field(&name, "dtype"))?;
        let dtype = st_dtype(dtype_name).ok_or_else(|| {
            corrupt(CheckpointFault::UnsupportedDtype {
                tensor: name.clone(),
                dtype: dtype_name.to_string(),
            })
        })?;
        let shape: Vec<u64> =
            serde_json::from_value(v["shape"].clone()).map_err(|_| field(&name, "shape"))?;
        let offs: [u64; 2] = serde_json::from_value(v["data_offsets"].clone())
            .map_err(|_| field(&name, "data_offsets"))?;
        if !(offs[0] <= offs[1] && offs[1] <= data_len) {
            return Err(corrupt(CheckpointFault::OffsetsOutside {
                tensor: name,
                offsets: offs,
                data_len,
            }));
        }
        ranges.push((offs[0], offs[1], name.clone()));
        let e = entry(
            path,
            name,
            dtype,
            shape,
            header_end as u64 + offs[0],
            offs[1] - offs[0],
        )?;
        out.insert(e.name.clone(), e);
    }
    ranges.sort();
    if let Some(w) = ranges.windows(2).find(|w| w[0].1 > w[1].0) {
        return Err(bad(
            path,
            CheckpointFault::Overlap {
                first: w[0].2.clone(),
                second: w[1].2.clone(),
            },
        ));
    }
    Ok((out, metadata))
}

//! The header of a safetensors file the checkpoint writer streams.

use crate::DType;
use crate::formats::dtype_names::st_dtype_name;

/// The length-prefixed JSON header of a safetensors file holding `tensors`
/// (name, dtype, shape) in that order, padded to 8 bytes as the reference
/// writer pads it; `__metadata__` is `{"format": format}` (`ms` for
/// MindSpore's files, `pt` for PyTorch's, which transformers checks).
pub(crate) fn header(tensors: &[(String, DType, Vec<u64>)], format: &str) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), format.into());
    header.insert("__metadata__".into(), meta.into());
    let mut off = 0u64;
    for (name, dtype, shape) in tensors {
        let len = shape.iter().product::<u64>() * dtype.size_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": st_dtype_name(*dtype), "shape": shape, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    let mut json = serde_json::to_vec(&header).expect("serializes");
    // Pad the header to 8 bytes, as the reference writer does.
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

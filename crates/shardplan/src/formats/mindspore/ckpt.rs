//! MindSpore `.ckpt` files (protobuf `Checkpoint`): the index of a file's
//! tensors, read from the records without loading data, and the framing
//! the writer puts around each tensor's data.

use std::collections::BTreeMap;
use std::path::Path;

use crate::DType;
use crate::formats::dtype_names::{ms_dtype, ms_dtype_name};
use crate::formats::tensor_index::{CheckpointError, CheckpointFault, TensorEntry, bad, entry};

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        if shift == 63 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Skips a field of wire type `wt`.
fn skip(b: &[u8], i: &mut usize, wt: u64) -> Option<()> {
    match wt {
        0 => {
            varint(b, i)?;
        }
        1 => *i = i.checked_add(8).filter(|&e| e <= b.len())?,
        2 => {
            let l = usize::try_from(varint(b, i)?).ok()?;
            *i = i.checked_add(l).filter(|&e| e <= b.len())?;
        }
        5 => *i = i.checked_add(4).filter(|&e| e <= b.len())?,
        _ => return None,
    }
    Some(())
}

/// Length-delimited field at `*i`: returns its byte range.
fn delimited(b: &[u8], i: &mut usize) -> Option<(usize, usize)> {
    let l = usize::try_from(varint(b, i)?).ok()?;
    let start = *i;
    let end = start.checked_add(l).filter(|&e| e <= b.len())?;
    *i = end;
    Some((start, end))
}

/// The tensors of a `.ckpt` file's bytes: each `Value` record's dense
/// tensor, by name.
pub(crate) fn index_ckpt(
    path: &Path,
    b: &[u8],
) -> Result<BTreeMap<String, TensorEntry>, CheckpointError> {
    let corrupt = |what: &'static str| bad(path, CheckpointFault::CkptRecord { what });
    let mut out = BTreeMap::new();
    let mut i = 0usize;
    while i < b.len() {
        let key = varint(b, &mut i).ok_or_else(|| corrupt("a field header is cut off"))?;
        let (field, wt) = (key >> 3, key & 7);
        if field != 1 || wt != 2 {
            skip(b, &mut i, wt).ok_or_else(|| corrupt("a field runs past the end"))?;
            continue;
        }
        let (vs, ve) = delimited(b, &mut i)
            .ok_or_else(|| corrupt("a tensor record runs past the end of the file"))?;
        let (name, tensor) = value_record(path, &b[..ve], vs)?;
        let Some((ts, te)) = tensor else {
            // Map tensors and other records carry no dense tensor; skip them.
            continue;
        };
        let entry = tensor_proto(path, &b[..te], ts)?.entry(path, name)?;
        if out.insert(entry.name.clone(), entry.clone()).is_some() {
            return Err(bad(
                path,
                CheckpointFault::StoredTwice { tensor: entry.name },
            ));
        }
    }
    Ok(out)
}

/// The name and the dense tensor's byte range of the record
/// `Value { tag = 1; tensor = 2 }` from `start` to the end of `b`.
fn value_record(
    path: &Path,
    b: &[u8],
    start: usize,
) -> Result<(String, Option<(usize, usize)>), CheckpointError> {
    let corrupt = |what: &'static str| bad(path, CheckpointFault::CkptRecord { what });
    let mut name = None;
    let mut tensor = None;
    let mut j = start;
    while j < b.len() {
        let key = varint(b, &mut j).ok_or_else(|| corrupt("a record header is cut off"))?;
        match (key >> 3, key & 7) {
            (1, 2) => {
                let (s, e) =
                    delimited(b, &mut j).ok_or_else(|| corrupt("a name runs past its record"))?;
                name = Some(
                    String::from_utf8(b[s..e].to_vec())
                        .map_err(|_| corrupt("a tensor name is not UTF-8"))?,
                );
            }
            (2, 2) => {
                tensor = Some(
                    delimited(b, &mut j).ok_or_else(|| corrupt("a tensor runs past its record"))?,
                )
            }
            (_, wt) => {
                skip(b, &mut j, wt).ok_or_else(|| corrupt("a field runs past its record"))?
            }
        }
    }
    let name = name.ok_or_else(|| corrupt("a record has no name"))?;
    Ok((name, tensor))
}

/// A `TensorProto` as stored: its dimensions, dtype name and data range.
struct TensorProto {
    dims: Vec<u64>,
    dtype_name: Option<String>,
    /// The data's byte range; an empty one at the proto's end when absent.
    content: (usize, usize),
}

/// Reads `TensorProto { dims = 1 (repeated int64); tensor_type = 2;
/// tensor_content = 3 }` from `start` to the end of `b`.
fn tensor_proto(path: &Path, b: &[u8], start: usize) -> Result<TensorProto, CheckpointError> {
    let corrupt = |what: &'static str| bad(path, CheckpointFault::CkptRecord { what });
    let mut dims = Vec::new();
    let mut dtype_name = None;
    let mut content = None;
    let mut j = start;
    while j < b.len() {
        let key = varint(b, &mut j).ok_or_else(|| corrupt("a tensor header is cut off"))?;
        match (key >> 3, key & 7) {
            (1, 0) => {
                dims.push(varint(b, &mut j).ok_or_else(|| corrupt("a dimension is cut off"))?)
            }
            (1, 2) => {
                let (s, e) = delimited(b, &mut j)
                    .ok_or_else(|| corrupt("packed dimensions run past the tensor"))?;
                let mut k = s;
                while k < e {
                    dims.push(
                        varint(&b[..e], &mut k).ok_or_else(|| corrupt("a dimension is cut off"))?,
                    );
                }
            }
            (2, 2) => {
                let (s, e) =
                    delimited(b, &mut j).ok_or_else(|| corrupt("a dtype runs past the tensor"))?;
                dtype_name = Some(String::from_utf8_lossy(&b[s..e]).into_owned());
            }
            (3, 2) => {
                content = Some(
                    delimited(b, &mut j)
                        .ok_or_else(|| corrupt("tensor data runs past the end of the file"))?,
                )
            }
            (_, wt) => {
                skip(b, &mut j, wt).ok_or_else(|| corrupt("a field runs past its tensor"))?
            }
        }
    }
    Ok(TensorProto {
        dims,
        dtype_name,
        content: content.unwrap_or((b.len(), b.len())),
    })
}

impl TensorProto {
    /// The index entry of tensor `name`: a known dtype and data that fit
    /// the shape.
    fn entry(self, path: &Path, name: String) -> Result<TensorEntry, CheckpointError> {
        let Some(dtype_name) = self.dtype_name else {
            return Err(bad(path, CheckpointFault::CkptNoDtype { tensor: name }));
        };
        let Some(dtype) = ms_dtype(&dtype_name) else {
            return Err(bad(
                path,
                CheckpointFault::UnsupportedDtype {
                    tensor: name,
                    dtype: dtype_name,
                },
            ));
        };
        let (cs, ce) = self.content;
        entry(path, name, dtype, self.dims, cs as u64, (ce - cs) as u64)
    }
}

/// The framing a `.ckpt` file puts before the `len` data bytes of tensor
/// `name`: the record, its `Value` and the `TensorProto` up to
/// `tensor_content`'s length, so that the data follows without a copy.
pub(crate) fn record_framing(name: &str, dtype: DType, shape: &[u64], len: u64) -> Vec<u8> {
    let mut tensor = Vec::new();
    for &d in shape {
        put_varint(&mut tensor, 1 << 3);
        put_varint(&mut tensor, d);
    }
    put_bytes(&mut tensor, 2, ms_dtype_name(dtype).as_bytes());
    // tensor_content header; the data follows without a copy.
    put_varint(&mut tensor, (3 << 3) | 2);
    put_varint(&mut tensor, len);
    let mut value = Vec::new();
    put_bytes(&mut value, 1, name.as_bytes());
    put_varint(&mut value, (2 << 3) | 2);
    put_varint(&mut value, tensor.len() as u64 + len);
    let mut record = Vec::new();
    put_varint(&mut record, (1 << 3) | 2);
    put_varint(&mut record, value.len() as u64 + tensor.len() as u64 + len);
    record.extend_from_slice(&value);
    record.extend_from_slice(&tensor);
    record
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

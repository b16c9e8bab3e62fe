//! Planning and writing Hugging Face model folders the way
//! `huggingface_hub.save_torch_state_dict` lays them out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::{HfError, HfIndex, INDEX_NAME, SINGLE_NAME};
use crate::formats::dtype_names::st_dtype_name;
use crate::formats::write_atomic;
use crate::{DType, TensorInfo};

/// One tensor of a planned shard and where its bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardTensor {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// Absolute byte offset of its data in the shard file.
    pub data_offset: u64,
    /// Byte length of its data (row-major, little-endian).
    pub byte_len: u64,
}

/// One planned shard file: its name, the header bytes it starts with, and
/// its tensors in the order their bytes follow the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfShard {
    file_name: String,
    header: Vec<u8>,
    tensors: Vec<ShardTensor>,
    file_len: u64,
}

impl HfShard {
    /// The file name, e.g. `model-00001-of-00003.safetensors`.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// The bytes the file starts with: the 8-byte little-endian header
    /// length, then the JSON header padded with spaces to a multiple of 8.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// The tensors, in file order; each one's data starts where the one
    /// before ends, the first right after [`HfShard::header`].
    pub fn tensors(&self) -> &[ShardTensor] {
        &self.tensors
    }

    /// The length of the whole file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
}

/// The plan of a Hugging Face model folder: which tensors go in which
/// shard, the shard file names and header bytes, and the index.
///
/// The rules are `huggingface_hub`'s (`split_state_dict_into_shards_factory`):
///
/// - Tensors are taken in the order given. A tensor goes in the current
///   shard unless that would make the shard's tensor bytes exceed the limit;
///   then the current shard is closed and a new one started.
/// - A tensor larger than the limit gets a shard of its own, closed at once;
///   the current shard stays open for the tensors after it, so that shard
///   is numbered after the large tensor's.
/// - Headers do not count towards the limit.
/// - One shard is `model.safetensors`, and `huggingface_hub` then writes no
///   index; `n > 1` shards are `model-<i>-of-<n>.safetensors`, numbered from
///   1 with five digits.
///
/// Within a shard, data is ordered as the safetensors writer orders it:
/// widest element type first, then by name, so every tensor starts at a
/// multiple of its element width (the header is padded to 8 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfLayout {
    shards: Vec<HfShard>,
    total_size: u64,
}

impl HfLayout {
    /// Plans a folder of `tensors` with shards of at most `max_shard_bytes`
    /// tensor bytes each (see [`parse_shard_size`]), but for tensors larger
    /// than that.
    ///
    /// # Errors
    ///
    /// [`HfError::NoTensors`] for no tensors; [`HfError::BadTensorName`] for
    /// a name given twice or `__metadata__`; [`HfError::Overflow`] when a
    /// tensor's or the total byte count overflows.
    pub fn new(tensors: &[TensorInfo], max_shard_bytes: u64) -> Result<HfLayout, HfError> {
        if tensors.is_empty() {
            return Err(HfError::NoTensors);
        }
        check_names(tensors)?;
        let sizes = tensors
            .iter()
            .map(|t| {
                t.size_bytes().map_err(|_| HfError::Overflow {
                    tensor: t.name.clone(),
                    what: format!("the byte count of shape {:?}", t.shape),
                })
            })
            .collect::<Result<Vec<u64>, _>>()?;
        let total_size = sizes
            .iter()
            .try_fold(0u64, |a, &b| a.checked_add(b))
            .ok_or_else(|| HfError::Overflow {
                tensor: String::new(),
                what: "the sum of tensor bytes".into(),
            })?;
        let groups = assign_shards(&sizes, max_shard_bytes);
        let count = groups.len();
        let shards = groups
            .iter()
            .enumerate()
            .map(|(i, members)| {
                let members: Vec<(&TensorInfo, u64)> =
                    members.iter().map(|&k| (&tensors[k], sizes[k])).collect();
                build_shard(shard_file_name(i, count), members)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HfLayout { shards, total_size })
    }

    /// The shards, in file-name order.
    pub fn shards(&self) -> &[HfShard] {
        &self.shards
    }

    /// Bytes of all tensors (`metadata.total_size`).
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// True with more than one shard: only then do Hugging Face tools write
    /// an index.
    pub fn is_sharded(&self) -> bool {
        self.shards.len() > 1
    }

    /// The index of the folder.
    pub fn index(&self) -> HfIndex {
        let weight_map = self
            .shards
            .iter()
            .flat_map(|s| {
                s.tensors
                    .iter()
                    .map(|t| (t.name.clone(), s.file_name.clone()))
            })
            .collect();
        HfIndex {
            total_size: Some(self.total_size),
            weight_map,
        }
    }

    /// The text of `model.safetensors.index.json` (see [`HfIndex::to_json`]);
    /// written only when [`HfLayout::is_sharded`].
    pub fn index_json(&self) -> String {
        self.index().to_json()
    }
}

fn check_names(tensors: &[TensorInfo]) -> Result<(), HfError> {
    let mut seen = HashSet::new();
    for t in tensors {
        let reason = if t.name == "__metadata__" {
            "is reserved by safetensors"
        } else if !seen.insert(t.name.as_str()) {
            "is given twice"
        } else {
            continue;
        };
        return Err(HfError::BadTensorName {
            name: t.name.clone(),
            reason,
        });
    }
    Ok(())
}

/// `huggingface_hub`'s greedy split: indices of `sizes` per shard.
pub(super) fn assign_shards(sizes: &[u64], max: u64) -> Vec<Vec<usize>> {
    let mut shards = Vec::new();
    let mut current = Vec::new();
    let mut current_size = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if size > max {
            shards.push(vec![i]);
            continue;
        }
        if current_size.checked_add(size).is_none_or(|s| s > max) {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(i);
        current_size += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

fn shard_file_name(i: usize, count: usize) -> String {
    if count == 1 {
        SINGLE_NAME.to_string()
    } else {
        format!("model-{:05}-of-{count:05}.safetensors", i + 1)
    }
}

/// The header and data offsets of one shard of `members` (tensor, bytes).
fn build_shard(
    file_name: String,
    mut members: Vec<(&TensorInfo, u64)>,
) -> Result<HfShard, HfError> {
    members.sort_by(|(a, _), (b, _)| {
        b.dtype
            .size_bytes()
            .cmp(&a.dtype.size_bytes())
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut json = serde_json::Map::new();
    // The metadata safetensors.torch writes, so loaders that check it agree.
    json.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut at = 0u64;
    let mut spans = Vec::with_capacity(members.len());
    for (t, len) in &members {
        let end = at.checked_add(*len).ok_or_else(|| HfError::Overflow {
            tensor: t.name.clone(),
            what: format!("the data offset in {file_name}"),
        })?;
        json.insert(
            t.name.clone(),
            serde_json::json!({"dtype": st_dtype_name(t.dtype), "shape": t.shape, "data_offsets": [at, end]}),
        );
        spans.push(at);
        at = end;
    }
    let mut text = serde_json::to_vec(&json).unwrap_or_default();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let data_start = 8 + text.len() as u64;
    let mut header = Vec::with_capacity(8 + text.len());
    header.extend_from_slice(&(text.len() as u64).to_le_bytes());
    header.extend_from_slice(&text);
    let tensors = members
        .iter()
        .zip(spans)
        .map(|((t, len), start)| ShardTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            data_offset: data_start + start,
            byte_len: *len,
        })
        .collect();
    let file_len = data_start
        .checked_add(at)
        .ok_or_else(|| HfError::Overflow {
            tensor: String::new(),
            what: format!("the length of {file_name}"),
        })?;
    Ok(HfShard {
        file_name,
        header,
        tensors,
        file_len,
    })
}

/// Parses a `--max-shard-size` as `huggingface_hub` reads one: a number
/// (fractions allowed, rounded down to a byte) and a unit, case-insensitive,
/// optionally spaced: `KB`, `MB`, `GB`, `TB` are powers of 1000 (as the hub
/// reads them); `KiB`, `MiB`, `GiB`, `TiB` powers of 1024; `B` or none is
/// bytes.
///
/// # Errors
///
/// [`HfError::ShardSize`] for text that is not such a size, a size of zero,
/// or one beyond `u64`.
///
/// # Example
///
/// ```
/// use shardplan::formats::hf::parse_shard_size;
///
/// assert_eq!(parse_shard_size("5GB").unwrap(), 5_000_000_000);
/// assert_eq!(parse_shard_size("1GiB").unwrap(), 1 << 30);
/// assert_eq!(parse_shard_size("1.5 kb").unwrap(), 1500);
/// assert!(parse_shard_size("5 GBs").is_err());
/// ```
pub fn parse_shard_size(text: &str) -> Result<u64, HfError> {
    let refuse = |reason| HfError::ShardSize {
        text: text.to_string(),
        reason,
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_bytes: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => return Err(refuse("unknown unit")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(refuse("not a number"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| refuse("too large"))?
    };
    let bytes = whole
        .checked_mul(unit_bytes)
        .and_then(|b| b.checked_add(fraction_bytes(fraction, unit_bytes)))
        .ok_or_else(|| refuse("too large"))?;
    if bytes == 0 {
        return Err(refuse("zero"));
    }
    Ok(bytes)
}

/// `0.<digits>` of a unit, in whole bytes (rounded down). Digits past the
/// 18th are below a millionth of a byte for every unit, and dropped.
fn fraction_bytes(digits: &str, unit_bytes: u64) -> u64 {
    let digits = digits.get(..digits.len().min(18)).unwrap_or_default();
    let Ok(value) = digits.parse::<u128>() else {
        return 0;
    };
    let scale = 10u128.pow(digits.len() as u32);
    // value < scale, so the result is below unit_bytes and fits.
    (value * u128::from(unit_bytes) / scale) as u64
}

/// Writes a whole model folder into `dir` (created if needed) from tensors
/// in memory, as [`HfLayout::new`] plans it: each shard, then, when
/// sharded, the index, each to a temporary name, fsynced and renamed
/// ([`write_atomic`]). The index comes last, so an interrupted write never
/// leaves an index naming shards that are not there. Returns the plan.
///
/// # Errors
///
/// The errors of [`HfLayout::new`]; [`HfError::DataLength`] when a
/// tensor's bytes do not match its dtype and shape;
/// [`HfError::StaleFiles`] when `dir` already holds an index or a
/// `model*.safetensors` file (a second save would mix with the first);
/// [`HfError::Io`].
pub fn write_hf_folder(
    dir: &Path,
    tensors: &[(TensorInfo, &[u8])],
    max_shard_bytes: u64,
) -> Result<HfLayout, HfError> {
    let infos: Vec<TensorInfo> = tensors.iter().map(|(t, _)| t.clone()).collect();
    let layout = HfLayout::new(&infos, max_shard_bytes)?;
    let data: HashMap<&str, &[u8]> = tensors.iter().map(|(t, b)| (t.name.as_str(), *b)).collect();
    for shard in layout.shards() {
        for t in shard.tensors() {
            let actual = data
                .get(t.name.as_str())
                .map_or(u64::MAX, |b| b.len() as u64);
            if actual != t.byte_len {
                return Err(HfError::DataLength {
                    tensor: t.name.clone(),
                    expected: t.byte_len,
                    actual,
                });
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| HfError::io(dir, &e))?;
    refuse_stale(dir)?;
    for shard in layout.shards() {
        let mut bytes = Vec::with_capacity(usize::try_from(shard.file_len()).unwrap_or(0));
        bytes.extend_from_slice(shard.header());
        for t in shard.tensors() {
            bytes.extend_from_slice(data.get(t.name.as_str()).copied().unwrap_or_default());
        }
        let path = dir.join(shard.file_name());
        write_atomic(&path, &bytes).map_err(|e| HfError::io(&path, &e))?;
    }
    if layout.is_sharded() {
        let path = dir.join(INDEX_NAME);
        write_atomic(&path, layout.index_json().as_bytes()).map_err(|e| HfError::io(&path, &e))?;
    }
    Ok(layout)
}

/// Refuses a folder that holds a Hugging Face save already.
fn refuse_stale(dir: &Path) -> Result<(), HfError> {
    let entries = std::fs::read_dir(dir).map_err(|e| HfError::io(dir, &e))?;
    let mut found = BTreeMap::new();
    for e in entries {
        let e = e.map_err(|e| HfError::io(dir, &e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == INDEX_NAME || (name.starts_with("model") && name.ends_with(".safetensors")) {
            found.insert(name, e.path());
        }
    }
    match found.into_values().next() {
        Some(path) => Err(HfError::StaleFiles { path }),
        None => Ok(()),
    }
}

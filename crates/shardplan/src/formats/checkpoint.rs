//! Checkpoint files: MindSpore `.ckpt` (protobuf `Checkpoint`) and
//! safetensors. Reading builds an index of tensors (name, dtype, shape, byte
//! range) without loading data; tensors are then read by byte range.
//! Writing streams one tensor at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use super::io::checksum::Checksum;
use super::io::checksum::Summed;
use super::io::stream::StreamFile;
use crate::DType;

/// Checkpoint file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointFormat {
    /// MindSpore protobuf `.ckpt`.
    Ckpt,
    /// safetensors.
    Safetensors,
}

impl CheckpointFormat {
    /// File extension.
    pub fn extension(self) -> &'static str {
        match self {
            CheckpointFormat::Ckpt => "ckpt",
            CheckpointFormat::Safetensors => "safetensors",
        }
    }

    /// The format of `path`, by extension.
    pub fn of_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "ckpt" => Some(CheckpointFormat::Ckpt),
            "safetensors" => Some(CheckpointFormat::Safetensors),
            _ => None,
        }
    }
}

/// One tensor of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape of the stored slice.
    pub shape: Vec<u64>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte length of the data.
    pub len: u64,
}

/// The tensors of one checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointIndex {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: CheckpointFormat,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorEntry>,
}

/// A checkpoint that cannot be read: the file, and what is wrong with it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{file}: {fault}")]
#[diagnostic(forward(fault))]
pub struct CheckpointError {
    /// The file (or folder of rank folders).
    pub file: String,
    /// What is wrong with it; its code and help are the error's.
    pub fault: CheckpointFault,
}

const CORRUPT: &str = "the file is truncated or not a checkpoint; rewrite it from its source";
const LYING: &str = "the header lies about sizes; the file is corrupt";
const DTYPES: &str = "shardplan moves f64, f32, f16, bf16, integer and bool tensors";

/// What is wrong with a checkpoint file or a folder of rank folders, one
/// variant per fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum CheckpointFault {
    /// A file name ending in neither `.ckpt` nor `.safetensors`.
    #[error("unknown checkpoint extension")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::extension),
        help("checkpoints end in .ckpt or .safetensors")
    )]
    Extension,
    /// A file that cannot be opened.
    #[error(transparent)]
    #[diagnostic(
        code(shardplan::formats::checkpoint::open),
        help("check the path and permissions")
    )]
    Open(std::io::Error),
    /// A file whose size cannot be read.
    #[error(transparent)]
    #[diagnostic(code(shardplan::formats::checkpoint::stat), help("check the path"))]
    Stat(std::io::Error),
    /// A file that cannot be memory-mapped.
    #[error(transparent)]
    #[diagnostic(code(shardplan::formats::checkpoint::map), help("check the file"))]
    Map(std::io::Error),
    /// An empty file.
    #[error("the file is empty")]
    #[diagnostic(code(shardplan::formats::checkpoint::empty), help("{}", CORRUPT))]
    Empty,
    /// A `.ckpt` whose protobuf records are cut off or malformed.
    #[error("not a valid MindSpore checkpoint: {what}")]
    #[diagnostic(code(shardplan::formats::checkpoint::ckpt_record), help("{}", CORRUPT))]
    CkptRecord {
        /// Which part of which record.
        what: &'static str,
    },
    /// A `.ckpt` tensor without a dtype.
    #[error("not a valid MindSpore checkpoint: tensor `{tensor}` has no dtype")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::ckpt_no_dtype),
        help("{}", CORRUPT)
    )]
    CkptNoDtype {
        /// The tensor.
        tensor: String,
    },
    /// A tensor of a dtype shardplan does not move.
    #[error("tensor `{tensor}` has unsupported dtype `{dtype}`")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::unsupported_dtype),
        help("{}", DTYPES)
    )]
    UnsupportedDtype {
        /// The tensor.
        tensor: String,
        /// The dtype as the file names it.
        dtype: String,
    },
    /// A tensor stored twice in one `.ckpt`.
    #[error("tensor `{tensor}` is stored twice")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::stored_twice),
        help("{}", CORRUPT)
    )]
    StoredTwice {
        /// The tensor.
        tensor: String,
    },
    /// A tensor whose bytes do not match its dtype and shape.
    #[error(
        "tensor `{tensor}`: shape {shape:?} of {dtype} needs {} bytes but the file holds {holds}",
        needs.map_or("too many".into(), |n| n.to_string())
    )]
    #[diagnostic(code(shardplan::formats::checkpoint::byte_count), help("{}", LYING))]
    ByteCount {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its dtype.
        dtype: DType,
        /// The bytes dtype and shape need (`None`: more than 64 bits count).
        needs: Option<u64>,
        /// The bytes the file gives it.
        holds: u64,
    },
    /// A safetensors file shorter than its 8-byte header length.
    #[error("not a valid safetensors file: shorter than its 8-byte header length")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::short_header),
        help("{}", CORRUPT)
    )]
    ShortHeader,
    /// A safetensors header longer than the file.
    #[error(
        "not a valid safetensors file: the header claims {claims} bytes but the file has {len}"
    )]
    #[diagnostic(
        code(shardplan::formats::checkpoint::header_past_end),
        help("{}", CORRUPT)
    )]
    HeaderPastEnd {
        /// The header length the file states.
        claims: u64,
        /// The file's length.
        len: u64,
    },
    /// A safetensors header longer than the format allows.
    #[error(
        "not a valid safetensors file: the header claims {claims} bytes, more than the format's {MAX_ST_HEADER}"
    )]
    #[diagnostic(
        code(shardplan::formats::checkpoint::header_too_long),
        help("{}", CORRUPT)
    )]
    HeaderTooLong {
        /// The header length the file states.
        claims: u64,
    },
    /// A safetensors header that does not open a JSON object.
    #[error("not a valid safetensors file: the header is not a JSON object (wrong magic)")]
    #[diagnostic(code(shardplan::formats::checkpoint::magic), help("{}", CORRUPT))]
    Magic,
    /// A safetensors header that is not valid JSON.
    #[error("not a valid safetensors file: header JSON: {0}")]
    #[diagnostic(code(shardplan::formats::checkpoint::header_json), help("{}", CORRUPT))]
    HeaderJson(#[source] serde_json::Error),
    /// A safetensors entry without the field named, or with one of the
    /// wrong type (`__metadata__` not an object; a tensor without `dtype`,
    /// `shape` or `data_offsets`).
    #[error("not a valid safetensors file: {}", header_field_message(.tensor, .field))]
    #[diagnostic(
        code(shardplan::formats::checkpoint::header_field),
        help("{}", CORRUPT)
    )]
    HeaderField {
        /// The tensor (`__metadata__` for the metadata).
        tensor: String,
        /// The field.
        field: &'static str,
    },
    /// A tensor whose data offsets lie outside the data.
    #[error("tensor `{tensor}`: data_offsets {offsets:?} lie outside the {data_len} data bytes")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::offsets_outside),
        help("the header lies about sizes; the file is truncated or corrupt")
    )]
    OffsetsOutside {
        /// The tensor.
        tensor: String,
        /// Its `data_offsets`.
        offsets: [u64; 2],
        /// The bytes after the header.
        data_len: u64,
    },
    /// Two tensors whose data overlap.
    #[error("tensors `{first}` and `{second}` overlap")]
    #[diagnostic(code(shardplan::formats::checkpoint::overlap), help("{}", LYING))]
    Overlap {
        /// The tensor that starts first.
        first: String,
        /// The one that starts inside it.
        second: String,
    },
    /// A folder of rank folders that cannot be listed.
    #[error(transparent)]
    #[diagnostic(
        code(shardplan::formats::checkpoint::rank_dir),
        help("pass the directory that holds the rank_<r> folders")
    )]
    RankDir(std::io::Error),
    /// A rank folder, or an entry of the folder, that cannot be read.
    #[error(transparent)]
    #[diagnostic(
        code(shardplan::formats::checkpoint::list),
        help("check the directory")
    )]
    List(std::io::Error),
    /// A rank folder named `rank_<r>` with more after the number.
    #[error("`{folder}` names rank {rank} with extra characters")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::rank_name),
        help("rank folders are named rank_<r>, e.g. rank_0")
    )]
    RankName {
        /// The folder's name.
        folder: String,
        /// The rank it names.
        rank: u64,
    },
    /// A rank folder without a checkpoint file.
    #[error("holds no .ckpt or .safetensors file")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::empty_rank),
        help("each rank folder holds that rank's checkpoint")
    )]
    EmptyRank,
    /// Two folders naming one rank.
    #[error("rank {rank} appears twice")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::rank_twice),
        help("keep one folder per rank")
    )]
    RankTwice {
        /// The rank.
        rank: u64,
    },
    /// A folder without rank folders.
    #[error("holds no rank_<r> folders")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::no_ranks),
        help("pass the directory that holds the rank_<r> folders")
    )]
    NoRanks,
    /// Rank folders with a gap.
    #[error("rank folders skip from {after} to {next}")]
    #[diagnostic(
        code(shardplan::formats::checkpoint::rank_gap),
        help("every rank from 0 to the last needs a folder")
    )]
    RankGap {
        /// The last rank before the gap.
        after: u64,
        /// The first rank after it.
        next: u64,
    },
}

fn header_field_message(tensor: &str, field: &str) -> String {
    match field {
        "__metadata__" => "`__metadata__` is not an object".to_string(),
        "dtype" => format!("tensor `{tensor}` has no dtype"),
        _ => format!("tensor `{tensor}` has no valid {field}"),
    }
}

fn bad(path: &Path, fault: CheckpointFault) -> CheckpointError {
    CheckpointError {
        file: path.display().to_string(),
        fault,
    }
}

/// MindSpore tensor type names.
fn ms_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "Float64" => DType::F64,
        "Float32" => DType::F32,
        "Float16" => DType::F16,
        "BFloat16" => DType::BF16,
        "Int64" => DType::I64,
        "Int32" => DType::I32,
        "Int16" => DType::I16,
        "Int8" => DType::I8,
        "UInt64" => DType::U64,
        "UInt32" => DType::U32,
        "UInt16" => DType::U16,
        "UInt8" => DType::U8,
        "Bool" => DType::Bool,
        _ => return None,
    })
}

fn ms_dtype_name(d: DType) -> &'static str {
    match d {
        DType::F64 => "Float64",
        DType::F32 => "Float32",
        DType::F16 => "Float16",
        DType::BF16 => "BFloat16",
        DType::I64 => "Int64",
        DType::I32 => "Int32",
        DType::I16 => "Int16",
        DType::I8 => "Int8",
        DType::U64 => "UInt64",
        DType::U32 => "UInt32",
        DType::U16 => "UInt16",
        DType::U8 => "UInt8",
        DType::Bool => "Bool",
    }
}

fn st_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        "U64" => DType::U64,
        "U32" => DType::U32,
        "U16" => DType::U16,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// The safetensors name of a dtype (`BF16`, `F32`, ...).
pub(crate) fn st_dtype_name(d: DType) -> &'static str {
    match d {
        DType::F64 => "F64",
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::I8 => "I8",
        DType::U64 => "U64",
        DType::U32 => "U32",
        DType::U16 => "U16",
        DType::U8 => "U8",
        DType::Bool => "BOOL",
    }
}

/// Reads the index of a checkpoint file (format by extension).
///
/// The file is memory-mapped and only its headers are touched; tensor
/// data is not read.
///
/// # Errors
///
/// [`CheckpointError`] for an unreadable file, an unknown extension, a
/// truncated file, wrong magic or header, a header that lies about sizes
/// (data past the end, overlapping tensors, a byte count that does not
/// match dtype and shape), an unknown dtype, or a name listed twice.
pub fn read_index(path: &Path) -> Result<CheckpointIndex, CheckpointError> {
    let format =
        CheckpointFormat::of_path(path).ok_or_else(|| bad(path, CheckpointFault::Extension))?;
    let map = open_map(path)?;
    parse_index(path, &map, format)
}

/// Opens a non-empty file and maps it.
fn open_map(path: &Path) -> Result<memmap2::Mmap, CheckpointError> {
    let file = File::open(path).map_err(|e| bad(path, CheckpointFault::Open(e)))?;
    let len = file
        .metadata()
        .map_err(|e| bad(path, CheckpointFault::Stat(e)))?
        .len();
    if len == 0 {
        return Err(bad(path, CheckpointFault::Empty));
    }
    map_file(path, &file)
}

#[allow(unsafe_code)] // IO: see the SAFETY comment inside
fn map_file(path: &Path, file: &File) -> Result<memmap2::Mmap, CheckpointError> {
    // SAFETY: the map is read-only and private to the caller; a concurrent
    // truncation of the file by another process could fault, which is the
    // documented hazard of memory-mapping and the reason sources must not
    // be modified while a reshard runs.
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| bad(path, CheckpointFault::Map(e)))
}

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

/// The index of checkpoint bytes already in memory (`path` only names them
/// in errors). [`read_index`] calls this on a memory map.
///
/// # Errors
///
/// As [`read_index`], for the content checks.
pub fn parse_index(
    path: &Path,
    bytes: &[u8],
    format: CheckpointFormat,
) -> Result<CheckpointIndex, CheckpointError> {
    if bytes.is_empty() {
        return Err(bad(path, CheckpointFault::Empty));
    }
    let tensors = match format {
        CheckpointFormat::Ckpt => index_ckpt(path, bytes)?,
        CheckpointFormat::Safetensors => index_safetensors(path, bytes)?,
    };
    Ok(CheckpointIndex {
        path: path.to_path_buf(),
        format,
        tensors,
    })
}

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

fn index_ckpt(path: &Path, b: &[u8]) -> Result<BTreeMap<String, TensorEntry>, CheckpointError> {
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

/// Checks that `len` bytes hold a `dtype` tensor of `shape`.
fn entry(
    path: &Path,
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    offset: u64,
    len: u64,
) -> Result<TensorEntry, CheckpointError> {
    let want = crate::element_count(&shape)
        .ok()
        .and_then(|n| n.checked_mul(dtype.size_bytes()));
    if want != Some(len) {
        return Err(bad(
            path,
            CheckpointFault::ByteCount {
                tensor: name,
                shape,
                dtype,
                needs: want,
                holds: len,
            },
        ));
    }
    Ok(TensorEntry {
        name,
        dtype,
        shape,
        offset,
        len,
    })
}

fn index_safetensors(
    path: &Path,
    b: &[u8],
) -> Result<BTreeMap<String, TensorEntry>, CheckpointError> {
    index_safetensors_with_metadata(path, b).map(|(tensors, _)| tensors)
}

/// The safetensors format's own bound on the header (the reference reader
/// refuses more), so a hostile length cannot make the JSON parser allocate
/// without limit.
const MAX_ST_HEADER: u64 = 100_000_000;

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

/// Streams tensors into a new checkpoint file. The header (safetensors) or
/// each record's framing (ckpt) is written from the declared tensors, so
/// data can be added one tensor at a time.
pub struct CheckpointWriter {
    out: Out,
    format: CheckpointFormat,
    pending: Vec<(String, DType, Vec<u64>)>,
    next: usize,
    /// For a framed file, the bytes around each tensor.
    frames: Option<Vec<Frame>>,
    /// The checksum of the current tensor's data, when its suffix needs it.
    crc: Option<crc32fast::Hasher>,
}

/// The bytes a framed file puts around one tensor's data: a Hugging Face
/// shard's header before its first tensor, a `torch.save` archive's
/// records around each tensor of a DCP file.
pub struct Frame {
    /// Bytes before the data.
    pub prefix: Vec<u8>,
    /// Bytes after the data, computed from the CRC-32 of the data (zip
    /// records carry it); `None` writes nothing.
    #[allow(clippy::type_complexity)]
    pub suffix: Option<Box<dyn Fn(u32) -> Vec<u8> + Send + Sync>>,
}

impl CheckpointWriter {
    /// Starts writing `tensors` (name, dtype, shape), in that order, to the
    /// open file `file`.
    ///
    /// # Errors
    ///
    /// IO errors.
    pub fn new(
        file: File,
        format: CheckpointFormat,
        tensors: Vec<(String, DType, Vec<u64>)>,
    ) -> std::io::Result<Self> {
        let out = Out::Buffered(Summed {
            inner: BufWriter::with_capacity(1 << 20, file),
            sum: Checksum::default(),
        });
        Self::start(out, format, tensors)
    }

    /// Creates `path` and starts writing `tensors` to it through a
    /// `StreamFile` (`formats/io/stream.rs`): windows of `window` bytes filled in place
    /// ([`CheckpointWriter::write_tensor_with`]) and written by background
    /// threads, with direct IO when `direct` is asked and the file system
    /// supports it.
    ///
    /// # Errors
    ///
    /// IO errors.
    pub fn create_streamed(
        path: &Path,
        format: CheckpointFormat,
        tensors: Vec<(String, DType, Vec<u64>)>,
        window: usize,
        direct: bool,
    ) -> std::io::Result<Self> {
        let out = Out::Stream(StreamFile::create(path, window, direct)?);
        Self::start(out, format, tensors)
    }

    /// Creates `path` as [`CheckpointWriter::create_streamed`] does, for a
    /// file whose framing the caller computed: each tensor's data is
    /// written between its frame's prefix and suffix, nothing else.
    ///
    /// # Errors
    ///
    /// IO errors; `InvalidInput` when there is not one frame per tensor.
    pub fn create_framed(
        path: &Path,
        tensors: Vec<(String, DType, Vec<u64>)>,
        frames: Vec<Frame>,
        window: usize,
        direct: bool,
    ) -> std::io::Result<Self> {
        if frames.len() != tensors.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "one frame per tensor is needed",
            ));
        }
        Ok(CheckpointWriter {
            out: Out::Stream(StreamFile::create(path, window, direct)?),
            format: CheckpointFormat::Safetensors,
            pending: tensors,
            next: 0,
            frames: Some(frames),
            crc: None,
        })
    }

    /// True when the output bypasses the page cache (direct IO).
    pub fn is_direct(&self) -> bool {
        matches!(&self.out, Out::Stream(s) if s.is_direct())
    }

    fn start(
        mut out: Out,
        format: CheckpointFormat,
        tensors: Vec<(String, DType, Vec<u64>)>,
    ) -> std::io::Result<Self> {
        if format == CheckpointFormat::Safetensors {
            let mut header = serde_json::Map::new();
            let mut meta = serde_json::Map::new();
            meta.insert("format".into(), "ms".into());
            header.insert("__metadata__".into(), meta.into());
            let mut off = 0u64;
            for (name, dtype, shape) in &tensors {
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
            out.write_all(&(json.len() as u64).to_le_bytes())?;
            out.write_all(&json)?;
        }
        Ok(CheckpointWriter {
            out,
            format,
            pending: tensors,
            next: 0,
            frames: None,
            crc: None,
        })
    }

    /// Appends the data of the next declared tensor.
    ///
    /// # Errors
    ///
    /// IO errors; `InvalidInput` when the data's length does not match the
    /// declared tensor or all tensors are written.
    pub fn write_tensor(&mut self, data: &[u8]) -> std::io::Result<()> {
        let want = self.next_len()?;
        if data.len() as u64 != want {
            let name = &self.pending[self.next].0;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("tensor `{name}`: {} bytes, declared {want}", data.len()),
            ));
        }
        self.framing(want)?;
        self.out.write_all(data)?;
        if let Some(h) = &mut self.crc {
            h.update(data);
        }
        self.close_frame()
    }

    /// Appends the data of the next declared tensor, filled in place:
    /// `fill(offset, bytes)` must fill `bytes` with the tensor's data from
    /// byte `offset` on. It is called for consecutive ranges covering the
    /// tensor, each at most a window long.
    ///
    /// # Errors
    ///
    /// IO errors, `fill`'s errors, and `InvalidInput` when all tensors are
    /// written.
    pub fn write_tensor_with(
        &mut self,
        mut fill: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let len = self.next_len()?;
        self.framing(len)?;
        let mut at = 0u64;
        match &mut self.out {
            Out::Stream(s) => {
                while at < len {
                    let space = s.space();
                    let k = (space.len() as u64).min(len - at) as usize;
                    fill(at, &mut space[..k])?;
                    if let Some(h) = &mut self.crc {
                        h.update(&space[..k]);
                    }
                    s.commit(k)?;
                    at += k as u64;
                }
            }
            Out::Buffered(w) => {
                let mut buf = vec![0u8; (len.min(1 << 20)) as usize];
                while at < len {
                    let k = (buf.len() as u64).min(len - at) as usize;
                    fill(at, &mut buf[..k])?;
                    if let Some(h) = &mut self.crc {
                        h.update(&buf[..k]);
                    }
                    w.write_all(&buf[..k])?;
                    at += k as u64;
                }
            }
        }
        self.close_frame()
    }

    /// Ends the current tensor: its frame's suffix, then on to the next.
    fn close_frame(&mut self) -> std::io::Result<()> {
        let crc = self.crc.take().map(crc32fast::Hasher::finalize);
        if let Some(frame) = self.frames.as_ref().and_then(|f| f.get(self.next))
            && let Some(suffix) = &frame.suffix
        {
            let bytes = suffix(crc.unwrap_or(0));
            self.out.write_all(&bytes)?;
        }
        self.next += 1;
        Ok(())
    }

    /// Bytes of the next declared tensor.
    fn next_len(&self) -> std::io::Result<u64> {
        let (_, dtype, shape) = self.pending.get(self.next).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "more tensors than declared",
            )
        })?;
        Ok(shape.iter().product::<u64>() * dtype.size_bytes())
    }

    /// Writes what precedes the next tensor's `len` data bytes: nothing in
    /// safetensors (the header declared it), the record framing in ckpt.
    fn framing(&mut self, len: u64) -> std::io::Result<()> {
        if let Some(frame) = self.frames.as_ref().and_then(|f| f.get(self.next)) {
            self.crc = frame.suffix.as_ref().map(|_| crc32fast::Hasher::new());
            let prefix = frame.prefix.clone();
            return self.out.write_all(&prefix);
        }
        let (name, dtype, shape) = &self.pending[self.next];
        match self.format {
            CheckpointFormat::Safetensors => {}
            CheckpointFormat::Ckpt => {
                let mut tensor = Vec::new();
                for &d in shape {
                    put_varint(&mut tensor, 1 << 3);
                    put_varint(&mut tensor, d);
                }
                put_bytes(&mut tensor, 2, ms_dtype_name(*dtype).as_bytes());
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
                self.out.write_all(&record)?;
                self.out.write_all(&value)?;
                self.out.write_all(&tensor)?;
            }
        }
        Ok(())
    }

    /// Flushes and fsyncs; returns the file.
    ///
    /// # Errors
    ///
    /// IO errors; `InvalidInput` when declared tensors are missing.
    pub fn finish(self) -> std::io::Result<File> {
        self.finish_summed().map(|(f, _)| f)
    }

    /// As [`CheckpointWriter::finish`], also returning the checksum of every
    /// byte written, computed on the way out (no second read of the file).
    ///
    /// # Errors
    ///
    /// As [`CheckpointWriter::finish`].
    pub fn finish_summed(self) -> std::io::Result<(File, Checksum)> {
        if self.next != self.pending.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "fewer tensors than declared",
            ));
        }
        match self.out {
            Out::Buffered(w) => {
                let sum = w.sum;
                let file = w.inner.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok((file, sum))
            }
            Out::Stream(s) => s.finish().map(|(file, _, sum)| (file, sum)),
        }
    }
}

/// Where a [`CheckpointWriter`]'s bytes go.
enum Out {
    Buffered(Summed<BufWriter<File>>),
    Stream(StreamFile),
}

impl Out {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Buffered(w) => w.write_all(bytes),
            Out::Stream(s) => s.put(bytes),
        }
    }
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

/// Checkpoint files by rank, from a directory of `rank_<r>/` folders, each
/// holding one or more checkpoint files (several in MindSpore's by-stage
/// output, `..._part<s>.ckpt`).
///
/// # Errors
///
/// [`CheckpointError`] for a missing directory, a folder that is not
/// `rank_<number>`, duplicate ranks, missing ranks (a gap in 0..n), or a
/// rank folder without checkpoint files.
pub fn rank_files(dir: &Path) -> Result<BTreeMap<u64, Vec<PathBuf>>, CheckpointError> {
    let entries = std::fs::read_dir(dir).map_err(|e| bad(dir, CheckpointFault::RankDir(e)))?;
    let mut out: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for e in entries {
        let e = e.map_err(|e| bad(dir, CheckpointFault::List(e)))?;
        let path = e.path();
        let fname = e.file_name().to_string_lossy().into_owned();
        if !path.is_dir() {
            continue;
        }
        let Some(rank) = fname
            .strip_prefix("rank_")
            .and_then(|r| r.parse::<u64>().ok())
        else {
            continue;
        };
        if fname != format!("rank_{rank}") {
            return Err(bad(
                &path,
                CheckpointFault::RankName {
                    folder: fname,
                    rank,
                },
            ));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
            .map_err(|e| bad(&path, CheckpointFault::List(e)))?
            .filter_map(|f| f.ok().map(|f| f.path()))
            .filter(|p| CheckpointFormat::of_path(p).is_some())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(bad(&path, CheckpointFault::EmptyRank));
        }
        if out.insert(rank, files).is_some() {
            return Err(bad(dir, CheckpointFault::RankTwice { rank }));
        }
    }
    if out.is_empty() {
        return Err(bad(dir, CheckpointFault::NoRanks));
    }
    if let Some((i, r)) = out.keys().enumerate().find(|(i, r)| **r != *i as u64) {
        return Err(bad(
            dir,
            CheckpointFault::RankGap {
                after: i.saturating_sub(1) as u64,
                next: *r,
            },
        ));
    }
    Ok(out)
}

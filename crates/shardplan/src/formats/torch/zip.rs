//! One `torch.save` archive holding one tensor, as PyTorch DCP's default
//! writer puts them one after another in a `.distcp` file: a zip (stored,
//! not compressed) of `<archive>/data.pkl`, a pickle that rebuilds the
//! tensor through `torch._utils._rebuild_tensor_v2`, and
//! `<archive>/data/<key>`, the storage's raw little-endian bytes.
//!
//! The zip is read from its central directory (the local headers of
//! PyTorch's writer leave sizes to a data descriptor), every offset is
//! checked against the item, and `data.pkl` goes through the restricted
//! [`pickle`](super::pickle) machine. Nothing of the tensor's bytes is
//! read.

use std::fmt;
use std::path::{Path, PathBuf};

use super::pickle::{PickleError, PickleLimits, TORCH_SAVE_GLOBALS, Value, unpickle};
use crate::DType;
use crate::formats::dtype_names::{storage_dtype, torch_dtype};

/// Where the one tensor of an archive is, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchSaveTensor {
    /// Element type, from the storage class.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// Offset of the first element from the start of the archive.
    pub data_offset: u64,
    /// Byte length: elements times the dtype's width.
    pub data_len: u64,
}

/// An archive that cannot be read: the file, where the archive starts in
/// it, what it should hold, and the fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {what}: torch.save item at byte {item_offset}: {kind}", file.display())]
pub struct TorchItemError {
    /// The `.distcp` file.
    pub file: PathBuf,
    /// Where the archive starts in it.
    pub item_offset: u64,
    /// What it should hold (a tensor and chunk).
    pub what: String,
    /// What is wrong.
    pub kind: TorchItemFault,
}

impl miette::Diagnostic for TorchItemError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.kind.code()
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.kind.help()
    }
}

const REWRITE: &str = "the .distcp file is truncated or altered, or was not written by torch.distributed.checkpoint; write the checkpoint again";

/// The faults of [`TorchItemError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum TorchItemFault {
    /// No zip end-of-central-directory record at the end of the item.
    #[error("the item is not a zip archive (no end of central directory)")]
    #[diagnostic(code(shardplan::formats::torch_zip::not_zip), help("{REWRITE}"))]
    NotZip,
    /// A zip structure out of bounds or with a wrong signature.
    #[error("broken zip at archive byte {at}: {reason}")]
    #[diagnostic(code(shardplan::formats::torch_zip::bad_zip), help("{REWRITE}"))]
    BadZip {
        /// Offset from the start of the archive.
        at: u64,
        /// What is wrong there.
        reason: &'static str,
    },
    /// More zip entries than an archive of one tensor has.
    #[error("{count} zip entries, more than the limit of {limit}")]
    #[diagnostic(
        code(shardplan::formats::torch_zip::too_many_entries),
        help("{REWRITE}")
    )]
    TooManyEntries {
        /// Entries declared.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A compressed or encrypted entry: its bytes cannot be addressed.
    #[error("zip entry {name} is compressed (method {method}) or encrypted")]
    #[diagnostic(
        code(shardplan::formats::torch_zip::compressed),
        help(
            "torch.save stores entries uncompressed; write the checkpoint again with torch.distributed.checkpoint"
        )
    )]
    Compressed {
        /// Entry name.
        name: String,
        /// Zip compression method.
        method: u16,
    },
    /// A small entry whose CRC-32 does not match.
    #[error("zip entry {name} fails its CRC-32 check")]
    #[diagnostic(code(shardplan::formats::torch_zip::crc), help("{REWRITE}"))]
    Crc {
        /// Entry name.
        name: String,
    },
    /// No `<archive>/data.pkl`.
    #[error("no */data.pkl in the archive")]
    #[diagnostic(code(shardplan::formats::torch_zip::no_data_pkl), help("{REWRITE}"))]
    NoDataPkl,
    /// The storage record `data.pkl` names is absent.
    #[error("no record {name} in the archive")]
    #[diagnostic(code(shardplan::formats::torch_zip::no_record), help("{REWRITE}"))]
    NoRecord {
        /// The record's name.
        name: String,
    },
    /// `data.pkl` refused by the pickle machine.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Pickle(Box<PickleError>),
    /// `data.pkl` is not one `_rebuild_tensor_v2` of a persistent storage.
    #[error("data.pkl does not rebuild one tensor: {reason}")]
    #[diagnostic(
        code(shardplan::formats::torch_zip::not_a_tensor),
        help(
            "each DCP item holds one plain dense tensor; tensor subclasses and other objects are not read"
        )
    )]
    NotATensor {
        /// What differs.
        reason: &'static str,
    },
    /// A storage class that is no supported dtype.
    #[error("storage class {class} is not a supported dtype")]
    #[diagnostic(
        code(shardplan::formats::torch_zip::unknown_storage),
        help("supported: f64 f32 f16 bf16 i64 i32 i16 i8 u64 u32 u16 u8 bool")
    )]
    UnknownStorage {
        /// `module.name` of the class.
        class: String,
    },
    /// Strides that are not row-major contiguous.
    #[error("shape {shape:?} with strides {strides:?} is not row-major contiguous")]
    #[diagnostic(
        code(shardplan::formats::torch_zip::not_contiguous),
        help("save contiguous tensors (tensor.contiguous()) before dcp.save")
    )]
    NotContiguous {
        /// Shape.
        shape: Vec<u64>,
        /// Strides.
        strides: Vec<u64>,
    },
    /// A tensor that starts past the beginning of its storage.
    #[error("the tensor starts at element {offset} of its storage (0 expected)")]
    #[diagnostic(
        code(shardplan::formats::torch_zip::storage_offset),
        help("save tensors that own their storage (tensor.clone()) before dcp.save")
    )]
    StorageOffset {
        /// Storage offset in elements.
        offset: u64,
    },
    /// A storage record of another size than `data.pkl` says, or too small
    /// for the tensor.
    #[error("record {name} is {len} bytes; {needed} expected")]
    #[diagnostic(code(shardplan::formats::torch_zip::storage_size), help("{REWRITE}"))]
    StorageSize {
        /// Record name.
        name: String,
        /// Its length.
        len: u64,
        /// What the storage and tensor need.
        needed: u64,
    },
    /// A `byteorder` record other than `little`.
    #[error("byte order {found:?}; only little-endian archives are read")]
    #[diagnostic(
        code(shardplan::formats::torch_zip::byte_order),
        help("write the checkpoint on a little-endian machine")
    )]
    ByteOrder {
        /// The record's text.
        found: String,
    },
}

impl From<PickleError> for TorchItemFault {
    #[cold]
    fn from(e: PickleError) -> Self {
        TorchItemFault::Pickle(Box::new(e))
    }
}

/// Reads the one tensor of the `torch.save` archive `item`, which starts
/// at `item_offset` in `file` (both name it in errors), expected to hold
/// `what`.
///
/// # Errors
///
/// [`TorchItemError`] when the item is not a zip, a zip structure lies
/// outside the item, an entry is compressed or encrypted, a small entry
/// fails its CRC, `data.pkl` or its storage record is missing, the pickle
/// is refused or is not one `_rebuild_tensor_v2` of a typed storage, the
/// storage class is no supported dtype, the tensor is not contiguous or
/// does not start at its storage's beginning, the record's size does not
/// match, or the archive is big-endian.
pub fn read_torch_save_item(
    file: &Path,
    item_offset: u64,
    what: &str,
    item: &[u8],
) -> Result<TorchSaveTensor, TorchItemError> {
    read_item(file, item_offset, item).map_err(|kind| TorchItemError {
        file: file.to_path_buf(),
        item_offset,
        what: what.to_string(),
        kind,
    })
}

type Step<T> = Result<T, TorchItemFault>;

/// Zip entries an archive may declare: torch.save writes seven for one
/// tensor.
const MAX_ENTRIES: u64 = 4096;
/// The largest `data.pkl` of one tensor.
const MAX_DATA_PKL: u64 = 1 << 20;

fn read_item(file: &Path, item_offset: u64, item: &[u8]) -> Step<TorchSaveTensor> {
    let entries = central_directory(item)?;
    let pkl = entries
        .iter()
        .find(|e| e.name.ends_with("/data.pkl") && !e.name.contains("/data/"))
        .ok_or(TorchItemFault::NoDataPkl)?;
    let prefix = pkl.name.trim_end_matches("data.pkl");
    if let Some(order) = entries
        .iter()
        .find(|e| e.name == format!("{prefix}byteorder"))
    {
        let text = small_record(item, order)?;
        if text != b"little" {
            return Err(TorchItemFault::ByteOrder {
                found: String::from_utf8_lossy(text).into_owned(),
            });
        }
    }
    let pkl_bytes = small_record(item, pkl)?;
    let label = PathBuf::from(format!(
        "{}, torch.save item at byte {item_offset}, {}",
        file.display(),
        pkl.name
    ));
    let limits = PickleLimits {
        max_input: MAX_DATA_PKL as usize,
        max_stack: 1024,
        max_depth: 64,
        max_memo: 4096,
        max_len: 4096,
        max_values: 1 << 16,
    };
    let value = unpickle(&label, pkl_bytes, TORCH_SAVE_GLOBALS, &limits)?;
    let rebuilt = rebuild_args(&value)?;
    let record_name = format!("{prefix}data/{}", rebuilt.key);
    let record = entries
        .iter()
        .find(|e| e.name == record_name)
        .ok_or(TorchItemFault::NoRecord { name: record_name })?;
    let data_offset = record_data(item, record)?;
    check_layout(&rebuilt)?;
    let width = rebuilt.dtype.size_bytes();
    let storage_len = rebuilt.storage_numel.checked_mul(width);
    let numel = rebuilt
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d));
    let data_len = numel.and_then(|n| n.checked_mul(width));
    match (storage_len, data_len) {
        (Some(s), Some(d)) if s == record.size && d <= s => Ok(TorchSaveTensor {
            dtype: rebuilt.dtype,
            shape: rebuilt.shape,
            data_offset,
            data_len: d,
        }),
        (s, d) => Err(TorchItemFault::StorageSize {
            name: record.name.clone(),
            len: record.size,
            needed: s.zip(d).map_or(u64::MAX, |(s, d)| s.max(d)),
        }),
    }
}

/// One central directory entry.
struct Entry {
    name: String,
    size: u64,
    crc: u32,
    local_offset: u64,
    method: u16,
    flags: u16,
}

fn bad(at: u64, reason: &'static str) -> TorchItemFault {
    TorchItemFault::BadZip { at, reason }
}

fn slice<'b>(b: &'b [u8], at: u64, len: u64, reason: &'static str) -> Step<&'b [u8]> {
    let start = usize::try_from(at).map_err(|_| bad(at, reason))?;
    let n = usize::try_from(len).map_err(|_| bad(at, reason))?;
    start
        .checked_add(n)
        .and_then(|end| b.get(start..end))
        .ok_or(bad(at, reason))
}

fn le(b: &[u8], at: usize, width: usize) -> u64 {
    b.get(at..at.saturating_add(width))
        .unwrap_or_default()
        .iter()
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

const EOCD: &[u8; 4] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;

/// The entries of the central directory, found from the end record (or
/// its zip64 form when the classic fields overflow).
fn central_directory(item: &[u8]) -> Step<Vec<Entry>> {
    let eocd_at = find_eocd(item).ok_or(TorchItemFault::NotZip)?;
    let eocd = slice(
        item,
        eocd_at as u64,
        EOCD_LEN as u64,
        "end of central directory",
    )?;
    let (mut count, mut cd_size, mut cd_at) = (le(eocd, 10, 2), le(eocd, 12, 4), le(eocd, 16, 4));
    if count == 0xffff || cd_size == 0xffff_ffff || cd_at == 0xffff_ffff {
        (count, cd_size, cd_at) = zip64_end(item, eocd_at)?;
    }
    if count > MAX_ENTRIES {
        return Err(TorchItemFault::TooManyEntries {
            count,
            limit: MAX_ENTRIES,
        });
    }
    let cd = slice(item, cd_at, cd_size, "central directory outside the item")?;
    let mut entries = Vec::new();
    let mut pos = 0usize;
    for _ in 0..count {
        let (entry, next) = cd_entry(cd, pos, cd_at)?;
        entries.push(entry);
        pos = next;
    }
    Ok(entries)
}

/// The last end record whose comment reaches exactly the item's end.
fn find_eocd(item: &[u8]) -> Option<usize> {
    let last = item.len().checked_sub(EOCD_LEN)?;
    let first = last.saturating_sub(0xffff);
    (first..=last).rev().find(|&at| {
        item.get(at..at + 4) == Some(EOCD.as_slice())
            && at + EOCD_LEN + le(item, at + 20, 2) as usize == item.len()
    })
}

fn zip64_end(item: &[u8], eocd_at: usize) -> Step<(u64, u64, u64)> {
    let loc_at = eocd_at
        .checked_sub(20)
        .ok_or(bad(eocd_at as u64, "no zip64 locator"))?;
    let loc = slice(item, loc_at as u64, 20, "zip64 locator")?;
    if loc.get(..4) != Some(b"PK\x06\x07".as_slice()) {
        return Err(bad(loc_at as u64, "no zip64 locator"));
    }
    let rec_at = le(loc, 8, 8);
    let rec = slice(item, rec_at, 56, "zip64 end record outside the item")?;
    if rec.get(..4) != Some(b"PK\x06\x06".as_slice()) {
        return Err(bad(rec_at, "bad zip64 end record signature"));
    }
    Ok((le(rec, 32, 8), le(rec, 40, 8), le(rec, 48, 8)))
}

/// The central directory entry at `pos` and the position after it.
fn cd_entry(cd: &[u8], pos: usize, cd_at: u64) -> Step<(Entry, usize)> {
    let at = cd_at.saturating_add(pos as u64);
    let head = slice(cd, pos as u64, 46, "central directory entry past its end")?;
    if head.get(..4) != Some(b"PK\x01\x02".as_slice()) {
        return Err(bad(at, "bad central directory signature"));
    }
    let (name_len, extra_len, comment_len) = (le(head, 28, 2), le(head, 30, 2), le(head, 32, 2));
    let name = slice(
        cd,
        pos as u64 + 46,
        name_len,
        "entry name past the directory",
    )?;
    let extra = slice(
        cd,
        pos as u64 + 46 + name_len,
        extra_len,
        "entry extra past the directory",
    )?;
    let name = String::from_utf8(name.to_vec()).map_err(|_| bad(at, "entry name is not UTF-8"))?;
    let mut size = le(head, 24, 4);
    let mut compressed = le(head, 20, 4);
    let mut local_offset = le(head, 42, 4);
    zip64_extra(extra, &mut size, &mut compressed, &mut local_offset);
    if compressed != size {
        return Err(TorchItemFault::Compressed {
            name,
            method: le(head, 10, 2) as u16,
        });
    }
    let next = pos + 46 + (name_len + extra_len + comment_len) as usize;
    Ok((
        Entry {
            name,
            size,
            crc: le(head, 16, 4) as u32,
            local_offset,
            method: le(head, 10, 2) as u16,
            flags: le(head, 8, 2) as u16,
        },
        next,
    ))
}

/// Replaces the overflowed fields by those of the zip64 extra field, in
/// the order the zip spec gives them.
fn zip64_extra(extra: &[u8], size: &mut u64, compressed: &mut u64, offset: &mut u64) {
    let mut pos = 0usize;
    while pos + 4 <= extra.len() {
        let (id, len) = (le(extra, pos, 2), le(extra, pos + 2, 2) as usize);
        let body = extra.get(pos + 4..pos + 4 + len).unwrap_or_default();
        if id == 1 {
            let mut at = 0usize;
            for field in [size, compressed, offset] {
                if *field == 0xffff_ffff && at + 8 <= body.len() {
                    *field = le(body, at, 8);
                    at += 8;
                }
            }
            return;
        }
        pos += 4 + len;
    }
}

/// Offset of an entry's bytes from the start of the item, checked to lie
/// inside it.
fn record_data(item: &[u8], e: &Entry) -> Step<u64> {
    if e.method != 0 || e.flags & 1 != 0 {
        return Err(TorchItemFault::Compressed {
            name: e.name.clone(),
            method: e.method,
        });
    }
    let head = slice(item, e.local_offset, 30, "local header outside the item")?;
    if head.get(..4) != Some(b"PK\x03\x04".as_slice()) {
        return Err(bad(e.local_offset, "bad local header signature"));
    }
    let name = slice(
        item,
        e.local_offset + 30,
        le(head, 26, 2),
        "local name outside the item",
    )?;
    if name != e.name.as_bytes() {
        return Err(bad(e.local_offset, "local header names another entry"));
    }
    let start = e.local_offset + 30 + le(head, 26, 2) + le(head, 28, 2);
    slice(item, start, e.size, "entry data outside the item")?;
    Ok(start)
}

/// The bytes of a small entry, CRC-checked.
fn small_record<'a>(item: &'a [u8], e: &Entry) -> Step<&'a [u8]> {
    if e.size > MAX_DATA_PKL {
        return Err(bad(e.local_offset, "metadata entry larger than 1 MiB"));
    }
    let start = record_data(item, e)?;
    let bytes = slice(item, start, e.size, "entry data outside the item")?;
    if crc32fast::hash(bytes) != e.crc {
        return Err(TorchItemFault::Crc {
            name: e.name.clone(),
        });
    }
    Ok(bytes)
}

/// What `_rebuild_tensor_v2(storage, offset, size, stride, ...)` names.
struct Rebuilt {
    dtype: DType,
    key: String,
    storage_numel: u64,
    storage_offset: u64,
    shape: Vec<u64>,
    strides: Vec<u64>,
}

fn not_tensor(reason: &'static str) -> TorchItemFault {
    TorchItemFault::NotATensor { reason }
}

fn rebuild_args(v: &Value) -> Step<Rebuilt> {
    let Value::Object { class, args, state } = v else {
        return Err(not_tensor("the pickle is not a call"));
    };
    // v3 (what torch.save writes for dtypes without a typed storage class,
    // such as uint16) names an untyped storage and the dtype last.
    let v3 = class.is("torch._utils", "_rebuild_tensor_v3");
    if !(v3 || class.is("torch._utils", "_rebuild_tensor_v2")) || state.is_some() {
        return Err(not_tensor(
            "the pickle does not call _rebuild_tensor_v2 or _v3",
        ));
    }
    let [pid, offset, size, stride, ..] = args.as_slice() else {
        return Err(not_tensor(
            "_rebuild_tensor_v2 has fewer than four arguments",
        ));
    };
    let Value::PersistentId(pid) = pid else {
        return Err(not_tensor("the storage is not a persistent id"));
    };
    let Some([tag, storage_class, key, _location, numel]) = pid.as_seq() else {
        return Err(not_tensor(
            "the persistent id is not ('storage', class, key, location, numel)",
        ));
    };
    if tag.as_str() != Some("storage") {
        return Err(not_tensor("the persistent id is not a storage"));
    }
    let Value::Global(storage_class) = storage_class else {
        return Err(not_tensor("the storage class is not a global"));
    };
    let unknown = || TorchItemFault::UnknownStorage {
        class: storage_class.to_string(),
    };
    let numel = count(numel).ok_or(not_tensor("the storage size is not a count"))?;
    let (dtype, storage_numel) = if v3 {
        let Some(Value::Global(d)) = args.get(6) else {
            return Err(not_tensor("_rebuild_tensor_v3 names no dtype"));
        };
        let dtype = torch_dtype(&d.name)
            .filter(|_| d.module == "torch" && storage_class.is("torch.storage", "UntypedStorage"))
            .ok_or_else(unknown)?;
        // An untyped storage counts bytes.
        if !numel.is_multiple_of(dtype.size_bytes()) {
            return Err(not_tensor("the untyped storage is not whole elements"));
        }
        (dtype, numel / dtype.size_bytes())
    } else {
        let dtype = storage_dtype(&storage_class.name)
            .filter(|_| storage_class.module == "torch")
            .ok_or_else(unknown)?;
        (dtype, numel)
    };
    let key = key
        .as_str()
        .ok_or(not_tensor("the storage key is not a string"))?;
    // The key becomes part of a record name: keep it a plain name.
    if key.is_empty() || key.contains('/') || key.contains("..") {
        return Err(not_tensor("the storage key is not a plain name"));
    }
    Ok(Rebuilt {
        dtype,
        key: key.to_string(),
        storage_numel,
        storage_offset: count(offset).ok_or(not_tensor("the storage offset is not a count"))?,
        shape: counts(size).ok_or(not_tensor("the size is not a tuple of counts"))?,
        strides: counts(stride).ok_or(not_tensor("the stride is not a tuple of counts"))?,
    })
}

fn count(v: &Value) -> Option<u64> {
    v.as_int().and_then(|i| u64::try_from(i).ok())
}

fn counts(v: &Value) -> Option<Vec<u64>> {
    v.as_seq()?.iter().map(count).collect()
}

fn check_layout(r: &Rebuilt) -> Step<()> {
    if r.storage_offset != 0 {
        return Err(TorchItemFault::StorageOffset {
            offset: r.storage_offset,
        });
    }
    let not_contiguous = || TorchItemFault::NotContiguous {
        shape: r.shape.clone(),
        strides: r.strides.clone(),
    };
    if r.strides.len() != r.shape.len() {
        return Err(not_contiguous());
    }
    // Strides of dimensions of extent 1 never matter, as in PyTorch's own
    // contiguity test; an empty tensor has no layout at all.
    if r.shape.contains(&0) {
        return Ok(());
    }
    let mut expected = 1u64;
    for (&d, &s) in r.shape.iter().zip(&r.strides).rev() {
        if d != 1 && s != expected {
            return Err(not_contiguous());
        }
        expected = expected.checked_mul(d).ok_or_else(not_contiguous)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_garbage_items_are_not_zips() {
        for item in [&b""[..], b"PK", &[0u8; 100]] {
            let e = read_torch_save_item(Path::new("f"), 0, "t", item).unwrap_err();
            assert_eq!(e.kind, TorchItemFault::NotZip);
        }
    }

    #[test]
    fn end_record_pointing_outside_is_refused() {
        let mut item = vec![0u8; 10];
        item.extend_from_slice(EOCD);
        // disks, entries 1/1, directory 46 bytes at offset 1000.
        item.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0, 46, 0, 0, 0, 0xe8, 3, 0, 0, 0, 0]);
        let e = read_torch_save_item(Path::new("f"), 0, "t", &item).unwrap_err();
        assert!(matches!(e.kind, TorchItemFault::BadZip { .. }), "{e}");
    }

    #[test]
    fn strides_must_be_row_major() {
        let r = |shape: Vec<u64>, strides: Vec<u64>| Rebuilt {
            dtype: DType::F32,
            key: "0".into(),
            storage_numel: 0,
            storage_offset: 0,
            shape,
            strides,
        };
        assert!(check_layout(&r(vec![2, 3], vec![3, 1])).is_ok());
        assert!(check_layout(&r(vec![], vec![])).is_ok());
        assert!(check_layout(&r(vec![1, 3], vec![7, 1])).is_ok());
        assert!(matches!(
            check_layout(&r(vec![2, 3], vec![1, 2])),
            Err(TorchItemFault::NotContiguous { .. })
        ));
        let mut shifted = r(vec![2], vec![1]);
        shifted.storage_offset = 4;
        assert!(matches!(
            check_layout(&shifted),
            Err(TorchItemFault::StorageOffset { offset: 4 })
        ));
    }
}

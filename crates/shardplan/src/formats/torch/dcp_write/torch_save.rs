//! One `torch.save` archive of one tensor, as PyTorch's zip writer lays it
//! out, split around the raw tensor bytes so that a caller can stream them.
//!
//! The layout, record by record (the order `torch.save` writes):
//!
//! | record | contents |
//! |---|---|
//! | `archive/data.pkl` | protocol 2 pickle: `torch._utils._rebuild_tensor_v2(persistent storage, 0, shape, stride, False, OrderedDict())` |
//! | `archive/.format_version` | `1` |
//! | `archive/.storage_alignment` | `64` |
//! | `archive/byteorder` | `little` |
//! | `archive/data/0` | the raw bytes (streamed by the caller) |
//! | `archive/version` | `3` and a newline |
//! | `archive/.data/serialization_id` | 40 decimal digits |
//!
//! then the central directory, the zip64 end-of-central-directory record
//! and locator (PyTorch's writer always emits them), and the end record.
//! Every record is stored, flagged with a data descriptor (bit 3) and UTF-8
//! names (bit 11), and padded through an `FB` extra field so that its data
//! starts at a multiple of 64 bytes from the start of the archive.

use crate::DType;
use crate::formats::dtype_names::{storage_type, torch_dtype_name};

/// Data alignment inside an archive, relative to its first byte.
pub const STORAGE_ALIGNMENT: u64 = 64;

/// The zip sizes and offsets that need zip64 fields: PyTorch's writer (and
/// miniz's reader) use `>=`, so `0xFFFF_FFFF` itself already counts.
const ZIP32_LIMIT: u64 = 0xFFFF_FFFF;

const LOCAL_HEADER_LEN: u64 = 30;

/// The largest tensor an archive takes: what leaves room in `u64` for the
/// records around the data (a few KiB), so that no offset can overflow.
const MAX_DATA_LEN: u64 = u64::MAX - (1 << 20);
const FLAGS: u16 = 0x0808;

/// Where the pieces of one archive go, computed from its dtype and shape
/// alone: the caller writes [`TorchSaveItem::prefix`], then exactly
/// [`TorchSaveItem::data_len`] raw little-endian bytes (the tensor in
/// row-major order), then [`TorchSaveItem::suffix`] with the CRC-32 of
/// those bytes. `torch.load` reads the result as that tensor.
///
/// # Example
///
/// ```
/// use shardplan::DType;
/// use shardplan::formats::torch::dcp_write::TorchSaveItem;
///
/// let item = TorchSaveItem::new("archive", DType::F32, &[2, 3]).unwrap();
/// let data: Vec<u8> = (0..6u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
/// let mut bytes = item.prefix().to_vec();
/// assert_eq!(bytes.len() as u64, item.data_offset());
/// assert_eq!(item.data_offset() % 64, 0);
/// bytes.extend_from_slice(&data);
/// bytes.extend_from_slice(&item.suffix(crc32fast::hash(&data)));
/// assert_eq!(bytes.len() as u64, item.len());
/// assert!(TorchSaveItem::new("a/b", DType::F32, &[2]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchSaveItem {
    archive_name: String,
    data_len: u64,
    prefix: Vec<u8>,
    /// Records already written by the prefix, for the central directory.
    records: Vec<Record>,
    suffix_len: u64,
}

/// One record as the central directory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    name: String,
    header_offset: u64,
    len: u64,
    crc: u32,
}

/// An archive the caller cannot have: see [`TorchSaveItem::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ItemError {
    #[error("archive name `{0}` is empty, contains `/` or is too long")]
    ArchiveName(String),
    #[error("the tensor's byte length overflows u64")]
    Overflow,
}

impl TorchSaveItem {
    /// The archive of a tensor of `dtype` and `shape` (row-major,
    /// contiguous). DCP's writer names every archive `archive` (what
    /// `torch.save` uses for a stream); the name is the folder of every
    /// record.
    ///
    /// # Errors
    ///
    /// [`DcpWriteError::ArchiveName`](super::DcpWriteError::ArchiveName)
    /// when `archive_name` is empty, holds `/` or is longer than 200 bytes;
    /// [`DcpWriteError::SizeOverflow`](super::DcpWriteError::SizeOverflow)
    /// when the byte length of the tensor does not fit in `u64`.
    pub fn new(
        archive_name: &str,
        dtype: DType,
        shape: &[u64],
    ) -> Result<TorchSaveItem, super::DcpWriteError> {
        Self::build(archive_name, dtype, shape).map_err(|e| match e {
            ItemError::ArchiveName(name) => super::DcpWriteError::ArchiveName { name },
            ItemError::Overflow => super::DcpWriteError::SizeOverflow {
                what: format!("an archive of {dtype} {shape:?}"),
            },
        })
    }

    pub(crate) fn build(
        archive_name: &str,
        dtype: DType,
        shape: &[u64],
    ) -> Result<TorchSaveItem, ItemError> {
        // The name is a path component of every record; 200 bytes keeps the
        // longest record name far below the u16 the zip headers allow.
        if archive_name.is_empty() || archive_name.contains('/') || archive_name.len() > 200 {
            return Err(ItemError::ArchiveName(archive_name.to_string()));
        }
        let numel = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or(ItemError::Overflow)?;
        let data_len = numel
            .checked_mul(dtype.size_bytes())
            .filter(|&n| n <= MAX_DATA_LEN)
            .ok_or(ItemError::Overflow)?;
        let mut item = TorchSaveItem {
            archive_name: archive_name.to_string(),
            data_len,
            prefix: Vec::new(),
            records: Vec::new(),
            suffix_len: 0,
        };
        let pkl = data_pkl(dtype, shape, numel);
        item.push_small_record("data.pkl", &pkl);
        item.push_small_record(".format_version", b"1");
        item.push_small_record(".storage_alignment", b"64");
        item.push_small_record("byteorder", b"little");
        let offset = item.prefix.len() as u64;
        let name = item.record_name("data/0");
        item.prefix
            .extend_from_slice(&local_header(&name, offset, data_len));
        item.records.push(Record {
            name,
            header_offset: offset,
            len: data_len,
            crc: 0,
        });
        // The suffix's length does not depend on the CRC it carries.
        item.suffix_len = item.suffix(0).len() as u64;
        Ok(item)
    }

    fn record_name(&self, name: &str) -> String {
        format!("{}/{}", self.archive_name, name)
    }

    fn push_small_record(&mut self, name: &str, data: &[u8]) {
        let name = self.record_name(name);
        let offset = self.prefix.len() as u64;
        let record = write_record(&mut self.prefix, name, offset, data);
        self.records.push(record);
    }

    /// The bytes before the tensor data: every record up to the local header
    /// of `data/0`.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Where the raw bytes start, from the first byte of the archive: the
    /// length of [`TorchSaveItem::prefix`], a multiple of 64.
    pub fn data_offset(&self) -> u64 {
        self.prefix.len() as u64
    }

    /// The number of raw bytes: element count times dtype width.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The length of [`TorchSaveItem::suffix`].
    pub fn suffix_len(&self) -> u64 {
        self.suffix_len
    }

    /// The length of the whole archive: prefix, data and suffix.
    pub fn len(&self) -> u64 {
        // Cannot overflow: `build` bounds data_len by MAX_DATA_LEN.
        self.data_offset() + self.data_len + self.suffix_len
    }

    /// Whether the archive is empty: never, it always has its records.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes after the tensor data, given the CRC-32 (zip's, as
    /// `crc32fast` computes) of those bytes: the data descriptor of
    /// `data/0`, the last records and the directory.
    pub fn suffix(&self, data_crc32: u32) -> Vec<u8> {
        let mut records = self.records.clone();
        let data = records.last_mut().expect("data/0 is always recorded");
        data.crc = data_crc32;
        let start = self.data_offset() + self.data_len;
        let mut out = data_descriptor(data_crc32, self.data_len);

        let version = self.record_name("version");
        let offset = start + out.len() as u64;
        records.push(write_record(&mut out, version, offset, b"3\n"));

        let id = serialization_id(&records);
        let name = self.record_name(".data/serialization_id");
        let offset = start + out.len() as u64;
        records.push(write_record(&mut out, name, offset, id.as_bytes()));

        let directory_offset = start + out.len() as u64;
        let mut directory = Vec::new();
        for r in &records {
            directory.extend_from_slice(&central_header(r));
        }
        let directory_len = directory.len() as u64;
        out.extend_from_slice(&directory);
        let zip64_offset = directory_offset + directory_len;
        out.extend_from_slice(&end_records(
            records.len() as u64,
            directory_len,
            directory_offset,
            zip64_offset,
        ));
        out
    }
}

/// `data.pkl` exactly as `torch.save` writes it for a contiguous tensor
/// whose storage is its own (offset 0, one storage named `0` on `cpu`).
fn data_pkl(dtype: DType, shape: &[u64], numel: u64) -> Vec<u8> {
    use crate::formats::torch::pickle::write::{Pickler, Protocol};
    let mut p = Pickler::new(Protocol::Two);
    // Dtypes without a typed storage class go through v3: an untyped
    // storage (counted in bytes) and the dtype last, as torch.save writes.
    let typed = storage_type(dtype);
    p.global(
        "torch._utils",
        if typed.is_some() {
            "_rebuild_tensor_v2"
        } else {
            "_rebuild_tensor_v3"
        },
    );
    p.mark();
    // The persistent id: ('storage', storage type, key, location, numel).
    p.mark();
    p.str("storage");
    match typed {
        Some(class) => p.global("torch", class),
        None => p.global("torch.storage", "UntypedStorage"),
    }
    p.str("0");
    p.str("cpu");
    p.int(if typed.is_some() {
        numel
    } else {
        numel.saturating_mul(dtype.size_bytes())
    });
    p.tuple_from_mark();
    p.memoize();
    p.binpersid();
    p.int(0);
    p.int_tuple(shape);
    p.int_tuple(&contiguous_strides(shape));
    p.bool(false);
    p.global("collections", "OrderedDict");
    p.tuple(0);
    p.reduce();
    p.memoize();
    if typed.is_none() {
        p.global("torch", torch_dtype_name(dtype));
    }
    p.tuple_from_mark();
    p.memoize();
    p.reduce();
    p.memoize();
    p.finish()
}

/// Row-major strides as torch computes them: a zero-length dimension
/// counts as one, so `(3, 0, 5)` has strides `(5, 5, 1)`.
pub(crate) fn contiguous_strides(shape: &[u64]) -> Vec<u64> {
    let mut strides = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1].max(1));
    }
    strides
}

/// Appends a whole record (header, data, descriptor) at `offset`.
fn write_record(out: &mut Vec<u8>, name: String, offset: u64, data: &[u8]) -> Record {
    let len = data.len() as u64;
    out.extend_from_slice(&local_header(&name, offset, len));
    out.extend_from_slice(data);
    let crc = crc32fast::hash(data);
    out.extend_from_slice(&data_descriptor(crc, len));
    Record {
        name,
        header_offset: offset,
        len,
        crc,
    }
}

/// The zip64 extra field PyTorch's writer puts in a local header: the sizes
/// when the record is large, the header's own offset when that is; empty
/// when neither.
fn local_zip64_extra(offset: u64, len: u64) -> Vec<u8> {
    let mut fields = Vec::new();
    if len >= ZIP32_LIMIT {
        fields.extend_from_slice(&len.to_le_bytes());
        fields.extend_from_slice(&len.to_le_bytes());
    }
    if offset >= ZIP32_LIMIT {
        fields.extend_from_slice(&offset.to_le_bytes());
    }
    zip64_extra(&fields)
}

fn zip64_extra(fields: &[u8]) -> Vec<u8> {
    if fields.is_empty() {
        return Vec::new();
    }
    let mut extra = Vec::with_capacity(4 + fields.len());
    extra.extend_from_slice(&1u16.to_le_bytes());
    extra.extend_from_slice(&(fields.len() as u16).to_le_bytes());
    extra.extend_from_slice(fields);
    extra
}

/// A local header at `offset` for a record of `len` bytes, padded so that
/// the data after it starts on a multiple of [`STORAGE_ALIGNMENT`]. CRC and
/// sizes are zero: they follow the data in the descriptor (flag bit 3).
fn local_header(name: &str, offset: u64, len: u64) -> Vec<u8> {
    let mut extra = local_zip64_extra(offset, len);
    // The FB field: tag, u16 length, then that many 'Z'.
    let start = offset + LOCAL_HEADER_LEN + name.len() as u64 + extra.len() as u64 + 4;
    let pad = (STORAGE_ALIGNMENT - start % STORAGE_ALIGNMENT) % STORAGE_ALIGNMENT;
    extra.extend_from_slice(b"FB");
    extra.extend_from_slice(&(pad as u16).to_le_bytes());
    extra.resize(extra.len() + pad as usize, b'Z');

    let mut h = Vec::with_capacity(LOCAL_HEADER_LEN as usize + name.len() + extra.len());
    h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes()); // version needed, as torch writes
    h.extend_from_slice(&FLAGS.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes()); // stored
    h.extend_from_slice(&0u32.to_le_bytes()); // DOS time and date: zero
    h.extend_from_slice(&0u32.to_le_bytes()); // CRC, in the descriptor
    h.extend_from_slice(&0u32.to_le_bytes()); // compressed size
    h.extend_from_slice(&0u32.to_le_bytes()); // uncompressed size
    h.extend_from_slice(&(name.len() as u16).to_le_bytes());
    h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
    h.extend_from_slice(name.as_bytes());
    h.extend_from_slice(&extra);
    h
}

/// The data descriptor after a record: 64-bit sizes when the local header
/// carried them in its zip64 field.
fn data_descriptor(crc: u32, len: u64) -> Vec<u8> {
    let mut d = Vec::with_capacity(24);
    d.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
    d.extend_from_slice(&crc.to_le_bytes());
    if len >= ZIP32_LIMIT {
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
    } else {
        d.extend_from_slice(&(len as u32).to_le_bytes());
        d.extend_from_slice(&(len as u32).to_le_bytes());
    }
    d
}

/// A central directory entry; fields that do not fit in 32 bits read
/// `0xFFFFFFFF` and move, in the standard order, to a zip64 extra field.
fn central_header(r: &Record) -> Vec<u8> {
    let mut fields = Vec::new();
    let large = r.len >= ZIP32_LIMIT;
    if large {
        fields.extend_from_slice(&r.len.to_le_bytes());
        fields.extend_from_slice(&r.len.to_le_bytes());
    }
    let far = r.header_offset >= ZIP32_LIMIT;
    if far {
        fields.extend_from_slice(&r.header_offset.to_le_bytes());
    }
    let extra = zip64_extra(&fields);
    let size32 = if large { u32::MAX } else { r.len as u32 };
    let offset32 = if far {
        u32::MAX
    } else {
        r.header_offset as u32
    };

    let mut h = Vec::with_capacity(46 + r.name.len() + extra.len());
    h.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes()); // version made by
    h.extend_from_slice(&0u16.to_le_bytes()); // version needed
    h.extend_from_slice(&FLAGS.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes()); // stored
    h.extend_from_slice(&0u32.to_le_bytes()); // DOS time and date
    h.extend_from_slice(&r.crc.to_le_bytes());
    h.extend_from_slice(&size32.to_le_bytes());
    h.extend_from_slice(&size32.to_le_bytes());
    h.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
    h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes()); // comment length
    h.extend_from_slice(&0u16.to_le_bytes()); // disk number
    h.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
    h.extend_from_slice(&0u32.to_le_bytes()); // external attributes
    h.extend_from_slice(&offset32.to_le_bytes());
    h.extend_from_slice(r.name.as_bytes());
    h.extend_from_slice(&extra);
    h
}

/// The zip64 end of central directory record, its locator and the classic
/// end record, which PyTorch's writer always emits together.
fn end_records(
    entries: u64,
    directory_len: u64,
    directory_offset: u64,
    zip64_offset: u64,
) -> Vec<u8> {
    let mut e = Vec::with_capacity(98);
    e.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
    e.extend_from_slice(&44u64.to_le_bytes()); // size of the rest of the record
    e.extend_from_slice(&0x031eu16.to_le_bytes()); // made by: Unix, 3.0
    e.extend_from_slice(&45u16.to_le_bytes()); // needed: zip64
    e.extend_from_slice(&0u32.to_le_bytes()); // this disk
    e.extend_from_slice(&0u32.to_le_bytes()); // disk of the directory
    e.extend_from_slice(&entries.to_le_bytes());
    e.extend_from_slice(&entries.to_le_bytes());
    e.extend_from_slice(&directory_len.to_le_bytes());
    e.extend_from_slice(&directory_offset.to_le_bytes());

    e.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
    e.extend_from_slice(&0u32.to_le_bytes()); // disk of the zip64 record
    e.extend_from_slice(&zip64_offset.to_le_bytes());
    e.extend_from_slice(&1u32.to_le_bytes()); // number of disks

    let clamp = |v: u64| if v >= ZIP32_LIMIT { u32::MAX } else { v as u32 };
    let entries16 = u16::try_from(entries).unwrap_or(u16::MAX);
    e.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes()); // this disk
    e.extend_from_slice(&0u16.to_le_bytes()); // disk of the directory
    e.extend_from_slice(&entries16.to_le_bytes());
    e.extend_from_slice(&entries16.to_le_bytes());
    e.extend_from_slice(&clamp(directory_len).to_le_bytes());
    e.extend_from_slice(&clamp(directory_offset).to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes()); // comment length
    e
}

/// A 40-digit id for `.data/serialization_id`. PyTorch derives its own
/// from a hash of the record names and a combined CRC of their data; it is
/// an opaque label that `torch.load` reports but never checks, so ours is
/// FNV-1a of the names followed by FNV-1a of the CRCs: deterministic, and
/// different for different data.
fn serialization_id(records: &[Record]) -> String {
    let mut names = Fnv::new();
    let mut crcs = Fnv::new();
    for r in records {
        names.write(r.name.as_bytes());
        crcs.write(&r.crc.to_le_bytes());
    }
    format!("{:020}{:020}", names.0, crcs.0)
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests;

//! Writing PyTorch DCP checkpoints that `torch.distributed.checkpoint.load`
//! reads with its default `FileSystemReader`: a `.metadata` pickle and one
//! `__{rank}_0.distcp` file per rank, each a run of `torch.save` archives
//! (docs/formats.md, "PyTorch DCP checkpoints (written)").
//!
//! [`DcpLayout::new`] plans a folder from what each output rank stores: it
//! drops replicas (the same box of a tensor on several ranks is stored once,
//! by the lowest rank), checks that the chunks tile each tensor, places each
//! archive in its file and renders the `.metadata` bytes. The data itself
//! is the caller's to write, streamed: for each [`DcpItem`], its
//! [`TorchSaveItem::prefix`], the chunk's raw bytes, then
//! [`TorchSaveItem::suffix`] with their CRC-32. [`write_dcp_folder`] does all
//! of it for chunks held in memory.
//!
//! # Example
//!
//! ```
//! use shardplan::DType;
//! use shardplan::formats::torch::dcp_write::{DcpChunkOut, DcpLayout};
//!
//! let chunk = |rows: [u64; 2]| DcpChunkOut {
//!     fqn: "w".to_string(),
//!     dtype: DType::F32,
//!     shape: vec![3, 2],
//!     offsets: vec![rows[0], 0],
//!     sizes: vec![rows[1], 2],
//! };
//! let layout = DcpLayout::new(vec![vec![chunk([0, 2])], vec![chunk([2, 1])]])?;
//! assert_eq!(layout.files()[1].name, "__1_0.distcp");
//! assert_eq!(layout.files()[1].items[0].archive.data_len(), 8);
//! // Rows 1..3 twice: the chunks overlap.
//! assert!(DcpLayout::new(vec![vec![chunk([0, 2])], vec![chunk([1, 2])]]).is_err());
//! # Ok::<(), shardplan::formats::torch::dcp_write::DcpWriteError>(())
//! ```

mod metadata;
mod torch_save;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

pub use torch_save::{STORAGE_ALIGNMENT, TorchSaveItem};

use crate::DType;
use metadata::{MetaStorage, MetaTensor};

/// The archive name DCP's writer gives every item: `torch.save` to a stream
/// names its archive `archive`.
pub const DCP_ARCHIVE_NAME: &str = "archive";

/// The name of the metadata file in a DCP folder.
pub const METADATA_FILE: &str = ".metadata";

/// One chunk an output rank stores: a box of a tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcpChunkOut {
    /// Fully qualified name: the state dict key.
    pub fqn: String,
    /// Element type, the same for every chunk of the tensor.
    pub dtype: DType,
    /// Global shape, the same for every chunk of the tensor; empty for a
    /// 0-dim tensor.
    pub shape: Vec<u64>,
    /// Start of the box, one entry per dimension.
    pub offsets: Vec<u64>,
    /// Extent of the box, one entry per dimension.
    pub sizes: Vec<u64>,
}

/// A chunk with its bytes (row-major, little-endian), for
/// [`write_dcp_folder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcpChunkData {
    /// The box.
    pub chunk: DcpChunkOut,
    /// Its bytes: element count of `chunk.sizes` times the dtype width.
    pub bytes: Vec<u8>,
}

/// One archive in a `.distcp` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcpItem {
    /// The chunk stored, as given.
    pub chunk: DcpChunkOut,
    /// Where it was given: `ranks[rank][index]` of [`DcpLayout::new`].
    pub source: (usize, usize),
    /// Byte offset of the archive in its file.
    pub offset: u64,
    /// The archive: prefix, data length, suffix.
    pub archive: TorchSaveItem,
}

impl DcpItem {
    /// Byte offset in the file of the chunk's first data byte.
    pub fn data_offset(&self) -> u64 {
        // DcpLayout::new checked offset + archive length.
        self.offset + self.archive.data_offset()
    }
}

/// One `.distcp` file: what rank `rank` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcpFile {
    /// The writing rank.
    pub rank: usize,
    /// File name in the folder, `__{rank}_0.distcp`.
    pub name: String,
    /// Archives, in the order of `ranks[rank]`, replicas left out.
    pub items: Vec<DcpItem>,
    /// File length: the archives end to end (zero when every chunk of the
    /// rank is stored by a lower rank; DCP still writes the file).
    pub len: u64,
}

/// A planned DCP folder: every file's archives and the `.metadata` bytes.
///
/// # Design
///
/// Replicas go to the lowest rank that holds them, which is DCP's
/// `dedup_save_to_lowest_rank=True`; DCP's default balances replicas over
/// ranks by bytes instead. Readers cannot tell: both record each chunk
/// once in `storage_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcpLayout {
    files: Vec<DcpFile>,
    metadata: Vec<u8>,
}

/// A DCP folder that cannot be planned or written.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DcpWriteError {
    /// A chunk whose offsets or sizes do not have one entry per dimension.
    #[error(
        "chunk of `{fqn}` on rank {rank}: {offsets} offsets and {sizes} sizes for a {dims}-dim tensor"
    )]
    #[diagnostic(
        code(shardplan::formats::dcp_write::chunk_dims),
        help("give one offset and one size per dimension of the global shape")
    )]
    ChunkDims {
        /// Tensor.
        fqn: String,
        /// Rank that stores the chunk.
        rank: usize,
        /// Number of offsets.
        offsets: usize,
        /// Number of sizes.
        sizes: usize,
        /// Dimensions of the global shape.
        dims: usize,
    },
    /// A chunk that reaches outside its tensor.
    #[error(
        "chunk of `{fqn}` on rank {rank} at {offsets:?} of size {sizes:?} is outside shape {shape:?}"
    )]
    #[diagnostic(code(shardplan::formats::dcp_write::out_of_bounds))]
    OutOfBounds {
        /// Tensor.
        fqn: String,
        /// Rank that stores the chunk.
        rank: usize,
        /// Box start.
        offsets: Vec<u64>,
        /// Box extent.
        sizes: Vec<u64>,
        /// Global shape.
        shape: Vec<u64>,
    },
    /// Two chunks of one tensor that disagree on its dtype or global shape.
    #[error("`{fqn}` is {first} on rank {first_rank} but {second} on rank {second_rank}")]
    #[diagnostic(
        code(shardplan::formats::dcp_write::inconsistent_tensor),
        help("every chunk of a tensor carries the same dtype and global shape")
    )]
    InconsistentTensor {
        /// Tensor.
        fqn: String,
        /// dtype and shape as first given.
        first: String,
        /// Rank that gave them.
        first_rank: usize,
        /// dtype and shape as given later.
        second: String,
        /// Rank that gave them.
        second_rank: usize,
    },
    /// Chunks of one tensor that overlap without being the same box, or the
    /// same box twice on one rank.
    #[error(
        "`{fqn}`: chunk at {first:?} (rank {first_rank}) overlaps chunk at {second:?} (rank {second_rank})"
    )]
    #[diagnostic(
        code(shardplan::formats::dcp_write::overlap),
        help("replicas must be the same box; distinct chunks must not share elements")
    )]
    Overlap {
        /// Tensor.
        fqn: String,
        /// Offsets of one chunk.
        first: Vec<u64>,
        /// Its rank.
        first_rank: usize,
        /// Offsets of the other.
        second: Vec<u64>,
        /// Its rank.
        second_rank: usize,
    },
    /// Chunks that leave part of a tensor unstored.
    #[error("`{fqn}`: the chunks hold {covered} of its {numel} elements")]
    #[diagnostic(
        code(shardplan::formats::dcp_write::incomplete),
        help("DCP's own writer refuses such a plan; store every element on some rank")
    )]
    Incomplete {
        /// Tensor.
        fqn: String,
        /// Elements the chunks hold.
        covered: u64,
        /// Elements of the tensor.
        numel: u64,
    },
    /// A byte size or offset that does not fit in `u64`.
    #[error("the byte size of {what} overflows u64")]
    #[diagnostic(code(shardplan::formats::dcp_write::size_overflow))]
    SizeOverflow {
        /// What was being sized.
        what: String,
    },
    /// An archive name that cannot be a zip folder.
    #[error("archive name `{name}` is empty, contains `/` or is longer than 200 bytes")]
    #[diagnostic(
        code(shardplan::formats::dcp_write::archive_name),
        help("DCP names every archive `archive` (DCP_ARCHIVE_NAME)")
    )]
    ArchiveName {
        /// The name.
        name: String,
    },
    /// Bytes given for a chunk that are not its size.
    #[error(
        "chunk of `{fqn}` on rank {rank} at {offsets:?}: {got} bytes given, {expected} expected"
    )]
    #[diagnostic(code(shardplan::formats::dcp_write::data_length))]
    DataLength {
        /// Tensor.
        fqn: String,
        /// Rank.
        rank: usize,
        /// Box start.
        offsets: Vec<u64>,
        /// Bytes the box takes.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// A file of the folder that cannot be written.
    #[error("cannot write {}", path.display())]
    #[diagnostic(code(shardplan::formats::dcp_write::io))]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The tensor-level facts every chunk of a tensor must agree on.
struct TensorInfo<'a> {
    dtype: DType,
    shape: &'a [u64],
    rank: usize,
    /// Kept chunks as `(rank, index)`, in rank order.
    kept: Vec<(usize, usize)>,
}

impl DcpLayout {
    /// Plans the folder for `ranks[r]`, the chunks rank `r` stores.
    ///
    /// # Errors
    ///
    /// - [`DcpWriteError::ChunkDims`]: offsets or sizes of the wrong length;
    /// - [`DcpWriteError::OutOfBounds`]: a box outside the global shape;
    /// - [`DcpWriteError::InconsistentTensor`]: one name with two dtypes or
    ///   shapes;
    /// - [`DcpWriteError::Overlap`]: chunks of a tensor that share elements
    ///   without being the same box on different ranks;
    /// - [`DcpWriteError::Incomplete`]: elements no rank stores;
    /// - [`DcpWriteError::SizeOverflow`]: a byte size or file offset beyond
    ///   `u64`.
    pub fn new(ranks: Vec<Vec<DcpChunkOut>>) -> Result<DcpLayout, DcpWriteError> {
        let (order, tensors) = collect_tensors(&ranks)?;
        for fqn in &order {
            check_tiling(fqn, &tensors[fqn.as_str()], &ranks)?;
        }
        let files = place_items(&ranks, &tensors)?;
        let metadata = render_metadata(&order, &tensors, &files);
        Ok(DcpLayout { files, metadata })
    }

    /// The `.distcp` files, one per rank, in rank order.
    pub fn files(&self) -> &[DcpFile] {
        &self.files
    }

    /// The bytes of `.metadata`.
    pub fn metadata_bytes(&self) -> &[u8] {
        &self.metadata
    }
}

/// Checks every chunk against its tensor and drops replicas: returns the
/// names in first-seen order and, per name, the chunks kept.
fn collect_tensors(
    ranks: &[Vec<DcpChunkOut>],
) -> Result<(Vec<String>, HashMap<&str, TensorInfo<'_>>), DcpWriteError> {
    let mut order = Vec::new();
    let mut tensors: HashMap<&str, TensorInfo<'_>> = HashMap::new();
    // (fqn, offsets) -> the chunk kept, the identity DCP deduplicates by.
    let mut boxes: HashMap<(&str, &[u64]), (usize, usize)> = HashMap::new();
    for (rank, chunks) in ranks.iter().enumerate() {
        for (index, c) in chunks.iter().enumerate() {
            check_box(rank, c)?;
            let info = match tensors.entry(c.fqn.as_str()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    order.push(c.fqn.clone());
                    e.insert(TensorInfo {
                        dtype: c.dtype,
                        shape: &c.shape,
                        rank,
                        kept: Vec::new(),
                    })
                }
            };
            if info.dtype != c.dtype || info.shape != c.shape.as_slice() {
                return Err(DcpWriteError::InconsistentTensor {
                    fqn: c.fqn.clone(),
                    first: format!("{} {:?}", info.dtype, info.shape),
                    first_rank: info.rank,
                    second: format!("{} {:?}", c.dtype, c.shape),
                    second_rank: rank,
                });
            }
            match boxes.entry((c.fqn.as_str(), c.offsets.as_slice())) {
                Entry::Vacant(e) => {
                    e.insert((rank, index));
                    info.kept.push((rank, index));
                }
                Entry::Occupied(e) => {
                    let (r, i) = *e.get();
                    if r == rank || ranks[r][i].sizes != c.sizes {
                        return Err(overlap(c, r, rank, &ranks[r][i]));
                    }
                    // A replica: the lower rank `r` stores it.
                }
            }
        }
    }
    Ok((order, tensors))
}

fn overlap(c: &DcpChunkOut, first_rank: usize, rank: usize, first: &DcpChunkOut) -> DcpWriteError {
    DcpWriteError::Overlap {
        fqn: c.fqn.clone(),
        first: first.offsets.clone(),
        first_rank,
        second: c.offsets.clone(),
        second_rank: rank,
    }
}

fn check_box(rank: usize, c: &DcpChunkOut) -> Result<(), DcpWriteError> {
    let dims = c.shape.len();
    if !(c.offsets.len() == dims && c.sizes.len() == dims) {
        return Err(DcpWriteError::ChunkDims {
            fqn: c.fqn.clone(),
            rank,
            offsets: c.offsets.len(),
            sizes: c.sizes.len(),
            dims,
        });
    }
    let inside = (0..dims).all(|d| {
        c.offsets[d]
            .checked_add(c.sizes[d])
            .is_some_and(|end| end <= c.shape[d])
    });
    if !inside {
        return Err(DcpWriteError::OutOfBounds {
            fqn: c.fqn.clone(),
            rank,
            offsets: c.offsets.clone(),
            sizes: c.sizes.clone(),
            shape: c.shape.clone(),
        });
    }
    Ok(())
}

fn numel(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// What DCP's writer checks of a global plan: the kept chunks are disjoint
/// and their volumes add up to the tensor's, so they tile it.
fn check_tiling(
    fqn: &str,
    info: &TensorInfo<'_>,
    ranks: &[Vec<DcpChunkOut>],
) -> Result<(), DcpWriteError> {
    let overflow = || DcpWriteError::SizeOverflow {
        what: format!("tensor `{fqn}`"),
    };
    let total = numel(info.shape)
        .filter(|n| n.checked_mul(info.dtype.size_bytes()).is_some())
        .ok_or_else(overflow)?;
    let chunks: Vec<(usize, &DcpChunkOut)> =
        info.kept.iter().map(|&(r, i)| (r, &ranks[r][i])).collect();
    let mut covered = 0u64;
    for (k, &(rank, c)) in chunks.iter().enumerate() {
        // Bounded by the tensor's numel, which fits.
        let volume = numel(&c.sizes).ok_or_else(overflow)?;
        covered = covered.checked_add(volume).ok_or_else(overflow)?;
        if volume == 0 {
            continue;
        }
        for &(other_rank, other) in &chunks[..k] {
            if boxes_intersect(c, other) {
                return Err(overlap(c, other_rank, rank, other));
            }
        }
    }
    if covered != total {
        return Err(DcpWriteError::Incomplete {
            fqn: fqn.to_string(),
            covered,
            numel: total,
        });
    }
    Ok(())
}

/// Whether two boxes share an element (an empty box shares none).
fn boxes_intersect(a: &DcpChunkOut, b: &DcpChunkOut) -> bool {
    (0..a.shape.len()).all(|d| {
        let (a0, a1) = (a.offsets[d], a.offsets[d] + a.sizes[d]);
        let (b0, b1) = (b.offsets[d], b.offsets[d] + b.sizes[d]);
        a0.max(b0) < a1.min(b1)
    })
}

/// Lays each rank's kept chunks end to end in its file, in given order.
fn place_items(
    ranks: &[Vec<DcpChunkOut>],
    tensors: &HashMap<&str, TensorInfo<'_>>,
) -> Result<Vec<DcpFile>, DcpWriteError> {
    let mut kept = vec![Vec::new(); ranks.len()];
    for info in tensors.values() {
        for &(r, i) in &info.kept {
            kept[r].push(i);
        }
    }
    let mut files = Vec::with_capacity(ranks.len());
    for (rank, mut indices) in kept.into_iter().enumerate() {
        indices.sort_unstable();
        let name = format!("__{rank}_0.distcp");
        let mut items = Vec::with_capacity(indices.len());
        let mut len = 0u64;
        for index in indices {
            let chunk = ranks[rank][index].clone();
            let archive = TorchSaveItem::new(DCP_ARCHIVE_NAME, chunk.dtype, &chunk.sizes)?;
            let offset = len;
            len = len
                .checked_add(archive.len())
                .ok_or_else(|| DcpWriteError::SizeOverflow {
                    what: format!("file {name}"),
                })?;
            items.push(DcpItem {
                chunk,
                source: (rank, index),
                offset,
                archive,
            });
        }
        files.push(DcpFile {
            rank,
            name,
            items,
            len,
        });
    }
    Ok(files)
}

/// `.metadata` for the placed files: tensors in the order their first kept
/// chunk appears over the ranks, chunks in rank order (that order is the
/// `MetadataIndex.index`), storage entries file by file, as DCP merges its
/// rank plans.
fn render_metadata(
    order: &[String],
    tensors: &HashMap<&str, TensorInfo<'_>>,
    files: &[DcpFile],
) -> Vec<u8> {
    let mut meta_order: Vec<&str> = Vec::new();
    let mut by_name: HashMap<&str, MetaTensor<'_>> = HashMap::new();
    let mut storage = Vec::new();
    for file in files {
        for item in &file.items {
            let c = &item.chunk;
            let t = by_name.entry(c.fqn.as_str()).or_insert_with(|| {
                meta_order.push(c.fqn.as_str());
                MetaTensor {
                    fqn: &c.fqn,
                    dtype: c.dtype,
                    shape: tensors[c.fqn.as_str()].shape,
                    strides: torch_save::contiguous_strides(&c.sizes),
                    chunks: Vec::new(),
                }
            });
            storage.push(MetaStorage {
                fqn: &c.fqn,
                offsets: &c.offsets,
                index: t.chunks.len() as u64,
                relative_path: &file.name,
                offset: item.offset,
                length: item.archive.len(),
            });
            t.chunks.push((&c.offsets, &c.sizes));
        }
    }
    let meta: Vec<MetaTensor<'_>> = meta_order
        .iter()
        .map(|n| by_name.remove(n).expect("each name was inserted once"))
        .collect();
    let planner: Vec<&str> = order.iter().map(String::as_str).collect();
    metadata::metadata_pickle(&meta, &planner, &storage)
}

/// Writes a whole DCP folder from chunks held in memory: each `.distcp`
/// file, then `.metadata` last, each to a temporary name, fsynced and
/// renamed ([`write_atomic`](crate::formats::write_atomic)), so that a folder with a
/// `.metadata` has all its files. Creates `dir` if needed. Returns the
/// layout written.
///
/// # Errors
///
/// Those of [`DcpLayout::new`]; [`DcpWriteError::DataLength`] when a
/// chunk's bytes are not its size; [`DcpWriteError::Io`] when a file cannot
/// be written.
pub fn write_dcp_folder(
    dir: &Path,
    ranks: Vec<Vec<DcpChunkData>>,
) -> Result<DcpLayout, DcpWriteError> {
    for (rank, chunks) in ranks.iter().enumerate() {
        for d in chunks {
            check_data_len(rank, d)?;
        }
    }
    let boxes = ranks
        .iter()
        .map(|chunks| chunks.iter().map(|d| d.chunk.clone()).collect())
        .collect();
    let layout = DcpLayout::new(boxes)?;
    let io = |path: PathBuf| move |source| DcpWriteError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    for file in layout.files() {
        let mut bytes = Vec::with_capacity(usize::try_from(file.len).unwrap_or(0));
        for item in &file.items {
            let (rank, index) = item.source;
            let data = &ranks[rank][index].bytes;
            bytes.extend_from_slice(item.archive.prefix());
            bytes.extend_from_slice(data);
            bytes.extend_from_slice(&item.archive.suffix(crc32fast::hash(data)));
        }
        let path = dir.join(&file.name);
        crate::formats::write_atomic(&path, &bytes).map_err(io(path.clone()))?;
    }
    let path = dir.join(METADATA_FILE);
    crate::formats::write_atomic(&path, layout.metadata_bytes()).map_err(io(path.clone()))?;
    Ok(layout)
}

fn check_data_len(rank: usize, d: &DcpChunkData) -> Result<(), DcpWriteError> {
    let c = &d.chunk;
    let expected = numel(&c.sizes).and_then(|n| n.checked_mul(c.dtype.size_bytes()));
    let got = d.bytes.len() as u64;
    if expected == Some(got) {
        return Ok(());
    }
    match expected {
        None => Err(DcpWriteError::SizeOverflow {
            what: format!("a chunk of `{}`", c.fqn),
        }),
        Some(expected) => Err(DcpWriteError::DataLength {
            fqn: c.fqn.clone(),
            rank,
            offsets: c.offsets.clone(),
            expected,
            got,
        }),
    }
}

#[cfg(test)]
mod tests;

//! Why a checkpoint file (or a folder of rank folders) cannot be read, one
//! variant per fault.

use std::path::Path;

use crate::DType;

/// The safetensors format's own bound on the header (the reference reader
/// refuses more), so a hostile length cannot make the JSON parser allocate
/// without limit.
pub(crate) const MAX_ST_HEADER: u64 = 100_000_000;

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

pub(crate) fn header_field_message(tensor: &str, field: &str) -> String {
    match field {
        "__metadata__" => "`__metadata__` is not an object".to_string(),
        "dtype" => format!("tensor `{tensor}` has no dtype"),
        _ => format!("tensor `{tensor}` has no valid {field}"),
    }
}

pub(crate) fn bad(path: &Path, fault: CheckpointFault) -> CheckpointError {
    CheckpointError {
        file: path.display().to_string(),
        fault,
    }
}

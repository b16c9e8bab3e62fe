//! The JSON plan format, version 1 (`docs/plan-format.md`).

use serde::{Deserialize, Serialize};

use crate::DType;
use crate::Region;
use crate::{Piece, ReplicaChoice, SlicePlan, TensorPlan, VerifiedPlan};

/// The `format` field of every plan file.
pub const FORMAT: &str = "shardplan-plan";
/// The schema version this crate writes and reads.
pub const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    format: String,
    version: u32,
    source: Side,
    destination: Side,
    replica_choice: String,
    summary: Summary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ranks: Option<Ranks>,
    tensors: Vec<TensorJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Side {
    strategy: String,
    ranks: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Summary {
    total_bytes: u64,
    lower_bound_bytes: u64,
    local_bytes: u64,
    max_send_bytes: u64,
    max_send_lower_bound_bytes: u64,
    max_recv_bytes: u64,
    messages: u64,
    pieces: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ranks {
    send: Vec<SendJson>,
    receive: Vec<RecvJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendJson {
    rank: u64,
    bytes: u64,
    messages: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecvJson {
    rank: u64,
    bytes: u64,
    messages: u64,
    local_bytes: u64,
    files: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorJson {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    pieces: Vec<PieceJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PieceJson {
    dst_rank: u64,
    dst_offset: Vec<u64>,
    dst_local_offset: Vec<u64>,
    src_rank: u64,
    src_offset: Vec<u64>,
    extent: Vec<u64>,
    bytes: u64,
    local: bool,
    op: String,
}

/// A plan file that cannot be read: the file, the place where known, and
/// the fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{}{fault}", place(file, *line, *column))]
#[diagnostic(forward(fault))]
pub struct PlanFileError {
    /// File name.
    pub file: String,
    /// 1-based line (0 when the fault is not tied to a place).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong; its code and help are the error's.
    pub fault: PlanFileFault,
}

/// What is wrong with a plan file, one variant per fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum PlanFileFault {
    /// Another format or schema version than this crate reads.
    #[error(
        "format `{format}` version {version}: this shardplan reads `{FORMAT}` version {VERSION}"
    )]
    #[diagnostic(code(shardplan::formats::plan_json::version), help("{}", PLAN_HELP))]
    Version {
        /// The file's `format`.
        format: String,
        /// Its `version`.
        version: u64,
    },
    /// Not JSON, or JSON that is not a plan document (a missing, unknown
    /// or mistyped field); the place is the error's line and column.
    #[error("{}", json_message(.0))]
    #[diagnostic(code(shardplan::formats::plan_json::json), help("{}", PLAN_HELP))]
    Json(serde_json::Error),
    /// An unknown `replica_choice`.
    #[error("unknown replica_choice `{0}`")]
    #[diagnostic(
        code(shardplan::formats::plan_json::replica_choice),
        help("{}", PLAN_HELP)
    )]
    ReplicaChoice(String),
    /// A tensor of an unknown dtype.
    #[error("tensor `{tensor}`: unknown dtype `{dtype}`")]
    #[diagnostic(code(shardplan::formats::plan_json::dtype), help("{}", PLAN_HELP))]
    Dtype {
        /// The tensor.
        tensor: String,
        /// The dtype as written.
        dtype: String,
    },
    /// A piece whose offsets or extent have another length than the
    /// tensor has dimensions.
    #[error(
        "tensor `{tensor}` piece {piece}: offsets and extent must have {dims} entries, one per tensor dimension"
    )]
    #[diagnostic(code(shardplan::formats::plan_json::piece_dims), help("{}", PLAN_HELP))]
    PieceDims {
        /// The tensor.
        tensor: String,
        /// The piece's index.
        piece: usize,
        /// The tensor's dimensions.
        dims: usize,
    },
    /// A piece whose offset plus extent overflows.
    #[error("tensor `{tensor}` piece {piece}: offset + extent overflows")]
    #[diagnostic(
        code(shardplan::formats::plan_json::piece_overflow),
        help("{}", PLAN_HELP)
    )]
    PieceOverflow {
        /// The tensor.
        tensor: String,
        /// The piece's index.
        piece: usize,
    },
    /// A piece whose byte count does not match its extent and dtype.
    #[error(
        "tensor `{tensor}` piece {piece}: bytes {bytes} do not match extent {extent:?} of {dtype}"
    )]
    #[diagnostic(
        code(shardplan::formats::plan_json::piece_bytes),
        help("{}", PLAN_HELP)
    )]
    PieceBytes {
        /// The tensor.
        tensor: String,
        /// The piece's index.
        piece: usize,
        /// The bytes written.
        bytes: u64,
        /// The extent.
        extent: Vec<u64>,
        /// The tensor's dtype.
        dtype: DType,
    },
    /// A piece of an unknown op.
    #[error("tensor `{tensor}` piece {piece}: unknown op `{op}`; expected copy or sum")]
    #[diagnostic(code(shardplan::formats::plan_json::piece_op), help("{}", PLAN_HELP))]
    PieceOp {
        /// The tensor.
        tensor: String,
        /// The piece's index.
        piece: usize,
        /// The op as written.
        op: String,
    },
}

const PLAN_HELP: &str =
    "plan files are written by `shardplan plan --format json`; docs/plan-format.md describes them";

/// serde_json's message without its " at line L column C": the error
/// names the place itself.
fn json_message(e: &serde_json::Error) -> String {
    let mut m = e.to_string();
    if let Some(i) = m.rfind(" at line ") {
        m.truncate(i);
    }
    m
}

fn place(file: &str, line: usize, column: usize) -> String {
    if line == 0 {
        format!("{file}: ")
    } else {
        format!("{file}:{line}:{column}: ")
    }
}

/// The plan as JSON (pretty-printed). Only a verified plan is written: a
/// runtime that executes the file executes a checked plan.
pub fn to_json(plan: &VerifiedPlan) -> String {
    write_json(plan.plan())
}

/// The JSON of any plan, for the parser's own round trips.
pub(crate) fn write_json(plan: &SlicePlan) -> String {
    let s = plan.summary();
    let (send, recv) = plan.traffic();
    let file = PlanFile {
        format: FORMAT.into(),
        version: VERSION,
        source: Side {
            strategy: plan.source.clone(),
            ranks: plan.src_ranks,
        },
        destination: Side {
            strategy: plan.destination.clone(),
            ranks: plan.dst_ranks,
        },
        replica_choice: plan.replica_choice.as_str().into(),
        summary: Summary {
            total_bytes: s.total_bytes,
            lower_bound_bytes: s.lower_bound_bytes,
            local_bytes: s.local_bytes,
            max_send_bytes: s.max_send_bytes,
            max_send_lower_bound_bytes: s.max_send_lower_bound_bytes,
            max_recv_bytes: s.max_recv_bytes,
            messages: s.messages,
            pieces: s.pieces,
        },
        ranks: Some(Ranks {
            send: send
                .into_iter()
                .map(|(rank, t)| SendJson {
                    rank,
                    bytes: t.send_bytes,
                    messages: t.sent_messages,
                })
                .collect(),
            receive: recv
                .into_iter()
                .map(|(rank, t)| RecvJson {
                    rank,
                    bytes: t.recv_bytes,
                    messages: t.received_messages,
                    local_bytes: t.local_bytes,
                    files: t.files.into_iter().collect(),
                })
                .collect(),
        }),
        tensors: plan
            .tensors
            .iter()
            .map(|t| TensorJson {
                name: t.name.clone(),
                dtype: t.dtype.name().into(),
                shape: t.shape.clone(),
                pieces: t
                    .pieces
                    .iter()
                    .map(|p| PieceJson {
                        dst_rank: p.dst_rank,
                        dst_offset: p.dst_box.offset().to_vec(),
                        dst_local_offset: p.dst_local_offset.clone(),
                        src_rank: p.src_rank,
                        src_offset: p.src_box.offset().to_vec(),
                        extent: p.dst_box.extent().to_vec(),
                        bytes: t.piece_bytes(p),
                        local: p.local,
                        op: if p.reduce { "sum" } else { "copy" }.into(),
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&file).expect("plans serialize")
}

/// Reads a plan written by [`to_json`]. Structural faults (syntax, unknown
/// fields, boxes whose lengths disagree, byte counts that do not match the
/// box) are errors here; whether the plan is right is for
/// [`crate::verify_plan`].
///
/// # Errors
///
/// [`PlanFileError`] naming the file, line and column, or the tensor and
/// piece.
pub fn from_json(file: &str, text: &str) -> Result<SlicePlan, PlanFileError> {
    let err = |line: usize, column: usize, fault: PlanFileFault| PlanFileError {
        file: file.to_string(),
        line,
        column,
        fault,
    };
    // The version first: a newer file may have fields this reader lacks.
    newer_version(text).map_err(|fault| err(0, 0, fault))?;
    let f: PlanFile = serde_json::from_str(text)
        .map_err(|e| err(e.line(), e.column(), PlanFileFault::Json(e)))?;
    plan_of(f).map_err(|fault| err(0, 0, fault))
}

/// A file of another format or version, told by those two fields alone.
fn newer_version(text: &str) -> Result<(), PlanFileFault> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return Ok(());
    };
    let format = v.get("format").and_then(|f| f.as_str());
    let version = v.get("version").and_then(|f| f.as_u64());
    match (format, version) {
        (Some(f), Some(n)) if f != FORMAT || n != u64::from(VERSION) => {
            Err(PlanFileFault::Version {
                format: f.to_string(),
                version: n,
            })
        }
        _ => Ok(()),
    }
}

/// The plan a file that parsed holds, its values checked.
fn plan_of(f: PlanFile) -> Result<SlicePlan, PlanFileFault> {
    if f.format != FORMAT || f.version != VERSION {
        return Err(PlanFileFault::Version {
            format: f.format,
            version: u64::from(f.version),
        });
    }
    let replica_choice = match f.replica_choice.as_str() {
        "balance" => ReplicaChoice::Balance,
        "min-files" => ReplicaChoice::MinFiles,
        other => return Err(PlanFileFault::ReplicaChoice(other.to_string())),
    };
    let tensors = f
        .tensors
        .into_iter()
        .map(tensor_plan_of)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SlicePlan {
        source: f.source.strategy,
        destination: f.destination.strategy,
        src_ranks: f.source.ranks,
        dst_ranks: f.destination.ranks,
        replica_choice,
        lower_bound_bytes: f.summary.lower_bound_bytes,
        max_send_lower_bound_bytes: f.summary.max_send_lower_bound_bytes,
        tensors,
    })
}

/// One tensor's plan, each piece checked against its shape and dtype.
fn tensor_plan_of(t: TensorJson) -> Result<TensorPlan, PlanFileFault> {
    let dtype: DType = t.dtype.parse().map_err(|_| PlanFileFault::Dtype {
        tensor: t.name.clone(),
        dtype: t.dtype.clone(),
    })?;
    let pieces = t
        .pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| piece_of(&t.name, t.shape.len(), dtype, i, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TensorPlan {
        name: t.name,
        dtype,
        shape: t.shape,
        pieces,
    })
}

/// Piece `i` of tensor `tensor` (of `dims` dimensions): its boxes have
/// `dims` entries, do not overflow, and its byte count matches its box.
fn piece_of(
    tensor: &str,
    dims: usize,
    dtype: DType,
    i: usize,
    p: PieceJson,
) -> Result<Piece, PlanFileFault> {
    if [&p.dst_offset, &p.dst_local_offset, &p.src_offset, &p.extent]
        .iter()
        .any(|v| v.len() != dims)
    {
        return Err(PlanFileFault::PieceDims {
            tensor: tensor.to_string(),
            piece: i,
            dims,
        });
    }
    let fits = |o: &[u64]| {
        o.iter()
            .zip(&p.extent)
            .all(|(a, b)| a.checked_add(*b).is_some())
    };
    if !fits(&p.dst_offset) || !fits(&p.src_offset) || !fits(&p.dst_local_offset) {
        return Err(PlanFileFault::PieceOverflow {
            tensor: tensor.to_string(),
            piece: i,
        });
    }
    let volume = p.extent.iter().try_fold(1u64, |a, &b| a.checked_mul(b));
    if volume.and_then(|v| v.checked_mul(dtype.size_bytes())) != Some(p.bytes) {
        return Err(PlanFileFault::PieceBytes {
            tensor: tensor.to_string(),
            piece: i,
            bytes: p.bytes,
            extent: p.extent.clone(),
            dtype,
        });
    }
    let reduce = match p.op.as_str() {
        "copy" => false,
        "sum" => true,
        other => {
            return Err(PlanFileFault::PieceOp {
                tensor: tensor.to_string(),
                piece: i,
                op: other.to_string(),
            });
        }
    };
    Ok(Piece {
        dst_rank: p.dst_rank,
        dst_box: Region::new(p.dst_offset, p.extent.clone()),
        dst_local_offset: p.dst_local_offset,
        src_rank: p.src_rank,
        src_box: Region::new(p.src_offset, p.extent),
        local: p.local,
        reduce,
    })
}

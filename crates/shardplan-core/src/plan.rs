//! Slice-transfer plans: which rank sends which box of which tensor to which
//! rank. A plan is a value; [`crate::plan_transfer`] makes one and
//! [`crate::verify_plan`] checks one.

use std::collections::{BTreeMap, BTreeSet};

use crate::dtype::DType;
use crate::geometry::Region;

/// One copy: a box of a tensor from a source rank's buffer into a
/// destination rank's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Destination rank.
    pub dst_rank: u64,
    /// The box in global tensor coordinates.
    pub dst_box: Region,
    /// Where the box starts in the destination rank's local buffer.
    pub dst_local_offset: Vec<u64>,
    /// Source rank.
    pub src_rank: u64,
    /// The same elements as a box of the source rank's local buffer.
    pub src_box: Region,
    /// True when source and destination run on the same device: a local
    /// copy that costs no network traffic.
    pub local: bool,
    /// True when the source holds a partial sum: the destination adds the
    /// box into its accumulator instead of storing it. A destination
    /// element then receives one piece per partial term.
    pub reduce: bool,
}

/// The pieces of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Global shape.
    pub shape: Vec<u64>,
    /// Pieces, sorted by destination rank, then box.
    pub pieces: Vec<Piece>,
}

impl TensorPlan {
    /// Bytes of a piece of this tensor.
    pub fn piece_bytes(&self, p: &Piece) -> u64 {
        p.dst_box.volume().saturating_mul(self.dtype.size_bytes())
    }
}

/// How the planner picks among replicas that hold the same data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaChoice {
    /// Spread sends so the largest per-source send volume is minimal.
    Balance,
    /// Minimise the number of distinct (destination, source) file reads.
    MinFiles,
}

impl ReplicaChoice {
    /// `balance` or `min-files`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaChoice::Balance => "balance",
            ReplicaChoice::MinFiles => "min-files",
        }
    }
}

/// A complete plan between two strategies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePlan {
    /// Source strategy name.
    pub source: String,
    /// Destination strategy name.
    pub destination: String,
    /// Ranks of the source strategy.
    pub src_ranks: u64,
    /// Ranks of the destination strategy.
    pub dst_ranks: u64,
    /// How replicas were chosen.
    pub replica_choice: ReplicaChoice,
    /// Network bytes no plan can go below, computed apart from the planner.
    pub lower_bound_bytes: u64,
    /// The smallest possible largest per-source send volume (the fractional
    /// optimum of the replica assignment, rounded up).
    pub max_send_lower_bound_bytes: u64,
    /// Per tensor.
    pub tensors: Vec<TensorPlan>,
}

/// Totals of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanSummary {
    /// Bytes that cross the network.
    pub total_bytes: u64,
    /// The lower bound on network bytes.
    pub lower_bound_bytes: u64,
    /// Bytes copied on the same device.
    pub local_bytes: u64,
    /// Largest network bytes sent by one source rank.
    pub max_send_bytes: u64,
    /// Lower bound on `max_send_bytes`.
    pub max_send_lower_bound_bytes: u64,
    /// Largest network bytes received by one destination rank.
    pub max_recv_bytes: u64,
    /// Network messages (pieces that cross the network).
    pub messages: u64,
    /// All pieces, local ones included.
    pub pieces: u64,
}

/// Traffic of one rank.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RankTraffic {
    /// Network bytes sent (as a source rank).
    pub send_bytes: u64,
    /// Network bytes received (as a destination rank).
    pub recv_bytes: u64,
    /// Network messages sent.
    pub sent_messages: u64,
    /// Network messages received.
    pub received_messages: u64,
    /// Bytes copied locally into this destination rank.
    pub local_bytes: u64,
    /// Source ranks (checkpoint files) this destination rank reads,
    /// the local one included.
    pub files: BTreeSet<u64>,
}

impl SlicePlan {
    /// Per-rank traffic: sources keyed by source rank for sends, destinations
    /// by destination rank for receives and files.
    pub fn traffic(&self) -> (BTreeMap<u64, RankTraffic>, BTreeMap<u64, RankTraffic>) {
        let mut src: BTreeMap<u64, RankTraffic> = BTreeMap::new();
        let mut dst: BTreeMap<u64, RankTraffic> = BTreeMap::new();
        for t in &self.tensors {
            for p in &t.pieces {
                let bytes = t.piece_bytes(p);
                let d = dst.entry(p.dst_rank).or_default();
                d.files.insert(p.src_rank);
                if p.local {
                    d.local_bytes += bytes;
                } else {
                    d.recv_bytes += bytes;
                    d.received_messages += 1;
                    let s = src.entry(p.src_rank).or_default();
                    s.send_bytes += bytes;
                    s.sent_messages += 1;
                }
            }
        }
        (src, dst)
    }

    /// Totals.
    pub fn summary(&self) -> PlanSummary {
        let (src, dst) = self.traffic();
        let mut s = PlanSummary {
            lower_bound_bytes: self.lower_bound_bytes,
            max_send_lower_bound_bytes: self.max_send_lower_bound_bytes,
            ..Default::default()
        };
        for t in &self.tensors {
            for p in &t.pieces {
                let b = t.piece_bytes(p);
                s.pieces += 1;
                if p.local {
                    s.local_bytes += b;
                } else {
                    s.total_bytes += b;
                    s.messages += 1;
                }
            }
        }
        s.max_send_bytes = src.values().map(|r| r.send_bytes).max().unwrap_or(0);
        s.max_recv_bytes = dst.values().map(|r| r.recv_bytes).max().unwrap_or(0);
        s
    }
}

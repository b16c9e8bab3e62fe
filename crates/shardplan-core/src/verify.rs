//! The independent plan checker. It shares no code with the planner: it
//! recomputes from the layouts what each rank must hold and checks the plan
//! against that alone.

use std::collections::{BTreeMap, HashMap};

use crate::geometry::Region;
use crate::layout::TensorLayout;
use crate::plan::{Piece, SlicePlan, TensorPlan};
use crate::strategy::Strategy;

/// A defect found in a plan, naming the tensor, rank and box involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum PlanDefect {
    /// The plan names a tensor a strategy lacks, or disagrees on its dtype or shape.
    #[error("tensor `{tensor}`: {fault}")]
    #[diagnostic(
        code(shardplan::verify::tensor),
        help("plan and strategies must describe the same tensors")
    )]
    Tensor {
        /// Tensor (empty for a fault of the whole plan).
        tensor: String,
        /// What disagrees.
        fault: TensorFault,
    },
    /// A piece names a rank outside its strategy, or a malformed box.
    #[error("tensor `{tensor}`: piece {dst_box} from rank {src_rank} to rank {dst_rank}: {fault}")]
    #[diagnostic(
        code(shardplan::verify::piece),
        help(
            "each piece copies a box the source rank holds into the box the destination rank holds"
        )
    )]
    Piece {
        /// Tensor.
        tensor: String,
        /// Source rank.
        src_rank: u64,
        /// Destination rank.
        dst_rank: u64,
        /// Destination box.
        dst_box: Region,
        /// What is wrong.
        fault: PieceFault,
    },
    /// Two pieces write the same elements.
    #[error("tensor `{tensor}`: rank {dst_rank} receives {first} and {second}, which overlap")]
    #[diagnostic(
        code(shardplan::verify::overlap),
        help("every destination element must be written exactly once")
    )]
    Overlap {
        /// Tensor.
        tensor: String,
        /// Destination rank.
        dst_rank: u64,
        /// One box.
        first: Region,
        /// The other.
        second: Region,
    },
    /// Elements of a destination rank that no piece writes.
    #[error(
        "tensor `{tensor}`: rank {dst_rank} must hold {region} but the pieces cover {covered} of its {needed} elements"
    )]
    #[diagnostic(
        code(shardplan::verify::uncovered),
        help("every destination element must be written exactly once")
    )]
    Uncovered {
        /// Tensor.
        tensor: String,
        /// Destination rank.
        dst_rank: u64,
        /// What the rank holds.
        region: Region,
        /// Elements covered.
        covered: u64,
        /// Elements needed.
        needed: u64,
    },
    /// Network volume differs from the lower bound.
    #[error("the plan moves {moved} bytes over the network; the lower bound is {bound}")]
    #[diagnostic(
        code(shardplan::verify::volume),
        help("a piece that could be a local copy is sent over the network")
    )]
    Volume {
        /// Bytes moved.
        moved: u64,
        /// The bound.
        bound: u64,
    },
}

/// What is wrong with a plan's tensor as a whole ([`PlanDefect::Tensor`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorFault {
    /// The plan connects other rank counts than the strategies.
    #[error("the plan connects {plan_src} to {plan_dst} ranks, the strategies {src} to {dst}")]
    RankCounts {
        /// Source ranks of the plan.
        plan_src: u64,
        /// Destination ranks of the plan.
        plan_dst: u64,
        /// Source ranks of the strategy.
        src: u64,
        /// Destination ranks of the strategy.
        dst: u64,
    },
    /// The tensor is listed twice.
    #[error("listed twice in the plan")]
    Duplicate,
    /// A strategy lacks the tensor.
    #[error("not in both strategies")]
    Missing,
    /// The plan's dtype or shape is not a strategy's.
    #[error("the plan says {plan}, the {side} strategy {strategy}")]
    Mismatch {
        /// What the plan says (dtype and shape).
        plan: String,
        /// `source` or `destination`.
        side: &'static str,
        /// What the strategy says.
        strategy: String,
    },
}

/// What is wrong with one piece ([`PlanDefect::Piece`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PieceFault {
    /// The destination rank holds nothing of the tensor.
    #[error("destination rank {0} holds no part of the tensor")]
    DestinationHoldsNothing(u64),
    /// The source rank holds nothing of the tensor.
    #[error("source rank {0} holds no part of the tensor")]
    SourceHoldsNothing(u64),
    /// A box has another number of dimensions than the tensor.
    #[error("box rank differs from the tensor rank")]
    BoxRank,
    /// Source and destination boxes differ in extent.
    #[error("source box {0} and destination box differ in extent")]
    ExtentDiffers(Region),
    /// The box is empty.
    #[error("empty box")]
    EmptyBox,
    /// The destination box is not inside what the destination rank holds.
    #[error("outside what rank {rank} holds, {holds}")]
    OutsideDestination {
        /// The destination rank.
        rank: u64,
        /// What it holds.
        holds: Region,
    },
    /// The destination offset into the local buffer is wrong.
    #[error("destination local offset {got:?} should be {want:?} (rank {rank} holds {holds})")]
    LocalOffset {
        /// The offset the piece gives.
        got: Vec<u64>,
        /// The right one.
        want: Vec<u64>,
        /// The destination rank.
        rank: u64,
        /// What it holds.
        holds: Region,
    },
    /// The source box holds other elements than the destination box.
    #[error("source box {src_box} of rank {rank} holds other elements than the destination box")]
    OtherElements {
        /// The source box (in the source rank's buffer).
        src_box: Region,
        /// The source rank.
        rank: u64,
    },
    /// The source box is outside the source rank's buffer.
    #[error("source box {src_box} lies outside rank {rank}'s buffer of extent {extent:?}")]
    OutsideSource {
        /// The source box.
        src_box: Region,
        /// The source rank.
        rank: u64,
        /// The buffer's extent.
        extent: Vec<u64>,
    },
    /// Marked local between devices, or network on one device.
    #[error("marked {} but the ranks run on {} devices", if *local { "local" } else { "network" }, if *local { "different" } else { "the same" })]
    LocalFlag {
        /// What the piece says.
        local: bool,
    },
    /// A sum of a source that holds no partial sums, or a copy of one that does.
    #[error("op is {} but the source layout {} partial sums", if *reduce { "sum" } else { "copy" }, if *reduce { "holds no" } else { "holds" })]
    Reduce {
        /// What the piece says.
        reduce: bool,
    },
}

impl PieceFault {
    /// A stable code per fault, `shardplan::verify::piece::<fault>`.
    pub fn code(&self) -> &'static str {
        match self {
            PieceFault::DestinationHoldsNothing(_) => {
                "shardplan::verify::piece::destination_holds_nothing"
            }
            PieceFault::SourceHoldsNothing(_) => "shardplan::verify::piece::source_holds_nothing",
            PieceFault::BoxRank => "shardplan::verify::piece::box_rank",
            PieceFault::ExtentDiffers(_) => "shardplan::verify::piece::extent_differs",
            PieceFault::EmptyBox => "shardplan::verify::piece::empty_box",
            PieceFault::OutsideDestination { .. } => {
                "shardplan::verify::piece::outside_destination"
            }
            PieceFault::LocalOffset { .. } => "shardplan::verify::piece::local_offset",
            PieceFault::OtherElements { .. } => "shardplan::verify::piece::other_elements",
            PieceFault::OutsideSource { .. } => "shardplan::verify::piece::outside_source",
            PieceFault::LocalFlag { .. } => "shardplan::verify::piece::local_flag",
            PieceFault::Reduce { .. } => "shardplan::verify::piece::reduce",
        }
    }
}

/// What a valid plan moves, as the verifier recomputed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Pieces checked.
    pub pieces: u64,
    /// Network bytes, equal to the lower bound.
    pub network_bytes: u64,
    /// Local bytes.
    pub local_bytes: u64,
}

/// A plan that passed the verifier against the strategies it connects.
///
/// Only [`verify_plan`] makes one, so whatever takes a `VerifiedPlan` (the
/// executor, the plan-JSON writer, the checkpoint writer) carries out a
/// checked plan and nothing else; it reads as the [`SlicePlan`] it holds.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use shardplan_core::*;
///
/// let t = TensorInfo { name: "w".into(), shape: vec![8], dtype: DType::F32 };
/// let m2 = Arc::new(DeviceMesh::new([("tp", 2)]).unwrap());
/// let split = LayoutConfig::new(vec![DimSplit::over(["tp"])]);
/// let split = TensorLayout::new(m2.clone(), &t.shape, &split).unwrap();
/// let whole = TensorLayout::replicated(m2.clone(), &t.shape).unwrap();
/// let src = Strategy::new("split", m2.clone(), vec![t.clone()], vec![split]).unwrap();
/// let dst = Strategy::new("whole", m2.clone(), vec![t.clone()], vec![whole]).unwrap();
/// let cfg = PlanConfig::new(ReplicaChoice::Balance);
/// let mut plan = plan_transfer(&src, &dst, &cfg).unwrap();
/// let verified = verify_plan(plan.clone(), &src, &dst).unwrap();
/// assert_eq!(verified.stats().network_bytes, 2 * 4 * 4);
/// // A plan with a piece dropped is not verified.
/// plan.tensors[0].pieces.pop();
/// assert!(verify_plan(plan, &src, &dst).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct VerifiedPlan {
    plan: SlicePlan,
    stats: Verified,
}

impl VerifiedPlan {
    /// The plan.
    pub fn plan(&self) -> &SlicePlan {
        &self.plan
    }

    /// What the verifier recomputed.
    pub fn stats(&self) -> &Verified {
        &self.stats
    }

    /// The plan, no longer marked verified (to change it).
    pub fn into_plan(self) -> SlicePlan {
        self.plan
    }
}

impl std::ops::Deref for VerifiedPlan {
    type Target = SlicePlan;

    fn deref(&self) -> &SlicePlan {
        &self.plan
    }
}

/// Verifies `plan` ([`check_plan`]) and marks it so.
///
/// # Errors
///
/// The first [`PlanDefect`] found, in tensor and rank order.
#[allow(clippy::result_large_err)]
pub fn verify_plan(
    plan: SlicePlan,
    src: &Strategy,
    dst: &Strategy,
) -> Result<VerifiedPlan, PlanDefect> {
    let stats = check_plan(&plan, src, dst)?;
    Ok(VerifiedPlan { plan, stats })
}

/// Checks `plan` against the strategies it claims to connect: every
/// destination element written exactly once; every source box inside what
/// its rank holds and carrying the same global elements; dtypes and shapes
/// as in the strategies; local flags true exactly for same-device copies;
/// network volume equal to the lower bound. Runs in O(n log n) in the number
/// of pieces for tensors of up to two dimensions.
///
/// # Errors
///
/// The first [`PlanDefect`] found, in tensor and rank order.
// A defect ends the check once; its size does not matter.
#[allow(clippy::result_large_err)]
pub fn check_plan(
    plan: &SlicePlan,
    src: &Strategy,
    dst: &Strategy,
) -> Result<Verified, PlanDefect> {
    check_header(plan, src, dst)?;
    let mut out = Verified {
        pieces: 0,
        network_bytes: 0,
        local_bytes: 0,
    };
    let src_device: HashMap<u64, u64> = (0..src.mesh().rank_count())
        .map(|r| (src.mesh().device_of(r).unwrap_or(r), r))
        .collect();
    let mut bound = 0u64;
    for t in &plan.tensors {
        let (sl, dl) = tensor_layouts(t, src, dst)?;
        let per_dst = check_pieces(t, sl, dl, src, dst, &mut out)?;
        bound += sweep_ranks(t, sl, dl, dst, &src_device, per_dst)?;
    }
    // The volume must be the bound, and the bound the plan reports the
    // true one.
    for moved in [out.network_bytes, plan.lower_bound_bytes] {
        if moved != bound {
            return Err(PlanDefect::Volume { moved, bound });
        }
    }
    Ok(out)
}

/// The plan's rank counts are the strategies', and no tensor is in it
/// twice.
#[allow(clippy::result_large_err)]
fn check_header(plan: &SlicePlan, src: &Strategy, dst: &Strategy) -> Result<(), PlanDefect> {
    if plan.src_ranks != src.mesh().rank_count() || plan.dst_ranks != dst.mesh().rank_count() {
        return Err(PlanDefect::Tensor {
            tensor: String::new(),
            fault: TensorFault::RankCounts {
                plan_src: plan.src_ranks,
                plan_dst: plan.dst_ranks,
                src: src.mesh().rank_count(),
                dst: dst.mesh().rank_count(),
            },
        });
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(t) = plan.tensors.iter().find(|t| !seen.insert(t.name.as_str())) {
        return Err(PlanDefect::Tensor {
            tensor: t.name.clone(),
            fault: TensorFault::Duplicate,
        });
    }
    Ok(())
}

/// The source and destination layouts of a planned tensor, which both
/// strategies have with the plan's dtype and shape.
#[allow(clippy::result_large_err)]
fn tensor_layouts<'s>(
    t: &TensorPlan,
    src: &'s Strategy,
    dst: &'s Strategy,
) -> Result<(&'s TensorLayout, &'s TensorLayout), PlanDefect> {
    let tensor_err = |fault: TensorFault| PlanDefect::Tensor {
        tensor: t.name.clone(),
        fault,
    };
    let (Some(si), Some(di)) = (src.tensor(&t.name), dst.tensor(&t.name)) else {
        return Err(tensor_err(TensorFault::Missing));
    };
    for (side, info) in [("source", si), ("destination", di)] {
        if info.dtype != t.dtype || info.shape != t.shape {
            return Err(tensor_err(TensorFault::Mismatch {
                plan: format!("{} {:?}", t.dtype, t.shape),
                side,
                strategy: format!("{} {:?}", info.dtype, info.shape),
            }));
        }
    }
    let layout = |s: &'s Strategy| s.layout(&t.name).expect("tensor present");
    Ok((layout(src), layout(dst)))
}

/// The boxes written per destination rank and partial term (the source
/// rank's coordinates on the partial axes; one empty term without them).
type BoxesPerRank<'p> = BTreeMap<(u64, Vec<u64>), Vec<&'p Region>>;

/// Each piece alone ([`check_piece`]), counted into `out`; the boxes it
/// writes, per destination rank and partial term.
#[allow(clippy::result_large_err)]
fn check_pieces<'p>(
    t: &'p TensorPlan,
    sl: &TensorLayout,
    dl: &TensorLayout,
    src: &Strategy,
    dst: &Strategy,
    out: &mut Verified,
) -> Result<BoxesPerRank<'p>, PlanDefect> {
    let size = t.dtype.size_bytes();
    let term_of = |rank: u64| -> Vec<u64> {
        let c = sl.mesh().coords(rank).unwrap_or_default();
        sl.partial()
            .iter()
            .map(|&a| c.get(a).copied().unwrap_or(0))
            .collect()
    };
    let mut per_dst = BoxesPerRank::new();
    for p in &t.pieces {
        check_piece(p, t.shape.len(), sl, dl, src, dst).map_err(|fault| PlanDefect::Piece {
            tensor: t.name.clone(),
            src_rank: p.src_rank,
            dst_rank: p.dst_rank,
            dst_box: p.dst_box.clone(),
            fault,
        })?;
        let bytes = p.dst_box.volume() * size;
        if p.local {
            out.local_bytes += bytes;
        } else {
            out.network_bytes += bytes;
        }
        out.pieces += 1;
        per_dst
            .entry((p.dst_rank, term_of(p.src_rank)))
            .or_default()
            .push(&p.dst_box);
    }
    Ok(per_dst)
}

/// Every partial term of a layout: each combination of coordinates on its
/// partial axes (one empty term without them).
fn partial_terms(sl: &TensorLayout) -> Vec<Vec<u64>> {
    sl.partial().iter().fold(vec![Vec::new()], |acc, &a| {
        acc.into_iter()
            .flat_map(|t| {
                (0..sl.mesh().axis_size(a)).map(move |c| {
                    let mut t = t.clone();
                    t.push(c);
                    t
                })
            })
            .collect()
    })
}

/// The per-rank sweep: every destination rank's region written exactly
/// once per partial term ([`check_coverage`]). Returns the bytes no plan
/// can avoid sending for the tensor: all but the same-device part.
#[allow(clippy::result_large_err)]
fn sweep_ranks(
    t: &TensorPlan,
    sl: &TensorLayout,
    dl: &TensorLayout,
    dst: &Strategy,
    src_device: &HashMap<u64, u64>,
    mut per_dst: BoxesPerRank<'_>,
) -> Result<u64, PlanDefect> {
    let terms = partial_terms(sl);
    let size = t.dtype.size_bytes();
    let mut bound = 0u64;
    for d in 0..dst.mesh().rank_count() {
        let Some(need) = dl.region_of(d) else {
            continue;
        };
        for term in &terms {
            let boxes = per_dst.remove(&(d, term.clone())).unwrap_or_default();
            check_coverage(&t.name, d, &need, &boxes)?;
        }
        let device = dst.mesh().device_of(d).unwrap_or(d);
        let local = src_device
            .get(&device)
            .and_then(|&s| sl.region_of(s))
            .and_then(|h| h.intersect(&need))
            .map_or(0, |r| r.volume());
        bound += (need.volume() * terms.len() as u64 - local) * size;
    }
    Ok(bound)
}

/// The sweep of one destination rank (and partial term): the boxes its
/// pieces write do not overlap and add up to what it holds, so every
/// element is written exactly once.
// A defect ends the check once; its size does not matter.
#[allow(clippy::result_large_err)]
fn check_coverage(
    tensor: &str,
    d: u64,
    need: &Region,
    boxes: &[&Region],
) -> Result<(), PlanDefect> {
    if let Some((a, b)) = find_overlap(boxes) {
        return Err(PlanDefect::Overlap {
            tensor: tensor.to_string(),
            dst_rank: d,
            first: a.clone(),
            second: b.clone(),
        });
    }
    let covered: u64 = boxes.iter().map(|b| b.volume()).sum();
    if covered != need.volume() {
        return Err(PlanDefect::Uncovered {
            tensor: tensor.to_string(),
            dst_rank: d,
            region: need.clone(),
            covered,
            needed: need.volume(),
        });
    }
    Ok(())
}

/// The checks of one piece alone: both ranks hold the tensor, the boxes
/// have the tensor's rank and one extent, the destination box is inside
/// what its rank holds at the right local offset, the source box holds the
/// same global elements inside the source buffer, the local flag matches
/// the devices, and the op matches partial sums.
fn check_piece(
    p: &Piece,
    rank: usize,
    sl: &TensorLayout,
    dl: &TensorLayout,
    src: &Strategy,
    dst: &Strategy,
) -> Result<(), PieceFault> {
    let Some(need) = dl.region_of(p.dst_rank) else {
        return Err(PieceFault::DestinationHoldsNothing(p.dst_rank));
    };
    let Some(have) = sl.region_of(p.src_rank) else {
        return Err(PieceFault::SourceHoldsNothing(p.src_rank));
    };
    if p.dst_box.rank() != rank || p.src_box.rank() != rank {
        return Err(PieceFault::BoxRank);
    }
    if p.dst_box.extent() != p.src_box.extent() {
        return Err(PieceFault::ExtentDiffers(p.src_box.clone()));
    }
    if p.dst_box.is_empty() {
        return Err(PieceFault::EmptyBox);
    }
    if !need.contains_region(&p.dst_box) {
        return Err(PieceFault::OutsideDestination {
            rank: p.dst_rank,
            holds: need,
        });
    }
    let local_start: Vec<u64> = p
        .dst_box
        .offset()
        .iter()
        .zip(need.offset())
        .map(|(a, b)| a - b)
        .collect();
    if p.dst_local_offset != local_start {
        return Err(PieceFault::LocalOffset {
            got: p.dst_local_offset.clone(),
            want: local_start,
            rank: p.dst_rank,
            holds: need,
        });
    }
    // The source box, in global coordinates, must be the same
    // elements and lie inside what the source rank holds.
    let global: Option<Vec<u64>> = p
        .src_box
        .offset()
        .iter()
        .zip(have.offset())
        .map(|(a, b)| a.checked_add(*b))
        .collect();
    let inside = global.as_ref().is_some_and(|g| {
        (0..g.len()).all(|k| p.src_box.end(k) <= have.extent()[k])
            && g.as_slice() == p.dst_box.offset()
    });
    if !inside {
        let fault = if (0..p.src_box.rank()).all(|k| p.src_box.end(k) <= have.extent()[k]) {
            PieceFault::OtherElements {
                src_box: p.src_box.clone(),
                rank: p.src_rank,
            }
        } else {
            PieceFault::OutsideSource {
                src_box: p.src_box.clone(),
                rank: p.src_rank,
                extent: have.extent().to_vec(),
            }
        };
        return Err(fault);
    }
    let same_device =
        src.mesh().device_of(p.src_rank).ok() == dst.mesh().device_of(p.dst_rank).ok();
    if p.local != same_device {
        return Err(PieceFault::LocalFlag { local: p.local });
    }
    if p.reduce == sl.partial().is_empty() {
        return Err(PieceFault::Reduce { reduce: p.reduce });
    }
    Ok(())
}

/// Two boxes that share an element, if any. Boxes of up to two dimensions
/// are checked by a sweep in O(n log n); higher ranks sweep the first
/// dimension and compare the boxes alive at the same time.
fn find_overlap<'a>(boxes: &[&'a Region]) -> Option<(&'a Region, &'a Region)> {
    let rank = boxes.first()?.rank();
    match rank {
        0 => (boxes.len() > 1).then(|| (boxes[0], boxes[1])),
        1 => {
            let mut v: Vec<&Region> = boxes.to_vec();
            v.sort_by_key(|b| b.offset()[0]);
            v.windows(2)
                .find(|w| w[0].end(0) > w[1].offset()[0])
                .map(|w| (w[0], w[1]))
        }
        2 => sweep_2d(boxes),
        _ => sweep_nd(boxes),
    }
}

fn sweep_2d<'a>(boxes: &[&'a Region]) -> Option<(&'a Region, &'a Region)> {
    // Events along dim 0: ends before starts at the same coordinate.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(boxes.len() * 2);
    for (i, b) in boxes.iter().enumerate() {
        events.push((b.offset()[0], true, i));
        events.push((b.end(0), false, i));
    }
    events.sort_by_key(|&(x, is_start, i)| (x, is_start, i));
    // Active boxes keyed by their dim-1 start; their dim-1 ranges are disjoint.
    let mut active: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, is_start, i) in events {
        let b = boxes[i];
        let (lo, hi) = (b.offset()[1], b.end(1));
        if !is_start {
            if active.get(&lo) == Some(&i) {
                active.remove(&lo);
            }
            continue;
        }
        if let Some((_, &j)) = active.range(..=lo).next_back()
            && boxes[j].end(1) > lo
        {
            return Some((boxes[j], b));
        }
        if let Some((_, &j)) = active.range(lo..).next()
            && boxes[j].offset()[1] < hi
        {
            return Some((boxes[j], b));
        }
        active.insert(lo, i);
    }
    None
}

fn sweep_nd<'a>(boxes: &[&'a Region]) -> Option<(&'a Region, &'a Region)> {
    let mut v: Vec<&Region> = boxes.to_vec();
    v.sort_by_key(|b| b.offset()[0]);
    let mut alive: Vec<&Region> = Vec::new();
    for b in v {
        alive.retain(|a| a.end(0) > b.offset()[0]);
        if let Some(a) = alive.iter().find(|a| a.intersect(b).is_some()) {
            return Some((a, b));
        }
        alive.push(b);
    }
    None
}

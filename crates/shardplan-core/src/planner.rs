//! The planner: minimal-volume, balanced slice-transfer plans.
//!
//! For every tensor and destination rank, the destination box is cut along
//! the source layout's block boundaries; each cell lies in exactly one
//! source shard. A cell whose shard the source rank on the destination's
//! own device holds becomes a local copy; every other cell is sent once by
//! one of the shard's holders. That reaches the volume lower bound by
//! construction. Which holder sends is then chosen globally: as a max-flow
//! problem that minimises the largest per-source send volume (cells may be
//! split between holders along their outermost dimension), or greedily to
//! minimise the number of files each destination reads.

use std::collections::{BTreeSet, HashMap};

use petgraph::Graph;
use petgraph::algo::dinics;
use petgraph::graph::NodeIndex;

use crate::bounds::{source_rank_by_device, volume_lower_bound};
use crate::geometry::Region;
use crate::layout::TensorLayout;
use crate::plan::{Piece, ReplicaChoice, SlicePlan, TensorPlan};
use crate::strategy::Strategy;

/// Pieces a plan may have before planning is refused.
pub const MAX_PIECES: u64 = 20_000_000;

/// What to plan and how.
///
/// Built with [`PlanConfig::new`] and [`with_tensors`](Self::with_tensors);
/// the fields can be read and changed directly.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanConfig {
    /// How replicas are chosen.
    pub replica_choice: ReplicaChoice,
    /// Tensors to plan, by name; `None` plans every tensor.
    pub tensors: Option<Vec<String>>,
}

impl PlanConfig {
    /// Planning every tensor, choosing among replicas by `replica_choice`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shardplan_core::*;
    ///
    /// // Two tensors `a` and `b` of 8 elements, from split over tp to whole.
    /// let t = |name: &str| TensorInfo { name: name.into(), shape: vec![8], dtype: DType::F32 };
    /// let mesh = Arc::new(DeviceMesh::new([("tp", 2)]).unwrap());
    /// let strategy = |name: &str, dim: DimSplit| {
    ///     let l = TensorLayout::new(mesh.clone(), &[8], &LayoutConfig::new(vec![dim])).unwrap();
    ///     Strategy::new(name, mesh.clone(), vec![t("a"), t("b")], vec![l.clone(), l]).unwrap()
    /// };
    /// let src = strategy("split", DimSplit::over(["tp"]));
    /// let dst = strategy("whole", DimSplit::none());
    ///
    /// let all = PlanConfig::new(ReplicaChoice::Balance);
    /// assert_eq!(plan_transfer(&src, &dst, &all).unwrap().tensors.len(), 2);
    /// let only_b = PlanConfig::new(ReplicaChoice::Balance).with_tensors(["b"]);
    /// let plan = plan_transfer(&src, &dst, &only_b).unwrap();
    /// assert_eq!(plan.tensors.len(), 1);
    /// // A name no strategy has is refused.
    /// let typo = PlanConfig::new(ReplicaChoice::Balance).with_tensors(["c"]);
    /// assert!(plan_transfer(&src, &dst, &typo).is_err());
    /// ```
    pub fn new(replica_choice: ReplicaChoice) -> Self {
        PlanConfig {
            replica_choice,
            tensors: None,
        }
    }

    /// Returns the config planning only the tensors named in `tensors`,
    /// replacing any list given before.
    pub fn with_tensors<S: Into<String>>(mut self, tensors: impl IntoIterator<Item = S>) -> Self {
        self.tensors = Some(tensors.into_iter().map(Into::into).collect());
        self
    }
}

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum PlanError {
    /// A tensor of one strategy is missing from the other.
    #[error("tensor `{tensor}` is not in strategy `{strategy}`")]
    #[diagnostic(
        code(shardplan::plan::missing_tensor),
        help("both strategies must lay out the same tensors")
    )]
    MissingTensor {
        /// Tensor name.
        tensor: String,
        /// The strategy that lacks it.
        strategy: String,
    },
    /// The two strategies disagree on a tensor's shape or dtype.
    #[error("tensor `{tensor}` is {src} in the source strategy but {dst} in the destination")]
    #[diagnostic(
        code(shardplan::plan::tensor_mismatch),
        help("a transfer moves bytes; shapes and dtypes must agree")
    )]
    TensorMismatch {
        /// Tensor name.
        tensor: String,
        /// Shape and dtype in the source.
        src: String,
        /// Shape and dtype in the destination.
        dst: String,
    },
    /// A destination layout with partial-sum axes.
    #[error("tensor `{tensor}` holds partial sums in the destination strategy `{strategy}`")]
    #[diagnostic(
        code(shardplan::plan::partial),
        help("a destination holds reduced values; drop `partial` from its layout")
    )]
    Partial {
        /// Tensor name.
        tensor: String,
        /// Strategy name.
        strategy: String,
    },
    /// The plan would be too large.
    #[error("the plan would have at least {estimate} pieces, over the budget of {max}")]
    #[diagnostic(
        code(shardplan::plan::too_many_pieces),
        help(
            "the layouts cut each other very finely; plan fewer tensors at a time (--tensor) or check the layouts"
        )
    )]
    TooManyPieces {
        /// Pieces counted so far.
        estimate: u64,
        /// The budget.
        max: u64,
    },
}

/// A network cell before its source is chosen.
struct Pending {
    tensor: usize,
    dst_rank: u64,
    dst_box: Region,
    group: usize,
}

/// Plans the transfer of every tensor (or those `config` names) from `src`
/// to `dst`.
///
/// # Errors
///
/// [`PlanError`] when the strategies disagree on a tensor, a layout holds
/// partial sums, or the plan would exceed [`MAX_PIECES`].
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use shardplan_core::*;
///
/// let t = TensorInfo { name: "w".into(), shape: vec![8, 4], dtype: DType::F32 };
/// let m4 = Arc::new(DeviceMesh::new([("tp", 4)]).unwrap());
/// let m2 = Arc::new(DeviceMesh::new([("tp", 2)]).unwrap());
/// let rows = |m: &Arc<DeviceMesh>| {
///     let cfg = LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()]);
///     TensorLayout::new(m.clone(), &t.shape, &cfg).unwrap()
/// };
/// let src = Strategy::new("tp4", m4.clone(), vec![t.clone()], vec![rows(&m4)]).unwrap();
/// let dst = Strategy::new("tp2", m2.clone(), vec![t.clone()], vec![rows(&m2)]).unwrap();
/// let cfg = PlanConfig::new(ReplicaChoice::Balance);
/// let plan = plan_transfer(&src, &dst, &cfg).unwrap();
/// // Rank 0 keeps rows 0..2 and receives rows 2..4 from rank 1; rank 1
/// // needs rows 4..8, none of which its own device holds: 6 rows of 16 bytes.
/// assert_eq!(plan.summary().total_bytes, 6 * 16);
/// assert!(check_plan(&plan, &src, &dst).is_ok());
/// ```
pub fn plan_transfer(
    src: &Strategy,
    dst: &Strategy,
    config: &PlanConfig,
) -> Result<SlicePlan, PlanError> {
    let names = selected_tensors(src, dst, config)?;
    check_piece_budget(src, dst, &names)?;
    let by_device = source_rank_by_device(src);
    let mut needs = Needs::default();
    let mut tensors: Vec<TensorPlan> = names
        .iter()
        .enumerate()
        .map(|(ti, name)| needs.add_tensor(src, dst, &by_device, ti, name))
        .collect();
    let (assignment, max_send_bound) =
        needs.assign_senders(config.replica_choice, &tensors, src, dst, &by_device);
    place_remote(assignment, &mut tensors, src, dst);
    for t in &mut tensors {
        coalesce(&mut t.pieces);
    }
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(SlicePlan {
        source: src.name().to_string(),
        destination: dst.name().to_string(),
        src_ranks: src.mesh().rank_count(),
        dst_ranks: dst.mesh().rank_count(),
        replica_choice: config.replica_choice,
        lower_bound_bytes: volume_lower_bound(src, dst, &name_refs),
        max_send_lower_bound_bytes: max_send_bound,
        tensors,
    })
}

/// The network cells of every tensor, before their senders are chosen,
/// with the replica groups (sets of source ranks holding the same values)
/// they draw from.
#[derive(Default)]
struct Needs {
    /// Each group's holders.
    groups: Vec<Vec<u64>>,
    /// The group of a set of holders.
    group_of: HashMap<Vec<u64>, usize>,
    pending: Vec<Pending>,
}

impl Needs {
    /// Tensor `ti`'s plan with its local pieces (a destination's own
    /// device holds the cell); its network cells join `self`.
    fn add_tensor(
        &mut self,
        src: &Strategy,
        dst: &Strategy,
        by_device: &HashMap<u64, u64>,
        ti: usize,
        name: &str,
    ) -> TensorPlan {
        let (sl, dl) = (
            src.layout(name).expect("checked"),
            dst.layout(name).expect("checked"),
        );
        let info = dst.tensor(name).expect("checked");
        let mut plan = TensorPlan {
            name: name.to_string(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            pieces: Vec::new(),
        };
        for d in 0..dst.mesh().rank_count() {
            let Some(need) = dl.region_of(d).filter(|r| !r.is_empty()) else {
                continue;
            };
            let device = dst.mesh().device_of(d).unwrap_or(d);
            let local_src = by_device.get(&device).copied().filter(|&s| sl.holds(s));
            let local = local_src.and_then(|s| sl.region_of(s).map(|held| (s, held)));
            self.add_rank(sl, ti, d, &need, local.as_ref(), &mut plan.pieces);
        }
        plan
    }

    /// Destination rank `d` of tensor `ti` needs `need`: one cell per
    /// source block it overlaps and partial term, sent locally by `local`
    /// (the source rank on `d`'s device and what it holds) when it holds
    /// the cell, else left for [`Self::assign_senders`].
    fn add_rank(
        &mut self,
        sl: &TensorLayout,
        ti: usize,
        d: u64,
        need: &Region,
        local: Option<&(u64, Region)>,
        pieces: &mut Vec<Piece>,
    ) {
        // Per dimension, the source blocks the box overlaps.
        let ranges: Vec<std::ops::Range<u64>> = sl
            .dims()
            .iter()
            .enumerate()
            .map(|(k, dim)| dim.blocks_overlapping(need.offset()[k], need.end(k)))
            .collect();
        for_each_cell(&ranges, |blocks| {
            let Some(cell) = block_cell(sl, need, blocks) else {
                return;
            };
            let holders = sl.holders(cell.offset()).expect("cell inside the tensor");
            // One contribution per partial term (a single term when the
            // source holds reduced values).
            for holders in split_by_term(sl, holders) {
                match local.filter(|(s, _)| holders.contains(s)) {
                    Some((s, held)) => {
                        pieces.push(piece(sl, need, held, d, cell.clone(), *s, true));
                    }
                    None => {
                        let group = self.group(holders);
                        self.pending.push(Pending {
                            tensor: ti,
                            dst_rank: d,
                            dst_box: cell.clone(),
                            group,
                        });
                    }
                }
            }
        });
    }

    /// The group of `holders`, new if no cell drew from them yet.
    fn group(&mut self, holders: Vec<u64>) -> usize {
        let next = self.groups.len();
        let g = *self.group_of.entry(holders.clone()).or_insert(next);
        if g == next {
            self.groups.push(holders);
        }
        g
    }

    /// Who sends each network cell (a cell may be cut between holders),
    /// and the lower bound on the largest rank's sent bytes.
    fn assign_senders<'a>(
        &'a self,
        choice: ReplicaChoice,
        tensors: &[TensorPlan],
        src: &Strategy,
        dst: &Strategy,
        by_device: &HashMap<u64, u64>,
    ) -> (Vec<(&'a Pending, u64, Region)>, u64) {
        let mut demand = vec![0u64; self.groups.len()];
        for p in &self.pending {
            demand[p.group] += p
                .dst_box
                .volume()
                .saturating_mul(tensors[p.tensor].dtype.size_bytes());
        }
        let (quota, bound) = balance(&self.groups, &demand);
        let assignment = match choice {
            ReplicaChoice::Balance => split_by_quota(&self.pending, &self.groups, &quota, tensors),
            ReplicaChoice::MinFiles => {
                min_files(&self.pending, &self.groups, tensors, src, dst, by_device)
            }
        };
        (assignment, bound)
    }
}

/// The cell of source blocks `blocks` inside `need`, if not empty.
fn block_cell(sl: &TensorLayout, need: &Region, blocks: &[u64]) -> Option<Region> {
    let mut offset = Vec::with_capacity(blocks.len());
    let mut extent = Vec::with_capacity(blocks.len());
    for (k, &b) in blocks.iter().enumerate() {
        let (s, e) = sl.dims()[k].block(b);
        let lo = s.max(need.offset()[k]);
        let hi = e.min(need.end(k));
        if hi <= lo {
            return None;
        }
        offset.push(lo);
        extent.push(hi - lo);
    }
    Some(Region::new(offset, extent))
}

/// Adds the network pieces the senders were chosen for; each source and
/// destination region is looked up once per (tensor, rank).
fn place_remote(
    assignment: Vec<(&Pending, u64, Region)>,
    tensors: &mut [TensorPlan],
    src: &Strategy,
    dst: &Strategy,
) {
    let layouts: Vec<(&TensorLayout, &TensorLayout)> = tensors
        .iter()
        .map(|t| {
            (
                src.layout(&t.name).expect("checked"),
                dst.layout(&t.name).expect("checked"),
            )
        })
        .collect();
    let mut src_regions: HashMap<(usize, u64), Region> = HashMap::new();
    let mut dst_regions: HashMap<(usize, u64), Region> = HashMap::new();
    for (p, src_rank, dst_box) in assignment {
        let (sl, dl) = layouts[p.tensor];
        let held = src_regions
            .entry((p.tensor, src_rank))
            .or_insert_with(|| sl.region_of(src_rank).expect("holder holds the tensor"));
        let need = dst_regions
            .entry((p.tensor, p.dst_rank))
            .or_insert_with(|| {
                dl.region_of(p.dst_rank)
                    .expect("destination holds the tensor")
            });
        let pc = piece(sl, need, held, p.dst_rank, dst_box, src_rank, false);
        tensors[p.tensor].pieces.push(pc);
    }
}

/// A piece of `dst_box` from `src_rank` (holding `held`) to `dst_rank`
/// (holding `need`).
fn piece(
    sl: &TensorLayout,
    need: &Region,
    held: &Region,
    dst_rank: u64,
    dst_box: Region,
    src_rank: u64,
    local: bool,
) -> Piece {
    Piece {
        dst_rank,
        src_box: dst_box.relative_to(held),
        dst_local_offset: dst_box.relative_to(need).offset().to_vec(),
        dst_box,
        src_rank,
        local,
        reduce: !sl.partial().is_empty(),
    }
}

/// Holders grouped by the partial term they hold (their coordinates on the
/// partial axes), in term order.
fn split_by_term(sl: &TensorLayout, holders: Vec<u64>) -> Vec<Vec<u64>> {
    if sl.partial().is_empty() {
        return vec![holders];
    }
    let mut terms: std::collections::BTreeMap<Vec<u64>, Vec<u64>> = Default::default();
    for h in holders {
        let c = sl.mesh().coords(h).expect("holder on the mesh");
        let key = sl.partial().iter().map(|&a| c[a]).collect();
        terms.entry(key).or_default().push(h);
    }
    terms.into_values().collect()
}

/// Refuses, before any work, a plan whose cells (pieces before replica
/// splitting) would exceed [`MAX_PIECES`]: counting them costs one box per
/// destination rank and tensor.
fn check_piece_budget(src: &Strategy, dst: &Strategy, names: &[String]) -> Result<(), PlanError> {
    let mut estimate = 0u64;
    for name in names {
        let (sl, dl) = (
            src.layout(name).expect("checked"),
            dst.layout(name).expect("checked"),
        );
        let terms: u64 = sl
            .partial()
            .iter()
            .map(|&a| sl.mesh().axis_size(a))
            .product();
        for d in 0..dst.mesh().rank_count() {
            let Some(need) = dl.region_of(d) else {
                continue;
            };
            let cells = sl
                .dims()
                .iter()
                .enumerate()
                .map(|(k, dim)| {
                    let r = dim.blocks_overlapping(need.offset()[k], need.end(k));
                    r.end - r.start
                })
                .fold(terms, u64::saturating_mul);
            estimate = estimate.saturating_add(cells);
            if estimate > MAX_PIECES {
                return Err(PlanError::TooManyPieces {
                    estimate,
                    max: MAX_PIECES,
                });
            }
        }
    }
    Ok(())
}

fn selected_tensors(
    src: &Strategy,
    dst: &Strategy,
    config: &PlanConfig,
) -> Result<Vec<String>, PlanError> {
    let names: Vec<String> = match &config.tensors {
        Some(list) => list.clone(),
        None => {
            for t in dst.tensors() {
                if src.tensor(&t.name).is_none() {
                    return Err(PlanError::MissingTensor {
                        tensor: t.name.clone(),
                        strategy: src.name().to_string(),
                    });
                }
            }
            src.tensors().iter().map(|t| t.name.clone()).collect()
        }
    };
    for name in &names {
        let (s, d) = match (src.tensor(name), dst.tensor(name)) {
            (Some(s), Some(d)) => (s, d),
            (None, _) => {
                return Err(PlanError::MissingTensor {
                    tensor: name.clone(),
                    strategy: src.name().to_string(),
                });
            }
            (_, None) => {
                return Err(PlanError::MissingTensor {
                    tensor: name.clone(),
                    strategy: dst.name().to_string(),
                });
            }
        };
        if s.shape != d.shape || s.dtype != d.dtype {
            return Err(PlanError::TensorMismatch {
                tensor: name.clone(),
                src: format!("{} {:?}", s.dtype, s.shape),
                dst: format!("{} {:?}", d.dtype, d.shape),
            });
        }
        if !dst.layout(name).expect("present").partial().is_empty() {
            return Err(PlanError::Partial {
                tensor: name.clone(),
                strategy: dst.name().to_string(),
            });
        }
    }
    Ok(names)
}

/// Calls `f` with every combination of block indices, last dimension fastest.
fn for_each_cell(ranges: &[std::ops::Range<u64>], mut f: impl FnMut(&[u64])) {
    if ranges.iter().any(|r| r.is_empty()) {
        return;
    }
    let mut idx: Vec<u64> = ranges.iter().map(|r| r.start).collect();
    loop {
        f(&idx);
        let mut k = ranges.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < ranges[k].end {
                break;
            }
            idx[k] = ranges[k].start;
        }
    }
}

/// Bytes each source sends for each group: `quota[g]` lists `(rank,
/// bytes)`. Returns the quotas and the smallest feasible largest send.
///
/// Groups with one holder fix that holder's load; only groups with a
/// choice go into the max-flow, whose feasibility is searched over the
/// largest load.
fn balance(groups: &[Vec<u64>], demand: &[u64]) -> (Vec<Vec<(u64, u64)>>, u64) {
    let mut fixed: HashMap<u64, u64> = HashMap::new();
    for (g, &d) in groups.iter().zip(demand) {
        if g.len() == 1 {
            *fixed.entry(g[0]).or_default() += d;
        }
    }
    let multi: Vec<usize> = (0..groups.len()).filter(|&g| groups[g].len() > 1).collect();
    let max_fixed = fixed.values().copied().max().unwrap_or(0);
    let mut quota: Vec<Vec<(u64, u64)>> = groups
        .iter()
        .zip(demand)
        .map(|(g, &d)| {
            if g.len() == 1 {
                vec![(g[0], d)]
            } else {
                Vec::new()
            }
        })
        .collect();
    if multi.is_empty() {
        return (quota, max_fixed);
    }
    let ranks: BTreeSet<u64> = multi
        .iter()
        .flat_map(|&g| groups[g].iter().copied())
        .collect();
    let flexible: u64 = multi.iter().map(|&g| demand[g]).sum();
    // Lower bounds on any feasible T: the fixed loads, and the flexible
    // bytes plus the fixed loads of their holders spread evenly.
    let fixed_on_ranks: u64 = ranks
        .iter()
        .map(|r| fixed.get(r).copied().unwrap_or(0))
        .sum();
    let mut lo = max_fixed.max((flexible + fixed_on_ranks).div_ceil(ranks.len() as u64));
    for &g in &multi {
        lo = lo.max(demand[g].div_ceil(groups[g].len() as u64));
    }
    let mut hi = lo.max(max_fixed + flexible);
    let cap = |t: u64| -> HashMap<u64, u64> {
        ranks
            .iter()
            .map(|&r| (r, t.saturating_sub(fixed.get(&r).copied().unwrap_or(0))))
            .collect()
    };
    let sub_groups: Vec<Vec<u64>> = multi.iter().map(|&g| groups[g].clone()).collect();
    let sub_demand: Vec<u64> = multi.iter().map(|&g| demand[g]).collect();
    let mut best =
        flow_at(&sub_groups, &sub_demand, &cap(hi)).expect("the total is always feasible");
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match flow_at(&sub_groups, &sub_demand, &cap(mid)) {
            Some(q) => {
                hi = mid;
                best = q;
            }
            None => lo = mid + 1,
        }
    }
    for (&g, q) in multi.iter().zip(best) {
        quota[g] = q;
    }
    (quota, hi)
}

/// A flow that routes every group's demand to its holders within each
/// holder's capacity, or `None` when there is none.
fn flow_at(
    groups: &[Vec<u64>],
    demand: &[u64],
    capacity: &HashMap<u64, u64>,
) -> Option<Vec<Vec<(u64, u64)>>> {
    let mut g: Graph<(), u64> = Graph::new();
    let source = g.add_node(());
    let sink = g.add_node(());
    let mut rank_node: HashMap<u64, NodeIndex> = HashMap::new();
    let mut ranks: Vec<&u64> = capacity.keys().collect();
    ranks.sort_unstable();
    for &r in ranks {
        let n = g.add_node(());
        g.add_edge(n, sink, capacity[&r]);
        rank_node.insert(r, n);
    }
    let mut group_edges = Vec::with_capacity(groups.len());
    for (holders, &d) in groups.iter().zip(demand) {
        let n = g.add_node(());
        g.add_edge(source, n, d);
        let edges: Vec<_> = holders
            .iter()
            .map(|r| (*r, g.add_edge(n, rank_node[r], d)))
            .collect();
        group_edges.push(edges);
    }
    let (value, flows) = dinics(&g, source, sink);
    if value < demand.iter().sum::<u64>() {
        return None;
    }
    Some(
        group_edges
            .into_iter()
            .map(|edges| {
                edges
                    .into_iter()
                    .map(|(r, e)| (r, flows[e.index()]))
                    .collect()
            })
            .collect(),
    )
}

/// Lays each group's cells end to end and gives each holder a consecutive
/// run of its quota, cutting a cell that straddles two holders along its
/// outermost dimension of extent > 1 (at the nearest whole row).
fn split_by_quota<'a>(
    pending: &'a [Pending],
    groups: &[Vec<u64>],
    quota: &[Vec<(u64, u64)>],
    tensors: &[TensorPlan],
) -> Vec<(&'a Pending, u64, Region)> {
    let mut by_group: Vec<Vec<&Pending>> = vec![Vec::new(); groups.len()];
    for p in pending {
        by_group[p.group].push(p);
    }
    let mut out = Vec::with_capacity(pending.len());
    for (g, cells) in by_group.iter().enumerate() {
        // Boundaries between holders along the group's byte line.
        let holders: Vec<(u64, u64)> = quota[g].iter().copied().filter(|&(_, q)| q > 0).collect();
        let mut bounds = Vec::with_capacity(holders.len());
        let mut acc = 0u64;
        for &(r, q) in &holders {
            acc += q;
            bounds.push((r, acc));
        }
        let mut pos = 0u64;
        for p in cells {
            let dsize = tensors[p.tensor].dtype.size_bytes();
            let bytes = p.dst_box.volume() * dsize;
            let (start, end) = (pos, pos + bytes);
            pos = end;
            let k = (0..p.dst_box.rank())
                .find(|&k| p.dst_box.extent()[k] > 1)
                .unwrap_or(0);
            let rows = p.dst_box.extent().get(k).copied().unwrap_or(1).max(1);
            let row_bytes = bytes / rows;
            let mut row = 0u64;
            for &(r, b) in &bounds {
                if row >= rows || b <= start {
                    continue;
                }
                // Rows of this cell before holder r's boundary, rounded.
                let cut = if b >= end || row_bytes == 0 {
                    rows
                } else {
                    ((b - start + row_bytes / 2) / row_bytes).min(rows)
                };
                if cut > row {
                    let mut offset = p.dst_box.offset().to_vec();
                    let mut extent = p.dst_box.extent().to_vec();
                    if !offset.is_empty() {
                        offset[k] += row;
                        extent[k] = cut - row;
                    }
                    out.push((*p, r, Region::new(offset, extent)));
                    row = cut;
                }
            }
        }
    }
    out
}

/// Per destination rank, a greedy cover of its cells by source files: a
/// cell some already chosen file holds costs nothing; otherwise the holder
/// in the same replica group as the destination's own device is taken (on
/// every replicated axis the same coordinate as that device's source rank,
/// as MindSpore does), which keeps one destination on one replica.
fn min_files<'a>(
    pending: &'a [Pending],
    groups: &[Vec<u64>],
    tensors: &[TensorPlan],
    src: &Strategy,
    dst: &Strategy,
    by_device: &HashMap<u64, u64>,
) -> Vec<(&'a Pending, u64, Region)> {
    let mut by_dst: std::collections::BTreeMap<u64, Vec<&Pending>> = Default::default();
    for p in pending {
        by_dst.entry(p.dst_rank).or_default().push(p);
    }
    let mut out = Vec::with_capacity(pending.len());
    for (d, mut cells) in by_dst {
        let device = dst.mesh().device_of(d).unwrap_or(d);
        let own = by_device
            .get(&device)
            .copied()
            .unwrap_or(d % src.mesh().rank_count());
        // Files this rank reads anyway for its local copies.
        let mut chosen: BTreeSet<u64> = tensors
            .iter()
            .flat_map(|t| t.pieces.iter())
            .filter(|p| p.dst_rank == d)
            .map(|p| p.src_rank)
            .collect();
        // Scarce data first: cells with fewer holders constrain the choice.
        cells.sort_by_key(|p| groups[p.group].len());
        for p in cells {
            let holders = &groups[p.group];
            let pick = match holders.iter().find(|r| chosen.contains(r)) {
                Some(&r) => r,
                None => {
                    let sl = src.layout(&tensors[p.tensor].name).expect("checked");
                    let own_coords = sl.mesh().coords(own).ok();
                    // Copies lie along replica axes and along axes pinned
                    // to several coordinates (a tensor on several stages):
                    // keep to own's position on both.
                    let mut copy_axes = sl.replica_axes();
                    copy_axes.extend(
                        (0..sl.mesh().axes().len())
                            .filter(|&a| sl.pinned_coords(a).nth(1).is_some()),
                    );
                    let same_group = |h: u64| {
                        let (Some(oc), Ok(hc)) = (own_coords.as_ref(), sl.mesh().coords(h)) else {
                            return false;
                        };
                        copy_axes.iter().all(|&a| oc[a] == hc[a])
                    };
                    let r = holders
                        .iter()
                        .copied()
                        .find(|&h| same_group(h))
                        .unwrap_or(holders[0]);
                    chosen.insert(r);
                    r
                }
            };
            out.push((p, pick, p.dst_box.clone()));
        }
    }
    out
}

/// Merges pieces with the same endpoints whose boxes are adjacent along one
/// dimension and equal along the others; then sorts by destination.
fn coalesce(pieces: &mut Vec<Piece>) {
    let rank = pieces.first().map_or(0, |p| p.dst_box.rank());
    // Only pieces between the same two ranks can merge; usually there are none.
    let mut pairs: Vec<(u64, u64, bool, bool)> = pieces
        .iter()
        .map(|p| (p.dst_rank, p.src_rank, p.local, p.reduce))
        .collect();
    pairs.sort_unstable();
    if pairs.windows(2).all(|w| w[0] != w[1]) {
        pieces.sort_by(|a, b| {
            (a.dst_rank, &a.dst_box, a.src_rank).cmp(&(b.dst_rank, &b.dst_box, b.src_rank))
        });
        return;
    }
    for k in (0..rank).rev() {
        let key = |p: &Piece| {
            let mut other: Vec<(u64, u64)> = (0..rank)
                .filter(|&j| j != k)
                .map(|j| (p.dst_box.offset()[j], p.dst_box.extent()[j]))
                .collect();
            other.push((p.dst_box.offset()[k], 0));
            (p.dst_rank, p.src_rank, p.local, other)
        };
        pieces.sort_by_cached_key(key);
        let mut merged: Vec<Piece> = Vec::with_capacity(pieces.len());
        for p in pieces.drain(..) {
            if let Some(last) = merged.last_mut() {
                let same_line = last.dst_rank == p.dst_rank
                    && last.src_rank == p.src_rank
                    && last.local == p.local
                    && last.reduce == p.reduce
                    && (0..rank).all(|j| {
                        j == k
                            || (last.dst_box.offset()[j] == p.dst_box.offset()[j]
                                && last.dst_box.extent()[j] == p.dst_box.extent()[j])
                    });
                if same_line
                    && last.dst_box.end(k) == p.dst_box.offset()[k]
                    && last.src_box.end(k) == p.src_box.offset()[k]
                {
                    let mut ext = last.dst_box.extent().to_vec();
                    ext[k] += p.dst_box.extent()[k];
                    last.dst_box = Region::new(last.dst_box.offset().to_vec(), ext.clone());
                    last.src_box = Region::new(last.src_box.offset().to_vec(), ext);
                    // dst_local_offset is the start, which does not move.
                    continue;
                }
            }
            merged.push(p);
        }
        *pieces = merged;
    }
    pieces.sort_by(|a, b| {
        (a.dst_rank, &a.dst_box, a.src_rank).cmp(&(b.dst_rank, &b.dst_box, b.src_rank))
    });
}

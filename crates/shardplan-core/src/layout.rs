//! Tensor layouts: how a tensor of a global shape is cut over a device mesh.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::LayoutError;
use crate::geometry::{Region, element_count};
use crate::mesh::DeviceMesh;

/// How a dimension whose size the block count does not divide is cut.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum SplitPolicy {
    /// Equal blocks; a size the block count does not divide is an error, as
    /// in MindSpore.
    #[default]
    Even,
    /// `torch.chunk`: blocks of `ceil(size / n)`, the trailing ones shorter or
    /// empty.
    Chunk,
    /// The remainder spread one element each over the first blocks, as
    /// OneFlow does.
    Balanced,
    /// Explicit block sizes, one per block, summing to the dimension size
    /// (MindSpore `param_split_shape`, ragged shards).
    Blocks(Vec<u64>),
}

impl SplitPolicy {
    /// Block boundaries `b[0] = 0 <= b[1] <= ... <= b[n] = size`.
    fn bounds(&self, size: u64, n: u64, dim: usize) -> Result<Vec<u64>, LayoutError> {
        let mut bounds = Vec::with_capacity(n as usize + 1);
        bounds.push(0);
        match self {
            SplitPolicy::Even => {
                if !size.is_multiple_of(n) {
                    return Err(LayoutError::UnevenSplit {
                        dim,
                        size,
                        blocks: n,
                    });
                }
                let b = size / n;
                bounds.extend((1..=n).map(|i| i * b));
            }
            SplitPolicy::Chunk => {
                let b = size.div_ceil(n);
                bounds.extend((1..=n).map(|i| i.saturating_mul(b).min(size)));
            }
            SplitPolicy::Balanced => {
                let (q, r) = (size / n, size % n);
                bounds.extend((1..=n).map(|i| i * q + i.min(r)));
            }
            SplitPolicy::Blocks(sizes) => {
                if sizes.len() as u64 != n {
                    return Err(LayoutError::BlockCount {
                        dim,
                        expected: n,
                        found: sizes.len(),
                    });
                }
                let mut end = 0u64;
                for s in sizes {
                    end = end.saturating_add(*s);
                    bounds.push(end);
                }
                if end != size {
                    return Err(LayoutError::BlockSum {
                        dim,
                        size,
                        sum: sizes.iter().fold(0u64, |a, b| a.saturating_add(*b)),
                    });
                }
            }
        }
        Ok(bounds)
    }
}

impl std::fmt::Display for SplitPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitPolicy::Even => write!(f, "even"),
            SplitPolicy::Chunk => write!(f, "chunk"),
            SplitPolicy::Balanced => write!(f, "balanced"),
            SplitPolicy::Blocks(b) => write!(f, "blocks {b:?}"),
        }
    }
}

/// How one tensor dimension is split, as given by a caller: mesh axes by
/// name (first = outermost) and the policy for uneven sizes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DimSplit {
    /// Axes splitting this dimension, outermost first; empty = not split.
    pub axes: Vec<String>,
    /// How blocks are sized.
    pub policy: SplitPolicy,
}

impl DimSplit {
    /// A dimension split evenly over `axes`.
    pub fn over<S: Into<String>>(axes: impl IntoIterator<Item = S>) -> Self {
        DimSplit {
            axes: axes.into_iter().map(Into::into).collect(),
            policy: SplitPolicy::Even,
        }
    }

    /// A dimension that is not split.
    pub fn none() -> Self {
        DimSplit::default()
    }
}

/// Everything a layout says besides the mesh and the shape; the input of
/// [`TensorLayout::new`]. Fields are plain data, checked by the constructor.
///
/// Built with [`LayoutConfig::new`], [`with_partial`](Self::with_partial)
/// and [`with_pin`](Self::with_pin); the fields can be read and changed
/// directly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LayoutConfig {
    /// One entry per tensor dimension.
    pub dims: Vec<DimSplit>,
    /// Axes along which the values are partial sums still to be reduced.
    pub partial: Vec<String>,
    /// Fixed coordinates: the tensor lives only on the ranks whose
    /// coordinate along each named axis is one of the values given for it
    /// (a pipeline stage; several entries for one axis place the tensor on
    /// several stages, as a tied embedding used by the first and the last).
    pub pin: Vec<(String, u64)>,
}

impl LayoutConfig {
    /// A layout splitting dimension `d` as `dims[d]` says, with no partial
    /// axes and no pin. Nothing is checked until [`TensorLayout::new`].
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shardplan_core::{DeviceMesh, DimSplit, LayoutConfig, TensorLayout};
    ///
    /// let mesh = Arc::new(DeviceMesh::new([("pp", 2), ("dp", 2), ("tp", 2)]).unwrap());
    /// // Rows over tp, partial sums over dp, on the second pipeline stage.
    /// let cfg = LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()])
    ///     .with_partial(["dp"])
    ///     .with_pin([("pp", 1)]);
    /// let layout = TensorLayout::new(mesh.clone(), &[4, 2], &cfg).unwrap();
    /// assert_eq!(layout.to_string(), "[tp, -] partial(dp) at pp=1");
    /// assert_eq!(layout.to_config(), cfg);
    /// // One split per dimension: a 3-d tensor needs three.
    /// assert!(TensorLayout::new(mesh, &[4, 2, 2], &cfg).is_err());
    /// ```
    pub fn new(dims: Vec<DimSplit>) -> Self {
        LayoutConfig {
            dims,
            partial: Vec::new(),
            pin: Vec::new(),
        }
    }

    /// Returns the config with values that are partial sums over `axes`,
    /// replacing the partial axes given before.
    pub fn with_partial<S: Into<String>>(mut self, axes: impl IntoIterator<Item = S>) -> Self {
        self.partial = axes.into_iter().map(Into::into).collect();
        self
    }

    /// Returns the config pinned to the coordinates `pins` (axis name and
    /// coordinate; see [`LayoutConfig::pin`]), replacing the pins given
    /// before.
    pub fn with_pin<S: Into<String>>(mut self, pins: impl IntoIterator<Item = (S, u64)>) -> Self {
        self.pin = pins.into_iter().map(|(a, c)| (a.into(), c)).collect();
        self
    }
}

/// A checked dimension split: axis indices and block boundaries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DimLayout {
    axes: Vec<usize>,
    policy: SplitPolicy,
    bounds: Vec<u64>,
}

impl DimLayout {
    /// Indices (into the mesh) of the axes splitting the dimension, outermost first.
    pub fn axes(&self) -> &[usize] {
        &self.axes
    }

    /// The uneven-size policy.
    pub fn policy(&self) -> &SplitPolicy {
        &self.policy
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u64 {
        self.bounds.len() as u64 - 1
    }

    /// Start and end of block `b`.
    pub fn block(&self, b: u64) -> (u64, u64) {
        (self.bounds[b as usize], self.bounds[b as usize + 1])
    }

    /// Blocks that overlap the half-open range `lo..hi` (empty blocks inside
    /// the range included; callers skip them).
    pub fn blocks_overlapping(&self, lo: u64, hi: u64) -> std::ops::Range<u64> {
        if hi <= lo {
            return 0..0;
        }
        // First block whose end is past lo; last block whose start is before hi.
        let first = self.bounds[1..].partition_point(|&e| e <= lo) as u64;
        let last = self.bounds[..self.bounds.len() - 1].partition_point(|&s| s < hi) as u64;
        first..last
    }

    /// The block holding index `x` (the non-empty one when blocks are empty).
    fn block_of(&self, x: u64) -> u64 {
        (self.bounds.partition_point(|&s| s <= x) - 1) as u64
    }
}

/// How a tensor of a given global shape is distributed over a device mesh.
///
/// For each dimension, an ordered list of mesh axes splits it (first =
/// outermost); axes used by no dimension hold replicas, except `partial`
/// axes, whose ranks hold partial sums, and pinned axes, which restrict the
/// tensor to a sub-mesh (a pipeline stage).
///
/// Invariants, checked by [`TensorLayout::new`]: one split per dimension;
/// every axis named exists and has one role across dims, partial and pin (a
/// pinned axis may list several coordinates, each within the axis, kept
/// sorted and distinct, and an axis listing all of them is unpinned); the
/// element count fits [`crate::MAX_ELEMENTS`]; block sizes follow
/// the policy and sum to the dimension.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use shardplan_core::{DeviceMesh, DimSplit, LayoutConfig, TensorLayout};
///
/// let mesh = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 4)]).unwrap());
/// let cfg = LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()]);
/// let layout = TensorLayout::new(mesh.clone(), &[8, 6], &cfg).unwrap();
/// // Rank 5 = (dp 1, tp 1) holds rows 2..4.
/// assert_eq!(layout.region_of(5).unwrap().to_string(), "[2..4, 0..6]");
/// assert_eq!(layout.holders(&[2, 0]).unwrap(), vec![1, 5]);
/// // 6 rows do not split evenly over 4 ranks.
/// assert!(TensorLayout::new(mesh, &[6, 6], &cfg).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    mesh: Arc<DeviceMesh>,
    shape: Vec<u64>,
    dims: Vec<DimLayout>,
    partial: Vec<usize>,
    pin: Vec<(usize, u64)>,
    /// Set for a layout given box by box; `dims` is then the grid of every
    /// box boundary, split by no axis.
    boxes: Option<Arc<BoxSet>>,
}

/// The boxes of a layout given rank by rank.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BoxSet {
    /// Box of each rank; `None` where the rank holds nothing.
    by_rank: Vec<Option<Region>>,
    /// The distinct non-empty boxes with their holders, ascending by box.
    distinct: Vec<(Region, Vec<u64>)>,
}

impl TensorLayout {
    /// Checks `config` against `mesh` and `shape` and builds the layout.
    ///
    /// # Errors
    ///
    /// - [`LayoutError::ShapeOverflow`]: the element count overflows;
    /// - [`LayoutError::DimCount`]: not one split per dimension;
    /// - [`LayoutError::UnknownAxis`]: an axis is not on the mesh;
    /// - [`LayoutError::AxisReused`]: an axis appears twice;
    /// - [`LayoutError::PinOutOfRange`]: a pinned coordinate is beyond its axis;
    /// - [`LayoutError::UnevenSplit`], [`LayoutError::BlockCount`],
    ///   [`LayoutError::BlockSum`]: block sizes do not fit the policy.
    pub fn new(
        mesh: Arc<DeviceMesh>,
        shape: &[u64],
        config: &LayoutConfig,
    ) -> Result<Self, LayoutError> {
        element_count(shape)?;
        if config.dims.len() != shape.len() {
            return Err(LayoutError::DimCount {
                splits: config.dims.len(),
                rank: shape.len(),
            });
        }
        let mut used: Vec<Option<&'static str>> = vec![None; mesh.axes().len()];
        let mut take = |name: &str, role: &'static str| -> Result<usize, LayoutError> {
            let i = mesh
                .axis_index(name)
                .ok_or_else(|| LayoutError::UnknownAxis {
                    axis: name.to_string(),
                    mesh: mesh.to_string(),
                })?;
            if let Some(first) = used[i] {
                return Err(LayoutError::AxisReused {
                    axis: name.to_string(),
                    first,
                    second: role,
                });
            }
            used[i] = Some(role);
            Ok(i)
        };
        let mut dims = Vec::with_capacity(shape.len());
        for (d, split) in config.dims.iter().enumerate() {
            let axes = split
                .axes
                .iter()
                .map(|a| take(a, "a split"))
                .collect::<Result<Vec<_>, _>>()?;
            // Axes are distinct, so the product is at most the rank count.
            let n: u64 = axes.iter().map(|&a| mesh.axis_size(a)).product();
            let bounds = split.policy.bounds(shape[d], n, d)?;
            dims.push(DimLayout {
                axes,
                policy: split.policy.clone(),
                bounds,
            });
        }
        let partial = config
            .partial
            .iter()
            .map(|a| take(a, "partial"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pin: Vec<(usize, u64)> = Vec::with_capacity(config.pin.len());
        for (name, coord) in &config.pin {
            // Several coordinates of one axis are one pin to a set.
            let i = match mesh.axis_index(name) {
                Some(i) if pin.iter().any(|&(p, _)| p == i) => i,
                _ => take(name, "a pin")?,
            };
            if !(*coord < mesh.axis_size(i)) {
                return Err(LayoutError::PinOutOfRange {
                    axis: name.clone(),
                    coord: *coord,
                    size: mesh.axis_size(i),
                });
            }
            pin.push((i, *coord));
        }
        pin.sort_unstable();
        pin.dedup();
        // An axis pinned to every one of its coordinates restricts nothing:
        // it holds copies, like an axis with no role.
        let whole: Vec<usize> = pin
            .chunk_by(|x, y| x.0 == y.0)
            .filter(|run| run.len() as u64 == mesh.axis_size(run[0].0))
            .map(|run| run[0].0)
            .collect();
        pin.retain(|(a, _)| !whole.contains(a));
        Ok(TensorLayout {
            mesh,
            shape: shape.to_vec(),
            dims,
            partial,
            pin,
            boxes: None,
        })
    }

    /// A layout given as one box per holding rank: the chunks a PyTorch DCP
    /// checkpoint records, or irregular shards no grid of mesh axes
    /// describes. Ranks without a box hold nothing; ranks with the same box
    /// hold replicas.
    ///
    /// # Errors
    ///
    /// - [`LayoutError::ShapeOverflow`]: the element count overflows;
    /// - [`LayoutError::RankOutOfRange`]: a rank is beyond the mesh;
    /// - [`LayoutError::BoxDims`]: a box has the wrong number of dimensions;
    /// - [`LayoutError::BoxTwice`]: a rank is given two boxes;
    /// - [`LayoutError::BoxOutside`]: a box reaches outside the tensor;
    /// - [`LayoutError::BoxOverlap`]: two different boxes share elements;
    /// - [`LayoutError::BoxGap`]: some element is in no box.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shardplan_core::{DeviceMesh, Region, TensorLayout};
    ///
    /// let mesh = Arc::new(DeviceMesh::new([("rank", 3)]).unwrap());
    /// let b = |o: Vec<u64>, e: Vec<u64>| Region::new(o, e);
    /// // Rows 0..3 on rank 0, rows 3..4 on ranks 1 and 2 (a replica).
    /// let l = TensorLayout::from_boxes(mesh.clone(), &[4, 2], [
    ///     (0, b(vec![0, 0], vec![3, 2])),
    ///     (1, b(vec![3, 0], vec![1, 2])),
    ///     (2, b(vec![3, 0], vec![1, 2])),
    /// ]).unwrap();
    /// assert_eq!(l.holders(&[3, 1]).unwrap(), vec![1, 2]);
    /// assert_eq!(l.region_of(0).unwrap().to_string(), "[0..3, 0..2]");
    /// // Row 3 on no rank.
    /// assert!(TensorLayout::from_boxes(mesh, &[4, 2], [(0, b(vec![0, 0], vec![3, 2]))]).is_err());
    /// ```
    pub fn from_boxes(
        mesh: Arc<DeviceMesh>,
        shape: &[u64],
        boxes: impl IntoIterator<Item = (u64, Region)>,
    ) -> Result<Self, LayoutError> {
        let total = element_count(shape)?;
        let ranks = mesh.rank_count();
        let mut by_rank: Vec<Option<Region>> = vec![None; ranks as usize];
        for (rank, region) in boxes {
            check_box(rank, &region, shape, ranks)?;
            let slot = &mut by_rank[rank as usize];
            if slot.is_some() {
                return Err(LayoutError::BoxTwice { rank });
            }
            *slot = Some(region);
        }
        let mut map: BTreeMap<Region, Vec<u64>> = BTreeMap::new();
        for (rank, region) in by_rank.iter().enumerate() {
            if let Some(r) = region.as_ref().filter(|r| !r.is_empty()) {
                map.entry(r.clone()).or_default().push(rank as u64);
            }
        }
        let distinct: Vec<(Region, Vec<u64>)> = map.into_iter().collect();
        check_disjoint(&distinct)?;
        // Disjoint boxes inside the tensor cover it when their volumes add up.
        let covered: u64 = distinct.iter().map(|(r, _)| r.volume()).sum();
        if covered != total {
            return Err(LayoutError::BoxGap {
                covered,
                total,
                missing: uncovered_element(shape, &distinct),
            });
        }
        let dims = (0..shape.len())
            .map(|k| box_grid(k, shape[k], &distinct))
            .collect();
        Ok(TensorLayout {
            mesh,
            shape: shape.to_vec(),
            dims,
            partial: Vec::new(),
            pin: Vec::new(),
            boxes: Some(Arc::new(BoxSet { by_rank, distinct })),
        })
    }

    /// For a layout built by [`TensorLayout::from_boxes`], the box of each
    /// rank (`None` where it holds nothing); `None` for a layout of mesh
    /// axes.
    pub fn explicit_boxes(&self) -> Option<&[Option<Region>]> {
        self.boxes.as_deref().map(|b| b.by_rank.as_slice())
    }

    /// True for a layout built by [`TensorLayout::from_boxes`]: its
    /// [`dims`](Self::dims) are the grid of every box boundary, split by no
    /// mesh axis, and it has no notation other than its boxes.
    pub fn is_explicit(&self) -> bool {
        self.boxes.is_some()
    }

    /// A layout holding the whole tensor on every rank of `mesh`.
    ///
    /// # Errors
    ///
    /// [`LayoutError::ShapeOverflow`] when the element count overflows.
    pub fn replicated(mesh: Arc<DeviceMesh>, shape: &[u64]) -> Result<Self, LayoutError> {
        let config = LayoutConfig::new(vec![DimSplit::none(); shape.len()]);
        Self::new(mesh, shape, &config)
    }

    /// The layout as names again: what [`TensorLayout::new`] would take to
    /// rebuild it (e.g. after adding a pin).
    pub fn to_config(&self) -> LayoutConfig {
        let name = |a: usize| self.axis_name(a).to_string();
        LayoutConfig {
            dims: self
                .dims
                .iter()
                .map(|d| DimSplit {
                    axes: d.axes.iter().map(|&a| name(a)).collect(),
                    policy: d.policy.clone(),
                })
                .collect(),
            partial: self.partial.iter().map(|&a| name(a)).collect(),
            pin: self.pin.iter().map(|&(a, c)| (name(a), c)).collect(),
        }
    }

    /// The mesh.
    pub fn mesh(&self) -> &Arc<DeviceMesh> {
        &self.mesh
    }

    /// Global shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Per-dimension splits.
    pub fn dims(&self) -> &[DimLayout] {
        &self.dims
    }

    /// Indices of the partial-sum axes.
    pub fn partial(&self) -> &[usize] {
        &self.partial
    }

    /// Pinned `(axis index, coordinate)` pairs, sorted and distinct; an
    /// axis with several pairs holds the tensor at each of them.
    pub fn pin(&self) -> &[(usize, u64)] {
        &self.pin
    }

    /// Axes that neither split, nor hold partial sums, nor pin: each of their
    /// positions holds a full copy of the same slice.
    pub fn replica_axes(&self) -> Vec<usize> {
        (0..self.mesh.axes().len())
            .filter(|a| !self.axis_is_used(*a))
            .collect()
    }

    fn axis_is_used(&self, a: usize) -> bool {
        self.dims.iter().any(|d| d.axes.contains(&a))
            || self.partial.contains(&a)
            || self.pin.iter().any(|(p, _)| *p == a)
    }

    /// How many ranks hold each element: the product of the sizes of the
    /// replica and partial axes and of the number of coordinates of each
    /// pinned axis.
    pub fn replica_count(&self) -> u64 {
        if let Some(b) = &self.boxes {
            // Boxes given one by one may differ in copies: the most of any.
            return b
                .distinct
                .iter()
                .map(|(_, h)| h.len() as u64)
                .max()
                .unwrap_or(1);
        }
        (0..self.mesh.axes().len())
            .filter(|a| !self.dims.iter().any(|d| d.axes.contains(a)))
            .map(|a| match self.pinned_coords(a).count() {
                0 => self.mesh.axis_size(a),
                k => k as u64,
            })
            .product()
    }

    /// True when rank `rank` holds a slice (it is on the pinned sub-mesh).
    pub fn holds(&self, rank: u64) -> bool {
        if let Some(b) = &self.boxes {
            return b.by_rank.get(rank as usize).is_some_and(Option::is_some);
        }
        rank < self.mesh.rank_count() && self.on_pin(&self.mesh.coords_unchecked(rank))
    }

    /// The coordinates axis `a` is pinned to, empty when it is not pinned.
    pub fn pinned_coords(&self, a: usize) -> impl Iterator<Item = u64> + '_ {
        self.pin
            .iter()
            .filter(move |&&(p, _)| p == a)
            .map(|&(_, c)| c)
    }

    fn on_pin(&self, coords: &[u64]) -> bool {
        // Pins are sorted by axis: each run of one axis must contain its
        // coordinate.
        self.pin
            .chunk_by(|x, y| x.0 == y.0)
            .all(|run| run.iter().any(|&(a, c)| coords[a] == c))
    }

    /// The box of the global tensor that `rank` holds, or `None` when the
    /// rank is outside the pinned sub-mesh or out of range. The box may be
    /// empty under `chunk` or explicit blocks.
    pub fn region_of(&self, rank: u64) -> Option<Region> {
        if let Some(b) = &self.boxes {
            return b.by_rank.get(rank as usize).cloned().flatten();
        }
        if !(rank < self.mesh.rank_count()) {
            return None;
        }
        let coords = self.mesh.coords_unchecked(rank);
        if !self.on_pin(&coords) {
            return None;
        }
        let mut offset = Vec::with_capacity(self.dims.len());
        let mut extent = Vec::with_capacity(self.dims.len());
        for dim in &self.dims {
            let b = dim
                .axes
                .iter()
                .fold(0u64, |acc, &a| acc * self.mesh.axis_size(a) + coords[a]);
            let (s, e) = dim.block(b);
            offset.push(s);
            extent.push(e - s);
        }
        Some(Region::new(offset, extent))
    }

    /// Ranks that hold element `index`, ascending.
    ///
    /// # Errors
    ///
    /// [`LayoutError::IndexOutOfRange`] when `index` is outside the shape.
    pub fn holders(&self, index: &[u64]) -> Result<Vec<u64>, LayoutError> {
        if index.len() != self.shape.len() || index.iter().zip(&self.shape).any(|(i, s)| i >= s) {
            return Err(LayoutError::IndexOutOfRange {
                index: index.to_vec(),
                shape: self.shape.clone(),
            });
        }
        if let Some(b) = &self.boxes {
            // The boxes cover the tensor, so one holds the index.
            return Ok(b
                .distinct
                .iter()
                .find(|(r, _)| r.contains(index))
                .map(|(_, h)| h.clone())
                .unwrap_or_default());
        }
        // Fixed coordinates from the block of each dim and the pin; the
        // remaining axes range freely.
        let mut fixed: Vec<Option<u64>> = vec![None; self.mesh.axes().len()];
        for (dim, &x) in self.dims.iter().zip(index) {
            let mut b = dim.block_of(x);
            for &a in dim.axes.iter().rev() {
                let size = self.mesh.axis_size(a);
                fixed[a] = Some(b % size);
                b /= size;
            }
        }
        let mut ranks = vec![0u64];
        for (a, f) in fixed.iter().enumerate() {
            let stride = self.mesh.stride(a);
            let pinned = self.pin.iter().any(|&(p, _)| p == a);
            ranks = match f {
                Some(c) => ranks.into_iter().map(|r| r + c * stride).collect(),
                None if pinned => ranks
                    .into_iter()
                    .flat_map(|r| self.pinned_coords(a).map(move |c| r + c * stride))
                    .collect(),
                None => ranks
                    .into_iter()
                    .flat_map(|r| (0..self.mesh.axis_size(a)).map(move |c| r + c * stride))
                    .collect(),
            };
        }
        ranks.sort_unstable();
        Ok(ranks)
    }

    /// The distinct boxes of the tensor with the ranks holding each,
    /// ordered by box. Empty boxes are included.
    pub fn shards(&self) -> Vec<(Region, Vec<u64>)> {
        let mut map: BTreeMap<Region, Vec<u64>> = BTreeMap::new();
        for rank in 0..self.mesh.rank_count() {
            if let Some(r) = self.region_of(rank) {
                map.entry(r).or_default().push(rank);
            }
        }
        map.into_iter().collect()
    }

    /// True when both layouts place the same box on every rank, with the
    /// same partial-sum status: the geometry users care about, whatever the
    /// axis names or mesh factorisation.
    pub fn same_placement(&self, other: &TensorLayout) -> bool {
        self.shape == other.shape
            && self.mesh.rank_count() == other.mesh.rank_count()
            && self.partial_ranks_signature() == other.partial_ranks_signature()
            && (0..self.mesh.rank_count()).all(|r| self.region_of(r) == other.region_of(r))
    }

    /// For each rank, which partial-sum term it holds (None without partial
    /// axes); two layouts sum the same terms when these partition the ranks
    /// alike.
    fn partial_ranks_signature(&self) -> Vec<Vec<u64>> {
        if self.partial.is_empty() {
            return Vec::new();
        }
        let mut groups: BTreeMap<Vec<u64>, Vec<u64>> = BTreeMap::new();
        for rank in 0..self.mesh.rank_count() {
            let c = self.mesh.coords_unchecked(rank);
            let key = self.partial.iter().map(|&a| c[a]).collect();
            groups.entry(key).or_default().push(rank);
        }
        let mut v: Vec<Vec<u64>> = groups.into_values().collect();
        v.sort();
        v
    }

    /// The layout once per combination of its pinned coordinates, each
    /// pinned to one coordinate per axis: a tensor on stages 0 and 3 gives
    /// a layout at stage 0 and one at stage 3, cut alike (formats that
    /// record a tensor per stage write one entry for each).
    pub fn split_pins(&self) -> Vec<TensorLayout> {
        let mut out = vec![Vec::<(usize, u64)>::new()];
        for run in self.pin.chunk_by(|x, y| x.0 == y.0) {
            out = out
                .into_iter()
                .flat_map(|prefix| {
                    run.iter().map(move |&p| {
                        let mut v = prefix.clone();
                        v.push(p);
                        v
                    })
                })
                .collect();
        }
        out.into_iter()
            .map(|pin| TensorLayout {
                pin,
                ..self.clone()
            })
            .collect()
    }

    /// The layout once per coordinate of mesh axis `a`, pinned to it: a
    /// tensor on every pipeline stage (whose pin to all of them the
    /// constructor drops) as one layout per stage, for formats that record
    /// a tensor per stage. When `a` is not a replica axis of this layout
    /// (it splits, sums or pins) or is out of range, the layout alone.
    pub fn pinned_each(&self, a: usize) -> Vec<TensorLayout> {
        if !self.replica_axes().contains(&a) {
            return vec![self.clone()];
        }
        (0..self.mesh.axis_size(a))
            .map(|c| {
                let mut pin = self.pin.clone();
                pin.push((a, c));
                pin.sort_unstable();
                TensorLayout {
                    pin,
                    ..self.clone()
                }
            })
            .collect()
    }

    /// The pins as text, `pp=0|3, x=1`; empty when nothing is pinned.
    pub fn pin_text(&self) -> String {
        self.pin
            .chunk_by(|x, y| x.0 == y.0)
            .map(|run| {
                let coords: Vec<String> = run.iter().map(|&(_, c)| c.to_string()).collect();
                format!("{}={}", self.axis_name(run[0].0), coords.join("|"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Name of axis `a` of the layout's mesh.
    pub fn axis_name(&self, a: usize) -> &str {
        &self.mesh.axes()[a].name
    }
}

/// Checks one explicit box: its rank on the mesh, its dimensions, inside
/// the tensor.
fn check_box(rank: u64, region: &Region, shape: &[u64], ranks: u64) -> Result<(), LayoutError> {
    if !(rank < ranks) {
        return Err(LayoutError::RankOutOfRange {
            rank,
            rank_count: ranks,
        });
    }
    if region.rank() != shape.len() {
        return Err(LayoutError::BoxDims {
            rank,
            found: region.rank(),
            expected: shape.len(),
        });
    }
    let inside = (0..shape.len()).all(|k| {
        region.offset()[k]
            .checked_add(region.extent()[k])
            .is_some_and(|end| end <= shape[k])
    });
    if !inside {
        return Err(LayoutError::BoxOutside {
            rank,
            region: region.to_string(),
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

/// Refuses two distinct boxes that share an element. Boxes are swept in
/// order of their start along dimension 0, so only boxes whose first
/// dimension overlaps are compared.
fn check_disjoint(distinct: &[(Region, Vec<u64>)]) -> Result<(), LayoutError> {
    if distinct.first().is_none_or(|(r, _)| r.rank() == 0) {
        // A 0-dimensional tensor has one box.
        return Ok(());
    }
    let mut order: Vec<usize> = (0..distinct.len()).collect();
    order.sort_by_key(|&i| distinct[i].0.offset()[0]);
    for (n, &i) in order.iter().enumerate() {
        let (a, ha) = &distinct[i];
        for &j in &order[n + 1..] {
            let (b, hb) = &distinct[j];
            if b.offset()[0] >= a.end(0) {
                break;
            }
            if a.intersect(b).is_some_and(|x| !x.is_empty()) {
                return Err(LayoutError::BoxOverlap {
                    first: ha[0],
                    first_box: a.to_string(),
                    second: hb[0],
                    second_box: b.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// One element in no box, found by cutting the boxes out of the tensor (a
/// bounded search: empty when the pieces left grow past the budget).
fn uncovered_element(shape: &[u64], distinct: &[(Region, Vec<u64>)]) -> Vec<u64> {
    const BUDGET: usize = 1 << 16;
    let mut left = vec![Region::whole(shape)];
    for (b, _) in distinct {
        left = left.iter().flat_map(|r| r.difference(b)).collect();
        if left.len() > BUDGET {
            return Vec::new();
        }
    }
    left.iter()
        .find(|r| !r.is_empty())
        .map(|r| r.offset().to_vec())
        .unwrap_or_default()
}

/// Dimension `k` of an explicit layout: blocks between every box boundary,
/// so that each cell of the grid lies inside one box.
fn box_grid(k: usize, size: u64, distinct: &[(Region, Vec<u64>)]) -> DimLayout {
    let mut bounds: Vec<u64> = distinct
        .iter()
        .flat_map(|(r, _)| [r.offset()[k], r.end(k)])
        .chain([0, size])
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    if bounds.len() == 1 {
        // A dimension of size 0: one empty block.
        bounds.push(size);
    }
    let sizes = bounds.windows(2).map(|w| w[1] - w[0]).collect();
    DimLayout {
        axes: Vec::new(),
        policy: SplitPolicy::Blocks(sizes),
        bounds,
    }
}

impl std::fmt::Display for TensorLayout {
    /// `[tp, (dp, sp), -]`, then `partial(..)` and `at pp=1` when present.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(b) = &self.boxes {
            let holding = b.by_rank.iter().filter(|r| r.is_some()).count();
            return write!(
                f,
                "boxes({} distinct on {holding} rank(s))",
                b.distinct.len()
            );
        }
        write!(f, "[")?;
        for (i, dim) in self.dims.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            match dim.axes.len() {
                0 => write!(f, "-")?,
                1 => write!(f, "{}", self.axis_name(dim.axes[0]))?,
                _ => {
                    let names: Vec<&str> = dim.axes.iter().map(|&a| self.axis_name(a)).collect();
                    write!(f, "({})", names.join(", "))?;
                }
            }
            if dim.policy != SplitPolicy::Even {
                write!(f, " {}", dim.policy)?;
            }
        }
        write!(f, "]")?;
        if !self.partial.is_empty() {
            let names: Vec<&str> = self.partial.iter().map(|&a| self.axis_name(a)).collect();
            write!(f, " partial({})", names.join(", "))?;
        }
        if !self.pin.is_empty() {
            write!(f, " at {}", self.pin_text())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(axes: &[(&str, u64)]) -> Arc<DeviceMesh> {
        Arc::new(DeviceMesh::new(axes.iter().copied()).unwrap())
    }

    #[track_caller]
    fn check_blocks(policy: SplitPolicy, size: u64, n: u64, expect: &[u64]) {
        let b = policy.bounds(size, n, 0).unwrap();
        let sizes: Vec<u64> = b.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(sizes, expect, "{policy} {size}/{n}");
    }

    #[test]
    fn split_policies() {
        check_blocks(SplitPolicy::Even, 8, 4, &[2, 2, 2, 2]);
        check_blocks(SplitPolicy::Chunk, 10, 4, &[3, 3, 3, 1]);
        check_blocks(SplitPolicy::Chunk, 5, 4, &[2, 2, 1, 0]);
        check_blocks(SplitPolicy::Chunk, 2, 4, &[1, 1, 0, 0]);
        check_blocks(SplitPolicy::Balanced, 10, 4, &[3, 3, 2, 2]);
        check_blocks(SplitPolicy::Blocks(vec![3, 5]), 8, 2, &[3, 5]);
        assert!(SplitPolicy::Even.bounds(6, 4, 0).is_err());
        assert!(SplitPolicy::Blocks(vec![3, 4]).bounds(8, 2, 0).is_err());
        assert!(SplitPolicy::Blocks(vec![8]).bounds(8, 2, 0).is_err());
        assert!(
            SplitPolicy::Blocks(vec![u64::MAX, 2])
                .bounds(8, 2, 0)
                .is_err()
        );
    }

    #[test]
    fn nested_axes_outermost_first() {
        let m = mesh(&[("a", 2), ("b", 2)]);
        let cfg = LayoutConfig::new(vec![DimSplit::over(["b", "a"]), DimSplit::none()]);
        let l = TensorLayout::new(m, &[8, 2], &cfg).unwrap();
        // Block index = b * 2 + a; rank = a * 2 + b.
        let rows: Vec<u64> = (0..4)
            .map(|r| l.region_of(r).unwrap().offset()[0])
            .collect();
        assert_eq!(rows, vec![0, 4, 2, 6]);
    }

    #[test]
    fn pin_and_partial() {
        let m = mesh(&[("pp", 2), ("dp", 2), ("tp", 2)]);
        let cfg = LayoutConfig::new(vec![DimSplit::over(["tp"])])
            .with_partial(["dp"])
            .with_pin([("pp", 1)]);
        let l = TensorLayout::new(m, &[4], &cfg).unwrap();
        assert!(l.region_of(0).is_none());
        assert_eq!(l.region_of(5).unwrap().to_string(), "[2..4]");
        assert_eq!(l.holders(&[3]).unwrap(), vec![5, 7]);
        assert_eq!(l.replica_count(), 2);
        assert_eq!(l.to_string(), "[tp] partial(dp) at pp=1");
    }

    #[test]
    fn pin_to_several_stages() {
        // A tied embedding on the first and last of 4 stages.
        let m = mesh(&[("pp", 4), ("tp", 2)]);
        let stages = [("pp", 3), ("pp", 0), ("pp", 3)];
        let cfg =
            LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()]).with_pin(stages);
        let l = TensorLayout::new(m.clone(), &[4, 2], &cfg).unwrap();
        let holding: Vec<u64> = (0..8).filter(|&r| l.holds(r)).collect();
        assert_eq!(holding, vec![0, 1, 6, 7]);
        assert_eq!(l.region_of(7).unwrap().to_string(), "[2..4, 0..2]");
        assert_eq!(l.holders(&[2, 1]).unwrap(), vec![1, 7]);
        assert_eq!(l.replica_count(), 2);
        assert_eq!(l.pin(), &[(0, 0), (0, 3)]);
        assert_eq!(l.to_string(), "[tp, -] at pp=0|3");
        assert_eq!(
            TensorLayout::new(m.clone(), &[4, 2], &l.to_config()).unwrap(),
            l
        );
        let split: Vec<String> = l.split_pins().iter().map(|x| x.to_string()).collect();
        assert_eq!(split, ["[tp, -] at pp=0", "[tp, -] at pp=3"]);
        // Every stage listed is no pin at all.
        let all = cfg.clone().with_pin((0..4).map(|c| ("pp", c)));
        let l = TensorLayout::new(m.clone(), &[4, 2], &all).unwrap();
        assert!(l.pin().is_empty());
        assert_eq!(l.replica_axes(), vec![0]);
        // Still one role per axis: a split axis cannot also pin.
        let bad = cfg.with_pin([("pp", 0), ("tp", 1)]);
        assert!(TensorLayout::new(m, &[4, 2], &bad).is_err());
    }

    #[test]
    fn constructor_errors() {
        let m = mesh(&[("dp", 2), ("tp", 2)]);
        let cases: Vec<(LayoutConfig, &[u64], &str)> = vec![
            (
                LayoutConfig::new(vec![DimSplit::over(["xx"])]),
                &[4],
                "not on the mesh",
            ),
            (
                LayoutConfig::new(vec![DimSplit::over(["tp", "tp"])]),
                &[4],
                "twice",
            ),
            (
                LayoutConfig::new(vec![DimSplit::over(["tp"])]).with_partial(["tp"]),
                &[4],
                "twice",
            ),
            (
                LayoutConfig::new(vec![DimSplit::none()]).with_pin([("dp", 2)]),
                &[4],
                "beyond",
            ),
            (LayoutConfig::new(vec![]), &[4], "1 dimension"),
            (
                LayoutConfig::new(vec![DimSplit::none(); 2]),
                &[u64::MAX, 4],
                "overflow",
            ),
        ];
        for (cfg, shape, needle) in cases {
            let err = TensorLayout::new(m.clone(), shape, &cfg)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{cfg:?}: {err}");
        }
    }

    #[test]
    fn boxes_give_regions_and_holders() {
        let m = mesh(&[("r", 4)]);
        let b = |o: &[u64], e: &[u64]| Region::new(o.to_vec(), e.to_vec());
        // A brick wall: no grid of axes describes it.
        let l = TensorLayout::from_boxes(
            m.clone(),
            &[2, 4],
            [
                (0, b(&[0, 0], &[1, 3])),
                (1, b(&[0, 3], &[1, 1])),
                (2, b(&[1, 0], &[1, 1])),
                (3, b(&[1, 1], &[1, 3])),
            ],
        )
        .unwrap();
        assert!(l.is_explicit());
        assert_eq!(l.holders(&[0, 2]).unwrap(), vec![0]);
        assert_eq!(l.holders(&[1, 2]).unwrap(), vec![3]);
        assert_eq!(l.replica_count(), 1);
        assert_eq!(l.to_string(), "boxes(4 distinct on 4 rank(s))");
        // The grid of every boundary: rows 0|1, columns 0|1|3|4.
        let cuts: Vec<u64> = (0..l.dims()[1].block_count())
            .map(|k| l.dims()[1].block(k).1)
            .collect();
        assert_eq!(cuts, vec![1, 3, 4]);
        // A 0-dimensional tensor on two ranks, one rank holding nothing.
        let s = TensorLayout::from_boxes(m, &[], [(1, b(&[], &[])), (3, b(&[], &[]))]).unwrap();
        assert_eq!(s.holders(&[]).unwrap(), vec![1, 3]);
        assert!(!s.holds(0) && s.holds(3));
        assert_eq!(s.replica_count(), 2);
    }

    #[test]
    fn bad_boxes_are_refused() {
        let m = mesh(&[("r", 2)]);
        let b = |o: &[u64], e: &[u64]| Region::new(o.to_vec(), e.to_vec());
        let whole = b(&[0, 0], &[4, 2]);
        type Case = (Vec<(u64, Region)>, fn(&LayoutError) -> bool);
        let cases: Vec<Case> = vec![
            (vec![(2, whole.clone())], |e| {
                matches!(e, LayoutError::RankOutOfRange { rank: 2, .. })
            }),
            (vec![(0, b(&[0], &[4]))], |e| {
                matches!(
                    e,
                    LayoutError::BoxDims {
                        rank: 0,
                        found: 1,
                        expected: 2
                    }
                )
            }),
            (vec![(0, whole.clone()), (0, whole.clone())], |e| {
                matches!(e, LayoutError::BoxTwice { rank: 0 })
            }),
            (vec![(1, b(&[3, 0], &[2, 2]))], |e| {
                matches!(e, LayoutError::BoxOutside { rank: 1, .. })
            }),
            (vec![(1, b(&[u64::MAX - 1, 0], &[1, 2]))], |e| {
                matches!(e, LayoutError::BoxOutside { rank: 1, .. })
            }),
            (
                vec![(0, b(&[0, 0], &[3, 2])), (1, b(&[2, 0], &[2, 2]))],
                |e| {
                    matches!(
                        e,
                        LayoutError::BoxOverlap {
                            first: 0,
                            second: 1,
                            ..
                        }
                    )
                },
            ),
            (
                vec![(0, b(&[0, 0], &[3, 2]))],
                |e| matches!(e, LayoutError::BoxGap { covered: 6, total: 8, missing } if missing == &[3, 0]),
            ),
        ];
        for (boxes, expected) in cases {
            let err = TensorLayout::from_boxes(m.clone(), &[4, 2], boxes.clone()).unwrap_err();
            assert!(expected(&err), "{boxes:?}: {err:?}");
        }
    }
}

//! MindSpore parallel layouts: `dev_matrix`, `tensor_map`, optimizer
//! sharding and pipeline stages, as written in strategy files.
//!
//! Semantics (pinned by the MindSpore conformance cases):
//! - ranks of a stage are numbered row-major over `dev_matrix`; stage `s`
//!   of `S` owns global ranks `s * n .. (s + 1) * n` where `n` is the
//!   product of `dev_matrix`;
//! - `tensor_map` entry `k` names `dev_matrix[len - 1 - k]` (counted from the
//!   right); `-1` leaves the dimension unsplit; several entries on one
//!   dimension split it outermost first;
//! - optimizer sharding cuts dimension 0 of the model-parallel slice further
//!   over the ranks that hold the same slice (the replica group: the ranks
//!   of the stage whose coordinates agree on every axis the tensor map
//!   uses): taken in ascending rank order, consecutive groups of
//!   `opt_weight_shard_size` ranks share one slice, and the i-th rank of a
//!   group holds the i-th part. That is the innermost factor of the
//!   replicated axes, so it becomes the innermost split of dimension 0, and
//!   a replicated axis only partly used is factored in two. A size of `-1`
//!   is the whole replica group; a size or a step of `0` (or a size of 1)
//!   means no optimizer shard, whatever the other field says;
//! - `opt_weight_shard_step` is what MindSpore's C++ records for the group
//!   of rank 0, `(last - first) / (len - 1)` in integer division
//!   ([`MindSporeLayout::recorded_step`]): with replicated axes on both
//!   sides of a model-parallel axis it is not the stride of any one axis.

use std::sync::Arc;

use super::is_even_blocks;
use crate::error::LayoutError;
use crate::layout::{DimSplit, LayoutConfig, SplitPolicy, TensorLayout};
use crate::mesh::DeviceMesh;

/// Name of the pipeline axis of meshes built from MindSpore layouts.
pub const STAGE_AXIS: &str = "stage";

/// A MindSpore parameter layout, as in a strategy file.
///
/// # Example
///
/// ```
/// use shardplan_core::notation::mindspore::MindSporeLayout;
///
/// // dev_matrix [2, 2]: the tensor's columns split over the right axis,
/// // rows optimizer-sharded over the other.
/// let ms = MindSporeLayout {
///     dev_matrix: vec![2, 2],
///     tensor_map: vec![vec![-1], vec![0]],
///     opt_weight_shard_size: 2,
///     opt_weight_shard_step: 2,
///     ..MindSporeLayout::default()
/// };
/// let layout = ms.to_layout(&[8, 4]).unwrap();
/// assert_eq!(layout.region_of(2).unwrap().to_string(), "[4..8, 0..2]");
/// // The round trip gives the same slices on every rank.
/// let back = MindSporeLayout::from_layout(&layout).unwrap();
/// assert!(back.to_layout(&[8, 4]).unwrap().same_placement(&layout));
/// // A tensor map entry beyond the device matrix is refused.
/// let bad = MindSporeLayout { tensor_map: vec![vec![2], vec![-1]], ..ms };
/// assert!(bad.to_layout(&[8, 4]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MindSporeLayout {
    /// Device matrix of one stage, outermost first.
    pub dev_matrix: Vec<u64>,
    /// Per tensor dimension, the device-matrix axes (counted from the right)
    /// splitting it; `[-1]` or `[]` = not split.
    pub tensor_map: Vec<Vec<i64>>,
    /// Ranks sharing one optimizer-sharded slice group; `-1` = every rank
    /// holding the same model-parallel slice; 0 or 1 = none.
    pub opt_weight_shard_size: i64,
    /// The group's rank step as MindSpore records it
    /// ([`MindSporeLayout::recorded_step`]); 0 = no optimizer shard, as
    /// MindSpore reads it.
    pub opt_weight_shard_step: i64,
    /// Explicit block sizes of dimension 0 (`param_split_shape`); empty = even.
    pub param_split_shape: Vec<u64>,
    /// Pipeline stage holding the parameter.
    pub stage: u64,
    /// Number of pipeline stages (at least 1).
    pub stage_count: u64,
}

impl Default for MindSporeLayout {
    fn default() -> Self {
        MindSporeLayout {
            dev_matrix: Vec::new(),
            tensor_map: Vec::new(),
            opt_weight_shard_size: 0,
            opt_weight_shard_step: 0,
            param_split_shape: Vec::new(),
            stage: 0,
            stage_count: 1,
        }
    }
}

pub use super::fault::MindSporeFault;

impl From<MindSporeFault> for LayoutError {
    fn from(fault: MindSporeFault) -> Self {
        LayoutError::MindSpore(fault)
    }
}

/// The stage of a layout MindSpore can express, its stage count, and the
/// index of its first device-matrix axis (1 after a stage axis).
///
/// # Errors
///
/// [`LayoutError::MindSpore`] for a layout given box by box, partial sums,
/// explicit device ids, or a pin other than on the first axis or on
/// several stages.
fn expressible_stage(layout: &TensorLayout) -> Result<(u64, u64, usize), LayoutError> {
    super::refuse_explicit(layout, |layout| MindSporeFault::Explicit { layout }.into())?;
    let mesh = layout.mesh();
    if !layout.partial().is_empty() {
        return Err(MindSporeFault::Partial {
            layout: layout.to_string(),
        }
        .into());
    }
    if mesh
        .device_ids()
        .is_some_and(|ids| ids.iter().enumerate().any(|(r, &d)| r as u64 != d))
    {
        return Err(MindSporeFault::DeviceIds.into());
    }
    match layout.pin() {
        [] => Ok((0, 1, 0)),
        [(0, c)] => Ok((*c, mesh.axis_size(0), 1)),
        [(0, _), (0, _), ..] => Err(MindSporeFault::SeveralStages {
            layout: layout.to_string(),
        }
        .into()),
        _ => Err(MindSporeFault::PinNotFirst {
            layout: layout.to_string(),
        }
        .into()),
    }
}

/// The trailing axes of dimension 0 that are the optimizer shard: with a
/// recorded shard of `ways` ranks, the suffix of that size; else the
/// longest proper suffix that is innermost among the replicated axes.
/// None when dimension 0's blocks are uneven (`param_split_shape`, which
/// MindSpore does not combine with an optimizer shard).
fn optimizer_axes(layout: &TensorLayout, ways: Option<u64>) -> Vec<usize> {
    let mesh = layout.mesh();
    let Some(d0) = layout
        .dims()
        .first()
        .filter(|d| is_even_blocks(d, layout.shape()[0]))
        .map(|d| d.axes())
    else {
        return Vec::new();
    };
    let replicated = layout.replica_axes();
    // A single axis stays a tensor-map entry; only the trailing axes of a
    // dimension split several ways become an optimizer shard, so the flat
    // (JSON) form can hold the layout.
    let innermost = |suffix: &[usize]| {
        let mut pool: Vec<usize> = replicated.iter().chain(suffix).copied().collect();
        pool.sort_unstable();
        pool.ends_with(suffix) && suffix.iter().any(|&a| mesh.axis_size(a) > 1)
    };
    let recorded = ways.and_then(|w| {
        (1..=d0.len())
            .map(|take| &d0[d0.len() - take..])
            .find(|suffix| {
                suffix.iter().map(|&a| mesh.axis_size(a)).product::<u64>() == w && innermost(suffix)
            })
    });
    if let Some(suffix) = recorded {
        return suffix.to_vec();
    }
    (1..d0.len())
        .rev()
        .map(|take| &d0[d0.len() - take..])
        .find(|suffix| innermost(suffix))
        .map_or_else(Vec::new, <[usize]>::to_vec)
}

/// `param_split_shape`: the block sizes of an uneven dimension 0 when it
/// holds no optimizer shard (`no_shard`); empty when every dimension is
/// even.
///
/// # Errors
///
/// [`MindSporeFault::UnevenBlocks`] for any other uneven dimension.
fn split_shape(layout: &TensorLayout, no_shard: bool) -> Result<Vec<u64>, MindSporeFault> {
    let mut param_split_shape = Vec::new();
    for (d, dim) in layout.dims().iter().enumerate() {
        if is_even_blocks(dim, layout.shape()[d]) {
            continue;
        }
        if d == 0 && no_shard {
            param_split_shape = (0..dim.block_count())
                .map(|b| {
                    let (s, e) = dim.block(b);
                    e - s
                })
                .collect();
        } else {
            return Err(MindSporeFault::UnevenBlocks {
                dim: d,
                layout: layout.to_string(),
            });
        }
    }
    Ok(param_split_shape)
}

/// Name of the mesh axis for device-matrix axis `k` (counted from the right).
fn axis_name(k: usize) -> String {
    format!("d{k}")
}

impl MindSporeLayout {
    /// The layout of a tensor that is on `stage` and also on the stages
    /// `also_on`, cut alike on each (a tied embedding used by the first and
    /// the last stage): [`MindSporeLayout::to_layout`] with the stage axis
    /// pinned to every one of them.
    ///
    /// # Errors
    ///
    /// As [`MindSporeLayout::to_layout`]; [`MindSporeFault::ExtraStages`]
    /// when `also_on` is not empty but the layout has one stage;
    /// [`LayoutError::PinOutOfRange`] for a stage beyond `stage_count`.
    pub fn to_layout_on_stages(
        &self,
        shape: &[u64],
        also_on: &[u64],
    ) -> Result<TensorLayout, LayoutError> {
        let one = self.to_layout(shape)?;
        if also_on.is_empty() {
            return Ok(one);
        }
        if self.stage_count <= 1 {
            return Err(MindSporeFault::ExtraStages {
                stage: self.stage,
                also_on: also_on.to_vec(),
            }
            .into());
        }
        let mut cfg = one.to_config();
        let axis = one.axis_name(0).to_string();
        cfg.pin.extend(also_on.iter().map(|&s| (axis.clone(), s)));
        TensorLayout::new(one.mesh().clone(), shape, &cfg)
    }

    /// The layout of a tensor of `shape`.
    ///
    /// The mesh has an axis `stage` first when `stage_count > 1`, then one
    /// axis `d<k>` per device-matrix axis (`k` counted from the right, as in
    /// `tensor_map`); an axis the optimizer shard uses only in part is
    /// factored into `d<k>` and `d<k>_opt`.
    ///
    /// # Errors
    ///
    /// [`LayoutError::MindSpore`] for a tensor map of the wrong length, an
    /// entry outside the device matrix or used twice, a stage beyond the
    /// stage count, an optimizer shard the replicated ranks cannot hold (or
    /// of a scalar), a recorded step that disagrees with the group rule
    /// ([`MindSporeFault::StepMismatch`]), or explicit block sizes on a
    /// scalar; [`LayoutError`]s of [`TensorLayout::new`] otherwise.
    pub fn to_layout(&self, shape: &[u64]) -> Result<TensorLayout, LayoutError> {
        self.check_map_and_stage(shape)?;
        let (mut dims, used) = self.map_dims()?;
        let factored = self.add_optimizer_shard(shape, &used, &mut dims)?;
        if !self.param_split_shape.is_empty() {
            if shape.is_empty() {
                return Err(MindSporeFault::ScalarSplitShape.into());
            }
            dims[0].policy = SplitPolicy::Blocks(self.param_split_shape.clone());
        }
        let pin = if self.stage_count > 1 {
            vec![(STAGE_AXIS.to_string(), self.stage)]
        } else {
            Vec::new()
        };
        let mesh = Arc::new(DeviceMesh::new(self.mesh_axes(factored))?);
        TensorLayout::new(mesh, shape, &LayoutConfig::new(dims).with_pin(pin))
    }

    /// One tensor-map entry per dimension of `shape`, and a stage inside
    /// the stage count.
    fn check_map_and_stage(&self, shape: &[u64]) -> Result<(), MindSporeFault> {
        if self.tensor_map.len() != shape.len() {
            return Err(MindSporeFault::TensorMapLength {
                entries: self.tensor_map.len(),
                tensor_dims: shape.len(),
            });
        }
        if self.stage_count == 0 || !(self.stage < self.stage_count) {
            return Err(MindSporeFault::StageOutOfRange {
                stage: self.stage,
                stage_count: self.stage_count,
            });
        }
        Ok(())
    }

    /// Each dimension's split by the tensor map, and which device-matrix
    /// axes (by map index) the map uses.
    fn map_dims(&self) -> Result<(Vec<DimSplit>, Vec<bool>), MindSporeFault> {
        let n = self.dev_matrix.len();
        let mut used = vec![false; n];
        let mut dims: Vec<DimSplit> = Vec::with_capacity(self.tensor_map.len());
        for entry in &self.tensor_map {
            let mut split = DimSplit::none();
            for &k in entry {
                if k == -1 {
                    continue;
                }
                if !(0 <= k && (k as usize) < n) {
                    return Err(MindSporeFault::MapEntryOutOfRange { entry: k, axes: n });
                }
                if used[k as usize] {
                    return Err(MindSporeFault::MapAxisTwice { axis: k });
                }
                used[k as usize] = true;
                split.axes.push(axis_name(k as usize));
            }
            dims.push(split);
        }
        Ok((dims, used))
    }

    /// Splits dimension 0 further over the optimizer shard: the innermost
    /// replicated axes whose sizes make the group size, the last of them
    /// factored into `d<k>` and `d<k>_opt` when the group takes only part
    /// of it. Returns that factored axis (map index, inner size).
    fn add_optimizer_shard(
        &self,
        shape: &[u64],
        used: &[bool],
        dims: &mut [DimSplit],
    ) -> Result<Option<(usize, u64)>, LayoutError> {
        let n = self.dev_matrix.len();
        // Replicated axes, in mesh order, as map indices.
        let replicated: Vec<usize> = (0..n).rev().filter(|&k| !used[k]).collect();
        let size = self.opt_shard_group_size()?;
        if size <= 1 {
            return Ok(None);
        }
        if shape.is_empty() {
            return Err(MindSporeFault::ScalarOptimizerShard.into());
        }
        let mut factored = None;
        let mut rest = size;
        let mut inner_axes = Vec::new();
        for &k in replicated.iter().rev() {
            if rest == 1 {
                break;
            }
            let s = self.dev_matrix[n - 1 - k];
            if rest.is_multiple_of(s) {
                inner_axes.push(axis_name(k));
                rest /= s;
            } else if s.is_multiple_of(rest) {
                factored = Some((k, rest));
                inner_axes.push(format!("{}_opt", axis_name(k)));
                rest = 1;
            } else {
                break;
            }
        }
        if rest != 1 {
            return Err(MindSporeFault::ShardSizeIndivisible {
                size,
                replicas: self.replica_count(),
            }
            .into());
        }
        let recorded = self.recorded_step()?;
        if self.opt_weight_shard_step != recorded {
            return Err(MindSporeFault::StepMismatch {
                step: self.opt_weight_shard_step,
                recorded,
                size,
            }
            .into());
        }
        inner_axes.reverse();
        dims[0].axes.extend(inner_axes);
        Ok(factored)
    }

    /// Mesh axes in mesh order, (name, size): the stage axis when there are
    /// stages, then the device matrix (position i is map index n - 1 - i),
    /// the `factored` axis split in two.
    fn mesh_axes(&self, factored: Option<(usize, u64)>) -> Vec<(String, u64)> {
        let n = self.dev_matrix.len();
        let mut axes: Vec<(String, u64)> = Vec::with_capacity(n + 2);
        if self.stage_count > 1 {
            axes.push((STAGE_AXIS.to_string(), self.stage_count));
        }
        for (i, &s) in self.dev_matrix.iter().enumerate() {
            let k = n - 1 - i;
            match factored {
                Some((fk, inner)) if fk == k => {
                    axes.push((axis_name(k), s / inner));
                    axes.push((format!("{}_opt", axis_name(k)), inner));
                }
                _ => axes.push((axis_name(k), s)),
            }
        }
        axes
    }

    /// The MindSpore form of `layout`.
    ///
    /// A pin on the first mesh axis becomes the pipeline stage. The innermost
    /// axes splitting dimension 0 become an optimizer shard when they are
    /// the innermost of the otherwise replicated axes; other dimensions split
    /// by several axes give nested tensor-map entries (protobuf only).
    ///
    /// # Errors
    ///
    /// [`LayoutError::MindSpore`] for a layout given box by box, partial-sum
    /// axes, a pin other than on the first axis or on several stages,
    /// explicit device ids, and uneven blocks other than explicit sizes on
    /// dimension 0.
    pub fn from_layout(layout: &TensorLayout) -> Result<Self, LayoutError> {
        Self::from_layout_sharded(layout, None)
    }

    /// [`MindSporeLayout::from_layout`] for a layout known to hold an
    /// optimizer shard of `ways` ranks (what a strategy file or a
    /// `mindspore` rule recorded): the trailing axes of dimension 0 whose
    /// sizes multiply to `ways` become the shard, even when they are all of
    /// dimension 0's axes, which the layout alone would read as a split.
    /// Without such axes, as `from_layout`.
    ///
    /// # Errors
    ///
    /// As [`MindSporeLayout::from_layout`].
    pub fn from_layout_with_shard(layout: &TensorLayout, ways: u64) -> Result<Self, LayoutError> {
        Self::from_layout_sharded(layout, Some(ways).filter(|&w| w > 1))
    }

    fn from_layout_sharded(layout: &TensorLayout, ways: Option<u64>) -> Result<Self, LayoutError> {
        let (stage, stage_count, first) = expressible_stage(layout)?;
        let mesh = layout.mesh();
        let n = mesh.axes().len() - first;
        // Map index of mesh axis a.
        let k_of = |a: usize| (n - 1 - (a - first)) as i64;
        let mut dims: Vec<Vec<usize>> = layout.dims().iter().map(|d| d.axes().to_vec()).collect();
        let opt = optimizer_axes(layout, ways);
        if let Some(d0) = dims.first_mut() {
            d0.truncate(d0.len() - opt.len());
        }
        let param_split_shape = split_shape(layout, opt.is_empty())?;
        let size = opt.iter().map(|&a| mesh.axis_size(a)).product::<u64>();
        let size = if opt.is_empty() { 0 } else { size as i64 };
        let mut ms = MindSporeLayout {
            dev_matrix: mesh.shape()[first..].to_vec(),
            tensor_map: dims
                .iter()
                .map(|axes| {
                    if axes.is_empty() {
                        vec![-1]
                    } else {
                        axes.iter().map(|&a| k_of(a)).collect()
                    }
                })
                .collect(),
            opt_weight_shard_size: size,
            opt_weight_shard_step: 0,
            param_split_shape,
            stage,
            stage_count,
        };
        if size > 1 {
            // The step MindSpore would record; a group of size-1 axes only
            // has step 0, which reads as no shard, as it is.
            ms.opt_weight_shard_step = ms.recorded_step()?;
            if ms.opt_weight_shard_step == 0 {
                ms.opt_weight_shard_size = 0;
            }
        }
        Ok(ms)
    }

    /// Per device-matrix position (outermost first), whether the tensor map
    /// names it.
    fn used_positions(&self) -> Vec<bool> {
        let n = self.dev_matrix.len();
        let mut used = vec![false; n];
        for &k in self.tensor_map.iter().flatten() {
            if let Ok(k) = usize::try_from(k)
                && k < n
            {
                used[n - 1 - k] = true;
            }
        }
        used
    }

    /// Ranks of a stage that hold each model-parallel slice: the product of
    /// the device-matrix axes the tensor map does not use (1 for a tensor
    /// map that names axes outside the device matrix; `to_layout` refuses
    /// those).
    pub fn replica_count(&self) -> u64 {
        let used = self.used_positions();
        self.dev_matrix
            .iter()
            .zip(&used)
            .filter(|&(_, &u)| !u)
            .map(|(&d, _)| d)
            .try_fold(1u64, |a, d| a.checked_mul(d))
            .unwrap_or(1)
    }

    /// The number of ranks that share one optimizer-sharded slice, as
    /// MindSpore reads the two fields: 1 (no shard) when the size or the
    /// step is 0 or the size is 1; the whole replica group
    /// ([`MindSporeLayout::replica_count`]) for a size of `-1`.
    ///
    /// # Errors
    ///
    /// [`MindSporeFault::ShardFields`] for a size below `-1` or a negative
    /// step.
    pub fn opt_shard_group_size(&self) -> Result<u64, LayoutError> {
        let (size, step) = (self.opt_weight_shard_size, self.opt_weight_shard_step);
        if size < -1 || step < 0 {
            return Err(MindSporeFault::ShardFields { size, step }.into());
        }
        Ok(match size {
            _ if step == 0 => 1,
            0 | 1 => 1,
            -1 => self.replica_count(),
            s => s as u64,
        })
    }

    /// This layout with an optimizer shard of `size` ranks (`-1` = the
    /// whole replica group) and the step MindSpore records for it, as a
    /// strategy file written by MindSpore would hold them.
    ///
    /// # Example
    ///
    /// ```
    /// use shardplan_core::notation::mindspore::MindSporeLayout;
    ///
    /// let ms = MindSporeLayout {
    ///     dev_matrix: vec![4, 2],
    ///     tensor_map: vec![vec![-1], vec![0]],
    ///     ..MindSporeLayout::default()
    /// }
    /// .with_optimizer_shard(2)
    /// .unwrap();
    /// assert_eq!(ms.opt_weight_shard_step, 2);
    /// assert!(ms.clone().with_optimizer_shard(-3).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// As [`MindSporeLayout::opt_shard_group_size`].
    pub fn with_optimizer_shard(self, size: i64) -> Result<Self, LayoutError> {
        let mut ms = MindSporeLayout {
            opt_weight_shard_size: size,
            ..self
        };
        ms.opt_weight_shard_step = ms.recorded_step()?;
        Ok(ms)
    }

    /// The step MindSpore records for this layout's optimizer shard: over
    /// the group of rank 0 (the first `opt_shard_group_size` ranks, in
    /// ascending order, of the ranks holding rank 0's model-parallel
    /// slice), `(last - first) / (len - 1)` in integer division; 0 without
    /// an optimizer shard. The recorded step does not enter the layout: a
    /// file is checked against it. The step field itself is ignored here
    /// except where it is 0 (no shard).
    ///
    /// # Example
    ///
    /// ```
    /// use shardplan_core::notation::mindspore::MindSporeLayout;
    ///
    /// // dev [2, 4, 2]; the middle axis splits dimension 1, the two outer
    /// // ones are replicas: rank 0's group is {0, 1, 8, 9}, step 9 / 3.
    /// let ms = MindSporeLayout {
    ///     dev_matrix: vec![2, 4, 2],
    ///     tensor_map: vec![vec![-1], vec![1]],
    ///     opt_weight_shard_size: -1,
    ///     opt_weight_shard_step: 1,
    ///     ..MindSporeLayout::default()
    /// };
    /// assert_eq!(ms.recorded_step().unwrap(), 3);
    /// ```
    ///
    /// # Errors
    ///
    /// As [`MindSporeLayout::opt_shard_group_size`];
    /// [`MindSporeFault::ShardSizeTooLarge`] for a size larger than the
    /// replica group.
    pub fn recorded_step(&self) -> Result<i64, LayoutError> {
        // Ask for the size as if the step were set: the step is what is
        // being computed.
        let probe = MindSporeLayout {
            opt_weight_shard_step: self.opt_weight_shard_step.max(1),
            ..self.clone()
        };
        let size = probe.opt_shard_group_size()?;
        if size <= 1 {
            return Ok(0);
        }
        // The (size - 1)-th replica of rank 0 in ascending order: index
        // size - 1 in the mixed radix of the replicated axes, innermost
        // fastest.
        let n = self.dev_matrix.len();
        let used = self.used_positions();
        let mut index = size - 1;
        let mut last: u64 = 0;
        let mut stride: u64 = 1;
        for i in (0..n).rev() {
            let d = self.dev_matrix[i];
            if !used[i] && d > 0 {
                last = last.saturating_add((index % d).saturating_mul(stride));
                index /= d;
            }
            stride = stride.saturating_mul(d);
        }
        if index != 0 {
            return Err(MindSporeFault::ShardSizeTooLarge {
                size,
                replicas: self.replica_count(),
            }
            .into());
        }
        Ok(i64::try_from(last / (size - 1)).unwrap_or(i64::MAX))
    }

    /// The full shape of a tensor of which one rank holds a slice of shape
    /// `local`: each dimension times its block count (dimension 0 also
    /// times the optimizer-shard group), or the sum of `param_split_shape`.
    /// `None` when the tensor map does not fit `local`, names an axis
    /// outside the device matrix, or a product overflows.
    pub fn full_shape(&self, local: &[u64]) -> Option<Vec<u64>> {
        if self.tensor_map.len() != local.len() {
            return None;
        }
        let n = self.dev_matrix.len();
        let opt = self.opt_shard_group_size().ok()?;
        let mut shape = Vec::with_capacity(local.len());
        for (d, entry) in self.tensor_map.iter().enumerate() {
            let mut blocks = entry
                .iter()
                .filter(|&&k| k >= 0)
                .map(|&k| {
                    let k = usize::try_from(k).ok()?;
                    self.dev_matrix.get(n.checked_sub(1 + k)?).copied()
                })
                .try_fold(1u64, |a, b| a.checked_mul(b?))?;
            if d == 0 {
                blocks = blocks.checked_mul(opt)?;
            }
            shape.push(if d == 0 && !self.param_split_shape.is_empty() {
                self.param_split_shape
                    .iter()
                    .try_fold(0u64, |a, &b| a.checked_add(b))?
            } else {
                local[d].checked_mul(blocks)?
            });
        }
        Some(shape)
    }

    /// True when every dimension has at most one tensor-map entry, as the
    /// JSON strategy format requires.
    pub fn is_flat(&self) -> bool {
        self.tensor_map.iter().all(|e| e.len() <= 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(dev: &[u64], tm: &[&[i64]], size: i64, step: i64) -> MindSporeLayout {
        MindSporeLayout {
            dev_matrix: dev.to_vec(),
            tensor_map: tm.iter().map(|e| e.to_vec()).collect(),
            opt_weight_shard_size: size,
            opt_weight_shard_step: step,
            ..Default::default()
        }
    }

    /// Row offsets per rank for an `[8, c]` tensor.
    #[track_caller]
    fn check_rows(layout: MindSporeLayout, shape: &[u64], expect: &[u64]) {
        let l = layout.to_layout(shape).unwrap();
        let rows: Vec<u64> = (0..l.mesh().rank_count())
            .map(|r| l.region_of(r).unwrap().offset()[0])
            .collect();
        assert_eq!(rows, expect);
        let back = MindSporeLayout::from_layout(&l).unwrap();
        assert!(
            back.to_layout(shape).unwrap().same_placement(&l),
            "{back:?}"
        );
    }

    #[test]
    fn optimizer_group_rule() {
        // dev [4, 2], tm [-1, 0]: replicas of a slice are ranks {0, 2, 4, 6};
        // groups of 2 in rank order: {0, 2}, {4, 6}.
        check_rows(
            ms(&[4, 2], &[&[-1], &[0]], 2, 2),
            &[8, 4],
            &[0, 0, 4, 4, 0, 0, 4, 4],
        );
        // Pure data parallel, size 4.
        check_rows(ms(&[4], &[&[-1], &[-1]], 4, 1), &[8, 4], &[0, 2, 4, 6]);
        // Nested map [[1, 0], -1]: axis 1 outer.
        check_rows(ms(&[2, 2], &[&[1, 0], &[-1]], 0, 0), &[8, 4], &[0, 2, 4, 6]);
    }

    /// `-1` is the whole replica group; a step or size of 0 is no shard,
    /// whatever the other field says (as MindSpore reads real files).
    #[test]
    fn whole_group_and_unsharded() {
        // dev [4, 2], tm [-1, 0]: the group is all 4 replicas {0, 2, 4, 6}.
        check_rows(
            ms(&[4, 2], &[&[-1], &[0]], -1, 2),
            &[8, 4],
            &[0, 0, 2, 2, 4, 4, 6, 6],
        );
        // Real files write `step 0, size -1` for unsharded parameters.
        check_rows(ms(&[4], &[&[-1], &[-1]], -1, 0), &[8, 4], &[0, 0, 0, 0]);
        check_rows(ms(&[4], &[&[-1], &[-1]], 0, 1), &[8, 4], &[0, 0, 0, 0]);
        // Without replicas, -1 shards nothing.
        check_rows(ms(&[4], &[&[0], &[-1]], -1, 1), &[8, 4], &[0, 2, 4, 6]);
    }

    /// The step MindSpore records, `(last - first) / (len - 1)` over rank
    /// 0's group, is accepted; with replicas on both sides of a
    /// model-parallel axis it is the stride of no axis.
    #[test]
    fn recorded_steps() {
        #[track_caller]
        fn step(dev: &[u64], tm: &[&[i64]], size: i64) -> i64 {
            ms(dev, tm, size, 1).recorded_step().unwrap()
        }
        // {0, 1, 8, 9}: 9 / 3.
        assert_eq!(step(&[2, 4, 2], &[&[-1], &[1]], -1), 3);
        // {0, 1}: the innermost axis only.
        assert_eq!(step(&[2, 4, 2], &[&[-1], &[1]], 2), 1);
        // {0, 1, 4, 5}: 5 / 3 = 1 in integer division.
        assert_eq!(step(&[2, 2, 2], &[&[-1], &[1]], 4), 1);
        // {0, 2, 4, 6}.
        assert_eq!(step(&[4, 2], &[&[-1], &[0]], -1), 2);
        // No shard: no step.
        assert_eq!(step(&[4], &[&[0], &[-1]], -1), 0);
        // More ranks than the replicas: refused, not read as no shard.
        let ms8 = ms(&[4, 2], &[&[-1], &[0]], 0, 0);
        assert!(ms8.clone().with_optimizer_shard(8).is_err());
        assert!(ms8.clone().with_optimizer_shard(5).is_err());
        assert!(ms8.with_optimizer_shard(4).is_ok());
        // Rows of [8, 4] on dev [2, 4, 2] with -1: rank r's part of dim 0 is
        // its index in {0, 1, 8, 9} (and the translates of that group).
        let l = ms(&[2, 4, 2], &[&[-1], &[1]], -1, 3);
        check_rows(
            l,
            &[8, 4],
            &[0, 2, 0, 2, 0, 2, 0, 2, 4, 6, 4, 6, 4, 6, 4, 6],
        );
    }

    #[test]
    fn several_stages() {
        let mut l = ms(&[2], &[&[0], &[-1]], 0, 0);
        // One stage: no other stage to add.
        assert!(l.to_layout_on_stages(&[4, 2], &[2]).is_err());
        l.stage_count = 3;
        let t = l.to_layout_on_stages(&[4, 2], &[2]).unwrap();
        assert_eq!(t.to_string(), "[d0, -] at stage=0|2");
        assert_eq!(
            l.to_layout_on_stages(&[4, 2], &[]).unwrap(),
            l.to_layout(&[4, 2]).unwrap()
        );
        assert!(l.to_layout_on_stages(&[4, 2], &[3]).is_err());
    }

    #[test]
    fn refusals() {
        use MindSporeFault as F;
        let scalar_shard = MindSporeLayout {
            dev_matrix: vec![2],
            opt_weight_shard_size: 2,
            opt_weight_shard_step: 1,
            ..Default::default()
        };
        let scalar_split = MindSporeLayout {
            dev_matrix: vec![2],
            param_split_shape: vec![1],
            ..Default::default()
        };
        let cases: Vec<(MindSporeLayout, &[u64], MindSporeFault)> = vec![
            (
                ms(&[4], &[&[1], &[-1]], 0, 0),
                &[8, 4],
                F::MapEntryOutOfRange { entry: 1, axes: 1 },
            ),
            (
                ms(&[4], &[&[0], &[0]], 0, 0),
                &[8, 4],
                F::MapAxisTwice { axis: 0 },
            ),
            (
                ms(&[4], &[&[-1]], 0, 0),
                &[8, 4],
                F::TensorMapLength {
                    entries: 1,
                    tensor_dims: 2,
                },
            ),
            (
                MindSporeLayout {
                    stage: 1,
                    ..ms(&[4], &[&[-1], &[-1]], 0, 0)
                },
                &[8, 4],
                F::StageOutOfRange {
                    stage: 1,
                    stage_count: 1,
                },
            ),
            (
                ms(&[3], &[&[-1], &[-1]], 2, 1),
                &[8, 4],
                F::ShardSizeIndivisible {
                    size: 2,
                    replicas: 3,
                },
            ),
            (
                ms(&[4, 2], &[&[-1], &[0]], 2, 4),
                &[8, 4],
                F::StepMismatch {
                    step: 4,
                    recorded: 2,
                    size: 2,
                },
            ),
            (
                ms(&[2, 4, 2], &[&[-1], &[1]], -1, 1),
                &[8, 4],
                F::StepMismatch {
                    step: 1,
                    recorded: 3,
                    size: 4,
                },
            ),
            (
                ms(&[4, 2], &[&[-1], &[0]], -2, 2),
                &[8, 4],
                F::ShardFields { size: -2, step: 2 },
            ),
            (
                ms(&[4, 2], &[&[-1], &[0]], 2, -1),
                &[8, 4],
                F::ShardFields { size: 2, step: -1 },
            ),
            (scalar_shard, &[], F::ScalarOptimizerShard),
            (scalar_split, &[], F::ScalarSplitShape),
        ];
        for (layout, shape, fault) in cases {
            assert_eq!(
                layout.to_layout(shape),
                Err(LayoutError::MindSpore(fault)),
                "{layout:?}"
            );
        }
        // A shard of more ranks than the replicas, as `recorded_step` finds.
        assert_eq!(
            ms(&[4, 2], &[&[-1], &[0]], 0, 0).with_optimizer_shard(8),
            Err(LayoutError::MindSpore(F::ShardSizeTooLarge {
                size: 8,
                replicas: 4
            }))
        );
        // Other stages for a layout of one stage.
        assert_eq!(
            ms(&[2], &[&[0], &[-1]], 0, 0).to_layout_on_stages(&[4, 2], &[2]),
            Err(LayoutError::MindSpore(F::ExtraStages {
                stage: 0,
                also_on: vec![2]
            }))
        );
    }

    /// The fault's text follows the notation's name, word for word as
    /// before the faults were typed; code and help are the fault's.
    #[test]
    fn fault_text_code_and_help() {
        use miette::Diagnostic;
        let e = ms(&[4, 2], &[&[-1], &[0]], 2, 4)
            .to_layout(&[8, 4])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mindspore: opt_weight_shard_step 4 is not what MindSpore records for this group: 2 ((last - first) / (len - 1) over the 2 ranks of rank 0's group)"
        );
        assert_eq!(
            e.code().unwrap().to_string(),
            "shardplan::notation::mindspore::step_mismatch"
        );
        assert_eq!(
            e.help().unwrap().to_string(),
            "check that dev_matrix, tensor_map and opt_weight_shard_size belong to this parameter"
        );
    }
}

//! Tensor layouts: how a tensor of a global shape is cut over a device mesh.

use std::sync::Arc;

use crate::error::LayoutError;
use crate::geometry::element_count;
use crate::mesh::DeviceMesh;

mod boxes;
mod config;
mod display;
mod pins;
mod regions;
mod split;
#[cfg(test)]
mod tests;

use boxes::BoxSet;
pub use config::{DimSplit, LayoutConfig};
pub use split::{DimLayout, SplitPolicy};

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

    /// Name of axis `a` of the layout's mesh.
    pub fn axis_name(&self, a: usize) -> &str {
        &self.mesh.axes()[a].name
    }
}

//! What a caller gives to build a layout: [`DimSplit`] and [`LayoutConfig`].

use super::SplitPolicy;
#[cfg(doc)]
use super::TensorLayout;

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

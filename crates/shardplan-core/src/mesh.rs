//! Device meshes: ordered, named axes whose product is the number of ranks.

use crate::error::LayoutError;

/// Ranks a mesh may have before it is refused. Planning work grows with the
/// rank count, so a mesh beyond this is almost certainly a typo.
pub const MAX_RANKS: u64 = 1 << 20;

/// One named axis of a [`DeviceMesh`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeshAxis {
    /// Name used by layouts to refer to the axis (`dp`, `tp`, `pp`, ...).
    pub name: String,
    /// Number of positions along the axis; at least 1.
    pub size: u64,
}

/// An n-dimensional arrangement of ranks.
///
/// Ranks are numbered row-major: the last axis varies fastest, as in
/// MindSpore's `dev_matrix` and in JAX and PyTorch device meshes. A mesh
/// without axes has one rank. Rank `r` runs on device `r` unless the mesh
/// lists explicit device ids.
///
/// # Example
///
/// ```
/// use shardplan_core::DeviceMesh;
///
/// let mesh = DeviceMesh::new([("dp", 2), ("tp", 4)]).unwrap();
/// assert_eq!(mesh.rank_count(), 8);
/// assert_eq!(mesh.coords(5).unwrap(), vec![1, 1]);
/// assert_eq!(mesh.rank_of(&[1, 1]).unwrap(), 5);
/// // An axis of size zero is refused.
/// assert!(DeviceMesh::new([("dp", 0)]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceMesh {
    axes: Vec<MeshAxis>,
    /// `strides[i]` = product of the sizes of the axes after `i`.
    strides: Vec<u64>,
    rank_count: u64,
    device_ids: Option<Vec<u64>>,
}

impl DeviceMesh {
    /// Builds a mesh from `(name, size)` pairs, outermost axis first.
    ///
    /// # Errors
    ///
    /// [`LayoutError::EmptyAxisName`], [`LayoutError::ZeroAxis`] or
    /// [`LayoutError::DuplicateMeshAxis`] for a malformed axis, and
    /// [`LayoutError::TooManyRanks`] when the product of the sizes overflows
    /// or exceeds [`MAX_RANKS`].
    pub fn new<N: Into<String>>(
        axes: impl IntoIterator<Item = (N, u64)>,
    ) -> Result<Self, LayoutError> {
        let axes: Vec<MeshAxis> = axes
            .into_iter()
            .map(|(name, size)| MeshAxis {
                name: name.into(),
                size,
            })
            .collect();
        let mut rank_count: u64 = 1;
        for (i, axis) in axes.iter().enumerate() {
            if axis.name.is_empty() {
                return Err(LayoutError::EmptyAxisName { index: i });
            }
            if axis.size == 0 {
                return Err(LayoutError::ZeroAxis {
                    axis: axis.name.clone(),
                });
            }
            if axes[..i].iter().any(|a| a.name == axis.name) {
                return Err(LayoutError::DuplicateMeshAxis {
                    axis: axis.name.clone(),
                });
            }
            rank_count = rank_count
                .checked_mul(axis.size)
                .filter(|&n| n <= MAX_RANKS)
                .ok_or_else(|| LayoutError::TooManyRanks {
                    shape: axes.iter().map(|a| a.size).collect(),
                    max: MAX_RANKS,
                })?;
        }
        let mut strides = vec![1u64; axes.len()];
        for i in (0..axes.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * axes[i + 1].size;
        }
        Ok(DeviceMesh {
            axes,
            strides,
            rank_count,
            device_ids: None,
        })
    }

    /// Returns the mesh with explicit device ids: `ids[r]` is the device
    /// that rank `r` runs on.
    ///
    /// # Errors
    ///
    /// [`LayoutError::DeviceIdCount`] when there is not exactly one id per
    /// rank, [`LayoutError::DuplicateDeviceId`] when two ranks share a device.
    pub fn with_device_ids(mut self, ids: Vec<u64>) -> Result<Self, LayoutError> {
        if !(ids.len() as u64 == self.rank_count) {
            return Err(LayoutError::DeviceIdCount {
                expected: self.rank_count,
                found: ids.len(),
            });
        }
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(LayoutError::DuplicateDeviceId { device: w[0] });
        }
        self.device_ids = Some(ids);
        Ok(self)
    }

    /// The axes, outermost first.
    pub fn axes(&self) -> &[MeshAxis] {
        &self.axes
    }

    /// Number of ranks (product of the axis sizes; 1 for a mesh without axes).
    pub fn rank_count(&self) -> u64 {
        self.rank_count
    }

    /// Explicit device ids, when the mesh has them.
    pub fn device_ids(&self) -> Option<&[u64]> {
        self.device_ids.as_deref()
    }

    /// Index of the axis called `name`.
    pub fn axis_index(&self, name: &str) -> Option<usize> {
        self.axes.iter().position(|a| a.name == name)
    }

    /// Size of axis `axis`. Panics if out of range (callers hold indices
    /// obtained from this mesh).
    pub fn axis_size(&self, axis: usize) -> u64 {
        self.axes[axis].size
    }

    /// Rank distance between neighbours along `axis`.
    pub fn stride(&self, axis: usize) -> u64 {
        self.strides[axis]
    }

    /// Device that rank `rank` runs on.
    ///
    /// # Errors
    ///
    /// [`LayoutError::RankOutOfRange`] when `rank` is not a rank of the mesh.
    pub fn device_of(&self, rank: u64) -> Result<u64, LayoutError> {
        self.check_rank(rank)?;
        Ok(match &self.device_ids {
            Some(ids) => ids[rank as usize],
            None => rank,
        })
    }

    /// Coordinates of `rank`, one per axis.
    ///
    /// # Errors
    ///
    /// [`LayoutError::RankOutOfRange`] when `rank` is not a rank of the mesh.
    pub fn coords(&self, rank: u64) -> Result<Vec<u64>, LayoutError> {
        self.check_rank(rank)?;
        Ok(self.coords_unchecked(rank))
    }

    pub(crate) fn coords_unchecked(&self, rank: u64) -> Vec<u64> {
        self.axes
            .iter()
            .zip(&self.strides)
            .map(|(a, s)| (rank / s) % a.size)
            .collect()
    }

    /// Rank at the given coordinates.
    ///
    /// # Errors
    ///
    /// [`LayoutError::CoordsOutOfRange`] when there is not one coordinate per
    /// axis or one is beyond its axis.
    pub fn rank_of(&self, coords: &[u64]) -> Result<u64, LayoutError> {
        if coords.len() != self.axes.len()
            || coords.iter().zip(&self.axes).any(|(c, a)| !(*c < a.size))
        {
            return Err(LayoutError::CoordsOutOfRange {
                coords: coords.to_vec(),
                shape: self.shape(),
            });
        }
        Ok(coords.iter().zip(&self.strides).map(|(c, s)| c * s).sum())
    }

    /// Axis sizes, outermost first.
    pub fn shape(&self) -> Vec<u64> {
        self.axes.iter().map(|a| a.size).collect()
    }

    fn check_rank(&self, rank: u64) -> Result<(), LayoutError> {
        if !(rank < self.rank_count) {
            return Err(LayoutError::RankOutOfRange {
                rank,
                rank_count: self.rank_count,
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for DeviceMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[")?;
        for (i, a) in self.axes.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{}={}", a.name, a.size)?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_numbering() {
        let mesh = DeviceMesh::new([("pp", 2), ("dp", 2), ("tp", 4)]).unwrap();
        for rank in 0..mesh.rank_count() {
            let c = mesh.coords(rank).unwrap();
            assert_eq!(rank, c[0] * 8 + c[1] * 4 + c[2]);
            assert_eq!(mesh.rank_of(&c).unwrap(), rank);
        }
    }

    #[test]
    fn refuses_bad_meshes() {
        let cases: &[(&[(&str, u64)], &str)] = &[
            (&[("a", 0)], "size 0"),
            (&[("a", 2), ("a", 2)], "twice"),
            (&[("", 2)], "empty"),
            (&[("a", 1 << 20), ("b", 1 << 20)], "ranks"),
            (&[("a", u64::MAX), ("b", u64::MAX)], "ranks"),
        ];
        for (axes, needle) in cases {
            let err = DeviceMesh::new(axes.iter().copied())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{axes:?}: {err}");
        }
    }

    #[test]
    fn device_ids() {
        let mesh = DeviceMesh::new([("tp", 2)]).unwrap();
        assert_eq!(mesh.device_of(1).unwrap(), 1);
        let mesh = mesh.with_device_ids(vec![4, 5]).unwrap();
        assert_eq!(mesh.device_of(1).unwrap(), 5);
        let mesh = DeviceMesh::new([("tp", 2)]).unwrap();
        assert!(mesh.clone().with_device_ids(vec![3, 3]).is_err());
        assert!(mesh.with_device_ids(vec![3]).is_err());
    }
}

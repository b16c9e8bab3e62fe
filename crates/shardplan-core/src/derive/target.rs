//! Where a derived strategy goes: [`DeriveTarget`], the target mesh and
//! its tensor-parallel and pipeline axes.

use std::fmt;
use std::sync::Arc;

use super::{AxisRole, DeriveError, DeriveRules};
use crate::mesh::DeviceMesh;

/// Where a derived strategy goes: a mesh and which of its axes are
/// tensor-parallel and pipeline; the others hold replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeriveTarget {
    pub(super) mesh: Arc<DeviceMesh>,
    pub(super) tp_axes: Vec<String>,
    pub(super) pp_axis: Option<String>,
}

impl DeriveTarget {
    /// A target on `mesh` whose tensor-parallel axes (outermost first) and
    /// pipeline axis are named.
    ///
    /// # Errors
    ///
    /// [`DeriveError::UnknownAxis`] for a name not on the mesh,
    /// [`DeriveError::TargetRoles`] for an axis named twice.
    pub fn new(
        mesh: Arc<DeviceMesh>,
        tp_axes: Vec<String>,
        pp_axis: Option<String>,
    ) -> Result<Self, DeriveError> {
        for a in tp_axes.iter().chain(&pp_axis) {
            if mesh.axis_index(a).is_none() {
                return Err(DeriveError::UnknownAxis {
                    axis: a.clone(),
                    mesh: mesh.to_string(),
                });
            }
        }
        let mut all: Vec<&String> = tp_axes.iter().chain(&pp_axis).collect();
        all.sort();
        if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
            return Err(DeriveError::TargetRoles {
                mesh: mesh.to_string(),
                axes: vec![w[0].clone()],
            });
        }
        // Splits name axes outermost first.
        let mut tp_axes = tp_axes;
        tp_axes.sort_by_key(|a| mesh.axis_index(a));
        Ok(DeriveTarget {
            mesh,
            tp_axes,
            pp_axis,
        })
    }

    /// The target for `devices` devices with tensor-parallel degree `tp`
    /// and `pp` pipeline stages: the mesh `[pp, dp, tp]`, `dp = devices /
    /// (tp * pp)`, without the axes of size 1 (one device gives a mesh
    /// without axes). Ranks are numbered row-major: the ranks of a stage
    /// are consecutive, and so are those of a tensor-parallel group.
    ///
    /// # Errors
    ///
    /// [`DeriveError::TargetShape`] when a degree is 0 or `tp * pp` does
    /// not divide `devices`; [`DeriveError::TargetMesh`] when the mesh has
    /// more ranks than [`crate::MAX_RANKS`].
    pub fn from_degrees(devices: u64, tp: u64, pp: u64) -> Result<Self, DeriveError> {
        let bad = DeriveError::TargetShape { devices, tp, pp };
        let group = tp.checked_mul(pp).ok_or_else(|| bad.clone())?;
        if devices == 0 || group == 0 || !devices.is_multiple_of(group) {
            return Err(bad);
        }
        let dp = devices / group;
        let axes: Vec<(&str, u64)> = [("pp", pp), ("dp", dp), ("tp", tp)]
            .into_iter()
            .filter(|&(_, n)| n > 1)
            .collect();
        let mesh = DeviceMesh::new(axes).map_err(DeriveError::TargetMesh)?;
        Ok(DeriveTarget {
            tp_axes: (tp > 1).then(|| "tp".to_string()).into_iter().collect(),
            pp_axis: (pp > 1).then(|| "pp".to_string()),
            mesh: Arc::new(mesh),
        })
    }

    /// A target on `mesh` with the axis roles `rules` give
    /// ([`DeriveRules::role_of`]); axes without a role hold replicas.
    ///
    /// # Errors
    ///
    /// [`DeriveError::TargetRoles`] when several axes would be pipeline axes.
    pub fn from_mesh(mesh: Arc<DeviceMesh>, rules: &DeriveRules) -> Result<Self, DeriveError> {
        let mut tp = Vec::new();
        let mut pp = Vec::new();
        for a in mesh.axes() {
            match rules.role_of(&a.name) {
                Some(AxisRole::Tensor) => tp.push(a.name.clone()),
                Some(AxisRole::Pipeline) => pp.push(a.name.clone()),
                Some(AxisRole::Data) | None => {}
            }
        }
        if pp.len() > 1 {
            return Err(DeriveError::TargetRoles {
                mesh: mesh.to_string(),
                axes: pp,
            });
        }
        DeriveTarget::new(mesh, tp, pp.pop())
    }

    /// The mesh.
    pub fn mesh(&self) -> &Arc<DeviceMesh> {
        &self.mesh
    }

    /// Tensor-parallel axes, outermost first.
    pub fn tp_axes(&self) -> &[String] {
        &self.tp_axes
    }

    /// The pipeline axis.
    pub fn pp_axis(&self) -> Option<&str> {
        self.pp_axis.as_deref()
    }

    /// Product of the tensor-parallel axis sizes.
    pub fn tp_degree(&self) -> u64 {
        self.tp_axes
            .iter()
            .filter_map(|a| self.mesh.axis_index(a))
            .map(|i| self.mesh.axis_size(i))
            .product()
    }

    /// Number of pipeline stages.
    pub fn pp_degree(&self) -> u64 {
        self.pp_axis
            .as_deref()
            .and_then(|a| self.mesh.axis_index(a))
            .map_or(1, |i| self.mesh.axis_size(i))
    }
}

impl fmt::Display for DeriveTarget {
    /// `[pp=2, tp=4] (tp over tp, pp over pp)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.mesh)?;
        let tp = if self.tp_axes.is_empty() {
            "none".to_string()
        } else {
            self.tp_axes.join(", ")
        };
        write!(
            f,
            " (tp over {tp}, pp over {})",
            self.pp_axis.as_deref().unwrap_or("none")
        )
    }
}

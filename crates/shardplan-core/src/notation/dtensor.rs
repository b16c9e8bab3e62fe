//! PyTorch DTensor placements: one of `Shard(d)`, `Replicate()`, `Partial()`
//! per mesh dimension.

use std::sync::Arc;

use super::{is_nested_chunk_blocks, nested_chunk_sizes};
use crate::error::LayoutError;
use crate::layout::{DimSplit, LayoutConfig, SplitPolicy, TensorLayout};
use crate::mesh::DeviceMesh;

/// What one mesh dimension does to a tensor.
///
/// # Example
///
/// ```
/// use shardplan_core::notation::dtensor::Placement;
///
/// assert_eq!("Shard(1)".parse::<Placement>().unwrap(), Placement::Shard(1));
/// assert_eq!(Placement::Partial.to_string(), "Partial()");
/// assert!("Shard(x)".parse::<Placement>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Splits tensor dimension `d` (negative counts from the end).
    Shard(i64),
    /// Holds a full copy.
    Replicate,
    /// Holds a partial sum.
    Partial,
}

pub use super::fault::DTensorFault;

impl From<DTensorFault> for LayoutError {
    fn from(fault: DTensorFault) -> Self {
        LayoutError::DTensor(fault)
    }
}

impl std::str::FromStr for Placement {
    type Err = LayoutError;

    fn from_str(text: &str) -> Result<Self, LayoutError> {
        let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let t = t.strip_prefix("torch.distributed.tensor.").unwrap_or(&t);
        match t {
            "Replicate()" | "R" => return Ok(Placement::Replicate),
            "Partial()" | "Partial(sum)" | "Partial('sum')" | "Partial(\"sum\")" | "P" => {
                return Ok(Placement::Partial);
            }
            _ => {}
        }
        let dim = t
            .strip_prefix("Shard(")
            .or_else(|| t.strip_prefix("S("))
            .and_then(|s| s.strip_suffix(')'))
            .and_then(|s| s.strip_prefix("dim=").unwrap_or(s).parse::<i64>().ok())
            .ok_or_else(|| DTensorFault::NotAPlacement {
                text: text.to_string(),
            })?;
        Ok(Placement::Shard(dim))
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Shard(d) => write!(f, "Shard({d})"),
            Placement::Replicate => write!(f, "Replicate()"),
            Placement::Partial => write!(f, "Partial()"),
        }
    }
}

/// The layout of a tensor of `shape` with `placements` on `mesh`.
///
/// Several mesh dimensions sharding one tensor dimension split it in mesh
/// order (the first mesh dimension outermost), as DTensor does. A single
/// shard follows `torch.chunk`; several on a size they do not divide cut
/// it by nested `torch.chunk`, as DTensor does, into explicit block sizes.
///
/// # Errors
///
/// [`LayoutError::DTensor`] when the placement count differs from the mesh
/// rank ([`DTensorFault::PlacementCount`]), or a `Shard` dimension is out of
/// range ([`DTensorFault::ShardOutOfRange`]); otherwise whatever
/// [`TensorLayout::new`] refuses.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use shardplan_core::DeviceMesh;
/// use shardplan_core::notation::dtensor::{Placement, to_layout};
///
/// let mesh = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 2)]).unwrap());
/// let l = to_layout(mesh.clone(), &[8, 4], &[Placement::Replicate, Placement::Shard(1)]).unwrap();
/// assert_eq!(l.to_string(), "[-, tp]");
/// assert!(to_layout(mesh, &[8, 4], &[Placement::Shard(2), Placement::Replicate]).is_err());
/// ```
pub fn to_layout(
    mesh: Arc<DeviceMesh>,
    shape: &[u64],
    placements: &[Placement],
) -> Result<TensorLayout, LayoutError> {
    if placements.len() != mesh.axes().len() {
        return Err(DTensorFault::PlacementCount {
            placements: placements.len(),
            mesh_dims: mesh.axes().len(),
        }
        .into());
    }
    let rank = shape.len() as i64;
    let mut dims = vec![DimSplit::none(); shape.len()];
    let mut partial = Vec::new();
    for (axis, p) in mesh.axes().iter().zip(placements) {
        match *p {
            Placement::Shard(given) => {
                let d = if given < 0 { given + rank } else { given };
                if !(0 <= d && d < rank) {
                    return Err(DTensorFault::ShardOutOfRange {
                        dim: given,
                        axis: axis.name.clone(),
                        tensor_dims: shape.len(),
                    }
                    .into());
                }
                dims[d as usize].axes.push(axis.name.clone());
            }
            Placement::Replicate => {}
            Placement::Partial => partial.push(axis.name.clone()),
        }
    }
    for (d, split) in dims.iter_mut().enumerate() {
        let counts: Vec<u64> = split
            .axes
            .iter()
            .filter_map(|a| mesh.axis_index(a))
            .map(|a| mesh.axis_size(a))
            .collect();
        let n: u64 = counts.iter().product();
        split.policy = if shape[d].is_multiple_of(n) {
            SplitPolicy::Even
        } else if split.axes.len() == 1 {
            SplitPolicy::Chunk
        } else {
            SplitPolicy::Blocks(nested_chunk_sizes(shape[d], &counts))
        };
    }
    TensorLayout::new(mesh, shape, &LayoutConfig::new(dims).with_partial(partial))
}

/// The placements of `layout`, one per mesh dimension.
///
/// # Errors
///
/// [`LayoutError::DTensor`] for a layout given box by box
/// ([`DTensorFault::Explicit`]), a pinned layout ([`DTensorFault::Pinned`]),
/// a dimension split by axes out of mesh order
/// ([`DTensorFault::AxesOutOfOrder`]), or blocks that are not DTensor's
/// (nested) `torch.chunk` blocks ([`DTensorFault::NotChunkBlocks`]).
pub fn from_layout(layout: &TensorLayout) -> Result<Vec<Placement>, LayoutError> {
    super::refuse_explicit(layout, |layout| DTensorFault::Explicit { layout }.into())?;
    if !layout.pin().is_empty() {
        return Err(DTensorFault::Pinned {
            layout: layout.to_string(),
        }
        .into());
    }
    let mut placements = vec![Placement::Replicate; layout.mesh().axes().len()];
    for &a in layout.partial() {
        placements[a] = Placement::Partial;
    }
    for (d, dim) in layout.dims().iter().enumerate() {
        if !dim.axes().windows(2).all(|w| w[0] < w[1]) {
            return Err(DTensorFault::AxesOutOfOrder {
                dim: d,
                layout: layout.to_string(),
            }
            .into());
        }
        let counts: Vec<u64> = dim
            .axes()
            .iter()
            .map(|&a| layout.mesh().axis_size(a))
            .collect();
        if !is_nested_chunk_blocks(dim, layout.shape()[d], &counts) {
            return Err(DTensorFault::NotChunkBlocks {
                dim: d,
                layout: layout.to_string(),
            }
            .into());
        }
        for &a in dim.axes() {
            placements[a] = Placement::Shard(d as i64);
        }
    }
    Ok(placements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals() {
        let mesh = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 2)]).unwrap());
        let cases: Vec<(Vec<Placement>, DTensorFault)> = vec![
            (
                vec![Placement::Replicate],
                DTensorFault::PlacementCount {
                    placements: 1,
                    mesh_dims: 2,
                },
            ),
            (
                vec![Placement::Replicate, Placement::Shard(2)],
                DTensorFault::ShardOutOfRange {
                    dim: 2,
                    axis: "tp".into(),
                    tensor_dims: 2,
                },
            ),
            (
                vec![Placement::Shard(-3), Placement::Replicate],
                DTensorFault::ShardOutOfRange {
                    dim: -3,
                    axis: "dp".into(),
                    tensor_dims: 2,
                },
            ),
        ];
        for (placements, fault) in cases {
            assert_eq!(
                to_layout(mesh.clone(), &[8, 4], &placements),
                Err(LayoutError::DTensor(fault)),
                "{placements:?}"
            );
        }
        assert_eq!(
            "Shard(x)".parse::<Placement>(),
            Err(LayoutError::DTensor(DTensorFault::NotAPlacement {
                text: "Shard(x)".into()
            }))
        );
    }

    /// The fault's text follows the notation's name; code and help are the
    /// fault's.
    #[test]
    fn fault_text_code_and_help() {
        use miette::Diagnostic;
        let mesh = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 2)]).unwrap());
        let e = to_layout(mesh, &[8, 4], &[Placement::Shard(2), Placement::Replicate]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dtensor: Shard(2) on mesh dimension `dp` is out of range for a tensor of 2 dimensions"
        );
        assert_eq!(
            e.code().unwrap().to_string(),
            "shardplan::notation::dtensor::shard_out_of_range"
        );
        assert_eq!(
            e.help().unwrap().to_string(),
            super::super::fault::PLACEMENT_HELP
        );
    }
}

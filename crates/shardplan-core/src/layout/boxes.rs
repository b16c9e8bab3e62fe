//! Layouts given box by box ([`TensorLayout::from_boxes`]): the boxes and
//! their checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{DimLayout, SplitPolicy, TensorLayout};
use crate::error::LayoutError;
use crate::geometry::{Region, element_count};
use crate::mesh::DeviceMesh;

/// The boxes of a layout given rank by rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BoxSet {
    /// Box of each rank; `None` where the rank holds nothing.
    pub(super) by_rank: Vec<Option<Region>>,
    /// The distinct non-empty boxes with their holders, ascending by box.
    pub(super) distinct: Vec<(Region, Vec<u64>)>,
}

impl TensorLayout {
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

//! Storage maps: how each rank's physical parameters hold boxes of logical
//! tensors.
//!
//! Inference engines do not store the trainer's tensors. vLLM's `qkv_proj`
//! on a tensor-parallel rank is the rank's q rows, then its k rows, then its
//! v rows; experts are stacked along a new leading dimension; a padded
//! vocabulary leaves zero rows after the last real one. The logical tensors
//! stay the planning unit (plans, bounds and the verifier work on their
//! boxes); a [`StorageMap`] says where each box a rank holds lives in the
//! rank's parameters, and execution places bytes by it.
//!
//! A [`Segment`] puts one box of one logical tensor at an offset of a
//! [`Param`]; a parameter may have more dimensions than the box (stacking:
//! the extra leading dimensions take extent 1). Elements no segment covers
//! are padding and hold zeros.
//!
//! ```
//! use std::sync::Arc;
//! use shardplan_core::storage::{Param, Segment, StorageMap};
//! use shardplan_core::*;
//!
//! // Two tensor-parallel ranks; q [8, 4] and k [4, 4] split by rows, fused
//! // per rank into one `qk` parameter of 6 rows: the rank's q rows, then
//! // its k rows.
//! let mesh = Arc::new(DeviceMesh::new([("tp", 2)])?);
//! let rows = LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()]);
//! let tensor = |name: &str, rows: u64| TensorInfo { name: name.into(), shape: vec![rows, 4], dtype: DType::F32 };
//! let (q, k) = (tensor("q", 8), tensor("k", 4));
//! let layouts = vec![
//!     TensorLayout::new(mesh.clone(), &q.shape, &rows)?,
//!     TensorLayout::new(mesh.clone(), &k.shape, &rows)?,
//! ];
//! let strategy = Strategy::new("engine", mesh, vec![q, k], layouts)?;
//! let qk = |r: u64| Param::new("qk", DType::F32, vec![6, 4], vec![
//!     Segment::new("q", Region::new(vec![4 * r, 0], vec![4, 4]), vec![0, 0]),
//!     Segment::new("k", Region::new(vec![2 * r, 0], vec![2, 4]), vec![4, 0]),
//! ]);
//! let map = StorageMap::new(&strategy, vec![vec![qk(0)], vec![qk(1)]])?;
//! // Rank 1's k rows 2..4, columns 1..3, land at rows 4..6 of its `qk`.
//! let places = map.route("k", 1, &Region::new(vec![2, 1], vec![2, 2]));
//! assert_eq!(places[0].offset, vec![4, 1]);
//!
//! // A map that forgets k on rank 1 is refused, naming the rank.
//! let e = StorageMap::new(&strategy, vec![vec![qk(0)], vec![]]).unwrap_err();
//! assert!(e.to_string().starts_with("rank 1 holds"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod store;

use std::collections::{BTreeMap, BTreeSet};

pub use error::StorageError;
pub use store::{ParamStore, execute_into_params};

use crate::dtype::DType;
use crate::geometry::{Region, element_count};
use crate::strategy::Strategy;

/// One box of a logical tensor, placed in a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The logical tensor's name.
    pub tensor: String,
    /// The box, in the logical tensor's global coordinates.
    pub logical: Region,
    /// Where the box starts in the parameter, one entry per parameter
    /// dimension; leading entries beyond the box's dimensions address
    /// stacked slots.
    pub at: Vec<u64>,
}

impl Segment {
    /// The box `logical` of `tensor` at `at` in its parameter.
    pub fn new(tensor: impl Into<String>, logical: Region, at: Vec<u64>) -> Self {
        Segment {
            tensor: tensor.into(),
            logical,
            at,
        }
    }

    /// The parameter elements the segment covers, as a box of the
    /// parameter; `None` when `at` has fewer dimensions than the box or an
    /// end overflows.
    fn physical(&self) -> Option<Region> {
        let lead = self.at.len().checked_sub(self.logical.rank())?;
        let mut extent = vec![1; lead];
        extent.extend_from_slice(self.logical.extent());
        Region::try_new(self.at.clone(), extent)
    }
}

/// A physical parameter of one rank: a dense buffer of `shape` and `dtype`
/// holding its segments, zeros elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter's name, as the engine calls it.
    pub name: String,
    /// Element type, the same as every tensor it stores.
    pub dtype: DType,
    /// The rank-local shape of the buffer.
    pub shape: Vec<u64>,
    /// What it holds.
    pub segments: Vec<Segment>,
}

impl Param {
    /// A parameter named `name` of `shape` holding `segments`.
    pub fn new(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<u64>,
        segments: Vec<Segment>,
    ) -> Self {
        Param {
            name: name.into(),
            dtype,
            shape,
            segments,
        }
    }
}

/// Where a part of a logical box lives: `part` (global coordinates of the
/// logical tensor) starts at `offset` of parameter number `param` of the
/// rank (see [`StorageMap::params`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Index of the parameter in the rank's list.
    pub param: usize,
    /// Where `part` starts in the parameter (parameter dimensions).
    pub offset: Vec<u64>,
    /// The part of the routed box this parameter stores.
    pub part: Region,
}

/// Per destination rank, its parameters; checked against a strategy to
/// store exactly what the strategy's layouts assign each rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageMap {
    ranks: Vec<Vec<Param>>,
    /// Per (rank, tensor): the (parameter, segment) indexes storing it.
    index: BTreeMap<(u64, String), Vec<(usize, usize)>>,
    /// Per (rank, tensor): the box the layout gives the rank, where it
    /// holds a non-empty one.
    held: BTreeMap<(u64, String), Region>,
}

impl StorageMap {
    /// A storage map of `strategy`'s ranks: `ranks[r]` lists rank `r`'s
    /// parameters.
    ///
    /// # Errors
    ///
    /// A [`StorageError`] naming the rank and parameter when: the map has
    /// another rank count than the mesh; a rank names a parameter twice; a
    /// parameter is too large; a segment names an unknown tensor, has
    /// another dtype, stores an empty box or one outside its tensor, does
    /// not fit its parameter, or overlaps another segment of the parameter;
    /// a segment stores what its rank does not hold under the layout; or a
    /// rank holds part of a tensor that no segment stores.
    pub fn new(strategy: &Strategy, ranks: Vec<Vec<Param>>) -> Result<Self, StorageError> {
        let mesh_ranks = strategy.mesh().rank_count();
        if ranks.len() as u64 != mesh_ranks {
            return Err(StorageError::RankCount {
                map: ranks.len() as u64,
                mesh: mesh_ranks,
            });
        }
        let mut index: BTreeMap<(u64, String), Vec<(usize, usize)>> = BTreeMap::new();
        for (r, params) in ranks.iter().enumerate() {
            let r = r as u64;
            let mut names = BTreeSet::new();
            for (p, param) in params.iter().enumerate() {
                if !names.insert(param.name.as_str()) {
                    return Err(StorageError::DuplicateParam {
                        rank: r,
                        param: param.name.clone(),
                    });
                }
                check_param(strategy, r, param)?;
                for (s, seg) in param.segments.iter().enumerate() {
                    index
                        .entry((r, seg.tensor.clone()))
                        .or_default()
                        .push((p, s));
                }
            }
        }
        let mut held = BTreeMap::new();
        for (info, layout) in strategy.tensors().iter().zip(strategy.layouts()) {
            for r in 0..mesh_ranks {
                if let Some(h) = layout.region_of(r).filter(|h| !h.is_empty()) {
                    held.insert((r, info.name.clone()), h);
                }
            }
        }
        let map = StorageMap { ranks, index, held };
        map.check_coverage(strategy)?;
        Ok(map)
    }

    /// Rank `rank`'s parameters (empty for a rank out of range).
    pub fn params(&self, rank: u64) -> &[Param] {
        self.ranks.get(rank as usize).map_or(&[], Vec::as_slice)
    }

    /// Number of ranks.
    pub fn rank_count(&self) -> u64 {
        self.ranks.len() as u64
    }

    /// The box of `tensor` that `rank` holds under the strategy the map was
    /// checked against; `None` when it holds none.
    pub fn held(&self, tensor: &str, rank: u64) -> Option<&Region> {
        self.held.get(&(rank, tensor.to_string()))
    }

    /// Rank `rank`'s parameters as bytes, packed from the rank's logical
    /// buffers: `logical(name)` gives the rank's slice of tensor `name`,
    /// row-major over [`StorageMap::held`]. Padding is zero.
    ///
    /// # Errors
    ///
    /// [`StorageError::Exec`] naming the tensor when `logical` has no
    /// buffer for it or one of another size.
    pub fn pack_rank<'b>(
        &self,
        rank: u64,
        logical: impl Fn(&str) -> Option<&'b [u8]>,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        self.params(rank)
            .iter()
            .map(|param| {
                let unit = param.dtype.size_bytes();
                // The map checked every parameter's element count.
                let mut out = vec![0u8; (param.shape.iter().product::<u64>() * unit) as usize];
                for seg in &param.segments {
                    let held = self
                        .held(&seg.tensor, rank)
                        .expect("a segment lies in its rank's box");
                    let mismatch = |fault| crate::ExecError::Mismatch {
                        tensor: seg.tensor.clone(),
                        fault,
                    };
                    let buf = logical(&seg.tensor)
                        .filter(|b| b.len() as u64 == held.volume() * unit)
                        .ok_or_else(|| mismatch(crate::StoreMismatch::NoSourceBuffer(rank)))?;
                    let local = seg.logical.relative_to(held);
                    store::copy_box(
                        buf,
                        held.extent(),
                        local.offset(),
                        &mut out,
                        &param.shape,
                        &seg.at,
                        local.extent(),
                        unit,
                    );
                }
                Ok(out)
            })
            .collect()
    }

    /// Where the box `b` of `tensor` (global coordinates) lives on `rank`:
    /// one placement per segment it meets, so an element a rank stores twice
    /// (a tied weight) is placed twice. Empty when the rank stores none of
    /// it.
    pub fn route(&self, tensor: &str, rank: u64, b: &Region) -> Vec<Placement> {
        let Some(segs) = self.index.get(&(rank, tensor.to_string())) else {
            return Vec::new();
        };
        let params = self.params(rank);
        let mut out = Vec::new();
        for &(p, s) in segs {
            let seg = &params[p].segments[s];
            let Some(part) = b.intersect(&seg.logical) else {
                continue;
            };
            let lead = seg.at.len() - part.rank();
            let mut offset = seg.at[..lead].to_vec();
            for d in 0..part.rank() {
                offset.push(seg.at[lead + d] + (part.offset()[d] - seg.logical.offset()[d]));
            }
            out.push(Placement {
                param: p,
                offset,
                part,
            });
        }
        out
    }

    /// Every rank stores exactly what its layout gives it: no segment
    /// outside the rank's box, and the segments cover the box.
    fn check_coverage(&self, strategy: &Strategy) -> Result<(), StorageError> {
        for (info, layout) in strategy.tensors().iter().zip(strategy.layouts()) {
            for r in 0..self.rank_count() {
                let held = layout.region_of(r);
                let segs = self.index.get(&(r, info.name.clone()));
                let mut uncovered: Vec<Region> = held.iter().cloned().collect();
                for &(p, s) in segs.into_iter().flatten() {
                    let seg = &self.ranks[r as usize][p].segments[s];
                    if !held
                        .as_ref()
                        .is_some_and(|h| h.contains_region(&seg.logical))
                    {
                        return Err(StorageError::NotHeld {
                            rank: r,
                            param: self.ranks[r as usize][p].name.clone(),
                            segment: Box::new(seg.clone()),
                            held: held.as_ref().map_or("nothing".into(), |h| h.to_string()),
                        });
                    }
                    uncovered = uncovered
                        .iter()
                        .flat_map(|u| u.difference(&seg.logical))
                        .collect();
                }
                if let Some(missing) = uncovered.into_iter().find(|u| !u.is_empty()) {
                    return Err(StorageError::Unstored {
                        rank: r,
                        tensor: info.name.clone(),
                        missing,
                    });
                }
            }
        }
        Ok(())
    }
}

/// One parameter's own checks: its size, and each segment's tensor, dtype,
/// box and place, and no two segments on the same elements.
fn check_param(strategy: &Strategy, rank: u64, param: &Param) -> Result<(), StorageError> {
    if element_count(&param.shape).is_err() {
        return Err(StorageError::ParamShape {
            rank,
            param: param.name.clone(),
            shape: param.shape.clone(),
        });
    }
    let mut placed: Vec<(Region, &str)> = Vec::new();
    for seg in &param.segments {
        let Some(info) = strategy.tensors().iter().find(|t| t.name == seg.tensor) else {
            return Err(StorageError::UnknownTensor {
                rank,
                param: param.name.clone(),
                tensor: seg.tensor.clone(),
            });
        };
        if info.dtype != param.dtype {
            return Err(StorageError::DType {
                rank,
                param: param.name.clone(),
                tensor: seg.tensor.clone(),
                param_dtype: param.dtype,
                tensor_dtype: info.dtype,
            });
        }
        if seg.logical.is_empty()
            || seg.logical.rank() != info.shape.len()
            || !Region::whole(&info.shape).contains_region(&seg.logical)
        {
            return Err(StorageError::OutsideTensor {
                rank,
                param: param.name.clone(),
                segment: Box::new(seg.clone()),
                shape: info.shape.clone(),
            });
        }
        let physical = seg.physical().filter(|b| fits_in(b, &param.shape));
        let Some(physical) = physical else {
            return Err(StorageError::OutsideParam {
                rank,
                param: param.name.clone(),
                segment: Box::new(seg.clone()),
                shape: param.shape.clone(),
            });
        };
        if let Some((_, first)) = placed
            .iter()
            .find(|(p, _)| p.intersect(&physical).is_some())
        {
            return Err(StorageError::Overlap {
                rank,
                param: param.name.clone(),
                first: first.to_string(),
                second: seg.tensor.clone(),
            });
        }
        placed.push((physical, &seg.tensor));
    }
    Ok(())
}

/// Whether `b` lies inside an array of `shape`, with checked sums.
fn fits_in(b: &Region, shape: &[u64]) -> bool {
    b.rank() == shape.len()
        && (0..b.rank()).all(|d| {
            b.offset()[d]
                .checked_add(b.extent()[d])
                .is_some_and(|end| end <= shape[d])
        })
}

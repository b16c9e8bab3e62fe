//! Generators for fuzzing other runtimes' resharding against shardplan
//! (feature `arbitrary`): meshes, tensor shapes (uneven ones included),
//! layouts in shardplan's own terms and in the DTensor and JAX notations,
//! and strategy pairs over the same tensors on independent meshes. The
//! Python package's `shardplan.testing` offers the same for Hypothesis.
//!
//! Every value generated is valid: a layout its constructor would refuse
//! (an even split that does not divide) falls back to a replicated one.
//!
//! ```
//! use arbitrary::{Arbitrary, Unstructured};
//! use shardplan::arbitrary::StrategyPair;
//!
//! let bytes: Vec<u8> = (0..512u32).map(|i| (i * 37 % 251) as u8).collect();
//! let pair = StrategyPair::arbitrary(&mut Unstructured::new(&bytes)).unwrap();
//! let config = shardplan::PlanConfig::new(shardplan::ReplicaChoice::Balance);
//! let plan = shardplan::plan_transfer(&pair.src, &pair.dst, &config).unwrap();
//! shardplan::verify_plan(plan, &pair.src, &pair.dst).unwrap();
//! ```

use std::sync::Arc;

use arbitrary::{Arbitrary, Result, Unstructured};

use crate::notation::dtensor::{self, Placement};
use crate::notation::jax::PartitionSpec;
use crate::{
    DType, DeviceMesh, DimSplit, LayoutConfig, SplitPolicy, Strategy, TensorInfo, TensorLayout,
};

/// Axis names of generated meshes, outermost first.
const AXES: [&str; 4] = ["dp", "tp", "pp", "sp"];

/// A mesh of 0 to 3 axes of sizes 1 to 4, with device ids rotated so that
/// local copies are not always rank to same rank.
#[derive(Debug, Clone)]
pub struct ArbitraryMesh(pub Arc<DeviceMesh>);

impl<'a> Arbitrary<'a> for ArbitraryMesh {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let n = u.int_in_range(0..=3usize)?;
        let mut axes = Vec::with_capacity(n);
        for name in AXES.iter().take(n) {
            axes.push((*name, u.int_in_range(1..=4u64)?));
        }
        let mesh = DeviceMesh::new(axes).expect("small axes of distinct names");
        let ranks = mesh.rank_count();
        let shift = u.int_in_range(0..=ranks - 1)?;
        let ids = (0..ranks).map(|r| (r + shift) % ranks).collect();
        Ok(ArbitraryMesh(Arc::new(
            mesh.with_device_ids(ids)
                .expect("a permutation of the ranks"),
        )))
    }
}

/// A tensor shape of 0 to 3 dimensions, sides 1 to 12 (often not divisible
/// by a mesh axis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArbitraryShape(pub Vec<u64>);

impl<'a> Arbitrary<'a> for ArbitraryShape {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let n = u.int_in_range(0..=3usize)?;
        (0..n)
            .map(|_| u.int_in_range(1..=12u64))
            .collect::<Result<Vec<_>>>()
            .map(ArbitraryShape)
    }
}

/// A layout of a tensor of `shape` on `mesh`, written in one of three
/// ways: shardplan's own (splits with any policy, pins to a sub-mesh),
/// DTensor placements, or a JAX `PartitionSpec`.
///
/// # Errors
///
/// Only when `u` runs out of bytes in a way `arbitrary` reports.
pub fn layout(
    u: &mut Unstructured<'_>,
    mesh: &Arc<DeviceMesh>,
    shape: &[u64],
) -> Result<TensorLayout> {
    // For each mesh axis: the dimension it splits, if any.
    let mut split: Vec<Option<usize>> = Vec::with_capacity(mesh.axes().len());
    for _ in mesh.axes() {
        split.push(match shape.len() {
            0 => None,
            n if u.ratio(2, 3)? => Some(u.int_in_range(0..=n - 1)?),
            _ => None,
        });
    }
    let made = match u.int_in_range(0..=2u8)? {
        0 => {
            let mut cfg = LayoutConfig::new(vec![DimSplit::none(); shape.len()]);
            for (axis, d) in mesh.axes().iter().zip(&split) {
                match d {
                    Some(d) => cfg.dims[*d].axes.push(axis.name.clone()),
                    None if u.ratio(1, 4)? => {
                        cfg.pin
                            .push((axis.name.clone(), u.int_in_range(0..=axis.size - 1)?));
                    }
                    None => {}
                }
            }
            for dim in &mut cfg.dims {
                dim.policy = u
                    .choose(&[SplitPolicy::Even, SplitPolicy::Chunk, SplitPolicy::Balanced])?
                    .clone();
            }
            TensorLayout::new(mesh.clone(), shape, &cfg)
        }
        1 => {
            let placements: Vec<Placement> = split
                .iter()
                .map(|d| d.map_or(Placement::Replicate, |d| Placement::Shard(d as i64)))
                .collect();
            dtensor::to_layout(mesh.clone(), shape, &placements)
        }
        _ => {
            let dims = (0..shape.len())
                .map(|k| {
                    mesh.axes()
                        .iter()
                        .zip(&split)
                        .filter(|(_, d)| **d == Some(k))
                        .map(|(a, _)| a.name.clone())
                        .collect()
                })
                .collect();
            PartitionSpec { dims }.to_layout(mesh.clone(), shape)
        }
    };
    Ok(made.unwrap_or_else(|_| {
        TensorLayout::replicated(mesh.clone(), shape).expect("a shape within the budget")
    }))
}

/// A source and a destination strategy over the same 1 to 3 tensors (any
/// dtype but `bool`), on independent meshes: N to M ranks.
#[derive(Debug, Clone)]
pub struct StrategyPair {
    /// The source strategy, named `src`.
    pub src: Strategy,
    /// The destination strategy, named `dst`.
    pub dst: Strategy,
}

fn strategy(
    u: &mut Unstructured<'_>,
    name: &str,
    mesh: Arc<DeviceMesh>,
    tensors: &[TensorInfo],
) -> Result<Strategy> {
    let layouts = tensors
        .iter()
        .map(|t| layout(u, &mesh, &t.shape))
        .collect::<Result<Vec<_>>>()?;
    Ok(Strategy::new(name, mesh, tensors.to_vec(), layouts)
        .expect("one layout per tensor, of its shape"))
}

impl<'a> Arbitrary<'a> for StrategyPair {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let n = u.int_in_range(1..=3usize)?;
        let mut tensors = Vec::with_capacity(n);
        for i in 0..n {
            tensors.push(TensorInfo {
                name: format!("t{i}"),
                shape: ArbitraryShape::arbitrary(u)?.0,
                dtype: *u.choose(&DType::ALL[..12])?,
            });
        }
        let src_mesh = ArbitraryMesh::arbitrary(u)?.0;
        let dst_mesh = ArbitraryMesh::arbitrary(u)?.0;
        Ok(StrategyPair {
            src: strategy(u, "src", src_mesh, &tensors)?,
            dst: strategy(u, "dst", dst_mesh, &tensors)?,
        })
    }
}

#![warn(missing_docs)]
// Invariants read as `if !(idx < len)`, the way they are stated.
#![allow(clippy::nonminimal_bool)]
//! shardplan: plan, verify and explain how model weights move between
//! parallel layouts.
//!
//! ```
//! use std::sync::Arc;
//! use shardplan::*;
//!
//! // Training: 2 data-parallel x 4 tensor-parallel ranks; rows split over
//! // tp, then optimizer-sharded over dp. Inference: 2 tensor-parallel ranks.
//! let train = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 4)])?);
//! let infer = Arc::new(DeviceMesh::new([("tp", 2)])?);
//! let w = TensorInfo { name: "w".into(), shape: vec![4096, 1024], dtype: DType::BF16 };
//! let rows = |mesh: &Arc<DeviceMesh>, axes: &[&str]| {
//!     let cfg = LayoutConfig {
//!         dims: vec![DimSplit::over(axes.iter().copied()), DimSplit::none()],
//!         ..Default::default()
//!     };
//!     TensorLayout::new(mesh.clone(), &w.shape, &cfg)
//! };
//! let src = Strategy::new("train", train.clone(), vec![w.clone()], vec![rows(&train, &["tp", "dp"])?])?;
//! let dst = Strategy::new("infer", infer.clone(), vec![w.clone()], vec![rows(&infer, &["tp"])?])?;
//!
//! let config = PlanConfig { replica_choice: ReplicaChoice::Balance, tensors: None };
//! let plan = plan_transfer(&src, &dst, &config)?;
//! let plan = verify_plan(plan, &src, &dst)?;
//! let summary = plan.summary();
//! assert_eq!(summary.total_bytes, summary.lower_bound_bytes);
//! for piece in &plan.tensors[0].pieces {
//!     println!("rank {} <- rank {}: {}", piece.dst_rank, piece.src_rank, piece.dst_box);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Overview
//!
//! - The core model: [`DeviceMesh`] (named axes, row-major ranks, optional
//!   device ids), [`TensorLayout`] (per dimension the axes that split it,
//!   split policies for uneven sizes, partial-sum axes, pins to a sub-mesh
//!   such as a pipeline stage), [`Region`] boxes, and [`Strategy`] (one
//!   layout per tensor).
//! - [`notation`]: conversions from and to MindSpore layouts (with the
//!   optimizer-shard group rule), DTensor placements and JAX PartitionSpecs.
//! - [`plan_transfer`] makes a [`SlicePlan`]; [`verify_plan`] checks one
//!   independently; [`volume_lower_bound`] is what any plan must move.
//! - This crate re-exports all of `shardplan-core` (the pure logic, which
//!   embedders can depend on alone) and adds the edge:
//!   [`spec`] reads YAML strategy specs with located diagnostics;
//!   [`formats`] reads and writes files; [`report`] and [`show`] make text.
//!
//! - [`execute_plan`] carries a plan out on real buffers ([`ShardStore`]),
//!   reducing partial sums; [`model`] runs a small transformer under any
//!   layout to check numerics; [`derive`](mod@derive) derives inference layouts;
//!   [`reshard`] moves real checkpoints file by file.
//!
//! # Not supported
//!
//! Destination layouts that hold partial sums (a destination holds reduced
//! values); pipeline stages in operator-based derivation.

pub use shardplan_core::*;

pub mod formats;
#[doc(hidden)]
pub mod fuzzing;
pub mod report;
pub mod reshard;
pub mod show;
pub mod spec;

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Invariants read as `if !(idx < len)`, the way they are stated.
#![allow(clippy::nonminimal_bool)]
//! shardplan-core: the pure logic of shardplan. Device meshes, tensor
//! layouts and strategies; transfer plans, their lower bounds and an
//! independent verifier; the executor; derivation of inference layouts; a
//! tiny transformer to check numerics. No IO, no serde, no file formats:
//! those are in the `shardplan` crate, which re-exports everything here.
//!
//! ```
//! use std::sync::Arc;
//! use shardplan_core::*;
//!
//! // Training: 2 data-parallel x 4 tensor-parallel ranks; rows split over
//! // tp, then optimizer-sharded over dp. Inference: 2 tensor-parallel ranks.
//! let train = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 4)])?);
//! let infer = Arc::new(DeviceMesh::new([("tp", 2)])?);
//! let w = TensorInfo { name: "w".into(), shape: vec![4096, 1024], dtype: DType::BF16 };
//! let rows = |mesh: &Arc<DeviceMesh>, axes: &[&str]| {
//!     let cfg = LayoutConfig::new(vec![DimSplit::over(axes.iter().copied()), DimSplit::none()]);
//!     TensorLayout::new(mesh.clone(), &w.shape, &cfg)
//! };
//! let src = Strategy::new("train", train.clone(), vec![w.clone()], vec![rows(&train, &["tp", "dp"])?])?;
//! let dst = Strategy::new("infer", infer.clone(), vec![w.clone()], vec![rows(&infer, &["tp"])?])?;
//!
//! let config = PlanConfig::new(ReplicaChoice::Balance);
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
//! - [`execute_plan`] carries a plan out on real buffers ([`ShardStore`]),
//!   reducing partial sums; [`model`] runs a small transformer under any
//!   layout to check numerics; [`derive`](mod@derive) derives inference
//!   layouts; [`pattern`] matches tensor names.
//!
//! # Public API
//!
//! | area | items |
//! |---|---|
//! | meshes and boxes | [`DeviceMesh`], [`MeshAxis`], [`MAX_RANKS`]; [`Region`], [`element_count`], [`MAX_ELEMENTS`] |
//! | layouts | [`TensorLayout`], [`LayoutConfig`], [`DimSplit`], [`DimLayout`], [`SplitPolicy`], [`LayoutError`] |
//! | strategies | [`Strategy`], [`TensorInfo`], [`DType`], [`StrategyError`], [`UnknownDType`] |
//! | notations | [`notation::mindspore::MindSporeLayout`], [`notation::dtensor`] (`Placement`, `to_layout`, `from_layout`), [`notation::jax::PartitionSpec`] |
//! | planning | [`plan_transfer`], [`PlanConfig`], [`ReplicaChoice`], [`PlanError`], [`MAX_PIECES`]; the plan: [`SlicePlan`], [`TensorPlan`], [`Piece`], [`PlanSummary`], [`RankTraffic`]; [`volume_lower_bound`] |
//! | verification | [`verify_plan`] → [`VerifiedPlan`]; [`check_plan`] → [`Verified`]; [`PlanDefect`] |
//! | execution | [`execute_plan`], [`execute_plan_with`], [`ExecConfig`], [`ExecStats`], [`ExecError`], [`StoreMismatch`], [`ShardStore`], [`synthetic_element`], [`partial_term_value`] |
//! | derivation | [`derive::derive_strategy`], [`derive::DeriveTarget`], [`derive::DeriveRules`], [`derive::DeriveError`] ([`derive::AxisRoleFault`], [`derive::RangeFault`]), [`derive::ops`] (operator graphs) |
//! | numerics | [`model::check_model`], [`model::forward_single`], [`model::forward_sharded`], [`model::ModelConfig`] |
//! | engine parameters | [`storage::StorageMap`] (per rank, [`storage::Param`]s holding [`storage::Segment`]s of logical tensors), [`storage::StorageMap::route`] → [`storage::Placement`], [`storage::ParamStore`], [`storage::execute_into_params`], [`storage::StorageError`] |
//! | names | [`pattern::Glob`], [`pattern::LayerPattern`], [`pattern::PatternError`] |
//!
//! # Not supported
//!
//! Destination layouts that hold partial sums (a destination holds reduced
//! values); pipeline stages in operator-based derivation.

mod bounds;
mod dtype;
mod error;
mod execute;
mod geometry;
mod layout;
mod mesh;
mod plan;
mod planner;
mod strategy;
mod verify;

pub use bounds::volume_lower_bound;
pub use dtype::{DType, UnknownDType};
pub use error::LayoutError;
pub use execute::{
    ExecConfig, ExecError, ExecStats, ShardStore, StoreMismatch, execute_plan, execute_plan_with,
    partial_term_value, synthetic_element,
};
pub use geometry::{BoxRuns, MAX_ELEMENTS, Region, element_count};
pub use layout::{DimLayout, DimSplit, LayoutConfig, SplitPolicy, TensorLayout};
pub use mesh::{DeviceMesh, MAX_RANKS, MeshAxis};
pub use plan::{Piece, PlanSummary, RankTraffic, ReplicaChoice, SlicePlan, TensorPlan};
pub use planner::{MAX_PIECES, PlanConfig, PlanError, plan_transfer};
pub use strategy::{Strategy, StrategyError, TensorInfo};
pub use verify::{
    PieceFault, PlanDefect, TensorFault, Verified, VerifiedPlan, check_plan, verify_plan,
};
pub mod derive;
pub mod model;
pub mod notation;
pub mod pattern;
pub mod storage;

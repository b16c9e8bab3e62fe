#![warn(missing_docs)]
// Invariants read as `if !(idx < len)`, the way they are stated.
#![allow(clippy::nonminimal_bool)]
//! shardplan: plan and check how model weights move between parallel layouts.

mod bounds;
mod dtype;
mod error;
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
pub use geometry::{MAX_ELEMENTS, Region, element_count};
pub use layout::{DimLayout, DimSplit, LayoutConfig, SplitPolicy, TensorLayout};
pub use mesh::{DeviceMesh, MAX_RANKS, MeshAxis};
pub use plan::{Piece, PlanSummary, RankTraffic, ReplicaChoice, SlicePlan, TensorPlan};
pub use planner::{MAX_PIECES, PlanConfig, PlanError, plan_transfer};
pub use strategy::{Strategy, StrategyError, TensorInfo};
pub use verify::{PlanDefect, Verified, verify_plan};
pub mod formats;
pub mod notation;
pub mod report;
pub mod show;
pub mod spec;

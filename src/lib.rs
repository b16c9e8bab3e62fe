#![warn(missing_docs)]
// Invariants read as `if !(idx < len)`, the way they are stated.
#![allow(clippy::nonminimal_bool)]
//! shardplan: plan and check how model weights move between parallel layouts.

mod dtype;
mod error;
mod geometry;
mod layout;
mod mesh;
mod strategy;

pub use dtype::{DType, UnknownDType};
pub use error::LayoutError;
pub use geometry::{MAX_ELEMENTS, Region, element_count};
pub use layout::{DimLayout, DimSplit, LayoutConfig, SplitPolicy, TensorLayout};
pub use mesh::{DeviceMesh, MAX_RANKS, MeshAxis};
pub use strategy::{Strategy, StrategyError, TensorInfo};
pub mod notation;
pub mod show;
pub mod spec;

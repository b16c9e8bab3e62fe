#![warn(missing_docs)]
// Invariants read as `if !(idx < len)`, the way they are stated.
#![allow(clippy::nonminimal_bool)]
//! shardplan: plan and check how model weights move between parallel layouts.

mod error;
mod geometry;
mod layout;
mod mesh;

pub use error::LayoutError;
pub use geometry::{MAX_ELEMENTS, Region, element_count};
pub use layout::{DimLayout, DimSplit, LayoutConfig, SplitPolicy, TensorLayout};
pub use mesh::{DeviceMesh, MAX_RANKS, MeshAxis};
pub mod notation;

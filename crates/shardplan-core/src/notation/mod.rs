//! Conversions between [`TensorLayout`](crate::TensorLayout) and the layout
//! notations of other frameworks. Each conversion refuses, with
//! [`LayoutError::Notation`](crate::LayoutError::Notation), a layout the
//! other notation cannot express.

pub mod dtensor;
pub mod jax;
pub mod mindspore;

use crate::layout::DimLayout;

/// True when the dimension's blocks are the equal blocks `even` would give,
/// whatever policy produced them.
pub(crate) fn is_even_blocks(dim: &DimLayout, size: u64) -> bool {
    let n = dim.block_count();
    size.is_multiple_of(n) && (0..n).all(|b| dim.block(b) == (b * (size / n), (b + 1) * (size / n)))
}

/// True when the dimension's blocks are what `torch.chunk` gives.
pub(crate) fn is_chunk_blocks(dim: &DimLayout, size: u64) -> bool {
    let n = dim.block_count();
    let c = size.div_ceil(n);
    (0..n).all(|b| dim.block(b) == ((b * c).min(size), ((b + 1) * c).min(size)))
}

//! Conversions between [`TensorLayout`] and the layout
//! notations of other frameworks. Each conversion refuses, with a fault of
//! its notation ([`MindSporeFault`](mindspore::MindSporeFault),
//! [`DTensorFault`](dtensor::DTensorFault), [`JaxFault`](jax::JaxFault),
//! wrapped in [`LayoutError`]), a layout the other notation cannot express
//! and notation text that does not parse.

pub mod dtensor;
pub(crate) mod fault;
pub mod jax;
pub mod mindspore;

use crate::LayoutError;
use crate::layout::{DimLayout, TensorLayout};

/// Refuses a layout given box by box: no notation of mesh axes writes it.
/// `fault` makes the notation's error from the layout's text.
pub(crate) fn refuse_explicit(
    layout: &TensorLayout,
    fault: impl FnOnce(String) -> LayoutError,
) -> Result<(), LayoutError> {
    if layout.is_explicit() {
        return Err(fault(layout.to_string()));
    }
    Ok(())
}

/// True when the dimension's blocks are the equal blocks `even` would give,
/// whatever policy produced them.
pub(crate) fn is_even_blocks(dim: &DimLayout, size: u64) -> bool {
    let n = dim.block_count();
    size.is_multiple_of(n) && (0..n).all(|b| dim.block(b) == (b * (size / n), (b + 1) * (size / n)))
}

/// Block sizes of `size` cut by `torch.chunk` over `counts[0]`, each
/// block cut again over `counts[1]`, and so on: how DTensor splits one
/// dimension over several mesh dimensions, in mesh order.
pub(crate) fn nested_chunk_sizes(size: u64, counts: &[u64]) -> Vec<u64> {
    let mut sizes = vec![size];
    for &n in counts {
        sizes = sizes
            .iter()
            .flat_map(|&s| {
                let c = s.div_ceil(n.max(1));
                (0..n).map(move |b| ((b + 1) * c).min(s) - (b * c).min(s))
            })
            .collect();
    }
    sizes
}

/// True when the dimension's blocks are DTensor's nested `torch.chunk`
/// blocks of `size` over axes of `counts` positions.
pub(crate) fn is_nested_chunk_blocks(dim: &DimLayout, size: u64, counts: &[u64]) -> bool {
    let sizes = nested_chunk_sizes(size, counts);
    sizes.len() as u64 == dim.block_count()
        && (0..dim.block_count()).all(|b| {
            let (s, e) = dim.block(b);
            e - s == sizes[b as usize]
        })
}

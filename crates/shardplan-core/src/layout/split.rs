//! How one dimension is cut: split policies ([`SplitPolicy`]) and checked
//! dimension splits ([`DimLayout`]).

use crate::error::LayoutError;

/// How a dimension whose size the block count does not divide is cut.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum SplitPolicy {
    /// Equal blocks; a size the block count does not divide is an error, as
    /// in MindSpore.
    #[default]
    Even,
    /// `torch.chunk`: blocks of `ceil(size / n)`, the trailing ones shorter or
    /// empty.
    Chunk,
    /// The remainder spread one element each over the first blocks, as
    /// OneFlow does.
    Balanced,
    /// Explicit block sizes, one per block, summing to the dimension size
    /// (MindSpore `param_split_shape`, ragged shards).
    Blocks(Vec<u64>),
}

impl SplitPolicy {
    /// Block boundaries `b[0] = 0 <= b[1] <= ... <= b[n] = size`.
    pub(super) fn bounds(&self, size: u64, n: u64, dim: usize) -> Result<Vec<u64>, LayoutError> {
        let mut bounds = Vec::with_capacity(n as usize + 1);
        bounds.push(0);
        match self {
            SplitPolicy::Even => {
                if !size.is_multiple_of(n) {
                    return Err(LayoutError::UnevenSplit {
                        dim,
                        size,
                        blocks: n,
                    });
                }
                let b = size / n;
                bounds.extend((1..=n).map(|i| i * b));
            }
            SplitPolicy::Chunk => {
                let b = size.div_ceil(n);
                bounds.extend((1..=n).map(|i| i.saturating_mul(b).min(size)));
            }
            SplitPolicy::Balanced => {
                let (q, r) = (size / n, size % n);
                bounds.extend((1..=n).map(|i| i * q + i.min(r)));
            }
            SplitPolicy::Blocks(sizes) => {
                if sizes.len() as u64 != n {
                    return Err(LayoutError::BlockCount {
                        dim,
                        expected: n,
                        found: sizes.len(),
                    });
                }
                let mut end = 0u64;
                for s in sizes {
                    end = end.saturating_add(*s);
                    bounds.push(end);
                }
                if end != size {
                    return Err(LayoutError::BlockSum {
                        dim,
                        size,
                        sum: sizes.iter().fold(0u64, |a, b| a.saturating_add(*b)),
                    });
                }
            }
        }
        Ok(bounds)
    }
}

impl std::fmt::Display for SplitPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitPolicy::Even => write!(f, "even"),
            SplitPolicy::Chunk => write!(f, "chunk"),
            SplitPolicy::Balanced => write!(f, "balanced"),
            SplitPolicy::Blocks(b) => write!(f, "blocks {b:?}"),
        }
    }
}

/// A checked dimension split: axis indices and block boundaries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DimLayout {
    pub(super) axes: Vec<usize>,
    pub(super) policy: SplitPolicy,
    pub(super) bounds: Vec<u64>,
}

impl DimLayout {
    /// Indices (into the mesh) of the axes splitting the dimension, outermost first.
    pub fn axes(&self) -> &[usize] {
        &self.axes
    }

    /// The uneven-size policy.
    pub fn policy(&self) -> &SplitPolicy {
        &self.policy
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u64 {
        self.bounds.len() as u64 - 1
    }

    /// Start and end of block `b`.
    pub fn block(&self, b: u64) -> (u64, u64) {
        (self.bounds[b as usize], self.bounds[b as usize + 1])
    }

    /// Blocks that overlap the half-open range `lo..hi` (empty blocks inside
    /// the range included; callers skip them).
    pub fn blocks_overlapping(&self, lo: u64, hi: u64) -> std::ops::Range<u64> {
        if hi <= lo {
            return 0..0;
        }
        // First block whose end is past lo; last block whose start is before hi.
        let first = self.bounds[1..].partition_point(|&e| e <= lo) as u64;
        let last = self.bounds[..self.bounds.len() - 1].partition_point(|&s| s < hi) as u64;
        first..last
    }

    /// The block holding index `x` (the non-empty one when blocks are empty).
    pub(super) fn block_of(&self, x: u64) -> u64 {
        (self.bounds.partition_point(|&s| s <= x) - 1) as u64
    }
}

//! Boxes in index space: offset and extent per dimension.

use crate::error::LayoutError;

/// Elements a single tensor may have before it is refused. Far above any real
/// weight, far below where `u64` byte counts could overflow.
pub const MAX_ELEMENTS: u64 = 1 << 56;

/// Number of elements of `shape`, with overflow and [`MAX_ELEMENTS`] checked.
///
/// # Errors
///
/// [`LayoutError::ShapeOverflow`] when the product overflows or exceeds the
/// budget.
///
/// # Example
///
/// ```
/// assert_eq!(shardplan_core::element_count(&[4, 8]).unwrap(), 32);
/// assert!(shardplan_core::element_count(&[u64::MAX, 2]).is_err());
/// ```
pub fn element_count(shape: &[u64]) -> Result<u64, LayoutError> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| LayoutError::ShapeOverflow {
            shape: shape.to_vec(),
            max: MAX_ELEMENTS,
        })
}

/// An axis-aligned box of a tensor's index space: for each dimension the
/// half-open range `offset[d] .. offset[d] + extent[d]`.
///
/// A region may be empty (some extent zero); empty regions intersect nothing.
///
/// # Example
///
/// ```
/// use shardplan_core::Region;
///
/// let a = Region::new(vec![0, 0], vec![4, 4]);
/// let b = Region::new(vec![2, 2], vec![4, 4]);
/// let i = a.intersect(&b).unwrap();
/// assert_eq!((i.offset(), i.extent()), (&[2u64, 2][..], &[2u64, 2][..]));
/// // a minus b: the pieces of a that b does not cover, disjoint.
/// let rest = a.difference(&b);
/// assert_eq!(rest.iter().map(|r| r.volume()).sum::<u64>(), 16 - 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region {
    offset: Vec<u64>,
    extent: Vec<u64>,
}

impl Region {
    /// A region from offsets and extents.
    ///
    /// # Panics
    ///
    /// When the two have different lengths or an end overflows `u64`; both
    /// are programming errors (layouts only build regions inside shapes
    /// whose element count was checked).
    pub fn new(offset: Vec<u64>, extent: Vec<u64>) -> Self {
        assert_eq!(offset.len(), extent.len(), "region rank mismatch");
        assert!(
            offset
                .iter()
                .zip(&extent)
                .all(|(o, e)| o.checked_add(*e).is_some()),
            "region end overflows"
        );
        Region { offset, extent }
    }

    /// A region from offsets and extents read from a file: `None` when the
    /// two have different lengths or an end overflows `u64`.
    ///
    /// # Example
    ///
    /// ```
    /// use shardplan_core::Region;
    ///
    /// assert!(Region::try_new(vec![2, 0], vec![3, 4]).is_some());
    /// assert!(Region::try_new(vec![u64::MAX], vec![1]).is_none());
    /// ```
    pub fn try_new(offset: Vec<u64>, extent: Vec<u64>) -> Option<Self> {
        let fits = offset.len() == extent.len()
            && offset
                .iter()
                .zip(&extent)
                .all(|(o, e)| o.checked_add(*e).is_some());
        fits.then_some(Region { offset, extent })
    }

    /// The region covering all of `shape`.
    pub fn whole(shape: &[u64]) -> Self {
        Region {
            offset: vec![0; shape.len()],
            extent: shape.to_vec(),
        }
    }

    /// Start index per dimension.
    pub fn offset(&self) -> &[u64] {
        &self.offset
    }

    /// Length per dimension.
    pub fn extent(&self) -> &[u64] {
        &self.extent
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.offset.len()
    }

    /// Exclusive end of dimension `d`.
    pub fn end(&self, d: usize) -> u64 {
        self.offset[d] + self.extent[d]
    }

    /// Number of elements (saturating; regions inside a checked shape never
    /// saturate).
    pub fn volume(&self) -> u64 {
        self.extent
            .iter()
            .fold(1u64, |acc, &e| acc.saturating_mul(e))
    }

    /// True when the region holds no element.
    pub fn is_empty(&self) -> bool {
        self.extent.contains(&0)
    }

    /// True when `index` lies inside.
    pub fn contains(&self, index: &[u64]) -> bool {
        index.len() == self.rank()
            && (0..self.rank()).all(|d| self.offset[d] <= index[d] && index[d] < self.end(d))
    }

    /// True when every element of `other` lies inside `self`.
    pub fn contains_region(&self, other: &Region) -> bool {
        other.is_empty()
            || (other.rank() == self.rank()
                && (0..self.rank())
                    .all(|d| self.offset[d] <= other.offset[d] && other.end(d) <= self.end(d)))
    }

    /// The common part, or `None` when it is empty.
    pub fn intersect(&self, other: &Region) -> Option<Region> {
        if other.rank() != self.rank() {
            return None;
        }
        let mut offset = Vec::with_capacity(self.rank());
        let mut extent = Vec::with_capacity(self.rank());
        for d in 0..self.rank() {
            let lo = self.offset[d].max(other.offset[d]);
            let hi = self.end(d).min(other.end(d));
            if hi <= lo {
                return None;
            }
            offset.push(lo);
            extent.push(hi - lo);
        }
        Some(Region { offset, extent })
    }

    /// The parts of `self` outside `other`, as at most `2 * rank` disjoint
    /// non-empty regions.
    pub fn difference(&self, other: &Region) -> Vec<Region> {
        let Some(cut) = self.intersect(other) else {
            return if self.is_empty() {
                Vec::new()
            } else {
                vec![self.clone()]
            };
        };
        // Peel slabs dimension by dimension: below and above the cut in d,
        // with the dims before d already narrowed to the cut.
        let mut out = Vec::new();
        let mut rest = self.clone();
        for d in 0..self.rank() {
            if cut.offset[d] > rest.offset[d] {
                let mut slab = rest.clone();
                slab.extent[d] = cut.offset[d] - rest.offset[d];
                out.push(slab);
            }
            if cut.end(d) < rest.end(d) {
                let mut slab = rest.clone();
                slab.offset[d] = cut.end(d);
                slab.extent[d] = rest.end(d) - cut.end(d);
                out.push(slab);
            }
            rest.offset[d] = cut.offset[d];
            rest.extent[d] = cut.extent[d];
        }
        out
    }

    /// The region expressed relative to `origin` (e.g. a rank's own box), so
    /// that it indexes into that rank's local buffer.
    ///
    /// # Panics
    ///
    /// When `self` does not lie inside `origin`.
    pub fn relative_to(&self, origin: &Region) -> Region {
        assert!(origin.contains_region(self), "region outside its origin");
        Region {
            offset: self
                .offset
                .iter()
                .zip(&origin.offset)
                .map(|(a, b)| a - b)
                .collect(),
            extent: self.extent.clone(),
        }
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[")?;
        for d in 0..self.rank() {
            if d > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{}..{}", self.offset[d], self.end(d))?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn region(rank: usize) -> impl Strategy<Value = Region> {
        (
            prop::collection::vec(0u64..6, rank),
            prop::collection::vec(0u64..6, rank),
        )
            .prop_map(|(o, e)| Region::new(o, e))
    }

    proptest! {
        #[test]
        fn difference_partitions(a in region(3), b in region(3)) {
            let parts = a.difference(&b);
            let inter = a.intersect(&b);
            // Every point of a lies in exactly one of the parts or the intersection.
            for x in 0..12u64 { for y in 0..12u64 { for z in 0..12u64 {
                let p = [x, y, z];
                let n = parts.iter().filter(|r| r.contains(&p)).count()
                    + usize::from(inter.as_ref().is_some_and(|r| r.contains(&p)));
                prop_assert_eq!(n, usize::from(a.contains(&p)), "point {:?}", p);
            }}}
        }
    }

    #[test]
    fn display_and_relative() {
        let r = Region::new(vec![2, 4], vec![2, 4]);
        assert_eq!(r.to_string(), "[2..4, 4..8]");
        let o = Region::new(vec![2, 0], vec![4, 8]);
        assert_eq!(r.relative_to(&o).to_string(), "[0..2, 4..8]");
    }
}

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

/// The contiguous runs of a box copied between two row-major arrays, in
/// units of `unit` (1 for elements, the element size for bytes): run `r`
/// starts at [`BoxRuns::at`]`(r)` in both arrays and is [`BoxRuns::run`]
/// long. Trailing dimensions whole in the box and in both arrays fuse into
/// one run, so a copy of whole rows is one run. Runs ascend in both
/// arrays; none is stored, so a box of many short rows costs nothing.
///
/// ```
/// use shardplan_core::BoxRuns;
/// // Columns 2..4 of a 3 x 4 array into a 3 x 2 array: three runs of two.
/// let runs = BoxRuns::new(&[3, 4], &[0, 2], &[3, 2], &[0, 0], &[3, 2], 1);
/// assert_eq!((runs.count(), runs.run()), (3, 2));
/// assert_eq!(runs.at(1), (6, 2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxRuns {
    count: u64,
    run: u64,
    /// Where run 0 starts in the source and the destination.
    src0: u64,
    dst0: u64,
    /// Per outer dimension (before the fused trailing ones): extent and the
    /// strides in the source and the destination.
    outer: Vec<(u64, u64, u64)>,
}

impl BoxRuns {
    /// The runs of the box `extent` at `src_off` in an array of `src_shape`
    /// and at `dst_off` in one of `dst_shape`; the caller has checked that
    /// the box lies inside both (the planner's pieces do, the verifier says
    /// so).
    pub fn new(
        src_shape: &[u64],
        src_off: &[u64],
        dst_shape: &[u64],
        dst_off: &[u64],
        extent: &[u64],
        unit: u64,
    ) -> Self {
        let n = extent.len();
        let strides = |shape: &[u64]| {
            let mut s = vec![unit; n];
            for k in (0..n.saturating_sub(1)).rev() {
                s[k] = s[k + 1] * shape[k + 1];
            }
            s
        };
        let (ss, ds) = (strides(src_shape), strides(dst_shape));
        let dot = |off: &[u64], st: &[u64]| off.iter().zip(st).map(|(o, s)| o * s).sum::<u64>();
        let mut split = n;
        let mut run = unit;
        if n > 0 {
            split = n - 1;
            run *= extent[n - 1];
            while split > 0
                && extent[split] == src_shape[split]
                && extent[split] == dst_shape[split]
            {
                split -= 1;
                run *= extent[split];
            }
        }
        let outer: Vec<(u64, u64, u64)> = (0..split).map(|k| (extent[k], ss[k], ds[k])).collect();
        BoxRuns {
            count: if extent.contains(&0) {
                0
            } else {
                outer.iter().map(|o| o.0).product()
            },
            run,
            src0: dot(src_off, &ss),
            dst0: dot(dst_off, &ds),
            outer,
        }
    }

    /// Number of runs.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Length of each run.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// Where run `r` starts in the source and in the destination.
    pub fn at(&self, mut r: u64) -> (u64, u64) {
        let (mut s, mut d) = (self.src0, self.dst0);
        for &(e, ss, ds) in self.outer.iter().rev() {
            let i = r % e;
            r /= e;
            s += i * ss;
            d += i * ds;
        }
        (s, d)
    }

    /// The first run ending after destination position `at` (by
    /// bisection: a window of the destination seeks to its first run).
    pub fn first_after(&self, at: u64) -> u64 {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.at(mid).1 + self.run <= at {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Calls `f(src, dst, run)` for every run in order, the positions kept
    /// incrementally (an odometer over the outer dimensions).
    pub fn for_each(&self, mut f: impl FnMut(u64, u64, u64)) {
        if self.count == 0 {
            return;
        }
        let (mut s, mut d) = (self.src0, self.dst0);
        let mut idx = vec![0u64; self.outer.len()];
        loop {
            f(s, d, self.run);
            let mut k = self.outer.len();
            loop {
                if k == 0 {
                    return;
                }
                k -= 1;
                let (e, ss, ds) = self.outer[k];
                idx[k] += 1;
                s += ss;
                d += ds;
                if idx[k] < e {
                    break;
                }
                s -= ss * e;
                d -= ds * e;
                idx[k] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Source shape and offset, destination shape and offset, extent.
    type BoxCopy = (Vec<u64>, Vec<u64>, Vec<u64>, Vec<u64>, Vec<u64>);

    /// A box copy between two row-major arrays, the box inside both.
    fn box_copy() -> impl Strategy<Value = BoxCopy> {
        (0usize..=3)
            .prop_flat_map(|n| {
                proptest::collection::vec((1u64..=5, 1u64..=5, 0u64..=5, 0u64..=5, 0u64..=5), n)
            })
            .prop_map(|dims| {
                let (mut ss, mut ds, mut so, mut dof, mut ext) =
                    (vec![], vec![], vec![], vec![], vec![]);
                for (s, d, a, b, e) in dims {
                    // The extent fits both arrays; offsets within the rest.
                    let e = e.min(s).min(d);
                    ss.push(s);
                    ds.push(d);
                    so.push(a % (s - e + 1));
                    dof.push(b % (d - e + 1));
                    ext.push(e);
                }
                (ss, so, ds, dof, ext)
            })
    }

    proptest! {
        /// The runs, expanded element by element, are the box's elements
        /// in row-major order at their source and destination bytes; the
        /// bisection finds the first run ending after any byte.
        #[test]
        fn runs_are_the_box_in_order((ss, so, ds, dof, ext) in box_copy(), size in 1u64..=4) {
            let p = BoxRuns::new(&ss, &so, &ds, &dof, &ext, size);
            let mut walked = Vec::new();
            p.for_each(|s, d, run| walked.push((s, d, run)));
            prop_assert_eq!(walked, (0..p.count()).map(|r| (p.at(r).0, p.at(r).1, p.run())).collect::<Vec<_>>());
            let mut got = Vec::new();
            for r in 0..p.count() {
                let (s, d) = p.at(r);
                prop_assert_eq!(p.run() % size, 0);
                for k in 0..p.run() / size {
                    got.push((s + k * size, d + k * size));
                }
            }
            let n = ext.len();
            let flat = |shape: &[u64], idx: &[u64]| (0..n).fold(0u64, |acc, k| acc * shape[k] + idx[k]);
            let mut want = Vec::new();
            let total: u64 = ext.iter().product();
            let mut idx = vec![0u64; n];
            for _ in 0..total {
                let si: Vec<u64> = (0..n).map(|k| so[k] + idx[k]).collect();
                let di: Vec<u64> = (0..n).map(|k| dof[k] + idx[k]).collect();
                want.push((flat(&ss, &si) * size, flat(&ds, &di) * size));
                for k in (0..n).rev() {
                    idx[k] += 1;
                    if idx[k] < ext[k] {
                        break;
                    }
                    idx[k] = 0;
                }
            }
            prop_assert_eq!(got, want);
            // Every run's first and last byte and the bytes around them.
            let mut probes = vec![0u64];
            for r in 0..p.count() {
                let d = p.at(r).1;
                probes.extend([d.saturating_sub(1), d, d + p.run() - 1, d + p.run()]);
            }
            for probe in probes {
                let r = p.first_after(probe);
                prop_assert!(r == p.count() || p.at(r).1 + p.run() > probe, "{} {}", probe, r);
                prop_assert!(r == 0 || p.at(r - 1).1 + p.run() <= probe, "{} {}", probe, r);
            }
        }
    }

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

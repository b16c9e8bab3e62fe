//! Who holds what: the region of each rank, the holders of each element,
//! replicas and placement comparison.

use std::collections::BTreeMap;

use super::TensorLayout;
use crate::error::LayoutError;
use crate::geometry::Region;

impl TensorLayout {
    /// Axes that neither split, nor hold partial sums, nor pin: each of their
    /// positions holds a full copy of the same slice.
    pub fn replica_axes(&self) -> Vec<usize> {
        (0..self.mesh.axes().len())
            .filter(|a| !self.axis_is_used(*a))
            .collect()
    }

    fn axis_is_used(&self, a: usize) -> bool {
        self.dims.iter().any(|d| d.axes.contains(&a))
            || self.partial.contains(&a)
            || self.pin.iter().any(|(p, _)| *p == a)
    }

    /// How many ranks hold each element: the product of the sizes of the
    /// replica and partial axes and of the number of coordinates of each
    /// pinned axis.
    pub fn replica_count(&self) -> u64 {
        if let Some(b) = &self.boxes {
            // Boxes given one by one may differ in copies: the most of any.
            return b
                .distinct
                .iter()
                .map(|(_, h)| h.len() as u64)
                .max()
                .unwrap_or(1);
        }
        (0..self.mesh.axes().len())
            .filter(|a| !self.dims.iter().any(|d| d.axes.contains(a)))
            .map(|a| match self.pinned_coords(a).count() {
                0 => self.mesh.axis_size(a),
                k => k as u64,
            })
            .product()
    }

    /// True when rank `rank` holds a slice (it is on the pinned sub-mesh).
    pub fn holds(&self, rank: u64) -> bool {
        if let Some(b) = &self.boxes {
            return b.by_rank.get(rank as usize).is_some_and(Option::is_some);
        }
        rank < self.mesh.rank_count() && self.on_pin(&self.mesh.coords_unchecked(rank))
    }

    /// The coordinates axis `a` is pinned to, empty when it is not pinned.
    pub fn pinned_coords(&self, a: usize) -> impl Iterator<Item = u64> + '_ {
        self.pin
            .iter()
            .filter(move |&&(p, _)| p == a)
            .map(|&(_, c)| c)
    }

    fn on_pin(&self, coords: &[u64]) -> bool {
        // Pins are sorted by axis: each run of one axis must contain its
        // coordinate.
        self.pin
            .chunk_by(|x, y| x.0 == y.0)
            .all(|run| run.iter().any(|&(a, c)| coords[a] == c))
    }

    /// The box of the global tensor that `rank` holds, or `None` when the
    /// rank is outside the pinned sub-mesh or out of range. The box may be
    /// empty under `chunk` or explicit blocks.
    pub fn region_of(&self, rank: u64) -> Option<Region> {
        if let Some(b) = &self.boxes {
            return b.by_rank.get(rank as usize).cloned().flatten();
        }
        if !(rank < self.mesh.rank_count()) {
            return None;
        }
        let coords = self.mesh.coords_unchecked(rank);
        if !self.on_pin(&coords) {
            return None;
        }
        let mut offset = Vec::with_capacity(self.dims.len());
        let mut extent = Vec::with_capacity(self.dims.len());
        for dim in &self.dims {
            let b = dim
                .axes
                .iter()
                .fold(0u64, |acc, &a| acc * self.mesh.axis_size(a) + coords[a]);
            let (s, e) = dim.block(b);
            offset.push(s);
            extent.push(e - s);
        }
        Some(Region::new(offset, extent))
    }

    /// Ranks that hold element `index`, ascending.
    ///
    /// # Errors
    ///
    /// [`LayoutError::IndexOutOfRange`] when `index` is outside the shape.
    pub fn holders(&self, index: &[u64]) -> Result<Vec<u64>, LayoutError> {
        if index.len() != self.shape.len() || index.iter().zip(&self.shape).any(|(i, s)| i >= s) {
            return Err(LayoutError::IndexOutOfRange {
                index: index.to_vec(),
                shape: self.shape.clone(),
            });
        }
        if let Some(b) = &self.boxes {
            // The boxes cover the tensor, so one holds the index.
            return Ok(b
                .distinct
                .iter()
                .find(|(r, _)| r.contains(index))
                .map(|(_, h)| h.clone())
                .unwrap_or_default());
        }
        // Fixed coordinates from the block of each dim and the pin; the
        // remaining axes range freely.
        let mut fixed: Vec<Option<u64>> = vec![None; self.mesh.axes().len()];
        for (dim, &x) in self.dims.iter().zip(index) {
            let mut b = dim.block_of(x);
            for &a in dim.axes.iter().rev() {
                let size = self.mesh.axis_size(a);
                fixed[a] = Some(b % size);
                b /= size;
            }
        }
        let mut ranks = vec![0u64];
        for (a, f) in fixed.iter().enumerate() {
            let stride = self.mesh.stride(a);
            let pinned = self.pin.iter().any(|&(p, _)| p == a);
            ranks = match f {
                Some(c) => ranks.into_iter().map(|r| r + c * stride).collect(),
                None if pinned => ranks
                    .into_iter()
                    .flat_map(|r| self.pinned_coords(a).map(move |c| r + c * stride))
                    .collect(),
                None => ranks
                    .into_iter()
                    .flat_map(|r| (0..self.mesh.axis_size(a)).map(move |c| r + c * stride))
                    .collect(),
            };
        }
        ranks.sort_unstable();
        Ok(ranks)
    }

    /// The distinct boxes of the tensor with the ranks holding each,
    /// ordered by box. Empty boxes are included.
    pub fn shards(&self) -> Vec<(Region, Vec<u64>)> {
        let mut map: BTreeMap<Region, Vec<u64>> = BTreeMap::new();
        for rank in 0..self.mesh.rank_count() {
            if let Some(r) = self.region_of(rank) {
                map.entry(r).or_default().push(rank);
            }
        }
        map.into_iter().collect()
    }

    /// True when both layouts place the same box on every rank, with the
    /// same partial-sum status: the geometry users care about, whatever the
    /// axis names or mesh factorisation.
    pub fn same_placement(&self, other: &TensorLayout) -> bool {
        self.shape == other.shape
            && self.mesh.rank_count() == other.mesh.rank_count()
            && self.partial_ranks_signature() == other.partial_ranks_signature()
            && (0..self.mesh.rank_count()).all(|r| self.region_of(r) == other.region_of(r))
    }

    /// For each rank, which partial-sum term it holds (None without partial
    /// axes); two layouts sum the same terms when these partition the ranks
    /// alike.
    fn partial_ranks_signature(&self) -> Vec<Vec<u64>> {
        if self.partial.is_empty() {
            return Vec::new();
        }
        let mut groups: BTreeMap<Vec<u64>, Vec<u64>> = BTreeMap::new();
        for rank in 0..self.mesh.rank_count() {
            let c = self.mesh.coords_unchecked(rank);
            let key = self.partial.iter().map(|&a| c[a]).collect();
            groups.entry(key).or_default().push(rank);
        }
        let mut v: Vec<Vec<u64>> = groups.into_values().collect();
        v.sort();
        v
    }
}

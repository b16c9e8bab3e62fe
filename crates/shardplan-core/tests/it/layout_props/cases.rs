//! Generated layouts (mesh, shape, configuration), the reference model of
//! their regions, and `check_model`, which holds the library to it.

use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;

use shardplan_core::{
    DeviceMesh, DimSplit, LayoutConfig, Region, SplitPolicy, TensorLayout, element_count,
};

use super::{
    MAX_TEST_RANKS, all_indices, axis_name, flat, is_chunk, is_even, random_blocks, ref_blocks,
    ref_coords,
};

// ---------------------------------------------------------------------------
// Generated layouts.

/// A mesh as generated: axis sizes and optional device ids.
#[derive(Debug, Clone)]
pub(super) struct MeshSpec {
    pub(super) sizes: Vec<u64>,
    pub(super) ids: Option<Vec<u64>>,
}

impl MeshSpec {
    pub(super) fn rank_count(&self) -> u64 {
        self.sizes.iter().product()
    }

    #[track_caller]
    pub(super) fn build(&self) -> Arc<DeviceMesh> {
        let mesh = DeviceMesh::new(
            self.sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| (axis_name(i), s)),
        )
        .unwrap_or_else(|e| panic!("mesh {self:?} refused: {e}"));
        let mesh = match &self.ids {
            Some(ids) => mesh
                .with_device_ids(ids.clone())
                .unwrap_or_else(|e| panic!("device ids of {self:?} refused: {e}")),
            None => mesh,
        };
        Arc::new(mesh)
    }
}

/// 1 to 4 axes of sizes 1..=4, at most 64 ranks, sometimes with a random
/// permutation of the ranks as device ids.
fn mesh_spec() -> impl Strategy<Value = MeshSpec> {
    vec(1u64..=4, 1..=4)
        .prop_map(|mut sizes| {
            // Cap each axis so that the product stays within the budget.
            let mut product = 1;
            for s in &mut sizes {
                *s = (*s).min(MAX_TEST_RANKS / product);
                product *= *s;
            }
            sizes
        })
        .prop_flat_map(|sizes| {
            let n = sizes.iter().product::<u64>();
            let ids = prop_oneof![
                2 => Just(None),
                1 => Just((0..n).collect::<Vec<u64>>()).prop_shuffle().prop_map(Some),
            ];
            (Just(sizes), ids)
        })
        .prop_map(|(sizes, ids)| MeshSpec { sizes, ids })
}

/// What one mesh axis does to the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Splits tensor dimension `d`.
    Dim(usize),
    Partial,
    /// Pinned; the coordinates are taken modulo the axis size. The first
    /// is always pinned, the bits of the second add more coordinates (a
    /// tensor on several stages).
    Pin(u64, u8),
    Replica,
}

fn role(rank: usize) -> BoxedStrategy<Role> {
    let other = prop_oneof![
        1 => Just(Role::Partial),
        1 => (0u64..4, prop_oneof![3 => Just(0u8), 1 => any::<u8>()])
            .prop_map(|(c, more)| Role::Pin(c, more)),
        3 => Just(Role::Replica),
    ];
    if rank == 0 {
        other.boxed()
    } else {
        prop_oneof![5 => (0..rank).prop_map(Role::Dim), 5 => other].boxed()
    }
}

/// A generated layout: the mesh, the shape and the configuration.
#[derive(Debug, Clone)]
pub(super) struct Case {
    pub(super) mesh: MeshSpec,
    pub(super) shape: Vec<u64>,
    pub(super) config: LayoutConfig,
}

/// Policy for a dimension of `size` cut in `n` blocks, from a generated
/// kind and seed. `Even` only when `n` divides the size.
fn policy(kind: u8, seed: u64, size: u64, n: u64) -> SplitPolicy {
    match kind {
        0 if size.is_multiple_of(n) => SplitPolicy::Even,
        0 | 1 => SplitPolicy::Chunk,
        2 => SplitPolicy::Balanced,
        _ => SplitPolicy::Blocks(random_blocks(seed, size, n)),
    }
}

impl Case {
    fn from_choices(
        mesh: MeshSpec,
        shape: Vec<u64>,
        roles: Vec<Role>,
        order: Vec<usize>,
        policies: Vec<(u8, u64)>,
    ) -> Case {
        let dims = (0..shape.len())
            .map(|d| {
                let axes: Vec<usize> = order
                    .iter()
                    .copied()
                    .filter(|&a| roles[a] == Role::Dim(d))
                    .collect();
                let n: u64 = axes.iter().map(|&a| mesh.sizes[a]).product();
                let (kind, seed) = policies[d];
                DimSplit {
                    axes: axes.into_iter().map(axis_name).collect(),
                    policy: policy(kind, seed, shape[d], n),
                }
            })
            .collect();
        let partial: Vec<String> = order
            .iter()
            .filter(|&&a| roles[a] == Role::Partial)
            .map(|&a| axis_name(a))
            .collect();
        let pin: Vec<(String, u64)> = order
            .iter()
            .flat_map(|&a| {
                let size = mesh.sizes[a];
                let coords: Vec<u64> = match roles[a] {
                    Role::Pin(c, more) => std::iter::once(c % size)
                        .chain((0..8u64).filter(|b| more >> b & 1 == 1).map(|b| b % size))
                        .collect(),
                    _ => Vec::new(),
                };
                coords.into_iter().map(move |c| (axis_name(a), c))
            })
            .collect();
        Case {
            mesh,
            shape,
            config: LayoutConfig::new(dims).with_partial(partial).with_pin(pin),
        }
    }

    /// Index of the mesh axis called `name`.
    pub(super) fn axis(&self, name: &str) -> usize {
        name[1..].parse().unwrap()
    }

    pub(super) fn dim_axes(&self, d: usize) -> Vec<usize> {
        self.config.dims[d]
            .axes
            .iter()
            .map(|a| self.axis(a))
            .collect()
    }

    /// Reference blocks of dimension `d`.
    #[track_caller]
    pub(super) fn blocks(&self, d: usize) -> Vec<(u64, u64)> {
        let n = self
            .dim_axes(d)
            .iter()
            .map(|&a| self.mesh.sizes[a])
            .product();
        ref_blocks(&self.config.dims[d].policy, self.shape[d], n)
            .unwrap_or_else(|| panic!("generated an invalid policy: {self:?}"))
    }

    pub(super) fn pins(&self) -> Vec<(usize, u64)> {
        self.config
            .pin
            .iter()
            .map(|(a, c)| (self.axis(a), *c))
            .collect()
    }

    /// True when `rank` is on the pinned sub-mesh: on each pinned axis,
    /// at one of the coordinates pinned for it.
    fn on_pin(&self, rank: u64) -> bool {
        let coords = ref_coords(&self.mesh.sizes, rank);
        let pins = self.pins();
        pins.iter()
            .all(|&(a, _)| pins.iter().any(|&(b, c)| b == a && coords[a] == c))
    }

    /// Reference region of `rank`.
    pub(super) fn region(&self, rank: u64) -> Option<Region> {
        let coords = ref_coords(&self.mesh.sizes, rank);
        if !self.on_pin(rank) {
            return None;
        }
        let (offset, extent) = (0..self.shape.len())
            .map(|d| {
                let b = self
                    .dim_axes(d)
                    .iter()
                    .fold(0, |acc, &a| acc * self.mesh.sizes[a] + coords[a]);
                let (s, e) = self.blocks(d)[b as usize];
                (s, e - s)
            })
            .unzip();
        Some(Region::new(offset, extent))
    }

    /// Ranks grouped by the partial-sum term they hold (reference model),
    /// `None` without partial axes.
    pub(super) fn partial_groups(&self) -> Option<Vec<Vec<u64>>> {
        if self.config.partial.is_empty() {
            return None;
        }
        let axes: Vec<usize> = self.config.partial.iter().map(|a| self.axis(a)).collect();
        let mut groups: std::collections::BTreeMap<Vec<u64>, Vec<u64>> = Default::default();
        for r in 0..self.mesh.rank_count() {
            let c = ref_coords(&self.mesh.sizes, r);
            groups
                .entry(axes.iter().map(|&a| c[a]).collect())
                .or_default()
                .push(r);
        }
        let mut groups: Vec<Vec<u64>> = groups.into_values().collect();
        groups.sort();
        Some(groups)
    }

    #[track_caller]
    pub(super) fn layout(&self) -> TensorLayout {
        TensorLayout::new(self.mesh.build(), &self.shape, &self.config)
            .unwrap_or_else(|e| panic!("valid layout refused: {e}\n{self:#?}"))
    }

    /// A JAX `PartitionSpec` can express the layout.
    pub(super) fn jax_representable(&self) -> bool {
        self.config.partial.is_empty()
            && self.config.pin.is_empty()
            && (0..self.shape.len()).all(|d| is_even(&self.blocks(d), self.shape[d]))
    }

    /// DTensor placements can express the layout.
    pub(super) fn dtensor_representable(&self) -> bool {
        self.config.pin.is_empty()
            && (0..self.shape.len()).all(|d| {
                let axes = self.dim_axes(d);
                let blocks = self.blocks(d);
                axes.windows(2).all(|w| w[0] < w[1])
                    && if axes.len() > 1 {
                        is_even(&blocks, self.shape[d])
                    } else {
                        is_chunk(&blocks, self.shape[d])
                    }
            })
    }

    /// A MindSpore layout can express the layout: dimension 0 may be uneven
    /// (`param_split_shape`), the others must be even.
    pub(super) fn mindspore_representable(&self) -> bool {
        let identity_ids = self
            .mesh
            .ids
            .as_ref()
            .is_none_or(|ids| ids.iter().enumerate().all(|(r, &d)| r as u64 == d));
        self.config.partial.is_empty()
            && self.pins().iter().all(|&(a, _)| a == 0)
            && self.pins().len() <= 1
            && identity_ids
            && (1..self.shape.len()).all(|d| is_even(&self.blocks(d), self.shape[d]))
    }
}

pub(super) fn layout_case() -> impl Strategy<Value = Case> {
    (mesh_spec(), 0usize..=3)
        .prop_flat_map(|(mesh, rank)| {
            let n = mesh.sizes.len();
            (
                Just(mesh),
                vec(1u64..=12, rank),
                vec(role(rank), n),
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
                vec((0u8..4, any::<u64>()), rank),
            )
        })
        .prop_map(|(mesh, shape, roles, order, policies)| {
            Case::from_choices(mesh, shape, roles, order, policies)
        })
}

/// `region_of`, `holds`, `shards`, `holders` and `replica_count` agree with
/// the reference model and with each other.
#[track_caller]
pub(super) fn check_model(case: &Case) {
    let layout = case.layout();
    let shape = &case.shape;
    let ranks = case.mesh.rank_count();
    let total = element_count(shape).unwrap();
    assert_eq!(layout.mesh().rank_count(), ranks);

    // region_of: the reference region, None exactly off the pin.
    let regions: Vec<Option<Region>> = (0..ranks).map(|r| layout.region_of(r)).collect();
    let whole = Region::whole(shape);
    for (r, region) in regions.iter().enumerate() {
        let r = r as u64;
        let on_pin = case.on_pin(r);
        assert_eq!(region.is_some(), on_pin, "rank {r} of {case:?}");
        assert_eq!(layout.holds(r), on_pin, "holds({r}) of {case:?}");
        assert_eq!(region, &case.region(r), "region of rank {r} of {case:?}");
        if let Some(region) = region {
            assert!(whole.contains_region(region), "{region} outside {whole}");
        }
    }
    assert_eq!(layout.region_of(ranks), None);
    assert!(!layout.holds(ranks));

    // shards: distinct boxes of the holding ranks, tiling the tensor.
    let shards = layout.shards();
    let mut listed: Vec<u64> = Vec::new();
    for w in shards.windows(2) {
        assert!(w[0].0 < w[1].0, "shards not distinct and ordered: {case:?}");
    }
    let mut cover = vec![0u32; total as usize];
    for (region, holders) in &shards {
        assert!(!holders.is_empty());
        assert!(holders.windows(2).all(|w| w[0] < w[1]));
        for &r in holders {
            assert_eq!(regions[r as usize].as_ref(), Some(region));
        }
        listed.extend(holders);
        for index in all_indices(region.extent()) {
            let index: Vec<u64> = index
                .iter()
                .zip(region.offset())
                .map(|(i, o)| i + o)
                .collect();
            assert!(region.contains(&index));
            cover[flat(shape, &index)] += 1;
        }
    }
    listed.sort_unstable();
    let holding: Vec<u64> = (0..ranks)
        .filter(|&r| regions[r as usize].is_some())
        .collect();
    assert_eq!(
        listed, holding,
        "shards list each holding rank once: {case:?}"
    );
    assert_eq!(
        shards.iter().map(|(r, _)| r.volume()).sum::<u64>(),
        total,
        "shard volumes: {case:?}"
    );
    assert!(
        cover.iter().all(|&c| c == 1),
        "shards do not tile the tensor: {case:?}"
    );

    // Every element is on replica_count ranks, which holders() lists.
    let mut holders_of: Vec<Vec<u64>> = vec![Vec::new(); total as usize];
    for (r, region) in regions.iter().enumerate() {
        if let Some(region) = region {
            for index in all_indices(region.extent()) {
                let index: Vec<u64> = index
                    .iter()
                    .zip(region.offset())
                    .map(|(i, o)| i + o)
                    .collect();
                holders_of[flat(shape, &index)].push(r as u64);
            }
        }
    }
    let replicas = layout.replica_count();
    for index in all_indices(shape) {
        let expect = &holders_of[flat(shape, &index)];
        assert_eq!(
            expect.len() as u64,
            replicas,
            "holders of {index:?}: {case:?}"
        );
        assert_eq!(
            &layout.holders(&index).unwrap(),
            expect,
            "holders({index:?}) of {case:?}"
        );
    }
    // Out-of-range indices are refused.
    if let Some(d) = shape.iter().position(|_| true) {
        let mut index = vec![0; shape.len()];
        index[d] = shape[d];
        assert!(layout.holders(&index).is_err());
    }
    let mut longer = vec![0; shape.len()];
    longer.push(0);
    assert!(layout.holders(&longer).is_err());
    assert!(layout.same_placement(&layout.clone()));
}

//! Property tests for the core layout model (meshes, layouts, regions,
//! holders, `same_placement`) and for the round trips through the MindSpore,
//! DTensor and JAX notations.
//!
//! Layouts are generated from random meshes by giving every mesh axis one
//! role: split a tensor dimension, hold partial sums, pin the tensor to one
//! coordinate, or hold replicas. Expected regions come from a small
//! reference model written here, independently of `src/`.

use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use shardplan_core::notation::dtensor;
use shardplan_core::notation::jax::PartitionSpec;
use shardplan_core::notation::mindspore::MindSporeLayout;
use shardplan_core::{
    DeviceMesh, DimSplit, LayoutConfig, Region, SplitPolicy, TensorLayout, element_count,
};

/// Largest mesh generated.
const MAX_TEST_RANKS: u64 = 64;
/// Cases per proptest property.
const CASES: u32 = 512;
/// Cases of the deterministic (fixed-seed) coverage tests.
const FIXED_CASES: usize = 600;

fn config() -> Config {
    Config {
        cases: CASES,
        // Do not write regression files next to the tests.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Small deterministic helpers.

/// SplitMix64: derives further random choices from one generated seed.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random block sizes, `n` of them, summing to `size` (some may be zero).
fn random_blocks(seed: u64, size: u64, n: u64) -> Vec<u64> {
    let mut state = seed;
    let mut cuts: Vec<u64> = (1..n).map(|_| splitmix(&mut state) % (size + 1)).collect();
    cuts.sort_unstable();
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(size);
    bounds.windows(2).map(|w| w[1] - w[0]).collect()
}

fn axis_name(i: usize) -> String {
    format!("a{i}")
}

/// Every index of `shape`, row-major.
fn all_indices(shape: &[u64]) -> Vec<Vec<u64>> {
    let mut out = vec![Vec::new()];
    for &s in shape {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                (0..s).map(move |x| {
                    let mut p = prefix.clone();
                    p.push(x);
                    p
                })
            })
            .collect();
    }
    out
}

/// Row-major position of `index` in `shape`.
fn flat(shape: &[u64], index: &[u64]) -> usize {
    index
        .iter()
        .zip(shape)
        .fold(0u64, |acc, (&i, &s)| acc * s + i) as usize
}

/// Coordinates of `rank` in a row-major mesh of `sizes` (reference model).
fn ref_coords(sizes: &[u64], rank: u64) -> Vec<u64> {
    let mut r = rank;
    let mut c = vec![0; sizes.len()];
    for (i, &s) in sizes.iter().enumerate().rev() {
        c[i] = r % s;
        r /= s;
    }
    c
}

/// Block `(start, end)` pairs of `policy` on a dimension of `size` cut in
/// `n` blocks (reference model), or `None` when the policy does not fit.
fn ref_blocks(policy: &SplitPolicy, size: u64, n: u64) -> Option<Vec<(u64, u64)>> {
    match policy {
        SplitPolicy::Even => {
            if !size.is_multiple_of(n) {
                return None;
            }
            let b = size / n;
            Some((0..n).map(|i| (i * b, (i + 1) * b)).collect())
        }
        SplitPolicy::Chunk => {
            let c = size.div_ceil(n);
            Some(
                (0..n)
                    .map(|i| ((i * c).min(size), ((i + 1) * c).min(size)))
                    .collect(),
            )
        }
        SplitPolicy::Balanced => {
            let (q, r) = (size / n, size % n);
            let mut start = 0;
            Some(
                (0..n)
                    .map(|i| {
                        let len = q + u64::from(i < r);
                        start += len;
                        (start - len, start)
                    })
                    .collect(),
            )
        }
        SplitPolicy::Blocks(sizes) => {
            if sizes.len() as u64 != n || sizes.iter().sum::<u64>() != size {
                return None;
            }
            let mut start = 0;
            Some(
                sizes
                    .iter()
                    .map(|&len| {
                        start += len;
                        (start - len, start)
                    })
                    .collect(),
            )
        }
    }
}

fn is_even(blocks: &[(u64, u64)], size: u64) -> bool {
    ref_blocks(&SplitPolicy::Even, size, blocks.len() as u64).as_deref() == Some(blocks)
}

fn is_chunk(blocks: &[(u64, u64)], size: u64) -> bool {
    ref_blocks(&SplitPolicy::Chunk, size, blocks.len() as u64).as_deref() == Some(blocks)
}

// ---------------------------------------------------------------------------
// Generated layouts.

/// A mesh as generated: axis sizes and optional device ids.
#[derive(Debug, Clone)]
struct MeshSpec {
    sizes: Vec<u64>,
    ids: Option<Vec<u64>>,
}

impl MeshSpec {
    fn rank_count(&self) -> u64 {
        self.sizes.iter().product()
    }

    #[track_caller]
    fn build(&self) -> Arc<DeviceMesh> {
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
struct Case {
    mesh: MeshSpec,
    shape: Vec<u64>,
    config: LayoutConfig,
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
    fn axis(&self, name: &str) -> usize {
        name[1..].parse().unwrap()
    }

    fn dim_axes(&self, d: usize) -> Vec<usize> {
        self.config.dims[d]
            .axes
            .iter()
            .map(|a| self.axis(a))
            .collect()
    }

    /// Reference blocks of dimension `d`.
    #[track_caller]
    fn blocks(&self, d: usize) -> Vec<(u64, u64)> {
        let n = self
            .dim_axes(d)
            .iter()
            .map(|&a| self.mesh.sizes[a])
            .product();
        ref_blocks(&self.config.dims[d].policy, self.shape[d], n)
            .unwrap_or_else(|| panic!("generated an invalid policy: {self:?}"))
    }

    fn pins(&self) -> Vec<(usize, u64)> {
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
    fn region(&self, rank: u64) -> Option<Region> {
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
    fn partial_groups(&self) -> Option<Vec<Vec<u64>>> {
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
    fn layout(&self) -> TensorLayout {
        TensorLayout::new(self.mesh.build(), &self.shape, &self.config)
            .unwrap_or_else(|e| panic!("valid layout refused: {e}\n{self:#?}"))
    }

    /// A JAX `PartitionSpec` can express the layout.
    fn jax_representable(&self) -> bool {
        self.config.partial.is_empty()
            && self.config.pin.is_empty()
            && (0..self.shape.len()).all(|d| is_even(&self.blocks(d), self.shape[d]))
    }

    /// DTensor placements can express the layout.
    fn dtensor_representable(&self) -> bool {
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
    fn mindspore_representable(&self) -> bool {
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

fn layout_case() -> impl Strategy<Value = Case> {
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

// ---------------------------------------------------------------------------
// Properties of the model.

/// `region_of`, `holds`, `shards`, `holders` and `replica_count` agree with
/// the reference model and with each other.
#[track_caller]
fn check_model(case: &Case) {
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

/// Which round trips a case exported.
#[derive(Debug, Default, Clone, Copy)]
struct Exported {
    jax: bool,
    dtensor: bool,
    mindspore: bool,
    /// The MindSpore form has an optimizer shard.
    mindspore_opt: bool,
    /// The MindSpore form has explicit blocks on dimension 0.
    mindspore_blocks: bool,
}

/// Exports the layout to each notation and back; an export that succeeds
/// must give the same placement, and a representable layout must export.
#[track_caller]
fn check_round_trips(case: &Case) -> Exported {
    let layout = case.layout();
    let mesh = layout.mesh().clone();
    let shape = &case.shape;
    let mut out = Exported::default();

    match PartitionSpec::from_layout(&layout) {
        Ok(spec) => {
            let text = spec.to_string();
            let parsed: PartitionSpec = text
                .parse()
                .unwrap_or_else(|e| panic!("`{text}` does not parse back: {e}"));
            assert_eq!(parsed, spec, "{text}");
            let back = parsed
                .to_layout(mesh.clone(), shape)
                .unwrap_or_else(|e| panic!("jax {text} does not import: {e}\n{case:?}"));
            assert!(
                back.same_placement(&layout),
                "jax {text}: {back} vs {layout}\n{case:?}"
            );
            out.jax = true;
        }
        Err(e) => assert!(
            !case.jax_representable(),
            "jax export refused: {e}\n{case:?}"
        ),
    }

    match dtensor::from_layout(&layout) {
        Ok(placements) => {
            assert_eq!(placements.len(), mesh.axes().len());
            let back = dtensor::to_layout(mesh.clone(), shape, &placements).unwrap_or_else(|e| {
                panic!("dtensor {placements:?} does not import: {e}\n{case:?}")
            });
            assert!(
                back.same_placement(&layout),
                "dtensor {placements:?}: {back} vs {layout}\n{case:?}"
            );
            out.dtensor = true;
        }
        Err(e) => assert!(
            !case.dtensor_representable(),
            "dtensor export refused: {e}\n{case:?}"
        ),
    }

    match MindSporeLayout::from_layout(&layout) {
        Ok(ms) => {
            check_ms_step(&ms);
            let back = ms
                .to_layout(shape)
                .unwrap_or_else(|e| panic!("mindspore {ms:?} does not import: {e}\n{case:?}"));
            assert!(
                back.same_placement(&layout),
                "mindspore {ms:?}: {back} vs {layout}\n{case:?}"
            );
            out.mindspore = true;
            out.mindspore_opt = ms.opt_weight_shard_size > 1;
            out.mindspore_blocks = !ms.param_split_shape.is_empty();
        }
        Err(e) => assert!(
            !case.mindspore_representable(),
            "mindspore export refused: {e}\n{case:?}"
        ),
    }
    out
}

/// A mutation of the case: a split axis moved, dropped, swapped or
/// reordered, another policy, or a partial axis turned into a replica axis
/// or back; `None` when the case has nothing to mutate. Pinned axes are
/// left alone.
fn mutate(case: &Case, seed: u64) -> Option<Case> {
    let mut state = seed;
    let mut pick = |n: usize| (splitmix(&mut state) % n as u64) as usize;
    let rank = case.shape.len();
    let mut dims: Vec<Vec<usize>> = (0..rank).map(|d| case.dim_axes(d)).collect();
    let split: Vec<(usize, usize)> = dims
        .iter()
        .enumerate()
        .flat_map(|(d, axes)| axes.iter().map(move |&a| (d, a)))
        .collect();
    let replicas: Vec<usize> = (0..case.mesh.sizes.len())
        .filter(|&a| {
            !split.iter().any(|&(_, s)| s == a)
                && !case.config.partial.contains(&axis_name(a))
                && !case.config.pin.iter().any(|(p, _)| *p == axis_name(a))
        })
        .collect();
    let mut policies: Vec<SplitPolicy> =
        case.config.dims.iter().map(|d| d.policy.clone()).collect();
    let mut partial = case.config.partial.clone();
    let big_partial: Vec<usize> = (0..partial.len())
        .filter(|&i| case.mesh.sizes[case.axis(&partial[i])] > 1)
        .collect();
    let big_replicas: Vec<usize> = replicas
        .iter()
        .copied()
        .filter(|&a| case.mesh.sizes[a] > 1)
        .collect();
    let op = pick(6);
    if op == 5 && !(big_partial.is_empty() && big_replicas.is_empty()) {
        // A partial axis becomes a replica axis, or the other way round.
        if !big_partial.is_empty() && (big_replicas.is_empty() || pick(2) == 0) {
            partial.remove(big_partial[pick(big_partial.len())]);
        } else {
            let a = big_replicas[pick(big_replicas.len())];
            partial.insert(pick(partial.len() + 1), axis_name(a));
        }
    } else if rank == 0 {
        return None;
    } else if split.is_empty() || op >= 4 {
        // Another policy on one dimension.
        let d = pick(rank);
        let kinds = [
            SplitPolicy::Even,
            SplitPolicy::Chunk,
            SplitPolicy::Balanced,
            SplitPolicy::Blocks(Vec::new()),
        ];
        // Blocks are sized below.
        policies[d] = kinds[pick(kinds.len())].clone();
    } else {
        // Prefer axes larger than 1: moving a size-1 axis changes nothing.
        let big: Vec<(usize, usize)> = split
            .iter()
            .copied()
            .filter(|&(_, a)| case.mesh.sizes[a] > 1)
            .collect();
        let from = if big.is_empty() { &split } else { &big };
        let (d, a) = from[pick(from.len())];
        let pos = dims[d].iter().position(|&x| x == a).unwrap();
        match op {
            0 if rank > 1 => {
                // Move the axis to another dimension.
                dims[d].remove(pos);
                let e = (d + 1 + pick(rank - 1)) % rank;
                let at = pick(dims[e].len() + 1);
                dims[e].insert(at, a);
            }
            1 if dims[d].len() > 1 => dims[d].reverse(),
            2 if !replicas.is_empty() => {
                // Swap with a replica axis.
                dims[d][pos] = replicas[pick(replicas.len())];
            }
            3 if rank > 1 => {
                // Swap with an axis (or the absence of one) of another dimension.
                let e = (d + 1 + pick(rank - 1)) % rank;
                if dims[e].is_empty() {
                    dims[d].remove(pos);
                    dims[e].push(a);
                } else {
                    let q = pick(dims[e].len());
                    let b = dims[e][q];
                    dims[e][q] = a;
                    dims[d][pos] = b;
                }
            }
            _ => {
                // Drop the axis: it holds replicas.
                dims[d].remove(pos);
            }
        }
    }
    let mut mutated = case.clone();
    mutated.config.partial = partial;
    for d in 0..rank {
        let n: u64 = dims[d].iter().map(|&a| case.mesh.sizes[a]).product();
        let size = case.shape[d];
        let policy = match &policies[d] {
            SplitPolicy::Blocks(b) if b.len() as u64 != n => {
                SplitPolicy::Blocks(random_blocks(splitmix(&mut state), size, n))
            }
            SplitPolicy::Even if !size.is_multiple_of(n) => SplitPolicy::Balanced,
            p => p.clone(),
        };
        mutated.config.dims[d] = DimSplit {
            axes: dims[d].iter().map(|&a| axis_name(a)).collect(),
            policy,
        };
    }
    Some(mutated)
}

/// `same_placement` holds exactly when the reference regions agree on every
/// rank and the ranks are grouped alike into partial-sum terms (pinned axes
/// are the same in both). Returns whether the placements differed.
#[track_caller]
fn check_mutation(case: &Case, seed: u64) -> Option<bool> {
    let mutated = mutate(case, seed)?;
    let (a, b) = (case.layout(), mutated.layout());
    let same_boxes = (0..case.mesh.rank_count()).all(|r| case.region(r) == mutated.region(r));
    let same_terms = case.partial_groups() == mutated.partial_groups();
    let same = same_boxes && same_terms;
    assert_eq!(
        a.same_placement(&b),
        same,
        "same_placement({a}, {b}) with equal boxes: {same_boxes}, equal partial terms: \
         {same_terms}\n{case:?}\n{mutated:?}"
    );
    assert_eq!(
        b.same_placement(&a),
        same,
        "same_placement is not symmetric"
    );
    Some(!same)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn regions_shards_and_holders(case in layout_case()) {
        check_model(&case);
    }

    #[test]
    fn notation_round_trips(case in layout_case()) {
        check_round_trips(&case);
    }

    #[test]
    fn same_placement_detects_moved_splits(case in layout_case(), seed in any::<u64>()) {
        check_mutation(&case, seed);
    }

    #[test]
    fn mindspore_layouts_round_trip(case in ms_case()) {
        check_ms_case(&case);
    }
}

/// `count` cases of `strategy` from a fixed seed.
fn fixed_cases<S: Strategy>(strategy: S, count: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// The round trips are not vacuous: on a fixed list of cases, each notation
/// exports a good share of the layouts (and the generator produces the
/// features it is meant to).
#[test]
fn round_trips_are_exercised() {
    let cases = fixed_cases(layout_case(), FIXED_CASES);
    let (mut jax, mut dt, mut ms, mut ms_opt, mut ms_blocks) = (0, 0, 0, 0, 0);
    let (mut partial, mut pinned, mut multi_pinned, mut ids, mut uneven, mut nested, mut scalars) =
        (0, 0, 0, 0, 0, 0, 0);
    for case in &cases {
        check_model(case);
        let e = check_round_trips(case);
        jax += usize::from(e.jax);
        dt += usize::from(e.dtensor);
        ms += usize::from(e.mindspore);
        ms_opt += usize::from(e.mindspore_opt);
        ms_blocks += usize::from(e.mindspore_blocks);
        partial += usize::from(!case.config.partial.is_empty());
        pinned += usize::from(!case.config.pin.is_empty());
        multi_pinned += usize::from(case.pins().windows(2).any(|w| w[0].0 == w[1].0));
        ids += usize::from(case.mesh.ids.is_some());
        uneven +=
            usize::from((0..case.shape.len()).any(|d| !is_even(&case.blocks(d), case.shape[d])));
        nested += usize::from(case.config.dims.iter().any(|d| d.axes.len() > 1));
        scalars += usize::from(case.shape.is_empty());
    }
    let n = cases.len();
    eprintln!(
        "{n} cases: exported jax {jax}, dtensor {dt}, mindspore {ms} \
         ({ms_opt} optimizer-sharded, {ms_blocks} with param_split_shape); \
         partial {partial}, pinned {pinned} ({multi_pinned} to several coordinates), device ids {ids}, uneven {uneven}, \
         nested {nested}, scalars {scalars}"
    );
    for (what, count, min_percent) in [
        ("jax round trips", jax, 15),
        ("dtensor round trips", dt, 25),
        ("mindspore round trips", ms, 20),
        // Exports keep an optimizer shard only where dimension 0 is split
        // several ways, which few random layouts are: at least one case.
        ("mindspore optimizer shards", ms_opt.min(1) * n, 1),
        ("mindspore param_split_shape", ms_blocks, 5),
        ("partial layouts", partial, 10),
        ("pinned layouts", pinned, 10),
        ("pinned to several coordinates of an axis", multi_pinned, 2),
        ("meshes with device ids", ids, 10),
        ("uneven layouts", uneven, 10),
        ("nested splits", nested, 10),
        ("scalars", scalars, 5),
    ] {
        assert!(
            count * 100 >= n * min_percent,
            "only {count} of {n} cases were {what} (want {min_percent}%)"
        );
    }
}

/// `same_placement` is not trivially true: most mutations of the splits or
/// partial axes change the placement, and those are told apart.
#[test]
fn mutations_are_detected() {
    let cases = fixed_cases((layout_case(), any::<u64>()), FIXED_CASES);
    let (mut mutated, mut differing) = (0, 0);
    for (case, seed) in &cases {
        if let Some(d) = check_mutation(case, *seed) {
            mutated += 1;
            differing += usize::from(d);
        }
    }
    eprintln!("{mutated} mutations, {differing} with a different placement");
    assert!(mutated * 100 >= cases.len() * 60, "{mutated} mutations");
    assert!(differing * 100 >= mutated * 40, "{differing} of {mutated}");
    assert!(differing < mutated, "no mutation kept the boxes");
}

// ---------------------------------------------------------------------------
// Random MindSpore layouts.

#[derive(Debug, Clone)]
struct MsCase {
    ms: MindSporeLayout,
    shape: Vec<u64>,
}

/// Sizes of the device-matrix axes no tensor-map entry uses, outermost first.
fn ms_replicated(ms: &MindSporeLayout) -> Vec<u64> {
    let n = ms.dev_matrix.len();
    (0..n)
        .filter(|&i| {
            let k = (n - 1 - i) as i64;
            !ms.tensor_map.iter().any(|e| e.contains(&k))
        })
        .map(|i| ms.dev_matrix[i])
        .collect()
}

/// True when `opt` groups of consecutive replica ranks are boxes: `opt` is
/// the product of some innermost replicated axes times a divisor of the
/// next one.
fn ms_opt_factors(replicated: &[u64], opt: u64) -> bool {
    let mut inner = 1;
    for &s in replicated.iter().rev() {
        if opt.is_multiple_of(inner) && s % (opt / inner) == 0 {
            return true;
        }
        inner *= s;
    }
    opt == inner
}

/// MindSpore's `opt_weight_shard_step`: over rank 0's optimizer group (the
/// first `size` ranks, ascending, whose coordinates are 0 on every axis the
/// tensor map uses), `(last - first) / (len - 1)`. Enumerates the ranks.
fn ms_group_step(ms: &MindSporeLayout) -> i64 {
    let n = ms.dev_matrix.len();
    let per_stage: u64 = ms.dev_matrix.iter().product();
    let used = |i: usize| {
        let k = (n - 1 - i) as i64;
        ms.tensor_map.iter().any(|e| e.contains(&k))
    };
    let group: Vec<u64> = (0..per_stage)
        .filter(|&r| {
            let c = ref_coords(&ms.dev_matrix, r);
            (0..n).all(|i| !used(i) || c[i] == 0)
        })
        .take(ms_ref_opt(ms) as usize)
        .collect();
    match group.as_slice() {
        [first, .., last] => ((last - first) / (group.len() as u64 - 1)) as i64,
        _ => 0,
    }
}

/// The optimizer-shard group size as MindSpore reads the two fields: `-1`
/// is every replica, a size or step of 0 is none.
fn ms_ref_opt(ms: &MindSporeLayout) -> u64 {
    match (ms.opt_weight_shard_size, ms.opt_weight_shard_step) {
        (_, 0) => 1,
        (-1, _) => ms_replicated(ms).iter().product(),
        (s, _) => s.max(1) as u64,
    }
}

/// An exported MindSpore layout records the step of its optimizer groups
/// (and none without an optimizer shard).
#[track_caller]
fn check_ms_step(ms: &MindSporeLayout) {
    let want = if ms.opt_weight_shard_size > 1 {
        ms_group_step(ms)
    } else {
        0
    };
    assert_eq!(ms.opt_weight_shard_step, want, "{ms:?}");
}

fn ms_case() -> impl Strategy<Value = MsCase> {
    (vec(1u64..=4, 1..=3), 0usize..=3, 1u64..=3)
        .prop_flat_map(|(dev, rank, stages)| {
            let n = dev.len();
            let target = if rank == 0 {
                Just(None).boxed()
            } else {
                prop_oneof![2 => (0..rank).prop_map(Some), 1 => Just(None)].boxed()
            };
            (
                Just(dev),
                vec(target, n),
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
                vec(1u64..=3, rank),
                any::<u64>(),
                (0..stages, Just(stages)),
            )
        })
        .prop_map(
            |(dev, targets, order, factors, opt_seed, (stage, stages))| {
                let n = dev.len();
                let rank = factors.len();
                // Map index k names dev[n - 1 - k]; entries of a dimension in
                // the generated order.
                let tensor_map: Vec<Vec<i64>> = (0..rank)
                    .map(|d| {
                        let e: Vec<i64> = order
                            .iter()
                            .filter(|&&k| targets[k] == Some(d))
                            .map(|&k| k as i64)
                            .collect();
                        if e.is_empty() { vec![-1] } else { e }
                    })
                    .collect();
                let mut ms = MindSporeLayout {
                    dev_matrix: dev.clone(),
                    tensor_map,
                    stage,
                    stage_count: stages,
                    ..MindSporeLayout::default()
                };
                let replicated: u64 = ms_replicated(&ms).iter().product();
                let divisors: Vec<u64> = (2..=replicated)
                    .filter(|d| replicated.is_multiple_of(*d))
                    .collect();
                if rank > 0 && !divisors.is_empty() && opt_seed % 3 != 0 {
                    // Now and then the whole group, as real files write it.
                    let opt = match opt_seed % 7 {
                        1 => -1,
                        _ => divisors[(opt_seed / 3) as usize % divisors.len()] as i64,
                    };
                    ms = ms.with_optimizer_shard(opt).unwrap();
                }
                let shape = (0..rank)
                    .map(|d| {
                        let split: u64 = ms.tensor_map[d]
                            .iter()
                            .filter(|&&k| k >= 0)
                            .map(|&k| dev[n - 1 - k as usize])
                            .product();
                        let opt = if d == 0 { ms_ref_opt(&ms) } else { 1 };
                        split * opt * factors[d]
                    })
                    .collect();
                MsCase { ms, shape }
            },
        )
}

/// Reference regions of a MindSpore layout, from the documented rules:
/// row-major ranks per stage, tensor map entries counted from the right
/// and outermost first, and optimizer groups of consecutive replica ranks.
fn ms_ref_regions(case: &MsCase) -> Vec<Option<Region>> {
    let ms = &case.ms;
    let n = ms.dev_matrix.len();
    let per_stage: u64 = ms.dev_matrix.iter().product();
    let opt = ms_ref_opt(ms);
    // Model-parallel slice of each local rank: block index per dimension.
    let mp: Vec<Vec<u64>> = (0..per_stage)
        .map(|r| {
            let c = ref_coords(&ms.dev_matrix, r);
            ms.tensor_map
                .iter()
                .map(|e| {
                    e.iter().filter(|&&k| k >= 0).fold(0, |acc, &k| {
                        let i = n - 1 - k as usize;
                        acc * ms.dev_matrix[i] + c[i]
                    })
                })
                .collect()
        })
        .collect();
    let local: Vec<Region> = (0..per_stage)
        .map(|r| {
            let mut offset = Vec::new();
            let mut extent = Vec::new();
            for (d, e) in ms.tensor_map.iter().enumerate() {
                let blocks: u64 = e
                    .iter()
                    .filter(|&&k| k >= 0)
                    .map(|&k| ms.dev_matrix[n - 1 - k as usize])
                    .product();
                let len = case.shape[d] / blocks;
                let (mut o, mut x) = (mp[r as usize][d] * len, len);
                if d == 0 && opt > 1 {
                    // Position among the ranks holding the same slice.
                    let pos = (0..r).filter(|&q| mp[q as usize] == mp[r as usize]).count() as u64;
                    x = len / opt;
                    o += (pos % opt) * x;
                }
                offset.push(o);
                extent.push(x);
            }
            Region::new(offset, extent)
        })
        .collect();
    (0..per_stage * ms.stage_count)
        .map(|r| (r / per_stage == ms.stage).then(|| local[(r % per_stage) as usize].clone()))
        .collect()
}

/// The MindSpore layout imports with the documented regions when its
/// optimizer shard factors into mesh axes, and survives
/// `to_layout -> from_layout -> to_layout`. Returns whether it imported.
#[track_caller]
fn check_ms_case(case: &MsCase) -> bool {
    let ms = &case.ms;
    let opt = ms_ref_opt(ms);
    let factors = ms_opt_factors(&ms_replicated(ms), opt);
    let layout = match ms.to_layout(&case.shape) {
        Ok(l) => l,
        Err(e) => {
            assert!(!factors, "mindspore layout refused: {e}\n{case:?}");
            return false;
        }
    };
    assert!(
        factors,
        "imported a non-box optimizer shard: {layout}\n{case:?}"
    );
    let regions: Vec<Option<Region>> = (0..layout.mesh().rank_count())
        .map(|r| layout.region_of(r))
        .collect();
    assert_eq!(regions, ms_ref_regions(case), "{layout}\n{case:?}");
    let back = MindSporeLayout::from_layout(&layout)
        .unwrap_or_else(|e| panic!("export of {layout} refused: {e}\n{case:?}"));
    check_ms_step(&back);
    let again = back
        .to_layout(&case.shape)
        .unwrap_or_else(|e| panic!("re-import of {back:?} refused: {e}\n{layout}\n{case:?}"));
    assert!(
        again.same_placement(&layout),
        "{again} vs {layout}\n{back:?}\n{case:?}"
    );
    true
}

#[test]
fn mindspore_generator_is_exercised() {
    let cases = fixed_cases(ms_case(), FIXED_CASES);
    let (mut imported, mut opt, mut staged, mut nested) = (0, 0, 0, 0);
    for case in &cases {
        if check_ms_case(case) {
            imported += 1;
            opt += usize::from(case.ms.opt_weight_shard_size > 1);
        }
        staged += usize::from(case.ms.stage_count > 1);
        nested += usize::from(!case.ms.is_flat());
    }
    let n = cases.len();
    eprintln!(
        "{n} mindspore cases: {imported} imported, {opt} of them optimizer-sharded; \
         {staged} staged, {nested} nested"
    );
    assert!(imported * 100 >= n * 70, "{imported} of {n} imported");
    assert!(opt * 100 >= n * 15, "{opt} optimizer-sharded");
    assert!(staged * 100 >= n * 30, "{staged} staged");
    assert!(nested * 100 >= n * 10, "{nested} nested");
}

// ---------------------------------------------------------------------------
// Fixed cases.

#[track_caller]
fn layout_on(sizes: &[u64], shape: &[u64], dims: Vec<DimSplit>) -> TensorLayout {
    let mesh = MeshSpec {
        sizes: sizes.to_vec(),
        ids: None,
    }
    .build();
    TensorLayout::new(mesh, shape, &LayoutConfig::new(dims)).unwrap()
}

#[test]
fn same_placement_examples() {
    let base = layout_on(
        &[2, 2],
        &[4, 4],
        vec![DimSplit::over(["a0", "a1"]), DimSplit::none()],
    );
    // Reordered axes, moved axes, a dropped axis: other boxes.
    for dims in [
        vec![DimSplit::over(["a1", "a0"]), DimSplit::none()],
        vec![DimSplit::over(["a0"]), DimSplit::over(["a1"])],
        vec![DimSplit::over(["a0"]), DimSplit::none()],
        vec![DimSplit::none(), DimSplit::over(["a0", "a1"])],
    ] {
        let other = layout_on(&[2, 2], &[4, 4], dims);
        assert!(!base.same_placement(&other), "{base} vs {other}");
        assert!(!other.same_placement(&base), "{other} vs {base}");
    }
    // Same boxes: one axis of 4 instead of two of 2, explicit equal blocks.
    let flat4 = layout_on(
        &[4],
        &[4, 4],
        vec![DimSplit::over(["a0"]), DimSplit::none()],
    );
    assert!(base.same_placement(&flat4));
    let blocks = layout_on(
        &[2, 2],
        &[4, 4],
        vec![
            DimSplit {
                axes: vec!["a0".into(), "a1".into()],
                policy: SplitPolicy::Blocks(vec![1, 1, 1, 1]),
            },
            DimSplit::none(),
        ],
    );
    assert!(base.same_placement(&blocks));
    // Other shape.
    let wider = layout_on(
        &[2, 2],
        &[4, 8],
        vec![DimSplit::over(["a0", "a1"]), DimSplit::none()],
    );
    assert!(!base.same_placement(&wider));
}

/// Regression (fixed in 7cbfe97): `MindSporeLayout::from_layout` refused a
/// layout whose dimension 0 is uneven and split by the innermost replicated
/// axis, taking the axis for an optimizer shard, though `tensor_map` plus
/// `param_split_shape` express it.
#[test]
fn mindspore_uneven_dim0_with_innermost_axis() {
    let layout = layout_on(
        &[2],
        &[3],
        vec![DimSplit {
            axes: vec!["a0".into()],
            policy: SplitPolicy::Chunk,
        }],
    );
    let ms = MindSporeLayout::from_layout(&layout)
        .unwrap_or_else(|e| panic!("export of {layout} refused: {e}"));
    assert!(
        ms.to_layout(&[3]).unwrap().same_placement(&layout),
        "{ms:?}"
    );
}

/// Regression (fixed in 7cbfe97): `MindSporeLayout::from_layout` took
/// `opt_weight_shard_step` from the innermost optimizer-shard axis even when
/// it has size 1; here the group {0, 2, 4} has stride 2 but the export
/// recorded 1, and its own `to_layout` refused the result.
#[test]
fn mindspore_opt_step_of_size1_axis() {
    // Dimension 0 is split by the size-1 axis d0 and then sharded 3 ways
    // over d2, so the export keeps the optimizer shard.
    let ms = MindSporeLayout {
        dev_matrix: vec![3, 2, 1],
        tensor_map: vec![vec![0], vec![1]],
        opt_weight_shard_size: 3,
        // Group {0, 2, 4}.
        opt_weight_shard_step: 2,
        ..MindSporeLayout::default()
    };
    let layout = ms.to_layout(&[6, 2]).unwrap();
    let back = MindSporeLayout::from_layout(&layout).unwrap();
    assert_eq!(back.opt_weight_shard_step, 2, "{back:?}");
    let again = back
        .to_layout(&[6, 2])
        .unwrap_or_else(|e| panic!("re-import of {back:?} refused: {e}"));
    assert!(again.same_placement(&layout));
}

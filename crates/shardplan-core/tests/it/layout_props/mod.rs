//! Property tests for the core layout model (meshes, layouts, regions,
//! holders, `same_placement`) and for the round trips through the MindSpore,
//! DTensor and JAX notations.
//!
//! Layouts are generated from random meshes by giving every mesh axis one
//! role: split a tensor dimension, hold partial sums, pin the tensor to one
//! coordinate, or hold replicas. Expected regions come from a small
//! reference model written here, independently of `src/`.
//!
//! This file holds the configuration and the small deterministic helpers;
//! `cases.rs` and `ms_cases.rs` generate layouts and model them, and the
//! properties are in `placement.rs`, `notations.rs` and `mindspore.rs`.

mod cases;
mod mindspore;
mod ms_cases;
mod notations;
mod placement;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRunner};

use shardplan_core::{DimSplit, LayoutConfig, SplitPolicy, TensorLayout};

/// Largest mesh generated.
pub(super) const MAX_TEST_RANKS: u64 = 64;
/// Cases per proptest property.
pub(super) const CASES: u32 = 512;
/// Cases of the deterministic (fixed-seed) coverage tests.
pub(super) const FIXED_CASES: usize = 600;

pub(super) fn config() -> Config {
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
pub(super) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random block sizes, `n` of them, summing to `size` (some may be zero).
pub(super) fn random_blocks(seed: u64, size: u64, n: u64) -> Vec<u64> {
    let mut state = seed;
    let mut cuts: Vec<u64> = (1..n).map(|_| splitmix(&mut state) % (size + 1)).collect();
    cuts.sort_unstable();
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(size);
    bounds.windows(2).map(|w| w[1] - w[0]).collect()
}

pub(super) fn axis_name(i: usize) -> String {
    format!("a{i}")
}

/// Every index of `shape`, row-major.
pub(super) fn all_indices(shape: &[u64]) -> Vec<Vec<u64>> {
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
pub(super) fn flat(shape: &[u64], index: &[u64]) -> usize {
    index
        .iter()
        .zip(shape)
        .fold(0u64, |acc, (&i, &s)| acc * s + i) as usize
}

/// Coordinates of `rank` in a row-major mesh of `sizes` (reference model).
pub(super) fn ref_coords(sizes: &[u64], rank: u64) -> Vec<u64> {
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
pub(super) fn ref_blocks(policy: &SplitPolicy, size: u64, n: u64) -> Option<Vec<(u64, u64)>> {
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

pub(super) fn is_even(blocks: &[(u64, u64)], size: u64) -> bool {
    ref_blocks(&SplitPolicy::Even, size, blocks.len() as u64).as_deref() == Some(blocks)
}

pub(super) fn is_chunk(blocks: &[(u64, u64)], size: u64) -> bool {
    ref_blocks(&SplitPolicy::Chunk, size, blocks.len() as u64).as_deref() == Some(blocks)
}

/// `count` cases of `strategy` from a fixed seed.
pub(super) fn fixed_cases<S: Strategy>(strategy: S, count: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

#[track_caller]
pub(super) fn layout_on(sizes: &[u64], shape: &[u64], dims: Vec<DimSplit>) -> TensorLayout {
    let mesh = cases::MeshSpec {
        sizes: sizes.to_vec(),
        ids: None,
    }
    .build();
    TensorLayout::new(mesh, shape, &LayoutConfig::new(dims)).unwrap()
}

//! Random MindSpore layouts and the reference model of their regions and
//! optimizer-shard steps.

use proptest::collection::vec;
use proptest::prelude::*;

use shardplan_core::Region;
use shardplan_core::notation::mindspore::MindSporeLayout;

use super::ref_coords;

// ---------------------------------------------------------------------------
// Random MindSpore layouts.

#[derive(Debug, Clone)]
pub(super) struct MsCase {
    pub(super) ms: MindSporeLayout,
    pub(super) shape: Vec<u64>,
}

/// Sizes of the device-matrix axes no tensor-map entry uses, outermost first.
pub(super) fn ms_replicated(ms: &MindSporeLayout) -> Vec<u64> {
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
pub(super) fn ms_opt_factors(replicated: &[u64], opt: u64) -> bool {
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
pub(super) fn ms_ref_opt(ms: &MindSporeLayout) -> u64 {
    match (ms.opt_weight_shard_size, ms.opt_weight_shard_step) {
        (_, 0) => 1,
        (-1, _) => ms_replicated(ms).iter().product(),
        (s, _) => s.max(1) as u64,
    }
}

/// An exported MindSpore layout records the step of its optimizer groups
/// (and none without an optimizer shard).
#[track_caller]
pub(super) fn check_ms_step(ms: &MindSporeLayout) {
    let want = if ms.opt_weight_shard_size > 1 {
        ms_group_step(ms)
    } else {
        0
    };
    assert_eq!(ms.opt_weight_shard_step, want, "{ms:?}");
}

pub(super) fn ms_case() -> impl Strategy<Value = MsCase> {
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
pub(super) fn ms_ref_regions(case: &MsCase) -> Vec<Option<Region>> {
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

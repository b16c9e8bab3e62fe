//! The generators of `shardplan::arbitrary` (for cargo-fuzz users) give
//! valid values: every strategy pair plans, verifies at the volume bound and
//! executes to the destination's slices; the generated shapes are often
//! uneven and the meshes of both sides differ in size.

use arbitrary::{Arbitrary, Unstructured};
use shardplan::arbitrary::{ArbitraryMesh, ArbitraryShape, StrategyPair};
use shardplan::{PlanConfig, ReplicaChoice, ShardStore, execute_plan, plan_transfer, verify_plan};

/// Deterministic pseudo-random bytes (xorshift), `n` of them.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn generated_pairs_plan_verify_and_execute() {
    let (mut uneven, mut n_to_m) = (0, 0);
    for seed in 0..300 {
        let data = bytes(seed, 256);
        let pair = StrategyPair::arbitrary(&mut Unstructured::new(&data)).unwrap();
        let (src, dst) = (&pair.src, &pair.dst);
        let plan = plan_transfer(src, dst, &PlanConfig::new(ReplicaChoice::Balance)).unwrap();
        let plan = verify_plan(plan, src, dst).unwrap_or_else(|d| panic!("seed {seed}: {d}"));
        assert_eq!(plan.stats().network_bytes, plan.lower_bound_bytes);
        let from = ShardStore::synthetic(src);
        let mut to = ShardStore::zeroed(dst);
        execute_plan(&plan, &from, &mut to).unwrap();
        to.check_synthetic(dst, src).unwrap();
        n_to_m += usize::from(src.mesh().rank_count() != dst.mesh().rank_count());
        uneven += src
            .layouts()
            .iter()
            .chain(dst.layouts())
            .filter(|l| {
                l.dims()
                    .iter()
                    .enumerate()
                    .any(|(d, dim)| l.shape()[d] % dim.block_count() != 0)
            })
            .count();
    }
    assert!(
        n_to_m > 100,
        "only {n_to_m} of 300 pairs change the rank count"
    );
    assert!(uneven > 50, "only {uneven} uneven layouts");
}

#[test]
fn meshes_and_shapes_stay_within_their_ranges() {
    for seed in 0..200 {
        let data = bytes(seed, 64);
        let mut u = Unstructured::new(&data);
        let mesh = ArbitraryMesh::arbitrary(&mut u).unwrap().0;
        assert!(mesh.axes().len() <= 3 && mesh.rank_count() <= 64);
        assert!(mesh.device_ids().is_some());
        let shape = ArbitraryShape::arbitrary(&mut u).unwrap().0;
        assert!(shape.len() <= 3 && shape.iter().all(|&s| (1..=12).contains(&s)));
    }
}

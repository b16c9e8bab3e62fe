//! Regions, shards, holders and `same_placement` of generated layouts
//! against the reference model, and fixed `same_placement` examples.

use proptest::prelude::*;

use shardplan_core::{DimSplit, SplitPolicy};

use super::cases::{Case, check_model, layout_case};
use super::{FIXED_CASES, axis_name, config, fixed_cases, layout_on, random_blocks, splitmix};

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
    fn same_placement_detects_moved_splits(case in layout_case(), seed in any::<u64>()) {
        check_mutation(&case, seed);
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

//! Unit tests of tensor layouts: split policies, constructors, pins and boxes.

use super::*;
use crate::geometry::Region;

fn mesh(axes: &[(&str, u64)]) -> Arc<DeviceMesh> {
    Arc::new(DeviceMesh::new(axes.iter().copied()).unwrap())
}

#[track_caller]
fn check_blocks(policy: SplitPolicy, size: u64, n: u64, expect: &[u64]) {
    let b = policy.bounds(size, n, 0).unwrap();
    let sizes: Vec<u64> = b.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(sizes, expect, "{policy} {size}/{n}");
}

#[test]
fn split_policies() {
    check_blocks(SplitPolicy::Even, 8, 4, &[2, 2, 2, 2]);
    check_blocks(SplitPolicy::Chunk, 10, 4, &[3, 3, 3, 1]);
    check_blocks(SplitPolicy::Chunk, 5, 4, &[2, 2, 1, 0]);
    check_blocks(SplitPolicy::Chunk, 2, 4, &[1, 1, 0, 0]);
    check_blocks(SplitPolicy::Balanced, 10, 4, &[3, 3, 2, 2]);
    check_blocks(SplitPolicy::Blocks(vec![3, 5]), 8, 2, &[3, 5]);
    assert!(SplitPolicy::Even.bounds(6, 4, 0).is_err());
    assert!(SplitPolicy::Blocks(vec![3, 4]).bounds(8, 2, 0).is_err());
    assert!(SplitPolicy::Blocks(vec![8]).bounds(8, 2, 0).is_err());
    assert!(
        SplitPolicy::Blocks(vec![u64::MAX, 2])
            .bounds(8, 2, 0)
            .is_err()
    );
}

#[test]
fn nested_axes_outermost_first() {
    let m = mesh(&[("a", 2), ("b", 2)]);
    let cfg = LayoutConfig::new(vec![DimSplit::over(["b", "a"]), DimSplit::none()]);
    let l = TensorLayout::new(m, &[8, 2], &cfg).unwrap();
    // Block index = b * 2 + a; rank = a * 2 + b.
    let rows: Vec<u64> = (0..4)
        .map(|r| l.region_of(r).unwrap().offset()[0])
        .collect();
    assert_eq!(rows, vec![0, 4, 2, 6]);
}

#[test]
fn pin_and_partial() {
    let m = mesh(&[("pp", 2), ("dp", 2), ("tp", 2)]);
    let cfg = LayoutConfig::new(vec![DimSplit::over(["tp"])])
        .with_partial(["dp"])
        .with_pin([("pp", 1)]);
    let l = TensorLayout::new(m, &[4], &cfg).unwrap();
    assert!(l.region_of(0).is_none());
    assert_eq!(l.region_of(5).unwrap().to_string(), "[2..4]");
    assert_eq!(l.holders(&[3]).unwrap(), vec![5, 7]);
    assert_eq!(l.replica_count(), 2);
    assert_eq!(l.to_string(), "[tp] partial(dp) at pp=1");
}

#[test]
fn pin_to_several_stages() {
    // A tied embedding on the first and last of 4 stages.
    let m = mesh(&[("pp", 4), ("tp", 2)]);
    let stages = [("pp", 3), ("pp", 0), ("pp", 3)];
    let cfg = LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()]).with_pin(stages);
    let l = TensorLayout::new(m.clone(), &[4, 2], &cfg).unwrap();
    let holding: Vec<u64> = (0..8).filter(|&r| l.holds(r)).collect();
    assert_eq!(holding, vec![0, 1, 6, 7]);
    assert_eq!(l.region_of(7).unwrap().to_string(), "[2..4, 0..2]");
    assert_eq!(l.holders(&[2, 1]).unwrap(), vec![1, 7]);
    assert_eq!(l.replica_count(), 2);
    assert_eq!(l.pin(), &[(0, 0), (0, 3)]);
    assert_eq!(l.to_string(), "[tp, -] at pp=0|3");
    assert_eq!(
        TensorLayout::new(m.clone(), &[4, 2], &l.to_config()).unwrap(),
        l
    );
    let split: Vec<String> = l.split_pins().iter().map(|x| x.to_string()).collect();
    assert_eq!(split, ["[tp, -] at pp=0", "[tp, -] at pp=3"]);
    // Every stage listed is no pin at all.
    let all = cfg.clone().with_pin((0..4).map(|c| ("pp", c)));
    let l = TensorLayout::new(m.clone(), &[4, 2], &all).unwrap();
    assert!(l.pin().is_empty());
    assert_eq!(l.replica_axes(), vec![0]);
    // Still one role per axis: a split axis cannot also pin.
    let bad = cfg.with_pin([("pp", 0), ("tp", 1)]);
    assert!(TensorLayout::new(m, &[4, 2], &bad).is_err());
}

#[test]
fn constructor_errors() {
    let m = mesh(&[("dp", 2), ("tp", 2)]);
    let cases: Vec<(LayoutConfig, &[u64], &str)> = vec![
        (
            LayoutConfig::new(vec![DimSplit::over(["xx"])]),
            &[4],
            "not on the mesh",
        ),
        (
            LayoutConfig::new(vec![DimSplit::over(["tp", "tp"])]),
            &[4],
            "twice",
        ),
        (
            LayoutConfig::new(vec![DimSplit::over(["tp"])]).with_partial(["tp"]),
            &[4],
            "twice",
        ),
        (
            LayoutConfig::new(vec![DimSplit::none()]).with_pin([("dp", 2)]),
            &[4],
            "beyond",
        ),
        (LayoutConfig::new(vec![]), &[4], "1 dimension"),
        (
            LayoutConfig::new(vec![DimSplit::none(); 2]),
            &[u64::MAX, 4],
            "overflow",
        ),
    ];
    for (cfg, shape, needle) in cases {
        let err = TensorLayout::new(m.clone(), shape, &cfg)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{cfg:?}: {err}");
    }
}

#[test]
fn boxes_give_regions_and_holders() {
    let m = mesh(&[("r", 4)]);
    let b = |o: &[u64], e: &[u64]| Region::new(o.to_vec(), e.to_vec());
    // A brick wall: no grid of axes describes it.
    let l = TensorLayout::from_boxes(
        m.clone(),
        &[2, 4],
        [
            (0, b(&[0, 0], &[1, 3])),
            (1, b(&[0, 3], &[1, 1])),
            (2, b(&[1, 0], &[1, 1])),
            (3, b(&[1, 1], &[1, 3])),
        ],
    )
    .unwrap();
    assert!(l.is_explicit());
    assert_eq!(l.holders(&[0, 2]).unwrap(), vec![0]);
    assert_eq!(l.holders(&[1, 2]).unwrap(), vec![3]);
    assert_eq!(l.replica_count(), 1);
    assert_eq!(l.to_string(), "boxes(4 distinct on 4 rank(s))");
    // The grid of every boundary: rows 0|1, columns 0|1|3|4.
    let cuts: Vec<u64> = (0..l.dims()[1].block_count())
        .map(|k| l.dims()[1].block(k).1)
        .collect();
    assert_eq!(cuts, vec![1, 3, 4]);
    // A 0-dimensional tensor on two ranks, one rank holding nothing.
    let s = TensorLayout::from_boxes(m, &[], [(1, b(&[], &[])), (3, b(&[], &[]))]).unwrap();
    assert_eq!(s.holders(&[]).unwrap(), vec![1, 3]);
    assert!(!s.holds(0) && s.holds(3));
    assert_eq!(s.replica_count(), 2);
}

#[test]
fn bad_boxes_are_refused() {
    let m = mesh(&[("r", 2)]);
    let b = |o: &[u64], e: &[u64]| Region::new(o.to_vec(), e.to_vec());
    let whole = b(&[0, 0], &[4, 2]);
    type Case = (Vec<(u64, Region)>, fn(&LayoutError) -> bool);
    let cases: Vec<Case> = vec![
        (vec![(2, whole.clone())], |e| {
            matches!(e, LayoutError::RankOutOfRange { rank: 2, .. })
        }),
        (vec![(0, b(&[0], &[4]))], |e| {
            matches!(
                e,
                LayoutError::BoxDims {
                    rank: 0,
                    found: 1,
                    expected: 2
                }
            )
        }),
        (vec![(0, whole.clone()), (0, whole.clone())], |e| {
            matches!(e, LayoutError::BoxTwice { rank: 0 })
        }),
        (vec![(1, b(&[3, 0], &[2, 2]))], |e| {
            matches!(e, LayoutError::BoxOutside { rank: 1, .. })
        }),
        (vec![(1, b(&[u64::MAX - 1, 0], &[1, 2]))], |e| {
            matches!(e, LayoutError::BoxOutside { rank: 1, .. })
        }),
        (
            vec![(0, b(&[0, 0], &[3, 2])), (1, b(&[2, 0], &[2, 2]))],
            |e| {
                matches!(
                    e,
                    LayoutError::BoxOverlap {
                        first: 0,
                        second: 1,
                        ..
                    }
                )
            },
        ),
        (
            vec![(0, b(&[0, 0], &[3, 2]))],
            |e| matches!(e, LayoutError::BoxGap { covered: 6, total: 8, missing } if missing == &[3, 0]),
        ),
    ];
    for (boxes, expected) in cases {
        let err = TensorLayout::from_boxes(m.clone(), &[4, 2], boxes.clone()).unwrap_err();
        assert!(expected(&err), "{boxes:?}: {err:?}");
    }
}

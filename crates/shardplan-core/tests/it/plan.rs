//! Planner and verifier: every plan verifies and meets the volume bound;
//! corrupted plans are rejected with the tensor, rank and box named.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use shardplan_core::{
    DType, DeviceMesh, DimSplit, ExecConfig, LayoutConfig, PieceFault, PlanConfig, PlanDefect,
    ReplicaChoice, ShardStore, SlicePlan, SplitPolicy, Strategy, TensorFault, TensorInfo,
    TensorLayout, check_plan, execute_plan, execute_plan_with, plan_transfer, verify_plan,
};

/// A random mesh of 1 to 3 axes and at most 16 ranks, maybe with device ids.
fn mesh() -> impl proptest::strategy::Strategy<Value = Arc<DeviceMesh>> {
    (
        prop::collection::vec(1u64..=3, 0..=3),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(sizes, ids, seed)| {
            let m = DeviceMesh::new(sizes.iter().enumerate().map(|(i, &s)| (format!("a{i}"), s)))
                .unwrap();
            let m = if ids {
                // A rotation of 0..n: some devices shared with the other side.
                let n = m.rank_count();
                let k = seed % n;
                m.with_device_ids((0..n).map(|r| (r + k) % n).collect())
                    .unwrap()
            } else {
                m
            };
            Arc::new(m)
        })
}

/// A random layout of `shape` on `mesh`: each axis splits a dim, pins, or
/// replicates; policies random where the size allows.
fn layout(
    mesh: Arc<DeviceMesh>,
    shape: Vec<u64>,
    allow_partial: bool,
) -> impl proptest::strategy::Strategy<Value = TensorLayout> {
    let n = mesh.axes().len();
    (
        prop::collection::vec((0usize..=4, any::<u64>()), n),
        prop::collection::vec(0u8..3, shape.len()),
    )
        .prop_map(move |(roles, policies)| {
            let mut cfg = LayoutConfig::new(vec![DimSplit::none(); shape.len()]);
            for (a, (role, coord)) in roles.iter().enumerate() {
                let axis = &mesh.axes()[a];
                match role {
                    0 if !shape.is_empty() => {}
                    1 => cfg.pin.push((axis.name.clone(), coord % axis.size)),
                    4 if allow_partial && coord % 3 == 0 => cfg.partial.push(axis.name.clone()),
                    r if !shape.is_empty() && *r >= 2 => {
                        let d = (*r + *coord as usize) % shape.len();
                        cfg.dims[d].axes.push(axis.name.clone());
                    }
                    _ => {}
                }
            }
            for (d, p) in policies.iter().enumerate() {
                let n: u64 = cfg.dims[d]
                    .axes
                    .iter()
                    .map(|a| mesh.axis_size(mesh.axis_index(a).unwrap()))
                    .product();
                cfg.dims[d].policy = match p {
                    _ if shape[d].is_multiple_of(n) && *p == 0 => SplitPolicy::Even,
                    1 => SplitPolicy::Balanced,
                    _ => SplitPolicy::Chunk,
                };
            }
            TensorLayout::new(mesh.clone(), &shape, &cfg).unwrap()
        })
}

/// A layout given box by box: the tensor cut by random guillotine cuts
/// into at most one tile per rank, each tile on a distinct rank, the ranks
/// left over holding a copy of some tile or nothing (a DCP checkpoint's
/// chunks, an irregular sharding).
fn boxes_layout(mesh: Arc<DeviceMesh>, shape: Vec<u64>, mut seed: u64) -> TensorLayout {
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n.max(1)
    };
    let ranks = mesh.rank_count();
    let mut tiles = vec![shardplan_core::Region::whole(&shape)];
    for _ in 1..=next(ranks) {
        let t = next(tiles.len() as u64) as usize;
        let cuttable: Vec<usize> = (0..shape.len())
            .filter(|&k| tiles[t].extent()[k] >= 2)
            .collect();
        if cuttable.is_empty() {
            continue;
        }
        let k = cuttable[next(cuttable.len() as u64) as usize];
        let (o, e) = (tiles[t].offset().to_vec(), tiles[t].extent().to_vec());
        let at = 1 + next(e[k] - 1);
        let (mut e1, mut o2, mut e2) = (e.clone(), o.clone(), e.clone());
        e1[k] = at;
        o2[k] += at;
        e2[k] -= at;
        tiles[t] = shardplan_core::Region::new(o, e1);
        tiles.push(shardplan_core::Region::new(o2, e2));
    }
    // A random order of the ranks: the first ones take the tiles.
    let mut order: Vec<u64> = (0..ranks).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, next(i as u64 + 1) as usize);
    }
    let mut boxes: Vec<(u64, shardplan_core::Region)> = Vec::new();
    for (i, &r) in order.iter().enumerate() {
        match tiles.get(i) {
            Some(t) => boxes.push((r, t.clone())),
            None if next(2) == 0 => {
                boxes.push((r, tiles[next(tiles.len() as u64) as usize].clone()))
            }
            None => {}
        }
    }
    TensorLayout::from_boxes(mesh, &shape, boxes).unwrap()
}

/// Every dtype but bool, whose partial sums cannot be reduced.
const DTYPES: [DType; 12] = {
    let mut out = [DType::F64; 12];
    let mut i = 0;
    while i < 12 {
        out[i] = DType::ALL[i];
        i += 1;
    }
    out
};

/// A layout of mesh axes, or (one time in three) one given box by box.
fn either(
    mesh: Arc<DeviceMesh>,
    shape: Vec<u64>,
    allow_partial: bool,
) -> impl proptest::strategy::Strategy<Value = TensorLayout> {
    let (m, s) = (mesh.clone(), shape.clone());
    prop_oneof![
        2 => layout(mesh, shape, allow_partial),
        1 => any::<u64>().prop_map(move |seed| boxes_layout(m.clone(), s.clone(), seed)),
    ]
}

/// Two strategies over the same 1 to 3 random tensors.
fn strategy_pair() -> impl proptest::strategy::Strategy<Value = (Strategy, Strategy)> {
    strategy_pair_with(true)
}

/// Two strategies over the same 1 to 3 random tensors; the source holds
/// partial sums only when `allow_partial`.
pub(crate) fn strategy_pair_with(
    allow_partial: bool,
) -> impl proptest::strategy::Strategy<Value = (Strategy, Strategy)> {
    (
        mesh(),
        mesh(),
        prop::collection::vec((prop::collection::vec(1u64..=9, 0..=3), 0usize..12), 1..=3),
    )
        .prop_flat_map(move |(sm, dm, tensors)| {
            let infos: Vec<TensorInfo> = tensors
                .iter()
                .enumerate()
                .map(|(i, (shape, dt))| TensorInfo {
                    name: format!("t{i}"),
                    shape: shape.clone(),
                    dtype: DTYPES[*dt],
                })
                .collect();
            let sl: Vec<_> = infos
                .iter()
                .map(|t| either(sm.clone(), t.shape.clone(), allow_partial))
                .collect();
            let dl: Vec<_> = infos
                .iter()
                .map(|t| either(dm.clone(), t.shape.clone(), false))
                .collect();
            (Just(infos), Just(sm), Just(dm), sl, dl)
        })
        .prop_map(|(infos, sm, dm, sl, dl)| {
            (
                Strategy::new("src", sm, infos.clone(), sl).unwrap(),
                Strategy::new("dst", dm, infos, dl).unwrap(),
            )
        })
}

fn plan(src: &Strategy, dst: &Strategy, choice: ReplicaChoice) -> SlicePlan {
    plan_transfer(src, dst, &PlanConfig::new(choice)).unwrap()
}

/// Corruptions of one piece; each must make the plan invalid.
#[derive(Debug, Clone, Copy)]
enum Corruption {
    Drop,
    Duplicate,
    ShiftBox,
    WrongSource,
    WrongDType,
    FlipLocal,
    WrongLocalOffset,
}

const CORRUPTIONS: [Corruption; 7] = [
    Corruption::Drop,
    Corruption::Duplicate,
    Corruption::ShiftBox,
    Corruption::WrongSource,
    Corruption::WrongDType,
    Corruption::FlipLocal,
    Corruption::WrongLocalOffset,
];

/// Applies `c` to piece `i` of tensor `t`; `None` when it does not apply
/// (e.g. no rank lacks the piece's elements).
fn corrupt(
    plan: &SlicePlan,
    src: &Strategy,
    t: usize,
    i: usize,
    c: Corruption,
) -> Option<SlicePlan> {
    let mut p = plan.clone();
    let tp = &mut p.tensors[t];
    let piece = tp.pieces[i].clone();
    match c {
        Corruption::Drop => {
            tp.pieces.remove(i);
        }
        Corruption::Duplicate => tp.pieces.push(piece),
        Corruption::ShiftBox => {
            let k = piece.dst_box.extent().iter().position(|_| true)?;
            let mut off = piece.dst_box.offset().to_vec();
            off[k] += 1;
            tp.pieces[i].dst_box =
                shardplan_core::Region::new(off, piece.dst_box.extent().to_vec());
        }
        Corruption::WrongSource => {
            let sl = src.layout(&tp.name).unwrap();
            // A rank that does not hold these elements at that offset.
            let r = (0..src.mesh().rank_count()).find(|&r| {
                sl.region_of(r).is_none_or(|h| {
                    !h.contains_region(&piece.dst_box)
                        || piece.dst_box.relative_to(&h) != piece.src_box
                })
            })?;
            tp.pieces[i].src_rank = r;
        }
        Corruption::WrongDType => {
            tp.dtype = if tp.dtype == DType::F32 {
                DType::I32
            } else {
                DType::F32
            };
        }
        Corruption::FlipLocal => tp.pieces[i].local = !piece.local,
        Corruption::WrongLocalOffset => {
            let k = piece.dst_local_offset.iter().position(|_| true)?;
            tp.pieces[i].dst_local_offset[k] += 1;
        }
    }
    Some(p)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn plans_verify_and_meet_the_bounds((src, dst) in strategy_pair(), pick in any::<u64>()) {
        for choice in [ReplicaChoice::Balance, ReplicaChoice::MinFiles] {
            let p = plan(&src, &dst, choice);
            let v = check_plan(&p, &src, &dst);
            prop_assert!(v.is_ok(), "{choice:?}: {v:?}");
            let s = p.summary();
            prop_assert_eq!(s.total_bytes, s.lower_bound_bytes);
            prop_assert_eq!(v.unwrap().network_bytes, s.lower_bound_bytes);
            // The largest send is never below its bound.
            prop_assert!(s.max_send_bytes >= s.max_send_lower_bound_bytes, "{s:?}");
            // Executed on synthetic buffers, every destination holds exactly
            // its slice (partial sources reduced).
            let from = ShardStore::synthetic(&src);
            let mut to = ShardStore::zeroed(&dst);
            let vp = verify_plan(p.clone(), &src, &dst).unwrap();
            execute_plan(&vp, &from, &mut to).unwrap();
            let checked = to.check_synthetic(&dst, &src);
            prop_assert!(checked.is_ok(), "{checked:?}");
            // In parallel, into a reused store: the same bytes.
            let mut again = ShardStore::synthetic(&dst);
            execute_plan_with(&vp, &from, &mut again, &ExecConfig::parallel()).unwrap();
            prop_assert_eq!(&again, &to);
            if choice == ReplicaChoice::Balance {
                // Cells are cut only at whole rows, so a send may exceed the
                // fractional optimum by less than one row per holder boundary.
                let slack: u64 = p.tensors.iter().map(|t| {
                    t.pieces.iter().map(|pc| t.piece_bytes(pc)).max().unwrap_or(0)
                }).sum();
                prop_assert!(s.max_send_bytes <= s.max_send_lower_bound_bytes + slack, "{s:?}");
            }
            // Corrupting any single piece is caught.
            let pieces: Vec<(usize, usize)> = p.tensors.iter().enumerate()
                .flat_map(|(t, tp)| (0..tp.pieces.len()).map(move |i| (t, i))).collect();
            if pieces.is_empty() {
                continue;
            }
            let (t, i) = pieces[(pick % pieces.len() as u64) as usize];
            for c in CORRUPTIONS {
                if let Some(bad) = corrupt(&p, &src, t, i, c) {
                    prop_assert!(check_plan(&bad, &src, &dst).is_err(), "{c:?} of piece {i} of tensor {t} accepted");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    /// A layout of mesh axes rebuilt from its boxes is the same placement:
    /// the same holders of every element, and plans of the same volume.
    #[test]
    fn a_grid_given_as_boxes_plans_alike((src, dst) in strategy_pair()) {
        let boxed: Vec<TensorLayout> = src.tensors().iter().zip(src.layouts()).map(|(t, l)| {
            let boxes = (0..src.mesh().rank_count()).filter_map(|r| l.region_of(r).map(|b| (r, b)));
            TensorLayout::from_boxes(src.mesh().clone(), &t.shape, boxes).unwrap()
        }).collect();
        if src.layouts().iter().any(|l| !l.partial().is_empty()) {
            // Partial sums have no boxes of their own.
            return Ok(());
        }
        for ((t, l), b) in src.tensors().iter().zip(src.layouts()).zip(&boxed) {
            prop_assert!(l.same_placement(b), "{}", t.name);
            for r in 0..src.mesh().rank_count() {
                prop_assert_eq!(l.holds(r) && l.region_of(r).is_some(), b.region_of(r).is_some());
            }
        }
        let src_boxed = Strategy::new("boxed", src.mesh().clone(), src.tensors().to_vec(), boxed).unwrap();
        let (a, b) = (plan(&src, &dst, ReplicaChoice::Balance), plan(&src_boxed, &dst, ReplicaChoice::Balance));
        prop_assert_eq!(a.summary().total_bytes, b.summary().total_bytes);
        prop_assert!(check_plan(&b, &src_boxed, &dst).is_ok());
    }
}

fn rows(m: &Arc<DeviceMesh>, t: &TensorInfo, axes: &[&str]) -> TensorLayout {
    let cfg = LayoutConfig::new(vec![DimSplit::over(axes.iter().copied()), DimSplit::none()]);
    TensorLayout::new(m.clone(), &t.shape, &cfg).unwrap()
}

/// A dp2 x tp2 source (replicated over dp) to tp4: the fixed example for
/// the corruption messages.
fn example() -> (Strategy, Strategy, SlicePlan) {
    let t = TensorInfo {
        name: "w".into(),
        shape: vec![8, 4],
        dtype: DType::F32,
    };
    let sm = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 2)]).unwrap());
    let dm = Arc::new(DeviceMesh::new([("tp", 4)]).unwrap());
    let src = Strategy::new(
        "train",
        sm.clone(),
        vec![t.clone()],
        vec![rows(&sm, &t, &["tp"])],
    )
    .unwrap();
    let dst = Strategy::new(
        "infer",
        dm.clone(),
        vec![t.clone()],
        vec![rows(&dm, &t, &["tp"])],
    )
    .unwrap();
    let p = plan(&src, &dst, ReplicaChoice::Balance);
    (src, dst, p)
}

#[test]
fn corruptions_are_named() {
    let (src, dst, p) = example();
    assert!(check_plan(&p, &src, &dst).is_ok());
    // Rank 1 needs rows 2..4, held by sources 0 and 2, which share the
    // sending: row 2 from rank 0. Each corruption of that piece and the
    // words its message must contain.
    // Per corruption: the fault, and the words the message must contain
    // (it names the tensor, the rank and the box).
    type Fault = fn(&PlanDefect) -> bool;
    let cases: [(Corruption, Fault, &[&str]); 7] = [
        (
            Corruption::Drop,
            |d| {
                matches!(
                    d,
                    PlanDefect::Uncovered {
                        covered: 4,
                        needed: 8,
                        ..
                    }
                )
            },
            &["`w`", "rank 1", "[2..4, 0..4]", "cover 4 of its 8"],
        ),
        (
            Corruption::Duplicate,
            |d| matches!(d, PlanDefect::Overlap { dst_rank: 1, .. }),
            &["`w`", "rank 1", "[2..3, 0..4]", "overlap"],
        ),
        (
            Corruption::ShiftBox,
            |d| {
                matches!(
                    d,
                    PlanDefect::Piece {
                        fault: PieceFault::ExtentDiffers(_),
                        ..
                    }
                )
            },
            &["`w`", "rank 1", "[2..4, 1..5]"],
        ),
        (
            Corruption::WrongSource,
            |d| {
                matches!(
                    d,
                    PlanDefect::Piece {
                        fault: PieceFault::OtherElements { .. },
                        ..
                    }
                )
            },
            &["`w`", "rank 1", "[2..3, 0..4]", "other elements"],
        ),
        (
            Corruption::WrongDType,
            |d| {
                matches!(
                    d,
                    PlanDefect::Tensor {
                        fault: TensorFault::Mismatch { .. },
                        ..
                    }
                )
            },
            &["`w`", "i32", "f32"],
        ),
        (
            Corruption::FlipLocal,
            |d| {
                matches!(
                    d,
                    PlanDefect::Piece {
                        fault: PieceFault::LocalFlag { local: true },
                        ..
                    }
                )
            },
            &["`w`", "rank 1", "[2..3, 0..4]", "marked local"],
        ),
        (
            Corruption::WrongLocalOffset,
            |d| {
                matches!(
                    d,
                    PlanDefect::Piece {
                        fault: PieceFault::LocalOffset { .. },
                        ..
                    }
                )
            },
            &["`w`", "rank 1", "local offset"],
        ),
    ];
    let piece = p.tensors[0]
        .pieces
        .iter()
        .position(|pc| pc.dst_rank == 1 && pc.src_rank == 0)
        .unwrap();
    for (c, fault, needles) in cases {
        let mut bad = corrupt(&p, &src, 0, piece, c).unwrap();
        if let Corruption::ShiftBox = c {
            // Shift along dim 1 for a box still inside the tensor's rows.
            bad = p.clone();
            let pc = &mut bad.tensors[0].pieces[piece];
            pc.dst_box = shardplan_core::Region::new(vec![2, 1], vec![2, 4]);
        }
        let err: PlanDefect = check_plan(&bad, &src, &dst).unwrap_err();
        assert!(fault(&err), "{c:?}: {err:?}");
        let msg = err.to_string();
        for n in needles {
            assert!(msg.contains(n), "{c:?}: `{msg}` lacks `{n}`");
        }
    }
}

/// With `min-files`, a tensor kept on two stages (a tied embedding) is read
/// from the holder on the destination's own stage, as a replica is read
/// from the destination's own replica group.
#[test]
fn min_files_reads_a_tied_tensor_on_its_own_stage() {
    let t = TensorInfo {
        name: "tied".into(),
        shape: vec![4, 4],
        dtype: DType::F32,
    };
    let sm = Arc::new(DeviceMesh::new([("pp", 2), ("tp", 2)]).unwrap());
    let cfg = LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()])
        .with_pin([("pp", 0), ("pp", 1)]);
    let sl = TensorLayout::new(sm.clone(), &t.shape, &cfg).unwrap();
    let src = Strategy::new("src", sm, vec![t.clone()], vec![sl]).unwrap();
    // One destination rank on device 3 (stage 1, tp 1): rows 2..4 are on its
    // own device; rows 0..2 are on ranks 0 (stage 0) and 2 (stage 1).
    let dm = Arc::new(
        DeviceMesh::new([("r", 1)])
            .unwrap()
            .with_device_ids(vec![3])
            .unwrap(),
    );
    let dl = TensorLayout::replicated(dm.clone(), &t.shape).unwrap();
    let dst = Strategy::new("dst", dm, vec![t], vec![dl]).unwrap();
    let p = plan(&src, &dst, ReplicaChoice::MinFiles);
    check_plan(&p, &src, &dst).unwrap();
    let reads: Vec<(u64, bool)> = p.tensors[0]
        .pieces
        .iter()
        .map(|pc| (pc.src_rank, pc.local))
        .collect();
    assert_eq!(reads, vec![(2, false), (3, true)]);
}

#[test]
fn replicas_share_the_sending() {
    // Sources (dp, tp) hold rows 0..4 (tp 0) or 4..8 (tp 1); each tp4 rank
    // needs 2 rows of 16 bytes. Ranks 0 and 3 find them on their own
    // device; ranks 1 and 2 receive 32 bytes each, and the two replicas of
    // each half send one row each.
    let (_, _, p) = example();
    let s = p.summary();
    assert_eq!(s.lower_bound_bytes, s.total_bytes);
    assert_eq!(s.total_bytes, 64);
    assert_eq!(s.local_bytes, 64);
    assert_eq!(s.max_send_lower_bound_bytes, 16);
    assert_eq!(s.max_send_bytes, 16);
    let senders: Vec<(u64, u64)> = p.tensors[0]
        .pieces
        .iter()
        .filter(|pc| !pc.local)
        .map(|pc| (pc.dst_rank, pc.src_rank))
        .collect();
    assert_eq!(senders, vec![(1, 0), (1, 2), (2, 1), (2, 3)]);
}

#[test]
fn verifier_sweeps_many_pieces() {
    // A 2-D tiling by 64 x 64 pieces: the sweep must accept it, and reject
    // the same tiling with one overlapping box.
    let t = TensorInfo {
        name: "g".into(),
        shape: vec![64, 64],
        dtype: DType::U8,
    };
    let sm = Arc::new(DeviceMesh::new([("r", 64), ("c", 64)]).unwrap());
    let dm = Arc::new(DeviceMesh::new(Vec::<(String, u64)>::new()).unwrap());
    let cfg = LayoutConfig::new(vec![DimSplit::over(["r"]), DimSplit::over(["c"])]);
    let src = Strategy::new(
        "grid",
        sm.clone(),
        vec![t.clone()],
        vec![TensorLayout::new(sm, &t.shape, &cfg).unwrap()],
    )
    .unwrap();
    let dst = Strategy::new(
        "one",
        dm.clone(),
        vec![t.clone()],
        vec![TensorLayout::replicated(dm, &t.shape).unwrap()],
    )
    .unwrap();
    let p = plan(&src, &dst, ReplicaChoice::Balance);
    assert_eq!(p.summary().pieces, 64 * 64);
    assert!(check_plan(&p, &src, &dst).is_ok());
    let mut bad = p.clone();
    bad.tensors[0].pieces[100].dst_box = shardplan_core::Region::new(vec![1, 37], vec![1, 1]);
    bad.tensors[0].pieces[100].dst_local_offset = vec![1, 37];
    bad.tensors[0].pieces[100].src_rank = 64 + 37;
    let err = check_plan(&bad, &src, &dst).unwrap_err();
    assert!(matches!(err, PlanDefect::Overlap { .. }), "{err}");
}

#[test]
fn forged_plans_are_rejected() {
    let (src, dst, p) = example();
    let mut twice = p.clone();
    twice.tensors.push(p.tensors[0].clone());
    assert!(matches!(
        check_plan(&twice, &src, &dst),
        Err(PlanDefect::Tensor {
            fault: TensorFault::Duplicate,
            ..
        })
    ));
    let mut bound = p.clone();
    bound.lower_bound_bytes += 1;
    assert!(matches!(
        check_plan(&bound, &src, &dst),
        Err(PlanDefect::Volume { .. })
    ));
    let mut ranks = p.clone();
    ranks.src_ranks = 99;
    assert!(check_plan(&ranks, &src, &dst).is_err());
}

#[test]
fn partial_sources_are_reduced() {
    // Rows over tp, partial sums over dp (a gradient before its
    // all-reduce): each destination element receives one summand per dp
    // rank and adds them up.
    for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64, DType::I32] {
        let t = TensorInfo {
            name: "g".into(),
            shape: vec![4, 3],
            dtype,
        };
        let sm = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 2)]).unwrap());
        let dm = Arc::new(DeviceMesh::new([("tp", 2)]).unwrap());
        let cfg =
            LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()]).with_partial(["dp"]);
        let sl = TensorLayout::new(sm.clone(), &t.shape, &cfg).unwrap();
        let src = Strategy::new("grads", sm, vec![t.clone()], vec![sl]).unwrap();
        let dst = Strategy::new(
            "infer",
            dm.clone(),
            vec![t.clone()],
            vec![rows(&dm, &t, &["tp"])],
        )
        .unwrap();
        let p = plan(&src, &dst, ReplicaChoice::Balance);
        check_plan(&p, &src, &dst).unwrap();
        assert!(p.tensors[0].pieces.iter().all(|pc| pc.reduce));
        // Rank 0 holds rows 0..2 of term dp=0 locally and receives term
        // dp=1 from rank 2; rank 1 likewise from ranks 1 (local) and 3.
        let s = p.summary();
        assert_eq!(
            (s.total_bytes, s.local_bytes),
            (6 * dtype.size_bytes() * 2, 6 * dtype.size_bytes() * 2)
        );
        let from = ShardStore::synthetic(&src);
        let mut to = ShardStore::zeroed(&dst);
        execute_plan(&verify_plan(p.clone(), &src, &dst).unwrap(), &from, &mut to).unwrap();
        to.check_synthetic(&dst, &src).unwrap();
        // Dropping one summand leaves a wrong sum: the verifier refuses the
        // plan, so it cannot be executed.
        let mut short = p.clone();
        short.tensors[0].pieces.retain(|pc| pc.src_rank != 2);
        assert!(check_plan(&short, &src, &dst).is_err());
        assert!(verify_plan(short, &src, &dst).is_err());
        // A wrong sum in the buffers is named by the check.
        to.buffer_mut(0, 0).unwrap().fill(0);
        let err = to.check_synthetic(&dst, &src).unwrap_err().to_string();
        assert!(err.contains("tensor `g`, rank 0"), "{err}");
    }
}

#[test]
fn a_billion_pieces_is_refused_before_planning() {
    // 2^20 source ranks each hold one row; 1024 destination ranks each want
    // a column block: every destination box crosses every source row, 2^30
    // cells in all.
    let t = TensorInfo {
        name: "huge".into(),
        shape: vec![1 << 20, 1 << 10],
        dtype: DType::U8,
    };
    let sm = Arc::new(DeviceMesh::new([("r", 1 << 20)]).unwrap());
    let dm = Arc::new(DeviceMesh::new([("c", 1 << 10)]).unwrap());
    let sl = TensorLayout::new(
        sm.clone(),
        &t.shape,
        &LayoutConfig::new(vec![DimSplit::over(["r"]), DimSplit::none()]),
    )
    .unwrap();
    let dl = TensorLayout::new(
        dm.clone(),
        &t.shape,
        &LayoutConfig::new(vec![DimSplit::none(), DimSplit::over(["c"])]),
    )
    .unwrap();
    let src = Strategy::new("rows", sm, vec![t.clone()], vec![sl]).unwrap();
    let dst = Strategy::new("cols", dm, vec![t], vec![dl]).unwrap();
    let err = plan_transfer(&src, &dst, &PlanConfig::new(ReplicaChoice::Balance)).unwrap_err();
    assert!(
        matches!(err, shardplan_core::PlanError::TooManyPieces { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("budget"), "{err}");
}

/// A verified plan run against stores of other strategies is refused by
/// what the stores lack, before any byte is written.
#[test]
fn store_mismatches_by_fault() {
    use shardplan_core::{ExecError, StoreMismatch};
    let mesh = |n: u64| Arc::new(DeviceMesh::new([("tp", n)]).unwrap());
    let tensor = |name: &str, dtype: DType| TensorInfo {
        name: name.into(),
        shape: vec![8],
        dtype,
    };
    let split = |m: &Arc<DeviceMesh>, t: &TensorInfo| {
        let cfg = LayoutConfig::new(vec![DimSplit::over(["tp"])]);
        let l = TensorLayout::new(m.clone(), &t.shape, &cfg).unwrap();
        Strategy::new("split", m.clone(), vec![t.clone()], vec![l]).unwrap()
    };
    let whole = |m: &Arc<DeviceMesh>, t: &TensorInfo| {
        let l = TensorLayout::replicated(m.clone(), &t.shape).unwrap();
        Strategy::new("whole", m.clone(), vec![t.clone()], vec![l]).unwrap()
    };
    let w = tensor("w", DType::F32);
    let (two, one) = (mesh(2), mesh(1));
    // The plan: rows split over two ranks, gathered whole on each.
    let (src, dst) = (split(&two, &w), whole(&two, &w));
    let plan = plan_transfer(&src, &dst, &PlanConfig::new(ReplicaChoice::Balance)).unwrap();
    let plan = verify_plan(plan, &src, &dst).unwrap();
    let other = whole(&two, &tensor("v", DType::F32));
    // (source store's strategy, destination store's strategy, fault)
    let cases: Vec<(Strategy, Strategy, StoreMismatch)> = vec![
        (other.clone(), dst.clone(), StoreMismatch::NotInSource),
        (src.clone(), other, StoreMismatch::NotInDestination),
        (
            src.clone(),
            whole(&one, &w),
            StoreMismatch::NoDestinationBuffer(1),
        ),
        (
            split(&one, &w),
            dst.clone(),
            StoreMismatch::NoSourceBuffer(1),
        ),
    ];
    for (s, d, want) in cases {
        let from = ShardStore::synthetic(&s);
        let mut to = ShardStore::zeroed(&d);
        let err = execute_plan(&plan, &from, &mut to).unwrap_err();
        assert_eq!(
            err,
            ExecError::Mismatch {
                tensor: "w".into(),
                fault: want.clone()
            },
            "{want}"
        );
    }
    // Destination buffers of half the rows: a piece falls outside.
    let from = ShardStore::synthetic(&src);
    let mut to = ShardStore::zeroed(&split(&two, &w));
    let err = execute_plan(&plan, &from, &mut to).unwrap_err();
    assert!(
        matches!(
            &err,
            ExecError::Mismatch {
                fault: StoreMismatch::OutsideBuffer { .. },
                ..
            }
        ),
        "{err}"
    );
    let code = miette::Diagnostic::code(&err).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("shardplan::execute::outside_buffer"));
    // Partial sums of bool plan and verify, but cannot be reduced.
    let b = tensor("b", DType::Bool);
    let cfg = LayoutConfig::new(vec![DimSplit::none()]).with_partial(["tp"]);
    let l = TensorLayout::new(two.clone(), &b.shape, &cfg).unwrap();
    let partial = Strategy::new("partial", two.clone(), vec![b.clone()], vec![l]).unwrap();
    let reduced = whole(&two, &b);
    let plan = plan_transfer(&partial, &reduced, &PlanConfig::new(ReplicaChoice::Balance)).unwrap();
    let plan = verify_plan(plan, &partial, &reduced).unwrap();
    let from = ShardStore::synthetic(&partial);
    let mut to = ShardStore::zeroed(&reduced);
    assert_eq!(
        execute_plan(&plan, &from, &mut to).unwrap_err(),
        ExecError::Mismatch {
            tensor: "b".into(),
            fault: StoreMismatch::BoolPartial
        }
    );
}

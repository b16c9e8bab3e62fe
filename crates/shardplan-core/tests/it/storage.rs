//! Storage maps: for random layouts and random ways of fusing, stacking and
//! padding what each rank holds into parameters, a plan carried out
//! straight into the parameters puts every logical element where the map
//! says, leaves padding zero, and still moves exactly the logical lower
//! bound; broken maps are refused with the fault named.

use std::sync::Arc;

use proptest::prelude::*;
use shardplan_core::storage::{Param, ParamStore, Segment, StorageMap, execute_into_params};
use shardplan_core::{
    DType, DeviceMesh, DimSplit, LayoutConfig, PlanConfig, Region, ReplicaChoice, ShardStore,
    Strategy, TensorInfo, TensorLayout, execute_plan, plan_transfer, verify_plan,
};

use crate::plan::strategy_pair_with;

/// A small deterministic generator of choices from one seed.
struct Choices(u64);

impl Choices {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// How a group of segments shares one parameter.
#[derive(Debug, Clone, Copy)]
enum Fuse {
    /// Along a new leading dimension, one slot each (experts).
    Stack,
    /// One after the other along dimension 0 (q, k, v; gate, up).
    Concat,
}

/// A random storage map of `dst`: each held box cut in one or two
/// segments, segments grouped into stacked or concatenated parameters with
/// random zero padding, sometimes a segment stored twice (a tied weight).
fn random_map(dst: &Strategy, seed: u64) -> Vec<Vec<Param>> {
    let mut c = Choices(seed);
    let mut ranks = Vec::new();
    for r in 0..dst.mesh().rank_count() {
        let mut segs: Vec<(String, DType, Region)> = Vec::new();
        for (info, layout) in dst.tensors().iter().zip(dst.layouts()) {
            let Some(held) = layout.region_of(r).filter(|h| !h.is_empty()) else {
                continue;
            };
            let cuttable: Vec<usize> = (0..held.rank())
                .filter(|&d| held.extent()[d] >= 2)
                .collect();
            if cuttable.is_empty() || c.below(2) == 0 {
                segs.push((info.name.clone(), info.dtype, held));
                continue;
            }
            let d = cuttable[c.below(cuttable.len() as u64) as usize];
            let at = 1 + c.below(held.extent()[d] - 1);
            let (mut e1, mut o2, mut e2) = (
                held.extent().to_vec(),
                held.offset().to_vec(),
                held.extent().to_vec(),
            );
            e1[d] = at;
            o2[d] += at;
            e2[d] -= at;
            segs.push((
                info.name.clone(),
                info.dtype,
                Region::new(held.offset().to_vec(), e1),
            ));
            segs.push((info.name.clone(), info.dtype, Region::new(o2, e2)));
        }
        if !segs.is_empty() && c.below(4) == 0 {
            let twin = segs[c.below(segs.len() as u64) as usize].clone();
            segs.push(twin);
        }
        let mut params = Vec::new();
        let mut i = 0;
        while i < segs.len() {
            let (dtype, rank) = (segs[i].1, segs[i].2.rank());
            let mut j = i + 1;
            while j < segs.len()
                && j - i < 3
                && segs[j].1 == dtype
                && segs[j].2.rank() == rank
                && c.below(2) == 0
            {
                j += 1;
            }
            let fuse = if rank > 0 && c.below(2) == 0 {
                Fuse::Concat
            } else {
                Fuse::Stack
            };
            params.push(fused(
                format!("p{}", params.len()),
                dtype,
                &segs[i..j],
                fuse,
                c.below(3),
            ));
            i = j;
        }
        ranks.push(params);
    }
    ranks
}

/// One parameter holding `segs`, fused as `fuse`, with `pad` extra zero
/// slots or rows.
fn fused(
    name: String,
    dtype: DType,
    segs: &[(String, DType, Region)],
    fuse: Fuse,
    pad: u64,
) -> Param {
    let rank = segs[0].2.rank();
    let widest = |d: usize| segs.iter().map(|s| s.2.extent()[d]).max().unwrap_or(0);
    let (shape, ats): (Vec<u64>, Vec<Vec<u64>>) = match fuse {
        Fuse::Stack => {
            let mut shape = vec![segs.len() as u64 + pad];
            shape.extend((0..rank).map(widest));
            let ats = (0..segs.len() as u64)
                .map(|k| [vec![k], vec![0; rank]].concat())
                .collect();
            (shape, ats)
        }
        Fuse::Concat => {
            let mut row = 0;
            let ats = segs
                .iter()
                .map(|s| {
                    let at = [vec![row], vec![0; rank - 1]].concat();
                    row += s.2.extent()[0];
                    at
                })
                .collect();
            let mut shape = vec![row + pad];
            shape.extend((1..rank).map(widest));
            (shape, ats)
        }
    };
    let segments = segs
        .iter()
        .zip(ats)
        .map(|(s, at)| Segment::new(s.0.clone(), s.2.clone(), at))
        .collect();
    Param::new(name, dtype, shape, segments)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Straight into parameters: every element where the map says, zero
    /// padding, the same bytes as executing into logical buffers and then
    /// packing, and the logical lower bound.
    #[test]
    fn plans_carried_out_into_parameters_place_every_element(
        (src, dst) in strategy_pair_with(false),
        seed in any::<u64>(),
    ) {
        let map = StorageMap::new(&dst, random_map(&dst, seed)).unwrap();
        let plan = plan_transfer(&src, &dst, &PlanConfig::new(ReplicaChoice::Balance)).unwrap();
        let plan = verify_plan(plan, &src, &dst).unwrap();
        let summary = plan.summary();
        prop_assert_eq!(summary.total_bytes, summary.lower_bound_bytes);

        let source = ShardStore::synthetic(&src);
        let mut direct = ParamStore::zeroed(&map);
        execute_into_params(&plan, &source, &map, &mut direct).unwrap();
        if let Err(e) = direct.check_synthetic(&map, &src) {
            return Err(TestCaseError::fail(e));
        }

        let mut logical = ShardStore::zeroed(&dst);
        execute_plan(&plan, &source, &mut logical).unwrap();
        let mut packed = ParamStore::zeroed(&map);
        packed.pack(&map, &logical).unwrap();
        prop_assert_eq!(packed, direct);
    }
}

/// q [8, 4] and k [4, 4] by rows over tp 2, f32.
fn qk_strategy() -> Strategy {
    let mesh = Arc::new(DeviceMesh::new([("tp", 2)]).unwrap());
    let rows = LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()]);
    let tensor = |name: &str, rows: u64| TensorInfo {
        name: name.into(),
        shape: vec![rows, 4],
        dtype: DType::F32,
    };
    let (q, k) = (tensor("q", 8), tensor("k", 4));
    let layouts = vec![
        TensorLayout::new(mesh.clone(), &q.shape, &rows).unwrap(),
        TensorLayout::new(mesh.clone(), &k.shape, &rows).unwrap(),
    ];
    Strategy::new("engine", mesh, vec![q, k], layouts).unwrap()
}

/// Rank `r`'s fused `qk` [6, 4]: its q rows, then its k rows.
fn qk(r: u64) -> Param {
    Param::new(
        "qk",
        DType::F32,
        vec![6, 4],
        vec![
            Segment::new("q", Region::new(vec![4 * r, 0], vec![4, 4]), vec![0, 0]),
            Segment::new("k", Region::new(vec![2 * r, 0], vec![2, 4]), vec![4, 0]),
        ],
    )
}

#[test]
fn broken_maps_are_refused_with_their_fault() {
    let strategy = qk_strategy();
    let with = |edit: &dyn Fn(&mut Vec<Vec<Param>>)| {
        let mut ranks = vec![vec![qk(0)], vec![qk(1)]];
        edit(&mut ranks);
        ranks
    };
    let cases: Vec<(&str, Vec<Vec<Param>>)> = vec![
        ("rank_count", with(&|m| m.truncate(1))),
        ("duplicate_param", with(&|m| m[1].push(qk(1)))),
        ("param_shape", with(&|m| m[1][0].shape = vec![u64::MAX, 4])),
        (
            "unknown_tensor",
            with(&|m| m[1][0].segments[0].tensor = "v".into()),
        ),
        ("dtype", with(&|m| m[1][0].dtype = DType::BF16)),
        (
            "outside_tensor",
            with(&|m| m[1][0].segments[0].logical = Region::new(vec![6, 0], vec![4, 4])),
        ),
        ("outside_param", with(&|m| m[1][0].shape = vec![5, 4])),
        ("overlap", with(&|m| m[1][0].segments[1].at = vec![3, 0])),
        (
            "not_held",
            with(&|m| m[1][0].segments[0].logical = Region::new(vec![2, 0], vec![4, 4])),
        ),
        (
            "unstored",
            with(&|m| {
                m[1][0].segments.pop();
            }),
        ),
    ];
    for (code, ranks) in cases {
        let e = StorageMap::new(&strategy, ranks).expect_err(code);
        let got = miette::Diagnostic::code(&e).map(|c| c.to_string());
        assert_eq!(
            got.as_deref(),
            Some(&*format!("shardplan::storage::{code}")),
            "{e}"
        );
    }
    assert!(StorageMap::new(&strategy, vec![vec![qk(0)], vec![qk(1)]]).is_ok());
}

#[test]
fn routes_name_the_parameter_offset_and_part() {
    let map = StorageMap::new(&qk_strategy(), vec![vec![qk(0)], vec![qk(1)]]).unwrap();
    // Rows 3..6 of q on rank 1: only rows 4..6 are rank 1's, at rows 0..2.
    let places = map.route("q", 1, &Region::new(vec![3, 0], vec![3, 4]));
    assert_eq!(places.len(), 1);
    assert_eq!((places[0].param, places[0].offset.clone()), (0, vec![0, 0]));
    assert_eq!(places[0].part, Region::new(vec![4, 0], vec![2, 4]));
    assert!(
        map.route("q", 0, &Region::new(vec![4, 0], vec![4, 4]))
            .is_empty()
    );
    assert!(
        map.route("v", 0, &Region::new(vec![0, 0], vec![1, 1]))
            .is_empty()
    );
}

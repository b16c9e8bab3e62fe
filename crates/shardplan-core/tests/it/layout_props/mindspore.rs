//! MindSpore layouts import with the documented regions and export back:
//! random ones, and fixed regressions.

use proptest::prelude::*;

use shardplan_core::notation::mindspore::MindSporeLayout;
use shardplan_core::{DimSplit, Region, SplitPolicy};

use super::ms_cases::{
    MsCase, check_ms_step, ms_case, ms_opt_factors, ms_ref_opt, ms_ref_regions, ms_replicated,
};
use super::{FIXED_CASES, config, fixed_cases, layout_on};

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

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mindspore_layouts_round_trip(case in ms_case()) {
        check_ms_case(&case);
    }
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

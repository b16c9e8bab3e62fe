//! Round trips of generated layouts through the JAX, DTensor and MindSpore
//! notations.

use proptest::prelude::*;

use shardplan_core::notation::dtensor;
use shardplan_core::notation::jax::PartitionSpec;
use shardplan_core::notation::mindspore::MindSporeLayout;

use super::cases::{Case, check_model, layout_case};
use super::ms_cases::check_ms_step;
use super::{FIXED_CASES, config, fixed_cases, is_even};

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

proptest! {
    #![proptest_config(config())]

    #[test]
    fn notation_round_trips(case in layout_case()) {
        check_round_trips(&case);
    }
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

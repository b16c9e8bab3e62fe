//! What MindSpore's files encode as MindSpore writes it: whole-group optimizer
//! shards and their steps, the empty TensorMap after a nested 1-D map, stage
//! axes of any name; written and read back.

use super::*;

/// Written in `format`, read back: the same slices on every rank.
#[track_caller]
fn round_trip(s: &shardplan::Strategy, format: StrategyFormat) -> Vec<u8> {
    let bytes = write_strategy_file(s, format).unwrap();
    let back = parse_strategy_file("written", &bytes)
        .unwrap()
        .to_strategy("back", s.tensors())
        .unwrap();
    assert!(
        back.layout("w")
            .unwrap()
            .same_placement(s.layout("w").unwrap()),
        "{format:?}: {} vs {}",
        back.layout("w").unwrap(),
        s.layout("w").unwrap()
    );
    bytes
}

/// Rank r's first row of `w` under the strategy.
fn rows(s: &shardplan::Strategy) -> Vec<u64> {
    let l = s.layout("w").unwrap();
    (0..l.mesh().rank_count())
        .map(|r| l.region_of(r).unwrap().offset()[0])
        .collect()
}

/// `opt_weight_shard_size: -1` (the whole group) and the step MindSpore
/// records over replicas on both sides of a model-parallel axis, as real
/// files hold them: read with the right slices, written and read back the
/// same in both forms.
#[test]
fn whole_group_shards_and_recorded_steps_round_trip() {
    // dev [2, 4, 2], the middle axis splits dim 1; rank 0's group is
    // {0, 1, 8, 9}, so MindSpore records step 9 / 3 = 3.
    let json = br#"{"current_stage": 0, "parallel_layout_item": {"w": {"dev_matrix": [2, 4, 2], "tensor_map": [-1, 1], "tensor_shape": [8, 4], "field": 0, "opt_weight_shard_step": 3, "opt_weight_shard_size": -1}}}"#;
    let f = parse_strategy_file("strategy.json", json).unwrap();
    let tensors = vec![TensorInfo {
        name: "w".into(),
        shape: vec![8, 4],
        dtype: DType::F32,
    }];
    let s = f.to_strategy("s", &tensors).unwrap();
    // Rank r's part of dim 0 is its index in its group of 4.
    assert_eq!(rows(&s), [0, 2, 0, 2, 0, 2, 0, 2, 4, 6, 4, 6, 4, 6, 4, 6]);
    for format in [StrategyFormat::Json, StrategyFormat::Protobuf] {
        round_trip(&s, format);
    }
    // A step no group gives is refused with the expected value.
    let with_step = |step: u32| {
        let text = String::from_utf8(json.to_vec()).unwrap().replace(
            "\"opt_weight_shard_step\": 3",
            &format!("\"opt_weight_shard_step\": {step}"),
        );
        parse_strategy_file("strategy.json", text.as_bytes())
            .unwrap()
            .to_strategy("s", &tensors)
    };
    let err = with_step(2).unwrap_err();
    assert!(
        matches!(
            err,
            StrategyLayoutError::Layout {
                source: LayoutError::MindSpore(MindSporeFault::StepMismatch {
                    step: 2,
                    recorded: 3,
                    ..
                }),
                ..
            }
        ),
        "{err:?}"
    );
    // Unsharded parameters as MindSpore writes them: step 0, size -1.
    let s0 = with_step(0).unwrap();
    assert_eq!(rows(&s0), [0; 16]);
    // Built in code with -1, exported and read back in both forms.
    let ms = MindSporeLayout {
        dev_matrix: vec![4, 2],
        tensor_map: vec![vec![-1], vec![0]],
        ..MindSporeLayout::default()
    }
    .with_optimizer_shard(-1)
    .unwrap();
    let s = one_tensor(&ms, &[8, 4]);
    assert_eq!(rows(&s), [0, 0, 2, 2, 4, 4, 6, 6]);
    for format in [StrategyFormat::Json, StrategyFormat::Protobuf] {
        round_trip(&s, format);
    }
}

/// The tensor maps of the first parameter of protobuf strategy bytes.
fn tensor_maps(bytes: &[u8]) -> Vec<Vec<i32>> {
    use prost::Message;
    shardplan::formats::mindspore::strategy::pb::ParallelStrategyMap::decode(bytes)
        .unwrap()
        .parallel_layout_item[0]
        .parallel_layouts
        .tensor_map
        .iter()
        .map(|t| t.dim.clone())
        .collect()
}

/// A 1-D tensor with a nested map is written as MindSpore writes it, with
/// an empty TensorMap after the one entry (MindSpore reads a single map as
/// flat), and read back; MindSpore's own bytes read the same.
#[test]
fn one_dim_nested_maps_carry_the_trailing_empty_map() {
    use prost::Message;
    use shardplan::formats::mindspore::strategy::pb;
    // Dim 0 over the two outer axes, the inner one replicated: no
    // optimizer shard can state it, so the map stays nested.
    let ms = MindSporeLayout {
        dev_matrix: vec![2, 2, 2],
        tensor_map: vec![vec![2, 1]],
        ..MindSporeLayout::default()
    };
    let s = one_tensor(&ms, &[8]);
    assert_eq!(rows(&s), [0, 0, 2, 2, 4, 4, 6, 6]);
    let bytes = round_trip(&s, StrategyFormat::Protobuf);
    assert_eq!(tensor_maps(&bytes), [vec![2, 1], vec![]]);
    // The flat 1-D map stays one TensorMap.
    let flat = MindSporeLayout {
        dev_matrix: vec![4],
        tensor_map: vec![vec![0]],
        ..MindSporeLayout::default()
    };
    let bytes = round_trip(&one_tensor(&flat, &[8]), StrategyFormat::Protobuf);
    assert_eq!(tensor_maps(&bytes), [vec![0]]);
    // MindSpore's own bytes for it read the same; without the padding the
    // single map is flat, a 2-D map, and does not fit.
    let written = |maps: Vec<Vec<i32>>| {
        pb::ParallelStrategyMap {
            current_stage: 0,
            parallel_strategy_item: Vec::new(),
            parallel_layout_item: vec![pb::ParallelLayoutItem {
                param_name: "w".into(),
                parallel_layouts: pb::ParallelLayouts {
                    dev_matrix: vec![pb::DevMatrix { dim: vec![2, 2, 2] }],
                    tensor_map: maps.into_iter().map(|dim| pb::TensorMap { dim }).collect(),
                    ..Default::default()
                },
            }],
        }
        .encode_to_vec()
    };
    let ours = parse_strategy_file("strategy.ckpt", &written(vec![vec![2, 1], vec![]]))
        .unwrap()
        .to_strategy("ms", s.tensors())
        .unwrap();
    assert!(
        ours.layout("w")
            .unwrap()
            .same_placement(s.layout("w").unwrap())
    );
    let t2 = vec![TensorInfo {
        name: "w".into(),
        shape: vec![8, 2],
        dtype: DType::F32,
    }];
    let flat2 = parse_strategy_file("strategy.ckpt", &written(vec![vec![2, 1]]))
        .unwrap()
        .to_strategy("ms", &t2)
        .unwrap();
    assert_eq!(flat2.layout("w").unwrap().to_string(), "[d2, d1]");
    // A 2-D nested map has one TensorMap per dimension and no padding.
    let two = MindSporeLayout {
        dev_matrix: vec![2, 2, 2],
        tensor_map: vec![vec![2, 1], vec![-1]],
        ..MindSporeLayout::default()
    };
    let bytes = round_trip(&one_tensor(&two, &[8, 2]), StrategyFormat::Protobuf);
    assert_eq!(tensor_maps(&bytes), [vec![2, 1], vec![-1]]);
}

/// A pipelined strategy whose stage axis is not called `stage` (a spec's
/// `pp`): a tensor on every stage is written once per stage, and the file
/// reads back with the same slices. A single stored tensor map is flat, as
/// MindSpore reads it: one that does not fit is refused, not reinterpreted.
#[test]
fn stage_axes_of_any_name_and_flat_single_maps() {
    let yaml = r#"
version: 1
meshes:
  m: {shape: [2, 2], axes: [pp, tp]}
tensors:
  - {name: layers.0.w, shape: [8, 4], dtype: f32}
  - {name: layers.1.w, shape: [8, 4], dtype: f32}
  - {name: norm, shape: [4], dtype: f32}
strategies:
  s:
    mesh: m
    rules:
      - {match: "layers.0.*", dims: [tp, null], at: {pp: 0}}
      - {match: "layers.1.*", dims: [tp, null], at: {pp: 1}}
      - {match: "norm", dims: replicated}
"#;
    let (spec, diags) = shardplan::spec::parse_spec("pp.yaml", yaml);
    let spec = spec.unwrap_or_else(|| panic!("{diags:?}"));
    let s = spec.strategy("s").unwrap();
    for format in [StrategyFormat::Json, StrategyFormat::Protobuf] {
        let bytes = write_strategy_file(s, format).unwrap();
        let f = parse_strategy_file("written", &bytes).unwrap();
        let norm = f.params.iter().find(|p| p.name == "norm").unwrap();
        assert_eq!(
            (norm.stage, norm.also_on.as_slice()),
            (0, &[1][..]),
            "{format:?}"
        );
        let back = f.to_strategy("s", s.tensors()).unwrap();
        for t in s.tensors() {
            assert!(
                back.layout(&t.name)
                    .unwrap()
                    .same_placement(s.layout(&t.name).unwrap()),
                "{format:?} {}",
                t.name
            );
        }
    }
    // `[1, 0]` on a 1-D tensor is a 2-D flat map to MindSpore.
    let json = br#"{"current_stage": 0, "parallel_layout_item": {"w": {"dev_matrix": [2, 2], "tensor_map": [1, 0], "tensor_shape": [8]}}}"#;
    let f = parse_strategy_file("strategy.json", json).unwrap();
    let t = vec![TensorInfo {
        name: "w".into(),
        shape: vec![8],
        dtype: DType::F32,
    }];
    let err = f.to_strategy("s", &t).unwrap_err();
    assert!(
        matches!(&err, StrategyLayoutError::TensorMapShape { parameter, shape, .. } if parameter == "w" && shape == &[8]),
        "{err:?}"
    );
}

//! Strategy files of every conformance case read as its `case.json` states;
//! names and parameters on several stages written and read back.

use super::*;

fn tensors(case: &Value) -> Vec<TensorInfo> {
    case["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, p)| TensorInfo {
            name: n.clone(),
            shape: serde_json::from_value(p["full_shape"].clone()).unwrap(),
            dtype: DType::F32,
        })
        .collect()
}

fn expected_layout(
    entry: &Value,
    stage: u64,
    stages: u64,
    shape: &[u64],
) -> shardplan::TensorLayout {
    let tensor_map = entry["tensor_map"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e {
            Value::Array(a) => a.iter().map(|x| x.as_i64().unwrap()).collect(),
            x => vec![x.as_i64().unwrap()],
        })
        .collect();
    MindSporeLayout {
        dev_matrix: serde_json::from_value(entry["dev_matrix"].clone()).unwrap(),
        tensor_map,
        opt_weight_shard_size: entry["opt_weight_shard_size"].as_i64().unwrap(),
        opt_weight_shard_step: entry["opt_weight_shard_step"].as_i64().unwrap(),
        param_split_shape: Vec::new(),
        stage,
        stage_count: stages,
    }
    .to_layout(shape)
    .unwrap()
}

#[test]
fn strategy_files_read_as_the_cases_state() {
    let mut files = 0;
    for dir in conformance_cases() {
        let case: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let name = case["name"].as_str().unwrap();
        for side in ["src", "dst"] {
            let info = &case[format!("{side}_strategy")];
            if info.is_null() || !info.is_object() {
                continue;
            }
            // The file to pass, and the per-stage files together.
            let mut sets: Vec<Vec<PathBuf>> =
                vec![vec![dir.join(info["file_to_pass"].as_str().unwrap())]];
            let stage_files: Vec<PathBuf> = info["stage_files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| dir.join(f.as_str().unwrap()))
                .collect();
            if stage_files.len() > 1 {
                sets.push(stage_files);
            }
            let stages = case[format!("{side}_pipeline_stages")].as_u64().unwrap();
            let layouts = &case[format!("{side}_layouts")];
            for set in sets {
                let paths: Vec<&Path> = set.iter().map(PathBuf::as_path).collect();
                let f = read_strategy_files(&paths).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(f.stage_count, stages, "{name} {side}");
                let all = tensors(&case);
                if name == "err_uneven_dim" {
                    // MindSpore would not cut it; neither do we.
                    let err = f.to_strategy(side, &all).unwrap_err();
                    assert!(
                        matches!(
                            err,
                            StrategyLayoutError::Layout {
                                source: LayoutError::UnevenSplit { .. },
                                ..
                            }
                        ),
                        "{err:?}"
                    );
                    continue;
                }
                let s = f
                    .to_strategy(side, &all)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                for t in &all {
                    let Some((stage, entry)) =
                        (0..stages).find_map(|k| layouts[k as usize].get(&t.name).map(|e| (k, e)))
                    else {
                        continue;
                    };
                    let want = expected_layout(entry, stage, stages, &t.shape);
                    assert!(
                        s.layout(&t.name).unwrap().same_placement(&want),
                        "{name} {side} {}",
                        t.name
                    );
                }
                // Written back in both forms, the layouts read the same.
                for format in [StrategyFormat::Json, StrategyFormat::Protobuf] {
                    let bytes = match write_strategy_file(&s, format) {
                        Ok(b) => b,
                        // Nested maps have no JSON form.
                        Err(e)
                            if format == StrategyFormat::Json
                                && matches!(e.fault, StrategyFileFault::SplitOverAxes { .. }) =>
                        {
                            continue;
                        }
                        Err(e) => panic!("{name}: {e}"),
                    };
                    let back = parse_strategy_file("written", &bytes)
                        .unwrap()
                        .to_strategy(side, &all)
                        .unwrap();
                    for t in &all {
                        assert!(
                            back.layout(&t.name)
                                .unwrap()
                                .same_placement(s.layout(&t.name).unwrap()),
                            "{name} {format:?} {}",
                            t.name
                        );
                    }
                }
                files += 1;
            }
        }
    }
    assert!(files >= 5);
}

#[test]
fn names_with_dashes_survive_the_merged_form() {
    let json = r#"{"current_stage": 1, "parallel_strategy_item": {}, "parallel_layout_item": {
        "0-model.layer-norm.weight": {"dev_matrix": [2], "tensor_map": [-1], "tensor_shape": [8], "field": 0, "opt_weight_shard_step": 0, "opt_weight_shard_size": 0},
        "1-lm-head": {"dev_matrix": [2], "tensor_map": [0, -1], "tensor_shape": [8, 4], "field": 0, "opt_weight_shard_step": 0, "opt_weight_shard_size": 0}}}"#;
    let f = parse_strategy_file("merged.json", json.as_bytes()).unwrap();
    let names: Vec<(&str, u64)> = f
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.stage))
        .collect();
    assert_eq!(names, vec![("model.layer-norm.weight", 0), ("lm-head", 1)]);
    assert_eq!(f.stage_count, 2);
    // Not merged: a single name with a dash keeps it.
    let json = r#"{"current_stage": 0, "parallel_layout_item": {"lm-head": {"dev_matrix": [2], "tensor_map": [0, -1], "tensor_shape": [8, 4]}}}"#;
    let f = parse_strategy_file("one.json", json.as_bytes()).unwrap();
    assert_eq!(f.params[0].name, "lm-head");
}

/// One stage whose every name looks stage-prefixed (`0-layer0.w`, as a
/// merged file read once more would give): written and read back, in both
/// forms, each name and layout survives. The fuzzer found the plain form
/// losing the `0-`.
#[test]
fn names_that_look_stage_prefixed_round_trip() {
    for names in [&["0-layer0.w"][..], &["0-a", "12-b"], &["0-a", "b"]] {
        let json = format!(
            r#"{{"current_stage": 0, "parallel_layout_item": {{{}}}}}"#,
            names
                .iter()
                .map(|n| format!(
                    r#""0-{n}": {{"dev_matrix": [2], "tensor_map": [-1, 0], "tensor_shape": [8, 4]}}"#
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let file = parse_strategy_file("merged.json", json.as_bytes()).unwrap();
        let tensors = file.tensors(DType::F32).unwrap();
        let got: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(got, names);
        let s = file.to_strategy("s", &tensors).unwrap();
        for format in [StrategyFormat::Json, StrategyFormat::Protobuf] {
            let bytes = write_strategy_file(&s, format).unwrap();
            let back = parse_strategy_file("written", &bytes).unwrap();
            let back_names: Vec<&str> = back.params.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(back_names, names, "{format:?}");
            let back = back.to_strategy("back", &tensors).unwrap();
            for t in &tensors {
                let (a, b) = (s.layout(&t.name).unwrap(), back.layout(&t.name).unwrap());
                assert!(a.same_placement(b), "{format:?} {}: {a} vs {b}", t.name);
                assert_eq!(b.region_of(0).unwrap().extent(), [8, 2], "{}", t.name);
            }
        }
    }
}

/// A parameter on two stages (a tied embedding in the first and the last
/// stage's file) is one tensor held by both stages, in the merged form and
/// across per-stage files, and is written back once per stage.
#[test]
fn a_parameter_on_two_stages_is_one_tensor() {
    let entry = |name: &str, map: &str| {
        format!(
            r#""{name}": {{"dev_matrix": [2], "tensor_map": {map}, "tensor_shape": [8, 4], "field": 0, "opt_weight_shard_step": 0, "opt_weight_shard_size": 0}}"#
        )
    };
    let file = |stage: u64, entries: &[String]| {
        format!(
            r#"{{"current_stage": {stage}, "parallel_strategy_item": {{}}, "parallel_layout_item": {{{}}}}}"#,
            entries.join(", ")
        )
    };
    let tensors = vec![
        TensorInfo {
            name: "tied".into(),
            shape: vec![8, 4],
            dtype: DType::F32,
        },
        TensorInfo {
            name: "mid".into(),
            shape: vec![8, 4],
            dtype: DType::F32,
        },
    ];
    let merged = file(
        3,
        &[
            entry("0-tied", "[0, -1]"),
            entry("1-mid", "[-1, 0]"),
            entry("3-tied", "[0, -1]"),
        ],
    );
    let f = parse_strategy_file("merged.json", merged.as_bytes()).unwrap();
    assert_eq!(f.params.len(), 2);
    assert_eq!(
        (f.params[0].stage, f.params[0].also_on.clone()),
        (0, vec![3])
    );
    let s = f.to_strategy("s", &tensors).unwrap();
    let l = s.layout("tied").unwrap();
    assert_eq!(l.to_string(), "[d0, -] at stage=0|3");
    let holding: Vec<u64> = (0..8).filter(|&r| l.holds(r)).collect();
    assert_eq!(holding, vec![0, 1, 6, 7]);

    // Per-stage files give the same.
    let dir = std::env::temp_dir().join(format!("shardplan-tied-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let paths: Vec<PathBuf> = [
        file(0, &[entry("tied", "[0, -1]")]),
        file(1, &[entry("mid", "[-1, 0]")]),
        file(3, &[entry("tied", "[0, -1]")]),
    ]
    .iter()
    .enumerate()
    .map(|(i, text)| {
        let p = dir.join(format!("stage{i}.json"));
        std::fs::write(&p, text).unwrap();
        p
    })
    .collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let g = read_strategy_files(&refs).unwrap();
    let t = g.to_strategy("t", &tensors).unwrap();
    assert_eq!(t.layout("tied"), s.layout("tied"));

    // Written back: one entry per stage, in both forms; read back alike.
    for format in [StrategyFormat::Json, StrategyFormat::Protobuf] {
        let bytes = write_strategy_file(&s, format).unwrap();
        let back = parse_strategy_file("back", &bytes).unwrap();
        assert_eq!(back.params.len(), 2, "{format:?}");
        let b = back.to_strategy("b", &tensors).unwrap();
        assert_eq!(b.layout("tied"), s.layout("tied"), "{format:?}");
        let again = parse_strategy_file("again", &f.write_merged(format).unwrap()).unwrap();
        assert_eq!(
            again.params,
            f.params
                .iter()
                .map(|p| {
                    let mut p = p.clone();
                    if format == StrategyFormat::Protobuf {
                        p.shape = None;
                    }
                    p
                })
                .collect::<Vec<_>>(),
            "{format:?}"
        );
    }

    // Imported as a spec, the tied parameter reads back on both stages.
    let yaml = import_spec(&refs, ShapeSource::Tensors(&tensors), "imp").unwrap();
    assert!(yaml.contains(r#"at: {"stage": [0, 3]}"#), "{yaml}");
    let (spec, diags) = shardplan::spec::parse_spec("imp.yaml", &yaml);
    let spec = spec.unwrap_or_else(|| panic!("{diags:?}"));
    let back = spec.strategy("imp").unwrap().layout("tied").unwrap();
    assert!(back.same_placement(s.layout("tied").unwrap()));

    // The stage count counts every stage a parameter is on.
    let gap = file(
        0,
        &[
            entry("0-tied", "[0, -1]"),
            entry("1-mid", "[-1, 0]"),
            entry("2-tied", "[0, -1]"),
        ],
    );
    let g = parse_strategy_file("gap.json", gap.as_bytes()).unwrap();
    assert_eq!(g.stage_count, 3);
    let l = g.to_strategy("g", &tensors).unwrap();
    assert_eq!(
        l.layout("tied").unwrap().to_string(),
        "[d0, -] at stage=0|2"
    );

    // Differing layouts, or the same stage twice, are refused by name.
    let cases = [
        (
            file(
                3,
                &[entry("0-tied", "[0, -1]"), entry("3-tied", "[-1, -1]")],
            ),
            ("tied", 0, 3),
        ),
        (
            file(
                3,
                &[
                    entry("0-tied", "[0, -1]"),
                    entry("3-tied", "[0, -1]"),
                    entry("3-mid", "[-1, 0]"),
                    entry("0-mid", "[-1, -1]"),
                ],
            ),
            ("mid", 3, 0),
        ),
    ];
    for (text, want) in cases {
        let e = parse_strategy_file("bad.json", text.as_bytes()).unwrap_err();
        match &e.fault {
            StrategyFileFault::DifferentLayouts {
                parameter,
                first,
                second,
            } => assert_eq!((parameter.as_str(), *first, *second), want, "{e}"),
            _ => panic!("{e}"),
        }
    }
    std::fs::write(&paths[1], file(0, &[entry("tied", "[0, -1]")])).unwrap();
    let e = read_strategy_files(&refs).unwrap_err();
    assert_eq!(e.file, paths[1].display().to_string());
    assert!(
        matches!(
            &e.fault,
            StrategyFileFault::ListedTwiceAcrossFiles { parameter, stage: 0 } if parameter == "tied"
        ),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

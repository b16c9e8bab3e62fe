//! MindSpore strategy files: every conformance case's strategy files read
//! back as the layouts its `case.json` states; written files read back the
//! same.

use std::path::{Path, PathBuf};

use crate::common;

use common::conformance_cases;
use serde_json::Value;
use shardplan::formats::mindspore::strategy::{
    StrategyFileFault, StrategyFormat, StrategyLayoutError, parse_strategy_file,
    read_strategy_files, write_strategy_file,
};
use shardplan::import::{ShapeSource, import_spec};
use shardplan::notation::mindspore::{MindSporeFault, MindSporeLayout};
use shardplan::{DType, LayoutError, TensorInfo};

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

fn code_of(e: &dyn miette::Diagnostic) -> String {
    e.code().map(|c| c.to_string()).unwrap_or_default()
}

/// The fault of `bytes` read as a strategy file: the file named, the code
/// `shardplan::formats::mindspore_strategy::<fault>`.
#[track_caller]
fn check_bad_file(bytes: &[u8], fault: &str) -> StrategyFileFault {
    let err = parse_strategy_file("s.json", bytes).unwrap_err();
    assert_eq!(err.file, "s.json");
    assert_eq!(
        code_of(&err),
        format!("shardplan::formats::mindspore_strategy::{fault}"),
        "{err}"
    );
    err.fault
}

#[test]
fn bad_strategy_files_name_the_fault() {
    const CUT: &[u8] = b"{\"parallel_layout_item\": {";
    const NESTED: &[u8] =
        b"{\"parallel_layout_item\": {\"w\": {\"dev_matrix\": [2], \"tensor_map\": [[0, 1]]}}}";
    let cases: &[(&[u8], &str)] = &[
        (CUT, "json"),
        (b"{not json", "json"),
        (b"{}", "json"),
        (
            b"{\"parallel_layout_item\": {\"w\": {\"dev_matrix\": [2]}}}",
            "malformed_layout",
        ),
        (b"\x0a\xff\xff\xff", "not_a_strategy"),
        (NESTED, "tensor_map_entry"),
        (
            b"{\"parallel_layout_item\": {\"\": {\"dev_matrix\": [2], \"tensor_map\": [0]}}}",
            "empty_name",
        ),
        (
            b"{\"parallel_layout_item\": {\"0-w\": {\"dev_matrix\": [2], \"tensor_map\": [0]}, \"00-w\": {\"dev_matrix\": [2], \"tensor_map\": [0]}}}",
            "listed_twice",
        ),
        (
            b"{\"parallel_layout_item\": {\"0-w\": {\"dev_matrix\": [2], \"tensor_map\": [0]}, \"1-w\": {\"dev_matrix\": [2], \"tensor_map\": [-1]}}}",
            "different_layouts",
        ),
    ];
    for (bytes, fault) in cases {
        check_bad_file(bytes, fault);
    }
    // JSON faults carry their line and column, layout faults the parameter.
    assert!(matches!(
        check_bad_file(CUT, "json"),
        StrategyFileFault::Json {
            line: 1,
            column: 26,
            ..
        }
    ));
    assert!(matches!(
        check_bad_file(NESTED, "tensor_map_entry"),
        StrategyFileFault::TensorMapEntry { parameter, entry }
            if parameter == "w" && *entry == serde_json::json!([0, 1])
    ));
    // A file that cannot be read keeps the OS's error.
    let missing = Path::new("no/such/strategy.json");
    let err = read_strategy_files(&[missing]).unwrap_err();
    assert_eq!(err.file, missing.display().to_string());
    assert!(
        matches!(&err.fault, StrategyFileFault::Read(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );
    // The largest stage numbers parse, and fail as a strategy, not a panic.
    for json in [
        r#"{"current_stage": 0, "parallel_layout_item": {"18446744073709551615-w": {"dev_matrix": [2], "tensor_map": [0], "tensor_shape": [4]}}}"#,
        r#"{"current_stage": 18446744073709551615, "parallel_layout_item": {"w": {"dev_matrix": [2], "tensor_map": [0], "tensor_shape": [4]}}}"#,
    ] {
        let f = parse_strategy_file("huge.json", json.as_bytes()).unwrap();
        assert_eq!(f.stage_count, u64::MAX);
        let t = vec![TensorInfo {
            name: "w".into(),
            shape: vec![4],
            dtype: DType::F32,
        }];
        assert!(
            matches!(f.to_strategy("s", &t), Err(StrategyLayoutError::Mesh(_))),
            "{json}"
        );
    }
}

/// Each way a strategy file's layouts can fail to fit the tensors given,
/// by its code; the message names the parameter.
#[test]
fn strategy_layout_faults_by_code() {
    let one = |name: &str, shape: &[u64]| TensorInfo {
        name: name.into(),
        shape: shape.to_vec(),
        dtype: DType::F32,
    };
    let item = |dev: &str, map: &str, shape: &str| {
        format!(r#"{{"dev_matrix": {dev}, "tensor_map": {map}, "tensor_shape": {shape}}}"#)
    };
    let w = item("[2]", "[0]", "[4]");
    // (code, the layout items, the tensors given, a name the message holds)
    let cases: Vec<(&str, String, Vec<TensorInfo>, &str)> = vec![
        (
            "stage_devices",
            format!(r#""w": {w}, "v": {}"#, item("[4]", "[0]", "[4]")),
            vec![one("w", &[4]), one("v", &[4])],
            "`v`",
        ),
        (
            "dev_matrix_overflow",
            format!(
                r#""w": {}"#,
                item("[4294967296, 4294967296]", "[1, 0]", "[4, 4]")
            ),
            vec![one("w", &[4, 4])],
            "`w`",
        ),
        (
            "shape_mismatch",
            format!(r#""w": {w}"#),
            vec![one("w", &[8])],
            "`w`",
        ),
        (
            "tensor_map_shape",
            format!(r#""w": {}"#, item("[2]", "[0]", "[4, 4]")),
            vec![one("w", &[4, 4])],
            "`w`",
        ),
        (
            "layout",
            format!(r#""w": {}"#, item("[3]", "[0]", "[4]")),
            vec![one("w", &[4])],
            "`w`",
        ),
        (
            "replicated",
            format!(r#""w": {w}"#),
            vec![one("w", &[4]), one("huge", &[1 << 40, 1 << 40])],
            "",
        ),
        (
            "strategy",
            format!(r#""w": {w}"#),
            vec![one("w", &[4]), one("w", &[4])],
            "`w`",
        ),
    ];
    for (code, items, tensors, names) in cases {
        let json = format!(r#"{{"current_stage": 0, "parallel_layout_item": {{{items}}}}}"#);
        let f = parse_strategy_file("strategy.json", json.as_bytes()).unwrap();
        let err = f.to_strategy("s", &tensors).unwrap_err();
        let got = miette::Diagnostic::code(&err).map(|c| c.to_string());
        assert_eq!(
            got.as_deref(),
            Some(format!("shardplan::formats::mindspore_strategy::{code}").as_str()),
            "{err}"
        );
        assert!(err.to_string().contains(names), "{code}: {err}");
    }
    // The tensor map alone, against a number of dimensions.
    let f = parse_strategy_file(
        "strategy.json",
        format!(r#"{{"current_stage": 0, "parallel_layout_item": {{"w": {w}}}}}"#).as_bytes(),
    )
    .unwrap();
    assert!(matches!(
        f.params[0].mindspore_layout(2, 1),
        Err(StrategyLayoutError::TensorMapRank { rank: 2, .. })
    ));
}

/// Strategies MindSpore's files cannot hold are refused by fault, naming
/// what was being written.
#[test]
fn unwritable_strategies_name_the_fault() {
    use shardplan::formats::mindspore::strategy::{ParamEntry, StrategyFile};
    let param = |tensor_map: Vec<Vec<i64>>, opt_weight_shard_size: i64| ParamEntry {
        name: "w".into(),
        stage: 0,
        also_on: Vec::new(),
        dev_matrix: vec![2, 2, 2],
        tensor_map,
        shape: None,
        opt_weight_shard_size,
        opt_weight_shard_step: 0,
        param_split_shape: Vec::new(),
    };
    let merged = |p: ParamEntry| StrategyFile {
        params: vec![p],
        stage_count: 1,
    };
    let nested = MindSporeLayout {
        dev_matrix: vec![2, 2, 2],
        tensor_map: vec![vec![2, 1]],
        ..MindSporeLayout::default()
    };
    let mesh = std::sync::Arc::new(shardplan::DeviceMesh::new([("dp", 2)]).unwrap());
    let partial = shardplan::TensorLayout::new(
        mesh.clone(),
        &[8],
        &shardplan::LayoutConfig::new(vec![shardplan::DimSplit::none()]).with_partial(["dp"]),
    )
    .unwrap();
    let w = TensorInfo {
        name: "w".into(),
        shape: vec![8],
        dtype: DType::F32,
    };
    let partial = shardplan::Strategy::new("p", mesh, vec![w], vec![partial]).unwrap();
    let cases = [
        (
            merged(param(vec![vec![2], vec![1]], 0)).write_merged(StrategyFormat::Json),
            "merged strategy",
            "merge_nested_map",
        ),
        (
            merged(param(vec![vec![0]], i64::MAX)).write_merged(StrategyFormat::Protobuf),
            "merged strategy",
            "merge_out_of_range",
        ),
        (
            merged(param(vec![vec![1 << 40]], 0)).write_merged(StrategyFormat::Protobuf),
            "merged strategy",
            "merge_out_of_range",
        ),
        (
            write_strategy_file(&one_tensor(&nested, &[8]), StrategyFormat::Json),
            "strategy `s`",
            "split_over_axes",
        ),
        (
            write_strategy_file(&partial, StrategyFormat::Protobuf),
            "strategy `p`",
            "inexpressible",
        ),
    ];
    for (result, file, fault) in cases {
        let err = result.unwrap_err();
        assert_eq!(err.file, file, "{err}");
        assert_eq!(
            code_of(&err),
            format!("shardplan::formats::mindspore_strategy::{fault}"),
            "{err}"
        );
    }
}

/// Imports that cannot be made, by fault.
#[test]
fn bad_imports_name_the_fault() {
    use shardplan::import::{ImportError, import_strategy};
    let dir = std::env::temp_dir().join(format!("shardplan-bad-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("s.json");
    std::fs::write(
        &json,
        r#"{"parallel_layout_item": {"w": {"dev_matrix": [2], "tensor_map": [0, -1], "tensor_shape": [4, 4]}}}"#,
    )
    .unwrap();
    let pb = dir.join("s.ckpt");
    let f = parse_strategy_file("s.json", &std::fs::read(&json).unwrap()).unwrap();
    std::fs::write(&pb, f.write_merged(StrategyFormat::Protobuf).unwrap()).unwrap();
    let shaped = |shape: Vec<u64>| {
        vec![TensorInfo {
            name: "w".into(),
            shape,
            dtype: DType::F32,
        }]
    };
    let (wide, uneven) = (shaped(vec![4, 6]), shaped(vec![3, 4]));
    let missing = dir.join("missing.json");
    // A layout that does not fit carries the strategy file's own code.
    let cases: Vec<(&Path, ShapeSource<'_>, &str)> = vec![
        (&missing, ShapeSource::Recorded(DType::F32), "import::read"),
        (&pb, ShapeSource::Recorded(DType::F32), "import::no_shape"),
        (
            &json,
            ShapeSource::Tensors(&wide),
            "mindspore_strategy::shape_mismatch",
        ),
        (
            &pb,
            ShapeSource::Tensors(&uneven),
            "mindspore_strategy::layout",
        ),
    ];
    for (path, shapes, fault) in cases {
        let err = import_strategy(&[path], shapes, "i").unwrap_err();
        assert_eq!(
            code_of(&err),
            format!("shardplan::formats::{fault}"),
            "{err}"
        );
    }
    // The unreadable file's own fault is kept.
    let err = import_strategy(&[&missing], ShapeSource::Recorded(DType::F32), "i").unwrap_err();
    assert!(
        matches!(&err, ImportError::Read(e) if e.file == missing.display().to_string()
            && matches!(e.fault, StrategyFileFault::Read(_))),
        "{err}"
    );
    let err = import_strategy(&[&pb], ShapeSource::Recorded(DType::F32), "i").unwrap_err();
    assert!(
        matches!(&err, ImportError::NoShape { parameter } if parameter == "w"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

mod checkpoints {
    use super::*;
    use shardplan::formats::checkpoint::{
        CheckpointFault, CheckpointFormat, CheckpointWriter, read_index,
    };
    use shardplan::formats::mindspore::rank_files;

    fn bytes_of(path: &Path, e: &shardplan::formats::checkpoint::TensorEntry) -> Vec<u8> {
        let all = std::fs::read(path).unwrap();
        all[e.offset as usize..(e.offset + e.len) as usize].to_vec()
    }

    /// The .ckpt and safetensors copies of every source rank hold the same
    /// tensors, bytes and shapes.
    #[test]
    fn ckpt_and_safetensors_agree() {
        let mut n = 0;
        for dir in conformance_cases() {
            let (Ok(ckpt), Ok(st)) = (
                rank_files(&dir.join("src")),
                rank_files(&dir.join("src_safetensors")),
            ) else {
                continue;
            };
            for (rank, files) in &ckpt {
                let a = read_index(&files[0]).unwrap();
                let b = read_index(&st[rank][0]).unwrap();
                assert_eq!(
                    a.tensors.keys().collect::<Vec<_>>(),
                    b.tensors.keys().collect::<Vec<_>>()
                );
                for (name, ea) in &a.tensors {
                    let eb = &b.tensors[name];
                    assert_eq!(
                        (ea.dtype, &ea.shape),
                        (eb.dtype, &eb.shape),
                        "{}",
                        dir.display()
                    );
                    assert_eq!(bytes_of(&a.path, ea), bytes_of(&b.path, eb));
                    n += 1;
                }
            }
        }
        assert!(n > 0);
    }

    fn write(
        dir: &Path,
        format: CheckpointFormat,
        tensors: &[(&str, DType, Vec<u64>, Vec<u8>)],
    ) -> PathBuf {
        let path = dir.join(format!("t.{}", format.extension()));
        let f = std::fs::File::create(&path).unwrap();
        let decl = tensors
            .iter()
            .map(|(n, d, s, _)| (n.to_string(), *d, s.clone()))
            .collect();
        let mut w = CheckpointWriter::new(f, format, decl).unwrap();
        for (_, _, _, data) in tensors {
            w.write_tensor(data).unwrap();
        }
        w.finish().unwrap();
        path
    }

    #[test]
    fn written_checkpoints_read_back() {
        let dir = std::env::temp_dir().join(format!("shardplan-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tensors = vec![
            (
                "w",
                DType::F32,
                vec![2u64, 3],
                (0u8..24).collect::<Vec<u8>>(),
            ),
            ("model.layer-norm.b", DType::BF16, vec![4], vec![7u8; 8]),
            ("step", DType::I64, vec![], 42u64.to_le_bytes().to_vec()),
            ("mask", DType::Bool, vec![3], vec![1, 0, 1]),
        ];
        for format in [CheckpointFormat::Ckpt, CheckpointFormat::Safetensors] {
            let path = write(&dir, format, &tensors);
            let idx = read_index(&path).unwrap();
            for (name, dtype, shape, data) in &tensors {
                let e = &idx.tensors[*name];
                assert_eq!((e.dtype, &e.shape), (*dtype, shape));
                assert_eq!(&bytes_of(&path, e), data);
            }
            if format == CheckpointFormat::Safetensors {
                // The reference reader agrees.
                let bytes = std::fs::read(&path).unwrap();
                let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                assert_eq!(st.tensor("w").unwrap().data(), &tensors[0].3[..]);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_checkpoints_name_the_fault() {
        let dir = std::env::temp_dir().join(format!("shardplan-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good_st = write(
            &dir,
            CheckpointFormat::Safetensors,
            &[("w", DType::F32, vec![2, 2], vec![0u8; 16])],
        );
        let st = std::fs::read(&good_st).unwrap();
        let good_ck = write(
            &dir,
            CheckpointFormat::Ckpt,
            &[("w", DType::F32, vec![2, 2], vec![0u8; 16])],
        );
        let ck = std::fs::read(&good_ck).unwrap();
        let mut lying = st.clone();
        let hdr = String::from_utf8_lossy(&st[8..]).replace("[2,2]", "[2,3]");
        lying.truncate(8);
        lying.extend_from_slice(hdr.as_bytes());
        // Each fault by its code, the file named.
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "trunc.safetensors",
                st[..st.len() - 4].to_vec(),
                "offsets_outside",
            ),
            ("short.safetensors", st[..5].to_vec(), "short_header"),
            (
                "magic.safetensors",
                [&st[..8], b"[".as_slice(), &st[9..]].concat(),
                "magic",
            ),
            (
                "huge.safetensors",
                [&u64::MAX.to_le_bytes()[..], &st[8..]].concat(),
                "header_past_end",
            ),
            ("lying.safetensors", lying, "byte_count"),
            ("trunc.ckpt", ck[..ck.len() - 3].to_vec(), "ckpt_record"),
            ("empty.ckpt", Vec::new(), "empty"),
            ("junk.ckpt", vec![0xff; 10], "ckpt_record"),
            ("name.txt", Vec::new(), "extension"),
        ];
        for (name, bytes, fault) in cases {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            let err = read_index(&p).unwrap_err();
            assert_eq!(err.file, p.display().to_string());
            assert_eq!(
                code_of(&err),
                format!("shardplan::formats::checkpoint::{fault}"),
                "{name}: {err}"
            );
        }
        let lying = read_index(&dir.join("lying.safetensors")).unwrap_err();
        assert!(
            matches!(
                lying.fault,
                CheckpointFault::ByteCount {
                    needs: Some(24),
                    holds: 16,
                    ..
                }
            ),
            "{lying}"
        );
        // Rank folders: a gap is named.
        let ranks = dir.join("ranks");
        for r in [0, 2] {
            std::fs::create_dir_all(ranks.join(format!("rank_{r}"))).unwrap();
            std::fs::copy(&good_ck, ranks.join(format!("rank_{r}/c.ckpt"))).unwrap();
        }
        let err = rank_files(&ranks).unwrap_err();
        assert!(
            matches!(err.fault, CheckpointFault::RankGap { after: 0, next: 2 }),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A one-tensor strategy on `ms`'s own mesh.
fn one_tensor(ms: &MindSporeLayout, shape: &[u64]) -> shardplan::Strategy {
    let layout = ms.to_layout(shape).unwrap();
    let t = TensorInfo {
        name: "w".into(),
        shape: shape.to_vec(),
        dtype: DType::F32,
    };
    shardplan::Strategy::new("s", layout.mesh().clone(), vec![t], vec![layout]).unwrap()
}

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

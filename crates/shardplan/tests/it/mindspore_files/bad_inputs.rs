//! Bad strategy files, layouts that do not fit, unwritable strategies and
//! impossible imports, each named by its fault.

use super::*;

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

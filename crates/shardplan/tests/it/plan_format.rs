//! The JSON plan format (docs/plan-format.md): every plan survives a round
//! trip, malformed files are refused with an error that says where, and the
//! example in the documentation is a real plan.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use shardplan::formats::plan_json::{PlanFileError, PlanFileFault, from_json, to_json};
use shardplan::spec::{Spec, parse_spec};
use shardplan::{
    DType, DeviceMesh, DimSplit, LayoutConfig, PlanConfig, ReplicaChoice, Strategy, TensorInfo,
    TensorLayout, VerifiedPlan, check_plan, plan_transfer, verify_plan,
};

fn root() -> std::path::PathBuf {
    crate::common::repo_root()
}

fn load_spec(path: &Path) -> Spec {
    let text = std::fs::read_to_string(path).unwrap();
    let (spec, diags) = parse_spec(&path.display().to_string(), &text);
    spec.unwrap_or_else(|| panic!("{}: {diags:?}", path.display()))
}

/// The valid specs: `specs/*.yaml`, not `specs/invalid/`.
fn spec_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("specs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no specs found");
    v
}

fn plan_spec(spec: &Spec, choice: ReplicaChoice, tensors: Option<Vec<String>>) -> VerifiedPlan {
    let t = spec.transfer().expect("spec names a transfer");
    let (src, dst) = (
        spec.strategy(&t.from).unwrap(),
        spec.strategy(&t.to).unwrap(),
    );
    let mut config = PlanConfig::new(choice);
    config.tensors = tensors;
    verify_plan(plan_transfer(src, dst, &config).unwrap(), src, dst).unwrap()
}

#[test]
fn every_spec_round_trips() {
    for path in spec_files() {
        let spec = load_spec(&path);
        let t = spec.transfer().expect("spec names a transfer");
        let (src, dst) = (
            spec.strategy(&t.from).unwrap(),
            spec.strategy(&t.to).unwrap(),
        );
        for choice in [ReplicaChoice::Balance, ReplicaChoice::MinFiles] {
            let plan = plan_spec(&spec, choice, None);
            let text = to_json(&plan);
            let back = from_json("plan.json", &text)
                .unwrap_or_else(|e| panic!("{} ({choice:?}): {e}", path.display()));
            assert_eq!(&back, plan.plan(), "{} ({choice:?})", path.display());
            // What was read is still a valid plan, and writes the same bytes.
            let back = verify_plan(back, src, dst)
                .unwrap_or_else(|d| panic!("{} ({choice:?}): {d}", path.display()));
            assert_eq!(to_json(&back), text, "{} ({choice:?})", path.display());
        }
    }
}

/// A small plan written by the crate itself: 8 rows of a 2-d f32 tensor
/// from tp=4 to tp=2, so it has local and network pieces.
fn base() -> Value {
    let t = TensorInfo {
        name: "w".into(),
        shape: vec![8, 4],
        dtype: DType::F32,
    };
    let rows = |n: u64| {
        let mesh = Arc::new(DeviceMesh::new([("tp", n)]).unwrap());
        let cfg = LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()]);
        let l = TensorLayout::new(mesh.clone(), &t.shape, &cfg).unwrap();
        Strategy::new(format!("tp{n}"), mesh, vec![t.clone()], vec![l]).unwrap()
    };
    let config = PlanConfig::new(ReplicaChoice::Balance);
    let plan = plan_transfer(&rows(4), &rows(2), &config).unwrap();
    let plan = verify_plan(plan, &rows(4), &rows(2)).unwrap();
    assert!(plan.tensors[0].pieces.len() >= 2);
    serde_json::from_str(&to_json(&plan)).unwrap()
}

/// `base()` with one change, pretty-printed.
fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = base();
    edit(&mut v);
    serde_json::to_string_pretty(&v).unwrap()
}

/// Asserts that `json` is refused and that the error, as displayed
/// (`file:line:column: message`), contains `needle`.
#[track_caller]
fn check_err(json: &str, needle: &str) -> PlanFileError {
    match from_json("plan.json", json) {
        Ok(_) => panic!("accepted, expected an error containing {needle:?}:\n{json}"),
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.contains(needle),
                "error {shown:?} does not contain {needle:?}"
            );
            assert_eq!(e.file, "plan.json");
            e
        }
    }
}

#[test]
fn base_is_accepted() {
    let text = edited(|_| {});
    from_json("plan.json", &text).unwrap();
}

#[test]
fn syntax_errors_name_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            "{\n  \"format\": \"shardplan-plan\",\n  oops\n}",
            "plan.json:3:3:",
        ),
        (
            "{\"format\": \"shardplan-plan\",}",
            "plan.json:1:29: trailing comma",
        ),
        (
            "{\"format\": \"shardplan-",
            "plan.json:1:22: EOF while parsing a string",
        ),
        ("{\"version\": 1 1}", "plan.json:1:15: expected `,` or `}`"),
    ];
    for (json, needle) in cases {
        check_err(json, needle);
    }
    // An empty file: serde_json places the end on line 1, column 0.
    let e = check_err("", "EOF while parsing");
    assert_eq!(e.line, 1, "{e}");
    // Pretty-printed, cut off half-way: the place is past the first line.
    let text = edited(|_| {});
    let e = check_err(&text[..text.len() / 2], "EOF while parsing");
    assert!(e.line > 1 && e.column > 0, "{e}");
}

/// Malformed documents refused while reading, with the place in the file.
#[test]
fn structural_errors_name_the_place() {
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "unknown top-level field",
            |v| v["comment"] = json!("hi"),
            "unknown field `comment`",
        ),
        (
            "unknown piece field",
            |v| v["tensors"][0]["pieces"][1]["stride"] = json!([4, 1]),
            "unknown field `stride`",
        ),
        (
            "unknown summary field",
            |v| v["summary"]["bytes"] = json!(0),
            "unknown field `bytes`",
        ),
        (
            "missing field",
            |v| {
                v["tensors"][0].as_object_mut().unwrap().remove("shape");
            },
            "missing field `shape`",
        ),
        (
            "version as a string",
            |v| v["version"] = json!("1"),
            "invalid type: string \"1\"",
        ),
        (
            "negative rank",
            |v| v["tensors"][0]["pieces"][0]["src_rank"] = json!(-1),
            "invalid value: integer `-1`",
        ),
        (
            "fractional offset",
            |v| v["tensors"][0]["pieces"][0]["dst_offset"][0] = json!(1.5),
            "invalid type: floating point",
        ),
    ];
    for (what, edit, needle) in cases {
        let e = check_err(&edited(edit), needle);
        assert!(e.line > 0 && e.column > 0, "{what}: no place in {e}");
    }
}

/// Documents that parse as JSON but are not plans this version reads: the
/// error names the field or the tensor and piece.
#[test]
fn semantic_errors_name_the_tensor_and_piece() {
    type Edit = fn(&mut Value);
    // Each edit and the fault it makes, by its code under
    // `shardplan::formats::plan_json::`.
    let cases: &[(Edit, &str)] = &[
        (|v| v["version"] = json!(2), "version"),
        (|v| v["version"] = json!(0), "version"),
        (|v| v["format"] = json!("shardplan-spec"), "version"),
        (|v| v["replica_choice"] = json!("random"), "replica_choice"),
        (|v| v["tensors"][0]["dtype"] = json!("f33"), "dtype"),
        (
            |v| v["tensors"][0]["pieces"][1]["dst_offset"] = json!([2]),
            "piece_dims",
        ),
        (
            |v| v["tensors"][0]["pieces"][0]["src_offset"] = json!([0, 0, 0]),
            "piece_dims",
        ),
        (
            |v| v["tensors"][0]["pieces"][1]["dst_local_offset"] = json!([]),
            "piece_dims",
        ),
        (
            |v| v["tensors"][0]["pieces"][1]["extent"] = json!([2, 4, 1]),
            "piece_dims",
        ),
        (|v| v["tensors"][0]["shape"] = json!([32]), "piece_dims"),
        (
            |v| v["tensors"][0]["pieces"][0]["bytes"] = json!(7),
            "piece_bytes",
        ),
        // Half the width: bytes counted for f32 but the dtype says bf16.
        (|v| v["tensors"][0]["dtype"] = json!("bf16"), "piece_bytes"),
        (
            |v| v["tensors"][0]["pieces"][0]["dst_offset"] = json!([u64::MAX, 0]),
            "piece_overflow",
        ),
        (
            // A volume past 64 bits matches no byte count.
            |v| v["tensors"][0]["pieces"][0]["extent"] = json!([u64::MAX, u64::MAX]),
            "piece_bytes",
        ),
        (
            |v| v["tensors"][0]["pieces"][0]["op"] = json!("max"),
            "piece_op",
        ),
    ];
    for (edit, fault) in cases {
        let json = edited(edit);
        let e = from_json("plan.json", &json).expect_err("an edited plan is refused");
        let code = miette::Diagnostic::code(&e).map(|c| c.to_string());
        assert_eq!(
            code.as_deref(),
            Some(format!("shardplan::formats::plan_json::{fault}").as_str()),
            "{e}"
        );
        assert_eq!((e.file.as_str(), e.line), ("plan.json", 0), "{e}");
    }
    // The fields name the tensor and piece.
    let e = from_json(
        "plan.json",
        &edited(|v| v["tensors"][0]["dtype"] = json!("bf16")),
    )
    .unwrap_err();
    assert!(
        matches!(
            &e.fault,
            PlanFileFault::PieceBytes {
                tensor,
                piece: 0,
                bytes: 32,
                dtype: DType::BF16,
                ..
            } if tensor == "w"
        ),
        "{e}"
    );
}

/// The first fenced block whose info string is exactly `json`.
fn first_json_block(doc: &str) -> String {
    let mut lines = doc.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == "```json")
        .expect("docs/plan-format.md has a ```json block");
    let body: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    body.join("\n")
}

#[test]
fn documented_example_is_a_real_plan() {
    let doc = std::fs::read_to_string(root().join("docs/plan-format.md")).unwrap();
    let text = first_json_block(&doc);
    let plan = from_json("docs/plan-format.md", &text).unwrap_or_else(|e| panic!("{e}"));

    // It is what `shardplan plan specs/mindspore-notation.yaml --tensor
    // layers.0.dense1.weight --format json` writes, down to the summary.
    let spec = load_spec(&root().join("specs/mindspore-notation.yaml"));
    let t = spec.transfer().unwrap();
    let (src, dst) = (
        spec.strategy(&t.from).unwrap(),
        spec.strategy(&t.to).unwrap(),
    );
    check_plan(&plan, src, dst).unwrap_or_else(|d| panic!("{d}"));
    let names = vec!["layers.0.dense1.weight".to_string()];
    let fresh = plan_spec(&spec, ReplicaChoice::Balance, Some(names));
    let documented: Value = serde_json::from_str(&text).unwrap();
    let written: Value = serde_json::from_str(&to_json(&fresh)).unwrap();
    assert_eq!(
        documented, written,
        "the example in docs/plan-format.md is stale; regenerate it with \
         `shardplan plan specs/mindspore-notation.yaml --tensor layers.0.dense1.weight --format json`"
    );
}

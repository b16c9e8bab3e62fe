//! Lowering of YAML specs into layouts, and the spec budgets.

use shardplan::spec::{DEFAULT_BUDGET, SpecBudget, parse_spec, parse_spec_with_budget};

/// Every strategy's layouts, one line per tensor: `strategy tensor: layout`.
#[track_caller]
fn check(yaml: &str, expect: &str) {
    let (spec, diags) = parse_spec("t.yaml", yaml);
    let errors: Vec<String> = diags.iter().map(|d| d.one_line()).collect();
    let spec = spec.unwrap_or_else(|| panic!("{}", errors.join("\n")));
    let mut got = String::new();
    for (name, s) in spec.strategies() {
        for (t, l) in s.tensors().iter().zip(s.layouts()) {
            got.push_str(&format!("{name} {}: {l} on {}\n", t.name, l.mesh()));
        }
    }
    assert_eq!(got.trim_end(), expect.trim(), "\n{got}");
}

/// The short codes of the diagnostics.
#[track_caller]
fn check_codes(yaml: &str, budget: &SpecBudget, expect: &[&str]) {
    let (spec, diags) = parse_spec_with_budget("t.yaml", yaml, budget);
    let codes: Vec<&str> = diags.iter().map(|d| d.code.short()).collect();
    assert_eq!(
        codes,
        expect,
        "{:?}",
        diags.iter().map(|d| d.one_line()).collect::<Vec<_>>()
    );
    assert!(spec.is_none());
}

#[test]
fn stages_by_layer_and_pins() {
    check(
        r#"
version: 1
meshes: {m: {shape: [2, 2], axes: [pp, tp]}}
tensors:
  - {name: embed, shape: [8, 4], dtype: bf16}
  - {name: layers.0.w, shape: [8, 4], dtype: bf16}
  - {name: layers.3.w, shape: [8, 4], dtype: bf16}
  - {name: layers.3.w_stay, shape: [8, 4], dtype: bf16}
  - {name: norm, shape: [4], dtype: f32}
strategies:
  s:
    mesh: m
    stages: {axis: pp, layer: "layers.{}.*", layers_per_stage: 2}
    rules:
      - {match: "embed", dims: [tp, null], at: {pp: 0}}
      - {match: "*_stay", dims: [null, tp], at: {pp: 0}}
      - {match: "layers.*", dims: [tp, null]}
      - {match: "*", dims: replicated}
"#,
        "
s embed: [tp, -] at pp=0 on [pp=2, tp=2]
s layers.0.w: [tp, -] at pp=0 on [pp=2, tp=2]
s layers.3.w: [tp, -] at pp=1 on [pp=2, tp=2]
s layers.3.w_stay: [-, tp] at pp=0 on [pp=2, tp=2]
s norm: [-] on [pp=2, tp=2]",
    );
}

#[test]
fn notations_lower_to_the_same_placement() {
    let yaml = r#"
version: 1
meshes:
  m: {shape: [2, 2, 2], axes: [pp, dp, tp]}
tensors:
  - {name: w, shape: [8, 4], dtype: f32}
strategies:
  native: {mesh: m, rules: [{match: "*", dims: [[tp, dp], null], at: {pp: 1}}]}
  ms:
    mesh: m
    rules:
      - match: "*"
        mindspore: {dev_matrix: [2, 2], tensor_map: [0, -1], opt_weight_shard_size: 2, opt_weight_shard_step: 2}
        at: {pp: 1}
  nested: {mesh: m, rules: [{match: "*", mindspore: {dev_matrix: [2, 2], tensor_map: [[0, 1], -1]}, at: {pp: 1}}]}
  dtensor: {mesh: m, rules: [{match: "*", placements: ["Shard(0)", "Shard(0)"], at: {pp: 1}}]}
  jax: {mesh: m, rules: [{match: "*", spec: "P(('tp', 'dp'))", at: {pp: 1}}]}
"#;
    let (spec, diags) = parse_spec("t.yaml", yaml);
    let spec = spec.unwrap_or_else(|| panic!("{diags:?}"));
    let native = spec.strategy("native").unwrap().layout("w").unwrap();
    assert_eq!(native.region_of(4).unwrap().to_string(), "[0..2, 0..4]");
    assert_eq!(native.region_of(6).unwrap().to_string(), "[2..4, 0..4]");
    assert_eq!(native.region_of(5).unwrap().to_string(), "[4..6, 0..4]");
    for name in ["ms", "nested", "jax"] {
        let l = spec.strategy(name).unwrap().layout("w").unwrap();
        assert!(l.same_placement(native), "{name}: {l} on {}", l.mesh());
    }
    // DTensor splits in mesh order (dp outer), so the blocks differ.
    let dt = spec.strategy("dtensor").unwrap().layout("w").unwrap();
    assert!(!dt.same_placement(native));
    assert_eq!(dt.to_string(), "[(dp, tp), -] at pp=1");
}

#[test]
fn policies_device_ids_and_decisions() {
    let yaml = r#"
version: 1
meshes:
  m: {shape: [3], axes: [tp], devices: [5, 6, 7]}
tensors:
  - {name: a, shape: [10, 4], dtype: bf16}
  - {name: b, shape: [10], dtype: bfloat16}
strategies:
  s:
    mesh: m
    rules:
      - {match: "a", dims: [tp, null], split: [{blocks: [2, 3, 5]}, null]}
      - {match: "b", dims: [tp], split: balanced}
"#;
    let (spec, diags) = parse_spec("t.yaml", yaml);
    let spec = spec.unwrap_or_else(|| panic!("{diags:?}"));
    let s = spec.strategy("s").unwrap();
    assert_eq!(s.mesh().device_of(2).unwrap(), 7);
    assert_eq!(
        s.layout("a").unwrap().region_of(2).unwrap().to_string(),
        "[5..10, 0..4]"
    );
    assert_eq!(
        s.layout("b").unwrap().region_of(0).unwrap().to_string(),
        "[0..4]"
    );
    assert_eq!(spec.decided_by("s"), [0, 1]);
}

#[test]
fn budgets_refuse_hostile_input() {
    let small = SpecBudget {
        max_bytes: 64,
        ..DEFAULT_BUDGET
    };
    let long = format!("version: 1\n# {}\n", "x".repeat(100));
    check_codes(&long, &small, &["budget"]);

    let deep = format!(
        "version: 1\nmeshes: {}1{}\n",
        "[".repeat(40),
        "]".repeat(40)
    );
    check_codes(&deep, &DEFAULT_BUDGET, &["budget"]);

    // Billion laughs: 9 levels of 9 aliases, inside a field that is read.
    let mut bomb = String::from(
        "version: 1\ntensors:\n  - {name: a, dtype: f32, shape: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]}\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(", ");
        bomb.push_str(&format!(
            "  - {{name: {}, dtype: f32, shape: &{} [{refs}]}}\n",
            w[1], w[1]
        ));
    }
    check_codes(&bomb, &DEFAULT_BUDGET, &["budget"]);

    let two_docs = "version: 1\n---\nversion: 1\n";
    check_codes(two_docs, &DEFAULT_BUDGET, &["budget"]);

    // A million rules end in a budget error, not in a million layouts.
    let mut many = String::from(
        "version: 1\nmeshes: {m: {shape: [2], axes: [tp]}}\ntensors: [{name: w, shape: [4], dtype: f32}]\nstrategies:\n  s:\n    mesh: m\n    rules:\n",
    );
    for _ in 0..1_000_000 {
        many.push_str("      - {match: w, dims: [tp]}\n");
    }
    check_codes(&many, &DEFAULT_BUDGET, &["budget"]);

    let few_rules = SpecBudget {
        max_rules: 2,
        ..DEFAULT_BUDGET
    };
    let three = "version: 1\nmeshes: {m: {shape: [2], axes: [tp]}}\ntensors: [{name: w, shape: [4], dtype: f32}]\nstrategies:\n  s: {mesh: m, rules: [{match: w, dims: [tp]}, {match: w, dims: [tp]}, {match: w, dims: [tp]}]}\n";
    check_codes(three, &few_rules, &["budget"]);

    // A mesh of 2^40 ranks.
    let huge = "version: 1\nmeshes: {m: {shape: [1048576, 1048576], axes: [a, b]}}\n";
    check_codes(huge, &DEFAULT_BUDGET, &["invalid_mesh"]);
}

#[test]
fn yaml_1_2_booleans_keep_axis_names() {
    check(
        r#"
version: 1
meshes: {m: {shape: [2, 2], axes: [y, on]}}
tensors: [{name: w, shape: [4, 4], dtype: f32}]
strategies:
  s: {mesh: m, rules: [{match: "*", dims: [y, on]}]}
"#,
        "s w: [y, on] on [y=2, on=2]",
    );
}

#[test]
fn notations_follow_stages() {
    // Placements skip the stage axis; MindSpore layouts take their stage
    // from the layer index.
    check(
        r#"
version: 1
meshes: {m: {shape: [2, 2], axes: [pp, tp]}}
tensors:
  - {name: layers.0.a, shape: [4, 4], dtype: f32}
  - {name: layers.1.b, shape: [4, 4], dtype: f32}
  - {name: layers.1.c, shape: [4, 4], dtype: f32}
strategies:
  s:
    mesh: m
    stages: {axis: pp, layer: "layers.{}.*", layers_per_stage: 1}
    rules:
      - {match: "*.a", placements: ["Shard(1)"]}
      - {match: "*.b", mindspore: {dev_matrix: [2], tensor_map: [0, -1]}}
      - {match: "*.c", spec: "P(None, 'tp')"}
"#,
        "
s layers.0.a: [-, tp] at pp=0 on [pp=2, tp=2]
s layers.1.b: [d0, -] at stage=1 on [stage=2, d0=2]
s layers.1.c: [-, tp] at pp=1 on [pp=2, tp=2]",
    );
    let partial_replicated = "version: 1\nmeshes: {m: {shape: [2], axes: [dp]}}\ntensors: [{name: w, shape: [4], dtype: f32}]\nstrategies:\n  s: {mesh: m, rules: [{match: w, dims: replicated, partial: [dp]}]}\n";
    check_codes(partial_replicated, &DEFAULT_BUDGET, &["rule_form"]);
    let bad_map = "version: 1\nmeshes: {m: {shape: [2], axes: [dp]}}\ntensors: [{name: w, shape: [4], dtype: f32}]\nstrategies:\n  s: {mesh: m, rules: [{match: w, mindspore: {dev_matrix: [2], tensor_map: [x]}}]}\n";
    let (_, diags) = parse_spec("t.yaml", bad_map);
    assert_eq!(diags[0].code.short(), "wrong_type");
    assert!(
        !diags[0].message.contains("RawMapEntry"),
        "{}",
        diags[0].message
    );
}

/// Every bundled spec, written back with one rule per tensor, reads as the
/// same layouts.
#[test]
fn written_specs_read_back_the_same() {
    let root = crate::common::repo_root().join("specs");
    let mut n = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let (spec, diags) = parse_spec(&path.display().to_string(), &text);
        let spec = spec.unwrap_or_else(|| panic!("{diags:?}"));
        let yaml = spec
            .to_yaml(&format!("written from {}", path.display()))
            .unwrap();
        let (again, diags) = parse_spec("written.yaml", &yaml);
        let again = again.unwrap_or_else(|| panic!("{}: {diags:?}\n{yaml}", path.display()));
        for (name, s) in spec.strategies() {
            let s2 = &again.strategies()[name];
            for (t, l) in s.tensors().iter().zip(s.layouts()) {
                assert!(
                    l.same_placement(s2.layout(&t.name).unwrap()),
                    "{}: {name} {}",
                    path.display(),
                    t.name
                );
            }
        }
        n += 1;
    }
    assert!(n >= 6);
}

/// `mindspore` rules read the optimizer-shard fields as MindSpore does:
/// `-1` is the whole group, a step of 0 no shard, an absent step the one
/// MindSpore would record, a wrong step a `notation` error.
#[test]
fn mindspore_rules_read_optimizer_shards_as_mindspore() {
    let spec = |fields: &str| {
        format!(
            "version: 1\nmeshes: {{m: {{shape: [8], axes: [r]}}}}\ntensors: [{{name: w, shape: [8, 4], dtype: f32}}]\nstrategies:\n  s: {{mesh: m, rules: [{{match: w, mindspore: {{dev_matrix: [4, 2], tensor_map: [-1, 0]{fields}}}}}]}}\n"
        )
    };
    // Groups {0, 2, 4, 6} and {1, 3, 5, 7}: dim 0 over d1 (4 ways).
    let whole = "s w: [d1, d0] on [d1=4, d0=2]";
    check(&spec(", opt_weight_shard_size: -1"), whole);
    check(
        &spec(", opt_weight_shard_size: -1, opt_weight_shard_step: 2"),
        whole,
    );
    check(&spec(", opt_weight_shard_size: 4"), whole);
    // Step 0: no shard, whatever the size says.
    let none = "s w: [-, d0] on [d1=4, d0=2]";
    check(
        &spec(", opt_weight_shard_size: -1, opt_weight_shard_step: 0"),
        none,
    );
    check(&spec(""), none);
    let (_, diags) = parse_spec(
        "t.yaml",
        &spec(", opt_weight_shard_size: -1, opt_weight_shard_step: 3"),
    );
    assert_eq!(diags[0].code.short(), "notation");
    assert!(
        diags[0].message.contains("records for this group: 2"),
        "{}",
        diags[0].message
    );
}

/// `load` tells the format from the file: a YAML spec, a MindSpore
/// strategy file (imported, with its optimizer shards recorded), a file
/// that is not text (invalid, with the encoding diagnostic), a missing file.
#[test]
fn load_tells_the_format_from_the_file() {
    use shardplan::import::{LoadError, SpecSource, detect, load};
    use shardplan::spec::DiagCode;
    let root = crate::common::repo_root();
    let (spec, warnings) = load(&root.join("specs/tiny-model.yaml")).unwrap();
    assert!(warnings.is_empty() && spec.transfer().is_some());
    let fixtures = crate::common::fixture_cases_dir();
    let json = fixtures.join("tp4_row_to_tp2_row/src_strategy/strategy.json");
    assert_eq!(
        detect(&json, &std::fs::read(&json).unwrap()),
        SpecSource::MindSporeStrategy
    );
    let (imported, _) = load(&json).unwrap();
    let s = imported.strategy("strategy").unwrap();
    assert_eq!(s.mesh().rank_count(), 4);
    assert!(imported.optimizer_shards("strategy").is_some());
    // Written as YAML, read back: the same layouts.
    let (back, _) = parse_spec("back.yaml", &imported.to_yaml("").unwrap());
    let back = back.unwrap();
    for (t, l) in s.tensors().iter().zip(s.layouts()) {
        assert!(l.same_placement(back.strategy("strategy").unwrap().layout(&t.name).unwrap()));
    }
    // Optimizer shards survive the YAML: read from the strategy file and
    // from its YAML form, derivation gets the same record.
    for case in ["opt_partial_dp4_size2", "tp4_row_to_tp2_row"] {
        let file = fixtures.join(case).join("src_strategy/strategy.json");
        let (direct, _) = load(&file).unwrap();
        let (again, diags) = parse_spec("again.yaml", &direct.to_yaml("").unwrap());
        let again = again.unwrap_or_else(|| panic!("{diags:?}"));
        let ways = |s: &shardplan::spec::Spec| {
            s.optimizer_shards("strategy")
                .unwrap()
                .iter()
                .filter(|(_, w)| **w > 1)
                .map(|(n, w)| (n.clone(), *w))
                .collect::<Vec<_>>()
        };
        assert_eq!(ways(&direct), ways(&again), "{case}");
        assert_eq!(ways(&direct).is_empty(), case.starts_with("tp4"), "{case}");
    }
    let dir = std::env::temp_dir().join(format!("shardplan-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.yaml");
    std::fs::write(&garbage, b"\xff\xfe\x00").unwrap();
    match load(&garbage) {
        Err(LoadError::Invalid { diagnostics, .. }) => {
            assert_eq!(diagnostics[0].code, DiagCode::Encoding)
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        load(&dir.join("missing.yaml")),
        Err(LoadError::Read { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two meshes of one shape stay two meshes: a strategy keeps the one it
/// names, read, built in code, derived onto and written back.
#[test]
fn equal_meshes_keep_their_names() {
    use shardplan::spec::{MeshId, Spec, derived_spec};
    let yaml = "
version: 1
meshes: {a: {shape: [2], axes: [tp]}, b: {shape: [2], axes: [tp]}}
tensors: [{name: w, shape: [4], dtype: f32}]
strategies:
  on_b: {mesh: b, rules: [{match: '*', dims: [tp]}]}
";
    let (spec, diags) = parse_spec("t.yaml", yaml);
    let spec = spec.unwrap_or_else(|| panic!("{diags:?}"));
    assert_eq!(spec.mesh_of("on_b"), Some(&MeshId::new("b")));
    let written = spec.to_yaml("").unwrap();
    assert!(written.contains("mesh: \"b\""), "{written}");
    // Derived onto `b` by name, the derived strategy is on `b` too; with
    // no name, on the first equal mesh.
    let s = spec.strategy("on_b").unwrap().clone();
    let d = s.renamed("d");
    for (named, on) in [(Some("b"), "b"), (None, "a")] {
        let with = derived_spec(&spec, None, &d, named).unwrap();
        assert_eq!(with.mesh_of("d").map(MeshId::as_str), Some(on));
        assert_eq!(with.mesh_of("on_b").map(MeshId::as_str), Some("b"));
    }
    // Built in code on `a`, it is written on `a`.
    let meshes: Vec<_> = spec.meshes().clone().into_iter().collect();
    let built = Spec::from_parts(meshes, vec![("s".into(), "a".into(), s)], None).unwrap();
    let written = built.to_yaml("").unwrap();
    assert!(written.contains("mesh: \"a\""), "{written}");
}

/// What `Spec::from_parts` refuses, by code.
#[test]
fn spec_parts_faults_by_code() {
    use shardplan::spec::{MeshId, Spec, Transfer};
    use shardplan::{DType, DeviceMesh, Strategy, TensorInfo, TensorLayout};
    use std::sync::Arc;
    let mesh = |n: u64| Arc::new(DeviceMesh::new([("tp", n)]).unwrap());
    let on = |m: &Arc<DeviceMesh>, name: &str, shape: u64| {
        let t = TensorInfo {
            name: "w".into(),
            shape: vec![shape],
            dtype: DType::F32,
        };
        let l = TensorLayout::replicated(m.clone(), &t.shape).unwrap();
        Strategy::new(name, m.clone(), vec![t], vec![l]).unwrap()
    };
    let (two, four) = (mesh(2), mesh(4));
    let meshes = || vec![("two".to_string(), two.clone())];
    let part = |n: &str, m: &str, s: Strategy| (n.to_string(), MeshId::new(m), s);
    let to = |t: &str| {
        Some(Transfer {
            from: "s".into(),
            to: t.into(),
        })
    };
    type Parts = (
        Vec<(String, Arc<DeviceMesh>)>,
        Vec<(String, MeshId, Strategy)>,
        Option<Transfer>,
    );
    let cases: Vec<(&str, Parts)> = vec![
        (
            "unknown_mesh",
            (meshes(), vec![part("s", "four", on(&two, "s", 4))], None),
        ),
        (
            "mesh_differs",
            (meshes(), vec![part("s", "two", on(&four, "s", 4))], None),
        ),
        (
            "tensors_differ",
            (
                meshes(),
                vec![
                    part("s", "two", on(&two, "s", 4)),
                    part("t", "two", on(&two, "t", 8)),
                ],
                None,
            ),
        ),
        (
            "duplicate_name",
            (
                meshes(),
                vec![
                    part("s", "two", on(&two, "s", 4)),
                    part("s", "two", on(&two, "s", 4)),
                ],
                None,
            ),
        ),
        (
            "duplicate_name",
            (
                vec![("two".into(), two.clone()), ("two".into(), two.clone())],
                vec![],
                None,
            ),
        ),
        (
            "unknown_strategy",
            (meshes(), vec![part("s", "two", on(&two, "s", 4))], to("t")),
        ),
    ];
    for (code, (m, s, t)) in cases {
        let err = Spec::from_parts(m, s, t).unwrap_err();
        let got = miette::Diagnostic::code(&err).map(|c| c.to_string());
        assert_eq!(
            got.as_deref(),
            Some(format!("shardplan::spec::parts::{code}").as_str()),
            "{err}"
        );
    }
}

/// A tensor name a glob would read as a pattern is not written.
#[test]
fn a_glob_name_is_not_written() {
    use shardplan::spec::write::WriteFault;
    use shardplan::spec::{MeshId, Spec};
    use shardplan::{DType, DeviceMesh, Strategy, TensorInfo, TensorLayout};
    use std::sync::Arc;
    let m = Arc::new(DeviceMesh::new([("tp", 2)]).unwrap());
    let t = TensorInfo {
        name: "w*".into(),
        shape: vec![4],
        dtype: DType::F32,
    };
    let l = TensorLayout::replicated(m.clone(), &t.shape).unwrap();
    let s = Strategy::new("s", m.clone(), vec![t], vec![l]).unwrap();
    let spec = Spec::from_parts(
        vec![("m".into(), m)],
        vec![("s".into(), MeshId::new("m"), s)],
        None,
    )
    .unwrap();
    let err = spec.to_yaml("").unwrap_err();
    assert_eq!(
        (err.tensor.as_str(), &err.fault),
        ("w*", &WriteFault::GlobName)
    );
    let code = miette::Diagnostic::code(&err).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("shardplan::spec::write::glob_name"));
}

//! `shardplan derive`: inference layouts derived from training strategies.
//!
//! - The derived layouts of every spec in `specs/` are snapshot-tested
//!   (`tests/snapshots/derive__*.snap`), and where a spec has a
//!   hand-written inference strategy the derivation is compared with it.
//! - Every derived strategy is planned and verified; the small ones are
//!   simulated on synthetic buffers, and the tiny model is run through it.
//! - The written spec reads back with the same layouts.
//! - The MindSpore conformance cases that are plain inference targets
//!   derive exactly the destination layouts MindSpore used.
//! - Rules (shared tensors, forced replication, fallbacks, stage ranges and
//!   relative stages), every error code, and the `derive:` diagnostics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common;
use shardplan::spec::{derived_spec, rules_for};

use common::{ms_layout, shared_cases_dir};
use serde_json::Value;
use shardplan::derive::{
    AxisRoleFault, DeriveError, DeriveRules, DeriveTarget, Derived, Fallback, LayerRef, RangeFault,
    SharedTensors, derive_strategy,
};
use shardplan::notation::mindspore::{MindSporeFault, MindSporeLayout};
use shardplan::pattern::PatternError;
use shardplan::spec::{Spec, parse_spec};
use shardplan::{
    DType, DeviceMesh, LayoutError, PlanConfig, ReplicaChoice, ShardStore, Strategy, TensorInfo,
    TensorLayout, execute_plan, plan_transfer, verify_plan,
};

fn root() -> std::path::PathBuf {
    crate::common::repo_root()
}

fn load(path: &str) -> Spec {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let (spec, diags) = parse_spec(path, &text);
    spec.unwrap_or_else(|| panic!("{path}: {diags:?}"))
}

fn parse(text: &str) -> Spec {
    let (spec, diags) = parse_spec("test.yaml", text);
    spec.unwrap_or_else(|| panic!("{diags:?}"))
}

fn bundled_specs() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("specs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| format!("specs/{}", p.file_name().unwrap().to_str().unwrap()))
        .collect();
    files.sort();
    files
}

/// Bytes of all buffers of a strategy (what simulating it allocates).
fn footprint(s: &Strategy) -> u64 {
    s.tensors()
        .iter()
        .zip(s.layouts())
        .map(|(t, l)| {
            (0..s.mesh().rank_count())
                .filter_map(|r| l.region_of(r))
                .map(|r| r.volume() * t.dtype.size_bytes())
                .sum::<u64>()
        })
        .sum()
}

/// Plans and verifies `src -> dst`; simulates it when the buffers take at
/// most `limit` bytes. Returns whether it simulated.
fn plan_and_simulate(src: &Strategy, dst: &Strategy, limit: u64) -> bool {
    let config = PlanConfig::new(ReplicaChoice::Balance);
    let plan = plan_transfer(src, dst, &config)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", src.name(), dst.name()));
    let plan = verify_plan(plan, src, dst)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", src.name(), dst.name()));
    if footprint(src) + footprint(dst) > limit {
        return false;
    }
    let from = ShardStore::synthetic(src);
    let mut to = ShardStore::zeroed(dst);
    execute_plan(&plan, &from, &mut to).unwrap();
    to.check_synthetic(dst, src)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", src.name(), dst.name()));
    true
}

/// The tensors whose derived layout differs from the strategy's.
fn differences(derived: &Strategy, other: &Strategy) -> Vec<String> {
    derived
        .tensors()
        .iter()
        .zip(derived.layouts())
        .filter(|(t, l)| !other.layout(&t.name).is_some_and(|o| o.same_placement(l)))
        .map(|(t, _)| t.name.clone())
        .collect()
}

/// `model.layers.17.mlp` -> `model.layers.N.mlp`, and `layer 17 ->` ->
/// `layer N ->`: collapses repeated layers in summaries.
fn normalize_layers(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() && (prev == '.' || out.ends_with("layer ")) {
            while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                chars.next();
            }
            out.push('N');
            prev = 'N';
            continue;
        }
        out.push(c);
        prev = c;
    }
    out
}

/// A compact, deterministic description of a derivation: per group of
/// tensors with the same (layer-normalised) name, layout and reason, one
/// line with the count.
fn summary(d: &Derived, source: &str) -> String {
    let mut groups: Vec<(String, String, String, usize)> = Vec::new();
    for (r, l) in d.reasons.iter().zip(d.strategy.layouts()) {
        let key = (
            normalize_layers(&r.tensor),
            l.to_string(),
            normalize_layers(&r.to_string()),
        );
        match groups
            .iter_mut()
            .find(|g| (&g.0, &g.1, &g.2) == (&key.0, &key.1, &key.2))
        {
            Some(g) => g.3 += 1,
            None => groups.push((key.0, key.1, key.2, 1)),
        }
    }
    let mut out = d
        .explain(source)
        .lines()
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    for (name, layout, reason, n) in groups {
        out.push_str(&format!("{n:>3} x {name}  {layout}  {reason}\n"));
    }
    out
}

/// The spec's inference targets: the mesh of its transfer's destination,
/// plus one device.
fn targets(spec: &Spec) -> Vec<(String, Option<String>)> {
    let to = spec.transfer().unwrap().to.clone();
    let mesh = spec.mesh_of(&to).unwrap().to_string();
    vec![(mesh, Some(to)), ("single device".into(), None)]
}

fn derive_for(spec: &Spec, from: &str, target: &str) -> Derived {
    let rules = rules_for(spec, from);
    let t = match spec.meshes().get(target) {
        Some(m) => DeriveTarget::from_mesh(m.clone(), &rules).unwrap(),
        None => DeriveTarget::from_degrees(1, 1, 1).unwrap(),
    };
    derive_strategy(spec.strategy(from).unwrap(), &t, &rules)
        .unwrap_or_else(|e| panic!("{from} -> {target}: {e}"))
}

/// Hand-written inference strategies that the derivation reproduces
/// exactly, and the tensors where it knowingly differs.
const EXPECTED_DIFFERENCES: &[(&str, &[&str])] = &[
    // Training used `chunk` blocks; the hand-written target uses explicit
    // padded blocks. derive keeps the training policy.
    (
        "specs/uneven-vocab.yaml",
        &["embed.weight", "lm_head.weight", "lm_head.bias"],
    ),
];

#[test]
fn bundled_specs_derive_their_inference_strategies() {
    let files = bundled_specs();
    assert!(files.len() >= 8, "{files:?}");
    for file in files {
        let spec = load(&file);
        let from = spec.transfer().unwrap().from.clone();
        let stem = Path::new(&file).file_stem().unwrap().to_str().unwrap();
        let mut snap = String::new();
        for (target, handwritten) in targets(&spec) {
            let d = derive_for(&spec, &from, &target);
            snap.push_str(&summary(&d, &from));
            if let Some(h) = handwritten {
                let diff = differences(&d.strategy, spec.strategy(&h).unwrap());
                let expected = EXPECTED_DIFFERENCES
                    .iter()
                    .find(|(f, _)| *f == file)
                    .map_or(&[][..], |(_, d)| *d);
                assert_eq!(diff, expected, "{file}: derived vs hand-written `{h}`");
                snap.push_str(&format!(
                    "same as hand-written `{h}`: {} of {} tensors\n",
                    d.strategy.tensors().len() - diff.len(),
                    d.strategy.tensors().len()
                ));
            } else {
                // One device: every tensor whole.
                for (t, l) in d.strategy.tensors().iter().zip(d.strategy.layouts()) {
                    assert_eq!(l.region_of(0).unwrap().extent(), t.shape.as_slice());
                }
            }
            snap.push('\n');
        }
        insta::assert_snapshot!(format!("specs_{stem}"), snap);
    }
}

#[test]
fn small_spec_explanations() {
    // The full per-tensor explanation of the small specs.
    for file in [
        "specs/mindspore-notation.yaml",
        "specs/tiny-model.yaml",
        "specs/dtensor-notation.yaml",
    ] {
        let spec = load(file);
        let stem = Path::new(file).file_stem().unwrap().to_str().unwrap();
        let from = spec.transfer().unwrap().from.clone();
        let (target, _) = targets(&spec).remove(0);
        let d = derive_for(&spec, &from, &target);
        insta::assert_snapshot!(format!("explain_{stem}"), d.explain(&from));
    }
}

/// Targets given by degrees, for every bundled spec: what plan and
/// simulate must accept.
const DEGREES: &[(u64, u64, u64)] = &[(1, 1, 1), (2, 2, 1), (4, 2, 2), (8, 4, 2), (8, 8, 1)];

/// Buffers simulated for every derived strategy (about a second in a
/// debug build).
const SMALL: u64 = 16 << 20;
/// Buffers simulated for the derivation to a spec's own inference mesh
/// (the medium specs, about ten seconds each in a debug build; the
/// Llama-sized ones are only planned and verified).
const MEDIUM: u64 = 320 << 20;

#[test]
fn every_derived_strategy_plans_verifies_and_simulates() {
    // One thread per spec: simulation is slow in a debug build.
    let counts: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = bundled_specs()
            .into_iter()
            .map(|file| scope.spawn(move || plan_spec_targets(&file)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let planned: usize = counts.iter().map(|c| c.0).sum();
    let simulated: usize = counts.iter().map(|c| c.1).sum();
    assert!(planned >= 40, "{planned}");
    assert!(simulated >= 15, "{simulated}");
}

/// Derives `file`'s training strategy for its own targets and for
/// [`DEGREES`]; plans, verifies and (within the limits) simulates each.
fn plan_spec_targets(file: &str) -> (usize, usize) {
    let spec = load(file);
    let from = spec.transfer().unwrap().from.clone();
    let mut rules = rules_for(&spec, &from);
    // Degrees that do not divide a tensor replicate it.
    rules.fallback = Fallback::Replicate;
    let train = spec.strategy(&from).unwrap();
    let mut derived = Vec::new();
    for (i, (target, _)) in targets(&spec).into_iter().enumerate() {
        derived.push((
            derive_for(&spec, &from, &target),
            if i == 0 { MEDIUM } else { SMALL },
        ));
    }
    for &(n, tp, pp) in DEGREES {
        let t = DeriveTarget::from_degrees(n, tp, pp).unwrap();
        match derive_strategy(train, &t, &rules) {
            Ok(d) => derived.push((d, SMALL)),
            // A pipelined target needs a layer pattern or training stages.
            Err(DeriveError::NoLayerPattern { .. }) => assert!(pp > 1, "{file}"),
            Err(e) => panic!("{file}: {n} devices, tp {tp}, pp {pp}: {e}"),
        }
    }
    let mut simulated = 0;
    for (d, limit) in &derived {
        simulated += usize::from(plan_and_simulate(train, &d.strategy, *limit));
    }
    (derived.len(), simulated)
}

#[test]
fn derived_specs_read_back() {
    for file in bundled_specs() {
        let spec = load(&file);
        let from = spec.transfer().unwrap().from.clone();
        for (target, _) in targets(&spec) {
            let d = derive_for(&spec, &from, &target)
                .renamed("derived_for_test")
                .unwrap();
            let with = derived_spec(&spec, Some(&from), &d.strategy, Some(&target)).unwrap();
            // On the target mesh, by its name; one device on a mesh equal
            // to it, the spec's or a new one.
            let on = with.mesh_of("derived_for_test").unwrap().as_str();
            if spec.meshes().contains_key(&target) {
                assert_eq!(on, target);
            }
            assert_eq!(*with.meshes()[on], **d.strategy.mesh(), "{on}");
            let yaml = with.to_yaml("derived\nfor a test").unwrap();
            assert!(yaml.starts_with("# derived\n# for a test\n"), "{yaml}");
            let back = parse(&yaml);
            let t = back.transfer().unwrap();
            assert_eq!(
                (t.from.as_str(), t.to.as_str()),
                (from.as_str(), "derived_for_test")
            );
            assert!(
                differences(&d.strategy, back.strategy("derived_for_test").unwrap()).is_empty()
            );
            // The spec's own strategies are written too, unchanged.
            for (name, s) in spec.strategies() {
                assert!(
                    differences(s, back.strategy(name).unwrap()).is_empty(),
                    "{name}"
                );
            }
            // A taken name is refused.
            let d = d.renamed(&from).unwrap();
            let err = derived_spec(&spec, Some(&from), &d.strategy, None).unwrap_err();
            assert!(
                matches!(err, shardplan::spec::DerivedSpecError::NameTaken(_)),
                "{err}"
            );
        }
    }
}

#[test]
fn tiny_model_runs_through_derived_strategies() {
    use shardplan::model::{DEFAULT_TOLERANCE, check_model};
    let spec = load("specs/tiny-model.yaml");
    let train = spec.strategy("train").unwrap();
    let rules = rules_for(&spec, "train");
    let tokens = vec![vec![1, 17, 42, 63, 0, 33], vec![5, 5, 60, 12, 31, 32]];
    let mut targets: Vec<DeriveTarget> = [
        (1, 1, 1),
        (2, 2, 1),
        (4, 2, 2),
        (4, 4, 1),
        (8, 4, 2),
        (4, 2, 1),
    ]
    .iter()
    .map(|&(n, tp, pp)| DeriveTarget::from_degrees(n, tp, pp).unwrap())
    .collect();
    targets.push(DeriveTarget::from_mesh(spec.meshes()["infer"].clone(), &rules).unwrap());
    for t in targets {
        let d = derive_strategy(train, &t, &rules).unwrap();
        let r = check_model(train, &d.strategy, &tokens, DEFAULT_TOLERANCE)
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        assert!(r.max_rel_err <= DEFAULT_TOLERANCE, "{t}: {}", r.max_rel_err);
    }
}

// ---------------------------------------------------------------------------
// MindSpore conformance

/// One side of a case: its strategy over every parameter (a parameter in
/// no layout is whole on every rank), the recorded optimizer shards, and
/// whether every parameter has a layout.
fn case_side(case: &Value, side: &str) -> (Strategy, BTreeMap<String, u64>, bool) {
    let params = case["params"].as_object().unwrap();
    let devices = case[format!("{side}_device_num")].as_u64().unwrap();
    let stages = case[format!("{side}_pipeline_stages")].as_u64().unwrap();
    let layouts = &case[format!("{side}_layouts")];
    let mesh = Arc::new(if layouts.is_null() {
        DeviceMesh::new(Vec::<(String, u64)>::new()).unwrap()
    } else {
        DeviceMesh::new([("rank", devices)]).unwrap()
    });
    let mut infos = Vec::new();
    let mut ls = Vec::new();
    let mut opt = BTreeMap::new();
    let mut complete = true;
    for (name, info) in params {
        let shape: Vec<u64> = serde_json::from_value(info["full_shape"].clone()).unwrap();
        let entry = (0..stages).find_map(|s| {
            layouts
                .as_array()
                .and_then(|a| a[s as usize].get(name))
                .map(|e| (s, e))
        });
        let layout = match entry {
            Some((s, e)) => {
                opt.insert(
                    name.clone(),
                    ms_layout(e, s, stages).opt_shard_group_size().unwrap(),
                );
                ms_layout(e, s, stages).to_layout(&shape).unwrap()
            }
            None => {
                complete &= layouts.is_null();
                TensorLayout::replicated(mesh.clone(), &shape).unwrap()
            }
        };
        infos.push(TensorInfo {
            name: name.clone(),
            shape,
            dtype: DType::F32,
        });
        ls.push(layout);
    }
    (Strategy::new(side, mesh, infos, ls).unwrap(), opt, complete)
}

/// Cases whose destination is a plain inference target of the source:
/// deriving for the destination's devices and stages (tp = devices /
/// stages) gives exactly the destination layouts.
const PLAIN: &[(&str, &str)] = &[
    ("tp4_row_to_tp2_row", "tp shrink"),
    ("tp4_col_to_tp2_col", "tp shrink"),
    ("pb_tp4_to_tp2", "tp shrink, protobuf"),
    ("tp2_row_to_tp4_row", "tp grow"),
    ("devmat_2x4_rows_by_axis0", "dp 2 x tp 4 served at tp 8"),
    ("pb_nested_2axes_dim0", "nested tp split, same degree"),
    ("tp4_row_to_single", "single device"),
    ("tp4_col_to_single", "single device"),
    ("dp2tp2_to_tp2", "dp dropped"),
    ("opt_dp2tp2_to_tp2", "optimizer shard and dp dropped"),
    (
        "pb_opt_dp2tp2_to_tp2",
        "optimizer shard and dp dropped, protobuf",
    ),
    ("opt_partial_dp4_size2", "partial optimizer shard dropped"),
    ("opt_pure_dp4_to_single", "optimizer shard, single device"),
    (
        "opt_permuted_tm",
        "single device (the case is suspect for values, not placement)",
    ),
    ("opt_permuted_tm_indep_src", "single device"),
    ("pp2_to_single", "pipeline merge, single device"),
    ("pp2_to_pp2_tp_change", "pipeline kept, tp shrink"),
    ("pp1_to_pp2", "pipeline split by layer"),
];

/// Cases whose destination is not what an inference derivation gives.
const NOT_PLAIN: &[(&str, &str)] = &[
    (
        "bias_1d",
        "the destination replicates a bias training split over tp",
    ),
    (
        "opt_bias_1d",
        "the destination splits a bias training only optimizer-sharded",
    ),
    (
        "pp2_to_pp1_tp2",
        "the destination moves layer0's split from rows to columns",
    ),
    (
        "multi_param_mixed",
        "the destination re-splits 2-D tp and splits a replicated table",
    ),
    ("grid_2x4_to_4x2", "2-D tensor parallelism re-factored"),
    ("grid_permute_tensor_map", "2-D tensor parallelism permuted"),
    (
        "grow_1_to_8_dev_2x2x2",
        "a single-device source has no tp to keep",
    ),
    (
        "opt_dst_is_opt_sharded",
        "the destination is a training layout (optimizer shard)",
    ),
    (
        "pb_nested_dst",
        "the destination moves the split to the other dimension",
    ),
    (
        "replicated_to_split",
        "the destination splits what training replicated",
    ),
    (
        "split_to_replicated",
        "the destination replicates what training split",
    ),
    (
        "threeD_tensor_last_dim",
        "the destination moves the split to another dimension",
    ),
    (
        "tp4_row_to_tp4_col",
        "the destination moves the split to the other dimension",
    ),
    (
        "dst_missing_param",
        "the destination lays out only some parameters",
    ),
    (
        "src_strategy_subset_by_stage",
        "the source lays out only some parameters",
    ),
];

#[test]
fn conformance_plain_inference_targets() {
    let Some(dir) = common::shared_or_skip(&shared_cases_dir(), "no inference target is derived")
    else {
        return;
    };
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    entries.sort();
    for case_dir in entries {
        let case: Value =
            serde_json::from_str(&std::fs::read_to_string(case_dir.join("case.json")).unwrap())
                .unwrap();
        let name = case["name"].as_str().unwrap().to_string();
        if !case["expected_error"].is_null() {
            eprintln!("{name}: skipped, MindSpore refuses the transform");
            continue;
        }
        let plain = PLAIN.iter().find(|(n, _)| *n == name);
        let not_plain = NOT_PLAIN.iter().find(|(n, _)| *n == name);
        if plain.is_none() && not_plain.is_none() {
            eprintln!("{name}: not classified as a plain inference target or not; skipped");
            continue;
        }
        let (src, opt, src_complete) = case_side(&case, "src");
        let (dst, _, dst_complete) = case_side(&case, "dst");
        let devices = case["dst_device_num"].as_u64().unwrap();
        let stages = case["dst_pipeline_stages"].as_u64().unwrap();
        let target = DeriveTarget::from_degrees(devices, devices / stages, stages).unwrap();
        let rules = DeriveRules {
            layer: Some("layer{}.*".into()),
            optimizer_shards: opt,
            ..Default::default()
        };
        let derived = derive_strategy(&src, &target, &rules);
        let same = src_complete
            && dst_complete
            && derived
                .as_ref()
                .is_ok_and(|d| differences(&d.strategy, &dst).is_empty());
        match (plain, same) {
            (Some(_), true) | (None, false) => checked.push(name),
            (Some((_, why)), false) => failures.push(format!(
                "{name} ({why}): derived {:?} differs from the destination",
                derived.map(|d| d
                    .strategy
                    .layouts()
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>())
            )),
            (None, true) => failures.push(format!(
                "{name}: classified as not plain ({}), but derivation gives the destination",
                not_plain.unwrap().1
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for (n, _) in PLAIN.iter().chain(NOT_PLAIN) {
        assert!(checked.iter().any(|c| c == n), "case {n} not found");
    }
}

// ---------------------------------------------------------------------------
// Rules

const PIPE: &str = "
version: 1
meshes:
  train: {shape: [4, 2, 2], axes: [pp, dp, tp]}
tensors:
  - {name: embed.weight, shape: [64, 16], dtype: f32}
  - {name: layers.0.w, shape: [32, 16], dtype: f32}
  - {name: layers.1.w, shape: [32, 16], dtype: f32}
  - {name: layers.2.w, shape: [32, 16], dtype: f32}
  - {name: layers.3.w, shape: [32, 16], dtype: f32}
  - {name: layers.4.w, shape: [32, 16], dtype: f32}
  - {name: mid.weight, shape: [16], dtype: f32}
  - {name: mid2.weight, shape: [16], dtype: f32}
  - {name: norm.weight, shape: [16], dtype: f32}
  - {name: bias, shape: [6], dtype: f32}
  - {name: head.weight, shape: [64, 16], dtype: f32}
strategies:
  train:
    mesh: train
    stages: {axis: pp, layer: \"layers.{}.*\", ranges: [[0, 1], [2, 2], [3, 3], [4, 4]]}
    rules:
      - {match: embed.weight, dims: [[tp, dp], null], at: {pp: 0}}
      - {match: mid.weight, dims: [dp], at: {pp: 1}}
      - {match: mid2.weight, dims: replicated, at: {pp: 2}}
      - {match: norm.weight, dims: replicated}
      - {match: bias, dims: [tp], at: {pp: 3}}
      - {match: head.weight, dims: [tp, null], partial: [dp], at: {pp: 3}}
      - {match: \"*\", dims: [tp, null]}
transfer: {from: train, to: train}
";

fn pipe(derive: &str) -> Spec {
    parse(&format!("{PIPE}{derive}"))
}

fn notes(d: &Derived, tensor: &str) -> String {
    let l = d.strategy.layout(tensor).unwrap();
    format!("{l}  {}", d.reason(tensor).unwrap())
}

#[test]
fn pipeline_rules() {
    let spec = pipe("derive: {fallback: replicate}\n");
    let rules = rules_for(&spec, "train");
    assert_eq!(rules.layer.as_deref(), Some("layers.{}.*"));
    assert_eq!(rules.pp_axis.as_deref(), Some("pp"));
    let train = spec.strategy("train").unwrap();
    // 4 stages -> 2: layers balanced 3 + 2; relative stages for the rest.
    let d = derive_strategy(train, &DeriveTarget::from_degrees(4, 2, 2).unwrap(), &rules).unwrap();
    let cases = [
        (
            "embed.weight",
            "[tp, -] at pp=0  optimizer shard over dp (2 ways) dropped; tp split of dim 0 kept: 2 -> 2; stage 0 of 4 -> stage 0 of 2",
        ),
        (
            "layers.2.w",
            "[tp, -] at pp=0  tp split of dim 0 kept: 2 -> 2; layer 2 -> stage 0 of 2 (layers 0-2)",
        ),
        (
            "layers.3.w",
            "[tp, -] at pp=1  tp split of dim 0 kept: 2 -> 2; layer 3 -> stage 1 of 2 (layers 3-4)",
        ),
        (
            "mid.weight",
            "[-] at pp=0  optimizer shard over dp (2 ways) dropped; no tensor-parallel split in training: not split; stage 1 of 4 -> stage 0 of 2",
        ),
        (
            "mid2.weight",
            "[-] at pp=1  no tensor-parallel split in training: not split; stage 2 of 4 -> stage 1 of 2",
        ),
        (
            "norm.weight",
            "[-]  no tensor-parallel split in training: not split; no layer index, on every training stage: on all 2 stages",
        ),
        (
            "bias",
            "[tp] at pp=1  tp split of dim 0 kept: 2 -> 2; stage 3 of 4 -> stage 1 of 2",
        ),
        (
            "head.weight",
            "[tp, -] at pp=1  partial sums over dp reduced; tp split of dim 0 kept: 2 -> 2; stage 3 of 4 -> stage 1 of 2",
        ),
    ];
    for (t, want) in cases {
        assert_eq!(notes(&d, t), want, "{t}");
    }
    plan_and_simulate(train, &d.strategy, SMALL);

    // 4 stages -> 8: the last stays last; layers spread 1 per stage.
    let d = derive_strategy(
        train,
        &DeriveTarget::from_degrees(32, 4, 8).unwrap(),
        &rules,
    )
    .unwrap();
    assert_eq!(
        notes(&d, "bias"),
        "[-] at pp=7  dim 0 (6) not divisible by tp 4: replicated (fallback); stage 3 of 4 -> stage 7 of 8"
    );
    assert!(notes(&d, "head.weight").ends_with("stage 3 of 4 -> stage 7 of 8"));
    assert!(notes(&d, "mid.weight").ends_with("stage 1 of 4 -> stage 2 of 8"));
    assert!(notes(&d, "layers.4.w").ends_with("layer 4 -> stage 4 of 8 (layers 4-4)"));
    plan_and_simulate(train, &d.strategy, SMALL);

    // Explicit ranges, a shared tensor and a forced replication.
    let spec = pipe(
        "derive: {ranges: [[0, 0], [1, 4]], shared: [\"embed.*\"], replicate: [\"head.*\"], fallback: chunk}\n",
    );
    let rules = rules_for(&spec, "train");
    let d = derive_strategy(
        spec.strategy("train").unwrap(),
        &DeriveTarget::from_degrees(8, 4, 2).unwrap(),
        &rules,
    )
    .unwrap();
    assert_eq!(
        notes(&d, "embed.weight"),
        "[tp, -]  optimizer shard over dp (2 ways) dropped; tp split of dim 0 kept: 2 -> 4; shared (derive.shared): on all 2 stages"
    );
    assert_eq!(
        notes(&d, "layers.1.w"),
        "[tp, -] at pp=1  tp split of dim 0 kept: 2 -> 4; layer 1 -> stage 1 of 2 (layers 1-4)"
    );
    assert_eq!(
        notes(&d, "head.weight"),
        "[-, -] at pp=1  partial sums over dp reduced; replicated (derive.replicate); stage 3 of 4 -> stage 1 of 2"
    );
    assert_eq!(
        notes(&d, "bias"),
        "[tp chunk] at pp=1  dim 0 (6) not divisible by tp 4: chunk split (fallback); stage 3 of 4 -> stage 1 of 2"
    );
    plan_and_simulate(spec.strategy("train").unwrap(), &d.strategy, SMALL);
}

/// A tied embedding (`tied.weight`: looked up before layer 0 and used as
/// the output projection after the last layer) goes to the stages that use
/// it, not to every stage: from a training strategy that keeps it on two
/// stages, and from a `derive.shared` rule naming its layers.
#[test]
fn tied_embeddings_go_to_the_stages_that_use_them() {
    let with_tied = |derive: &str| {
        parse(&(PIPE.replace(
            "      - {match: \"*\", dims: [tp, null]}\n",
            "      - {match: tied.weight, dims: [tp, null], at: {pp: [0, 3]}}\n      - {match: \"*\", dims: [tp, null]}\n",
        ).replace(
            "  - {name: head.weight",
            "  - {name: tied.weight, shape: [64, 16], dtype: f32}\n  - {name: head.weight",
        ) + derive))
    };
    let spec = with_tied("");
    let train = spec.strategy("train").unwrap();
    let tl = train.layout("tied.weight").unwrap();
    assert_eq!(tl.to_string(), "[tp, -] at pp=0|3");
    // Stages 1 and 2 of training hold nothing of it.
    let holders: Vec<u64> = (0..16).filter(|&r| tl.holds(r)).collect();
    assert_eq!(holders, vec![0, 1, 2, 3, 12, 13, 14, 15]);

    // From the training pins: each training stage maps to its counterpart.
    let rules = rules_for(&spec, "train");
    for (target, want) in [
        (
            DeriveTarget::from_degrees(4, 2, 2).unwrap(),
            "[tp, -]  tp split of dim 0 kept: 2 -> 2; stages 0, 3 of 4 -> stages 0, 1 of 2",
        ),
        (
            DeriveTarget::from_degrees(16, 2, 8).unwrap(),
            "[tp, -] at pp=0|7  tp split of dim 0 kept: 2 -> 2; stages 0, 3 of 4 -> stages 0, 7 of 8",
        ),
        (
            DeriveTarget::from_degrees(2, 2, 1).unwrap(),
            "[tp, -]  tp split of dim 0 kept: 2 -> 2; stages 0, 3 of 4 -> the single stage",
        ),
    ] {
        let d = derive_strategy(train, &target, &rules).unwrap();
        assert_eq!(notes(&d, "tied.weight"), want, "{target}");
        // Only the ranks of those stages receive it.
        let l = d.strategy.layout("tied.weight").unwrap();
        let count = (0..target.mesh().rank_count())
            .filter(|&r| l.holds(r))
            .count();
        let stages = if target.pp_degree() == 1 { 1 } else { 2 };
        assert_eq!(count as u64, stages * target.tp_degree(), "{target}");
        plan_and_simulate(train, &d.strategy, SMALL);
    }

    // From a rule naming the layers that use it, whatever training did.
    let spec =
        with_tied("derive: {shared: [{match: tied.weight, layers: [first, last]}, norm.weight]}\n");
    let rules = rules_for(&spec, "train");
    assert_eq!(
        rules.shared[0].layers,
        vec![LayerRef::First, LayerRef::Last]
    );
    let train = spec.strategy("train").unwrap();
    let d = derive_strategy(train, &DeriveTarget::from_degrees(8, 2, 4).unwrap(), &rules).unwrap();
    assert_eq!(
        notes(&d, "tied.weight"),
        "[tp, -] at pp=0|3  tp split of dim 0 kept: 2 -> 2; shared (derive.shared) by layers 0, 4: stages 0, 3 of 4"
    );
    assert_eq!(
        notes(&d, "norm.weight"),
        "[-]  no tensor-parallel split in training: not split; shared (derive.shared): on all 4 stages"
    );
    plan_and_simulate(train, &d.strategy, SMALL);
    // Two layers on one stage give that stage once.
    let rules = DeriveRules {
        shared: vec![SharedTensors {
            pattern: "tied.weight".into(),
            layers: vec![LayerRef::Index(3), LayerRef::Last],
        }],
        ..rules
    };
    let d = derive_strategy(train, &DeriveTarget::from_degrees(4, 2, 2).unwrap(), &rules).unwrap();
    assert_eq!(
        notes(&d, "tied.weight"),
        "[tp, -] at pp=1  tp split of dim 0 kept: 2 -> 2; shared (derive.shared) by layers 3, 4: stage 1 of 2"
    );

    // The derived spec writes the pins as a list and reads back alike.
    let d = derive_strategy(
        train,
        &DeriveTarget::from_degrees(8, 2, 4).unwrap(),
        &rules_for(&spec, "train"),
    )
    .unwrap();
    let yaml = derived_spec(&spec, Some("train"), &d.strategy, None)
        .unwrap()
        .to_yaml("")
        .unwrap();
    assert!(yaml.contains(r#"at: {"pp": [0, 3]}"#), "{yaml}");
    let back = parse(&yaml);
    let again = back
        .strategy("derived")
        .unwrap()
        .layout("tied.weight")
        .unwrap();
    assert!(again.same_placement(d.strategy.layout("tied.weight").unwrap()));

    // A layer the model does not have is refused by the entry's name.
    let rules = DeriveRules {
        shared: vec![SharedTensors {
            pattern: "tied.*".into(),
            layers: vec![LayerRef::First, LayerRef::Index(100)],
        }],
        ..rules_for(&spec, "train")
    };
    let e =
        derive_strategy(train, &DeriveTarget::from_degrees(4, 2, 2).unwrap(), &rules).unwrap_err();
    assert!(
        matches!(e, DeriveError::SharedLayer { layers: 5, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("derive.shared `tied.*`"), "{e}");

    // MindSpore keeps a parameter once per stage file: export refuses.
    let e = MindSporeLayout::from_layout(tl).unwrap_err();
    assert!(
        matches!(
            e,
            LayoutError::MindSpore(MindSporeFault::SeveralStages { .. })
        ),
        "{e:?}"
    );

    // Bad entries are located and explained.
    let bad = [
        (
            "derive: {shared: [{match: tied.weight, layers: [middle]}]}\n",
            "bad_stages",
        ),
        ("derive: {shared: [{layers: [first]}]}\n", "missing_field"),
        (
            "derive: {shared: [{match: tied.weight, layers: []}]}\n",
            "bad_stages",
        ),
    ];
    for (section, want) in bad {
        let (s, diags) = parse_spec("t.yaml", &format!("{PIPE}{section}"));
        assert!(s.is_none(), "{section}");
        assert!(
            diags.iter().any(|d| d.code.short() == want),
            "{section}: {diags:?}"
        );
    }
    for (at, want) in [("[]", "no coordinate"), ("[0, 9]", "beyond axis")] {
        let text = PIPE.replace("at: {pp: 2}", &format!("at: {{pp: {at}}}"));
        let (s, diags) = parse_spec("t.yaml", &text);
        assert!(s.is_none(), "{at}");
        let d = diags
            .iter()
            .find(|d| d.code.short() == "pin_out_of_range")
            .unwrap();
        assert!(d.message.contains(want), "{at}: {}", d.message);
    }
}

#[test]
fn several_tp_dims_keep_the_widest() {
    let spec = parse(
        "
version: 1
meshes:
  m: {shape: [2, 4], axes: [tpa, tpb]}
tensors:
  - {name: a, shape: [8, 8], dtype: f32}
  - {name: b, shape: [8, 8], dtype: f32}
strategies:
  s:
    mesh: m
    rules:
      - {match: a, dims: [tpa, tpb]}
      - {match: b, dims: [tpb, tpa]}
derive: {tp_axes: [tpa, tpb]}
",
    );
    let rules = rules_for(&spec, "s");
    let d = derive_strategy(
        spec.strategy("s").unwrap(),
        &DeriveTarget::from_degrees(2, 2, 1).unwrap(),
        &rules,
    )
    .unwrap();
    assert_eq!(
        notes(&d, "a"),
        "[-, tp]  tp split of dim 0 (2 ways) dropped: dim 1 keeps the split; tp split of dim 1 kept: 4 -> 2"
    );
    assert_eq!(
        notes(&d, "b"),
        "[tp, -]  tp split of dim 1 (2 ways) dropped: dim 0 keeps the split; tp split of dim 0 kept: 4 -> 2"
    );
    // A target with two tensor-parallel axes splits over both.
    let mesh = Arc::new(DeviceMesh::new([("x", 2), ("y", 2)]).unwrap());
    let t = DeriveTarget::new(mesh, vec!["y".into(), "x".into()], None).unwrap();
    assert_eq!(t.tp_axes(), ["x", "y"]);
    let d = derive_strategy(spec.strategy("s").unwrap(), &t, &rules).unwrap();
    assert_eq!(d.strategy.layout("a").unwrap().to_string(), "[-, (x, y)]");
}

#[test]
fn axis_roles_by_name_config_and_use() {
    let spec = parse(
        "
version: 1
meshes:
  m: {shape: [2, 2, 2], axes: [fsdp, sp, rows]}
tensors:
  - {name: w, shape: [8, 8], dtype: f32}
  - {name: v, shape: [8], dtype: f32}
strategies:
  s:
    mesh: m
    rules:
      - {match: w, dims: [fsdp, sp]}
      - {match: v, dims: replicated, at: {rows: 1}}
",
    );
    let rules = rules_for(&spec, "s");
    let t = DeriveTarget::from_degrees(2, 2, 1).unwrap();
    let d = derive_strategy(spec.strategy("s").unwrap(), &t, &rules).unwrap();
    // fsdp by name, sp by use (splits), rows by use (only pins).
    let roles: Vec<String> = d.roles.iter().map(|(a, r)| format!("{a}={r}")).collect();
    assert_eq!(roles, ["fsdp=dp", "sp=tp", "rows=pp"]);
    assert_eq!(
        notes(&d, "w"),
        "[-, tp]  optimizer shard over fsdp (2 ways) dropped; tp split of dim 1 kept: 2 -> 2"
    );
    assert_eq!(
        notes(&d, "v"),
        "[-]  no tensor-parallel split in training: not split; stage 1 of 2 -> the single stage"
    );
    // Configured roles win over names.
    let rules = DeriveRules {
        tp_axes: vec!["fsdp".into()],
        dp_axes: vec!["sp".into(), "rows".into()],
        ..rules
    };
    let d = derive_strategy(spec.strategy("s").unwrap(), &t, &rules).unwrap();
    assert_eq!(
        notes(&d, "w"),
        "[tp, -]  data-parallel split of dim 1 over sp (2 ways) dropped; tp split of dim 0 kept: 2 -> 2"
    );
    assert_eq!(
        notes(&d, "v"),
        "[-]  pin rows=1 dropped; no tensor-parallel split in training: not split"
    );
}

// ---------------------------------------------------------------------------
// Errors

fn code(e: &DeriveError) -> String {
    miette::Diagnostic::code(e).unwrap().to_string()
}

#[test]
fn errors_have_stable_codes() {
    let pipe_spec = pipe("");
    let pipe_rules = rules_for(&pipe_spec, "train");
    let pipe_train = pipe_spec.strategy("train").unwrap();
    let tiny = load("specs/tiny-model.yaml");
    let tiny_rules = rules_for(&tiny, "train");
    let tiny_train = tiny.strategy("train").unwrap();
    let flat = load("specs/single-device.yaml");
    let flat_train = flat.strategy("train").unwrap();
    let split_pp = parse(
        "
version: 1
meshes: {m: {shape: [2, 2], axes: [pp, tp]}}
tensors: [{name: w, shape: [8, 8], dtype: f32}]
strategies: {s: {mesh: m, rules: [{match: w, dims: [pp, tp]}]}}
",
    );
    let two_roles = parse(
        "
version: 1
meshes: {m: {shape: [2, 2], axes: [x, y]}}
tensors: [{name: w, shape: [8, 8], dtype: f32}, {name: v, shape: [8], dtype: f32}]
strategies: {s: {mesh: m, rules: [{match: w, dims: [x, y]}, {match: v, dims: replicated, at: {x: 1}}]}}
",
    );
    let two_pp = parse(
        "
version: 1
meshes: {m: {shape: [2, 2], axes: [pp, stage]}}
tensors: [{name: v, shape: [8], dtype: f32}]
strategies: {s: {mesh: m, rules: [{match: v, dims: replicated}]}}
",
    );
    let deg = |n, tp, pp| DeriveTarget::from_degrees(n, tp, pp).unwrap();
    let cases: Vec<(&str, Option<DeriveError>, Result<Derived, DeriveError>)> = vec![
        (
            "target_shape",
            None,
            DeriveTarget::from_degrees(6, 4, 1).map(|_| unreachable!()),
        ),
        (
            "target_shape",
            None,
            DeriveTarget::from_degrees(4, 0, 1).map(|_| unreachable!()),
        ),
        (
            "target_shape",
            None,
            DeriveTarget::from_degrees(4, u64::MAX, 2).map(|_| unreachable!()),
        ),
        (
            "target_mesh",
            None,
            DeriveTarget::from_degrees(1 << 21, 1, 1).map(|_| unreachable!()),
        ),
        (
            "unknown_axis",
            None,
            DeriveTarget::new(deg(2, 2, 1).mesh().clone(), vec!["zz".into()], None)
                .map(|_| unreachable!()),
        ),
        (
            "target_roles",
            None,
            DeriveTarget::new(
                deg(2, 2, 1).mesh().clone(),
                vec!["tp".into()],
                Some("tp".into()),
            )
            .map(|_| unreachable!()),
        ),
        (
            "target_roles",
            None,
            DeriveTarget::from_mesh(two_pp.meshes()["m"].clone(), &DeriveRules::default())
                .map(|_| unreachable!()),
        ),
        (
            "indivisible",
            None,
            derive_strategy(tiny_train, &deg(7, 7, 1), &tiny_rules),
        ),
        (
            "pipeline_split",
            None,
            derive_strategy(
                split_pp.strategy("s").unwrap(),
                &deg(2, 2, 1),
                &DeriveRules::default(),
            ),
        ),
        (
            "axis_roles",
            Some(DeriveError::AxisRoles {
                strategy: "s".into(),
                fault: AxisRoleFault::SplitsAndPins { axis: "x".into() },
            }),
            derive_strategy(
                two_roles.strategy("s").unwrap(),
                &deg(2, 2, 1),
                &DeriveRules::default(),
            ),
        ),
        (
            "axis_roles",
            Some(DeriveError::AxisRoles {
                strategy: "s".into(),
                fault: AxisRoleFault::SeveralPipelines {
                    axes: vec!["pp".into(), "stage".into()],
                },
            }),
            derive_strategy(
                two_pp.strategy("s").unwrap(),
                &deg(2, 2, 1),
                &DeriveRules::default(),
            ),
        ),
        (
            "no_layer_pattern",
            None,
            derive_strategy(flat_train, &deg(4, 2, 2), &DeriveRules::default()),
        ),
        (
            "pattern",
            Some(DeriveError::Pattern {
                pattern: "no index".into(),
                fault: PatternError::NoCapture,
            }),
            derive_strategy(
                flat_train,
                &deg(2, 2, 1),
                &DeriveRules {
                    layer: Some("no index".into()),
                    ..Default::default()
                },
            ),
        ),
        (
            "pattern",
            Some(DeriveError::Pattern {
                pattern: "".into(),
                fault: PatternError::Empty,
            }),
            derive_strategy(
                flat_train,
                &deg(2, 2, 1),
                &DeriveRules {
                    shared: vec![SharedTensors::everywhere("")],
                    ..Default::default()
                },
            ),
        ),
        (
            "ranges",
            Some(DeriveError::Ranges {
                fault: RangeFault::Count {
                    ranges: 1,
                    stages: 2,
                },
            }),
            derive_strategy(
                pipe_train,
                &deg(4, 2, 2),
                &DeriveRules {
                    ranges: Some(vec![[0, 4]]),
                    ..pipe_rules.clone()
                },
            ),
        ),
        (
            "ranges",
            Some(DeriveError::Ranges {
                fault: RangeFault::Unheld {
                    tensor: "layers.4.w".into(),
                    layer: 4,
                },
            }),
            derive_strategy(
                pipe_train,
                &deg(4, 2, 2),
                &DeriveRules {
                    ranges: Some(vec![[0, 1], [2, 3]]),
                    ..pipe_rules.clone()
                },
            ),
        ),
        (
            "ranges",
            Some(DeriveError::Ranges {
                fault: RangeFault::Empty { first: 3, last: 2 },
            }),
            derive_strategy(
                pipe_train,
                &deg(4, 2, 2),
                &DeriveRules {
                    ranges: Some(vec![[0, 1], [3, 2]]),
                    ..pipe_rules.clone()
                },
            ),
        ),
        (
            "axis_roles",
            Some(DeriveError::AxisRoles {
                strategy: "s".into(),
                fault: AxisRoleFault::OptimizerShard {
                    tensor: "w".into(),
                    ways: 4,
                    layout: "[d1, d0]".into(),
                },
            }),
            derive_strategy(
                &ms_strategy(),
                &deg(2, 2, 1),
                &DeriveRules {
                    optimizer_shards: [("w".to_string(), 4)].into(),
                    ..Default::default()
                },
            ),
        ),
    ];
    for (want, fault, got) in cases {
        let err = got.err().unwrap_or_else(|| panic!("{want}: no error"));
        assert_eq!(code(&err), format!("shardplan::derive::{want}"), "{err}");
        // The faults told apart, with what they name.
        if let Some(fault) = fault {
            assert_eq!(err, fault);
        }
        // Every error says how to fix it.
        assert!(miette::Diagnostic::help(&err).is_some(), "{want}: no help");
    }
    // The indivisible error lists every tensor, the first few by name.
    let err = derive_strategy(tiny_train, &deg(7, 7, 1), &tiny_rules).unwrap_err();
    let DeriveError::Indivisible { tp, tensors } = &err else {
        panic!("{err}")
    };
    assert_eq!((*tp, tensors.len()), (7, 16));
    assert!(err.to_string().contains("and 11 more"), "{err}");
}

/// A MindSpore layout with an optimizer shard of 2 (dev [2, 2], tm [-1, 0]).
fn ms_strategy() -> Strategy {
    let ms = MindSporeLayout {
        dev_matrix: vec![2, 2],
        tensor_map: vec![vec![-1], vec![0]],
        opt_weight_shard_size: 2,
        opt_weight_shard_step: 2,
        ..Default::default()
    };
    let w = TensorInfo {
        name: "w".into(),
        shape: vec![8, 4],
        dtype: DType::F32,
    };
    let l = ms.to_layout(&w.shape).unwrap();
    let mesh = Arc::new(DeviceMesh::new([("rank", 4)]).unwrap());
    Strategy::new("s", mesh, vec![w], vec![l]).unwrap()
}

#[test]
fn mindspore_optimizer_shards_need_the_record() {
    // The same placement is an optimizer shard or a tensor-map split: the
    // recorded size decides.
    let s = ms_strategy();
    let t = DeriveTarget::from_degrees(2, 2, 1).unwrap();
    let rules = DeriveRules {
        optimizer_shards: [("w".to_string(), 2)].into(),
        ..Default::default()
    };
    let opt = derive_strategy(&s, &t, &rules).unwrap();
    assert_eq!(
        notes(&opt, "w"),
        "[-, tp]  optimizer shard over d1 (2 ways) dropped; tp split of dim 1 kept: 2 -> 2"
    );
    // Without a record, a single axis on dimension 0 reads as a
    // tensor-map split.
    let tm = derive_strategy(&s, &t, &DeriveRules::default()).unwrap();
    assert_eq!(
        notes(&tm, "w"),
        "[tp, -]  tp split of dim 1 (2 ways) dropped: dim 0 keeps the split; tp split of dim 0 kept: 2 -> 2"
    );
}

// ---------------------------------------------------------------------------
// The `derive:` section

#[test]
fn derive_section_diagnostics() {
    let base = "
version: 1
meshes:
  m: {shape: [2, 2], axes: [dp, tp]}
tensors: [{name: w, shape: [8, 8], dtype: f32}]
strategies: {s: {mesh: m, rules: [{match: w, dims: [tp, null]}]}}
";
    let cases = [
        (
            "derive: {tp_axes: [tp], dp_axes: [dp], pp_axis: pp}",
            "unknown_axis",
            (7, 49),
        ),
        (
            "derive: {tp_axes: [tp, dp], dp_axes: [dp]}",
            "axis_reused",
            (7, 39),
        ),
        ("derive: {tp_axes: [tp, tp]}", "axis_reused", (7, 24)),
        ("derive: {fallback: pad}", "bad_policy", (7, 20)),
        ("derive: {layer: \"layers.*\"}", "bad_stages", (7, 17)),
        ("derive: {ranges: [[0, 1], [3, 2]]}", "bad_stages", (7, 27)),
        ("derive: {shared: [\"\"]}", "bad_pattern", (7, 19)),
        ("derive: {replicate: [\"a{}\"]}", "bad_pattern", (7, 22)),
        ("derive: {tp: [tp]}", "unknown_field", (7, 10)),
        ("derive: {fallback: [chunk]}", "wrong_type", (7, 20)),
    ];
    for (section, want, at) in cases {
        let text = format!("{base}{section}\n");
        let (spec, diags) = parse_spec("x.yaml", &text);
        assert!(spec.is_none(), "{section}");
        let d = diags
            .iter()
            .find(|d| d.code.short() == want)
            .unwrap_or_else(|| panic!("{section}: {diags:?}"));
        assert_eq!((d.line, d.column), at, "{section}: {}", d.one_line());
        assert!(!d.help.is_empty());
    }
    // A valid section is read as written.
    let spec = parse(&format!(
        "{base}derive: {{tp_axes: [tp], dp_axes: [dp], fallback: chunk, layer: \"l.{{}}.*\", ranges: [[0, 3]], shared: [e], replicate: [\"*.b\"]}}\n"
    ));
    let r = spec.derive_rules().unwrap().clone();
    assert_eq!(
        (
            r.tp_axes,
            r.dp_axes,
            r.fallback,
            r.layer,
            r.ranges,
            r.shared,
            r.replicate
        ),
        (
            vec!["tp".to_string()],
            vec!["dp".to_string()],
            Fallback::Chunk,
            Some("l.{}.*".to_string()),
            Some(vec![[0, 3]]),
            vec![SharedTensors::everywhere("e")],
            vec!["*.b".to_string()]
        )
    );
    // Specs without the section keep working, without rules.
    assert!(parse(base).derive_rules().is_none());
}

// ---------------------------------------------------------------------------
// Operators (MindSpore semi-auto-parallel strategies)

mod operators;

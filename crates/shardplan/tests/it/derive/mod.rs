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
//!
//! This file holds the shared helpers and the snapshot tests (insta names
//! their files after this module); the other checks are in `plans.rs`,
//! `conformance.rs`, `rules.rs`, `errors.rs`, `derive_section.rs` and
//! `operators.rs`.

mod conformance;
mod derive_section;
mod errors;
mod plans;
mod rules;

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

pub(super) fn load(path: &str) -> Spec {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let (spec, diags) = parse_spec(path, &text);
    spec.unwrap_or_else(|| panic!("{path}: {diags:?}"))
}

pub(super) fn parse(text: &str) -> Spec {
    let (spec, diags) = parse_spec("test.yaml", text);
    spec.unwrap_or_else(|| panic!("{diags:?}"))
}

pub(super) fn bundled_specs() -> Vec<String> {
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
pub(super) fn plan_and_simulate(src: &Strategy, dst: &Strategy, limit: u64) -> bool {
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
pub(super) fn differences(derived: &Strategy, other: &Strategy) -> Vec<String> {
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
pub(super) fn targets(spec: &Spec) -> Vec<(String, Option<String>)> {
    let to = spec.transfer().unwrap().to.clone();
    let mesh = spec.mesh_of(&to).unwrap().to_string();
    vec![(mesh, Some(to)), ("single device".into(), None)]
}

pub(super) fn derive_for(spec: &Spec, from: &str, target: &str) -> Derived {
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

/// Buffers simulated for every derived strategy (about a second in a
/// debug build).
pub(super) const SMALL: u64 = 16 << 20;

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

pub(super) fn pipe(derive: &str) -> Spec {
    parse(&format!("{PIPE}{derive}"))
}

pub(super) fn notes(d: &Derived, tensor: &str) -> String {
    let l = d.strategy.layout(tensor).unwrap();
    format!("{l}  {}", d.reason(tensor).unwrap())
}

// ---------------------------------------------------------------------------
// Operators (MindSpore semi-auto-parallel strategies)

mod operators;

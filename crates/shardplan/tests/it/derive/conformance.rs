//! The MindSpore conformance cases that are plain inference targets derive
//! exactly the destination layouts MindSpore used.

use super::*;

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

//! The plan, verify, explain and simulate commands end to end.

use crate::common;

use std::process::Command;

use common::{shardplan, text};

#[test]
fn plan_report_names_the_bounds() {
    let out = shardplan(&["plan", "specs/mindspore-notation.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    for needle in [
        "network bytes",
        "lower bound",
        "ratio 1.000",
        "max send per rank",
        "largest movers",
    ] {
        assert!(t.contains(needle), "{needle}: {t}");
    }
}

#[test]
fn plan_verify_round_trip_and_a_corrupted_plan() {
    let dir = std::env::temp_dir().join(format!("shardplan-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plan.json");
    let f = file.to_str().unwrap();
    let out = shardplan(&[
        "plan",
        "specs/mindspore-notation.yaml",
        "--format",
        "json",
        "-o",
        f,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = shardplan(&["verify", "specs/mindspore-notation.yaml", f]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("valid"));
    // Send one network piece from the wrong rank.
    let mut plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let piece = plan["tensors"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .flat_map(|t| t["pieces"].as_array_mut().unwrap().iter_mut())
        .find(|p| p["local"] == false)
        .unwrap();
    let src = piece["src_rank"].as_u64().unwrap();
    piece["src_rank"] = ((src + 1) % 8).into();
    std::fs::write(&file, serde_json::to_string(&plan).unwrap()).unwrap();
    let out = shardplan(&["verify", "specs/mindspore-notation.yaml", f]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("tensor `"), "{}", text(&out));
    assert!(text(&out).contains("rank"), "{}", text(&out));
    // A plan file that is not JSON.
    std::fs::write(&file, "{ nope").unwrap();
    let out = shardplan(&["verify", "specs/mindspore-notation.yaml", f]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("plan.json:1:"), "{}", text(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn explain_and_simulate() {
    let out = shardplan(&[
        "explain",
        "specs/llama3-8b-dp2tp4-to-tp2.yaml",
        "--tensor",
        "model.layers.0.self_attn.q_proj.weight",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("dim 0 (size 4096): source split over tp, dp into 8 block(s) of 512"),
        "{t}"
    );
    assert!(t.contains("rank 1 receives:"), "{t}");
    let out = shardplan(&["simulate", "specs/mindspore-notation.yaml", "--parallel"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("every destination element checked: ok"));
    // Too big for the memory limit: refused before allocating.
    let out = shardplan(&["simulate", "specs/llama70b-pp4tp8-to-pp2tp4.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("over the limit"), "{}", text(&out));
}

#[test]
fn usage_errors() {
    let out = shardplan(&[
        "plan",
        "specs/mindspore-notation.yaml",
        "--tensor",
        "no.such.*",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("matches no tensor"));
    let out = shardplan(&["plan", "specs/mindspore-notation.yaml", "--from", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("no strategy `nope`"));
    let out = shardplan(&[
        "explain",
        "specs/mindspore-notation.yaml",
        "--tensor",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = shardplan(&["plan", "specs/invalid/unknown_axis.yaml"]);
    assert_eq!(out.status.code(), Some(1));
}

fn conformance(case: &str) -> Option<std::path::PathBuf> {
    let fixtures = crate::common::fixtures().join("mindspore").join(case);
    fixtures.is_dir().then_some(fixtures)
}

#[test]
fn reshard_import_export_merge() {
    let case = conformance("tp4_row_to_tp2_row").expect("fixture");
    let c = case.to_str().unwrap();
    let tmp = std::env::temp_dir().join(format!("shardplan-cli-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = tmp.join("out");
    let o = out.to_str().unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "reshard".to_string(),
            "--src".into(),
            format!("{c}/src"),
            "--src-strategy".into(),
            format!("{c}/src_strategy/strategy.json"),
            "--dst-strategy".into(),
            format!("{c}/dst_strategy/strategy.json"),
            "--out".into(),
            o.into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| shardplan(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let r = run(args(&["--format", "safetensors"]));
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(out.join("rank_1/checkpoint_1.safetensors").is_file());
    // Again: both ranks found complete.
    let r = run(args(&["--format", "safetensors"]));
    assert!(
        text(&r).contains("complete from an earlier run"),
        "{}",
        text(&r)
    );
    // One rank only, chosen by the launcher's variable.
    let _ = std::fs::remove_dir_all(&out);
    let r = Command::new(env!("CARGO_BIN_EXE_shardplan"))
        .args(args(&[]))
        .env("SLURM_PROCID", "1")
        .env("SLURM_NTASKS", "2")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(out.join("rank_1/checkpoint_1.ckpt").is_file() && !out.join("rank_0").exists());
    // The output may not overlap the source.
    let r = run(vec![
        "reshard".into(),
        "--src".into(),
        format!("{c}/src"),
        "--out".into(),
        format!("{c}/src/x"),
    ]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(!case.join("src/x").exists());

    // Import a strategy file into a spec; export it back; both read alike.
    let spec = tmp.join("imported.yaml");
    let r = shardplan(&[
        "import",
        &format!("{c}/src_strategy/strategy.json"),
        "-o",
        spec.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert_eq!(
        shardplan(&["check", spec.to_str().unwrap()]).status.code(),
        Some(0)
    );
    let exported = tmp.join("exported.json");
    let r = shardplan(&[
        "export",
        spec.to_str().unwrap(),
        "--strategy",
        "mindspore",
        "--format",
        "mindspore-json",
        "-o",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(&exported).unwrap()).unwrap();
    assert_eq!(
        a["parallel_layout_item"]["w"]["tensor_map"],
        serde_json::json!([0, -1])
    );
    // A strategy file works where a spec is expected, and the reverse.
    let r = shardplan(&[
        "plan",
        &format!("{c}/src_strategy/strategy.json"),
        "--from",
        "strategy",
        "--to",
        &format!("{c}/dst_strategy/strategy.json"),
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let r = shardplan(&[
        "plan",
        spec.to_str().unwrap(),
        "--from",
        "mindspore",
        "--to",
        &format!("{c}/dst_strategy/strategy.json"),
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));

    // Merge per-stage files.
    let stages = conformance("pp2_to_pp1_tp2").expect("fixture");
    let dir = tmp.join("stages");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["strategy_stage0.json", "strategy_stage1.json"] {
        std::fs::copy(stages.join("src_strategy").join(f), dir.join(f)).unwrap();
    }
    let merged = tmp.join("merged.json");
    let r = shardplan(&[
        "merge-stages",
        dir.to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&merged).unwrap()).unwrap();
    let keys: Vec<&String> = m["parallel_layout_item"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, ["0-layer0.w", "1-layer1.w"]);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn reshard_refuses_what_mindspore_refuses() {
    let Some(shared) = common::shared_or_skip(
        &common::shared_cases_dir().join("err_4_to_3_devices"),
        "the refusal is not checked",
    ) else {
        return;
    };
    let c = shared.to_str().unwrap();
    let out = std::env::temp_dir().join(format!("shardplan-cli-refuse-{}", std::process::id()));
    let r = shardplan(&[
        "reshard",
        "--src",
        &format!("{c}/src"),
        "--src-strategy",
        &format!("{c}/src_strategy/strategy.json"),
        "--dst-strategy",
        &format!("{c}/dst_strategy/strategy.json"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains("neither count divides the other"),
        "{}",
        text(&r)
    );
    assert!(!out.exists(), "nothing is written on refusal");
}

#[test]
fn simulate_runs_the_model() {
    let out = shardplan(&["simulate", "specs/tiny-model.yaml", "--model"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("model: logits match the single-device run"),
        "{}",
        text(&out)
    );
    // The training layout is no inference layout for the model: caught.
    let out = shardplan(&[
        "simulate",
        "specs/tiny-model.yaml",
        "--model",
        "--to",
        "train",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("MODEL MISMATCH"), "{}", text(&out));
}

/// `shardplan schema` prints the schema the library ships, which is the
/// file docs/spec.schema.json the bundled specs name in their modeline.
#[test]
fn schema_is_the_shipped_file() {
    let out = common::shardplan(&["schema"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, shardplan::spec::JSON_SCHEMA);
    let shipped =
        std::fs::read_to_string(common::repo_root().join("docs/spec.schema.json")).unwrap();
    assert_eq!(
        shipped, printed,
        "docs/spec.schema.json is stale: run `shardplan schema > docs/spec.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    for spec in std::fs::read_dir(common::repo_root().join("specs")).unwrap() {
        let path = spec.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("# yaml-language-server: $schema=../docs/spec.schema.json\n"),
                "{} lacks the schema modeline",
                path.display()
            );
        }
    }
}

//! The plan, verify, explain and simulate commands end to end.

use std::process::{Command, Output};

fn shardplan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardplan"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run shardplan")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

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

//! `shardplan reshard --engine`: a Hugging Face folder to vLLM's per-rank
//! parameters in one command, equal to what vLLM's own loaders hold (the
//! goldens of `crates/shardplan/tests/it/fixtures/engines/`); degrees the
//! model does not split into, and conflicting flags, are refused.

use std::path::PathBuf;

use crate::common::{fixtures, shardplan, text};

/// A fresh folder under the system's temporary folder.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardplan-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn vllm_ranks_from_one_command_equal_vllm_s_own() {
    let cases = [
        ("llama_gqa_tp2", 2, false),
        ("llama_gqa_tp4", 4, false),
        ("qwen3_moe_tp2", 2, false),
        ("qwen3_moe_tp2_ep", 2, true),
    ];
    for (case, tp, ep) in cases {
        let dir = fixtures().join("engines/vllm").join(case);
        let out = scratch(case);
        let (src, out_s, tp_s) = (
            dir.join("source").display().to_string(),
            out.display().to_string(),
            tp.to_string(),
        );
        let mut args = vec![
            "reshard", "--src", &src, "--engine", "vllm", "--tp", &tp_s, "--out", &out_s,
        ];
        if ep {
            args.push("--ep");
        }
        let o = shardplan(&args);
        assert!(o.status.success(), "{case}: {}", text(&o));
        for r in 0..tp {
            let ours = std::fs::read(out.join(format!("rank_{r}/model.safetensors"))).unwrap();
            let golden = std::fs::read(dir.join(format!("rank_{r}.safetensors"))).unwrap();
            let (ours, golden) = (
                safetensors::SafeTensors::deserialize(&ours).unwrap(),
                safetensors::SafeTensors::deserialize(&golden).unwrap(),
            );
            let mut names = golden.names();
            names.sort();
            let mut our_names = ours.names();
            our_names.sort();
            assert_eq!(our_names, names, "{case} rank {r}");
            for name in names {
                let (a, b) = (ours.tensor(name).unwrap(), golden.tensor(name).unwrap());
                assert_eq!(
                    (a.dtype(), a.shape()),
                    (b.dtype(), b.shape()),
                    "{case} rank {r} `{name}`"
                );
                assert!(
                    a.data() == b.data(),
                    "{case} rank {r} `{name}`: bytes differ"
                );
            }
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn degrees_and_flags_the_engine_cannot_take_are_refused() {
    let src = fixtures()
        .join("engines/vllm/llama_gqa_tp2/source")
        .display()
        .to_string();
    let out = scratch("refused");
    let out_s = out.display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["reshard", "--src", &src, "--out", &out_s];
        args.extend_from_slice(extra);
        shardplan(&args)
    };
    let o = run(&["--engine", "vllm", "--tp", "3"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("shardplan::engine::degree"),
        "{}",
        text(&o)
    );
    assert!(!out.exists(), "nothing is written for a refused degree");
    let o = run(&["--engine", "vllm", "--tp", "2", "--format", "ckpt"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&["--engine", "vllm", "--config", "/nonexistent/config.json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("shardplan::engine::io"), "{}", text(&o));
}

#[test]
fn show_explains_an_engine_parameter_and_draws_a_logical_tensor() {
    let src = fixtures()
        .join("engines/vllm/llama_gqa_tp4/source")
        .display()
        .to_string();
    let show = |tensor: &str| {
        shardplan(&[
            "show", &src, "--engine", "vllm", "--tp", "4", "--tensor", tensor,
        ])
    };
    let o = show("model.layers.0.self_attn.qkv_proj.weight");
    assert!(o.status.success(), "{}", text(&o));
    // Rank 3 holds q heads 6 and 7, then kv head 1 (shared with rank 2).
    let rank3 = "rank 3 [32, 64] f32\n  at [0, 0]: model.layers.0.self_attn.q_proj.weight [48..64, 0..64]\n  at [16, 0]: model.layers.0.self_attn.k_proj.weight [8..16, 0..64]\n";
    assert!(text(&o).contains(rank3), "{}", text(&o));
    let o = show("model.embed_tokens.weight");
    assert!(
        text(&o).contains("rank 3 [32, 64] f32, 1792 of 2048 elements padding"),
        "{}",
        text(&o)
    );
    let o = show("model.layers.0.self_attn.k_proj.weight");
    assert!(text(&o).contains("replica count 2"), "{}", text(&o));
    let o = show("no.such.weight");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("no parameter or tensor `no.such.weight`"),
        "{}",
        text(&o)
    );
}

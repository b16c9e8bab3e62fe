//! Engines' own parameters against files the engines wrote: a Hugging Face
//! source resharded to vLLM's tensor-parallel ranks, packed by the storage
//! map, equals vLLM's loaded parameters bit for bit (names, shapes, bytes,
//! zero padding). The goldens and how they were made:
//! `fixtures/engines/README.md`, `scripts/goldens/`.

use std::path::{Path, PathBuf};

use shardplan::DType;
use shardplan::engine::{Engine, EngineDegrees, EngineLayout, ModelConfig, engine_layout};
use shardplan::reshard::{LayoutSource, ReshardConfig, prepare, read_engine_rank};

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures/engines/vllm")
        .join(case)
}

/// One rank's parameters: name, shape, bytes.
type RankParams = Vec<(String, Vec<u64>, Vec<u8>)>;

/// Every rank's parameters, resharded from the case's source and packed.
fn packed_ranks(case: &str, layout: &EngineLayout) -> Vec<RankParams> {
    let source = case_dir(case).join("source");
    let cfg = ReshardConfig::new(
        &source,
        LayoutSource::SingleDevice,
        LayoutSource::Strategy(Box::new(layout.strategy.clone())),
    );
    let prepared = prepare(&cfg).unwrap();
    (0..layout.map.rank_count())
        .map(|r| {
            let params = read_engine_rank(&prepared, layout, r).unwrap();
            layout
                .map
                .params(r)
                .iter()
                .zip(params)
                .map(|(p, bytes)| (p.name.clone(), p.shape.clone(), bytes))
                .collect()
        })
        .collect()
}

/// Each golden case: its folder, the degrees vLLM ran with.
const CASES: [(&str, u64, bool); 8] = [
    ("llama_gqa_tp2", 2, false),
    ("llama_gqa_tp4", 4, false),
    ("qwen2_tp2", 2, false),
    ("qwen3_tp4", 4, false),
    ("qwen3_moe_tp2", 2, false),
    ("qwen3_moe_tp2_ep", 2, true),
    ("mixtral_tp2", 2, false),
    ("mixtral_tp2_ep", 2, true),
];

#[test]
fn vllm_ranks_match_vllm_bit_for_bit() {
    for (case, tp, ep) in CASES {
        let config = ModelConfig::read(&case_dir(case).join("source/config.json")).unwrap();
        let mut degrees = EngineDegrees::tp(tp);
        if ep {
            degrees = degrees.with_expert_parallel();
        }
        let layout = engine_layout(Engine::Vllm, &config, degrees, DType::F32).unwrap();
        for (r, ours) in packed_ranks(case, &layout).into_iter().enumerate() {
            let file = case_dir(case).join(format!("rank_{r}.safetensors"));
            let bytes = std::fs::read(&file).unwrap();
            let golden = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut names: Vec<String> = golden.names().into_iter().map(str::to_string).collect();
            names.sort();
            let mut our_names: Vec<String> = ours.iter().map(|p| p.0.clone()).collect();
            our_names.sort();
            assert_eq!(our_names, names, "{case} rank {r}: parameter names");
            for (name, shape, data) in &ours {
                let view = golden.tensor(name).unwrap();
                let golden_shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
                assert_eq!(shape, &golden_shape, "{case} rank {r} `{name}`: shape");
                assert!(
                    data.as_slice() == view.data(),
                    "{case} rank {r} `{name}`: bytes differ"
                );
            }
        }
    }
}

/// A config.json with `edit` applied to a small Llama's.
fn config_with(edit: &str, value: &str) -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 8,
        "num_key_value_heads": 2, "intermediate_size": 96, "num_hidden_layers": 1, "vocab_size": 100
    });
    if !edit.is_empty() {
        json[edit] = serde_json::from_str(value).unwrap();
    }
    serde_json::to_vec(&json).unwrap()
}

#[test]
fn configs_and_degrees_the_preset_cannot_take_are_refused_with_their_code() {
    let path = Path::new("config.json");
    let code = |e: &dyn miette::Diagnostic| e.code().map(|c| c.to_string()).unwrap_or_default();
    // (field edited, its new value, degree, the code expected)
    let cases: [(&str, &str, u64, &str); 8] = [
        ("num_key_value_heads", "3", 1, "shardplan::engine::sizes"),
        ("hidden_size", "0", 1, "shardplan::engine::sizes"),
        ("hidden_size", "\"64\"", 1, "shardplan::engine::config"),
        (
            "architectures",
            "[\"GPT2LMHeadModel\"]",
            1,
            "shardplan::engine::architecture",
        ),
        ("", "", 3, "shardplan::engine::degree"),
        ("num_key_value_heads", "4", 8, ""),
        ("", "", 0, "shardplan::engine::degree"),
        ("vocab_size", "100000", 8, ""),
    ];
    for (field, value, tp, expected) in cases {
        let result = ModelConfig::parse(path, &config_with(field, value))
            .and_then(|c| engine_layout(Engine::Vllm, &c, EngineDegrees::tp(tp), DType::BF16));
        match result {
            Ok(_) => assert_eq!(expected, "", "{field}={value} at tp {tp} was accepted"),
            Err(e) => assert_eq!(code(&e), expected, "{field}={value} at tp {tp}: {e}"),
        }
    }
    // Not JSON: the line and column of the fault.
    let e = ModelConfig::parse(path, b"{\n  \"hidden_size\": ,\n}").unwrap_err();
    assert!(e.to_string().starts_with("config.json:2:18:"), "{e}");
}

//! Inference numerics of the tiny model (src/model.rs, specs/tiny-model.yaml):
//! weights laid out for training, moved by a verified plan to an inference
//! layout, give the single-device logits within the documented tolerance;
//! layouts that do not fit the model are refused, naming the tensor.

use shardplan::ShardStore;
use shardplan::model::{
    DEFAULT_SEED, DEFAULT_TOLERANCE, LayoutFault, ModelConfig, ModelError, SplitFault, StageFault,
    StoreFault, WeightSplit, Weights, check_layout, check_model, forward_sharded, forward_single,
};
use shardplan::spec::{Spec, parse_spec};

const TINY: &str = "specs/tiny-model.yaml";

fn tiny_text() -> String {
    std::fs::read_to_string(crate::common::repo_root().join(TINY)).unwrap()
}

/// The tiny-model spec, with `extra` (strategies, indented under
/// `strategies:`) added after its own.
fn spec_with(extra: &str) -> Spec {
    let text = tiny_text();
    let at = text
        .find("\ntransfer:")
        .expect("the spec ends with its transfer")
        + 1;
    let text = format!("{}{extra}{}", &text[..at], &text[at..]);
    let (spec, diags) = parse_spec(TINY, &text);
    spec.unwrap_or_else(|| panic!("{diags:?}"))
}

fn tiny() -> Spec {
    spec_with("")
}

/// A fixed batch: two sequences of six tokens, ids across the vocabulary.
fn tokens() -> Vec<Vec<u32>> {
    vec![vec![1, 17, 42, 63, 0, 33], vec![5, 5, 60, 12, 31, 32]]
}

#[test]
fn train_to_infer_matches_single_device() {
    let spec = tiny();
    let (src, dst) = (
        spec.strategy("train").unwrap(),
        spec.strategy("infer").unwrap(),
    );
    let r = check_model(src, dst, &tokens(), DEFAULT_TOLERANCE).unwrap();
    println!(
        "train -> infer: max abs err {:e}, max rel err {:e}, max |logit| {}",
        r.max_abs_err, r.max_rel_err, r.max_abs_logit
    );
    assert_eq!(r.logits_single.len(), 12 * 64);
    assert!(r.max_rel_err <= DEFAULT_TOLERANCE);
    // The logits are not degenerate: of order 1 and varied.
    assert!(r.max_abs_logit > 0.5, "{}", r.max_abs_logit);

    // The transfer moved bytes unchanged: the result equals laying the
    // weights out on `infer` directly, bit for bit.
    let config = ModelConfig::from_tensors(spec.tensors(), 8).unwrap();
    let weights = Weights::generate(&config, DEFAULT_SEED).unwrap();
    let direct = weights.to_store(dst).unwrap();
    let logits = forward_sharded(&config, dst, &direct, &tokens()).unwrap();
    assert_eq!(bits(&logits), bits(&r.logits_sharded));
}

#[test]
fn train_to_single_is_exact() {
    let spec = tiny();
    let (src, dst) = (
        spec.strategy("train").unwrap(),
        spec.strategy("single").unwrap(),
    );
    let r = check_model(src, dst, &tokens(), DEFAULT_TOLERANCE).unwrap();
    println!("train -> single: max abs err {:e}", r.max_abs_err);
    assert_eq!(bits(&r.logits_sharded), bits(&r.logits_single));
}

#[test]
fn sharded_forward_on_one_device_is_bitwise_single() {
    let spec = tiny();
    let single = spec.strategy("single").unwrap();
    let config = ModelConfig::from_tensors(spec.tensors(), 8).unwrap();
    let weights = Weights::generate(&config, 3).unwrap();
    let store = weights.to_store(single).unwrap();
    // Ragged sequences too: each attends within itself.
    for batch in [
        tokens(),
        vec![vec![7], vec![9, 8, 7, 6, 5, 4, 3, 2], vec![]],
    ] {
        let a = forward_single(&weights, &batch).unwrap();
        let b = forward_sharded(&config, single, &store, &batch).unwrap();
        assert_eq!(bits(&a), bits(&b));
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Rules of a correct inference strategy on the `infer` mesh, after
/// `first` (rules that take precedence).
fn infer_rules(name: &str, first: &str) -> String {
    format!(
        r#"  {name}:
    mesh: infer
    stages: {{axis: pp, layer: "model.layers.{{}}.*", layers_per_stage: 1}}
    rules:
{first}      - {{match: "model.embed_tokens.weight", dims: [tp, null], at: {{pp: 0}}}}
      - {{match: "lm_head.weight", dims: [tp, null], at: {{pp: 1}}}}
      - {{match: "model.norm.weight", dims: replicated, at: {{pp: 1}}}}
      - {{match: "*.o_proj.weight", dims: [null, tp]}}
      - {{match: "*.down_proj.weight", dims: [null, tp]}}
      - {{match: "*norm.weight", dims: replicated}}
      - {{match: "*", dims: [tp, null]}}
"#
    )
}

/// A strategy that does not fit the model.
struct Wrong {
    /// Strategy name.
    name: &'static str,
    /// Rules taking precedence over a correct inference strategy's.
    first: &'static str,
    /// The error code expected.
    code: &'static str,
    /// The tensor the message must name.
    tensor: &'static str,
    /// Whether the error is the fault expected.
    fault: fn(&ModelError) -> bool,
}

const WRONG: &[Wrong] = &[
    Wrong {
        name: "q_rows_k_columns",
        first: r#"      - {match: "*.k_proj.weight", dims: [null, tp]}
"#,
        code: "inconsistent_split",
        tensor: "model.layers.0.self_attn.k_proj.weight",
        fault: |e| split_fault(e, |f| matches!(f, SplitFault::KvAxes { .. })),
    },
    Wrong {
        name: "o_by_rows",
        first: r#"      - {match: "*.o_proj.weight", dims: [tp, null]}
"#,
        code: "inconsistent_split",
        tensor: "model.layers.0.self_attn.o_proj.weight",
        fault: |e| split_fault(e, |f| matches!(f, SplitFault::OutputRows { .. })),
    },
    Wrong {
        name: "o_whole",
        first: r#"      - {match: "*.o_proj.weight", dims: replicated}
"#,
        code: "inconsistent_split",
        tensor: "model.layers.0.self_attn.o_proj.weight",
        fault: |e| {
            split_fault(e, |f| {
                matches!(
                    f,
                    SplitFault::OutputAxes {
                        split: WeightSplit::Whole,
                        ..
                    }
                )
            })
        },
    },
    Wrong {
        name: "o_over_other_blocks",
        first: r#"      - {match: "*.o_proj.weight", dims: [null, tp], split: [null, {blocks: [8, 24]}]}
"#,
        code: "inconsistent_split",
        tensor: "model.layers.0.self_attn.o_proj.weight",
        fault: |e| {
            split_fault(e, |f| {
                matches!(f, SplitFault::OutputHeads { rank: 0, columns, rows }
                    if *columns == (0..8) && *rows == (0..16))
            })
        },
    },
    Wrong {
        name: "head_cut_in_half",
        first: r#"      - {match: "*.q_proj.weight", dims: [tp, null], split: [{blocks: [12, 20]}, null]}
      - {match: "*.k_proj.weight", dims: [tp, null], split: [{blocks: [12, 20]}, null]}
      - {match: "*.v_proj.weight", dims: [tp, null], split: [{blocks: [12, 20]}, null]}
      - {match: "*.o_proj.weight", dims: [null, tp], split: [null, {blocks: [12, 20]}]}
"#,
        code: "head_split",
        tensor: "model.layers.0.self_attn.q_proj.weight",
        fault: |e| matches!(e, ModelError::HeadSplit { head_dim: 8, .. }),
    },
    Wrong {
        name: "k_over_other_blocks",
        first: r#"      - {match: "*.k_proj.weight", dims: [tp, null], split: [{blocks: [8, 24]}, null]}
"#,
        code: "inconsistent_split",
        tensor: "model.layers.0.self_attn.k_proj.weight",
        fault: |e| split_fault(e, |f| matches!(f, SplitFault::KvHeads { rank: 0, .. })),
    },
    Wrong {
        name: "down_unlike_gate",
        first: r#"      - {match: "model.layers.1.mlp.down_proj.weight", dims: [null, tp], split: [null, {blocks: [16, 48]}]}
"#,
        code: "inconsistent_split",
        tensor: "model.layers.1.mlp.down_proj.weight",
        fault: |e| split_fault(e, |f| matches!(f, SplitFault::DownColumns { .. })),
    },
    Wrong {
        name: "down_whole",
        first: r#"      - {match: "*.down_proj.weight", dims: replicated}
"#,
        code: "inconsistent_split",
        tensor: "model.layers.0.mlp.down_proj.weight",
        fault: |e| split_fault(e, |f| matches!(f, SplitFault::DownAxes { .. })),
    },
    Wrong {
        name: "up_split_by_columns",
        first: r#"      - {match: "*.up_proj.weight", dims: [null, tp]}
"#,
        code: "inconsistent_split",
        tensor: "model.layers.0.mlp.up_proj.weight",
        fault: |e| {
            split_fault(e, |f| {
                matches!(
                    f,
                    SplitFault::UpAxes {
                        split: WeightSplit::Columns(_),
                        ..
                    }
                )
            })
        },
    },
    Wrong {
        name: "up_over_other_blocks",
        first: r#"      - {match: "*.up_proj.weight", dims: [tp, null], split: [{blocks: [16, 48]}, null]}
"#,
        code: "inconsistent_split",
        tensor: "model.layers.0.mlp.up_proj.weight",
        fault: |e| split_fault(e, |f| matches!(f, SplitFault::UpRows { rank: 0, .. })),
    },
    Wrong {
        name: "norm_split",
        first: r#"      - {match: "model.layers.0.post_attention_layernorm.weight", dims: [tp]}
"#,
        code: "split_norm",
        tensor: "model.layers.0.post_attention_layernorm.weight",
        fault: |e| {
            matches!(
                e,
                ModelError::UnsupportedLayout {
                    fault: LayoutFault::SplitNorm(_),
                    ..
                }
            )
        },
    },
    Wrong {
        name: "layer_across_stages",
        first: r#"      - {match: "model.layers.1.self_attn.v_proj.weight", dims: [tp, null], at: {pp: 0}}
"#,
        code: "stages",
        tensor: "model.layers.1.self_attn.v_proj.weight",
        fault: |e| {
            matches!(
                e,
                ModelError::Stages {
                    fault: StageFault::Layer,
                    ..
                }
            )
        },
    },
    Wrong {
        name: "head_across_stages",
        first: r#"      - {match: "model.norm.weight", dims: replicated, at: {pp: 0}}
"#,
        code: "stages",
        tensor: "lm_head.weight",
        fault: |e| {
            matches!(
                e,
                ModelError::Stages {
                    fault: StageFault::Head,
                    ..
                }
            )
        },
    },
];

fn split_fault(e: &ModelError, is: fn(&SplitFault) -> bool) -> bool {
    matches!(e, ModelError::InconsistentSplit { fault, .. } if is(fault))
}

#[test]
fn layouts_wrong_for_the_model_are_refused() {
    let extra: String = WRONG.iter().map(|w| infer_rules(w.name, w.first)).collect();
    let spec = spec_with(&extra);
    let train = spec.strategy("train").unwrap();
    let config = ModelConfig::from_tensors(spec.tensors(), 8).unwrap();
    for w in WRONG {
        let (name, tensor) = (w.name, w.tensor);
        let dst = spec.strategy(name).unwrap();
        let err = check_model(train, dst, &tokens(), DEFAULT_TOLERANCE).unwrap_err();
        let msg = err.to_string();
        let got = miette::Diagnostic::code(&err).unwrap().to_string();
        println!("{name}: {got}: {msg}");
        assert_eq!(
            got,
            format!("shardplan::model::{}", w.code),
            "{name}: {msg}"
        );
        assert!((w.fault)(&err), "{name}: {err:?}");
        assert!(msg.contains(&format!("`{tensor}`")), "{name}: {msg}");
        assert!(msg.contains(&format!("`{name}`")), "{name}: {msg}");
        // The sharded forward refuses it too, even given correct data.
        let store = ShardStore::zeroed(dst);
        assert_eq!(
            forward_sharded(&config, dst, &store, &tokens()).unwrap_err(),
            err
        );
    }
}

#[test]
fn the_training_layout_is_not_an_inference_layout() {
    // Optimizer sharding splits o and down in both dimensions (and the
    // norms over dp): not something a forward pass can use as is.
    let spec = tiny();
    let train = spec.strategy("train").unwrap();
    let err = check_layout(&ModelConfig::tiny(), train).unwrap_err();
    let ModelError::UnsupportedLayout { tensor, fault, .. } = err else {
        panic!("{err}");
    };
    assert_eq!(tensor, "model.layers.0.self_attn.o_proj.weight");
    assert!(
        matches!(fault, LayoutFault::SplitTwice(ref d) if d.len() == 2),
        "{fault}"
    );
}

#[test]
fn uneven_whole_head_splits_and_other_supported_layouts_match() {
    let cases = [
        // One head on tp 0, three on tp 1; the MLP split 16 / 48.
        (
            "uneven_heads",
            r#"      - {match: "*.q_proj.weight", dims: [tp, null], split: [{blocks: [8, 24]}, null]}
      - {match: "*.k_proj.weight", dims: [tp, null], split: [{blocks: [8, 24]}, null]}
      - {match: "*.v_proj.weight", dims: [tp, null], split: [{blocks: [8, 24]}, null]}
      - {match: "*.o_proj.weight", dims: [null, tp], split: [null, {blocks: [8, 24]}]}
      - {match: "*.gate_proj.weight", dims: [tp, null], split: [{blocks: [16, 48]}, null]}
      - {match: "*.up_proj.weight", dims: [tp, null], split: [{blocks: [16, 48]}, null]}
      - {match: "*.down_proj.weight", dims: [null, tp], split: [null, {blocks: [16, 48]}]}
"#,
        ),
        // Embedding split over hidden, lm_head row-parallel, layer 1
        // replicated on its stage.
        (
            "hidden_split_ends",
            r#"      - {match: "model.embed_tokens.weight", dims: [null, tp], at: {pp: 0}}
      - {match: "lm_head.weight", dims: [null, tp], at: {pp: 1}}
      - {match: "model.layers.1.*", dims: replicated}
"#,
        ),
        // Both stages reversed: layer 0 on pp 1, layer 1 on pp 0.
        (
            "stages_reversed",
            r#"      - {match: "model.layers.0.*.o_proj.weight", dims: [null, tp], at: {pp: 1}}
      - {match: "model.layers.0.*.down_proj.weight", dims: [null, tp], at: {pp: 1}}
      - {match: "model.layers.0.*norm.weight", dims: replicated, at: {pp: 1}}
      - {match: "model.layers.0.*", dims: [tp, null], at: {pp: 1}}
      - {match: "model.layers.1.*.o_proj.weight", dims: [null, tp], at: {pp: 0}}
      - {match: "model.layers.1.*.down_proj.weight", dims: [null, tp], at: {pp: 0}}
      - {match: "model.layers.1.*norm.weight", dims: replicated, at: {pp: 0}}
      - {match: "model.layers.1.*", dims: [tp, null], at: {pp: 0}}
"#,
        ),
    ];
    let extra: String = cases
        .iter()
        .map(|(name, first)| infer_rules(name, first))
        .collect();
    let spec = spec_with(&extra);
    let train = spec.strategy("train").unwrap();
    for (name, _) in cases {
        let dst = spec.strategy(name).unwrap();
        let r = check_model(train, dst, &tokens(), DEFAULT_TOLERANCE)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        println!("train -> {name}: max rel err {:e}", r.max_rel_err);
    }
}

#[test]
fn a_source_holding_partial_sums_is_reduced_first() {
    // The output projection held as partial sums over dp in the source:
    // the executor reduces the terms while moving them.
    let extra = r#"  train_partial:
    mesh: train
    stages: {axis: pp, layer: "model.layers.{}.*", layers_per_stage: 1}
    rules:
      - {match: "model.embed_tokens.weight", dims: [[tp, dp], null], at: {pp: 0}}
      - {match: "lm_head.weight", dims: [tp, null], partial: [dp], at: {pp: 1}}
      - {match: "model.norm.weight", dims: [dp], at: {pp: 1}}
      - {match: "*.o_proj.weight", dims: [dp, tp]}
      - {match: "*.down_proj.weight", dims: [dp, tp]}
      - {match: "*norm.weight", dims: [dp]}
      - {match: "*", dims: [[tp, dp], null]}
"#;
    let spec = spec_with(extra);
    let (src, dst) = (
        spec.strategy("train_partial").unwrap(),
        spec.strategy("infer").unwrap(),
    );
    let r = check_model(src, dst, &tokens(), DEFAULT_TOLERANCE).unwrap();
    assert!(r.max_rel_err <= DEFAULT_TOLERANCE);
}

#[test]
fn a_wrong_shard_is_caught_by_the_comparison() {
    // The numerics check is not vacuous: one rank holding wrong data for a
    // single tensor moves the logits far beyond the tolerance.
    let spec = tiny();
    let infer = spec.strategy("infer").unwrap();
    let config = ModelConfig::tiny();
    let weights = Weights::generate(&config, DEFAULT_SEED).unwrap();
    let mut store = weights.to_store(infer).unwrap();
    let t = store
        .tensor_index("model.layers.1.self_attn.v_proj.weight")
        .unwrap();
    // Rank 3 = (pp 1, tp 1): reverse its rows (swap its two heads).
    let buf = store.buffer_mut(t, 3).unwrap();
    let rows: Vec<Vec<u8>> = buf.chunks(32 * 4).map(<[u8]>::to_vec).collect();
    let reversed: Vec<u8> = rows.into_iter().rev().flatten().collect();
    buf.copy_from_slice(&reversed);
    let good = forward_single(&weights, &tokens()).unwrap();
    let bad = forward_sharded(&config, infer, &store, &tokens()).unwrap();
    let max = good.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = good
        .iter()
        .zip(&bad)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err / max > 1e-2, "{err} / {max}");
}

#[test]
fn a_store_of_another_strategy_is_refused() {
    let spec = tiny();
    let infer = spec.strategy("infer").unwrap();
    let single = spec.strategy("single").unwrap();
    let store = ShardStore::zeroed(single);
    let err = forward_sharded(&ModelConfig::tiny(), infer, &store, &tokens());
    assert!(
        matches!(
            err,
            Err(ModelError::Store {
                fault: StoreFault::WrongBox { held: Some(_), .. },
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn bad_inputs_are_refused() {
    let weights = Weights::generate(&ModelConfig::tiny(), 1).unwrap();
    let err = forward_single(&weights, &[vec![1, 64]]).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Token {
                sequence: 0,
                position: 1,
                token: 64,
                ..
            }
        ),
        "{err}"
    );
}

/// The tiny model with tied weights (no `lm_head.weight`; the logits come
/// from the embedding) on 3 pipeline stages: the embedding is looked up on
/// stage 0 and multiplied with on stage 2, after the final norm, so both
/// stages hold it and stage 1 does not.
fn tied_spec() -> Spec {
    let mut text = tiny_text();
    for (from, to) in [
        (
            "  - {name: lm_head.weight, shape: [64, 32], dtype: f32}\n",
            "",
        ),
        (
            "train: {shape: [2, 2, 2], axes: [pp, dp, tp]}",
            "train: {shape: [3, 2, 2], axes: [pp, dp, tp]}",
        ),
        (
            "infer: {shape: [2, 2], axes: [pp, tp]}",
            "infer: {shape: [3, 2], axes: [pp, tp]}",
        ),
        (
            "{match: \"model.embed_tokens.weight\", dims: [[tp, dp], null], at: {pp: 0}}",
            "{match: \"model.embed_tokens.weight\", dims: [[tp, dp], null], at: {pp: [0, 2]}}",
        ),
        (
            "      - {match: \"lm_head.weight\", dims: [[tp, dp], null], at: {pp: 1}}\n",
            "",
        ),
        (
            "{match: \"model.norm.weight\", dims: [dp], at: {pp: 1}}",
            "{match: \"model.norm.weight\", dims: [dp], at: {pp: 2}}",
        ),
        (
            "{match: \"model.embed_tokens.weight\", dims: [tp, null], at: {pp: 0}}",
            "{match: \"model.embed_tokens.weight\", dims: [tp, null], at: {pp: [0, 2]}}",
        ),
        (
            "      - {match: \"lm_head.weight\", dims: [tp, null], at: {pp: 1}}             # vocab-parallel\n",
            "",
        ),
        (
            "{match: \"model.norm.weight\", dims: replicated, at: {pp: 1}}",
            "{match: \"model.norm.weight\", dims: replicated, at: {pp: 2}}",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    let (spec, diags) = parse_spec("tied.yaml", &text);
    spec.unwrap_or_else(|| panic!("{diags:?}"))
}

#[test]
fn tied_embeddings_on_the_first_and_last_stage_match_single_device() {
    use shardplan::derive::{DeriveTarget, derive_strategy};
    use shardplan::spec::rules_for;
    let spec = tied_spec();
    let config = ModelConfig::from_tensors(spec.tensors(), 8).unwrap();
    assert!(config.tie_embeddings);
    let (train, infer) = (
        spec.strategy("train").unwrap(),
        spec.strategy("infer").unwrap(),
    );
    let embed = infer.layout("model.embed_tokens.weight").unwrap();
    let holders: Vec<u64> = (0..6).filter(|&r| embed.holds(r)).collect();
    assert_eq!(holders, vec![0, 1, 4, 5]);
    let r = check_model(train, infer, &tokens(), DEFAULT_TOLERANCE).unwrap();
    assert!(r.max_abs_logit > 0.5, "{}", r.max_abs_logit);
    // Derived for 3, 2 and 1 stages: the embedding follows its training
    // stages (0 and 2 of 3), and the logits still match.
    let rules = rules_for(&spec, "train");
    for (devices, tp, pp) in [(6, 2, 3), (4, 2, 2), (2, 2, 1), (1, 1, 1)] {
        let target = DeriveTarget::from_degrees(devices, tp, pp).unwrap();
        let d = derive_strategy(train, &target, &rules).unwrap();
        let r = check_model(train, &d.strategy, &tokens(), DEFAULT_TOLERANCE)
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert!(r.max_rel_err <= DEFAULT_TOLERANCE, "{target}");
    }
    // An embedding missing from the head's stage is refused by name.
    let bad = infer_without_last_stage(&spec);
    let err = check_layout(&config, &bad).unwrap_err().to_string();
    assert!(err.contains("model.embed_tokens.weight"), "{err}");
}

/// `infer` with the embedding on stage 0 only.
fn infer_without_last_stage(spec: &Spec) -> shardplan::Strategy {
    let infer = spec.strategy("infer").unwrap();
    let layouts: Vec<shardplan::TensorLayout> = infer
        .tensors()
        .iter()
        .zip(infer.layouts())
        .map(|(t, l)| {
            if t.name != "model.embed_tokens.weight" {
                return l.clone();
            }
            let mut cfg = l.to_config();
            cfg.pin = vec![("pp".into(), 0)];
            shardplan::TensorLayout::new(l.mesh().clone(), &t.shape, &cfg).unwrap()
        })
        .collect();
    shardplan::Strategy::new(
        "bad",
        infer.mesh().clone(),
        infer.tensors().to_vec(),
        layouts,
    )
    .unwrap()
}

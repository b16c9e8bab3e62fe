//! Operator derivation (MindSpore semi-auto-parallel strategies): layouts
//! from an operator graph, its report, and its errors.

use super::*;
use shardplan::derive::ops::{
    ActivationInput, Collective, DimSize, OpKind, Operator, OperatorGraph, OpsError, RepeatSide,
    StrategyFault, derive_from_operators,
};

/// One operator on inputs of the given shapes (the first input is an
/// activation `x`, the others weights `w1`, `w2`), on `devices`.
struct Case {
    kind: OpKind,
    shapes: &'static [&'static [u64]],
    strategy: &'static [&'static [u64]],
    transpose_b: bool,
    devices: u64,
    side: RepeatSide,
    dev: &'static [u64],
    maps: &'static [&'static [i64]],
    out: &'static [i64],
    forward: Option<(Collective, u64)>,
}

const CASES: &[Case] = &[
    // [[a, b], [b, c]] -> dev [a, b, c]; maps [2, 1], [1, 0]; out [2, 0].
    Case {
        kind: OpKind::MatMul,
        shapes: &[&[16, 64], &[64, 32]],
        strategy: &[&[2, 1], &[1, 4]],
        transpose_b: false,
        devices: 8,
        side: RepeatSide::Right,
        dev: &[2, 1, 4],
        maps: &[&[2, 1], &[1, 0]],
        out: &[2, 0],
        forward: None,
    },
    // transpose_b: the weight [N, K] has strategy [c, b] and map [0, 1].
    Case {
        kind: OpKind::MatMul,
        shapes: &[&[16, 64], &[32, 64]],
        strategy: &[&[2, 1], &[4, 1]],
        transpose_b: true,
        devices: 8,
        side: RepeatSide::Right,
        dev: &[2, 1, 4],
        maps: &[&[2, 1], &[0, 1]],
        out: &[2, 0],
        forward: None,
    },
    // A split reduction dimension: the output is all-reduced.
    Case {
        kind: OpKind::MatMul,
        shapes: &[&[16, 64], &[64, 32]],
        strategy: &[&[2, 4], &[4, 1]],
        transpose_b: false,
        devices: 8,
        side: RepeatSide::Right,
        dev: &[2, 4, 1],
        maps: &[&[2, 1], &[1, 0]],
        out: &[2, 0],
        forward: Some((Collective::AllReduce, 4)),
    },
    // Repeated calculation x2, MindSpore 2.x: last axis, maps + 1.
    Case {
        kind: OpKind::MatMul,
        shapes: &[&[16, 64], &[64, 32]],
        strategy: &[&[1, 1], &[1, 4]],
        transpose_b: false,
        devices: 8,
        side: RepeatSide::Right,
        dev: &[1, 1, 4, 2],
        maps: &[&[3, 2], &[2, 1]],
        out: &[3, 1],
        forward: None,
    },
    // Repeated calculation x2, earlier MindSpore: first axis.
    Case {
        kind: OpKind::MatMul,
        shapes: &[&[16, 64], &[64, 32]],
        strategy: &[&[1, 1], &[1, 4]],
        transpose_b: false,
        devices: 8,
        side: RepeatSide::Left,
        dev: &[2, 1, 1, 4],
        maps: &[&[2, 1], &[1, 0]],
        out: &[2, 0],
        forward: None,
    },
    Case {
        kind: OpKind::BatchMatMul,
        shapes: &[&[4, 16, 8], &[4, 8, 16]],
        strategy: &[&[2, 1, 1], &[2, 1, 2]],
        transpose_b: false,
        devices: 4,
        side: RepeatSide::Right,
        dev: &[2, 1, 1, 2],
        maps: &[&[3, 2, 1], &[3, 1, 0]],
        out: &[3, 2, 0],
        forward: None,
    },
    // Broadcast: a 2-D weight under a 3-D activation.
    Case {
        kind: OpKind::BatchMatMul,
        shapes: &[&[4, 16, 8], &[8, 16]],
        strategy: &[&[2, 1, 2], &[2, 1]],
        transpose_b: false,
        devices: 4,
        side: RepeatSide::Right,
        dev: &[2, 1, 2, 1],
        maps: &[&[3, 2, 1], &[1, 0]],
        out: &[3, 2, 0],
        forward: Some((Collective::AllReduce, 2)),
    },
    // Gather, vocabulary not split: dev = indices ++ table strategy.
    Case {
        kind: OpKind::Gather,
        shapes: &[&[64, 32], &[8, 16]],
        strategy: &[&[1, 4], &[2, 1]],
        transpose_b: false,
        devices: 8,
        side: RepeatSide::Right,
        dev: &[2, 1, 1, 4],
        maps: &[&[1, 0], &[3, 2]],
        out: &[3, 2, 0],
        forward: None,
    },
    // Gather, vocabulary split over all devices: reduce-scatter.
    Case {
        kind: OpKind::Gather,
        shapes: &[&[64, 32], &[8, 16]],
        strategy: &[&[4, 1], &[1, 1]],
        transpose_b: false,
        devices: 4,
        side: RepeatSide::Right,
        dev: &[4, 1],
        maps: &[&[1, 0], &[-1, -1]],
        out: &[1, -1, 0],
        forward: Some((Collective::ReduceScatter, 4)),
    },
    // ... over half the devices: the repeat goes left, whatever the side.
    Case {
        kind: OpKind::Gather,
        shapes: &[&[64, 32], &[8, 16]],
        strategy: &[&[4, 1], &[1, 1]],
        transpose_b: false,
        devices: 8,
        side: RepeatSide::Right,
        dev: &[2, 4, 1],
        maps: &[&[1, 0], &[-1, -1]],
        out: &[1, -1, 0],
        forward: Some((Collective::ReduceScatter, 4)),
    },
    // ... batch 6 does not split 4 ways: all-reduce, replicated output.
    Case {
        kind: OpKind::Gather,
        shapes: &[&[64, 32], &[6, 16]],
        strategy: &[&[4, 1], &[1, 1]],
        transpose_b: false,
        devices: 4,
        side: RepeatSide::Right,
        dev: &[4, 1],
        maps: &[&[1, 0], &[-1, -1]],
        out: &[-1, -1, 0],
        forward: Some((Collective::AllReduce, 4)),
    },
    // Shard batch and axis: [[v, 1], [b, 1]], v * b = devices.
    Case {
        kind: OpKind::Gather,
        shapes: &[&[64, 32], &[8, 16]],
        strategy: &[&[4, 1], &[2, 1]],
        transpose_b: false,
        devices: 8,
        side: RepeatSide::Right,
        dev: &[2, 4],
        maps: &[&[0, -1], &[1, -1]],
        out: &[1, -1, -1],
        forward: Some((Collective::AllReduce, 4)),
    },
    Case {
        kind: OpKind::Add,
        shapes: &[&[16, 32], &[32]],
        strategy: &[&[2, 4], &[4]],
        transpose_b: false,
        devices: 8,
        side: RepeatSide::Right,
        dev: &[2, 4],
        maps: &[&[1, 0], &[0]],
        out: &[1, 0],
        forward: None,
    },
    // A broadcast dimension of size 1 is not split.
    Case {
        kind: OpKind::Mul,
        shapes: &[&[16, 32], &[1, 32]],
        strategy: &[&[2, 4], &[1, 4]],
        transpose_b: false,
        devices: 8,
        side: RepeatSide::Right,
        dev: &[2, 4],
        maps: &[&[1, 0], &[-1, 0]],
        out: &[1, 0],
        forward: None,
    },
    Case {
        kind: OpKind::Mul,
        shapes: &[&[16, 32], &[16, 32]],
        strategy: &[&[2, 1], &[2, 1]],
        transpose_b: false,
        devices: 8,
        side: RepeatSide::Right,
        dev: &[2, 1, 4],
        maps: &[&[2, 1], &[2, 1]],
        out: &[2, 1],
        forward: None,
    },
    Case {
        kind: OpKind::RmsNorm,
        shapes: &[&[16, 32], &[32]],
        strategy: &[&[4, 1], &[1]],
        transpose_b: false,
        devices: 4,
        side: RepeatSide::Right,
        dev: &[4, 1],
        maps: &[&[1, 0], &[0]],
        out: &[1, 0],
        forward: None,
    },
    Case {
        kind: OpKind::LayerNorm,
        shapes: &[&[2, 8, 32], &[32], &[32]],
        strategy: &[&[2, 2, 1], &[1], &[1]],
        transpose_b: false,
        devices: 4,
        side: RepeatSide::Right,
        dev: &[2, 2, 1],
        maps: &[&[2, 1, 0], &[0], &[0]],
        out: &[2, 1, 0],
        forward: None,
    },
];

/// A graph's tensors and the graph.
type OpCase = (Vec<TensorInfo>, OperatorGraph);

/// Weights `w1`, `w2` (all inputs but the first) and the graph. For a
/// Gather the table comes first and the indices are the activation.
fn one_op(
    kind: OpKind,
    shapes: &[&[u64]],
    strategy: &[&[u64]],
    transpose_b: bool,
    devices: u64,
    side: RepeatSide,
) -> OpCase {
    let act = if kind == OpKind::Gather { 1 } else { 0 };
    let mut tensors = Vec::new();
    let mut inputs = Vec::new();
    let mut names = Vec::new();
    for (k, s) in shapes.iter().enumerate() {
        if k == act {
            inputs.push(ActivationInput {
                name: "x".into(),
                shape: s.iter().map(|&n| DimSize::Fixed(n)).collect(),
                dtype: DType::F32,
            });
            names.push("x".to_string());
        } else {
            let name = format!("w{k}");
            tensors.push(TensorInfo {
                name: name.clone(),
                shape: s.to_vec(),
                dtype: DType::F32,
            });
            names.push(name);
        }
    }
    let graph = OperatorGraph {
        devices,
        stages: 1,
        batch: 1,
        repeated_calc: side,
        inputs,
        ops: vec![Operator {
            kind,
            name: "op".into(),
            inputs: names,
            strategy: strategy.iter().map(|s| s.to_vec()).collect(),
            transpose_b,
            transpose_a: false,
            stage: 0,
            output: "y".into(),
        }],
    };
    (tensors, graph)
}

#[test]
fn device_matrices_and_tensor_maps() {
    for (i, c) in CASES.iter().enumerate() {
        let (tensors, graph) = one_op(
            c.kind,
            c.shapes,
            c.strategy,
            c.transpose_b,
            c.devices,
            c.side,
        );
        let d = derive_from_operators(&graph, &tensors)
            .unwrap_or_else(|e| panic!("case {i} ({}): {e}", c.kind));
        let l = &d.ops[0];
        assert_eq!(l.dev_matrix, c.dev, "case {i} ({})", c.kind);
        let maps: Vec<&[i64]> = l.inputs.iter().map(Vec::as_slice).collect();
        assert_eq!(maps, c.maps, "case {i} ({})", c.kind);
        assert_eq!(l.output, c.out, "case {i} ({})", c.kind);
        assert_eq!(
            l.forward.map(|f| (f.collective, f.ranks)),
            c.forward,
            "case {i} ({})",
            c.kind
        );
        assert_eq!(
            l.dev_matrix.iter().product::<u64>(),
            c.devices,
            "case {i}: the device matrix spans the stage"
        );
        // Every weight's layout is its input's: dev matrix and map.
        for (t, w) in d.strategy.tensors().iter().zip(&d.weights) {
            let w = w.as_ref().unwrap();
            let tm: Vec<i64> = w.layout.tensor_map.iter().map(|e| e[0]).collect();
            assert_eq!(
                (w.layout.dev_matrix.as_slice(), tm.as_slice()),
                (c.dev, c.maps[w.input]),
                "case {i}: {}",
                t.name
            );
        }
    }
}

#[test]
fn placements_follow_the_device_matrix() {
    // MatMul [[2, 1], [1, 4]] on 8 devices: rank = a * 4 + c; the
    // weight's columns follow c, its rows are whole.
    let (t, g) = one_op(
        OpKind::MatMul,
        CASES[0].shapes,
        CASES[0].strategy,
        false,
        8,
        RepeatSide::Right,
    );
    let d = derive_from_operators(&g, &t).unwrap();
    let w = d.strategy.layout("w1").unwrap();
    for r in 0..8 {
        let c = r % 4;
        assert_eq!(
            w.region_of(r).unwrap().to_string(),
            format!("[0..64, {}..{}]", c * 8, c * 8 + 8)
        );
    }
    // With the repeated calculation on the right, consecutive ranks
    // repeat; on the left, ranks 4 apart do.
    let (t, g) = one_op(
        OpKind::MatMul,
        CASES[3].shapes,
        CASES[3].strategy,
        false,
        8,
        RepeatSide::Right,
    );
    let right = derive_from_operators(&g, &t).unwrap();
    let w = right.strategy.layout("w1").unwrap();
    assert_eq!(w.region_of(0), w.region_of(1));
    assert_ne!(w.region_of(0), w.region_of(4));
    let (t, g) = one_op(
        OpKind::MatMul,
        CASES[4].shapes,
        CASES[4].strategy,
        false,
        8,
        RepeatSide::Left,
    );
    let left = derive_from_operators(&g, &t).unwrap();
    let w = left.strategy.layout("w1").unwrap();
    assert_ne!(w.region_of(0), w.region_of(1));
    assert_eq!(w.region_of(0), w.region_of(4));
}

fn tiny_with_ops() -> Spec {
    let text = std::fs::read_to_string(root().join("specs/tiny-model.yaml")).unwrap();
    parse(&format!("{text}\n{TINY_OPS}"))
}

/// The operators section of the tiny model, shared with the binary's tests.
const TINY_OPS: &str = include_str!("tiny_ops.yaml");

#[test]
fn weights_and_redistributions_of_a_layer() {
    let spec = tiny_with_ops();
    let graph = spec.operators().cloned().unwrap();
    assert_eq!(graph.ops[2].output, "q");
    let d = derive_from_operators(&graph, spec.tensors()).unwrap();
    // Vocabulary-parallel embedding, column-parallel q, row-parallel o.
    let layout = |n: &str| d.strategy.layout(n).unwrap().clone();
    let rows = |l: &TensorLayout, r: u64| l.region_of(r).unwrap().to_string();
    assert_eq!(
        rows(&layout("model.embed_tokens.weight"), 2),
        "[32..48, 0..32]"
    );
    assert_eq!(
        rows(&layout("model.layers.0.self_attn.q_proj.weight"), 1),
        "[8..16, 0..32]"
    );
    assert_eq!(
        rows(&layout("model.layers.0.self_attn.o_proj.weight"), 3),
        "[0..32, 24..32]"
    );
    assert_eq!(rows(&layout("lm_head.weight"), 3), "[0..64, 0..32]");
    assert!(
        d.weights[spec
            .tensors()
            .iter()
            .position(|t| t.name == "lm_head.weight")
            .unwrap()]
        .is_none()
    );
    // hn: row-split by the norm, needed whole by q: each of 4 ranks
    // fetches the 3/4 it lacks of 8 x 32 f32 (1024 B).
    let r: Vec<(&str, usize, usize, u64)> = d
        .redistributions
        .iter()
        .map(|r| (r.activation.as_str(), r.producer, r.consumer, r.bytes))
        .collect();
    assert_eq!(r, [("hn", 1, 2, 3072), ("o", 3, 4, 0)]);
    assert!(d.conflicts.is_empty());
    insta::assert_snapshot!("operators_tiny_layer", d.report(&graph));

    // Changing the devices and the batch re-derives.
    let mut g8 = graph.clone();
    g8.devices = 8;
    let d8 = derive_from_operators(&g8, spec.tensors()).unwrap();
    assert_eq!(d8.ops[0].dev_matrix, [2, 4, 1]); // Gather: repeat on the left
    assert_eq!(d8.ops[1].dev_matrix, [4, 1, 2]); // others: on the right
    assert_eq!(d8.redistributions.len(), 4);
    let mut g16 = graph.clone();
    g16.batch = 16;
    let d16 = derive_from_operators(&g16, spec.tensors()).unwrap();
    assert_eq!(d16.redistributions[0].bytes, 2 * 3072);
    let mut g6 = graph;
    g6.batch = 6;
    let e = derive_from_operators(&g6, spec.tensors()).unwrap_err();
    assert!(
        matches!(
            e,
            OpsError::Indivisible {
                op: 1,
                dim: 0,
                size: 6,
                ways: 4,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn tied_embedding_conflict() {
    let tensors = vec![TensorInfo {
        name: "embed".into(),
        shape: vec![64, 32],
        dtype: DType::BF16,
    }];
    let graph = OperatorGraph {
        devices: 4,
        stages: 1,
        batch: 8,
        repeated_calc: RepeatSide::Right,
        inputs: vec![ActivationInput {
            name: "ids".into(),
            shape: vec![DimSize::Batch],
            dtype: DType::I32,
        }],
        ops: vec![
            Operator {
                kind: OpKind::Gather,
                name: "lookup".into(),
                inputs: vec!["embed".into(), "ids".into()],
                strategy: vec![vec![1, 4], vec![1]],
                transpose_b: false,
                transpose_a: false,
                stage: 0,
                output: "h".into(),
            },
            Operator {
                kind: OpKind::MatMul,
                name: "logits".into(),
                inputs: vec!["h".into(), "embed".into()],
                strategy: vec![vec![1, 1], vec![4, 1]],
                transpose_b: true,
                transpose_a: false,
                stage: 0,
                output: "y".into(),
            },
        ],
    };
    let d = derive_from_operators(&graph, &tensors).unwrap();
    // The lookup keeps the table split by columns; the output
    // projection wants it split by rows: every rank lacks 3/4 of its
    // rows' other columns.
    assert_eq!(d.conflicts.len(), 1);
    let c = &d.conflicts[0];
    assert_eq!((c.tensor.as_str(), c.first, c.other), ("embed", 0, 1));
    assert_eq!(c.bytes, 4 * (16 * 32 * 2) * 3 / 4);
    // h leaves the lookup split by columns; logits needs it whole.
    assert_eq!(d.redistributions.len(), 1);
    assert!(
        d.report(&graph)
            .contains("conflict: embed is read by #1 `logits`")
    );
}

#[test]
fn errors_name_the_operator() {
    let mm = |s: &[&[u64]], devices| {
        one_op(
            OpKind::MatMul,
            &[&[16, 64], &[64, 32]],
            s,
            false,
            devices,
            RepeatSide::Right,
        )
    };
    let cases: Vec<(&str, Option<StrategyFault>, OpCase)> = vec![
        (
            "strategy",
            Some(StrategyFault::ReductionSplit { a: 2, b: 4 }),
            mm(&[&[1, 2], &[4, 1]], 8),
        ),
        (
            "strategy",
            Some(StrategyFault::StrategyCount {
                strategies: 1,
                inputs: 2,
            }),
            mm(&[&[1, 1]], 8),
        ),
        (
            "strategy",
            Some(StrategyFault::StrategyRank {
                input: "x".into(),
                shape: vec![16, 64],
                entries: 3,
            }),
            mm(&[&[1, 1, 1], &[1, 1]], 8),
        ),
        (
            "strategy",
            Some(StrategyFault::ZeroEntry),
            mm(&[&[1, 0], &[0, 1]], 8),
        ),
        ("devices", None, mm(&[&[3, 1], &[1, 1]], 8)),
        ("devices", None, mm(&[&[4, 2], &[2, 2]], 8)),
        ("indivisible", None, mm(&[&[32, 1], &[1, 1]], 32)),
        ("empty", None, mm(&[&[1, 1], &[1, 1]], 0)),
        ("mesh", None, mm(&[&[1, 1], &[1, 1]], 1 << 21)),
        (
            "strategy",
            Some(StrategyFault::NotTwoDims {
                a: vec![2, 16, 64],
                b: vec![64, 32],
            }),
            one_op(
                OpKind::MatMul,
                &[&[2, 16, 64], &[64, 32]],
                &[&[1, 1, 1], &[1, 1]],
                false,
                1,
                RepeatSide::Right,
            ),
        ),
        (
            "strategy",
            Some(StrategyFault::ReductionSizes {
                a: 64,
                b: 32,
                transpose_b: false,
            }),
            one_op(
                OpKind::MatMul,
                &[&[16, 64], &[32, 32]],
                &[&[1, 1], &[1, 1]],
                false,
                1,
                RepeatSide::Right,
            ),
        ),
        (
            "strategy",
            Some(StrategyFault::VocabIndicesSplit),
            one_op(
                OpKind::Gather,
                &[&[64, 32], &[8, 16]],
                &[&[4, 1], &[2, 1]],
                false,
                4,
                RepeatSide::Right,
            ),
        ),
        (
            "strategy",
            Some(StrategyFault::VocabRepeated),
            one_op(
                OpKind::Gather,
                &[&[64, 32], &[8]],
                &[&[2, 2], &[1]],
                false,
                8,
                RepeatSide::Right,
            ),
        ),
        (
            "strategy",
            Some(StrategyFault::BroadcastSplit { dim: 0, a: 2, b: 1 }),
            one_op(
                OpKind::Add,
                &[&[16, 32], &[16, 32]],
                &[&[2, 1], &[1, 2]],
                false,
                4,
                RepeatSide::Right,
            ),
        ),
        (
            "strategy",
            Some(StrategyFault::NoBroadcast {
                a: vec![16, 32],
                b: vec![8, 32],
            }),
            one_op(
                OpKind::Add,
                &[&[16, 32], &[8, 32]],
                &[&[1, 1], &[1, 1]],
                false,
                4,
                RepeatSide::Right,
            ),
        ),
        (
            "strategy",
            Some(StrategyFault::NormalizedSplit),
            one_op(
                OpKind::RmsNorm,
                &[&[16, 32], &[32]],
                &[&[1, 4], &[4]],
                false,
                4,
                RepeatSide::Right,
            ),
        ),
        (
            "strategy",
            Some(StrategyFault::NotTrailing {
                normalized: vec![16],
                shape: vec![16, 32],
            }),
            one_op(
                OpKind::RmsNorm,
                &[&[16, 32], &[16]],
                &[&[1, 1], &[1]],
                false,
                4,
                RepeatSide::Right,
            ),
        ),
        (
            "strategy",
            Some(StrategyFault::Arity {
                takes: vec![2],
                got: 3,
            }),
            one_op(
                OpKind::Add,
                &[&[16, 32], &[32], &[32]],
                &[&[1, 1], &[1], &[1]],
                false,
                4,
                RepeatSide::Right,
            ),
        ),
    ];
    for (want, fault, (tensors, graph)) in cases {
        let e = derive_from_operators(&graph, &tensors).unwrap_err();
        assert_eq!(code_of(&e), format!("shardplan::ops::{want}"), "{e}");
        if let Some(fault) = fault {
            assert!(
                matches!(&e, OpsError::Strategy { fault: f, .. } if *f == fault),
                "{e}: want {fault:?}"
            );
        }
        assert!(miette::Diagnostic::help(&e).is_some(), "{e}");
        if want != "empty" && want != "mesh" {
            assert_eq!(e.location().map(|l| l.0), Some(0), "{e}");
        }
    }
    // Names: unknown inputs, reused outputs and inputs.
    let (tensors, mut graph) = mm(&[&[1, 1], &[1, 1]], 1);
    graph.ops[0].inputs[1] = "nope".into();
    let e = derive_from_operators(&graph, &tensors).unwrap_err();
    assert_eq!(
        (code_of(&e), e.location()),
        ("shardplan::ops::unknown_input".into(), Some((0, Some(1))))
    );
    let (tensors, mut graph) = mm(&[&[1, 1], &[1, 1]], 1);
    graph.ops[0].output = "w1".into();
    assert_eq!(
        code_of(&derive_from_operators(&graph, &tensors).unwrap_err()),
        "shardplan::ops::duplicate_output"
    );
    let (tensors, mut graph) = mm(&[&[1, 1], &[1, 1]], 1);
    graph.inputs[0].name = "w1".into();
    assert_eq!(
        code_of(&derive_from_operators(&graph, &tensors).unwrap_err()),
        "shardplan::ops::duplicate_input"
    );
}

fn code_of(e: &OpsError) -> String {
    miette::Diagnostic::code(e).unwrap().to_string()
}

#[test]
fn operators_section_diagnostics() {
    let base = "
version: 1
tensors: [{name: w, shape: [64, 32], dtype: f32}]
operators:
  devices: 8
";
    let cases = [
        (
            "  ops: [{op: Matmul, inputs: [x, w], strategy: [[1, 1], [1, 1]]}]",
            "bad_operator",
            (6, 14),
        ),
        (
            "  ops: [{op: MatMul, inputs: [x, w], strategy: [[1, 1], [1, 1]]}]",
            "bad_operator",
            (6, 31),
        ),
        (
            "  inputs: [{name: x, shape: [seq, 64], dtype: f32}]\n  ops: []",
            "bad_operator",
            (6, 30),
        ),
        (
            "  inputs: [{name: w, shape: [8, 64], dtype: f32}]\n  ops: []",
            "bad_operator",
            (6, 19),
        ),
        (
            "  inputs: [{name: x, shape: [8, 64], dtype: f99}]\n  ops: []",
            "unknown_dtype",
            (6, 45),
        ),
        (
            "  repeated_calc: middle\n  ops: []",
            "bad_operator",
            (6, 18),
        ),
        ("  batch: 0\n  ops: []", "bad_operator", (6, 10)),
        (
            "  inputs: [{name: x, shape: [batch, 64], dtype: f32}]\n  ops: [{op: MatMul, inputs: [x, w], strategy: [[1, 3], [3, 1]]}]",
            "bad_operator",
            (7, 14),
        ),
        (
            "  ops: [{op: MatMul, inputs: [x, w], strategy: [[1, 1], [1, 1]], transpose: true}]",
            "unknown_field",
            (6, 66),
        ),
    ];
    for (tail, want, at) in cases {
        let text = format!("{base}{tail}\n");
        let (spec, diags) = parse_spec("x.yaml", &text);
        assert!(spec.is_none(), "{tail}");
        let d = diags
            .iter()
            .find(|d| d.code.short() == want)
            .unwrap_or_else(|| panic!("{tail}: {diags:?}"));
        assert_eq!((d.line, d.column), at, "{tail}: {}", d.one_line());
    }
    let devices0 = base.replace("devices: 8", "devices: 0") + "  ops: []\n";
    let (_, diags) = parse_spec("x.yaml", &devices0);
    assert_eq!(diags[0].code.short(), "bad_operator");
    let no_devices = "version: 1\noperators: {ops: []}\n";
    let (_, diags) = parse_spec("x.yaml", no_devices);
    assert_eq!(diags[0].code.short(), "missing_field");
}

const STAGED: &str = "
version: 1
meshes:
  one: {shape: [1], axes: [r]}
tensors:
  - {name: embed.weight, shape: [64, 16], dtype: f32}
  - {name: w0, shape: [16, 16], dtype: f32}
  - {name: w1, shape: [16, 16], dtype: f32}
strategies:
  whole: {mesh: one, rules: [{match: \"*\", dims: replicated}]}
operators:
  devices: 2
  stages: 3
  batch: 4
  inputs:
    - {name: tokens, shape: [batch], dtype: i32}
  ops:
    - {op: Gather, name: embed, inputs: [embed.weight, tokens], strategy: [[2, 1], [1]], stage: 0, output: h}
    - {op: MatMul, name: fc0, inputs: [h, w0], strategy: [[1, 1], [1, 2]], stage: 0, output: h0}
    - {op: MatMul, name: fc1, inputs: [h0, w1], strategy: [[1, 2], [2, 1]], stage: 1, output: h1}
    - {op: MatMul, name: head, inputs: [h1, embed.weight], strategy: [[1, 1], [2, 1]], transpose_b: true, stage: 2, output: logits}
";

/// Operators on three pipeline stages: each weight lives on the stage
/// that reads it, and the tied embedding (looked up on stage 0,
/// multiplied with on stage 2, cut alike) on both, not on stage 1.
#[test]
fn operators_on_pipeline_stages() {
    let spec = parse(STAGED);
    let graph = spec.operators().cloned().unwrap();
    assert_eq!((graph.stages, graph.ops[3].stage), (3, 2));
    let d = derive_from_operators(&graph, spec.tensors()).unwrap();
    let holders = |n: &str| -> Vec<u64> {
        let l = d.strategy.layout(n).unwrap();
        (0..6).filter(|&r| l.holds(r)).collect()
    };
    assert_eq!(holders("embed.weight"), vec![0, 1, 4, 5]);
    assert_eq!(holders("w0"), vec![0, 1]);
    assert_eq!(holders("w1"), vec![2, 3]);
    let e = d.strategy.layout("embed.weight").unwrap();
    assert_eq!(e.region_of(1), e.region_of(5));
    assert_eq!(e.region_of(5).unwrap().to_string(), "[32..64, 0..16]");
    assert_eq!(d.weights[0].as_ref().unwrap().stages, vec![0, 2]);
    let report = d.report(&graph);
    assert!(report.contains("on 3 stages of 2 devices"), "{report}");
    assert!(report.contains("#3 MatMul `head` (stage 2)"), "{report}");
    assert!(
        report.contains("(input 0 of #0 `embed`) on stage 0, 2"),
        "{report}"
    );
    // The activation handed from stage 0 to stage 1 is compared on the
    // consumer's devices: fc0 leaves h0 split by columns, as fc1 needs.
    assert!(
        d.redistributions.iter().all(|r| r.activation != "h0"),
        "{report}"
    );
    // Plans to and from the derived strategy pass the verifier.
    let whole = spec.strategy("whole").unwrap();
    plan_and_simulate(whole, &d.strategy, SMALL);
    plan_and_simulate(&d.strategy, whole, SMALL);
    // Written as a spec (the table on both stages), it reads back alike.
    let d = d.renamed("staged").unwrap();
    let yaml = derived_spec(&spec, Some("whole"), &d.strategy, None)
        .unwrap()
        .to_yaml("")
        .unwrap();
    assert!(yaml.contains(r#"at: {"stage": [0, 2]}"#), "{yaml}");
    let back = parse(&yaml);
    assert!(differences(&d.strategy, back.strategy("staged").unwrap()).is_empty());

    // A cut that differs between the stages is a conflict, not a
    // second stage.
    let text = STAGED.replace(
        "strategy: [[1, 1], [2, 1]], transpose_b: true",
        "strategy: [[1, 2], [1, 2]], transpose_b: true",
    );
    let spec2 = parse(&text);
    let d2 = derive_from_operators(spec2.operators().unwrap(), spec2.tensors()).unwrap();
    assert_eq!(d2.conflicts.len(), 1);
    assert_eq!(d2.weights[0].as_ref().unwrap().stages, vec![0]);
    let l = d2.strategy.layout("embed.weight").unwrap();
    assert!(!l.holds(4));

    // Refusals, located on the operator.
    let cases = [
        (
            "stage: 1, output: h1",
            "stage: 3, output: h1",
            "stage 3 is beyond the graph's 3 stages",
        ),
        ("stage: 0, output: h0", "stage: 1, output: h0", ""),
        ("stage: 1, output: h1", "stage: 0, output: h1", ""),
        (
            "stage: 0, output: h}",
            "stage: 1, output: h}",
            "reads `h`, which operator #0 produces on the later stage 1",
        ),
        ("stages: 3", "stages: 0", "`stages` is 0"),
    ];
    for (from, to, want) in cases {
        let text = STAGED.replacen(from, to, 1);
        assert_ne!(text, STAGED, "{from}");
        let (s, diags) = parse_spec("t.yaml", &text);
        if want.is_empty() {
            // Stage order kept: still fine.
            assert!(s.is_some(), "{to}: {diags:?}");
            continue;
        }
        assert!(s.is_none(), "{to}");
        let d = &diags[0];
        assert_eq!(d.code.short(), "bad_operator", "{to}");
        assert!(d.message.contains(want), "{to}: {}", d.message);
    }
}

/// `transpose_a`: the first input stored `[K, M]` with its strategy in
/// that order; the device matrix is built as for `[M, K]` and the map
/// swapped back.
#[test]
fn transpose_a_swaps_the_first_input() {
    // x [K=16, M=8], strategy [k=2, m=4]; w [K=16, N=4], strategy [2, 1].
    let (t, mut g) = one_op(
        OpKind::MatMul,
        &[&[16, 8], &[16, 4]],
        &[&[2, 4], &[2, 1]],
        false,
        8,
        RepeatSide::Right,
    );
    assert!(
        derive_from_operators(&g, &t).is_err(),
        "without transpose_a the reduction is split 4 ways against 2"
    );
    g.ops[0].transpose_a = true;
    let d = derive_from_operators(&g, &t).unwrap();
    assert_eq!(d.ops[0].dev_matrix, vec![4, 2, 1]);
    assert_eq!(d.ops[0].inputs, vec![vec![1, 2], vec![1, 0]]);
    assert_eq!(d.ops[0].output_shape, vec![8, 4]);
    assert_eq!(d.ops[0].forward.unwrap().ranks, 2);
}

/// MindSpore's special case of a 2-D MatMul whose two inputs have the
/// same strategy over every device: that strategy is the device matrix
/// and both inputs keep it ([1, 0] maps), where the general rule would
/// refuse the mismatched reduction split.
#[test]
fn matmul_with_equal_strategies_over_all_devices() {
    let (t, g) = one_op(
        OpKind::MatMul,
        &[&[8, 8], &[8, 8]],
        &[&[2, 2], &[2, 2]],
        false,
        4,
        RepeatSide::Right,
    );
    let d = derive_from_operators(&g, &t).unwrap();
    assert_eq!(d.ops[0].dev_matrix, vec![2, 2]);
    assert_eq!(d.ops[0].inputs, vec![vec![1, 0], vec![1, 0]]);
    assert_eq!(d.ops[0].output, vec![1, 0]);
    assert!(d.ops[0].forward.is_none());
    let w = d.strategy.layout("w1").unwrap();
    assert_eq!(w.region_of(1).unwrap().to_string(), "[0..4, 4..8]");
    // Over all 8 devices the special case applies; on 16 (repeated
    // calculation) it does not, and the general rule refuses a's
    // columns split 4 ways against b's rows split 2.
    let (t, g) = one_op(
        OpKind::MatMul,
        &[&[8, 8], &[8, 8]],
        &[&[2, 4], &[2, 4]],
        false,
        8,
        RepeatSide::Right,
    );
    assert!(derive_from_operators(&g, &t).is_ok());
    let (t, g) = one_op(
        OpKind::MatMul,
        &[&[8, 8], &[8, 8]],
        &[&[2, 4], &[2, 4]],
        false,
        16,
        RepeatSide::Right,
    );
    let e = derive_from_operators(&g, &t).unwrap_err();
    assert!(
        matches!(
            e,
            OpsError::Strategy {
                fault: StrategyFault::ReductionSplit { a: 4, b: 2 },
                ..
            }
        ),
        "{e}"
    );
}

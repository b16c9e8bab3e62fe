//! Every `DeriveError` code, and MindSpore optimizer shards without their
//! record.

use super::*;

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

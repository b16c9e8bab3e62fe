//! Derivation rules: shared tensors, forced replication, fallbacks, stage
//! ranges and relative stages, tensor-parallel dims and axis roles.

use super::*;

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

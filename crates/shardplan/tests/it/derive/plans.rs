//! Every derived strategy is planned and verified, the small ones simulated;
//! derived specs read back, and the tiny model runs through them.

use super::*;

/// Targets given by degrees, for every bundled spec: what plan and
/// simulate must accept.
const DEGREES: &[(u64, u64, u64)] = &[(1, 1, 1), (2, 2, 1), (4, 2, 2), (8, 4, 2), (8, 8, 1)];

/// Buffers simulated for the derivation to a spec's own inference mesh
/// (the medium specs, about ten seconds each in a debug build; the
/// Llama-sized ones are only planned and verified).
const MEDIUM: u64 = 320 << 20;

#[test]
fn every_derived_strategy_plans_verifies_and_simulates() {
    // One thread per spec: simulation is slow in a debug build.
    let counts: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = bundled_specs()
            .into_iter()
            .map(|file| scope.spawn(move || plan_spec_targets(&file)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let planned: usize = counts.iter().map(|c| c.0).sum();
    let simulated: usize = counts.iter().map(|c| c.1).sum();
    assert!(planned >= 40, "{planned}");
    assert!(simulated >= 15, "{simulated}");
}

/// Derives `file`'s training strategy for its own targets and for
/// [`DEGREES`]; plans, verifies and (within the limits) simulates each.
fn plan_spec_targets(file: &str) -> (usize, usize) {
    let spec = load(file);
    let from = spec.transfer().unwrap().from.clone();
    let mut rules = rules_for(&spec, &from);
    // Degrees that do not divide a tensor replicate it.
    rules.fallback = Fallback::Replicate;
    let train = spec.strategy(&from).unwrap();
    let mut derived = Vec::new();
    for (i, (target, _)) in targets(&spec).into_iter().enumerate() {
        derived.push((
            derive_for(&spec, &from, &target),
            if i == 0 { MEDIUM } else { SMALL },
        ));
    }
    for &(n, tp, pp) in DEGREES {
        let t = DeriveTarget::from_degrees(n, tp, pp).unwrap();
        match derive_strategy(train, &t, &rules) {
            Ok(d) => derived.push((d, SMALL)),
            // A pipelined target needs a layer pattern or training stages.
            Err(DeriveError::NoLayerPattern { .. }) => assert!(pp > 1, "{file}"),
            Err(e) => panic!("{file}: {n} devices, tp {tp}, pp {pp}: {e}"),
        }
    }
    let mut simulated = 0;
    for (d, limit) in &derived {
        simulated += usize::from(plan_and_simulate(train, &d.strategy, *limit));
    }
    (derived.len(), simulated)
}

#[test]
fn derived_specs_read_back() {
    for file in bundled_specs() {
        let spec = load(&file);
        let from = spec.transfer().unwrap().from.clone();
        for (target, _) in targets(&spec) {
            let d = derive_for(&spec, &from, &target)
                .renamed("derived_for_test")
                .unwrap();
            let with = derived_spec(&spec, Some(&from), &d.strategy, Some(&target)).unwrap();
            // On the target mesh, by its name; one device on a mesh equal
            // to it, the spec's or a new one.
            let on = with.mesh_of("derived_for_test").unwrap().as_str();
            if spec.meshes().contains_key(&target) {
                assert_eq!(on, target);
            }
            assert_eq!(*with.meshes()[on], **d.strategy.mesh(), "{on}");
            let yaml = with.to_yaml("derived\nfor a test").unwrap();
            assert!(yaml.starts_with("# derived\n# for a test\n"), "{yaml}");
            let back = parse(&yaml);
            let t = back.transfer().unwrap();
            assert_eq!(
                (t.from.as_str(), t.to.as_str()),
                (from.as_str(), "derived_for_test")
            );
            assert!(
                differences(&d.strategy, back.strategy("derived_for_test").unwrap()).is_empty()
            );
            // The spec's own strategies are written too, unchanged.
            for (name, s) in spec.strategies() {
                assert!(
                    differences(s, back.strategy(name).unwrap()).is_empty(),
                    "{name}"
                );
            }
            // A taken name is refused.
            let d = d.renamed(&from).unwrap();
            let err = derived_spec(&spec, Some(&from), &d.strategy, None).unwrap_err();
            assert!(
                matches!(err, shardplan::spec::DerivedSpecError::NameTaken(_)),
                "{err}"
            );
        }
    }
}

#[test]
fn tiny_model_runs_through_derived_strategies() {
    use shardplan::model::{DEFAULT_TOLERANCE, check_model};
    let spec = load("specs/tiny-model.yaml");
    let train = spec.strategy("train").unwrap();
    let rules = rules_for(&spec, "train");
    let tokens = vec![vec![1, 17, 42, 63, 0, 33], vec![5, 5, 60, 12, 31, 32]];
    let mut targets: Vec<DeriveTarget> = [
        (1, 1, 1),
        (2, 2, 1),
        (4, 2, 2),
        (4, 4, 1),
        (8, 4, 2),
        (4, 2, 1),
    ]
    .iter()
    .map(|&(n, tp, pp)| DeriveTarget::from_degrees(n, tp, pp).unwrap())
    .collect();
    targets.push(DeriveTarget::from_mesh(spec.meshes()["infer"].clone(), &rules).unwrap());
    for t in targets {
        let d = derive_strategy(train, &t, &rules).unwrap();
        let r = check_model(train, &d.strategy, &tokens, DEFAULT_TOLERANCE)
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        assert!(r.max_rel_err <= DEFAULT_TOLERANCE, "{t}: {}", r.max_rel_err);
    }
}

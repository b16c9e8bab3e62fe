//! `shardplan derive`: inference layouts from a training strategy or from operators.

use crate::Status;
use std::path::Path;

use miette::{IntoDiagnostic, WrapErr};
use shardplan::derive::{DeriveError, DeriveRules, DeriveTarget};
use shardplan::spec::{Spec, parse_spec};
use shardplan::{Strategy, formats};

use crate::args::*;
use crate::common::*;

pub(crate) fn derive(path: &Path, args: &DeriveArgs) -> miette::Result<Status> {
    use shardplan::derive::derive_strategy;
    use shardplan::spec::rules_for;
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let Some(from) = source_name(&spec, args) else {
        return Err(miette::miette!(
            help = "pass --from STRATEGY, or add `transfer: {from: A, to: B}` to the spec",
            "{} has several strategies and no transfer to take the training strategy from",
            path.display()
        ));
    };
    let train = spec
        .strategy(&from)
        .ok_or_else(|| no_strategy(&spec, &from, path))?;
    let rules = rules_for(&spec, &from);
    let derived = derive_target(&spec, args, &rules, path)?
        .and_then(|t| derive_strategy(train, &t, &rules))
        .and_then(|d| d.renamed(&args.name));
    let derived = match or_report(derived) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let comment = format!(
        "Written by `shardplan derive` from strategy `{from}` of {}:\nstrategy `{}` on {}.",
        path.display(),
        args.name,
        derived.target
    );
    let yaml = match derived_yaml(
        &spec,
        Some(&from),
        &derived.strategy,
        args.target.as_deref(),
        &comment,
    ) {
        Ok(y) => y,
        Err(code) => return Ok(code),
    };
    let explanation = args.explain.then(|| derived.explain(&from));
    let summary = format!(
        "strategy `{}` ({} tensors) on {}, transfer {from} -> {}",
        args.name,
        derived.strategy.tensors().len(),
        derived.target,
        args.name
    );
    write_derived(&yaml, &derived.strategy, args, &summary, explanation)
}

/// The source strategy's name: `--from`, else the transfer's source, else
/// the spec's only strategy.
fn source_name(spec: &Spec, args: &DeriveArgs) -> Option<String> {
    let only = (spec.strategies().len() == 1)
        .then(|| spec.strategies().keys().next().cloned())
        .flatten();
    args.from
        .clone()
        .or_else(|| spec.transfer().map(|t| t.from.clone()))
        .or(only)
}

/// The target `--target MESH` or `--devices N [--tp T] [--pp P]` names;
/// the inner error is the derivation's own (a degree the devices do not
/// divide), reported as a derivation failure.
fn derive_target(
    spec: &Spec,
    args: &DeriveArgs,
    rules: &DeriveRules,
    path: &Path,
) -> miette::Result<Result<DeriveTarget, DeriveError>> {
    match (&args.target, args.devices) {
        (Some(m), _) => {
            let mesh = spec.meshes().get(m).ok_or_else(|| {
                let names: Vec<&String> = spec.meshes().keys().collect();
                miette::miette!(
                    help = format!("meshes in the spec: {names:?}"),
                    "no mesh `{m}` in {}",
                    path.display()
                )
            })?;
            Ok(DeriveTarget::from_mesh(mesh.clone(), rules))
        }
        (None, Some(devices)) => {
            let tp = args.tp.unwrap_or(devices.checked_div(args.pp).unwrap_or(0));
            Ok(DeriveTarget::from_degrees(devices, tp, args.pp))
        }
        (None, None) => Err(miette::miette!(
            help = "pass --target MESH or --devices N [--tp T] [--pp P]",
            "no target"
        )),
    }
}

/// Checks that the derived spec reads back to the derived layouts, then
/// writes it (to --output or stdout) and the explanation.
pub(crate) fn write_derived(
    yaml: &str,
    derived: &Strategy,
    args: &DeriveArgs,
    summary: &str,
    explanation: Option<String>,
) -> miette::Result<Status> {
    let (back, diags) = parse_spec("derived spec", yaml);
    let same = back
        .as_ref()
        .and_then(|b| b.strategy(derived.name()))
        .is_some_and(|s| {
            s.layouts()
                .iter()
                .zip(derived.layouts())
                .all(|(a, b)| a.same_placement(b))
        });
    if !same {
        return Err(miette::miette!(
            "internal error, the derived spec does not read back: {}",
            diags
                .iter()
                .map(|d| d.one_line())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    match &args.output {
        Some(out) => {
            formats::write_atomic(out, yaml.as_bytes())
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {}: {summary}", out.display());
            if let Some(x) = explanation {
                emit(&x);
            }
        }
        None => {
            emit(yaml);
            if let Some(x) = explanation {
                eprint!("{x}");
            }
        }
    }
    Ok(Status::SUCCESS)
}

/// The spec with the derived strategy, as YAML headed by `comment`; a
/// derived strategy that does not join the spec or cannot be written is
/// reported, and exits 1.
fn derived_yaml(
    spec: &Spec,
    from: Option<&str>,
    derived: &Strategy,
    mesh: Option<&str>,
    comment: &str,
) -> Result<String, Status> {
    let spec = or_report(shardplan::spec::derived_spec(spec, from, derived, mesh))?;
    or_report(spec.to_yaml(comment))
}

/// `derive --operators`: weights laid out by the spec's operators.
pub(crate) fn derive_operators(path: &Path, args: &DeriveArgs) -> miette::Result<Status> {
    use shardplan::derive::ops::derive_from_operators;
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let Some(mut graph) = spec.operators().cloned() else {
        return Err(miette::miette!(
            help = "add an `operators:` section (docs/derive.md), or derive from a strategy with --target or --devices",
            "{} has no `operators:` section",
            path.display()
        ));
    };
    if let Some(d) = args.devices {
        graph.devices = d;
    }
    if let Some(b) = args.batch {
        graph.batch = b;
    }
    // The transfer source, when there is one.
    let from = source_name(&spec, args);
    if let Some(f) = &from
        && spec.strategy(f).is_none()
    {
        return Err(no_strategy(&spec, f, path));
    }
    let derived = derive_from_operators(&graph, spec.tensors()).and_then(|d| d.renamed(&args.name));
    let derived = match or_report(derived) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let devices = if graph.stages > 1 {
        format!("{} stages of {} devices", graph.stages, graph.devices)
    } else {
        format!("{} devices", graph.devices)
    };
    let comment = format!(
        "Written by `shardplan derive --operators` from {}:\nstrategy `{}` laid out by {} operators on {devices}, batch {}.",
        path.display(),
        args.name,
        graph.ops.len(),
        graph.batch
    );
    let yaml = match derived_yaml(&spec, from.as_deref(), &derived.strategy, None, &comment) {
        Ok(y) => y,
        Err(code) => return Ok(code),
    };
    let laid_out = derived.weights.iter().flatten().count();
    let summary = format!(
        "strategy `{}`: {laid_out} of {} tensors laid out by {} operators on {devices}; {} redistribution(s) of activations, {} B; {} weight conflict(s)",
        args.name,
        derived.strategy.tensors().len(),
        graph.ops.len(),
        derived.redistributions.len(),
        derived.redistribution_bytes(),
        derived.conflicts.len()
    );
    let explanation = args.explain.then(|| derived.report(&graph));
    if args.output.is_none() && !args.explain {
        eprintln!("{summary}");
    }
    write_derived(&yaml, &derived.strategy, args, &summary, explanation)
}

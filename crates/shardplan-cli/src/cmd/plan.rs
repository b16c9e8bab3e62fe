//! `shardplan plan`, `verify` and `explain`.

use crate::Status;
use std::path::Path;

use miette::{IntoDiagnostic, WrapErr};
use shardplan::spec::select_tensors;
use shardplan::{
    PlanConfig, ReplicaChoice, check_plan, formats, plan_transfer, report, verify_plan,
};

use crate::args::*;
use crate::common::*;

pub(crate) fn plan(args: &PlanArgs) -> miette::Result<Status> {
    let (path, ends, tensor) = (args.spec.as_path(), &args.ends, args.tensor.as_deref());
    let (format, output, min_files, top) = (
        args.format,
        args.output.as_deref(),
        args.min_files,
        args.top,
    );
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (src, dst) = strategy_pair(&spec, ends, path)?;
    let (src, dst) = (&src, &dst);
    let tensors = match tensor {
        None => None,
        Some(pattern) => {
            let names = select_tensors(&spec, pattern)
                .map_err(|e| miette::miette!("--tensor {pattern:?}: {e}"))?;
            if names.is_empty() {
                return Err(miette::miette!(
                    help = "globs use * and ?; names are matched whole",
                    "--tensor {pattern:?} matches no tensor of {}",
                    path.display()
                ));
            }
            Some(names)
        }
    };
    let mut config = PlanConfig::new(if min_files {
        ReplicaChoice::MinFiles
    } else {
        ReplicaChoice::Balance
    });
    config.tensors = tensors;
    let plan = plan_transfer(src, dst, &config)?;
    // Every plan the tool emits has passed the independent verifier.
    let plan = verify_plan(plan, src, dst)
        .map_err(|d| miette::miette!("internal error, the planner made an invalid plan: {d}"))?;
    let text = match format {
        Format::Text => report::plan_report(&plan, top),
        Format::Json => formats::plan_json::to_json(&plan) + "\n",
    };
    match output {
        Some(out) => {
            formats::write_atomic(out, text.as_bytes())
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot write {}", out.display()))?;
            let s = plan.summary();
            eprintln!(
                "wrote {} ({} pieces, {} network bytes)",
                out.display(),
                s.pieces,
                s.total_bytes
            );
        }
        None => emit(&text),
    }
    Ok(Status::SUCCESS)
}

pub(crate) fn verify(spec_path: &Path, plan_path: &Path) -> miette::Result<Status> {
    let spec = match load_spec(spec_path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let text = read(plan_path)?;
    let plan = match or_report(formats::plan_json::from_json(
        &plan_path.display().to_string(),
        &text,
    )) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let ends = Ends {
        from: Some(plan.source.clone()),
        to: Some(plan.destination.clone()),
    };
    let (src, dst) = strategy_pair(&spec, &ends, spec_path)?;
    let (src, dst) = (&src, &dst);
    match check_plan(&plan, src, dst) {
        Ok(v) => {
            println!(
                "{}: valid: {} pieces, {} network bytes (= lower bound), {} local bytes",
                plan_path.display(),
                v.pieces,
                v.network_bytes,
                v.local_bytes
            );
            Ok(Status::SUCCESS)
        }
        Err(defect) => {
            eprintln!(
                "{:?}",
                miette::Report::new(defect)
                    .wrap_err(format!("{} is not a valid plan", plan_path.display()))
            );
            Ok(Status::from(1))
        }
    }
}

pub(crate) fn explain(path: &Path, ends: &Ends, tensor: &str) -> miette::Result<Status> {
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (src, dst) = strategy_pair(&spec, ends, path)?;
    let (src, dst) = (&src, &dst);
    if src.tensor(tensor).is_none() {
        return Err(miette::miette!(
            help = "names are matched exactly, as listed under `tensors:` in the spec",
            "no tensor `{tensor}` in {}",
            path.display()
        ));
    }
    let config = PlanConfig::new(ReplicaChoice::Balance).with_tensors([tensor]);
    let plan = plan_transfer(src, dst, &config)?;
    emit(&report::explain_tensor(src, dst, &plan.tensors[0]));
    Ok(Status::SUCCESS)
}

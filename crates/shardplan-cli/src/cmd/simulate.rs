//! `shardplan simulate`: plan, verify and execute in memory, optionally the model.

use crate::Status;

use shardplan::spec::select_tensors;
use shardplan::{
    ExecConfig, PlanConfig, ReplicaChoice, ShardStore, Strategy, execute_plan_with, plan_transfer,
    report, verify_plan,
};

use crate::args::*;
use crate::common::*;

pub(crate) fn simulate(args: &SimulateArgs) -> miette::Result<Status> {
    let (path, ends, tensor) = (args.spec.as_path(), &args.ends, args.tensor.as_deref());
    let (min_files, parallel, max_memory_mib, model) = (
        args.min_files,
        args.parallel,
        args.max_memory_mib,
        args.model,
    );
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (src, dst) = strategy_pair(&spec, ends, path)?;
    let (src, dst) = (&src, &dst);
    let names = match tensor {
        None => spec.tensors().iter().map(|t| t.name.clone()).collect(),
        Some(pattern) => select_tensors(&spec, pattern)
            .map_err(|e| miette::miette!("--tensor {pattern:?}: {e}"))?,
    };
    // The buffers of both sides must fit in memory.
    let footprint = |s: &Strategy| -> u64 {
        names
            .iter()
            .filter_map(|n| Some((s.layout(n)?, s.tensor(n)?)))
            .map(|(l, t)| {
                (0..s.mesh().rank_count())
                    .filter_map(|r| l.region_of(r))
                    .map(|r| r.volume().saturating_mul(t.dtype.size_bytes()))
                    .sum::<u64>()
            })
            .sum()
    };
    let needed = footprint(src).saturating_add(footprint(dst));
    if needed > max_memory_mib << 20 {
        return Err(miette::miette!(
            help = "simulate fewer tensors (--tensor GLOB) or raise --max-memory-mib",
            "simulating needs {} of buffers, over the limit of {max_memory_mib} MiB",
            report::human_bytes(needed)
        ));
    }
    let config = PlanConfig::new(if min_files {
        ReplicaChoice::MinFiles
    } else {
        ReplicaChoice::Balance
    })
    .with_tensors(names);
    let t0 = std::time::Instant::now();
    let plan = plan_transfer(src, dst, &config)?;
    let planned = t0.elapsed();
    let plan = verify_plan(plan, src, dst)
        .map_err(|d| miette::miette!("internal error, the planner made an invalid plan: {d}"))?;
    let from = ShardStore::synthetic(src);
    let mut to = ShardStore::zeroed(dst);
    let t1 = std::time::Instant::now();
    let exec = if parallel {
        ExecConfig::parallel()
    } else {
        ExecConfig::sequential()
    };
    let stats = execute_plan_with(&plan, &from, &mut to, &exec)?;
    let executed = t1.elapsed();
    let s = plan.summary();
    let mut out = format!(
        "simulate {} -> {}: {} tensors, {} pieces\n  planned in {:.1} ms; executed in {:.1} ms: {} copied ({:.2} GB/s), {} over the network, {} local\n",
        plan.source,
        plan.destination,
        plan.tensors.len(),
        stats.pieces,
        planned.as_secs_f64() * 1e3,
        executed.as_secs_f64() * 1e3,
        report::human_bytes(stats.bytes),
        stats.bytes as f64 / executed.as_secs_f64().max(1e-9) / 1e9,
        report::human_bytes(s.total_bytes),
        report::human_bytes(s.local_bytes),
    );
    let mut code = match to.check_synthetic(dst, src) {
        Ok(()) => {
            out.push_str("  every destination element checked: ok\n");
            Status::SUCCESS
        }
        Err(e) => {
            out.push_str(&format!("  MISMATCH: {e}\n"));
            Status::from(1)
        }
    };
    if model {
        use shardplan::model::{DEFAULT_TOLERANCE, EMBED, check_model};
        // A fixed batch: two sequences of different lengths.
        let vocab = spec
            .tensors()
            .iter()
            .find(|t| t.name == EMBED)
            .map_or(1, |t| t.shape[0].max(1)) as u32;
        let tokens: Vec<Vec<u32>> = vec![
            (0..7).map(|i| (i * 5 + 1) % vocab).collect(),
            (0..4).map(|i| (i * 11 + 3) % vocab).collect(),
        ];
        match check_model(src, dst, &tokens, DEFAULT_TOLERANCE) {
            Ok(r) => out.push_str(&format!(
                "  model: logits match the single-device run: max abs error {:.3e}, max relative error {:.3e} (tolerance {DEFAULT_TOLERANCE:e})\n",
                r.max_abs_err, r.max_rel_err
            )),
            Err(e) => {
                out.push_str(&format!("  MODEL MISMATCH: {e}\n"));
                code = Status::from(1);
            }
        }
    }
    emit(&out);
    Ok(code)
}

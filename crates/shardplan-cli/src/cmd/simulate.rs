//! `shardplan simulate`: plan, verify and execute in memory, optionally the model.

use std::time::Duration;

use crate::Status;

use shardplan::spec::{Spec, select_tensors};
use shardplan::{
    ExecConfig, ExecStats, PlanConfig, ReplicaChoice, ShardStore, Strategy, VerifiedPlan,
    execute_plan_with, plan_transfer, report, verify_plan,
};

use crate::args::*;
use crate::common::*;

pub(crate) fn simulate(args: &SimulateArgs) -> miette::Result<Status> {
    let path = args.spec.as_path();
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (src, dst) = strategy_pair(&spec, &args.ends, path)?;
    let names = selected(&spec, args.tensor.as_deref())?;
    check_memory(&src, &dst, &names, args.max_memory_mib)?;
    let run = run_plan(&src, &dst, names, args)?;
    let mut out = run.headline();
    let mut code = match run.to.check_synthetic(&dst, &src) {
        Ok(()) => {
            out.push_str("  every destination element checked: ok\n");
            Status::SUCCESS
        }
        Err(e) => {
            out.push_str(&format!("  MISMATCH: {e}\n"));
            Status::from(1)
        }
    };
    if args.model && !check_model_logits(&spec, &src, &dst, &mut out) {
        code = Status::from(1);
    }
    emit(&out);
    Ok(code)
}

/// The tensors to simulate: all, or those `--tensor` matches.
fn selected(spec: &Spec, tensor: Option<&str>) -> miette::Result<Vec<String>> {
    match tensor {
        None => Ok(spec.tensors().iter().map(|t| t.name.clone()).collect()),
        Some(pattern) => {
            select_tensors(spec, pattern).map_err(|e| miette::miette!("--tensor {pattern:?}: {e}"))
        }
    }
}

/// Bytes of the buffers of `names` over every rank of `s`.
fn footprint(s: &Strategy, names: &[String]) -> u64 {
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
}

/// Refuses before allocating when the buffers of both sides would not fit
/// in `max_memory_mib`.
fn check_memory(
    src: &Strategy,
    dst: &Strategy,
    names: &[String],
    max_memory_mib: u64,
) -> miette::Result<()> {
    let needed = footprint(src, names).saturating_add(footprint(dst, names));
    if needed > max_memory_mib << 20 {
        return Err(miette::miette!(
            help = "simulate fewer tensors (--tensor GLOB) or raise --max-memory-mib",
            "simulating needs {} of buffers, over the limit of {max_memory_mib} MiB",
            report::human_bytes(needed)
        ));
    }
    Ok(())
}

/// A plan made, verified and executed on synthetic buffers.
struct Run {
    plan: VerifiedPlan,
    planned: Duration,
    executed: Duration,
    stats: ExecStats,
    to: ShardStore,
}

fn run_plan(
    src: &Strategy,
    dst: &Strategy,
    names: Vec<String>,
    args: &SimulateArgs,
) -> miette::Result<Run> {
    let choice = if args.min_files {
        ReplicaChoice::MinFiles
    } else {
        ReplicaChoice::Balance
    };
    let config = PlanConfig::new(choice).with_tensors(names);
    let t0 = std::time::Instant::now();
    let plan = plan_transfer(src, dst, &config)?;
    let planned = t0.elapsed();
    let plan = verify_plan(plan, src, dst)
        .map_err(|d| miette::miette!("internal error, the planner made an invalid plan: {d}"))?;
    let from = ShardStore::synthetic(src);
    let mut to = ShardStore::zeroed(dst);
    let exec = if args.parallel {
        ExecConfig::parallel()
    } else {
        ExecConfig::sequential()
    };
    let t1 = std::time::Instant::now();
    let stats = execute_plan_with(&plan, &from, &mut to, &exec)?;
    let executed = t1.elapsed();
    Ok(Run {
        plan,
        planned,
        executed,
        stats,
        to,
    })
}

impl Run {
    /// The first two lines: what was planned and executed, how fast.
    fn headline(&self) -> String {
        let (plan, stats) = (&self.plan, &self.stats);
        let s = plan.summary();
        format!(
            "simulate {} -> {}: {} tensors, {} pieces\n  planned in {:.1} ms; executed in {:.1} ms: {} copied ({:.2} GB/s), {} over the network, {} local\n",
            plan.source,
            plan.destination,
            plan.tensors.len(),
            stats.pieces,
            self.planned.as_secs_f64() * 1e3,
            self.executed.as_secs_f64() * 1e3,
            report::human_bytes(stats.bytes),
            stats.bytes as f64 / self.executed.as_secs_f64().max(1e-9) / 1e9,
            report::human_bytes(s.total_bytes),
            report::human_bytes(s.local_bytes),
        )
    }
}

/// Runs the spec's model on one device and under `dst` and appends the
/// comparison to `out`; false when the logits differ or the model cannot
/// run under the layouts.
fn check_model_logits(spec: &Spec, src: &Strategy, dst: &Strategy, out: &mut String) -> bool {
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
        Ok(r) => {
            out.push_str(&format!(
                "  model: logits match the single-device run: max abs error {:.3e}, max relative error {:.3e} (tolerance {DEFAULT_TOLERANCE:e})\n",
                r.max_abs_err, r.max_rel_err
            ));
            true
        }
        Err(e) => {
            out.push_str(&format!("  MODEL MISMATCH: {e}\n"));
            false
        }
    }
}

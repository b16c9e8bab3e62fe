//! `shardplan reshard --engine`: an inference engine's own per-rank
//! parameters from any source shardplan reads.

use miette::{IntoDiagnostic, WrapErr};
use shardplan::engine::{Engine, EngineDegrees};
use shardplan::reshard::{
    LayoutSource, engine_destination, engine_rank_path, prepare, ranks_for_process,
    write_engine_rank,
};

use super::reshard::{reshard_config, source_and_output};
use crate::Status;
use crate::args::{EngineArg, ReshardArgs};
use crate::common::{emit, or_report};

pub(crate) fn reshard_engine(args: &ReshardArgs) -> miette::Result<Status> {
    let (src_dir, out) = source_and_output(args)?;
    let engine = match args.engine {
        Some(EngineArg::Vllm) | None => Engine::Vllm,
    };
    let mut degrees = EngineDegrees::tp(args.tp.unwrap_or(1));
    if args.ep {
        degrees = degrees.with_expert_parallel();
    }
    let layout = match or_report(engine_destination(
        &src_dir,
        engine,
        degrees,
        args.config.as_deref(),
    )) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let mut cfg = reshard_config(args, src_dir)?;
    cfg.dst = LayoutSource::Strategy(Box::new(layout.strategy.clone()));
    let prepared = match or_report(prepare(&cfg)) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    std::fs::create_dir_all(&out)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot create {}", out.display()))?;
    for w in prepared.warnings() {
        eprintln!("warning: {w}");
    }
    let ranks = ranks_for_process(args.rank, layout.map.rank_count(), &|k| {
        std::env::var(k).ok()
    });
    let t0 = std::time::Instant::now();
    let mut written = 0;
    for &r in &ranks {
        written += match or_report(write_engine_rank(&prepared, &layout, r, &out)) {
            Ok(n) => n,
            Err(code) => return Ok(code),
        };
        eprintln!("rank {r}: {} written", engine_rank_path(&out, r).display());
    }
    let secs = t0.elapsed().as_secs_f64();
    emit(&format!(
        "wrote {} engine ranks ({} produced here): {:.2} GB in {:.2} s\n",
        layout.map.rank_count(),
        ranks.len(),
        written as f64 / 1e9,
        secs
    ));
    Ok(Status::SUCCESS)
}

//! `shardplan reshard --engine`: an inference engine's own per-rank
//! parameters from any source shardplan reads.

use std::path::Path;

use miette::{IntoDiagnostic, WrapErr};
use shardplan::engine::{Engine, EngineDegrees, ModelConfig, engine_layout};
use shardplan::reshard::{
    LayoutSource, engine_rank_path, prepare, ranks_for_process, read_chunked, write_engine_rank,
};

use super::reshard::{reshard_config, source_and_output};
use crate::Status;
use crate::args::{EngineArg, ReshardArgs};
use crate::common::{emit, or_report};

/// The tensor every preset has, whose dtype the engine's parameters take.
const DTYPE_FROM: &str = "model.embed_tokens.weight";

pub(crate) fn reshard_engine(args: &ReshardArgs) -> miette::Result<Status> {
    let (src_dir, out) = source_and_output(args)?;
    let engine = match args.engine {
        Some(EngineArg::Vllm) | None => Engine::Vllm,
    };
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| default_config(&src_dir));
    let config = match or_report(ModelConfig::read(&config_path)) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let dtype = match or_report(read_chunked(&src_dir)) {
        Ok(Some(source)) => source
            .tensors
            .iter()
            .find(|t| t.name == DTYPE_FROM)
            .map(|t| t.dtype),
        Ok(None) => None,
        Err(code) => return Ok(code),
    };
    let Some(dtype) = dtype else {
        return Err(miette::miette!(
            help = "engine outputs read a Hugging Face folder, a DCP folder or a safetensors file holding the model's Hugging Face tensors",
            "{} has no `{DTYPE_FROM}`",
            src_dir.display()
        ));
    };
    let mut degrees = EngineDegrees::tp(args.tp.unwrap_or(1));
    if args.ep {
        degrees = degrees.with_expert_parallel();
    }
    let layout = match or_report(engine_layout(engine, &config, degrees, dtype)) {
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
        "wrote {} ranks of {} parameters ({} produced here): {:.2} GB in {:.2} s\n",
        layout.map.rank_count(),
        config.architecture,
        ranks.len(),
        written as f64 / 1e9,
        secs
    ));
    Ok(Status::SUCCESS)
}

/// `config.json` beside the source: in the source folder, or beside a
/// source file.
fn default_config(src: &Path) -> std::path::PathBuf {
    let dir = if src.is_dir() {
        src
    } else {
        src.parent().unwrap_or(src)
    };
    dir.join("config.json")
}

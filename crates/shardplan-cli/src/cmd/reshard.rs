//! `shardplan reshard`: checkpoints file by file.

use crate::Status;
use std::io::IsTerminal;

use miette::{IntoDiagnostic, WrapErr};
use shardplan::ReplicaChoice;

use crate::args::*;
use crate::common::*;

/// Output window of `reshard`: four are in memory.
pub(crate) const WINDOW_BYTES: u64 = 32 << 20;

pub(crate) fn reshard(args: &ReshardArgs) -> miette::Result<Status> {
    use shardplan::reshard::{
        OutputFormat, ReshardConfig, WriteConfig, prepare, ranks_for_process,
    };
    let src_dir = args
        .src
        .canonicalize()
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", args.src.display()))?;
    // The output is created only once every input has been checked.
    let out = std::path::absolute(&args.out).into_diagnostic()?;
    if shardplan::reshard::paths_overlap(&src_dir, &out) {
        return Err(miette::miette!(
            help = "write the output elsewhere; sources are never modified",
            "the output {} overlaps the source {}",
            out.display(),
            src_dir.display()
        ));
    }
    let mut cfg = ReshardConfig::new(
        src_dir,
        layout_source(&args.src_strategy, |t| &t.from)?,
        layout_source(&args.dst_strategy, |t| &t.to)?,
    );
    cfg.replica_choice = if args.balance {
        ReplicaChoice::Balance
    } else {
        ReplicaChoice::MinFiles
    };
    cfg.any_device_count = args.any_device_count;
    let mut write = WriteConfig::new(out.clone());
    write.format = args.format.map(|f| match f {
        CkptFormat::Ckpt => OutputFormat::Ckpt,
        CkptFormat::Safetensors => OutputFormat::Safetensors,
        CkptFormat::Hf => OutputFormat::HuggingFace,
        CkptFormat::Dcp => OutputFormat::Dcp,
    });
    write.max_shard_bytes = shardplan::formats::hf::parse_shard_size(&args.max_shard_size)
        .map_err(|e| miette::Report::new(e).wrap_err("--max-shard-size"))?;
    write.window_bytes = WINDOW_BYTES;
    write.direct_io = !args.no_direct_io;
    let prepared = match prepare(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            return Ok(Status::from(1));
        }
    };
    std::fs::create_dir_all(&out)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot create {}", out.display()))?;
    for w in prepared.warnings() {
        eprintln!("warning: {w}");
    }
    let ranks = ranks_for_process(args.rank, prepared.dst().mesh().rank_count(), &|k| {
        std::env::var(k).ok()
    });
    let total: u64 = ranks.iter().map(|&r| prepared.rank_bytes(r)).sum();
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let t0 = std::time::Instant::now();
    let mut written = 0u64;
    for r in &ranks {
        let o = prepared.write_rank(&write, *r, &mut |n| bar.inc(n))?;
        if o.resumed {
            bar.inc(prepared.rank_bytes(*r));
        } else {
            written += o.bytes;
        }
        if !std::io::stderr().is_terminal() {
            eprintln!(
                "rank {r}: {} {}",
                o.path.display(),
                if o.resumed {
                    "(complete from an earlier run)"
                } else {
                    "written"
                }
            );
        }
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    emit(&format!(
        "resharded {} to {} ranks ({} produced here): {:.2} GB written in {:.2} s ({:.2} GB/s)\n",
        prepared.src().mesh().rank_count(),
        prepared.dst().mesh().rank_count(),
        ranks.len(),
        written as f64 / 1e9,
        secs,
        written as f64 / secs.max(1e-9) / 1e9
    ));
    Ok(Status::SUCCESS)
}

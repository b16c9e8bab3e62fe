//! `shardplan reshard`: checkpoints file by file.

use crate::Status;
use std::io::IsTerminal;
use std::path::PathBuf;

use miette::{IntoDiagnostic, WrapErr};
use shardplan::ReplicaChoice;
use shardplan::reshard::{
    OutputFormat, Prepared, ReshardConfig, WriteConfig, paths_overlap, prepare, ranks_for_process,
};

use crate::args::*;
use crate::common::*;

/// Output window of `reshard`: four are in memory.
pub(crate) const WINDOW_BYTES: u64 = 32 << 20;

pub(crate) fn reshard(args: &ReshardArgs) -> miette::Result<Status> {
    if args.engine.is_some() {
        return super::reshard_engine::reshard_engine(args);
    }
    let (src_dir, out) = source_and_output(args)?;
    let cfg = reshard_config(args, src_dir)?;
    let write = write_config(args, out.clone())?;
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
    let ranks = ranks_for_process(args.rank, prepared.dst().mesh().rank_count(), &|k| {
        std::env::var(k).ok()
    });
    let (written, secs) = write_ranks(&prepared, &write, &ranks)?;
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

/// The source folder, resolved, and the output folder, absolute; refused
/// when one is inside the other. Nothing is created here: the output is,
/// once every input has been checked.
pub(crate) fn source_and_output(args: &ReshardArgs) -> miette::Result<(PathBuf, PathBuf)> {
    let src_dir = args
        .src
        .canonicalize()
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", args.src.display()))?;
    let out = std::path::absolute(&args.out).into_diagnostic()?;
    if paths_overlap(&src_dir, &out) {
        return Err(miette::miette!(
            help = "write the output elsewhere; sources are never modified",
            "the output {} overlaps the source {}",
            out.display(),
            src_dir.display()
        ));
    }
    Ok((src_dir, out))
}

/// What preparing reads: the source, both sides' layouts, the replica rule.
pub(crate) fn reshard_config(
    args: &ReshardArgs,
    src_dir: PathBuf,
) -> miette::Result<ReshardConfig> {
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
    Ok(cfg)
}

/// How each rank is written.
fn write_config(args: &ReshardArgs, out: PathBuf) -> miette::Result<WriteConfig> {
    let mut write = WriteConfig::new(out);
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
    Ok(write)
}

/// A progress bar of `total` bytes on a terminal, else a hidden one.
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Writes `ranks` one after the other; the bytes written (not those found
/// complete from an earlier run) and the seconds it took. Off a terminal,
/// one line per rank.
fn write_ranks(
    prepared: &Prepared,
    write: &WriteConfig,
    ranks: &[u64],
) -> miette::Result<(u64, f64)> {
    let bar = progress_bar(ranks.iter().map(|&r| prepared.rank_bytes(r)).sum());
    let t0 = std::time::Instant::now();
    let mut written = 0u64;
    for &r in ranks {
        let o = prepared.write_rank(write, r, &mut |n| bar.inc(n))?;
        if o.resumed {
            bar.inc(prepared.rank_bytes(r));
        } else {
            written += o.bytes;
        }
        if !std::io::stderr().is_terminal() {
            let what = if o.resumed {
                "(complete from an earlier run)"
            } else {
                "written"
            };
            eprintln!("rank {r}: {} {what}", o.path.display());
        }
    }
    bar.finish_and_clear();
    Ok((written, t0.elapsed().as_secs_f64()))
}

//! `shardplan show`: which ranks hold which block of a tensor.

use crate::Status;
use std::path::Path;

use shardplan::spec::parse_spec;

use crate::common::*;

pub(crate) fn show(
    path: &Path,
    strategy: Option<&str>,
    tensor: &str,
    width: usize,
) -> miette::Result<Status> {
    if is_checkpoint(path) {
        return show_checkpoint(path, tensor, width);
    }
    let Some(strategy) = strategy else {
        return Err(miette::miette!(
            help = "name one of the spec's strategies",
            "`--strategy` is required for a spec ({})",
            path.display()
        ));
    };
    let text = read(path)?;
    let (spec, diags) = parse_spec(&path.display().to_string(), &text);
    let Some(spec) = spec else {
        eprint!("{}", render(&diags));
        return Ok(Status::from(1));
    };
    let s = spec
        .strategy(strategy)
        .ok_or_else(|| no_strategy(&spec, strategy, path))?;
    let layout = s.layout(tensor).ok_or_else(|| {
        miette::miette!(
            help = "names are matched exactly, as listed under `tensors:` in the spec",
            "no tensor `{tensor}` in {}",
            path.display()
        )
    })?;
    draw(layout, width);
    Ok(Status::SUCCESS)
}

/// A folder or a `.safetensors` file: a checkpoint, not a spec.
fn is_checkpoint(path: &Path) -> bool {
    path.is_dir() || path.extension().is_some_and(|e| e == "safetensors")
}

/// The holdings of `tensor` as the checkpoint's index lays it out.
fn show_checkpoint(path: &Path, tensor: &str, width: usize) -> miette::Result<Status> {
    let ck = match shardplan::reshard::read_chunked(path) {
        Ok(Some(ck)) => ck,
        Ok(None) => {
            return Err(miette::miette!(
                help =
                    "a MindSpore folder has no layout of its own: show its strategy file or spec",
                "{} is a MindSpore checkpoint folder",
                path.display()
            ));
        }
        Err(e) => return Err(miette::Report::new(e)),
    };
    let s = shardplan::reshard::checkpoint_strategy(&ck).map_err(miette::Report::new)?;
    let layout = s.layout(tensor).ok_or_else(|| {
        miette::miette!(
            help = "names are matched exactly, as the checkpoint's index records them",
            "no tensor `{tensor}` in {}",
            path.display()
        )
    })?;
    draw(layout, width);
    Ok(Status::SUCCESS)
}

fn draw(layout: &shardplan::TensorLayout, width: usize) {
    let cfg = shardplan::show::DrawConfig::new(width, 60);
    emit(&(shardplan::show::draw_holdings(layout, &cfg) + "\n"));
}

/// A checkpoint on an engine's ranks: an engine parameter's logical boxes
/// per rank, or a logical tensor's holdings.
pub(crate) fn show_engine(
    path: &Path,
    args: &crate::args::ShowEngineArgs,
    tensor: &str,
    width: usize,
) -> miette::Result<Status> {
    use shardplan::engine::{Engine, EngineDegrees};
    let mut degrees = EngineDegrees::tp(args.tp.unwrap_or(1));
    if args.ep {
        degrees = degrees.with_expert_parallel();
    }
    let dest =
        shardplan::reshard::engine_destination(path, Engine::Vllm, degrees, args.config.as_deref());
    let layout = match or_report(dest) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    if let Some(text) = shardplan::report::explain_param(&layout.map, tensor) {
        emit(&text);
        return Ok(Status::SUCCESS);
    }
    let held = layout.strategy.layout(tensor).ok_or_else(|| {
        miette::miette!(
            help = "name an engine parameter (e.g. model.layers.0.self_attn.qkv_proj.weight) or a Hugging Face tensor of the model",
            "no parameter or tensor `{tensor}` on the engine's ranks"
        )
    })?;
    draw(held, width);
    Ok(Status::SUCCESS)
}

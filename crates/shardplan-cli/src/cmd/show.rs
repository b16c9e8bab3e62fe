//! `shardplan show`: which ranks hold which block of a tensor.

use crate::Status;
use std::path::Path;

use shardplan::spec::parse_spec;

use crate::common::*;

pub(crate) fn show(
    path: &Path,
    strategy: &str,
    tensor: &str,
    width: usize,
) -> miette::Result<Status> {
    let text = read(path)?;
    let (spec, diags) = parse_spec(&path.display().to_string(), &text);
    let Some(spec) = spec else {
        eprint!("{}", render(&diags));
        return Ok(Status::from(1));
    };
    let s = spec.strategy(strategy).ok_or_else(|| {
        let names: Vec<&String> = spec.strategies().keys().collect();
        miette::miette!(
            help = format!("strategies in the spec: {names:?}"),
            "no strategy `{strategy}` in {}",
            path.display()
        )
    })?;
    let layout = s.layout(tensor).ok_or_else(|| {
        miette::miette!(
            help = "names are matched exactly, as listed under `tensors:` in the spec",
            "no tensor `{tensor}` in {}",
            path.display()
        )
    })?;
    let cfg = shardplan::show::DrawConfig {
        max_width: width,
        max_height: 60,
    };
    emit(&(shardplan::show::draw_holdings(layout, &cfg) + "\n"));
    Ok(Status::SUCCESS)
}

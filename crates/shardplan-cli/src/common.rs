//! What several subcommands share: reading and rendering specs, naming strategies, printing.

use crate::Status;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use miette::{GraphicalReportHandler, GraphicalTheme, IntoDiagnostic, WrapErr};
use shardplan::Strategy;
use shardplan::spec::{Spec, SpecDiagnostic};

use crate::args::*;

pub(crate) fn read(path: &Path) -> miette::Result<String> {
    std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", path.display()))
}

pub(crate) fn render(diags: &[SpecDiagnostic]) -> String {
    let theme = if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    for d in diags {
        // Rendering into a String cannot fail.
        let _ = handler.render_report(&mut out, d);
        out.push('\n');
    }
    out
}

/// Reads and checks a spec; invalid specs print their diagnostics.
pub(crate) fn load_spec(path: &Path) -> miette::Result<Result<Spec, Status>> {
    match shardplan::import::load(path) {
        Ok((spec, warnings)) => {
            // Warnings do not stop the job, but are shown.
            if !warnings.is_empty() {
                eprint!("{}", render(&warnings));
            }
            Ok(Ok(spec))
        }
        Err(shardplan::import::LoadError::Invalid { diagnostics, .. }) => {
            eprint!("{}", render(&diagnostics));
            Ok(Err(Status::from(1)))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn strategy_pair(
    spec: &Spec,
    ends: &Ends,
    path: &Path,
) -> miette::Result<(Strategy, Strategy)> {
    let from = ends
        .from
        .clone()
        .or_else(|| spec.transfer().map(|t| t.from.clone()));
    let to = ends
        .to
        .clone()
        .or_else(|| spec.transfer().map(|t| t.to.clone()));
    let (Some(from), Some(to)) = (from, to) else {
        return Err(miette::miette!(
            help = "add `transfer: {from: A, to: B}` to the spec, or pass --from A --to B",
            "{} names no transfer",
            path.display()
        ));
    };
    Ok((
        named_strategy(spec, &from, path)?,
        named_strategy(spec, &to, path)?,
    ))
}

/// The error for a strategy `name` that `spec` (read from `path`) lacks,
/// listing those it has.
pub(crate) fn no_strategy(spec: &Spec, name: &str, path: &Path) -> miette::Report {
    let names: Vec<&String> = spec.strategies().keys().collect();
    miette::miette!(
        help = format!("strategies in the spec: {names:?}"),
        "no strategy `{name}` in {}",
        path.display()
    )
}

/// A strategy of the spec, or a MindSpore strategy file laying out the
/// spec's tensors: wherever a strategy name is expected, a file works too.
pub(crate) fn named_strategy(spec: &Spec, name: &str, path: &Path) -> miette::Result<Strategy> {
    if let Some(s) = spec.strategy(name) {
        return Ok(s.clone());
    }
    let file = Path::new(name);
    if file.is_file() {
        let f = shardplan::formats::mindspore::strategy::read_strategy_files(&[file])?;
        return f.to_strategy(name, spec.tensors()).map_err(|m| {
            miette::miette!(
                help = "the file must lay out the spec's tensors",
                "{name}: {m}"
            )
        });
    }
    let names: Vec<&String> = spec.strategies().keys().collect();
    Err(miette::miette!(
        help =
            format!("strategies in the spec: {names:?}; a MindSpore strategy file path works too"),
        "no strategy `{name}` in {}",
        path.display()
    ))
}

/// `r`'s value, or its error reported on stderr as exit status 1: the
/// input was read and found wrong.
pub(crate) fn or_report<T, E>(r: Result<T, E>) -> Result<T, Status>
where
    E: miette::Diagnostic + Send + Sync + 'static,
{
    r.map_err(|e| {
        eprintln!("{:?}", miette::Report::new(e));
        Status::from(1)
    })
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly
/// instead of panicking.
pub(crate) fn emit(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// A side's layouts for `reshard`: strategy files, or a spec (optionally
/// `SPEC#strategy`; else its transfer's end), or one device.
pub(crate) fn layout_source(
    args: &[PathBuf],
    end: fn(&shardplan::spec::Transfer) -> &str,
) -> miette::Result<shardplan::reshard::LayoutSource> {
    use shardplan::reshard::LayoutSource;
    let Some(first) = args.first() else {
        return Ok(LayoutSource::SingleDevice);
    };
    let text = first.to_string_lossy();
    let (path, name) = match text.split_once('#') {
        Some((p, n)) => (PathBuf::from(p), Some(n.to_string())),
        None => (first.clone(), None),
    };
    let is_spec = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if !is_spec {
        return Ok(LayoutSource::MindSpore(args.to_vec()));
    }
    let spec = match load_spec(&path)? {
        Ok(s) => s,
        Err(_) => return Err(miette::miette!("{} is not a valid spec", path.display())),
    };
    let name = name
        .or_else(|| spec.transfer().map(|t| end(t).to_string()))
        .ok_or_else(|| {
            miette::miette!(
                help = "write SPEC#strategy",
                "{} names no transfer",
                path.display()
            )
        })?;
    Ok(LayoutSource::Strategy(Box::new(named_strategy(
        &spec, &name, &path,
    )?)))
}

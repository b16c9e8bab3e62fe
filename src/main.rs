//! The `shardplan` command-line tool.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use miette::{GraphicalReportHandler, GraphicalTheme, IntoDiagnostic, WrapErr};
use shardplan::spec::{Spec, SpecDiagnostic, parse_spec, select_tensors};
use shardplan::{
    ExecConfig, PlanConfig, ReplicaChoice, ShardStore, Strategy, execute_plan_with, formats,
    plan_transfer, report, verify_plan,
};

#[derive(Parser)]
#[command(
    name = "shardplan",
    version,
    about = "Plan, verify and explain how model weights move between parallel layouts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check spec files; report every problem in every file.
    ///
    /// Exit status: 0 when all files are valid (warnings allowed), 1 when
    /// any is invalid, 2 on a usage error or an unreadable file.
    Check {
        /// Spec files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Draw which ranks hold which block of one tensor.
    Show {
        /// Spec file.
        spec: PathBuf,
        /// Strategy name.
        #[arg(long)]
        strategy: String,
        /// Tensor name.
        #[arg(long)]
        tensor: String,
        /// Maximum width of the drawing, in columns.
        #[arg(long, default_value_t = 100)]
        width: usize,
    },
    /// Plan the transfer between two strategies of a spec.
    Plan {
        /// Spec file.
        spec: PathBuf,
        #[command(flatten)]
        ends: Ends,
        /// Plan only the tensors matching this glob.
        #[arg(long)]
        tensor: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Write the plan to this file (written atomically) instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Pick replicas to minimise the files each destination rank reads,
        /// instead of balancing the send volume.
        #[arg(long)]
        min_files: bool,
        /// Tensors and ranks listed in the text report.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Check a JSON plan against a spec; exit 0 when valid, 1 when not.
    Verify {
        /// Spec file.
        spec: PathBuf,
        /// Plan file (JSON).
        plan: PathBuf,
    },
    /// Plan, verify and execute a transfer on synthetic buffers in memory,
    /// and check every destination element; exit 1 on any mismatch.
    Simulate {
        /// Spec file.
        spec: PathBuf,
        #[command(flatten)]
        ends: Ends,
        /// Simulate only the tensors matching this glob.
        #[arg(long)]
        tensor: Option<String>,
        /// Pick replicas to minimise files read instead of balancing sends.
        #[arg(long)]
        min_files: bool,
        /// Execute the destination buffers in parallel.
        #[arg(long)]
        parallel: bool,
        /// Refuse to allocate more than this many MiB of buffers.
        #[arg(long, default_value_t = 4096)]
        max_memory_mib: u64,
    },
    /// Explain in words why a tensor moves what it moves.
    Explain {
        /// Spec file.
        spec: PathBuf,
        #[command(flatten)]
        ends: Ends,
        /// Tensor name.
        #[arg(long)]
        tensor: String,
    },
}

/// Which strategies to plan between; defaults to the spec's `transfer`.
#[derive(clap::Args)]
struct Ends {
    /// Source strategy.
    #[arg(long)]
    from: Option<String>,
    /// Destination strategy.
    #[arg(long)]
    to: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            files,
            format,
            strict,
        } => check(&files, format, strict),
        Command::Show {
            spec,
            strategy,
            tensor,
            width,
        } => show(&spec, &strategy, &tensor, width),
        Command::Plan {
            spec,
            ends,
            tensor,
            format,
            output,
            min_files,
            top,
        } => plan(
            &spec,
            &ends,
            tensor.as_deref(),
            format,
            output.as_deref(),
            min_files,
            top,
        ),
        Command::Verify { spec, plan } => verify(&spec, &plan),
        Command::Simulate {
            spec,
            ends,
            tensor,
            min_files,
            parallel,
            max_memory_mib,
        } => simulate(
            &spec,
            &ends,
            tensor.as_deref(),
            min_files,
            parallel,
            max_memory_mib,
        ),
        Command::Explain { spec, ends, tensor } => explain(&spec, &ends, &tensor),
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> miette::Result<String> {
    std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", path.display()))
}

fn render(diags: &[SpecDiagnostic]) -> String {
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

fn check(files: &[PathBuf], format: Format, strict: bool) -> miette::Result<ExitCode> {
    let mut all = Vec::new();
    let mut unreadable = false;
    for path in files {
        // An unreadable file is a usage error, but the others are still checked.
        match read(path) {
            Ok(text) => {
                let (_, diags) = parse_spec(&path.display().to_string(), &text);
                all.push((path, diags));
            }
            Err(e) => {
                eprintln!("{e:?}");
                unreadable = true;
            }
        }
    }
    let failed = all
        .iter()
        .any(|(_, ds)| ds.iter().any(|d| d.is_error() || strict));
    let mut stdout = std::io::stdout().lock();
    match format {
        Format::Text => {
            for (path, diags) in &all {
                write!(stdout, "{}", render(diags)).into_diagnostic()?;
                let errors = diags.iter().filter(|d| d.is_error()).count();
                let warnings = diags.len() - errors;
                writeln!(
                    stdout,
                    "{}: {}",
                    path.display(),
                    match (errors, warnings) {
                        (0, 0) => "ok".to_string(),
                        (e, w) => format!("{e} error(s), {w} warning(s)"),
                    }
                )
                .into_diagnostic()?;
            }
        }
        Format::Json => {
            let items: Vec<serde_json::Value> = all
                .iter()
                .flat_map(|(_, ds)| ds.iter())
                .map(|d| {
                    serde_json::json!({
                        "code": d.code.as_str(),
                        "severity": d.severity.as_str(),
                        "message": d.message,
                        "file": d.file,
                        "line": d.line,
                        "column": d.column,
                        "help": d.help,
                    })
                })
                .collect();
            let doc = serde_json::json!({ "valid": !failed, "diagnostics": items });
            writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(&doc).into_diagnostic()?
            )
            .into_diagnostic()?;
        }
    }
    Ok(if unreadable {
        ExitCode::from(2)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn show(path: &Path, strategy: &str, tensor: &str, width: usize) -> miette::Result<ExitCode> {
    let text = read(path)?;
    let (spec, diags) = parse_spec(&path.display().to_string(), &text);
    let Some(spec) = spec else {
        eprint!("{}", render(&diags));
        return Ok(ExitCode::from(1));
    };
    let s = spec.strategy(strategy).ok_or_else(|| {
        let names: Vec<&String> = spec.strategies.keys().collect();
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
    Ok(ExitCode::SUCCESS)
}

/// Reads and checks a spec; invalid specs print their diagnostics.
fn load_spec(path: &Path) -> miette::Result<Result<Spec, ExitCode>> {
    let text = read(path)?;
    let (spec, diags) = parse_spec(&path.display().to_string(), &text);
    match spec {
        Some(s) => {
            // Warnings do not stop the job, but are shown.
            if !diags.is_empty() {
                eprint!("{}", render(&diags));
            }
            Ok(Ok(s))
        }
        None => {
            eprint!("{}", render(&diags));
            Ok(Err(ExitCode::from(1)))
        }
    }
}

fn strategy_pair<'a>(
    spec: &'a Spec,
    ends: &Ends,
    path: &Path,
) -> miette::Result<(&'a Strategy, &'a Strategy)> {
    let from = ends
        .from
        .clone()
        .or_else(|| spec.transfer.as_ref().map(|t| t.from.clone()));
    let to = ends
        .to
        .clone()
        .or_else(|| spec.transfer.as_ref().map(|t| t.to.clone()));
    let (Some(from), Some(to)) = (from, to) else {
        return Err(miette::miette!(
            help = "add `transfer: {from: A, to: B}` to the spec, or pass --from A --to B",
            "{} names no transfer",
            path.display()
        ));
    };
    let get = |name: &str| {
        spec.strategy(name).ok_or_else(|| {
            let names: Vec<&String> = spec.strategies.keys().collect();
            miette::miette!(
                help = format!("strategies in the spec: {names:?}"),
                "no strategy `{name}` in {}",
                path.display()
            )
        })
    };
    Ok((get(&from)?, get(&to)?))
}

fn plan(
    path: &Path,
    ends: &Ends,
    tensor: Option<&str>,
    format: Format,
    output: Option<&Path>,
    min_files: bool,
    top: usize,
) -> miette::Result<ExitCode> {
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (src, dst) = strategy_pair(&spec, ends, path)?;
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
    let config = PlanConfig {
        replica_choice: if min_files {
            ReplicaChoice::MinFiles
        } else {
            ReplicaChoice::Balance
        },
        tensors,
    };
    let plan = plan_transfer(src, dst, &config)?;
    // Every plan the tool emits has passed the independent verifier.
    verify_plan(&plan, src, dst)
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
    Ok(ExitCode::SUCCESS)
}

fn verify(spec_path: &Path, plan_path: &Path) -> miette::Result<ExitCode> {
    let spec = match load_spec(spec_path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let text = read(plan_path)?;
    let plan = match formats::plan_json::from_json(&plan_path.display().to_string(), &text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            return Ok(ExitCode::from(1));
        }
    };
    let ends = Ends {
        from: Some(plan.source.clone()),
        to: Some(plan.destination.clone()),
    };
    let (src, dst) = strategy_pair(&spec, &ends, spec_path)?;
    match verify_plan(&plan, src, dst) {
        Ok(v) => {
            println!(
                "{}: valid: {} pieces, {} network bytes (= lower bound), {} local bytes",
                plan_path.display(),
                v.pieces,
                v.network_bytes,
                v.local_bytes
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(defect) => {
            eprintln!(
                "{:?}",
                miette::Report::new(defect)
                    .wrap_err(format!("{} is not a valid plan", plan_path.display()))
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn explain(path: &Path, ends: &Ends, tensor: &str) -> miette::Result<ExitCode> {
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (src, dst) = strategy_pair(&spec, ends, path)?;
    if src.tensor(tensor).is_none() {
        return Err(miette::miette!(
            help = "names are matched exactly, as listed under `tensors:` in the spec",
            "no tensor `{tensor}` in {}",
            path.display()
        ));
    }
    let config = PlanConfig {
        replica_choice: ReplicaChoice::Balance,
        tensors: Some(vec![tensor.to_string()]),
    };
    let plan = plan_transfer(src, dst, &config)?;
    emit(&report::explain_tensor(src, dst, &plan.tensors[0]));
    Ok(ExitCode::SUCCESS)
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly
/// instead of panicking.
fn emit(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn simulate(
    path: &Path,
    ends: &Ends,
    tensor: Option<&str>,
    min_files: bool,
    parallel: bool,
    max_memory_mib: u64,
) -> miette::Result<ExitCode> {
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (src, dst) = strategy_pair(&spec, ends, path)?;
    let names = match tensor {
        None => spec.tensors.iter().map(|t| t.name.clone()).collect(),
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
    let config = PlanConfig {
        replica_choice: if min_files {
            ReplicaChoice::MinFiles
        } else {
            ReplicaChoice::Balance
        },
        tensors: Some(names),
    };
    let t0 = std::time::Instant::now();
    let plan = plan_transfer(src, dst, &config)?;
    let planned = t0.elapsed();
    verify_plan(&plan, src, dst)
        .map_err(|d| miette::miette!("internal error, the planner made an invalid plan: {d}"))?;
    let from = ShardStore::synthetic(src);
    let mut to = ShardStore::zeroed(dst);
    let t1 = std::time::Instant::now();
    let stats = execute_plan_with(&plan, &from, &mut to, &ExecConfig { parallel })?;
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
    let code = match to.check_synthetic(dst, src) {
        Ok(()) => {
            out.push_str("  every destination element checked: ok\n");
            ExitCode::SUCCESS
        }
        Err(e) => {
            out.push_str(&format!("  MISMATCH: {e}\n"));
            ExitCode::from(1)
        }
    };
    emit(&out);
    Ok(code)
}

//! The `shardplan` command-line tool.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use miette::{GraphicalReportHandler, GraphicalTheme, IntoDiagnostic, WrapErr};
use shardplan::spec::{Spec, SpecDiagnostic, parse_spec, parse_spec_bytes, select_tensors};
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
        /// Also run the spec's model (a Llama-like transformer; see
        /// `shardplan::model`) on one device and under the destination
        /// layout, from weights moved by the plan, and compare the logits.
        #[arg(long)]
        model: bool,
    },
    /// Reshard checkpoints file by file: N source ranks to M destination
    /// ranks, each output written atomically and recorded in a manifest.
    Reshard(ReshardArgs),
    /// Turn MindSpore strategy files into a spec.
    Import {
        /// Strategy files (one, a merged one, or one per pipeline stage).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output spec.
        #[arg(short, long)]
        output: PathBuf,
        /// Name of the strategy (and its mesh) in the spec.
        #[arg(long, default_value = "mindspore")]
        name: String,
        /// Take shapes and dtypes from this checkpoint directory (rank_<r>/
        /// folders) instead of the files (protobuf files record none).
        #[arg(long)]
        shapes_from: Option<PathBuf>,
        /// Dtype of the tensors when the shapes come from the files.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Write a strategy of a spec as a MindSpore strategy file.
    Export {
        /// Spec file (or a strategy file).
        spec: PathBuf,
        /// Strategy name.
        #[arg(long)]
        strategy: String,
        /// Output form.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output file; stdout when absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Merge per-stage strategy files into one (MindSpore's
    /// merge_pipeline_strategys).
    MergeStages {
        /// Directory holding one strategy file per stage.
        dir: PathBuf,
        /// Output file; `.json` writes JSON, anything else protobuf.
        #[arg(short, long)]
        output: PathBuf,
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
    /// Derive an inference strategy from a training strategy and write a
    /// spec holding both (and the spec's other strategies), with a transfer
    /// from the training strategy to the derived one.
    ///
    /// The spec goes to stdout, or to --output; --explain prints one line
    /// per tensor saying which rules decided its layout (to stdout with
    /// --output, to stderr otherwise). Exit status: 0 on success, 1 when
    /// the spec is invalid or the derivation is refused, 2 on a usage error.
    Derive {
        /// Spec file.
        spec: PathBuf,
        /// Training strategy; defaults to the source of the spec's transfer,
        /// or to the spec's only strategy.
        #[arg(long)]
        from: Option<String>,
        /// Derive for this mesh of the spec (axis roles from the names or
        /// the spec's `derive:` section).
        #[arg(long, conflicts_with_all = ["devices", "tp", "pp", "operators"], required_unless_present_any = ["devices", "operators"])]
        target: Option<String>,
        /// Derive for this many devices, on the mesh [pp, dp, tp] without
        /// its axes of size 1; with --operators, the devices of the stage
        /// (default: the `operators:` section's).
        #[arg(long)]
        devices: Option<u64>,
        /// Tensor-parallel degree; defaults to devices / pp.
        #[arg(long, requires = "devices")]
        tp: Option<u64>,
        /// Pipeline stages.
        #[arg(long, requires = "devices", default_value_t = 1)]
        pp: u64,
        /// Name of the derived strategy.
        #[arg(long, default_value = "derived")]
        name: String,
        /// Write the spec to this file (atomically) instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Print the reason for every tensor's layout (with --operators:
        /// every operator's device matrix and tensor maps, each weight's
        /// source, and the redistributions).
        #[arg(long)]
        explain: bool,
        /// Derive from the spec's `operators:` section (MindSpore operator
        /// shard strategies) instead of a training strategy.
        #[arg(long, conflicts_with_all = ["tp", "pp"])]
        operators: bool,
        /// With --operators: the batch (default: the section's).
        #[arg(long, requires = "operators")]
        batch: Option<u64>,
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
enum ExportFormat {
    MindsporeJson,
    MindsporePb,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CkptFormat {
    Ckpt,
    Safetensors,
}

#[derive(clap::Args)]
struct ReshardArgs {
    /// Source directory of rank_<r>/ folders.
    #[arg(long)]
    src: PathBuf,
    /// Source strategy: MindSpore strategy file(s) (repeat for per-stage
    /// files), or a spec (its transfer's `from`, or SPEC#strategy). Absent:
    /// one device holding whole tensors.
    #[arg(long)]
    src_strategy: Vec<PathBuf>,
    /// Destination strategy, likewise (a spec's transfer `to`). Absent: one
    /// device.
    #[arg(long)]
    dst_strategy: Vec<PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Output format; the source's when absent.
    #[arg(long, value_enum)]
    format: Option<CkptFormat>,
    /// Produce only this destination rank (else RANK, SLURM_PROCID or
    /// OMPI_COMM_WORLD_RANK when set, else all).
    #[arg(long)]
    rank: Option<u64>,
    /// Balance sends over replicas instead of reading the fewest files.
    #[arg(long)]
    balance: bool,
    /// Allow device counts that do not divide each other (MindSpore refuses).
    #[arg(long)]
    any_device_count: bool,
    /// Write through the page cache instead of with direct IO (which
    /// keeps the sources cached while a large output is written; used
    /// only where the file system supports it).
    #[arg(long)]
    no_direct_io: bool,
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
            model,
        } => simulate(
            &spec,
            &ends,
            tensor.as_deref(),
            min_files,
            parallel,
            max_memory_mib,
            model,
        ),
        Command::Explain { spec, ends, tensor } => explain(&spec, &ends, &tensor),
        Command::Reshard(args) => reshard(&args),
        Command::Import {
            files,
            output,
            name,
            shapes_from,
            dtype,
        } => import(&files, &output, &name, shapes_from.as_deref(), &dtype),
        Command::Export {
            spec,
            strategy,
            format,
            output,
        } => export(&spec, &strategy, format, output.as_deref()),
        Command::MergeStages { dir, output } => merge_stages(&dir, &output),
        Command::Derive {
            spec,
            from,
            target,
            devices,
            tp,
            pp,
            name,
            output,
            explain,
            operators,
            batch,
        } => {
            let args = DeriveArgs {
                from,
                target,
                devices,
                tp,
                pp,
                name,
                output,
                explain,
                batch,
            };
            if operators {
                derive_operators(&spec, &args)
            } else {
                derive(&spec, &args)
            }
        }
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

/// One file given to `check`: its diagnostics, or why it could not be read.
enum CheckedFile {
    Parsed(Vec<SpecDiagnostic>),
    Unreadable(String),
}

impl CheckedFile {
    fn is_valid(&self, strict: bool) -> bool {
        match self {
            CheckedFile::Parsed(ds) => !ds.iter().any(|d| d.is_error() || strict),
            CheckedFile::Unreadable(_) => false,
        }
    }
}

fn check(files: &[PathBuf], format: Format, strict: bool) -> miette::Result<ExitCode> {
    let mut all = Vec::new();
    for path in files {
        // An unreadable file is a usage error, but the others are still
        // checked; a file that reads but is not text is an invalid spec.
        let checked = match std::fs::read(path) {
            Ok(bytes) => {
                CheckedFile::Parsed(parse_spec_bytes(&path.display().to_string(), &bytes).1)
            }
            Err(e) => CheckedFile::Unreadable(format!("cannot read {}: {e}", path.display())),
        };
        all.push((path, checked));
    }
    let unreadable = all
        .iter()
        .any(|(_, c)| matches!(c, CheckedFile::Unreadable(_)));
    let failed = all.iter().any(|(_, c)| !c.is_valid(strict));
    let mut stdout = std::io::stdout().lock();
    match format {
        Format::Text => {
            for (path, checked) in &all {
                let diags = match checked {
                    CheckedFile::Parsed(ds) => ds,
                    CheckedFile::Unreadable(e) => {
                        eprintln!("error: {e}");
                        continue;
                    }
                };
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
            let diag_json = |d: &SpecDiagnostic| {
                serde_json::json!({
                    "code": d.code.as_str(),
                    "severity": d.severity.as_str(),
                    "message": d.message,
                    "file": d.file,
                    "line": d.line,
                    "column": d.column,
                    "help": d.help,
                })
            };
            let items: Vec<serde_json::Value> = all
                .iter()
                .filter_map(|(_, c)| match c {
                    CheckedFile::Parsed(ds) => Some(ds.iter().map(diag_json)),
                    CheckedFile::Unreadable(_) => None,
                })
                .flatten()
                .collect();
            // Every file gets an entry, an unreadable one with its error.
            let entries: Vec<serde_json::Value> = all
                .iter()
                .map(|(path, c)| match c {
                    CheckedFile::Parsed(ds) => serde_json::json!({
                        "file": path.display().to_string(),
                        "valid": c.is_valid(strict),
                        "errors": ds.iter().filter(|d| d.is_error()).count(),
                        "warnings": ds.iter().filter(|d| !d.is_error()).count(),
                    }),
                    CheckedFile::Unreadable(e) => serde_json::json!({
                        "file": path.display().to_string(),
                        "valid": false,
                        "unreadable": e,
                    }),
                })
                .collect();
            let doc =
                serde_json::json!({ "valid": !failed, "files": entries, "diagnostics": items });
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
    let text = if is_strategy_file(path) {
        // A MindSpore strategy file where a spec is expected: imported with
        // the shapes it records.
        let name = path
            .file_stem()
            .map_or("imported".into(), |s| s.to_string_lossy().into_owned());
        formats::import::import_spec(
            &[path],
            formats::import::ShapeSource::Recorded(shardplan::DType::F32),
            &name,
        )?
    } else {
        read(path)?
    };
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

fn strategy_pair(spec: &Spec, ends: &Ends, path: &Path) -> miette::Result<(Strategy, Strategy)> {
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
    Ok((
        named_strategy(spec, &from, path)?,
        named_strategy(spec, &to, path)?,
    ))
}

/// A strategy of the spec, or a MindSpore strategy file laying out the
/// spec's tensors: wherever a strategy name is expected, a file works too.
fn named_strategy(spec: &Spec, name: &str, path: &Path) -> miette::Result<Strategy> {
    if let Some(s) = spec.strategy(name) {
        return Ok(s.clone());
    }
    let file = Path::new(name);
    if file.is_file() {
        let f = shardplan::formats::mindspore_strategy::read_strategy_files(&[file])?;
        return f.to_strategy(name, &spec.tensors).map_err(|m| {
            miette::miette!(
                help = "the file must lay out the spec's tensors",
                "{name}: {m}"
            )
        });
    }
    let names: Vec<&String> = spec.strategies.keys().collect();
    Err(miette::miette!(
        help =
            format!("strategies in the spec: {names:?}; a MindSpore strategy file path works too"),
        "no strategy `{name}` in {}",
        path.display()
    ))
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
    let (src, dst) = (&src, &dst);
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
    let (src, dst) = (&src, &dst);
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
    let (src, dst) = (&src, &dst);
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
    model: bool,
) -> miette::Result<ExitCode> {
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (src, dst) = strategy_pair(&spec, ends, path)?;
    let (src, dst) = (&src, &dst);
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
    let mut code = match to.check_synthetic(dst, src) {
        Ok(()) => {
            out.push_str("  every destination element checked: ok\n");
            ExitCode::SUCCESS
        }
        Err(e) => {
            out.push_str(&format!("  MISMATCH: {e}\n"));
            ExitCode::from(1)
        }
    };
    if model {
        use shardplan::model::{DEFAULT_TOLERANCE, EMBED, check_model};
        // A fixed batch: two sequences of different lengths.
        let vocab = spec
            .tensors
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
                code = ExitCode::from(1);
            }
        }
    }
    emit(&out);
    Ok(code)
}

struct DeriveArgs {
    from: Option<String>,
    target: Option<String>,
    devices: Option<u64>,
    tp: Option<u64>,
    pp: u64,
    name: String,
    output: Option<PathBuf>,
    explain: bool,
    batch: Option<u64>,
}

fn derive(path: &Path, args: &DeriveArgs) -> miette::Result<ExitCode> {
    use shardplan::derive::{DeriveTarget, derive_strategy};
    use shardplan::spec::{derived_spec_yaml, rules_for};
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    // The training strategy: named, the transfer's source, or the only one.
    let only = (spec.strategies.len() == 1)
        .then(|| spec.strategies.keys().next().cloned())
        .flatten();
    let Some(from) = args
        .from
        .clone()
        .or_else(|| spec.transfer.as_ref().map(|t| t.from.clone()))
        .or(only)
    else {
        return Err(miette::miette!(
            help = "pass --from STRATEGY, or add `transfer: {from: A, to: B}` to the spec",
            "{} has several strategies and no transfer to take the training strategy from",
            path.display()
        ));
    };
    let train = spec.strategy(&from).ok_or_else(|| {
        let names: Vec<&String> = spec.strategies.keys().collect();
        miette::miette!(
            help = format!("strategies in the spec: {names:?}"),
            "no strategy `{from}` in {}",
            path.display()
        )
    })?;
    let rules = rules_for(&spec, &from);
    let target = match (&args.target, args.devices) {
        (Some(m), _) => {
            let mesh = spec.meshes.get(m).ok_or_else(|| {
                let names: Vec<&String> = spec.meshes.keys().collect();
                miette::miette!(
                    help = format!("meshes in the spec: {names:?}"),
                    "no mesh `{m}` in {}",
                    path.display()
                )
            })?;
            DeriveTarget::from_mesh(mesh.clone(), &rules)
        }
        (None, Some(devices)) => {
            let tp = args.tp.unwrap_or(devices.checked_div(args.pp).unwrap_or(0));
            DeriveTarget::from_degrees(devices, tp, args.pp)
        }
        (None, None) => {
            return Err(miette::miette!(
                help = "pass --target MESH or --devices N [--tp T] [--pp P]",
                "no target"
            ));
        }
    };
    let derived = target
        .and_then(|t| derive_strategy(train, &t, &rules))
        .and_then(|d| d.renamed(&args.name));
    let derived = match derived {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            return Ok(ExitCode::from(1));
        }
    };
    let comment = format!(
        "Written by `shardplan derive` from strategy `{from}` of {}:\nstrategy `{}` on {}.",
        path.display(),
        args.name,
        derived.target
    );
    let yaml = match derived_spec_yaml(&spec, Some(&from), &derived.strategy, &comment) {
        Ok(y) => y,
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            return Ok(ExitCode::from(1));
        }
    };
    let explanation = args.explain.then(|| derived.explain(&from));
    let summary = format!(
        "strategy `{}` ({} tensors) on {}, transfer {from} -> {}",
        args.name,
        derived.strategy.tensors().len(),
        derived.target,
        args.name
    );
    write_derived(&yaml, &derived.strategy, args, &summary, explanation)
}

/// Checks that the derived spec reads back to the derived layouts, then
/// writes it (to --output or stdout) and the explanation.
fn write_derived(
    yaml: &str,
    derived: &Strategy,
    args: &DeriveArgs,
    summary: &str,
    explanation: Option<String>,
) -> miette::Result<ExitCode> {
    let (back, diags) = parse_spec("derived spec", yaml);
    let same = back
        .as_ref()
        .and_then(|b| b.strategy(derived.name()))
        .is_some_and(|s| {
            s.layouts()
                .iter()
                .zip(derived.layouts())
                .all(|(a, b)| a.same_placement(b))
        });
    if !same {
        return Err(miette::miette!(
            "internal error, the derived spec does not read back: {}",
            diags
                .iter()
                .map(|d| d.one_line())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    match &args.output {
        Some(out) => {
            formats::write_atomic(out, yaml.as_bytes())
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {}: {summary}", out.display());
            if let Some(x) = explanation {
                emit(&x);
            }
        }
        None => {
            emit(yaml);
            if let Some(x) = explanation {
                eprint!("{x}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `derive --operators`: weights laid out by the spec's operators.
fn derive_operators(path: &Path, args: &DeriveArgs) -> miette::Result<ExitCode> {
    use shardplan::derive::ops::derive_from_operators;
    use shardplan::spec::derived_spec_yaml;
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let Some(mut graph) = spec.operators.clone() else {
        return Err(miette::miette!(
            help = "add an `operators:` section (docs/derive.md), or derive from a strategy with --target or --devices",
            "{} has no `operators:` section",
            path.display()
        ));
    };
    if let Some(d) = args.devices {
        graph.devices = d;
    }
    if let Some(b) = args.batch {
        graph.batch = b;
    }
    // The transfer source, when there is one.
    let only = (spec.strategies.len() == 1)
        .then(|| spec.strategies.keys().next().cloned())
        .flatten();
    let from = args
        .from
        .clone()
        .or_else(|| spec.transfer.as_ref().map(|t| t.from.clone()))
        .or(only);
    if let Some(f) = &from
        && spec.strategy(f).is_none()
    {
        let names: Vec<&String> = spec.strategies.keys().collect();
        return Err(miette::miette!(
            help = format!("strategies in the spec: {names:?}"),
            "no strategy `{f}` in {}",
            path.display()
        ));
    }
    let derived = derive_from_operators(&graph, &spec.tensors).and_then(|d| d.renamed(&args.name));
    let derived = match derived {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            return Ok(ExitCode::from(1));
        }
    };
    let devices = if graph.stages > 1 {
        format!("{} stages of {} devices", graph.stages, graph.devices)
    } else {
        format!("{} devices", graph.devices)
    };
    let comment = format!(
        "Written by `shardplan derive --operators` from {}:\nstrategy `{}` laid out by {} operators on {devices}, batch {}.",
        path.display(),
        args.name,
        graph.ops.len(),
        graph.batch
    );
    let yaml = match derived_spec_yaml(&spec, from.as_deref(), &derived.strategy, &comment) {
        Ok(y) => y,
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            return Ok(ExitCode::from(1));
        }
    };
    let laid_out = derived.weights.iter().flatten().count();
    let summary = format!(
        "strategy `{}`: {laid_out} of {} tensors laid out by {} operators on {devices}; {} redistribution(s) of activations, {} B; {} weight conflict(s)",
        args.name,
        derived.strategy.tensors().len(),
        graph.ops.len(),
        derived.redistributions.len(),
        derived.redistribution_bytes(),
        derived.conflicts.len()
    );
    let explanation = args.explain.then(|| derived.report(&graph));
    if args.output.is_none() && !args.explain {
        eprintln!("{summary}");
    }
    write_derived(&yaml, &derived.strategy, args, &summary, explanation)
}

/// A MindSpore strategy file rather than a YAML spec: anything but `.yaml`
/// / `.yml` whose content is JSON with `parallel_layout_item` or binary.
fn is_strategy_file(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "yaml" | "yml") {
        return false;
    }
    std::fs::read(path).is_ok_and(|b| {
        let text = String::from_utf8_lossy(&b[..b.len().min(4096)]);
        text.contains("parallel_layout_item") || ext == "ckpt" || ext == "pb"
    })
}

/// A side's layouts for `reshard`: strategy files, or a spec (optionally
/// `SPEC#strategy`; else its transfer's end), or one device.
fn layout_source(
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
        .or_else(|| spec.transfer.as_ref().map(|t| end(t).to_string()))
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

/// Output window of `reshard`: four are in memory.
const WINDOW_BYTES: u64 = 32 << 20;

fn reshard(args: &ReshardArgs) -> miette::Result<ExitCode> {
    use shardplan::formats::checkpoint::CheckpointFormat;
    use shardplan::reshard::{ReshardConfig, prepare, ranks_for_process};
    let src_dir = args
        .src
        .canonicalize()
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", args.src.display()))?;
    // The output is created only once every input has been checked.
    let out = std::path::absolute(&args.out).into_diagnostic()?;
    if out.starts_with(&src_dir) || src_dir.starts_with(&out) {
        return Err(miette::miette!(
            help = "write the output elsewhere; sources are never modified",
            "the output {} overlaps the source {}",
            out.display(),
            src_dir.display()
        ));
    }
    let cfg = ReshardConfig {
        src_dir,
        src: layout_source(&args.src_strategy, |t| &t.from)?,
        dst: layout_source(&args.dst_strategy, |t| &t.to)?,
        out_dir: out.clone(),
        format: args.format.map(|f| match f {
            CkptFormat::Ckpt => CheckpointFormat::Ckpt,
            CkptFormat::Safetensors => CheckpointFormat::Safetensors,
        }),
        ranks: None,
        replica_choice: if args.balance {
            ReplicaChoice::Balance
        } else {
            ReplicaChoice::MinFiles
        },
        window_bytes: WINDOW_BYTES,
        direct_io: !args.no_direct_io,
        any_device_count: args.any_device_count,
    };
    let prepared = match prepare(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            return Ok(ExitCode::from(1));
        }
    };
    std::fs::create_dir_all(&out)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot create {}", out.display()))?;
    for w in &prepared.warnings {
        eprintln!("warning: {w}");
    }
    let ranks = ranks_for_process(args.rank, prepared.dst.mesh().rank_count(), &|k| {
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
        let o = prepared.write_rank(&out, *r, WINDOW_BYTES, &mut |n| bar.inc(n))?;
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
        prepared.src.mesh().rank_count(),
        prepared.dst.mesh().rank_count(),
        ranks.len(),
        written as f64 / 1e9,
        secs,
        written as f64 / secs.max(1e-9) / 1e9
    ));
    Ok(ExitCode::SUCCESS)
}

fn import(
    files: &[PathBuf],
    output: &Path,
    name: &str,
    shapes_from: Option<&Path>,
    dtype: &str,
) -> miette::Result<ExitCode> {
    use shardplan::formats::import::{ShapeSource, import_spec};
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let dtype: shardplan::DType = dtype.parse().map_err(|e| miette::miette!("--dtype: {e}"))?;
    let tensors = match shapes_from {
        Some(dir) => {
            let f = shardplan::formats::mindspore_strategy::read_strategy_files(&refs)?;
            Some(shardplan::reshard::tensors_from_checkpoints(dir, Some(&f))?)
        }
        None => None,
    };
    let shapes = match &tensors {
        Some(t) => ShapeSource::Tensors(t),
        None => ShapeSource::Recorded(dtype),
    };
    let yaml = import_spec(&refs, shapes, name)?;
    formats::write_atomic(output, yaml.as_bytes())
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write {}", output.display()))?;
    eprintln!("wrote {}", output.display());
    Ok(ExitCode::SUCCESS)
}

fn export(
    path: &Path,
    strategy: &str,
    format: ExportFormat,
    output: Option<&Path>,
) -> miette::Result<ExitCode> {
    use shardplan::formats::mindspore_strategy::{StrategyFormat, write_strategy_file};
    let spec = match load_spec(path)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let s = named_strategy(&spec, strategy, path)?;
    let bytes = write_strategy_file(
        &s,
        match format {
            ExportFormat::MindsporeJson => StrategyFormat::Json,
            ExportFormat::MindsporePb => StrategyFormat::Protobuf,
        },
    )?;
    match output {
        Some(out) => {
            formats::write_atomic(out, &bytes)
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {}", out.display());
        }
        None => {
            let _ = std::io::stdout().lock().write_all(&bytes);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn merge_stages(dir: &Path, output: &Path) -> miette::Result<ExitCode> {
    use shardplan::formats::mindspore_strategy::{StrategyFormat, read_strategy_files};
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(miette::miette!("{} holds no strategy files", dir.display()));
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let merged = read_strategy_files(&refs)?;
    let format = if output.extension().is_some_and(|e| e == "json") {
        StrategyFormat::Json
    } else {
        StrategyFormat::Protobuf
    };
    let bytes = merged.write_merged(format)?;
    formats::write_atomic(output, &bytes)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write {}", output.display()))?;
    eprintln!(
        "merged {} files, {} stages, into {}",
        files.len(),
        merged.stage_count,
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

//! The `shardplan` command-line tool.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use miette::{GraphicalReportHandler, GraphicalTheme, IntoDiagnostic, WrapErr};
use shardplan::spec::{SpecDiagnostic, parse_spec};

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
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &PathBuf) -> miette::Result<String> {
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
    for path in files {
        let text = read(path)?;
        let (_, diags) = parse_spec(&path.display().to_string(), &text);
        all.push((path, diags));
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
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn show(path: &PathBuf, strategy: &str, tensor: &str, width: usize) -> miette::Result<ExitCode> {
    let text = read(path)?;
    let (spec, diags) = parse_spec(&path.display().to_string(), &text);
    let Some(spec) = spec else {
        print!("{}", render(&diags));
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
            help = "`shardplan check` lists the tensors; names are matched exactly",
            "no tensor `{tensor}` in {}",
            path.display()
        )
    })?;
    let cfg = shardplan::show::DrawConfig {
        max_width: width,
        max_height: 60,
    };
    println!("{}", shardplan::show::draw_holdings(layout, &cfg));
    Ok(ExitCode::SUCCESS)
}

#![forbid(unsafe_code)]
//! The `shardplan` command-line tool, as a library: [`run`] parses the
//! arguments and dispatches to one module per subcommand; the binary is
//! `fn main() { run(std::env::args_os()) }`. Everything it computes comes
//! from the `shardplan` crate; this crate parses arguments and renders.
//!
//! ```
//! use std::process::ExitCode;
//!
//! // Usage errors exit 2, like the binary.
//! assert_eq!(shardplan_cli::run(["shardplan", "no-such-command"]), ExitCode::from(2));
//! ```

use std::process::ExitCode;

use clap::Parser;

mod args;
mod cmd;
mod common;

use args::*;
use cmd::check::check;
use cmd::derive::{derive, derive_operators};
use cmd::plan::{explain, plan, verify};
use cmd::reshard::reshard;
use cmd::show::{show, show_engine};
use cmd::simulate::simulate;
use cmd::strategy_files::{export, import, merge_stages};

/// Runs the command line `args` (the first item is the program name) and
/// returns the exit status: 0 success, 1 an invalid input or a failed
/// check, 2 a usage error or an unreadable file.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    ExitCode::from(run_status(args))
}

/// [`run`] with the exit status as a number, for embedders that pass it on
/// themselves (the Python package's `shardplan` command).
///
/// ```
/// assert_eq!(shardplan_cli::run_status(["shardplan", "--version"]), 0);
/// ```
pub fn run_status<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // Help and version exit 0, usage errors 2, as clap prints them.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
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
            engine,
        } => match engine.engine {
            Some(_) => show_engine(&spec, &engine, &tensor, width),
            None => show(&spec, strategy.as_deref(), &tensor, width),
        },
        Command::Plan(args) => plan(&args),
        Command::Verify { spec, plan } => verify(&spec, &plan),
        Command::Simulate(args) => simulate(&args),
        Command::Explain { spec, ends, tensor } => explain(&spec, &ends, &tensor),
        Command::Reshard(args) => reshard(&args),
        Command::Schema => {
            print!("{}", shardplan::spec::JSON_SCHEMA);
            Ok(Status::SUCCESS)
        }
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
        Command::Derive(args) if args.operators => derive_operators(&args.spec, &args),
        Command::Derive(args) => derive(&args.spec, &args),
    };
    match result {
        Ok(status) => status.0,
        Err(report) => {
            eprintln!("{report:?}");
            2
        }
    }
}

/// A subcommand's exit status (what [`run_status`] returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status(u8);

impl Status {
    pub(crate) const SUCCESS: Status = Status(0);
}

impl From<u8> for Status {
    fn from(code: u8) -> Self {
        Status(code)
    }
}

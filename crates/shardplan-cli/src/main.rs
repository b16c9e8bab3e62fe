#![forbid(unsafe_code)]
//! The `shardplan` command-line tool: [`shardplan_cli::run`] does it all.

use std::process::ExitCode;

fn main() -> ExitCode {
    shardplan_cli::run(std::env::args_os())
}

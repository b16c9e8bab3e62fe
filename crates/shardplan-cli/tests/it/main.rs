//! Integration tests of the `shardplan` binary, one test binary (each file
//! under `tests/` would be its own binary linking every crate): the
//! commands as users run them, their output, exit codes and files. The
//! library's tests are in `crates/shardplan/tests/it/`, the core's in
//! `crates/shardplan-core/tests/it/`. `snapshots/` holds the snapshots of
//! `cli_check`; specs and docs are read from the repository root and the
//! fixtures from the library's tests.

mod cli;
mod cli_check;
mod common;
mod derive_cli;
mod engine_cli;
mod torch_cli;

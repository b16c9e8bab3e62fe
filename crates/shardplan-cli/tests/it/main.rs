//! The integration tests of the workspace, one binary (each file under
//! `tests/` would be its own binary linking every crate): the library
//! through its public API, and the `shardplan` binary as users run it. Test
//! data is beside this file (`fixtures/`, `fuzz_regressions/`,
//! `snapshots/`; a module in a folder keeps its snapshots there, as
//! `derive/snapshots/`); specs and docs are read from the repository root.

mod arbitrary;
mod architecture;
mod cli;
mod cli_check;
mod common;
mod derive;
mod fuzz_regressions;
mod hf_formats;
mod layout_props;
mod mindspore_conformance;
mod mindspore_files;
mod model;
mod plan;
mod plan_format;
mod reshard;
mod spec;
mod spec_docs;
mod torch_reshard;

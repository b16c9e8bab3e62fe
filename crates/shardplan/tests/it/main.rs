//! Integration tests of the `shardplan` library, one binary with a module
//! per domain (each file under `tests/` would link the crate again): specs,
//! file formats, resharding, derivation and the model check through the
//! public API, checked against files the real tools wrote. Test data is
//! beside this file (`fixtures/`, read by the binary's and the Python
//! package's tests too, and `fuzz_regressions/`; a module in a folder keeps
//! its snapshots there, as `derive/snapshots/`); specs and docs are read
//! from the repository root. `architecture` checks the whole workspace's
//! layering. The core's own tests are in `crates/shardplan-core/tests/it/`,
//! the binary's in `crates/shardplan-cli/tests/it/`.

mod arbitrary;
mod architecture;
mod common;
mod dcp_write;
mod derive;
mod docs_tree;
mod engines;
mod fuzz_regressions;
mod hf_formats;
mod mindspore_conformance;
mod mindspore_files;
mod model;
mod plan_format;
mod reshard;
mod spec;
mod spec_docs;
mod torch_reshard;

//! Integration tests of `shardplan-core`, one binary with a module per
//! domain (each file under `tests/` would link the crate again): the pure
//! logic through its public API, with no file, spec or binary involved.
//! The library's tests (specs, formats, resharding) are in
//! `crates/shardplan/tests/it/`, the binary's in `crates/shardplan-cli/tests/it/`.

mod layout_props;
mod plan;
mod storage;

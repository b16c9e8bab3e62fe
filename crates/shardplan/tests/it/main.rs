//! Integration tests of the `shardplan` library, one binary with a module
//! per domain (each file under `tests/` would link the crate again). The
//! workspace-wide tests, which also drive the binary, are in
//! `crates/shardplan-cli/tests/it/`.

mod dcp_write;

//! See `shardplan::fuzzing::hf_index`: the same check replays stored inputs in
//! `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardplan::fuzzing::hf_index(data));

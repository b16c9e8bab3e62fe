//! See `shardplan::fuzzing::spec_round_trip`: the same check replays stored inputs in
//! `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardplan::fuzzing::spec_round_trip(data));

//! See `shardplan::fuzzing::dcp_pickle`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardplan::fuzzing::dcp_pickle(data));

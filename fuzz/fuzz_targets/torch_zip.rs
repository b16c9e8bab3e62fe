//! See `shardplan::fuzzing::torch_zip`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardplan::fuzzing::torch_zip(data));

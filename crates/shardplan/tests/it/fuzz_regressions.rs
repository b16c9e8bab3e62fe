//! Replays every input the fuzzers found a fault with
//! (`tests/fuzz_regressions/<target>/`) and the seed corpora
//! (`fuzz/seeds/<target>/`) through the fuzz targets' own checks
//! (`shardplan::fuzzing`), so a fixed fault stays fixed without a fuzzer.

use std::path::Path;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 7] = [
    ("spec_parse", shardplan::fuzzing::spec_round_trip),
    (
        "strategy_file",
        shardplan::fuzzing::strategy_file_round_trip,
    ),
    ("checkpoint_index", shardplan::fuzzing::checkpoint_index),
    ("plan_json", shardplan::fuzzing::plan_json_round_trip),
    ("hf_index", shardplan::fuzzing::hf_index),
    ("dcp_pickle", shardplan::fuzzing::dcp_pickle),
    ("torch_zip", shardplan::fuzzing::torch_zip),
];

fn replay(dir: &Path, check: Check) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        // A panic names the file.
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{} fails its fuzz check", path.display());
        n += 1;
    }
    n
}

#[test]
fn stored_inputs_pass_their_checks() {
    let root = crate::common::repo_root();
    let mut regressions = 0;
    let mut seeds = 0;
    for (target, check) in TARGETS {
        regressions += replay(
            &crate::common::test_data()
                .join("fuzz_regressions")
                .join(target),
            check,
        );
        seeds += replay(&root.join("fuzz/seeds").join(target), check);
    }
    assert!(
        regressions >= 2 && seeds >= 50,
        "{regressions} regressions, {seeds} seeds"
    );
}

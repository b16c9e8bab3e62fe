//! Resharding checkpoints file by file: every MindSpore conformance case
//! end to end, from the .ckpt and the safetensors sources; refusals; resume.

use std::path::{Path, PathBuf};

use serde_json::Value;
use shardplan::ReplicaChoice;
use shardplan::formats::checkpoint::{CheckpointFormat, rank_files, read_index};
use shardplan::reshard::{LayoutSource, ReshardConfig, prepare, ranks_for_process};

fn cases() -> Vec<PathBuf> {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/mindspore");
    let root = if shared.is_dir() {
        shared
    } else {
        eprintln!(
            "SKIPPED: {} is absent; running the copies in tests/fixtures/mindspore only",
            shared.display()
        );
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mindspore")
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    v.sort();
    v
}

fn strategy(dir: &Path, case: &Value, side: &str) -> LayoutSource {
    match case["files"][format!("{side}_strategy_file")].as_str() {
        None => LayoutSource::SingleDevice,
        Some(f) => LayoutSource::MindSpore(vec![dir.join(f)]),
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardplan-reshard-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every tensor of every file under `dir`'s rank folders: (rank, name) to
/// (shape, bytes).
fn contents(dir: &Path) -> std::collections::BTreeMap<(u64, String), (Vec<u64>, Vec<u8>)> {
    let mut out = std::collections::BTreeMap::new();
    for (rank, files) in rank_files(dir).unwrap() {
        for f in files {
            let idx = read_index(&f).unwrap();
            let bytes = std::fs::read(&f).unwrap();
            for (name, e) in idx.tensors {
                let data = bytes[e.offset as usize..(e.offset + e.len) as usize].to_vec();
                out.insert((rank, name), (e.shape, data));
            }
        }
    }
    out
}

const SUSPECT: [&str; 2] = ["opt_permuted_tm", "opt_permuted_tm_indep_src"];

#[test]
fn conformance_cases_end_to_end() {
    let mut ran = 0;
    for dir in cases() {
        let case: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let name = case["name"].as_str().unwrap().to_string();
        for (src_dir, expected, format) in [
            ("src", "expected", CheckpointFormat::Ckpt),
            (
                "src_safetensors",
                "expected_safetensors",
                CheckpointFormat::Safetensors,
            ),
        ] {
            let out = tmp(&format!("{name}-{src_dir}"));
            let cfg = ReshardConfig {
                src_dir: dir.join(src_dir),
                src: strategy(&dir, &case, "src"),
                dst: strategy(&dir, &case, "dst"),
                out_dir: out.clone(),
                format: Some(format),
                ranks: None,
                replica_choice: ReplicaChoice::MinFiles,
                // The smallest window (4 KiB) puts window boundaries
                // inside most tensors.
                window_bytes: 64,
                // Both write paths: through the page cache and direct.
                direct_io: format == CheckpointFormat::Safetensors,
                any_device_count: false,
            };
            let refused = !case["expected_error"].is_null();
            let prepared = prepare(&cfg);
            if refused {
                // Our own refusal, before anything is written.
                let err = prepared
                    .err()
                    .unwrap_or_else(|| panic!("{name}: MindSpore refuses, shardplan accepted"));
                assert!(!err.to_string().is_empty());
                assert!(!out.exists(), "{name}: wrote output on refusal");
                continue;
            }
            let p = prepared.unwrap_or_else(|e| panic!("{name} {src_dir}: {e}"));
            for r in 0..p.dst.mesh().rank_count() {
                p.write_rank(&out, r, 64, &mut |_| {})
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            let ours = contents(&out);
            let theirs = contents(&dir.join(expected));
            let equal = ours == theirs;
            assert_eq!(
                equal,
                !SUSPECT.contains(&name.as_str()),
                "{name} from {src_dir}: {:?}\nvs {:?}",
                ours.keys(),
                theirs.keys()
            );
            // Sources untouched, manifests written.
            assert!(out.join("rank_0/MANIFEST.json").is_file());
            std::fs::remove_dir_all(&out).unwrap();
            ran += 1;
        }
    }
    // 33 cases with outputs, two source forms each; 9 in the fixtures.
    assert!(ran >= 18, "ran {ran}");
}

/// An interrupted run (a temporary file left behind, a final file whose
/// manifest is missing) is finished by the next run; completed ranks are
/// kept.
#[test]
fn interrupted_runs_resume() {
    let dir = cases()
        .into_iter()
        .find(|d| d.ends_with("tp4_row_to_tp2_row"))
        .expect("the case is in the fixtures");
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let out = tmp("resume");
    let cfg = ReshardConfig {
        src_dir: dir.join("src"),
        src: strategy(&dir, &case, "src"),
        dst: strategy(&dir, &case, "dst"),
        out_dir: out.clone(),
        format: None,
        ranks: None,
        replica_choice: ReplicaChoice::MinFiles,
        window_bytes: 1 << 20,
        direct_io: true,
        any_device_count: false,
    };
    let p = prepare(&cfg).unwrap();
    let first = p.write_rank(&out, 0, 1 << 20, &mut |_| {}).unwrap();
    assert!(!first.resumed);
    // Rank 1 was killed: a partial temporary file only.
    std::fs::create_dir_all(out.join("rank_1")).unwrap();
    std::fs::write(out.join("rank_1/.checkpoint_1.ckpt.tmp-99999"), b"partial").unwrap();
    let again = p.write_rank(&out, 0, 1 << 20, &mut |_| {}).unwrap();
    assert!(again.resumed);
    let one = p.write_rank(&out, 1, 1 << 20, &mut |_| {}).unwrap();
    assert!(!one.resumed);
    assert!(!out.join("rank_1/.checkpoint_1.ckpt.tmp-99999").exists());
    // A final file that does not match its manifest is rewritten.
    std::fs::write(&one.path, b"corrupt").unwrap();
    let fixed = p.write_rank(&out, 1, 1 << 20, &mut |_| {}).unwrap();
    assert!(!fixed.resumed);
    assert_eq!(contents(&out), contents(&dir.join("expected")));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_inputs_are_refused_before_writing() {
    let dir = cases()
        .into_iter()
        .find(|d| d.ends_with("tp4_row_to_tp2_row"))
        .expect("the case is in the fixtures");
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let work = tmp("bad");
    // A copy of the sources to break.
    let src = work.join("src");
    for r in 0..4 {
        std::fs::create_dir_all(src.join(format!("rank_{r}"))).unwrap();
        std::fs::copy(
            dir.join(format!("src/rank_{r}/checkpoint_{r}.ckpt")),
            src.join(format!("rank_{r}/checkpoint_{r}.ckpt")),
        )
        .unwrap();
    }
    let cfg = |src_dir: &Path| ReshardConfig {
        src_dir: src_dir.to_path_buf(),
        src: strategy(&dir, &case, "src"),
        dst: strategy(&dir, &case, "dst"),
        out_dir: work.join("out"),
        format: None,
        ranks: None,
        replica_choice: ReplicaChoice::MinFiles,
        window_bytes: 1 << 20,
        direct_io: true,
        any_device_count: false,
    };
    assert!(prepare(&cfg(&src)).is_ok());
    // Truncated file.
    let f = src.join("rank_2/checkpoint_2.ckpt");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 5]).unwrap();
    let err = prepare(&cfg(&src)).unwrap_err().to_string();
    assert!(
        err.contains("checkpoint_2.ckpt") && err.contains("past the end"),
        "{err}"
    );
    std::fs::write(&f, &bytes).unwrap();
    // A missing rank folder.
    std::fs::rename(src.join("rank_3"), work.join("rank_3_away")).unwrap();
    let err = prepare(&cfg(&src)).unwrap_err().to_string();
    assert!(err.contains("3 rank folders"), "{err}");
    std::fs::rename(work.join("rank_3_away"), src.join("rank_3")).unwrap();
    // A slice of the wrong shape: rank 1's file replaced by rank 0's
    // checkpoint of another case's layout.
    let other = dir
        .parent()
        .unwrap()
        .join("tp4_row_to_tp4_col/src/rank_1/checkpoint_1.ckpt");
    std::fs::copy(&other, src.join("rank_1/checkpoint_1.ckpt")).unwrap();
    assert!(
        prepare(&cfg(&src)).is_ok(),
        "same shapes: a valid, different checkpoint"
    );
    let wide = dir
        .parent()
        .unwrap()
        .join("tp4_col_to_tp2_col/src/rank_1/checkpoint_1.ckpt");
    std::fs::copy(&wide, src.join("rank_1/checkpoint_1.ckpt")).unwrap();
    let err = prepare(&cfg(&src)).unwrap_err().to_string();
    assert!(
        err.contains("checkpoint_1.ckpt") && err.contains("`w`") && err.contains("rank 1"),
        "{err}"
    );
    assert!(!work.join("out").exists());
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn launcher_ranks() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(ranks_for_process(Some(3), 8, &env(&[])), vec![3]);
    assert_eq!(ranks_for_process(None, 4, &env(&[])), vec![0, 1, 2, 3]);
    assert_eq!(
        ranks_for_process(
            None,
            8,
            &env(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "3")])
        ),
        vec![1, 4, 7]
    );
    assert_eq!(
        ranks_for_process(None, 8, &env(&[("OMPI_COMM_WORLD_RANK", "5")])),
        vec![5]
    );
    assert_eq!(
        ranks_for_process(None, 4, &env(&[("RANK", "2"), ("WORLD_SIZE", "4")])),
        vec![2]
    );
}

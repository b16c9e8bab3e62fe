//! Resharding checkpoints file by file: every MindSpore conformance case
//! end to end, from the .ckpt and the safetensors sources; refusals; resume.

use std::path::{Path, PathBuf};

use crate::common;

use common::{conformance_cases, ms_layout, random_cases, value_rule_slice};
use serde_json::Value;
use shardplan::formats::checkpoint::{CheckpointFault, CheckpointFormat, read_index};
use shardplan::formats::mindspore::rank_files;
use shardplan::reshard::{
    LayoutSource, ReshardConfig, ReshardError, WriteConfig, prepare, ranks_for_process,
    tensors_from_checkpoints,
};

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

/// Every tensor of a checkpoint tree: (rank, name) to (shape, bytes).
type Contents = std::collections::BTreeMap<(u64, String), (Vec<u64>, Vec<u8>)>;

/// Every tensor of every file under `dir`'s rank folders.
fn contents(dir: &Path) -> Contents {
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

/// Writing under `out` in `format` with windows of `window` bytes.
fn writing(out: &Path, format: Option<CheckpointFormat>, window: u64, direct: bool) -> WriteConfig {
    let mut w = WriteConfig::new(out);
    w.format = format.map(Into::into);
    w.window_bytes = window;
    w.direct_io = direct;
    w
}

/// How one run of a case went.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Every tensor (name, dtype, shape, bytes) as MindSpore wrote it.
    Equal,
    /// Written where MindSpore wrote nothing, and every slice is what the
    /// destination layout gives under the case's value rule.
    FollowsLayout,
    /// Written, but not as MindSpore wrote it.
    Differs(String),
    /// Refused before writing anything.
    Refused(String),
}

/// What a case's `case.json` says must happen.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Equal,
    /// MindSpore refuses; so must we.
    Refusal,
    /// MindSpore crashed on a valid request: refusing or writing the
    /// destination layout are both accepted.
    InternalFailure,
    /// MindSpore's transform and the training semantics disagree; the
    /// outputs differ from `expected/` and are reported by name.
    Suspect,
}

fn expectation(case: &Value) -> Expect {
    let tagged = |t: &str| {
        case["tags"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == t))
    };
    match case["expected_error"]["kind"].as_str() {
        Some("mindspore_internal_failure") => Expect::InternalFailure,
        Some(_) => Expect::Refusal,
        None if tagged("suspect") => Expect::Suspect,
        None => Expect::Equal,
    }
}

/// Reshards `dir/src_dir` into a temporary folder and compares it with
/// `dir/expected`.
fn run_case(
    dir: &Path,
    case: &Value,
    src_dir: &str,
    expected: &str,
    format: CheckpointFormat,
) -> Outcome {
    let name = case["name"].as_str().unwrap();
    let out = tmp(&format!("{name}-{src_dir}"));
    let cfg = ReshardConfig::new(
        dir.join(src_dir),
        strategy(dir, case, "src"),
        strategy(dir, case, "dst"),
    );
    // The smallest window (4 KiB); these tensors are smaller,
    // `large_tensors_cross_many_windows` crosses windows. Both write paths:
    // through the page cache and direct.
    let write = writing(
        &out,
        Some(format),
        64,
        format == CheckpointFormat::Safetensors,
    );
    let p = match prepare(&cfg) {
        Ok(p) => p,
        Err(e) => {
            assert!(!out.exists(), "{name}: wrote output on refusal");
            return Outcome::Refused(e.to_string());
        }
    };
    for r in 0..p.dst().mesh().rank_count() {
        if let Err(e) = p.write_rank(&write, r, &mut |_| {}) {
            return Outcome::Differs(format!("rank {r} not written: {e}"));
        }
    }
    assert!(
        out.join("rank_0/MANIFEST.json").is_file(),
        "{name}: no manifest"
    );
    let ours = contents(&out);
    let _ = std::fs::remove_dir_all(&out);
    if !dir.join(expected).is_dir() {
        return match follows_destination_layout(case, &ours) {
            Ok(()) => Outcome::FollowsLayout,
            Err(e) => Outcome::Differs(e),
        };
    }
    let theirs = contents(&dir.join(expected));
    if ours == theirs {
        return Outcome::Equal;
    }
    if expectation(case) == Expect::Suspect && follows_destination_layout(case, &ours).is_ok() {
        return Outcome::FollowsLayout;
    }
    let first = theirs
        .iter()
        .find(|(k, v)| ours.get(*k) != Some(*v))
        .map(|(k, v)| match ours.get(k) {
            None => format!("rank {} has no {}", k.0, k.1),
            Some(o) => format!("rank {} {}: shape {:?}, MindSpore {:?}", k.0, k.1, o.0, v.0),
        })
        .unwrap_or_else(|| {
            let extra = ours.keys().find(|k| !theirs.contains_key(*k)).unwrap();
            format!(
                "rank {} has {}, which MindSpore did not write",
                extra.0, extra.1
            )
        });
    Outcome::Differs(first)
}

/// Checks each tensor the destination strategy lays out against the value
/// rule: rank r holds exactly its region, in bytes.
fn follows_destination_layout(case: &Value, ours: &Contents) -> Result<(), String> {
    let stages = case["dst_pipeline_stages"].as_u64().unwrap();
    let ranks = case["dst_device_num"].as_u64().unwrap();
    let mut checked = 0;
    let Some(per_stage) = case["dst_layouts"].as_array() else {
        // One destination device: every tensor whole on rank 0.
        for (name, param) in case["params"].as_object().unwrap() {
            let shape: Vec<u64> = serde_json::from_value(param["full_shape"].clone()).unwrap();
            let whole = shardplan::Region::whole(&shape);
            let got = ours
                .get(&(0, name.clone()))
                .ok_or_else(|| format!("rank 0 lacks {name}"))?;
            if got.0 != shape || got.1 != value_rule_slice(param, &whole) {
                return Err(format!("rank 0 {name}: not the whole tensor"));
            }
        }
        return Ok(());
    };
    for (stage, layouts) in per_stage.iter().enumerate() {
        for (name, entry) in layouts.as_object().unwrap() {
            let param = &case["params"][name];
            let shape: Vec<u64> = serde_json::from_value(param["full_shape"].clone()).unwrap();
            let layout = ms_layout(entry, stage as u64, stages)
                .to_layout(&shape)
                .map_err(|e| format!("{name}: {e}"))?;
            for r in 0..ranks {
                let Some(region) = layout.region_of(r) else {
                    continue;
                };
                let got = ours
                    .get(&(r, name.clone()))
                    .ok_or_else(|| format!("rank {r} lacks {name}"))?;
                if got.0 != region.extent() || got.1 != value_rule_slice(param, &region) {
                    return Err(format!("rank {r} {name}: not the slice {region}"));
                }
                checked += 1;
            }
        }
    }
    if checked == 0 {
        return Err("no laid-out tensor was checked".into());
    }
    Ok(())
}

/// Every curated and randomized MindSpore case, from the .ckpt and from
/// the safetensors sources: the outputs equal MindSpore's bit for bit,
/// refusals are ours too, and the suspect and crashed cases are reported
/// by name.
#[test]
fn conformance_cases_end_to_end() {
    let mut ran = 0;
    let mut failures = Vec::new();
    let mut reported = Vec::new();
    for dir in conformance_cases().into_iter().chain(random_cases()) {
        let case: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let name = case["name"].as_str().unwrap().to_string();
        let expect = expectation(&case);
        for (src_dir, expected, format) in [
            ("src", "expected", CheckpointFormat::Ckpt),
            (
                "src_safetensors",
                "expected_safetensors",
                CheckpointFormat::Safetensors,
            ),
        ] {
            if !dir.join(src_dir).is_dir() {
                // Strategies without checkpoints: MindSpore would not cut
                // them (the strategy refusal is tested in mindspore_files).
                assert_eq!(expect, Expect::Refusal, "{name}: no {src_dir}");
                continue;
            }
            let got = run_case(&dir, &case, src_dir, expected, format);
            ran += 1;
            let ok = matches!(
                (&got, expect),
                (Outcome::Equal, Expect::Equal)
                    | (Outcome::Refused(_), Expect::Refusal)
                    | (
                        Outcome::Refused(_) | Outcome::FollowsLayout,
                        Expect::InternalFailure
                    )
                    | (
                        Outcome::Differs(_) | Outcome::FollowsLayout,
                        Expect::Suspect
                    )
            );
            if !ok {
                failures.push(format!(
                    "{name} from {src_dir}: expected {expect:?}, got {got:?}"
                ));
            } else if expect != Expect::Equal {
                reported.push(format!("{name} from {src_dir} ({expect:?}): {got:?}"));
            }
        }
    }
    eprintln!("reported separately:\n  {}", reported.join("\n  "));
    assert!(
        failures.is_empty(),
        "{} of {ran} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // 35 curated cases and 160 random, two source forms each; 9 in the
    // fixtures alone.
    assert!(ran >= 18, "ran {ran}");
}

/// An interrupted run (a temporary file left behind, a final file whose
/// manifest is missing) is finished by the next run; completed ranks are
/// kept.
#[test]
fn interrupted_runs_resume() {
    let dir = conformance_cases()
        .into_iter()
        .find(|d| d.ends_with("tp4_row_to_tp2_row"))
        .expect("the case is in the fixtures");
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let out = tmp("resume");
    let cfg = ReshardConfig::new(
        dir.join("src"),
        strategy(&dir, &case, "src"),
        strategy(&dir, &case, "dst"),
    );
    let write = writing(&out, None, 1 << 20, true);
    let p = prepare(&cfg).unwrap();
    let first = p.write_rank(&write, 0, &mut |_| {}).unwrap();
    assert!(!first.resumed);
    // Rank 1 was killed: a partial temporary file only.
    std::fs::create_dir_all(out.join("rank_1")).unwrap();
    std::fs::write(out.join("rank_1/.checkpoint_1.ckpt.tmp-99999"), b"partial").unwrap();
    let again = p.write_rank(&write, 0, &mut |_| {}).unwrap();
    assert!(again.resumed);
    let one = p.write_rank(&write, 1, &mut |_| {}).unwrap();
    assert!(!one.resumed);
    assert!(!out.join("rank_1/.checkpoint_1.ckpt.tmp-99999").exists());
    // A final file that does not match its manifest is rewritten.
    std::fs::write(&one.path, b"corrupt").unwrap();
    let fixed = p.write_rank(&write, 1, &mut |_| {}).unwrap();
    assert!(!fixed.resumed);
    assert_eq!(contents(&out), contents(&dir.join("expected")));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_inputs_are_refused_before_writing() {
    let dir = conformance_cases()
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
    let cfg = |src_dir: &Path| {
        ReshardConfig::new(
            src_dir,
            strategy(&dir, &case, "src"),
            strategy(&dir, &case, "dst"),
        )
    };
    let p = prepare(&cfg(&src)).unwrap();
    // An output inside the sources is refused before anything is written.
    let inside = src.join("out");
    let err = p
        .write_rank(&writing(&inside, None, 1 << 20, true), 0, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, ReshardError::OutputOverlaps { .. }), "{err}");
    assert!(!inside.exists());
    // Also when the path only reaches the sources through `..` or `.`, or
    // a symbolic link.
    let link = work.join("link");
    std::os::unix::fs::symlink(&src, &link).unwrap();
    for sneaky in [
        work.join("elsewhere/../src/out"),
        src.join("./out"),
        link.join("out"),
    ] {
        let err = p.write_rank(&writing(&sneaky, None, 1 << 20, true), 0, &mut |_| {});
        assert!(
            matches!(err, Err(ReshardError::OutputOverlaps { .. })),
            "{}",
            sneaky.display()
        );
    }
    assert!(!inside.exists());
    // Truncated file.
    let f = src.join("rank_2/checkpoint_2.ckpt");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 5]).unwrap();
    let err = prepare(&cfg(&src)).unwrap_err();
    assert!(
        matches!(&err, ReshardError::Checkpoint(e)
            if e.file.ends_with("checkpoint_2.ckpt")
                && matches!(e.fault, CheckpointFault::CkptRecord { what }
                    if what == "a tensor record runs past the end of the file")),
        "{err:?}"
    );
    std::fs::write(&f, &bytes).unwrap();
    // A tensor two files of one rank hold: refused by name, by the
    // resharding and by the import that sizes tensors from checkpoints.
    let twice = src.join("rank_2/checkpoint_2_part1.ckpt");
    std::fs::copy(&f, &twice).unwrap();
    let err = prepare(&cfg(&src)).unwrap_err();
    assert!(
        matches!(&err, ReshardError::TensorTwice { rank: 2, tensor } if tensor == "w"),
        "{err:?}"
    );
    let err = tensors_from_checkpoints(&src, None).unwrap_err();
    assert!(
        matches!(&err, ReshardError::TensorTwice { rank: 2, .. }),
        "{err:?}"
    );
    std::fs::remove_file(&twice).unwrap();
    // A missing rank folder.
    std::fs::rename(src.join("rank_3"), work.join("rank_3_away")).unwrap();
    let err = prepare(&cfg(&src)).unwrap_err();
    assert!(
        matches!(
            &err,
            ReshardError::RankCount {
                folder: Some(_),
                files: 3,
                ranks: 4
            }
        ),
        "{err:?}"
    );
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
    let err = prepare(&cfg(&src)).unwrap_err();
    assert!(
        matches!(&err, ReshardError::SliceShape { file, tensor, rank: 1, .. }
            if file.ends_with("checkpoint_1.ckpt") && tensor == "w"),
        "{err:?}"
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

/// Tensors many output windows long, pieces cut both ways (whole source
/// rows landing in strided destination rows, strided source rows landing
/// contiguously, a 3-D box), written with 4 KiB and 12 KiB windows, with
/// and without direct IO, in both formats: every destination byte is the
/// one the layouts say, checked against the global index each value
/// encodes.
#[test]
fn large_tensors_cross_many_windows() {
    use shardplan::formats::checkpoint::CheckpointWriter;
    use shardplan::{
        DType, DeviceMesh, DimSplit, LayoutConfig, Strategy, TensorInfo, TensorLayout,
    };
    use std::sync::Arc;

    let tensors = [
        ("a", vec![1500u64, 24]),
        ("b", vec![24u64, 1500]),
        ("c", vec![6u64, 48, 40]),
    ];
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .map(|(n, s)| TensorInfo {
            name: n.to_string(),
            shape: s.clone(),
            dtype: DType::F32,
        })
        .collect();
    let layouts = |mesh: &Arc<DeviceMesh>, axis: &str, dims: [usize; 3]| -> Vec<TensorLayout> {
        infos
            .iter()
            .zip(dims)
            .map(|(t, d)| {
                let mut cfg = LayoutConfig::new(vec![DimSplit::none(); t.shape.len()]);
                cfg.dims[d] = DimSplit::over([axis]);
                TensorLayout::new(mesh.clone(), &t.shape, &cfg).unwrap()
            })
            .collect()
    };
    // Source: 4 ranks, a by columns, b by rows, c along its last dim.
    let sm = Arc::new(DeviceMesh::new([("x", 4)]).unwrap());
    let src = Strategy::new(
        "src",
        sm.clone(),
        infos.clone(),
        layouts(&sm, "x", [1, 0, 2]),
    )
    .unwrap();
    // Destination: 3 ranks, a by rows, b by columns, c along its middle dim.
    let dm = Arc::new(DeviceMesh::new([("y", 3)]).unwrap());
    let dst = Strategy::new(
        "dst",
        dm.clone(),
        infos.clone(),
        layouts(&dm, "y", [0, 1, 1]),
    )
    .unwrap();

    // Element value: its global flat index (exact in f32 below 2^24).
    let slice_bytes = |t: &TensorInfo, r: &shardplan::Region| -> Vec<u8> {
        let mut out = Vec::with_capacity((r.volume() * 4) as usize);
        let n = t.shape.len();
        let mut idx = r.offset().to_vec();
        for _ in 0..r.volume() {
            let flat = (0..n).fold(0u64, |acc, k| acc * t.shape[k] + idx[k]);
            out.extend_from_slice(&(flat as f32).to_le_bytes());
            for k in (0..n).rev() {
                idx[k] += 1;
                if idx[k] < r.offset()[k] + r.extent()[k] {
                    break;
                }
                idx[k] = r.offset()[k];
            }
        }
        out
    };
    let work = tmp("large");
    for format in [CheckpointFormat::Safetensors, CheckpointFormat::Ckpt] {
        let src_dir = work.join(format!("src-{}", format.extension()));
        for rank in 0..4 {
            let dir = src_dir.join(format!("rank_{rank}"));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("checkpoint_{rank}.{}", format.extension()));
            let regions: Vec<_> = src
                .layouts()
                .iter()
                .map(|l| l.region_of(rank).unwrap())
                .collect();
            let decl = infos
                .iter()
                .zip(&regions)
                .map(|(t, r)| (t.name.clone(), t.dtype, r.extent().to_vec()))
                .collect();
            let mut w =
                CheckpointWriter::new(std::fs::File::create(&path).unwrap(), format, decl).unwrap();
            for (t, r) in infos.iter().zip(&regions) {
                w.write_tensor(&slice_bytes(t, r)).unwrap();
            }
            w.finish().unwrap();
        }
        for (window, direct) in [
            (4096u64, true),
            (12288, false),
            (12288, true),
            (1 << 20, true),
        ] {
            let out = work.join(format!("out-{}-{window}-{direct}", format.extension()));
            let mut cfg = ReshardConfig::new(
                src_dir.clone(),
                LayoutSource::Strategy(Box::new(src.clone())),
                LayoutSource::Strategy(Box::new(dst.clone())),
            );
            cfg.any_device_count = true;
            let p = prepare(&cfg).unwrap();
            let write = writing(&out, Some(format), window, direct);
            for r in 0..3 {
                p.write_rank(&write, r, &mut |_| {}).unwrap();
            }
            let got = contents(&out);
            for r in 0..3u64 {
                for (t, l) in infos.iter().zip(dst.layouts()) {
                    let region = l.region_of(r).unwrap();
                    let (shape, bytes) = &got[&(r, t.name.clone())];
                    assert_eq!(shape, region.extent(), "{} rank {r}", t.name);
                    assert!(
                        *bytes == slice_bytes(t, &region),
                        "{} rank {r}: window {window}, direct {direct}, {format:?}",
                        t.name
                    );
                }
            }
        }
    }
    std::fs::remove_dir_all(&work).unwrap();
}

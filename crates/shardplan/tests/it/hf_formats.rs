//! Hugging Face model folders, single safetensors files and DCP's Hugging
//! Face writer folders (`shardplan::formats::hf`): the PyTorch and
//! huggingface_hub cases of `../shared/conformance/torch` reassemble to
//! their `full.safetensors`; written folders read back, match what
//! huggingface_hub writes, and load in Python's safetensors; bad inputs are
//! refused with their own variants.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use shardplan::formats::checkpoint::read_index;
use shardplan::formats::chunked::{ChunkedCheckpoint, SourceFormat};
use shardplan::formats::detect;
use shardplan::formats::hf::{
    self, HfError, HfLayout, read_dcp_hf_folder, read_hf_folder, read_safetensors_file,
    write_hf_folder,
};
use shardplan::{DType, TensorInfo};

/// `../shared/conformance/torch`, or (failing under CI) the copies of its
/// five cases kept in `fixtures/torch`.
pub(crate) fn torch_cases() -> Option<PathBuf> {
    crate::common::shared_or_skip(
        &crate::common::repo_root().join("../shared/conformance/torch"),
        "running the copies in fixtures/torch",
    )
    .or_else(|| Some(crate::common::test_data().join("fixtures/torch")))
}

/// A fresh folder under the system's temporary folder.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardplan-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every tensor of a safetensors file, whole: name to (dtype, shape, bytes).
pub(crate) fn whole_tensors(path: &Path) -> BTreeMap<String, (DType, Vec<u64>, Vec<u8>)> {
    let index = read_index(path).unwrap();
    let bytes = std::fs::read(path).unwrap();
    index
        .tensors
        .into_values()
        .map(|e| {
            let data = bytes[e.offset as usize..(e.offset + e.len) as usize].to_vec();
            (e.name, (e.dtype, e.shape, data))
        })
        .collect()
}

/// Each tensor assembled from its chunks, checking that they cover every
/// element exactly once.
pub(crate) fn reassemble(ck: &ChunkedCheckpoint) -> BTreeMap<String, (DType, Vec<u64>, Vec<u8>)> {
    let mut files: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    let mut out = BTreeMap::new();
    for t in &ck.tensors {
        let width = t.dtype.size_bytes() as usize;
        let numel: u64 = t.shape.iter().product();
        let mut buf = vec![0u8; numel as usize * width];
        let mut covered = vec![0u32; numel as usize];
        for c in &t.chunks {
            assert!(
                c.rank < ck.ranks,
                "{}: rank {} of {}",
                t.name,
                c.rank,
                ck.ranks
            );
            let bytes = files
                .entry(c.file.clone())
                .or_insert_with(|| std::fs::read(&c.file).unwrap());
            let data = &bytes[c.byte_offset as usize..(c.byte_offset + c.byte_len) as usize];
            let count: u64 = c.sizes.iter().product();
            assert_eq!(count as usize * width, data.len(), "{}", t.name);
            for k in 0..count {
                // The chunk's multi-index of element k, row-major.
                let mut rest = k;
                let mut flat = 0u64;
                let mut idx = vec![0u64; c.sizes.len()];
                for d in (0..c.sizes.len()).rev() {
                    idx[d] = rest % c.sizes[d];
                    rest /= c.sizes[d];
                }
                for ((dim, off), i) in t.shape.iter().zip(&c.offsets).zip(&idx) {
                    flat = flat * dim + off + i;
                }
                let (f, k) = (flat as usize, k as usize);
                buf[f * width..(f + 1) * width].copy_from_slice(&data[k * width..(k + 1) * width]);
                covered[f] += 1;
            }
        }
        assert!(
            covered.iter().all(|&n| n == 1),
            "{}: chunks do not tile",
            t.name
        );
        out.insert(t.name.clone(), (t.dtype, t.shape.clone(), buf));
    }
    out
}

/// One of the readers.
type Reader = fn(&Path) -> Result<ChunkedCheckpoint, HfError>;

#[test]
fn hf_cases_reassemble_their_full_safetensors() {
    let Some(root) = torch_cases() else { return };
    let cases: [(&str, &str, Reader, SourceFormat); 2] = [
        (
            "hf_sharded_llama",
            "model",
            read_hf_folder,
            SourceFormat::HuggingFace,
        ),
        (
            "hf_writer_fsdp2",
            "checkpoint",
            read_dcp_hf_folder,
            SourceFormat::DcpHuggingFace,
        ),
    ];
    for (case, sub, read, format) in cases {
        let dir = root.join(case).join(sub);
        let ck = read(&dir).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(ck.format, format, "{case}");
        assert_eq!(detect::detect(&dir).unwrap(), format, "{case}");
        let names: Vec<&str> = ck.tensors.iter().map(|t| t.name.as_str()).collect();
        assert!(names.is_sorted(), "{case}: tensors in name order");
        let full = whole_tensors(&root.join(case).join("full.safetensors"));
        assert_eq!(reassemble(&ck), full, "{case}");
    }
}

#[test]
fn dcp_writer_folder_chunks_and_ranks() {
    let Some(root) = torch_cases() else { return };
    let ck = read_dcp_hf_folder(&root.join("hf_writer_fsdp2/checkpoint")).unwrap();
    assert_eq!(ck.ranks, 2);
    let t = |n: &str| ck.tensors.iter().find(|t| t.name == n).unwrap();
    let embed = t("model.embed_tokens.weight");
    let boxes: Vec<_> = embed
        .chunks
        .iter()
        .map(|c| (c.rank, c.offsets.clone(), c.sizes.clone()))
        .collect();
    assert_eq!(
        boxes,
        [(0, vec![0, 0], vec![10, 8]), (1, vec![10, 0], vec![10, 8])]
    );
    // Replicated: saved once, by one rank.
    let norm = t("model.norm.weight");
    assert_eq!((norm.shape.clone(), norm.chunks.len()), (vec![8], 1));
}

#[test]
fn every_conformance_case_is_detected() {
    let Some(root) = torch_cases() else { return };
    for (dir, format) in [
        ("fsdp4_uneven/checkpoint", SourceFormat::DcpTorchSave),
        ("tp2_dp2/checkpoint", SourceFormat::DcpTorchSave),
        (
            "safetensors_format_tp4/checkpoint",
            SourceFormat::DcpSafetensors,
        ),
        ("hf_writer_fsdp2/checkpoint", SourceFormat::DcpHuggingFace),
        ("hf_sharded_llama/model", SourceFormat::HuggingFace),
        (
            "hf_sharded_llama/model/model.safetensors.index.json",
            SourceFormat::HuggingFace,
        ),
        (
            "fsdp4_uneven/checkpoint/.metadata",
            SourceFormat::DcpTorchSave,
        ),
        (
            "hf_sharded_llama/full.safetensors",
            SourceFormat::Safetensors,
        ),
        // Only a .metadata: the default writer, whose reader says what is wrong.
        ("hostile/eval_global", SourceFormat::DcpTorchSave),
    ] {
        assert_eq!(detect::detect(&root.join(dir)).unwrap(), format, "{dir}");
    }
    let unknown = detect::detect(&root.join("hf_sharded_llama"));
    assert!(
        matches!(unknown, Err(HfError::UnknownFormat { .. })),
        "{unknown:?}"
    );
    let full = read_safetensors_file(&root.join("hf_sharded_llama/full.safetensors")).unwrap();
    assert_eq!(full.format, SourceFormat::Safetensors);
    assert_eq!(full.tensors.len(), 21);
    // A DCP shard holds chunks; reading it as whole tensors is refused.
    let shard =
        root.join("hf_writer_fsdp2/checkpoint/shard-00001-model-00001-of-00001.safetensors");
    assert!(matches!(
        read_safetensors_file(&shard),
        Err(HfError::ShardedFile { .. })
    ));
}

#[test]
fn detects_mindspore_and_lone_model_files() {
    let dir = scratch("detect");
    std::fs::create_dir_all(dir.join("ms/rank_0")).unwrap();
    assert_eq!(
        detect::detect(&dir.join("ms")).unwrap(),
        SourceFormat::MindSpore
    );
    let w = TensorInfo {
        name: "w".into(),
        shape: vec![2],
        dtype: DType::F32,
    };
    write_hf_folder(&dir.join("one"), &[(w, &[0u8; 8][..])], 1 << 20).unwrap();
    assert!(dir.join("one/model.safetensors").is_file());
    assert!(
        !dir.join("one").join(hf::INDEX_NAME).exists(),
        "one shard, no index"
    );
    assert_eq!(
        detect::detect(&dir.join("one")).unwrap(),
        SourceFormat::HuggingFace
    );
    let ck = read_hf_folder(&dir.join("one")).unwrap();
    assert_eq!(ck.tensors.len(), 1);
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    assert!(matches!(
        detect::detect(&dir.join("empty")),
        Err(HfError::UnknownFormat { .. })
    ));
    assert!(matches!(
        read_hf_folder(&dir.join("empty")),
        Err(HfError::NotAModelFolder { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Tensors of several dtypes and shapes, each byte distinct-ish.
fn sample_tensors() -> Vec<(TensorInfo, Vec<u8>)> {
    let specs: [(&str, &[u64], DType); 7] = [
        ("model.embed.weight", &[16, 8], DType::BF16),
        ("model.layers.0.attn.q.weight", &[8, 8], DType::F32),
        ("model.layers.0.norm.weight", &[8], DType::F16),
        ("model.layers.0.mask", &[3, 5], DType::Bool),
        ("step", &[], DType::I64),
        ("model.big", &[40, 8], DType::F32),
        ("model.layers.1.q.weight", &[8, 8], DType::U8),
    ];
    specs
        .iter()
        .enumerate()
        .map(|(k, (name, shape, dtype))| {
            let info = TensorInfo {
                name: name.to_string(),
                shape: shape.to_vec(),
                dtype: *dtype,
            };
            let len = info.size_bytes().unwrap() as usize;
            let bytes = (0..len).map(|i| (i * 7 + k * 31) as u8).collect();
            (info, bytes)
        })
        .collect()
}

#[test]
fn written_folders_read_back() {
    let dir = scratch("roundtrip");
    let tensors = sample_tensors();
    let refs: Vec<(TensorInfo, &[u8])> = tensors
        .iter()
        .map(|(t, b)| (t.clone(), b.as_slice()))
        .collect();
    let layout = write_hf_folder(&dir, &refs, 400).unwrap();
    assert!(layout.shards().len() > 2, "{:?}", layout.shards().len());
    // The 1280-byte tensor is over the limit: a shard of its own.
    let alone = layout
        .shards()
        .iter()
        .find(|s| s.tensors().iter().any(|t| t.name == "model.big"))
        .unwrap();
    assert_eq!(alone.tensors().len(), 1);
    for s in layout.shards() {
        let tensor_bytes: u64 = s.tensors().iter().map(|t| t.byte_len).sum();
        assert!(
            s.tensors().len() == 1 || tensor_bytes <= 400,
            "{}",
            s.file_name()
        );
        let file = std::fs::read(dir.join(s.file_name())).unwrap();
        assert_eq!(file.len() as u64, s.file_len());
        assert_eq!(&file[..s.header().len()], s.header());
        // An independent reader agrees.
        let st = safetensors::SafeTensors::deserialize(&file).unwrap();
        for t in s.tensors() {
            let view = st.tensor(&t.name).unwrap();
            let want = &tensors.iter().find(|(i, _)| i.name == t.name).unwrap().1;
            assert_eq!(view.data(), want.as_slice(), "{}", t.name);
        }
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(hf::INDEX_NAME)).unwrap()).unwrap();
    let total: u64 = tensors.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    let keys: Vec<&String> = index["weight_map"].as_object().unwrap().keys().collect();
    assert!(keys.is_sorted() && keys.len() == tensors.len());
    let back = reassemble(&read_hf_folder(&dir).unwrap());
    let want: BTreeMap<_, _> = tensors
        .iter()
        .map(|(t, b)| (t.name.clone(), (t.dtype, t.shape.clone(), b.clone())))
        .collect();
    assert_eq!(back, want);
    // A second save into the same folder is refused.
    assert!(matches!(
        write_hf_folder(&dir, &refs, 400),
        Err(HfError::StaleFiles { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_writer_refuses_wrong_data_lengths() {
    let dir = scratch("datalen");
    let w = TensorInfo {
        name: "w".into(),
        shape: vec![2],
        dtype: DType::F32,
    };
    let short = write_hf_folder(&dir, &[(w, &[0u8; 7][..])], 100);
    assert!(
        matches!(
            short,
            Err(HfError::DataLength {
                expected: 8,
                actual: 7,
                ..
            })
        ),
        "{short:?}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Written like huggingface_hub at the same limit, in the same (name)
/// order, the llama case's shards come out byte for byte.
#[test]
fn the_writer_matches_huggingface_hub() {
    let Some(root) = torch_cases() else { return };
    let case = root.join("hf_sharded_llama");
    let full = whole_tensors(&case.join("full.safetensors"));
    let infos: Vec<TensorInfo> = full
        .iter()
        .map(|(name, (dtype, shape, _))| TensorInfo {
            name: name.clone(),
            shape: shape.clone(),
            dtype: *dtype,
        })
        .collect();
    let layout = HfLayout::new(&infos, hf::parse_shard_size("24KB").unwrap()).unwrap();
    let theirs = case.join("model");
    for s in layout.shards() {
        let file = std::fs::read(theirs.join(s.file_name())).unwrap();
        let mut ours = s.header().to_vec();
        for t in s.tensors() {
            ours.extend_from_slice(&full[&t.name].2);
        }
        assert!(
            ours == file,
            "{} differs from huggingface_hub's",
            s.file_name()
        );
    }
    let text = std::fs::read(theirs.join(hf::INDEX_NAME)).unwrap();
    let index = hf::parse_index_json(&theirs, &text).unwrap();
    assert_eq!(index, layout.index());
}

// Bad inputs: each built in a scratch folder, each refused with its own
// variant.

/// A safetensors file of `tensors` (name, dtype, shape) filled with zeros,
/// with `metadata`.
fn st_file(
    path: &Path,
    tensors: &[(&str, safetensors::Dtype, &[usize])],
    metadata: &[(&str, &str)],
) {
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dtype, shape)| vec![0u8; shape.iter().product::<usize>() * dtype.bitsize() / 8])
        .collect();
    let views = tensors.iter().zip(&data).map(|((name, dtype, shape), d)| {
        (
            name.to_string(),
            safetensors::tensor::TensorView::new(*dtype, shape.to_vec(), d).unwrap(),
        )
    });
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = safetensors::tensor::serialize(views, Some(meta)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

const F32: safetensors::Dtype = safetensors::Dtype::F32;

/// A check that an error is the expected variant.
type Expect = fn(&HfError) -> bool;

fn model_folder(name: &str, weight_map: serde_json::Value, total: Option<u64>) -> PathBuf {
    let dir = scratch(name);
    st_file(
        &dir.join("a.safetensors"),
        &[("x", F32, &[2]), ("y", F32, &[3])],
        &[("format", "pt")],
    );
    st_file(
        &dir.join("b.safetensors"),
        &[("z", F32, &[4])],
        &[("format", "pt")],
    );
    let mut index = serde_json::json!({"weight_map": weight_map});
    if let Some(n) = total {
        index["metadata"] = serde_json::json!({"total_size": n});
    }
    std::fs::write(dir.join(hf::INDEX_NAME), index.to_string()).unwrap();
    dir
}

#[test]
fn model_folders_refuse_bad_indexes() {
    use serde_json::json;
    let good = json!({"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"});
    let dir = model_folder("good", good.clone(), Some(36));
    assert_eq!(read_hf_folder(&dir).unwrap().tensors.len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();

    let cases: [(&str, serde_json::Value, Option<u64>, Expect); 7] = [
        (
            "traversal",
            json!({"x": "../a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}),
            None,
            |e| matches!(e, HfError::BadShardName { .. }),
        ),
        (
            "missing",
            json!({"x": "a.safetensors", "y": "a.safetensors", "z": "c.safetensors"}),
            None,
            |e| matches!(e, HfError::MissingShard { .. }),
        ),
        (
            "not_in_shard",
            json!({"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors", "w": "b.safetensors"}),
            None,
            |e| matches!(e, HfError::TensorNotInShard { .. }),
        ),
        (
            "two_shards",
            json!({"x": "b.safetensors", "y": "a.safetensors", "z": "b.safetensors"}),
            None,
            // `x` is in a, which is read first, but mapped to b.
            |e| matches!(e, HfError::DuplicateTensor { .. }),
        ),
        (
            "unlisted",
            json!({"x": "a.safetensors", "z": "b.safetensors"}),
            None,
            |e| matches!(e, HfError::UnlistedTensor { .. }),
        ),
        ("total", good.clone(), Some(35), |e| {
            matches!(
                e,
                HfError::TotalSize {
                    declared: 35,
                    actual: 36,
                    ..
                }
            )
        }),
        (
            "absolute",
            json!({"x": "/etc/passwd.safetensors"}),
            None,
            |e| matches!(e, HfError::BadShardName { .. }),
        ),
    ];
    for (name, map, total, expect) in cases {
        let dir = model_folder(name, map, total);
        let err = read_hf_folder(&dir).unwrap_err();
        assert!(expect(&err), "{name}: {err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_tensor_in_two_shards_is_refused() {
    let dir = scratch("dup");
    st_file(&dir.join("a.safetensors"), &[("x", F32, &[2])], &[]);
    st_file(
        &dir.join("b.safetensors"),
        &[("x", F32, &[2]), ("z", F32, &[1])],
        &[],
    );
    let index = serde_json::json!({"weight_map": {"x": "a.safetensors", "z": "b.safetensors"}});
    std::fs::write(dir.join(hf::INDEX_NAME), index.to_string()).unwrap();
    let err = read_hf_folder(&dir).unwrap_err();
    assert!(
        matches!(&err, HfError::DuplicateTensor { tensor, .. } if tensor == "x"),
        "{err:?}"
    );
    assert_eq!(
        miette::Diagnostic::code(&err).unwrap().to_string(),
        "shardplan::formats::hf::duplicate_tensor"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dcp_writer_folders_refuse_bad_sharding_info() {
    let cases: [(&str, &str, Expect); 5] = [
        ("json", "{\"w\": {\"saved_offsets\": [0, ", |e| {
            matches!(e, HfError::ShardingInfoJson { .. })
        }),
        ("arity", r#"{"w": {"saved_offsets": [0]}}"#, |e| {
            matches!(
                e,
                HfError::OffsetsArity {
                    offsets: 1,
                    dims: 2,
                    ..
                }
            )
        }),
        ("unknown", r#"{"v": {"saved_offsets": [0, 0]}}"#, |e| {
            matches!(e, HfError::ShardingInfoTensor { .. })
        }),
        (
            "overflow",
            r#"{"w": {"saved_offsets": [18446744073709551615, 0]}}"#,
            |e| matches!(e, HfError::Overflow { .. }),
        ),
        (
            "shape",
            r#"{"w": {"saved_offsets": [4294967296, 4294967296]}}"#,
            |e| matches!(e, HfError::Overflow { .. }),
        ),
    ];
    for (name, info, expect) in cases {
        let dir = scratch(&format!("dcp-{name}"));
        st_file(
            &dir.join("shard-00001-model-00001-of-00001.safetensors"),
            &[("w", F32, &[2, 2])],
            &[("DCP_SHARDING_INFO", info)],
        );
        let err = read_dcp_hf_folder(&dir).unwrap_err();
        assert!(expect(&err), "{name}: {err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn dcp_writer_folders_check_chunks_agree() {
    let dir = scratch("dcp-agree");
    st_file(
        &dir.join("shard-00001-model-00001-of-00001.safetensors"),
        &[("w", F32, &[2, 2]), ("whole", F32, &[3])],
        &[("DCP_SHARDING_INFO", r#"{"w": {"saved_offsets": [0, 0]}}"#)],
    );
    st_file(
        &dir.join("shard-00002-model-00001-of-00001.safetensors"),
        &[("w", safetensors::Dtype::BF16, &[2, 2])],
        &[("DCP_SHARDING_INFO", r#"{"w": {"saved_offsets": [2, 0]}}"#)],
    );
    let err = read_dcp_hf_folder(&dir).unwrap_err();
    assert!(matches!(err, HfError::DtypeMismatch { .. }), "{err:?}");
    st_file(
        &dir.join("shard-00002-model-00001-of-00001.safetensors"),
        &[("w", F32, &[2])],
        &[("DCP_SHARDING_INFO", r#"{"w": {"saved_offsets": [2]}}"#)],
    );
    let err = read_dcp_hf_folder(&dir).unwrap_err();
    assert!(matches!(err, HfError::ChunkDims { .. }), "{err:?}");
    st_file(
        &dir.join("shard-00002-model-00001-of-00001.safetensors"),
        &[("w", F32, &[2, 2])],
        &[("DCP_SHARDING_INFO", r#"{"w": {"saved_offsets": [2, 0]}}"#)],
    );
    let ck = read_dcp_hf_folder(&dir).unwrap();
    assert_eq!(ck.ranks, 2);
    let shapes: Vec<_> = ck
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.clone()))
        .collect();
    // `whole` has no sharding info: one chunk at zero.
    assert_eq!(shapes, [("w", vec![4, 2]), ("whole", vec![3])]);
    std::fs::remove_dir_all(&dir).unwrap();
    let empty = scratch("dcp-none");
    assert!(matches!(
        read_dcp_hf_folder(&empty),
        Err(HfError::NoShards { .. })
    ));
    std::fs::remove_dir_all(&empty).unwrap();
}

/// Python's safetensors (`SHARDPLAN_PYTHON`, the repository's `.venv`, or
/// `python3`)
/// opens every shard we write and finds the tensors the index maps to it,
/// with their bytes. Skipped when it is not installed (a failure under CI,
/// whose test command installs it).
#[test]
fn python_safetensors_loads_written_folders() {
    let candidates = [
        std::env::var_os("SHARDPLAN_PYTHON").map(PathBuf::from),
        Some(crate::common::repo_root().join(".venv/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    let importable = |p: &PathBuf| {
        std::process::Command::new(p)
            .args(["-c", "import safetensors, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let Some(python) = candidates.into_iter().flatten().find(importable) else {
        assert!(
            !crate::common::is_ci(),
            "CI needs a Python with safetensors and numpy (set SHARDPLAN_PYTHON)"
        );
        eprintln!("SKIPPED: no Python with safetensors and numpy (set SHARDPLAN_PYTHON)");
        return;
    };
    let dir = scratch("python");
    // numpy has no bf16: the Python side compares the other dtypes' bytes.
    let tensors = sample_tensors();
    let refs: Vec<(TensorInfo, &[u8])> = tensors
        .iter()
        .map(|(t, b)| (t.clone(), b.as_slice()))
        .collect();
    write_hf_folder(&dir, &refs, 400).unwrap();
    let expect: serde_json::Map<String, serde_json::Value> = tensors
        .iter()
        .filter(|(t, _)| t.dtype != DType::BF16)
        .map(|(t, b)| {
            (
                t.name.clone(),
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
                    .into(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("expect.json"),
        serde_json::Value::Object(expect).to_string(),
    )
    .unwrap();
    let script = r#"
import json, os, sys
from safetensors import safe_open
d = sys.argv[1]
index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
expect = json.load(open(os.path.join(d, "expect.json")))
by_file = {}
for name, f in index["weight_map"].items():
    by_file.setdefault(f, set()).add(name)
total = 0
for f, names in by_file.items():
    with safe_open(os.path.join(d, f), framework="numpy") as st:
        assert set(st.keys()) == names, (f, set(st.keys()), names)
        for n in names:
            s = st.get_slice(n)
            shape = s.get_shape()
            width = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "BOOL": 1}[s.get_dtype()]
            size = width
            for x in shape:
                size *= x
            total += size
            if n in expect:
                assert st.get_tensor(n).tobytes().hex() == expect[n], n
assert total == index["metadata"]["total_size"], total
print("ok", len(by_file))
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

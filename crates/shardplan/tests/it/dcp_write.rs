//! DCP folders written by `formats::torch::dcp_write`, read back by PyTorch's own
//! reader (`dcp_load_check.py` beside this file) and compared byte for byte
//! with archives torch wrote (the conformance files in `../shared`).

use std::path::{Path, PathBuf};
use std::process::Command;

use shardplan::DType;
use shardplan::formats::torch::dcp_write::{
    DCP_ARCHIVE_NAME, DcpChunkData, DcpChunkOut, DcpLayout, TorchSaveItem, write_dcp_folder,
};

/// A tensor of the test folder: tensor `k` holds `arange(numel) + 1000*k`.
struct Tensor {
    name: &'static str,
    dtype: DType,
    shape: Vec<u64>,
    k: u64,
}

impl Tensor {
    /// The row-major value at flat position `i`, as bytes of its dtype.
    fn element(&self, i: u64) -> Vec<u8> {
        let v = (i + 1000 * self.k) as f64;
        match self.dtype {
            DType::F32 => (v as f32).to_le_bytes().to_vec(),
            DType::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
            DType::BF16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
            DType::I64 => (v as i64).to_le_bytes().to_vec(),
            DType::I32 => (v as i32).to_le_bytes().to_vec(),
            other => unreachable!("the test uses no {other}"),
        }
    }

    /// The bytes of the box at `offsets` of extent `sizes`, row-major.
    fn box_bytes(&self, offsets: &[u64], sizes: &[u64]) -> Vec<u8> {
        let strides: Vec<u64> = (0..self.shape.len())
            .map(|d| self.shape[d + 1..].iter().product())
            .collect();
        let count: u64 = sizes.iter().product();
        let mut out = Vec::new();
        for n in 0..count {
            // Unravel n within the box, then ravel in the tensor.
            let (mut rest, mut flat) = (n, 0);
            for d in (0..sizes.len()).rev() {
                flat += (offsets[d] + rest % sizes[d]) * strides[d];
                rest /= sizes[d];
            }
            out.extend(self.element(flat));
        }
        out
    }

    fn chunk(&self, offsets: &[u64], sizes: &[u64]) -> DcpChunkData {
        DcpChunkData {
            chunk: DcpChunkOut {
                fqn: self.name.to_string(),
                dtype: self.dtype,
                shape: self.shape.clone(),
                offsets: offsets.to_vec(),
                sizes: sizes.to_vec(),
            },
            bytes: self.box_bytes(offsets, sizes),
        }
    }
}

/// Four ranks, a 2 x 2 (dp, tp) mesh: uneven `Shard(0)` chunks (torch.chunk
/// sizes), a `Shard(1)` tensor replicated over dp, a replicated vector and a
/// 0-dim int64, in bf16, f16, f32, i32 and i64.
fn tensors_and_ranks() -> (Vec<Tensor>, Vec<Vec<DcpChunkData>>) {
    let t = |name, dtype, shape: &[u64], k| Tensor {
        name,
        dtype,
        shape: shape.to_vec(),
        k,
    };
    let tensors = vec![
        t("model.embed_tokens.weight", DType::BF16, &[50, 16], 0),
        t(
            "model.layers.0.mlp.down_proj.weight",
            DType::F32,
            &[16, 40],
            1,
        ),
        t("lm_head.weight", DType::F16, &[10, 6], 2),
        t("model.norm.weight", DType::F32, &[8], 3),
        t("counts", DType::I32, &[7, 3], 4),
        t("step", DType::I64, &[], 5),
    ];
    let mut ranks: Vec<Vec<DcpChunkData>> = vec![Vec::new(); 4];
    for (rank, chunks) in ranks.iter_mut().enumerate() {
        let r = rank as u64;
        let (tp, rows_13) = (r % 2, [13, 13, 13, 11][rank]);
        chunks.push(tensors[0].chunk(&[13 * r, 0], &[rows_13, 16]));
        chunks.push(tensors[1].chunk(&[4 * r, 0], &[4, 40]));
        chunks.push(tensors[2].chunk(&[0, 3 * tp], &[10, 3]));
        chunks.push(tensors[3].chunk(&[0], &[8]));
        chunks.push(tensors[4].chunk(&[2 * r, 0], &[[2, 2, 2, 1][rank], 3]));
        chunks.push(tensors[5].chunk(&[], &[]));
    }
    (tensors, ranks)
}

/// What the Python check expects, from the layout: per tensor its chunks in
/// metadata order, and every storage entry.
fn expectations(tensors: &[Tensor], layout: &DcpLayout) -> serde_json::Value {
    let mut storage = Vec::new();
    let mut chunks: Vec<Vec<serde_json::Value>> = vec![Vec::new(); tensors.len()];
    for file in layout.files() {
        for item in &file.items {
            let c = &item.chunk;
            let k = tensors.iter().position(|t| t.name == c.fqn).unwrap();
            storage.push(serde_json::json!({
                "fqn": c.fqn, "offsets": c.offsets, "index": chunks[k].len(),
                "path": file.name, "offset": item.offset, "length": item.archive.len(),
            }));
            chunks[k].push(serde_json::json!([c.offsets, c.sizes]));
        }
    }
    let tensors: Vec<serde_json::Value> = tensors
        .iter()
        .zip(chunks)
        .map(|(t, chunks)| {
            serde_json::json!({
                "name": t.name, "dtype": t.dtype.name(), "shape": t.shape,
                "k": t.k, "chunks": chunks,
            })
        })
        .collect();
    serde_json::json!({"tensors": tensors, "storage": storage})
}

/// The interpreter: `SHARDPLAN_PYTHON`, else the workspace's `.venv`, else
/// `python3`; `None` (with the reason) when it cannot import torch.
fn python_with_torch() -> Result<PathBuf, String> {
    let python = match std::env::var_os("SHARDPLAN_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let venv = crate::common::repo_root().join(".venv/bin/python");
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        }
    };
    let out = Command::new(&python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(format!("{} cannot import torch: {last}", python.display()));
    }
    Ok(python)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardplan-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn torch_loads_a_folder_we_write() {
    let (tensors, ranks) = tensors_and_ranks();
    let dir = temp_dir("dcp");
    let layout = write_dcp_folder(&dir, ranks).unwrap();
    // Replicas are stored once: lm_head by ranks 0 and 1, the rest by rank 0.
    let per_rank: Vec<usize> = layout.files().iter().map(|f| f.items.len()).collect();
    assert_eq!(per_rank, [6, 4, 3, 3]);

    let python = match python_with_torch() {
        Ok(p) => p,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs torch for this test: {why} (set SHARDPLAN_PYTHON)"
            );
            eprintln!("skipped: {why}; set SHARDPLAN_PYTHON to an interpreter with torch");
            return;
        }
    };
    let expect = dir.join("expect.json");
    std::fs::write(&expect, expectations(&tensors, &layout).to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/dcp_load_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .arg(&expect)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writing_twice_gives_the_same_bytes() {
    let (_, ranks) = tensors_and_ranks();
    let (a, b) = (temp_dir("det-a"), temp_dir("det-b"));
    write_dcp_folder(&a, ranks.clone()).unwrap();
    write_dcp_folder(&b, ranks).unwrap();
    for name in [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "__2_0.distcp",
        "__3_0.distcp",
    ] {
        let (x, y) = (
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
        );
        assert_eq!(x, y, "{name}");
    }
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

/// The conformance checkpoints beside the repository (`../shared`), or
/// `SHARDPLAN_CONFORMANCE_DIR`.
fn conformance_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SHARDPLAN_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => crate::common::repo_root().join("../shared/conformance"),
    };
    dir.join("torch").is_dir().then(|| dir.join("torch"))
}

/// Our archive for the same tensor is torch's, byte for byte, except the
/// 40 digits of `.data/serialization_id` (an opaque id) and its two CRCs.
#[track_caller]
fn check_item_matches_torch(file: &Path, offset: usize, len: usize, dtype: DType, shape: &[u64]) {
    let bytes = std::fs::read(file).unwrap();
    let theirs = &bytes[offset..offset + len];
    let item = TorchSaveItem::new(DCP_ARCHIVE_NAME, dtype, shape).unwrap();
    assert_eq!(item.len() as usize, len, "archive length");
    let at = item.data_offset() as usize;
    assert_eq!(&theirs[..at], item.prefix(), "prefix");
    let data = &theirs[at..at + item.data_len() as usize];
    let mut ours = item.prefix().to_vec();
    ours.extend_from_slice(data);
    ours.extend_from_slice(&item.suffix(crc32fast_hash(data)));

    let id_at = find(&ours, b"serialization_id").unwrap() + "serialization_id".len();
    // Its data starts at the first multiple of 64 after the FB field header.
    let id_data = (id_at + 4).next_multiple_of(64);
    let (our_id, their_id) = (&ours[id_data..id_data + 40], &theirs[id_data..id_data + 40]);
    assert!(
        their_id.iter().all(u8::is_ascii_digit),
        "torch's id is 40 digits"
    );
    let (our_crc, their_crc) = (crc32fast_hash(our_id), crc32fast_hash(their_id));
    let mut patched = theirs.to_vec();
    patched[id_data..id_data + 40].copy_from_slice(our_id);
    let mut i = 0;
    while let Some(p) = find(&patched[i..], &their_crc.to_le_bytes()) {
        patched[i + p..i + p + 4].copy_from_slice(&our_crc.to_le_bytes());
        i += p + 4;
    }
    assert_eq!(patched, ours, "{}", file.display());
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn crc32fast_hash(data: &[u8]) -> u32 {
    // The zip CRC-32, bit by bit: independent of the crate the writer uses.
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn our_archives_are_the_ones_torch_save_writes() {
    let Some(dir) = conformance_dir() else {
        eprintln!("skipped: no conformance files (set SHARDPLAN_CONFORMANCE_DIR)");
        return;
    };
    let tp = dir.join("tp2_dp2/checkpoint");
    // `step`: 0-dim int64; `model.embed_tokens.weight`: a (16, 8) f32 chunk.
    check_item_matches_torch(&tp.join("__3_0.distcp"), 3730, 1577, DType::I64, &[]);
    check_item_matches_torch(&tp.join("__0_0.distcp"), 0, 2089, DType::F32, &[16, 8]);
    // A (6, 8) bf16 chunk, and fsdp4_uneven's (11, 16) bf16 remainder.
    check_item_matches_torch(&tp.join("__0_0.distcp"), 2089, 1641, DType::BF16, &[6, 8]);
    let fsdp = dir.join("fsdp4_uneven/checkpoint");
    check_item_matches_torch(&fsdp.join("__3_0.distcp"), 0, 1897, DType::BF16, &[11, 16]);
    check_item_matches_torch(&fsdp.join("__0_0.distcp"), 3666, 2217, DType::F32, &[4, 40]);
}

mod round_trip {
    //! What `write_dcp_folder` writes, `read_dcp` reads back: the same
    //! tensors, chunks and bytes, for random tensors cut into random boxes.

    use proptest::prelude::*;
    use shardplan::DType;
    use shardplan::formats::torch::dcp::read_dcp;
    use shardplan::formats::torch::dcp_write::{DcpChunkData, DcpChunkOut, write_dcp_folder};

    /// A chunk as stored: tensor, offsets, sizes, bytes.
    type Stored = (String, Vec<u64>, Vec<u64>, Vec<u8>);

    const DTYPES: [DType; 5] = [DType::F32, DType::BF16, DType::F16, DType::I64, DType::I32];

    /// Tensors of 0 to 3 dimensions, each cut along its first dimension at
    /// random rows, chunk `c` on rank `c mod ranks`.
    fn folder() -> impl Strategy<Value = (usize, Vec<Vec<DcpChunkData>>)> {
        (
            1usize..=4,
            prop::collection::vec(
                (
                    prop::collection::vec(1u64..=5, 0..=3),
                    0usize..5,
                    prop::collection::vec(any::<u8>(), 0..4),
                ),
                1..=3,
            ),
        )
            .prop_map(|(ranks, tensors)| {
                let mut out: Vec<Vec<DcpChunkData>> = vec![Vec::new(); ranks];
                for (t, (shape, dt, cuts)) in tensors.into_iter().enumerate() {
                    let dtype = DTYPES[dt];
                    let rows = shape.first().copied().unwrap_or(1);
                    let mut at: Vec<u64> = cuts
                        .iter()
                        .map(|c| u64::from(*c) % rows)
                        .filter(|&c| c > 0)
                        .collect();
                    at.extend([0, rows]);
                    at.sort_unstable();
                    at.dedup();
                    if shape.is_empty() {
                        at = vec![0, 1];
                    }
                    for (c, w) in at.windows(2).enumerate() {
                        let (mut offsets, mut sizes) = (vec![0; shape.len()], shape.clone());
                        if !shape.is_empty() {
                            offsets[0] = w[0];
                            sizes[0] = w[1] - w[0];
                        }
                        let n: u64 = sizes.iter().product::<u64>() * dtype.size_bytes();
                        let bytes = (0..n)
                            .map(|i| (i as u8) ^ (t as u8) ^ (c as u8 * 17))
                            .collect();
                        out[c % ranks].push(DcpChunkData {
                            chunk: DcpChunkOut {
                                fqn: format!("t{t}"),
                                dtype,
                                shape: shape.clone(),
                                offsets,
                                sizes,
                            },
                            bytes,
                        });
                    }
                }
                (ranks, out)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn written_folders_read_back((_ranks, folder) in folder()) {
            let dir = std::env::temp_dir().join(format!("shardplan-dcp-rt-{}-{}", std::process::id(), rand_suffix()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            write_dcp_folder(&dir, folder.clone()).unwrap();
            let ck = read_dcp(&dir).unwrap();
            let mut want: Vec<Stored> = folder.iter().flatten()
                .map(|c| (c.chunk.fqn.clone(), c.chunk.offsets.clone(), c.chunk.sizes.clone(), c.bytes.clone()))
                .collect();
            let mut got = Vec::new();
            for t in &ck.tensors {
                let src = folder.iter().flatten().find(|c| c.chunk.fqn == t.name).unwrap();
                prop_assert_eq!((t.dtype, &t.shape), (src.chunk.dtype, &src.chunk.shape));
                for c in &t.chunks {
                    let data = std::fs::read(&c.file).unwrap();
                    let bytes = data[c.byte_offset as usize..(c.byte_offset + c.byte_len) as usize].to_vec();
                    got.push((t.name.clone(), c.offsets.clone(), c.sizes.clone(), bytes));
                }
            }
            want.sort();
            got.sort();
            prop_assert_eq!(got, want);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}

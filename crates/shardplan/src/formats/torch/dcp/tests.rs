//! The reader on the checkpoints PyTorch 2.15 wrote
//! (`../shared/conformance/torch`): every tensor reassembled from its chunk
//! bytes equals `full.safetensors`; every hostile input ends in its error,
//! fast.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::*;
use crate::formats::checkpoint::read_index;
use crate::formats::torch::pickle::PickleFault;
use data::rank_of_name;

fn torch_cases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/torch")
}

/// The shared cases, or `None` (saying so) when they are absent; under CI
/// (`CI=true`) their absence fails.
#[track_caller]
fn shared_or_skip() -> Option<PathBuf> {
    let dir = torch_cases();
    if dir.is_dir() {
        return Some(dir);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{} is missing under CI: the copy of shared/ beside the clone is required",
        dir.display()
    );
    eprintln!(
        "SKIPPED: {} is absent; DCP conformance not checked",
        dir.display()
    );
    None
}

fn read_at(file: &Path, offset: u64, len: u64) -> Vec<u8> {
    let f = File::open(file).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Copies a chunk's row-major bytes into the whole tensor's, marking the
/// elements it covers; an element covered twice fails.
fn scatter(t: &StoredTensor, c: &StoredChunk, full: &mut [u8], covered: &mut [bool]) {
    let width = t.dtype.size_bytes() as usize;
    let bytes = read_at(&c.file, c.byte_offset, c.byte_len);
    let numel: u64 = c.sizes.iter().product();
    for local in 0..numel {
        // The chunk-local index, then the global one, dimension by dimension.
        let (mut rest, mut global) = (local, 0u64);
        let mut idx = vec![0u64; c.sizes.len()];
        for (slot, &size) in idx.iter_mut().zip(&c.sizes).rev() {
            *slot = rest % size;
            rest /= size;
        }
        for ((&dim, &off), &i) in t.shape.iter().zip(&c.offsets).zip(&idx) {
            global = global * dim + off + i;
        }
        let (g, l) = (global as usize, local as usize);
        assert!(!covered[g], "{}: element {g} covered twice", t.name);
        covered[g] = true;
        full[g * width..(g + 1) * width].copy_from_slice(&bytes[l * width..(l + 1) * width]);
    }
}

#[track_caller]
fn check_case(case: &Path, format: SourceFormat, ranks: u64) -> ChunkedCheckpoint {
    let ckpt =
        read_dcp(&case.join("checkpoint")).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    assert_eq!(ckpt.format, format, "{}", case.display());
    assert_eq!(ckpt.ranks, ranks, "{}", case.display());
    let full_path = case.join("full.safetensors");
    let full = read_index(&full_path).unwrap();
    let names: Vec<_> = ckpt.tensors.iter().map(|t| t.name.as_str()).collect();
    let expected: Vec<_> = full.tensors.keys().map(String::as_str).collect();
    assert_eq!(names, expected, "{}", case.display());
    for t in &ckpt.tensors {
        let whole = &full.tensors[&t.name];
        assert_eq!(
            (t.dtype, &t.shape),
            (whole.dtype, &whole.shape),
            "{}",
            t.name
        );
        let mut bytes = vec![0u8; whole.len as usize];
        let mut covered = vec![false; t.shape.iter().product::<u64>() as usize];
        for c in &t.chunks {
            assert_eq!(
                c.byte_len,
                c.sizes.iter().product::<u64>() * t.dtype.size_bytes()
            );
            assert!(c.rank < ckpt.ranks);
            scatter(t, c, &mut bytes, &mut covered);
        }
        assert!(
            covered.iter().all(|&c| c),
            "{}: not every element stored",
            t.name
        );
        assert!(
            bytes == read_at(&full_path, whole.offset, whole.len),
            "{}: reassembled bytes differ from full.safetensors",
            t.name
        );
    }
    ckpt
}

#[test]
fn fsdp4_uneven_reassembles_exactly() {
    let Some(root) = shared_or_skip() else { return };
    let ckpt = check_case(&root.join("fsdp4_uneven"), SourceFormat::DcpTorchSave, 4);
    let embed = ckpt
        .tensors
        .iter()
        .find(|t| t.name == "model.embed_tokens.weight")
        .unwrap();
    let rows: Vec<u64> = embed.chunks.iter().map(|c| c.sizes[0]).collect();
    assert_eq!(rows, [13, 13, 13, 11]);
    let ranks: Vec<u64> = embed.chunks.iter().map(|c| c.rank).collect();
    assert_eq!(ranks, [0, 1, 2, 3]);
}

#[test]
fn tp2_dp2_reassembles_exactly_with_a_scalar() {
    let Some(root) = shared_or_skip() else { return };
    let ckpt = check_case(&root.join("tp2_dp2"), SourceFormat::DcpTorchSave, 4);
    let step = ckpt.tensors.iter().find(|t| t.name == "step").unwrap();
    assert_eq!((step.dtype, step.shape.as_slice()), (DType::I64, &[][..]));
    let [c] = step.chunks.as_slice() else {
        panic!("step has {} chunks", step.chunks.len())
    };
    assert!(c.offsets.is_empty() && c.sizes.is_empty());
    assert_eq!((c.byte_len, c.rank), (8, 3));
}

#[test]
fn safetensors_items_reassemble_exactly() {
    let Some(root) = shared_or_skip() else { return };
    let ckpt = check_case(
        &root.join("safetensors_format_tp4"),
        SourceFormat::DcpSafetensors,
        4,
    );
    let b = ckpt.tensors.iter().find(|t| t.name == "b").unwrap();
    let sizes: Vec<u64> = b.chunks.iter().map(|c| c.sizes[0]).collect();
    assert_eq!(sizes, [3, 3, 3, 1]);
}

/// Reads a hostile folder, checking it fails within a second.
#[track_caller]
fn hostile(name: &str) -> Option<DcpError> {
    let root = shared_or_skip()?;
    let start = Instant::now();
    let result = read_dcp(&root.join("hostile").join(name));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{name}: took {:?}",
        start.elapsed()
    );
    match result {
        Ok(c) => panic!("{name}: accepted with {} tensors", c.tensors.len()),
        Err(e) => Some(e),
    }
}

fn code(e: &DcpError) -> String {
    miette::Diagnostic::code(e)
        .map(|c| c.to_string())
        .unwrap_or_default()
}

#[test]
fn hostile_os_system_is_refused_unrun() {
    let Some(e) = hostile("os_system_metadata") else {
        return;
    };
    let DcpError::Pickle(p) = &e else {
        panic!("{e}")
    };
    assert!(
        matches!(&p.kind, PickleFault::UnknownGlobal { global } if global == "posix.system"),
        "{e}"
    );
    assert!(p.file.ends_with("os_system_metadata/.metadata"));
    assert_eq!(code(&e), "shardplan::formats::pickle::unknown_global");
}

#[test]
fn hostile_eval_is_refused_unrun() {
    let Some(e) = hostile("eval_global") else {
        return;
    };
    let DcpError::Pickle(p) = &e else {
        panic!("{e}")
    };
    assert!(
        matches!(&p.kind, PickleFault::UnknownGlobal { global } if global == "builtins.eval"),
        "{e}"
    );
}

#[test]
fn hostile_truncated_metadata_is_refused() {
    let Some(e) = hostile("truncated_metadata") else {
        return;
    };
    assert!(
        matches!(&e, DcpError::Pickle(p) if matches!(p.kind, PickleFault::Truncated { .. })),
        "{e}"
    );
    assert_eq!(code(&e), "shardplan::formats::pickle::truncated");
}

#[test]
fn hostile_deep_nesting_is_refused() {
    let Some(e) = hostile("deep_nesting") else {
        return;
    };
    assert!(
        matches!(&e, DcpError::Pickle(p) if matches!(p.kind, PickleFault::TooDeep { .. })),
        "{e}"
    );
}

#[test]
fn hostile_short_distcp_names_file_tensor_and_range() {
    let Some(e) = hostile("short_distcp") else {
        return;
    };
    let DcpError::ShortFile {
        file,
        tensor,
        start,
        end,
        len,
    } = &e
    else {
        panic!("{e}")
    };
    assert!(file.ends_with("__1_0.distcp"), "{e}");
    assert!(!tensor.is_empty());
    assert_eq!(*len, 9221);
    assert!(start <= end && *end > *len, "{e}");
    assert_eq!(code(&e), "shardplan::formats::dcp::short_file");
}

#[test]
fn a_folder_without_metadata_is_refused() {
    let e = read_dcp(Path::new("/nonexistent/dcp")).unwrap_err();
    assert!(matches!(e, DcpError::NoMetadata { .. }), "{e}");
}

#[test]
fn rank_names() {
    assert_eq!(rank_of_name("__3_0.distcp"), Some(3));
    assert_eq!(rank_of_name("__12_7.distcp"), Some(12));
    assert_eq!(rank_of_name("shard.distcp"), None);
    assert_eq!(rank_of_name("__x_0.distcp"), None);
}

#[test]
fn real_metadata_round_trips_through_the_fuzz_pickler() {
    let Some(root) = shared_or_skip() else { return };
    for case in ["fsdp4_uneven", "tp2_dp2", "safetensors_format_tp4"] {
        let path = root.join(case).join("checkpoint/.metadata");
        let bytes = std::fs::read(&path).unwrap();
        let limits = PickleLimits::STANDARD;
        let value = unpickle(&path, &bytes, DCP_METADATA_GLOBALS, &limits).unwrap();
        let again = crate::fuzzing::pickle_value(&value);
        let back = unpickle(&path, &again, DCP_METADATA_GLOBALS, &limits).unwrap();
        assert_eq!(value, back, "{case}");
        crate::fuzzing::dcp_pickle(&bytes);
        crate::fuzzing::torch_zip(&bytes);
    }
}

//! Resharding the PyTorch and Hugging Face cases of
//! `../shared/conformance/torch`: every case reads back exactly its
//! `full.safetensors`, and reshards to Hugging Face, DCP, safetensors and
//! MindSpore ckpt under strategies of more, fewer and uneven ranks, each
//! output holding exactly the slices its layout names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardplan::formats::checkpoint::read_index;
use shardplan::formats::hf::read_hf_folder;
use shardplan::formats::torch::dcp::read_dcp;
use shardplan::reshard::{
    LayoutSource, OutputFormat, Prepared, ReshardConfig, WriteConfig, prepare,
};
use shardplan::{
    DType, DeviceMesh, DimSplit, LayoutConfig, Region, SplitPolicy, Strategy, TensorLayout,
};

use crate::hf_formats::{reassemble, torch_cases, whole_tensors};

type Tensors = BTreeMap<String, (DType, Vec<u64>, Vec<u8>)>;

/// Each case's checkpoint folder and its whole tensors.
fn cases() -> Vec<(String, PathBuf, Tensors)> {
    let Some(root) = torch_cases() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for case in crate::common::case_dirs(&root) {
        let src = ["checkpoint", "model"]
            .iter()
            .map(|s| case.join(s))
            .find(|p| p.is_dir())
            .unwrap();
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        out.push((name, src, whole_tensors(&case.join("full.safetensors"))));
    }
    assert_eq!(out.len(), 5, "the five torch cases");
    out
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardplan-torch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn prepared(src: &Path, dst: LayoutSource) -> Prepared {
    let mut cfg = ReshardConfig::new(src, LayoutSource::SingleDevice, dst);
    cfg.any_device_count = true;
    prepare(&cfg).unwrap_or_else(|e| panic!("{}: {e:?}", src.display()))
}

/// A destination of `ranks` ranks: dimension 0 of every tensor cut by
/// `torch.chunk` (empty and uneven blocks included), scalars replicated.
fn rows_over(ranks: u64, full: &Tensors) -> Strategy {
    let mesh = Arc::new(DeviceMesh::new([("r", ranks)]).unwrap());
    let infos: Vec<shardplan::TensorInfo> = full
        .iter()
        .map(|(n, (d, s, _))| shardplan::TensorInfo {
            name: n.clone(),
            dtype: *d,
            shape: s.clone(),
        })
        .collect();
    let layouts = infos
        .iter()
        .map(|t| {
            let mut dims = vec![DimSplit::none(); t.shape.len()];
            if let Some(d0) = dims.first_mut() {
                *d0 = DimSplit {
                    axes: vec!["r".into()],
                    policy: SplitPolicy::Chunk,
                };
            }
            let cfg = LayoutConfig::new(dims);
            TensorLayout::new(mesh.clone(), &t.shape, &cfg).unwrap()
        })
        .collect();
    Strategy::new(format!("rows{ranks}"), mesh, infos, layouts).unwrap()
}

/// The bytes of `region` of a whole row-major tensor.
fn slice_of(shape: &[u64], width: usize, data: &[u8], region: &Region) -> Vec<u8> {
    let count: u64 = region.extent().iter().product();
    let mut out = Vec::with_capacity(count as usize * width);
    for k in 0..count {
        let mut rest = k;
        let mut idx = vec![0u64; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = region.offset()[d] + rest % region.extent()[d];
            rest /= region.extent()[d];
        }
        let flat = idx.iter().zip(shape).fold(0u64, |a, (i, s)| a * s + i) as usize;
        out.extend_from_slice(&data[flat * width..(flat + 1) * width]);
    }
    out
}

#[test]
fn every_case_reads_back_its_full_tensors() {
    for (name, src, full) in cases() {
        let p = prepared(&src, LayoutSource::SingleDevice);
        let slices = p.rank_slices(0).unwrap();
        let mut bufs: Vec<Vec<u8>> = slices.iter().map(|s| vec![0; s.bytes as usize]).collect();
        let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        p.read_rank_into(0, &mut refs).unwrap();
        let got: Tensors = slices
            .into_iter()
            .zip(bufs)
            .map(|(s, b)| (s.name, (s.dtype, s.shape, b)))
            .collect();
        assert_eq!(got, full, "{name}");
    }
}

#[test]
fn every_case_reshards_to_a_hugging_face_folder_and_a_dcp_folder() {
    for (name, src, full) in cases() {
        // One rank of whole tensors, small shards: several files.
        let out = scratch(&format!("{name}-hf"));
        let p = prepared(&src, LayoutSource::SingleDevice);
        let mut w = WriteConfig::new(&out);
        w.format = Some(OutputFormat::HuggingFace);
        w.max_shard_bytes = 1000;
        let o = p.write_rank(&w, 0, &mut |_| {}).unwrap();
        assert!(!o.resumed && !o.files.is_empty(), "{name}");
        assert_eq!(
            reassemble(&read_hf_folder(&out).unwrap()),
            full,
            "{name} hf"
        );
        // Written again: found complete.
        assert!(p.write_rank(&w, 0, &mut |_| {}).unwrap().resumed);
        let _ = std::fs::remove_dir_all(&out);
        // A DCP folder of 3 ranks (uneven rows): read back whole.
        for ranks in [1, 3] {
            let out = scratch(&format!("{name}-dcp{ranks}"));
            let p = prepared(
                &src,
                LayoutSource::Strategy(Box::new(rows_over(ranks, &full))),
            );
            let mut w = WriteConfig::new(&out);
            w.format = Some(OutputFormat::Dcp);
            for r in 0..ranks {
                p.write_rank(&w, r, &mut |_| {}).unwrap();
            }
            assert_eq!(
                reassemble(&read_dcp(&out).unwrap()),
                full,
                "{name} dcp {ranks}"
            );
            let _ = std::fs::remove_dir_all(&out);
        }
    }
}

#[test]
fn every_case_reshards_to_per_rank_checkpoints_of_other_shapes() {
    for (name, src, full) in cases() {
        for ranks in [2, 3, 5] {
            let dst = rows_over(ranks, &full);
            let p = prepared(&src, LayoutSource::Strategy(Box::new(dst.clone())));
            for format in [OutputFormat::Safetensors, OutputFormat::Ckpt] {
                let out = scratch(&format!("{name}-{}-{ranks}", format.name()));
                let mut w = WriteConfig::new(&out);
                w.format = Some(format);
                for r in 0..ranks {
                    let o = p.write_rank(&w, r, &mut |_| {}).unwrap();
                    let idx = read_index(&o.path).unwrap();
                    let bytes = std::fs::read(&o.path).unwrap();
                    for (t, l) in dst.tensors().iter().zip(dst.layouts()) {
                        let region = l.region_of(r).unwrap();
                        let e = &idx.tensors[&t.name];
                        assert_eq!(e.shape, region.extent(), "{name} {} rank {r}", t.name);
                        let (dtype, shape, data) = &full[&t.name];
                        let want = slice_of(shape, dtype.size_bytes() as usize, data, &region);
                        assert_eq!(
                            &bytes[e.offset as usize..(e.offset + e.len) as usize],
                            want.as_slice(),
                            "{name} {} {} rank {r} of {ranks}",
                            format.name(),
                            t.name
                        );
                    }
                }
                let _ = std::fs::remove_dir_all(&out);
            }
        }
    }
}

/// `explain` on a DCP source: the chunks are a layout like any other, their
/// edges the cuts of each dimension.
#[test]
fn explain_names_the_cuts_of_a_dcp_source() {
    let Some(root) = torch_cases() else { return };
    let src = root.join("fsdp4_uneven/checkpoint");
    let full = whole_tensors(&root.join("fsdp4_uneven/full.safetensors"));
    let p = prepared(&src, LayoutSource::Strategy(Box::new(rows_over(3, &full))));
    let t = p
        .plan()
        .tensors
        .iter()
        .find(|t| t.name == "model.embed_tokens.weight")
        .unwrap();
    let text = shardplan::report::explain_tensor(p.src(), p.dst(), t);
    let dim0 = text
        .lines()
        .find(|l| l.trim_start().starts_with("dim 0"))
        .unwrap();
    assert_eq!(
        dim0.trim(),
        "dim 0 (size 50): source cut by its boxes into 4 block(s) of 11 or 13; \
         destination split over r into 3 block(s) of 16 or 17; the cuts differ: blocks are regrouped"
    );
    assert!(text.contains("boxes(4 distinct on 4 rank(s))"), "{text}");
}

/// A layout given box by box has no spec rule: writing it is refused, not
/// written as a grid that would read back as another layout.
#[test]
fn a_spec_refuses_to_write_boxes() {
    let Some(root) = torch_cases() else { return };
    let p = prepared(&root.join("tp2_dp2/checkpoint"), LayoutSource::SingleDevice);
    let src = p.src().clone();
    let spec = shardplan::spec::Spec::from_parts(
        vec![("ranks".into(), src.mesh().clone())],
        vec![("dcp".into(), "ranks".into(), src)],
        None,
    )
    .unwrap();
    let err = spec.to_yaml("").unwrap_err();
    assert_eq!(err.strategy, "dcp");
    assert_eq!(err.fault, shardplan::spec::write::WriteFault::Boxes);
}

//! MindSpore checkpoints: .ckpt and safetensors copies agree, written
//! checkpoints read back, bad ones are named by fault.

use super::*;
use shardplan::formats::checkpoint::{
    CheckpointFault, CheckpointFormat, CheckpointWriter, read_index,
};
use shardplan::formats::mindspore::rank_files;

fn bytes_of(path: &Path, e: &shardplan::formats::checkpoint::TensorEntry) -> Vec<u8> {
    let all = std::fs::read(path).unwrap();
    all[e.offset as usize..(e.offset + e.len) as usize].to_vec()
}

/// The .ckpt and safetensors copies of every source rank hold the same
/// tensors, bytes and shapes.
#[test]
fn ckpt_and_safetensors_agree() {
    let mut n = 0;
    for dir in conformance_cases() {
        let (Ok(ckpt), Ok(st)) = (
            rank_files(&dir.join("src")),
            rank_files(&dir.join("src_safetensors")),
        ) else {
            continue;
        };
        for (rank, files) in &ckpt {
            let a = read_index(&files[0]).unwrap();
            let b = read_index(&st[rank][0]).unwrap();
            assert_eq!(
                a.tensors.keys().collect::<Vec<_>>(),
                b.tensors.keys().collect::<Vec<_>>()
            );
            for (name, ea) in &a.tensors {
                let eb = &b.tensors[name];
                assert_eq!(
                    (ea.dtype, &ea.shape),
                    (eb.dtype, &eb.shape),
                    "{}",
                    dir.display()
                );
                assert_eq!(bytes_of(&a.path, ea), bytes_of(&b.path, eb));
                n += 1;
            }
        }
    }
    assert!(n > 0);
}

fn write(
    dir: &Path,
    format: CheckpointFormat,
    tensors: &[(&str, DType, Vec<u64>, Vec<u8>)],
) -> PathBuf {
    let path = dir.join(format!("t.{}", format.extension()));
    let f = std::fs::File::create(&path).unwrap();
    let decl = tensors
        .iter()
        .map(|(n, d, s, _)| (n.to_string(), *d, s.clone()))
        .collect();
    let mut w = CheckpointWriter::new(f, format, decl).unwrap();
    for (_, _, _, data) in tensors {
        w.write_tensor(data).unwrap();
    }
    w.finish().unwrap();
    path
}

#[test]
fn written_checkpoints_read_back() {
    let dir = std::env::temp_dir().join(format!("shardplan-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tensors = vec![
        (
            "w",
            DType::F32,
            vec![2u64, 3],
            (0u8..24).collect::<Vec<u8>>(),
        ),
        ("model.layer-norm.b", DType::BF16, vec![4], vec![7u8; 8]),
        ("step", DType::I64, vec![], 42u64.to_le_bytes().to_vec()),
        ("mask", DType::Bool, vec![3], vec![1, 0, 1]),
    ];
    for format in [CheckpointFormat::Ckpt, CheckpointFormat::Safetensors] {
        let path = write(&dir, format, &tensors);
        let idx = read_index(&path).unwrap();
        for (name, dtype, shape, data) in &tensors {
            let e = &idx.tensors[*name];
            assert_eq!((e.dtype, &e.shape), (*dtype, shape));
            assert_eq!(&bytes_of(&path, e), data);
        }
        if format == CheckpointFormat::Safetensors {
            // The reference reader agrees.
            let bytes = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(st.tensor("w").unwrap().data(), &tensors[0].3[..]);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_checkpoints_name_the_fault() {
    let dir = std::env::temp_dir().join(format!("shardplan-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good_st = write(
        &dir,
        CheckpointFormat::Safetensors,
        &[("w", DType::F32, vec![2, 2], vec![0u8; 16])],
    );
    let st = std::fs::read(&good_st).unwrap();
    let good_ck = write(
        &dir,
        CheckpointFormat::Ckpt,
        &[("w", DType::F32, vec![2, 2], vec![0u8; 16])],
    );
    let ck = std::fs::read(&good_ck).unwrap();
    let mut lying = st.clone();
    let hdr = String::from_utf8_lossy(&st[8..]).replace("[2,2]", "[2,3]");
    lying.truncate(8);
    lying.extend_from_slice(hdr.as_bytes());
    // Each fault by its code, the file named.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "trunc.safetensors",
            st[..st.len() - 4].to_vec(),
            "offsets_outside",
        ),
        ("short.safetensors", st[..5].to_vec(), "short_header"),
        (
            "magic.safetensors",
            [&st[..8], b"[".as_slice(), &st[9..]].concat(),
            "magic",
        ),
        (
            "huge.safetensors",
            [&u64::MAX.to_le_bytes()[..], &st[8..]].concat(),
            "header_past_end",
        ),
        ("lying.safetensors", lying, "byte_count"),
        ("trunc.ckpt", ck[..ck.len() - 3].to_vec(), "ckpt_record"),
        ("empty.ckpt", Vec::new(), "empty"),
        ("junk.ckpt", vec![0xff; 10], "ckpt_record"),
        ("name.txt", Vec::new(), "extension"),
    ];
    for (name, bytes, fault) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = read_index(&p).unwrap_err();
        assert_eq!(err.file, p.display().to_string());
        assert_eq!(
            code_of(&err),
            format!("shardplan::formats::checkpoint::{fault}"),
            "{name}: {err}"
        );
    }
    let lying = read_index(&dir.join("lying.safetensors")).unwrap_err();
    assert!(
        matches!(
            lying.fault,
            CheckpointFault::ByteCount {
                needs: Some(24),
                holds: 16,
                ..
            }
        ),
        "{lying}"
    );
    // Rank folders: a gap is named.
    let ranks = dir.join("ranks");
    for r in [0, 2] {
        std::fs::create_dir_all(ranks.join(format!("rank_{r}"))).unwrap();
        std::fs::copy(&good_ck, ranks.join(format!("rank_{r}/c.ckpt"))).unwrap();
    }
    let err = rank_files(&ranks).unwrap_err();
    assert!(
        matches!(err.fault, CheckpointFault::RankGap { after: 0, next: 2 }),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

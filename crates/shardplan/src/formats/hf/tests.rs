use std::path::Path;

use super::write::assign_shards;
use super::*;
use crate::formats::checkpoint::{CheckpointFormat, parse_index};
use crate::{DType, TensorInfo};

fn info(name: &str, shape: &[u64], dtype: DType) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        shape: shape.to_vec(),
        dtype,
    }
}

#[track_caller]
fn check_assign(sizes: &[u64], max: u64, expect: &[&[usize]]) {
    let got = assign_shards(sizes, max);
    let expect: Vec<Vec<usize>> = expect.iter().map(|s| s.to_vec()).collect();
    assert_eq!(got, expect, "sizes {sizes:?} max {max}");
}

#[test]
fn shards_follow_the_hub_rule() {
    // The example of huggingface_hub's docstring: [6, 6, 2, 6, 2, 2] at 10
    // gives [6], [6+2], [6+2+2].
    check_assign(&[6, 6, 2, 6, 2, 2], 10, &[&[0], &[1, 2], &[3, 4, 5]]);
    // Exactly at the limit stays in the shard.
    check_assign(&[5, 5, 5], 10, &[&[0, 1], &[2]]);
    // A tensor over the limit is alone, and closed at once: the open shard
    // continues after it and is numbered after it.
    check_assign(&[2, 12, 2], 10, &[&[1], &[0, 2]]);
    check_assign(&[12], 10, &[&[0]]);
    check_assign(&[0, 0], 0, &[&[0, 1]]);
    check_assign(
        &[u64::MAX, 1, u64::MAX - 1],
        u64::MAX - 1,
        &[&[0], &[1], &[2]],
    );
}

#[test]
fn file_names_and_index() {
    let one = HfLayout::new(&[info("w", &[4], DType::F32)], 100).unwrap();
    assert_eq!(one.shards()[0].file_name(), "model.safetensors");
    assert!(!one.is_sharded());
    let tensors = [
        info("b", &[10], DType::F32),
        info("a", &[10], DType::F32),
        info("c", &[10], DType::BF16),
    ];
    let layout = HfLayout::new(&tensors, 60).unwrap();
    let names: Vec<&str> = layout.shards().iter().map(|s| s.file_name()).collect();
    assert_eq!(
        names,
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    assert_eq!(layout.total_size(), 100);
    let json = layout.index_json();
    assert_eq!(
        json,
        "{\n  \"metadata\": {\n    \"total_size\": 100\n  },\n  \"weight_map\": {\n    \"a\": \"model-00002-of-00002.safetensors\",\n    \"b\": \"model-00001-of-00002.safetensors\",\n    \"c\": \"model-00002-of-00002.safetensors\"\n  }\n}\n"
    );
    assert_eq!(
        parse_index_json(Path::new("i"), json.as_bytes()).unwrap(),
        layout.index()
    );
}

#[test]
fn headers_read_back_with_the_crate_reader() {
    let tensors = [
        info("z", &[3], DType::U8),
        info("m", &[2, 3], DType::BF16),
        info("a", &[5], DType::F64),
        info("s", &[], DType::I32),
    ];
    let layout = HfLayout::new(&tensors, 1 << 20).unwrap();
    let shard = &layout.shards()[0];
    let header = shard.header();
    assert_eq!(header.len() % 8, 0);
    let n = u64::from_le_bytes(header[..8].try_into().unwrap());
    assert_eq!(n as usize + 8, header.len());
    // Widest first, then by name; each aligned to its width.
    let order: Vec<&str> = shard.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(order, ["a", "s", "m", "z"]);
    for t in shard.tensors() {
        assert_eq!(t.data_offset % t.dtype.size_bytes(), 0, "{}", t.name);
    }
    let mut file = header.to_vec();
    file.resize(shard.file_len() as usize, 7);
    let index = parse_index(Path::new("s"), &file, CheckpointFormat::Safetensors).unwrap();
    for t in shard.tensors() {
        let e = &index.tensors[&t.name];
        assert_eq!(
            (e.offset, e.len, &e.shape, e.dtype),
            (t.data_offset, t.byte_len, &t.shape, t.dtype)
        );
    }
}

#[test]
fn layouts_refuse_bad_names() {
    assert!(matches!(HfLayout::new(&[], 10), Err(HfError::NoTensors)));
    let twice = [info("a", &[1], DType::U8), info("a", &[1], DType::U8)];
    assert!(matches!(
        HfLayout::new(&twice, 10),
        Err(HfError::BadTensorName { .. })
    ));
    let reserved = [info("__metadata__", &[1], DType::U8)];
    assert!(matches!(
        HfLayout::new(&reserved, 10),
        Err(HfError::BadTensorName { .. })
    ));
    let huge = [info("h", &[u64::MAX, 2], DType::U8)];
    assert!(matches!(
        HfLayout::new(&huge, 10),
        Err(HfError::Overflow { .. })
    ));
}

#[test]
fn shard_sizes_parse() {
    for (text, bytes) in [
        ("5GB", 5_000_000_000),
        ("500MB", 500_000_000),
        ("24KB", 24_000),
        ("24kb", 24_000),
        ("1GiB", 1 << 30),
        ("2 MiB", 2 << 20),
        ("1TB", 1_000_000_000_000),
        (" 1.5GB ", 1_500_000_000),
        (".5KiB", 512),
        ("1.0009KB", 1000),
        ("123", 123),
        ("7B", 7),
    ] {
        assert_eq!(parse_shard_size(text).ok(), Some(bytes), "{text}");
    }
    for text in [
        "",
        "GB",
        "5XB",
        "1.2.3GB",
        "0",
        "0KB",
        "99999999999TB",
        "-5GB",
        "5 G B",
    ] {
        assert!(
            matches!(parse_shard_size(text), Err(HfError::ShardSize { .. })),
            "{text}"
        );
    }
}

#[track_caller]
fn index_err(json: &str) -> HfError {
    parse_index_json(Path::new("i.json"), json.as_bytes()).unwrap_err()
}

#[test]
fn index_json_checks() {
    let ok = parse_index_json(
        Path::new("i"),
        br#"{"metadata": {"total_size": 12.0, "total_parameters": 3}, "weight_map": {"a": "x.safetensors"}}"#,
    )
    .unwrap();
    assert_eq!(ok.total_size, Some(12));
    let no_meta = parse_index_json(Path::new("i"), br#"{"weight_map": {}}"#).unwrap();
    assert_eq!(no_meta.total_size, None);
    for bad in [
        "../x.safetensors",
        "/etc/x.safetensors",
        "sub/x.safetensors",
        "sub\\x.safetensors",
        "..",
        "",
        "C:x.safetensors",
        "x.bin",
    ] {
        let json = serde_json::json!({"weight_map": {"a": bad}}).to_string();
        assert!(
            matches!(index_err(&json), HfError::BadShardName { .. }),
            "{bad}"
        );
    }
    assert!(matches!(
        index_err(r#"{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}"#),
        HfError::DuplicateTensor { .. }
    ));
    for bad in [
        "[]",
        "{}",
        r#"{"weight_map": []}"#,
        r#"{"weight_map": {"a": 3}}"#,
        r#"{"metadata": {"total_size": -1}, "weight_map": {}}"#,
        r#"{"metadata": {"total_size": 1.5}, "weight_map": {}}"#,
        "{\"weight_map\": {",
    ] {
        assert!(matches!(index_err(bad), HfError::IndexJson { .. }), "{bad}");
    }
    let big = vec![b' '; MAX_INDEX_BYTES as usize + 1];
    assert!(matches!(
        parse_index_json(Path::new("i"), &big),
        Err(HfError::IndexTooLarge { .. })
    ));
}

#[test]
fn sharding_info_checks() {
    let p = Path::new("s");
    let info = parse_sharding_info(
        p,
        r#"{"w": {"saved_offsets": [4, 0], "extra": 1}, "n": {"saved_offsets": []}}"#,
    )
    .unwrap();
    assert_eq!(info["w"], [4, 0]);
    assert!(info["n"].is_empty());
    for bad in [
        "",
        "[]",
        r#"{"w": {}}"#,
        r#"{"w": {"saved_offsets": [-1]}}"#,
        r#"{"w": {"saved_offsets": "0"}}"#,
        r#"{"w": [0]}"#,
    ] {
        assert!(
            matches!(
                parse_sharding_info(p, bad),
                Err(HfError::ShardingInfoJson { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn shard_file_ranks() {
    use super::dcp_hf::rank_of_shard_name as r;
    assert_eq!(r("shard-00001-model-00001-of-00001.safetensors"), Some(0));
    assert_eq!(r("shard-00012-model-00002-of-00003.safetensors"), Some(11));
    assert_eq!(r("shard-00000-model.safetensors"), None);
    assert_eq!(r("shard-x-model.safetensors"), None);
    assert_eq!(r("shard-.safetensors"), None);
}

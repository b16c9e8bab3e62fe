//! The checks the fuzz targets run, shared with the regression tests that
//! replay stored inputs (`tests/fuzz_regressions.rs`). Each panics with a
//! message naming the input when an invariant breaks; none may panic
//! otherwise.

use crate::DType;
use crate::formats::checkpoint::{CheckpointFormat, parse_index};
use crate::formats::hf::{HfIndex, parse_index_json, parse_sharding_info};
use crate::formats::mindspore_strategy::{
    StrategyFormat, parse_strategy_file, write_strategy_file,
};
use crate::formats::plan_json::{from_json, write_json};
use crate::spec::parse_spec;

/// YAML spec: parsing never panics; a valid spec written back with one rule
/// per tensor reads as the same layouts.
pub fn spec_round_trip(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (spec, diags) = parse_spec("fuzz.yaml", text);
    let Some(spec) = spec else {
        assert!(
            diags.iter().any(|d| d.is_error()),
            "no spec and no error for {text:?}"
        );
        return;
    };
    // Names with glob characters cannot be written; that is an error, not a panic.
    let Ok(yaml) = spec.to_yaml("") else { return };
    let (again, diags) = parse_spec("written.yaml", &yaml);
    let again =
        again.unwrap_or_else(|| panic!("written spec refused: {diags:?}\n{yaml}\nfrom {text:?}"));
    for (name, s) in spec.strategies() {
        for (t, l) in s.tensors().iter().zip(s.layouts()) {
            let l2 = again.strategies()[name]
                .layout(&t.name)
                .expect("tensor written");
            assert!(
                l.same_placement(l2),
                "{name} {}: {l} vs {l2}; input {text:?}",
                t.name
            );
        }
    }
}

/// MindSpore strategy files: reading never panics; a file that reads and
/// fits its recorded shapes, written in both forms, reads back the same.
pub fn strategy_file_round_trip(data: &[u8]) {
    let Ok(file) = parse_strategy_file("fuzz", data) else {
        return;
    };
    let Ok(tensors) = file.tensors(DType::F32) else {
        return;
    };
    // Small enough to compare rank by rank.
    if tensors.iter().any(|t| {
        t.shape
            .iter()
            .try_fold(1u64, |a, &b| a.checked_mul(b))
            .is_none_or(|n| n > 1 << 16)
    }) {
        return;
    }
    let Ok(strategy) = file.to_strategy("s", &tensors) else {
        return;
    };
    if strategy.mesh().rank_count() > 256 {
        return;
    }
    for format in [StrategyFormat::Json, StrategyFormat::Protobuf] {
        let Ok(bytes) = write_strategy_file(&strategy, format) else {
            continue;
        };
        let back = parse_strategy_file("written", &bytes).expect("written file reads");
        let back = back.to_strategy("s", &tensors).expect("written file fits");
        for t in &tensors {
            let (a, b) = (
                strategy.layout(&t.name).expect("laid out"),
                back.layout(&t.name).expect("laid out"),
            );
            assert!(a.same_placement(b), "{format:?} {}: {a} vs {b}", t.name);
        }
    }
}

/// Checkpoint headers: the first byte picks the format (even: .ckpt, odd:
/// safetensors); indexing never panics, and every tensor reported lies
/// inside the bytes with a size matching dtype and shape.
pub fn checkpoint_index(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let format = if first & 1 == 0 {
        CheckpointFormat::Ckpt
    } else {
        CheckpointFormat::Safetensors
    };
    let Ok(idx) = parse_index(std::path::Path::new("fuzz"), rest, format) else {
        return;
    };
    for e in idx.tensors.values() {
        let end = e.offset.checked_add(e.len).expect("no overflow");
        assert!(end <= rest.len() as u64, "{} past the end", e.name);
        let n: u64 = e.shape.iter().product();
        assert_eq!(n * e.dtype.size_bytes(), e.len, "{}", e.name);
    }
}

/// Hugging Face index files and `DCP_SHARDING_INFO` strings: the first
/// byte picks the parser (even: `model.safetensors.index.json`, odd:
/// sharding info); parsing never panics, and what parses, written back as
/// JSON, parses the same.
pub fn hf_index(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let path = std::path::Path::new("fuzz");
    if first & 1 == 0 {
        let Ok(index) = parse_index_json(path, rest) else {
            return;
        };
        let text = index.to_json();
        let again: HfIndex = parse_index_json(path, text.as_bytes())
            .unwrap_or_else(|e| panic!("a written index is refused: {e}\n{text}\nfrom {rest:?}"));
        assert_eq!(index, again, "from {rest:?}");
    } else {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let Ok(info) = parse_sharding_info(path, text) else {
            return;
        };
        let written: serde_json::Map<String, serde_json::Value> = info
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!({ "saved_offsets": v })))
            .collect();
        let written = serde_json::Value::Object(written).to_string();
        let again = parse_sharding_info(path, &written)
            .unwrap_or_else(|e| panic!("written sharding info is refused: {e}\n{written}"));
        assert_eq!(info, again, "from {text:?}");
    }
}

/// JSON plans: reading never panics; a plan that reads prints and reads
/// back equal.
pub fn plan_json_round_trip(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(plan) = from_json("fuzz.json", text) else {
        return;
    };
    let again = from_json("printed.json", &write_json(&plan)).expect("a printed plan reads");
    assert_eq!(plan, again);
}

//! The checks the fuzz targets run, shared with the regression test that
//! replays stored inputs (`crates/shardplan/tests/it/fuzz_regressions.rs`).
//! Each panics with a message naming the input when an invariant breaks;
//! none may panic otherwise.

use std::path::Path;

use crate::DType;
use crate::formats::checkpoint::{CheckpointFormat, parse_index};
use crate::formats::hf::{HfIndex, parse_index_json, parse_sharding_info};
use crate::formats::mindspore::strategy::{
    StrategyFormat, parse_strategy_file, write_strategy_file,
};
use crate::formats::plan_json::{from_json, write_json};
use crate::formats::torch::pickle::{
    DCP_METADATA_GLOBALS, PickleLimits, TORCH_SAVE_GLOBALS, Value, unpickle,
};
use crate::formats::torch::zip::read_torch_save_item;
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

/// Small budgets, so that the fuzzer reaches every limit.
const FUZZ_PICKLE_LIMITS: PickleLimits = PickleLimits {
    max_input: 1 << 16,
    max_stack: 256,
    max_depth: 32,
    max_memo: 256,
    max_len: 256,
    max_values: 4096,
};

/// The restricted pickle machine: arbitrary bytes never panic, an error
/// names an offset inside the input, and an accepted value, pickled again
/// by [`pickle_value`], decodes to itself.
pub fn dcp_pickle(data: &[u8]) {
    for allowed in [DCP_METADATA_GLOBALS, TORCH_SAVE_GLOBALS] {
        let value = match unpickle(Path::new("fuzz"), data, allowed, &FUZZ_PICKLE_LIMITS) {
            Ok(v) => v,
            Err(e) => {
                assert!(
                    e.offset as usize <= data.len(),
                    "{e} is past the input {data:?}"
                );
                continue;
            }
        };
        if has_nan(&value) {
            continue;
        }
        let again = pickle_value(&value);
        let back = unpickle(Path::new("again"), &again, allowed, &PickleLimits::STANDARD)
            .unwrap_or_else(|e| panic!("{e}: re-pickled {value:?} from {data:?}"));
        assert_eq!(value, back, "round trip of {data:?}");
    }
}

/// The one tensor of a torch.save archive: arbitrary bytes never panic,
/// and an accepted tensor's bytes lie inside the input and match its
/// shape and dtype; an archive the writer makes reads back as written.
pub fn torch_zip(data: &[u8]) {
    torch_zip_round_trip(data);
    let Ok(t) = read_torch_save_item(Path::new("fuzz"), 0, "fuzz", data) else {
        return;
    };
    let end = t.data_offset.checked_add(t.data_len);
    assert!(
        end.is_some_and(|e| e <= data.len() as u64),
        "{t:?} outside {} bytes",
        data.len()
    );
    let numel = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    assert_eq!(
        numel.and_then(|n| n.checked_mul(t.dtype.size_bytes())),
        Some(t.data_len),
        "{t:?}"
    );
}

/// The archive writer and reader agree: an archive written for a dtype and
/// shape taken from the input (its data the input's bytes, repeated) reads
/// back as that dtype and shape, its data where the writer put it.
fn torch_zip_round_trip(data: &[u8]) {
    let Some((&d, dims)) = data.split_first() else {
        return;
    };
    let dtype = crate::DType::ALL[d as usize % crate::DType::ALL.len()];
    // At most 4 dimensions of at most 15, so at most 50,625 elements.
    let shape: Vec<u64> = dims.iter().take(4).map(|&b| u64::from(b % 16)).collect();
    let Ok(item) = crate::formats::torch::dcp_write::TorchSaveItem::new("archive", dtype, &shape)
    else {
        return;
    };
    let len = item.data_len() as usize;
    let payload: Vec<u8> = data.iter().copied().cycle().take(len).collect();
    let mut bytes = item.prefix().to_vec();
    bytes.extend_from_slice(&payload);
    bytes.extend_from_slice(&item.suffix(crc32fast::hash(&payload)));
    assert_eq!(bytes.len() as u64, item.len(), "{dtype} {shape:?}");
    let t = read_torch_save_item(Path::new("round-trip"), 0, "round trip", &bytes)
        .unwrap_or_else(|e| panic!("{dtype} {shape:?}: {e}"));
    assert_eq!((t.dtype, &t.shape), (dtype, &shape));
    assert_eq!(
        (t.data_offset, t.data_len),
        (item.data_offset(), item.data_len())
    );
}

fn has_nan(v: &Value) -> bool {
    match v {
        Value::Float(f) => f.is_nan(),
        Value::Tuple(items) | Value::List(items) => items.iter().any(has_nan),
        Value::Dict(items) => items.iter().any(|(k, v)| has_nan(k) || has_nan(v)),
        Value::Object { args, state, .. } => {
            args.iter().any(has_nan) || state.as_deref().is_some_and(has_nan)
        }
        Value::PersistentId(p) => has_nan(p),
        _ => false,
    }
}

/// A protocol 4 pickle of `v` that `unpickle` decodes back to `v` (for
/// the values it produces), for the round trip of [`dcp_pickle`].
pub fn pickle_value(v: &Value) -> Vec<u8> {
    let mut out = b"\x80\x04".to_vec();
    write_value(v, &mut out);
    out.push(b'.');
    out
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'X');
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::None => out.push(b'N'),
        Value::Bool(b) => out.push(if *b { 0x88 } else { 0x89 }),
        Value::Int(i) => {
            let bytes = i.to_le_bytes();
            // The shortest two's-complement form that keeps the sign.
            let mut n = 16;
            while n > 0 {
                let (last, below) = (bytes[n - 1], if n > 1 { bytes[n - 2] } else { 0 });
                let redundant = (last == 0 && below & 0x80 == 0 && (n > 1 || *i == 0))
                    || (last == 0xff && below & 0x80 != 0 && n > 1);
                if !redundant {
                    break;
                }
                n -= 1;
            }
            out.extend([0x8a, n as u8]);
            out.extend(&bytes[..n]);
        }
        Value::Float(f) => {
            out.push(b'G');
            out.extend(f.to_bits().to_be_bytes());
        }
        Value::Str(s) => write_str(s, out),
        Value::Bytes(b) => {
            out.push(b'B');
            out.extend((b.len() as u32).to_le_bytes());
            out.extend(b);
        }
        Value::Tuple(items) => {
            out.push(b'(');
            items.iter().for_each(|i| write_value(i, out));
            out.push(b't');
        }
        Value::List(items) => {
            out.extend(b"](");
            items.iter().for_each(|i| write_value(i, out));
            out.push(b'e');
        }
        Value::Dict(items) => {
            out.extend(b"}(");
            for (k, v) in items {
                write_value(k, out);
                write_value(v, out);
            }
            out.push(b'u');
        }
        Value::Global(g) => {
            write_str(&g.module, out);
            write_str(&g.name, out);
            out.push(0x93);
        }
        Value::Object { class, args, state } => {
            write_value(&Value::Global(class.clone()), out);
            write_value(&Value::Tuple(args.clone()), out);
            out.push(b'R');
            if let Some(s) = state {
                write_value(s, out);
                out.push(b'b');
            }
        }
        Value::PersistentId(p) => {
            write_value(p, out);
            out.push(b'Q');
        }
    }
}

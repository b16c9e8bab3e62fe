//! `model.safetensors.index.json`: which shard holds each tensor.

use super::*;

/// A parsed `model.safetensors.index.json`: names are checked, files are
/// not looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfIndex {
    /// `metadata.total_size`, when present.
    pub total_size: Option<u64>,
    /// Tensor name to shard file name, sorted by name.
    pub weight_map: BTreeMap<String, String>,
}

impl HfIndex {
    /// The index as Hugging Face tools write it: two-space indents,
    /// `metadata` then `weight_map` sorted by name, a final newline
    /// (`transformers` writes `json.dumps(index, indent=2, sort_keys=True)`).
    pub fn to_json(&self) -> String {
        let mut metadata = serde_json::Map::new();
        if let Some(n) = self.total_size {
            metadata.insert("total_size".into(), n.into());
        }
        let doc = serde_json::json!({ "metadata": metadata, "weight_map": self.weight_map });
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// The index file's shape, as deserialized before checks.
#[derive(Deserialize)]
pub(super) struct RawIndex {
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    weight_map: Pairs,
}

/// A JSON object kept as its pairs, so a key given twice is seen (a map
/// type would keep the last silently).
pub(super) struct Pairs(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = m.next_entry()? {
                    out.push(pair);
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Parses index bytes (`path` names them in errors) and checks every
/// `weight_map` value is a plain shard file name.
///
/// # Errors
///
/// [`HfError::IndexTooLarge`] beyond [`MAX_INDEX_BYTES`];
/// [`HfError::IndexJson`] for bytes that are not an object with a
/// `weight_map` object of strings, or a `metadata.total_size` that is not a
/// non-negative integer; [`HfError::DuplicateTensor`] for a name listed
/// twice; [`HfError::BadShardName`] for a value that is not a plain
/// `.safetensors` file name.
pub fn parse_index_json(path: &Path, bytes: &[u8]) -> Result<HfIndex, HfError> {
    let len = bytes.len() as u64;
    if len > MAX_INDEX_BYTES {
        return Err(HfError::IndexTooLarge {
            path: path.to_path_buf(),
            len,
            budget: MAX_INDEX_BYTES,
        });
    }
    let raw: RawIndex =
        serde_json::from_slice(bytes).map_err(|e| HfError::index_json(path, e.to_string()))?;
    let total_size = match raw.metadata.as_ref().and_then(|m| m.get("total_size")) {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(total_size_value(v).ok_or_else(|| {
            HfError::index_json(
                path,
                format!("metadata.total_size is {v}, not a byte count"),
            )
        })?),
    };
    let mut weight_map = BTreeMap::new();
    for (tensor, file) in raw.weight_map.0 {
        let serde_json::Value::String(file) = file else {
            return Err(HfError::index_json(
                path,
                format!("weight_map entry `{tensor}` is not a file name"),
            ));
        };
        check_shard_name(&tensor, &file)?;
        if let Some(first) = weight_map.get(&tensor) {
            return Err(HfError::DuplicateTensor {
                second: format!("{file} (listed twice in the index)"),
                first: String::clone(first),
                tensor,
            });
        }
        weight_map.insert(tensor, file);
    }
    Ok(HfIndex {
        total_size,
        weight_map,
    })
}

/// A byte count: an integer, or a float with an integral value (some
/// writers emit `1234.0`).
pub(super) fn total_size_value(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    // 2^64 as f64; every integral f64 below it converts exactly.
    let in_range = (0.0..18_446_744_073_709_551_616.0).contains(&f);
    (in_range && f.fract() == 0.0).then_some(f as u64)
}

/// Checks `file` is a plain `.safetensors` file name: no path, so an index
/// cannot make the reader open anything outside its folder.
pub(super) fn check_shard_name(tensor: &str, file: &str) -> Result<(), HfError> {
    let reason = if file.is_empty() {
        Some("an empty name")
    } else if file == "." || file == ".." {
        Some("a parent or current folder")
    } else if file.contains(['/', '\\']) {
        Some("a path (file names only)")
    } else if file.contains([':', '\0']) {
        Some("a name with `:` or NUL")
    } else if !file.ends_with(".safetensors") {
        Some("not a .safetensors file")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(HfError::BadShardName {
            tensor: tensor.to_string(),
            file: file.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

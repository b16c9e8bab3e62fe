//! Telling every source format apart from what is on disk: PyTorch DCP
//! (either writer), Hugging Face folders and DCP's Hugging Face writer,
//! MindSpore rank folders, single safetensors files.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::formats::chunked::SourceFormat;
use crate::formats::hf::{HfError, INDEX_NAME, SHARDING_INFO_KEY, SINGLE_NAME};
use crate::formats::safetensors::read_safetensors;

/// What [`detect`] looks for, in order, for its error message.
const LOOKED_FOR: &str = "a .metadata file (PyTorch DCP), model.safetensors.index.json or model.safetensors (Hugging Face), shard-*.safetensors with DCP_SHARDING_INFO (DCP Hugging Face writer), rank_<r>/ folders (MindSpore)";

/// The format of the checkpoint at `path`, a folder or a file, from names
/// and the first bytes of one file; nothing is read in full.
///
/// A folder is tried in this order:
///
/// 1. `.metadata` present: PyTorch DCP. The first `.distcp` file (by name)
///    tells the writer: a zip (`PK\x03\x04`) is [`SourceFormat::DcpTorchSave`],
///    a safetensors header is [`SourceFormat::DcpSafetensors`]. Without any
///    `.distcp` it is [`SourceFormat::DcpTorchSave`], the default writer, so
///    its reader reports what is missing.
/// 2. `model.safetensors.index.json`: [`SourceFormat::HuggingFace`].
/// 3. `shard-*.safetensors` of which one header holds `DCP_SHARDING_INFO`:
///    [`SourceFormat::DcpHuggingFace`].
/// 4. `rank_<r>/` subfolders: [`SourceFormat::MindSpore`].
/// 5. A lone `model.safetensors`: [`SourceFormat::HuggingFace`] (a model
///    folder of one shard, which
///    [`read_hf_folder`](crate::formats::hf::read_hf_folder) reads), so the folder is the
///    root either way.
///
/// A file: `*.safetensors` is [`SourceFormat::Safetensors`]; a
/// `model.safetensors.index.json` or `.metadata` file stands for its
/// folder.
///
/// # Errors
///
/// [`HfError::UnknownFormat`], naming what was looked for, when nothing
/// matches or a `.distcp` file is neither a zip nor safetensors;
/// [`HfError::Io`] when the folder cannot be listed or a file read.
pub fn detect(path: &Path) -> Result<SourceFormat, HfError> {
    if path.is_file() {
        return detect_file(path);
    }
    let names = list(path)?;
    let has = |n: &str| names.iter().any(|(name, _)| name == n);
    if has(".metadata") {
        return dcp_writer(path, &names);
    }
    if has(INDEX_NAME) {
        return Ok(SourceFormat::HuggingFace);
    }
    if has_dcp_hf_shard(&names) {
        return Ok(SourceFormat::DcpHuggingFace);
    }
    if names
        .iter()
        .any(|(name, p)| is_rank_folder(name) && p.is_dir())
    {
        return Ok(SourceFormat::MindSpore);
    }
    if has(SINGLE_NAME) {
        return Ok(SourceFormat::HuggingFace);
    }
    Err(HfError::UnknownFormat {
        path: path.to_path_buf(),
        looked_for: format!("{LOOKED_FOR}; found none"),
    })
}

fn detect_file(path: &Path) -> Result<SourceFormat, HfError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    match name.as_deref() {
        Some(INDEX_NAME) | Some(".metadata") => match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => detect(dir),
            _ => detect(Path::new(".")),
        },
        Some(n) if n.ends_with(".safetensors") => Ok(SourceFormat::Safetensors),
        _ => Err(HfError::UnknownFormat {
            path: path.to_path_buf(),
            looked_for: "a .safetensors file, or a checkpoint folder".into(),
        }),
    }
}

/// The entries of `dir`, sorted by name.
fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>, HfError> {
    let entries = std::fs::read_dir(dir).map_err(|e| HfError::io(dir, &e))?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| HfError::io(dir, &e))?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort();
    Ok(out)
}

/// DCP's default writer stores zip archives (`torch.save`); with
/// `serialization_format=SAFETENSORS` it stores safetensors files.
fn dcp_writer(dir: &Path, names: &[(String, PathBuf)]) -> Result<SourceFormat, HfError> {
    let Some((_, first)) = names.iter().find(|(n, _)| n.ends_with(".distcp")) else {
        return Ok(SourceFormat::DcpTorchSave);
    };
    let mut head = [0u8; 9];
    let n = read_prefix(first, &mut head)?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        return Ok(SourceFormat::DcpTorchSave);
    }
    // A safetensors file: an 8-byte header length, then a JSON object.
    if head.get(8) == Some(&b'{') {
        return Ok(SourceFormat::DcpSafetensors);
    }
    Err(HfError::UnknownFormat {
        path: dir.to_path_buf(),
        looked_for: format!(
            "a zip or safetensors .distcp beside .metadata; {} is neither",
            first.display()
        ),
    })
}

/// Reads up to `buf.len()` bytes from the start of `path`.
fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<usize, HfError> {
    let mut f = std::fs::File::open(path).map_err(|e| HfError::io(path, &e))?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HfError::io(path, &e)),
        }
    }
    Ok(n)
}

/// True when a `shard-*.safetensors` header holds `DCP_SHARDING_INFO`. A
/// file that cannot be read does not count: the reader will say why.
fn has_dcp_hf_shard(names: &[(String, PathBuf)]) -> bool {
    names
        .iter()
        .filter(|(n, _)| n.starts_with("shard-") && n.ends_with(".safetensors"))
        .any(|(_, p)| read_safetensors(p).is_ok_and(|(_, m)| m.contains_key(SHARDING_INFO_KEY)))
}

fn is_rank_folder(name: &str) -> bool {
    name.strip_prefix("rank_")
        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
}

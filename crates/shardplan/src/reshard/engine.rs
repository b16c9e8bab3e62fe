//! Writing an engine's ranks: each destination rank's logical slices read
//! from the source, packed into the engine's parameters by the storage map,
//! and written as one safetensors file under the engine's names.

use std::path::{Path, PathBuf};

use super::{Prepared, ReshardError, read_chunked};
use crate::engine::{Engine, EngineDegrees, EngineLayout, ModelConfig, engine_layout};

/// The tensor every preset has, whose dtype the engine's parameters take.
pub const ENGINE_DTYPE_FROM: &str = "model.embed_tokens.weight";

/// An engine's destination for the checkpoint at `src` (a Hugging Face
/// folder, a DCP folder or a safetensors file): the model's `config`
/// (`config.json` beside the source when `None`), the parameters' dtype
/// that of the source's [`ENGINE_DTYPE_FROM`]. What `shardplan reshard
/// --engine` and the Python package's `engine=` build.
///
/// # Errors
///
/// [`ReshardError::Engine`] when the config cannot be read or the model
/// does not fit the engine's preset at `degrees`; [`ReshardError::EngineSource`]
/// when the source holds no [`ENGINE_DTYPE_FROM`]; the source's own read
/// errors.
pub fn engine_destination(
    src: &Path,
    engine: Engine,
    degrees: EngineDegrees,
    config: Option<&Path>,
) -> Result<EngineLayout, ReshardError> {
    let config_path = config.map_or_else(|| default_config(src), Path::to_path_buf);
    let config = ModelConfig::read(&config_path).map_err(|e| ReshardError::Engine(Box::new(e)))?;
    let dtype = read_chunked(src)?.and_then(|s| {
        s.tensors
            .iter()
            .find(|t| t.name == ENGINE_DTYPE_FROM)
            .map(|t| t.dtype)
    });
    let Some(dtype) = dtype else {
        return Err(ReshardError::EngineSource {
            path: src.display().to_string(),
        });
    };
    engine_layout(engine, &config, degrees, dtype).map_err(|e| ReshardError::Engine(Box::new(e)))
}

/// `config.json` beside the source: in the source folder, or beside a
/// source file.
fn default_config(src: &Path) -> PathBuf {
    let dir = if src.is_dir() {
        src
    } else {
        src.parent().unwrap_or(src)
    };
    dir.join("config.json")
}

/// The file [`write_engine_rank`] writes for rank `rank` under `out_dir`:
/// `rank_<rank>/model.safetensors`.
pub fn engine_rank_path(out_dir: &Path, rank: u64) -> PathBuf {
    out_dir
        .join(format!("rank_{rank}"))
        .join("model.safetensors")
}

/// Destination rank `rank`'s engine parameters as bytes, in the order of
/// `layout.map.params(rank)`: the rank's logical slices read from the
/// source (only the bytes its pieces cover) and packed by the storage map,
/// padding zero. `prepared` must have been prepared with `layout.strategy`
/// as its destination.
///
/// # Errors
///
/// As [`write_engine_rank`], without the writing.
pub fn read_engine_rank(
    prepared: &Prepared,
    layout: &EngineLayout,
    rank: u64,
) -> Result<Vec<Vec<u8>>, ReshardError> {
    let slices = prepared.rank_slices(rank)?;
    let mut bufs: Vec<Vec<u8>> = slices.iter().map(|s| vec![0; s.bytes as usize]).collect();
    let mut views: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
    prepared.read_rank_into(rank, &mut views)?;
    let logical = |name: &str| {
        let i = slices.iter().position(|s| s.name == name)?;
        Some(bufs[i].as_slice())
    };
    layout
        .map
        .pack_rank(rank, logical)
        .map_err(|e| ReshardError::Storage {
            rank,
            source: Box::new(e),
        })
}

/// Writes destination rank `rank`'s engine parameters to
/// [`engine_rank_path`]: every parameter of `layout.map`'s rank, in its
/// order, with the engine's names and shapes, padding zero. `prepared` must
/// have been prepared with `layout.strategy` as its destination. The file
/// is written under a temporary name, fsynced and renamed. Returns the
/// bytes written.
///
/// # Errors
///
/// [`ReshardError::NoSuchRank`] for a rank outside the destination;
/// [`ReshardError::Storage`] when `prepared`'s destination is not
/// `layout.strategy`; [`ReshardError::Io`] naming the file that could not
/// be read or written.
pub fn write_engine_rank(
    prepared: &Prepared,
    layout: &EngineLayout,
    rank: u64,
    out_dir: &Path,
) -> Result<u64, ReshardError> {
    let params = read_engine_rank(prepared, layout, rank)?;
    let declared: Vec<_> = layout
        .map
        .params(rank)
        .iter()
        .map(|p| (p.name.clone(), p.dtype, p.shape.clone()))
        .collect();
    let mut file = crate::formats::safetensors::write::header(&declared, "pt");
    for p in &params {
        file.extend_from_slice(p);
    }
    let path = engine_rank_path(out_dir, rank);
    let io = |source| ReshardError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(path.parent().expect("rank_<r>/ has a parent")).map_err(io)?;
    crate::formats::write_atomic(&path, &file).map_err(io)?;
    Ok(file.len() as u64)
}

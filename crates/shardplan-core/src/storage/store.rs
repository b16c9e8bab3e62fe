//! Parameters as buffers: a plan carried out straight into them, a logical
//! store packed into them, and the reference check of what they hold.

use crate::execute::{
    ExecError, ExecStats, ShardStore, StoreMismatch, flat_index, for_each_index, synthetic_element,
};
use crate::geometry::{BoxRuns, Region};
use crate::strategy::Strategy;
use crate::verify::VerifiedPlan;

use super::{StorageError, StorageMap};

/// One zero-initialised buffer per parameter of every rank of a
/// [`StorageMap`]: padding stays zero, segments are filled by
/// [`execute_into_params`] or [`ParamStore::pack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamStore {
    /// Per rank, per parameter (the map's order).
    buffers: Vec<Vec<Vec<u8>>>,
}

impl ParamStore {
    /// Zeroed buffers for every parameter of `map`.
    pub fn zeroed(map: &StorageMap) -> Self {
        let buffers = (0..map.rank_count())
            .map(|r| {
                map.params(r)
                    .iter()
                    .map(|p| {
                        // The map checked every parameter's element count.
                        let n = p.shape.iter().product::<u64>() * p.dtype.size_bytes();
                        vec![0u8; n as usize]
                    })
                    .collect()
            })
            .collect();
        ParamStore { buffers }
    }

    /// The bytes of parameter number `param` of `rank`.
    pub fn buffer(&self, rank: u64, param: usize) -> Option<&[u8]> {
        Some(self.buffers.get(rank as usize)?.get(param)?.as_slice())
    }

    /// Packs every rank's parameters from the logical buffers of `store`
    /// (laid out by the strategy `map` was checked against), as
    /// [`StorageMap::pack_rank`] does one rank.
    ///
    /// # Errors
    ///
    /// [`StorageError::Exec`] when `store` lacks a buffer a segment reads.
    pub fn pack(&mut self, map: &StorageMap, store: &ShardStore) -> Result<(), StorageError> {
        for r in 0..map.rank_count() {
            let logical = |name: &str| store.buffer(store.tensor_index(name)?, r);
            self.buffers[r as usize] = map.pack_rank(r, logical)?;
        }
        Ok(())
    }

    /// Checks every parameter against the synthetic tensors that
    /// [`ShardStore::synthetic`] builds for `source`: each element a
    /// segment covers equals the logical element it names, every other
    /// element is zero. Computed element by element from the segments, not
    /// from [`StorageMap::route`].
    ///
    /// # Errors
    ///
    /// A message naming the rank, the parameter and the element that differs.
    pub fn check_synthetic(&self, map: &StorageMap, source: &Strategy) -> Result<(), String> {
        for r in 0..map.rank_count() {
            for (p, param) in map.params(r).iter().enumerate() {
                let size = param.dtype.size_bytes() as usize;
                let buf = &self.buffers[r as usize][p];
                let mut expected = vec![0u8; buf.len()];
                for seg in &param.segments {
                    let t = source
                        .tensors()
                        .iter()
                        .position(|t| t.name == seg.tensor)
                        .ok_or_else(|| format!("the source has no tensor `{}`", seg.tensor))?;
                    let shape = &source.tensors()[t].shape;
                    let lead = seg.at.len() - seg.logical.rank();
                    for_each_index(&seg.logical, |idx| {
                        let mut at: Vec<u64> = seg.at[..lead].to_vec();
                        at.extend(
                            idx.iter()
                                .zip(seg.logical.offset())
                                .zip(&seg.at[lead..])
                                .map(|((i, o), a)| a + i - o),
                        );
                        let e = flat_index(&param.shape, &at) as usize * size;
                        expected[e..e + size].copy_from_slice(&synthetic_element(
                            t as u64,
                            flat_index(shape, idx),
                            size,
                        ));
                    });
                }
                if let Some(i) = (0..buf.len() / size)
                    .find(|i| buf[i * size..(i + 1) * size] != expected[i * size..(i + 1) * size])
                {
                    return Err(format!(
                        "rank {r}, parameter `{}`: element {i} (flat) holds {:?}, expected {:?}",
                        param.name,
                        &buf[i * size..(i + 1) * size],
                        &expected[i * size..(i + 1) * size]
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Carries out `plan` straight into the parameters of `dst`: every piece's
/// box is routed through `map` ([`StorageMap::route`]) and copied from the
/// source rank's buffer in `src` to each place that stores it, with no
/// logical destination buffer in between.
///
/// # Errors
///
/// [`StorageError::Partial`] for a plan that adds partial sums;
/// [`StorageError::Exec`] when a piece names a tensor or rank `src` lacks or
/// a box outside the source buffer (a plan that does not verify against the
/// source).
pub fn execute_into_params(
    plan: &VerifiedPlan,
    src: &ShardStore,
    map: &StorageMap,
    dst: &mut ParamStore,
) -> Result<ExecStats, StorageError> {
    let mut stats = ExecStats::default();
    for t in &plan.tensors {
        let mismatch = |fault| ExecError::Mismatch {
            tensor: t.name.clone(),
            fault,
        };
        if t.pieces.iter().any(|p| p.reduce) {
            return Err(StorageError::Partial {
                tensor: t.name.clone(),
            });
        }
        let si = src
            .tensor_index(&t.name)
            .ok_or_else(|| mismatch(StoreMismatch::NotInSource))?;
        let size = t.dtype.size_bytes();
        for piece in &t.pieces {
            let (Some(sbuf), Some(sreg)) = (
                src.buffer(si, piece.src_rank),
                src.region(si, piece.src_rank),
            ) else {
                return Err(mismatch(StoreMismatch::NoSourceBuffer(piece.src_rank)).into());
            };
            if !Region::whole(sreg.extent()).contains_region(&piece.src_box) {
                return Err(mismatch(StoreMismatch::OutsideBuffer {
                    dst_box: piece.dst_box.clone(),
                    src_rank: piece.src_rank,
                    dst_rank: piece.dst_rank,
                })
                .into());
            }
            for place in map.route(&t.name, piece.dst_rank, &piece.dst_box) {
                // The part's place in the source buffer: the piece's source
                // box shifted by where the part starts inside the piece.
                let src_off: Vec<u64> = (0..place.part.rank())
                    .map(|d| {
                        piece.src_box.offset()[d] + place.part.offset()[d]
                            - piece.dst_box.offset()[d]
                    })
                    .collect();
                let param = &map.params(piece.dst_rank)[place.param];
                let dbuf = &mut dst.buffers[piece.dst_rank as usize][place.param];
                copy_box(
                    sbuf,
                    sreg.extent(),
                    &src_off,
                    dbuf,
                    &param.shape,
                    &place.offset,
                    place.part.extent(),
                    size,
                );
                stats.pieces += 1;
                stats.bytes += place.part.volume() * size;
            }
        }
    }
    Ok(stats)
}

/// Copies the box `extent` at `src_off` of an array of `src_shape` into an
/// array of `dst_shape` at `dst_off`, which may have more (leading)
/// dimensions: those take extent 1. Both boxes were checked to fit.
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_box(
    src: &[u8],
    src_shape: &[u64],
    src_off: &[u64],
    dst: &mut [u8],
    dst_shape: &[u64],
    dst_off: &[u64],
    extent: &[u64],
    unit: u64,
) {
    let lead = dst_shape.len() - src_shape.len();
    let widen = |v: &[u64], fill: u64| {
        let mut w = vec![fill; lead];
        w.extend_from_slice(v);
        w
    };
    let runs = BoxRuns::new(
        &widen(src_shape, 1),
        &widen(src_off, 0),
        dst_shape,
        dst_off,
        &widen(extent, 1),
        unit,
    );
    runs.for_each(|s, d, n| {
        let (s, d, n) = (s as usize, d as usize, n as usize);
        dst[d..d + n].copy_from_slice(&src[s..s + n]);
    });
}

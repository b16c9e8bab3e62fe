//! The reference executor: carries out a plan on real buffers in memory.
//!
//! One buffer per (tensor, rank), laid out row-major over the box the rank
//! holds. A piece is a strided box copy from a source buffer into a
//! destination buffer; bytes are moved, never converted. Copies go straight
//! from source to destination, each byte once.

use crate::geometry::Region;
use crate::plan::{Piece, SlicePlan};
use crate::strategy::Strategy;

/// Buffers of every rank for every tensor of a strategy.
///
/// `buffer(t, r)` is `None` for a rank that holds no part of tensor `t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStore {
    /// Per tensor (strategy order), per rank.
    buffers: Vec<Vec<Option<Vec<u8>>>>,
    /// Per tensor, per rank: the box held.
    regions: Vec<Vec<Option<Region>>>,
    names: Vec<String>,
}

/// Errors of the executor, naming tensor, rank and index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ExecError {
    /// The plan names a tensor or rank the stores lack.
    #[error("tensor `{tensor}`: {reason}")]
    #[diagnostic(
        code(shardplan::execute::mismatch),
        help("execute a plan with stores built from the strategies it was planned between")
    )]
    Mismatch {
        /// Tensor.
        tensor: String,
        /// What is missing.
        reason: String,
    },
    /// A buffer does not hold what its layout assigns.
    #[error(
        "tensor `{tensor}`, rank {rank}: element {index:?} is {found:02x?}, expected {expected:02x?}"
    )]
    #[diagnostic(
        code(shardplan::execute::wrong_element),
        help("the plan or the executor misplaced data; run `shardplan verify` on the plan")
    )]
    WrongElement {
        /// Tensor.
        tensor: String,
        /// Rank.
        rank: u64,
        /// Global index of the element.
        index: Vec<u64>,
        /// Bytes found.
        found: Vec<u8>,
        /// Bytes expected.
        expected: Vec<u8>,
    },
}

impl ShardStore {
    /// Zeroed buffers for every rank's part of every tensor of `strategy`.
    pub fn zeroed(strategy: &Strategy) -> Self {
        Self::build(strategy, |_, _, region, size| {
            vec![0u8; (region.volume() * size) as usize]
        })
    }

    /// Buffers filled from deterministic synthetic full tensors (see
    /// [`synthetic_element`]): each rank holds exactly the slice its layout
    /// assigns.
    pub fn synthetic(strategy: &Strategy) -> Self {
        Self::build(strategy, |t, info, region, size| {
            let mut buf = Vec::with_capacity((region.volume() * size) as usize);
            for_each_index(region, |idx| {
                let flat = flat_index(&info.shape, idx);
                buf.extend_from_slice(&synthetic_element(t as u64, flat, size as usize));
            });
            buf
        })
    }

    fn build(
        strategy: &Strategy,
        mut fill: impl FnMut(usize, &crate::strategy::TensorInfo, &Region, u64) -> Vec<u8>,
    ) -> Self {
        let ranks = strategy.mesh().rank_count();
        let mut buffers = Vec::new();
        let mut regions = Vec::new();
        for (t, (info, layout)) in strategy
            .tensors()
            .iter()
            .zip(strategy.layouts())
            .enumerate()
        {
            let size = info.dtype.size_bytes();
            let rs: Vec<Option<Region>> = (0..ranks).map(|r| layout.region_of(r)).collect();
            buffers.push(
                rs.iter()
                    .map(|r| r.as_ref().map(|region| fill(t, info, region, size)))
                    .collect(),
            );
            regions.push(rs);
        }
        ShardStore {
            buffers,
            regions,
            names: strategy.tensors().iter().map(|t| t.name.clone()).collect(),
        }
    }

    /// The bytes rank `rank` holds of tensor number `tensor`.
    pub fn buffer(&self, tensor: usize, rank: u64) -> Option<&[u8]> {
        self.buffers.get(tensor)?.get(rank as usize)?.as_deref()
    }

    /// Mutable access, e.g. to load real data.
    pub fn buffer_mut(&mut self, tensor: usize, rank: u64) -> Option<&mut Vec<u8>> {
        self.buffers
            .get_mut(tensor)?
            .get_mut(rank as usize)?
            .as_mut()
    }

    /// The box rank `rank` holds of tensor number `tensor`.
    pub fn region(&self, tensor: usize, rank: u64) -> Option<&Region> {
        self.regions.get(tensor)?.get(rank as usize)?.as_ref()
    }

    /// Index of tensor `name`.
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Checks that every buffer holds exactly the synthetic slice its
    /// layout assigns.
    ///
    /// # Errors
    ///
    /// [`ExecError::WrongElement`] at the first element that differs.
    pub fn check_synthetic(&self, strategy: &Strategy) -> Result<(), ExecError> {
        for (t, info) in strategy.tensors().iter().enumerate() {
            let size = info.dtype.size_bytes() as usize;
            for (rank, buf) in self.buffers[t].iter().enumerate() {
                let (Some(buf), Some(region)) = (buf, &self.regions[t][rank]) else {
                    continue;
                };
                let mut pos = 0usize;
                let mut err = None;
                for_each_index(region, |idx| {
                    if err.is_some() {
                        return;
                    }
                    let want = synthetic_element(t as u64, flat_index(&info.shape, idx), size);
                    let got = &buf[pos..pos + size];
                    if got != want.as_slice() {
                        err = Some(ExecError::WrongElement {
                            tensor: info.name.clone(),
                            rank: rank as u64,
                            index: idx.to_vec(),
                            found: got.to_vec(),
                            expected: want,
                        });
                    }
                    pos += size;
                });
                if let Some(e) = err {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Row-major flat index of `idx` in `shape`.
fn flat_index(shape: &[u64], idx: &[u64]) -> u64 {
    shape.iter().zip(idx).fold(0u64, |acc, (s, i)| acc * s + i)
}

/// The bytes of element `flat` of synthetic tensor `tensor`, `size` bytes
/// wide. Eight-byte elements hold the index itself (unique); narrower ones
/// hold a mix of tensor and index, so a misplaced element is caught unless
/// its neighbour happens to collide.
pub fn synthetic_element(tensor: u64, flat: u64, size: usize) -> Vec<u8> {
    // splitmix64 finaliser: cheap, well mixed.
    let mut z = flat
        .wrapping_add(tensor.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    match size {
        8 => (flat ^ (tensor << 48)).to_le_bytes().to_vec(),
        4 => ((flat as u32) ^ (z as u32 & 0xFF00_0000))
            .to_le_bytes()
            .to_vec(),
        _ => z.to_le_bytes()[..size].to_vec(),
    }
}

/// Calls `f` with every index of `region`, row-major.
fn for_each_index(region: &Region, mut f: impl FnMut(&[u64])) {
    if region.is_empty() {
        return;
    }
    let mut idx = region.offset().to_vec();
    loop {
        f(&idx);
        let mut k = idx.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < region.end(k) {
                break;
            }
            idx[k] = region.offset()[k];
        }
    }
}

/// What an execution did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecStats {
    /// Pieces copied.
    pub pieces: u64,
    /// Bytes copied (network and local).
    pub bytes: u64,
}

/// Carries out `plan`: for every piece, copies the box from the source
/// rank's buffer in `src` into the destination rank's buffer in `dst`.
/// `dst` may be reused across calls; every byte a plan covers is
/// overwritten.
///
/// # Errors
///
/// [`ExecError::Mismatch`] when a piece names a tensor or rank the stores do
/// not hold, or a box outside a buffer (a plan that does not verify).
pub fn execute_plan(
    plan: &SlicePlan,
    src: &ShardStore,
    dst: &mut ShardStore,
) -> Result<ExecStats, ExecError> {
    let mut stats = ExecStats::default();
    for t in &plan.tensors {
        let mismatch = |reason: String| ExecError::Mismatch {
            tensor: t.name.clone(),
            reason,
        };
        let si = src
            .tensor_index(&t.name)
            .ok_or_else(|| mismatch("not in the source store".into()))?;
        let di = dst
            .tensor_index(&t.name)
            .ok_or_else(|| mismatch("not in the destination store".into()))?;
        let size = t.dtype.size_bytes() as usize;
        for p in &t.pieces {
            let (Some(sbuf), Some(sreg)) = (src.buffer(si, p.src_rank), src.region(si, p.src_rank))
            else {
                return Err(mismatch(format!(
                    "source rank {} holds no buffer",
                    p.src_rank
                )));
            };
            let dreg = dst.region(di, p.dst_rank).cloned().ok_or_else(|| {
                mismatch(format!("destination rank {} holds no buffer", p.dst_rank))
            })?;
            if !fits(p, sreg, &dreg) {
                return Err(mismatch(format!(
                    "piece {} from rank {} to rank {} falls outside a buffer",
                    p.dst_box, p.src_rank, p.dst_rank
                )));
            }
            let dbuf = dst
                .buffer_mut(di, p.dst_rank)
                .expect("region implies buffer");
            copy_box(
                sbuf,
                sreg.extent(),
                p.src_box.offset(),
                dbuf,
                dreg.extent(),
                &p.dst_local_offset,
                p.dst_box.extent(),
                size,
            );
            stats.pieces += 1;
            stats.bytes += p.dst_box.volume() * size as u64;
        }
    }
    Ok(stats)
}

fn fits(p: &Piece, sreg: &Region, dreg: &Region) -> bool {
    let e = p.dst_box.extent();
    e.len() == sreg.rank()
        && p.src_box.offset().len() == e.len()
        && p.dst_local_offset.len() == e.len()
        && (0..e.len()).all(|k| {
            p.src_box.offset()[k] + e[k] <= sreg.extent()[k]
                && p.dst_local_offset[k] + e[k] <= dreg.extent()[k]
        })
}

/// Copies box `extent` from `src` (a row-major array of shape `src_shape`,
/// starting at `src_off`) into `dst` (shape `dst_shape`, at `dst_off`).
/// Trailing dimensions that are whole in both arrays are fused into one
/// contiguous run, so a row-split copy is a single `copy_from_slice`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_box(
    src: &[u8],
    src_shape: &[u64],
    src_off: &[u64],
    dst: &mut [u8],
    dst_shape: &[u64],
    dst_off: &[u64],
    extent: &[u64],
    size: usize,
) {
    let n = extent.len();
    if n == 0 {
        dst[..size].copy_from_slice(&src[..size]);
        return;
    }
    // Fuse trailing dims: run = product of extents from `split` on, where
    // every fused dim spans both arrays whole.
    let mut split = n - 1;
    let mut run = extent[n - 1] as usize;
    while split > 0 && extent[split] == src_shape[split] && extent[split] == dst_shape[split] {
        split -= 1;
        run *= extent[split] as usize;
    }
    let run_bytes = run * size;
    // Strides in elements.
    let strides = |shape: &[u64]| {
        let mut s = vec![1usize; n];
        for k in (0..n - 1).rev() {
            s[k] = s[k + 1] * shape[k + 1] as usize;
        }
        s
    };
    let (ss, ds) = (strides(src_shape), strides(dst_shape));
    let start = |off: &[u64], st: &[usize]| {
        off.iter()
            .zip(st)
            .map(|(o, s)| *o as usize * s)
            .sum::<usize>()
    };
    let (s0, d0) = (start(src_off, &ss), start(dst_off, &ds));
    // Odometer over the dims before `split`.
    let outer: Vec<u64> = extent[..split].to_vec();
    let mut idx = vec![0u64; split];
    loop {
        let so = s0
            + idx
                .iter()
                .zip(&ss)
                .map(|(i, s)| *i as usize * s)
                .sum::<usize>();
        let dof = d0
            + idx
                .iter()
                .zip(&ds)
                .map(|(i, s)| *i as usize * s)
                .sum::<usize>();
        dst[dof * size..dof * size + run_bytes]
            .copy_from_slice(&src[so * size..so * size + run_bytes]);
        let mut k = split;
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < outer[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

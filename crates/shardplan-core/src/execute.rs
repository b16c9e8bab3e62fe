//! The reference executor: carries out a plan on real buffers in memory.
//!
//! One buffer per (tensor, rank), laid out row-major over the box the rank
//! holds. A piece is a strided box copy from a source buffer into a
//! destination buffer; bytes are moved, never converted. Copies go straight
//! from source to destination, each byte once.

use crate::dtype::DType;
use crate::geometry::{BoxRuns, Region};
use crate::plan::Piece;
use crate::strategy::Strategy;
use crate::verify::VerifiedPlan;

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
    /// The plan names a tensor or rank the stores lack; the code and help
    /// are the fault's.
    #[error("tensor `{tensor}`: {fault}")]
    #[diagnostic(forward(fault))]
    Mismatch {
        /// Tensor.
        tensor: String,
        /// What the stores lack.
        fault: StoreMismatch,
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

const SAME_STRATEGIES: &str =
    "execute a plan with stores built from the strategies it was planned between";

/// What a plan needs that its stores do not have, one variant per fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StoreMismatch {
    /// The source store has no such tensor.
    #[error("not in the source store")]
    #[diagnostic(code(shardplan::execute::not_in_source), help("{}", SAME_STRATEGIES))]
    NotInSource,
    /// The destination store has no such tensor.
    #[error("not in the destination store")]
    #[diagnostic(
        code(shardplan::execute::not_in_destination),
        help("{}", SAME_STRATEGIES)
    )]
    NotInDestination,
    /// A destination rank with no buffer for the tensor.
    #[error("destination rank {0} holds no buffer")]
    #[diagnostic(
        code(shardplan::execute::no_destination_buffer),
        help("{}", SAME_STRATEGIES)
    )]
    NoDestinationBuffer(u64),
    /// A source rank with no buffer for the tensor.
    #[error("source rank {0} holds no buffer")]
    #[diagnostic(
        code(shardplan::execute::no_source_buffer),
        help("{}", SAME_STRATEGIES)
    )]
    NoSourceBuffer(u64),
    /// A piece whose box falls outside a buffer.
    #[error("piece {dst_box} from rank {src_rank} to rank {dst_rank} falls outside a buffer")]
    #[diagnostic(code(shardplan::execute::outside_buffer), help("{}", SAME_STRATEGIES))]
    OutsideBuffer {
        /// The piece's destination box.
        dst_box: Region,
        /// Its source rank.
        src_rank: u64,
        /// Its destination rank.
        dst_rank: u64,
    },
    /// Partial sums of a bool tensor.
    #[error("partial sums of bool cannot be reduced")]
    #[diagnostic(
        code(shardplan::execute::bool_partial),
        help("bool tensors cannot be partial sums; lay them out without partial axes")
    )]
    BoolPartial,
}

impl ShardStore {
    /// Zeroed buffers for every rank's part of every tensor of `strategy`.
    pub fn zeroed(strategy: &Strategy) -> Self {
        Self::build(strategy, |_, _, region, size, _| {
            vec![0u8; (region.volume() * size) as usize]
        })
    }

    /// Buffers filled from deterministic synthetic full tensors (see
    /// [`synthetic_element`]): each rank holds exactly the slice its layout
    /// assigns.
    pub fn synthetic(strategy: &Strategy) -> Self {
        Self::build(strategy, |t, info, region, size, term| {
            let mut buf = Vec::with_capacity((region.volume() * size) as usize);
            for_each_index(region, |idx| {
                let flat = flat_index(&info.shape, idx);
                match term {
                    None => {
                        buf.extend_from_slice(&synthetic_element(t as u64, flat, size as usize))
                    }
                    Some(term) => buf.extend_from_slice(&encode_small(
                        info.dtype,
                        partial_term_value(t as u64, flat, term),
                    )),
                }
            });
            buf
        })
    }

    fn build(
        strategy: &Strategy,
        mut fill: impl FnMut(usize, &crate::strategy::TensorInfo, &Region, u64, Option<u64>) -> Vec<u8>,
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
            // For a partial layout, the linear index of the term each rank holds.
            let term = |r: u64| -> Option<u64> {
                if layout.partial().is_empty() {
                    return None;
                }
                let c = layout.mesh().coords(r).ok()?;
                Some(
                    layout
                        .partial()
                        .iter()
                        .fold(0, |acc, &a| acc * layout.mesh().axis_size(a) + c[a]),
                )
            };
            buffers.push(
                rs.iter()
                    .enumerate()
                    .map(|(r, reg)| {
                        reg.as_ref()
                            .map(|region| fill(t, info, region, size, term(r as u64)))
                    })
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
    pub fn buffer_mut(&mut self, tensor: usize, rank: u64) -> Option<&mut [u8]> {
        self.buffers
            .get_mut(tensor)?
            .get_mut(rank as usize)?
            .as_deref_mut()
    }

    /// The box rank `rank` holds of tensor number `tensor`.
    pub fn region(&self, tensor: usize, rank: u64) -> Option<&Region> {
        self.regions.get(tensor)?.get(rank as usize)?.as_ref()
    }

    /// Index of tensor `name`.
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Checks that every buffer of `strategy` holds exactly the slice its
    /// layout assigns of the synthetic tensors that [`ShardStore::synthetic`]
    /// built for `source` (for a tensor the source holds as partial sums,
    /// the sum of its terms).
    ///
    /// # Errors
    ///
    /// [`ExecError::WrongElement`] at the first element that differs.
    pub fn check_synthetic(&self, strategy: &Strategy, source: &Strategy) -> Result<(), ExecError> {
        for (t, info) in strategy.tensors().iter().enumerate() {
            let size = info.dtype.size_bytes() as usize;
            let src_t = source
                .tensors()
                .iter()
                .position(|x| x.name == info.name)
                .unwrap_or(t);
            let terms: u64 = source
                .layout(&info.name)
                .filter(|l| !l.partial().is_empty())
                .map_or(0, |l| {
                    l.partial().iter().map(|&a| l.mesh().axis_size(a)).product()
                });
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
                    let flat = flat_index(&info.shape, idx);
                    let want = if terms == 0 {
                        synthetic_element(src_t as u64, flat, size)
                    } else {
                        let sum: u64 = (0..terms)
                            .map(|k| partial_term_value(src_t as u64, flat, k))
                            .sum();
                        encode_small(info.dtype, sum)
                    };
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

/// The value partial term `term` holds at element `flat` of tensor
/// `tensor`: a small integer, so that sums of a few terms are exact in
/// every dtype (bf16 included).
pub fn partial_term_value(tensor: u64, flat: u64, term: u64) -> u64 {
    (flat.wrapping_mul(3) + tensor.wrapping_mul(5) + term * 7) % 32
}

/// A small non-negative integer in `dtype`'s bytes.
fn encode_small(dtype: DType, v: u64) -> Vec<u8> {
    match dtype {
        DType::F64 => (v as f64).to_le_bytes().to_vec(),
        DType::F32 => (v as f32).to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f64(v as f64).to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::from_f64(v as f64).to_le_bytes().to_vec(),
        DType::Bool => vec![u8::from(v != 0)],
        other => v.to_le_bytes()[..other.size_bytes() as usize].to_vec(),
    }
}

/// Row-major flat index of `idx` in `shape`.
pub(crate) fn flat_index(shape: &[u64], idx: &[u64]) -> u64 {
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
pub(crate) fn for_each_index(region: &Region, mut f: impl FnMut(&[u64])) {
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

/// How to execute a plan.
///
/// Built with [`ExecConfig::sequential`] or [`ExecConfig::parallel`]; the
/// fields can be read and changed directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecConfig {
    /// Run the destination buffers in parallel (rayon, with the `parallel`
    /// feature; without it, this is ignored and execution is sequential).
    pub parallel: bool,
}

impl ExecConfig {
    /// Executing one destination buffer after the other, as
    /// [`execute_plan`] does.
    pub const fn sequential() -> Self {
        ExecConfig { parallel: false }
    }

    /// Executing the destination buffers in parallel (with the `parallel`
    /// feature; without it, the same as [`ExecConfig::sequential`]).
    pub const fn parallel() -> Self {
        ExecConfig { parallel: true }
    }
}

/// Carries out `plan` sequentially; see [`execute_plan_with`].
///
/// # Errors
///
/// As [`execute_plan_with`].
pub fn execute_plan(
    plan: &VerifiedPlan,
    src: &ShardStore,
    dst: &mut ShardStore,
) -> Result<ExecStats, ExecError> {
    execute_plan_with(plan, src, dst, &ExecConfig::sequential())
}

/// Carries out `plan`: for every piece, copies the box from the source
/// rank's buffer in `src` into the destination rank's buffer in `dst` (or,
/// for a partial-sum source, adds it). `dst` may be reused across calls;
/// every byte a plan covers is overwritten. Work is split by destination
/// buffer, so buffers can be filled in parallel without locks.
///
/// # Errors
///
/// [`ExecError::Mismatch`] when a piece names a tensor or rank the stores do
/// not hold, or a box outside a buffer (a plan that does not verify).
pub fn execute_plan_with(
    plan: &VerifiedPlan,
    src: &ShardStore,
    dst: &mut ShardStore,
    config: &ExecConfig,
) -> Result<ExecStats, ExecError> {
    // One job per destination buffer.
    let mut jobs: std::collections::BTreeMap<(usize, u64), Job<'_>> = Default::default();
    for t in &plan.tensors {
        let mismatch = |fault: StoreMismatch| ExecError::Mismatch {
            tensor: t.name.clone(),
            fault,
        };
        let si = src
            .tensor_index(&t.name)
            .ok_or_else(|| mismatch(StoreMismatch::NotInSource))?;
        let di = dst
            .tensor_index(&t.name)
            .ok_or_else(|| mismatch(StoreMismatch::NotInDestination))?;
        for p in &t.pieces {
            if dst.region(di, p.dst_rank).is_none() {
                return Err(mismatch(StoreMismatch::NoDestinationBuffer(p.dst_rank)));
            }
            jobs.entry((di, p.dst_rank))
                .or_insert_with(|| Job {
                    tensor: t,
                    si,
                    pieces: Vec::new(),
                })
                .pieces
                .push(p);
        }
    }
    // Move the destination buffers out, run, and put them back.
    let mut work: Vec<(Job<'_>, Region, Vec<u8>)> = jobs
        .into_iter()
        .map(|((di, r), job)| {
            let region = dst.regions[di][r as usize].clone().expect("checked above");
            let buf = dst.buffers[di][r as usize]
                .take()
                .expect("region implies buffer");
            (job, region, buf)
        })
        .collect();
    let run = |(job, region, buf): &mut (Job<'_>, Region, Vec<u8>)| run_job(job, src, region, buf);
    let results: Vec<Result<ExecStats, ExecError>> = if config.parallel {
        run_all_parallel(&mut work, run)
    } else {
        work.iter_mut().map(run).collect()
    };
    for (job, _, buf) in work {
        let di = dst.tensor_index(&job.tensor.name).expect("checked above");
        let r = job.pieces[0].dst_rank as usize;
        dst.buffers[di][r] = Some(buf);
    }
    let mut stats = ExecStats::default();
    for r in results {
        let s = r?;
        stats.pieces += s.pieces;
        stats.bytes += s.bytes;
    }
    Ok(stats)
}

#[cfg(feature = "parallel")]
fn run_all_parallel<T: Send, R: Send>(
    work: &mut [T],
    f: impl Fn(&mut T) -> R + Sync + Send,
) -> Vec<R> {
    use rayon::prelude::*;
    work.par_iter_mut().map(f).collect()
}

#[cfg(not(feature = "parallel"))]
fn run_all_parallel<T, R>(work: &mut [T], f: impl Fn(&mut T) -> R) -> Vec<R> {
    work.iter_mut().map(f).collect()
}

/// The pieces that fill one destination buffer.
struct Job<'a> {
    tensor: &'a crate::plan::TensorPlan,
    si: usize,
    pieces: Vec<&'a Piece>,
}

fn run_job(
    job: &Job<'_>,
    src: &ShardStore,
    dreg: &Region,
    dbuf: &mut [u8],
) -> Result<ExecStats, ExecError> {
    let t = job.tensor;
    let mismatch = |fault: StoreMismatch| ExecError::Mismatch {
        tensor: t.name.clone(),
        fault,
    };
    let size = t.dtype.size_bytes() as usize;
    let reduce = job.pieces.iter().any(|p| p.reduce);
    if reduce && t.dtype == DType::Bool {
        return Err(mismatch(StoreMismatch::BoolPartial));
    }
    let mut acc = reduce.then(|| Accumulator::new(t.dtype, dreg.volume() as usize));
    let mut stats = ExecStats::default();
    for p in &job.pieces {
        let (Some(sbuf), Some(sreg)) = (
            src.buffer(job.si, p.src_rank),
            src.region(job.si, p.src_rank),
        ) else {
            return Err(mismatch(StoreMismatch::NoSourceBuffer(p.src_rank)));
        };
        if !fits(p, sreg, dreg) {
            return Err(mismatch(StoreMismatch::OutsideBuffer {
                dst_box: p.dst_box.clone(),
                src_rank: p.src_rank,
                dst_rank: p.dst_rank,
            }));
        }
        // In bytes: the buffers are bytes, and `fits` bounds every run.
        let runs = BoxRuns::new(
            sreg.extent(),
            p.src_box.offset(),
            dreg.extent(),
            &p.dst_local_offset,
            p.dst_box.extent(),
            size as u64,
        );
        match acc.as_mut() {
            Some(acc) => runs.for_each(|s0, d0, run| {
                let (s0, d0, run) = (s0 as usize, d0 as usize, run as usize);
                acc.add(&sbuf[s0..s0 + run], d0 / size);
            }),
            None => runs.for_each(|s0, d0, run| {
                let (s0, d0, run) = (s0 as usize, d0 as usize, run as usize);
                dbuf[d0..d0 + run].copy_from_slice(&sbuf[s0..s0 + run]);
            }),
        }
        stats.pieces += 1;
        stats.bytes += p.dst_box.volume() * size as u64;
    }
    if let Some(acc) = acc {
        acc.write(dbuf);
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

/// Running sums of one destination buffer.
enum Accumulator {
    F32(Vec<f32>, DType),
    F64(Vec<f64>),
    Int(Vec<i64>, usize),
}

impl Accumulator {
    fn new(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F32 | DType::F16 | DType::BF16 => Accumulator::F32(vec![0.0; n], dtype),
            DType::F64 => Accumulator::F64(vec![0.0; n]),
            other => Accumulator::Int(vec![0; n], other.size_bytes() as usize),
        }
    }

    /// Adds the elements in `bytes` at element offset `at`.
    fn add(&mut self, bytes: &[u8], at: usize) {
        match self {
            Accumulator::F32(acc, dtype) => {
                let w = dtype.size_bytes() as usize;
                for (i, c) in bytes.chunks_exact(w).enumerate() {
                    acc[at + i] += match dtype {
                        DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                        DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                        _ => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    };
                }
            }
            Accumulator::F64(acc) => {
                for (i, c) in bytes.chunks_exact(8).enumerate() {
                    acc[at + i] += f64::from_le_bytes(c.try_into().expect("8 bytes"));
                }
            }
            Accumulator::Int(acc, w) => {
                for (i, c) in bytes.chunks_exact(*w).enumerate() {
                    let mut b = [0u8; 8];
                    b[..*w].copy_from_slice(c);
                    acc[at + i] = acc[at + i].wrapping_add(i64::from_le_bytes(b));
                }
            }
        }
    }

    fn write(&self, out: &mut [u8]) {
        match self {
            Accumulator::F32(acc, dtype) => {
                let w = dtype.size_bytes() as usize;
                for (v, o) in acc.iter().zip(out.chunks_exact_mut(w)) {
                    match dtype {
                        DType::F16 => o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes()),
                        DType::BF16 => o.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes()),
                        _ => o.copy_from_slice(&v.to_le_bytes()),
                    }
                }
            }
            Accumulator::F64(acc) => {
                for (v, o) in acc.iter().zip(out.chunks_exact_mut(8)) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            Accumulator::Int(acc, w) => {
                for (v, o) in acc.iter().zip(out.chunks_exact_mut(*w)) {
                    o.copy_from_slice(&v.to_le_bytes()[..*w]);
                }
            }
        }
    }
}

//! Reference executor benchmarks: f32[8192, 8192] (256 MiB) resharded on one
//! host, against a single-thread memcpy of the same bytes.
//!
//! Run with `cargo bench --bench executor`, or `scripts/bench_executor.sh`,
//! which also runs the NumPy and JAX peers in `benches/peers/` in the same
//! go (see docs/PERFORMANCE.md, section "Executor").
//!
//! Source: mesh `[x=8]`, rows split over `x` (rank `r` holds rows
//! `1024 r .. 1024 (r + 1)`, all columns). Destinations (`args`):
//! - `cols8`: the same mesh `[x=8]`, columns split over `x`;
//! - `mesh2x4`: mesh `[a=2, b=4]`, rows split over `a`, columns over `b`
//!   (rank `4 a + b` holds a 4096 x 2048 block);
//! - `cols4`: mesh `[x=4]` (four devices, 0..3), columns split over `x`.
//!   Columns rather than rows: a row split over 4 would only concatenate
//!   pairs of source shards, while the column split moves every byte into a
//!   new arrangement, as the other two cases do.
//!
//! Rank `r` of every mesh runs on device `r`, so part of each plan is local
//! copies. Every case writes every destination element once: 256 MiB per
//! execution, local pieces included. That byte count is the divan counter,
//! so the throughput rows are bytes moved / time (decimal GB/s).
//!
//! Plans are made once and the source store is filled once (element
//! `(i, j)` holds the `u32` `8192 i + j`); each benchmark allocates its
//! destination store once, executes once untimed (to fault the pages in and
//! to check every element), then times `execute_plan` (`sequential`) or
//! `execute_plan_with(.., parallel: true)` (`parallel`) reusing it.
//! `sequential_alloc` allocates a new destination store in every iteration
//! instead (zeroed by the allocator, its pages faulted in by the copies), as
//! `jax.device_put` does for its output.
//!
//! Baselines: `memcpy::one_thread` is one `copy_from_slice` of 256 MiB
//! between two preallocated, pre-faulted `Vec<u8>` (the ceiling for a
//! single-thread executor); `memcpy::per_buffer` copies the same bytes as
//! eight 32 MiB copies; `memcpy::two_threads` splits the big copy over two
//! scoped threads (for the parallel executor, on this two-core machine).
//! `pattern::cols8_dst_order` does the copies of `cols8` by hand, in the
//! executor's order (one destination buffer after another: 4 KiB runs read
//! at a 32 KiB stride), and `pattern::cols8_src_order` the same copies in
//! source order: the ceiling of that access pattern, without a plan.

use std::sync::{Arc, LazyLock};

use divan::Bencher;
use divan::counter::BytesCount;
use shardplan_core::{
    DType, DeviceMesh, DimSplit, ExecConfig, LayoutConfig, PlanConfig, ReplicaChoice, ShardStore,
    Strategy, TensorInfo, TensorLayout, VerifiedPlan, execute_plan, execute_plan_with,
    plan_transfer, verify_plan,
};

/// Rows and columns of the tensor.
const N: u64 = 8192;
/// Bytes of the tensor, and bytes every execution writes.
const BYTES: u64 = N * N * 4;
/// Destination layouts, by name.
const CASES: [&str; 3] = ["cols8", "mesh2x4", "cols4"];

// ---------------------------------------------------------------------------
// Case construction
// ---------------------------------------------------------------------------

fn tensor() -> TensorInfo {
    TensorInfo {
        name: "w".to_string(),
        shape: vec![N, N],
        dtype: DType::F32,
    }
}

/// A one-tensor strategy on `mesh` with dimension splits `dims`.
fn strategy(name: &str, mesh: &[(&str, u64)], dims: [&[&str]; 2]) -> Strategy {
    let mesh = Arc::new(DeviceMesh::new(mesh.iter().copied()).expect("valid mesh"));
    let t = tensor();
    let cfg = LayoutConfig::new(
        dims.iter()
            .map(|axes| DimSplit::over(axes.iter().copied()))
            .collect(),
    );
    let layout = TensorLayout::new(mesh.clone(), &t.shape, &cfg).expect("valid layout");
    Strategy::new(name, mesh, vec![t], vec![layout]).expect("valid strategy")
}

fn destination(case: &str) -> Strategy {
    match case {
        "cols8" => strategy("cols8", &[("x", 8)], [&[], &["x"]]),
        "mesh2x4" => strategy("mesh2x4", &[("a", 2), ("b", 4)], [&["a"], &["b"]]),
        "cols4" => strategy("cols4", &[("x", 4)], [&[], &["x"]]),
        other => panic!("unknown case {other}"),
    }
}

/// The row-split source and its filled store.
struct Source {
    strategy: Strategy,
    store: ShardStore,
}

static SOURCE: LazyLock<Source> = LazyLock::new(|| {
    let strategy = strategy("rows8", &[("x", 8)], [&["x"], &[]]);
    let mut store = ShardStore::zeroed(&strategy);
    for r in 0..strategy.mesh().rank_count() {
        let first = store.region(0, r).expect("every rank holds rows").offset()[0] * N;
        let buf = store.buffer_mut(0, r).expect("every rank holds rows");
        for (k, e) in buf.chunks_exact_mut(4).enumerate() {
            e.copy_from_slice(&((first + k as u64) as u32).to_le_bytes());
        }
    }
    Source { strategy, store }
});

struct Case {
    dst: Strategy,
    plan: VerifiedPlan,
}

static PLANS: LazyLock<Vec<Case>> = LazyLock::new(|| {
    let config = PlanConfig::new(ReplicaChoice::Balance);
    CASES
        .iter()
        .map(|&name| {
            let dst = destination(name);
            let plan = plan_transfer(&SOURCE.strategy, &dst, &config).expect("plannable");
            let plan = verify_plan(plan, &SOURCE.strategy, &dst).expect("the plan verifies");
            Case { dst, plan }
        })
        .collect()
});

fn case(name: &str) -> &'static Case {
    let i = CASES.iter().position(|&c| c == name).expect("known case");
    &PLANS[i]
}

/// Checks that every destination element holds its global flat index, the
/// value the source was filled with.
fn check(dst: &ShardStore, strategy: &Strategy) {
    for r in 0..strategy.mesh().rank_count() {
        let (Some(region), Some(buf)) = (dst.region(0, r), dst.buffer(0, r)) else {
            continue;
        };
        let (o, e) = (region.offset(), region.extent());
        let mut words = buf.chunks_exact(4);
        for i in o[0]..o[0] + e[0] {
            for j in o[1]..o[1] + e[1] {
                let got =
                    u32::from_le_bytes(words.next().expect("buffer size").try_into().unwrap());
                assert_eq!(
                    got,
                    (i * N + j) as u32,
                    "{}: rank {r}, element ({i}, {j})",
                    strategy.name()
                );
            }
        }
    }
}

/// A destination store with every page faulted in, holding the result of
/// one (untimed, checked) execution of the case.
fn warm_destination(c: &Case, parallel: bool) -> ShardStore {
    let mut dst = ShardStore::zeroed(&c.dst);
    let config = if parallel {
        ExecConfig::parallel()
    } else {
        ExecConfig::sequential()
    };
    let stats = execute_plan_with(&c.plan, &SOURCE.store, &mut dst, &config).expect("executes");
    assert_eq!(stats.bytes, BYTES, "every destination byte is written once");
    check(&dst, &c.dst);
    dst
}

// ---------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--bench") && !has("--test") && !has("--list") {
        print_summary();
    }
    divan::main();
}

/// Pieces and bytes of every plan.
fn print_summary() {
    println!("f32[{N}, {N}] = {BYTES} bytes; source mesh [x=8], rows split over x");
    println!(
        "{:<8} {:<22} {:>7} {:>12} {:>12} {:>12}",
        "case", "destination", "pieces", "network B", "local B", "total B"
    );
    for (&name, c) in CASES.iter().zip(PLANS.iter()) {
        let s = c.plan.summary();
        let mesh: Vec<String> = c
            .dst
            .mesh()
            .axes()
            .iter()
            .map(|a| format!("{}={}", a.name, a.size))
            .collect();
        let layout = c.dst.layout("w").expect("one tensor").to_string();
        println!(
            "{:<8} {:<22} {:>7} {:>12} {:>12} {:>12}",
            name,
            format!("[{}] {layout}", mesh.join(", ")),
            s.pieces,
            s.total_bytes,
            s.local_bytes,
            s.total_bytes + s.local_bytes
        );
    }
    println!();
}

/// The reference executor, one destination buffer after another.
#[divan::bench_group(sample_count = 25, sample_size = 1)]
mod execute {
    use super::*;

    #[divan::bench(args = CASES)]
    fn sequential(bencher: Bencher, name: &str) {
        let c = case(name);
        let src = &SOURCE.store;
        let mut dst = warm_destination(c, false);
        bencher
            .counter(BytesCount::new(BYTES))
            .bench_local(|| execute_plan(&c.plan, src, &mut dst).expect("executes"));
    }

    /// As `sequential`, with a new destination store allocated (zeroed,
    /// pages faulted in by the copies) in every iteration, as
    /// `jax.device_put` allocates its output; the store is dropped untimed.
    #[divan::bench(args = CASES)]
    fn sequential_alloc(bencher: Bencher, name: &str) {
        let c = case(name);
        let src = &SOURCE.store;
        drop(warm_destination(c, false));
        bencher.counter(BytesCount::new(BYTES)).bench_local(|| {
            let mut dst = ShardStore::zeroed(&c.dst);
            execute_plan(&c.plan, src, &mut dst).expect("executes");
            dst
        });
    }

    #[divan::bench(args = CASES)]
    fn parallel(bencher: Bencher, name: &str) {
        let c = case(name);
        let src = &SOURCE.store;
        let mut dst = warm_destination(c, true);
        let config = ExecConfig::parallel();
        bencher
            .counter(BytesCount::new(BYTES))
            .bench_local(|| execute_plan_with(&c.plan, src, &mut dst, &config).expect("executes"));
    }
}

/// Copies of the same number of bytes between preallocated buffers.
#[divan::bench_group(sample_count = 25, sample_size = 1)]
mod memcpy {
    use super::*;

    /// Two buffers of `BYTES`, both written once so no page fault is timed.
    fn buffers() -> (Vec<u8>, Vec<u8>) {
        let src: Vec<u8> = (0..BYTES).map(|i| i as u8).collect();
        let mut dst = vec![0u8; BYTES as usize];
        dst.copy_from_slice(&src);
        (src, dst)
    }

    /// One `copy_from_slice` of 256 MiB: the single-thread ceiling.
    #[divan::bench]
    fn one_thread(bencher: Bencher) {
        let (src, mut dst) = buffers();
        bencher
            .counter(BytesCount::new(BYTES))
            .bench_local(|| dst.copy_from_slice(divan::black_box(&src)));
    }

    /// Eight copies of 32 MiB, one per destination buffer of the 8-rank cases.
    #[divan::bench]
    fn per_buffer(bencher: Bencher) {
        let (src, mut dst) = buffers();
        let chunk = (BYTES / 8) as usize;
        bencher.counter(BytesCount::new(BYTES)).bench_local(|| {
            for (d, s) in dst
                .chunks_mut(chunk)
                .zip(divan::black_box(&src).chunks(chunk))
            {
                d.copy_from_slice(s);
            }
        });
    }

    /// The big copy split in two halves on two scoped threads.
    #[divan::bench]
    fn two_threads(bencher: Bencher) {
        let (src, mut dst) = buffers();
        let half = (BYTES / 2) as usize;
        bencher.counter(BytesCount::new(BYTES)).bench_local(|| {
            std::thread::scope(|scope| {
                for (d, s) in dst
                    .chunks_mut(half)
                    .zip(divan::black_box(&src).chunks(half))
                {
                    scope.spawn(move || d.copy_from_slice(s));
                }
            });
        });
    }
}

/// The copies of the `cols8` case written by hand, without a plan: eight
/// destination buffers of 8192 x 1024 f32, each row a 4 KiB copy from a
/// source row of 32 KiB. The same bytes and access pattern as the executor,
/// to tell the cost of the pattern from the cost of the executor.
#[divan::bench_group(sample_count = 25, sample_size = 1)]
mod pattern {
    use super::*;

    /// Bytes of one destination row (1024 f32).
    const RUN: usize = (N as usize / 8) * 4;
    /// Bytes of one source row (8192 f32).
    const ROW: usize = N as usize * 4;
    /// Bytes of one destination buffer.
    const BUF: usize = BYTES as usize / 8;

    /// Destination `r`, row `i` <- source row `i`, columns `1024 r ..`.
    fn copy_row(src: &[u8], dst: &mut [u8], r: usize, i: usize) {
        let (s, d) = (i * ROW + r * RUN, r * BUF + i * RUN);
        dst[d..d + RUN].copy_from_slice(&src[s..s + RUN]);
    }

    fn buffers() -> (Vec<u8>, Vec<u8>) {
        let src: Vec<u8> = (0..BYTES).map(|i| i as u8).collect();
        let mut dst = vec![0u8; BYTES as usize];
        dst.copy_from_slice(&src);
        (src, dst)
    }

    /// The executor's order: one destination buffer after another, reading
    /// 4 KiB at a stride of 32 KiB.
    #[divan::bench]
    fn cols8_dst_order(bencher: Bencher) {
        let (src, mut dst) = buffers();
        bencher.counter(BytesCount::new(BYTES)).bench_local(|| {
            for r in 0..8 {
                for i in 0..N as usize {
                    copy_row(divan::black_box(&src), &mut dst, r, i);
                }
            }
        });
    }

    /// Source order: every source row read once, front to back, its eight
    /// runs written to the eight destination buffers.
    #[divan::bench]
    fn cols8_src_order(bencher: Bencher) {
        let (src, mut dst) = buffers();
        bencher.counter(BytesCount::new(BYTES)).bench_local(|| {
            for i in 0..N as usize {
                for r in 0..8 {
                    copy_row(divan::black_box(&src), &mut dst, r, i);
                }
            }
        });
    }
}

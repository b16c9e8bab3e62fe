//! Planner, verifier and baseline benchmarks on Llama-70B layouts.
//!
//! Run with `cargo bench --bench planner` (or `scripts/bench_planner.sh`,
//! which pins the run to one core). The parameter list is read from
//! `../shared/data/llama70b_params.json` (override with
//! `SHARDPLAN_PARAMS=/path/to/params.json`); without it the benchmarks are
//! skipped with a message.
//!
//! Cases:
//! - `train70b`: training layout `[pp=8, dp=2, tp=8]` (128 ranks, Megatron
//!   tensor parallel, optimizer shard over dp, 10 layers per stage) to
//!   `tp8`, `tp4`, `pp2_tp4` and `single` (one device);
//! - `ranks1024`: `[pp=16, dp=8, tp=8]` (1024 ranks) to `[pp=16, tp=8]`;
//! - `verify`: `check_plan` alone on a plan of 16,384 pieces (and on the
//!   whole 1024-rank plan, 46,272 pieces);
//! - `baseline_plan`: a pairwise overlap scan in the manner of
//!   torch.distributed.checkpoint's default load planner, on the same cases.
//!
//! In bench mode, a table of plan sizes (pieces, network bytes, max send
//! against its lower bound) is printed before the timings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use divan::Bencher;
use shardplan_core::{
    DType, DeviceMesh, DimSplit, LayoutConfig, PlanConfig, Region, ReplicaChoice, SlicePlan,
    Strategy, TensorInfo, TensorLayout, check_plan, plan_transfer,
};

// ---------------------------------------------------------------------------
// Case construction
// ---------------------------------------------------------------------------

/// Where the parameter list is read from.
fn params_path() -> PathBuf {
    match std::env::var_os("SHARDPLAN_PARAMS") {
        Some(p) => PathBuf::from(p),
        // The workspace root is two folders up; shared/ is beside it.
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../..")
            .join("shared")
            .join("data")
            .join("llama70b_params.json"),
    }
}

/// The tensors of the parameter list, or why they could not be read.
fn load_params() -> Result<Vec<TensorInfo>, String> {
    let path = params_path();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let params = json
        .get("params")
        .and_then(|p| p.as_array())
        .ok_or_else(|| format!("{}: no `params` array", path.display()))?;
    params
        .iter()
        .map(|p| {
            let name = p
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or("a param without a name")?;
            let shape = p
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| format!("{name}: no shape"))?
                .iter()
                .map(|d| d.as_u64().ok_or_else(|| format!("{name}: bad shape")))
                .collect::<Result<Vec<u64>, String>>()?;
            let dtype: DType = p
                .get("dtype")
                .and_then(|d| d.as_str())
                .ok_or_else(|| format!("{name}: no dtype"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))?;
            Ok(TensorInfo {
                name: name.to_string(),
                shape,
                dtype,
            })
        })
        .collect()
}

/// How Megatron splits a tensor over tensor parallel ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Output dimension (dim 0) split: q/k/v/gate/up, embeddings, lm_head.
    Column,
    /// Input dimension (dim 1) split: o_proj, down_proj.
    Row,
    /// Not split by tensor parallelism (norms).
    Norm,
}

fn kind_of(t: &TensorInfo) -> Kind {
    const COLUMN: [&str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "gate_proj",
        "up_proj",
        "embed_tokens",
        "lm_head",
    ];
    const ROW: [&str; 2] = ["o_proj", "down_proj"];
    if t.shape.len() == 2 && COLUMN.iter().any(|c| t.name.contains(c)) {
        Kind::Column
    } else if t.shape.len() == 2 && ROW.iter().any(|c| t.name.contains(c)) {
        Kind::Row
    } else {
        Kind::Norm
    }
}

/// Decoder layer index of `model.layers.17.…`.
fn layer_of(name: &str) -> Option<u64> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Sizes of the parallel dimensions; an axis of size 1 is left off the mesh.
#[derive(Debug, Clone, Copy)]
struct Parallel {
    pp: u64,
    dp: u64,
    tp: u64,
}

/// A Megatron-style strategy: layers spread over `pp` by index (embeddings
/// on the first stage, final norm and lm_head on the last), tensor parallel
/// over `tp`, and, when `dp > 1`, the optimizer shard over `dp` appended
/// innermost to dim 0.
fn megatron(name: &str, tensors: &[TensorInfo], p: Parallel) -> Strategy {
    let axes: Vec<(&str, u64)> = [("pp", p.pp), ("dp", p.dp), ("tp", p.tp)]
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .collect();
    let mesh = Arc::new(DeviceMesh::new(axes).expect("valid mesh"));
    let layers = tensors
        .iter()
        .filter_map(|t| layer_of(&t.name))
        .max()
        .map_or(0, |l| l + 1);
    assert!(
        layers % p.pp == 0,
        "{layers} layers do not spread over pp={}",
        p.pp
    );
    let per_stage = (layers / p.pp).max(1);
    let tp: Vec<String> = (p.tp > 1).then(|| "tp".to_string()).into_iter().collect();
    let dp: Vec<String> = (p.dp > 1).then(|| "dp".to_string()).into_iter().collect();
    let layouts = tensors
        .iter()
        .map(|t| {
            let mut dims = vec![DimSplit::none(); t.shape.len()];
            match kind_of(t) {
                Kind::Column => {
                    dims[0] = DimSplit::over(tp.iter().chain(&dp).cloned());
                }
                Kind::Row => {
                    dims[0] = DimSplit::over(dp.iter().cloned());
                    dims[1] = DimSplit::over(tp.iter().cloned());
                }
                Kind::Norm => {
                    if !dims.is_empty() {
                        dims[0] = DimSplit::over(dp.iter().cloned());
                    }
                }
            }
            let stage = match layer_of(&t.name) {
                Some(l) => l / per_stage,
                None if t.name.contains("embed_tokens") => 0,
                None => p.pp - 1,
            };
            let pin = if p.pp > 1 {
                vec![("pp".to_string(), stage)]
            } else {
                Vec::new()
            };
            let cfg = LayoutConfig::new(dims).with_pin(pin);
            TensorLayout::new(mesh.clone(), &t.shape, &cfg)
                .unwrap_or_else(|e| panic!("{name}: {}: {e}", t.name))
        })
        .collect();
    Strategy::new(name, mesh, tensors.to_vec(), layouts).expect("valid strategy")
}

/// A source and a destination strategy, and the tensors to plan (`None`: all).
struct Case {
    src: Arc<Strategy>,
    dst: Strategy,
    tensors: Option<Vec<String>>,
}

impl Case {
    fn config(&self) -> PlanConfig {
        let mut config = PlanConfig::new(ReplicaChoice::Balance);
        config.tensors = self.tensors.clone();
        config
    }

    fn plan(&self) -> SlicePlan {
        plan_transfer(&self.src, &self.dst, &self.config()).expect("plannable")
    }
}

/// Destinations of the 70B training checkpoint.
const TRAIN70B_DSTS: [&str; 4] = ["tp8", "tp4", "pp2_tp4", "single"];

/// Tensors of the 1024-rank model planned in the verification case: the
/// first `VERIFY_TENSORS` of the list (embeddings, layers 0-27 and three
/// tensors of layer 28), whose
/// plan has 16,384 pieces (64 per tensor).
const VERIFY_TENSORS: usize = 256;

struct Cases {
    train70b: BTreeMap<&'static str, Case>,
    ranks1024: Case,
    verify: Case,
}

/// Built once, outside every timed closure; an error (the message to print)
/// when the parameter list cannot be read.
static CASES: LazyLock<Result<Cases, String>> = LazyLock::new(|| {
    let tensors = load_params()?;
    let src = Arc::new(megatron(
        "train_pp8_dp2_tp8",
        &tensors,
        Parallel {
            pp: 8,
            dp: 2,
            tp: 8,
        },
    ));
    let dsts = [
        (
            "tp8",
            Parallel {
                pp: 1,
                dp: 1,
                tp: 8,
            },
        ),
        (
            "tp4",
            Parallel {
                pp: 1,
                dp: 1,
                tp: 4,
            },
        ),
        (
            "pp2_tp4",
            Parallel {
                pp: 2,
                dp: 1,
                tp: 4,
            },
        ),
        (
            "single",
            Parallel {
                pp: 1,
                dp: 1,
                tp: 1,
            },
        ),
    ];
    let train70b = dsts
        .into_iter()
        .map(|(name, p)| {
            let case = Case {
                src: src.clone(),
                dst: megatron(name, &tensors, p),
                tensors: None,
            };
            (name, case)
        })
        .collect();
    let src1024 = Arc::new(megatron(
        "train_pp16_dp8_tp8",
        &tensors,
        Parallel {
            pp: 16,
            dp: 8,
            tp: 8,
        },
    ));
    let dst128 = megatron(
        "serve_pp16_tp8",
        &tensors,
        Parallel {
            pp: 16,
            dp: 1,
            tp: 8,
        },
    );
    let verify = Case {
        src: src1024.clone(),
        dst: dst128.clone(),
        tensors: Some(
            tensors
                .iter()
                .take(VERIFY_TENSORS)
                .map(|t| t.name.clone())
                .collect(),
        ),
    };
    Ok(Cases {
        train70b,
        ranks1024: Case {
            src: src1024,
            dst: dst128,
            tensors: None,
        },
        verify,
    })
});

fn cases() -> &'static Cases {
    CASES.as_ref().expect("checked in main")
}

// ---------------------------------------------------------------------------
// Baseline
// ---------------------------------------------------------------------------

/// A copy found by the baseline.
#[allow(dead_code)] // fields are the output, read only by the summary
struct BasePiece {
    tensor: usize,
    dst_rank: u64,
    src_rank: u64,
    /// Global box.
    dst_box: Region,
    /// The box in the source rank's local buffer.
    src_local: Region,
    /// The box in the destination rank's local buffer.
    dst_local: Region,
}

/// The straightforward planner, in the manner of torch.distributed.checkpoint's
/// default load planner: for every tensor, for every destination rank's box,
/// scan every source rank's box and intersect. Replicas of a source shard are
/// resolved by scan order: the lowest source rank holding a box reads it; later
/// ranks holding the same box are skipped. No locality, no balancing, no
/// coalescing.
fn baseline_plan(src: &Strategy, dst: &Strategy, tensors: Option<&[String]>) -> Vec<BasePiece> {
    let names: Vec<&str> = match tensors {
        Some(list) => list.iter().map(String::as_str).collect(),
        None => src.tensors().iter().map(|t| t.name.as_str()).collect(),
    };
    let mut out = Vec::new();
    for (ti, name) in names.iter().enumerate() {
        let sl = src.layout(name).expect("tensor in source");
        let dl = dst.layout(name).expect("tensor in destination");
        // The checkpoint metadata: every source rank's box.
        let src_boxes: Vec<(u64, Region)> = (0..src.mesh().rank_count())
            .filter_map(|s| sl.region_of(s).map(|r| (s, r)))
            .collect();
        for d in 0..dst.mesh().rank_count() {
            let Some(need) = dl.region_of(d).filter(|r| !r.is_empty()) else {
                continue;
            };
            // Source boxes already read by this destination: a replica of
            // one of them (held by a higher rank) is skipped.
            let mut seen: Vec<&Region> = Vec::new();
            for (s, have) in &src_boxes {
                let Some(cut) = have.intersect(&need) else {
                    continue;
                };
                if seen.contains(&have) {
                    continue;
                }
                seen.push(have);
                out.push(BasePiece {
                    tensor: ti,
                    dst_rank: d,
                    src_rank: *s,
                    src_local: cut.relative_to(have),
                    dst_local: cut.relative_to(&need),
                    dst_box: cut,
                });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------

fn main() {
    if let Err(e) = &*CASES {
        eprintln!(
            "shardplan planner benchmarks SKIPPED: cannot read the Llama-70B parameter list ({e}). \
             Put it at ../shared/data/llama70b_params.json or set SHARDPLAN_PARAMS."
        );
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let bench_mode = has("--bench") && !has("--test") && !has("--list");
    if bench_mode {
        print_summary();
    }
    divan::main();
}

/// Plan sizes of every case, and a check that every plan verifies.
fn print_summary() {
    let c = cases();
    let mut rows: Vec<(String, &Case)> = c
        .train70b
        .iter()
        .map(|(name, case)| (format!("train70b/{name}"), case))
        .collect();
    rows.push(("ranks1024".to_string(), &c.ranks1024));
    rows.push((format!("verify ({VERIFY_TENSORS} tens.)"), &c.verify));
    println!("Plan sizes (shardplan, ReplicaChoice::Balance) and the baseline on the same case:");
    println!(
        "{:<22} {:>7} {:>7} {:>14} {:>14} {:>12} {:>12} {:>7} | {:>7} {:>14} {:>12} {:>7}",
        "case",
        "tensors",
        "pieces",
        "network B",
        "lower bound B",
        "max send",
        "max send LB",
        "ratio",
        "base pcs",
        "base network B",
        "base max send",
        "ratio"
    );
    for (name, case) in rows {
        let plan = case.plan();
        let s = plan.summary();
        let v = check_plan(&plan, &case.src, &case.dst).expect("the plan verifies");
        assert_eq!(v.pieces, s.pieces);
        let base = baseline_plan(&case.src, &case.dst, case.tensors.as_deref());
        let mut base_net = 0u64;
        let mut base_send: BTreeMap<u64, u64> = BTreeMap::new();
        let mut base_total = 0u64;
        for p in &base {
            let bytes = p.dst_box.volume() * plan.tensors[p.tensor].dtype.size_bytes();
            base_total += bytes;
            let same_device = case.src.mesh().device_of(p.src_rank).ok()
                == case.dst.mesh().device_of(p.dst_rank).ok();
            if !same_device {
                base_net += bytes;
                *base_send.entry(p.src_rank).or_default() += bytes;
            }
        }
        let base_max_send = base_send.values().max().copied().unwrap_or(0);
        assert_eq!(
            base_total,
            s.total_bytes + s.local_bytes,
            "{name}: the baseline covers every destination element once"
        );
        println!(
            "{:<22} {:>7} {:>7} {:>14} {:>14} {:>12} {:>12} {:>7.4} | {:>7} {:>14} {:>12} {:>7.4}",
            name,
            plan.tensors.len(),
            s.pieces,
            s.total_bytes,
            s.lower_bound_bytes,
            s.max_send_bytes,
            s.max_send_lower_bound_bytes,
            s.max_send_bytes as f64 / s.max_send_lower_bound_bytes.max(1) as f64,
            base.len(),
            base_net,
            base_max_send,
            base_max_send as f64 / s.max_send_lower_bound_bytes.max(1) as f64,
        );
    }
    println!();
}

/// shardplan's planner and the baseline on the 70B training checkpoint.
#[divan::bench_group(sample_count = 30, sample_size = 1)]
mod train70b {
    use super::*;

    #[divan::bench(args = TRAIN70B_DSTS)]
    fn shardplan(bencher: Bencher, dst: &str) {
        let case = &cases().train70b[dst];
        let config = case.config();
        bencher.bench(|| plan_transfer(&case.src, &case.dst, &config).expect("plannable"));
    }

    #[divan::bench(args = TRAIN70B_DSTS)]
    fn baseline(bencher: Bencher, dst: &str) {
        let case = &cases().train70b[dst];
        bencher.bench(|| baseline_plan(&case.src, &case.dst, case.tensors.as_deref()));
    }
}

/// 1024 training ranks to 128 serving ranks.
#[divan::bench_group(sample_count = 20, sample_size = 1)]
mod ranks1024 {
    use super::*;

    #[divan::bench]
    fn shardplan(bencher: Bencher) {
        let case = &cases().ranks1024;
        let config = case.config();
        bencher.bench(|| plan_transfer(&case.src, &case.dst, &config).expect("plannable"));
    }

    #[divan::bench]
    fn baseline(bencher: Bencher) {
        let case = &cases().ranks1024;
        bencher.bench(|| baseline_plan(&case.src, &case.dst, case.tensors.as_deref()));
    }
}

/// `check_plan` alone, on plans built outside the timed closure.
#[divan::bench_group(sample_count = 50, sample_size = 1)]
mod verify {
    use super::*;

    /// The 16,384-piece plan (the first 256 tensors of the 1024-to-128 case).
    #[divan::bench]
    fn pieces_16k(bencher: Bencher) {
        let case = &cases().verify;
        let plan = case.plan();
        bencher.bench(|| check_plan(&plan, &case.src, &case.dst).expect("the plan verifies"));
    }

    /// The whole 1024-to-128 plan (46,272 pieces), to show how it scales.
    #[divan::bench]
    fn ranks1024(bencher: Bencher) {
        let case = &cases().ranks1024;
        let plan = case.plan();
        bencher.bench(|| check_plan(&plan, &case.src, &case.dst).expect("the plan verifies"));
    }
}

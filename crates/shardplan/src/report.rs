//! Human-readable plan reports and explanations (pure text, no IO).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::Strategy;
use crate::{DimLayout, TensorLayout};
use crate::{SlicePlan, TensorPlan};

/// Per rank, what it sends or receives.
type Traffic = BTreeMap<u64, crate::RankTraffic>;

/// `1.5 GiB`-style sizes.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The text report of `shardplan plan`: totals, the `top` largest movers
/// among tensors and ranks.
pub fn plan_report(plan: &SlicePlan, top: usize) -> String {
    let (send, recv) = plan.traffic();
    let mut out = String::new();
    write_totals(&mut out, plan, &recv);
    write_tensor_movers(&mut out, plan, top);
    write_senders(&mut out, &send, top);
    write_receivers(&mut out, &recv, top);
    out
}

/// `a / b` to three places; `inf` when only `b` is 0.
fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        if a == 0 {
            "1.000".to_string()
        } else {
            "inf".to_string()
        }
    } else {
        format!("{:.3}", a as f64 / b as f64)
    }
}

/// The header and the plan's totals against their lower bounds.
fn write_totals(out: &mut String, plan: &SlicePlan, recv: &Traffic) {
    let s = plan.summary();
    let _ = writeln!(
        out,
        "plan {} ({} ranks) -> {} ({} ranks), {} tensors, replicas chosen to {}",
        plan.source,
        plan.src_ranks,
        plan.destination,
        plan.dst_ranks,
        plan.tensors.len(),
        match plan.replica_choice {
            crate::ReplicaChoice::Balance => "balance sends",
            crate::ReplicaChoice::MinFiles => "minimise files read",
        }
    );
    let _ = writeln!(out);
    let rows = [
        ("network bytes", s.total_bytes, Some(s.lower_bound_bytes)),
        ("local bytes", s.local_bytes, None),
        (
            "max send per rank",
            s.max_send_bytes,
            Some(s.max_send_lower_bound_bytes),
        ),
        ("max receive per rank", s.max_recv_bytes, None),
    ];
    for (name, v, bound) in rows {
        let _ = write!(out, "  {name:<22}{:>14}  ({v} B)", human_bytes(v));
        if let Some(b) = bound {
            let _ = write!(out, "  lower bound {} B, ratio {}", b, ratio(v, b));
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "  {:<22}{:>14}", "network messages", s.messages);
    let _ = writeln!(out, "  {:<22}{:>14}", "pieces", s.pieces);
    let files: Vec<usize> = recv.values().map(|r| r.files.len()).collect();
    let _ = writeln!(
        out,
        "  {:<22}{:>14}  (max {} per destination rank)",
        "files read",
        files.iter().sum::<usize>(),
        files.iter().max().unwrap_or(&0)
    );
}

/// The `top` tensors moving the most network bytes.
fn write_tensor_movers(out: &mut String, plan: &SlicePlan, top: usize) {
    let mut by_tensor: Vec<(&TensorPlan, u64, u64, u64)> = plan
        .tensors
        .iter()
        .map(|t| {
            let (mut net, mut local, mut msgs) = (0, 0, 0);
            for p in &t.pieces {
                if p.local {
                    local += t.piece_bytes(p);
                } else {
                    net += t.piece_bytes(p);
                    msgs += 1;
                }
            }
            (t, net, local, msgs)
        })
        .collect();
    by_tensor.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.name.cmp(&b.0.name)));
    let _ = writeln!(out);
    let _ = writeln!(out, "largest movers (tensors):");
    let _ = writeln!(
        out,
        "  {:>12} {:>12} {:>8}  tensor",
        "network", "local", "messages"
    );
    for (t, net, local, msgs) in by_tensor.iter().take(top) {
        let _ = writeln!(
            out,
            "  {:>12} {:>12} {:>8}  {} {} {:?}",
            human_bytes(*net),
            human_bytes(*local),
            msgs,
            t.name,
            t.dtype,
            t.shape
        );
    }
    if by_tensor.len() > top {
        let _ = writeln!(out, "  ... {} more tensors", by_tensor.len() - top);
    }
}

/// The `top` source ranks sending the most bytes.
fn write_senders(out: &mut String, send: &Traffic, top: usize) {
    let mut senders: Vec<(u64, u64, u64)> = send
        .iter()
        .map(|(r, t)| (*r, t.send_bytes, t.sent_messages))
        .collect();
    senders.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let _ = writeln!(out);
    let _ = writeln!(out, "largest senders (source ranks):");
    for (r, bytes, msgs) in senders.iter().take(top) {
        let _ = writeln!(
            out,
            "  rank {r:>5}  {:>12}  {msgs} messages",
            human_bytes(*bytes)
        );
    }
    if senders.len() > top {
        let _ = writeln!(out, "  ... {} more ranks", senders.len() - top);
    }
}

/// The `top` destination ranks receiving the most bytes.
fn write_receivers(out: &mut String, recv: &Traffic, top: usize) {
    let mut receivers: Vec<(u64, &crate::RankTraffic)> =
        recv.iter().map(|(r, t)| (*r, t)).collect();
    receivers.sort_by(|a, b| b.1.recv_bytes.cmp(&a.1.recv_bytes).then(a.0.cmp(&b.0)));
    let _ = writeln!(out);
    let _ = writeln!(out, "largest receivers (destination ranks):");
    for (r, t) in receivers.iter().take(top) {
        let _ = writeln!(
            out,
            "  rank {r:>5}  {:>12}  {} messages, {} local, reads {} files",
            human_bytes(t.recv_bytes),
            t.received_messages,
            human_bytes(t.local_bytes),
            t.files.len()
        );
    }
    if receivers.len() > top {
        let _ = writeln!(out, "  ... {} more ranks", receivers.len() - top);
    }
}

/// Why `tensor` moves what it moves between `src` and `dst`: which
/// dimensions and axes disagree, and which ranks send to which.
///
/// # Panics
///
/// When the tensor is missing from either strategy (callers check first).
pub fn explain_tensor(src: &Strategy, dst: &Strategy, t: &TensorPlan) -> String {
    let sl = src.layout(&t.name).expect("tensor in source");
    let dl = dst.layout(&t.name).expect("tensor in destination");
    let mut out = String::new();
    let size = t.shape.iter().product::<u64>() * t.dtype.size_bytes();
    let _ = writeln!(
        out,
        "tensor {} {} {:?} ({})",
        t.name,
        t.dtype,
        t.shape,
        human_bytes(size)
    );
    for (side, s, l) in [("source", src, sl), ("destination", dst, dl)] {
        let holders = (0..s.mesh().rank_count()).filter(|&r| l.holds(r)).count();
        let _ = writeln!(
            out,
            "  {side:<12} {}: {l} on mesh {}; {} distinct blocks, each on {} of {} ranks",
            s.name(),
            l.mesh(),
            l.shards().iter().filter(|(r, _)| !r.is_empty()).count(),
            l.replica_count(),
            holders
        );
    }
    let _ = writeln!(out);
    for (k, (sd, dd)) in sl.dims().iter().zip(dl.dims()).enumerate() {
        let (sdesc, ddesc) = (describe_dim(sl, sd), describe_dim(dl, dd));
        let verdict = if block_bounds(sd) == block_bounds(dd) {
            "same cut on both sides"
        } else {
            "the cuts differ: blocks are regrouped"
        };
        let _ = writeln!(
            out,
            "  dim {k} (size {}): source {sdesc}; destination {ddesc}; {verdict}",
            t.shape[k]
        );
    }
    if !sl.pin().is_empty() || !dl.pin().is_empty() {
        let _ = writeln!(
            out,
            "  stages: source on {}; destination on {}",
            pin_text(sl),
            pin_text(dl)
        );
    }
    write_pieces(&mut out, t);
    out
}

/// How one dimension of `l` is cut. A layout given box by box has no
/// axes: its boxes' edges cut it.
fn describe_dim(l: &TensorLayout, d: &DimLayout) -> String {
    if l.is_explicit() && d.block_count() > 1 {
        format!("cut by its boxes into {}", block_sizes(d))
    } else if d.axes().is_empty() {
        "not split".to_string()
    } else {
        let names: Vec<&str> = d.axes().iter().map(|&a| l.axis_name(a)).collect();
        format!("split over {} into {}", names.join(", "), block_sizes(d))
    }
}

/// `4 block(s) of 3 or 2`: the count and the distinct sizes.
fn block_sizes(d: &DimLayout) -> String {
    let sizes: BTreeSet<u64> = (0..d.block_count())
        .map(|b| {
            let (s, e) = d.block(b);
            e - s
        })
        .collect();
    let list: Vec<String> = sizes.iter().map(u64::to_string).collect();
    format!("{} block(s) of {}", d.block_count(), list.join(" or "))
}

/// Each block's `(start, end)`.
fn block_bounds(d: &DimLayout) -> Vec<(u64, u64)> {
    (0..d.block_count()).map(|b| d.block(b)).collect()
}

/// The stage a layout is pinned to, or the whole mesh.
fn pin_text(l: &TensorLayout) -> String {
    if l.pin().is_empty() {
        "every rank of the mesh".into()
    } else {
        l.pin_text()
    }
}

/// The tensor's bytes moved, then per destination rank the first 16 pieces
/// it receives.
fn write_pieces(out: &mut String, t: &TensorPlan) {
    let (mut net, mut local) = (0, 0);
    let mut lines: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for p in &t.pieces {
        let b = t.piece_bytes(p);
        if p.local {
            local += b;
        } else {
            net += b;
        }
        lines.entry(p.dst_rank).or_default().push(format!(
            "{} from rank {}{}",
            p.dst_box,
            p.src_rank,
            if p.local { " (local copy)" } else { "" }
        ));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  moves {} over the network and copies {} locally",
        human_bytes(net),
        human_bytes(local)
    );
    for (d, ls) in &lines {
        let _ = writeln!(out, "  rank {d} receives:");
        for l in ls.iter().take(16) {
            let _ = writeln!(out, "    {l}");
        }
        if ls.len() > 16 {
            let _ = writeln!(out, "    ... {} more pieces", ls.len() - 16);
        }
    }
}

/// Which logical boxes each rank's copy of the engine parameter `param`
/// holds, where, and how much of it is padding; `None` when no rank has
/// a parameter of that name.
///
/// # Example
///
/// ```
/// use std::path::Path;
/// use shardplan::engine::{Engine, EngineDegrees, ModelConfig, engine_layout};
///
/// let json = br#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
///   "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 96,
///   "num_hidden_layers": 1, "vocab_size": 100}"#;
/// let config = ModelConfig::parse(Path::new("config.json"), json)?;
/// let layout = engine_layout(Engine::Vllm, &config, EngineDegrees::tp(2), shardplan::DType::BF16)?;
/// let text = shardplan::report::explain_param(&layout.map, "model.embed_tokens.weight").unwrap();
/// // Rank 1 holds rows 64..100 of the vocabulary; its last 28 rows are zero.
/// assert!(text.contains("rank 1 [64, 64] bf16, 1792 of 4096 elements padding"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn explain_param(map: &crate::storage::StorageMap, param: &str) -> Option<String> {
    let mut out = String::new();
    for rank in 0..map.rank_count() {
        let Some(p) = map.params(rank).iter().find(|p| p.name == param) else {
            continue;
        };
        let total: u64 = p.shape.iter().product();
        let stored: u64 = p.segments.iter().map(|s| s.logical.volume()).sum();
        let _ = write!(out, "rank {rank} {:?} {}", p.shape, p.dtype.name());
        if stored < total {
            let _ = write!(out, ", {} of {} elements padding", total - stored, total);
        }
        out.push('\n');
        for s in &p.segments {
            let _ = writeln!(out, "  at {:?}: {} {}", s.at, s.tensor, s.logical);
        }
    }
    (!out.is_empty()).then(|| format!("{param}\n{out}"))
}

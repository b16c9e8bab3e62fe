//! Human-readable plan reports and explanations (pure text, no IO).

use std::fmt::Write;

use crate::Strategy;
use crate::{SlicePlan, TensorPlan};

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
    let s = plan.summary();
    let (send, recv) = plan.traffic();
    let mut out = String::new();
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            if a == 0 {
                "1.000".to_string()
            } else {
                "inf".to_string()
            }
        } else {
            format!("{:.3}", a as f64 / b as f64)
        }
    };
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
    out
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
        let names = |l: &crate::TensorLayout, axes: &[usize]| -> String {
            axes.iter()
                .map(|&a| l.axis_name(a).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let blocks = |d: &crate::DimLayout| -> String {
            let sizes: std::collections::BTreeSet<u64> = (0..d.block_count())
                .map(|b| {
                    let (s, e) = d.block(b);
                    e - s
                })
                .collect();
            let list: Vec<String> = sizes.iter().map(u64::to_string).collect();
            format!("{} block(s) of {}", d.block_count(), list.join(" or "))
        };
        // A layout given box by box has no axes: its boxes' edges cut it.
        let describe = |l: &crate::TensorLayout, d: &crate::DimLayout| -> String {
            if l.is_explicit() && d.block_count() > 1 {
                format!("cut by its boxes into {}", blocks(d))
            } else if d.axes().is_empty() {
                "not split".to_string()
            } else {
                format!("split over {} into {}", names(l, d.axes()), blocks(d))
            }
        };
        let (sdesc, ddesc) = (describe(sl, sd), describe(dl, dd));
        let same = (0..sd.block_count())
            .map(|b| sd.block(b))
            .collect::<Vec<_>>()
            == (0..dd.block_count())
                .map(|b| dd.block(b))
                .collect::<Vec<_>>();
        let verdict = if same {
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
        let pins = |l: &crate::TensorLayout| -> String {
            if l.pin().is_empty() {
                "every rank of the mesh".into()
            } else {
                l.pin_text()
            }
        };
        let _ = writeln!(
            out,
            "  stages: source on {}; destination on {}",
            pins(sl),
            pins(dl)
        );
    }
    let (mut net, mut local) = (0, 0);
    let mut lines: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
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
    out
}

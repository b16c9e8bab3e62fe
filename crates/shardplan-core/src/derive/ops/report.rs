//! The text report of an operator derivation ([`OperatorDerivation::report`]).

use super::{OpLayout, Operator, OperatorDerivation, OperatorGraph, RepeatSide};
use crate::notation::mindspore::MindSporeLayout;

impl OperatorDerivation {
    /// A text report: every operator's device matrix and tensor maps, each
    /// weight's source, and the redistributions.
    pub fn report(&self, graph: &OperatorGraph) -> String {
        let mut out = report_header(graph);
        for (i, (op, l)) in graph.ops.iter().zip(&self.ops).enumerate() {
            write_operator(&mut out, i, op, l, graph.stages > 1);
        }
        self.write_weights(&mut out, graph);
        self.write_conflicts(&mut out, graph);
        self.write_redistributions(&mut out, graph);
        out
    }

    /// One line per tensor: the operator input whose layout it takes, or
    /// replicated.
    fn write_weights(&self, out: &mut String, graph: &OperatorGraph) {
        use std::fmt::Write;
        let _ = writeln!(out, "weights:");
        for (t, w) in self.strategy.tensors().iter().zip(&self.weights) {
            let Some(w) = w else {
                let _ = writeln!(out, "  {}: replicated (no operator reads it)", t.name);
                continue;
            };
            let _ = write!(
                out,
                "  {}: {} (input {} of #{} `{}`)",
                t.name,
                show_ms(&w.layout),
                w.input,
                w.op,
                graph.ops[w.op].name
            );
            if graph.stages > 1 {
                let st: Vec<String> = w.stages.iter().map(u64::to_string).collect();
                let _ = write!(out, " on stage {}", st.join(", "));
            }
            out.push('\n');
        }
    }

    fn write_conflicts(&self, out: &mut String, graph: &OperatorGraph) {
        use std::fmt::Write;
        for c in &self.conflicts {
            let _ = writeln!(
                out,
                "conflict: {} is read by #{} `{}` as {}, {} B to fetch; it keeps the layout of #{} `{}`",
                c.tensor,
                c.other,
                graph.ops[c.other].name,
                show_ms(&c.wanted),
                c.bytes,
                c.first,
                graph.ops[c.first].name
            );
        }
    }

    fn write_redistributions(&self, out: &mut String, graph: &OperatorGraph) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "redistributions: {} ({} B)",
            self.redistributions.len(),
            self.redistribution_bytes()
        );
        for r in &self.redistributions {
            let _ = writeln!(
                out,
                "  {}: #{} `{}` leaves {}, #{} `{}` needs {}: {} B",
                r.activation,
                r.producer,
                graph.ops[r.producer].name,
                show_ms(&r.from),
                r.consumer,
                graph.ops[r.consumer].name,
                show_ms(&r.to),
                r.bytes
            );
        }
    }
}

/// The report's first line: devices, stages, batch, repeated calculation.
fn report_header(graph: &OperatorGraph) -> String {
    let stages = if graph.stages > 1 {
        format!("{} stages of ", graph.stages)
    } else {
        String::new()
    };
    let repeat = match graph.repeated_calc {
        RepeatSide::Right => "right",
        RepeatSide::Left => "left",
    };
    format!(
        "operators on {stages}{} devices, batch {} (repeated calculation: {repeat})\n",
        graph.devices, graph.batch
    )
}

/// Operator `i`'s line: its device matrix, input and output maps, and the
/// collective its output needs.
fn write_operator(out: &mut String, i: usize, op: &Operator, l: &OpLayout, staged: bool) {
    use std::fmt::Write;
    let maps: Vec<String> = op
        .inputs
        .iter()
        .zip(&l.inputs)
        .map(|(n, m)| format!("{n} {m:?}"))
        .collect();
    let _ = write!(out, "  #{i} {} `{}`", op.kind, op.name);
    if staged {
        let _ = write!(out, " (stage {})", op.stage);
    }
    let _ = write!(out, ": dev_matrix {:?}", l.dev_matrix);
    if l.repeat > 1 {
        let _ = write!(out, " (repeated x{})", l.repeat);
    }
    let _ = write!(
        out,
        "; {}; -> {} {:?}",
        maps.join(", "),
        op.output,
        l.output
    );
    if l.output_dev_matrix != l.dev_matrix {
        let _ = write!(out, " on {:?}", l.output_dev_matrix);
    }
    if let Some(c) = l.forward {
        let _ = write!(
            out,
            "; {} over {} ranks of {} B",
            c.collective, c.ranks, c.output_bytes
        );
    }
    out.push('\n');
}

fn show_ms(l: &MindSporeLayout) -> String {
    let tm: Vec<String> = l
        .tensor_map
        .iter()
        .map(|e| e.first().copied().unwrap_or(-1).to_string())
        .collect();
    format!("dev {:?} map [{}]", l.dev_matrix, tm.join(", "))
}

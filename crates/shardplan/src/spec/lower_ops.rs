//! Lowering the `operators:` section: the sizes, the graph inputs, the
//! operators, then a derivation run so that a spec that checks also
//! derives, its first fault placed on the operator or input at fault.

use super::raw::{self, RawActivation, RawOp, RawOperators, S};
use super::{Cx, DiagCode, Span, miette_help, span_of};
use crate::TensorInfo;
use crate::derive::ops::{
    ActivationInput, DimSize, OpKind, Operator, OperatorGraph, OpsError, RepeatSide,
    derive_from_operators,
};

const OPS_HELP: &str = "see docs/derive.md: operators take weights, graph inputs or earlier outputs, one strategy per input";

impl Cx {
    /// Checks the `operators:` section and lays the operators out, so that
    /// a spec that checks also derives.
    pub(super) fn lower_operators(
        &mut self,
        o: &S<RawOperators>,
        tensors: &[(TensorInfo, Span)],
    ) -> Option<OperatorGraph> {
        let raw = &o.value;
        // Every part is checked, so that each problem is reported.
        let sizes_ok = self.check_operator_sizes(o);
        let repeated_calc = self.repeated_calc(raw);
        let inputs = self.graph_inputs(raw, tensors);
        let ops = self.operators(raw);
        let graph = OperatorGraph {
            devices: raw.devices.value,
            stages: raw.stages.as_ref().map_or(1, |s| s.value),
            batch: raw.batch.as_ref().map_or(1, |b| b.value),
            repeated_calc: repeated_calc?,
            inputs: inputs?,
            ops: ops?,
        };
        if !sizes_ok {
            return None;
        }
        let infos: Vec<TensorInfo> = tensors.iter().map(|(t, _)| t.clone()).collect();
        match derive_from_operators(&graph, &infos) {
            Ok(_) => Some(graph),
            Err(e) => {
                self.report_derivation(o, &e);
                None
            }
        }
    }

    /// `devices`, `stages` and `batch` are not 0.
    fn check_operator_sizes(&mut self, o: &S<RawOperators>) -> bool {
        let raw = &o.value;
        let mut ok = true;
        if raw.devices.value == 0 {
            self.error(
                DiagCode::BadOperator,
                span_of(&raw.devices),
                "operators: `devices` is 0".into(),
                "no devices",
                "give the devices of the stage the strategies are written for",
            );
            ok = false;
        }
        if let Some(st) = raw.stages.as_ref().filter(|s| s.value == 0) {
            self.error(
                DiagCode::BadOperator,
                span_of(st),
                "operators: `stages` is 0".into(),
                "no stages",
                "give the pipeline stages (1 without a pipeline)",
            );
            ok = false;
        }
        if raw.batch.as_ref().is_some_and(|b| b.value == 0) {
            self.error(
                DiagCode::BadOperator,
                raw.batch.as_ref().map_or(span_of(o), span_of),
                "operators: `batch` is 0".into(),
                "empty batch",
                "the batch is at least 1",
            );
            ok = false;
        }
        ok
    }

    /// The side `repeated_calc` names (right when none is), or `None` for
    /// an unknown one.
    fn repeated_calc(&mut self, raw: &RawOperators) -> Option<RepeatSide> {
        let Some(r) = &raw.repeated_calc else {
            return Some(RepeatSide::Right);
        };
        match r.value.parse::<RepeatSide>() {
            Ok(side) => Some(side),
            Err(e) => {
                self.error(
                    DiagCode::BadOperator,
                    span_of(r),
                    format!("operators: {e}"),
                    "unknown side",
                    "`repeated_calc` is right (MindSpore 2.x) or left (earlier versions)",
                );
                None
            }
        }
    }

    /// The graph inputs, or `None` when one is at fault.
    fn graph_inputs(
        &mut self,
        raw: &RawOperators,
        tensors: &[(TensorInfo, Span)],
    ) -> Option<Vec<ActivationInput>> {
        let mut ok = true;
        let mut inputs: Vec<ActivationInput> = Vec::new();
        for a in &raw.inputs {
            let a = &a.value;
            let taken = tensors.iter().any(|(t, _)| t.name == a.name.value)
                || inputs.iter().any(|i| i.name == a.name.value);
            if taken {
                self.error(
                    DiagCode::BadOperator,
                    span_of(&a.name),
                    format!(
                        "operators: graph input `{}` is already a tensor or another input",
                        a.name.value
                    ),
                    "name taken",
                    "give graph inputs names of their own",
                );
                ok = false;
                continue;
            }
            match self.graph_input(a) {
                Some((input, shape_ok)) => {
                    // Kept with a bad shape, so that its name stays taken.
                    ok &= shape_ok;
                    inputs.push(input);
                }
                None => ok = false,
            }
        }
        ok.then_some(inputs)
    }

    /// One graph input, and whether its shape (sizes and `batch`) reads;
    /// `None` for an unknown dtype.
    fn graph_input(&mut self, a: &RawActivation) -> Option<(ActivationInput, bool)> {
        let dtype = self.dtype(&format!("graph input `{}`", a.name.value), &a.dtype)?;
        let mut ok = true;
        let mut shape = Vec::new();
        for d in &a.shape.value {
            match &d.value {
                raw::RawSize::Fixed(n) => shape.push(DimSize::Fixed(*n)),
                raw::RawSize::Word(w) if w == "batch" => shape.push(DimSize::Batch),
                raw::RawSize::Word(w) => {
                    self.error(
                        DiagCode::BadOperator,
                        span_of(d),
                        format!(
                            "operators: `{w}` in the shape of `{}` is neither a size nor `batch`",
                            a.name.value
                        ),
                        "not a size",
                        "write sizes as integers, and `batch` for the batch dimension",
                    );
                    ok = false;
                }
            }
        }
        let input = ActivationInput {
            name: a.name.value.clone(),
            shape,
            dtype,
        };
        Some((input, ok))
    }

    /// The operators, or `None` when one has an unknown kind.
    fn operators(&mut self, raw: &RawOperators) -> Option<Vec<Operator>> {
        let mut ok = true;
        let mut ops = Vec::new();
        for (i, op) in raw.ops.value.iter().enumerate() {
            match self.operator(i, &op.value) {
                Some(op) => ops.push(op),
                None => ok = false,
            }
        }
        ok.then_some(ops)
    }

    /// Operator `i`, named by its `name` or else `<kind>#<i>`.
    fn operator(&mut self, i: usize, r: &RawOp) -> Option<Operator> {
        let kind = match r.op.value.parse::<OpKind>() {
            Ok(k) => k,
            Err(e) => {
                self.error(
                    DiagCode::BadOperator,
                    span_of(&r.op),
                    format!("operators: {e}"),
                    "unknown operator",
                    OPS_HELP,
                );
                return None;
            }
        };
        let name = r
            .name
            .as_ref()
            .map_or_else(|| format!("{kind}#{i}"), |n| n.value.clone());
        Some(Operator {
            kind,
            output: r
                .output
                .as_ref()
                .map_or_else(|| name.clone(), |n| n.value.clone()),
            name,
            inputs: r.inputs.value.iter().map(|n| n.value.clone()).collect(),
            strategy: r.strategy.value.clone(),
            transpose_b: r.transpose_b,
            transpose_a: r.transpose_a,
            stage: r.stage.as_ref().map_or(0, |s| s.value),
        })
    }

    /// The derivation's fault, placed on the input or operator it names.
    fn report_derivation(&mut self, o: &S<RawOperators>, e: &OpsError) {
        let ops = &o.value.ops.value;
        let at_input = |(op, input): (usize, Option<usize>)| {
            let r = ops.get(op)?;
            Some(match input.and_then(|k| r.value.inputs.value.get(k)) {
                Some(i) => (span_of(i), "this input"),
                None => (span_of(&r.value.op), "this operator"),
            })
        };
        let (span, label) = e
            .location()
            .and_then(at_input)
            .unwrap_or((span_of(o), "operators"));
        self.error(
            DiagCode::BadOperator,
            span,
            format!("operators: {e}"),
            label,
            &miette_help(e),
        );
    }
}

//! The layout an operator family builds ([`Raw`]), the dispatch to the
//! families, and the repeated-calculation axis that makes it an
//! [`OpLayout`].

use super::elementwise::elementwise;
use super::gather::gather;
use super::matmul::matmul;
use super::norm::norm;
use super::{
    Collective, ForwardComm, OpKind, OpLayout, Operator, OperatorGraph, OpsError, RepeatSide,
};
use crate::dtype::DType;

/// Device matrix without repetition, input maps, output device matrix and
/// map, collective, and the repeat side for this operator.
pub(super) struct Raw {
    pub(super) dev: Vec<u64>,
    pub(super) inputs: Vec<Vec<i64>>,
    pub(super) out_dev: Vec<u64>,
    pub(super) output: Vec<i64>,
    pub(super) output_shape: Vec<u64>,
    pub(super) forward: Option<(Collective, u64)>,
    pub(super) side: Option<RepeatSide>,
}

pub(super) fn descending(n: usize) -> Vec<i64> {
    (0..n).rev().map(|k| k as i64).collect()
}

pub(super) fn product(v: &[u64]) -> u64 {
    v.iter().product()
}

/// The layout operator `o`'s kind builds from its inputs' shapes and its
/// strategy, before the repeated-calculation axis.
pub(super) fn raw_layout(
    o: usize,
    op: &Operator,
    shapes: &[&[u64]],
    devices: u64,
) -> Result<Raw, OpsError> {
    let st = &op.strategy;
    match op.kind {
        OpKind::MatMul | OpKind::BatchMatMul => {
            let t = (op.transpose_a, op.transpose_b);
            matmul(o, op.kind, shapes, st, t, devices)
        }
        OpKind::Gather => gather(o, shapes, st, devices),
        OpKind::Add | OpKind::Mul => elementwise(o, op.kind, shapes, st),
        OpKind::RmsNorm | OpKind::LayerNorm => norm(o, op.kind, shapes, st),
    }
}

/// Operator `o`'s layout on the stage: `raw` with the repeated-calculation
/// axis for the devices its strategy leaves idle, and its collective
/// sized by an output of `dtype`.
pub(super) fn op_layout(
    o: usize,
    raw: Raw,
    graph: &OperatorGraph,
    dtype: DType,
) -> Result<OpLayout, OpsError> {
    let devices = graph.devices;
    let used = raw
        .dev
        .iter()
        .try_fold(1u64, |a, &b| a.checked_mul(b))
        .unwrap_or(u64::MAX);
    if used > devices || !devices.is_multiple_of(used) {
        return Err(OpsError::Devices {
            op: o,
            product: used,
            devices,
        });
    }
    let repeat = devices / used;
    let side = raw.side.unwrap_or(graph.repeated_calc);
    let output_bytes = raw
        .output_shape
        .iter()
        .try_fold(dtype.size_bytes(), |a, &b| a.checked_mul(b))
        .unwrap_or(u64::MAX);
    Ok(OpLayout {
        dev_matrix: with_repeat(&raw.dev, repeat, side),
        repeat,
        inputs: raw.inputs.iter().map(|m| shift(m, repeat, side)).collect(),
        output_dev_matrix: with_repeat(&raw.out_dev, repeat, side),
        output: shift(&raw.output, repeat, side),
        output_shape: raw.output_shape,
        forward: raw.forward.map(|(collective, ranks)| ForwardComm {
            collective,
            ranks,
            output_bytes,
        }),
    })
}

/// Adds the repeated-calculation axis.
fn with_repeat(dev: &[u64], repeat: u64, side: RepeatSide) -> Vec<u64> {
    let mut d = dev.to_vec();
    if repeat > 1 {
        match side {
            RepeatSide::Right => d.push(repeat),
            RepeatSide::Left => d.insert(0, repeat),
        }
    }
    d
}

fn shift(map: &[i64], repeat: u64, side: RepeatSide) -> Vec<i64> {
    if repeat > 1 && side == RepeatSide::Right {
        map.iter()
            .map(|&k| if k >= 0 { k + 1 } else { k })
            .collect()
    } else {
        map.to_vec()
    }
}

//! `Gather` on axis 0 (embedding lookups), laid out as MindSpore's
//! `GatherInfo` does: whole, split, and batch-and-vocabulary modes.

use super::raw::{Raw, descending, product};
use super::{Collective, OpKind, OpsError, RepeatSide, StrategyFault};

pub(super) fn gather(
    op: usize,
    shapes: &[&[u64]],
    st: &[Vec<u64>],
    devices: u64,
) -> Result<Raw, OpsError> {
    let (p, i) = (shapes[0], shapes[1]);
    let (ps, is) = (&st[0], &st[1]);
    if p.is_empty() {
        return Err(gather_fault(op, 0, StrategyFault::ScalarTable));
    }
    let mut output_shape = i.to_vec();
    output_shape.extend_from_slice(&p[1..]);
    if ps[0] == 1 {
        return Ok(gather_whole_vocab(p, i, ps, is, output_shape));
    }
    if p.len() == 2
        && i.len() == 2
        && ps[1] == 1
        && is[1] == 1
        && ps[0] * is[0] == devices
        && ps[0] != devices
        && is[0] != devices
    {
        return Ok(gather_batch_and_vocab(ps, is, output_shape));
    }
    gather_split_vocab(op, p, i, ps, is, devices, output_shape)
}

/// Gather with the batch and the vocabulary both split over all devices:
/// device matrix `[b, v]`, the outputs all-reduced.
fn gather_batch_and_vocab(ps: &[u64], is: &[u64], output_shape: Vec<u64>) -> Raw {
    let dev = vec![is[0], ps[0]];
    Raw {
        out_dev: dev.clone(),
        dev,
        inputs: vec![vec![0, -1], vec![1, -1]],
        output: vec![1, -1, -1],
        output_shape,
        forward: Some((Collective::AllReduce, ps[0])),
        side: None,
    }
}

/// A Gather strategy's fault at input `input` of operator `op`.
fn gather_fault(op: usize, input: usize, fault: StrategyFault) -> OpsError {
    OpsError::Strategy {
        op,
        input: Some(input),
        kind: OpKind::Gather,
        fault,
    }
}

/// Gather in normal mode (the vocabulary whole): the device matrix is the
/// indices' strategy then the table's.
fn gather_whole_vocab(p: &[u64], i: &[u64], ps: &[u64], is: &[u64], output_shape: Vec<u64>) -> Raw {
    let mut dev = is.to_vec();
    dev.extend_from_slice(ps);
    let tmp = descending(i.len() + p.len());
    let param_map = tmp[i.len()..].to_vec();
    let indices_map = tmp[..i.len()].to_vec();
    let mut out = indices_map.clone();
    out.extend_from_slice(&param_map[1..]);
    Raw {
        out_dev: dev.clone(),
        dev,
        inputs: vec![param_map, indices_map],
        output: out,
        output_shape,
        forward: None,
        side: None,
    }
}

/// Gather with the vocabulary split and the indices whole: each rank
/// looks up its rows, and the outputs are reduce-scattered along the first
/// output dimension when it divides, else all-reduced.
fn gather_split_vocab(
    op: usize,
    p: &[u64],
    i: &[u64],
    ps: &[u64],
    is: &[u64],
    devices: u64,
    output_shape: Vec<u64>,
) -> Result<Raw, OpsError> {
    if p.len() > 2 {
        return Err(gather_fault(op, 0, StrategyFault::VocabTableRank));
    }
    if product(is) != 1 {
        return Err(gather_fault(op, 1, StrategyFault::VocabIndicesSplit));
    }
    let pp = product(ps);
    if pp != devices && p.len() == 2 && ps[1] != 1 {
        return Err(gather_fault(op, 0, StrategyFault::VocabRepeated));
    }
    let param_map = descending(p.len());
    let indices_map = vec![-1; i.len()];
    let all_reduce = i.first().is_none_or(|&d| !d.is_multiple_of(ps[0]));
    let mut out = vec![if all_reduce { -1 } else { p.len() as i64 - 1 }];
    out.extend(std::iter::repeat_n(-1, i.len().saturating_sub(1)));
    out.extend(param_map[1..].iter().copied());
    if i.is_empty() {
        // A scalar index: the output is the table's other dimensions.
        out = param_map[1..].to_vec();
    }
    let side = if pp == devices || pp == 1 {
        RepeatSide::Right
    } else {
        RepeatSide::Left
    };
    let collective = if all_reduce {
        Collective::AllReduce
    } else {
        Collective::ReduceScatter
    };
    Ok(Raw {
        out_dev: ps.to_vec(),
        dev: ps.to_vec(),
        inputs: vec![param_map, indices_map],
        output: out,
        output_shape,
        forward: Some((collective, ps[0])),
        side: Some(side),
    })
}

//! `MatMul` and `BatchMatMul`, laid out as MindSpore's `MatMulBase` does.

use super::error::bad_strategy;
use super::raw::{Raw, descending, product};
use super::{Collective, OpKind, OpsError, StrategyFault};

/// Lays out a `MatMul`/`BatchMatMul` as MindSpore's `MatMulBase` does.
pub(super) fn matmul(
    op: usize,
    kind: OpKind,
    shapes: &[&[u64]],
    st: &[Vec<u64>],
    transpose: (bool, bool),
    devices: u64,
) -> Result<Raw, OpsError> {
    if shapes[0].len() < 2 || shapes[1].len() < 2 {
        let (a, b) = (shapes[0], shapes[1]);
        return Err(bad_strategy(
            op,
            kind,
            Some(usize::from(a.len() >= 2)),
            StrategyFault::TooFewDims {
                a: a.to_vec(),
                b: b.to_vec(),
            },
        ));
    }
    let inputs = MatMulInputs::new(shapes, st, transpose);
    inputs.check_shapes(op, kind)?;
    if let Some(raw) = inputs.whole_stage(kind, devices) {
        return Ok(raw);
    }
    inputs.check_strategies(op, kind)?;
    Ok(inputs.layout())
}

/// The two inputs of a `MatMul`/`BatchMatMul` with their strategies, the
/// first as `[.., M, K]` and the second as stored (`[.., K, N]`, or
/// `[.., N, K]` with `transpose_b`).
struct MatMulInputs<'a> {
    a: Vec<u64>,
    sa: Vec<u64>,
    b: &'a [u64],
    sb: &'a [u64],
    transpose_a: bool,
    transpose_b: bool,
}

/// An input's shape and its strategy.
type Operand<'s> = (&'s [u64], &'s [u64]);

impl<'a> MatMulInputs<'a> {
    /// With `transpose_a`, `a` is stored `[.., K, M]`: reason on
    /// `[.., M, K]` and swap its tensor map back at the end.
    fn new(shapes: &[&'a [u64]], st: &'a [Vec<u64>], (ta, tb): (bool, bool)) -> Self {
        let stored = |v: &[u64]| {
            let mut v = v.to_vec();
            if ta {
                let n = v.len();
                v.swap(n - 1, n - 2);
            }
            v
        };
        MatMulInputs {
            a: stored(shapes[0]),
            sa: stored(&st[0]),
            b: shapes[1],
            sb: &st[1],
            transpose_a: ta,
            transpose_b: tb,
        }
    }

    /// Positions of `b`'s reduction dimension (K) and its output one (N).
    fn b_dims(&self) -> (usize, usize) {
        let lb = self.b.len();
        if self.transpose_b {
            (lb - 1, lb - 2)
        } else {
            (lb - 2, lb - 1)
        }
    }

    /// The longer input's shape and strategy, then the shorter one's (`a`
    /// first when their ranks are equal).
    fn longer_first(&self) -> (Operand<'_>, Operand<'_>) {
        let a = (self.a.as_slice(), self.sa.as_slice());
        let b = (self.b, self.sb);
        if self.a.len() >= self.b.len() {
            (a, b)
        } else {
            (b, a)
        }
    }

    /// `MatMul` takes 2-D inputs only, and both inputs must agree on K.
    fn check_shapes(&self, op: usize, kind: OpKind) -> Result<(), OpsError> {
        let (a, b) = (&self.a, self.b);
        if kind == OpKind::MatMul && (a.len() != 2 || b.len() != 2) {
            return Err(bad_strategy(
                op,
                kind,
                None,
                StrategyFault::NotTwoDims {
                    a: a.to_vec(),
                    b: b.to_vec(),
                },
            ));
        }
        let (k_a, k_b) = (a[a.len() - 1], b[self.b_dims().0]);
        if k_a != k_b {
            return Err(bad_strategy(
                op,
                kind,
                Some(1),
                StrategyFault::ReductionSizes {
                    a: k_a,
                    b: k_b,
                    transpose_b: self.transpose_b,
                },
            ));
        }
        Ok(())
    }

    /// MindSpore's special case: a 2-D MatMul whose inputs have the same
    /// strategy using every device of the stage keeps that strategy as the
    /// device matrix, with maps [1, 0] on both inputs and the output and no
    /// collective of its own.
    fn whole_stage(&self, kind: OpKind, devices: u64) -> Option<Raw> {
        let plain = !self.transpose_a && !self.transpose_b;
        if kind != OpKind::MatMul || !plain || self.sa != self.sb || product(&self.sa) != devices {
            return None;
        }
        Some(Raw {
            dev: self.sa.clone(),
            out_dev: self.sa.clone(),
            inputs: vec![vec![1, 0], vec![1, 0]],
            output: vec![1, 0],
            output_shape: vec![self.a[0], self.b[1]],
            forward: None,
            side: None,
        })
    }

    /// The reduction dimension must be split alike in both inputs, and the
    /// batch dimensions, right-aligned, alike where both have them.
    fn check_strategies(&self, op: usize, kind: OpKind) -> Result<(), OpsError> {
        let s_ka = self.sa[self.a.len() - 1];
        let s_kb = self.sb[self.b_dims().0];
        if s_ka != s_kb {
            return Err(bad_strategy(
                op,
                kind,
                Some(1),
                StrategyFault::ReductionSplit { a: s_ka, b: s_kb },
            ));
        }
        let ((long, ls), (short, ss)) = self.longer_first();
        let diff = long.len() - short.len();
        for j in 0..short.len() - 2 {
            if ls[diff + j] != ss[j] {
                return Err(bad_strategy(
                    op,
                    kind,
                    None,
                    StrategyFault::BatchSplit {
                        dim: j,
                        a: ls[diff + j],
                        b: ss[j],
                    },
                ));
            }
            if long[diff + j] != short[j] {
                return Err(bad_strategy(
                    op,
                    kind,
                    None,
                    StrategyFault::BatchSizes {
                        a: long.to_vec(),
                        b: short.to_vec(),
                    },
                ));
            }
        }
        Ok(())
    }

    /// Device matrix `[batch.., M, K, N]` (the longer input's batch
    /// strategy), the tensor maps, the output shape, and the all-reduce a
    /// split K needs.
    fn layout(&self) -> Raw {
        let la = self.a.len();
        let ((long, ls), _) = self.longer_first();
        let n = self.b_dims().1;
        let mut dev: Vec<u64> = ls[..ls.len() - 2].to_vec();
        dev.push(self.sa[la - 2]);
        dev.push(self.sa[la - 1]);
        dev.push(self.sb[n]);
        let size = dev.len();
        let mut output = descending(size);
        output.remove(size - 2);
        let mut output_shape: Vec<u64> = long[..long.len() - 2].to_vec();
        output_shape.push(self.a[la - 2]);
        output_shape.push(self.b[n]);
        let forward = (self.sa[la - 1] > 1).then_some((Collective::AllReduce, self.sa[la - 1]));
        Raw {
            inputs: vec![self.a_map(size), self.b_map(size)],
            out_dev: dev.clone(),
            dev,
            output,
            output_shape,
            forward,
            side: None,
        }
    }

    /// `a`'s tensor map over a device matrix of `size` axes: its batch
    /// axes, M and K, in stored order.
    fn a_map(&self, size: usize) -> Vec<i64> {
        let la = self.a.len();
        let mut map = descending(size);
        map.pop();
        map.drain(..size - 1 - la);
        if self.transpose_a {
            map.swap(la - 1, la - 2);
        }
        map
    }

    /// `b`'s tensor map over a device matrix of `size` axes: its batch
    /// axes, K and N, in stored order.
    fn b_map(&self, size: usize) -> Vec<i64> {
        let lb = self.b.len();
        let mut map = descending(size);
        map.remove(size - 3);
        map.drain(..size - 1 - lb);
        if self.transpose_b {
            let n = map.len();
            map.swap(n - 1, n - 2);
        }
        map
    }
}

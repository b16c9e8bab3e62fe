//! Broadcasting element-wise operators (`Add`, `Mul`), laid out as
//! MindSpore's `ArithmeticBase` does.

use super::raw::{Raw, descending};
use super::{OpKind, OpsError, StrategyFault};

pub(super) fn elementwise(
    op: usize,
    kind: OpKind,
    shapes: &[&[u64]],
    st: &[Vec<u64>],
) -> Result<Raw, OpsError> {
    let n = shapes[0].len().max(shapes[1].len());
    let expand = |v: &[u64]| -> Vec<u64> {
        let mut e = vec![1; n - v.len()];
        e.extend_from_slice(v);
        e
    };
    let (a, b) = (expand(shapes[0]), expand(shapes[1]));
    let (sa, sb) = (expand(&st[0]), expand(&st[1]));
    let mut dev = Vec::with_capacity(n);
    let mut output_shape = Vec::with_capacity(n);
    for d in 0..n {
        let (x, y) = (a[d], b[d]);
        if x != y && x != 1 && y != 1 {
            return Err(OpsError::Strategy {
                op,
                input: None,
                kind,
                fault: StrategyFault::NoBroadcast {
                    a: shapes[0].to_vec(),
                    b: shapes[1].to_vec(),
                },
            });
        }
        let ok = if x == y {
            sa[d] == sb[d]
        } else if x == 1 {
            sa[d] == 1
        } else {
            sb[d] == 1
        };
        if !ok {
            return Err(OpsError::Strategy {
                op,
                input: Some(1),
                kind,
                fault: StrategyFault::BroadcastSplit {
                    dim: d,
                    a: sa[d],
                    b: sb[d],
                },
            });
        }
        dev.push(sa[d].max(sb[d]));
        output_shape.push(x.max(y));
    }
    let index = descending(n);
    let map = |s: &[u64], rank: usize| -> Vec<i64> {
        let full: Vec<i64> = (0..n)
            .map(|d| {
                if s[d] == 1 && dev[d] > 1 {
                    -1
                } else {
                    index[d]
                }
            })
            .collect();
        full[n - rank..].to_vec()
    };
    Ok(Raw {
        inputs: vec![map(&sa, shapes[0].len()), map(&sb, shapes[1].len())],
        out_dev: dev.clone(),
        dev,
        output: index,
        output_shape,
        forward: None,
        side: None,
    })
}

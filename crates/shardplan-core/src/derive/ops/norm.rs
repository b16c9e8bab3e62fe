//! Normalizations (`RmsNorm`, `LayerNorm`): the input's strategy, the
//! normalized dimensions whole.

use super::raw::{Raw, descending};
use super::{OpKind, OpsError, StrategyFault};

pub(super) fn norm(
    op: usize,
    kind: OpKind,
    shapes: &[&[u64]],
    st: &[Vec<u64>],
) -> Result<Raw, OpsError> {
    let x = shapes[0];
    let n = x.len();
    let mut inputs = vec![descending(n)];
    for (k, (g, sg)) in shapes.iter().zip(st).enumerate().skip(1) {
        if g.len() > n || x[n - g.len()..] != **g {
            return Err(OpsError::Strategy {
                op,
                input: Some(k),
                kind,
                fault: StrategyFault::NotTrailing {
                    normalized: g.to_vec(),
                    shape: x.to_vec(),
                },
            });
        }
        if sg.iter().chain(&st[0][n - g.len()..]).any(|&s| s != 1) {
            return Err(OpsError::Strategy {
                op,
                input: Some(k),
                kind,
                fault: StrategyFault::NormalizedSplit,
            });
        }
        inputs.push(descending(g.len()));
    }
    Ok(Raw {
        dev: st[0].clone(),
        out_dev: st[0].clone(),
        inputs,
        output: descending(n),
        output_shape: x.to_vec(),
        forward: None,
        side: None,
    })
}

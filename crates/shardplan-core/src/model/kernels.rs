//! Kernels, shared by both forwards so that a single-rank run is bitwise equal.

use std::ops::Range;

use super::*;

/// `x [rows, inp] @ w[out, inp]^T`, each dot product summed in order.
pub(super) fn linear(x: &[f32], rows: usize, inp: usize, w: &[f32], out: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * out];
    for r in 0..rows {
        let xr = &x[r * inp..(r + 1) * inp];
        for o in 0..out {
            let wo = &w[o * inp..(o + 1) * inp];
            let mut acc = 0.0f32;
            for (a, b) in xr.iter().zip(wo) {
                acc += a * b;
            }
            y[r * out + o] = acc;
        }
    }
    y
}

/// RMSNorm of each row of `x [rows, dim]`, scaled by `w`.
pub(super) fn rmsnorm(x: &[f32], dim: usize, w: &[f32]) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
        let mut ss = 0.0f32;
        for v in row {
            ss += v * v;
        }
        let inv = 1.0 / (ss / dim as f32 + RMS_EPS).sqrt();
        y.extend(row.iter().zip(w).map(|(v, g)| v * inv * g));
    }
    y
}

/// Rotary embedding (rotate-half convention) of every head of `x [rows,
/// heads * head_dim]`, row `r` at position `pos[r]`.
pub(super) fn rope(x: &mut [f32], heads: usize, head_dim: usize, pos: &[usize]) {
    if heads == 0 {
        return;
    }
    let half = head_dim / 2;
    for (r, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let inv_freq = ROPE_THETA.powf(-((2 * i) as f64) / head_dim as f64);
                let angle = pos[r] as f64 * inv_freq;
                let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos - b * sin;
                head[i + half] = b * cos + a * sin;
            }
        }
    }
}

/// Causal attention within each sequence. `q [rows, heads * d]`, `k` and
/// `v [rows, kv_heads * d]`; query head `h` reads kv head
/// `h / (heads / kv_heads)`. Returns `[rows, heads * d]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    seqs: &[Range<usize>],
) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * heads * d];
    if heads == 0 {
        return out;
    }
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let (qw, kw) = (heads * d, kv_heads * d);
    let mut scores = Vec::new();
    for seq in seqs {
        for i in seq.clone() {
            for h in 0..heads {
                let kh = h / group;
                let qi = &q[i * qw + h * d..i * qw + (h + 1) * d];
                scores.clear();
                for j in seq.start..=i {
                    let kj = &k[j * kw + kh * d..j * kw + (kh + 1) * d];
                    let mut s = 0.0f32;
                    for (a, b) in qi.iter().zip(kj) {
                        s += a * b;
                    }
                    scores.push(s * scale);
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let o = &mut out[i * qw + h * d..i * qw + (h + 1) * d];
                for (p, j) in scores.iter().zip(seq.start..=i) {
                    let w = p / sum;
                    let vj = &v[j * kw + kh * d..j * kw + (kh + 1) * d];
                    for (ot, vt) in o.iter_mut().zip(vj) {
                        *ot += w * vt;
                    }
                }
            }
        }
    }
    out
}

pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `silu(g) * u`, elementwise.
pub(super) fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter().zip(u).map(|(g, u)| silu(*g) * u).collect()
}

/// Columns `lo..hi` of `x [rows, width]`.
pub(super) fn columns(x: &[f32], width: usize, lo: usize, hi: usize) -> Vec<f32> {
    x.chunks_exact(width)
        .flat_map(|row| row[lo..hi].iter().copied())
        .collect()
}

/// Writes `part [rows, w]` into columns `lo..lo + w` of `x [rows, width]`.
pub(super) fn put_columns(x: &mut [f32], width: usize, lo: usize, part: &[f32], w: usize) {
    if w == 0 {
        return;
    }
    for (row, p) in x.chunks_exact_mut(width).zip(part.chunks_exact(w)) {
        row[lo..lo + w].copy_from_slice(p);
    }
}

/// Adds `part` into `acc`, or starts `acc` with it: a sum over ranks that
/// starts from the first rank's value, not from zero.
pub(super) fn all_reduce(acc: &mut Option<Vec<f32>>, part: Vec<f32>) {
    match acc {
        None => *acc = Some(part),
        Some(a) => a.iter_mut().zip(&part).for_each(|(a, p)| *a += p),
    }
}

pub(super) fn add_into(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

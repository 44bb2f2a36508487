//! Reductions and row-wise kernels: sums and maxima along an axis, softmax, cross-entropy.

use super::elementwise::{part, part_mut};
use super::math;
use super::simd::simd;
use singa_core::{BufView, Dims3, Error, ReduceOp, Result};

/// Columns processed per block when reducing over rows, so the partial results stay in L1.
const BLOCK: usize = 256;

/// `y[o, i] = beta·y[o, i] + alpha·reduce_m x[o, m, i]` for outer indices `os..oe`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn reduce(
    op: ReduceOp,
    d: Dims3,
    x: BufView,
    y: BufView,
    alpha: f32,
    beta: f32,
    os: usize,
    oe: usize,
) {
    let scale = match op {
        ReduceOp::Mean => alpha / d.mid.max(1) as f32,
        _ => alpha,
    };
    let init = match op {
        ReduceOp::Max => f32::NEG_INFINITY,
        _ => 0.0,
    };
    let store = |dst: &mut f32, r: f32| {
        *dst = if beta == 0.0 {
            scale * r
        } else {
            scale * r + beta * *dst
        };
    };
    simd(
        #[inline(always)]
        || {
            for o in os..oe {
                let xs = part(x, o * d.mid * d.inner, (o + 1) * d.mid * d.inner);
                let ys = part_mut(y, o * d.inner, (o + 1) * d.inner);
                if d.inner == 1 {
                    let r = match op {
                        ReduceOp::Max => max_of(xs),
                        _ => sum_of(xs),
                    };
                    store(&mut ys[0], r);
                    continue;
                }
                for c in (0..d.inner).step_by(BLOCK) {
                    let w = BLOCK.min(d.inner - c);
                    let mut acc = [init; BLOCK];
                    let acc = &mut acc[..w];
                    for m in 0..d.mid {
                        let row = &xs[m * d.inner + c..m * d.inner + c + w];
                        match op {
                            ReduceOp::Max => {
                                for (a, &v) in acc.iter_mut().zip(row) {
                                    *a = a.max(v);
                                }
                            }
                            _ => {
                                for (a, &v) in acc.iter_mut().zip(row) {
                                    *a += v;
                                }
                            }
                        }
                    }
                    for (dst, &r) in ys[c..c + w].iter_mut().zip(acc.iter()) {
                        store(dst, r);
                    }
                }
            }
        },
    )
}

/// The sum of a slice, with 16 independent accumulators so the loop vectorises.
#[inline(always)]
fn sum_of(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// The maximum of a slice (−∞ for an empty one).
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// `e^(v - max)` for every element, in place; returns the sum.
#[inline(always)]
fn exp_shifted(row: &mut [f32], max: f32) -> f32 {
    for v in row.iter_mut() {
        *v = math::exp(*v - max);
    }
    sum_of(row)
}

/// Row-wise softmax over rows `rs..re`.
pub(crate) unsafe fn softmax(cols: usize, x: BufView, y: BufView, rs: usize, re: usize) {
    simd(
        #[inline(always)]
        || {
            for r in rs..re {
                let out = part_mut(y, r * cols, (r + 1) * cols);
                if !x.same_region(&y) {
                    out.copy_from_slice(part(x, r * cols, (r + 1) * cols));
                }
                let max = max_of(out);
                let inv = 1.0 / exp_shifted(out, max);
                for v in out.iter_mut() {
                    *v *= inv;
                }
            }
        },
    )
}

fn label_of(labels: &[i32], r: usize, cols: usize) -> Result<usize> {
    let l = labels[r];
    if l < 0 || l as usize >= cols {
        return Err(Error::invalid(format!(
            "label {l} of sample {r} is outside the {cols} classes"
        )));
    }
    Ok(l as usize)
}

/// Softmax cross-entropy over rows `rs..re`: writes probabilities, returns
/// `(summed loss, number correct)`.
pub(crate) unsafe fn softmax_cross_entropy(
    cols: usize,
    logits: BufView,
    labels: &[i32],
    probs: BufView,
    rs: usize,
    re: usize,
) -> Result<(f64, f64)> {
    simd(
        #[inline(always)]
        || {
            let (mut loss, mut correct) = (0.0f64, 0.0f64);
            for r in rs..re {
                let label = label_of(labels, r, cols)?;
                let out = part_mut(probs, r * cols, (r + 1) * cols);
                if !logits.same_region(&probs) {
                    out.copy_from_slice(part(logits, r * cols, (r + 1) * cols));
                }
                let max = max_of(out);
                let target = out[label];
                // The arg-max is the first index holding the maximum.
                if out.iter().position(|&v| v == max) == Some(label) {
                    correct += 1.0;
                }
                let sum = exp_shifted(out, max);
                loss += (sum.ln() - (target - max)) as f64;
                let inv = 1.0 / sum;
                for v in out.iter_mut() {
                    *v *= inv;
                }
            }
            Ok((loss, correct))
        },
    )
}

/// `dx = scale·(probs - onehot(labels))` over rows `rs..re`.
pub(crate) unsafe fn softmax_cross_entropy_backward(
    cols: usize,
    probs: BufView,
    labels: &[i32],
    dx: BufView,
    scale: f32,
    rs: usize,
    re: usize,
) -> Result<()> {
    simd(
        #[inline(always)]
        || {
            for r in rs..re {
                let label = label_of(labels, r, cols)?;
                let out = part_mut(dx, r * cols, (r + 1) * cols);
                if probs.same_region(&dx) {
                    for v in out.iter_mut() {
                        *v *= scale;
                    }
                } else {
                    for (o, &p) in out.iter_mut().zip(part(probs, r * cols, (r + 1) * cols)) {
                        *o = scale * p;
                    }
                }
                out[label] -= scale;
            }
            Ok(())
        },
    )
}

/// `dx = y ⊙ (dy − Σ_row dy ⊙ y)` over rows `rs..re`.
pub(crate) unsafe fn softmax_backward(
    cols: usize,
    y: BufView,
    dy: BufView,
    dx: BufView,
    rs: usize,
    re: usize,
) {
    simd(
        #[inline(always)]
        || {
            for r in rs..re {
                let span = (r * cols, (r + 1) * cols);
                let ys = part(y, span.0, span.1);
                let dot: f32 = if dx.same_region(&dy) {
                    let out = part_mut(dx, span.0, span.1);
                    let dot: f32 = out.iter().zip(ys).map(|(a, b)| a * b).sum();
                    for (o, &v) in out.iter_mut().zip(ys) {
                        *o = v * (*o - dot);
                    }
                    continue;
                } else {
                    part(dy, span.0, span.1)
                        .iter()
                        .zip(ys)
                        .map(|(a, b)| a * b)
                        .sum()
                };
                let dys = part(dy, span.0, span.1);
                for ((o, &v), &g) in part_mut(dx, span.0, span.1).iter_mut().zip(ys).zip(dys) {
                    *o = v * (g - dot);
                }
            }
        },
    )
}

/// The indices of the `k` largest values of `row` into `out`, largest first, lower index first
/// on ties.
pub(crate) fn top_k_row(row: &[f32], out: &mut [i32]) {
    let k = out.len();
    let mut n = 0;
    for (i, &v) in row.iter().enumerate() {
        // The first kept entry smaller than v: v goes before it (after any equal ones).
        let pos = (0..n).find(|&p| row[out[p] as usize] < v).unwrap_or(n);
        if pos < k {
            let end = n.min(k - 1);
            out.copy_within(pos..end, pos + 1);
            out[pos] = i as i32;
            n = (n + 1).min(k);
        }
    }
}

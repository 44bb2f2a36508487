//! Normalisations: local response normalisation (images split over threads) and batch
//! normalisation (channels split over threads).

use super::elementwise::{part, part_mut};
use super::parallel::Threads;
use super::scratch::Scratch;
use singa_core::{BatchNormArgs, BufView, LrnShape};

/// The channels `j` whose window contains channel `c` (the transpose of `LrnShape::window`).
fn reverse_window(s: &LrnShape, c: usize) -> (usize, usize) {
    let lo = c.saturating_sub(s.size / 2);
    let hi = (c + (s.size - 1) / 2 + 1).min(s.channels);
    (lo, hi)
}

/// LRN forward.
///
/// # Safety
/// The views are live `F32` allocations of `s.len()` elements.
pub(crate) unsafe fn lrn(threads: &Threads, s: &LrnShape, x: BufView, y: BufView, scale: BufView) {
    let image = s.channels * s.spatial;
    let coef = s.alpha / s.size as f32;
    threads.for_ranges(s.batch, 1, &|n0, n1| {
        for n in n0..n1 {
            let xs = part(x, n * image, (n + 1) * image);
            let ys = part_mut(y, n * image, (n + 1) * image);
            let sc = part_mut(scale, n * image, (n + 1) * image);
            for c in 0..s.channels {
                let row = &mut sc[c * s.spatial..(c + 1) * s.spatial];
                row.fill(s.k);
                let (lo, hi) = s.window(c);
                for j in lo..hi {
                    for (r, &v) in row.iter_mut().zip(&xs[j * s.spatial..(j + 1) * s.spatial]) {
                        *r += coef * v * v;
                    }
                }
                for ((o, &v), &r) in ys[c * s.spatial..(c + 1) * s.spatial]
                    .iter_mut()
                    .zip(&xs[c * s.spatial..])
                    .zip(row.iter())
                {
                    *o = v * r.powf(-s.beta);
                }
            }
        }
    });
}

/// LRN backward.
///
/// # Safety
/// As for [`lrn`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn lrn_backward(
    threads: &Threads,
    scratch: &Scratch,
    s: &LrnShape,
    x: BufView,
    y: BufView,
    scale: BufView,
    dy: BufView,
    dx: BufView,
) {
    let image = s.channels * s.spatial;
    let coef = 2.0 * s.alpha * s.beta / s.size as f32;
    let parts = threads.count().min(s.batch).max(1);
    let mut buf = scratch.lock();
    buf.reserve_temp(parts, image);
    let at = buf.addresses();
    let chunk = s.batch.div_ceil(parts);
    threads.run(parts, &|t| {
        // dy·y/scale of this image, then each channel's sum over the windows containing it.
        let ratio = &mut at.temp(t)[..image];
        for n in (t * chunk).min(s.batch)..((t + 1) * chunk).min(s.batch) {
            let (xs, ys, sc, dys) = (
                part(x, n * image, (n + 1) * image),
                part(y, n * image, (n + 1) * image),
                part(scale, n * image, (n + 1) * image),
                part(dy, n * image, (n + 1) * image),
            );
            let dxs = part_mut(dx, n * image, (n + 1) * image);
            for (((r, &g), &o), &v) in ratio.iter_mut().zip(dys).zip(ys).zip(sc) {
                *r = g * o / v;
            }
            for c in 0..s.channels {
                let span = c * s.spatial..(c + 1) * s.spatial;
                let out = &mut dxs[span.clone()];
                for ((o, &g), &v) in out
                    .iter_mut()
                    .zip(&dys[span.clone()])
                    .zip(&sc[span.clone()])
                {
                    *o = g * v.powf(-s.beta);
                }
                let (lo, hi) = reverse_window(s, c);
                for j in lo..hi {
                    for ((o, &xv), &r) in out
                        .iter_mut()
                        .zip(&xs[span.clone()])
                        .zip(&ratio[j * s.spatial..(j + 1) * s.spatial])
                    {
                        *o -= coef * xv * r;
                    }
                }
            }
        }
    });
}

/// Calls `f(start, len)` for each contiguous run of channel `m` in a batch-norm input.
fn runs(a: &BatchNormArgs, m: usize, mut f: impl FnMut(usize, usize)) {
    let d = a.dims;
    for o in 0..d.outer {
        f((o * d.mid + m) * d.inner, d.inner);
    }
}

/// Batch norm forward over channels `m0..m1` (all views `F32`).
///
/// # Safety
/// The views are live allocations of the sizes `a` implies.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn batch_norm(
    a: &BatchNormArgs,
    m0: usize,
    m1: usize,
    x: BufView,
    gamma: BufView,
    beta: BufView,
    y: BufView,
    mean: BufView,
    inv_std: BufView,
    running_mean: BufView,
    running_var: BufView,
) {
    let count = (a.dims.outer * a.dims.inner) as f64;
    let n = a.dims.numel();
    let xs = part(x, 0, n);
    let c = a.dims.mid;
    let (g, b) = (part(gamma, 0, c), part(beta, 0, c));
    // Only this thread's channels, so threads hold disjoint slices.
    let (rm, rv) = (
        part_mut(running_mean, m0, m1),
        part_mut(running_var, m0, m1),
    );
    let (mean_out, inv_out) = if a.training {
        (part_mut(mean, m0, m1), part_mut(inv_std, m0, m1))
    } else {
        (&mut [][..], &mut [][..])
    };
    for m in m0..m1 {
        let i = m - m0;
        let (mu, inv) = if a.training {
            let mut sum = 0.0f64;
            runs(a, m, |s, l| {
                sum += xs[s..s + l].iter().map(|&v| v as f64).sum::<f64>()
            });
            let mu = sum / count;
            let mut sq = 0.0f64;
            runs(a, m, |s, l| {
                sq += xs[s..s + l]
                    .iter()
                    .map(|&v| (v as f64 - mu).powi(2))
                    .sum::<f64>()
            });
            let var = sq / count;
            let unbiased = if count > 1.0 {
                var * count / (count - 1.0)
            } else {
                var
            };
            let mom = a.momentum as f64;
            rm[i] = ((1.0 - mom) * rm[i] as f64 + mom * mu) as f32;
            rv[i] = ((1.0 - mom) * rv[i] as f64 + mom * unbiased) as f32;
            let inv = 1.0 / (var + a.eps as f64).sqrt();
            mean_out[i] = mu as f32;
            inv_out[i] = inv as f32;
            (mu as f32, inv as f32)
        } else {
            (rm[i], 1.0 / (rv[i] + a.eps).sqrt())
        };
        let (scale, shift) = (g[m] * inv, b[m] - g[m] * inv * mu);
        runs(a, m, |s, l| {
            // Each run of this channel, never the whole output: other threads write theirs.
            for (o, &v) in part_mut(y, s, s + l).iter_mut().zip(&xs[s..s + l]) {
                *o = scale * v + shift;
            }
        });
    }
}

/// Batch norm backward over channels `m0..m1`.
///
/// # Safety
/// As for [`batch_norm`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn batch_norm_backward(
    a: &BatchNormArgs,
    m0: usize,
    m1: usize,
    x: BufView,
    dy: BufView,
    gamma: BufView,
    mean: BufView,
    inv_std: BufView,
    dx: BufView,
    dgamma: BufView,
    dbeta: BufView,
) {
    let count = (a.dims.outer * a.dims.inner) as f64;
    let n = a.dims.numel();
    let c = a.dims.mid;
    let (xs, dys) = (part(x, 0, n), part(dy, 0, n));
    let (g, mu, inv) = (part(gamma, 0, c), part(mean, 0, c), part(inv_std, 0, c));
    let (dg, db) = (part_mut(dgamma, m0, m1), part_mut(dbeta, m0, m1));
    for m in m0..m1 {
        let (mm, im) = (mu[m] as f64, inv[m] as f64);
        let (mut sb, mut sg) = (0.0f64, 0.0f64);
        runs(a, m, |s, l| {
            for (&v, &d) in xs[s..s + l].iter().zip(&dys[s..s + l]) {
                sb += d as f64;
                sg += d as f64 * (v as f64 - mm) * im;
            }
        });
        db[m - m0] = sb as f32;
        dg[m - m0] = sg as f32;
        let k = (g[m] as f64 * im / count) as f32;
        let (sb, sg, mm, im) = (sb as f32, sg as f32, mm as f32, im as f32);
        runs(a, m, |s, l| {
            for ((o, &v), &d) in part_mut(dx, s, s + l)
                .iter_mut()
                .zip(&xs[s..s + l])
                .zip(&dys[s..s + l])
            {
                *o = k * (count as f32 * d - sb - (v - mm) * im * sg);
            }
        });
    }
}

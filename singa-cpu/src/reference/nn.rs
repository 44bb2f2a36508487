//! The convolutional-network operations as plain loops in `f64`.

use singa_core::{BatchNormArgs, ConvShape, Error, LrnShape, PoolKind, PoolShape, Result};

/// `(n, c, h, w)` to a flat NCHW index.
fn at(c_len: usize, h_len: usize, w_len: usize, n: usize, c: usize, h: usize, w: usize) -> usize {
    ((n * c_len + c) * h_len + h) * w_len + w
}

/// The input pixel a kernel tap reads, if inside the image.
fn tap(s: &ConvShape, oh: usize, ow: usize, r: usize, q: usize) -> Option<(usize, usize)> {
    let ih = (oh * s.stride_h + r) as isize - s.pad_h as isize;
    let iw = (ow * s.stride_w + q) as isize - s.pad_w as isize;
    (ih >= 0 && iw >= 0 && (ih as usize) < s.height && (iw as usize) < s.width)
        .then_some((ih as usize, iw as usize))
}

/// Calls `f(output index, input index, weight index)` for every product of a convolution.
fn each_product(s: &ConvShape, mut f: impl FnMut(usize, usize, usize)) {
    let (oh_len, ow_len, gc, gf) = (s.out_h(), s.out_w(), s.group_channels(), s.group_filters());
    for n in 0..s.batch {
        for fi in 0..s.filters {
            let g = fi / gf;
            for oh in 0..oh_len {
                for ow in 0..ow_len {
                    let yi = at(s.filters, oh_len, ow_len, n, fi, oh, ow);
                    for cl in 0..gc {
                        let c = g * gc + cl;
                        for r in 0..s.kernel_h {
                            for q in 0..s.kernel_w {
                                if let Some((ih, iw)) = tap(s, oh, ow, r, q) {
                                    let xi = at(s.channels, s.height, s.width, n, c, ih, iw);
                                    let wi = ((fi * gc + cl) * s.kernel_h + r) * s.kernel_w + q;
                                    f(yi, xi, wi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn conv2d(s: &ConvShape, x: &[f64], w: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; s.output_len()];
    each_product(s, |yi, xi, wi| y[yi] += x[xi] * w[wi]);
    y
}

pub(crate) fn conv2d_backward_data(s: &ConvShape, dy: &[f64], w: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; s.input_len()];
    each_product(s, |yi, xi, wi| dx[xi] += dy[yi] * w[wi]);
    dx
}

pub(crate) fn conv2d_backward_filter(s: &ConvShape, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let mut dw = vec![0.0; s.weight_len()];
    each_product(s, |yi, xi, wi| dw[wi] += dy[yi] * x[xi]);
    dw
}

/// Pooling forward: the output and, for max pooling, the argmax within each plane.
pub(crate) fn pool2d(s: &PoolShape, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (oh_len, ow_len) = (s.out_h(), s.out_w());
    let mut y = vec![0.0; s.output_len()];
    let mut arg = vec![0.0; s.output_len()];
    for n in 0..s.batch {
        for c in 0..s.channels {
            for oh in 0..oh_len {
                for ow in 0..ow_len {
                    let (h0, h1, w0, w1, divisor) = s.window(oh, ow);
                    let yi = at(s.channels, oh_len, ow_len, n, c, oh, ow);
                    match s.kind {
                        PoolKind::Max => {
                            let (mut best, mut best_i) = (f64::NEG_INFINITY, h0 * s.width + w0);
                            for h in h0..h1 {
                                for w in w0..w1 {
                                    let v = x[at(s.channels, s.height, s.width, n, c, h, w)];
                                    if v > best {
                                        (best, best_i) = (v, h * s.width + w);
                                    }
                                }
                            }
                            y[yi] = best;
                            arg[yi] = best_i as f64;
                        }
                        PoolKind::Avg => {
                            let mut sum = 0.0;
                            for h in h0..h1 {
                                for w in w0..w1 {
                                    sum += x[at(s.channels, s.height, s.width, n, c, h, w)];
                                }
                            }
                            y[yi] = sum / divisor as f64;
                        }
                    }
                }
            }
        }
    }
    (y, arg)
}

pub(crate) fn pool2d_backward(
    s: &PoolShape,
    dy: &[f64],
    argmax: Option<&[f64]>,
) -> Result<Vec<f64>> {
    let (oh_len, ow_len) = (s.out_h(), s.out_w());
    let plane = s.height * s.width;
    let mut dx = vec![0.0; s.input_len()];
    for n in 0..s.batch {
        for c in 0..s.channels {
            let base = (n * s.channels + c) * plane;
            for oh in 0..oh_len {
                for ow in 0..ow_len {
                    let yi = at(s.channels, oh_len, ow_len, n, c, oh, ow);
                    match argmax {
                        Some(a) => {
                            let i = a[yi];
                            if i < 0.0 || i as usize >= plane {
                                return Err(Error::invalid(format!(
                                    "argmax {i} outside a plane of {plane}"
                                )));
                            }
                            dx[base + i as usize] += dy[yi];
                        }
                        None => {
                            let (h0, h1, w0, w1, divisor) = s.window(oh, ow);
                            for h in h0..h1 {
                                for w in w0..w1 {
                                    dx[base + h * s.width + w] += dy[yi] / divisor as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(dx)
}

/// LRN forward: the output and the scale.
pub(crate) fn lrn(s: &LrnShape, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut scale) = (vec![0.0; s.len()], vec![0.0; s.len()]);
    let idx = |n: usize, c: usize, p: usize| (n * s.channels + c) * s.spatial + p;
    for n in 0..s.batch {
        for c in 0..s.channels {
            let (lo, hi) = s.window(c);
            for p in 0..s.spatial {
                let sum: f64 = (lo..hi).map(|j| x[idx(n, j, p)].powi(2)).sum();
                let sc = s.k as f64 + s.alpha as f64 / s.size as f64 * sum;
                scale[idx(n, c, p)] = sc;
                y[idx(n, c, p)] = x[idx(n, c, p)] * sc.powf(-(s.beta as f64));
            }
        }
    }
    (y, scale)
}

pub(crate) fn lrn_backward(
    s: &LrnShape,
    x: &[f64],
    y: &[f64],
    scale: &[f64],
    dy: &[f64],
) -> Vec<f64> {
    let idx = |n: usize, c: usize, p: usize| (n * s.channels + c) * s.spatial + p;
    let (alpha, beta) = (s.alpha as f64, s.beta as f64);
    let mut dx = vec![0.0; s.len()];
    for n in 0..s.batch {
        for p in 0..s.spatial {
            // dx[c] = dy[c]·scale[c]^−β − (2αβ/size)·x[c]·Σ_{j: c ∈ window(j)} dy[j]·y[j]/scale[j]
            for c in 0..s.channels {
                dx[idx(n, c, p)] = dy[idx(n, c, p)] * scale[idx(n, c, p)].powf(-beta);
            }
            for j in 0..s.channels {
                let ratio = dy[idx(n, j, p)] * y[idx(n, j, p)] / scale[idx(n, j, p)];
                let (lo, hi) = s.window(j);
                for c in lo..hi {
                    dx[idx(n, c, p)] -=
                        2.0 * alpha * beta / s.size as f64 * x[idx(n, c, p)] * ratio;
                }
            }
        }
    }
    dx
}

/// The values of channel `m` of a batch-norm input.
fn channel(a: &BatchNormArgs, m: usize) -> impl Iterator<Item = usize> + '_ {
    let d = a.dims;
    (0..d.outer).flat_map(move |o| (0..d.inner).map(move |i| (o * d.mid + m) * d.inner + i))
}

/// Batch norm forward: output, and (in training) the batch mean and inverse std and the new
/// running statistics.
pub(crate) struct BatchNormOut {
    pub y: Vec<f64>,
    pub mean: Vec<f64>,
    pub inv_std: Vec<f64>,
    pub running_mean: Vec<f64>,
    pub running_var: Vec<f64>,
}

pub(crate) fn batch_norm(
    a: &BatchNormArgs,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    rm: &[f64],
    rv: &[f64],
) -> BatchNormOut {
    let c = a.dims.mid;
    let count = (a.dims.outer * a.dims.inner) as f64;
    let mut out = BatchNormOut {
        y: vec![0.0; x.len()],
        mean: vec![0.0; c],
        inv_std: vec![0.0; c],
        running_mean: rm.to_vec(),
        running_var: rv.to_vec(),
    };
    let (eps, mom) = (a.eps as f64, a.momentum as f64);
    for m in 0..c {
        let (mean, inv_std) = if a.training {
            let mean = channel(a, m).map(|i| x[i]).sum::<f64>() / count;
            let var = channel(a, m).map(|i| (x[i] - mean).powi(2)).sum::<f64>() / count;
            let unbiased = if count > 1.0 {
                var * count / (count - 1.0)
            } else {
                var
            };
            out.running_mean[m] = (1.0 - mom) * rm[m] + mom * mean;
            out.running_var[m] = (1.0 - mom) * rv[m] + mom * unbiased;
            let inv = 1.0 / (var + eps).sqrt();
            out.mean[m] = mean;
            out.inv_std[m] = inv;
            (mean, inv)
        } else {
            (rm[m], 1.0 / (rv[m] + eps).sqrt())
        };
        for i in channel(a, m) {
            out.y[i] = gamma[m] * (x[i] - mean) * inv_std + beta[m];
        }
    }
    out
}

/// Batch norm backward: `(dx, dgamma, dbeta)`.
pub(crate) fn batch_norm_backward(
    a: &BatchNormArgs,
    x: &[f64],
    dy: &[f64],
    gamma: &[f64],
    mean: &[f64],
    inv_std: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = a.dims.mid;
    let count = (a.dims.outer * a.dims.inner) as f64;
    let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
    for m in 0..c {
        let xhat = |i: usize| (x[i] - mean[m]) * inv_std[m];
        db[m] = channel(a, m).map(|i| dy[i]).sum();
        dg[m] = channel(a, m).map(|i| dy[i] * xhat(i)).sum();
        for i in channel(a, m) {
            dx[i] = gamma[m] * inv_std[m] / count * (count * dy[i] - db[m] - xhat(i) * dg[m]);
        }
    }
    (dx, dg, db)
}

/// The indices of the `k` largest values of a row, largest first, lower index first on ties.
pub(crate) fn top_k_row(row: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Id `i` of a row lookup (stored as f64 here) as a row of a table of `rows`, or an error
/// naming it and its position.
pub(crate) fn row_id(id: f64, i: usize, rows: usize) -> Result<usize> {
    if id < 0.0 || id >= rows as f64 {
        return Err(Error::invalid(format!(
            "id {id} at position {i} is outside the {rows} rows of the table"
        )));
    }
    Ok(id as usize)
}

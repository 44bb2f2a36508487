//! Pooling, one channel plane at a time, planes split over threads.

use super::elementwise::{part, part_mut};
use super::parallel::Threads;
use singa_core::{BufView, Error, PoolKind, PoolShape, Result};

/// Planes per thread below which pooling is not split.
const GRAIN_PLANES: usize = 8;

/// Pooling forward over all planes.
///
/// # Safety
/// The views are live allocations of the sizes `s` implies (`argmax` `I32`).
pub(crate) unsafe fn forward(
    threads: &Threads,
    s: &PoolShape,
    x: BufView,
    y: BufView,
    argmax: Option<BufView>,
) {
    let (oh_len, ow_len) = (s.out_h(), s.out_w());
    let (plane_in, plane_out) = (s.height * s.width, oh_len * ow_len);
    let planes = s.batch * s.channels;
    threads.for_ranges(planes, GRAIN_PLANES, &|p0, p1| {
        for p in p0..p1 {
            let xs = part(x, p * plane_in, (p + 1) * plane_in);
            let ys = part_mut(y, p * plane_out, (p + 1) * plane_out);
            let arg = argmax.map(|a| {
                std::slice::from_raw_parts_mut(
                    (a.handle as *mut i32).add(a.offset + p * plane_out),
                    plane_out,
                )
            });
            match (s.kind, arg) {
                (PoolKind::Max, Some(arg)) if is_2x2_tiling(s) => max_2x2(s, xs, ys, arg),
                (PoolKind::Max, Some(arg)) => {
                    for oh in 0..oh_len {
                        for ow in 0..ow_len {
                            let (h0, h1, w0, w1, _) = s.window(oh, ow);
                            let (mut best, mut best_i) = (f32::NEG_INFINITY, h0 * s.width + w0);
                            for h in h0..h1 {
                                for (w, &v) in
                                    xs[h * s.width + w0..h * s.width + w1].iter().enumerate()
                                {
                                    if v > best {
                                        (best, best_i) = (v, h * s.width + w0 + w);
                                    }
                                }
                            }
                            ys[oh * ow_len + ow] = best;
                            arg[oh * ow_len + ow] = best_i as i32;
                        }
                    }
                }
                _ => {
                    for oh in 0..oh_len {
                        for ow in 0..ow_len {
                            let (h0, h1, w0, w1, divisor) = s.window(oh, ow);
                            let mut sum = 0.0f32;
                            for h in h0..h1 {
                                sum += xs[h * s.width + w0..h * s.width + w1].iter().sum::<f32>();
                            }
                            ys[oh * ow_len + ow] = sum / divisor as f32;
                        }
                    }
                }
            }
        }
    });
}

/// Whether the windows are 2×2, stride 2, unpadded and all inside the input: the common
/// halving pool, which has a branch-free path.
fn is_2x2_tiling(s: &PoolShape) -> bool {
    (
        s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.pad_h, s.pad_w,
    ) == (2, 2, 2, 2, 0, 0)
        && s.out_h() * 2 <= s.height
        && s.out_w() * 2 <= s.width
}

/// 2×2 max pooling of one plane, stride 2; ties go to the first in row-major order.
fn max_2x2(s: &PoolShape, xs: &[f32], ys: &mut [f32], arg: &mut [i32]) {
    let (w, ow_len) = (s.width, s.out_w());
    for oh in 0..s.out_h() {
        let top = &xs[2 * oh * w..2 * oh * w + 2 * ow_len];
        let bottom = &xs[(2 * oh + 1) * w..(2 * oh + 1) * w + 2 * ow_len];
        let y = &mut ys[oh * ow_len..(oh + 1) * ow_len];
        let a = &mut arg[oh * ow_len..(oh + 1) * ow_len];
        let row0 = (2 * oh * w) as i32;
        for (j, (((t, b), y), a)) in top
            .chunks_exact(2)
            .zip(bottom.chunks_exact(2))
            .zip(y)
            .zip(a)
            .enumerate()
        {
            let col = row0 + 2 * j as i32;
            let (m0, i0) = if t[1] > t[0] {
                (t[1], col + 1)
            } else {
                (t[0], col)
            };
            let (m1, i1) = if b[1] > b[0] {
                (b[1], col + w as i32 + 1)
            } else {
                (b[0], col + w as i32)
            };
            (*y, *a) = if m1 > m0 { (m1, i1) } else { (m0, i0) };
        }
    }
}

/// Pooling backward over all planes (overwrites `dx`).
///
/// # Safety
/// As for [`forward`].
pub(crate) unsafe fn backward(
    threads: &Threads,
    s: &PoolShape,
    dy: BufView,
    argmax: Option<BufView>,
    dx: BufView,
) -> Result<()> {
    let (oh_len, ow_len) = (s.out_h(), s.out_w());
    let (plane_in, plane_out) = (s.height * s.width, oh_len * ow_len);
    let planes = s.batch * s.channels;
    let bad = std::sync::atomic::AtomicBool::new(false);
    threads.for_ranges(planes, GRAIN_PLANES, &|p0, p1| {
        for p in p0..p1 {
            let dys = part(dy, p * plane_out, (p + 1) * plane_out);
            let dxs = part_mut(dx, p * plane_in, (p + 1) * plane_in);
            dxs.fill(0.0);
            match argmax {
                Some(a) => {
                    let arg = std::slice::from_raw_parts(
                        (a.handle as *const i32).add(a.offset + p * plane_out),
                        plane_out,
                    );
                    for (&i, &g) in arg.iter().zip(dys) {
                        match dxs.get_mut(i as usize) {
                            Some(d) if i >= 0 => *d += g,
                            _ => bad.store(true, std::sync::atomic::Ordering::Relaxed),
                        }
                    }
                }
                None => {
                    for oh in 0..oh_len {
                        for ow in 0..ow_len {
                            let (h0, h1, w0, w1, divisor) = s.window(oh, ow);
                            let g = dys[oh * ow_len + ow] / divisor as f32;
                            for h in h0..h1 {
                                for d in &mut dxs[h * s.width + w0..h * s.width + w1] {
                                    *d += g;
                                }
                            }
                        }
                    }
                }
            }
        }
    });
    if bad.into_inner() {
        return Err(Error::invalid(
            "pool2d_backward: an argmax index lies outside its plane",
        ));
    }
    Ok(())
}

//! Elementwise kernels on a range of elements `start..end` of `F32` views.
//!
//! Every kernel takes the range so the device can split big tensors over its threads. An output
//! may be exactly an input (in place); the helpers then borrow that memory once, mutably, so no
//! two live references alias.

use super::math;
use super::simd::simd;
use crate::reference::draw;
use singa_core::{
    AdaptiveArgs, AdaptiveRule, BinaryOp, BufView, Dims3, Distribution, SgdArgs, UnaryOp,
};

/// Elements `s..e` of an `F32` view.
///
/// # Safety
/// The view is a live `F32` allocation of this device, `e <= v.len`, and no mutable reference
/// to these elements is alive.
#[inline(always)]
pub(crate) unsafe fn part<'a>(v: BufView, s: usize, e: usize) -> &'a [f32] {
    std::slice::from_raw_parts((v.handle as *const f32).add(v.offset + s), e - s)
}

/// Elements `s..e` of an `F32` view, mutably.
///
/// # Safety
/// As for [`part`], and no other reference to these elements is alive.
#[inline(always)]
pub(crate) unsafe fn part_mut<'a>(v: BufView, s: usize, e: usize) -> &'a mut [f32] {
    std::slice::from_raw_parts_mut((v.handle as *mut f32).add(v.offset + s), e - s)
}

/// `y = f(x)` on `s..e`; `y` may be `x`.
#[inline(always)]
unsafe fn map1(x: BufView, y: BufView, s: usize, e: usize, f: impl Fn(f32) -> f32) {
    if x.same_region(&y) {
        for v in part_mut(y, s, e) {
            *v = f(*v);
        }
    } else {
        for (o, &i) in part_mut(y, s, e).iter_mut().zip(part(x, s, e)) {
            *o = f(i);
        }
    }
}

/// `y = f(a, b)` on `s..e`; `y` may be `a` and/or `b`.
#[inline(always)]
unsafe fn map2(
    a: BufView,
    b: BufView,
    y: BufView,
    s: usize,
    e: usize,
    f: impl Fn(f32, f32) -> f32,
) {
    match (y.same_region(&a), y.same_region(&b)) {
        (true, true) => {
            for v in part_mut(y, s, e) {
                *v = f(*v, *v);
            }
        }
        (true, false) => {
            for (o, &q) in part_mut(y, s, e).iter_mut().zip(part(b, s, e)) {
                *o = f(*o, q);
            }
        }
        (false, true) => {
            for (o, &p) in part_mut(y, s, e).iter_mut().zip(part(a, s, e)) {
                *o = f(p, *o);
            }
        }
        (false, false) => {
            for ((o, &p), &q) in part_mut(y, s, e)
                .iter_mut()
                .zip(part(a, s, e))
                .zip(part(b, s, e))
            {
                *o = f(p, q);
            }
        }
    }
}

/// `dx = dy · g(x, y)` on `s..e`; `dx` may be `dy` (never `x` or `y`).
#[inline(always)]
unsafe fn map_grad(
    x: BufView,
    y: BufView,
    dy: BufView,
    dx: BufView,
    s: usize,
    e: usize,
    g: impl Fn(f32, f32) -> f32,
) {
    let (xs, ys) = (part(x, s, e), part(y, s, e));
    if dx.same_region(&dy) {
        for ((d, &xv), &yv) in part_mut(dx, s, e).iter_mut().zip(xs).zip(ys) {
            *d *= g(xv, yv);
        }
    } else {
        for (((d, &xv), &yv), &dyv) in part_mut(dx, s, e)
            .iter_mut()
            .zip(xs)
            .zip(ys)
            .zip(part(dy, s, e))
        {
            *d = dyv * g(xv, yv);
        }
    }
}

/// `y = op(x)` on `s..e`.
pub(crate) unsafe fn unary(op: UnaryOp, x: BufView, y: BufView, s: usize, e: usize) {
    simd(
        #[inline(always)]
        || match op {
            UnaryOp::Identity => map1(x, y, s, e, |v| v),
            UnaryOp::Relu => map1(x, y, s, e, |v| v.max(0.0)),
            UnaryOp::LeakyRelu { slope } => {
                map1(x, y, s, e, |v| if v > 0.0 { v } else { slope * v })
            }
            UnaryOp::Sigmoid => map1(x, y, s, e, math::sigmoid),
            UnaryOp::Tanh => map1(x, y, s, e, math::tanh),
            UnaryOp::ScaledTanh => map1(x, y, s, e, |v| {
                UnaryOp::STANH_A * math::tanh(UnaryOp::STANH_B * v)
            }),
            UnaryOp::Exp => map1(x, y, s, e, math::exp),
            UnaryOp::Log => map1(x, y, s, e, f32::ln),
            UnaryOp::Sqrt => map1(x, y, s, e, f32::sqrt),
            UnaryOp::Square => map1(x, y, s, e, |v| v * v),
            UnaryOp::Abs => map1(x, y, s, e, f32::abs),
            UnaryOp::Sign => map1(x, y, s, e, sign),
            UnaryOp::Neg => map1(x, y, s, e, |v| -v),
            UnaryOp::Clamp { min, max } => map1(x, y, s, e, |v| v.max(min).min(max)),
        },
    )
}

#[inline(always)]
fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// `dx = dy · op'(x)` on `s..e`.
pub(crate) unsafe fn unary_backward(
    op: UnaryOp,
    x: BufView,
    y: BufView,
    dy: BufView,
    dx: BufView,
    s: usize,
    e: usize,
) {
    simd(
        #[inline(always)]
        || match op {
            UnaryOp::Identity => map_grad(x, y, dy, dx, s, e, |_, _| 1.0),
            UnaryOp::Relu => map_grad(x, y, dy, dx, s, e, |xv, _| if xv > 0.0 { 1.0 } else { 0.0 }),
            UnaryOp::LeakyRelu { slope } => {
                map_grad(
                    x,
                    y,
                    dy,
                    dx,
                    s,
                    e,
                    |xv, _| if xv > 0.0 { 1.0 } else { slope },
                )
            }
            UnaryOp::Sigmoid => map_grad(x, y, dy, dx, s, e, |_, yv| yv * (1.0 - yv)),
            UnaryOp::Tanh => map_grad(x, y, dy, dx, s, e, |_, yv| 1.0 - yv * yv),
            UnaryOp::ScaledTanh => map_grad(x, y, dy, dx, s, e, |_, yv| {
                let t = yv * (1.0 / UnaryOp::STANH_A);
                UnaryOp::STANH_A * UnaryOp::STANH_B * (1.0 - t * t)
            }),
            UnaryOp::Exp => map_grad(x, y, dy, dx, s, e, |_, yv| yv),
            UnaryOp::Log => map_grad(x, y, dy, dx, s, e, |xv, _| 1.0 / xv),
            UnaryOp::Sqrt => map_grad(x, y, dy, dx, s, e, |_, yv| 0.5 / yv),
            UnaryOp::Square => map_grad(x, y, dy, dx, s, e, |xv, _| 2.0 * xv),
            UnaryOp::Abs => map_grad(x, y, dy, dx, s, e, |xv, _| sign(xv)),
            UnaryOp::Sign => map_grad(x, y, dy, dx, s, e, |_, _| 0.0),
            UnaryOp::Neg => map_grad(x, y, dy, dx, s, e, |_, _| -1.0),
            UnaryOp::Clamp { min, max } => map_grad(x, y, dy, dx, s, e, |xv, _| {
                if min <= xv && xv <= max {
                    1.0
                } else {
                    0.0
                }
            }),
        },
    )
}

/// `y = op(a, b)` on `s..e`.
pub(crate) unsafe fn binary(op: BinaryOp, a: BufView, b: BufView, y: BufView, s: usize, e: usize) {
    simd(
        #[inline(always)]
        || match op {
            BinaryOp::Add => map2(a, b, y, s, e, |p, q| p + q),
            BinaryOp::Sub => map2(a, b, y, s, e, |p, q| p - q),
            BinaryOp::Mul => map2(a, b, y, s, e, |p, q| p * q),
            BinaryOp::Div => map2(a, b, y, s, e, |p, q| p / q),
            BinaryOp::Max => map2(a, b, y, s, e, f32::max),
            BinaryOp::Min => map2(a, b, y, s, e, f32::min),
        },
    )
}

/// `y = alpha·x + beta·y` on `s..e` (`y` not read when `beta == 0`).
pub(crate) unsafe fn axpby(alpha: f32, x: BufView, beta: f32, y: BufView, s: usize, e: usize) {
    simd(
        #[inline(always)]
        || {
            if beta == 0.0 {
                map1(x, y, s, e, |v| alpha * v)
            } else {
                map2(x, y, y, s, e, |p, q| alpha * p + beta * q)
            }
        },
    )
}

/// `y = scale·x + shift` on `s..e`.
pub(crate) unsafe fn affine(x: BufView, y: BufView, scale: f32, shift: f32, s: usize, e: usize) {
    simd(
        #[inline(always)]
        || map1(x, y, s, e, |v| scale * v + shift),
    )
}

/// Draws of `dist` for elements `s..e` (stream positions `offset + s ..`).
pub(crate) unsafe fn random(
    dst: BufView,
    dist: Distribution,
    seed: u64,
    offset: u64,
    s: usize,
    e: usize,
) {
    for (i, v) in part_mut(dst, s, e).iter_mut().enumerate() {
        *v = draw(dist, seed, offset + (s + i) as u64);
    }
}

/// One fused SGD step on elements `s..e`.
pub(crate) unsafe fn sgd(
    w: BufView,
    g: BufView,
    m: Option<BufView>,
    a: SgdArgs,
    s: usize,
    e: usize,
) {
    let SgdArgs {
        lr,
        momentum: mu,
        weight_decay: wd,
        nesterov,
        grad_scale: gs,
    } = a;
    simd(
        #[inline(always)]
        || {
            let ws = part_mut(w, s, e);
            let grads = part(g, s, e);
            match m {
                None => {
                    for (wv, &gv) in ws.iter_mut().zip(grads) {
                        *wv -= lr * (gs * gv + wd * *wv);
                    }
                }
                Some(m) if nesterov => {
                    for ((wv, &gv), mv) in ws.iter_mut().zip(grads).zip(part_mut(m, s, e)) {
                        let d = gs * gv + wd * *wv;
                        *mv = mu * *mv + d;
                        *wv -= lr * (d + mu * *mv);
                    }
                }
                Some(m) => {
                    for ((wv, &gv), mv) in ws.iter_mut().zip(grads).zip(part_mut(m, s, e)) {
                        *mv = mu * *mv + gs * gv + wd * *wv;
                        *wv -= lr * *mv;
                    }
                }
            }
        },
    )
}

/// One fused adaptive step (see [`AdaptiveRule`]) on elements `s..e`.
pub(crate) unsafe fn adaptive(
    w: BufView,
    g: BufView,
    s1: BufView,
    s2: Option<BufView>,
    a: AdaptiveArgs,
    s: usize,
    e: usize,
) {
    let (lr, wd, gs) = (a.lr, a.weight_decay, a.grad_scale);
    simd(
        #[inline(always)]
        || {
            let ws = part_mut(w, s, e);
            let grads = part(g, s, e);
            let first = part_mut(s1, s, e);
            match a.rule {
                AdaptiveRule::AdaGrad { eps } => {
                    for ((wv, &gv), sv) in ws.iter_mut().zip(grads).zip(first) {
                        let d = gs * gv + wd * *wv;
                        *sv += d * d;
                        *wv -= lr * d / (sv.sqrt() + eps);
                    }
                }
                AdaptiveRule::RmsProp { rho, eps } => {
                    for ((wv, &gv), sv) in ws.iter_mut().zip(grads).zip(first) {
                        let d = gs * gv + wd * *wv;
                        *sv = rho * *sv + (1.0 - rho) * d * d;
                        *wv -= lr * d / (sv.sqrt() + eps);
                    }
                }
                AdaptiveRule::Adam {
                    beta1,
                    beta2,
                    eps,
                    correction1,
                    correction2,
                    decoupled,
                } => {
                    let Some(s2) = s2 else { return };
                    let second = part_mut(s2, s, e);
                    let (c1, c2) = (1.0 / correction1, 1.0 / correction2);
                    let (l2, shrink) = if decoupled {
                        (0.0, 1.0 - lr * wd)
                    } else {
                        (wd, 1.0)
                    };
                    for (((wv, &gv), mv), vv) in ws.iter_mut().zip(grads).zip(first).zip(second) {
                        let d = gs * gv + l2 * *wv;
                        *wv *= shrink;
                        *mv = beta1 * *mv + (1.0 - beta1) * d;
                        *vv = beta2 * *vv + (1.0 - beta2) * d * d;
                        *wv -= lr * (*mv * c1) / ((*vv * c2).sqrt() + eps);
                    }
                }
                AdaptiveRule::AdaDelta { rho, eps } => {
                    let Some(s2) = s2 else { return };
                    let second = part_mut(s2, s, e);
                    for (((wv, &gv), sv), dv) in ws.iter_mut().zip(grads).zip(first).zip(second) {
                        let d = gs * gv + wd * *wv;
                        *sv = rho * *sv + (1.0 - rho) * d * d;
                        let step = (*dv + eps).sqrt() / (*sv + eps).sqrt() * d;
                        *dv = rho * *dv + (1.0 - rho) * step * step;
                        *wv -= lr * step;
                    }
                }
                AdaptiveRule::AdaMax {
                    beta1,
                    beta2,
                    eps,
                    correction1,
                } => {
                    let Some(s2) = s2 else { return };
                    let second = part_mut(s2, s, e);
                    let rate = lr / correction1;
                    for (((wv, &gv), mv), uv) in ws.iter_mut().zip(grads).zip(first).zip(second) {
                        let d = gs * gv + wd * *wv;
                        *mv = beta1 * *mv + (1.0 - beta1) * d;
                        *uv = (beta2 * *uv).max(d.abs() + eps);
                        *wv -= rate * *mv / *uv;
                    }
                }
            }
        },
    )
}

/// `y[o, m, i] += v[m]` for outer indices `os..oe`.
pub(crate) unsafe fn add_broadcast(d: Dims3, v: BufView, y: BufView, os: usize, oe: usize) {
    broadcast(d, v, y, os, oe, |yv, b| *yv += b)
}

/// `y[o, m, i] *= v[m]` for outer indices `os..oe`.
pub(crate) unsafe fn mul_broadcast(d: Dims3, v: BufView, y: BufView, os: usize, oe: usize) {
    broadcast(d, v, y, os, oe, |yv, b| *yv *= b)
}

/// `f(y[o, m, i], v[m])` for outer indices `os..oe`.
#[inline(always)]
unsafe fn broadcast(
    d: Dims3,
    v: BufView,
    y: BufView,
    os: usize,
    oe: usize,
    f: impl Fn(&mut f32, f32) + Copy,
) {
    simd(
        #[inline(always)]
        || {
            let vs = part(v, 0, d.mid);
            let row = d.mid * d.inner;
            for o in os..oe {
                let ys = part_mut(y, o * row, (o + 1) * row);
                if d.inner == 1 {
                    for (yv, &b) in ys.iter_mut().zip(vs) {
                        f(yv, b);
                    }
                } else {
                    for (run, &b) in ys.chunks_exact_mut(d.inner).zip(vs) {
                        for yv in run {
                            f(yv, b);
                        }
                    }
                }
            }
        },
    )
}

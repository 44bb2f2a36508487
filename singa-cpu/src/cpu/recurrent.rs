//! The fused elementwise part of an LSTM step, forward and backward, on a range of rows.
//!
//! A row of the gates is `[i | f | o | g]`, `hidden` values each. Every loop runs over one
//! row's contiguous slices, so LLVM vectorises it and the row stays in L1 between the loops.

use super::elementwise::{part, part_mut};
use super::math;
use super::simd::simd;
use singa_core::BufView;

/// The views of one LSTM step's forward pass (see `Device::lstm_cell`).
#[derive(Clone, Copy)]
pub(crate) struct CellViews {
    pub hidden: usize,
    pub gates: BufView,
    pub bias: Option<BufView>,
    pub c_prev: BufView,
    pub c: BufView,
    pub tanh_c: BufView,
    pub h: BufView,
}

/// Rows `rows` of the forward pass.
///
/// # Safety
/// The views are live `F32` allocations of the CPU device of the sizes `lstm_cell` documents,
/// the outputs overlap nothing, and no other thread touches these rows.
pub(crate) unsafe fn cell_rows(v: CellViews, rows: std::ops::Range<usize>) {
    let hid = v.hidden;
    simd(
        #[inline(always)]
        || {
            for r in rows {
                let gates = part_mut(v.gates, 4 * hid * r, 4 * hid * (r + 1));
                if let Some(b) = v.bias {
                    for (x, b) in gates.iter_mut().zip(part(b, 0, 4 * hid)) {
                        *x += b;
                    }
                }
                let (sig, g) = gates.split_at_mut(3 * hid);
                for x in sig.iter_mut() {
                    *x = math::sigmoid(*x);
                }
                for x in g.iter_mut() {
                    *x = math::tanh(*x);
                }
                let (i, rest) = sig.split_at(hid);
                let (f, o) = rest.split_at(hid);
                let span = (hid * r, hid * (r + 1));
                let c_prev = part(v.c_prev, span.0, span.1);
                let c = part_mut(v.c, span.0, span.1);
                let tanh_c = part_mut(v.tanh_c, span.0, span.1);
                let h = part_mut(v.h, span.0, span.1);
                for j in 0..hid {
                    let cj = f[j] * c_prev[j] + i[j] * g[j];
                    let t = math::tanh(cj);
                    c[j] = cj;
                    tanh_c[j] = t;
                    h[j] = o[j] * t;
                }
            }
        },
    )
}

/// The views of one LSTM step's backward pass (see `Device::lstm_cell_backward`).
#[derive(Clone, Copy)]
pub(crate) struct CellGradViews {
    pub hidden: usize,
    pub gates: BufView,
    pub c_prev: BufView,
    pub tanh_c: BufView,
    pub dh: BufView,
    pub dc: BufView,
    pub d_gates: BufView,
    pub dc_prev: Option<BufView>,
}

/// Rows `rows` of the backward pass:
///
/// ```text
/// dc' = dc + dh ⊙ o ⊙ (1 − tanh²c)     dc_prev = dc' ⊙ f
/// di = dc' ⊙ g ⊙ i(1 − i)   df = dc' ⊙ c_prev ⊙ f(1 − f)
/// do = dh ⊙ tanh c ⊙ o(1 − o)   dg = dc' ⊙ i ⊙ (1 − g²)
/// ```
///
/// # Safety
/// As for [`cell_rows`].
pub(crate) unsafe fn cell_grad_rows(v: CellGradViews, rows: std::ops::Range<usize>) {
    let hid = v.hidden;
    simd(
        #[inline(always)]
        || {
            for r in rows {
                let a = part(v.gates, 4 * hid * r, 4 * hid * (r + 1));
                let (i, rest) = a.split_at(hid);
                let (f, rest) = rest.split_at(hid);
                let (o, g) = rest.split_at(hid);
                let d = part_mut(v.d_gates, 4 * hid * r, 4 * hid * (r + 1));
                let (di, rest) = d.split_at_mut(hid);
                let (df, rest) = rest.split_at_mut(hid);
                let (d_o, dg) = rest.split_at_mut(hid);
                let span = (hid * r, hid * (r + 1));
                let c_prev = part(v.c_prev, span.0, span.1);
                let tanh_c = part(v.tanh_c, span.0, span.1);
                let dh = part(v.dh, span.0, span.1);
                let dc = part(v.dc, span.0, span.1);
                // The gates' gradients at unit j; returns dc' there.
                let mut unit = |j: usize| {
                    let (t, oj) = (tanh_c[j], o[j]);
                    let dcj = dc[j] + dh[j] * oj * (1.0 - t * t);
                    let (ij, fj, gj) = (i[j], f[j], g[j]);
                    di[j] = dcj * gj * ij * (1.0 - ij);
                    df[j] = dcj * c_prev[j] * fj * (1.0 - fj);
                    d_o[j] = dh[j] * t * oj * (1.0 - oj);
                    dg[j] = dcj * ij * (1.0 - gj * gj);
                    dcj
                };
                match v.dc_prev {
                    Some(p) => {
                        let dc_prev = part_mut(p, span.0, span.1);
                        for j in 0..hid {
                            dc_prev[j] = unit(j) * f[j];
                        }
                    }
                    None => (0..hid).for_each(|j| {
                        unit(j);
                    }),
                }
            }
        },
    )
}

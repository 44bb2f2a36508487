//! The AVX-512 kernel: an 8 × (16·NV) tile of C from a packed A panel and rows of B.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of the tile.
pub const MR: usize = 8;
/// Lanes of a register.
pub const LANES: usize = 16;

/// The lanes of register `v` that hold columns `< cols`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes(cols: usize, v: usize) -> __mmask16 {
    let n = cols.saturating_sub(LANES * v).min(LANES);
    ((1u32 << n) - 1) as __mmask16
}

/// `C[rows × cols] = alpha · Aₚ · B + beta · C` over depth `k`, for a tile `16·NV` columns
/// wide: `a` is a packed panel (`MR` values per depth step), `b` points at the tile's first
/// column in a row-major B with row stride `ldb`. When `beta == 0`, C is not read.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `k · MR` values; `b`'s rows hold `cols` values; C's tile
/// is writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn kernel<const NV: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
) {
    let mut m = [0 as __mmask16; NV];
    for (v, mv) in m.iter_mut().enumerate() {
        *mv = lanes(cols, v);
    }
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..k {
        let mut bv = [_mm512_setzero_ps(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_maskz_loadu_ps(m[v], b.wrapping_add(LANES * v));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(r));
            for v in 0..NV {
                row[v] = _mm512_fmadd_ps(x, bv[v], row[v]);
            }
        }
        // The pointers may step past the operands after the last depth step (never read).
        a = a.wrapping_add(MR);
        b = b.wrapping_add(ldb);
    }
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    for (r, row) in acc.iter().enumerate().take(rows) {
        for (v, &x) in row.iter().enumerate() {
            if m[v] == 0 {
                continue;
            }
            let p = c.add(r * ldc + LANES * v);
            let mut y = _mm512_mul_ps(va, x);
            if beta != 0.0 {
                y = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[v], p), y);
            }
            _mm512_mask_storeu_ps(p, m[v], y);
        }
    }
}

/// Not reachable off x86-64 (`available()` is false there).
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub unsafe fn kernel<const NV: usize>(
    _: usize,
    _: *const f32,
    _: *const f32,
    _: usize,
    _: *mut f32,
    _: usize,
    _: usize,
    _: usize,
    _: f32,
    _: f32,
) {
    unreachable!("the AVX-512 kernel only exists on x86-64")
}

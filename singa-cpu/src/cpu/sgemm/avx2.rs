//! The AVX2 kernel: a 6 × (8·NV) tile of C in up to 12 registers.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of the tile.
pub const MR: usize = 6;
/// Lanes of a register.
pub const LANES: usize = 8;

/// A load/store mask for the lanes of register `v` that hold columns `< cols`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lanes(cols: usize, v: usize) -> __m256i {
    let n = cols.saturating_sub(LANES * v).min(LANES) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// As the AVX-512 kernel, for a 6 × (8·NV) tile.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `k · MR` values; `b`'s rows hold `cols` values; C's
/// tile is writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
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
    let mut m = [_mm256_setzero_si256(); NV];
    for (v, mv) in m.iter_mut().enumerate() {
        *mv = lanes(cols, v);
    }
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..k {
        let mut bv = [_mm256_setzero_ps(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm256_maskload_ps(b.wrapping_add(LANES * v), m[v]);
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let x = _mm256_set1_ps(*a.add(r));
            for v in 0..NV {
                row[v] = _mm256_fmadd_ps(x, bv[v], row[v]);
            }
        }
        // The pointers may step past the operands after the last depth step (never read).
        a = a.wrapping_add(MR);
        b = b.wrapping_add(ldb);
    }
    let va = _mm256_set1_ps(alpha);
    let vb = _mm256_set1_ps(beta);
    for (r, row) in acc.iter().enumerate().take(rows) {
        for (v, &x) in row.iter().enumerate() {
            if cols <= LANES * v {
                continue;
            }
            let p = c.add(r * ldc + LANES * v);
            let mut y = _mm256_mul_ps(va, x);
            if beta != 0.0 {
                y = _mm256_fmadd_ps(vb, _mm256_maskload_ps(p, m[v]), y);
            }
            _mm256_maskstore_ps(p, m[v], y);
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
    unreachable!("the AVX2 kernel only exists on x86-64")
}

//! Products with bf16 inputs and f32 accumulation: `[device] precision = "bf16"`.
//!
//! The operands stay f32 in memory; packing rounds them to bf16 (as `vcvtneps2bf16` does), so
//! each value is converted once per product. AVX-512 BF16's `vdpbf16ps` multiplies pairs of
//! bf16 values and adds both products to an f32 lane, twice the multiply-adds of an f32 FMA.
//! Its operands are *pairs along the depth*: lane `j` of B holds `(B[2q][j], B[2q+1][j])` and
//! A's broadcast value is `(A[i][2q], A[i][2q+1])`. So both operands are packed as 32-bit pairs
//! (`u32`: the even depth in the low half): A in panels of [`MR`] rows, B one panel of `nr`
//! columns at a time, each depth-pair-major. An odd depth gets a zero partner.
//!
//! A CPU without AVX-512 BF16 packs and multiplies the same rounded pairs with plain code
//! (slow, but the same numbers up to the order of the f32 additions).

use super::{depth_block, Operand, Workspace, B};
use singa_core::bf16_bits;

/// Rows of the kernel's tile.
pub const MR: usize = 8;
/// f32 lanes of a register.
const LANES: usize = 16;

/// Whether this CPU runs the `vdpbf16ps` kernel (else the plain path runs).
pub fn fast() -> bool {
    use std::sync::OnceLock;
    static FAST: OnceLock<bool> = OnceLock::new();
    *FAST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            super::super::simd::level() == super::super::simd::Level::Avx512
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Registers per kernel row for `n` columns (as the f32 kernel chooses).
fn vectors(n: usize) -> usize {
    const COST: [usize; 3] = [120, 106, 100];
    (1..=3)
        .rev()
        .min_by_key(|&v| n.next_multiple_of(LANES * v) * COST[v - 1])
        .expect("at least one width")
}

/// The packing space of an `m × n × k` product: (f32 values, u32 pairs).
pub fn workspace_size(m: usize, n: usize, k: usize, packer: bool) -> (usize, usize) {
    let nr = LANES * vectors(n);
    let kc = depth_block(k);
    let pairs = kc.div_ceil(2);
    // A's panels for a depth block, then one panel of B.
    let u = m.next_multiple_of(MR) * pairs + pairs * nr;
    // A packer writes every f32 panel of a depth block first.
    let f = if packer {
        kc * n.next_multiple_of(nr)
    } else {
        0
    };
    (f, u)
}

/// `C = alpha · op(A) · op(B) + beta · C` with op(A) and op(B) rounded to bf16 (see
/// [`super::gemm_with`] for the arguments).
///
/// # Safety
/// As for [`super::gemm_with`], with `ws` reserved by [`workspace_size`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_with(
    ws: &mut Workspace,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Operand,
    b: B<'_>,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    gemm_on(fast(), ws, m, n, k, alpha, a, b, beta, c, ldc)
}

/// [`gemm_with`] with the `vdpbf16ps` kernel when `fast`, else with the plain one (tests run
/// both on the same CPU).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_on(
    fast: bool,
    ws: &mut Workspace,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Operand,
    b: B<'_>,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    let nv = vectors(n);
    let nr = LANES * nv;
    let kc_max = depth_block(k);
    let mut p0 = 0;
    while p0 < k {
        let kc = kc_max.min(k - p0);
        let pairs = kc.div_ceil(2);
        let beta_block = if p0 == 0 { beta } else { 1.0 };
        let (pa, pb) = ws.pairs.split_at_mut(m.next_multiple_of(MR) * pairs);
        let pb = &mut pb[..pairs * nr];
        pack_a(pa, m, kc, &a, p0, fast);
        if let B::Packer(p) = &b {
            p.pack(&mut ws.b[..kc * n.next_multiple_of(nr)], nr, n, kc, p0);
        }
        let mut j = 0;
        while j < n {
            let cols = nr.min(n - j);
            match &b {
                B::Stored(s) => pack_b(pb, nr, cols, kc, s, p0, j, fast),
                B::Packer(_) => pair_up_panel(pb, &ws.b[j * kc..(j + nr) * kc], nr, kc),
            }
            let mut i = 0;
            while i < m {
                let rows = MR.min(m - i);
                let ai = pa.as_ptr().add(i * pairs);
                let cij = c.add(i * ldc + j);
                let tile = (
                    pairs,
                    ai,
                    pb.as_ptr(),
                    cij,
                    ldc,
                    rows,
                    cols,
                    alpha,
                    beta_block,
                );
                match (fast, nv) {
                    (true, 1) => kernel::<1>(tile),
                    (true, 2) => kernel::<2>(tile),
                    (true, _) => kernel::<3>(tile),
                    (false, _) => plain_kernel(nr, tile),
                }
                i += MR;
            }
            j += nr;
        }
        p0 += kc;
    }
}

/// One pair of depth values of row/column `line`, rounded: `(at(2q), at(2q+1))`, the second
/// zero past `kc`.
#[inline(always)]
fn pair(kc: usize, q: usize, at: impl Fn(usize) -> f32) -> u32 {
    let lo = bf16_bits(at(2 * q)) as u32;
    let hi = if 2 * q + 1 < kc {
        bf16_bits(at(2 * q + 1)) as u32
    } else {
        0
    };
    lo | hi << 16
}

/// Packs rows `0..m`, depth `p0..p0+kc` of op(A) as pairs, in panels of [`MR`] rows (rows past
/// `m` zero).
unsafe fn pack_a(buf: &mut [u32], m: usize, kc: usize, a: &Operand, p0: usize, fast: bool) {
    let pairs = kc.div_ceil(2);
    for (panel, out) in buf.chunks_exact_mut(MR * pairs).enumerate() {
        let i0 = panel * MR;
        let rows = MR.min(m - i0);
        #[cfg(target_arch = "x86_64")]
        if fast {
            if a.trans {
                // op(A)(i, p) = stored(p, i): the depth steps across stored rows.
                vector::pairs_across(out.as_mut_ptr(), MR, kc, rows, |p| a.at(i0, p0 + p));
            } else {
                vector::pairs_along(out.as_mut_ptr(), MR, kc, rows, |r| a.at(i0 + r, p0));
            }
            continue;
        }
        let _ = fast;
        for q in 0..pairs {
            for r in 0..MR {
                out[q * MR + r] = if r < rows {
                    pair(kc, q, |p| *a.at(i0 + r, p0 + p))
                } else {
                    0
                };
            }
        }
    }
}

/// Packs depth `p0..p0+kc`, columns `j0..j0+cols` of op(B) as one panel of `nr` pair columns
/// (columns past `cols` zero).
#[allow(clippy::too_many_arguments)]
unsafe fn pack_b(
    out: &mut [u32],
    nr: usize,
    cols: usize,
    kc: usize,
    b: &Operand,
    p0: usize,
    j0: usize,
    fast: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        if b.trans {
            // op(B)(p, j) = stored(j, p): column j's depth is contiguous.
            vector::pairs_along(out.as_mut_ptr(), nr, kc, cols, |j| b.at(p0, j0 + j));
        } else {
            vector::pairs_across(out.as_mut_ptr(), nr, kc, cols, |p| b.at(p0 + p, j0));
        }
        return;
    }
    let _ = fast;
    for q in 0..kc.div_ceil(2) {
        for j in 0..nr {
            out[q * nr + j] = if j < cols {
                pair(kc, q, |p| *b.at(p0 + p, j0 + j))
            } else {
                0
            };
        }
    }
}

/// Turns one f32 panel of a [`PackB`](super::PackB) (`kc × nr`, depth-major) into pairs.
fn pair_up_panel(out: &mut [u32], panel: &[f32], nr: usize, kc: usize) {
    for (q, row) in out.chunks_exact_mut(nr).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = pair(kc, q, |p| panel[p * nr + j]);
        }
    }
}

/// A tile's arguments: (depth pairs, A panel, B panel, C, ldc, rows, cols, alpha, beta).
type Tile = (
    usize,
    *const u32,
    *const u32,
    *mut f32,
    usize,
    usize,
    usize,
    f32,
    f32,
);

/// The kernel without `vdpbf16ps`: the same pairs, multiplied as f32.
unsafe fn plain_kernel(nr: usize, (pairs, a, b, c, ldc, rows, cols, alpha, beta): Tile) {
    let half = |v: u32, hi: bool| f32::from_bits(if hi { v & 0xffff_0000 } else { v << 16 });
    for r in 0..rows {
        for j in 0..cols {
            let mut acc = 0.0f32;
            for q in 0..pairs {
                let (x, y) = (*a.add(q * MR + r), *b.add(q * nr + j));
                acc += half(x, true) * half(y, true);
                acc += half(x, false) * half(y, false);
            }
            let p = c.add(r * ldc + j);
            *p = if beta == 0.0 {
                alpha * acc
            } else {
                alpha * acc + beta * *p
            };
        }
    }
}

/// `C[rows × cols] = alpha · Aₚ · Bₚ + beta · C` for a tile `16·NV` columns wide, from packed
/// pairs. When `beta == 0`, C is not read.
///
/// # Safety
/// The CPU has AVX-512 BF16 ([`fast`]); the panels hold `pairs` rows; C's tile is writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const NV: usize>((pairs, a, b, c, ldc, rows, cols, alpha, beta): Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..pairs {
        let mut bv = [_mm512_setzero_si512(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_si512(b.add(LANES * v).cast());
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
            for v in 0..NV {
                row[v] =
                    _mm512_dpbf16_ps(row[v], x, std::mem::transmute::<__m512i, __m512bh>(bv[v]));
            }
        }
        a = a.add(MR);
        b = b.add(LANES * NV);
    }
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    for (r, row) in acc.iter().enumerate().take(rows) {
        for (v, &x) in row.iter().enumerate() {
            let n = cols.saturating_sub(LANES * v).min(LANES);
            if n == 0 {
                continue;
            }
            let mask = ((1u32 << n) - 1) as __mmask16;
            let p = c.add(r * ldc + LANES * v);
            let mut y = _mm512_mul_ps(va, x);
            if beta != 0.0 {
                y = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mask, p), y);
            }
            _mm512_mask_storeu_ps(p, mask, y);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const NV: usize>(_: Tile) {
    unreachable!("the bf16 kernel only exists on x86-64")
}

/// Packing with AVX-512 BF16's conversions.
#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::*;

    /// The lanes `< n` of a 16-lane register.
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// Packs `lines` lines whose depth is contiguous in memory (`line(l)` is the address of
    /// line `l`'s first depth value), depth `0..kc`, into `out` (pair `q` of line `l` at
    /// `q · ld + l`; lines `lines..ld` zero). 8 lines and 16 depth values at a time: each line
    /// converts to 8 pairs, and an 8 × 8 transpose of the pairs puts them depth-major.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl,avx")]
    pub unsafe fn pairs_along(
        out: *mut u32,
        ld: usize,
        kc: usize,
        lines: usize,
        line: impl Fn(usize) -> *const f32,
    ) {
        let pairs = kc.div_ceil(2);
        for l0 in (0..ld).step_by(8) {
            let mut q0 = 0;
            while q0 < pairs {
                let depth = (kc - 2 * q0).min(16);
                let mut r = [_mm256_setzero_ps(); 8];
                for (i, reg) in r.iter_mut().enumerate() {
                    if l0 + i < lines {
                        let x = _mm512_maskz_loadu_ps(mask16(depth), line(l0 + i).add(2 * q0));
                        *reg = _mm256_castsi256_ps(std::mem::transmute::<__m256bh, __m256i>(
                            _mm512_cvtneps_pbh(x),
                        ));
                    }
                }
                let rows = (pairs - q0).min(8);
                if rows == 8 {
                    super::super::store_transposed(r, out.add(q0 * ld + l0).cast(), ld);
                } else {
                    let mut tmp = [0u32; 64];
                    super::super::store_transposed(r, tmp.as_mut_ptr().cast(), 8);
                    for q in 0..rows {
                        std::ptr::copy_nonoverlapping(
                            tmp.as_ptr().add(q * 8),
                            out.add((q0 + q) * ld + l0),
                            8,
                        );
                    }
                }
                q0 += 8;
            }
        }
    }

    /// Packs `lines` lines that are contiguous in memory for each depth value (`depth(p)` is
    /// the address of line 0 at depth `p`), depth `0..kc`, into `out` as [`pairs_along`]
    /// does. 16 lines at a time: two depth rows convert into one register and a permutation
    /// interleaves them into pairs.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    pub unsafe fn pairs_across(
        out: *mut u32,
        ld: usize,
        kc: usize,
        lines: usize,
        depth: impl Fn(usize) -> *const f32,
    ) {
        // Word i of the result: even-depth word i/2 for even i, odd-depth word 16 + i/2 for odd.
        let order: [i16; 32] = std::array::from_fn(|i| ((i % 2) * 16 + i / 2) as i16);
        let order = _mm512_loadu_si512(order.as_ptr().cast());
        let pairs = kc.div_ceil(2);
        for q in 0..pairs {
            let row = out.add(q * ld);
            for l0 in (0..ld).step_by(16) {
                let m = mask16(lines.saturating_sub(l0));
                let even = _mm512_maskz_loadu_ps(m, depth(2 * q).add(l0));
                let odd = if 2 * q + 1 < kc {
                    _mm512_maskz_loadu_ps(m, depth(2 * q + 1).add(l0))
                } else {
                    _mm512_setzero_ps()
                };
                let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(odd, even));
                let v = _mm512_permutexvar_epi16(order, both);
                // A panel narrower than 16 lines (A's 8 rows) takes the low half only.
                _mm512_mask_storeu_epi32(row.add(l0).cast(), mask16(ld - l0), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use singa_core::rng::SplitMix64;
    use singa_core::Precision;

    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n)
            .map(|_| (r.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect()
    }

    /// `alpha · op(A) · op(B) + beta · C` in f64 on inputs rounded to `p`.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        p: Precision,
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        (lda, ta): (usize, bool),
        b: &[f32],
        (ldb, tb): (usize, bool),
        c: &[f32],
        (alpha, beta): (f32, f32),
    ) -> Vec<f32> {
        let r = |x: f32| p.round(x) as f64;
        let mut out = c.to_vec();
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for t in 0..k {
                    let x = if ta { a[t * lda + i] } else { a[i * lda + t] };
                    let y = if tb { b[j * ldb + t] } else { b[t * ldb + j] };
                    acc += r(x) * r(y);
                }
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c[i * n + j] as f64
                };
                out[i * n + j] = (alpha as f64 * acc + old) as f32;
            }
        }
        out
    }

    /// Both kernels (and both packings) against the rounded reference, over shapes with
    /// partial tiles, odd depths, several depth blocks, every transpose and padded rows.
    #[test]
    fn both_paths_compute_the_rounded_product() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (8, 16, 16),
            (9, 17, 33),
            (13, 40, 2),
            (16, 49, 64),
            (7, 100, 301),
            (64, 33, 530),
            (20, 96, 17),
        ];
        let mut seed = 1;
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for &(alpha, beta) in &[(1.0f32, 0.0f32), (-0.5, 0.25)] {
                    seed += 1;
                    let pad = (seed % 3) as usize;
                    let (lda, ldb) = (if ta { m } else { k } + pad, if tb { k } else { n } + pad);
                    let a = values(seed, if ta { k } else { m } * lda);
                    let b = values(seed ^ 7, if tb { n } else { k } * ldb);
                    let c = values(seed ^ 9, m * n);
                    let want = reference(
                        Precision::BF16,
                        (m, n, k),
                        &a,
                        (lda, ta),
                        &b,
                        (ldb, tb),
                        &c,
                        (alpha, beta),
                    );
                    let paths: &[bool] = if fast() { &[false, true] } else { &[false] };
                    for &fast in paths {
                        let mut ws = Workspace::default();
                        ws.reserve(super::super::workspace_size(m, n, k, tb, Precision::BF16));
                        let mut got = c.clone();
                        let op = |ptr: &[f32], ld, trans| Operand {
                            ptr: ptr.as_ptr(),
                            ld,
                            trans,
                        };
                        unsafe {
                            gemm_on(
                                fast,
                                &mut ws,
                                m,
                                n,
                                k,
                                alpha,
                                op(&a, lda, ta),
                                B::Stored(op(&b, ldb, tb)),
                                beta,
                                got.as_mut_ptr(),
                                n,
                            )
                        };
                        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - w).abs() <= 1e-5 * (k as f32 + 1.0),
                                "{m}x{n}x{k} ta {ta} tb {tb} fast {fast}: element {idx}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The inputs really are rounded: the product differs from the f32 one by about bf16's
    /// precision (a kernel that quietly ran in f32 would fail here).
    #[test]
    fn products_are_rounded_to_bf16() {
        let (m, n, k) = (16, 48, 256);
        let a = values(3, m * k);
        let b = values(4, k * n);
        let exact = reference(
            Precision::F32,
            (m, n, k),
            &a,
            (k, false),
            &b,
            (n, false),
            &vec![0.0; m * n],
            (1.0, 0.0),
        );
        let mut ws = Workspace::default();
        ws.reserve(super::super::workspace_size(
            m,
            n,
            k,
            false,
            Precision::BF16,
        ));
        let mut got = vec![0.0f32; m * n];
        let op = |p: &[f32], ld| Operand {
            ptr: p.as_ptr(),
            ld,
            trans: false,
        };
        unsafe {
            gemm_with(
                &mut ws,
                m,
                n,
                k,
                1.0,
                op(&a, k),
                B::Stored(op(&b, n)),
                0.0,
                got.as_mut_ptr(),
                n,
            )
        };
        let diff = got
            .iter()
            .zip(&exact)
            .map(|(g, e)| (g - e).abs())
            .fold(0.0f32, f32::max);
        // Each input carries a relative error up to 2^-9; over 256 products of values below 1
        // the sums differ by ~0.01, far above f32's rounding (~1e-5) and below 0.1.
        assert!(
            diff > 1e-3 && diff < 0.1,
            "max difference from the f32 product: {diff}"
        );
    }
}

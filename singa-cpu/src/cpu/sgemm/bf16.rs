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

/// How bf16 products run on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Plain code (no AVX-512 BF16): the same numbers, slowly.
    Plain,
    /// AVX-512 BF16's `vdpbf16ps` (the kernel below).
    Avx512Bf16,
    /// Intel AMX tiles ([`super::amx`]).
    Amx,
}

impl Path {
    /// The fastest path this CPU runs.
    pub fn here() -> Path {
        #[cfg(target_arch = "x86_64")]
        if super::amx::available() {
            return Path::Amx;
        }
        if fast() {
            Path::Avx512Bf16
        } else {
            Path::Plain
        }
    }

    /// The CPU feature it uses, as a user reads it.
    pub fn name(self) -> &'static str {
        match self {
            Path::Plain => "no avx512_bf16: emulated, slow",
            Path::Avx512Bf16 => "avx512_bf16",
            Path::Amx => "amx_bf16",
        }
    }
}

/// The packing space of an `m × n × k` product: (f32 values, u32 pairs), for any path.
pub fn workspace_size(m: usize, n: usize, k: usize, packer: bool) -> (usize, usize) {
    let nr = LANES * vectors(n);
    let kc = depth_block(k);
    let pairs = kc.div_ceil(2);
    // A's and B's panels for a depth block.
    let u = (m.next_multiple_of(MR) + n.next_multiple_of(nr)) * pairs;
    // A packer writes every f32 panel of a depth block first.
    let f = if packer {
        kc * n.next_multiple_of(nr)
    } else {
        0
    };
    #[cfg(target_arch = "x86_64")]
    if super::amx::available() {
        let (f_amx, u_amx) = super::amx::workspace_size(m, n, k, packer);
        return (f.max(f_amx), u.max(u_amx));
    }
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
    gemm_on(Path::here(), ws, m, n, k, alpha, a, b, beta, c, ldc)
}

/// [`gemm_with`] on the given path (tests run every path this CPU has).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_on(
    path: Path,
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
    #[cfg(target_arch = "x86_64")]
    if path == Path::Amx {
        return super::amx::gemm(ws, m, n, k, alpha, a, b, beta, c, ldc);
    }
    let fast = path == Path::Avx512Bf16;
    let nv = vectors(n);
    let nr = LANES * nv;
    let kc_max = depth_block(k);
    let mut p0 = 0;
    while p0 < k {
        let kc = kc_max.min(k - p0);
        let pairs = kc.div_ceil(2);
        let beta_block = if p0 == 0 { beta } else { 1.0 };
        let (pa, pb) = ws.pairs.split_at_mut(m.next_multiple_of(MR) * pairs);
        let a_panels = Panels::new(pa, MR, pairs);
        pack(a_panels, kc, m, !a.trans, |i, p| a.at(i, p0 + p), fast);
        let b_panels = Panels::new(pb, nr, pairs);
        match &b {
            // Lines of B are its columns; the depth is contiguous when B is stored transposed.
            B::Stored(s) => pack(b_panels, kc, n, s.trans, |j, p| s.at(p0 + p, j), fast),
            B::Packer(packer) => {
                let f = &mut ws.b[..kc * n.next_multiple_of(nr)];
                packer.pack(f, nr, n, kc, p0);
                pair_up(b_panels, f, kc, n, fast);
            }
        }
        let mut j = 0;
        while j < n {
            let cols = nr.min(n - j);
            let bj = b_panels.at(0, j);
            let mut i = 0;
            while i < m {
                let rows = MR.min(m - i);
                let tile = (
                    pairs,
                    a_panels.at(0, i) as *const u32,
                    bj as *const u32,
                    c.add(i * ldc + j),
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

/// Where packed pairs go: panels of `width` lines (rows of A, columns of B), each `pairs`
/// pairs deep and depth-major: pair `q` of line `l` is value `q · width + l % width` of panel
/// `l / width`. Lines past the operand's are zero, so the kernel reads whole panels.
#[derive(Clone, Copy)]
pub(super) struct Panels {
    ptr: *mut u32,
    /// Lines per panel.
    pub(super) width: usize,
    /// Depth pairs per panel.
    pub(super) pairs: usize,
}

impl Panels {
    pub(super) fn new(buf: &mut [u32], width: usize, pairs: usize) -> Panels {
        Panels {
            ptr: buf.as_mut_ptr(),
            width,
            pairs,
        }
    }

    /// Where pair `q` of line `l` goes.
    #[inline(always)]
    pub(super) unsafe fn at(&self, q: usize, l: usize) -> *mut u32 {
        let panel = l / self.width;
        self.ptr
            .add(panel * self.pairs * self.width + q * self.width + l % self.width)
    }
}

/// One pair of depth values of a line, rounded: `(at(2q), at(2q+1))`, the second zero past
/// `kc`.
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

/// Packs lines `0..lines`, depth `0..kc` of an operand into `panels`; `at(l, p)` is the
/// address of line `l` at depth `p`, and `along` says that a line's depth is contiguous in
/// memory (else each depth step's lines are).
pub(super) unsafe fn pack(
    panels: Panels,
    kc: usize,
    lines: usize,
    along: bool,
    at: impl Fn(usize, usize) -> *const f32,
    fast: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        if along {
            vector::pairs_along(panels, kc, lines, at);
        } else {
            vector::pairs_across(panels, kc, lines, at);
        }
        return;
    }
    let _ = (fast, along);
    for q in 0..kc.div_ceil(2) {
        for l in 0..lines.next_multiple_of(panels.width) {
            *panels.at(q, l) = if l < lines {
                pair(kc, q, |p| *at(l, p))
            } else {
                0
            };
        }
    }
}

/// Turns the f32 panels of a [`PackB`](super::PackB) (`kc × width` each, depth-major, the
/// width a multiple of 16) into pairs.
pub(super) unsafe fn pair_up(panels: Panels, f32s: &[f32], kc: usize, lines: usize, fast: bool) {
    let w = panels.width;
    let at = |l: usize, p: usize| f32s.as_ptr().add((l / w) * kc * w + p * w + l % w);
    // Each depth step's lines are contiguous within a panel, and 16 lines never straddle two.
    pack(panels, kc, lines, false, at, fast)
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
pub(super) mod vector {
    use super::super::store_transposed;
    use super::Panels;
    use std::arch::x86_64::*;

    /// The lanes `< n` of a 16-lane register.
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// Packs lines whose depth is contiguous in memory: 8 lines and 16 depth values at a
    /// time, each line converts to 8 pairs, and an 8 × 8 transpose of the pairs puts them
    /// depth-major.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl,avx")]
    pub(super) unsafe fn pairs_along(
        panels: Panels,
        kc: usize,
        lines: usize,
        at: impl Fn(usize, usize) -> *const f32,
    ) {
        let pairs = kc.div_ceil(2);
        for l0 in (0..lines.next_multiple_of(panels.width)).step_by(8) {
            let mut q0 = 0;
            while q0 < pairs {
                let depth = (kc - 2 * q0).min(16);
                let mut r = [_mm256_setzero_ps(); 8];
                for (i, reg) in r.iter_mut().enumerate() {
                    if l0 + i < lines {
                        let x = _mm512_maskz_loadu_ps(mask16(depth), at(l0 + i, 2 * q0));
                        *reg = _mm256_castsi256_ps(std::mem::transmute::<__m256bh, __m256i>(
                            _mm512_cvtneps_pbh(x),
                        ));
                    }
                }
                // Rows of the transpose are depth pairs, 8 lines each (within one panel).
                let rows = (pairs - q0).min(8);
                let ld = panels.width;
                if rows == 8 {
                    store_transposed(r, panels.at(q0, l0).cast(), ld);
                } else {
                    let mut tmp = [0u32; 64];
                    store_transposed(r, tmp.as_mut_ptr().cast(), 8);
                    for q in 0..rows {
                        let dst = panels.at(q0 + q, l0);
                        std::ptr::copy_nonoverlapping(tmp.as_ptr().add(q * 8), dst, 8);
                    }
                }
                q0 += 8;
            }
        }
    }

    /// The pairs of depth `q` (values `2q` and `2q + 1`, the second zero past `kc`) of 16
    /// lines that are contiguous at each depth, `at(p)` the first line's address at depth `p`:
    /// the two rows convert into one register, and a permutation interleaves them, one u32
    /// per line; lines from `n` on are zero.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    pub(in super::super) unsafe fn pairs_of_16(
        kc: usize,
        q: usize,
        n: usize,
        at: impl Fn(usize) -> *const f32,
    ) -> __m512i {
        // Word i of the result: even-depth word i/2 for even i, odd-depth word 16 + i/2 for odd.
        const ORDER: [i16; 32] = {
            let mut o = [0i16; 32];
            let mut i = 0;
            while i < 32 {
                o[i] = ((i % 2) * 16 + i / 2) as i16;
                i += 1;
            }
            o
        };
        let m = mask16(n);
        let even = _mm512_maskz_loadu_ps(m, at(2 * q));
        let odd = if 2 * q + 1 < kc {
            _mm512_maskz_loadu_ps(m, at(2 * q + 1))
        } else {
            _mm512_setzero_ps()
        };
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(odd, even));
        _mm512_permutexvar_epi16(_mm512_loadu_si512(ORDER.as_ptr().cast()), both)
    }

    /// Packs lines that are contiguous in memory at each depth: for each pair of depth rows,
    /// 16 lines at a time, the two rows convert into one register and a permutation
    /// interleaves them into pairs. Whole rows are read in order, which the prefetchers
    /// follow.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    pub(super) unsafe fn pairs_across(
        panels: Panels,
        kc: usize,
        lines: usize,
        at: impl Fn(usize, usize) -> *const f32,
    ) {
        let padded = lines.next_multiple_of(panels.width);
        for q in 0..kc.div_ceil(2) {
            for l0 in (0..padded).step_by(16) {
                let v = pairs_of_16(kc, q, lines.saturating_sub(l0), |p| at(l0, p));
                if panels.width.is_multiple_of(16) {
                    _mm512_storeu_si512(panels.at(q, l0).cast(), v);
                } else {
                    // Panels of 8 lines (A's): the two halves go to two panels.
                    _mm256_storeu_si256(panels.at(q, l0).cast(), _mm512_castsi512_si256(v));
                    if l0 + 8 < padded {
                        let high = _mm512_extracti64x4_epi64::<1>(v);
                        _mm256_storeu_si256(panels.at(q, l0 + 8).cast(), high);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use singa_core::rng::SplitMix64;
    use singa_core::Precision;

    /// Every path this CPU runs (the plain one always).
    fn paths() -> Vec<Path> {
        let mut paths = vec![Path::Plain];
        if fast() {
            paths.push(Path::Avx512Bf16);
        }
        if Path::here() == Path::Amx {
            paths.push(Path::Amx);
        } else {
            eprintln!("no AMX on this CPU: its tile kernel is not tested here");
        }
        paths
    }

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
            (33, 64, 1100),
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
                    for path in paths() {
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
                                path,
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
                                "{m}x{n}x{k} ta {ta} tb {tb} {path:?}: element {idx}: {g} vs {w}"
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

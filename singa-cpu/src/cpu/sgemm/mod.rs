//! Single-precision matrix multiply for x86-64 with AVX-512 or AVX2, on one thread.
//!
//! Why not only the `gemm` crate: on the shapes of training with a small batch it packs and
//! allocates on every call (tens of allocations per training step) and reaches about 220
//! GFLOP/s per core; this kernel packs into buffers the device keeps (no allocation once warmed
//! up) and reads the right operand in place when it is stored row-major, which is the common
//! case (weights forward, output gradients backward). Other dtypes and CPUs without AVX2 still
//! use the `gemm` crate. Measured in docs/PERFORMANCE.md.
//!
//! The structure is the classic one (Goto, BLIS): the depth is cut into blocks that keep a
//! strip of B in L1; op(A) is packed into panels of `MR` rows stored depth-major, so the kernel
//! broadcasts consecutive values; the kernel accumulates an `MR × NR` tile of C in registers.

#[cfg(target_arch = "x86_64")]
mod amx;
mod avx2;
mod avx512;
pub mod bf16;

use super::simd::{level, Level};
use singa_core::Precision;

/// A row-major matrix operand: base address, row stride, and whether it is stored transposed.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    /// Address of element (0, 0) as stored.
    pub ptr: *const f32,
    /// Row stride as stored.
    pub ld: usize,
    /// Whether the stored matrix is the transpose of the operand.
    pub trans: bool,
}

impl Operand {
    /// Element `(i, j)` of the operand (not of the stored matrix).
    #[inline(always)]
    unsafe fn at(&self, i: usize, j: usize) -> *const f32 {
        if self.trans {
            self.ptr.add(j * self.ld + i)
        } else {
            self.ptr.add(i * self.ld + j)
        }
    }
}

/// Reusable packing space of one thread.
#[derive(Default)]
pub struct Workspace {
    a: Vec<f32>,
    b: Vec<f32>,
    /// bf16 pairs ([`bf16`]).
    pairs: Vec<u32>,
}

/// The packing space a product needs: f32 values of A and B, and bf16 pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    a: usize,
    b: usize,
    pairs: usize,
}

impl Space {
    /// Room for both products.
    pub fn max(self, other: Space) -> Space {
        Space {
            a: self.a.max(other.a),
            b: self.b.max(other.b),
            pairs: self.pairs.max(other.pairs),
        }
    }
}

/// Whether this CPU runs these kernels (else callers use the `gemm` crate).
pub fn available() -> bool {
    matches!(level(), Level::Avx512 | Level::Avx2)
}

/// Registers per kernel row for `n` columns: the tile width with the least cost, counting
/// the columns computed (the last tile is padded) and the lower speed of narrower tiles (fewer
/// accumulators hide less FMA latency): 64 columns run as two tiles of 32, not two of 48 with
/// a third of them padding, but 1024 columns as tiles of 48.
fn vectors(n: usize) -> usize {
    let (lanes, widest) = match level() {
        Level::Avx512 => (avx512::LANES, 3),
        _ => (avx2::LANES, 2),
    };
    // Relative cost per column of tiles 1, 2 and 3 vectors wide (measured, in percent).
    const COST: [usize; 3] = [120, 106, 100];
    (1..=widest)
        .rev()
        .min_by_key(|&v| n.next_multiple_of(lanes * v) * COST[v - 1])
        .expect("at least one width")
}

/// The kernel's tile for `n` columns: (rows, columns).
fn tile(n: usize) -> (usize, usize) {
    match level() {
        Level::Avx512 => (avx512::MR, avx512::LANES * vectors(n)),
        _ => (avx2::MR, avx2::LANES * vectors(n)),
    }
}

/// The longest depth the kernels multiply in one pass over a tile of C.
pub(super) const MAX_DEPTH_BLOCK: usize = 256;

/// Depth per block: the largest even split of `k` into blocks of at most [`MAX_DEPTH_BLOCK`].
pub(super) fn depth_block(k: usize) -> usize {
    let blocks = k.div_ceil(MAX_DEPTH_BLOCK).max(1);
    k.div_ceil(blocks)
}

/// The packing space [`gemm_with`] needs for an `m × n × k` product in `precision` whose B is
/// packed (transposed or by a [`PackB`]) when `packed_b` (so it can be reserved up front,
/// before threads start).
pub fn workspace_size(m: usize, n: usize, k: usize, packed_b: bool, precision: Precision) -> Space {
    if precision == Precision::BF16 {
        let (b, pairs) = bf16::workspace_size(m, n, k, packed_b);
        return Space { a: 0, b, pairs };
    }
    // f16 packs B in any case (to round it).
    let packed_b = packed_b || precision == Precision::F16;
    let (mr, nr) = tile(n);
    let kc = depth_block(k);
    let a = m.next_multiple_of(mr) * kc;
    let b = if packed_b {
        kc * n.next_multiple_of(nr)
    } else {
        0
    };
    Space { a, b, pairs: 0 }
}

impl Workspace {
    /// Grows the buffers to at least the given sizes.
    pub fn reserve(&mut self, space: Space) {
        if self.a.len() < space.a {
            self.a.resize(space.a, 0.0);
        }
        if self.b.len() < space.b {
            self.b.resize(space.b, 0.0);
        }
        if self.pairs.len() < space.pairs {
            self.pairs.resize(space.pairs, 0);
        }
    }
}

/// `C = alpha · op(A) · op(B) + beta · C` in f32 for an `m × n` C with row stride `ldc`;
/// op(A) is `m × k`, op(B) is `k × n`. When `beta == 0`, C is not read.
///
/// # Safety
/// [`available`] is true; the operands cover their extents; `ws` was reserved with
/// [`workspace_size`] for these dimensions.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    ws: &mut Workspace,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Operand,
    b: Operand,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    gemm_with(
        ws,
        Precision::F32,
        m,
        n,
        k,
        alpha,
        a,
        B::Stored(b),
        beta,
        c,
        ldc,
    )
}

/// Packs depth `p0 .. p0 + kc` of an op(B) that exists only implicitly (convolution patches
/// read straight from the image) into `buf`, in the layout of [`pack_b`]: panels of `nr`
/// columns, each depth-major, columns past `n` zero.
pub trait PackB {
    /// Fills `buf` (`kc × n` rounded up to whole panels).
    ///
    /// # Safety
    /// `buf` holds `kc · n.next_multiple_of(nr)` values.
    unsafe fn pack(&self, buf: &mut [f32], nr: usize, n: usize, kc: usize, p0: usize);
}

/// The right operand of a product.
pub enum B<'a> {
    /// A matrix in memory (read in place when row-major, else packed).
    Stored(Operand),
    /// A matrix whose panels something else packs.
    Packer(&'a dyn PackB),
}

/// [`gemm`] in `precision` (f32, inputs rounded to bf16: [`bf16`], or inputs rounded to f16 and
/// multiplied by the f32 kernels), with an op(B) that may
/// be packed by the caller ([`B::Packer`]).
///
/// # Safety
/// As for [`gemm`] (for bf16 [`available`] need not hold), with `ws` reserved for
/// `precision` as for a packed B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_with(
    ws: &mut Workspace,
    precision: Precision,
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
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty product: C = beta · C (not read when beta is 0).
        for i in 0..m {
            let row = std::slice::from_raw_parts_mut(c.add(i * ldc), n);
            for v in row {
                *v = if beta == 0.0 { 0.0 } else { beta * *v };
            }
        }
        return;
    }
    if precision == Precision::BF16 {
        return bf16::gemm_with(ws, m, n, k, alpha, a, b, beta, c, ldc);
    }
    // f16: the f32 kernels on both operands packed and rounded to f16 (this CPU has no f16
    // products), so the products are those of f16 inputs with f32 sums, as on a GPU.
    let f16 = precision == Precision::F16;
    let (mr, nr) = tile(n);
    let nv = vectors(n);
    let kc_max = depth_block(k);
    let mut p0 = 0;
    while p0 < k {
        let kc = kc_max.min(k - p0);
        let beta_block = if p0 == 0 { beta } else { 1.0 };
        pack_a(&mut ws.a, mr, m, kc, &a, p0);
        // op(B) stored row-major is read in place (but in f16); otherwise it is packed.
        let packed = f16 || !matches!(b, B::Stored(Operand { trans: false, .. }));
        let (b_ptr, ldb) = match &b {
            B::Stored(s) if !packed => (s.at(p0, 0), s.ld),
            B::Stored(s) => {
                pack_b(&mut ws.b, nr, n, kc, s, p0);
                (ws.b.as_ptr(), nr)
            }
            B::Packer(p) => {
                p.pack(&mut ws.b[..kc * n.next_multiple_of(nr)], nr, n, kc, p0);
                (ws.b.as_ptr(), nr)
            }
        };
        if f16 {
            round_to_f16(&mut ws.a[..m.next_multiple_of(mr) * kc]);
            round_to_f16(&mut ws.b[..kc * n.next_multiple_of(nr)]);
        }
        let mut j = 0;
        while j < n {
            let cols = nr.min(n - j);
            // Panel j of a packed B starts at j·kc; in place, at column j.
            let bj = if packed {
                b_ptr.add(j * kc)
            } else {
                b_ptr.add(j)
            };
            let mut i = 0;
            while i < m {
                let rows = mr.min(m - i);
                let ai = ws.a.as_ptr().add(i * kc);
                let cij = c.add(i * ldc + j);
                match (level(), nv) {
                    (Level::Avx512, 1) => avx512::kernel::<1>(
                        kc, ai, bj, ldb, cij, ldc, rows, cols, alpha, beta_block,
                    ),
                    (Level::Avx512, 2) => avx512::kernel::<2>(
                        kc, ai, bj, ldb, cij, ldc, rows, cols, alpha, beta_block,
                    ),
                    (Level::Avx512, _) => avx512::kernel::<3>(
                        kc, ai, bj, ldb, cij, ldc, rows, cols, alpha, beta_block,
                    ),
                    (_, 1) => {
                        avx2::kernel::<1>(kc, ai, bj, ldb, cij, ldc, rows, cols, alpha, beta_block)
                    }
                    _ => {
                        avx2::kernel::<2>(kc, ai, bj, ldb, cij, ldc, rows, cols, alpha, beta_block)
                    }
                }
                i += mr;
            }
            j += nr;
        }
        p0 += kc;
    }
}

/// Packs rows `0..m`, depth `p0..p0+kc` of op(A) into panels of `mr` rows, each stored
/// depth-major (`mr` consecutive values per depth step), rows past `m` zero.
unsafe fn pack_a(buf: &mut [f32], mr: usize, m: usize, kc: usize, a: &Operand, p0: usize) {
    for (panel, out) in buf[..m.next_multiple_of(mr) * kc]
        .chunks_exact_mut(mr * kc)
        .enumerate()
    {
        let i0 = panel * mr;
        let rows = mr.min(m - i0);
        if a.trans {
            // op(A)(i, p) = stored(p, i): each depth step is a contiguous run of rows.
            for p in 0..kc {
                let src = std::slice::from_raw_parts(a.at(i0, p0 + p), rows);
                let dst = &mut out[p * mr..(p + 1) * mr];
                dst[..rows].copy_from_slice(src);
                dst[rows..].fill(0.0);
            }
            continue;
        }
        // Rows are contiguous in the depth: transpose 8 × 8 blocks where they fit.
        let mut p = 0;
        if mr == 8 && rows == 8 && has_avx() {
            while p + 8 <= kc {
                transpose8x8(a.at(i0, p0 + p), a.ld, out.as_mut_ptr().add(p * 8), 8);
                p += 8;
            }
        }
        for r in 0..mr {
            for q in p..kc {
                out[q * mr + r] = if r < rows { *a.at(i0 + r, p0 + q) } else { 0.0 };
            }
        }
    }
}

/// Packs depth `p0..p0+kc`, columns `0..n` of a transposed op(B) into panels of `nr` columns,
/// each stored depth-major, columns past `n` zero.
unsafe fn pack_b(buf: &mut [f32], nr: usize, n: usize, kc: usize, b: &Operand, p0: usize) {
    for (panel, out) in buf[..kc * n.next_multiple_of(nr)]
        .chunks_exact_mut(kc * nr)
        .enumerate()
    {
        let j0 = panel * nr;
        let cols = nr.min(n - j0);
        if !b.trans {
            // Stored row-major (packed only to be rounded): each depth step is a run of columns.
            for p in 0..kc {
                let src = std::slice::from_raw_parts(b.at(p0 + p, j0), cols);
                let dst = &mut out[p * nr..(p + 1) * nr];
                dst[..cols].copy_from_slice(src);
                dst[cols..].fill(0.0);
            }
            continue;
        }
        // Groups of 8 full columns: transpose 8 × 8 blocks of the stored rows.
        let full = if has_avx() { cols / 8 * 8 } else { 0 };
        let blocks = kc / 8 * 8;
        for g in (0..full).step_by(8) {
            for p in (0..blocks).step_by(8) {
                transpose8x8(
                    b.at(p0 + p, j0 + g),
                    b.ld,
                    out.as_mut_ptr().add(p * nr + g),
                    nr,
                );
            }
        }
        for jj in 0..nr {
            let first = if jj < full { blocks } else { 0 };
            for p in first..kc {
                out[p * nr + jj] = if jj < cols {
                    *b.at(p0 + p, j0 + jj)
                } else {
                    0.0
                };
            }
        }
    }
}

/// Rounds every value to the nearest f16 (ties to even; beyond f16's range, infinity; below
/// it, f16's subnormals or zero), kept as f32.
fn round_to_f16(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { round_to_f16_avx512(values) };
    }
    for v in values {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// [`round_to_f16`] with AVX-512's conversions (`vcvtps2ph`, `vcvtph2ps`).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_to_f16_avx512(values: &mut [f32]) {
    use std::arch::x86_64::*;
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let mut chunks = values.chunks_exact_mut(16);
    for c in &mut chunks {
        let x = _mm512_loadu_ps(c.as_ptr());
        let r = _mm512_cvtph_ps(_mm512_cvtps_ph::<NEAREST>(x));
        _mm512_storeu_ps(c.as_mut_ptr(), r);
    }
    for v in chunks.into_remainder() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

fn has_avx() -> bool {
    matches!(level(), Level::Avx512 | Level::Avx2)
}

/// Writes the transpose of the 8 × 8 block whose rows start at `rows` to `dst` (row stride
/// `ldd`).
///
/// # Safety
/// The CPU has AVX; each row holds 8 values; `dst` has room for 8 rows of `ldd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
pub unsafe fn transpose8x8_rows(rows: [*const f32; 8], dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(rows[i]));
    store_transposed(r, dst, ldd);
}

/// Stores the transpose of the 8 × 8 block `r` (one register per row).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx")]
unsafe fn store_transposed(r: [std::arch::x86_64::__m256; 8], dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    let out = [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ];
    for (i, v) in out.iter().enumerate() {
        _mm256_storeu_ps(dst.add(i * ldd), *v);
    }
}

/// Writes the transpose of the 8 × 8 block at `src` (row stride `lds`) to `dst` (row stride
/// `ldd`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8x8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * lds)));
    store_transposed(r, dst, ldd);
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose8x8(_: *const f32, _: usize, _: *mut f32, _: usize) {
    unreachable!("transposes are vectorised only on x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_a_transpose() {
        if !has_avx() {
            return;
        }
        let src: Vec<f32> = (0..8 * 11).map(|v| v as f32).collect();
        let mut dst = vec![0.0f32; 8 * 9];
        unsafe { transpose8x8(src.as_ptr(), 11, dst.as_mut_ptr(), 9) };
        for i in 0..8 {
            for j in 0..8 {
                assert_eq!(dst[j * 9 + i], src[i * 11 + j]);
            }
        }
    }
}

//! Winograd's minimal filtering for 5×5 convolutions with unit stride: F(2×2, 5×5).
//!
//! Each 2×2 block of outputs (a tile) comes from a 6×6 block of the input. Transformed, a tile
//! needs 36 products per channel and filter where the direct convolution needs 100: the input
//! block `d` becomes `Bᵀ d B`, each filter `g` becomes `G g Gᵀ`, and for each of the 36
//! positions the products over channels are one matrix product (tiles × channels times
//! channels × filters); `Aᵀ m A` turns the 36 sums back into the 2×2 outputs. The matrices
//! come from the interpolation points 0, ±1, ±2 and ∞ (Lavin and Gray, 2015).
//!
//! The transforms run 16 channels (or filters) to a register, on a copy of the input with the
//! channels last; the products run on the device's own kernel. Why only 5×5: it is the
//! kernel of the CIFAR-10 nets, where it cuts the forward and input-gradient products by 2.8×
//! (docs/PERFORMANCE.md measures what remains after the transforms).

use super::Sizes;
use crate::cpu::parallel::Threads;
use crate::cpu::scratch::Buffers;
use crate::cpu::sgemm::{self, Operand};
use crate::cpu::simd::{level, Level};
use singa_core::ConvShape;

/// Positions of a transformed tile.
const POS: usize = 36;
/// Tiles per block of the matrix products (about what keeps a block's operands in L2).
const BLOCK_TILES: usize = 128;

/// Whether Winograd convolutions are on: unless `SINGA_NO_WINOGRAD` is set (to compare with the
/// direct path; read once).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SINGA_NO_WINOGRAD").is_none())
}

/// Whether the forward pass of `s` runs here.
pub(super) fn applies(s: &ConvShape) -> bool {
    enabled()
        && level() == Level::Avx512
        && s.kernel_h == 5
        && s.kernel_w == 5
        && s.stride_h == 1
        && s.stride_w == 1
        && s.groups == 1
        && s.channels.is_multiple_of(16)
        && s.filters.is_multiple_of(16)
        && s.pad_h <= 4
        && s.pad_w <= 4
}

/// The tiling of one image.
#[derive(Clone, Copy)]
struct Tiles {
    /// Tile rows and columns.
    th: usize,
    tw: usize,
    /// Rows and columns of the channels-last copy of the input (`2·t + 4`).
    hb: usize,
    wb: usize,
}

impl Tiles {
    fn of(s: &ConvShape) -> Tiles {
        let (th, tw) = (s.out_h().div_ceil(2), s.out_w().div_ceil(2));
        Tiles {
            th,
            tw,
            hb: 2 * th + 4,
            wb: 2 * tw + 4,
        }
    }

    fn per_image(&self) -> usize {
        self.th * self.tw
    }
}

/// Images per block, and the block's tiles.
fn block(s: &ConvShape, t: &Tiles) -> (usize, usize) {
    let images = (BLOCK_TILES / t.per_image()).clamp(1, s.batch);
    (images, images * t.per_image())
}

/// `y = w ⊛ x` for the whole batch on `threads`.
///
/// # Safety
/// [`applies`] is true for `s`; the addresses hold live `F32` tensors of the sizes `s` implies.
pub(super) unsafe fn forward(
    threads: &Threads,
    buf: &mut Buffers,
    s: &ConvShape,
    x: usize,
    w: usize,
    y: usize,
) {
    let t = Tiles::of(s);
    let (c, k) = (s.channels, s.filters);
    let (per_block, p) = block(s, &t);
    let parts = threads.count().min(s.batch.div_ceil(per_block)).max(1);
    // The transformed filters, read by every thread.
    let mut u = std::mem::take(&mut buf.transformed);
    u.resize(POS * c * k, 0.0);
    transform_filters(
        s,
        std::slice::from_raw_parts(w as *const f32, s.weight_len()),
        &mut u,
    );
    let input_len = t.hb * t.wb * c;
    buf.reserve_work(parts);
    buf.reserve_temp(parts, POS * p * (c + k) + input_len);
    for ws in &mut buf.work[..parts] {
        ws.reserve(sgemm::workspace_size(p, k, c, false));
    }
    let at = buf.addresses();
    let z = Sizes::of(s);
    let u_addr = u.as_ptr() as usize;
    let blocks = s.batch.div_ceil(per_block);
    let job = |part: usize| {
        let ws = at.work(part);
        let temp = at.temp(part);
        let (v, rest) = temp.split_at_mut(POS * p * c);
        let (m, xh) = rest.split_at_mut(POS * p * k);
        let xh = &mut xh[..input_len];
        let mut b = part;
        while b < blocks {
            let first = b * per_block;
            let images = per_block.min(s.batch - first);
            let tiles = images * t.per_image();
            for i in 0..images {
                let n = first + i;
                channels_last(s, &t, (x as *const f32).add(n * z.image_in), xh);
                transform_inputs(&t, c, xh, v, i * t.per_image());
            }
            for pos in 0..POS {
                sgemm::gemm(
                    ws,
                    tiles,
                    k,
                    c,
                    1.0,
                    Operand {
                        ptr: v.as_ptr().add(pos * c),
                        ld: POS * c,
                        trans: false,
                    },
                    Operand {
                        ptr: (u_addr as *const f32).add(pos * c * k),
                        ld: k,
                        trans: false,
                    },
                    0.0,
                    m.as_mut_ptr().add(pos * k),
                    POS * k,
                );
            }
            for i in 0..images {
                let out = (y as *mut f32).add((first + i) * z.image_out);
                transform_outputs(s, &t, k, m, i * t.per_image(), out);
            }
            b += parts;
        }
    };
    threads.run(parts, &job);
    buf.transformed = u;
}

/// `dw = x ⋆ dy` for the whole batch on `threads`, as F(5×5, 2×2): each 2×2 tile of the
/// output gradient and the 6×6 input block under it contribute a 5×5 correlation to every
/// filter's gradient. Transformed, the contributions of all tiles add up position by position
/// in one matrix product per position (filters × tiles times tiles × channels), and one
/// inverse transform per filter and channel ends the pass.
///
/// # Safety
/// As for [`forward`].
pub(super) unsafe fn filter(
    threads: &Threads,
    buf: &mut Buffers,
    s: &ConvShape,
    x: usize,
    dy: usize,
    dw: usize,
) {
    let t = Tiles::of(s);
    let (c, k) = (s.channels, s.filters);
    let (per_block, p) = block(s, &t);
    let blocks = s.batch.div_ceil(per_block);
    let parts = threads.count().min(blocks).max(1);
    let input_len = t.hb * t.wb * c;
    let grad_len = 4 * t.per_image() * k;
    let acc_len = POS * k * c;
    buf.reserve_work(parts);
    buf.reserve_temp(parts, POS * p * (c + k) + input_len + grad_len + acc_len);
    for ws in &mut buf.work[..parts] {
        ws.reserve(sgemm::workspace_size(k, c, p, false));
    }
    let at = buf.addresses();
    let z = Sizes::of(s);
    let job = |part: usize| {
        let ws = at.work(part);
        let temp = at.temp(part);
        let (v, rest) = temp.split_at_mut(POS * p * c);
        let (u, rest) = rest.split_at_mut(POS * p * k);
        let (xh, rest) = rest.split_at_mut(input_len);
        let (dyh, acc) = rest.split_at_mut(grad_len);
        let acc = &mut acc[..acc_len];
        acc.fill(0.0);
        let mut b = part;
        while b < blocks {
            let first = b * per_block;
            let images = per_block.min(s.batch - first);
            let tiles = images * t.per_image();
            for i in 0..images {
                let n = first + i;
                channels_last(s, &t, (x as *const f32).add(n * z.image_in), xh);
                transform_inputs(&t, c, xh, v, i * t.per_image());
                gradient_tiles(s, &t, (dy as *const f32).add(n * z.image_out), dyh);
                transform_gradients(&t, k, dyh, u, i * t.per_image());
            }
            // acc[f][pos][ch] += Σ_tiles U[tile][pos][f] · V[tile][pos][ch].
            for pos in 0..POS {
                sgemm::gemm(
                    ws,
                    k,
                    c,
                    tiles,
                    1.0,
                    Operand {
                        ptr: u.as_ptr().add(pos * k),
                        ld: POS * k,
                        trans: true,
                    },
                    Operand {
                        ptr: v.as_ptr().add(pos * c),
                        ld: POS * c,
                        trans: false,
                    },
                    1.0,
                    acc.as_mut_ptr().add(pos * c),
                    POS * c,
                );
            }
            b += parts;
        }
    };
    threads.run(parts, &job);
    // The threads' sums into the first's, then back from the transformed domain.
    let acc0 = at.temp(0)[POS * p * (c + k) + input_len + grad_len..][..acc_len].as_mut_ptr();
    for part in 1..parts {
        let other = &at.temp(part)[POS * p * (c + k) + input_len + grad_len..][..acc_len];
        for (i, o) in other.iter().enumerate() {
            *acc0.add(i) += o;
        }
    }
    let acc = std::slice::from_raw_parts(acc0, acc_len);
    untransform_filters(
        c,
        k,
        acc,
        std::slice::from_raw_parts_mut(dw as *mut f32, s.weight_len()),
    );
}

/// Copies the output gradient of one image into `dyh`: tile by tile, its 2×2 values (rows,
/// then columns) with the filters last, zero where an edge tile falls outside.
unsafe fn gradient_tiles(s: &ConvShape, t: &Tiles, dy: *const f32, dyh: &mut [f32]) {
    let (oh, ow, k) = (s.out_h(), s.out_w(), s.filters);
    let plane = oh * ow;
    for ty in 0..t.th {
        for tx in 0..t.tw {
            let tile = ty * t.tw + tx;
            for e in 0..4 {
                let (oy, ox) = (2 * ty + e / 2, 2 * tx + e % 2);
                let dst = &mut dyh[(tile * 4 + e) * k..][..k];
                if oy < oh && ox < ow {
                    let src = dy.add(oy * ow + ox);
                    for (f, d) in dst.iter_mut().enumerate() {
                        *d = *src.add(f * plane);
                    }
                } else {
                    dst.fill(0.0);
                }
            }
        }
    }
}

/// `G' · g · G'ᵀ` of every output-gradient tile `g` of one image (G' of F(5, 2)): row `p0 + j`
/// of `U` (`tiles × 36 × filters`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_gradients(t: &Tiles, k: usize, dyh: &[f32], u: &mut [f32], p0: usize) {
    // G' = [1/4 0; −1/6 −1/6; −1/6 1/6; 1/24 1/12; 1/24 −1/12; 0 1], applied to a pair.
    #[inline(always)]
    unsafe fn g2(a: __m512, b: __m512) -> [__m512; 6] {
        let s = _mm512_add_ps(a, b);
        let d = _mm512_sub_ps(a, b);
        let sixth = _mm512_set1_ps(1.0 / 6.0);
        let half = _mm512_set1_ps(0.5);
        // 1/24·a ± 1/12·b = (a/4 ± b/2)/6.
        let a4 = _mm512_mul_ps(_mm512_set1_ps(0.25), a);
        [
            a4,
            _mm512_mul_ps(_mm512_set1_ps(-1.0 / 6.0), s),
            _mm512_mul_ps(_mm512_set1_ps(-1.0 / 6.0), d),
            _mm512_mul_ps(sixth, _mm512_fmadd_ps(half, b, a4)),
            _mm512_mul_ps(sixth, _mm512_fnmadd_ps(half, b, a4)),
            b,
        ]
    }
    let gp = dyh.as_ptr();
    let up = u.as_mut_ptr();
    for tile in 0..t.per_image() {
        for kb in (0..k).step_by(16) {
            let at = |e: usize| _mm512_loadu_ps(gp.add((tile * 4 + e) * k + kb));
            // Columns of G'·g (each a transformed column of the 2×2 tile), then rows.
            let c0 = g2(at(0), at(2));
            let c1 = g2(at(1), at(3));
            for i in 0..6 {
                let row = g2(c0[i], c1[i]);
                for (j, o) in row.iter().enumerate() {
                    _mm512_storeu_ps(up.add(((p0 + tile) * POS + i * 6 + j) * k + kb), *o);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_gradients(_: &Tiles, _: usize, _: &[f32], _: &mut [f32], _: usize) {
    unreachable!("Winograd convolutions run on AVX-512 only")
}

/// `dw[f][ch] = A'ᵀ · acc[f][·][ch] · A'` (A'ᵀ of F(5, 2), 5 × 6), for the sums `acc`
/// (`filters × 36 × channels`).
fn untransform_filters(c: usize, k: usize, acc: &[f32], dw: &mut [f32]) {
    const AT: [[f32; 6]; 5] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 0.0],
        [0.0, 1.0, 1.0, 16.0, 16.0, 1.0],
    ];
    for f in 0..k {
        let sums = &acc[f * POS * c..][..POS * c];
        for ch in 0..c {
            let m = |i: usize, j: usize| sums[(i * 6 + j) * c + ch];
            // A'ᵀ m: 5 × 6.
            let mut am = [[0.0f32; 6]; 5];
            for (r, row) in am.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (0..6).map(|i| AT[r][i] * m(i, j)).sum();
                }
            }
            let out = &mut dw[(f * c + ch) * 25..][..25];
            for r in 0..5 {
                for q in 0..5 {
                    out[r * 5 + q] = (0..6).map(|j| am[r][j] * AT[q][j]).sum();
                }
            }
        }
    }
}

/// `U[pos][c][k] = (G · w[k][c] · Gᵀ)[pos]`, with `G` of F(2, 5).
fn transform_filters(s: &ConvShape, w: &[f32], u: &mut [f32]) {
    const G: [[f32; 5]; 6] = [
        [1.0 / 4.0, 0.0, 0.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0, 1.0 / 3.0, 2.0 / 3.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0, -1.0 / 3.0, 2.0 / 3.0],
        [0.0, 0.0, 0.0, 0.0, 1.0],
    ];
    let (c, k) = (s.channels, s.filters);
    for f in 0..k {
        for ch in 0..c {
            let g = &w[(f * c + ch) * 25..][..25];
            // G · g: 6 × 5.
            let mut gg = [[0.0f32; 5]; 6];
            for (i, row) in gg.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (0..5).map(|q| G[i][q] * g[q * 5 + j]).sum();
                }
            }
            // (G · g) · Gᵀ: 6 × 6.
            for i in 0..6 {
                for j in 0..6 {
                    let v: f32 = (0..5).map(|q| gg[i][q] * G[j][q]).sum();
                    u[((i * 6 + j) * c + ch) * k + f] = v;
                }
            }
        }
    }
}

/// Copies image `x` into `xh` with the channels last, inside a border of zeros: row `r` and
/// column `q` of `xh` hold the input's row `r − pad_h` and column `q − pad_w`.
unsafe fn channels_last(s: &ConvShape, t: &Tiles, x: *const f32, xh: &mut [f32]) {
    let c = s.channels;
    xh.fill(0.0);
    let plane = s.height * s.width;
    for h in 0..s.height.min(t.hb - s.pad_h) {
        for w in 0..s.width.min(t.wb - s.pad_w) {
            let dst = &mut xh[((h + s.pad_h) * t.wb + w + s.pad_w) * c..][..c];
            let src = x.add(h * s.width + w);
            for (ch, d) in dst.iter_mut().enumerate() {
                *d = *src.add(ch * plane);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `Bᵀ · d` for one column of six vectors (`Bᵀ` of F(2, 5), the same for every position).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bt(d: [__m512; 6]) -> [__m512; 6] {
    let (two, four, five) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(5.0),
    );
    // r1, r2 = ∓4·d1 − 4·d2 ± d3 + d4; r3, r4 = ∓2·d1 − d2 ± 2·d3 + d4.
    let s24 = _mm512_fnmadd_ps(four, d[2], d[4]);
    let a13 = _mm512_fnmadd_ps(four, d[1], d[3]);
    let s4m2 = _mm512_sub_ps(d[4], d[2]);
    let b13 = _mm512_mul_ps(two, _mm512_sub_ps(d[3], d[1]));
    [
        _mm512_add_ps(
            _mm512_fnmadd_ps(five, d[2], _mm512_mul_ps(four, d[0])),
            d[4],
        ),
        _mm512_add_ps(s24, a13),
        _mm512_sub_ps(s24, a13),
        _mm512_add_ps(s4m2, b13),
        _mm512_sub_ps(s4m2, b13),
        _mm512_add_ps(
            _mm512_fnmadd_ps(five, d[3], _mm512_mul_ps(four, d[1])),
            d[5],
        ),
    ]
}

/// Transforms every tile of image `i` of a block (its channels-last copy `xh`): row `p0 + j`
/// of `V` (`tiles × 36 × channels`, so that a tile's positions are written together) gets
/// `(Bᵀ d B)` of tile `j`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `i` picks the same row out of every column
unsafe fn transform_inputs(t: &Tiles, c: usize, xh: &[f32], v: &mut [f32], p0: usize) {
    let xp = xh.as_ptr();
    let vp = v.as_mut_ptr();
    for ty in 0..t.th {
        for tx in 0..t.tw {
            let tile = p0 + ty * t.tw + tx;
            for cb in (0..c).step_by(16) {
                // Columns of Bᵀ d: Bᵀ applied to each column of the block (six vectors down
                // its rows).
                let cols: [[__m512; 6]; 6] = std::array::from_fn(|j| {
                    bt(std::array::from_fn(|i| {
                        _mm512_loadu_ps(xp.add(((2 * ty + i) * t.wb + 2 * tx + j) * c + cb))
                    }))
                });
                // (Bᵀ d) B = (Bᵀ (Bᵀ d)ᵀ)ᵀ: row i of the result is Bᵀ applied to row i.
                for i in 0..6 {
                    let out = bt(std::array::from_fn(|j| cols[j][i]));
                    for (j, o) in out.iter().enumerate() {
                        _mm512_storeu_ps(vp.add((tile * POS + i * 6 + j) * c + cb), *o);
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_inputs(_: &Tiles, _: usize, _: &[f32], _: &mut [f32], _: usize) {
    unreachable!("Winograd convolutions run on AVX-512 only")
}

/// `Aᵀ · m` for one column of six vectors: the two outputs.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn at(m: [__m512; 6]) -> [__m512; 2] {
    let two = _mm512_set1_ps(2.0);
    let s12 = _mm512_add_ps(m[1], m[2]);
    let s34 = _mm512_add_ps(m[3], m[4]);
    let d12 = _mm512_sub_ps(m[1], m[2]);
    let d34 = _mm512_sub_ps(m[3], m[4]);
    [
        _mm512_add_ps(_mm512_add_ps(m[0], s12), s34),
        _mm512_add_ps(_mm512_fmadd_ps(two, d34, d12), m[5]),
    ]
}

/// Turns the products of image `i` of a block back into its outputs `y` (`filters × out_h ×
/// out_w`), dropping the outputs of edge tiles that fall outside.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `i` picks the same row out of every column
unsafe fn transform_outputs(s: &ConvShape, t: &Tiles, k: usize, m: &[f32], p0: usize, y: *mut f32) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let plane = (oh * ow) as i32;
    let index = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(plane),
    );
    let mp = m.as_ptr();
    for ty in 0..t.th {
        for tx in 0..t.tw {
            let tile = p0 + ty * t.tw + tx;
            for kb in (0..k).step_by(16) {
                // Columns of Aᵀ m: two vectors each.
                let cols: [[__m512; 2]; 6] = std::array::from_fn(|j| {
                    at(std::array::from_fn(|i| {
                        _mm512_loadu_ps(mp.add((tile * POS + i * 6 + j) * k + kb))
                    }))
                });
                for i in 0..2 {
                    let oy = 2 * ty + i;
                    if oy >= oh {
                        continue;
                    }
                    let out = at(std::array::from_fn(|j| cols[j][i]));
                    for (j, o) in out.iter().enumerate() {
                        let ox = 2 * tx + j;
                        if ox < ow {
                            let base = y.add(kb * oh * ow + oy * ow + ox);
                            _mm512_i32scatter_ps::<4>(base, index, *o);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_outputs(_: &ConvShape, _: &Tiles, _: usize, _: &[f32], _: usize, _: *mut f32) {
    unreachable!("Winograd convolutions run on AVX-512 only")
}

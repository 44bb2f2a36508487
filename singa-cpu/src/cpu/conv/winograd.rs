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

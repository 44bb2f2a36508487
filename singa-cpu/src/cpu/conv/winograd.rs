//! Winograd's minimal filtering for 5×5 convolutions with unit stride: F(4×4, 5×5) for the
//! forward pass (and the input gradient, a forward pass of the flipped filters), F(5×5, 4×4)
//! for the filter gradient.
//!
//! Each 4×4 block of outputs (a tile) comes from an 8×8 block of the input. Transformed, a tile
//! needs 64 products per channel and filter where the direct convolution needs 400: the input
//! block `d` becomes `Bᵀ d B`, each filter `g` becomes `G g Gᵀ`, and for each of the 64
//! positions the products over channels are one matrix product (tiles × channels times
//! channels × filters); `Aᵀ m A` turns the 64 sums back into the 4×4 outputs. The filter
//! gradient is the same construction with the roles swapped: each 4×4 tile of the output
//! gradient (the "filter", `G'`) and the 8×8 input block under it (the same `Bᵀ d B`) make a
//! 5×5 correlation; summed over the tiles position by position (one product per position,
//! filters × tiles times tiles × channels), one inverse transform per filter and channel
//! (`A'`) gives the gradient. The matrices come from the interpolation points 0, ±1, ±2, ±½
//! and ∞ (Lavin and Gray, 2015; the points NNPACK uses for F(6×6, 3×3), with its Bᵀ up to the
//! sign of the first row, which the first row of G compensates).
//!
//! The transforms run 16 channels (or filters) to a register, on a copy of the input with the
//! channels last, and write each tile's 64 positions together (a layout by position would put
//! them a multiple of 4 KiB apart, where the L1 cache has few ways); the products run on the
//! device's own kernel. Why only 5×5: it is the kernel of the CIFAR-10 nets.
//! docs/PERFORMANCE.md measures what it gains after the transforms.

use super::Sizes;
use crate::cpu::parallel::Threads;
use crate::cpu::scratch::Buffers;
use crate::cpu::sgemm::{self, Operand};
use crate::cpu::simd::{level, Level};
use singa_core::{ConvShape, Precision};

/// Transformed points per dimension (α = 4 + 5 − 1).
const ALPHA: usize = 8;
/// Positions of a transformed tile.
const POS: usize = ALPHA * ALPHA;
/// Outputs per tile and dimension.
const TILE: usize = 4;
/// Tiles per block of the matrix products (about what keeps a block's operands in L2; a
/// block holds whole images, so an image of more tiles makes a larger one).
const BLOCK_TILES: usize = 64;

/// Whether Winograd convolutions are on: unless `SINGA_NO_WINOGRAD` is set (to compare with the
/// direct path; read once).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SINGA_NO_WINOGRAD").is_none())
}

/// Whether the passes of `s` run here.
pub(crate) fn applies(s: &ConvShape) -> bool {
    // The scatters and gathers index a plane, or a filter's taps, 16 times over in 32 bits.
    let indexable = |n: usize| n.checked_mul(16).is_some_and(|v| v <= i32::MAX as usize);
    enabled()
        && s.batch > 0
        && indexable(s.out_h() * s.out_w())
        && indexable(s.channels * 25)
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
    /// Rows and columns of the channels-last copy of the input (`4·t + 4`).
    hb: usize,
    wb: usize,
}

impl Tiles {
    fn of(s: &ConvShape) -> Tiles {
        let (th, tw) = (s.out_h().div_ceil(TILE), s.out_w().div_ceil(TILE));
        Tiles {
            th,
            tw,
            hb: TILE * th + ALPHA - TILE,
            wb: TILE * tw + ALPHA - TILE,
        }
    }

    fn per_image(&self) -> usize {
        self.th * self.tw
    }
}

/// Images per block, the block's tiles, and the threads that get blocks: about
/// [`BLOCK_TILES`] tiles, whole images, and no more than gives each of `threads` a block.
fn block(s: &ConvShape, t: &Tiles, threads: usize) -> (usize, usize, usize) {
    let images = (BLOCK_TILES / t.per_image())
        .min(s.batch.div_ceil(threads.max(1)))
        .max(1);
    let parts = threads.min(s.batch.div_ceil(images)).max(1);
    (images, images * t.per_image(), parts)
}

/// The blocks thread `part` of `parts` takes (every `parts`-th): first image and images.
fn blocks_of(
    s: &ConvShape,
    part: usize,
    parts: usize,
    per_block: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let batch = s.batch;
    (part * per_block..batch)
        .step_by(parts * per_block)
        .map(move |first| (first, per_block.min(batch - first)))
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
    let (per_block, p, parts) = block(s, &t, threads.count());
    // The transformed filters, read by every thread.
    let mut u = std::mem::take(&mut buf.transformed);
    u.resize(POS * c * k, 0.0);
    transform_filters(s, w as *const f32, &mut u);
    let input_len = t.hb * t.wb * c;
    buf.reserve_work(parts);
    buf.reserve_temp(parts, POS * p * (c + k) + input_len);
    for ws in &mut buf.work[..parts] {
        ws.reserve(sgemm::workspace_size(p, k, c, false, Precision::F32));
    }
    let at = buf.addresses();
    let z = Sizes::of(s);
    let u_addr = u.as_ptr() as usize;
    let job = |part: usize| {
        let ws = at.work(part);
        let temp = at.temp(part);
        let (v, rest) = temp.split_at_mut(POS * p * c);
        let (m, xh) = rest.split_at_mut(POS * p * k);
        let xh = &mut xh[..input_len];
        for (first, images) in blocks_of(s, part, parts, per_block) {
            let tiles = images * t.per_image();
            for i in 0..images {
                channels_last(s, &t, (x as *const f32).add((first + i) * z.image_in), xh);
                transform_inputs(&t, c, xh, v, i * t.per_image());
            }
            // m[tile][pos][f] = Σ_ch V[tile][pos][ch] · U[pos][ch][f].
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
        }
    };
    threads.run(parts, &job);
    buf.transformed = u;
}

/// `dw = x ⋆ dy` for the whole batch on `threads`, as F(5×5, 4×4).
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
    let (per_block, p, parts) = block(s, &t, threads.count());
    let input_len = t.hb * t.wb * c;
    let grad_len = TILE * TILE * t.per_image() * k;
    let acc_len = POS * k * c;
    let acc_at = POS * p * (c + k) + input_len + grad_len;
    buf.reserve_work(parts);
    buf.reserve_temp(parts, acc_at + acc_len);
    for ws in &mut buf.work[..parts] {
        ws.reserve(sgemm::workspace_size(k, c, p, false, Precision::F32));
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
        let mut beta = 0.0;
        for (first, images) in blocks_of(s, part, parts, per_block) {
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
                    beta,
                    acc.as_mut_ptr().add(pos * c),
                    POS * c,
                );
            }
            beta = 1.0;
        }
    };
    threads.run(parts, &job);
    // The threads' sums into the first's, then back from the transformed domain.
    let acc0 = at.temp(0)[acc_at..][..acc_len].as_mut_ptr();
    for part in 1..parts {
        let other = &at.temp(part)[acc_at..][..acc_len];
        for (i, o) in other.iter().enumerate() {
            *acc0.add(i) += o;
        }
    }
    untransform_filters(c, k, acc0, dw as *mut f32);
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

/// Copies the output gradient of one image into `dyh`: tile by tile, its 4×4 values (rows,
/// then columns) with the filters last, zero where an edge tile falls outside.
unsafe fn gradient_tiles(s: &ConvShape, t: &Tiles, dy: *const f32, dyh: &mut [f32]) {
    let (oh, ow, k) = (s.out_h(), s.out_w(), s.filters);
    let plane = oh * ow;
    for ty in 0..t.th {
        for tx in 0..t.tw {
            let tile = ty * t.tw + tx;
            for e in 0..TILE * TILE {
                let (oy, ox) = (TILE * ty + e / TILE, TILE * tx + e % TILE);
                let dst = &mut dyh[(tile * TILE * TILE + e) * k..][..k];
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

#[cfg(target_arch = "x86_64")]
mod kernels {
    //! The transforms, 16 lanes (channels or filters) at a time.

    use super::{Tiles, ALPHA, POS, TILE};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn splat(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }

    /// `a·x + y`.
    #[inline(always)]
    unsafe fn fma(a: f32, x: __m512, y: __m512) -> __m512 {
        _mm512_fmadd_ps(splat(a), x, y)
    }

    #[inline(always)]
    unsafe fn add(x: __m512, y: __m512) -> __m512 {
        _mm512_add_ps(x, y)
    }

    #[inline(always)]
    unsafe fn sub(x: __m512, y: __m512) -> __m512 {
        _mm512_sub_ps(x, y)
    }

    #[inline(always)]
    unsafe fn mul(a: f32, x: __m512) -> __m512 {
        _mm512_mul_ps(splat(a), x)
    }

    /// `Bᵀ · d` for one column of eight vectors. Rows 1-2, 3-4 and 5-6 of Bᵀ are pairs
    /// `even ± odd` in the coefficients of the even and odd entries.
    #[inline(always)]
    pub(super) unsafe fn bt(d: [__m512; 8]) -> [__m512; 8] {
        let e1 = fma(-4.25, d[4], add(d[2], d[6]));
        let o1 = fma(-4.25, d[3], add(d[1], d[5]));
        let e3 = fma(-1.25, d[4], fma(0.25, d[2], d[6]));
        let o3 = fma(-2.5, d[3], fma(0.5, d[1], mul(2.0, d[5])));
        let e5 = fma(-5.0, d[4], fma(4.0, d[2], d[6]));
        let o5 = fma(-2.5, d[3], fma(2.0, d[1], mul(0.5, d[5])));
        [
            fma(5.25, sub(d[2], d[4]), sub(d[6], d[0])),
            add(e1, o1),
            sub(e1, o1),
            add(e3, o3),
            sub(e3, o3),
            add(e5, o5),
            sub(e5, o5),
            fma(5.25, sub(d[3], d[5]), sub(d[7], d[1])),
        ]
    }

    /// Sums and differences of the pairs 1-2, 3-4, 5-6 that every row of `Aᵀ` uses.
    #[inline(always)]
    unsafe fn pairs(m: &[__m512; 8]) -> [__m512; 6] {
        [
            add(m[1], m[2]),
            sub(m[1], m[2]),
            add(m[3], m[4]),
            sub(m[3], m[4]),
            add(m[5], m[6]),
            sub(m[5], m[6]),
        ]
    }

    /// `Aᵀ · m` of F(4, 5): the four outputs of one column.
    #[inline(always)]
    pub(super) unsafe fn at4(m: [__m512; 8]) -> [__m512; 4] {
        let [s12, d12, s34, d34, s56, d56] = pairs(&m);
        [
            add(add(m[0], s12), add(s34, s56)),
            fma(0.5, d56, fma(2.0, d34, d12)),
            fma(0.25, s56, fma(4.0, s34, s12)),
            add(fma(0.125, d56, fma(8.0, d34, d12)), m[7]),
        ]
    }

    /// `A'ᵀ · m` of F(5, 4): the five outputs of one column.
    #[inline(always)]
    pub(super) unsafe fn at5(m: [__m512; 8]) -> [__m512; 5] {
        let [s12, d12, s34, d34, s56, d56] = pairs(&m);
        [
            add(add(m[0], s12), add(s34, s56)),
            fma(0.5, d56, fma(2.0, d34, d12)),
            fma(0.25, s56, fma(4.0, s34, s12)),
            fma(0.125, d56, fma(8.0, d34, d12)),
            add(fma(0.0625, s56, fma(16.0, s34, s12)), m[7]),
        ]
    }

    /// `G · g` of F(4, 5) for one column of five filter taps.
    #[inline(always)]
    pub(super) unsafe fn g5(g: [__m512; 5]) -> [__m512; 8] {
        let e1 = add(add(g[0], g[2]), g[4]);
        let o1 = add(g[1], g[3]);
        let e3 = fma(
            1.0 / 90.0,
            g[0],
            fma(2.0 / 45.0, g[2], mul(8.0 / 45.0, g[4])),
        );
        let o3 = fma(1.0 / 45.0, g[1], mul(4.0 / 45.0, g[3]));
        let e5 = fma(
            32.0 / 45.0,
            g[0],
            fma(8.0 / 45.0, g[2], mul(2.0 / 45.0, g[4])),
        );
        let o5 = fma(16.0 / 45.0, g[1], mul(4.0 / 45.0, g[3]));
        [
            mul(-1.0, g[0]),
            mul(-2.0 / 9.0, add(e1, o1)),
            mul(-2.0 / 9.0, sub(e1, o1)),
            add(e3, o3),
            sub(e3, o3),
            add(e5, o5),
            sub(e5, o5),
            g[4],
        ]
    }

    /// `G' · g` of F(5, 4) for one column of four output-gradient values.
    #[inline(always)]
    pub(super) unsafe fn g4(g: [__m512; 4]) -> [__m512; 8] {
        let e1 = add(g[0], g[2]);
        let o1 = add(g[1], g[3]);
        let e3 = fma(1.0 / 90.0, g[0], mul(2.0 / 45.0, g[2]));
        let o3 = fma(1.0 / 45.0, g[1], mul(4.0 / 45.0, g[3]));
        let e5 = fma(32.0 / 45.0, g[0], mul(8.0 / 45.0, g[2]));
        let o5 = fma(16.0 / 45.0, g[1], mul(4.0 / 45.0, g[3]));
        [
            mul(-1.0, g[0]),
            mul(-2.0 / 9.0, add(e1, o1)),
            mul(-2.0 / 9.0, sub(e1, o1)),
            add(e3, o3),
            sub(e3, o3),
            add(e5, o5),
            sub(e5, o5),
            g[3],
        ]
    }

    /// `V[p0 + j] = Bᵀ d B` for every tile `j` of one image (its channels-last copy `xh`);
    /// `V` is `tiles × 64 × channels`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // `i` picks the same row out of every column
    pub(super) unsafe fn transform_inputs(
        t: &Tiles,
        c: usize,
        xh: &[f32],
        v: &mut [f32],
        p0: usize,
    ) {
        let xp = xh.as_ptr();
        let vp = v.as_mut_ptr();
        for ty in 0..t.th {
            for tx in 0..t.tw {
                let tile = p0 + ty * t.tw + tx;
                for cb in (0..c).step_by(16) {
                    let cols: [[__m512; ALPHA]; ALPHA] = std::array::from_fn(|j| {
                        bt(std::array::from_fn(|i| {
                            let at = ((TILE * ty + i) * t.wb + TILE * tx + j) * c + cb;
                            _mm512_loadu_ps(xp.add(at))
                        }))
                    });
                    // (Bᵀ d) B: row i of the result is Bᵀ applied to row i of Bᵀ d.
                    for i in 0..ALPHA {
                        let out = bt(std::array::from_fn(|j| cols[j][i]));
                        for (j, o) in out.iter().enumerate() {
                            _mm512_storeu_ps(vp.add((tile * POS + i * ALPHA + j) * c + cb), *o);
                        }
                    }
                }
            }
        }
    }

    /// `y = Aᵀ m A` of every tile of one image (`m`: `tiles × 64 × filters`) into `y`
    /// (`filters × out_h × out_w`), without the outputs of edge tiles that fall outside.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // `i` picks the same row out of every column
    pub(super) unsafe fn transform_outputs(
        (oh, ow): (usize, usize),
        t: &Tiles,
        k: usize,
        m: &[f32],
        p0: usize,
        y: *mut f32,
    ) {
        let index = _mm512_mullo_epi32(
            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
            _mm512_set1_epi32((oh * ow) as i32),
        );
        let mp = m.as_ptr();
        for ty in 0..t.th {
            for tx in 0..t.tw {
                let tile = p0 + ty * t.tw + tx;
                for kb in (0..k).step_by(16) {
                    let cols: [[__m512; TILE]; ALPHA] = std::array::from_fn(|j| {
                        at4(std::array::from_fn(|i| {
                            _mm512_loadu_ps(mp.add((tile * POS + i * ALPHA + j) * k + kb))
                        }))
                    });
                    for i in 0..TILE {
                        let oy = TILE * ty + i;
                        if oy >= oh {
                            break;
                        }
                        let out = at4(std::array::from_fn(|j| cols[j][i]));
                        for (j, o) in out.iter().enumerate() {
                            let ox = TILE * tx + j;
                            if ox >= ow {
                                break;
                            }
                            let base = y.add(kb * oh * ow + oy * ow + ox);
                            _mm512_i32scatter_ps::<4>(base, index, *o);
                        }
                    }
                }
            }
        }
    }

    /// `U[p0 + j] = G' g G'ᵀ` of every output-gradient tile `g` of one image (`dyh`, as
    /// `gradient_tiles` writes it); `U` is `tiles × 64 × filters`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // `i` picks the same row out of every column
    pub(super) unsafe fn transform_gradients(
        t: &Tiles,
        k: usize,
        dyh: &[f32],
        u: &mut [f32],
        p0: usize,
    ) {
        let gp = dyh.as_ptr();
        let up = u.as_mut_ptr();
        for tile in 0..t.per_image() {
            for kb in (0..k).step_by(16) {
                let cols: [[__m512; ALPHA]; TILE] = std::array::from_fn(|j| {
                    g4(std::array::from_fn(|i| {
                        _mm512_loadu_ps(gp.add((tile * TILE * TILE + i * TILE + j) * k + kb))
                    }))
                });
                for i in 0..ALPHA {
                    let out = g4(std::array::from_fn(|j| cols[j][i]));
                    for (j, o) in out.iter().enumerate() {
                        let at = ((p0 + tile) * POS + i * ALPHA + j) * k + kb;
                        _mm512_storeu_ps(up.add(at), *o);
                    }
                }
            }
        }
    }

    /// `U[pos][ch][f] = (G · w[f][ch] · Gᵀ)[pos]` for `c` channels and `k` filters.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // `i` picks the same row out of every column
    pub(super) unsafe fn transform_filters(c: usize, k: usize, w: *const f32, u: &mut [f32]) {
        let index = _mm512_mullo_epi32(
            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
            _mm512_set1_epi32((c * 25) as i32),
        );
        let up = u.as_mut_ptr();
        for ch in 0..c {
            for kb in (0..k).step_by(16) {
                let base = w.add((kb * c + ch) * 25);
                let cols: [[__m512; ALPHA]; 5] = std::array::from_fn(|j| {
                    g5(std::array::from_fn(|i| {
                        _mm512_i32gather_ps::<4>(index, base.add(i * 5 + j))
                    }))
                });
                for i in 0..ALPHA {
                    let out = g5(std::array::from_fn(|j| cols[j][i]));
                    for (j, o) in out.iter().enumerate() {
                        _mm512_storeu_ps(up.add(((i * ALPHA + j) * c + ch) * k + kb), *o);
                    }
                }
            }
        }
    }

    /// `dw[f][ch] = A'ᵀ · acc[f][·][ch] · A'` for the sums `acc` (`filters × 64 × channels`).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // `i` picks the same row out of every column
    pub(super) unsafe fn untransform_filters(c: usize, k: usize, acc: *const f32, dw: *mut f32) {
        let index = _mm512_mullo_epi32(
            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
            _mm512_set1_epi32(25),
        );
        for f in 0..k {
            for cb in (0..c).step_by(16) {
                let sums = acc.add(f * POS * c + cb);
                let cols: [[__m512; 5]; ALPHA] = std::array::from_fn(|j| {
                    at5(std::array::from_fn(|i| {
                        _mm512_loadu_ps(sums.add((i * ALPHA + j) * c))
                    }))
                });
                for i in 0..5 {
                    let out = at5(std::array::from_fn(|j| cols[j][i]));
                    for (j, o) in out.iter().enumerate() {
                        let base = dw.add((f * c + cb) * 25 + i * 5 + j);
                        _mm512_i32scatter_ps::<4>(base, index, *o);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use kernels::{transform_gradients, transform_inputs, untransform_filters};

#[cfg(target_arch = "x86_64")]
unsafe fn transform_filters(s: &ConvShape, w: *const f32, u: &mut [f32]) {
    kernels::transform_filters(s.channels, s.filters, w, u)
}

#[cfg(target_arch = "x86_64")]
unsafe fn transform_outputs(s: &ConvShape, t: &Tiles, k: usize, m: &[f32], p0: usize, y: *mut f32) {
    kernels::transform_outputs((s.out_h(), s.out_w()), t, k, m, p0, y)
}

#[cfg(not(target_arch = "x86_64"))]
mod off_x86 {
    //! [`applies`](super::applies) is false off x86-64: none of these runs.
    use super::Tiles;
    use singa_core::ConvShape;

    pub(super) unsafe fn transform_inputs(_: &Tiles, _: usize, _: &[f32], _: &mut [f32], _: usize) {
        unreachable!()
    }
    pub(super) unsafe fn transform_gradients(
        _: &Tiles,
        _: usize,
        _: &[f32],
        _: &mut [f32],
        _: usize,
    ) {
        unreachable!()
    }
    pub(super) unsafe fn untransform_filters(_: usize, _: usize, _: *const f32, _: *mut f32) {
        unreachable!()
    }
    pub(super) unsafe fn transform_filters(_: &ConvShape, _: *const f32, _: &mut [f32]) {
        unreachable!()
    }
    pub(super) unsafe fn transform_outputs(
        _: &ConvShape,
        _: &Tiles,
        _: usize,
        _: &[f32],
        _: usize,
        _: *mut f32,
    ) {
        unreachable!()
    }
}

#[cfg(not(target_arch = "x86_64"))]
use off_x86::*;

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::kernels::{at4, at5, bt, g4, g5};
    use std::arch::x86_64::*;

    const BT: [[f32; 8]; 8] = [
        [-1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0, 0.0],
        [0.0, 1.0, 1.0, -4.25, -4.25, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 4.25, -4.25, -1.0, 1.0, 0.0],
        [0.0, 0.5, 0.25, -2.5, -1.25, 2.0, 1.0, 0.0],
        [0.0, -0.5, 0.25, 2.5, -1.25, -2.0, 1.0, 0.0],
        [0.0, 2.0, 4.0, -2.5, -5.0, 0.5, 1.0, 0.0],
        [0.0, -2.0, 4.0, 2.5, -5.0, -0.5, 1.0, 0.0],
        [0.0, -1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0],
    ];
    const AT: [[f32; 8]; 5] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.25, 0.25, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 0.125, -0.125, 0.0],
        [0.0, 1.0, 1.0, 16.0, 16.0, 0.0625, 0.0625, 1.0],
    ];
    const G: [[f32; 5]; 8] = [
        [-1.0, 0.0, 0.0, 0.0, 0.0],
        [-2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0],
        [-2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0],
        [1.0 / 90.0, 1.0 / 45.0, 2.0 / 45.0, 4.0 / 45.0, 8.0 / 45.0],
        [1.0 / 90.0, -1.0 / 45.0, 2.0 / 45.0, -4.0 / 45.0, 8.0 / 45.0],
        [32.0 / 45.0, 16.0 / 45.0, 8.0 / 45.0, 4.0 / 45.0, 2.0 / 45.0],
        [
            32.0 / 45.0,
            -16.0 / 45.0,
            8.0 / 45.0,
            -4.0 / 45.0,
            2.0 / 45.0,
        ],
        [0.0, 0.0, 0.0, 0.0, 1.0],
    ];

    /// Column `j` of a transform, from its image of the unit vector `e_j`.
    fn column<const N: usize, const M: usize>(
        f: impl Fn([__m512; N]) -> [__m512; M],
        j: usize,
    ) -> [f32; M] {
        let unit: [__m512; N] =
            std::array::from_fn(|i| unsafe { _mm512_set1_ps(if i == j { 1.0 } else { 0.0 }) });
        f(unit).map(|v| unsafe { _mm512_cvtss_f32(v) })
    }

    fn assert_matches<const N: usize, const M: usize>(
        name: &str,
        f: impl Fn([__m512; N]) -> [__m512; M],
        entry: impl Fn(usize, usize) -> f32,
    ) {
        for j in 0..N {
            let got = column(&f, j);
            for (i, g) in got.iter().enumerate() {
                let want = entry(i, j);
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{name}[{i}][{j}]: {g} vs {want}"
                );
            }
        }
    }

    /// The hand-written transforms are the matrices of the module documentation, entry by
    /// entry (the rows derived from the interpolation points with exact fractions).
    #[test]
    fn the_transforms_are_their_matrices() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        unsafe {
            assert_matches("Bᵀ", |d| bt(d), |i, j| BT[i][j]);
            assert_matches(
                "Aᵀ (F(4, 5))",
                |m| at4(m),
                |i, j| {
                    // Row 3 of F(4, 5) ends with the ∞ point's 1.
                    if i == 3 && j == 7 {
                        1.0
                    } else {
                        AT[i][j]
                    }
                },
            );
            assert_matches("A'ᵀ (F(5, 4))", |m| at5(m), |i, j| AT[i][j]);
            assert_matches("G (F(4, 5))", |g| g5(g), |i, j| G[i][j]);
            assert_matches(
                "G' (F(5, 4))",
                |g| g4(g),
                |i, j| {
                    // G' is G's first four columns, its last row the ∞ point's [0, 0, 0, 1].
                    if i == 7 {
                        if j == 3 {
                            1.0
                        } else {
                            0.0
                        }
                    } else {
                        G[i][j]
                    }
                },
            );
        }
    }
}

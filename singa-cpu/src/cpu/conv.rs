//! Convolution as im2col + matrix product, one image per thread at a time.
//!
//! For each image, the input patches under every kernel position are laid out as the columns
//! of a matrix (`channels·kh·kw × out_h·out_w`), and the convolution becomes one product with
//! the weights (`filters × channels·kh·kw`). The images of a batch are split over the threads:
//! each thread keeps its patch matrix in its own cache and runs the single-threaded kernel;
//! the weights, small and read-only, are shared. A 1×1 convolution with stride 1 and no padding
//! uses the input as the patch matrix directly.

use super::gemm::single;
use super::parallel::Threads;
use super::scratch::{Buffers, Scratch};
use super::sgemm::{self, Operand};
use singa_core::{BufView, ConvShape};

/// The address of a view's first element.
fn ptr(v: &BufView) -> usize {
    (v.handle as *mut f32).wrapping_add(v.offset) as usize
}

/// Rows of the patch matrix of one group: `group channels · kh · kw`.
fn patch_rows(s: &ConvShape) -> usize {
    s.group_channels() * s.kernel_h * s.kernel_w
}

/// Whether the input itself is the patch matrix (1×1 kernels, stride 1, no padding).
fn direct(s: &ConvShape) -> bool {
    s.kernel_h == 1
        && s.kernel_w == 1
        && s.stride_h == 1
        && s.stride_w == 1
        && s.pad_h == 0
        && s.pad_w == 0
}

/// The padded planes of one group: `group channels × (height + 2·pad_h) × (width + 2·pad_w)`.
///
/// With the zeros in memory, every patch row is a plain strided read: no bounds to check in
/// the inner loops, and unit-stride rows become short copies. Without padding, the image itself
/// serves.
struct Padded {
    height: usize,
    width: usize,
}

impl Padded {
    fn of(s: &ConvShape) -> Padded {
        Padded { height: s.height + 2 * s.pad_h, width: s.width + 2 * s.pad_w }
    }

    /// Values in the padded planes of one group (0 when the image serves as is).
    fn len(&self, s: &ConvShape) -> usize {
        if s.pad_h == 0 && s.pad_w == 0 {
            0
        } else {
            s.group_channels() * self.height * self.width
        }
    }
}

/// Short runs of `f32`: the copies and additions of one output row, a few dozen values.
///
/// A call to `memcpy` would cost more than such a copy, and LLVM does not vectorise these
/// short loops well on its own, so with AVX-512 they are written with masked vector moves.
mod runs {
    /// `dst[..n] = src[..n]`.
    ///
    /// # Safety
    /// Both hold `n` values; with `AVX512`, the CPU has AVX-512F.
    #[inline(always)]
    pub unsafe fn copy<const AVX512: bool>(dst: *mut f32, src: *const f32, n: usize) {
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            return avx512::copy(dst, src, n);
        }
        std::ptr::copy_nonoverlapping(src, dst, n);
    }

    /// `dst[..n] += src[..n]`.
    ///
    /// # Safety
    /// As for [`copy`].
    #[inline(always)]
    pub unsafe fn add<const AVX512: bool>(dst: *mut f32, src: *const f32, n: usize) {
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            return avx512::add(dst, src, n);
        }
        for i in 0..n {
            *dst.add(i) += *src.add(i);
        }
    }

    #[cfg(target_arch = "x86_64")]
    pub use avx512::gather_col2im;

    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use singa_core::ConvShape;
        use std::arch::x86_64::*;

        /// The lanes of the last, partial register of a run of `n`.
        #[inline(always)]
        fn tail(n: usize) -> __mmask16 {
            ((1u32 << (n % 16)) - 1) as __mmask16
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        pub unsafe fn copy(dst: *mut f32, src: *const f32, n: usize) {
            let mut i = 0;
            while i + 16 <= n {
                _mm512_storeu_ps(dst.add(i), _mm512_loadu_ps(src.add(i)));
                i += 16;
            }
            if i < n {
                let m = tail(n);
                _mm512_mask_storeu_ps(dst.add(i), m, _mm512_maskz_loadu_ps(m, src.add(i)));
            }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        pub unsafe fn add(dst: *mut f32, src: *const f32, n: usize) {
            let mut i = 0;
            while i + 16 <= n {
                let v = _mm512_add_ps(_mm512_loadu_ps(dst.add(i)), _mm512_loadu_ps(src.add(i)));
                _mm512_storeu_ps(dst.add(i), v);
                i += 16;
            }
            if i < n {
                let m = tail(n);
                let v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst.add(i)), _mm512_maskz_loadu_ps(m, src.add(i)));
                _mm512_mask_storeu_ps(dst.add(i), m, v);
            }
        }

        /// The lanes `lo..hi` of a register (none when `hi <= lo`).
        #[inline(always)]
        fn between(lo: isize, hi: isize) -> __mmask16 {
            let (lo, hi) = (lo.clamp(0, 16) as u32, hi.clamp(0, 16) as u32);
            if hi <= lo {
                0
            } else {
                (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
            }
        }

        /// col2im for unit horizontal stride as a gather: each 16 values of an input row sum
        /// their taps from the patch matrix in registers and are stored once. (Adding each
        /// patch row onto the image instead stores and reloads overlapping, misaligned
        /// vectors, which stalls on store forwarding.)
        ///
        /// # Safety
        /// The CPU has AVX-512F; `col` is the group's patch matrix; `dx` points at the group's
        /// first channel, `group channels × height × width` writable values.
        #[target_feature(enable = "avx512f")]
        pub unsafe fn gather_col2im(s: &ConvShape, col: &[f32], dx: *mut f32) {
            let (oh_len, ow_len) = (s.out_h() as isize, s.out_w() as isize);
            let spatial = (oh_len * ow_len) as usize;
            let taps = s.kernel_h * s.kernel_w;
            assert!(col.len() >= s.group_channels() * taps * spatial);
            for c in 0..s.group_channels() {
                let rows = col.as_ptr().add(c * taps * spatial);
                for h in 0..s.height {
                    let mut w0 = 0;
                    while w0 < s.width {
                        // Four sums in rotation, so that the additions do not wait on each other.
                        let z = _mm512_setzero_ps();
                        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                        for r in 0..s.kernel_h {
                            // Output row whose window row r is input row h.
                            let oh = (h + s.pad_h) as isize - r as isize;
                            if oh < 0 || oh % s.stride_h as isize != 0 || oh / s.stride_h as isize >= oh_len {
                                continue;
                            }
                            let oh = oh / s.stride_h as isize;
                            for q in 0..s.kernel_w {
                                // Output column of input column w0 through tap q.
                                let ow0 = (w0 + s.pad_w) as isize - q as isize;
                                let m = between(-ow0, (ow_len - ow0).min((s.width - w0) as isize));
                                if m == 0 {
                                    continue;
                                }
                                let row = rows.add((r * s.kernel_w + q) * spatial);
                                // Lanes outside the mask are neither read nor faulted on.
                                let src = row.wrapping_offset(oh * ow_len + ow0);
                                let sum = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(m, src));
                                (a0, a1, a2, a3) = (a1, a2, a3, sum);
                            }
                        }
                        let sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
                        let m = between(0, (s.width - w0) as isize);
                        _mm512_mask_storeu_ps(dx.add((c * s.height + h) * s.width + w0), m, sum);
                        w0 += 16;
                    }
                }
            }
        }
    }
}

/// Whether the AVX-512 runs can be used.
fn avx512() -> bool {
    cfg!(target_arch = "x86_64") && super::simd::level() == super::simd::Level::Avx512
}

/// The planes im2col reads for channels `c0 ..` of one image: the image itself when unpadded,
/// else its copy into `buf`, whose borders must already be zero.
///
/// # Safety
/// `x` holds the image's `channels × height × width` values.
#[inline(always)]
unsafe fn planes<'a>(s: &ConvShape, x: *const f32, c0: usize, buf: &'a mut [f32]) -> &'a [f32] {
    let gc = s.group_channels();
    if buf.is_empty() {
        return std::slice::from_raw_parts(x.add(c0 * s.height * s.width), gc * s.height * s.width);
    }
    let p = Padded::of(s);
    for c in 0..gc {
        let src = std::slice::from_raw_parts(x.add((c0 + c) * s.height * s.width), s.height * s.width);
        for h in 0..s.height {
            let d = (c * p.height + h + s.pad_h) * p.width + s.pad_w;
            let row = &src[h * s.width..(h + 1) * s.width];
            buf[d..d + s.width].copy_from_slice(row);
        }
    }
    buf
}

/// Writes the patch matrix (`group channels·kh·kw × out_h·out_w`) of one group from its
/// (padded) planes: row (c, r, q) holds, at (oh, ow), the value at (oh·sh + r, ow·sw + q).
fn im2col(s: &ConvShape, planes: &[f32], col: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        #[target_feature(enable = "avx512f")]
        unsafe fn wide(s: &ConvShape, planes: &[f32], col: &mut [f32]) {
            im2col_with::<true>(s, planes, col)
        }
        // SAFETY: the CPU has AVX-512F.
        return unsafe { wide(s, planes, col) };
    }
    im2col_with::<false>(s, planes, col)
}

#[inline(always)]
fn im2col_with<const AVX512: bool>(s: &ConvShape, planes: &[f32], col: &mut [f32]) {
    let (oh_len, ow_len) = (s.out_h(), s.out_w());
    let p = Padded::of(s);
    let (ph, pw) = if p.len(s) == 0 { (s.height, s.width) } else { (p.height, p.width) };
    let spatial = oh_len * ow_len;
    assert!(planes.len() >= s.group_channels() * ph * pw && col.len() >= patch_rows(s) * spatial);
    // The last value a patch row reads lies inside its plane.
    debug_assert!(((oh_len - 1) * s.stride_h + s.kernel_h - 1) * pw + (ow_len - 1) * s.stride_w + s.kernel_w <= ph * pw);
    let mut row = 0;
    for c in 0..s.group_channels() {
        let plane = &planes[c * ph * pw..(c + 1) * ph * pw];
        for r in 0..s.kernel_h {
            for q in 0..s.kernel_w {
                let out = &mut col[row * spatial..(row + 1) * spatial];
                for (oh, dst) in out.chunks_exact_mut(ow_len).enumerate() {
                    let start = (oh * s.stride_h + r) * pw + q;
                    if s.stride_w == 1 {
                        let src = &plane[start..start + ow_len];
                        // SAFETY: both runs hold ow_len values; AVX-512 is checked by the caller.
                        unsafe { runs::copy::<AVX512>(dst.as_mut_ptr(), src.as_ptr(), ow_len) };
                    } else {
                        for (k, d) in dst.iter_mut().enumerate() {
                            *d = plane[start + k * s.stride_w];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Adds a patch matrix back onto channels `c0 ..` of one image (the transpose of
/// [`im2col`]), through `buf` (the padded planes, any content) when the convolution pads.
///
/// # Safety
/// `dx` holds the image's `channels × height × width` values, writable; the group's channels
/// are overwritten.
unsafe fn col2im(s: &ConvShape, col: &[f32], c0: usize, dx: *mut f32, buf: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() && s.stride_w == 1 {
        return runs::gather_col2im(s, col, dx.add(c0 * s.height * s.width));
    }
    col2im_with::<false>(s, col, c0, dx, buf)
}

#[inline(always)]
unsafe fn col2im_with<const AVX512: bool>(s: &ConvShape, col: &[f32], c0: usize, dx: *mut f32, buf: &mut [f32]) {
    let (oh_len, ow_len) = (s.out_h(), s.out_w());
    let spatial = oh_len * ow_len;
    let gc = s.group_channels();
    let image = std::slice::from_raw_parts_mut(dx.add(c0 * s.height * s.width), gc * s.height * s.width);
    let (target, ph, pw): (&mut [f32], usize, usize) = if buf.is_empty() {
        (image, s.height, s.width)
    } else {
        let p = Padded::of(s);
        (&mut *buf, p.height, p.width)
    };
    target.fill(0.0);
    let mut row = 0;
    for c in 0..gc {
        let plane = &mut target[c * ph * pw..(c + 1) * ph * pw];
        for r in 0..s.kernel_h {
            for q in 0..s.kernel_w {
                let src_rows = &col[row * spatial..(row + 1) * spatial];
                for (oh, src) in src_rows.chunks_exact(ow_len).enumerate() {
                    let start = (oh * s.stride_h + r) * pw + q;
                    if s.stride_w == 1 {
                        let dst = &mut plane[start..start + ow_len];
                        runs::add::<AVX512>(dst.as_mut_ptr(), src.as_ptr(), ow_len);
                    } else {
                        for (k, v) in src.iter().enumerate() {
                            plane[start + k * s.stride_w] += v;
                        }
                    }
                }
                row += 1;
            }
        }
    }
    if !buf.is_empty() {
        // The interior of the padded planes is the gradient.
        let p = Padded::of(s);
        for c in 0..gc {
            for h in 0..s.height {
                let from = (c * p.height + h + s.pad_h) * p.width + s.pad_w;
                let to = (c * s.height + h) * s.width;
                runs::copy::<AVX512>(image[to..].as_mut_ptr(), buf[from..].as_ptr(), s.width);
            }
        }
    }
}

/// The transposed patch matrix of one group (spatial positions × taps), packed for the filter
/// gradient's product straight from the (padded) planes: each 8 taps × 8 positions of an output
/// row are 8 runs of the planes, transposed in registers.
struct PatchPacker<'a> {
    s: &'a ConvShape,
    planes: &'a [f32],
}

impl PatchPacker<'_> {
    /// Whether the fast packing applies: unit strides, output rows of whole groups of 8, and
    /// AVX on x86-64. (The depth blocks must also be whole groups of 8; checked per block.)
    fn fits(s: &ConvShape) -> bool {
        cfg!(target_arch = "x86_64")
            && s.stride_h == 1
            && s.stride_w == 1
            && s.out_w().is_multiple_of(8)
            && matches!(super::simd::level(), super::simd::Level::Avx512 | super::simd::Level::Avx2)
    }

    /// The value of tap `t` at spatial position `p`.
    fn at(&self, plane_h: usize, plane_w: usize, t: usize, p: usize) -> f32 {
        let s = self.s;
        let (taps, ow_len) = (s.kernel_h * s.kernel_w, s.out_w());
        let (c, r, q) = (t / taps, (t / s.kernel_w) % s.kernel_h, t % s.kernel_w);
        let (oh, ow) = (p / ow_len, p % ow_len);
        self.planes[(c * plane_h + oh * s.stride_h + r) * plane_w + ow * s.stride_w + q]
    }
}

impl sgemm::PackB for PatchPacker<'_> {
    unsafe fn pack(&self, buf: &mut [f32], nr: usize, n: usize, kc: usize, p0: usize) {
        let s = self.s;
        let p = Padded::of(s);
        let (ph, pw) = if p.len(s) == 0 { (s.height, s.width) } else { (p.height, p.width) };
        let (taps, ow_len) = (s.kernel_h * s.kernel_w, s.out_w());
        let vector = p0 % 8 == 0 && kc % 8 == 0;
        for (panel, out) in buf.chunks_exact_mut(kc * nr).enumerate() {
            let j0 = panel * nr;
            let cols = nr.min(n.saturating_sub(j0));
            let full = if vector { cols / 8 * 8 } else { 0 };
            #[cfg(target_arch = "x86_64")]
            for g in (0..full).step_by(8) {
                // Where each of the 8 taps reads its plane for output row 0, column 0.
                let bases: [usize; 8] = std::array::from_fn(|i| {
                    let t = j0 + g + i;
                    let (c, r, q) = (t / taps, (t / s.kernel_w) % s.kernel_h, t % s.kernel_w);
                    (c * ph + r) * pw + q
                });
                for d in (0..kc).step_by(8) {
                    let (oh, ow) = ((p0 + d) / ow_len, (p0 + d) % ow_len);
                    let offset = oh * pw + ow;
                    let rows = bases.map(|b| self.planes[b + offset..b + offset + 8].as_ptr());
                    sgemm::transpose8x8_rows(rows, out.as_mut_ptr().add(d * nr + g), nr);
                }
            }
            for jj in full..nr {
                for d in 0..kc {
                    out[d * nr + jj] = if jj < cols { self.at(ph, pw, j0 + jj, p0 + d) } else { 0.0 };
                }
            }
        }
    }
}

/// The images of thread `t` of `parts`.
fn images(batch: usize, parts: usize, t: usize) -> std::ops::Range<usize> {
    let chunk = batch.div_ceil(parts);
    (t * chunk).min(batch)..((t + 1) * chunk).min(batch)
}

/// What the three passes need to know: sizes per image and per group.
struct Sizes {
    image_in: usize,
    image_out: usize,
    spatial: usize,
    rows: usize,
    gf: usize,
}

impl Sizes {
    fn of(s: &ConvShape) -> Sizes {
        Sizes {
            image_in: s.channels * s.height * s.width,
            image_out: s.filters * s.out_h() * s.out_w(),
            spatial: s.out_h() * s.out_w(),
            rows: patch_rows(s),
            gf: s.group_filters(),
        }
    }
}

/// Which pass to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// `y = w ⊛ x`.
    Forward,
    /// `dx` from `dy` and `w`.
    Data,
    /// `dw` from `x` and `dy`.
    Filter,
}

/// Runs a pass of a convolution on `threads`: `a` and `b` are the pass's two inputs (forward:
/// x, w; data: dy, w; filter: x, dy) and `out` its output.
///
/// # Safety
/// The views are live `F32` allocations of the sizes `s` implies.
pub(crate) unsafe fn run(
    threads: &Threads,
    scratch: &Scratch,
    s: &ConvShape,
    pass: Pass,
    a: BufView,
    b: BufView,
    out: BufView,
) {
    let mut buf = scratch.lock();
    let (pa, pb, po) = (ptr(&a), ptr(&b), ptr(&out));
    if pass == Pass::Data {
        if let Some(t) = transposed(s) {
            // The input gradient of a unit-stride convolution is the convolution of the output
            // gradient with the flipped filters: no col2im, and a deep matrix product.
            let mut flipped = std::mem::take(&mut buf.shared);
            flipped.resize(s.weight_len(), 0.0);
            flip_filters(s, std::slice::from_raw_parts(pb as *const f32, s.weight_len()), &mut flipped);
            run_locked(threads, &mut buf, &t, Pass::Forward, pa, flipped.as_ptr() as usize, po);
            buf.shared = flipped;
            return;
        }
    }
    run_locked(threads, &mut buf, s, pass, pa, pb, po)
}

/// The convolution whose forward pass computes `s`'s input gradient from its output gradient,
/// when there is one (unit strides, padding below the kernel size) and it pays: its product
/// has the input channels as rows, too few of them (an RGB input) fill no kernel tile.
fn transposed(s: &ConvShape) -> Option<ConvShape> {
    const MIN_CHANNELS: usize = 16;
    let fits = s.stride_h == 1
        && s.stride_w == 1
        && s.pad_h < s.kernel_h
        && s.pad_w < s.kernel_w
        && s.group_channels() >= MIN_CHANNELS;
    fits.then(|| ConvShape {
        channels: s.filters,
        height: s.out_h(),
        width: s.out_w(),
        filters: s.channels,
        pad_h: s.kernel_h - 1 - s.pad_h,
        pad_w: s.kernel_w - 1 - s.pad_w,
        ..*s
    })
}

/// The filters of [`transposed`]: `flipped[g·gc + c][f][r][q] = w[g·gf + f][c][kh−1−r][kw−1−q]`.
fn flip_filters(s: &ConvShape, w: &[f32], flipped: &mut [f32]) {
    let (gc, gf, kh, kw) = (s.group_channels(), s.group_filters(), s.kernel_h, s.kernel_w);
    for g in 0..s.groups {
        for f in 0..gf {
            for c in 0..gc {
                let src = &w[((g * gf + f) * gc + c) * kh * kw..][..kh * kw];
                let dst = &mut flipped[((g * gc + c) * gf + f) * kh * kw..][..kh * kw];
                for (d, v) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *v;
                }
            }
        }
    }
}

/// [`run`] on locked buffers, with the views as addresses.
///
/// # Safety
/// As for [`run`].
unsafe fn run_locked(threads: &Threads, buf: &mut Buffers, s: &ConvShape, pass: Pass, pa: usize, pb: usize, po: usize) {
    let own = sgemm::available();
    let z = Sizes::of(s);
    let parts = threads.count().min(s.batch).max(1);
    buf.reserve_work(parts);
    let col_len = if direct(s) { 0 } else { z.rows * z.spatial };
    let pad_len = if direct(s) { 0 } else { Padded::of(s).len(s) };
    buf.reserve_temp(parts, col_len + pad_len);
    if pass == Pass::Filter {
        buf.reserve_partials(parts - 1, s.weight_len());
    }
    for t in 0..parts {
        // The largest product of any pass: (rows × spatial) with depth gf, or gf × rows.
        let need = [
            sgemm::workspace_size(z.gf, z.spatial, z.rows, false),
            sgemm::workspace_size(z.rows, z.spatial, z.gf, false),
            sgemm::workspace_size(z.gf, z.rows, z.spatial, true),
        ];
        let (wa, wb) = need
            .iter()
            .fold((0, 0), |(x, y), &(p, q)| (x.max(p), y.max(q)));
        buf.work[t].reserve((wa, wb));
    }
    let at = buf.addresses();
    let job = |t: usize| {
        let ws = at.work(t);
        let (col, padded) = at.temp(t)[..col_len + pad_len].split_at_mut(col_len);
        // The borders of the padded planes stay zero; images overwrite only the interior.
        padded.fill(0.0);
        let mut first = true;
        for n in images(s.batch, parts, t) {
            for g in 0..s.groups {
                let c0 = g * s.group_channels();
                let w_g = |w: usize| (w as *const f32).add(g * z.gf * z.rows);
                match pass {
                    Pass::Forward => {
                        let x = (pa as *const f32).add(n * z.image_in);
                        let (cols, ld) = if direct(s) {
                            (x.add(c0 * z.spatial), z.spatial)
                        } else {
                            im2col(s, planes(s, x, c0, padded), col);
                            (col.as_ptr(), z.spatial)
                        };
                        let y = (po as *mut f32).add(n * z.image_out + g * z.gf * z.spatial);
                        let wm = Operand {
                            ptr: w_g(pb),
                            ld: z.rows,
                            trans: false,
                        };
                        let cm = Operand {
                            ptr: cols,
                            ld,
                            trans: false,
                        };
                        single(
                            ws,
                            own,
                            (z.gf, z.spatial, z.rows),
                            1.0,
                            wm,
                            cm,
                            0.0,
                            y,
                            z.spatial,
                        );
                    }
                    Pass::Data => {
                        let dy = (pa as *const f32).add(n * z.image_out + g * z.gf * z.spatial);
                        let dx = (po as *mut f32).add(n * z.image_in);
                        let wt = Operand {
                            ptr: w_g(pb),
                            ld: z.rows,
                            trans: true,
                        };
                        let dym = Operand {
                            ptr: dy,
                            ld: z.spatial,
                            trans: false,
                        };
                        if direct(s) {
                            let dst = dx.add(c0 * z.spatial);
                            single(
                                ws,
                                own,
                                (z.rows, z.spatial, z.gf),
                                1.0,
                                wt,
                                dym,
                                0.0,
                                dst,
                                z.spatial,
                            );
                        } else {
                            single(
                                ws,
                                own,
                                (z.rows, z.spatial, z.gf),
                                1.0,
                                wt,
                                dym,
                                0.0,
                                col.as_mut_ptr(),
                                z.spatial,
                            );
                            col2im(s, col, c0, dx, padded);
                        }
                    }
                    Pass::Filter => {
                        let x = (pa as *const f32).add(n * z.image_in);
                        let dy = (pb as *const f32).add(n * z.image_out + g * z.gf * z.spatial);
                        // Thread 0 accumulates into dw itself, the others into their partials.
                        let dw = if t == 0 {
                            po as *mut f32
                        } else {
                            at.partial(t - 1).as_mut_ptr()
                        };
                        let dst = dw.add(g * z.gf * z.rows);
                        let dym = Operand {
                            ptr: dy,
                            ld: z.spatial,
                            trans: false,
                        };
                        let beta = if first { 0.0 } else { 1.0 };
                        if own && !direct(s) && PatchPacker::fits(s) {
                            // The patches go from the image straight into the product's packed
                            // panels: no patch matrix written and read back.
                            let packer = PatchPacker { s, planes: planes(s, x, c0, padded) };
                            sgemm::gemm_with(ws, z.gf, z.rows, z.spatial, 1.0, dym, sgemm::B::Packer(&packer), beta, dst, z.rows);
                            continue;
                        }
                        let cols = if direct(s) {
                            x.add(c0 * z.spatial)
                        } else {
                            im2col(s, planes(s, x, c0, padded), col);
                            col.as_ptr()
                        };
                        let ct = Operand {
                            ptr: cols,
                            ld: z.spatial,
                            trans: true,
                        };
                        single(
                            ws,
                            own,
                            (z.gf, z.rows, z.spatial),
                            1.0,
                            dym,
                            ct,
                            beta,
                            dst,
                            z.rows,
                        );
                    }
                }
            }
            first = false;
        }
        if pass == Pass::Filter && first {
            // A thread without images contributes zeros.
            let dw = if t == 0 {
                std::slice::from_raw_parts_mut(po as *mut f32, s.weight_len())
            } else {
                &mut at.partial(t - 1)[..s.weight_len()]
            };
            dw.fill(0.0);
        }
    };
    threads.run(parts, &job);
    if pass == Pass::Filter {
        let dw = std::slice::from_raw_parts_mut(po as *mut f32, s.weight_len());
        for i in 0..parts - 1 {
            for (d, p) in dw.iter_mut().zip(&at.partial(i)[..s.weight_len()]) {
                *d += p;
            }
        }
    }
}

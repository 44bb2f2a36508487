//! The patch matrices of a convolution: padded planes, im2col, col2im, and the packer that
//! writes transposed patches straight into a matrix product's panels.

use super::patch_rows;
use super::runs::{self, avx512};
use crate::cpu::sgemm;
use singa_core::ConvShape;

/// The padded planes of one group: `group channels × (height + 2·pad_h) × (width + 2·pad_w)`.
///
/// With the zeros in memory, every patch row is a plain strided read: no bounds to check in
/// the inner loops, and unit-stride rows become short copies. Without padding, the image itself
/// serves.
pub(super) struct Padded {
    height: usize,
    width: usize,
}

impl Padded {
    pub(super) fn of(s: &ConvShape) -> Padded {
        Padded {
            height: s.height + 2 * s.pad_h,
            width: s.width + 2 * s.pad_w,
        }
    }

    /// Values in the padded planes of one group (0 when the image serves as is).
    pub(super) fn len(&self, s: &ConvShape) -> usize {
        if s.pad_h == 0 && s.pad_w == 0 {
            0
        } else {
            s.group_channels() * self.height * self.width
        }
    }
}

/// The planes im2col reads for channels `c0 ..` of one image: the image itself when unpadded,
/// else its copy into `buf`, whose borders must already be zero.
///
/// # Safety
/// `x` holds the image's `channels × height × width` values.
#[inline(always)]
pub(super) unsafe fn planes<'a>(
    s: &ConvShape,
    x: *const f32,
    c0: usize,
    buf: &'a mut [f32],
) -> &'a [f32] {
    let gc = s.group_channels();
    if buf.is_empty() {
        return std::slice::from_raw_parts(x.add(c0 * s.height * s.width), gc * s.height * s.width);
    }
    let p = Padded::of(s);
    for c in 0..gc {
        let src =
            std::slice::from_raw_parts(x.add((c0 + c) * s.height * s.width), s.height * s.width);
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
pub(super) fn im2col(s: &ConvShape, planes: &[f32], col: &mut [f32]) {
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
    let (ph, pw) = if p.len(s) == 0 {
        (s.height, s.width)
    } else {
        (p.height, p.width)
    };
    let spatial = oh_len * ow_len;
    assert!(planes.len() >= s.group_channels() * ph * pw && col.len() >= patch_rows(s) * spatial);
    // The last value a patch row reads lies inside its plane.
    debug_assert!(
        ((oh_len - 1) * s.stride_h + s.kernel_h - 1) * pw + (ow_len - 1) * s.stride_w + s.kernel_w
            <= ph * pw
    );
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
pub(super) unsafe fn col2im(s: &ConvShape, col: &[f32], c0: usize, dx: *mut f32, buf: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() && s.stride_w == 1 {
        return runs::gather_col2im(s, col, dx.add(c0 * s.height * s.width));
    }
    col2im_with::<false>(s, col, c0, dx, buf)
}

#[inline(always)]
unsafe fn col2im_with<const AVX512: bool>(
    s: &ConvShape,
    col: &[f32],
    c0: usize,
    dx: *mut f32,
    buf: &mut [f32],
) {
    let (oh_len, ow_len) = (s.out_h(), s.out_w());
    let spatial = oh_len * ow_len;
    let gc = s.group_channels();
    let image =
        std::slice::from_raw_parts_mut(dx.add(c0 * s.height * s.width), gc * s.height * s.width);
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
pub(super) struct PatchPacker<'a> {
    pub(super) s: &'a ConvShape,
    pub(super) planes: &'a [f32],
}

impl PatchPacker<'_> {
    /// Whether the fast packing applies: unit strides, output rows of whole groups of 8, and
    /// AVX on x86-64. (The depth blocks must also be whole groups of 8; checked per block.)
    pub(super) fn fits(s: &ConvShape) -> bool {
        cfg!(target_arch = "x86_64")
            && s.stride_h == 1
            && s.stride_w == 1
            && s.out_w().is_multiple_of(8)
            && matches!(
                crate::cpu::simd::level(),
                crate::cpu::simd::Level::Avx512 | crate::cpu::simd::Level::Avx2
            )
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
        let (ph, pw) = if p.len(s) == 0 {
            (s.height, s.width)
        } else {
            (p.height, p.width)
        };
        let (taps, ow_len) = (s.kernel_h * s.kernel_w, s.out_w());
        let vector = p0.is_multiple_of(8) && kc.is_multiple_of(8);
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
                    out[d * nr + jj] = if jj < cols {
                        self.at(ph, pw, j0 + jj, p0 + d)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

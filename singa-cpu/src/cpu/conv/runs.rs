//! Short runs of `f32`: the copies and additions of one output row, a few dozen values.
//!
//! A call to `memcpy` would cost more than such a copy, and LLVM does not vectorise these
//! short loops well on its own, so with AVX-512 they are written with masked vector moves.

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
            let v = _mm512_add_ps(
                _mm512_maskz_loadu_ps(m, dst.add(i)),
                _mm512_maskz_loadu_ps(m, src.add(i)),
            );
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
                        if oh < 0
                            || oh % s.stride_h as isize != 0
                            || oh / s.stride_h as isize >= oh_len
                        {
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

/// Whether the AVX-512 runs can be used.
pub(super) fn avx512() -> bool {
    cfg!(target_arch = "x86_64") && crate::cpu::simd::level() == crate::cpu::simd::Level::Avx512
}

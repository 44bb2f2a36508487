//! Convolution as im2col + matrix product, one image per thread at a time.
//!
//! For each image, the input patches under every kernel position are laid out as the columns
//! of a matrix (`channels·kh·kw × out_h·out_w`), and the convolution becomes one product with
//! the weights (`filters × channels·kh·kw`). The images of a batch are split over the threads:
//! each thread keeps its patch matrix in its own cache and runs the single-threaded kernel;
//! the weights, small and read-only, are shared. A 1×1 convolution with stride 1 and no padding
//! uses the input as the patch matrix directly.
//!
//! Two passes avoid the patch matrix's usual costs. The input gradient of a unit-stride
//! convolution is itself a convolution (of the output gradient with the flipped filters), so
//! it needs no col2im and gets a deep product. The filter gradient needs the patch matrix
//! transposed; its panels are packed straight from the image ([`patches`]).
//!
//! 5×5 convolutions with unit stride, one group, padding up to 4 and multiples of 16 channels
//! and filters (the CIFAR-10 nets' second and third) skip all this on CPUs with AVX-512: all
//! three passes run as Winograd transforms ([`winograd`]), with 64 products per 4×4 tile where
//! the direct convolution needs 400 (6.25× fewer). `SINGA_NO_WINOGRAD` set to anything turns
//! them off, for comparisons.

mod patches;
mod runs;
mod winograd;

use super::gemm::single;
use super::parallel::Threads;
use super::scratch::{Buffers, Scratch};
use super::sgemm::{self, Operand};
use patches::{col2im, im2col, planes, Padded, PatchPacker};
use singa_core::{BufView, ConvShape, Precision};

/// Whether `s` runs as Winograd transforms.
pub(crate) fn uses_winograd(s: &ConvShape) -> bool {
    winograd::applies(s)
}

/// The address of a view's first element.
fn ptr(v: &BufView) -> usize {
    (v.handle as *mut f32).wrapping_add(v.offset) as usize
}

/// Rows of the patch matrix of one group: `group channels · kh · kw`.
pub(super) fn patch_rows(s: &ConvShape) -> usize {
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
/// x, w; data: dy, w; filter: x, dy) and `out` its output. The products of im2col and of the
/// direct passes run in `precision`; the Winograd passes always in f32 (bf16 inputs to their
/// transformed products would lose too much: see docs/PERFORMANCE.md), which is more precise
/// than asked and, there, faster.
///
/// # Safety
/// The views are live `F32` allocations of the sizes `s` implies.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    threads: &Threads,
    scratch: &Scratch,
    precision: Precision,
    s: &ConvShape,
    pass: Pass,
    a: BufView,
    b: BufView,
    out: BufView,
) {
    let mut buf = scratch.lock();
    let (pa, pb, po) = (ptr(&a), ptr(&b), ptr(&out));
    if pass == Pass::Forward && winograd::applies(s) {
        return winograd::forward(threads, &mut buf, s, pa, pb, po);
    }
    if pass == Pass::Filter && winograd::applies(s) {
        return winograd::filter(threads, &mut buf, s, pa, pb, po);
    }
    if pass == Pass::Data {
        if let Some(t) = transposed(s) {
            // The input gradient of a unit-stride convolution is the convolution of the output
            // gradient with the flipped filters: no col2im, and a deep matrix product.
            let mut flipped = std::mem::take(&mut buf.shared);
            flipped.resize(s.weight_len(), 0.0);
            flip_filters(
                s,
                std::slice::from_raw_parts(pb as *const f32, s.weight_len()),
                &mut flipped,
            );
            if winograd::applies(&t) {
                winograd::forward(threads, &mut buf, &t, pa, flipped.as_ptr() as usize, po);
            } else {
                run_locked(
                    threads,
                    &mut buf,
                    precision,
                    &t,
                    Pass::Forward,
                    pa,
                    flipped.as_ptr() as usize,
                    po,
                );
            }
            buf.shared = flipped;
            return;
        }
    }
    run_locked(threads, &mut buf, precision, s, pass, pa, pb, po)
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
    let (gc, gf, kh, kw) = (
        s.group_channels(),
        s.group_filters(),
        s.kernel_h,
        s.kernel_w,
    );
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
#[allow(clippy::too_many_arguments)]
unsafe fn run_locked(
    threads: &Threads,
    buf: &mut Buffers,
    precision: Precision,
    s: &ConvShape,
    pass: Pass,
    pa: usize,
    pb: usize,
    po: usize,
) {
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
            sgemm::workspace_size(z.gf, z.spatial, z.rows, false, precision),
            sgemm::workspace_size(z.rows, z.spatial, z.gf, false, precision),
            sgemm::workspace_size(z.gf, z.rows, z.spatial, true, precision),
        ];
        buf.work[t].reserve(need.into_iter().fold(Default::default(), sgemm::Space::max));
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
                            (own, precision),
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
                        // Straight into dx when the patches are the pixels, else through col.
                        let into_dx = direct(s);
                        let dst = if into_dx {
                            dx.add(c0 * z.spatial)
                        } else {
                            col.as_mut_ptr()
                        };
                        single(
                            ws,
                            (own, precision),
                            (z.rows, z.spatial, z.gf),
                            1.0,
                            wt,
                            dym,
                            0.0,
                            dst,
                            z.spatial,
                        );
                        if !into_dx {
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
                            let packer = PatchPacker {
                                s,
                                planes: planes(s, x, c0, padded),
                            };
                            sgemm::gemm_with(
                                ws,
                                precision,
                                z.gf,
                                z.rows,
                                z.spatial,
                                1.0,
                                dym,
                                sgemm::B::Packer(&packer),
                                beta,
                                dst,
                                z.rows,
                            );
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
                            (own, precision),
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

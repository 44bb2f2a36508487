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
use super::scratch::Scratch;
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

/// Writes the patch matrix of channels `c0 .. c0 + group channels` of one image.
///
/// # Safety
/// `x` holds the image's `channels × height × width` values; `col` has room for the matrix.
unsafe fn im2col(s: &ConvShape, x: *const f32, c0: usize, col: &mut [f32]) {
    let (oh_len, ow_len) = (s.out_h(), s.out_w());
    let mut row = 0;
    for c in c0..c0 + s.group_channels() {
        let plane = x.add(c * s.height * s.width);
        for r in 0..s.kernel_h {
            for q in 0..s.kernel_w {
                let out = &mut col[row * oh_len * ow_len..(row + 1) * oh_len * ow_len];
                for oh in 0..oh_len {
                    let dst = &mut out[oh * ow_len..(oh + 1) * ow_len];
                    let ih = (oh * s.stride_h + r) as isize - s.pad_h as isize;
                    if ih < 0 || ih as usize >= s.height {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = std::slice::from_raw_parts(plane.add(ih as usize * s.width), s.width);
                    for (ow, d) in dst.iter_mut().enumerate() {
                        let iw = (ow * s.stride_w + q) as isize - s.pad_w as isize;
                        *d = if iw >= 0 && (iw as usize) < s.width {
                            src[iw as usize]
                        } else {
                            0.0
                        };
                    }
                }
                row += 1;
            }
        }
    }
}

/// Adds a patch matrix back onto channels `c0 ..` of one image (the transpose of [`im2col`]).
///
/// # Safety
/// As for [`im2col`], with `dx` writable.
unsafe fn col2im(s: &ConvShape, col: &[f32], c0: usize, dx: *mut f32) {
    let (oh_len, ow_len) = (s.out_h(), s.out_w());
    let mut row = 0;
    for c in c0..c0 + s.group_channels() {
        let plane = dx.add(c * s.height * s.width);
        for r in 0..s.kernel_h {
            for q in 0..s.kernel_w {
                let src_rows = &col[row * oh_len * ow_len..(row + 1) * oh_len * ow_len];
                for oh in 0..oh_len {
                    let ih = (oh * s.stride_h + r) as isize - s.pad_h as isize;
                    if ih < 0 || ih as usize >= s.height {
                        continue;
                    }
                    let dst =
                        std::slice::from_raw_parts_mut(plane.add(ih as usize * s.width), s.width);
                    for (ow, &v) in src_rows[oh * ow_len..(oh + 1) * ow_len].iter().enumerate() {
                        let iw = (ow * s.stride_w + q) as isize - s.pad_w as isize;
                        if iw >= 0 && (iw as usize) < s.width {
                            dst[iw as usize] += v;
                        }
                    }
                }
                row += 1;
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
    let own = sgemm::available();
    let z = Sizes::of(s);
    let parts = threads.count().min(s.batch).max(1);
    let mut buf = scratch.lock();
    buf.reserve_work(parts);
    let col_len = if direct(s) { 0 } else { z.rows * z.spatial };
    buf.reserve_temp(parts, col_len);
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
    let (pa, pb, po) = (ptr(&a), ptr(&b), ptr(&out));
    let job = |t: usize| {
        let ws = at.work(t);
        let col = at.temp(t);
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
                            im2col(s, x, c0, col);
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
                            if g == 0 {
                                std::slice::from_raw_parts_mut(dx, z.image_in).fill(0.0);
                            }
                            col2im(s, col, c0, dx);
                        }
                    }
                    Pass::Filter => {
                        let x = (pa as *const f32).add(n * z.image_in);
                        let dy = (pb as *const f32).add(n * z.image_out + g * z.gf * z.spatial);
                        let cols = if direct(s) {
                            x.add(c0 * z.spatial)
                        } else {
                            im2col(s, x, c0, col);
                            col.as_ptr()
                        };
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
                        let ct = Operand {
                            ptr: cols,
                            ld: z.spatial,
                            trans: true,
                        };
                        let beta = if first { 0.0 } else { 1.0 };
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

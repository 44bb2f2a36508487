//! Matrix multiply on the CPU device: how a product is split over threads, and which kernel
//! runs each part ([`sgemm`](super::sgemm) for f32 on AVX2/AVX-512, the `gemm` crate otherwise).
//!
//! Which dimension is split matters more than how finely. On a training step the same weight
//! matrix is read forward, read backward and rewritten by the update, and a cache line that
//! moves between cores costs more than the arithmetic on it. So a product is split along the
//! *stored rows of its largest operand* (usually the weights or their gradient): thread `t`
//! keeps touching the same rows every step, and the elementwise update, which splits the
//! elements evenly, finds them (all but a row or so at the boundary) in its own cache. When those rows are the
//! reduction dimension, each thread computes a partial product and the partials are summed.

use super::parallel::Threads;
use super::scratch::{Buffers, Scratch};
use super::sgemm::{self, Operand, Workspace};
use gemm::Parallelism;
use singa_core::{BufView, DType, Error, GemmArgs, GemmLayout, Precision, Result};

/// Below this many multiply-adds per thread a product is not split.
const MIN_FLOPS_PER_THREAD: usize = 1 << 18;

/// Blocks are multiples of this many rows or columns: one AVX-512 register of f32.
const BLOCK_ALIGN: usize = 16;

/// Which dimension threads split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    None,
    Rows,
    Cols,
    Depth,
}

/// Picks the split: along the stored rows of the largest operand, if that dimension is long
/// enough to give every thread a block; otherwise along the longest other dimension.
fn choose(l: &GemmLayout, parts: usize, depth_ok: bool) -> Split {
    if parts < 2 {
        return Split::None;
    }
    let (m, n, k) = (l.m, l.n, l.k);
    let (a, b, c) = (m * k, k * n, m * n);
    let preferred = if c >= a && c >= b {
        Split::Rows
    } else if a >= b {
        if l.trans_a {
            Split::Depth
        } else {
            Split::Rows
        }
    } else if l.trans_b {
        Split::Cols
    } else {
        Split::Depth
    };
    let len = |s: Split| match s {
        Split::Rows => m,
        Split::Cols => n,
        Split::Depth => k,
        Split::None => 0,
    };
    // A depth part shorter than the kernel's depth block makes the kernel load and store its
    // tile of C once per fewer multiply-adds (a recurrent step's h·W_h, 32×256·256×1024,
    // ran at 1.0× one thread split by depth, 1.9× split by columns).
    let enough = |s: Split| match s {
        Split::Depth => depth_ok && len(s) >= parts * sgemm::MAX_DEPTH_BLOCK,
        _ => len(s) >= parts * BLOCK_ALIGN,
    };
    if enough(preferred) {
        return preferred;
    }
    // Short blocks of depth still beat one thread when no other dimension is long enough.
    let short_depth = depth_ok && k >= parts * BLOCK_ALIGN;
    [Split::Rows, Split::Cols]
        .into_iter()
        .filter(|&s| enough(s))
        .max_by_key(|&s| len(s))
        .or(short_depth.then_some(Split::Depth))
        .unwrap_or(Split::None)
}

/// The granularity of a split: columns in whole registers; rows and depth by single rows, so
/// that a split of a weight matrix's rows falls where the elementwise update, which splits its
/// elements evenly, splits it too.
fn align(split: Split) -> usize {
    match split {
        Split::Cols => BLOCK_ALIGN,
        _ => 1,
    }
}

/// A part of a split product: rows, columns and depth ranges.
#[derive(Clone, Copy, Debug)]
struct Part {
    rows: (usize, usize),
    cols: (usize, usize),
    depth: (usize, usize),
}

/// The parts of a split, part `t` for thread `t` (empty parts are skipped by callers).
fn parts_of(l: &GemmLayout, split: Split, parts: usize) -> impl Iterator<Item = Part> {
    let len = match split {
        Split::Rows => l.m,
        Split::Cols => l.n,
        Split::Depth => l.k,
        Split::None => 1,
    };
    let count = if split == Split::None { 1 } else { parts };
    let chunk = len.div_ceil(count).next_multiple_of(align(split));
    let (m, n, k) = (l.m, l.n, l.k);
    (0..count).map(move |t| {
        let r = ((t * chunk).min(len), ((t + 1) * chunk).min(len));
        match split {
            Split::Rows => Part {
                rows: r,
                cols: (0, n),
                depth: (0, k),
            },
            Split::Cols => Part {
                rows: (0, m),
                cols: r,
                depth: (0, k),
            },
            Split::Depth => Part {
                rows: (0, m),
                cols: (0, n),
                depth: r,
            },
            Split::None => Part {
                rows: (0, m),
                cols: (0, n),
                depth: (0, k),
            },
        }
    })
}

/// Runs `args` (checked by the caller) on `threads`, f32 products in `precision`.
///
/// # Safety
/// The views are live allocations of the CPU device, large enough for the layout.
pub(crate) unsafe fn gemm(
    threads: &Threads,
    scratch: &Scratch,
    args: &GemmArgs,
    precision: Precision,
) -> Result<()> {
    let l = args.layout;
    if l.m == 0 || l.n == 0 {
        return Ok(());
    }
    let flops = l.m * l.n * l.k.max(1);
    let parts = (flops / MIN_FLOPS_PER_THREAD).clamp(1, threads.count());
    match args.c.dtype {
        DType::F32 => {
            let own = sgemm::available();
            let split = choose(&l, parts, true);
            let mut buffers = scratch.lock();
            run_f32(threads, &mut buffers, args, (split, parts), own, precision);
            Ok(())
        }
        DType::F16 => {
            let split = choose(&l, parts, false);
            run_crate::<half::f16>(
                threads,
                args,
                split,
                parts,
                half::f16::from_f32(args.alpha),
                half::f16::from_f32(args.beta),
            );
            Ok(())
        }
        d => Err(Error::unsupported("cpu", format!("gemm on {d} tensors"))),
    }
}

/// The address of element `offset` of a view, as an integer (so closures stay `Send`).
fn base<T>(v: &BufView) -> usize {
    (v.handle as *mut T).wrapping_add(v.offset) as usize
}

/// Stored strides of A and B: (row step, column step) of op(A) and op(B).
fn strides(l: &GemmLayout) -> ((usize, usize), (usize, usize)) {
    let a = if l.trans_a { (1, l.lda) } else { (l.lda, 1) };
    let b = if l.trans_b { (1, l.ldb) } else { (l.ldb, 1) };
    (a, b)
}

unsafe fn run_f32(
    threads: &Threads,
    buf: &mut Buffers,
    args: &GemmArgs,
    (split, parts): (Split, usize),
    own: bool,
    precision: Precision,
) {
    let l = args.layout;
    let ((a_rs, a_cs), (b_rs, b_cs)) = strides(&l);
    let (a, b, c) = (
        base::<f32>(&args.a),
        base::<f32>(&args.b),
        base::<f32>(&args.c),
    );
    let count = parts_of(&l, split, parts).count();
    // Reserve every thread's buffers here, so threads never allocate.
    buf.reserve_work(count);
    for (t, part) in parts_of(&l, split, parts).enumerate() {
        let (m, n, k) = (
            part.rows.1 - part.rows.0,
            part.cols.1 - part.cols.0,
            part.depth.1 - part.depth.0,
        );
        if own || precision != Precision::F32 {
            buf.work[t].reserve(sgemm::workspace_size(m, n, k, l.trans_b, precision));
        }
    }
    if split == Split::Depth {
        buf.reserve_partials(count - 1, l.m * l.n);
    }
    let at = buf.addresses();
    let parts_list = |t: usize| {
        parts_of(&l, split, parts)
            .nth(t)
            .expect("a part per thread")
    };
    for p in 0..l.batch {
        let (ap, bp, cp) = (
            a + p * l.stride_a * 4,
            b + p * l.stride_b * 4,
            c + p * l.stride_c * 4,
        );
        let job = |t: usize| {
            let part = parts_list(t);
            let (i0, i1) = part.rows;
            let (j0, j1) = part.cols;
            let (k0, k1) = part.depth;
            if i0 >= i1 || j0 >= j1 || (split == Split::Depth && k0 >= k1) {
                return;
            }
            // Thread 0 (and every thread of a non-depth split) writes C; the other threads of a
            // depth split write their own partial products.
            let (dst, ldd, beta) = if split == Split::Depth && t > 0 {
                (at.partial(t - 1).as_mut_ptr(), l.n, 0.0)
            } else {
                ((cp as *mut f32).add(i0 * l.ldc + j0), l.ldc, args.beta)
            };
            let a_op = Operand {
                ptr: (ap as *const f32).add(i0 * a_rs + k0 * a_cs),
                ld: l.lda,
                trans: l.trans_a,
            };
            let b_op = Operand {
                ptr: (bp as *const f32).add(k0 * b_rs + j0 * b_cs),
                ld: l.ldb,
                trans: l.trans_b,
            };
            single(
                at.work(t),
                (own, precision),
                (i1 - i0, j1 - j0, k1 - k0),
                args.alpha,
                a_op,
                b_op,
                beta,
                dst,
                ldd,
            );
        };
        threads.run(count, &job);
        if split == Split::Depth {
            // C += the other threads' partial products.
            let used = parts_of(&l, split, parts)
                .filter(|q| q.depth.0 < q.depth.1)
                .count();
            for i in 0..used.saturating_sub(1) {
                let part = at.partial(i);
                for r in 0..l.m {
                    let row = std::slice::from_raw_parts_mut((cp as *mut f32).add(r * l.ldc), l.n);
                    for (x, y) in row.iter_mut().zip(&part[r * l.n..(r + 1) * l.n]) {
                        *x += y;
                    }
                }
            }
        }
    }
}

/// One single-threaded f32 product `C = alpha·op(A)·op(B) + beta·C` of `(m, n, k)` in
/// `precision`: through the own kernels when `own` or in bf16 (with `ws` reserved for it),
/// else through the `gemm` crate.
///
/// # Safety
/// The operands cover their extents; C is writable.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn single(
    ws: &mut Workspace,
    (own, precision): (bool, Precision),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Operand,
    b: Operand,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    if own || precision != Precision::F32 {
        let b = sgemm::B::Stored(b);
        sgemm::gemm_with(ws, precision, m, n, k, alpha, a, b, beta, c, ldc);
    } else {
        let strides = |o: &Operand| if o.trans { (1, o.ld) } else { (o.ld, 1) };
        crate_block(
            m,
            n,
            k,
            c,
            ldc,
            beta != 0.0,
            a.ptr,
            strides(&a),
            b.ptr,
            strides(&b),
            alpha,
            beta,
        );
    }
}

/// One block through the `gemm` crate, single-threaded.
#[allow(clippy::too_many_arguments)]
unsafe fn crate_block<T: 'static + Copy>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    ldd: usize,
    read_dst: bool,
    a: *const T,
    (a_rs, a_cs): (usize, usize),
    b: *const T,
    (b_rs, b_cs): (usize, usize),
    alpha: T,
    beta: T,
) {
    // The crate computes dst = alpha·dst + beta·lhs·rhs: its scales are swapped against BLAS,
    // and `read_dst = false` ignores its alpha.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldd as isize,
        read_dst,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        beta,
        alpha,
        false,
        false,
        false,
        Parallelism::None,
    )
}

unsafe fn run_crate<T: 'static + Copy + Send + Sync>(
    threads: &Threads,
    args: &GemmArgs,
    split: Split,
    parts: usize,
    alpha: T,
    beta: T,
) {
    let l = args.layout;
    let size = std::mem::size_of::<T>();
    let ((a_rs, a_cs), (b_rs, b_cs)) = strides(&l);
    let (a, b, c) = (base::<T>(&args.a), base::<T>(&args.b), base::<T>(&args.c));
    let count = parts_of(&l, split, parts).count();
    for p in 0..l.batch {
        let job = |t: usize| {
            let part = parts_of(&l, split, parts)
                .nth(t)
                .expect("a part per thread");
            let ((i0, i1), (j0, j1)) = (part.rows, part.cols);
            if i0 >= i1 || j0 >= j1 {
                return;
            }
            crate_block(
                i1 - i0,
                j1 - j0,
                l.k,
                (c + (p * l.stride_c + i0 * l.ldc + j0) * size) as *mut T,
                l.ldc,
                args.beta != 0.0,
                (a + (p * l.stride_a + i0 * a_rs) * size) as *const T,
                (a_rs, a_cs),
                (b + (p * l.stride_b + j0 * b_cs) * size) as *const T,
                (b_rs, b_cs),
                alpha,
                beta,
            )
        };
        threads.run(count, &job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> GemmLayout {
        GemmLayout::dense(m, n, k, ta, tb)
    }

    #[test]
    fn splits_follow_the_largest_operand() {
        // Forward x·W with W stored [in, out]: W's rows are the depth.
        assert_eq!(
            choose(&layout(64, 1000, 784, false, false), 2, true),
            Split::Depth
        );
        // Weight gradient xᵀ·dy: the output [in, out] is largest; its rows.
        assert_eq!(
            choose(&layout(784, 1000, 64, true, false), 2, true),
            Split::Rows
        );
        // Input gradient dy·Wᵀ: W's rows are the output columns.
        assert_eq!(
            choose(&layout(64, 784, 1000, false, true), 2, true),
            Split::Cols
        );
        // Too small to split, or one thread, or no depth split allowed.
        assert_eq!(choose(&layout(8, 8, 8, false, false), 2, true), Split::None);
        assert_eq!(
            choose(&layout(640, 640, 640, false, false), 1, true),
            Split::None
        );
        assert_eq!(
            choose(&layout(64, 1000, 784, false, false), 2, false),
            Split::Cols
        );
        // A depth too short for a kernel block per thread: the longer other dimension, or
        // the depth still when no other is long enough.
        assert_eq!(
            choose(&layout(32, 1024, 256, false, false), 2, true),
            Split::Cols
        );
        assert_eq!(
            choose(&layout(16, 16, 400, true, false), 2, true),
            Split::Depth
        );
    }

    #[test]
    fn parts_cover_the_split_dimension() {
        let l = layout(100, 37, 530, false, false);
        for split in [Split::Rows, Split::Cols, Split::Depth] {
            let ps: Vec<Part> = parts_of(&l, split, 3).collect();
            assert_eq!(ps.len(), 3);
            let (first, last) = match split {
                Split::Rows => (ps[0].rows.0, ps[2].rows.1),
                Split::Cols => (ps[0].cols.0, ps[2].cols.1),
                _ => (ps[0].depth.0, ps[2].depth.1),
            };
            assert_eq!(first, 0);
            assert_eq!(
                last,
                match split {
                    Split::Rows => 100,
                    Split::Cols => 37,
                    _ => 530,
                }
            );
        }
    }
}

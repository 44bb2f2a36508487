//! Matrix multiply through the `gemm` crate (AVX-512 kernels chosen at run time).

use super::parallel::Threads;
use gemm::Parallelism;
use singa_core::{BufView, DType, Error, GemmArgs, Result};

/// Below this many multiply-adds a product runs on one thread: splitting costs more than it saves.
const PARALLEL_MIN_FLOPS: usize = 1 << 17;

/// The address of element `offset` of a view.
fn base<T>(v: &BufView) -> *mut T {
    (v.handle as *mut T).wrapping_add(v.offset)
}

/// Runs `args` (checked by the caller) on `threads`.
///
/// # Safety
/// The views are live allocations of the CPU device, large enough for the layout.
pub(crate) unsafe fn gemm(threads: &Threads, args: &GemmArgs) -> Result<()> {
    match args.c.dtype {
        DType::F32 => run::<f32>(threads, args, args.alpha, args.beta),
        DType::F16 => run::<half::f16>(
            threads,
            args,
            half::f16::from_f32(args.alpha),
            half::f16::from_f32(args.beta),
        ),
        d => Err(Error::unsupported("cpu", format!("gemm on {d} tensors"))),
    }
}

unsafe fn run<T: 'static + Copy + Send + Sync>(
    threads: &Threads,
    args: &GemmArgs,
    alpha: T,
    beta: T,
) -> Result<()> {
    let l = args.layout;
    if l.m == 0 || l.n == 0 {
        return Ok(());
    }
    // Row-major storage: a row step is the leading dimension, a column step is 1; a transposed
    // operand swaps the two.
    let (a_rs, a_cs) = if l.trans_a {
        (1, l.lda as isize)
    } else {
        (l.lda as isize, 1)
    };
    let (b_rs, b_cs) = if l.trans_b {
        (1, l.ldb as isize)
    } else {
        (l.ldb as isize, 1)
    };
    let work = l.m * l.n * l.k.max(1);
    let parallelism = if threads.count() > 1 && work >= PARALLEL_MIN_FLOPS {
        Parallelism::Rayon(threads.count())
    } else {
        Parallelism::None
    };
    let (a, b, c) = (base::<T>(&args.a), base::<T>(&args.b), base::<T>(&args.c));
    let (a, b, c) = (a as usize, b as usize, c as usize);
    let one = |p: usize| {
        let size = std::mem::size_of::<T>();
        // The gemm crate computes dst = alpha·dst + beta·lhs·rhs: its scales are swapped
        // against BLAS, and `read_dst = false` ignores its alpha.
        gemm::gemm(
            l.m,
            l.n,
            l.k,
            (c + p * l.stride_c * size) as *mut T,
            1,
            l.ldc as isize,
            args.beta != 0.0,
            (a + p * l.stride_a * size) as *const T,
            a_cs,
            a_rs,
            (b + p * l.stride_b * size) as *const T,
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    };
    match parallelism {
        Parallelism::None => (0..l.batch).for_each(one),
        _ => threads.install(|| (0..l.batch).for_each(one)),
    }
    Ok(())
}

//! Matrix products through cuBLAS, in the device's precision.
//!
//! singa's matrices are row-major and cuBLAS's column-major: the row-major product
//! `C = op(A)·op(B)` is computed as the column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`, which reads the
//! same memory with the operands swapped. In bf16 or f16 precision the f32 inputs are first
//! rounded (as every device rounds them: see `singa_core::Precision`) into scratch memory,
//! then multiplied by the tensor cores with f32 accumulation.

use crate::device::CudaDevice;
use crate::driver::Fallible;
use crate::launch::{blocks, launch, ptr};
use cudarc::cublas::result as blas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use singa_core::{BufView, DType, Error, GemmArgs, Precision, Result};
use std::ffi::c_void;

/// One strided-batched product on device addresses, row-major, see `singa_core::GemmLayout`.
pub(crate) struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub stride_a: usize,
    pub trans_a: bool,
    pub b: u64,
    pub ldb: usize,
    pub stride_b: usize,
    pub trans_b: bool,
    pub c: u64,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    pub alpha: f32,
    pub beta: f32,
    /// The type of `a` and `b` as stored.
    pub inputs: cudaDataType,
    /// The type of `c`.
    pub output: cudaDataType,
}

fn op(transposed: bool) -> cublasOperation_t {
    if transposed {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

fn int(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::unsupported("cuda", format!("a product with {what} = {x}")))
}

/// Queues `p` (`k ≥ 1`) on the device's stream.
///
/// # Safety
/// The addresses and strides describe live device memory of the stated types.
pub(crate) unsafe fn run(dev: &CudaDevice, p: &Product) -> Result<()> {
    let (alpha, beta) = (p.alpha, p.beta);
    blas::gemm_strided_batched_ex(
        dev.blas_handle(),
        op(p.trans_b),
        op(p.trans_a),
        int(p.n, "n")?,
        int(p.m, "m")?,
        int(p.k, "k")?,
        &alpha as *const f32 as *const c_void,
        p.b as *const c_void,
        p.inputs,
        int(p.ldb.max(1), "ldb")?,
        p.stride_b as i64,
        p.a as *const c_void,
        p.inputs,
        int(p.lda.max(1), "lda")?,
        p.stride_a as i64,
        &beta as *const f32 as *const c_void,
        p.c as *mut c_void,
        p.output,
        int(p.ldc.max(1), "ldc")?,
        p.stride_c as i64,
        int(p.batch, "batch")?,
        cublasComputeType_t::CUBLAS_COMPUTE_32F,
        cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
    )
    .or_device("cuBLAS product")
}

/// The cuBLAS type of product inputs in `precision`, if they are rounded.
pub(crate) fn rounded_type(precision: Precision) -> Option<cudaDataType> {
    match precision {
        Precision::F32 => None,
        Precision::BF16 => Some(cudaDataType::CUDA_R_16BF),
        Precision::F16 => Some(cudaDataType::CUDA_R_16F),
    }
}

/// Rounds `n` f32 values at `src` to the device's product precision into `dst` (2 bytes each).
///
/// # Safety
/// Both ranges are live device memory.
pub(crate) unsafe fn round_inputs(dev: &CudaDevice, src: u64, dst: u64, n: usize) -> Result<()> {
    let kind = (dev.precision() == Precision::F16) as i32;
    let count = n as i64;
    launch!(dev, round_product_input, blocks(n), 256; src, dst, kind, count)
}

fn blas_type(dtype: DType) -> cudaDataType {
    match dtype {
        DType::F16 => cudaDataType::CUDA_R_16F,
        _ => cudaDataType::CUDA_R_32F,
    }
}

/// [`singa_core::Device::gemm`]: f32 operands (rounded in bf16/f16 precision), or all-f16.
///
/// # Safety
/// The views are live allocations of this device, as the trait documents.
pub(crate) unsafe fn gemm(dev: &CudaDevice, args: &GemmArgs) -> Result<()> {
    let l = &args.layout;
    let dtype = args.c.dtype;
    if !matches!(dtype, DType::F32 | DType::F16) || args.a.dtype != dtype || args.b.dtype != dtype {
        return Err(Error::unsupported(
            "cuda",
            format!(
                "gemm of {} by {} into {}",
                args.a.dtype, args.b.dtype, args.c.dtype
            ),
        ));
    }
    if l.m == 0 || l.n == 0 || l.batch == 0 {
        return Ok(());
    }
    if l.k == 0 {
        return scale(dev, args);
    }
    let mut product = Product {
        m: l.m,
        n: l.n,
        k: l.k,
        a: ptr(&args.a),
        lda: l.lda,
        stride_a: l.stride_a,
        trans_a: l.trans_a,
        b: ptr(&args.b),
        ldb: l.ldb,
        stride_b: l.stride_b,
        trans_b: l.trans_b,
        c: ptr(&args.c),
        ldc: l.ldc,
        stride_c: l.stride_c,
        batch: l.batch,
        alpha: args.alpha,
        beta: args.beta,
        inputs: blas_type(dtype),
        output: blas_type(dtype),
    };
    match rounded_type(dev.precision()).filter(|_| dtype == DType::F32) {
        None => run(dev, &product),
        Some(rounded) => {
            let mut scratch = dev.gpu.scratch.lock().unwrap_or_else(|e| e.into_inner());
            let [a, b] = scratch.regions(dev.memory(), [args.a.len * 2, args.b.len * 2])?;
            round_inputs(dev, product.a, a, args.a.len)?;
            round_inputs(dev, product.b, b, args.b.len)?;
            (product.a, product.b, product.inputs) = (a, b, rounded);
            run(dev, &product)
        }
    }
}

/// `C = beta·C`: a product over nothing.
unsafe fn scale(dev: &CudaDevice, args: &GemmArgs) -> Result<()> {
    let l = &args.layout;
    let dtype = args.c.dtype as i32;
    let c: &BufView = &args.c;
    let (m, n, ldc, stride, batch) = (
        l.m as i64,
        l.n as i64,
        l.ldc as i64,
        l.stride_c as i64,
        l.batch as i64,
    );
    launch!(dev, scale_matrices, blocks(l.m * l.n * l.batch), 256;
        ptr(c), dtype, args.beta, m, n, ldc, stride, batch)
}

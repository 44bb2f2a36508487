//! Convolutions as im2col + cuBLAS products, a chunk of images at a time.
//!
//! The patches of a chunk of images go to scratch memory as `[image][channel·kh·kw][position]`;
//! each group's product then runs batched over the chunk's images (one cuBLAS call per group).
//! In bf16/f16 precision the patches, weights and output gradients are rounded into scratch
//! first, as the device's products round their inputs.

use crate::device::CudaDevice;
use crate::launch::{blocks, launch, ptr};
use crate::products::{round_inputs, rounded_type, run, Product};
use cudarc::cublas::sys::cudaDataType;
use singa_core::{BufView, ConvShape, Error, Result};

/// Elements of patches (or of output gradients, whichever is larger) a chunk may hold: f32,
/// 128 MiB; the filter gradient holds about 2.5 times that with its rearranged copies.
const CHUNK_ELEMENTS: usize = 32 << 20;

/// The sizes every pass needs, as the kernels take them.
struct Geometry {
    channels: usize,
    height: usize,
    width: usize,
    /// Rows of the patch matrix of one image: `channels · kh · kw`.
    rows: usize,
    /// Output positions of one image.
    positions: usize,
    group_rows: usize,
    group_filters: usize,
    images_per_chunk: usize,
}

impl Geometry {
    fn of(s: &ConvShape) -> Result<Geometry> {
        if let Some(problem) = s.problem() {
            return Err(Error::invalid(format!("convolution: {problem}")));
        }
        let kernel = s.kernel_h * s.kernel_w;
        let rows = s.channels * kernel;
        let positions = s.out_h() * s.out_w();
        Ok(Geometry {
            channels: s.channels,
            height: s.height,
            width: s.width,
            rows,
            positions,
            group_rows: s.group_channels() * kernel,
            group_filters: s.group_filters(),
            images_per_chunk: (CHUNK_ELEMENTS / (rows.max(s.filters) * positions).max(1))
                .clamp(1, s.batch.max(1)),
        })
    }

    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// im2col (`forward`) or col2im (`!forward`) of `images` images.
unsafe fn patches(
    dev: &CudaDevice,
    s: &ConvShape,
    image: u64,
    col: u64,
    images: usize,
    forward: bool,
) -> Result<()> {
    let args = [
        images as i64,
        s.channels as i64,
        s.height as i64,
        s.width as i64,
        s.kernel_h as i64,
        s.kernel_w as i64,
        s.stride_h as i64,
        s.stride_w as i64,
        s.pad_h as i64,
        s.pad_w as i64,
        s.out_h() as i64,
        s.out_w() as i64,
    ];
    let [n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow] = args;
    if forward {
        let total = images * s.channels * s.kernel_h * s.kernel_w * s.out_h() * s.out_w();
        launch!(dev, im2col, blocks(total), 256; image, col, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)
    } else {
        let total = images * s.channels * s.height * s.width;
        launch!(dev, col2im, blocks(total), 256; col, image, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)
    }
}

/// The f32 buffer at `src` (`n` values) as the products read it: itself, or rounded into
/// `rounded`.
unsafe fn as_input(dev: &CudaDevice, src: u64, rounded: u64, n: usize) -> Result<u64> {
    if rounded_type(dev.precision()).is_none() {
        return Ok(src);
    }
    round_inputs(dev, src, rounded, n)?;
    Ok(rounded)
}

/// Bytes of a product input of `n` values in the device's precision (0 when not rounded).
fn rounded_bytes(dev: &CudaDevice, n: usize) -> usize {
    if rounded_type(dev.precision()).is_some() {
        2 * n
    } else {
        0
    }
}

/// Element sizes of the product inputs.
fn input_size(dev: &CudaDevice) -> u64 {
    if rounded_type(dev.precision()).is_some() {
        2
    } else {
        4
    }
}

fn input_type(dev: &CudaDevice) -> cudaDataType {
    rounded_type(dev.precision()).unwrap_or(cudaDataType::CUDA_R_32F)
}

/// `y = x ⊛ w`.
pub(crate) unsafe fn forward(
    dev: &CudaDevice,
    s: &ConvShape,
    x: &BufView,
    w: &BufView,
    y: &BufView,
) -> Result<()> {
    let g = Geometry::of(s)?;
    if s.batch == 0 || g.positions == 0 || s.filters == 0 {
        return Ok(());
    }
    if g.rows == 0 {
        // No input channels: sums over nothing.
        return dev_zero(dev, y);
    }
    let chunk_len = g.images_per_chunk * g.rows * g.positions;
    let mut scratch = dev.gpu.scratch.lock().unwrap_or_else(|e| e.into_inner());
    let [col, col_in, w_in] = scratch.regions(
        dev.memory(),
        [
            4 * chunk_len,
            rounded_bytes(dev, chunk_len),
            rounded_bytes(dev, w.len),
        ],
    )?;
    let weights = as_input(dev, ptr(w), w_in, w.len)?;
    let size = input_size(dev);
    for first in (0..s.batch).step_by(g.images_per_chunk) {
        let images = g.images_per_chunk.min(s.batch - first);
        patches(
            dev,
            s,
            ptr(x) + (4 * first * g.image_len()) as u64,
            col,
            images,
            true,
        )?;
        let patches_in = as_input(dev, col, col_in, images * g.rows * g.positions)?;
        for group in 0..s.groups {
            run(
                dev,
                &Product {
                    m: g.group_filters,
                    n: g.positions,
                    k: g.group_rows,
                    a: weights + size * (group * g.group_filters * g.group_rows) as u64,
                    lda: g.group_rows,
                    stride_a: 0,
                    trans_a: false,
                    b: patches_in + size * (group * g.group_rows * g.positions) as u64,
                    ldb: g.positions,
                    stride_b: g.rows * g.positions,
                    trans_b: false,
                    c: ptr(y)
                        + 4 * ((first * s.filters + group * g.group_filters) * g.positions) as u64,
                    ldc: g.positions,
                    stride_c: s.filters * g.positions,
                    batch: images,
                    alpha: 1.0,
                    beta: 0.0,
                    inputs: input_type(dev),
                    output: cudaDataType::CUDA_R_32F,
                },
            )?;
        }
    }
    Ok(())
}

/// `dx` from `dy` and `w`: patch gradients `wᵀ·dy`, then col2im.
pub(crate) unsafe fn backward_data(
    dev: &CudaDevice,
    s: &ConvShape,
    dy: &BufView,
    w: &BufView,
    dx: &BufView,
) -> Result<()> {
    let g = Geometry::of(s)?;
    if s.batch == 0 || g.rows == 0 {
        return Ok(());
    }
    if g.positions == 0 || s.filters == 0 {
        // No output reads the input: its gradient is zero.
        return dev_zero(dev, dx);
    }
    let chunk_len = g.images_per_chunk * g.rows * g.positions;
    let dy_chunk = g.images_per_chunk * s.filters * g.positions;
    let mut scratch = dev.gpu.scratch.lock().unwrap_or_else(|e| e.into_inner());
    let [col, dy_in, w_in] = scratch.regions(
        dev.memory(),
        [
            4 * chunk_len,
            rounded_bytes(dev, dy_chunk),
            rounded_bytes(dev, w.len),
        ],
    )?;
    let weights = as_input(dev, ptr(w), w_in, w.len)?;
    let size = input_size(dev);
    for first in (0..s.batch).step_by(g.images_per_chunk) {
        let images = g.images_per_chunk.min(s.batch - first);
        let grads = ptr(dy) + (4 * first * s.filters * g.positions) as u64;
        let grads = as_input(dev, grads, dy_in, images * s.filters * g.positions)?;
        for group in 0..s.groups {
            run(
                dev,
                &Product {
                    m: g.group_rows,
                    n: g.positions,
                    k: g.group_filters,
                    a: weights + size * (group * g.group_filters * g.group_rows) as u64,
                    lda: g.group_rows,
                    stride_a: 0,
                    trans_a: true,
                    b: grads + size * (group * g.group_filters * g.positions) as u64,
                    ldb: g.positions,
                    stride_b: s.filters * g.positions,
                    trans_b: false,
                    c: col + 4 * (group * g.group_rows * g.positions) as u64,
                    ldc: g.positions,
                    stride_c: g.rows * g.positions,
                    batch: images,
                    alpha: 1.0,
                    beta: 0.0,
                    inputs: input_type(dev),
                    output: cudaDataType::CUDA_R_32F,
                },
            )?;
        }
        patches(
            dev,
            s,
            ptr(dx) + (4 * first * g.image_len()) as u64,
            col,
            images,
            false,
        )?;
    }
    Ok(())
}

/// `dw` from `x` and `dy`, summed over the batch: per chunk of images, the patches and the
/// output gradients are laid out image after image along one axis (`[row][image][position]`,
/// `[filter][image][position]`), so that each group's gradient is one product whose depth runs
/// over every position of every image of the chunk.
pub(crate) unsafe fn backward_filter(
    dev: &CudaDevice,
    s: &ConvShape,
    x: &BufView,
    dy: &BufView,
    dw: &BufView,
) -> Result<()> {
    let g = Geometry::of(s)?;
    if s.batch == 0 || g.positions == 0 || g.rows == 0 || s.filters == 0 {
        return dev_zero(dev, dw);
    }
    let chunk_len = g.images_per_chunk * g.rows * g.positions;
    let dy_chunk = g.images_per_chunk * s.filters * g.positions;
    let mut scratch = dev.gpu.scratch.lock().unwrap_or_else(|e| e.into_inner());
    let [col, col_t, dy_t, col_in, dy_in] = scratch.regions(
        dev.memory(),
        [
            4 * chunk_len,
            4 * chunk_len,
            4 * dy_chunk,
            rounded_bytes(dev, chunk_len),
            rounded_bytes(dev, dy_chunk),
        ],
    )?;
    let size = input_size(dev);
    for first in (0..s.batch).step_by(g.images_per_chunk) {
        let images = g.images_per_chunk.min(s.batch - first);
        let span = images * g.positions;
        patches(
            dev,
            s,
            ptr(x) + (4 * first * g.image_len()) as u64,
            col,
            images,
            true,
        )?;
        swap_outer_axes(dev, col, col_t, (images, g.rows, g.positions))?;
        let grads = ptr(dy) + (4 * first * s.filters * g.positions) as u64;
        swap_outer_axes(dev, grads, dy_t, (images, s.filters, g.positions))?;
        let patches_in = as_input(dev, col_t, col_in, images * g.rows * g.positions)?;
        let grads_in = as_input(dev, dy_t, dy_in, images * s.filters * g.positions)?;
        for group in 0..s.groups {
            run(
                dev,
                &Product {
                    m: g.group_filters,
                    n: g.group_rows,
                    k: span,
                    a: grads_in + size * (group * g.group_filters * span) as u64,
                    lda: span,
                    stride_a: 0,
                    trans_a: false,
                    b: patches_in + size * (group * g.group_rows * span) as u64,
                    ldb: span,
                    stride_b: 0,
                    trans_b: true,
                    c: ptr(dw) + 4 * (group * g.group_filters * g.group_rows) as u64,
                    ldc: g.group_rows,
                    stride_c: 0,
                    batch: 1,
                    alpha: 1.0,
                    beta: if first == 0 { 0.0 } else { 1.0 },
                    inputs: input_type(dev),
                    output: cudaDataType::CUDA_R_32F,
                },
            )?;
        }
    }
    Ok(())
}

/// `dst[j][i][k] = src[i][j][k]` for `src` of shape `[a][b][c]` (f32).
unsafe fn swap_outer_axes(
    dev: &CudaDevice,
    src: u64,
    dst: u64,
    (a, b, c): (usize, usize, usize),
) -> Result<()> {
    let (a64, b64, c64) = (a as i64, b as i64, c as i64);
    launch!(dev, swap_outer_axes, blocks(a * b * c), 256; src, dst, a64, b64, c64)
}

unsafe fn dev_zero(dev: &CudaDevice, v: &BufView) -> Result<()> {
    if v.len == 0 {
        return Ok(());
    }
    cudarc::driver::result::memset_d8_async(ptr(v), 0, 4 * v.len, dev.cu_stream())
        .map_err(|e| Error::device("cuda", format!("zeroing: {e}")))
}

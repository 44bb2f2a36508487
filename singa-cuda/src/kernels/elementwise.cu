// Elementwise kernels: conversions, fills, draws, unary and binary functions, scaled sums,
// broadcasts along the middle axis, and the rounding of product inputs.

extern "C" __global__ void cast_any(const void* src, int src_dtype, void* dst, int dst_dtype, i64 n) {
    GRID_STRIDE(i, n) store_any(dst, dst_dtype, i, load_any(src, src_dtype, i));
}

extern "C" __global__ void fill_any(void* dst, int dtype, i64 n, double value) {
    GRID_STRIDE(i, n) store_any(dst, dtype, i, value);
}

// Row-by-row copies of a block, for elements of 1, 2 or 4 bytes.
extern "C" __global__ void copy2d_u8(const u8* src, i64 src_ld, u8* dst, i64 dst_ld, i64 rows, i64 cols) {
    GRID_STRIDE(i, rows * cols) dst[(i / cols) * dst_ld + i % cols] = src[(i / cols) * src_ld + i % cols];
}
extern "C" __global__ void copy2d_u16(const u16* src, i64 src_ld, u16* dst, i64 dst_ld, i64 rows, i64 cols) {
    GRID_STRIDE(i, rows * cols) dst[(i / cols) * dst_ld + i % cols] = src[(i / cols) * src_ld + i % cols];
}
extern "C" __global__ void copy2d_u32(const unsigned* src, i64 src_ld, unsigned* dst, i64 dst_ld, i64 rows, i64 cols) {
    GRID_STRIDE(i, rows * cols) dst[(i / cols) * dst_ld + i % cols] = src[(i / cols) * src_ld + i % cols];
}

// kind: 0 uniform on [a, b), 1 normal with mean a and deviation b, 2 b with probability a.
// Rounded operations (no fused multiply-add) so that every device draws the same floats.
extern "C" __global__ void random_fill(float* y, i64 n, int kind, float a, float b, u64 seed, u64 offset) {
    GRID_STRIDE(i, n) {
        u64 at = offset + (u64)i;
        float v;
        if (kind == 0) v = __fadd_rn(a, __fmul_rn(__fsub_rn(b, a), uniform_at(seed, at)));
        else if (kind == 1) v = __fadd_rn(a, __fmul_rn(b, normal_at(seed, at)));
        else v = uniform_at(seed, at) < a ? b : 0.0f;
        y[i] = v;
    }
}

// Unary op codes: singa_core::UnaryOp in declaration order; p0, p1 its parameters.
__device__ __forceinline__ float unary_value(int op, float x, float p0, float p1) {
    switch (op) {
        case 0: return x;
        case 1: return fmaxf(x, 0.0f);
        case 2: return x > 0.0f ? x : p0 * x;
        case 3: return 1.0f / (1.0f + expf(-x));
        case 4: return tanhf(x);
        case 5: return 1.7159f * tanhf((2.0f / 3.0f) * x);
        case 6: return expf(x);
        case 7: return logf(x);
        case 8: return sqrtf(x);
        case 9: return x * x;
        case 10: return fabsf(x);
        case 11: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
        case 12: return -x;
        default: return fminf(fmaxf(x, p0), p1);
    }
}

__device__ __forceinline__ float unary_derivative(int op, float x, float y, float p0, float p1) {
    switch (op) {
        case 0: return 1.0f;
        case 1: return x > 0.0f ? 1.0f : 0.0f;
        case 2: return x > 0.0f ? 1.0f : p0;
        case 3: return y * (1.0f - y);
        case 4: return 1.0f - y * y;
        case 5: { float t = y / 1.7159f; return 1.7159f * (2.0f / 3.0f) * (1.0f - t * t); }
        case 6: return y;
        case 7: return 1.0f / x;
        case 8: return 0.5f / y;
        case 9: return 2.0f * x;
        case 10: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
        case 11: return 0.0f;
        case 12: return -1.0f;
        default: return (p0 <= x && x <= p1) ? 1.0f : 0.0f;
    }
}

extern "C" __global__ void unary(int op, float p0, float p1, const float* x, float* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = unary_value(op, x[i], p0, p1);
}

extern "C" __global__ void unary_backward(int op, float p0, float p1, const float* x, const float* y,
                                          const float* dy, float* dx, i64 n) {
    GRID_STRIDE(i, n) dx[i] = dy[i] * unary_derivative(op, x[i], y[i], p0, p1);
}

// Binary op codes: singa_core::BinaryOp in declaration order.
extern "C" __global__ void binary(int op, const float* a, const float* b, float* y, i64 n) {
    GRID_STRIDE(i, n) {
        float p = a[i], q = b[i], r;
        switch (op) {
            case 0: r = p + q; break;
            case 1: r = p - q; break;
            case 2: r = p * q; break;
            case 3: r = p / q; break;
            case 4: r = fmaxf(p, q); break;
            default: r = fminf(p, q); break;
        }
        y[i] = r;
    }
}

extern "C" __global__ void axpby(float alpha, const float* x, float beta, float* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = alpha * x[i] + (beta == 0.0f ? 0.0f : beta * y[i]);
}

extern "C" __global__ void affine(const float* x, float* y, float scale, float shift, i64 n) {
    GRID_STRIDE(i, n) y[i] = scale * x[i] + shift;
}

// y[o, m, i] += v[m] (mul = 0) or *= v[m] (mul = 1).
extern "C" __global__ void broadcast_mid(int mul, const float* v, float* y, i64 mid, i64 inner, i64 n) {
    GRID_STRIDE(i, n) {
        float s = v[(i / inner) % mid];
        y[i] = mul ? y[i] * s : y[i] + s;
    }
}

// dst[j][i][k] = src[i][j][k] for src of shape [a][b][c]: swaps the two outer axes.
extern "C" __global__ void swap_outer_axes(const float* src, float* dst, i64 a, i64 b, i64 c) {
    GRID_STRIDE(e, a * b * c) {
        i64 k = e % c, j = (e / c) % b, i = e / (b * c);
        dst[(j * a + i) * c + k] = src[e];
    }
}

// The input of a product in bf16 (kind 0) or f16 (kind 1) precision.
extern "C" __global__ void round_product_input(const float* x, u16* y, int kind, i64 n) {
    GRID_STRIDE(i, n) y[i] = kind == 0 ? f32_to_bf16_flush(x[i]) : f32_to_f16(x[i]);
}

// C = beta·C over the m × n blocks of a batch (a product with nothing to sum).
// (f32 or f16 matrices, as the products take.)
extern "C" __global__ void scale_matrices(void* c, int dtype, float beta, i64 m, i64 n, i64 ldc, i64 stride,
                                          i64 batch) {
    GRID_STRIDE(i, batch * m * n) {
        i64 at = (i / (m * n)) * stride + ((i / n) % m) * ldc + i % n;
        store_any(c, dtype, at, beta == 0.0f ? 0.0 : (double)(beta * (float)load_any(c, dtype, at)));
    }
}

// Moves the fault word to the host's report and clears it (one thread).
extern "C" __global__ void take_fault(u64* fault, u64* report) {
    for (int i = 0; i < 4; i++) {
        report[i] = fault[i];
        fault[i] = 0;
    }
}

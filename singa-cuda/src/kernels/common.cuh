// What every kernel shares: integer types, grid-stride loops, element conversions, the
// counter-based random numbers of singa_core::rng, block reductions and fault reports.
//
// NVRTC compiles this without any header, so nothing here includes one: f16 conversions are
// PTX instructions, bf16 ones bit operations.

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned short u16;
typedef unsigned char u8;

#define GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

// dtype codes: singa_core::DType as u8.
#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2
#define DT_I32 3
#define DT_U8 4

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float x) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((unsigned)h) << 16); }

// Round to nearest, ties to even; a NaN stays a quiet NaN (as the `half` crate converts).
__device__ __forceinline__ u16 f32_to_bf16(float x) {
    unsigned b = __float_as_uint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (u16)((b >> 16) | 0x40u);
    return (u16)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// As AVX-512 BF16's vcvtneps2bf16 (singa_core::bf16_bits): subnormals become signed zeros.
// Products in bf16 precision round their inputs this way on every device.
__device__ __forceinline__ u16 f32_to_bf16_flush(float x) {
    unsigned b = __float_as_uint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (u16)((b >> 16) | 0x40u);
    if ((b & 0x7f800000u) == 0) return (u16)((b >> 16) & 0x8000u);
    return (u16)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ double load_any(const void* p, int dtype, i64 i) {
    switch (dtype) {
        case DT_F32: return ((const float*)p)[i];
        case DT_F16: return f16_to_f32(((const u16*)p)[i]);
        case DT_BF16: return bf16_to_f32(((const u16*)p)[i]);
        case DT_I32: return ((const int*)p)[i];
        default: return ((const u8*)p)[i];
    }
}

// Floats round to nearest (through f32, as every device converts); integers truncate toward
// zero and saturate, NaN becoming 0 (Rust's `as`).
__device__ __forceinline__ void store_any(void* p, int dtype, i64 i, double v) {
    switch (dtype) {
        case DT_F32: ((float*)p)[i] = (float)v; break;
        case DT_F16: ((u16*)p)[i] = f32_to_f16((float)v); break;
        case DT_BF16: ((u16*)p)[i] = f32_to_bf16((float)v); break;
        case DT_I32:
            ((int*)p)[i] = v != v ? 0
                : v >= 2147483647.0 ? 2147483647
                : v <= -2147483648.0 ? (-2147483647 - 1)
                : (int)v;
            break;
        default: ((u8*)p)[i] = v != v ? 0 : v >= 255.0 ? 255 : v <= 0.0 ? 0 : (u8)v; break;
    }
}

// singa_core::rng: SplitMix64 at position i of the stream keyed by seed.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ u64 bits_at(u64 seed, u64 i) {
    return mix64(mix64(seed) + (i + 1ULL) * 0x9e3779b97f4a7c15ULL);
}

__device__ __forceinline__ float uniform_at(u64 seed, u64 i) {
    return __fmul_rn((float)(bits_at(seed, i) >> 40), 1.0f / 16777216.0f);
}

__device__ __forceinline__ float normal_at(u64 seed, u64 i) {
    u64 b = bits_at(seed, i);
    double u1 = ((double)(b >> 40) + 1.0) * (1.0 / 16777216.0);
    double u2 = (double)((b >> 8) & 0xffffffULL) * (1.0 / 16777216.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// The sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread
// gets it. `shared` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? shared[lane] : 0.0f;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    v = shared[0];
    __syncthreads();
    return v;
}

__device__ __forceinline__ float block_max(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? shared[lane] : -__int_as_float(0x7f800000);
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    v = shared[0];
    __syncthreads();
    return v;
}

// Bad input found on the device (a label or id outside its range): the first one is kept in
// `fault` (kind, value, position, bound) and the host reports it at the next read or
// synchronize, as CUDA reports device-side errors.
#define FAULT_LABEL 1
#define FAULT_ROW_ID 2
#define FAULT_ARGMAX 3

__device__ __forceinline__ void report_fault(u64* fault, u64 kind, i64 value, i64 position, i64 bound) {
    if (atomicCAS(fault, 0ULL, kind) == 0ULL) {
        fault[1] = (u64)value;
        fault[2] = (u64)position;
        fault[3] = (u64)bound;
    }
}

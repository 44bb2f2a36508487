// Reductions along the middle axis and the row-wise kernels: softmax, cross-entropy, top-k,
// and row lookups (embeddings).

// y[o, i] = beta·y[o, i] + alpha·reduce_m x[o, m, i]; op: 0 sum, 1 mean, 2 max.
// One thread per output: the right shape when `inner` is wide (consecutive threads read
// consecutive addresses).
extern "C" __global__ void reduce_mid_threads(int op, const float* x, float* y, i64 outer, i64 mid, i64 inner,
                                              float alpha, float beta) {
    GRID_STRIDE(t, outer * inner) {
        i64 o = t / inner, i = t % inner;
        const float* p = x + o * mid * inner + i;
        float acc = op == 2 ? -__int_as_float(0x7f800000) : 0.0f;
        for (i64 m = 0; m < mid; m++) acc = op == 2 ? fmaxf(acc, p[m * inner]) : acc + p[m * inner];
        if (op == 1) acc /= (float)(mid > 0 ? mid : 1);
        y[t] = alpha * acc + (beta == 0.0f ? 0.0f : beta * y[t]);
    }
}

// One block per output: the right shape when `inner` is narrow and `mid` long.
extern "C" __global__ void reduce_mid_blocks(int op, const float* x, float* y, i64 outer, i64 mid, i64 inner,
                                             float alpha, float beta) {
    __shared__ float shared[32];
    for (i64 t = blockIdx.x; t < outer * inner; t += gridDim.x) {
        i64 o = t / inner, i = t % inner;
        const float* p = x + o * mid * inner + i;
        float acc = op == 2 ? -__int_as_float(0x7f800000) : 0.0f;
        for (i64 m = threadIdx.x; m < mid; m += blockDim.x)
            acc = op == 2 ? fmaxf(acc, p[m * inner]) : acc + p[m * inner];
        acc = op == 2 ? block_max(acc, shared) : block_sum(acc, shared);
        if (threadIdx.x == 0) {
            if (op == 1) acc /= (float)(mid > 0 ? mid : 1);
            y[t] = alpha * acc + (beta == 0.0f ? 0.0f : beta * y[t]);
        }
    }
}

// Row-wise softmax, one block per row.
extern "C" __global__ void softmax_rows(const float* x, float* y, i64 rows, i64 cols) {
    __shared__ float shared[32];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* row = x + r * cols;
        float max = -__int_as_float(0x7f800000);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) max = fmaxf(max, row[c]);
        max = block_max(max, shared);
        float sum = 0.0f;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) sum += expf(row[c] - max);
        sum = block_sum(sum, shared);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) y[r * cols + c] = expf(row[c] - max) / sum;
    }
}

// Softmax cross-entropy, one block per row: probabilities, and stats += (loss, correct, rows).
extern "C" __global__ void softmax_cross_entropy(const float* x, const int* labels, float* probs, float* stats,
                                                 i64 rows, i64 cols, u64* fault) {
    __shared__ float shared[32];
    __shared__ int argmax_shared[32];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* row = x + r * cols;
        int label = labels[r];
        float max = -__int_as_float(0x7f800000);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) max = fmaxf(max, row[c]);
        max = block_max(max, shared);
        float sum = 0.0f;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) sum += expf(row[c] - max);
        sum = block_sum(sum, shared);
        // The arg-max (first index among equal maxima): the smallest index holding `max`.
        int first = 0x7fffffff;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x)
            if (row[c] == max && (int)c < first) first = (int)c;
        for (int o = 16; o > 0; o >>= 1) first = min(first, __shfl_down_sync(0xffffffffu, first, o));
        if ((threadIdx.x & 31) == 0) argmax_shared[threadIdx.x >> 5] = first;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < (int)((blockDim.x + 31) >> 5); w++) first = min(first, argmax_shared[w]);
            if (label < 0 || label >= cols) {
                report_fault(fault, FAULT_LABEL, label, r, cols);
            } else {
                atomicAdd(&stats[0], max + logf(sum) - row[label]);
                if (first == label) atomicAdd(&stats[1], 1.0f);
                atomicAdd(&stats[2], 1.0f);
            }
        }
        __syncthreads();
        // Written last, so the row was read whole first.
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) probs[r * cols + c] = expf(row[c] - max) / sum;
    }
}

extern "C" __global__ void softmax_cross_entropy_backward(const float* probs, const int* labels, float* dx,
                                                          i64 rows, i64 cols, float scale, u64* fault) {
    GRID_STRIDE(i, rows * cols) {
        i64 r = i / cols, c = i % cols;
        int label = labels[r];
        if (label < 0 || label >= cols) {
            if (c == 0) report_fault(fault, FAULT_LABEL, label, r, cols);
            dx[i] = 0.0f;
        } else {
            dx[i] = scale * (probs[i] - (c == label ? 1.0f : 0.0f));
        }
    }
}

// dx = y ⊙ (dy − Σ_row dy ⊙ y), one block per row.
extern "C" __global__ void softmax_backward(const float* y, const float* dy, float* dx, i64 rows, i64 cols) {
    __shared__ float shared[32];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        float dot = 0.0f;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) dot += y[r * cols + c] * dy[r * cols + c];
        dot = block_sum(dot, shared);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            i64 i = r * cols + c;
            dx[i] = y[i] * (dy[i] - dot);
        }
    }
}

// f32::total_cmp's order as signed integers (-0 below +0, NaNs at the ends).
__device__ __forceinline__ int total_order_key(float v) {
    int b = __float_as_int(v);
    return b ^ ((b >> 31) & 0x7fffffff);
}

// Whether (value a, index ia) comes before (b, ib): larger first in total order, lower
// index on ties (singa-cpu's reference `top_k_row`).
__device__ __forceinline__ bool ranks_before(float a, i64 ia, float b, i64 ib) {
    int ka = total_order_key(a), kb = total_order_key(b);
    return ka > kb || (ka == kb && ia < ib);
}

// The k largest of each row, one thread per row (k is small: a top-5 metric).
extern "C" __global__ void top_k(const float* x, int* indices, i64 rows, i64 cols, i64 k) {
    GRID_STRIDE(r, rows) {
        const float* row = x + r * cols;
        float last = 0.0f;
        i64 last_i = -1;
        for (i64 t = 0; t < k; t++) {
            i64 best = -1;
            for (i64 c = 0; c < cols; c++) {
                bool after_last = last_i < 0 || ranks_before(last, last_i, row[c], c);
                if (after_last && (best < 0 || ranks_before(row[c], c, row[best], best))) best = c;
            }
            indices[r * k + t] = (int)best;
            last = row[best];
            last_i = best;
        }
    }
}

// stats += (rows whose label ranks among the k largest, rows).
extern "C" __global__ void top_k_accuracy(const float* x, const int* labels, float* stats, i64 rows, i64 cols,
                                          i64 k, u64* fault) {
    GRID_STRIDE(r, rows) {
        const float* row = x + r * cols;
        int label = labels[r];
        if (label < 0 || label >= cols) {
            report_fault(fault, FAULT_LABEL, label, r, cols);
        } else {
            i64 ahead = 0;
            for (i64 c = 0; c < cols; c++) ahead += ranks_before(row[c], c, row[label], label) ? 1 : 0;
            if (ahead < k) atomicAdd(&stats[0], 1.0f);
            atomicAdd(&stats[1], 1.0f);
        }
    }
}

// out[i, :] = table[ids[i], :].
extern "C" __global__ void gather_rows(const float* table, const int* ids, float* out, i64 rows, i64 cols, i64 n,
                                       u64* fault) {
    GRID_STRIDE(e, n * cols) {
        i64 i = e / cols, c = e % cols;
        int id = ids[i];
        if (id < 0 || id >= rows) {
            if (c == 0) report_fault(fault, FAULT_ROW_ID, id, i, rows);
            out[e] = 0.0f;
        } else {
            out[e] = table[(i64)id * cols + c];
        }
    }
}

// table[ids[i], :] += src[i, :].
extern "C" __global__ void scatter_add_rows(const int* ids, const float* src, float* table, i64 rows, i64 cols,
                                            i64 n, u64* fault) {
    GRID_STRIDE(e, n * cols) {
        i64 i = e / cols, c = e % cols;
        int id = ids[i];
        if (id < 0 || id >= rows) {
            if (c == 0) report_fault(fault, FAULT_ROW_ID, id, i, rows);
        } else {
            atomicAdd(&table[(i64)id * cols + c], src[e]);
        }
    }
}

// Convolution helpers (im2col and its adjoint), pooling, local response normalisation and
// batch normalisation, all NCHW.

// The patches of `images` images into col[image][channel·kh·kw][out_h·out_w].
extern "C" __global__ void im2col(const float* x, float* col, i64 images, i64 channels, i64 height, i64 width,
                                  i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw, i64 out_h, i64 out_w) {
    i64 positions = out_h * out_w, rows = channels * kh * kw;
    GRID_STRIDE(e, images * rows * positions) {
        i64 image = e / (rows * positions), row = (e / positions) % rows, p = e % positions;
        i64 c = row / (kh * kw), r = (row / kw) % kh, q = row % kw;
        i64 ih = (p / out_w) * sh + r - ph, iw = (p % out_w) * sw + q - pw;
        bool inside = ih >= 0 && ih < height && iw >= 0 && iw < width;
        col[e] = inside ? x[((image * channels + c) * height + ih) * width + iw] : 0.0f;
    }
}

// The adjoint of im2col: every input pixel sums the patch entries that read it (overwrites x).
extern "C" __global__ void col2im(const float* col, float* x, i64 images, i64 channels, i64 height, i64 width,
                                  i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw, i64 out_h, i64 out_w) {
    i64 positions = out_h * out_w, rows = channels * kh * kw;
    GRID_STRIDE(e, images * channels * height * width) {
        i64 iw = e % width, ih = (e / width) % height, c = (e / (width * height)) % channels;
        i64 image = e / (width * height * channels);
        float sum = 0.0f;
        for (i64 r = 0; r < kh; r++) {
            i64 oh_num = ih + ph - r;
            if (oh_num < 0 || oh_num % sh != 0 || oh_num / sh >= out_h) continue;
            for (i64 q = 0; q < kw; q++) {
                i64 ow_num = iw + pw - q;
                if (ow_num < 0 || ow_num % sw != 0 || ow_num / sw >= out_w) continue;
                i64 row = (c * kh + r) * kw + q;
                sum += col[(image * rows + row) * positions + (oh_num / sh) * out_w + ow_num / sw];
            }
        }
        x[e] = sum;
    }
}

// The window of output (oh, ow), as singa_core::PoolShape::window.
struct Window { i64 h0, h1, w0, w1, divisor; };

__device__ __forceinline__ Window pool_window(i64 oh, i64 ow, i64 height, i64 width, i64 kh, i64 kw, i64 sh,
                                              i64 sw, i64 ph, i64 pw) {
    i64 hs = oh * sh - ph, ws = ow * sw - pw;
    i64 he = min(hs + kh, height + ph), we = min(ws + kw, width + pw);
    Window w;
    w.divisor = (he - hs) * (we - ws);
    w.h0 = max(hs, (i64)0);
    w.w0 = max(ws, (i64)0);
    w.h1 = min(he, height);
    w.w1 = min(we, width);
    return w;
}

// kind: 0 max (argmax may be null), 1 average.
extern "C" __global__ void pool2d(int kind, const float* x, float* y, int* argmax, i64 planes, i64 height,
                                  i64 width, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw, i64 out_h,
                                  i64 out_w) {
    GRID_STRIDE(e, planes * out_h * out_w) {
        i64 plane = e / (out_h * out_w), oh = (e / out_w) % out_h, ow = e % out_w;
        Window w = pool_window(oh, ow, height, width, kh, kw, sh, sw, ph, pw);
        const float* in = x + plane * height * width;
        if (kind == 0) {
            float best = -__int_as_float(0x7f800000);
            i64 best_i = w.h0 * width + w.w0;
            for (i64 h = w.h0; h < w.h1; h++)
                for (i64 c = w.w0; c < w.w1; c++)
                    if (in[h * width + c] > best) { best = in[h * width + c]; best_i = h * width + c; }
            y[e] = best;
            if (argmax) argmax[e] = (int)best_i;
        } else {
            float sum = 0.0f;
            for (i64 h = w.h0; h < w.h1; h++)
                for (i64 c = w.w0; c < w.w1; c++) sum += in[h * width + c];
            y[e] = sum / (float)w.divisor;
        }
    }
}

// Adds each output's gradient to the inputs it came from (dx zeroed before).
extern "C" __global__ void pool2d_backward(int kind, const float* dy, const int* argmax, float* dx, i64 planes,
                                           i64 height, i64 width, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph,
                                           i64 pw, i64 out_h, i64 out_w, u64* fault) {
    i64 plane_len = height * width;
    GRID_STRIDE(e, planes * out_h * out_w) {
        i64 plane = e / (out_h * out_w), oh = (e / out_w) % out_h, ow = e % out_w;
        float* d = dx + plane * plane_len;
        if (kind == 0) {
            int a = argmax[e];
            if (a < 0 || a >= plane_len) report_fault(fault, FAULT_ARGMAX, a, e, plane_len);
            else atomicAdd(&d[a], dy[e]);
        } else {
            Window w = pool_window(oh, ow, height, width, kh, kw, sh, sw, ph, pw);
            float g = dy[e] / (float)w.divisor;
            for (i64 h = w.h0; h < w.h1; h++)
                for (i64 c = w.w0; c < w.w1; c++) atomicAdd(&d[h * width + c], g);
        }
    }
}

extern "C" __global__ void lrn(const float* x, float* y, float* scale, i64 batch, i64 channels, i64 spatial,
                               i64 size, float alpha, float beta, float k) {
    GRID_STRIDE(e, batch * channels * spatial) {
        i64 p = e % spatial, c = (e / spatial) % channels, n = e / (spatial * channels);
        i64 lo = max(c - (size - 1) / 2, (i64)0), hi = min(c + size / 2 + 1, channels);
        float sum = 0.0f;
        for (i64 j = lo; j < hi; j++) {
            float v = x[(n * channels + j) * spatial + p];
            sum += v * v;
        }
        float s = k + alpha / (float)size * sum;
        scale[e] = s;
        y[e] = x[e] * powf(s, -beta);
    }
}

extern "C" __global__ void lrn_backward(const float* x, const float* y, const float* scale, const float* dy,
                                        float* dx, i64 batch, i64 channels, i64 spatial, i64 size, float alpha,
                                        float beta) {
    GRID_STRIDE(e, batch * channels * spatial) {
        i64 p = e % spatial, c = (e / spatial) % channels, n = e / (spatial * channels);
        // The channels j whose window holds c.
        i64 lo = max(c - size / 2, (i64)0), hi = min(c + (size - 1) / 2 + 1, channels);
        float sum = 0.0f;
        for (i64 j = lo; j < hi; j++) {
            i64 at = (n * channels + j) * spatial + p;
            sum += dy[at] * y[at] / scale[at];
        }
        dx[e] = dy[e] * powf(scale[e], -beta) - 2.0f * alpha * beta / (float)size * x[e] * sum;
    }
}

// Training-mode batch norm, one block per channel: batch statistics, running statistics
// (unbiased variance), and the normalised output.
extern "C" __global__ void batch_norm_train(const float* x, const float* gamma, const float* beta, float* y,
                                            float* mean_out, float* inv_std_out, float* running_mean,
                                            float* running_var, i64 outer, i64 mid, i64 inner, float eps,
                                            float momentum) {
    __shared__ float shared[32];
    i64 count = outer * inner;
    for (i64 m = blockIdx.x; m < mid; m += gridDim.x) {
        float sum = 0.0f;
        for (i64 e = threadIdx.x; e < count; e += blockDim.x) sum += x[((e / inner) * mid + m) * inner + e % inner];
        float mean = block_sum(sum, shared) / (float)count;
        float sq = 0.0f;
        for (i64 e = threadIdx.x; e < count; e += blockDim.x) {
            float d = x[((e / inner) * mid + m) * inner + e % inner] - mean;
            sq += d * d;
        }
        float var = block_sum(sq, shared) / (float)count;
        float inv_std = rsqrtf(var + eps);
        if (threadIdx.x == 0) {
            float unbiased = count > 1 ? var * (float)count / (float)(count - 1) : var;
            mean_out[m] = mean;
            inv_std_out[m] = inv_std;
            running_mean[m] = (1.0f - momentum) * running_mean[m] + momentum * mean;
            running_var[m] = (1.0f - momentum) * running_var[m] + momentum * unbiased;
        }
        for (i64 e = threadIdx.x; e < count; e += blockDim.x) {
            i64 i = ((e / inner) * mid + m) * inner + e % inner;
            y[i] = gamma[m] * (x[i] - mean) * inv_std + beta[m];
        }
    }
}

extern "C" __global__ void batch_norm_infer(const float* x, const float* gamma, const float* beta, float* y,
                                            const float* running_mean, const float* running_var, i64 mid,
                                            i64 inner, i64 n, float eps) {
    GRID_STRIDE(i, n) {
        i64 m = (i / inner) % mid;
        y[i] = gamma[m] * (x[i] - running_mean[m]) * rsqrtf(running_var[m] + eps) + beta[m];
    }
}

extern "C" __global__ void batch_norm_backward(const float* x, const float* dy, const float* gamma,
                                               const float* mean, const float* inv_std, float* dx, float* dgamma,
                                               float* dbeta, i64 outer, i64 mid, i64 inner) {
    __shared__ float shared[32];
    i64 count = outer * inner;
    for (i64 m = blockIdx.x; m < mid; m += gridDim.x) {
        float db = 0.0f, dg = 0.0f;
        for (i64 e = threadIdx.x; e < count; e += blockDim.x) {
            i64 i = ((e / inner) * mid + m) * inner + e % inner;
            db += dy[i];
            dg += dy[i] * (x[i] - mean[m]) * inv_std[m];
        }
        db = block_sum(db, shared);
        dg = block_sum(dg, shared);
        if (threadIdx.x == 0) {
            dbeta[m] = db;
            dgamma[m] = dg;
        }
        float k = gamma[m] * inv_std[m] / (float)count;
        for (i64 e = threadIdx.x; e < count; e += blockDim.x) {
            i64 i = ((e / inner) * mid + m) * inner + e % inner;
            float xhat = (x[i] - mean[m]) * inv_std[m];
            dx[i] = k * ((float)count * dy[i] - db - xhat * dg);
        }
    }
}

// The elementwise part of one LSTM step (Device::lstm_cell): gates [batch, 4*hidden], gates i, f,
// o, g side by side, from pre-activations (plus bias, which may be null) to activations; then
// c = f*c_prev + i*g, tanh_c = tanh(c), h = o*tanh_c. One thread per (row, unit).
extern "C" __global__ void lstm_cell(float* gates, const float* bias, const float* c_prev, float* c,
                                     float* tanh_c, float* h, i64 batch, i64 hidden) {
    GRID_STRIDE(e, batch * hidden) {
        i64 r = e / hidden, j = e % hidden;
        float* row = gates + r * 4 * hidden;
        float a[4];
        for (int k = 0; k < 4; ++k) {
            float x = row[k * hidden + j] + (bias ? bias[k * hidden + j] : 0.0f);
            a[k] = k < 3 ? 1.0f / (1.0f + expf(-x)) : tanhf(x);
            row[k * hidden + j] = a[k];
        }
        float cj = a[1] * c_prev[e] + a[0] * a[3];
        float t = tanhf(cj);
        c[e] = cj;
        tanh_c[e] = t;
        h[e] = a[2] * t;
    }
}

// The gradient of lstm_cell (Device::lstm_cell_backward); dc_prev may be null.
extern "C" __global__ void lstm_cell_backward(const float* gates, const float* c_prev, const float* tanh_c,
                                              const float* dh, const float* dc, float* d_gates, float* dc_prev,
                                              i64 batch, i64 hidden) {
    GRID_STRIDE(e, batch * hidden) {
        i64 r = e / hidden, j = e % hidden;
        const float* a = gates + r * 4 * hidden + j;
        float* d = d_gates + r * 4 * hidden + j;
        float i = a[0], f = a[hidden], o = a[2 * hidden], g = a[3 * hidden], t = tanh_c[e];
        float dcj = dc[e] + dh[e] * o * (1.0f - t * t);
        d[0] = dcj * g * i * (1.0f - i);
        d[hidden] = dcj * c_prev[e] * f * (1.0f - f);
        d[2 * hidden] = dh[e] * t * o * (1.0f - o);
        d[3 * hidden] = dcj * i * (1.0f - g * g);
        if (dc_prev) dc_prev[e] = dcj * f;
    }
}

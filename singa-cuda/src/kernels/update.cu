// The fused parameter updates (see singa_core::SgdArgs and singa_core::AdaptiveRule).

// m may be null (no momentum).
extern "C" __global__ void sgd_update(float* w, const float* g, float* m, i64 n, float lr, float momentum,
                                      float weight_decay, int nesterov, float grad_scale) {
    GRID_STRIDE(i, n) {
        float d = grad_scale * g[i] + weight_decay * w[i];
        if (m) {
            float mi = momentum * m[i] + d;
            m[i] = mi;
            d = nesterov ? d + momentum * mi : mi;
        }
        w[i] -= lr * d;
    }
}

// rule: 0 AdaGrad, 1 RMSProp, 2 Adam, 3 AdaDelta, 4 AdaMax (singa_core::AdaptiveRule's order);
// c0..c4 its constants in declaration order (see the host side); s2 may be null.
extern "C" __global__ void adaptive_update(float* w, const float* g, float* s1, float* s2, i64 n, int rule,
                                           float c0, float c1, float c2, float c3, float c4, int decoupled,
                                           float lr, float weight_decay, float grad_scale) {
    GRID_STRIDE(i, n) {
        float wi = w[i];
        float d = grad_scale * g[i] + (decoupled ? 0.0f : weight_decay * wi);
        switch (rule) {
            case 0: {  // c0 = eps
                float s = s1[i] + d * d;
                s1[i] = s;
                wi -= lr * d / (sqrtf(s) + c0);
                break;
            }
            case 1: {  // c0 = rho, c1 = eps
                float s = c0 * s1[i] + (1.0f - c0) * d * d;
                s1[i] = s;
                wi -= lr * d / (sqrtf(s) + c1);
                break;
            }
            case 2: {  // c0 = beta1, c1 = beta2, c2 = eps, c3 = correction1, c4 = correction2
                if (decoupled) wi -= lr * weight_decay * wi;
                float m = c0 * s1[i] + (1.0f - c0) * d;
                float v = c1 * s2[i] + (1.0f - c1) * d * d;
                s1[i] = m;
                s2[i] = v;
                wi -= lr * (m / c3) / (sqrtf(v / c4) + c2);
                break;
            }
            case 3: {  // c0 = rho, c1 = eps
                float s = c0 * s1[i] + (1.0f - c0) * d * d;
                s1[i] = s;
                float step = sqrtf(s2[i] + c1) / sqrtf(s + c1) * d;
                s2[i] = c0 * s2[i] + (1.0f - c0) * step * step;
                wi -= lr * step;
                break;
            }
            default: {  // c0 = beta1, c1 = beta2, c2 = eps, c3 = correction1
                float m = c0 * s1[i] + (1.0f - c0) * d;
                float u = fmaxf(c1 * s2[i], fabsf(d) + c2);
                s1[i] = m;
                s2[i] = u;
                wi -= lr / c3 * m / u;
                break;
            }
        }
        w[i] = wi;
    }
}

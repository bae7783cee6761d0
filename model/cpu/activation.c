// GELU (exact, erf) and SwiGLU, forward and backward.
#include <math.h>

#include "model/cpu/cpu_ops.h"
#include "model/cpu/vmath.h"

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT2PI 0.39894228040143268f

void cpu_gelu_fwd(Backend *be, float *out, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = 0.5f * x[i] * dino_erfcf(-x[i] * INV_SQRT2); // 1 + erf(u) = erfc(-u)
}

void cpu_gelu_bwd(Backend *be, float *dx, const float *dout, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * dino_erfcf(-v * INV_SQRT2);
        float pdf = INV_SQRT2PI * dino_expf(-0.5f * v * v);
        dx[i] = dout[i] * (cdf + v * pdf);
    }
}

// The reference of the fused fc1 + GELU: the composition itself, through the table (so that a backend
// that replaces linear_fwd or wraps the ops, as the bf16 emulation does, composes its own versions).
void cpu_linear_gelu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b, int rows,
                         int n_in, int n_out) {
    be->linear_fwd(be, pre, in, W, b, rows, n_in, n_out);
    be->gelu_fwd(be, act, pre, (size_t)rows * n_out);
}

void cpu_linear_swiglu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                           int rows, int n_in, int Hd) {
    be->linear_fwd(be, pre, in, W, b, rows, n_in, 2 * Hd);
    be->swiglu_fwd(be, act, pre, rows, Hd);
}

void cpu_swiglu_fwd(Backend *be, float *out, const float *in, int rows, int Hd) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *a = in + (size_t)r * 2 * Hd, *g = a + Hd;
        float *o = out + (size_t)r * Hd;
#pragma omp simd
        for (int i = 0; i < Hd; i++) o[i] = a[i] / (1.0f + dino_expf(-a[i])) * g[i];
    }
}

void cpu_swiglu_bwd(Backend *be, float *din, const float *dout, const float *in, int rows, int Hd) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *a = in + (size_t)r * 2 * Hd, *g = a + Hd;
        const float *d = dout + (size_t)r * Hd;
        float *da = din + (size_t)r * 2 * Hd, *dg = da + Hd;
#pragma omp simd
        for (int i = 0; i < Hd; i++) {
            float sig = 1.0f / (1.0f + dino_expf(-a[i]));
            float silu = a[i] * sig;
            dg[i] = d[i] * silu;
            da[i] = d[i] * g[i] * sig * (1.0f + a[i] * (1.0f - sig));
        }
    }
}

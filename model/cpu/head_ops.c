// Ops of the DINO/iBOT heads: row L2 normalization and the weight-normalized last layer.
#include <math.h>

#include "model/cpu/cpu_ops.h"

void cpu_l2norm_fwd(Backend *be, float *out, float *norm, const float *x, int rows, int n, float eps) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *o = out + (size_t)r * n;
        double ss = 0;
        for (int i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        float nrm = (float)sqrt(ss);
        float den = nrm > eps ? nrm : eps; // torch: x / norm.clamp_min(eps)
        for (int i = 0; i < n; i++) o[i] = xr[i] / den;
        norm[r] = nrm;
    }
}

void cpu_l2norm_bwd(Backend *be, float *dx, const float *dout, const float *x, const float *norm, int rows, int n,
                    float eps) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n, *d = dout + (size_t)r * n;
        float *g = dx + (size_t)r * n;
        float nrm = norm[r];
        if (!(nrm > eps)) { // the clamp is active: the norm gets no gradient
            for (int i = 0; i < n; i++) g[i] = d[i] / eps;
            continue;
        }
        double dot = 0;
        for (int i = 0; i < n; i++) dot += (double)xr[i] * d[i];
        float c = (float)(dot / ((double)nrm * nrm));
        for (int i = 0; i < n; i++) g[i] = (d[i] - xr[i] * c) / nrm;
    }
}

void cpu_weightnorm_fwd(Backend *be, float *W, float *vnorm, const float *g, const float *v, int K, int n) {
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; k++) {
        const float *vk = v + (size_t)k * n;
        float *w = W + (size_t)k * n;
        double ss = 0;
        for (int i = 0; i < n; i++) ss += (double)vk[i] * vk[i];
        float nrm = (float)sqrt(ss);
        float s = g[k] / nrm; // torch: v * (g / norm_except_dim(v, 2, 0))
        for (int i = 0; i < n; i++) w[i] = vk[i] * s;
        vnorm[k] = nrm;
    }
}

void cpu_weightnorm_bwd(Backend *be, float *dg, float *dv, const float *dW, const float *g, const float *v,
                        const float *vnorm, int K, int n) {
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; k++) {
        const float *vk = v + (size_t)k * n, *dw = dW + (size_t)k * n;
        float *dvk = dv + (size_t)k * n;
        double dot = 0;
        for (int i = 0; i < n; i++) dot += (double)dw[i] * vk[i];
        float nrm = vnorm[k];
        dg[k] += (float)(dot / nrm);
        float s = g[k] / nrm;
        float c = (float)(dot / ((double)nrm * nrm));
        for (int i = 0; i < n; i++) dvk[i] += s * (dw[i] - c * vk[i]);
    }
}

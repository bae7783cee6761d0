// LayerNorm over the last dimension (eps 1e-6 in the ViT), forward and backward.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/cpu/cpu_ops.h"

void cpu_layernorm_fwd(Backend *be, float *out, float *mean, float *rstd, const float *x, const float *w,
                       const float *b, int rows, int D, float eps) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * D;
        float *o = out + (size_t)r * D;
        float m = 0;
        for (int i = 0; i < D; i++) m += xr[i];
        m /= D;
        float v = 0;
        for (int i = 0; i < D; i++) {
            float d = xr[i] - m;
            v += d * d;
        }
        v /= D;
        float s = 1.0f / sqrtf(v + eps);
        for (int i = 0; i < D; i++) o[i] = (xr[i] - m) * s * w[i] + b[i];
        mean[r] = m;
        rstd[r] = s;
    }
}

// Weight/bias gradients are summed per fixed block of rows, then the blocks in order: the result does
// not depend on the number of threads.
#define LN_ROW_BLOCK 128

void cpu_layernorm_bwd(Backend *be, float *dx_acc, float *dw, float *db, const float *dout, const float *x,
                       const float *mean, const float *rstd, const float *w, int rows, int D) {
    int nblk = (rows + LN_ROW_BLOCK - 1) / LN_ROW_BLOCK;
    float *part = dino_calloc((size_t)nblk * 2 * D, sizeof(float));
#pragma omp parallel for schedule(static)
    for (int k = 0; k < nblk; k++) {
        float *pw = part + (size_t)k * 2 * D, *pb = pw + D;
        int r1 = (k + 1) * LN_ROW_BLOCK < rows ? (k + 1) * LN_ROW_BLOCK : rows;
        for (int r = k * LN_ROW_BLOCK; r < r1; r++) {
            const float *xr = x + (size_t)r * D, *dy = dout + (size_t)r * D;
            float *dx = dx_acc + (size_t)r * D;
            float m = mean[r], s = rstd[r];
            float sum_g = 0, sum_gx = 0; // g = dy * w
            for (int i = 0; i < D; i++) {
                float xh = (xr[i] - m) * s;
                float g = dy[i] * w[i];
                sum_g += g;
                sum_gx += g * xh;
                pw[i] += dy[i] * xh;
                pb[i] += dy[i];
            }
            sum_g /= D;
            sum_gx /= D;
            for (int i = 0; i < D; i++) {
                float xh = (xr[i] - m) * s;
                dx[i] += s * (dy[i] * w[i] - sum_g - xh * sum_gx);
            }
        }
    }
    for (int k = 0; k < nblk; k++) {
        const float *pw = part + (size_t)k * 2 * D, *pb = pw + D;
        for (int i = 0; i < D; i++) {
            dw[i] += pw[i];
            db[i] += pb[i];
        }
    }
    free(part);
}

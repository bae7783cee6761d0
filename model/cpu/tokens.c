// ViT plumbing: patch extraction, token assembly (CLS, registers, mask token, position embedding),
// row gathers and the stochastic-depth residual with LayerScale.
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/cpu/cpu_ops.h"

void cpu_im2col(Backend *be, float *cols, const float *img, int B, int C, int Hi, int Wi, int p) {
    const int gh = Hi / p, gw = Wi / p, N = gh * gw, K = C * p * p;
#pragma omp parallel for schedule(static)
    for (int bn = 0; bn < B * N; bn++) {
        int b = bn / N, n = bn % N, py = n / gw, px = n % gw;
        float *dst = cols + (size_t)bn * K;
        for (int c = 0; c < C; c++)
            for (int ky = 0; ky < p; ky++) {
                const float *src = img + (((size_t)b * C + c) * Hi + (size_t)py * p + ky) * Wi + (size_t)px * p;
                memcpy(dst + (c * p + ky) * p, src, sizeof(float) * p);
            }
    }
}

void cpu_tokens_fwd(Backend *be, float *x, const float *patch, const float *cls, const float *reg, const float *pos,
                    const float *mask_token, const uint8_t *mask, int B, int N, int R, int D) {
    const int T = 1 + R + N;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        float *xb = x + (size_t)b * T * D;
        for (int i = 0; i < D; i++) xb[i] = cls[i] + pos[i];
        if (R) memcpy(xb + D, reg, sizeof(float) * (size_t)R * D);
        for (int n = 0; n < N; n++) {
            const float *src = (mask && mask[(size_t)b * N + n]) ? mask_token : patch + ((size_t)b * N + n) * D;
            const float *pp = pos + (size_t)(1 + n) * D;
            float *dst = xb + (size_t)(1 + R + n) * D;
            for (int i = 0; i < D; i++) dst[i] = src[i] + pp[i];
        }
    }
}

void cpu_tokens_bwd(Backend *be, float *dpatch, float *dcls, float *dreg, float *dpos, float *dmask_token,
                    const float *dx, const uint8_t *mask, int B, int N, int R, int D) {
    const int T = 1 + R + N;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++) {
            float *dst = dpatch + ((size_t)b * N + n) * D;
            if (mask && mask[(size_t)b * N + n]) memset(dst, 0, sizeof(float) * D);
            else memcpy(dst, dx + ((size_t)b * T + 1 + R + n) * D, sizeof(float) * D);
        }
    // Parameter gradients: sums over images in image order (deterministic), parallel over features.
#pragma omp parallel for schedule(static)
    for (int i = 0; i < D; i++) {
        for (int b = 0; b < B; b++) {
            const float *xb = dx + (size_t)b * T * D;
            dcls[i] += xb[i];
            dpos[i] += xb[i];
            for (int r = 0; r < R; r++) dreg[(size_t)r * D + i] += xb[(size_t)(1 + r) * D + i];
            for (int n = 0; n < N; n++) {
                float g = xb[(size_t)(1 + R + n) * D + i];
                if (mask && mask[(size_t)b * N + n]) dmask_token[i] += g;
                else dpos[(size_t)(1 + n) * D + i] += g;
            }
        }
        // masked positions still receive the position embedding's gradient
        if (mask)
            for (int b = 0; b < B; b++)
                for (int n = 0; n < N; n++)
                    if (mask[(size_t)b * N + n]) dpos[(size_t)(1 + n) * D + i] += dx[((size_t)b * T + 1 + R + n) * D + i];
    }
}

void cpu_gather_rows(Backend *be, float *out, const float *in, const int *idx, int n, size_t len) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) memcpy(out + (size_t)i * len, in + (size_t)idx[i] * len, sizeof(float) * len);
}

void cpu_scatter_add_rows(Backend *be, float *x, const float *in, const int *idx, int n, size_t len) {
    // Rows of idx are distinct in every use (subsets, masked tokens), so rows never race.
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float *dst = x + (size_t)(idx ? idx[i] : i) * len;
        const float *src = in + (size_t)i * len;
        for (size_t j = 0; j < len; j++) dst[j] += src[j];
    }
}

void cpu_residual_fwd(Backend *be, float *x, const float *br, const float *gamma, const int *idx, int n, int T,
                      int D, float scale) {
#pragma omp parallel for schedule(static)
    for (int it = 0; it < n * T; it++) {
        int i = it / T, t = it % T;
        float *dst = x + ((size_t)(idx ? idx[i] : i) * T + t) * D;
        const float *src = br + ((size_t)i * T + t) * D;
        if (gamma) for (int d = 0; d < D; d++) dst[d] += scale * gamma[d] * src[d];
        else for (int d = 0; d < D; d++) dst[d] += scale * src[d];
    }
}

void cpu_residual_bwd(Backend *be, float *dbr, float *dgamma, const float *dx, const float *br, const float *gamma,
                      const int *idx, int n, int T, int D, float scale) {
#pragma omp parallel for schedule(static)
    for (int it = 0; it < n * T; it++) {
        int i = it / T, t = it % T;
        const float *g = dx + ((size_t)(idx ? idx[i] : i) * T + t) * D;
        float *dst = dbr + ((size_t)i * T + t) * D;
        if (gamma) for (int d = 0; d < D; d++) dst[d] = scale * gamma[d] * g[d];
        else for (int d = 0; d < D; d++) dst[d] = scale * g[d];
    }
    if (!dgamma) return;
    // dgamma: per-feature sums over all (image, token) rows in a fixed order.
    const int rows = n * T;
    const int blk = 256;
    int nblk = (rows + blk - 1) / blk;
    float *part = dino_calloc((size_t)nblk * D, sizeof(float));
#pragma omp parallel for schedule(static)
    for (int k = 0; k < nblk; k++) {
        float *p = part + (size_t)k * D;
        int r1 = (k + 1) * blk < rows ? (k + 1) * blk : rows;
        for (int it = k * blk; it < r1; it++) {
            int i = it / T, t = it % T;
            const float *g = dx + ((size_t)(idx ? idx[i] : i) * T + t) * D;
            const float *s = br + ((size_t)i * T + t) * D;
            for (int d = 0; d < D; d++) p[d] += g[d] * s[d];
        }
    }
    for (int k = 0; k < nblk; k++)
        for (int d = 0; d < D; d++) dgamma[d] += scale * part[(size_t)k * D + d];
    free(part);
}

// The Gram anchoring loss of DINOv3 (dinov3/loss/gram_loss.py GramLoss, img_level): per image, the
// MSE between the patch-similarity (Gram) matrices of the student and of the Gram teacher. The Gram
// matrices go through the backend's GEMM; norms and the squared-error sum run in double, in order.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/cpu/cpu_ops.h"

#define GRAM_EPS 1e-12 // torch F.normalize's default eps

// u = x / max(||x||, eps) per row (or a copy when !normalize); nrm[r] = ||x_r||.
static void gram_rows(float *u, double *nrm, const float *x, size_t rows, int D, int normalize) {
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        double ss = 0;
        for (int d = 0; d < D; d++) ss += (double)xr[d] * xr[d];
        nrm[r] = sqrt(ss);
        const double den = normalize ? fmax(nrm[r], GRAM_EPS) : 1.0;
        for (int d = 0; d < D; d++) u[r * D + d] = (float)(xr[d] / den);
    }
}

void cpu_gram_loss(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N, int D,
                   int normalize, int neg_mode, float alpha) {
    DINO_ASSERT(B >= 1 && N >= 1 && D >= 1 && neg_mode >= 0 && neg_mode <= 2, "gram_loss: bad shape or mode");
    const size_t rows = (size_t)B * N, nn = (size_t)N * N;
    float *us = dino_malloc(sizeof(float) * rows * D), *ut = dino_malloc(sizeof(float) * rows * D);
    double *ns = dino_malloc(sizeof(double) * rows), *nt = dino_malloc(sizeof(double) * rows);
    float *S = dino_malloc(sizeof(float) * nn), *T = dino_malloc(sizeof(float) * nn);
    gram_rows(us, ns, s, rows, D, normalize);
    gram_rows(ut, nt, t, rows, D, normalize);
    float *dU = ds_acc ? dino_malloc(sizeof(float) * (size_t)N * D) : NULL;
    const double scale = 1.0 / ((double)B * (double)nn); // torch MSELoss: mean over every element
    double L = 0;
    for (int b = 0; b < B; b++) {
        const float *Ub = us + (size_t)b * N * D, *Vb = ut + (size_t)b * N * D;
        cpu_gemm(be, 0, 1, N, N, D, 1.0f, Ub, D, Ub, D, 0.0f, S, N);
        cpu_gemm(be, 0, 1, N, N, D, 1.0f, Vb, D, Vb, D, 0.0f, T, N);
        for (size_t k = 0; k < nn; k++) {
            float sv = S[k], tv = T[k];
            int s_clamped = 0;
            if (neg_mode >= 1 && tv < 0) tv = 0;
            if (neg_mode == 1 && sv < 0) sv = 0, s_clamped = 1;
            const double e = (double)sv - tv;
            L += e * e;
            S[k] = s_clamped ? 0.0f : (float)(2.0 * e * scale); // dloss/dS
        }
        if (!ds_acc) continue;
        // S = U U^T and dloss/dS is symmetric: dU = 2 dS U; then through the row normalization
        cpu_gemm(be, 0, 0, N, D, N, 2.0f, S, N, Ub, D, 0.0f, dU, D);
        for (int i = 0; i < N; i++) {
            const size_t r = (size_t)b * N + i;
            const float *g = dU + (size_t)i * D, *u = Ub + (size_t)i * D;
            float *o = ds_acc + r * D;
            if (!normalize) {
                for (int d = 0; d < D; d++) o[d] += alpha * g[d];
            } else if (!(ns[r] > GRAM_EPS)) {
                for (int d = 0; d < D; d++) o[d] += (float)(alpha * g[d] / GRAM_EPS);
            } else {
                double dot = 0;
                for (int d = 0; d < D; d++) dot += (double)u[d] * g[d];
                for (int d = 0; d < D; d++) o[d] += (float)(alpha * (g[d] - u[d] * dot) / ns[r]);
            }
        }
    }
    loss[0] = (float)(L * scale);
    free(us), free(ut), free(ns), free(nt), free(S), free(T), free(dU);
}

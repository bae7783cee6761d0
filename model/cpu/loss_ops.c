// Ops of the DINOv2 losses: teacher targets (softmax centering, Sinkhorn-Knopp), the fused student
// softmax cross-entropy, KoLeo and KDE regularizers. Sums over rows run in a fixed order, so results do
// not depend on the thread count.
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/cpu/cpu_ops.h"

void cpu_softmax_center(Backend *be, float *P, const float *z, const float *center, int rows, int K, float temp) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * K;
        float *p = P + (size_t)r * K;
        float mx = -FLT_MAX;
        for (int k = 0; k < K; k++) {
            p[k] = (zr[k] - (center ? center[k] : 0.0f)) / temp;
            if (p[k] > mx) mx = p[k];
        }
        double s = 0;
        for (int k = 0; k < K; k++) {
            p[k] = expf(p[k] - mx);
            s += p[k];
        }
        float inv = (float)(1.0 / s);
        for (int k = 0; k < K; k++) p[k] *= inv;
    }
}

void cpu_col_sum(Backend *be, float *sum, const float *z, int rows, int K) {
#pragma omp parallel for schedule(static)
    for (int k0 = 0; k0 < K; k0 += 256) {
        int k1 = k0 + 256 < K ? k0 + 256 : K;
        double acc[256] = {0};
        for (int r = 0; r < rows; r++) {
            const float *zr = z + (size_t)r * K;
            for (int k = k0; k < k1; k++) acc[k - k0] += zr[k];
        }
        for (int k = k0; k < k1; k++) sum[k] = (float)acc[k - k0];
    }
}

void cpu_center_update(Backend *be, float *center, const float *sum, int K, float scale, float momentum) {
    for (int k = 0; k < K; k++) center[k] = center[k] * momentum + (sum[k] * scale) * (1.0f - momentum);
}

static double total_sum(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    return s;
}

void cpu_sinkhorn(Backend *be, Collective *coll, float *P, const float *z, int rows, int K, float temp, int n_iter,
                  float n_global) {
    float *shift = dino_malloc(sizeof(float) * (size_t)K);
    float *rowsum = dino_malloc(sizeof(float) * (size_t)K);
    // per-prototype shift, identical on every rank: mean over ranks of the local max
    for (int k = 0; k < K; k++) shift[k] = rows ? -FLT_MAX : 0.0f;
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < K; k++) {
            float v = z[(size_t)r * K + k] / temp;
            if (v > shift[k]) shift[k] = v;
        }
    collective_sum_f32(coll, shift, (size_t)K);
    float inv_world = 1.0f / (float)collective_world(coll);
    for (int k = 0; k < K; k++) shift[k] *= inv_world;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < K; k++) P[(size_t)r * K + k] = expf(z[(size_t)r * K + k] / temp - shift[k]);
    float tot = (float)total_sum(P, (size_t)rows * K);
    collective_sum_f32(coll, &tot, 1);
    cpu_scale(be, P, 1.0f / tot, (size_t)rows * K);
    for (int it = 0; it < n_iter; it++) {
        // each prototype's total weight over all samples (all ranks) becomes 1/K
        cpu_col_sum(be, rowsum, P, rows, K);
        collective_sum_f32(coll, rowsum, (size_t)K);
#pragma omp parallel for schedule(static)
        for (int r = 0; r < rows; r++) {
            float *p = P + (size_t)r * K;
            for (int k = 0; k < K; k++) p[k] = p[k] / rowsum[k] / (float)K;
            // each sample's total weight becomes 1/n_global (local: a sample lives on one rank)
            double s = 0;
            for (int k = 0; k < K; k++) s += p[k];
            float cs = (float)s;
            for (int k = 0; k < K; k++) p[k] = p[k] / cs / n_global;
        }
    }
    cpu_scale(be, P, n_global, (size_t)rows * K);
    free(shift);
    free(rowsum);
}

void cpu_softmax_ce(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                    int t_rows, int K, float temp, float alpha) {
    const float inv_t = 1.0f / temp;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *sr = s + (size_t)r * K, *tr = t + (size_t)(r % t_rows) * K;
        float mx = -FLT_MAX;
        for (int k = 0; k < K; k++)
            if (sr[k] * inv_t > mx) mx = sr[k] * inv_t;
        double se = 0, tsum = 0, dot = 0;
        for (int k = 0; k < K; k++) {
            float y = sr[k] * inv_t;
            se += exp((double)(y - mx));
            tsum += tr[k];
            dot += (double)tr[k] * y;
        }
        double lse = mx + log(se);
        if (loss) loss[r] = (float)(tsum * lse - dot);
        if (ds) {
            float c = alpha * (w ? w[r] : 1.0f) * inv_t;
            float ts = (float)tsum;
            float *d = ds + (size_t)r * K;
            for (int k = 0; k < K; k++) {
                float q = (float)exp((double)(sr[k] * inv_t) - lse);
                d[k] = c * (q * ts - tr[k]);
            }
        }
    }
}

void cpu_entropy_mean(Backend *be, float *out, const float *P, int rows, int K) {
    double tot = 0;
    for (int r = 0; r < rows; r++) {
        const float *p = P + (size_t)r * K;
        double h = 0;
        for (int k = 0; k < K; k++)
            if (p[k] > 0) h -= (double)p[k] * log((double)p[k]);
        tot += h;
    }
    out[0] = rows ? (float)(tot / rows) : 0.0f;
}

// x^ = x / max(||x||, eps) per row (torch F.normalize), norms kept for the backward.
static void normalize_rows(double *xh, double *nrm, const float *x, int B, int D, double eps) {
    for (int i = 0; i < B; i++) {
        double ss = 0;
        for (int d = 0; d < D; d++) ss += (double)x[(size_t)i * D + d] * x[(size_t)i * D + d];
        nrm[i] = sqrt(ss);
        double den = nrm[i] > eps ? nrm[i] : eps;
        for (int d = 0; d < D; d++) xh[(size_t)i * D + d] = x[(size_t)i * D + d] / den;
    }
}

// dx_acc += alpha * d/dx of a loss whose gradient w.r.t. x^ is dxh.
static void normalize_rows_bwd(float *dx_acc, const double *dxh, const double *xh, const double *nrm, int B, int D,
                               double eps, float alpha) {
    for (int i = 0; i < B; i++) {
        const double *g = dxh + (size_t)i * D, *u = xh + (size_t)i * D;
        float *o = dx_acc + (size_t)i * D;
        if (!(nrm[i] > eps)) {
            for (int d = 0; d < D; d++) o[d] += (float)(alpha * g[d] / eps);
            continue;
        }
        double dot = 0;
        for (int d = 0; d < D; d++) dot += u[d] * g[d];
        for (int d = 0; d < D; d++) o[d] += (float)(alpha * (g[d] - u[d] * dot) / nrm[i]);
    }
}

#define KOLEO_EPS 1e-8

void cpu_koleo(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float alpha) {
    DINO_ASSERT(B >= 2, "koleo: needs at least 2 samples per crop, got %d", B);
    double *xh = dino_malloc(sizeof(double) * (size_t)B * D), *nrm = dino_malloc(sizeof(double) * (size_t)B);
    double *diff = dino_malloc(sizeof(double) * (size_t)B * D), *dist = dino_malloc(sizeof(double) * (size_t)B);
    int *nn = dino_malloc(sizeof(int) * (size_t)B);
    normalize_rows(xh, nrm, x, B, D, KOLEO_EPS);
    double L = 0;
    for (int i = 0; i < B; i++) {
        // nearest neighbour = largest inner product, self excluded (first index on ties, as torch.max)
        double best = -INFINITY;
        nn[i] = i == 0 ? 1 : 0; // stays valid when every product is NaN (a diverged step)
        for (int j = 0; j < B; j++) {
            if (j == i) continue;
            double dot = 0;
            for (int d = 0; d < D; d++) dot += xh[(size_t)i * D + d] * xh[(size_t)j * D + d];
            if (dot > best) best = dot, nn[i] = j;
        }
        double ss = 0;
        for (int d = 0; d < D; d++) {
            double v = xh[(size_t)i * D + d] - xh[(size_t)nn[i] * D + d] + KOLEO_EPS; // PairwiseDistance eps
            diff[(size_t)i * D + d] = v;
            ss += v * v;
        }
        dist[i] = sqrt(ss);
        L -= log(dist[i] + KOLEO_EPS);
    }
    loss[0] = (float)(L / B);
    if (dx_acc) {
        double *dxh = dino_calloc((size_t)B * D, sizeof(double));
        for (int i = 0; i < B; i++) {
            double c = dist[i] > 0 ? -1.0 / (B * (dist[i] + KOLEO_EPS) * dist[i]) : 0.0;
            for (int d = 0; d < D; d++) {
                double gi = c * diff[(size_t)i * D + d];
                dxh[(size_t)i * D + d] += gi;
                dxh[(size_t)nn[i] * D + d] -= gi;
            }
        }
        normalize_rows_bwd(dx_acc, dxh, xh, nrm, B, D, KOLEO_EPS, alpha);
        free(dxh);
    }
    free(xh), free(nrm), free(diff), free(dist), free(nn);
}

void cpu_kde(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float kappa, float alpha) {
    double *xh = dino_malloc(sizeof(double) * (size_t)B * D), *nrm = dino_malloc(sizeof(double) * (size_t)B);
    double *A = dino_malloc(sizeof(double) * (size_t)B * B); // row-softmax of kappa * S
    normalize_rows(xh, nrm, x, B, D, KOLEO_EPS);
    double L = 0;
    for (int i = 0; i < B; i++) {
        double s = 0;
        for (int j = 0; j < B; j++) {
            double dot = 0;
            for (int d = 0; d < D; d++) dot += xh[(size_t)i * D + d] * xh[(size_t)j * D + d];
            A[(size_t)i * B + j] = exp(kappa * (dot - 1.0)); // <= e^0: no overflow
            s += A[(size_t)i * B + j];
        }
        L += log(s / B);
        for (int j = 0; j < B; j++) A[(size_t)i * B + j] /= s;
    }
    loss[0] = (float)(L / B);
    if (dx_acc) {
        // dloss/dS_ij = kappa A_ij / B; S = x^ x^^T gives dx^_k = sum_j (dS_kj + dS_jk) x^_j
        double *dxh = dino_calloc((size_t)B * D, sizeof(double));
        for (int k = 0; k < B; k++)
            for (int j = 0; j < B; j++) {
                double c = kappa * (A[(size_t)k * B + j] + A[(size_t)j * B + k]) / B;
                for (int d = 0; d < D; d++) dxh[(size_t)k * D + d] += c * xh[(size_t)j * D + d];
            }
        normalize_rows_bwd(dx_acc, dxh, xh, nrm, B, D, KOLEO_EPS, alpha);
        free(dxh);
    }
    free(xh), free(nrm), free(A);
}

// Weighted k-NN: see knn.h.
#include "train/knn.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

#include "common/check.h"

void l2_normalize_rows(float *x, int n, int D) {
    for (int i = 0; i < n; i++) {
        float *r = x + (size_t)i * D;
        double s = 0;
        for (int c = 0; c < D; c++) s += (double)r[c] * r[c];
        float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
        for (int c = 0; c < D; c++) r[c] *= inv;
    }
}

void knn_predict(const float *train, const int *ytrain, int n_train, const float *test, int n_test, int D,
                 int n_classes, int k, float T, int *pred) {
    if (k > n_train) k = n_train;
    enum { CHUNK = 256 };
    float *sim = dino_malloc(sizeof(float) * (size_t)CHUNK * n_train);
    for (int i0 = 0; i0 < n_test; i0 += CHUNK) {
        int nb = n_test - i0 < CHUNK ? n_test - i0 : CHUNK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n_train, D, 1.0f, test + (size_t)i0 * D, D, train, D,
                    0.0f, sim, n_train);
#pragma omp parallel
        {
            float *best = dino_malloc(sizeof(float) * (size_t)k);
            int *bidx = dino_malloc(sizeof(int) * (size_t)k);
            double *votes = dino_malloc(sizeof(double) * (size_t)n_classes);
#pragma omp for
            for (int j = 0; j < nb; j++) {
                const float *s = sim + (size_t)j * n_train;
                int m = 0; // top-k by insertion (descending; ties keep the lower train index first)
                for (int t = 0; t < n_train; t++) {
                    if (m == k && s[t] <= best[k - 1]) continue;
                    int p = m < k ? m++ : k - 1;
                    while (p > 0 && best[p - 1] < s[t]) {
                        best[p] = best[p - 1];
                        bidx[p] = bidx[p - 1];
                        p--;
                    }
                    best[p] = s[t];
                    bidx[p] = t;
                }
                for (int c = 0; c < n_classes; c++) votes[c] = 0;
                for (int q = 0; q < m; q++) votes[ytrain[bidx[q]]] += exp((double)best[q] / T);
                int arg = 0;
                for (int c = 1; c < n_classes; c++)
                    if (votes[c] > votes[arg]) arg = c;
                pred[i0 + j] = arg;
            }
            free(best);
            free(bidx);
            free(votes);
        }
    }
    free(sim);
}

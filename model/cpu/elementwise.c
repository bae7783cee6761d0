#include "model/cpu/cpu_ops.h"

void cpu_axpy(Backend *be, float *y, float alpha, const float *x, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

void cpu_scale(Backend *be, float *x, float alpha, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= alpha;
}

// Sum of squares in double, over fixed blocks summed in order: deterministic for any thread count.
double cpu_sum_squares(Backend *be, const float *x, size_t n) {
    const size_t blk = 1 << 16;
    size_t nb = (n + blk - 1) / blk;
    double total = 0;
    double part[64];
    for (size_t b0 = 0; b0 < nb; b0 += 64) {
        size_t b1 = b0 + 64 < nb ? b0 + 64 : nb;
#pragma omp parallel for schedule(static)
        for (size_t b = b0; b < b1; b++) {
            size_t i1 = (b + 1) * blk < n ? (b + 1) * blk : n;
            double s = 0;
            for (size_t i = b * blk; i < i1; i++) s += (double)x[i] * x[i];
            part[b - b0] = s;
        }
        for (size_t b = b0; b < b1; b++) total += part[b - b0];
    }
    return total;
}

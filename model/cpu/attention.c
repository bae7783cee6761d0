// Multi-head self-attention with the probabilities kept for backward: at DINOv2's token counts
// (T <= 261) the (B,H,T,T) matrix is small next to the MLP activations, and it keeps the reference
// simple. One (image, head) pair per OpenMP task, each doing its small GEMMs single-threaded.
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "common/check.h"
#include "model/cpu/cpu_ops.h"
#include "model/cpu/vmath.h"

size_t cpu_attention_saved_floats(Backend *be, int B, int T, int H, int Dh) { return (size_t)B * H * T * T; }

static void softmax_rows(float *S, int T) {
    for (int i = 0; i < T; i++) {
        float *r = S + (size_t)i * T;
        float mx = r[0];
        for (int j = 1; j < T; j++) mx = r[j] > mx ? r[j] : mx;
        float sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < T; j++) {
            r[j] = dino_expf(r[j] - mx);
            sum += r[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < T; j++) r[j] *= inv;
    }
}

void cpu_attention_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh) {
    const int D = H * Dh, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    cpu_blas_threads_begin_parallel();
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *q = qkv + (size_t)b * T * ld + (size_t)h * Dh, *k = q + D, *v = q + 2 * D;
        float *P = saved + (size_t)bh * T * T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, Dh, scale, q, ld, k, ld, 0.0f, P, T);
        softmax_rows(P, T);
        float *o = out + (size_t)b * T * D + (size_t)h * Dh;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, Dh, T, 1.0f, P, T, v, ld, 0.0f, o, D);
    }
    cpu_blas_threads_end_parallel();
}

void cpu_attention_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                       int T, int H, int Dh) {
    const int D = H * Dh, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    int nthr = omp_get_max_threads();
    float *scratch = dino_malloc(sizeof(float) * (size_t)nthr * T * T);
    cpu_blas_threads_begin_parallel();
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        float *dS = scratch + (size_t)omp_get_thread_num() * T * T;
        const float *q = qkv + (size_t)b * T * ld + (size_t)h * Dh, *k = q + D, *v = q + 2 * D;
        float *dq = dqkv + (size_t)b * T * ld + (size_t)h * Dh, *dk = dq + D, *dv = dq + 2 * D;
        const float *P = saved + (size_t)bh * T * T;
        const float *dO = dout + (size_t)b * T * D + (size_t)h * Dh;
        // dV = P^T dO ; dP = dO V^T
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, Dh, T, 1.0f, P, T, dO, D, 0.0f, dv, ld);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, Dh, 1.0f, dO, D, v, ld, 0.0f, dS, T);
        // softmax backward: dS = P (.) (dP - rowsum(dP (.) P)), times the 1/sqrt(Dh) of the scores
        for (int i = 0; i < T; i++) {
            const float *p = P + (size_t)i * T;
            float *d = dS + (size_t)i * T;
            float dot = 0;
            for (int j = 0; j < T; j++) dot += p[j] * d[j];
            for (int j = 0; j < T; j++) d[j] = scale * p[j] * (d[j] - dot);
        }
        // dQ = dS K ; dK = dS^T Q
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, Dh, T, 1.0f, dS, T, k, ld, 0.0f, dq, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, Dh, T, 1.0f, dS, T, q, ld, 0.0f, dk, ld);
    }
    cpu_blas_threads_end_parallel();
    free(scratch);
}

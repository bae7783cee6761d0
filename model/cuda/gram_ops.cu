// The Gram anchoring loss of DINOv3 (dinov3/loss/gram_loss.py GramLoss, img_level) on the GPU: row
// normalization, the per-image Gram matrices as one strided-batched GEMM, the squared errors and their
// gradient, dU = 2 dS U as another batched GEMM, then the normalization's backward. The GEMMs run in
// fp32 whatever the backend's GEMM precision (the loss is a difference of two Gram matrices: bf16 inputs
// would add errors of the size of the signal, and these GEMMs are small next to the backbone's). Sums are
// fixed block trees and a fixed-order loop: results repeat bit for bit.
#include <math.h>

extern "C" {
#include "common/check.h"
}
#include "model/cuda/cuda_ops.cuh"
#include "model/cuda/reduce.cuh"

#define GRAM_EPS 1e-12 // torch F.normalize's default eps
#define GRAM_THREADS 128

// u = x / max(||x||, eps) per row (a copy when !normalize), one block per row; nrm[r] = ||x_r||.
__global__ void gram_rows_kernel(float *u, double *nrm, const float *x, int D, int normalize) {
    __shared__ double sh[32];
    const size_t r = blockIdx.x;
    const float *xr = x + r * D;
    double ss = 0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) ss += (double)xr[d] * xr[d];
    ss = block_sum(ss, sh);
    const double nr = sqrt(ss), den = normalize ? (nr > GRAM_EPS ? nr : GRAM_EPS) : 1.0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) u[r * D + d] = (float)(xr[d] / den);
    if (threadIdx.x == 0) nrm[r] = nr;
}

// One block per Gram row (image b, token i): clamps, rowsum[row] = sum_j (S - T)^2 (double), and S is
// overwritten with dloss/dS = 2 (S - T) scale (0 where S was clamped).
__global__ void gram_diff_kernel(float *S, double *rowsum, const float *T, int N, int neg_mode, double scale) {
    __shared__ double sh[32];
    const size_t row = blockIdx.x;
    float *s = S + row * N;
    const float *t = T + row * N;
    double acc = 0;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        float sv = s[j], tv = t[j];
        int s_clamped = 0;
        if (neg_mode >= 1 && tv < 0) tv = 0;
        if (neg_mode == 1 && sv < 0) sv = 0, s_clamped = 1;
        const double e = (double)sv - tv;
        acc += e * e;
        s[j] = s_clamped ? 0.0f : (float)(2.0 * e * scale);
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) rowsum[row] = acc;
}

// loss[0] = scale * sum of rowsum in order.
__global__ void gram_sum_kernel(float *loss, const double *rowsum, size_t rows, double scale) {
    double L = 0;
    for (size_t r = 0; r < rows; r++) L += rowsum[r];
    loss[0] = (float)(L * scale);
}

// ds_acc += alpha * (the normalization's backward of g), one block per row; alpha_w (gram_loss_ss): alpha
// times this weight from the step's scalar block, as the host computes it.
__global__ void gram_rows_bwd_kernel(float *ds_acc, const float *g_all, const float *u_all, const double *nrm, int D,
                                     int normalize, float alpha, const double *alpha_w) {
    if (alpha_w) alpha = (float)((double)alpha * *alpha_w);
    __shared__ double sh[32];
    const size_t r = blockIdx.x;
    const float *g = g_all + r * D, *u = u_all + r * D;
    float *o = ds_acc + r * D;
    if (!normalize) {
        for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] += alpha * g[d];
        return;
    }
    if (!(nrm[r] > GRAM_EPS)) {
        for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] += (float)(alpha * g[d] / GRAM_EPS);
        return;
    }
    double dot = 0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) dot += (double)u[d] * g[d];
    dot = block_sum(dot, sh);
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] += (float)(alpha * (g[d] - u[d] * dot) / nrm[r]);
}

static void gram_loss_launch(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N,
                             int D, int normalize, int neg_mode, float alpha, const double *alpha_w) {
    if (B < 1 || N < 1 || D < 1 || neg_mode < 0 || neg_mode > 2) DINO_DIE("gram_loss: bad shape or mode");
    cudaStream_t st = cuda_stream(be);
    const size_t rows = (size_t)B * N, nn = (size_t)N * N, nd = (size_t)N * D;
    // scratch: us, ut [B,N,D] (ut becomes dU), S, T [B,N,N] (floats); ns, nt, rowsum [B*N] (doubles)
    char *p = (char *)cuda_scratch(be, sizeof(float) * (2 * rows * D + 2 * B * nn) + sizeof(double) * 3 * rows);
    double *ns = (double *)p, *nt = ns + rows, *rowsum = nt + rows;
    float *us = (float *)(rowsum + rows), *ut = us + rows * D, *S = ut + rows * D, *T = S + B * nn;
    DINO_LAUNCH(gram_rows_kernel, rows, GRAM_THREADS, 0, st)(us, ns, s, D, normalize);
    cudaCheckLaunch();
    DINO_LAUNCH(gram_rows_kernel, rows, GRAM_THREADS, 0, st)(ut, nt, t, D, normalize);
    cudaCheckLaunch();
    CudaImpl *c = cuda_impl(be);
    const CudaGemmPrecision prec = c->gemm_precision;
    c->gemm_precision = CUDA_GEMM_FP32; // see the header comment
    cuda_gemm_batched(be, 0, 1, N, N, D, 1.0f, us, D, (long long)nd, us, D, (long long)nd, 0.0f, S, N, (long long)nn, B);
    cuda_gemm_batched(be, 0, 1, N, N, D, 1.0f, ut, D, (long long)nd, ut, D, (long long)nd, 0.0f, T, N, (long long)nn, B);
    const double scale = 1.0 / ((double)B * (double)nn); // torch MSELoss: mean over every element
    DINO_LAUNCH(gram_diff_kernel, rows, GRAM_THREADS, 0, st)(S, rowsum, T, N, neg_mode, scale);
    cudaCheckLaunch();
    DINO_LAUNCH(gram_sum_kernel, 1, 1, 0, st)(loss, rowsum, rows, scale);
    cudaCheckLaunch();
    if (ds_acc) {
        // S = U U^T and dloss/dS is symmetric: dU = 2 dS U (into ut, no longer needed)
        cuda_gemm_batched(be, 0, 0, N, D, N, 2.0f, S, N, (long long)nn, us, D, (long long)nd, 0.0f, ut, D,
                          (long long)nd, B);
        DINO_LAUNCH(gram_rows_bwd_kernel, rows, GRAM_THREADS, 0, st)(ds_acc, ut, us, ns, D, normalize, alpha, alpha_w);
        cudaCheckLaunch();
    }
    c->gemm_precision = prec;
}

void cuda_gram_loss(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N, int D,
                    int normalize, int neg_mode, float alpha) {
    CUDA_OP_RANGE("gram_loss");
    gram_loss_launch(be, loss, ds_acc, s, t, B, N, D, normalize, neg_mode, alpha, NULL);
}

void cuda_gram_loss_ss(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N, int D,
                       int normalize, int neg_mode, float alpha, const DinoStepScalars *ss) {
    CUDA_OP_RANGE("gram_loss_ss");
    gram_loss_launch(be, loss, ds_acc, s, t, B, N, D, normalize, neg_mode, alpha, &ss->in.gram_weight);
}

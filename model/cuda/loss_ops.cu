// Ops of the DINOv2 losses (model/cpu/loss_ops.c defines them): teacher targets (softmax centering,
// Sinkhorn-Knopp), the fused student softmax cross-entropy, KoLeo and KDE. All fp32 in memory, with
// the sums the CPU makes in double also made in double here; every reduction is a fixed block tree
// (reduce.cuh) or a fixed-order loop, never a float atomic, so results repeat bit for bit.
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "common/check.h"
}
#include "model/cuda/cuda_ops.cuh"
#include "model/cuda/reduce.cuh"

#define K_THREADS 1024 // one block per row of K (65536) prototypes
#define SUM_BLOCKS 512 // fixed partition of whole-tensor sums (independent of the device)
#define SUM_THREADS 256

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// The teacher targets (softmax_center, sinkhorn) stream the [rows, K] logits several times per call: the
// default kernels recompute an exponential or a quotient where the earlier ones wrote P and read it back,
// the same float operations in the same order, so the same bits with fewer passes over device memory
// (softmax_center 16 instead of 20 bytes per logit, Sinkhorn-Knopp 16 + 16 n_iter instead of 32 + 20
// n_iter; docs/performance.md "The head's softmax and cross-entropy"). DINO_CUDA_TARGETS_UNFUSED=1 runs the
// earlier kernels: the A/B, and the reference of the bit-identity test (read at every call).
static bool targets_unfused(void) {
    const char *e = getenv("DINO_CUDA_TARGETS_UNFUSED");
    return e && strcmp(e, "1") == 0;
}

// ---- softmax centering, column sums, centre -----------------------------------------------------

// (z - center) / temp of logit k of a row, as every pass of both kernels computes it (the same bits).
__device__ __forceinline__ float centered(const float *zr, const float *center, int k, float temp) {
    return (zr[k] - (center ? center[k] : 0.0f)) / temp;
}
// The block's max of centered() over the row. temp_dev (softmax_center_ss): the temperature from the
// step's scalar block instead of temp_arg; *temp gets the one used.
__device__ float centered_row_max(const float *zr, const float *center, int K, float temp_arg, const double *temp_dev,
                                  float *temp, float *shf) {
    *temp = temp_dev ? (float)*temp_dev : temp_arg;
    float mx = -FLT_MAX;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float y = centered(zr, center, k, *temp);
        mx = y > mx ? y : mx;
    }
    return block_max(mx, shf, -FLT_MAX);
}

// Three passes over z: the row max, the sum of the exponentials (in double), P = exponential * (1 / sum),
// recomputed (expf of the same argument) rather than stored in pass 2 and read back.
__global__ void softmax_center_recompute_kernel(float *P, const float *z, const float *center, int K, float temp_arg,
                                                const double *temp_dev) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    const size_t r = blockIdx.x;
    const float *zr = z + r * K;
    float *p = P + r * K;
    float temp;
    const float mx = centered_row_max(zr, center, K, temp_arg, temp_dev, &temp, shf);
    double s = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) s += expf(centered(zr, center, k, temp) - mx);
    s = block_sum(s, shd);
    const float inv = (float)(1.0 / s);
    for (int k = threadIdx.x; k < K; k += blockDim.x) p[k] = expf(centered(zr, center, k, temp) - mx) * inv;
}

// The earlier kernel (DINO_CUDA_TARGETS_UNFUSED=1): exponentials written in pass 2, normalized in place.
__global__ void softmax_center_kernel(float *P, const float *z, const float *center, int K, float temp_arg,
                                      const double *temp_dev) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    const size_t r = blockIdx.x;
    const float *zr = z + r * K;
    float *p = P + r * K;
    float temp;
    const float mx = centered_row_max(zr, center, K, temp_arg, temp_dev, &temp, shf);
    double s = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        float e = expf(centered(zr, center, k, temp) - mx);
        p[k] = e;
        s += e;
    }
    s = block_sum(s, shd);
    const float inv = (float)(1.0 / s);
    for (int k = threadIdx.x; k < K; k += blockDim.x) p[k] *= inv;
}

static void softmax_center_launch(Backend *be, float *P, const float *z, const float *center, int rows, int K,
                                  float temp, const double *temp_dev) {
    if (targets_unfused())
        DINO_LAUNCH(softmax_center_kernel, rows, K_THREADS, 0, cuda_stream(be))(P, z, center, K, temp, temp_dev);
    else
        DINO_LAUNCH(softmax_center_recompute_kernel, rows, K_THREADS, 0, cuda_stream(be))(P, z, center, K, temp,
                                                                                          temp_dev);
    cudaCheckLaunch();
}

void cuda_softmax_center(Backend *be, float *P, const float *z, const float *center, int rows, int K, float temp) {
    CUDA_OP_RANGE("softmax_center");
    if (rows <= 0 || K <= 0) return;
    softmax_center_launch(be, P, z, center, rows, K, temp, NULL);
}

void cuda_softmax_center_ss(Backend *be, float *P, const float *z, const float *center, int rows, int K,
                            const DinoStepScalars *ss) {
    CUDA_OP_RANGE("softmax_center_ss");
    if (rows <= 0 || K <= 0) return;
    softmax_center_launch(be, P, z, center, rows, K, 0.0f, &ss->in.teacher_temp);
}

// One thread per column, rows in order, in double: coalesced across the threads of a warp.
__global__ void col_sum_kernel(float *sum, const float *z, int rows, int K) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K) return;
    double acc = 0;
    for (int r = 0; r < rows; r++) acc += z[(size_t)r * K + k];
    sum[k] = (float)acc;
}

void cuda_col_sum(Backend *be, float *sum, const float *z, int rows, int K) {
    CUDA_OP_RANGE("col_sum");
    if (K <= 0) return;
    DINO_LAUNCH(col_sum_kernel, ceil_div(K, 256), 256, 0, cuda_stream(be))(sum, z, rows, K);
    cudaCheckLaunch();
}

__global__ void center_update_kernel(float *center, const float *sum, int K, float scale, float momentum) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < K) center[k] = center[k] * momentum + (sum[k] * scale) * (1.0f - momentum);
}

void cuda_center_update(Backend *be, float *center, const float *sum, int K, float scale, float momentum) {
    CUDA_OP_RANGE("center_update");
    if (K <= 0) return;
    DINO_LAUNCH(center_update_kernel, ceil_div(K, 256), 256, 0, cuda_stream(be))(center, sum, K, scale, momentum);
    cudaCheckLaunch();
}

// ---- Sinkhorn-Knopp ---------------------------------------------------------------------------------

__global__ void column_max_kernel(float *shift, const float *z, int rows, int K, float temp) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K) return;
    float m = rows ? -FLT_MAX : 0.0f;
    for (int r = 0; r < rows; r++) {
        float v = z[(size_t)r * K + k] / temp;
        if (v > m) m = v;
    }
    shift[k] = m;
}

__global__ void sinkhorn_exp_kernel(float *P, const float *z, const float *shift_sum, size_t n, int K, float temp,
                                    float inv_world) {
    // __fmul_rn: the shift rounded to fp32 before the subtraction, as the CPU stores it (an FMA would
    // skip that rounding, an error of up to half an ulp of ~|z|/temp in the exponent)
    GRID_STRIDE(i, n) P[i] = expf(z[i] / temp - __fmul_rn(shift_sum[i % K], inv_world));
}

// total[0] = (float) sum of x, in double: SUM_BLOCKS block trees, then one block over the partials.
__global__ void sum_partial_kernel(double *partial, const float *x, size_t n) {
    __shared__ double sh[32];
    double s = 0;
    GRID_STRIDE(i, n) s += x[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
__global__ void sum_finish_kernel(float *total, const double *partial, int n) {
    __shared__ double sh[32];
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) total[0] = (float)s;
}

__global__ void scale_by_inverse_kernel(float *x, const float *den, size_t n) {
    const float inv = 1.0f / den[0];
    GRID_STRIDE(i, n) x[i] *= inv;
}

// One block per sample: prototype normalization (global column sums), then this sample's row to
// 1/n_global.
__global__ void sinkhorn_rows_kernel(float *P, const float *colsum, int K, float n_global) {
    __shared__ double sh[32];
    float *p = P + (size_t)blockIdx.x * K;
    double s = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        float v = p[k] / colsum[k] / (float)K;
        p[k] = v;
        s += v;
    }
    const float cs = (float)block_sum(s, sh);
    for (int k = threadIdx.x; k < K; k += blockDim.x) p[k] = p[k] / cs / n_global;
}

// The default iteration (fewer passes): P holds exp(z/temp - shift) until the first iteration, which
// applies the pending 1 / total as it reads (pending: the device total, else NULL), exactly the product the
// earlier scale_by_inverse_kernel stored.
__device__ __forceinline__ float sinkhorn_pending(const float *p, size_t i, const float *pending, float inv) {
    return pending ? p[i] * inv : p[i];
}
// colsum[k] = sum over rows of P[:, k] (double, rows in order: col_sum_kernel's order)
__global__ void sinkhorn_col_sum_kernel(float *colsum, const float *P, const float *pending, int rows, int K) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K) return;
    const float inv = pending ? 1.0f / pending[0] : 0.0f;
    double acc = 0;
    for (int r = 0; r < rows; r++) acc += sinkhorn_pending(P, (size_t)r * K + k, pending, inv);
    colsum[k] = (float)acc;
}
// One block per sample: the prototype normalization v = p / colsum / K summed (pass 1, nothing stored),
// then recomputed and written divided by the row sum and n_global (pass 2); on the last iteration times
// n_global as well (the earlier final cuda_scale). Two reads and one write of the row instead of two and two.
__global__ void sinkhorn_rows_recompute_kernel(float *P, const float *colsum, const float *pending, int K,
                                               float n_global, int last) {
    __shared__ double sh[32];
    const size_t row = (size_t)blockIdx.x * K;
    const float inv = pending ? 1.0f / pending[0] : 0.0f;
    double s = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) s += sinkhorn_pending(P, row + k, pending, inv) / colsum[k] / (float)K;
    const float cs = (float)block_sum(s, sh);
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float v = sinkhorn_pending(P, row + k, pending, inv) / colsum[k] / (float)K;
        const float o = v / cs / n_global;
        P[row + k] = last ? o * n_global : o;
    }
}

void cuda_sinkhorn(Backend *be, Collective *coll, float *P, const float *z, int rows, int K, float temp, int n_iter,
                   float n_global) {
    CUDA_OP_RANGE("sinkhorn");
    cudaStream_t st = cuda_stream(be);
    const size_t n = (size_t)rows * K;
    // scratch: partial sums, the total (its own 256 bytes), shift[K], colsum[K]; all device memory, so
    // the collective (NCCL for this backend) reduces them in place, exactly as the CPU op calls it.
    char *base = (char *)cuda_scratch(be, sizeof(double) * SUM_BLOCKS + 256 + 2 * sizeof(float) * (size_t)K);
    double *partial = (double *)base;
    float *total = (float *)(base + sizeof(double) * SUM_BLOCKS);
    float *shift = total + 64, *colsum = shift + K;
    // per-prototype shift, identical on every rank: mean over ranks of the local max
    DINO_LAUNCH(column_max_kernel, ceil_div(K, 256), 256, 0, st)(shift, z, rows, K, temp);
    cudaCheckLaunch();
    collective_sum_f32(coll, shift, (size_t)K);
    const float inv_world = 1.0f / (float)collective_world(coll);
    if (n) {
        DINO_LAUNCH(sinkhorn_exp_kernel, grid_1d(n, 256), 256, 0, st)(P, z, shift, n, K, temp, inv_world);
        cudaCheckLaunch();
    }
    DINO_LAUNCH(sum_partial_kernel, SUM_BLOCKS, SUM_THREADS, 0, st)(partial, P, n);
    cudaCheckLaunch();
    DINO_LAUNCH(sum_finish_kernel, 1, SUM_THREADS, 0, st)(total, partial, SUM_BLOCKS);
    cudaCheckLaunch();
    collective_sum_f32(coll, total, 1);
    if (n_iter > 0 && K > 0 && !targets_unfused()) {
        for (int it = 0; it < n_iter; it++) {
            const float *pending = it == 0 ? total : NULL;
            DINO_LAUNCH(sinkhorn_col_sum_kernel, ceil_div(K, 256), 256, 0, st)(colsum, P, pending, rows, K);
            cudaCheckLaunch();
            collective_sum_f32(coll, colsum, (size_t)K);
            if (rows > 0) {
                DINO_LAUNCH(sinkhorn_rows_recompute_kernel, rows, K_THREADS, 0, st)(P, colsum, pending, K, n_global,
                                                                                   it == n_iter - 1);
                cudaCheckLaunch();
            }
        }
        return;
    }
    if (n) {
        DINO_LAUNCH(scale_by_inverse_kernel, grid_1d(n, 256), 256, 0, st)(P, total, n);
        cudaCheckLaunch();
    }
    for (int it = 0; it < n_iter; it++) {
        // each prototype's total weight over all samples (all ranks) becomes 1/K
        cuda_col_sum(be, colsum, P, rows, K);
        collective_sum_f32(coll, colsum, (size_t)K);
        // each sample's total weight becomes 1/n_global (local: a sample lives on one rank)
        if (rows > 0) {
            DINO_LAUNCH(sinkhorn_rows_kernel, rows, K_THREADS, 0, st)(P, colsum, K, n_global);
            cudaCheckLaunch();
        }
    }
    cuda_scale(be, P, n_global, n);
}

// ---- fused softmax cross-entropy ------------------------------------------------------------------

// One block per student row. Pass 1 (online softmax): each thread keeps its running max m and
// sum_k exp(y - m) in double, plus sum t and sum t*y; the block combines them in a fixed tree.
// Pass 2 writes the gradient. Two reads of s (and t) in all. alpha_w (softmax_ce_ss): alpha is
// (float)(alpha * *alpha_w) / div, a weight from the step's scalar block, as the host computes it.
__global__ void softmax_ce_kernel(float *loss, float *ds, const float *s, const float *t, const float *w, int t_rows,
                                  int K, float inv_t, float alpha, const double *alpha_w, float div) {
    __shared__ float shf[32];
    __shared__ double sh1[32], sh2[32], sh3[32];
    const int r = blockIdx.x;
    const float *sr = s + (size_t)r * K, *tr = t + (size_t)(r % t_rows) * K;
    float m = -INFINITY;
    double se = 0, tsum = 0, dot = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float y = __fmul_rn(sr[k], inv_t); // rounded as the CPU's y, never fused into y - m
        tsum += tr[k];
        dot += (double)tr[k] * y;
        if (y > m) {
            se = se * exp((double)m - (double)y) + 1.0;
            m = y;
        } else {
            se += exp((double)(y - m));
        }
    }
    const float mx = block_max(m, shf, -INFINITY);
    se = m == -INFINITY ? 0.0 : se * exp((double)m - (double)mx);
    se = block_sum(se, sh1);
    tsum = block_sum(tsum, sh2);
    dot = block_sum(dot, sh3);
    const double lse = mx + log(se);
    if (loss && threadIdx.x == 0) loss[r] = (float)(tsum * lse - dot);
    if (!ds) return;
    if (alpha_w) alpha = (float)((double)alpha * *alpha_w) / div; // IEEE division (no fast-math), as the host
    const float c = alpha * (w ? w[r] : 1.0f) * inv_t;
    const float ts = (float)tsum;
    float *d = ds + (size_t)r * K;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float q = (float)exp((double)__fmul_rn(sr[k], inv_t) - lse);
        d[k] = c * (q * ts - tr[k]);
    }
}

void cuda_softmax_ce(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                     int t_rows, int K, float temp, float alpha) {
    CUDA_OP_RANGE("softmax_ce");
    if (rows <= 0 || K <= 0 || (!loss && !ds)) return;
    DINO_LAUNCH(softmax_ce_kernel, rows, K_THREADS, 0, cuda_stream(be))(loss, ds, s, t, w, t_rows, K, 1.0f / temp, alpha,
                                                                        (const double *)NULL, 1.0f);
    cudaCheckLaunch();
}

void cuda_softmax_ce_ss(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                        int t_rows, int K, float temp, float weight, float div, const DinoStepScalars *ss) {
    CUDA_OP_RANGE("softmax_ce_ss");
    if (rows <= 0 || K <= 0 || (!loss && !ds)) return;
    DINO_LAUNCH(softmax_ce_kernel, rows, K_THREADS, 0, cuda_stream(be))(loss, ds, s, t, w, t_rows, K, 1.0f / temp,
                                                                        weight, &ss->in.dino_local_weight, div);
    cudaCheckLaunch();
}

// ---- entropy --------------------------------------------------------------------------------------

__global__ void entropy_rows_kernel(double *h, const float *P, int K) {
    __shared__ double sh[32];
    const float *p = P + (size_t)blockIdx.x * K;
    double acc = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        if (p[k] > 0) acc -= (double)p[k] * log((double)p[k]);
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) h[blockIdx.x] = acc;
}
// Rows summed in order by one thread (rows is at most a few thousand).
__global__ void mean_of_kernel(float *out, const double *v, int n) {
    double tot = 0;
    for (int i = 0; i < n; i++) tot += v[i];
    out[0] = n ? (float)(tot / n) : 0.0f;
}

void cuda_entropy_mean(Backend *be, float *out, const float *P, int rows, int K) {
    CUDA_OP_RANGE("entropy_mean");
    double *h = (double *)cuda_scratch(be, sizeof(double) * (rows > 0 ? rows : 1));
    if (rows > 0) {
        DINO_LAUNCH(entropy_rows_kernel, rows, K_THREADS, 0, cuda_stream(be))(h, P, K);
        cudaCheckLaunch();
    }
    DINO_LAUNCH(mean_of_kernel, 1, 1, 0, cuda_stream(be))(out, h, rows > 0 ? rows : 0);
    cudaCheckLaunch();
}

// ---- KoLeo and KDE (B samples of D features; all in double as the CPU reference) ------------------

#define KOLEO_EPS 1e-8
#define SMALL_THREADS 128

// x^ = x / max(||x||, eps) per row (torch F.normalize), norms kept for the backward.
__global__ void normalize_rows_kernel(double *xh, double *nrm, const float *x, int D, double eps) {
    __shared__ double sh[32];
    const size_t i = blockIdx.x;
    double ss = 0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) ss += (double)x[i * D + d] * x[i * D + d];
    ss = block_sum(ss, sh);
    const double nr = sqrt(ss), den = nr > eps ? nr : eps;
    for (int d = threadIdx.x; d < D; d += blockDim.x) xh[i * D + d] = x[i * D + d] / den;
    if (threadIdx.x == 0) nrm[i] = nr;
}

// G[i,j] = x^_i . x^_j, one block per pair (the same products in the same tree for (i,j) and (j,i)).
__global__ void gram_kernel(double *G, const double *xh, int B, int D) {
    __shared__ double sh[32];
    const int i = blockIdx.y, j = blockIdx.x;
    double dot = 0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) dot += xh[(size_t)i * D + d] * xh[(size_t)j * D + d];
    dot = block_sum(dot, sh);
    if (threadIdx.x == 0) G[(size_t)i * B + j] = dot;
}

// dx_acc += alpha * d/dx of a loss whose gradient w.r.t. x^ is dxh.
__global__ void normalize_rows_bwd_kernel(float *dx_acc, const double *dxh, const double *xh, const double *nrm, int D,
                                          double eps, float alpha) {
    __shared__ double sh[32];
    const size_t i = blockIdx.x;
    const double *g = dxh + i * D, *u = xh + i * D;
    float *o = dx_acc + i * D;
    if (!(nrm[i] > eps)) {
        for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] += (float)(alpha * g[d] / eps);
        return;
    }
    double dot = 0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) dot += u[d] * g[d];
    dot = block_sum(dot, sh);
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] += (float)(alpha * (g[d] - u[d] * dot) / nrm[i]);
}

// loss[0] = (float)(sign * sum_i term[i] / B), terms in order.
__global__ void mean_terms_kernel(float *loss, const double *term, int B, double sign) {
    double L = 0;
    for (int i = 0; i < B; i++) L += sign * term[i];
    loss[0] = (float)(L / B);
}

// One block per sample i: nearest neighbour (largest product, self excluded, first index on ties, as
// torch.max; thread 0 scans in order), then diff_i = x^_i - x^_nn + eps, d_i = ||diff_i||.
__global__ void koleo_rows_kernel(int *nn, double *diff, double *term, double *coef, const double *xh,
                                  const double *G, int B, int D) {
    __shared__ double sh[32];
    __shared__ int nn_sh;
    const int i = blockIdx.x;
    if (threadIdx.x == 0) {
        double best = -INFINITY;
        int arg = i == 0 ? 1 : 0; // stays valid when every product is NaN (a diverged step)
        for (int j = 0; j < B; j++) {
            if (j == i) continue;
            const double dot = G[(size_t)i * B + j];
            if (dot > best) best = dot, arg = j;
        }
        nn_sh = arg;
        nn[i] = arg;
    }
    __syncthreads();
    const int j = nn_sh;
    double ss = 0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        const double v = xh[(size_t)i * D + d] - xh[(size_t)j * D + d] + KOLEO_EPS; // PairwiseDistance eps
        diff[(size_t)i * D + d] = v;
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    if (threadIdx.x == 0) {
        const double dist = sqrt(ss);
        term[i] = log(dist + KOLEO_EPS);
        coef[i] = dist > 0 ? -1.0 / (B * (dist + KOLEO_EPS) * dist) : 0.0;
    }
}

// dxh[k,d]: the CPU's scatter (+g_i at i, -g_i at nn(i), i in order) as a gather in the same order.
__global__ void koleo_dxh_kernel(double *dxh, const int *nn, const double *diff, const double *coef, int B, int D) {
    const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * D) return;
    const int k = (int)(idx / D), d = (int)(idx % D);
    double acc = 0;
    for (int i = 0; i < B; i++) {
        const double gi = coef[i] * diff[(size_t)i * D + d];
        if (i == k) acc += gi;
        if (nn[i] == k) acc -= gi;
    }
    dxh[idx] = acc;
}

// Scratch for KoLeo / KDE, in doubles: xh, diff and dxh [B*D], G [B*B], nrm, term, coef [B], nn [B ints].
typedef struct {
    double *xh, *diff, *dxh, *G, *nrm, *term, *coef;
    int *nn;
} PairScratch;

static PairScratch pair_scratch(Backend *be, int B, int D) {
    const size_t bd = (size_t)B * D, bb = (size_t)B * B;
    double *s = (double *)cuda_scratch(be, sizeof(double) * (3 * bd + bb + 4 * (size_t)B));
    PairScratch p;
    p.xh = s, p.diff = s + bd, p.dxh = s + 2 * bd, p.G = s + 3 * bd;
    p.nrm = p.G + bb, p.term = p.nrm + B, p.coef = p.term + B;
    p.nn = (int *)(p.coef + B);
    return p;
}

// KoLeo and KDE both start from the L2-normalized rows x^ and their Gram matrix G = x^ x^T.
static PairScratch normalized_gram(Backend *be, cudaStream_t st, const float *x, int B, int D) {
    PairScratch p = pair_scratch(be, B, D);
    DINO_LAUNCH(normalize_rows_kernel, B, SMALL_THREADS, 0, st)(p.xh, p.nrm, x, D, KOLEO_EPS);
    cudaCheckLaunch();
    DINO_LAUNCH(gram_kernel, dim3(B, B), SMALL_THREADS, 0, st)(p.G, p.xh, B, D);
    cudaCheckLaunch();
    return p;
}

void cuda_koleo(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float alpha) {
    CUDA_OP_RANGE("koleo");
    if (B < 2) DINO_DIE("koleo: needs at least 2 samples per crop, got %d", B);
    cudaStream_t st = cuda_stream(be);
    PairScratch p = normalized_gram(be, st, x, B, D);
    DINO_LAUNCH(koleo_rows_kernel, B, SMALL_THREADS, 0, st)(p.nn, p.diff, p.term, p.coef, p.xh, p.G, B, D);
    cudaCheckLaunch();
    DINO_LAUNCH(mean_terms_kernel, 1, 1, 0, st)(loss, p.term, B, -1.0);
    cudaCheckLaunch();
    if (!dx_acc) return;
    DINO_LAUNCH(koleo_dxh_kernel, ceil_div((size_t)B * D, 256), 256, 0, st)(p.dxh, p.nn, p.diff, p.coef, B, D);
    cudaCheckLaunch();
    DINO_LAUNCH(normalize_rows_bwd_kernel, B, SMALL_THREADS, 0, st)(dx_acc, p.dxh, p.xh, p.nrm, D, KOLEO_EPS, alpha);
    cudaCheckLaunch();
}

// One thread per sample i, in order over j: A[i,j] = exp(kappa (S_ij - 1)) / sum_j, term[i] = log(mean_j).
__global__ void kde_rows_kernel(double *A, double *term, const double *G, int B, double kappa) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B) return;
    double *a = A + (size_t)i * B;
    double s = 0;
    for (int j = 0; j < B; j++) {
        a[j] = exp(kappa * (G[(size_t)i * B + j] - 1.0)); // <= e^0: no overflow
        s += a[j];
    }
    term[i] = log(s / B);
    for (int j = 0; j < B; j++) a[j] /= s;
}

// dx^_k = sum_j kappa (A_kj + A_jk) / B x^_j, j in order.
__global__ void kde_dxh_kernel(double *dxh, const double *A, const double *xh, int B, int D, double kappa) {
    const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * D) return;
    const int k = (int)(idx / D), d = (int)(idx % D);
    double acc = 0;
    for (int j = 0; j < B; j++) {
        const double c = kappa * (A[(size_t)k * B + j] + A[(size_t)j * B + k]) / B;
        acc += c * xh[(size_t)j * D + d];
    }
    dxh[idx] = acc;
}

void cuda_kde(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float kappa, float alpha) {
    CUDA_OP_RANGE("kde");
    if (B < 1) DINO_DIE("kde: needs at least 1 sample, got %d", B);
    cudaStream_t st = cuda_stream(be);
    PairScratch p = normalized_gram(be, st, x, B, D);
    // A overwrites G row by row: each thread reads only its own row i of G before writing it.
    DINO_LAUNCH(kde_rows_kernel, ceil_div(B, 64), 64, 0, st)(p.G, p.term, p.G, B, (double)kappa);
    cudaCheckLaunch();
    DINO_LAUNCH(mean_terms_kernel, 1, 1, 0, st)(loss, p.term, B, 1.0);
    cudaCheckLaunch();
    if (!dx_acc) return;
    DINO_LAUNCH(kde_dxh_kernel, ceil_div((size_t)B * D, 256), 256, 0, st)(p.dxh, p.G, p.xh, B, D, (double)kappa);
    cudaCheckLaunch();
    DINO_LAUNCH(normalize_rows_bwd_kernel, B, SMALL_THREADS, 0, st)(dx_acc, p.dxh, p.xh, p.nrm, D, KOLEO_EPS, alpha);
    cudaCheckLaunch();
}

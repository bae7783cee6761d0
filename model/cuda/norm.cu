// LayerNorm over the last dimension, forward and backward. One warp per row; statistics in fp32 with
// the CPU reference's two passes (mean, then the mean of squared deviations); warp-shuffle trees in a
// fixed order, so results are the same on every run.
#include "model/cuda/cuda_ops.cuh"

#define LN_ROWS_PER_BLOCK 8 // warps per block

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// LayerNorm of one row xr by one warp: out row r, mean[r], rstd[r]. Shared by layernorm_fwd_kernel and
// the fused residual_layernorm_fwd_kernel, so that both compute the same bits.
__device__ __forceinline__ void layernorm_row(ActRef out, float *mean, float *rstd, const float *xr, const float *w,
                                              const float *b, size_t r, int D, float eps, int lane) {
    float s = 0.0f;
    for (int i = lane; i < D; i += 32) s += xr[i];
    const float m = warp_sum(s) / D;
    float v = 0.0f;
    for (int i = lane; i < D; i += 32) {
        float d = xr[i] - m;
        v += d * d;
    }
    const float rs = 1.0f / sqrtf(warp_sum(v) / D + eps);
    const size_t o = r * D;
    for (int i = lane; i < D; i += 32) act_st(out, o + i, (xr[i] - m) * rs * w[i] + b[i]);
    if (lane == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

__global__ void layernorm_fwd_kernel(ActRef out, float *mean, float *rstd, const float *x, const float *w,
                                     const float *b, int rows, int D, float eps) {
    const int r = blockIdx.x * LN_ROWS_PER_BLOCK + threadIdx.y, lane = threadIdx.x;
    if (r >= rows) return;
    layernorm_row(out, mean, rstd, x + (size_t)r * D, w, b, (size_t)r, D, eps, lane);
}

void cuda_layernorm_fwd(Backend *be, float *out, float *mean, float *rstd, const float *x, const float *w,
                        const float *b, int rows, int D, float eps) {
    CUDA_OP_RANGE("layernorm_fwd");
    if (rows <= 0) return;
    cuda_need_f32(be, x, "layernorm_fwd (x)");
    dim3 block(32, LN_ROWS_PER_BLOCK);
    DINO_LAUNCH(layernorm_fwd_kernel, ceil_div(rows, LN_ROWS_PER_BLOCK), block, 0, cuda_stream(be))(cuda_act(be, out), mean, rstd, x, w, b,
                                                                                           rows, D, eps);
    cudaCheckLaunch();
}

// ---- residual + LayerNorm (model/backend.h residual_layernorm_fwd; docs/cuda-backend.md) ------------

// Where image img sits in the subset idx[0..n) (-1: not in it); idx NULL: the first n images in order.
// Subsets are a few dozen images: a scan, the same for every lane of the warp.
__device__ __forceinline__ int subset_pos(const int *idx, int n, int img) {
    if (!idx) return img < n ? img : -1;
    for (int i = 0; i < n; i++)
        if (idx[i] == img) return i;
    return -1;
}

// One warp per row r of the stream (image r / T, token r % T): the row's new values x_in (+ the
// LayerScale'd branch when its image is in idx) go to x_out (and to xs when the LayerNorm gathers it),
// then, when its image is in ln_idx, the warp normalizes the row it has just written. Each lane reads
// back only the elements it wrote (the same lane-strided mapping), from L1/L2, through the LayerNorm
// code of layernorm_fwd_kernel: the statistics see exactly the fp32 values the unfused LayerNorm would
// have read.
__global__ void residual_layernorm_fwd_kernel(float *x_out, ActRef out, float *mean, float *rstd, float *xs,
                                              const float *x_in, ActRef br, const float *gamma, const int *idx, int n,
                                              float scale, const float *w, const float *b, const int *ln_idx, int ln_n,
                                              int B, int T, int D, float eps) {
    const int r = blockIdx.x * LN_ROWS_PER_BLOCK + threadIdx.y, lane = threadIdx.x;
    if (r >= B * T) return;
    const int img = r / T, t = r % T;
    const int i = subset_pos(idx, n, img), j = subset_pos(ln_idx, ln_n, img);
    const float *xi = x_in + (size_t)r * D;
    float *xo = x_out + (size_t)r * D;
    const size_t lr = (size_t)(j < 0 ? 0 : j) * T + t; // the row's LayerNorm row
    float *xc = xs && j >= 0 ? xs + lr * D : NULL;
    if (i >= 0) {
        const size_t e = ((size_t)i * T + t) * D;
        for (int c = lane; c < D; c += 32) {
            const float v = residual_add(xi[c], scale, gamma ? gamma[c] : 1.0f, act_ld(br, e + c));
            xo[c] = v;
            if (xc) xc[c] = v;
        }
    } else if (xo != xi || xc) { // a dropped image: copied (nothing to do in place)
        for (int c = lane; c < D; c += 32) {
            const float v = xi[c];
            xo[c] = v;
            if (xc) xc[c] = v;
        }
    }
    if (j >= 0) layernorm_row(out, mean, rstd, xc ? xc : xo, w, b, lr, D, eps, lane);
}

// The same as four ops (the A/B of DINO_CUDA_FUSE_RESLN=0, and the reference of the bit-for-bit tests).
static void residual_layernorm_unfused(Backend *be, float *x_out, float *out, float *mean, float *rstd, float *xs,
                                       const float *x_in, const float *br, const float *gamma, const int *idx, int n,
                                       float scale, const float *w, const float *b, const int *ln_idx, int ln_n,
                                       int B, int T, int D, float eps) {
    const size_t row = (size_t)T * D;
    if (x_out != x_in)
        cudaCheck(cudaMemcpyAsync(x_out, x_in, sizeof(float) * B * row, cudaMemcpyDeviceToDevice, cuda_stream(be)));
    cuda_residual_fwd(be, x_out, br, gamma, idx, n, T, D, scale);
    const float *in = x_out;
    if (ln_idx) cuda_gather_rows(be, xs, x_out, ln_idx, ln_n, row), in = xs;
    else if (xs) cudaCheck(cudaMemcpyAsync(xs, x_out, sizeof(float) * ln_n * row, cudaMemcpyDeviceToDevice, cuda_stream(be)));
    cuda_layernorm_fwd(be, out, mean, rstd, in, w, b, ln_n * T, D, eps);
}

void cuda_residual_layernorm_fwd(Backend *be, float *x_out, float *out, float *mean, float *rstd, float *xs,
                                 const float *x_in, const float *br, const float *gamma, const int *idx, int n,
                                 float scale, const float *w, const float *b, const int *ln_idx, int ln_n, int B, int T,
                                 int D, float eps) {
    if (ln_idx && !xs) DINO_DIE_CUDA("residual_layernorm_fwd: a LayerNorm row subset needs xs for the gathered rows");
    if (!cuda_impl(be)->fuse_resln) {
        residual_layernorm_unfused(be, x_out, out, mean, rstd, xs, x_in, br, gamma, idx, n, scale, w, b, ln_idx, ln_n,
                                   B, T, D, eps);
        return;
    }
    CUDA_OP_RANGE("residual_layernorm_fwd");
    const int rows = B * T;
    if (rows <= 0) return;
    cuda_need_f32(be, x_out, "residual_layernorm_fwd (x_out)"), cuda_need_f32(be, x_in, "residual_layernorm_fwd (x_in)");
    if (xs) cuda_need_f32(be, xs, "residual_layernorm_fwd (xs)");
    dim3 block(32, LN_ROWS_PER_BLOCK);
    DINO_LAUNCH(residual_layernorm_fwd_kernel, ceil_div(rows, LN_ROWS_PER_BLOCK), block, 0, cuda_stream(be))(
        x_out, cuda_act(be, out), mean, rstd, xs, x_in, cuda_act(be, br), gamma, idx, n, scale, w, b, ln_idx, ln_n, B,
        T, D, eps);
    cudaCheckLaunch();
}

// dx += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, for one row by one warp (dout row at
// offset o). through_zero: as the unfused path with a row subset, which accumulates into a zeroed
// scratch and scatter-adds that into dx: dx + (0 + v) (not always dx + v: -0). Shared by
// layernorm_bwd_dx_kernel and the fused layernorm_residual_bwd_kernel.
__device__ __forceinline__ void layernorm_bwd_row(float *dx, ActRef dout, size_t o, const float *xr, float m, float s,
                                                  const float *w, int D, int lane, bool through_zero) {
    float sg = 0.0f, sgx = 0.0f;
    for (int i = lane; i < D; i += 32) {
        float g = act_ld(dout, o + i) * w[i];
        sg += g;
        sgx += g * ((xr[i] - m) * s);
    }
    sg = warp_sum(sg) / D;
    sgx = warp_sum(sgx) / D;
    for (int i = lane; i < D; i += 32) {
        float xh = (xr[i] - m) * s;
        if (through_zero) {
            float z = 0.0f;
            z += s * (act_ld(dout, o + i) * w[i] - sg - xh * sgx);
            dx[i] += z;
        } else {
            dx[i] += s * (act_ld(dout, o + i) * w[i] - sg - xh * sgx);
        }
    }
}

__global__ void layernorm_bwd_dx_kernel(float *dx_acc, ActRef dout, const float *x, const float *mean,
                                        const float *rstd, const float *w, int rows, int D) {
    const int r = blockIdx.x * LN_ROWS_PER_BLOCK + threadIdx.y, lane = threadIdx.x;
    if (r >= rows) return;
    layernorm_bwd_row(dx_acc + (size_t)r * D, dout, (size_t)r * D, x + (size_t)r * D, mean[r], rstd[r], w, D, lane,
                      false);
}

struct LnDw { // dy * xhat
    ActRef dout;
    const float *x, *mean, *rstd;
    int D;
    __device__ float operator()(int r, int c) const {
        size_t i = (size_t)r * D + c;
        return act_ld(dout, i) * ((x[i] - mean[r]) * rstd[r]);
    }
};
struct LnDb {
    ActRef dout;
    int D;
    __device__ float operator()(int r, int c) const { return act_ld(dout, (size_t)r * D + c); }
};

void cuda_layernorm_bwd(Backend *be, float *dx_acc, float *dw, float *db, const float *dout, const float *x,
                        const float *mean, const float *rstd, const float *w, int rows, int D) {
    CUDA_OP_RANGE("layernorm_bwd");
    if (rows <= 0) return;
    cuda_need_f32(be, dx_acc, "layernorm_bwd (dx_acc)");
    cuda_need_f32(be, x, "layernorm_bwd (x)");
    const ActRef dy = cuda_act(be, dout);
    dim3 block(32, LN_ROWS_PER_BLOCK);
    DINO_LAUNCH(layernorm_bwd_dx_kernel, ceil_div(rows, LN_ROWS_PER_BLOCK), block, 0, cuda_stream(be))(dx_acc, dy, x, mean,
                                                                                              rstd, w, rows, D);
    cudaCheckLaunch();
    colsum_add(be, dw, rows, D, 1.0f, LnDw{dy, x, mean, rstd, D});
    colsum_add(be, db, rows, D, 1.0f, LnDb{dy, D});
}

// ---- LayerNorm backward + residual backward (model/backend.h layernorm_residual_bwd) ----------------

// One warp per row r of the stream gradient: when its image is in ln_idx, the LayerNorm backward of its
// LayerNorm row is added to dx (layernorm_bwd_row, as the unfused kernel; through a zero as the unfused
// scratch + scatter_add when ln_idx is a subset); then, when its image is in idx, the branch gradient
// dbr = scale * gamma (.) dx of the row it has just written (each lane reads back its own elements).
__global__ void layernorm_residual_bwd_kernel(float *dx, ActRef dbr, ActRef dout, const float *x_ln, const float *mean,
                                              const float *rstd, const float *w, const int *ln_idx, int ln_n,
                                              const float *gamma, const int *idx, int n, float scale, int B, int T,
                                              int D) {
    const int r = blockIdx.x * LN_ROWS_PER_BLOCK + threadIdx.y, lane = threadIdx.x;
    if (r >= B * T) return;
    const int img = r / T, t = r % T;
    const int j = subset_pos(ln_idx, ln_n, img), i = subset_pos(idx, n, img);
    float *dxr = dx + (size_t)r * D;
    if (j >= 0) {
        const size_t lr = (size_t)j * T + t;
        layernorm_bwd_row(dxr, dout, lr * D, x_ln + lr * D, mean[lr], rstd[lr], w, D, lane, ln_idx != NULL);
    }
    if (i >= 0) {
        const size_t e = ((size_t)i * T + t) * D;
        for (int c = lane; c < D; c += 32) act_st(dbr, e + c, residual_grad(scale, gamma ? gamma[c] : 1.0f, dxr[c]));
    }
}

void cuda_layernorm_residual_bwd(Backend *be, float *dx, float *dw, float *db, float *dbr, float *dgamma,
                                 const float *dout, const float *x_ln, const float *mean, const float *rstd,
                                 const float *w, const int *ln_idx, int ln_n, const float *br, const float *gamma,
                                 const int *idx, int n, float scale, int B, int T, int D) {
    const size_t row = (size_t)T * D;
    if (!cuda_impl(be)->fuse_resln) { // the ops it fuses (DINO_CUDA_FUSE_RESLN=0)
        if (!ln_idx) {
            cuda_layernorm_bwd(be, dx, dw, db, dout, x_ln, mean, rstd, w, ln_n * T, D);
        } else { // layernorm_bwd's kernels with its dx into a zeroed scratch, scattered before the column
                 // sums reuse the scratch memory (they do not depend on dx)
            const ActRef dy = cuda_act(be, dout);
            float *scratch = (float *)cuda_scratch(be, sizeof(float) * ln_n * row);
            cudaCheck(cudaMemsetAsync(scratch, 0, sizeof(float) * ln_n * row, cuda_stream(be)));
            dim3 block(32, LN_ROWS_PER_BLOCK);
            DINO_LAUNCH(layernorm_bwd_dx_kernel, ceil_div(ln_n * T, LN_ROWS_PER_BLOCK), block, 0, cuda_stream(be))(
                scratch, dy, x_ln, mean, rstd, w, ln_n * T, D);
            cudaCheckLaunch();
            cuda_scatter_add_rows(be, dx, scratch, ln_idx, ln_n, row);
            colsum_add(be, dw, ln_n * T, D, 1.0f, LnDw{dy, x_ln, mean, rstd, D});
            colsum_add(be, db, ln_n * T, D, 1.0f, LnDb{dy, D});
        }
        cuda_residual_bwd(be, dbr, dgamma, dx, br, gamma, idx, n, T, D, scale);
        return;
    }
    CUDA_OP_RANGE("layernorm_residual_bwd");
    const int rows = B * T;
    if (rows <= 0) return;
    cuda_need_f32(be, dx, "layernorm_residual_bwd (dx)"), cuda_need_f32(be, x_ln, "layernorm_residual_bwd (x_ln)");
    const ActRef dy = cuda_act(be, dout), b = cuda_act(be, br);
    dim3 block(32, LN_ROWS_PER_BLOCK);
    DINO_LAUNCH(layernorm_residual_bwd_kernel, ceil_div(rows, LN_ROWS_PER_BLOCK), block, 0, cuda_stream(be))(
        dx, cuda_act(be, dbr), dy, x_ln, mean, rstd, w, ln_idx, ln_n, gamma, idx, n, scale, B, T, D);
    cudaCheckLaunch();
    colsum_add(be, dw, ln_n * T, D, 1.0f, LnDw{dy, x_ln, mean, rstd, D});
    colsum_add(be, db, ln_n * T, D, 1.0f, LnDb{dy, D});
    if (dgamma) colsum_add(be, dgamma, n * T, D, scale, GammaGrad{dx, b, idx, T, D});
}

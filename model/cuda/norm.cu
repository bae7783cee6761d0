// LayerNorm over the last dimension, forward and backward. One warp per row; statistics in fp32 with
// the CPU reference's two passes (mean, then the mean of squared deviations); warp-shuffle trees in a
// fixed order, so results are the same on every run.
#include "model/cuda/cuda_ops.cuh"

#define LN_ROWS_PER_BLOCK 8 // warps per block

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__global__ void layernorm_fwd_kernel(ActRef out, float *mean, float *rstd, const float *x, const float *w,
                                     const float *b, int rows, int D, float eps) {
    const int r = blockIdx.x * LN_ROWS_PER_BLOCK + threadIdx.y, lane = threadIdx.x;
    if (r >= rows) return;
    const float *xr = x + (size_t)r * D;
    float s = 0.0f;
    for (int i = lane; i < D; i += 32) s += xr[i];
    const float m = warp_sum(s) / D;
    float v = 0.0f;
    for (int i = lane; i < D; i += 32) {
        float d = xr[i] - m;
        v += d * d;
    }
    const float rs = 1.0f / sqrtf(warp_sum(v) / D + eps);
    const size_t o = (size_t)r * D;
    for (int i = lane; i < D; i += 32) act_st(out, o + i, (xr[i] - m) * rs * w[i] + b[i]);
    if (lane == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
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

// dx += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w
__global__ void layernorm_bwd_dx_kernel(float *dx_acc, ActRef dout, const float *x, const float *mean,
                                        const float *rstd, const float *w, int rows, int D) {
    const int r = blockIdx.x * LN_ROWS_PER_BLOCK + threadIdx.y, lane = threadIdx.x;
    if (r >= rows) return;
    const float *xr = x + (size_t)r * D;
    const size_t o = (size_t)r * D;
    const float m = mean[r], s = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int i = lane; i < D; i += 32) {
        float g = act_ld(dout, o + i) * w[i];
        sg += g;
        sgx += g * ((xr[i] - m) * s);
    }
    sg = warp_sum(sg) / D;
    sgx = warp_sum(sgx) / D;
    float *dx = dx_acc + (size_t)r * D;
    for (int i = lane; i < D; i += 32) {
        float xh = (xr[i] - m) * s;
        dx[i] += s * (act_ld(dout, o + i) * w[i] - sg - xh * sgx);
    }
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

// ViT plumbing: patch extraction, token assembly (CLS, registers, mask token, position embedding), row
// gathers/scatters and the stochastic-depth residual with LayerScale. Gradients of shared parameters
// (cls, pos, registers, mask token, gamma) are sums over images/rows in a fixed order.
#include "model/cuda/cuda_ops.cuh"

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// cols[B*N, C*p*p], column order (c, ky, kx) as a Conv2d weight [D,C,p,p] flattened
// cols, patch and dpatch may be bf16 activation buffers (ActRef): one rounding at the store.
__global__ void im2col_kernel(ActRef cols, const float *img, int B, int C, int Hi, int Wi, int p) {
    const int gw = Wi / p, N = (Hi / p) * gw, K = C * p * p;
    GRID_STRIDE(e, (size_t)B * N * K) {
        size_t bn = e / K;
        int k = (int)(e % K);
        int b = (int)(bn / N), n = (int)(bn % N), py = n / gw, px = n % gw;
        int c = k / (p * p), ky = (k / p) % p, kx = k % p;
        act_st(cols, e, img[(((size_t)b * C + c) * Hi + (size_t)py * p + ky) * Wi + (size_t)px * p + kx]);
    }
}

void cuda_im2col(Backend *be, float *cols, const float *img, int B, int C, int Hi, int Wi, int p) {
    CUDA_OP_RANGE("im2col");
    size_t n = (size_t)B * (Hi / p) * (Wi / p) * C * p * p;
    if (!n) return;
    DINO_LAUNCH(im2col_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(cuda_act(be, cols), img, B, C, Hi, Wi, p);
    cudaCheckLaunch();
}

__global__ void tokens_fwd_kernel(float *x, ActRef patch, const float *cls, const float *reg, const float *pos,
                                  const float *mask_token, const uint8_t *mask, int B, int N, int R, int D) {
    const int T = 1 + R + N;
    GRID_STRIDE(e, (size_t)B * T * D) {
        int i = (int)(e % D);
        size_t bt = e / D;
        int b = (int)(bt / T), t = (int)(bt % T);
        float v;
        if (t == 0) v = cls[i] + pos[i];
        else if (t <= R) v = reg[(size_t)(t - 1) * D + i];
        else {
            int n = t - 1 - R;
            size_t bn = (size_t)b * N + n;
            v = ((mask && mask[bn]) ? mask_token[i] : act_ld(patch, bn * D + i)) + pos[(size_t)(1 + n) * D + i];
        }
        x[e] = v;
    }
}

void cuda_tokens_fwd(Backend *be, float *x, const float *patch, const float *cls, const float *reg, const float *pos,
                     const float *mask_token, const uint8_t *mask, int B, int N, int R, int D) {
    CUDA_OP_RANGE("tokens_fwd");
    size_t n = (size_t)B * (1 + R + N) * D;
    if (!n) return;
    DINO_LAUNCH(tokens_fwd_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(x, cuda_act(be, patch), cls, reg, pos, mask_token, mask, B, N,
                                                                    R, D);
    cudaCheckLaunch();
}

__global__ void tokens_bwd_patch_kernel(ActRef dpatch, const float *dx, const uint8_t *mask, int B, int N, int R,
                                        int D) {
    const int T = 1 + R + N;
    GRID_STRIDE(e, (size_t)B * N * D) {
        size_t bn = e / D;
        int i = (int)(e % D), b = (int)(bn / N), n = (int)(bn % N);
        act_st(dpatch, e, (mask && mask[bn]) ? 0.0f : dx[((size_t)b * T + 1 + R + n) * D + i]);
    }
}

// One thread per (token position t, feature i): the sum over images in image order, then
// t = 0 -> cls and pos[0]; 1..R -> registers; the rest -> pos[1+n] (masked positions included: the
// position embedding is added to the mask token too).
__global__ void tokens_bwd_params_kernel(float *dcls, float *dreg, float *dpos, const float *dx, int B, int N, int R,
                                         int D) {
    const int T = 1 + R + N;
    GRID_STRIDE(e, (size_t)T * D) {
        int t = (int)(e / D), i = (int)(e % D);
        float s = 0.0f;
        for (int b = 0; b < B; b++) s += dx[((size_t)b * T + t) * D + i];
        if (t == 0) {
            dcls[i] += s;
            dpos[i] += s;
        } else if (t <= R) {
            dreg[(size_t)(t - 1) * D + i] += s;
        } else {
            dpos[(size_t)(t - R) * D + i] += s;
        }
    }
}

struct MaskedPatchGrad { // row bn of the patch grid: dx at that token if masked, else 0
    const float *dx;
    const uint8_t *mask;
    int N, R, D;
    __device__ float operator()(int bn, int i) const {
        if (!mask[bn]) return 0.0f;
        int b = bn / N, n = bn % N;
        return dx[((size_t)b * (1 + R + N) + 1 + R + n) * D + i];
    }
};

void cuda_tokens_bwd(Backend *be, float *dpatch, float *dcls, float *dreg, float *dpos, float *dmask_token,
                     const float *dx, const uint8_t *mask, int B, int N, int R, int D) {
    CUDA_OP_RANGE("tokens_bwd");
    if (B <= 0) return;
    size_t n = (size_t)B * N * D;
    DINO_LAUNCH(tokens_bwd_patch_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(cuda_act(be, dpatch), dx, mask, B, N, R, D);
    cudaCheckLaunch();
    size_t np = (size_t)(1 + R + N) * D;
    DINO_LAUNCH(tokens_bwd_params_kernel, grid_1d(np, 256), 256, 0, cuda_stream(be))(dcls, dreg, dpos, dx, B, N, R, D);
    cudaCheckLaunch();
    if (mask) colsum_add(be, dmask_token, B * N, D, 1.0f, MaskedPatchGrad{dx, mask, N, R, D});
}

__global__ void gather_rows_kernel(float *out, const float *in, const int *idx, int n, size_t len) {
    GRID_STRIDE(e, (size_t)n * len) {
        size_t i = e / len, j = e % len;
        out[e] = in[(size_t)idx[i] * len + j];
    }
}

void cuda_gather_rows(Backend *be, float *out, const float *in, const int *idx, int n, size_t len) {
    CUDA_OP_RANGE("gather_rows");
    cuda_need_f32(be, out, "gather_rows (out)"), cuda_need_f32(be, in, "gather_rows (in)");
    size_t tot = (size_t)n * len;
    if (!tot) return;
    DINO_LAUNCH(gather_rows_kernel, grid_1d(tot, 256), 256, 0, cuda_stream(be))(out, in, idx, n, len);
    cudaCheckLaunch();
}

// Rows of idx are distinct in every use (subsets, masked tokens): no two threads write one element.
__global__ void scatter_add_rows_kernel(float *x, const float *in, const int *idx, int n, size_t len) {
    GRID_STRIDE(e, (size_t)n * len) {
        size_t i = e / len, j = e % len;
        x[(size_t)(idx ? idx[i] : (int)i) * len + j] += in[e];
    }
}

void cuda_scatter_add_rows(Backend *be, float *x, const float *in, const int *idx, int n, size_t len) {
    CUDA_OP_RANGE("scatter_add_rows");
    cuda_need_f32(be, x, "scatter_add_rows (x)"), cuda_need_f32(be, in, "scatter_add_rows (in)");
    size_t tot = (size_t)n * len;
    if (!tot) return;
    DINO_LAUNCH(scatter_add_rows_kernel, grid_1d(tot, 256), 256, 0, cuda_stream(be))(x, in, idx, n, len);
    cudaCheckLaunch();
}

// x[idx[i]] += scale * gamma (.) br[i], rows of T*D (br may be a bf16 activation buffer; x is fp32)
__global__ void residual_fwd_kernel(float *x, ActRef br, const float *gamma, const int *idx, int n, int T,
                                    int D, float scale) {
    const size_t row = (size_t)T * D;
    GRID_STRIDE(e, (size_t)n * row) {
        size_t i = e / row, j = e % row;
        float g = gamma ? gamma[j % D] : 1.0f;
        float *xe = x + (size_t)(idx ? idx[i] : (int)i) * row + j;
        *xe = residual_add(*xe, scale, g, act_ld(br, e));
    }
}

void cuda_residual_fwd(Backend *be, float *x, const float *br, const float *gamma, const int *idx, int n, int T,
                       int D, float scale) {
    CUDA_OP_RANGE("residual_fwd");
    size_t tot = (size_t)n * T * D;
    if (!tot) return;
    cuda_need_f32(be, x, "residual_fwd (x)");
    DINO_LAUNCH(residual_fwd_kernel, grid_1d(tot, 256), 256, 0, cuda_stream(be))(x, cuda_act(be, br), gamma, idx, n, T,
                                                                                 D, scale);
    cudaCheckLaunch();
}

__global__ void residual_bwd_kernel(ActRef dbr, const float *dx, const float *gamma, const int *idx, int n, int T,
                                    int D, float scale) {
    const size_t row = (size_t)T * D;
    GRID_STRIDE(e, (size_t)n * row) {
        size_t i = e / row, j = e % row;
        float g = gamma ? gamma[j % D] : 1.0f;
        act_st(dbr, e, residual_grad(scale, g, dx[(size_t)(idx ? idx[i] : (int)i) * row + j]));
    }
}

void cuda_residual_bwd(Backend *be, float *dbr, float *dgamma, const float *dx, const float *br, const float *gamma,
                       const int *idx, int n, int T, int D, float scale) {
    CUDA_OP_RANGE("residual_bwd");
    size_t tot = (size_t)n * T * D;
    if (!tot) return;
    const ActRef b = cuda_act(be, br);
    cuda_need_f32(be, dx, "residual_bwd (dx)");
    DINO_LAUNCH(residual_bwd_kernel, grid_1d(tot, 256), 256, 0, cuda_stream(be))(cuda_act(be, dbr), dx, gamma, idx, n, T,
                                                                                 D, scale);
    cudaCheckLaunch();
    if (dgamma) colsum_add(be, dgamma, n * T, D, scale, GammaGrad{dx, b, idx, T, D});
}

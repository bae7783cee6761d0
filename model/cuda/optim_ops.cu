// Optimizer ops (model/cpu/optim_ops.c defines them): AdamW in torch.optim.AdamW's order and the EMA
// teacher, elementwise in fp32 with the same scalars as the CPU (computed in double on the host).
#include <math.h>

#include "model/cuda/cuda_ops.cuh"

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, float decay, float step_size,
                             float bc2_sqrt, float beta1, float beta2, float omb1, float omb2, float eps) {
    GRID_STRIDE(i, n) {
        const float gi = g[i];
        const float pi = p[i] * decay; // decoupled weight decay first
        const float mi = m[i] * beta1 + gi * omb1;
        const float vi = v[i] * beta2 + gi * gi * omb2;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

void cuda_adamw(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float wd, float beta1,
                float beta2, float eps, long step) {
    CUDA_OP_RANGE("adamw");
    if (!n) return;
    // scalars in double as torch computes them in Python, then used as fp32 (as cpu_adamw)
    const float decay = (float)(1.0 - (double)lr * wd);
    const double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    const float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    DINO_LAUNCH(adamw_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(p, g, m, v, n, decay, step_size, bc2_sqrt, beta1, beta2,
                                                               1.0f - beta1, 1.0f - beta2, eps);
    cudaCheckLaunch();
}

__global__ void ema_kernel(float *t, const float *s, size_t n, float momentum, float a) {
    GRID_STRIDE(i, n) t[i] = t[i] * momentum + a * s[i];
}

void cuda_ema(Backend *be, float *t, const float *s, size_t n, float momentum) {
    CUDA_OP_RANGE("ema");
    if (!n) return;
    DINO_LAUNCH(ema_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(t, s, n, momentum, 1.0f - momentum);
    cudaCheckLaunch();
}

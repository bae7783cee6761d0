// Optimizer ops (model/cpu/optim_ops.c defines them): AdamW in torch.optim.AdamW's order and the EMA
// teacher, elementwise in fp32 with the same scalars as the CPU (computed in double on the host). Both also
// store the bf16 weight copy of what they update when it lies in a registered parameter buffer
// (weight_copy.cu): the GEMMs then read the new weights without a conversion pass.
#include <math.h>

#include "model/cuda/cuda_ops.cuh"

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// p16 (may be NULL): the bf16 weight copy of p (weight_copy.cu), stored from the same fp32 result
__global__ void adamw_kernel(float *p, __nv_bfloat16 *p16, const float *g, float *m, float *v, size_t n, float decay,
                             float step_size, float bc2_sqrt, float beta1, float beta2, float omb1, float omb2,
                             float eps) {
    GRID_STRIDE(i, n) {
        const float gi = g[i];
        const float pi = p[i] * decay; // decoupled weight decay first
        const float mi = m[i] * beta1 + gi * omb1;
        const float vi = v[i] * beta2 + gi * gi * omb2;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        const float pn = pi - step_size * (mi / denom);
        p[i] = pn;
        if (p16) p16[i] = __float2bfloat16(pn);
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
    // a range inside one registered buffer (the ZeRO-1 shard or a tensor of it): its copy in the same pass
    __nv_bfloat16 *p16 = cuda_param_copy_at(be, p, n);
    DINO_LAUNCH(adamw_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(p, p16, g, m, v, n, decay, step_size, bc2_sqrt,
                                                                        beta1, beta2, 1.0f - beta1, 1.0f - beta2, eps);
    cudaCheckLaunch();
    if (!p16) cuda_param_written(be, p, sizeof(float) * n); // any other overlap with a registered buffer
}

__global__ void ema_kernel(float *t, __nv_bfloat16 *t16, const float *s, size_t n, float momentum, float a) {
    GRID_STRIDE(i, n) {
        const float ti = t[i] * momentum + a * s[i];
        t[i] = ti;
        if (t16) t16[i] = __float2bfloat16(ti); // the teacher's bf16 weight copy
    }
}

void cuda_ema(Backend *be, float *t, const float *s, size_t n, float momentum) {
    CUDA_OP_RANGE("ema");
    if (!n) return;
    __nv_bfloat16 *t16 = cuda_param_copy_at(be, t, n);
    DINO_LAUNCH(ema_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(t, t16, s, n, momentum, 1.0f - momentum);
    cudaCheckLaunch();
    if (!t16) cuda_param_written(be, t, sizeof(float) * n);
}

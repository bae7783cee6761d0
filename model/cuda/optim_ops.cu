// Optimizer ops (model/cpu/optim_ops.c defines them): AdamW in torch.optim.AdamW's order and the EMA
// teacher, elementwise in fp32 with the same scalars as the CPU (computed in double on the host). Both also
// store the bf16 weight copy of what they update when it lies in a registered parameter buffer
// (weight_copy.cu): the GEMMs then read the new weights without a conversion pass.
#include <math.h>

#include "model/cuda/cuda_ops.cuh"

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// p16 (may be NULL): the bf16 weight copy of p (weight_copy.cu), stored from the same fp32 result
__device__ __forceinline__ void adamw_body(float *p, __nv_bfloat16 *p16, const float *g, float *m, float *v, size_t n,
                                           float decay, float step_size, float bc2_sqrt, float beta1, float beta2,
                                           float omb1, float omb2, float eps) {
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

__global__ void adamw_kernel(float *p, __nv_bfloat16 *p16, const float *g, float *m, float *v, size_t n, float decay,
                             float step_size, float bc2_sqrt, float beta1, float beta2, float omb1, float omb2,
                             float eps) {
    adamw_body(p, p16, g, m, v, n, decay, step_size, bc2_sqrt, beta1, beta2, omb1, omb2, eps);
}

// The scalars from the block: every thread derives them in double exactly as cuda_adamw does on the host
// (__dmul_rn: never fused with the subtraction, as the host does not fuse it).
__global__ void adamw_ss_kernel(float *p, __nv_bfloat16 *p16, const float *g, float *m, float *v, size_t n,
                                float lr_mult, float wd_mult, int last_layer, float beta1, float beta2, float eps,
                                const DinoStepScalars *ss) {
    if (ss->out.nonfinite) return;
    const float lr = (float)__dmul_rn(last_layer ? ss->in.last_layer_lr : ss->in.lr, (double)lr_mult);
    const float wd = (float)__dmul_rn(ss->in.wd, (double)wd_mult);
    const float decay = (float)(1.0 - __dmul_rn((double)lr, (double)wd));
    const float step_size = (float)((double)lr / ss->out.bias1), bc2_sqrt = (float)sqrt(ss->out.bias2);
    adamw_body(p, p16, g, m, v, n, decay, step_size, bc2_sqrt, beta1, beta2, 1.0f - beta1, 1.0f - beta2, eps);
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

__global__ void ema_ss_kernel(float *t, __nv_bfloat16 *t16, const float *s, size_t n, const DinoStepScalars *ss) {
    if (ss->out.nonfinite) return;
    const float momentum = (float)ss->in.momentum, a = 1.0f - momentum;
    GRID_STRIDE(i, n) {
        const float ti = t[i] * momentum + a * s[i];
        t[i] = ti;
        if (t16) t16[i] = __float2bfloat16(ti); // the teacher's bf16 weight copy
    }
}

// ---- the step's scalar block (model/step_scalars.h): clipping, AdamW's count, the NaN guard --------------

void cuda_adamw_ss(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr_mult, float wd_mult,
                   int last_layer, float beta1, float beta2, float eps, const DinoStepScalars *ss) {
    CUDA_OP_RANGE("adamw_ss");
    if (!n) return;
    __nv_bfloat16 *p16 = cuda_param_copy_at(be, p, n); // the weights' bf16 copy in the same pass, as cuda_adamw
    DINO_LAUNCH(adamw_ss_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(p, p16, g, m, v, n, lr_mult, wd_mult,
                                                                           last_layer, beta1, beta2, eps, ss);
    cudaCheckLaunch();
    if (!p16) cuda_param_written(be, p, sizeof(float) * n);
}

void cuda_ema_ss(Backend *be, float *t, const float *s, size_t n, const DinoStepScalars *ss) {
    CUDA_OP_RANGE("ema_ss");
    if (!n) return;
    __nv_bfloat16 *t16 = cuda_param_copy_at(be, t, n);
    DINO_LAUNCH(ema_ss_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(t, t16, s, n, ss);
    cudaCheckLaunch();
    if (!t16) cuda_param_written(be, t, sizeof(float) * n);
}

__global__ void update_prepare_kernel(int groups, double max_norm, float beta1, float beta2, DinoStepScalars *ss) {
    dino_ss_prepare(ss, groups, max_norm, beta1, beta2);
}

void cuda_update_prepare_ss(Backend *be, int groups, double max_norm, float beta1, float beta2, DinoStepScalars *ss) {
    CUDA_OP_RANGE("update_prepare_ss");
    DINO_LAUNCH(update_prepare_kernel, 1, 1, 0, cuda_stream(be))(groups, max_norm, beta1, beta2, ss);
    cudaCheckLaunch();
}

__global__ void clip_scale_kernel(float *x, size_t n, const double *coef) {
    const double c = *coef;
    if (c >= 1.0) return;
    const float a = (float)c;
    GRID_STRIDE(i, n) x[i] *= a;
}

void cuda_clip_scale_ss(Backend *be, float *x, size_t n, int group, const DinoStepScalars *ss) {
    CUDA_OP_RANGE("clip_scale_ss");
    if (!n) return;
    DINO_LAUNCH(clip_scale_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(x, n, &ss->out.clip_coef[group]);
    cudaCheckLaunch();
}

// Any thread that sees a NaN or an infinity raises the flag (every writer stores the same 1: no race on
// its value).
__global__ void nonfinite_check_kernel(const float *x, size_t n, int32_t *flag) {
    bool bad = false;
    GRID_STRIDE(i, n) bad |= !isfinite(x[i]);
    if (bad) *flag = 1;
}

void cuda_nonfinite_check_ss(Backend *be, const float *x, size_t n, DinoStepScalars *ss) {
    CUDA_OP_RANGE("nonfinite_check_ss");
    if (!n) return;
    DINO_LAUNCH(nonfinite_check_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(x, n, &ss->out.nonfinite);
    cudaCheckLaunch();
}

__global__ void revert_kernel(float *dst, const float *saved, size_t n, const int32_t *flag) {
    if (!*flag) return;
    GRID_STRIDE(i, n) dst[i] = saved[i];
}

void cuda_revert_if_nonfinite_ss(Backend *be, float *dst, const float *saved, size_t n, const DinoStepScalars *ss) {
    CUDA_OP_RANGE("revert_if_nonfinite_ss");
    if (!n) return;
    DINO_LAUNCH(revert_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(dst, saved, n, &ss->out.nonfinite);
    cudaCheckLaunch();
}

// Ops of the DINO/iBOT heads (model/cpu/head_ops.c defines them): row L2 normalization and the
// weight-normalized last layer. One block per row (or prototype); the norms and dot products are
// accumulated in double, as the CPU reference does, with a fixed block tree (reduce.cuh).
#include "model/cuda/cuda_ops.cuh"
#include "model/cuda/reduce.cuh"

#define ROW_THREADS 256

__global__ void l2norm_fwd_kernel(float *out, float *norm, const float *x, int n, float eps) {
    __shared__ double sh[32];
    const size_t r = blockIdx.x;
    const float *xr = x + r * n;
    double ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = block_sum(ss, sh);
    const float nrm = (float)sqrt(ss);
    const float den = nrm > eps ? nrm : eps; // torch: x / norm.clamp_min(eps)
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[r * n + i] = xr[i] / den;
    if (threadIdx.x == 0) norm[r] = nrm;
}

void cuda_l2norm_fwd(Backend *be, float *out, float *norm, const float *x, int rows, int n, float eps) {
    CUDA_OP_RANGE("l2norm_fwd");
    if (rows <= 0) return;
    DINO_LAUNCH(l2norm_fwd_kernel, rows, ROW_THREADS, 0, cuda_stream(be))(out, norm, x, n, eps);
    cudaCheckLaunch();
}

__global__ void l2norm_bwd_kernel(float *dx, const float *dout, const float *x, const float *norm, int n, float eps) {
    __shared__ double sh[32];
    const size_t r = blockIdx.x;
    const float *xr = x + r * n, *d = dout + r * n;
    float *g = dx + r * n;
    const float nrm = norm[r];
    if (!(nrm > eps)) { // the clamp is active: the norm gets no gradient
        for (int i = threadIdx.x; i < n; i += blockDim.x) g[i] = d[i] / eps;
        return;
    }
    double dot = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dot += (double)xr[i] * d[i];
    dot = block_sum(dot, sh);
    const float c = (float)(dot / ((double)nrm * nrm));
    for (int i = threadIdx.x; i < n; i += blockDim.x) g[i] = (d[i] - xr[i] * c) / nrm;
}

void cuda_l2norm_bwd(Backend *be, float *dx, const float *dout, const float *x, const float *norm, int rows, int n,
                     float eps) {
    CUDA_OP_RANGE("l2norm_bwd");
    if (rows <= 0) return;
    DINO_LAUNCH(l2norm_bwd_kernel, rows, ROW_THREADS, 0, cuda_stream(be))(dx, dout, x, norm, n, eps);
    cudaCheckLaunch();
}

__global__ void weightnorm_fwd_kernel(float *W, float *vnorm, const float *g, const float *v, int n) {
    __shared__ double sh[32];
    const size_t k = blockIdx.x;
    const float *vk = v + k * n;
    double ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)vk[i] * vk[i];
    ss = block_sum(ss, sh);
    const float nrm = (float)sqrt(ss);
    const float s = g[k] / nrm; // torch: v * (g / norm_except_dim(v, 2, 0))
    for (int i = threadIdx.x; i < n; i += blockDim.x) W[k * n + i] = vk[i] * s;
    if (threadIdx.x == 0) vnorm[k] = nrm;
}

void cuda_weightnorm_fwd(Backend *be, float *W, float *vnorm, const float *g, const float *v, int K, int n) {
    CUDA_OP_RANGE("weightnorm_fwd");
    if (K <= 0) return;
    DINO_LAUNCH(weightnorm_fwd_kernel, K, ROW_THREADS, 0, cuda_stream(be))(W, vnorm, g, v, n);
    cudaCheckLaunch();
}

// One block per prototype k: it alone writes dg[k] and dv[k,:], so the accumulation needs no atomics.
__global__ void weightnorm_bwd_kernel(float *dg, float *dv, const float *dW, const float *g, const float *v,
                                      const float *vnorm, int n) {
    __shared__ double sh[32];
    const size_t k = blockIdx.x;
    const float *vk = v + k * n, *dw = dW + k * n;
    double dot = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dot += (double)dw[i] * vk[i];
    dot = block_sum(dot, sh);
    const float nrm = vnorm[k];
    if (threadIdx.x == 0) dg[k] += (float)(dot / nrm);
    const float s = g[k] / nrm;
    const float c = (float)(dot / ((double)nrm * nrm));
    for (int i = threadIdx.x; i < n; i += blockDim.x) dv[k * n + i] += s * (dw[i] - c * vk[i]);
}

void cuda_weightnorm_bwd(Backend *be, float *dg, float *dv, const float *dW, const float *g, const float *v,
                         const float *vnorm, int K, int n) {
    CUDA_OP_RANGE("weightnorm_bwd");
    if (K <= 0) return;
    DINO_LAUNCH(weightnorm_bwd_kernel, K, ROW_THREADS, 0, cuda_stream(be))(dg, dv, dW, g, v, vnorm, n);
    cudaCheckLaunch();
}

// GELU (exact erf form) and SwiGLU, forward and backward, elementwise in fp32 (no fast-math
// intrinsics: erff/expf as the CPU reference, to within a couple of ulps).
#include "model/cuda/cuda_ops.cuh"

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT2PI 0.39894228040143268f

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// Every argument may be a bf16 activation buffer (ActRef): fp32 math, one rounding at the store.
__global__ void gelu_fwd_kernel(ActRef out, ActRef x, size_t n) {
    GRID_STRIDE(i, n) {
        act_st(out, i, gelu_erf(act_ld(x, i)));
    }
}

__global__ void gelu_bwd_kernel(ActRef dx, ActRef dout, ActRef x, size_t n) {
    GRID_STRIDE(i, n) {
        float v = act_ld(x, i);
        float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));
        float pdf = INV_SQRT2PI * expf(-0.5f * v * v);
        act_st(dx, i, act_ld(dout, i) * (cdf + v * pdf));
    }
}

// in[rows, 2*Hd] = [a | g]; out[rows, Hd] = silu(a) * g
__global__ void swiglu_fwd_kernel(ActRef out, ActRef in, size_t rows, int Hd) {
    GRID_STRIDE(i, rows * Hd) {
        size_t r = i / Hd, j = i % Hd;
        act_st(out, i, swiglu_val(act_ld(in, r * 2 * Hd + j), act_ld(in, r * 2 * Hd + Hd + j)));
    }
}

__global__ void swiglu_bwd_kernel(ActRef din, ActRef dout, ActRef in, size_t rows, int Hd) {
    GRID_STRIDE(i, rows * Hd) {
        size_t r = i / Hd, j = i % Hd;
        float a = act_ld(in, r * 2 * Hd + j), g = act_ld(in, r * 2 * Hd + Hd + j), d = act_ld(dout, i);
        float sig = 1.0f / (1.0f + expf(-a));
        act_st(din, r * 2 * Hd + Hd + j, d * a * sig);
        act_st(din, r * 2 * Hd + j, d * g * sig * (1.0f + a * (1.0f - sig)));
    }
}

void cuda_gelu_fwd(Backend *be, float *out, const float *x, size_t n) {
    CUDA_OP_RANGE("gelu_fwd");
    if (!n) return;
    DINO_LAUNCH(gelu_fwd_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(cuda_act(be, out), cuda_act(be, x), n);
    cudaCheckLaunch();
}

void cuda_gelu_bwd(Backend *be, float *dx, const float *dout, const float *x, size_t n) {
    CUDA_OP_RANGE("gelu_bwd");
    if (!n) return;
    DINO_LAUNCH(gelu_bwd_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(cuda_act(be, dx), cuda_act(be, dout), cuda_act(be, x), n);
    cudaCheckLaunch();
}

void cuda_swiglu_fwd(Backend *be, float *out, const float *in, int rows, int Hd) {
    CUDA_OP_RANGE("swiglu_fwd");
    size_t n = (size_t)rows * Hd;
    if (!n) return;
    DINO_LAUNCH(swiglu_fwd_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(cuda_act(be, out), cuda_act(be, in), (size_t)rows, Hd);
    cudaCheckLaunch();
}

void cuda_swiglu_bwd(Backend *be, float *din, const float *dout, const float *in, int rows, int Hd) {
    CUDA_OP_RANGE("swiglu_bwd");
    size_t n = (size_t)rows * Hd;
    if (!n) return;
    DINO_LAUNCH(swiglu_bwd_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(cuda_act(be, din), cuda_act(be, dout), cuda_act(be, in), (size_t)rows, Hd);
    cudaCheckLaunch();
}

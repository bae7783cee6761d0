// Multi-head self-attention, step 1: cuBLAS strided-batched GEMMs (one call per head, batched over
// images) with the (B,H,T,T) probabilities materialised in fp32 for backward, as the CPU reference.
// At DINOv2's token counts (T <= 261) that matrix is small next to the MLP activations. Softmax and its
// backward run in fp32, one warp per row. Step 2 (docs/cuda-backend.md): a flash-style fused kernel.
#include <math.h>

#include "model/cuda/cuda_ops.cuh"

#define SM_ROWS_PER_BLOCK 8

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum_att(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// In place over rows of length T: P = softmax(S) (S already scaled by 1/sqrt(Dh)).
__global__ void softmax_rows_kernel(float *S, size_t rows, int T) {
    size_t r = (size_t)blockIdx.x * SM_ROWS_PER_BLOCK + threadIdx.y;
    if (r >= rows) return;
    float *p = S + r * T;
    const int lane = threadIdx.x;
    float mx = -INFINITY;
    for (int j = lane; j < T; j += 32) mx = fmaxf(mx, p[j]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < T; j += 32) {
        float e = expf(p[j] - mx);
        p[j] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum_att(sum);
    for (int j = lane; j < T; j += 32) p[j] *= inv;
}

// In place: dS = scale * P (.) (dP - rowsum(dP (.) P))
__global__ void softmax_bwd_rows_kernel(float *dS, const float *P, size_t rows, int T, float scale) {
    size_t r = (size_t)blockIdx.x * SM_ROWS_PER_BLOCK + threadIdx.y;
    if (r >= rows) return;
    const float *p = P + r * T;
    float *d = dS + r * T;
    const int lane = threadIdx.x;
    float dot = 0.0f;
    for (int j = lane; j < T; j += 32) dot += p[j] * d[j];
    dot = warp_sum_att(dot);
    for (int j = lane; j < T; j += 32) d[j] = scale * p[j] * (d[j] - dot);
}

size_t cuda_attention_saved_floats(Backend *be, int B, int T, int H) { return (size_t)B * H * T * T; }

void cuda_attention_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh) {
    CUDA_OP_RANGE("attention_fwd");
    if (B <= 0 || T <= 0) return;
    const int D = H * Dh, ld = 3 * D;
    const long long sQ = (long long)T * ld, sP = (long long)H * T * T, sO = (long long)T * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    for (int h = 0; h < H; h++) {
        const float *q = qkv + (size_t)h * Dh, *k = q + D;
        float *P = saved + (size_t)h * T * T;
        // S = scale * Q K^T, per image
        cuda_gemm_batched(be, 0, 1, T, T, Dh, scale, q, ld, sQ, k, ld, sQ, 0.0f, P, T, sP, B);
    }
    const size_t rows = (size_t)B * H * T;
    dim3 block(32, SM_ROWS_PER_BLOCK);
    softmax_rows_kernel<<<ceil_div(rows, SM_ROWS_PER_BLOCK), block, 0, cuda_stream(be)>>>(saved, rows, T);
    cudaCheckLaunch();
    for (int h = 0; h < H; h++) {
        const float *v = qkv + (size_t)h * Dh + 2 * D;
        const float *P = saved + (size_t)h * T * T;
        // O = P V into this head's columns of out[B,T,D]
        cuda_gemm_batched(be, 0, 0, T, Dh, T, 1.0f, P, T, sP, v, ld, sQ, 0.0f, out + (size_t)h * Dh, D, sO, B);
    }
}

void cuda_attention_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                        int T, int H, int Dh) {
    CUDA_OP_RANGE("attention_bwd");
    if (B <= 0 || T <= 0) return;
    const int D = H * Dh, ld = 3 * D;
    const long long sQ = (long long)T * ld, sP = (long long)H * T * T, sO = (long long)T * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    float *dS = (float *)cuda_scratch(be, sizeof(float) * (size_t)B * H * T * T); // same layout as saved
    for (int h = 0; h < H; h++) {
        const float *v = qkv + (size_t)h * Dh + 2 * D, *P = saved + (size_t)h * T * T;
        const float *dO = dout + (size_t)h * Dh;
        float *dv = dqkv + (size_t)h * Dh + 2 * D;
        // dV = P^T dO ; dP = dO V^T
        cuda_gemm_batched(be, 1, 0, T, Dh, T, 1.0f, P, T, sP, dO, D, sO, 0.0f, dv, ld, sQ, B);
        cuda_gemm_batched(be, 0, 1, T, T, Dh, 1.0f, dO, D, sO, v, ld, sQ, 0.0f, dS + (size_t)h * T * T, T, sP, B);
    }
    const size_t rows = (size_t)B * H * T;
    dim3 block(32, SM_ROWS_PER_BLOCK);
    softmax_bwd_rows_kernel<<<ceil_div(rows, SM_ROWS_PER_BLOCK), block, 0, cuda_stream(be)>>>(dS, saved, rows, T,
                                                                                              scale);
    cudaCheckLaunch();
    for (int h = 0; h < H; h++) {
        const float *q = qkv + (size_t)h * Dh, *k = q + D;
        const float *dSh = dS + (size_t)h * T * T;
        float *dq = dqkv + (size_t)h * Dh, *dk = dq + D;
        // dQ = dS K ; dK = dS^T Q
        cuda_gemm_batched(be, 0, 0, T, Dh, T, 1.0f, dSh, T, sP, k, ld, sQ, 0.0f, dq, ld, sQ, B);
        cuda_gemm_batched(be, 1, 0, T, Dh, T, 1.0f, dSh, T, sP, q, ld, sQ, 0.0f, dk, ld, sQ, B);
    }
}

// Multi-head self-attention, step 1: cuBLAS batched GEMMs (one call for all images and heads, on
// device pointer arrays; DINO_CUDA_GEMM_GRID=0: one strided-batched call per head) with the (B,H,T,T)
// probabilities materialised in fp32 for backward, as the CPU reference.
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

// One (image, head) block of T x T scores starts every `blk` floats: T*T rounded up to a multiple of 4,
// so that every block's base pointer is 16-byte aligned for the batched GEMMs' pointer arrays.
static inline long long att_block(int T) { return ((long long)T * T + 3) / 4 * 4; }
__device__ __forceinline__ size_t att_row(size_t r, int T, long long blk) { return (r / T) * blk + (r % T) * T; }

// In place over rows of length T: P = softmax(S) (S already scaled by 1/sqrt(Dh)).
__global__ void softmax_rows_kernel(float *S, size_t rows, int T, long long blk) {
    size_t r = (size_t)blockIdx.x * SM_ROWS_PER_BLOCK + threadIdx.y;
    if (r >= rows) return;
    float *p = S + att_row(r, T, blk);
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
__global__ void softmax_bwd_rows_kernel(float *dS, const float *P, size_t rows, int T, long long blk, float scale) {
    size_t r = (size_t)blockIdx.x * SM_ROWS_PER_BLOCK + threadIdx.y;
    if (r >= rows) return;
    const float *p = P + att_row(r, T, blk);
    float *d = dS + att_row(r, T, blk);
    const int lane = threadIdx.x;
    float dot = 0.0f;
    for (int j = lane; j < T; j += 32) dot += p[j] * d[j];
    dot = warp_sum_att(dot);
    for (int j = lane; j < T; j += 32) d[j] = scale * p[j] * (d[j] - dot);
}

size_t cuda_attention_saved_floats(Backend *be, int B, int T, int H) { return (size_t)B * H * att_block(T); }

// Every product below runs for all (image, head) pairs in one cuBLAS call (cuda_gemm_grid): image b,
// head h reads Q at qkv + b*T*3D + h*Dh (K at +D, V at +2D; row stride 3D) and owns the probability
// block saved + (b*H + h)*T*T.
void cuda_attention_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh) {
    CUDA_OP_RANGE("attention_fwd");
    if (B <= 0 || T <= 0) return;
    const int D = H * Dh, ld = 3 * D;
    const long long sQb = (long long)T * ld, sPh = att_block(T), sPb = (long long)H * sPh, sOb = (long long)T * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    const float *q = qkv, *k = qkv + D, *v = qkv + 2 * D;
    // S = scale * Q K^T
    cuda_gemm_grid(be, 0, 1, T, T, Dh, scale, q, ld, sQb, Dh, k, ld, sQb, Dh, 0.0f, saved, T, sPb, sPh, B, H);
    const size_t rows = (size_t)B * H * T;
    dim3 block(32, SM_ROWS_PER_BLOCK);
    softmax_rows_kernel<<<ceil_div(rows, SM_ROWS_PER_BLOCK), block, 0, cuda_stream(be)>>>(saved, rows, T, sPh);
    cudaCheckLaunch();
    // O = P V into each head's columns of out[B,T,D]
    cuda_gemm_grid(be, 0, 0, T, Dh, T, 1.0f, saved, T, sPb, sPh, v, ld, sQb, Dh, 0.0f, out, D, sOb, Dh, B, H);
}

void cuda_attention_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                        int T, int H, int Dh) {
    CUDA_OP_RANGE("attention_bwd");
    if (B <= 0 || T <= 0) return;
    const int D = H * Dh, ld = 3 * D;
    const long long sQb = (long long)T * ld, sPh = att_block(T), sPb = (long long)H * sPh, sOb = (long long)T * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    float *dS = (float *)cuda_scratch(be, sizeof(float) * (size_t)B * H * sPh); // same layout as saved
    const float *q = qkv, *k = qkv + D, *v = qkv + 2 * D;
    float *dq = dqkv, *dk = dqkv + D, *dv = dqkv + 2 * D;
    // dV = P^T dO ; dP = dO V^T
    cuda_gemm_grid(be, 1, 0, T, Dh, T, 1.0f, saved, T, sPb, sPh, dout, D, sOb, Dh, 0.0f, dv, ld, sQb, Dh, B, H);
    cuda_gemm_grid(be, 0, 1, T, T, Dh, 1.0f, dout, D, sOb, Dh, v, ld, sQb, Dh, 0.0f, dS, T, sPb, sPh, B, H);
    const size_t rows = (size_t)B * H * T;
    dim3 block(32, SM_ROWS_PER_BLOCK);
    softmax_bwd_rows_kernel<<<ceil_div(rows, SM_ROWS_PER_BLOCK), block, 0, cuda_stream(be)>>>(dS, saved, rows, T, sPh,
                                                                                              scale);
    cudaCheckLaunch();
    // dQ = dS K ; dK = dS^T Q
    cuda_gemm_grid(be, 0, 0, T, Dh, T, 1.0f, dS, T, sPb, sPh, k, ld, sQb, Dh, 0.0f, dq, ld, sQb, Dh, B, H);
    cuda_gemm_grid(be, 1, 0, T, Dh, T, 1.0f, dS, T, sPb, sPh, q, ld, sQb, Dh, 0.0f, dk, ld, sQb, Dh, B, H);
}

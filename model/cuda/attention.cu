// Multi-head self-attention, the batched-GEMM path (the fallback and A/B of the fused kernel in
// attention_flash.cu, which runs instead where it applies: backend_cuda_set_attention): cuBLAS batched GEMMs (one call for all images and heads, on device pointer
// arrays; DINO_CUDA_GEMM_GRID=0: one strided-batched call per head) with the (B,H,T,T) probabilities
// materialised for backward (bf16 with bf16 GEMMs, fp32 with fp32 GEMMs).
// At DINOv2's token counts (T <= 261) that matrix is small next to the MLP activations. Softmax and its
// backward run in fp32, one warp per row.
#include <math.h>
#include <string.h>

#include <cuda_bf16.h>

#include "model/attention_layout.h"
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

// The saved probabilities: one T x T block per (image, head), `blk` elements apart (T*T rounded up so
// that every block's base is 16-byte aligned for the batched GEMMs' pointer arrays). With bf16 GEMMs
// they are stored in bf16: the P V product and dV = P^T dO round them to bf16 anyway, so only the
// softmax backward sees the rounding (within the bf16 tolerance), for half the memory and traffic. With
// fp32 GEMMs (tests) they stay fp32. DINO_CUDA_PROBS_FP32=1 keeps fp32 with bf16 GEMMs too.
static bool probs_bf16(Backend *be) {
    static int env = -1;
    if (env < 0) {
        const char *e = getenv("DINO_CUDA_PROBS_FP32");
        env = e && strcmp(e, "1") == 0;
    }
    return cuda_impl(be)->gemm_precision == CUDA_GEMM_BF16 && !env;
}
static inline long long att_block(int T, bool bf16) { return attention_block_elems(T, bf16); }
__device__ __forceinline__ size_t att_row(size_t r, int T, long long blk) { return (r / T) * blk + (r % T) * T; }

__device__ __forceinline__ float ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__nv_bfloat16 *p, size_t i, float v) { p[i] = __float2bfloat16(v); }

// Rows of length T: P = softmax(S) (S already scaled by 1/sqrt(Dh)), fp32 math; S is overwritten with
// the exponentials (one expf per element), P may be S (in place).
template <typename TP>
__global__ void softmax_rows_kernel(TP *P, float *S, size_t rows, int T, long long blk_s, long long blk_p) {
    size_t r = (size_t)blockIdx.x * SM_ROWS_PER_BLOCK + threadIdx.y;
    if (r >= rows) return;
    float *srow = S + att_row(r, T, blk_s);
    TP *prow = P + att_row(r, T, blk_p);
    const int lane = threadIdx.x;
    float mx = -INFINITY;
    for (int j = lane; j < T; j += 32) mx = fmaxf(mx, srow[j]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < T; j += 32) {
        const float e = expf(srow[j] - mx);
        srow[j] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum_att(sum);
    for (int j = lane; j < T; j += 32) st(prow, j, srow[j] * inv);
}

// In place: dS = scale * P (.) (dP - rowsum(dP (.) P))
template <typename TP>
__global__ void softmax_bwd_rows_kernel(float *dS, const TP *P, size_t rows, int T, long long blk_s, long long blk_p,
                                        float scale) {
    size_t r = (size_t)blockIdx.x * SM_ROWS_PER_BLOCK + threadIdx.y;
    if (r >= rows) return;
    const TP *p = P + att_row(r, T, blk_p);
    float *d = dS + att_row(r, T, blk_s);
    const int lane = threadIdx.x;
    float dot = 0.0f;
    for (int j = lane; j < T; j += 32) dot += ld(p, j) * d[j];
    dot = warp_sum_att(dot);
    for (int j = lane; j < T; j += 32) d[j] = scale * ld(p, j) * (d[j] - dot);
}

// dst[b,t,0:D] = bf16(src[b,t,0:D]) for rows of stride ld_src (V inside qkv, or dO)
__global__ void rows_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t rows, int D, int ld_src) {
    const size_t n = rows * (size_t)D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[(i / D) * ld_src + i % D]);
}

// The fused path (attention_flash.cu) where it applies and is chosen (backend_cuda_set_attention,
// DINO_ATTENTION), this one otherwise.
static bool use_flash(Backend *be, int Dh) { return backend_cuda_attention_is_flash(be, Dh) != 0; }

size_t cuda_attention_saved_floats(Backend *be, int B, int T, int H, int Dh) {
    if (use_flash(be, Dh)) return attention_saved_floats_flash(B, T, H, Dh);
    return attention_saved_floats_cuda(B, T, H, probs_bf16(be));
}

// Every product below runs for all (image, head) pairs in one cuBLAS call (cuda_gemm_grid): image b,
// head h reads Q at qkv + b*T*3D + h*Dh (K at +D, V at +2D; row stride 3D) and owns the probability
// block (b*H + h) of `saved`. qkv, out, dout and dqkv may be bf16 activation buffers (bf16 GEMMs only):
// the products then read them as they are and write out / dqkv rounded once at the store.
void cuda_attention_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh) {
    if (use_flash(be, Dh)) return cuda_attention_flash_fwd(be, out, saved, qkv, B, T, H, Dh);
    CUDA_OP_RANGE("attention_fwd");
    if (B <= 0 || T <= 0) return;
    const ActRef o = cuda_act(be, out), x = cuda_act(be, qkv);
    const int D = H * Dh, ld3 = 3 * D;
    const long long sQb = (long long)T * ld3, sOb = (long long)T * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    const float *q = qkv, *k = qkv + D, *v = qkv + 2 * D;
    const size_t rows = (size_t)B * H * T;
    dim3 block(32, SM_ROWS_PER_BLOCK);
    const unsigned grid = ceil_div(rows, SM_ROWS_PER_BLOCK);
    if (!probs_bf16(be)) { // fp32 probabilities, computed in place in `saved`
        if (o.bf16 || x.bf16) DINO_DIE_CUDA("attention_fwd: bf16 activations with fp32 probabilities");
        const long long sPh = att_block(T, false), sPb = (long long)H * sPh;
        cuda_gemm_grid(be, 0, 1, T, T, Dh, scale, q, ld3, sQb, Dh, k, ld3, sQb, Dh, 0.0f, saved, T, sPb, sPh, B, H);
        DINO_LAUNCH(softmax_rows_kernel<float>, grid, block, 0, cuda_stream(be))(saved, saved, rows, T, sPh, sPh);
        cudaCheckLaunch();
        cuda_gemm_grid(be, 0, 0, T, Dh, T, 1.0f, saved, T, sPb, sPh, v, ld3, sQb, Dh, 0.0f, out, D, sOb, Dh, B, H);
        return;
    }
    // bf16 probabilities: scores in fp32 scratch, P = softmax in bf16 into `saved`, V in bf16 for P V
    const cudaDataType_t tx = act_cuda_type(x);
    const long long sSh = att_block(T, false), sSb = (long long)H * sSh;
    const long long sPh = att_block(T, true), sPb = (long long)H * sPh;
    const size_t s_bytes = sizeof(float) * (size_t)B * sSb, v_bytes = x.bf16 ? 0 : 2 * (size_t)B * T * D;
    char *scr = (char *)cuda_scratch(be, s_bytes + v_bytes + 256);
    float *S = (float *)scr;
    __nv_bfloat16 *P = (__nv_bfloat16 *)saved;
    cuda_gemm_grid_typed(be, 0, 1, T, T, Dh, scale, x.p, tx, ld3, sQb, Dh, act_offset(x, D).p, tx, ld3, sQb, Dh, 0.0f, S,
                         CUDA_R_32F, T, sSb, sSh, B, H);
    DINO_LAUNCH(softmax_rows_kernel<__nv_bfloat16>, grid, block, 0, cuda_stream(be))(P, S, rows, T, sSh, sPh);
    cudaCheckLaunch();
    const void *vb = act_offset(x, 2 * D).p; // bf16 qkv: V in place (row stride 3D), else a bf16 copy (stride D)
    int ldv = ld3;
    long long sVb = sQb;
    if (!x.bf16) {
        __nv_bfloat16 *vc = (__nv_bfloat16 *)(scr + (s_bytes + 255) / 256 * 256);
        DINO_LAUNCH(rows_to_bf16_kernel, grid_1d((size_t)B * T * D, 256), 256, 0, cuda_stream(be))(vc, v, (size_t)B * T,
                                                                                                  D, ld3);
        cudaCheckLaunch();
        vb = vc, ldv = D, sVb = sOb;
    }
    cuda_gemm_grid_typed(be, 0, 0, T, Dh, T, 1.0f, P, CUDA_R_16BF, T, sPb, sPh, vb, CUDA_R_16BF, ldv, sVb, Dh, 0.0f,
                         o.p, act_cuda_type(o), D, sOb, Dh, B, H);
}

void cuda_attention_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                        int T, int H, int Dh) {
    if (use_flash(be, Dh)) return cuda_attention_flash_bwd(be, dqkv, dout, qkv, saved, B, T, H, Dh);
    CUDA_OP_RANGE("attention_bwd");
    if (B <= 0 || T <= 0) return;
    const ActRef dx = cuda_act(be, dqkv), dy = cuda_act(be, dout), x = cuda_act(be, qkv);
    const int D = H * Dh, ld3 = 3 * D;
    const long long sQb = (long long)T * ld3, sOb = (long long)T * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    const bool bf = probs_bf16(be);
    if (!bf && (dx.bf16 || dy.bf16 || x.bf16)) DINO_DIE_CUDA("attention_bwd: bf16 activations with fp32 probabilities");
    if (dy.bf16 && !x.bf16) DINO_DIE_CUDA("attention_bwd: a bf16 dout with an fp32 qkv");
    const long long sSh = att_block(T, false), sSb = (long long)H * sSh; // dS: fp32
    const long long sPh = att_block(T, bf), sPb = (long long)H * sPh;    // saved P
    const size_t s_bytes = sizeof(float) * (size_t)B * sSb, o_bytes = bf && !dy.bf16 ? 2 * (size_t)B * T * D : 0;
    const size_t s16_bytes = x.bf16 ? 2 * (size_t)B * sSb : 0;
    char *scr = (char *)cuda_scratch(be, s_bytes + o_bytes + s16_bytes + 512);
    float *dS = (float *)scr;
    const float *q = qkv, *k = qkv + D, *v = qkv + 2 * D;
    float *dq = dqkv, *dk = dqkv + D, *dv = dqkv + 2 * D;
    const cudaDataType_t tdx = act_cuda_type(dx);
    const size_t rows = (size_t)B * H * T;
    dim3 block(32, SM_ROWS_PER_BLOCK);
    const unsigned grid = ceil_div(rows, SM_ROWS_PER_BLOCK);
    // dV = P^T dO (bf16 P: with dO in bf16 too) ; dP = dO V^T
    const void *dob = dy.p;
    if (bf) {
        if (!dy.bf16) {
            __nv_bfloat16 *d = (__nv_bfloat16 *)(scr + (s_bytes + 255) / 256 * 256);
            DINO_LAUNCH(rows_to_bf16_kernel, grid_1d((size_t)B * T * D, 256), 256, 0, cuda_stream(be))(d, dout,
                                                                                             (size_t)B * T, D, D);
            cudaCheckLaunch();
            dob = d;
        }
        cuda_gemm_grid_typed(be, 1, 0, T, Dh, T, 1.0f, saved, CUDA_R_16BF, T, sPb, sPh, dob, CUDA_R_16BF, D, sOb, Dh,
                             0.0f, act_offset(dx, 2 * D).p, tdx, ld3, sQb, Dh, B, H);
    } else {
        cuda_gemm_grid(be, 1, 0, T, Dh, T, 1.0f, saved, T, sPb, sPh, dout, D, sOb, Dh, 0.0f, dv, ld3, sQb, Dh, B, H);
    }
    if (x.bf16)
        cuda_gemm_grid_typed(be, 0, 1, T, T, Dh, 1.0f, dob, CUDA_R_16BF, D, sOb, Dh, act_offset(x, 2 * D).p, CUDA_R_16BF,
                             ld3, sQb, Dh, 0.0f, dS, CUDA_R_32F, T, sSb, sSh, B, H);
    else
        cuda_gemm_grid(be, 0, 1, T, T, Dh, 1.0f, dout, D, sOb, Dh, v, ld3, sQb, Dh, 0.0f, dS, T, sSb, sSh, B, H);
    if (bf)
        DINO_LAUNCH(softmax_bwd_rows_kernel<__nv_bfloat16>, grid, block, 0, cuda_stream(be))(
            dS, (const __nv_bfloat16 *)saved, rows, T, sSh, sPh, scale);
    else
        DINO_LAUNCH(softmax_bwd_rows_kernel<float>, grid, block, 0, cuda_stream(be))(dS, saved, rows, T, sSh, sPh, scale);
    cudaCheckLaunch();
    // dQ = dS K ; dK = dS^T Q
    if (x.bf16) { // dS in bf16 (the value FAST_16BF would round it to), then bf16 products
        __nv_bfloat16 *dS16 = (__nv_bfloat16 *)(scr + (s_bytes + 255) / 256 * 256 + (o_bytes + 255) / 256 * 256);
        cuda_to_bf16(be, dS16, dS, (size_t)B * sSb);
        cuda_gemm_grid_typed(be, 0, 0, T, Dh, T, 1.0f, dS16, CUDA_R_16BF, T, sSb, sSh, act_offset(x, D).p, CUDA_R_16BF,
                             ld3, sQb, Dh, 0.0f, dx.p, tdx, ld3, sQb, Dh, B, H);
        cuda_gemm_grid_typed(be, 1, 0, T, Dh, T, 1.0f, dS16, CUDA_R_16BF, T, sSb, sSh, x.p, CUDA_R_16BF, ld3, sQb, Dh,
                             0.0f, act_offset(dx, D).p, tdx, ld3, sQb, Dh, B, H);
        return;
    }
    if (dx.bf16) DINO_DIE_CUDA("attention_bwd: a bf16 dqkv with an fp32 qkv");
    cuda_gemm_grid(be, 0, 0, T, Dh, T, 1.0f, dS, T, sSb, sSh, k, ld3, sQb, Dh, 0.0f, dq, ld3, sQb, Dh, B, H);
    cuda_gemm_grid(be, 1, 0, T, Dh, T, 1.0f, dS, T, sSb, sSh, q, ld3, sQb, Dh, 0.0f, dk, ld3, sQb, Dh, B, H);
}

// Fused ("flash") multi-head self-attention: FlashAttention-2's order (T. Dao, "FlashAttention-2: Faster
// Attention with Better Parallelism and Work Partitioning", 2023, Algorithms 1 and 2; names Br, Bc, m, l,
// LSE, D from there), non-causal, on tensor cores through nvcuda::wmma (bf16 16x16x16, fp32 accumulate).
//
// Forward: one block per (query tile of FLASH_BR rows, image, head), reading qkv in place; each warp owns
// 16 query rows and streams K/V tiles of FLASH_BC rows through shared memory in a fixed order: S = Q K^T
// (fp32), columns >= T set to -inf, m' = max(m, rowmax S), P = exp(S - m'), l = l e^(m-m') + rowsum P (of
// the unrounded P), O = O e^(m-m') + bf16(P) V (fp32). Nothing T x T is ever in memory.
// Saved for backward (`saved`, attention_saved_floats_flash in model/attention_layout.h): LSE = m + log l
// per (image, head, token) in fp32, in base-2 units (the kernels work with exp2 of scores pre-multiplied
// by log2 e), then O in bf16 [B,T,D] for D = rowsum(dO * O). B H T (1 + Dh/2) floats instead of the
// B H T^2 / 2 of the GEMM path's bf16 probabilities.
// Backward: D = rowsum(dO * O) first; then one kernel per KV tile owns dK, dV in fp32 fragments and loops
// over the query tiles in order, recomputing P = exp(S - LSE): dV += bf16(P)^T dO, dP = dO V^T, dS = P (dP
// - D), dK += bf16(dS)^T Q; and a separate kernel per query tile owns dQ and loops over the KV tiles: dQ +=
// bf16(dS) K. S and dP are computed twice (7 tile products instead of FA2's 5) so that no float atomicAdd
// is needed: every output element is written by one thread, in a fixed order, and reruns are bit-identical.
//
// Rounding points: Q, K, V, dO and P, dS are rounded to bf16 (round to nearest) before their products;
// m, l, LSE, D, softmax and the O/dQ/dK/dV accumulators are fp32. The output and the gradients are fp32
// (the interface's type); ActIO<T> is the one place that reads and writes activations, so bf16 activations
// are a template argument (TIn, TOut), not a rewrite.
//
// wmma fragments are opaque (their element layout is unspecified), so everything row-wise (the softmax,
// O's rescaling by e^(m-m'), the stores of results) goes through a per-warp fp32 tile in shared memory;
// no code touches fragment elements (docs/cuda-backend.md, "Fused attention").
#include <math.h>

#include <cuda_bf16.h>
#include <mma.h>

#include "model/attention_layout.h"
#include "model/cuda/cuda_ops.cuh"

using namespace nvcuda;

#define FLASH_WARPS 4                // 128 threads per block
#define FLASH_BR (16 * FLASH_WARPS)  // query rows per forward / dQ block (16 per warp); KV rows per dK/dV block
#define FLASH_BC 32                  // KV rows per streamed tile (forward, dQ); query rows per tile (dK/dV)
#define FLASH_LOG2E 1.4426950408889634f
// Loops over fragments and over a thread's slice of O must unroll so that those stay in registers.
#ifdef __CUDACC__
#define UNROLL _Pragma("unroll")
#else
#define UNROLL
#endif

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major> FragAc; // P, dS: see below
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> FragB;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> FragBt; // a transposed tile
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

// A kernel's compile-time configuration, one template argument (a launch macro argument cannot hold the
// commas of several): the head dim and the activation types read (TIn) and written (TOut).
template <int DH_, typename TIn_, typename TOut_> struct FlashCfg {
    static constexpr int DH = DH_;
    typedef TIn_ TIn;
    typedef TOut_ TOut;
};
#define FLASH_CFG_TYPES                                                                            \
    constexpr int DH = Cfg::DH;                                                                    \
    typedef typename Cfg::TIn TIn;                                                                 \
    typedef typename Cfg::TOut TOut

// Activations in and out: fp32 today, bf16 with bf16 activations.
template <typename T> struct ActIO;
template <> struct ActIO<float> {
    static __device__ __forceinline__ float load(const float *p) { return *p; }
    static __device__ __forceinline__ void store(float *p, float v) { *p = v; }
};
template <> struct ActIO<__nv_bfloat16> {
    static __device__ __forceinline__ float load(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
    static __device__ __forceinline__ void store(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }
};


// dst[r][c] = bf16(src[(r0 + r) * ld + c]) for r < rows, c < DH; rows past T are zero (so that padded
// products are finite; the softmax masks them). All threads of the block. fp32 rows that start 16-byte
// aligned (every row when src and ld are) are read 4 floats at a time.
template <int DH, int LDS, typename T>
__device__ __forceinline__ void load_tile(__nv_bfloat16 *dst, const T *src, int ld, int r0, int rows, int T_) {
    for (int i = threadIdx.x; i < rows * DH; i += blockDim.x) {
        const int r = i / DH, c = i % DH;
        const float v = r0 + r < T_ ? ActIO<T>::load(src + (size_t)(r0 + r) * ld + c) : 0.0f;
        dst[r * LDS + c] = __float2bfloat16(v);
    }
}
template <int DH, int LDS>
__device__ __forceinline__ void load_tile(__nv_bfloat16 *dst, const float *src, int ld, int r0, int rows, int T_) {
    if (((uintptr_t)src | (size_t)ld * sizeof(float)) % 16 != 0) { // uniform over the block
        for (int i = threadIdx.x; i < rows * DH; i += blockDim.x) {
            const int r = i / DH, c = i % DH;
            dst[r * LDS + c] = __float2bfloat16(r0 + r < T_ ? src[(size_t)(r0 + r) * ld + c] : 0.0f);
        }
        return;
    }
    constexpr int V = DH / 4; // float4 per row
    for (int i = threadIdx.x; i < rows * V; i += blockDim.x) {
        const int r = i / V, c = (i % V) * 4;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r0 + r < T_) v = *(const float4 *)(src + (size_t)(r0 + r) * ld + c);
        __nv_bfloat16 *d = dst + r * LDS + c;
        d[0] = __float2bfloat16(v.x), d[1] = __float2bfloat16(v.y), d[2] = __float2bfloat16(v.z), d[3] = __float2bfloat16(v.w);
    }
}

// The per-warp tiles that the lanes read and write element by element (S, dP, P V slices, P, dS) are 16 x
// FLASH_BC column-major (element (r, c) at c * 16 + r): lane l owns row l % 16 and the columns 2k + l / 16,
// so at every step the 32 lanes touch 32 consecutive words: no shared-memory bank conflicts (row-major
// with two lanes per row would be 16-way). P and dS are then loaded as column-major matrix_a fragments.
#define TILE_AT(c) ((c) * 16) // offset of column c of a per-warp tile

// ---- forward -------------------------------------------------------------------------------------------

// grid (B * H, ceil(T / FLASH_BR)), FLASH_WARPS * 32 threads. out [B,T,D]; lse [B,H,T] (base 2); o_saved
// [B,T,D] bf16; qkv [B,T,3D]. scale_log2 = log2(e) / sqrt(DH).
template <typename Cfg>
__global__ void flash_fwd_kernel(typename Cfg::TOut *out, float *lse, __nv_bfloat16 *o_saved, const typename Cfg::TIn *qkv,
                                 int T, int H, float scale_log2) {
    FLASH_CFG_TYPES;
    constexpr int LDS = DH + 8; // shared row stride: a multiple of 16 bytes, rows shifted by 4 banks
    constexpr int NK = DH / 16, NC = FLASH_BC / 16, HALF = FLASH_BC / 2;
    constexpr int OG = (DH + FLASH_BC - 1) / FLASH_BC; // O in groups of FLASH_BC columns (through sS)
    __shared__ __align__(32) __nv_bfloat16 sQ[FLASH_BR * LDS];
    __shared__ __align__(32) __nv_bfloat16 sK[FLASH_BC * LDS];
    __shared__ __align__(32) __nv_bfloat16 sV[FLASH_BC * LDS];
    __shared__ __align__(32) float sS[FLASH_WARPS][16 * FLASH_BC];       // S, then P V, per warp
    __shared__ __align__(32) __nv_bfloat16 sP[FLASH_WARPS][16 * FLASH_BC]; // bf16(P), per warp
    const int H3 = 3 * H * DH, D = H * DH;
    const int b = blockIdx.x / H, h = blockIdx.x % H, q0 = blockIdx.y * FLASH_BR;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const TIn *q = qkv + (size_t)b * T * H3 + (size_t)h * DH, *k = q + D, *v = q + 2 * D;
    float *S = sS[warp];
    __nv_bfloat16 *P = sP[warp];

    load_tile<DH, LDS>(sQ, q, H3, q0, FLASH_BR, T);
    __syncthreads();
    FragA qf[NK];
    UNROLL for (int kk = 0; kk < NK; kk++) wmma::load_matrix_sync(qf[kk], sQ + warp * 16 * LDS + kk * 16, LDS);

    // softmax state of row `row` of the warp's 16; the two lanes of a row (l and l ^ 16) split its columns,
    // even and odd
    const int row = lane & 15, half = lane >> 4;
    float m = -INFINITY, l = 0.0f, o[OG * HALF];
    UNROLL for (int i = 0; i < OG * HALF; i++) o[i] = 0.0f;

    for (int j0 = 0; j0 < T; j0 += FLASH_BC) {
        __syncthreads(); // every warp is done with the previous K/V tile
        load_tile<DH, LDS>(sK, k, H3, j0, FLASH_BC, T);
        load_tile<DH, LDS>(sV, v, H3, j0, FLASH_BC, T);
        __syncthreads();
        // S = Q K^T (unscaled), 16 x FLASH_BC
        UNROLL for (int n = 0; n < NC; n++) {
            FragC acc;
            wmma::fill_fragment(acc, 0.0f);
            UNROLL for (int kk = 0; kk < NK; kk++) {
                FragBt kf;
                wmma::load_matrix_sync(kf, sK + n * 16 * LDS + kk * 16, LDS);
                wmma::mma_sync(acc, qf[kk], kf, acc);
            }
            wmma::store_matrix_sync(S + TILE_AT(n * 16), acc, 16, wmma::mem_col_major);
        }
        __syncwarp();
        // online softmax (base 2): column j0 < T is live in every tile, so m' is finite
        float s[HALF], mx = -INFINITY;
        UNROLL for (int c = 0; c < HALF; c++) {
            const int col = 2 * c + half;
            s[c] = j0 + col < T ? S[TILE_AT(col) + row] * scale_log2 : -INFINITY;
            mx = fmaxf(mx, s[c]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        const float m_new = fmaxf(m, mx), alpha = exp2f(m - m_new); // m = -inf at first: alpha = 0
        float sum = 0.0f;
        UNROLL for (int c = 0; c < HALF; c++) {
            const float p = exp2f(s[c] - m_new);
            sum += p;
            P[TILE_AT(2 * c + half) + row] = __float2bfloat16(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 16);
        l = l * alpha + sum;
        m = m_new;
        __syncwarp();
        // O = alpha O + bf16(P) V, FLASH_BC output columns at a time through S
        UNROLL for (int g = 0; g < OG; g++) {
            UNROLL for (int n = 0; n < NC; n++) {
                const int c0 = g * FLASH_BC + n * 16;
                if (c0 >= DH) break; // warp-uniform
                FragC acc;
                wmma::fill_fragment(acc, 0.0f);
                UNROLL for (int kk = 0; kk < NC; kk++) {
                    FragAc pf;
                    FragB vf;
                    wmma::load_matrix_sync(pf, P + TILE_AT(kk * 16), 16);
                    wmma::load_matrix_sync(vf, sV + kk * 16 * LDS + c0, LDS);
                    wmma::mma_sync(acc, pf, vf, acc);
                }
                wmma::store_matrix_sync(S + TILE_AT(n * 16), acc, 16, wmma::mem_col_major);
            }
            __syncwarp();
            UNROLL for (int c = 0; c < HALF; c++)
                if (g * FLASH_BC + 2 * c + half < DH)
                    o[g * HALF + c] = o[g * HALF + c] * alpha + S[TILE_AT(2 * c + half) + row];
            __syncwarp();
        }
    }

    const int t = q0 + warp * 16 + row;
    if (t < T) {
        const float inv = 1.0f / l;
        const size_t base = ((size_t)b * T + t) * D + (size_t)h * DH;
        UNROLL for (int g = 0; g < OG; g++)
            UNROLL for (int c = 0; c < HALF; c++) {
                const int col = g * FLASH_BC + 2 * c + half;
                if (col >= DH) continue;
                const float val = o[g * HALF + c] * inv;
                ActIO<TOut>::store(out + base + col, val);
                o_saved[base + col] = __float2bfloat16(val);
            }
        if (half == 0) lse[((size_t)b * H + h) * T + t] = m + log2f(l);
    }
}

// ---- backward ------------------------------------------------------------------------------------------

// Drow[b,h,t] = sum_c dO[b,t,h,c] * O[b,t,h,c] (fp32, O as saved in bf16): one warp per (b, t, h)
template <typename TIn>
__global__ void flash_bwd_rowdot_kernel(float *Drow, const TIn *dout, const __nv_bfloat16 *o_saved, int B, int T,
                                        int H, int Dh) {
    const size_t r = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); // (b * T + t) * H + h
    if (r >= (size_t)B * T * H) return; // whole warps
    const int lane = threadIdx.x & 31;
    const TIn *d = dout + r * Dh;
    const __nv_bfloat16 *o = o_saved + r * Dh;
    float s = 0.0f;
    for (int c = lane; c < Dh; c += 32) s += ActIO<TIn>::load(d + c) * __bfloat162float(o[c]);
    for (int w = 16; w > 0; w >>= 1) s += __shfl_xor_sync(0xffffffffu, s, w);
    const size_t bt = r / H, h = r % H, b = bt / T, t = bt % T;
    if (lane == 0) Drow[(b * H + h) * T + t] = s;
}

// Writes a warp's 16 x DH result (fragments acc[DH/16]) to rows r0.. of dst (row stride ld, rows < T
// only) through the warp's fp32 tile tmp (at least 16 x 16).
template <int DH, typename TOut>
__device__ __forceinline__ void store_rows(TOut *dst, int ld, int r0, int T, const FragC *acc, float *tmp) {
    const int lane = threadIdx.x & 31, row = lane & 15, half = lane >> 4;
    UNROLL for (int n = 0; n < DH / 16; n++) {
        wmma::store_matrix_sync(tmp, acc[n], 16, wmma::mem_col_major);
        __syncwarp();
        if (r0 + row < T)
            UNROLL for (int c = 0; c < 8; c++)
                ActIO<TOut>::store(dst + (size_t)(r0 + row) * ld + n * 16 + 2 * c + half, tmp[TILE_AT(2 * c + half) + row]);
        __syncwarp();
    }
}

// dK, dV: grid (B * H, ceil(T / FLASH_BR)); warp w owns KV rows k0 + 16 w ..; query tiles of FLASH_BC rows
// in order. dqkv [B,T,3D] (its dK and dV parts are written, =).
template <typename Cfg>
__global__ void flash_bwd_dkdv_kernel(typename Cfg::TOut *dqkv, const typename Cfg::TIn *dout, const typename Cfg::TIn *qkv,
                                      const float *lse, const float *Drow, int T, int H, float scale_log2, float scale) {
    FLASH_CFG_TYPES;
    constexpr int LDS = DH + 8, NK = DH / 16, NQ = FLASH_BC / 16, HALF = FLASH_BC / 2;
    // sQdO: the query tile's Q and dO (FLASH_BC rows each); at the start the staging of this block's K
    // and V rows (FLASH_BR = 2 FLASH_BC rows) on their way to the fragments
    static_assert(FLASH_BR == 2 * FLASH_BC, "K/V staging uses the Q and dO tiles' space");
    __shared__ __align__(32) __nv_bfloat16 sQdO[2 * FLASH_BC * LDS];
    __shared__ float sLse[FLASH_BC], sD[FLASH_BC];
    __shared__ __align__(32) float sS[FLASH_WARPS][16 * FLASH_BC];
    __shared__ __align__(32) float sdP[FLASH_WARPS][16 * FLASH_BC];
    __shared__ __align__(32) __nv_bfloat16 sPt[FLASH_WARPS][16 * FLASH_BC];
    __shared__ __align__(32) __nv_bfloat16 sdSt[FLASH_WARPS][16 * FLASH_BC];
    __nv_bfloat16 *sQ = sQdO, *sdO = sQdO + FLASH_BC * LDS;
    const int H3 = 3 * H * DH, D = H * DH;
    const int b = blockIdx.x / H, h = blockIdx.x % H, k0 = blockIdx.y * FLASH_BR;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row = lane & 15, half = lane >> 4;
    const TIn *q = qkv + (size_t)b * T * H3 + (size_t)h * DH, *k = q + D, *v = q + 2 * D;
    const TIn *dO = dout + (size_t)b * T * D + (size_t)h * DH;
    const float *lse_bh = lse + ((size_t)b * H + h) * T, *D_bh = Drow + ((size_t)b * H + h) * T;
    float *S = sS[warp], *dP = sdP[warp];
    __nv_bfloat16 *Pt = sPt[warp], *dSt = sdSt[warp];

    FragA kf[NK], vf[NK];
    load_tile<DH, LDS>(sQdO, k, H3, k0, FLASH_BR, T);
    __syncthreads();
    UNROLL for (int kk = 0; kk < NK; kk++) wmma::load_matrix_sync(kf[kk], sQdO + warp * 16 * LDS + kk * 16, LDS);
    __syncthreads();
    load_tile<DH, LDS>(sQdO, v, H3, k0, FLASH_BR, T);
    __syncthreads();
    UNROLL for (int kk = 0; kk < NK; kk++) wmma::load_matrix_sync(vf[kk], sQdO + warp * 16 * LDS + kk * 16, LDS);
    FragC dK[NK], dV[NK];
    UNROLL for (int n = 0; n < NK; n++) {
        wmma::fill_fragment(dK[n], 0.0f);
        wmma::fill_fragment(dV[n], 0.0f);
    }

    for (int i0 = 0; i0 < T; i0 += FLASH_BC) {
        __syncthreads(); // every warp is done with the previous query tile (and the staging above)
        load_tile<DH, LDS>(sQ, q, H3, i0, FLASH_BC, T);
        load_tile<DH, LDS>(sdO, dO, D, i0, FLASH_BC, T);
        if (threadIdx.x < FLASH_BC) {
            const int i = i0 + threadIdx.x;
            sLse[threadIdx.x] = i < T ? lse_bh[i] : 0.0f;
            sD[threadIdx.x] = i < T ? D_bh[i] : 0.0f;
        }
        __syncthreads();
        // S^T = K Q^T and dP^T = V dO^T for the warp's 16 KV rows: 16 x FLASH_BC
        UNROLL for (int n = 0; n < NQ; n++) {
            FragC accS, accP;
            wmma::fill_fragment(accS, 0.0f);
            wmma::fill_fragment(accP, 0.0f);
            UNROLL for (int kk = 0; kk < NK; kk++) {
                FragBt qt, dot;
                wmma::load_matrix_sync(qt, sQ + n * 16 * LDS + kk * 16, LDS);
                wmma::mma_sync(accS, kf[kk], qt, accS);
                wmma::load_matrix_sync(dot, sdO + n * 16 * LDS + kk * 16, LDS);
                wmma::mma_sync(accP, vf[kk], dot, accP);
            }
            wmma::store_matrix_sync(S + TILE_AT(n * 16), accS, 16, wmma::mem_col_major);
            wmma::store_matrix_sync(dP + TILE_AT(n * 16), accP, 16, wmma::mem_col_major);
        }
        __syncwarp();
        // P^T = exp2(S^T scale_log2 - LSE), dS^T = scale P^T (dP^T - D); padded query rows give 0
        UNROLL for (int c = 0; c < HALF; c++) {
            const int col = 2 * c + half, e = TILE_AT(col) + row;
            const float p = i0 + col < T ? exp2f(S[e] * scale_log2 - sLse[col]) : 0.0f;
            Pt[e] = __float2bfloat16(p);
            dSt[e] = __float2bfloat16(scale * p * (dP[e] - sD[col]));
        }
        __syncwarp();
        // dV += P^T dO ; dK += dS^T Q   (16 x FLASH_BC) (FLASH_BC x DH)
        UNROLL for (int n = 0; n < NK; n++)
            UNROLL for (int kk = 0; kk < NQ; kk++) {
                FragAc pa, dsa;
                FragB dob, qb;
                wmma::load_matrix_sync(pa, Pt + TILE_AT(kk * 16), 16);
                wmma::load_matrix_sync(dob, sdO + kk * 16 * LDS + n * 16, LDS);
                wmma::mma_sync(dV[n], pa, dob, dV[n]);
                wmma::load_matrix_sync(dsa, dSt + TILE_AT(kk * 16), 16);
                wmma::load_matrix_sync(qb, sQ + kk * 16 * LDS + n * 16, LDS);
                wmma::mma_sync(dK[n], dsa, qb, dK[n]);
            }
    }
    TOut *dq = dqkv + (size_t)b * T * H3 + (size_t)h * DH;
    __syncwarp();
    store_rows<DH>(dq + D, H3, k0 + warp * 16, T, dK, S);
    store_rows<DH>(dq + 2 * D, H3, k0 + warp * 16, T, dV, S);
}

// dQ: grid (B * H, ceil(T / FLASH_BR)); warp w owns query rows q0 + 16 w ..; KV tiles of FLASH_BC rows in
// order. Writes the dQ part of dqkv (=).
template <typename Cfg>
__global__ void flash_bwd_dq_kernel(typename Cfg::TOut *dqkv, const typename Cfg::TIn *dout, const typename Cfg::TIn *qkv,
                                    const float *lse, const float *Drow, int T, int H, float scale_log2, float scale) {
    FLASH_CFG_TYPES;
    constexpr int LDS = DH + 8, NK = DH / 16, NC = FLASH_BC / 16, HALF = FLASH_BC / 2;
    // sKV: the KV tile (K then V, FLASH_BC rows each); at the start the staging of this block's Q and dO
    // rows (FLASH_BR = 2 FLASH_BC rows) on their way to the fragments
    __shared__ __align__(32) __nv_bfloat16 sKV[2 * FLASH_BC * LDS];
    __shared__ __align__(32) float sS[FLASH_WARPS][16 * FLASH_BC];
    __shared__ __align__(32) float sdP[FLASH_WARPS][16 * FLASH_BC];
    __shared__ __align__(32) __nv_bfloat16 sdS[FLASH_WARPS][16 * FLASH_BC];
    __nv_bfloat16 *sK = sKV, *sV = sKV + FLASH_BC * LDS;
    const int H3 = 3 * H * DH, D = H * DH;
    const int b = blockIdx.x / H, h = blockIdx.x % H, q0 = blockIdx.y * FLASH_BR;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row = lane & 15, half = lane >> 4;
    const TIn *q = qkv + (size_t)b * T * H3 + (size_t)h * DH, *k = q + D, *v = q + 2 * D;
    const TIn *dO = dout + (size_t)b * T * D + (size_t)h * DH;
    float *S = sS[warp], *dP = sdP[warp];
    __nv_bfloat16 *dS = sdS[warp];
    const int t = q0 + warp * 16 + row;
    const float lse_t = t < T ? lse[((size_t)b * H + h) * T + t] : 0.0f;
    const float D_t = t < T ? Drow[((size_t)b * H + h) * T + t] : 0.0f;

    FragA qf[NK], dof[NK];
    load_tile<DH, LDS>(sKV, q, H3, q0, FLASH_BR, T);
    __syncthreads();
    UNROLL for (int kk = 0; kk < NK; kk++) wmma::load_matrix_sync(qf[kk], sKV + warp * 16 * LDS + kk * 16, LDS);
    __syncthreads();
    load_tile<DH, LDS>(sKV, dO, D, q0, FLASH_BR, T);
    __syncthreads();
    UNROLL for (int kk = 0; kk < NK; kk++) wmma::load_matrix_sync(dof[kk], sKV + warp * 16 * LDS + kk * 16, LDS);
    FragC dQ[NK];
    UNROLL for (int n = 0; n < NK; n++) wmma::fill_fragment(dQ[n], 0.0f);

    for (int j0 = 0; j0 < T; j0 += FLASH_BC) {
        __syncthreads(); // every warp is done with the previous KV tile (and the staging above)
        load_tile<DH, LDS>(sK, k, H3, j0, FLASH_BC, T);
        load_tile<DH, LDS>(sV, v, H3, j0, FLASH_BC, T);
        __syncthreads();
        // S = Q K^T, dP = dO V^T: 16 x FLASH_BC
        UNROLL for (int n = 0; n < NC; n++) {
            FragC accS, accP;
            wmma::fill_fragment(accS, 0.0f);
            wmma::fill_fragment(accP, 0.0f);
            UNROLL for (int kk = 0; kk < NK; kk++) {
                FragBt kt, vt;
                wmma::load_matrix_sync(kt, sK + n * 16 * LDS + kk * 16, LDS);
                wmma::mma_sync(accS, qf[kk], kt, accS);
                wmma::load_matrix_sync(vt, sV + n * 16 * LDS + kk * 16, LDS);
                wmma::mma_sync(accP, dof[kk], vt, accP);
            }
            wmma::store_matrix_sync(S + TILE_AT(n * 16), accS, 16, wmma::mem_col_major);
            wmma::store_matrix_sync(dP + TILE_AT(n * 16), accP, 16, wmma::mem_col_major);
        }
        __syncwarp();
        UNROLL for (int c = 0; c < HALF; c++) {
            const int col = 2 * c + half, e = TILE_AT(col) + row;
            const float p = j0 + col < T ? exp2f(S[e] * scale_log2 - lse_t) : 0.0f;
            dS[e] = __float2bfloat16(scale * p * (dP[e] - D_t));
        }
        __syncwarp();
        // dQ += dS K   (16 x FLASH_BC) (FLASH_BC x DH)
        UNROLL for (int n = 0; n < NK; n++)
            UNROLL for (int kk = 0; kk < NC; kk++) {
                FragAc dsa;
                FragB kb;
                wmma::load_matrix_sync(dsa, dS + TILE_AT(kk * 16), 16);
                wmma::load_matrix_sync(kb, sK + kk * 16 * LDS + n * 16, LDS);
                wmma::mma_sync(dQ[n], dsa, kb, dQ[n]);
            }
    }
    __syncwarp();
    TOut *dq = dqkv + (size_t)b * T * H3 + (size_t)h * DH;
    store_rows<DH>(dq, H3, q0 + warp * 16, T, dQ, S);
}

// bf16 activations in and out (step 2 of docs/cuda-backend.md): compiled here so that the switch keeps
// building; nothing launches them until the interface carries bf16 activations.
typedef FlashCfg<64, __nv_bfloat16, __nv_bfloat16> FlashBf16Cfg64;
template __global__ void flash_fwd_kernel<FlashBf16Cfg64>(__nv_bfloat16 *, float *, __nv_bfloat16 *,
                                                          const __nv_bfloat16 *, int, int, float);
template __global__ void flash_bwd_rowdot_kernel<__nv_bfloat16>(float *, const __nv_bfloat16 *,
                                                                const __nv_bfloat16 *, int, int, int, int);
template __global__ void flash_bwd_dkdv_kernel<FlashBf16Cfg64>(__nv_bfloat16 *, const __nv_bfloat16 *,
                                                               const __nv_bfloat16 *, const float *, const float *,
                                                               int, int, float, float);
template __global__ void flash_bwd_dq_kernel<FlashBf16Cfg64>(__nv_bfloat16 *, const __nv_bfloat16 *,
                                                             const __nv_bfloat16 *, const float *, const float *, int,
                                                             int, float, float);

// ---- launchers -------------------------------------------------------------------------------------------

bool cuda_attention_flash_supported(Backend *be, int Dh) {
    return cuda_impl(be)->gemm_precision == CUDA_GEMM_BF16 && attention_flash_head_dim(Dh);
}

// E: the activations' element type (float, or __nv_bfloat16 for bf16 activation buffers: ActIO reads and
// writes them; qkv and out, or qkv, dout and dqkv, have one type, as the model allocates them)
template <int DH, typename E>
static void flash_fwd_typed(Backend *be, E *out, float *saved, const E *qkv, int B, int T, int H) {
    typedef FlashCfg<DH, E, E> Cfg;
    float *lse = saved;
    __nv_bfloat16 *o_saved = (__nv_bfloat16 *)(saved + attention_flash_lse_floats(B, T, H));
    const float scale_log2 = FLASH_LOG2E / sqrtf((float)DH);
    dim3 grid(B * H, ceil_div(T, FLASH_BR)); // (image, head) on x: no 65535 limit
    DINO_LAUNCH(flash_fwd_kernel<Cfg>, grid, FLASH_WARPS * 32, 0, cuda_stream(be))(out, lse, o_saved, qkv,
                                                                                               T, H, scale_log2);
    cudaCheckLaunch();
}

template <int DH>
static void flash_fwd_launch(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H) {
    const ActRef o = cuda_act(be, out), x = cuda_act(be, qkv);
    if (o.bf16 != x.bf16) DINO_DIE_CUDA("flash attention: qkv and out of different element types");
    if (x.bf16) flash_fwd_typed<DH>(be, (__nv_bfloat16 *)o.p, saved, (const __nv_bfloat16 *)x.p, B, T, H);
    else flash_fwd_typed<DH>(be, out, saved, qkv, B, T, H);
}

template <int DH, typename E>
static void flash_bwd_typed(Backend *be, E *dqkv, const E *dout, const E *qkv, const float *saved, int B, int T,
                            int H) {
    typedef FlashCfg<DH, E, E> Cfg;
    const float *lse = saved;
    const __nv_bfloat16 *o_saved = (const __nv_bfloat16 *)(saved + attention_flash_lse_floats(B, T, H));
    float *Drow = (float *)cuda_scratch(be, sizeof(float) * (size_t)B * H * T);
    const float scale = 1.0f / sqrtf((float)DH), scale_log2 = FLASH_LOG2E * scale;
    const size_t rows = (size_t)B * T * H;
    DINO_LAUNCH(flash_bwd_rowdot_kernel<E>, ceil_div(rows, 8), 256, 0, cuda_stream(be))(Drow, dout, o_saved, B, T,
                                                                                       H, DH);
    cudaCheckLaunch();
    dim3 grid(B * H, ceil_div(T, FLASH_BR)); // (image, head) on x: no 65535 limit
    DINO_LAUNCH(flash_bwd_dkdv_kernel<Cfg>, grid, FLASH_WARPS * 32, 0, cuda_stream(be))(
        dqkv, dout, qkv, lse, Drow, T, H, scale_log2, scale);
    cudaCheckLaunch();
    DINO_LAUNCH(flash_bwd_dq_kernel<Cfg>, grid, FLASH_WARPS * 32, 0, cuda_stream(be))(
        dqkv, dout, qkv, lse, Drow, T, H, scale_log2, scale);
    cudaCheckLaunch();
}

template <int DH>
static void flash_bwd_launch(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                             int T, int H) {
    const ActRef dx = cuda_act(be, dqkv), dy = cuda_act(be, dout), x = cuda_act(be, qkv);
    if (dx.bf16 != x.bf16 || dy.bf16 != x.bf16)
        DINO_DIE_CUDA("flash attention: qkv, dout and dqkv of different element types");
    if (x.bf16)
        flash_bwd_typed<DH>(be, (__nv_bfloat16 *)dx.p, (const __nv_bfloat16 *)dy.p, (const __nv_bfloat16 *)x.p, saved,
                            B, T, H);
    else flash_bwd_typed<DH>(be, dqkv, dout, qkv, saved, B, T, H);
}

void cuda_attention_flash_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh) {
    CUDA_OP_RANGE("attention_flash_fwd");
    if (B <= 0 || T <= 0) return;
    switch (Dh) {
    case 16: flash_fwd_launch<16>(be, out, saved, qkv, B, T, H); break;
    case 32: flash_fwd_launch<32>(be, out, saved, qkv, B, T, H); break;
    case 64: flash_fwd_launch<64>(be, out, saved, qkv, B, T, H); break;
    case 80: flash_fwd_launch<80>(be, out, saved, qkv, B, T, H); break;
    case 96: flash_fwd_launch<96>(be, out, saved, qkv, B, T, H); break;
    case 128: flash_fwd_launch<128>(be, out, saved, qkv, B, T, H); break;
    default: fprintf(stderr, "dinotrain: flash attention has no kernel for head dim %d\n", Dh), abort();
    }
}

void cuda_attention_flash_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                              int T, int H, int Dh) {
    CUDA_OP_RANGE("attention_flash_bwd");
    if (B <= 0 || T <= 0) return;
    switch (Dh) {
    case 16: flash_bwd_launch<16>(be, dqkv, dout, qkv, saved, B, T, H); break;
    case 32: flash_bwd_launch<32>(be, dqkv, dout, qkv, saved, B, T, H); break;
    case 64: flash_bwd_launch<64>(be, dqkv, dout, qkv, saved, B, T, H); break;
    case 80: flash_bwd_launch<80>(be, dqkv, dout, qkv, saved, B, T, H); break;
    case 96: flash_bwd_launch<96>(be, dqkv, dout, qkv, saved, B, T, H); break;
    case 128: flash_bwd_launch<128>(be, dqkv, dout, qkv, saved, B, T, H); break;
    default: fprintf(stderr, "dinotrain: flash attention has no kernel for head dim %d\n", Dh), abort();
    }
}

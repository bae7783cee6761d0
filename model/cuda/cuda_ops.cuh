// Internal to model/cuda/: the backend's private state, checked-call macros, launch helpers and the
// op functions that backend_cuda.cu puts in the Backend table. The model reaches them only through
// the table (model/backend.h). One .cu per op family, as model/cpu/ has one .c per family.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <functional>
#include <type_traits>

#include "model/backend.h"
#include "model/cuda/backend_cuda.h"

// ---- checked calls: file:line, the library's message, and a hint ---------------------------------

void cuda_fail(cudaError_t e, const char *what, const char *file, int line);
void cublas_fail(cublasStatus_t s, const char *what, const char *file, int line);

#define cudaCheck(call)                                                                            \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) cuda_fail(e_, #call, __FILE__, __LINE__);                           \
    } while (0)
#define cublasCheck(call)                                                                          \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS) cublas_fail(s_, #call, __FILE__, __LINE__);               \
    } while (0)
// Every kernel launch is written DINO_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...): the
// <<<>>> launch under nvcc; the CUDA execution layer of the tests (tests/cudaemu/, which compiles these
// sources with a host compiler) defines it first to run the kernel on the CPU.
#ifndef DINO_LAUNCH
#define DINO_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif
// After every kernel launch: catches bad launch configurations at the launch site.
#define cudaCheckLaunch() cudaCheck(cudaGetLastError())

// ---- backend state -----------------------------------------------------------------------------

#define CUDA_GRAPH_CACHE 32 // instantiated segments kept (graphs.cu)
typedef struct {
    cudaGraphExec_t exec;
    size_t nodes;
    unsigned long long used;
} CudaGraphSlot;

typedef struct {
    int device;
    char device_name[256];
    cudaStream_t stream;
    cublasHandle_t cublas;
    CudaGemmPrecision gemm_precision;
    void *scratch;        // grow-only scratch for reductions' partial sums (stream-ordered reuse)
    size_t scratch_bytes;
    double *host_result;  // pinned: scalar results (sum_squares) come back through here
    cudaStream_t copy_stream;      // uploads of the next batch, beside the compute stream
    cudaEvent_t upload_done[16];   // one per ticket (be->upload_async), reused in turn
    cudaEvent_t alloc_done;        // after the zero-fill of the latest allocation (uploads wait for it)
    int next_ticket;
    // cuBLASLt for linear layers with a fused bias epilogue (matmul.cu); DINO_CUDA_LT=0 turns it off
    cublasLtHandle_t lt;
    int lt_on;
    void *lt_workspace;
    size_t lt_workspace_bytes;
    struct LtPlan *lt_plans;       // one per (shape, precision), made on first use
    int n_lt_plans;
    // cuda_gemm_grid's device pointer arrays (grow-only; stream-ordered reuse). gemm_grid_loop: one
    // strided-batched call per head instead (DINO_CUDA_GEMM_GRID=0), the step-1 way
    void **grid_ptrs;
    size_t grid_ptrs_cap;
    int gemm_grid_loop;
    // CUDA graphs (graphs.cu; backend_cuda_set_graphs): the compute stream captures "segments" between the
    // points where work must leave it; pageable uploads go through `stage` (page-locked) while capturing
    void *cublas_workspace;        // cublasSetWorkspace: cuBLAS calls are capturable (set in every mode)
    int graphs, capturing;
    int graph_chunk_ops, graph_ops; // a segment is also ended after this many linear ops (0: never)
    unsigned long graph_thread;    // pthread_t of the thread that captures
    CudaGraphSlot graph_cache[CUDA_GRAPH_CACHE];
    unsigned long long graph_tick;
    CudaGraphStats graph_stats;
    void *stage;
    size_t stage_bytes, stage_used;
    // replay (graphs == CUDA_GRAPHS_REPLAY / _VERIFY): ops are deferred into `pending` and each segment is
    // launched from the exec cached under its signature (graphs.cu, "replay")
    struct CudaReplay *replay;
    int replay_pending; // ops are deferred (cuda_stream flushes them first)
    int replay_running; // running a segment's deferred ops (recording it)
    int replay_cut;     // ... and a host wait inside them cut the recording (not cached)
    CudaAttention attention; // flash (default where supported) or the batched-GEMM path; DINO_ATTENTION
    int fuse_epilogues; // linear_gelu/swiglu_fwd: bias + activation in one epilogue kernel (default); 0: unfused
    int fuse_resln; // residual_layernorm_fwd as one kernel (default) or the four ops; DINO_CUDA_FUSE_RESLN=0
    // the bf16 activation buffers (alloc_act), sorted by base address: ops look their arguments up
    struct ActAlloc *acts;
    int n_acts, cap_acts;
    // the GEMMs' bf16 weight copies (weight_copy.cu): the registered parameter buffers, a handful.
    // weight_copy: DINO_CUDA_WEIGHT_COPY (default on; 0: nothing registered, W converted per GEMM, the A/B);
    // weight_copy_check: DINO_CUDA_WEIGHT_COPY_CHECK=1, every GEMM verifies the copy it reads (tests)
    struct ParamCopy *pcopies;
    int n_pcopies, cap_pcopies;
    int weight_copy, weight_copy_check;
} CudaImpl;
struct ParamCopy {
    const char *base; // the fp32 master (n floats)
    size_t n;
    __nv_bfloat16 *copy; // n bf16, copy[i] == bf16(master[i]) between the backend's ops
};
struct ActAlloc {
    const char *base;
    size_t bytes; // device bytes (2 per element)
};
void cuda_lt_init(CudaImpl *c, int force); // force: even with DINO_CUDA_LT=0
void cuda_lt_destroy(CudaImpl *c);

static inline CudaImpl *cuda_impl(Backend *be) { return (CudaImpl *)be->impl; }

// ---- graphs (graphs.cu) --------------------------------------------------------------------------
// Around anything CUDA refuses while the compute stream captures (the host waits, memory is allocated
// or freed, another stream takes part): cuda_graph_pause(be) ends and launches the open segment (nothing
// when graphs are off), cuda_graph_resume(be) opens the next one (graphs on).
void cuda_graph_pause(Backend *be);
void cuda_graph_resume(Backend *be);
// Called by the linear ops: every graph_chunk_ops of them, the open segment is launched and a new one
// opened, so that the GPU works on the first part of a long segment while the host records the rest.
void cuda_graph_tick(Backend *be);
// pause + cudaStreamSynchronize of the compute stream (the staging is free again). Resume after.
void cuda_host_wait(Backend *be);
// While capturing: a page-locked copy of [src, src + bytes) that a captured host-to-device copy may read
// (the graph reads it when it runs); NULL when not capturing or too large (copy eagerly, paused).
const void *cuda_graph_stage(Backend *be, const void *src, size_t bytes);
// For calls that may come from other threads (host_alloc from the loader's workers): pauses only when
// called on the capturing thread; returns whether it did (then resume after).
int cuda_graph_host_call_begin(Backend *be);
void cuda_graph_destroy(CudaImpl *c);
// Replay mode: whether an op called now is deferred (the capturing thread, no segment running), and the
// deferral itself: the op and its arguments, bit for bit, extend the segment's signature, in two parts:
// `shape` (the function, pointers, sizes: what fixes the graph's topology and buffers) and `values` (its
// floating-point arguments: a learning rate, a temperature); `run` issues the op when the segment is
// recorded. cuda_replay_flush launches the pending segment.
bool cuda_replay_defers(Backend *be);
void cuda_replay_defer(Backend *be, const void *shape, size_t n_shape, const void *values, size_t n_values,
                       std::function<void()> run);
void cuda_replay_flush(Backend *be);
// The cached execs may reference memory about to be freed (or state about to change): drop them. Call
// after a host wait (no launch of them is still queued).
void cuda_replay_forget(CudaImpl *c);
// The table entries (backend_cuda.cu): CudaOp<fn>::deferred wraps an op that only enqueues device work
// (kernels, cuBLAS, device copies): in replay mode it is deferred with its arguments as its signature;
// CudaOp<fn>::flushed wraps one that the host waits for (it returns a value): the pending segment first.
// The integer arguments of an op that are values like its floats (bit i: the i-th argument after be).
template <auto Fn> constexpr unsigned long long cuda_value_args = 0;
void cuda_adamw(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float wd, float beta1,
                float beta2, float eps, long step);
template <> constexpr unsigned long long cuda_value_args<cuda_adamw> = 1ull << 10; // the step count
template <auto Fn> struct CudaOp;
template <typename R, typename... A, R (*Fn)(Backend *, A...)> struct CudaOp<Fn> {
    static R deferred(Backend *be, A... a) {
        if (!cuda_replay_defers(be)) return Fn(be, a...);
        char shape[sizeof(void *) + (sizeof(A) + ... + 0)], values[(sizeof(A) + ... + 0) + 1];
        size_t ns = 0, nv = 0;
        int i = -1; // the function first, then its arguments
        auto put = [&](const auto &v) {
            if (std::is_floating_point<std::decay_t<decltype(v)>>::value || (i >= 0 && (cuda_value_args<Fn> >> i & 1)))
                memcpy(values + nv, &v, sizeof v), nv += sizeof v;
            else memcpy(shape + ns, &v, sizeof v), ns += sizeof v;
            i++;
        };
        R (*f)(Backend *, A...) = Fn;
        put(f);
        (put(a), ...);
        cuda_replay_defer(be, shape, ns, values, nv, [=]() { Fn(be, a...); });
    }
    static R flushed(Backend *be, A... a) {
        cuda_replay_flush(be);
        return Fn(be, a...);
    }
};
// The compute stream. In replay mode an op that enqueues work without being deferred (a table entry not
// wrapped in CudaOp<fn>::deferred) gets the pending ops flushed first: it is then a segment boundary, slower
// but in order.
static inline cudaStream_t cuda_stream(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    if (c->replay_pending) cuda_replay_flush(be);
    return c->stream;
}
// Scratch of at least `bytes`, valid until the next call of this function. Every kernel runs on the
// backend's one stream, so an op may reuse the scratch of the op before it.
void *cuda_scratch(Backend *be, size_t bytes);

// ---- activation dtypes (model/backend.h, docs/cuda-backend.md "Activation dtypes") -----------------
// An op argument that may be a bf16 activation buffer: its device address and its element type, which
// the backend recorded at alloc_act. Kernels read and write it through act_ld / act_st (fp32 math, one
// rounding at the store); the branch on `bf16` is uniform over the grid.
struct ActRef {
    void *p;
    bool bf16;
};
// The element type of p: bf16 when p is the base of a bf16 activation buffer, fp32 otherwise. Dies on
// a pointer inside a bf16 buffer (a view: the model must pass the whole buffer).
ActRef cuda_act(Backend *be, const float *p);
// An argument combination the backend does not support: the message and exit (as DINO_DIE).
void cuda_die(const char *what, const char *file, int line);
#define DINO_DIE_CUDA(what) cuda_die(what, __FILE__, __LINE__)
// Dies when p lies in a bf16 activation buffer (an op that takes fp32 only).
void cuda_need_f32(Backend *be, const float *p, const char *op);
__device__ __forceinline__ float act_ld(ActRef a, size_t i) {
    return a.bf16 ? __bfloat162float(((const __nv_bfloat16 *)a.p)[i]) : ((const float *)a.p)[i];
}
__device__ __forceinline__ void act_st(ActRef a, size_t i, float v) {
    if (a.bf16) ((__nv_bfloat16 *)a.p)[i] = __float2bfloat16(v);
    else ((float *)a.p)[i] = v;
}
// v as the buffer stores it (rounded to bf16 for a bf16 buffer): what a later act_ld of it returns.
__device__ __forceinline__ float act_round(ActRef a, float v) { return a.bf16 ? __bfloat162float(__float2bfloat16(v)) : v; }
// The exact (erf) GELU, one expression for every kernel that computes it (gelu_fwd and the fused
// epilogue: the same bits).
__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
// SwiGLU of the gate input a and the value g: silu(a) * g (swiglu_fwd and the fused epilogue alike).
__device__ __forceinline__ float swiglu_val(float a, float g) { return a / (1.0f + expf(-a)) * g; }
// One element of the stochastic-depth residual with LayerScale: x + scale * g * br (g = 1 without
// gamma). residual_fwd and the fused residual + LayerNorm both go through here, so that both compute
// (and nvcc contracts) the same expression: the fused kernel's stream values are the unfused ones' bits.
__device__ __forceinline__ float residual_add(float x, float scale, float g, float br) { return x + scale * g * br; }
// Its gradient into the branch, scale * g * dx (residual_bwd and the fused LayerNorm + residual backward).
__device__ __forceinline__ float residual_grad(float scale, float g, float dx) { return scale * g * dx; }
static inline cudaDataType_t act_cuda_type(ActRef a) { return a.bf16 ? CUDA_R_16BF : CUDA_R_32F; }
static inline size_t act_elem_bytes(ActRef a) { return a.bf16 ? 2 : 4; }
// a + i elements
static inline ActRef act_offset(ActRef a, size_t i) { return ActRef{(char *)a.p + i * act_elem_bytes(a), a.bf16}; }
// dst[i] = bf16(src[i]) for i < n, on the backend's stream (matmul.cu)
void cuda_to_bf16(Backend *be, __nv_bfloat16 *dst, const float *src, size_t n);

// ---- the bf16 weight copy (weight_copy.cu; docs/cuda-backend.md "bf16 weight copy") ---------------------
size_t cuda_param_copy_register(Backend *be, float *P, size_t n);
void cuda_param_copy_changed(Backend *be, const float *p, size_t n);
// After a backend op wrote [p, p + bytes) by other means than a copy-writing kernel: the part of any
// registered buffer it covers is converted again (nothing when it covers none).
void cuda_param_written(Backend *be, const void *p, size_t bytes);
// The copy of p[0, n) when all of it lies in one registered buffer, else NULL: adamw and ema store into it.
__nv_bfloat16 *cuda_param_copy_at(Backend *be, const float *p, size_t n);
// A GEMM's weight W[n] as bf16: its copy (verified against W first in check mode), or NULL (convert it).
const __nv_bfloat16 *cuda_weight_bf16(Backend *be, const float *W, size_t n);
// Releasing p: its copy goes too when p is a registered buffer.
void cuda_param_copy_forget(Backend *be, const void *p);

// NVTX range for profiles (nsys): one per op, named after it.
struct NvtxRange {
    explicit NvtxRange(const char *name) { nvtxRangePushA(name); }
    ~NvtxRange() { nvtxRangePop(); }
};
#define CUDA_OP_RANGE(name) NvtxRange nvtx_range_(name)

static inline unsigned ceil_div(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }
// Grid for a 1-D elementwise kernel with a grid-stride loop.
static inline unsigned grid_1d(size_t n, int block) {
    size_t g = (n + block - 1) / block;
    if (g > 65535u * 8u) g = 65535u * 8u;
    return (unsigned)(g ? g : 1);
}

// ---- deterministic column sums (shared by linear/layernorm/residual/tokens backward) -------------
// dst[c] += alpha * sum over rows of partial[rowblock][c], in row-block order. Partials come from each
// family's own first-pass kernel (a fixed block of rows per CUDA block, reduced in shared memory in a
// fixed order), so the result is identical on every run.
#define COLSUM_ROWS_PER_BLOCK 256
#define COLSUM_COLS 32
#define COLSUM_ROW_THREADS 8
void colsum_finish(Backend *be, float *dst, const float *partial, int nblk, int cols, float alpha);

// First pass: partial[blockIdx.y][c] = sum of f(r, c) over the rows r of row-block blockIdx.y, each
// thread summing a fixed stride of rows, then the COLSUM_ROW_THREADS lanes in order.
template <typename F>
__global__ void colsum_partial_kernel(float *partial, int rows, int cols, F f) {
    __shared__ float acc[COLSUM_ROW_THREADS][COLSUM_COLS];
    const int c = blockIdx.x * COLSUM_COLS + threadIdx.x;
    const int r0 = blockIdx.y * COLSUM_ROWS_PER_BLOCK;
    const int r1 = min(r0 + COLSUM_ROWS_PER_BLOCK, rows);
    float s = 0.0f;
    if (c < cols)
        for (int r = r0 + threadIdx.y; r < r1; r += COLSUM_ROW_THREADS) s += f(r, c);
    acc[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float t = 0.0f;
        for (int k = 0; k < COLSUM_ROW_THREADS; k++) t += acc[k][threadIdx.x];
        partial[(size_t)blockIdx.y * cols + c] = t;
    }
}

// dst[c] += alpha * sum_r f(r, c) for r < rows, c < cols: deterministic (fixed blocks, fixed order).
template <typename F>
void colsum_add(Backend *be, float *dst, int rows, int cols, float alpha, F f) {
    if (rows <= 0 || cols <= 0) return;
    const int nblk = (int)ceil_div(rows, COLSUM_ROWS_PER_BLOCK);
    float *partial = (float *)cuda_scratch(be, sizeof(float) * (size_t)nblk * cols);
    dim3 grid(ceil_div(cols, COLSUM_COLS), nblk), block(COLSUM_COLS, COLSUM_ROW_THREADS);
    DINO_LAUNCH(colsum_partial_kernel, grid, block, 0, cuda_stream(be))(partial, rows, cols, f);
    cudaCheckLaunch();
    colsum_finish(be, dst, partial, nblk, cols, alpha);
}

// dgamma's column-sum terms of residual_bwd: row it = i*T + t of the branch, br (.) dx at the kept
// image's row (tokens.cu, and the fused LayerNorm + residual backward in norm.cu)
struct GammaGrad {
    const float *dx;
    ActRef br;
    const int *idx;
    int T, D;
    __device__ float operator()(int it, int d) const {
        int i = it / T, t = it % T;
        size_t xr = (size_t)(idx ? idx[i] : i) * T + t;
        return dx[xr * D + d] * act_ld(br, (size_t)it * D + d);
    }
};

// ---- ops (same meaning as the CPU reference, model/cpu/cpu_ops.h) ------------------------------
// matmul.cu
void cuda_gemm(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);
// Row-major strided-batched GEMM (C_i = alpha op(A_i) op(B_i) + beta C_i), used by attention.
// C_bh = alpha op(A_bh) op(B_bh) + beta C_bh for every image b < nb and head h < nh in one cuBLAS call
// (cublasGemmBatchedEx on pointer arrays that one kernel writes), X_bh = X + b * sX_b + h * sX_h floats.
void cuda_gemm_grid(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                    long long sA_b, long long sA_h, const float *B, int ldb, long long sB_b, long long sB_h, float beta,
                    float *C, int ldc, long long sC_b, long long sC_h, int nb, int nh);
// The same with operands of type ta / tb (CUDA_R_32F or CUDA_R_16BF; strides in elements) and output of
// type tc (bf16: rounded once at the store; beta must then be 0).
void cuda_gemm_grid_typed(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const void *A,
                          cudaDataType_t ta, int lda, long long sA_b, long long sA_h, const void *B, cudaDataType_t tb,
                          int ldb, long long sB_b, long long sB_h, float beta, void *C, cudaDataType_t tc, int ldc,
                          long long sC_b, long long sC_h, int nb, int nh);
void cuda_gemm_batched(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A,
                       int lda, long long strideA, const float *B, int ldb, long long strideB, float beta, float *C,
                       int ldc, long long strideC, int batch);
void cuda_linear_fwd(Backend *be, float *out, const float *in, const float *W, const float *b, int rows, int n_in,
                     int n_out);
void cuda_linear_bwd(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in,
                     const float *W, int rows, int n_in, int n_out);
// norm.cu
void cuda_layernorm_fwd(Backend *be, float *out, float *mean, float *rstd, const float *x, const float *w,
                        const float *b, int rows, int D, float eps);
void cuda_layernorm_bwd(Backend *be, float *dx_acc, float *dw, float *db, const float *dout, const float *x,
                        const float *mean, const float *rstd, const float *w, int rows, int D);
// activation.cu
void cuda_gelu_fwd(Backend *be, float *out, const float *x, size_t n);
void cuda_linear_gelu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b, int rows,
                          int n_in, int n_out);
void cuda_linear_swiglu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                            int rows, int n_in, int Hd);
void cuda_gelu_bwd(Backend *be, float *dx, const float *dout, const float *x, size_t n);
void cuda_swiglu_fwd(Backend *be, float *out, const float *in, int rows, int Hd);
void cuda_swiglu_bwd(Backend *be, float *din, const float *dout, const float *in, int rows, int Hd);
// attention.cu
size_t cuda_attention_saved_floats(Backend *be, int B, int T, int H, int Dh);
void cuda_attention_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh);
void cuda_attention_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                        int T, int H, int Dh);
// attention_flash.cu: the fused path (bf16 GEMM precision and a head dim with kernels: 16, 32, 64, 80, 96, 128);
// `saved` as attention_saved_floats_flash (model/attention_layout.h)
bool cuda_attention_flash_supported(Backend *be, int Dh);
void cuda_attention_flash_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh);
void cuda_attention_flash_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                              int T, int H, int Dh);
// rope.cu
void cuda_rope_fwd(Backend *be, float *qkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh);
void cuda_rope_bwd(Backend *be, float *dqkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh);
// tokens.cu
void cuda_im2col(Backend *be, float *cols, const float *img, int B, int C, int Hi, int Wi, int p);
void cuda_tokens_fwd(Backend *be, float *x, const float *patch, const float *cls, const float *reg, const float *pos,
                     const float *mask_token, const uint8_t *mask, int B, int N, int R, int D);
void cuda_tokens_bwd(Backend *be, float *dpatch, float *dcls, float *dreg, float *dpos, float *dmask_token,
                     const float *dx, const uint8_t *mask, int B, int N, int R, int D);
void cuda_gather_rows(Backend *be, float *out, const float *in, const int *idx, int n, size_t len);
void cuda_residual_fwd(Backend *be, float *x, const float *br, const float *gamma, const int *idx, int n, int T,
                       int D, float scale);
void cuda_residual_bwd(Backend *be, float *dbr, float *dgamma, const float *dx, const float *br, const float *gamma,
                       const int *idx, int n, int T, int D, float scale);
void cuda_scatter_add_rows(Backend *be, float *x, const float *in, const int *idx, int n, size_t len);
void cuda_layernorm_residual_bwd(Backend *be, float *dx, float *dw, float *db, float *dbr, float *dgamma,
                                 const float *dout, const float *x_ln, const float *mean, const float *rstd,
                                 const float *w, const int *ln_idx, int ln_n, const float *br, const float *gamma,
                                 const int *idx, int n, float scale, int B, int T, int D);
void cuda_residual_layernorm_fwd(Backend *be, float *x_out, float *out, float *mean, float *rstd, float *xs,
                                 const float *x_in, const float *br, const float *gamma, const int *idx, int n,
                                 float scale, const float *w, const float *b, const int *ln_idx, int ln_n, int B, int T,
                                 int D, float eps);
// elementwise.cu
void cuda_axpy(Backend *be, float *y, float alpha, const float *x, size_t n);
void cuda_scale(Backend *be, float *x, float alpha, size_t n);
double cuda_sum_squares(Backend *be, const float *x, size_t n);
// head_ops.cu
void cuda_l2norm_fwd(Backend *be, float *out, float *norm, const float *x, int rows, int n, float eps);
void cuda_l2norm_bwd(Backend *be, float *dx, const float *dout, const float *x, const float *norm, int rows, int n,
                     float eps);
void cuda_weightnorm_fwd(Backend *be, float *W, float *vnorm, const float *g, const float *v, int K, int n);
void cuda_weightnorm_bwd(Backend *be, float *dg, float *dv, const float *dW, const float *g, const float *v,
                         const float *vnorm, int K, int n);
// loss_ops.cu
void cuda_softmax_center(Backend *be, float *P, const float *z, const float *center, int rows, int K, float temp);
void cuda_col_sum(Backend *be, float *sum, const float *z, int rows, int K);
void cuda_center_update(Backend *be, float *center, const float *sum, int K, float scale, float momentum);
void cuda_sinkhorn(Backend *be, Collective *coll, float *P, const float *z, int rows, int K, float temp, int n_iter,
                   float n_global);
void cuda_softmax_ce(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                     int t_rows, int K, float temp, float alpha);
void cuda_entropy_mean(Backend *be, float *out, const float *P, int rows, int K);
void cuda_koleo(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float alpha);
void cuda_kde(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float kappa, float alpha);
// gram_ops.cu
void cuda_gram_loss(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N, int D,
                    int normalize, int neg_mode, float alpha);
// optim_ops.cu
void cuda_adamw(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float wd, float beta1,
                float beta2, float eps, long step);
void cuda_ema(Backend *be, float *t, const float *s, size_t n, float momentum);
void cuda_sum_squares_ss(Backend *be, const float *x, size_t n, int group, DinoStepScalars *ss);
void cuda_update_prepare_ss(Backend *be, int groups, double max_norm, float beta1, float beta2, DinoStepScalars *ss);
void cuda_clip_scale_ss(Backend *be, float *x, size_t n, int group, const DinoStepScalars *ss);
void cuda_adamw_ss(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr_mult, float wd_mult,
                   int last_layer, float beta1, float beta2, float eps, const DinoStepScalars *ss);
void cuda_ema_ss(Backend *be, float *t, const float *s, size_t n, const DinoStepScalars *ss);
void cuda_softmax_ce_ss(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                        int t_rows, int K, float temp, float weight, float div, const DinoStepScalars *ss);
void cuda_gram_loss_ss(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N, int D,
                       int normalize, int neg_mode, float alpha, const DinoStepScalars *ss);
void cuda_softmax_center_ss(Backend *be, float *P, const float *z, const float *center, int rows, int K,
                            const DinoStepScalars *ss);
void cuda_nonfinite_check_ss(Backend *be, const float *x, size_t n, DinoStepScalars *ss);
void cuda_revert_if_nonfinite_ss(Backend *be, float *dst, const float *saved, size_t n, const DinoStepScalars *ss);

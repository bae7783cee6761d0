// GEMMs and linear layers on cuBLAS. Row-major throughout: a row-major C = op(A) op(B) is the
// column-major C^T = op(B)^T op(A)^T, so every call swaps the operands and M/N.
// Step 1 precision: fp32 data, bf16 tensor-core math with fp32 accumulation
// (CUBLAS_COMPUTE_32F_FAST_16BF); CUDA_GEMM_FP32 selects pedantic fp32 for tests.
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include <cuda_bf16.h>

#include "model/cuda/cuda_ops.cuh"

static cublasComputeType_t compute_type(Backend *be) {
    return cuda_impl(be)->gemm_precision == CUDA_GEMM_FP32 ? CUBLAS_COMPUTE_32F_PEDANTIC
                                                           : CUBLAS_COMPUTE_32F_FAST_16BF;
}

static size_t dtype_bytes(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : 4; }
// fp32 operands: the backend's precision (bf16 tensor cores unless CUDA_GEMM_FP32); bf16 operands (stored
// that way): plain fp32 accumulation
static cublasComputeType_t compute_for(Backend *be, cudaDataType_t ta) {
    return ta == CUDA_R_16BF ? CUBLAS_COMPUTE_32F : compute_type(be);
}

// Strided-batched over `batch` (1: a plain GEMM), operands of type ta / tb, output of type tc.
static void gemm_batched_typed(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const void *A,
                               cudaDataType_t ta, int lda, long long strideA, const void *B, cudaDataType_t tb, int ldb,
                               long long strideB, float beta, void *C, cudaDataType_t tc, int ldc, long long strideC,
                               int batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    cublasHandle_t h = cuda_impl(be)->cublas;
    cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N, opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        cublasCheck(cublasGemmEx(h, opB, opA, N, M, K, &alpha, B, tb, ldb, A, ta, lda, &beta, C, tc, ldc,
                                 compute_for(be, ta), CUBLAS_GEMM_DEFAULT));
    else
        cublasCheck(cublasGemmStridedBatchedEx(h, opB, opA, N, M, K, &alpha, B, tb, ldb, strideB, A, ta, lda, strideA,
                                               &beta, C, tc, ldc, strideC, batch, compute_for(be, ta),
                                               CUBLAS_GEMM_DEFAULT));
}

void cuda_gemm_batched(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A,
                       int lda, long long strideA, const float *B, int ldb, long long strideB, float beta, float *C,
                       int ldc, long long strideC, int batch) {
    gemm_batched_typed(be, transA, transB, M, N, K, alpha, A, CUDA_R_32F, lda, strideA, B, CUDA_R_32F, ldb, strideB,
                       beta, C, CUDA_R_32F, ldc, strideC, batch);
}

// Byte offsets: operands of any element size.
__global__ void grid_pointers_kernel(const char **A, const char **B, char **C, const char *A0, long long sAb,
                                     long long sAh, const char *B0, long long sBb, long long sBh, char *C0,
                                     long long sCb, long long sCh, int nb, int nh) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nb * nh) return;
    const long long b = i / nh, h = i % nh;
    A[i] = A0 + b * sAb + h * sAh;
    B[i] = B0 + b * sBb + h * sBh;
    C[i] = C0 + b * sCb + h * sCh;
}

void cuda_gemm_grid_typed(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const void *A,
                          cudaDataType_t ta, int lda, long long sA_b, long long sA_h, const void *B, cudaDataType_t tb,
                          int ldb, long long sB_b, long long sB_h, float beta, void *C, cudaDataType_t tc, int ldc,
                          long long sC_b, long long sC_h, int nb, int nh) {
    if (M <= 0 || N <= 0 || nb <= 0 || nh <= 0) return;
    CudaImpl *c = cuda_impl(be);
    const size_t ea = dtype_bytes(ta), eb = dtype_bytes(tb), ec = dtype_bytes(tc);
    if (c->gemm_grid_loop) { // one strided-batched call (over images) per head
        for (int h = 0; h < nh; h++)
            gemm_batched_typed(be, transA, transB, M, N, K, alpha, (const char *)A + h * sA_h * ea, ta, lda, sA_b,
                               (const char *)B + h * sB_h * eb, tb, ldb, sB_b, beta, (char *)C + h * sC_h * ec, tc, ldc,
                               sC_b, nb);
        return;
    }
    const size_t n = (size_t)nb * nh;
    if (3 * n > c->grid_ptrs_cap) {
        cuda_host_wait(be); // a GEMM may still read the old arrays
        cuda_replay_forget(c); // so do the cached execs
        if (c->grid_ptrs) cudaCheck(cudaFree(c->grid_ptrs));
        c->grid_ptrs_cap = 3 * n + 3 * n / 2;
        cudaCheck(cudaMalloc(&c->grid_ptrs, sizeof(void *) * c->grid_ptrs_cap));
        cuda_graph_resume(be);
    }
    const char **Ap = (const char **)c->grid_ptrs, **Bp = Ap + n;
    char **Cp = (char **)(Bp + n);
    DINO_LAUNCH(grid_pointers_kernel, ceil_div(n, 256), 256, 0, c->stream)(
        Ap, Bp, Cp, (const char *)A, sA_b * (long long)ea, sA_h * (long long)ea, (const char *)B, sB_b * (long long)eb,
        sB_h * (long long)eb, (char *)C, sC_b * (long long)ec, sC_h * (long long)ec, nb, nh);
    cudaCheckLaunch();
    cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N, opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    // row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: operands and M/N swapped
    cublasCheck(cublasGemmBatchedEx(c->cublas, opB, opA, N, M, K, &alpha, (const void *const *)Bp, tb, ldb,
                                    (const void *const *)Ap, ta, lda, &beta, (void *const *)Cp, tc, ldc,
                                    (int)n, compute_for(be, ta), CUBLAS_GEMM_DEFAULT));
}

void cuda_gemm_grid(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                    long long sA_b, long long sA_h, const float *B, int ldb, long long sB_b, long long sB_h, float beta,
                    float *C, int ldc, long long sC_b, long long sC_h, int nb, int nh) {
    cuda_gemm_grid_typed(be, transA, transB, M, N, K, alpha, A, CUDA_R_32F, lda, sA_b, sA_h, B, CUDA_R_32F, ldb, sB_b,
                         sB_h, beta, C, CUDA_R_32F, ldc, sC_b, sC_h, nb, nh);
}

void cuda_gemm(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    CUDA_OP_RANGE("gemm");
    cuda_gemm_batched(be, transA, transB, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

// ---- cuBLASLt: the linear layer's bias as the GEMM's epilogue --------------------------------------
// out = in W^T + b in one kernel: no broadcast pass, no read of the output. Each shape gets a plan on
// first use (descriptors, layouts and the heuristic's algorithm, kept, so every call of a shape runs the
// same algorithm: reproducible bits); a ViT has a handful of shapes. Column-major view as cuBLAS:
// out^T (n_out x rows) = op_T(W^T) (n_out x n_in) * in^T (n_in x rows), bias along out^T's rows.
// Any refusal (no algorithm, unaligned pointers, DINO_CUDA_LT=0) falls back to the cublasGemmEx path.

#define LT_MAX_PLANS 64
// The alignment (bytes) of every pointer a plan is used with: what lt_linear_bias checks. A plan is
// reused for any parameter and activation of its shape, and those are only 64-byte aligned
// (PARAM_ALIGN floats) or less (row offsets), so the heuristic must not pick an algorithm that assumes
// more: cuBLASLt's default minimum alignment of A/B/C/D is 256 bytes, and the bias's is taken from the
// BIAS_POINTER seen at planning (a real card may answer NOT_SUPPORTED or fault otherwise).
#define LT_ALIGN 16
struct LtPlan {
    int rows, n_in, n_out, prec;
    bool ok;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
};

void cuda_lt_init(CudaImpl *c, int force) {
    if (c->lt_workspace) { // created already
        c->lt_on = 1;
        return;
    }
    const char *env = getenv("DINO_CUDA_LT");
    c->lt_on = 0;
    if (!force && env && strcmp(env, "0") == 0) return;
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) return;
    c->lt_workspace_bytes = 32u << 20; // what NVIDIA recommends for Hopper
    cudaCheck(cudaMalloc(&c->lt_workspace, c->lt_workspace_bytes));
    c->lt_plans = (LtPlan *)calloc(LT_MAX_PLANS, sizeof(LtPlan));
    c->lt_on = 1;
}

void cuda_lt_destroy(CudaImpl *c) {
    if (!c->lt_workspace) return;
    for (int i = 0; i < c->n_lt_plans; i++) {
        LtPlan *p = &c->lt_plans[i];
        if (p->op) cublasLtMatmulDescDestroy(p->op);
        if (p->a) cublasLtMatrixLayoutDestroy(p->a);
        if (p->b) cublasLtMatrixLayoutDestroy(p->b);
        if (p->d) cublasLtMatrixLayoutDestroy(p->d);
    }
    free(c->lt_plans);
    cudaCheck(cudaFree(c->lt_workspace));
    cublasLtDestroy(c->lt);
    c->lt_on = 0;
}

static LtPlan *lt_plan(Backend *be, int rows, int n_in, int n_out) {
    CudaImpl *c = cuda_impl(be);
    const int prec = (int)c->gemm_precision;
    for (int i = 0; i < c->n_lt_plans; i++) {
        LtPlan *p = &c->lt_plans[i];
        if (p->rows == rows && p->n_in == n_in && p->n_out == n_out && p->prec == prec) return p;
    }
    if (c->n_lt_plans == LT_MAX_PLANS) return NULL; // more shapes than a ViT has: the plain path
    LtPlan *p = &c->lt_plans[c->n_lt_plans++];
    memset(p, 0, sizeof *p);
    p->rows = rows, p->n_in = n_in, p->n_out = n_out, p->prec = prec;
    const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = CUDA_R_32F;
    // no in-place split-K reduction (it accumulates through the output with atomics: not reproducible)
    const uint32_t reductions = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |
                                CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    // a stand-in for the bias while planning, aligned exactly LT_ALIGN bytes (the workspace is 256-aligned)
    const void *ws_ptr = (const char *)c->lt_workspace + LT_ALIGN;
    const uint32_t align = LT_ALIGN;
    bool ok = cublasLtMatmulDescCreate(&p->op, compute_type(be), CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type) ==
                  CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ws_ptr, sizeof ws_ptr) ==
                  CUBLAS_STATUS_SUCCESS &&
              cublasLtMatrixLayoutCreate(&p->a, CUDA_R_32F, n_in, n_out, n_in) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatrixLayoutCreate(&p->b, CUDA_R_32F, n_in, rows, n_in) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatrixLayoutCreate(&p->d, CUDA_R_32F, n_out, rows, n_out) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &c->lt_workspace_bytes,
                                                   sizeof c->lt_workspace_bytes) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reductions,
                                                   sizeof reductions) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align,
                                                   sizeof align) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align,
                                                   sizeof align) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align,
                                                   sizeof align) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align,
                                                   sizeof align) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->d, p->d, pref, 1, &heur, &found) ==
                  CUBLAS_STATUS_SUCCESS &&
              found > 0 && heur.state == CUBLAS_STATUS_SUCCESS;
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ok) p->algo = heur.algo;
    p->ok = ok;
    return p;
}

extern "C" int backend_cuda_set_lt(Backend *be, int on) {
    CudaImpl *c = cuda_impl(be);
    cuda_host_wait(be); // cuda_lt_init may allocate; the deferred ops run with the old setting
    cuda_replay_forget(c); // and no cached exec with it is replayed
    if (on) cuda_lt_init(c, 1);
    else c->lt_on = 0;
    cuda_graph_resume(be);
    return c->lt_on;
}

extern "C" int backend_cuda_lt_shapes(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    int n = 0;
    for (int i = 0; i < c->n_lt_plans; i++) n += c->lt_plans[i].ok;
    return n;
}

static bool lt_aligned(const void *p) { return ((uintptr_t)p % LT_ALIGN) == 0; }

// out = in W^T + b through cuBLASLt; false when this shape or these pointers take the plain path.
static bool lt_linear_bias(Backend *be, float *out, const float *in, const float *W, const float *b, int rows,
                           int n_in, int n_out) {
    CudaImpl *c = cuda_impl(be);
    if (!c->lt_on || rows <= 0 || !lt_aligned(out) || !lt_aligned(in) || !lt_aligned(W) || !lt_aligned(b) ||
        n_in % (LT_ALIGN / 4) || n_out % (LT_ALIGN / 4)) // rows start LT_ALIGN-aligned too
        return false;
    LtPlan *p = lt_plan(be, rows, n_in, n_out);
    if (!p || !p->ok) return false;
    const float alpha = 1.0f, beta = 0.0f;
    cublasCheck(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b));
    cublasCheck(cublasLtMatmul(c->lt, p->op, &alpha, W, p->a, in, p->b, &beta, out, p->d, out, p->d, &p->algo,
                               c->lt_workspace, c->lt_workspace_bytes, c->stream));
    return true;
}

// out[r, j] = b[j]: the GEMM then adds in W^T with beta = 1 (the path when cuBLASLt declines).
__global__ void broadcast_rows_kernel(float *out, const float *b, size_t rows, int n) {
    size_t total = rows * (size_t)n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        out[i] = b[i % n];
}

// ---- bf16 activations (docs/cuda-backend.md, "Activation dtypes") ----------------------------------
// When an activation argument is a bf16 buffer, every GEMM operand goes in as bf16 (the fp32 ones
// converted into scratch first: what CUBLAS_COMPUTE_32F_FAST_16BF does to them inside cuBLAS, so the same
// values; a weight in a registered parameter buffer is read from its bf16 copy instead, weight_copy.cu,
// the same values again) with fp32 accumulation (CUBLAS_COMPUTE_32F), and a bf16 output is rounded once
// at the store. All-fp32 arguments take the fp32 path below it, unchanged: cuBLAS converts W as it loads
// it (the copy would need the fp32 activation converted into scratch, more traffic than it saves).

__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}

void cuda_to_bf16(Backend *be, __nv_bfloat16 *dst, const float *src, size_t n) {
    if (!n) return;
    DINO_LAUNCH(to_bf16_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(dst, src, n);
    cudaCheckLaunch();
}

// out[r, j] = bf16(acc[r, j] + b[j])
__global__ void bias_to_act_kernel(ActRef out, const float *acc, const float *b, size_t rows, int n) {
    size_t total = rows * (size_t)n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        act_st(out, i, acc[i] + b[i % n]);
}

// The fused epilogue of linear_gelu_fwd (docs/cuda-backend.md, "Fused epilogues"): one pass over the
// GEMM's fp32 accumulator writes pre = bf16(acc + b) and act = GELU(pre as stored), the same roundings
// as bias_to_act_kernel followed by gelu_fwd_kernel.
__global__ void bias_gelu_kernel(ActRef pre, ActRef act, const float *acc, const float *b, size_t rows, int n) {
    size_t total = rows * (size_t)n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const float v = act_round(pre, acc[i] + b[i % n]);
        act_st(pre, i, v);
        act_st(act, i, gelu_erf(v));
    }
}

// The same for linear_swiglu_fwd: acc[rows, 2 Hd] = [a | g] per row; one thread per act element rounds and
// stores its a and g into pre and writes act = swiglu(a, g) of the stored values (as swiglu_fwd_kernel).
__global__ void bias_swiglu_kernel(ActRef pre, ActRef act, const float *acc, const float *b, size_t rows, int Hd) {
    size_t total = rows * (size_t)Hd;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / Hd, j = i % Hd, ia = r * 2 * Hd + j, ig = ia + Hd;
        const float a = act_round(pre, acc[ia] + b[j]), g = act_round(pre, acc[ig] + b[Hd + j]);
        act_st(pre, ia, a);
        act_st(pre, ig, g);
        act_st(act, i, swiglu_val(a, g));
    }
}

// Carves bf16 copies of fp32 operands (and an fp32 accumulator) out of one scratch request.
struct ScratchCarver {
    char *base;
    size_t off;
    void *take(size_t bytes) {
        void *p = base + off;
        off += (bytes + 255) / 256 * 256;
        return p;
    }
};
static size_t carve_size(size_t bytes) { return (bytes + 255) / 256 * 256; }
// The operand as bf16: itself, or a bf16 copy of its n fp32 elements in scratch.
static const void *as_bf16(Backend *be, ActRef a, size_t n, ScratchCarver *sc) {
    if (a.bf16) return a.p;
    __nv_bfloat16 *d = (__nv_bfloat16 *)sc->take(2 * n);
    cuda_to_bf16(be, d, (const float *)a.p, n);
    return d;
}

// The activation a fused epilogue also writes (linear_gelu_fwd, linear_swiglu_fwd; only with a bias).
enum Epilogue { EPI_NONE, EPI_GELU, EPI_SWIGLU };
static void linear_fwd_bf16(Backend *be, ActRef out, ActRef in, const float *W, const float *b, int rows, int n_in,
                            int n_out, Epilogue epi = EPI_NONE, ActRef act = ActRef{NULL, false}) {
    const size_t nx = (size_t)rows * n_in, nw = (size_t)n_out * n_in, ny = (size_t)rows * n_out;
    const bool acc_fp32 = b && out.bf16; // the bias added in fp32 before the one rounding
    const void *wc = cuda_weight_bf16(be, W, nw); // the parameters' bf16 copy, or NULL: convert W here
    ScratchCarver sc{(char *)cuda_scratch(be, (in.bf16 ? 0 : carve_size(2 * nx)) + (wc ? 0 : carve_size(2 * nw)) +
                                                  (acc_fp32 ? carve_size(4 * ny) : 0)), 0};
    const void *x16 = as_bf16(be, in, nx, &sc), *w16 = wc ? wc : as_bf16(be, ActRef{(void *)W, false}, nw, &sc);
    if (acc_fp32) {
        float *acc = (float *)sc.take(4 * ny);
        gemm_batched_typed(be, 0, 1, rows, n_out, n_in, 1.0f, x16, CUDA_R_16BF, n_in, 0, w16, CUDA_R_16BF, n_in, 0,
                           0.0f, acc, CUDA_R_32F, n_out, 0, 1);
        if (epi == EPI_GELU)
            DINO_LAUNCH(bias_gelu_kernel, grid_1d(ny, 256), 256, 0, cuda_stream(be))(out, act, acc, b, (size_t)rows,
                                                                                     n_out);
        else if (epi == EPI_SWIGLU)
            DINO_LAUNCH(bias_swiglu_kernel, grid_1d(ny / 2, 256), 256, 0, cuda_stream(be))(out, act, acc, b,
                                                                                           (size_t)rows, n_out / 2);
        else
            DINO_LAUNCH(bias_to_act_kernel, grid_1d(ny, 256), 256, 0, cuda_stream(be))(out, acc, b, (size_t)rows, n_out);
        cudaCheckLaunch();
        return;
    }
    if (b) { // fp32 output: the bias first, then the GEMM adds with beta = 1
        DINO_LAUNCH(broadcast_rows_kernel, grid_1d(ny, 256), 256, 0, cuda_stream(be))((float *)out.p, b, (size_t)rows,
                                                                                      n_out);
        cudaCheckLaunch();
    }
    gemm_batched_typed(be, 0, 1, rows, n_out, n_in, 1.0f, x16, CUDA_R_16BF, n_in, 0, w16, CUDA_R_16BF, n_in, 0,
                       b ? 1.0f : 0.0f, out.p, act_cuda_type(out), n_out, 0, 1);
}

void cuda_linear_fwd(Backend *be, float *out, const float *in, const float *W, const float *b, int rows, int n_in,
                     int n_out) {
    CUDA_OP_RANGE("linear_fwd");
    cuda_graph_tick(be);
    const ActRef o = cuda_act(be, out), x = cuda_act(be, in);
    if (o.bf16 || x.bf16) {
        linear_fwd_bf16(be, o, x, W, b, rows, n_in, n_out);
        return;
    }
    if (b && lt_linear_bias(be, out, in, W, b, rows, n_in, n_out)) return;
    if (b) {
        size_t n = (size_t)rows * n_out;
        DINO_LAUNCH(broadcast_rows_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(out, b, (size_t)rows, n_out);
        cudaCheckLaunch();
    }
    cuda_gemm_batched(be, 0, 1, rows, n_out, n_in, 1.0f, in, n_in, 0, W, n_in, 0, b ? 1.0f : 0.0f, out, n_out, 0, 1);
}

// fc1 + GELU. Fused where it saves a pass: a bf16 pre with a bias, whose unfused path is the GEMM into an
// fp32 accumulator, a bias kernel and a GELU kernel (three passes: here two, the GEMM and one epilogue).
// Elsewhere the unfused sequence, which is two passes already: with no bias the GEMM stores pre itself,
// and an fp32 pre gets its bias in cuBLASLt's epilogue (or from the broadcast before the GEMM).
void cuda_linear_gelu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b, int rows,
                          int n_in, int n_out) {
    const ActRef p = cuda_act(be, pre), a = cuda_act(be, act), x = cuda_act(be, in);
    if (cuda_impl(be)->fuse_epilogues && p.bf16 && b) {
        CUDA_OP_RANGE("linear_gelu_fwd");
        cuda_graph_tick(be);
        if ((size_t)rows * n_out == 0) return;
        linear_fwd_bf16(be, p, x, W, b, rows, n_in, n_out, EPI_GELU, a);
        return;
    }
    cuda_linear_fwd(be, pre, in, W, b, rows, n_in, n_out);
    cuda_gelu_fwd(be, act, pre, (size_t)rows * n_out);
}

// w12 + SwiGLU: fused in the same cases as linear_gelu_fwd.
void cuda_linear_swiglu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                            int rows, int n_in, int Hd) {
    const ActRef p = cuda_act(be, pre), a = cuda_act(be, act), x = cuda_act(be, in);
    if (cuda_impl(be)->fuse_epilogues && p.bf16 && b) {
        CUDA_OP_RANGE("linear_swiglu_fwd");
        cuda_graph_tick(be);
        if ((size_t)rows * Hd == 0) return;
        linear_fwd_bf16(be, p, x, W, b, rows, n_in, 2 * Hd, EPI_SWIGLU, a);
        return;
    }
    cuda_linear_fwd(be, pre, in, W, b, rows, n_in, 2 * Hd);
    cuda_swiglu_fwd(be, act, pre, rows, Hd);
}

struct ReadMatrix {
    ActRef a;
    int ld;
    __device__ float operator()(int r, int c) const { return act_ld(a, (size_t)r * ld + c); }
};

void cuda_linear_bwd(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in,
                     const float *W, int rows, int n_in, int n_out) {
    CUDA_OP_RANGE("linear_bwd");
    cuda_graph_tick(be);
    const ActRef di = cuda_act(be, din), dy = cuda_act(be, dout), x = cuda_act(be, in);
    // db += column sums of dout (first: it uses the scratch, which the bf16 path carves below)
    if (db) colsum_add(be, db, rows, n_out, 1.0f, ReadMatrix{dy, n_out});
    if (di.bf16 || dy.bf16 || x.bf16) { // din = dout W ; dW += dout^T in, bf16 operands
        const size_t nx = (size_t)rows * n_in, nw = (size_t)n_out * n_in, ny = (size_t)rows * n_out;
        const void *wc = din ? cuda_weight_bf16(be, W, nw) : NULL; // the parameters' bf16 copy, or convert W
        ScratchCarver sc{(char *)cuda_scratch(be, (din && !wc ? carve_size(2 * nw) : 0) +
                                                      (dy.bf16 ? 0 : carve_size(2 * ny)) + (x.bf16 ? 0 : carve_size(2 * nx))),
                         0};
        const void *dy16 = as_bf16(be, dy, ny, &sc), *x16 = as_bf16(be, x, nx, &sc);
        if (din) {
            const void *w16 = wc ? wc : as_bf16(be, ActRef{(void *)W, false}, nw, &sc);
            gemm_batched_typed(be, 0, 0, rows, n_in, n_out, 1.0f, dy16, CUDA_R_16BF, n_out, 0, w16, CUDA_R_16BF, n_in, 0,
                               0.0f, di.p, act_cuda_type(di), n_in, 0, 1);
        }
        gemm_batched_typed(be, 1, 0, n_out, n_in, rows, 1.0f, dy16, CUDA_R_16BF, n_out, 0, x16, CUDA_R_16BF, n_in, 0,
                           1.0f, dW, CUDA_R_32F, n_in, 0, 1);
        return;
    }
    if (din) cuda_gemm_batched(be, 0, 0, rows, n_in, n_out, 1.0f, dout, n_out, 0, W, n_in, 0, 0.0f, din, n_in, 0, 1);
    cuda_gemm_batched(be, 1, 0, n_out, n_in, rows, 1.0f, dout, n_out, 0, in, n_in, 0, 1.0f, dW, n_in, 0, 1);
}

// ---- the MFU denominator: the card's dense bf16 rate ------------------------------------------------

__global__ void fill_bf16_kernel(__nv_bfloat16 *x, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        x[i] = __float2bfloat16(((float)(h & 0xffff) / 65536.0f - 0.5f) * 0.1f);
    }
}

extern "C" double backend_cuda_measure_bf16_tflops(Backend *be, int n, int iters) {
    CudaImpl *c = cuda_impl(be);
    cuda_graph_pause(be); // timed eagerly
    size_t nn = (size_t)n * n;
    __nv_bfloat16 *A, *B, *C;
    if (cudaMalloc(&A, nn * 2) != cudaSuccess || cudaMalloc(&B, nn * 2) != cudaSuccess ||
        cudaMalloc(&C, nn * 2) != cudaSuccess) {
        cudaGetLastError();
        cuda_graph_resume(be);
        return -1;
    }
    DINO_LAUNCH(fill_bf16_kernel, grid_1d(nn, 256), 256, 0, c->stream)(A, nn, 1u);
    DINO_LAUNCH(fill_bf16_kernel, grid_1d(nn, 256), 256, 0, c->stream)(B, nn, 2u);
    cudaCheckLaunch();
    const float alpha = 1.0f, beta = 0.0f;
    cudaEvent_t t0, t1;
    cudaCheck(cudaEventCreate(&t0));
    cudaCheck(cudaEventCreate(&t1));
    std::vector<float> ms;
    for (int it = -3; it < iters; it++) { // 3 warm-up runs
        cudaCheck(cudaEventRecord(t0, c->stream));
        cublasCheck(cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, A, CUDA_R_16BF, n, B,
                                 CUDA_R_16BF, n, &beta, C, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        cudaCheck(cudaEventRecord(t1, c->stream));
        cudaCheck(cudaEventSynchronize(t1));
        float t = 0;
        cudaCheck(cudaEventElapsedTime(&t, t0, t1));
        if (it >= 0) ms.push_back(t);
    }
    cudaCheck(cudaEventDestroy(t0));
    cudaCheck(cudaEventDestroy(t1));
    cudaCheck(cudaFree(A));
    cudaCheck(cudaFree(B));
    cudaCheck(cudaFree(C));
    cuda_graph_resume(be);
    if (ms.empty()) return -1;
    std::sort(ms.begin(), ms.end());
    double med = ms[ms.size() / 2];
    return 2.0 * (double)n * n * n / (med * 1e-3) / 1e12;
}

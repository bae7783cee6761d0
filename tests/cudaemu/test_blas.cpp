// Self-test of the cuBLAS / cuBLASLt stand-in (tests/cudaemu/cublas.cpp) on the layer's runtime: the
// reference GEMM against a double-precision loop, the statuses real cuBLAS documents, the batched forms
// against the per-batch loop, the Lt bias epilogue, the alignment an Lt algorithm is chosen for, and the
// findings (operands outside device memory, outputs that overlap) in a child process each.
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "emu.h"
#include "tests/harness.h"

// ---- helpers --------------------------------------------------------------------------------------

static uint64_t rng_state = 42;
static float frand(void) { // uniform in [-1, 1)
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}
static std::vector<float> randv(size_t n) {
    std::vector<float> v(n);
    for (float &x : v) x = frand();
    return v;
}

template <typename T> static T *upload(const std::vector<T> &h) {
    T *d = nullptr;
    CHECK(cudaMalloc(&d, h.size() * sizeof(T)) == cudaSuccess, "cudaMalloc");
    CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess, "cudaMemcpy");
    return d;
}
template <typename T> static std::vector<T> download(const T *d, size_t n) {
    std::vector<T> h(n);
    CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess, "cudaMemcpy");
    return h;
}

static float ident(float x) { return x; }

// C = alpha op(A) op(B) + beta C in double (inputs passed through `in` first); also the scale
// alpha sum |a b| + |beta c| of each element, for a relative tolerance that survives cancellation.
static void ref_gemm(bool ta, bool tb, int m, int n, int k, double alpha, const std::vector<float> &A, int lda,
                     const std::vector<float> &B, int ldb, double beta, const std::vector<float> &C, int ldc,
                     float (*in)(float), std::vector<double> &out, std::vector<double> &scale) {
    out.assign((size_t)ldc * n, 0);
    scale.assign((size_t)ldc * n, 0);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0, sa = 0;
            for (int p = 0; p < k; p++) {
                double a = in(ta ? A[p + (size_t)i * lda] : A[i + (size_t)p * lda]);
                double b = in(tb ? B[j + (size_t)p * ldb] : B[p + (size_t)j * ldb]);
                s += a * b;
                sa += fabs(a * b);
            }
            const double c = beta != 0 ? C[i + (size_t)j * ldc] : 0;
            out[i + (size_t)j * ldc] = alpha * s + beta * c;
            scale[i + (size_t)j * ldc] = fabs(alpha) * sa + fabs(beta * c);
        }
}

struct Ctx {
    cudaStream_t s;
    cublasHandle_t h;
};
static Ctx ctx_new(void) {
    Ctx c;
    CHECK(cudaStreamCreate(&c.s) == cudaSuccess, "cudaStreamCreate");
    CHECK(cublasCreate(&c.h) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
    CHECK(cublasSetStream(c.h, c.s) == CUBLAS_STATUS_SUCCESS, "cublasSetStream");
    CHECK(cublasSetPointerMode(c.h, CUBLAS_POINTER_MODE_HOST) == CUBLAS_STATUS_SUCCESS, "cublasSetPointerMode");
    return c;
}
static void ctx_free(Ctx &c) {
    CHECK(cudaStreamSynchronize(c.s) == cudaSuccess, "cudaStreamSynchronize");
    CHECK(cublasDestroy(c.h) == CUBLAS_STATUS_SUCCESS, "cublasDestroy");
    CHECK(cudaStreamDestroy(c.s) == cudaSuccess, "cudaStreamDestroy");
}

// Runs fn in a child process; true when it ends as a finding (exit status 3) whose stderr contains `expect`.
static void run_and_drain(void *fn) {
    ((void (*)(void))fn)();
    cudaDeviceSynchronize(); // run what fn queued
}
static bool finding(void (*fn)(void), const char *expect) {
    static char err[16384];
    const int st = test_run_child(run_and_drain, (void *)fn, err, sizeof err);
    const bool ok = st == 3 && strstr(err, expect);
    if (!ok) fprintf(stderr, "child (exit status %d) said: %s\n", st, err);
    else printf("  finding as expected: %s", err);
    return ok;
}

// ---- (a) GemmEx against double precision, every transpose, padded leading dimensions ------------------

static float bf16r(float x) { return cudaemu::bf16_round(x); }

static void gemm_vs_reference(cublasComputeType_t ct, float (*in)(float), double rtol) {
    Ctx c = ctx_new();
    const int m = 37, n = 29, k = 70;
    for (int t = 0; t < 4; t++) {
        const bool ta = t & 1, tb = t & 2;
        const int lda = (ta ? k : m) + 3, ldb = (tb ? n : k) + 5, ldc = m + 2;
        std::vector<float> A = randv((size_t)lda * (ta ? m : k)), B = randv((size_t)ldb * (tb ? k : n));
        float *dA = upload(A), *dB = upload(B), *dC = nullptr;
        CHECK(cudaMalloc(&dC, sizeof(float) * ldc * n) == cudaSuccess, "cudaMalloc"); // NaN bytes: beta 0 ignores
        const cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
        // beta = 0 on the uninitialized C, then beta = 0.5 on that result
        std::vector<float> C(ldc * (size_t)n, NAN);
        const float alphas[2] = {0.75f, -1.25f}, betas[2] = {0.0f, 0.5f};
        for (int pass = 0; pass < 2; pass++) {
            CHECK(cublasGemmEx(c.h, oa, ob, m, n, k, &alphas[pass], dA, CUDA_R_32F, lda, dB, CUDA_R_32F, ldb,
                               &betas[pass], dC, CUDA_R_32F, ldc, ct, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
                  "cublasGemmEx");
            CHECK(cudaStreamSynchronize(c.s) == cudaSuccess, "sync");
            std::vector<double> ref, scale;
            ref_gemm(ta, tb, m, n, k, alphas[pass], A, lda, B, ldb, betas[pass], C, ldc, in, ref, scale);
            std::vector<float> got = download(dC, (size_t)ldc * n);
            int bad = 0;
            for (int j = 0; j < n; j++)
                for (int i = 0; i < ldc; i++) {
                    const size_t x = i + (size_t)j * ldc;
                    if (i >= m) { // the padding rows between columns are not written
                        bad += !isnan(got[x]) && pass == 0;
                        continue;
                    }
                    const double err = fabs(got[x] - ref[x]);
                    if (!(err <= rtol * scale[x]) && bad++ < 3)
                        CHECK(0, "trans %d%d pass %d C(%d,%d) = %.9g, reference %.9g (scale %.3g)", ta, tb, pass, i,
                              j, got[x], ref[x], scale[x]);
                }
            CHECK(bad == 0, "trans %d%d pass %d: %d elements wrong", ta, tb, pass, bad);
            C = got;
        }
        cudaFree(dA);
        cudaFree(dB);
        cudaFree(dC);
    }
    ctx_free(c);
}

TEST(gemm_pedantic_matches_double) { gemm_vs_reference(CUBLAS_COMPUTE_32F_PEDANTIC, ident, 1e-5); }
// bf16 products are exact in fp32: only the fp32 accumulation differs from the bf16-input reference
TEST(gemm_fast_16bf_matches_bf16_inputs) { gemm_vs_reference(CUBLAS_COMPUTE_32F_FAST_16BF, bf16r, 1e-5); }

// bf16 storage with COMPUTE_32F gives the bits of fp32 storage of the same values under FAST_16BF; a bf16
// output is the fp32 output rounded to nearest even.
TEST(gemm_bf16_storage) {
    Ctx c = ctx_new();
    const int m = 20, n = 12, k = 33;
    std::vector<float> A = randv((size_t)m * k), B = randv((size_t)k * n);
    std::vector<uint16_t> A16(A.size()), B16(B.size());
    for (size_t i = 0; i < A.size(); i++) {
        A[i] = cudaemu::bf16_round(A[i]);
        uint32_t u;
        memcpy(&u, &A[i], 4);
        A16[i] = (uint16_t)(u >> 16);
    }
    for (size_t i = 0; i < B.size(); i++) {
        B[i] = cudaemu::bf16_round(B[i]);
        uint32_t u;
        memcpy(&u, &B[i], 4);
        B16[i] = (uint16_t)(u >> 16);
    }
    float *dA = upload(A), *dB = upload(B), *dC32 = nullptr, *dC = nullptr;
    uint16_t *dA16 = upload(A16), *dB16 = upload(B16), *dC16 = nullptr;
    cudaMalloc(&dC32, sizeof(float) * m * n);
    cudaMalloc(&dC, sizeof(float) * m * n);
    cudaMalloc(&dC16, sizeof(uint16_t) * m * n);
    const float one = 1, zero = 0;
    CHECK(cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, CUDA_R_32F, m, dB, CUDA_R_32F, k, &zero, dC32,
                       CUDA_R_32F, m, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
          "32F");
    CHECK(cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA16, CUDA_R_16BF, m, dB16, CUDA_R_16BF, k, &zero,
                       dC, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
          "16BF->32F");
    CHECK(cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA16, CUDA_R_16BF, m, dB16, CUDA_R_16BF, k, &zero,
                       dC16, CUDA_R_16BF, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
          "16BF->16BF");
    cudaStreamSynchronize(c.s);
    std::vector<float> r32 = download(dC32, (size_t)m * n), r = download(dC, (size_t)m * n);
    std::vector<uint16_t> r16 = download(dC16, (size_t)m * n);
    CHECK(memcmp(r32.data(), r.data(), r.size() * 4) == 0, "bf16 storage differs from fp32 storage under FAST_16BF");
    int bad = 0;
    for (size_t i = 0; i < r.size(); i++) {
        float x = cudaemu::bf16_round(r[i]);
        uint32_t u;
        memcpy(&u, &x, 4);
        bad += (uint16_t)(u >> 16) != r16[i];
    }
    CHECK(bad == 0, "%d bf16 outputs are not the rounded fp32 outputs", bad);
    cudaFree(dA), cudaFree(dB), cudaFree(dC32), cudaFree(dC), cudaFree(dA16), cudaFree(dB16), cudaFree(dC16);
    ctx_free(c);
}

// ---- (b), (c) statuses --------------------------------------------------------------------------------

TEST(gemm_argument_statuses) {
    Ctx c = ctx_new();
    float *d = nullptr;
    cudaMalloc(&d, sizeof(float) * 4096);
    const float one = 1, zero = 0;
#define GEMM(h, oa, ob, m, n, k, lda, ldb, ldc)                                                                \
    cublasGemmEx(h, oa, ob, m, n, k, &one, d, CUDA_R_32F, lda, d + 1024, CUDA_R_32F, ldb, &zero, d + 2048,       \
                 CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
    const cublasOperation_t N = CUBLAS_OP_N, T = CUBLAS_OP_T;
    CHECK(GEMM(c.h, N, N, 8, 8, 8, 8, 8, 8) == CUBLAS_STATUS_SUCCESS, "a valid call");
    CHECK(GEMM(c.h, N, N, 8, 8, 8, 7, 8, 8) == CUBLAS_STATUS_INVALID_VALUE, "lda < m");
    CHECK(GEMM(c.h, T, N, 8, 8, 6, 5, 8, 8) == CUBLAS_STATUS_INVALID_VALUE, "lda < k (A transposed)");
    CHECK(GEMM(c.h, T, N, 8, 8, 6, 6, 6, 8) == CUBLAS_STATUS_SUCCESS, "lda = k (A transposed)");
    CHECK(GEMM(c.h, N, N, 8, 8, 6, 8, 5, 8) == CUBLAS_STATUS_INVALID_VALUE, "ldb < k");
    CHECK(GEMM(c.h, N, T, 8, 9, 6, 8, 8, 8) == CUBLAS_STATUS_INVALID_VALUE, "ldb < n (B transposed)");
    CHECK(GEMM(c.h, N, N, 8, 8, 8, 8, 8, 7) == CUBLAS_STATUS_INVALID_VALUE, "ldc < m");
    CHECK(GEMM(c.h, N, N, 0, 8, 8, 0, 8, 1) == CUBLAS_STATUS_INVALID_VALUE, "lda 0 with m 0 (must be >= 1)");
    CHECK(GEMM(c.h, N, N, 0, 8, 8, 1, 8, 1) == CUBLAS_STATUS_SUCCESS, "m 0: a no-op");
    CHECK(GEMM(c.h, N, N, -1, 8, 8, 8, 8, 8) == CUBLAS_STATUS_INVALID_VALUE, "m < 0");
    CHECK(GEMM(c.h, N, N, 8, -1, 8, 8, 8, 8) == CUBLAS_STATUS_INVALID_VALUE, "n < 0");
    CHECK(GEMM(c.h, N, N, 8, 8, -1, 8, 8, 8) == CUBLAS_STATUS_INVALID_VALUE, "k < 0");
    CHECK(GEMM(c.h, (cublasOperation_t)7, N, 8, 8, 8, 8, 8, 8) == CUBLAS_STATUS_INVALID_VALUE, "a bad transa");
    CHECK(GEMM((cublasHandle_t)NULL, N, N, 8, 8, 8, 8, 8, 8) == CUBLAS_STATUS_NOT_INITIALIZED, "a NULL handle");
#undef GEMM
    CHECK(cublasGemmStridedBatchedEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, CUDA_R_32F, 8, 64, d + 1024,
                                     CUDA_R_32F, 8, 64, &zero, d + 2048, CUDA_R_32F, 8, 64, -1, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE,
          "batchCount < 0");
    // device pointer mode is not modelled: refused
    CHECK(cublasSetPointerMode(c.h, CUBLAS_POINTER_MODE_DEVICE) == CUBLAS_STATUS_SUCCESS, "set device mode");
    CHECK(cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, CUDA_R_32F, 8, d, CUDA_R_32F, 8, &zero,
                       d + 2048, CUDA_R_32F, 8, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED,
          "device pointer mode");
    CHECK(cublasSetPointerMode(c.h, CUBLAS_POINTER_MODE_HOST) == CUBLAS_STATUS_SUCCESS, "set host mode");
    cudaStreamSynchronize(c.s);
    cudaFree(d);
    ctx_free(c);
}

TEST(gemm_type_combinations) {
    Ctx c = ctx_new();
    float *d = nullptr;
    cudaMalloc(&d, sizeof(float) * 4096);
    const float one = 1, zero = 0;
    struct {
        cublasComputeType_t ct;
        cudaDataType_t a, b, c;
        cublasStatus_t want;
    } cases[] = {
        {CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUBLAS_STATUS_SUCCESS},
        {CUBLAS_COMPUTE_32F_PEDANTIC, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUBLAS_STATUS_SUCCESS},
        {CUBLAS_COMPUTE_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_STATUS_SUCCESS},
        {CUBLAS_COMPUTE_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_32F, CUBLAS_STATUS_SUCCESS},
        {CUBLAS_COMPUTE_32F, CUDA_R_16F, CUDA_R_16F, CUDA_R_16F, CUBLAS_STATUS_SUCCESS},
        {CUBLAS_COMPUTE_32F, CUDA_R_16F, CUDA_R_16F, CUDA_R_32F, CUBLAS_STATUS_SUCCESS},
        {CUBLAS_COMPUTE_32F_FAST_16BF, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUBLAS_STATUS_SUCCESS},
        {CUBLAS_COMPUTE_32F_FAST_16F, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUBLAS_STATUS_SUCCESS},
        {CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUBLAS_STATUS_SUCCESS},
        {CUBLAS_COMPUTE_32F_FAST_16BF, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_32F, CUBLAS_STATUS_NOT_SUPPORTED},
        {CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_32F, CUBLAS_STATUS_NOT_SUPPORTED},
        {CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F, CUDA_R_16BF, CUBLAS_STATUS_NOT_SUPPORTED},
        {CUBLAS_COMPUTE_32F_PEDANTIC, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16F, CUBLAS_STATUS_NOT_SUPPORTED},
        {CUBLAS_COMPUTE_64F, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUBLAS_STATUS_NOT_SUPPORTED},
    };
    for (auto &t : cases) {
        cublasStatus_t s = cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, t.a, 8, d + 1024, t.b, 8,
                                        &zero, d + 2048, t.c, 8, t.ct, CUBLAS_GEMM_DEFAULT);
        CHECK(s == t.want, "compute %d types %d/%d/%d: %s, expected %s", (int)t.ct, (int)t.a, (int)t.b, (int)t.c,
              cublasGetStatusName(s), cublasGetStatusName(t.want));
    }
    cudaStreamSynchronize(c.s);
    cudaFree(d);
    ctx_free(c);
}

// ---- (d) batched forms equal the per-batch loop bit for bit ---------------------------------------------

TEST(batched_equal_loop) {
    Ctx c = ctx_new();
    const int m = 19, n = 23, k = 41, batch = 5, lda = k + 1, ldb = k + 2, ldc = m + 3; // A^T, B as stored
    const long long sA = (long long)lda * m + 7, sB = (long long)ldb * n + 3, sC = (long long)ldc * n + 5;
    std::vector<float> A = randv((size_t)sA * batch), B = randv((size_t)sB * batch);
    float *dA = upload(A), *dB = upload(B), *dC1 = nullptr, *dC2 = nullptr, *dC3 = nullptr;
    const size_t nc = (size_t)sC * batch;
    cudaMalloc(&dC1, nc * 4), cudaMalloc(&dC2, nc * 4), cudaMalloc(&dC3, nc * 4);
    std::vector<float> C0 = randv(nc);
    for (float *d : {dC1, dC2, dC3}) cudaMemcpy(d, C0.data(), nc * 4, cudaMemcpyHostToDevice);
    const float alpha = 0.5f, beta = -1.5f;
    for (int b = 0; b < batch; b++)
        CHECK(cublasGemmEx(c.h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA + b * sA, CUDA_R_32F, lda, dB + b * sB,
                           CUDA_R_32F, ldb, &beta, dC1 + b * sC, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_16BF,
                           CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS, "loop");
    CHECK(cublasGemmStridedBatchedEx(c.h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA, CUDA_R_32F, lda, sA, dB,
                                     CUDA_R_32F, ldb, sB, &beta, dC2, CUDA_R_32F, ldc, sC, batch,
                                     CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
          "strided batched");
    // pointer arrays written on the stream just before the call (as a kernel would): read when it runs
    std::vector<const void *> ptrs(3 * batch);
    for (int b = 0; b < batch; b++) {
        ptrs[b] = dA + b * sA;
        ptrs[batch + b] = dB + b * sB;
        ptrs[2 * batch + b] = dC3 + b * sC;
    }
    void **dp = nullptr;
    cudaMalloc(&dp, sizeof(void *) * 3 * batch);
    CHECK(cudaMemcpyAsync(dp, ptrs.data(), sizeof(void *) * 3 * batch, cudaMemcpyHostToDevice, c.s) == cudaSuccess,
          "pointer upload");
    CHECK(cublasGemmBatchedEx(c.h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, (const void *const *)dp, CUDA_R_32F, lda,
                              (const void *const *)dp + batch, CUDA_R_32F, ldb, &beta, (void *const *)dp + 2 * batch,
                              CUDA_R_32F, ldc, batch, CUBLAS_COMPUTE_32F_FAST_16BF,
                              CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS, "pointer-array batched");
    cudaStreamSynchronize(c.s);
    std::vector<float> r1 = download(dC1, nc), r2 = download(dC2, nc), r3 = download(dC3, nc);
    CHECK(memcmp(r1.data(), r2.data(), nc * 4) == 0, "strided batched differs from the loop");
    CHECK(memcmp(r1.data(), r3.data(), nc * 4) == 0, "pointer-array batched differs from the loop");
    CHECK(memcmp(r1.data(), C0.data(), nc * 4) != 0, "nothing was computed");
    for (int b = 0; b < batch; b++) // the gaps between batches are untouched
        for (long long x = (long long)ldc * n; x < sC; x++)
            CHECK(r1[b * sC + x] == C0[b * sC + x], "batch %d gap element %lld written", b, x);
    cudaFree(dA), cudaFree(dB), cudaFree(dC1), cudaFree(dC2), cudaFree(dC3), cudaFree(dp);
    ctx_free(c);
}

// Heads side by side in one row-major activation (attention's P V): the batches' C extents interleave but
// no element is shared, which is not an overlap; and A / B may share one buffer with each other.
TEST(interleaved_outputs_are_not_overlaps) {
    Ctx c = ctx_new();
    const int m = 16, n = 21, k = 9, heads = 3, ldc = m * heads;
    std::vector<float> AB = randv((size_t)(m * k + k * n) * heads);
    float *dAB = upload(AB), *dC1 = nullptr, *dC2 = nullptr;
    float *dA = dAB, *dB = dAB + (size_t)m * k * heads;
    cudaMalloc(&dC1, sizeof(float) * ldc * n), cudaMalloc(&dC2, sizeof(float) * ldc * n);
    const float one = 1, zero = 0;
    for (int h = 0; h < heads; h++)
        CHECK(cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA + h * m * k, CUDA_R_32F, m, dB + h * k * n,
                           CUDA_R_32F, k, &zero, dC1 + h * m, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_16BF,
                           CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS, "loop");
    CHECK(cublasGemmStridedBatchedEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, CUDA_R_32F, m, m * k, dB,
                                     CUDA_R_32F, k, k * n, &zero, dC2, CUDA_R_32F, ldc, m, heads,
                                     CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
          "strided batched");
    cudaStreamSynchronize(c.s);
    std::vector<float> r1 = download(dC1, (size_t)ldc * n), r2 = download(dC2, (size_t)ldc * n);
    CHECK(memcmp(r1.data(), r2.data(), r1.size() * 4) == 0, "interleaved strided batched differs from the loop");
    cudaFree(dAB), cudaFree(dC1), cudaFree(dC2);
    ctx_free(c);
}

// ---- (e), (f) cuBLASLt ------------------------------------------------------------------------------

// The project's linear layer: out^T (n_out x rows) = W (n_in x n_out, transposed) * in^T (n_in x rows) + b.
struct LtPlanT {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
};
static cublasStatus_t lt_plan(cublasLtHandle_t lt, LtPlanT *p, int rows, int n_in, int n_out, const void *bias_standin,
                              uint32_t min_align, size_t ws_bytes) {
    const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bt = CUDA_R_32F;
    const uint64_t ws = ws_bytes;
    cublasLtMatmulPreference_t pref;
    CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F_FAST_16BF, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS, "desc");
    CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA) == 0, "TRANSA");
    CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB) == 0, "TRANSB");
    CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) == 0, "EPILOGUE");
    CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt) == 0, "BIAS type");
    CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_standin,
                                         sizeof bias_standin) == 0, "BIAS_POINTER");
    CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_32F, n_in, n_out, n_in) == 0, "layout a");
    CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_32F, n_in, rows, n_in) == 0, "layout b");
    CHECK(cublasLtMatrixLayoutCreate(&p->d, CUDA_R_32F, n_out, rows, n_out) == 0, "layout d");
    CHECK(cublasLtMatmulPreferenceCreate(&pref) == 0, "pref");
    CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws) == 0,
          "MAX_WORKSPACE_BYTES");
    if (min_align) {
        const cublasLtMatmulPreferenceAttributes_t attrs[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (auto at : attrs)
            CHECK(cublasLtMatmulPreferenceSetAttribute(pref, at, &min_align, sizeof min_align) == 0, "MIN_ALIGNMENT");
    }
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt, p->op, p->a, p->b, p->d, p->d, pref, 1, &heur, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    CHECK(found == 1 && heur.state == CUBLAS_STATUS_SUCCESS && heur.workspaceSize <= ws_bytes, "heuristic result");
    p->algo = heur.algo;
    return s;
}
static void lt_plan_free(LtPlanT *p) {
    cublasLtMatmulDescDestroy(p->op);
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->d);
}
static cublasStatus_t lt_run(cublasLtHandle_t lt, LtPlanT *p, float *out, const float *in, const float *W,
                             const float *b, void *ws, size_t ws_bytes, cudaStream_t s) {
    const float one = 1, zero = 0;
    CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b) == 0, "BIAS_POINTER");
    return cublasLtMatmul(lt, p->op, &one, W, p->a, in, p->b, &zero, out, p->d, out, p->d, &p->algo, ws, ws_bytes, s);
}

// out = in W^T + b by the plain path: cublasGemmEx, then the bias added in fp32 on the host
static std::vector<float> plain_linear(Ctx &c, const float *in, const float *W, const std::vector<float> &bias,
                                       int rows, int n_in, int n_out) {
    float *out = nullptr;
    cudaMalloc(&out, sizeof(float) * rows * n_out);
    const float one = 1, zero = 0;
    CHECK(cublasGemmEx(c.h, CUBLAS_OP_T, CUBLAS_OP_N, n_out, rows, n_in, &one, W, CUDA_R_32F, n_in, in, CUDA_R_32F,
                       n_in, &zero, out, CUDA_R_32F, n_out, CUBLAS_COMPUTE_32F_FAST_16BF,
                       CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS, "GemmEx");
    cudaStreamSynchronize(c.s);
    std::vector<float> r = download(out, (size_t)rows * n_out);
    for (int j = 0; j < rows; j++)
        for (int i = 0; i < n_out; i++) r[i + (size_t)j * n_out] = r[i + (size_t)j * n_out] + bias[i];
    cudaFree(out);
    return r;
}

TEST(lt_bias_epilogue_equals_gemm_plus_bias) {
    Ctx c = ctx_new();
    cublasLtHandle_t lt;
    CHECK(cublasLtCreate(&lt) == CUBLAS_STATUS_SUCCESS, "cublasLtCreate");
    const int rows = 40, n_in = 64, n_out = 48;
    const size_t ws_bytes = 1 << 20;
    std::vector<float> in = randv((size_t)rows * n_in), W = randv((size_t)n_out * n_in), b = randv(n_out);
    float *din = upload(in), *dW = upload(W), *db = upload(b), *dout = nullptr;
    void *ws = nullptr;
    cudaMalloc(&ws, ws_bytes);
    cudaMalloc(&dout, sizeof(float) * rows * n_out);
    LtPlanT p;
    CHECK(lt_plan(lt, &p, rows, n_in, n_out, ws, 0, ws_bytes) == CUBLAS_STATUS_SUCCESS, "plan");
    CHECK(lt_run(lt, &p, dout, din, dW, db, ws, ws_bytes, c.s) == CUBLAS_STATUS_SUCCESS, "cublasLtMatmul");
    cudaStreamSynchronize(c.s);
    std::vector<float> got = download(dout, (size_t)rows * n_out);
    std::vector<float> want = plain_linear(c, din, dW, b, rows, n_in, n_out);
    CHECK(memcmp(got.data(), want.data(), got.size() * 4) == 0, "Lt bias epilogue differs from GemmEx + bias");
    // attribute sizes are checked; the layouts must agree; the workspace must be what the algo needs
    const int64_t wide = CUBLAS_OP_T;
    const uint32_t small = 1024;
    CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &wide, sizeof wide) ==
              CUBLAS_STATUS_INVALID_VALUE, "TRANSA of 8 bytes");
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &small, sizeof small) ==
              CUBLAS_STATUS_INVALID_VALUE, "MAX_WORKSPACE_BYTES of 4 bytes");
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.a, p.d, p.d, p.d, pref, 1, &heur, &found) ==
              CUBLAS_STATUS_INVALID_VALUE, "inconsistent layouts");
    cublasLtMatmulPreferenceDestroy(pref);
    CHECK(lt_run(lt, &p, dout, din, dW, db, ws, ws_bytes / 2, c.s) == CUBLAS_STATUS_INVALID_VALUE,
          "a workspace smaller than the algo needs");
    cudaStreamSynchronize(c.s);
    lt_plan_free(&p);
    cudaFree(din), cudaFree(dW), cudaFree(db), cudaFree(dout), cudaFree(ws);
    cublasLtDestroy(lt);
    ctx_free(c);
}

// The review finding of model/cuda/matmul.cu: a plan chosen for cuBLASLt's default 256-byte alignment
// then used with 64-byte aligned parameters (PARAM_ALIGN) is refused; chosen for 16 bytes it runs.
TEST(lt_alignment_of_the_plan) {
    Ctx c = ctx_new();
    cublasLtHandle_t lt;
    cublasLtCreate(&lt);
    const int rows = 24, n_in = 32, n_out = 16;
    const size_t ws_bytes = 1 << 16;
    std::vector<float> in = randv((size_t)rows * n_in), W = randv((size_t)n_out * n_in + 32), b = randv(n_out + 16);
    float *din = upload(in), *dWbase = upload(W), *dbbase = upload(b), *dout = nullptr;
    float *dW = dWbase + 16, *db = dbbase + 4; // 64-byte and 16-byte aligned, not 256
    void *ws = nullptr;
    cudaMalloc(&ws, ws_bytes);
    cudaMalloc(&dout, sizeof(float) * rows * n_out);
    LtPlanT p;
    // default preferences, the 256-aligned workspace as the stand-in bias (the code before the fix)
    CHECK(lt_plan(lt, &p, rows, n_in, n_out, ws, 0, ws_bytes) == CUBLAS_STATUS_SUCCESS, "plan (defaults)");
    CHECK(lt_run(lt, &p, dout, din, dW, dbbase, ws, ws_bytes, c.s) == CUBLAS_STATUS_NOT_SUPPORTED,
          "a 64-byte aligned A under a 256-byte plan must be refused");
    CHECK(lt_run(lt, &p, dout, din, dWbase, db, ws, ws_bytes, c.s) == CUBLAS_STATUS_NOT_SUPPORTED,
          "a 16-byte aligned bias under a plan made with a 256-byte aligned stand-in must be refused");
    lt_plan_free(&p);
    // the fix: minimum alignments of 16 bytes and a stand-in bias aligned exactly 16 bytes
    CHECK(lt_plan(lt, &p, rows, n_in, n_out, (const char *)ws + 16, 16, ws_bytes) == CUBLAS_STATUS_SUCCESS,
          "plan (16)");
    CHECK(lt_run(lt, &p, dout, din, dW, db, ws, ws_bytes, c.s) == CUBLAS_STATUS_SUCCESS,
          "16-byte aligned pointers under a 16-byte plan");
    cudaStreamSynchronize(c.s);
    std::vector<float> got = download(dout, (size_t)rows * n_out),
                       want = plain_linear(c, din, dW, std::vector<float>(b.begin() + 4, b.end()), rows, n_in, n_out);
    CHECK(memcmp(got.data(), want.data(), got.size() * 4) == 0, "Lt result under the 16-byte plan");
    CHECK(lt_run(lt, &p, dout, din, (const float *)((const char *)dW + 4), db, ws, ws_bytes, c.s) ==
              CUBLAS_STATUS_NOT_SUPPORTED, "a 4-byte aligned A under a 16-byte plan");
    cudaStreamSynchronize(c.s);
    lt_plan_free(&p);
    cudaFree(din), cudaFree(dWbase), cudaFree(dbbase), cudaFree(dout), cudaFree(ws);
    cublasLtDestroy(lt);
    ctx_free(c);
}

// ---- findings: each in a child process, which must exit with status 3 and say what is wrong -------------

static void host_operand(void) {
    Ctx c = ctx_new();
    float *d = nullptr;
    cudaMalloc(&d, sizeof(float) * 64);
    static float host[64];
    const float one = 1, zero = 0;
    cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, CUDA_R_32F, 8, host, CUDA_R_32F, 8, &zero, d,
                 CUDA_R_32F, 8, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
static void past_the_end(void) {
    Ctx c = ctx_new();
    float *d = nullptr;
    cudaMalloc(&d, sizeof(float) * 64);
    const float one = 1, zero = 0; // C of 8 x 8 with ldc 9 spans 71 floats
    cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 0, &one, d, CUDA_R_32F, 8, d, CUDA_R_32F, 1, &zero, d,
                 CUDA_R_32F, 9, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
static void batches_overlap(void) {
    Ctx c = ctx_new();
    float *d = nullptr;
    cudaMalloc(&d, sizeof(float) * 4096);
    const float one = 1, zero = 0; // strideC 32 < 64 elements of a C
    cublasGemmStridedBatchedEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, CUDA_R_32F, 8, 64, d + 1024,
                               CUDA_R_32F, 8, 64, &zero, d + 2048, CUDA_R_32F, 8, 32, 3, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT);
    cudaStreamSynchronize(c.s);
}
static void output_is_input(void) {
    Ctx c = ctx_new();
    float *d = nullptr;
    cudaMalloc(&d, sizeof(float) * 4096);
    cudaMemset(d, 0, 4096 * 4);
    const float one = 1, zero = 0; // C overlaps B
    cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, CUDA_R_32F, 8, d + 64, CUDA_R_32F, 8, &zero, d + 100,
                 CUDA_R_32F, 8, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaStreamSynchronize(c.s);
}
static void pointer_array_on_host(void) {
    Ctx c = ctx_new();
    float *d = nullptr;
    cudaMalloc(&d, sizeof(float) * 4096);
    static const void *arr[3];
    arr[0] = d, arr[1] = d + 1024, arr[2] = d + 2048;
    const float one = 1, zero = 0;
    cublasGemmBatchedEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, arr, CUDA_R_32F, 8, arr + 1, CUDA_R_32F, 8,
                        &zero, (void *const *)arr + 2, CUDA_R_32F, 8, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
static void pointer_in_array_bad(void) {
    Ctx c = ctx_new();
    float *d = nullptr;
    void **arr = nullptr;
    cudaMalloc(&d, sizeof(float) * 4096);
    cudaMalloc(&arr, sizeof(void *) * 3);
    static float host[64];
    const void *h[3] = {d, host, d + 2048}; // B of the only batch is host memory
    cudaMemcpy(arr, h, sizeof h, cudaMemcpyHostToDevice);
    const float one = 1, zero = 0;
    cublasGemmBatchedEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, (const void *const *)arr, CUDA_R_32F, 8,
                        (const void *const *)arr + 1, CUDA_R_32F, 8, &zero, (void *const *)arr + 2, CUDA_R_32F, 8, 1,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaStreamSynchronize(c.s);
}
static void destroyed_handle(void) {
    Ctx c = ctx_new();
    cublasDestroy(c.h);
    cublasSetStream(c.h, c.s);
}

TEST(findings) {
    CHECK(finding(host_operand, "cublasGemmEx: B ("), "a host operand");
    CHECK(finding(past_the_end, "cublasGemmEx: C ("), "an operand running past its allocation");
    CHECK(finding(batches_overlap, "overlaps the output C of batch"), "overlapping batch outputs");
    CHECK(finding(output_is_input, "the input B of batch 0"), "an output overlapping an input");
    CHECK(finding(pointer_array_on_host, "the pointer array Aarray"), "a pointer array in host memory");
    CHECK(finding(pointer_in_array_bad, "Barray[0]"), "a host pointer inside a device pointer array");
    CHECK(finding(destroyed_handle, "was destroyed"), "a destroyed handle");
}

// ---- capture into a CUDA graph ------------------------------------------------------------------------

// A GemmEx recorded into a graph runs at each launch on the operands as they are then; without a
// workspace set on the handle the capture is reported.
TEST(gemm_captured_into_a_graph) {
    Ctx c = ctx_new();
    const int n = 8;
    std::vector<float> a = randv(n * n), b = randv(n * n);
    float *A = upload(a), *B = upload(b), *C = nullptr, *ws = nullptr;
    CHECK(cudaMalloc(&C, sizeof(float) * n * n) == cudaSuccess && cudaMalloc(&ws, 1 << 20) == cudaSuccess, "malloc");
    CHECK(cublasSetWorkspace(c.h, ws, 1 << 20) == CUBLAS_STATUS_SUCCESS, "cublasSetWorkspace");
    const float one = 1, zero = 0;
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CHECK(cudaStreamBeginCapture(c.s, cudaStreamCaptureModeThreadLocal) == cudaSuccess, "begin");
    CHECK(cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, A, CUDA_R_32F, n, B, CUDA_R_32F, n, &zero, C,
                       CUDA_R_32F, n, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
          "captured gemm");
    CHECK(cudaStreamEndCapture(c.s, &g) == cudaSuccess && cudaGraphInstantiate(&ge, g, 0) == cudaSuccess, "graph");
    for (int round = 0; round < 2; round++) {
        if (round) { // new operand values: the graph reads them at its next launch
            b = randv(n * n);
            CHECK(cudaMemcpy(B, b.data(), sizeof(float) * n * n, cudaMemcpyHostToDevice) == cudaSuccess, "B");
        }
        CHECK(cudaGraphLaunch(ge, c.s) == cudaSuccess, "launch");
        CHECK(cudaStreamSynchronize(c.s) == cudaSuccess, "sync");
        std::vector<float> got = download(C, (size_t)n * n);
        double worst = 0;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < n; i++) {
                double r = 0;
                for (int k = 0; k < n; k++) r += (double)a[i + k * n] * b[k + j * n];
                worst = fmax(worst, fabs(got[i + j * n] - r));
            }
        printf("  launch %d: max |C - A B| = %.2g\n", round, worst);
        CHECK(worst < 1e-5, "the graph's GEMM is off by %g", worst);
    }
    cudaGraphExecDestroy(ge), cudaGraphDestroy(g);
    cudaFree(A), cudaFree(B), cudaFree(C), cudaFree(ws);
    ctx_free(c);
}

static void gemm_captured_without_workspace(void) {
    Ctx c = ctx_new();
    float *d = nullptr;
    cudaMalloc(&d, sizeof(float) * 4096);
    const float one = 1, zero = 0;
    cudaStreamBeginCapture(c.s, cudaStreamCaptureModeGlobal);
    cublasGemmEx(c.h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, CUDA_R_32F, 8, d + 64, CUDA_R_32F, 8, &zero, d + 128,
                 CUDA_R_32F, 8, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
TEST(finding_capture_without_workspace) {
    CHECK(finding(gemm_captured_without_workspace, "without a workspace"), "a cuBLAS call captured without a workspace");
}

// Every CUDA backend op against the fp32 CPU reference on random inputs of ViT-S/14 and ViT-L/14
// sizes, then a whole small ViT forward + backward (registers, iBOT masks, stochastic depth, two crop
// sizes) on both backends; the DINOv2 objective's ops (heads, losses, Sinkhorn, AdamW, EMA) at the
// reference heads' sizes; two whole SSL steps; the trainer with `backend: cuda`. Skips (exit 77)
// without nvcc or without a device.
//
// Tolerances (docs/cuda-backend.md, design note 5), u = 2^-8 the bf16 unit roundoff:
//  - bf16 GEMMs, per element: |gpu - cpu| <= 2^-4 * s_ij, s_ij = sqrt(sum_k (a_ik b_kj)^2). Rounding both
//    inputs to bf16 perturbs each product by a relative error of std u*sqrt(2/3) (round to nearest;
//    about twice that if the conversion truncates); summed over k the error has std ~0.8u*s_ij
//    (~1.6u*s_ij), so 2^-4 = 16u is >= 10 standard deviations (no false alarm in millions of
//    elements) while a wrong index, transpose or stride gives errors of order s_ij itself.
//  - bf16 GEMMs on inputs already rounded to bf16 (the conversion is then exact; design note 5's "same
//    bf16-rounded inputs"): only fp32 accumulation order differs, so |gpu - cpu| <= 2^-14 * s_ij.
//  - fp32 kernels (LayerNorm, activations, softmax, plumbing, reductions): |gpu - cpu| <= 1e-5 *
//    (|cpu| + rms(cpu)), i.e. 1e-5 relative to the element or, for values near 0 after cancellation,
//    to the tensor's scale. Pure copies must be bit-exact.
//  - attention (the GEMM path and the fused flash path, which rounds at the same points) and the whole ViT
//    with bf16 GEMMs: normwise ||gpu - cpu|| / ||cpu|| <= 8u (forward) and
//    16u (backward, longer chains): each GEMM adds ~u normwise, softmax turns score errors into
//    relative probability errors of the same size; with CUDA_GEMM_FP32 the same code at fp32 tolerance (the GEMMs are then
//    fp32 too; 5e-5 / 1e-4 normwise for the whole ViT), which isolates the kernels' logic from bf16
//    rounding.
// Every comparison prints its error / tolerance ratio ("err/tol"). On a first real GPU these bounds meet
// tensor cores that truncate in accumulation and sum in their own order (the CPU emulation above, and the
// CUDA execution layer's cuBLAS stand-in, round to nearest and sum k in order): a bf16 case whose ratio
// lands between 1 and 4 there means "recalibrate that bound from the measured ratios" (docs/cuda-backend.md),
// not a bug hunt; a ratio far above 4, a NaN, or an fp32 case (TOL_FP32, fp32 GEMMs) above 1 is a bug.
//
// Under the CUDA execution layer (DINO_CUDAEMU: the same sources on the CPU, tests/cudaemu/) the cases with
// 65536-prototype heads use 16384 prototypes: a CPU fiber per CUDA thread makes the full size minutes long.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/clock.h"
#include "common/rng.h"
#include <sys/stat.h>

#include "model/attention_layout.h"
#include "model/backend.h"
#include "model/backend_plan.h"
#include "model/rope.h"
#include "model/vit.h"
#include "tests/harness.h"
#include "train/ssl_step.h"
#include "tests/step_scalars_check.h"
#include "train/optim.h"
#ifndef DINO_GPU_SUBSET // tools/gpu_check.sh's subset build has no data/ or trainer
#include "tests/synth_files.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/distill_teacher.h"
#include "train/train.h"
#endif
#ifdef DINO_HAVE_CUDA
#include <cuda_runtime.h> // a write behind the backend's back (the bf16 weight copy's tests)

#include "model/cuda/backend_cuda.h"
#include "model/cuda/cuda_device.h"
#endif

#define U_BF16 (1.0 / 256.0)
#define TOL_GEMM_BF16 (16 * U_BF16)
#define TOL_GEMM_EXACT_IN (1.0 / 16384.0)
#define TOL_FP32 1e-5
#ifdef DINO_CUDAEMU
#define K_PROTOTYPES 16384
#else
#define K_PROTOTYPES 65536
#endif

// ---- backends -------------------------------------------------------------------------------------

#ifndef DINO_HAVE_CUDA
typedef enum { CUDA_GEMM_BF16 = 0, CUDA_GEMM_FP32 = 1 } CudaGemmPrecision;
#endif

// Tolerance calibration without a GPU: DINO_CUDA_OPS_EMULATE=rn (or =trunc) makes the "GPU" a CPU
// backend whose GEMMs (linear, gemm, attention's products) round their inputs to bf16 by round-to-
// nearest-even (or truncation), as the tensor cores would, and whose bf16 activation buffers hold values
// rounded where the cuda backend stores bf16 (backend_cpu_emulate_bf16, always to nearest even, as
// __float2bfloat16). The bf16 cases then measure how close to their bounds the rounding alone comes (the
// fp32 cases compare the CPU with itself); the *_matches_cpu_emulation cases use it as the reference.
static Backend *emu_ref;
static int emu_trunc;

// x rounded to bf16 (kept in a float): to nearest even (__float2bfloat16, the tensor cores' conversion),
// or truncated
static float bf16_rounded(float x, int truncate) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if (!truncate) u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}
static float bf16_round(float x) { return bf16_rounded(x, 0); }
static float emu_round(float x) { return bf16_rounded(x, emu_trunc); }
static float *emu_rounded(const float *a, size_t n) {
    float *c = dino_malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) c[i] = emu_round(a[i]);
    return c;
}
static void emu_gemm(Backend *be, int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
    float *a = emu_rounded(A, (size_t)(tA ? K : M) * lda), *b = emu_rounded(B, (size_t)(tB ? N : K) * ldb);
    emu_ref->gemm(emu_ref, tA, tB, M, N, K, alpha, a, lda, b, ldb, beta, C, ldc);
    free(a), free(b);
}
static void emu_linear_fwd(Backend *be, float *out, const float *in, const float *W, const float *b, int rows,
                           int n_in, int n_out) {
    float *x = emu_rounded(in, (size_t)rows * n_in), *w = emu_rounded(W, (size_t)n_out * n_in);
    emu_ref->linear_fwd(emu_ref, out, x, w, b, rows, n_in, n_out);
    free(x), free(w);
}
static void emu_linear_bwd(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in,
                           const float *W, int rows, int n_in, int n_out) {
    float *d = emu_rounded(dout, (size_t)rows * n_out), *x = emu_rounded(in, (size_t)rows * n_in);
    float *w = emu_rounded(W, (size_t)n_out * n_in);
    emu_ref->linear_bwd(emu_ref, din, dW, NULL, d, x, w, rows, n_in, n_out);
    if (db) // the bias gradient is an fp32 sum of the unrounded dout
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < n_out; j++) db[j] += dout[(size_t)r * n_out + j];
    free(d), free(x), free(w);
}
static void emu_attention_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh) {
    const int D = H * Dh, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *q = qkv + (size_t)b * T * ld + (size_t)h * Dh;
        float *P = saved + (size_t)bh * T * T;
        emu_gemm(be, 0, 1, T, T, Dh, scale, q, ld, q + D, ld, 0.0f, P, T);
        for (int i = 0; i < T; i++) { // as softmax_rows_kernel: the row sum in its warp's order, times 1/sum
            float *r = P + (size_t)i * T, mx = r[0];
            for (int j = 1; j < T; j++) mx = r[j] > mx ? r[j] : mx;
            for (int j = 0; j < T; j++) r[j] = expf(r[j] - mx);
            const float inv = 1.0f / dino_warp_order_sum(r, T);
            // the CUDA backend saves the probabilities in bf16 (round to nearest) with bf16 GEMMs
            for (int j = 0; j < T; j++) r[j] = bf16_round(r[j] * inv);
        }
        emu_gemm(be, 0, 0, T, Dh, T, 1.0f, P, T, q + 2 * D, ld, 0.0f, out + (size_t)b * T * D + (size_t)h * Dh, D);
    }
}
static void emu_attention_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                              int T, int H, int Dh) {
    const int D = H * Dh, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    float *dS = dino_malloc(sizeof(float) * (size_t)T * T), *pd = dino_malloc(sizeof(float) * (size_t)T);
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *q = qkv + (size_t)b * T * ld + (size_t)h * Dh, *P = saved + (size_t)bh * T * T;
        const float *dO = dout + (size_t)b * T * D + (size_t)h * Dh;
        float *dq = dqkv + (size_t)b * T * ld + (size_t)h * Dh;
        emu_gemm(be, 1, 0, T, Dh, T, 1.0f, P, T, dO, D, 0.0f, dq + 2 * D, ld);
        emu_gemm(be, 0, 1, T, T, Dh, 1.0f, dO, D, q + 2 * D, ld, 0.0f, dS, T);
        for (int i = 0; i < T; i++) { // as softmax_bwd_rows_kernel: the dot product in its warp's order
            const float *p = P + (size_t)i * T;
            float *d = dS + (size_t)i * T;
            for (int j = 0; j < T; j++) pd[j] = p[j] * d[j];
            const float dot = dino_warp_order_sum(pd, T);
            for (int j = 0; j < T; j++) d[j] = scale * p[j] * (d[j] - dot);
        }
        emu_gemm(be, 0, 0, T, Dh, T, 1.0f, dS, T, q + D, ld, 0.0f, dq, ld);
        emu_gemm(be, 1, 0, T, Dh, T, 1.0f, dS, T, q, ld, 0.0f, dq + D, ld);
    }
    free(dS), free(pd);
}
static Backend *emulated_backend(CudaGemmPrecision prec, const char *mode) {
    Backend *be = backend_cpu_new();
    if (prec == CUDA_GEMM_FP32) return be; // fp32 GEMMs: the CPU itself
    emu_ref = emu_ref ? emu_ref : backend_cpu_new();
    emu_trunc = strcmp(mode, "trunc") == 0;
    be->gemm = emu_gemm, be->linear_fwd = emu_linear_fwd, be->linear_bwd = emu_linear_bwd;
    be->attention_fwd = emu_attention_fwd, be->attention_bwd = emu_attention_bwd;
    // and bf16 activation storage where the cuda backend has it (the library's switch, over these GEMMs)
    backend_cpu_emulate_bf16(be);
    printf("(emulated bf16 GEMMs and activations, %s: a tolerance calibration, not a GPU test)\n",
           emu_trunc ? "truncation" : "round to nearest");
    return be;
}
static int emulating(void) {
    const char *e = getenv("DINO_CUDA_OPS_EMULATE");
    return e && (strcmp(e, "rn") == 0 || strcmp(e, "trunc") == 0);
}

#ifdef DINO_HAVE_CUDA
static Backend *gpu_backend(CudaGemmPrecision prec) {
    if (emulating()) return emulated_backend(prec, getenv("DINO_CUDA_OPS_EMULATE"));
    if (dino_cuda_device_count() == 0) test_skip("no CUDA device on this machine");
    char err[DINO_ERRLEN];
    Backend *be = backend_cuda_new(0, err);
    CHECK(be != NULL, "a device is visible but the CUDA backend failed: %s", err);
    if (!be) exit(1);
    backend_cuda_set_gemm_precision(be, prec);
    return be;
}
static void gpu_free(Backend *be) {
    if (emulating()) backend_free(be);
    else backend_cuda_free(be);
}
#else
static Backend *gpu_backend(CudaGemmPrecision prec) {
    if (emulating()) return emulated_backend(prec, getenv("DINO_CUDA_OPS_EMULATE"));
    test_skip("built without CUDA (no nvcc found)");
}
static void gpu_free(Backend *be) { backend_free(be); }
#endif

// ---- tensors mirrored on both backends ------------------------------------------------------------

typedef struct {
    size_t n;
    float *h; // host copy of the inputs
    float *c; // CPU backend memory
    float *g; // GPU backend memory
} Pair;


static Pair pair_new(Backend *C, Backend *G, size_t n, float mean, float std, Rng *r, int round_bf16) {
    Pair p = {.n = n, .h = dino_malloc(sizeof(float) * (n ? n : 1))};
    for (size_t i = 0; i < n; i++) {
        float v = std != 0 ? mean + std * (float)rng_normal(r) : mean;
        p.h[i] = round_bf16 ? bf16_round(v) : v;
    }
    p.c = C->alloc(C, sizeof(float) * n);
    p.g = G->alloc(G, sizeof(float) * n);
    C->to_device(C, p.c, p.h, sizeof(float) * n);
    G->to_device(G, p.g, p.h, sizeof(float) * n);
    return p;
}

static float *pair_gpu_result(Backend *G, const Pair *p) {
    float *out = dino_malloc(sizeof(float) * (p->n ? p->n : 1));
    G->to_host(G, out, p->g, sizeof(float) * p->n);
    return out;
}

static void pair_free(Backend *C, Backend *G, Pair *p) {
    C->release(C, p->c);
    G->release(G, p->g);
    free(p->h);
}

static void *dual_upload(Backend *be, const void *host, size_t bytes) {
    void *d = be->alloc(be, bytes);
    be->to_device(be, d, host, bytes);
    return d;
}

// ---- comparisons ----------------------------------------------------------------------------------

static double rms(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return n ? sqrt(s / n) : 0;
}

// Per element: |g - c| <= rtol * scale_i, scale_i = s[i] if s else |c_i| + rms(c). rtol 0: bit-exact.
static void check_elems(const char *what, const float *g, const float *c, const float *s, size_t n, double rtol) {
    double r = rms(c, n), worst = 0, maxerr = 0, num = 0, den = 0;
    size_t wi = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)g[i] - c[i]);
        double tol = rtol * (s ? (double)s[i] : fabs((double)c[i]) + r);
        num += e * e;
        den += (double)c[i] * c[i];
        if (e > maxerr) maxerr = e;
        double ratio = tol > 0 ? e / tol : (e > 0 ? INFINITY : 0);
        if (!(e <= tol) || isnan(g[i])) {
            bad++;
            ratio = isnan(g[i]) ? INFINITY : ratio;
        }
        if (ratio > worst || isnan(g[i])) worst = ratio, wi = i;
    }
    printf("  %-34s n=%-9zu max|err|=%.3g  normwise=%.3g  worst err/tol=%.3g\n", what, n, maxerr,
           den > 0 ? sqrt(num / den) : sqrt(num), worst);
    CHECK(bad == 0, "%s: %zu of %zu elements out of tolerance; worst [%zu] gpu %.9g cpu %.9g", what, bad, n, wi,
          (double)g[wi], (double)c[wi]);
}

// ||g - c|| / ||c|| <= tol
static void check_norm(const char *what, const float *g, const float *c, size_t n, double tol) {
    double num = 0, den = 0;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)g[i] - c[i];
        num += e * e;
        den += (double)c[i] * c[i];
        nan |= isnan(g[i]) || isinf(g[i]);
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("  %-34s n=%-9zu normwise=%.3g (tol %.3g)  err/tol=%.3g\n", what, n, rel, tol, tol > 0 ? rel / tol : 0.0);
    CHECK(!nan && rel <= tol, "%s: normwise relative error %.3g > %.3g%s", what, rel, tol, nan ? " (NaN/Inf)" : "");
}

// s[M,N] = sqrt(op(A)^2 op(B)^2) elementwise-squared operands: the scale of a GEMM's rounding error.
static float *gemm_scale(Backend *C, int tA, int tB, int M, int N, int K, const float *A, int lda, size_t nA,
                         const float *B, int ldb, size_t nB) {
    float *A2 = dino_malloc(sizeof(float) * nA), *B2 = dino_malloc(sizeof(float) * nB);
    float *s = dino_calloc((size_t)M * N, sizeof(float));
    for (size_t i = 0; i < nA; i++) A2[i] = A[i] * A[i];
    for (size_t i = 0; i < nB; i++) B2[i] = B[i] * B[i];
    C->gemm(C, tA, tB, M, N, K, 1.0f, A2, lda, B2, ldb, 0.0f, s, N);
    for (size_t i = 0; i < (size_t)M * N; i++) s[i] = sqrtf(s[i]) + 1e-30f;
    free(A2), free(B2);
    return s;
}

// ---- memory ---------------------------------------------------------------------------------------

TEST(memory_alloc_zero_copy_roundtrip) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
    const size_t n = 3 * 1000 * 1000 + 1;
    float *h = dino_malloc(sizeof(float) * n), *back = dino_malloc(sizeof(float) * n);
    Rng r = rng_make(91, 0, 0, 0);
    for (size_t i = 0; i < n; i++) h[i] = (float)rng_normal(&r);
    float *a = G->alloc(G, sizeof(float) * n), *b = G->alloc(G, sizeof(float) * n);
    G->to_host(G, back, a, sizeof(float) * n);
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) nonzero += back[i] != 0.0f;
    CHECK(nonzero == 0, "alloc is not zero-filled (%zu nonzero)", nonzero);
    G->to_device(G, a, h, sizeof(float) * n);
    G->copy(G, b, a, sizeof(float) * n);
    G->zero(G, a + 10, sizeof(float) * 5);
    G->to_host(G, back, b, sizeof(float) * n);
    CHECK(memcmp(back, h, sizeof(float) * n) == 0, "to_device -> copy -> to_host is not bit-exact");
    G->to_host(G, back, a, sizeof(float) * 20);
    for (int i = 0; i < 20; i++)
        CHECK(back[i] == (i >= 10 && i < 15 ? 0.0f : h[i]), "zero() cleared the wrong range at %d", i);
    G->sync(G);
    G->release(G, a), G->release(G, b);
    free(h), free(back);
    gpu_free(G);
}

// ---- GEMM and linear ------------------------------------------------------------------------------

static void linear_case(Backend *C, Backend *G, int rows, int n_in, int n_out, int exact_inputs, uint64_t seed) {
    Rng r = rng_make(seed, 1, (uint64_t)rows, (uint64_t)n_out);
    const double tol = exact_inputs ? TOL_GEMM_EXACT_IN : TOL_GEMM_BF16;
    char what[96];
    printf(" linear rows=%d n_in=%d n_out=%d (%s inputs)\n", rows, n_in, n_out, exact_inputs ? "bf16-exact" : "fp32");
    Pair x = pair_new(C, G, (size_t)rows * n_in, 0, 1, &r, exact_inputs);
    Pair W = pair_new(C, G, (size_t)n_out * n_in, 0, 1.0f / sqrtf((float)n_in), &r, exact_inputs);
    Pair b = pair_new(C, G, (size_t)n_out, 0, 0.5f, &r, 0);
    Pair out = pair_new(C, G, (size_t)rows * n_out, 7, 0, &r, 0); // overwritten
    C->linear_fwd(C, out.c, x.c, W.c, b.c, rows, n_in, n_out);
    G->linear_fwd(G, out.g, x.g, W.g, b.g, rows, n_in, n_out);
    float *go = pair_gpu_result(G, &out);
    float *s = gemm_scale(C, 0, 1, rows, n_out, n_in, x.h, n_in, x.n, W.h, n_in, W.n);
    for (size_t i = 0; i < out.n; i++) s[i] += 1e-6f * fabsf(b.h[i % n_out]); // the bias add is fp32
    snprintf(what, sizeof what, "linear_fwd.out");
    check_elems(what, go, out.c, s, out.n, tol);
    free(go), free(s);

    // backward; dW and db accumulate into nonzero buffers
    Pair dout = pair_new(C, G, (size_t)rows * n_out, 0, 1, &r, exact_inputs);
    Pair din = pair_new(C, G, (size_t)rows * n_in, 3, 0, &r, 0);
    Pair dW = pair_new(C, G, W.n, 0, 0.1f, &r, 0);
    Pair db = pair_new(C, G, b.n, 0, 0.1f, &r, 0);
    C->linear_bwd(C, din.c, dW.c, db.c, dout.c, x.c, W.c, rows, n_in, n_out);
    G->linear_bwd(G, din.g, dW.g, db.g, dout.g, x.g, W.g, rows, n_in, n_out);
    float *g1 = pair_gpu_result(G, &din), *g2 = pair_gpu_result(G, &dW), *g3 = pair_gpu_result(G, &db);
    s = gemm_scale(C, 0, 0, rows, n_in, n_out, dout.h, n_out, dout.n, W.h, n_in, W.n);
    check_elems("linear_bwd.din", g1, din.c, s, din.n, tol);
    free(s);
    s = gemm_scale(C, 1, 0, n_out, n_in, rows, dout.h, n_out, dout.n, x.h, n_in, x.n);
    for (size_t i = 0; i < dW.n; i++) s[i] += 1e-6f * fabsf(dW.h[i]);
    check_elems("linear_bwd.dW (+=)", g2, dW.c, s, dW.n, tol);
    free(s);
    check_elems("linear_bwd.db (+=, fp32 sum)", g3, db.c, NULL, db.n, TOL_FP32);
    free(g1), free(g2), free(g3);
    // determinism: the same call again gives bit-identical results
    float *dW1 = pair_gpu_result(G, &dW), *db1 = pair_gpu_result(G, &db);
    G->zero(G, dW.g, sizeof(float) * dW.n), G->zero(G, db.g, sizeof(float) * db.n);
    G->linear_bwd(G, din.g, dW.g, db.g, dout.g, x.g, W.g, rows, n_in, n_out);
    float *dW2 = pair_gpu_result(G, &dW), *db2 = pair_gpu_result(G, &db);
    G->zero(G, dW.g, sizeof(float) * dW.n), G->zero(G, db.g, sizeof(float) * db.n);
    G->linear_bwd(G, din.g, dW.g, db.g, dout.g, x.g, W.g, rows, n_in, n_out);
    float *dW3 = pair_gpu_result(G, &dW), *db3 = pair_gpu_result(G, &db);
    CHECK(memcmp(dW2, dW3, sizeof(float) * dW.n) == 0 && memcmp(db2, db3, sizeof(float) * db.n) == 0,
          "linear_bwd is not deterministic");
    free(dW1), free(db1), free(dW2), free(db2), free(dW3), free(db3);
    Pair *all[] = {&x, &W, &b, &out, &dout, &din, &dW, &db};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
}

// download_async / download_wait: a read-back lands in page-locked memory in stream order (a later op on the
// same buffer does not change it), on the gpu as on the cpu, bit for bit; with graphs replaying, the copy
// is a node of the replayed graph and brings each launch's new values.
static void download_checks(Backend *be, const char *name, int replay) {
    const int n = 1000;
    float *x = be->alloc(be, sizeof(float) * n), *h = dino_malloc(sizeof(float) * n);
    float *d1 = be->host_alloc(be, sizeof(float) * n), *d2 = be->host_alloc(be, sizeof(float) * n);
    int bad = 0;
    for (int it = 0; it < 3; it++) { // the same ops, new host values: a replayed segment from the second on
        for (int i = 0; i < n; i++) h[i] = 0.25f * (float)(i - 300) + (float)it;
        be->to_device(be, x, h, sizeof(float) * n);
        be->download_async(be, d1, x, sizeof(float) * n);
        be->scale(be, x, 3.0f, (size_t)n); // after the first download in stream order
        be->download_async(be, d2, x, sizeof(float) * n);
        be->download_wait(be);
        for (int i = 0; i < n; i++) bad += d1[i] != h[i] || d2[i] != 3.0f * h[i];
    }
    printf("  %s%s: %d wrong values in 3 rounds\n", name, replay ? " (graphs replaying)" : "", bad);
    CHECK(bad == 0, "%s: %d values read back wrong", name, bad);
    be->host_free(be, d1), be->host_free(be, d2), be->release(be, x);
    free(h);
}
TEST(download_async_in_stream_order) {
    Backend *C = backend_cpu_new(), *G = gpu_backend(CUDA_GEMM_BF16);
    download_checks(C, "cpu", 0);
    download_checks(G, "gpu", 0);
#ifdef DINO_HAVE_CUDA
    if (!emulating()) {
        backend_cuda_set_graphs(G, CUDA_GRAPHS_REPLAY);
        const CudaGraphStats before = backend_cuda_graph_stats(G);
        download_checks(G, "gpu", 1);
        const CudaGraphStats a = backend_cuda_graph_stats(G);
        backend_cuda_set_graphs(G, CUDA_GRAPHS_OFF);
        printf("  %lld launches, %lld replayed\n", a.launches - before.launches, a.replays - before.replays);
        CHECK(a.replays - before.replays >= 2, "the repeated rounds were not replayed (%lld)", a.replays - before.replays);
    }
#endif
    backend_free(C);
    gpu_free(G);
}

TEST(linear_vits_vitl_shapes) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    // ViT-S/14: qkv of 2 global crops (2*257 tokens), fc2 of 8 local crops (8*50 tokens);
    // ViT-L/14: fc1 of 2 global crops; the patch embedding (K = 3*14*14 = 588).
    for (int exact = 1; exact >= 0; exact--) {
        linear_case(C, G, 2 * 257, 384, 3 * 384, exact, 1);
        linear_case(C, G, 8 * 50, 1536, 384, exact, 2);
        linear_case(C, G, 2 * 257, 1024, 4096, exact, 3);
        linear_case(C, G, 2 * 256, 588, 1024, exact, 4);
    }
    backend_free(C);
    gpu_free(G);
}

// The cuBLASLt path (bias as the GEMM's epilogue) against the cublasGemmEx path on the same GPU, at the
// shapes the ViT uses: both convert the same fp32 inputs to bf16, so only the fp32 accumulation order
// may differ (the bf16-exact-input bound); and a rerun of the Lt path is bit-identical (its algorithm is
// chosen once per shape).
TEST(linear_lt_epilogue_matches_plain_path) {
#ifdef DINO_HAVE_CUDA
    if (emulating()) test_skip("emulation has no cuBLASLt");
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    const int shapes[][3] = {{2 * 257, 384, 3 * 384}, {8 * 50, 1536, 384}, {2 * 257, 1024, 4096}, {2 * 256, 588, 1024},
                             {5 * 50, 768, 2048}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const int rows = shapes[k][0], n_in = shapes[k][1], n_out = shapes[k][2];
        Rng r = rng_make(13, k, 0, 0);
        Pair x = pair_new(C, G, (size_t)rows * n_in, 0, 1, &r, 0);
        Pair W = pair_new(C, G, (size_t)n_out * n_in, 0, 1.0f / sqrtf((float)n_in), &r, 0);
        Pair b = pair_new(C, G, (size_t)n_out, 0, 0.5f, &r, 0);
        Pair out = pair_new(C, G, (size_t)rows * n_out, 7, 0, &r, 0);
        backend_cuda_set_lt(G, 0);
        G->linear_fwd(G, out.g, x.g, W.g, b.g, rows, n_in, n_out);
        float *plain = pair_gpu_result(G, &out);
        CHECK(backend_cuda_set_lt(G, 1) == 1, "cuBLASLt could not be switched on");
        G->linear_fwd(G, out.g, x.g, W.g, b.g, rows, n_in, n_out);
        float *lt = pair_gpu_result(G, &out);
        G->linear_fwd(G, out.g, x.g, W.g, b.g, rows, n_in, n_out);
        float *lt2 = pair_gpu_result(G, &out);
        float *sc = gemm_scale(C, 0, 1, rows, n_out, n_in, x.h, n_in, x.n, W.h, n_in, W.n);
        for (size_t i = 0; i < out.n; i++) sc[i] += 1e-6f * fabsf(b.h[i % n_out]);
        char what[96];
        snprintf(what, sizeof what, "linear %dx%dx%d: cuBLASLt vs cublasGemmEx", rows, n_in, n_out);
        check_elems(what, lt, plain, sc, out.n, TOL_GEMM_EXACT_IN);
        CHECK(memcmp(lt, lt2, sizeof(float) * out.n) == 0, "%s: two runs differ", what);
        free(plain), free(lt), free(lt2), free(sc);
        pair_free(C, G, &x), pair_free(C, G, &W), pair_free(C, G, &b), pair_free(C, G, &out);
    }
    int n_lt = backend_cuda_lt_shapes(G);
    printf("  cuBLASLt took %d of %zu shapes\n", n_lt, sizeof shapes / sizeof shapes[0]);
    backend_free(C);
    gpu_free(G);
    if (n_lt == 0) test_skip("cuBLASLt declined every shape (the cublasGemmEx path runs): nothing compared");
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}

TEST(gemm_transposes_and_leading_dims) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(11, 0, 0, 0);
    const int M = 49, N = 384, K = 256; // the pos-embed interpolation's shape (7x7 grid from 16x16)
    for (int tA = 0; tA < 2; tA++)
        for (int tB = 0; tB < 2; tB++) {
            // stored shapes with padded leading dimensions: op(A) is [M,K], op(B) is [K,N]
            int ar = tA ? K : M, ac = tA ? M : K, br = tB ? N : K, bc = tB ? K : N;
            int lda = ac + 5, ldb = bc + 3, ldc = N + 7;
            Pair A = pair_new(C, G, (size_t)ar * lda, 0, 1, &r, 0);
            Pair B = pair_new(C, G, (size_t)br * ldb, 0, 1, &r, 0);
            Pair Cm = pair_new(C, G, (size_t)M * ldc, 0, 1, &r, 0);
            C->gemm(C, tA, tB, M, N, K, 0.7f, A.c, lda, B.c, ldb, 0.5f, Cm.c, ldc);
            G->gemm(G, tA, tB, M, N, K, 0.7f, A.g, lda, B.g, ldb, 0.5f, Cm.g, ldc);
            float *g = pair_gpu_result(G, &Cm);
            float *s = gemm_scale(C, tA, tB, M, N, K, A.h, lda, A.n, B.h, ldb, B.n);
            // compare the M x N window (0.7 * scale for alpha, plus the beta term's fp32 rounding), and
            // the padding columns that must be untouched
            float *gw = dino_malloc(sizeof(float) * M * N), *cw = dino_malloc(sizeof(float) * M * N);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    gw[i * N + j] = g[(size_t)i * ldc + j], cw[i * N + j] = Cm.c[(size_t)i * ldc + j];
                    s[i * N + j] = 0.7f * s[i * N + j] + 1e-6f * fabsf(Cm.h[(size_t)i * ldc + j]);
                }
            char what[64];
            snprintf(what, sizeof what, "gemm tA=%d tB=%d", tA, tB);
            check_elems(what, gw, cw, s, (size_t)M * N, TOL_GEMM_BF16);
            for (int i = 0; i < M; i++)
                for (int j = N; j < ldc; j++)
                    CHECK(g[(size_t)i * ldc + j] == Cm.h[(size_t)i * ldc + j], "gemm wrote outside the M x N window");
            free(g), free(s), free(gw), free(cw);
            pair_free(C, G, &A), pair_free(C, G, &B), pair_free(C, G, &Cm);
        }
    backend_free(C);
    gpu_free(G);
}

// ---- LayerNorm ------------------------------------------------------------------------------------

TEST(layernorm_fwd_bwd) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    const int shapes[][2] = {{2 * 257, 384}, {8 * 50, 384}, {2 * 261, 1024}, {37, 1536}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int rows = shapes[k][0], D = shapes[k][1];
        printf(" layernorm rows=%d D=%d\n", rows, D);
        Rng r = rng_make(21, k, 0, 0);
        Pair x = pair_new(C, G, (size_t)rows * D, 0.5f, 2, &r, 0);
        Pair w = pair_new(C, G, D, 1, 0.3f, &r, 0), b = pair_new(C, G, D, 0, 0.3f, &r, 0);
        Pair out = pair_new(C, G, x.n, 0, 0, &r, 0);
        Pair mean = pair_new(C, G, rows, 0, 0, &r, 0), rstd = pair_new(C, G, rows, 0, 0, &r, 0);
        C->layernorm_fwd(C, out.c, mean.c, rstd.c, x.c, w.c, b.c, rows, D, 1e-6f);
        G->layernorm_fwd(G, out.g, mean.g, rstd.g, x.g, w.g, b.g, rows, D, 1e-6f);
        float *go = pair_gpu_result(G, &out), *gm = pair_gpu_result(G, &mean), *gr = pair_gpu_result(G, &rstd);
        check_elems("layernorm_fwd.out", go, out.c, NULL, out.n, TOL_FP32);
        check_elems("layernorm_fwd.mean", gm, mean.c, NULL, mean.n, TOL_FP32);
        check_elems("layernorm_fwd.rstd", gr, rstd.c, NULL, rstd.n, TOL_FP32);
        // backward from the CPU's saved statistics (so that only backward is compared), accumulating
        Pair dy = pair_new(C, G, x.n, 0, 1, &r, 0), dx = pair_new(C, G, x.n, 0, 0.5f, &r, 0);
        Pair dw = pair_new(C, G, D, 0, 0.5f, &r, 0), db = pair_new(C, G, D, 0, 0.5f, &r, 0);
        G->to_device(G, mean.g, mean.c, sizeof(float) * rows);
        G->to_device(G, rstd.g, rstd.c, sizeof(float) * rows);
        C->layernorm_bwd(C, dx.c, dw.c, db.c, dy.c, x.c, mean.c, rstd.c, w.c, rows, D);
        G->layernorm_bwd(G, dx.g, dw.g, db.g, dy.g, x.g, mean.g, rstd.g, w.g, rows, D);
        float *gdx = pair_gpu_result(G, &dx), *gdw = pair_gpu_result(G, &dw), *gdb = pair_gpu_result(G, &db);
        check_elems("layernorm_bwd.dx (+=)", gdx, dx.c, NULL, dx.n, TOL_FP32);
        check_elems("layernorm_bwd.dw (+=)", gdw, dw.c, NULL, dw.n, TOL_FP32);
        check_elems("layernorm_bwd.db (+=)", gdb, db.c, NULL, db.n, TOL_FP32);
        free(go), free(gm), free(gr), free(gdx), free(gdw), free(gdb);
        Pair *all[] = {&x, &w, &b, &out, &mean, &rstd, &dy, &dx, &dw, &db};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
    }
    backend_free(C);
    gpu_free(G);
}

// ---- activations ----------------------------------------------------------------------------------

TEST(gelu_swiglu_fwd_bwd) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(31, 0, 0, 0);
    const int rows = 8 * 50, Hf = 1536, Hs = 1024; // ViT-S MLP hidden; a SwiGLU half
    Pair x = pair_new(C, G, (size_t)rows * Hf, 0, 2, &r, 0), out = pair_new(C, G, x.n, 0, 0, &r, 0);
    Pair dy = pair_new(C, G, x.n, 0, 1, &r, 0), dx = pair_new(C, G, x.n, 0, 0, &r, 0);
    C->gelu_fwd(C, out.c, x.c, x.n), G->gelu_fwd(G, out.g, x.g, x.n);
    C->gelu_bwd(C, dx.c, dy.c, x.c, x.n), G->gelu_bwd(G, dx.g, dy.g, x.g, x.n);
    float *g1 = pair_gpu_result(G, &out), *g2 = pair_gpu_result(G, &dx);
    check_elems("gelu_fwd", g1, out.c, NULL, out.n, TOL_FP32);
    check_elems("gelu_bwd", g2, dx.c, NULL, dx.n, TOL_FP32);
    free(g1), free(g2);
    Pair in = pair_new(C, G, (size_t)rows * 2 * Hs, 0, 2, &r, 0), so = pair_new(C, G, (size_t)rows * Hs, 0, 0, &r, 0);
    Pair sdy = pair_new(C, G, so.n, 0, 1, &r, 0), sdin = pair_new(C, G, in.n, 0, 0, &r, 0);
    C->swiglu_fwd(C, so.c, in.c, rows, Hs), G->swiglu_fwd(G, so.g, in.g, rows, Hs);
    C->swiglu_bwd(C, sdin.c, sdy.c, in.c, rows, Hs), G->swiglu_bwd(G, sdin.g, sdy.g, in.g, rows, Hs);
    g1 = pair_gpu_result(G, &so), g2 = pair_gpu_result(G, &sdin);
    check_elems("swiglu_fwd", g1, so.c, NULL, so.n, TOL_FP32);
    check_elems("swiglu_bwd", g2, sdin.c, NULL, sdin.n, TOL_FP32);
    free(g1), free(g2);
    Pair *all[] = {&x, &out, &dy, &dx, &in, &so, &sdy, &sdin};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
    backend_free(C);
    gpu_free(G);
}

// ---- attention ------------------------------------------------------------------------------------

static void attention_case(Backend *C, Backend *G, int B, int T, int H, int Dh, int fp32) {
    printf(" attention B=%d T=%d H=%d Dh=%d (%s GEMMs)\n", B, T, H, Dh, fp32 ? "fp32" : "bf16");
    Rng r = rng_make(41, (uint64_t)B, (uint64_t)T, (uint64_t)H);
    const int D = H * Dh;
    // Both save the probabilities, one T x T block per (image, head); the GPU pads each block (16-byte
    // aligned blocks for its batched GEMMs, blk elements apart) and, with bf16 GEMMs, stores them in bf16
    // (then its size in floats is half the element count).
    const size_t ns = C->attention_saved_floats(C, B, T, H, Dh), ns_g = G->attention_saved_floats(G, B, T, H, Dh);
    const size_t TT = (size_t)T * T, BH = (size_t)B * H;
    const int p_bf16 = ns_g < BH * TT;
    const size_t blk = p_bf16 ? (BH * TT + 7 * BH) / BH / 8 * 8 : ns_g / BH; // the GPU's rounding of T*T
    CHECK(ns == BH * TT && blk >= TT && (p_bf16 ? (BH * blk + 1) / 2 : BH * blk) == ns_g,
          "saved sizes: cpu %zu gpu %zu (bf16 %d)", ns, ns_g, p_bf16);
    if (!fp32) CHECK(p_bf16 || getenv("DINO_CUDA_PROBS_FP32") || emulating(), "bf16 GEMMs but fp32 probabilities");
    Pair qkv = pair_new(C, G, (size_t)B * T * 3 * D, 0, 1, &r, 0);
    Pair out = pair_new(C, G, (size_t)B * T * D, 0, 0, &r, 0), saved = pair_new(C, G, ns, 0, 0, &r, 0);
    float *saved_g = G->alloc(G, sizeof(float) * ns_g);
    C->attention_fwd(C, out.c, saved.c, qkv.c, B, T, H, Dh);
    G->attention_fwd(G, out.g, saved_g, qkv.g, B, T, H, Dh);
    float *go = pair_gpu_result(G, &out), *gs = dino_malloc(sizeof(float) * ns), *gpad = dino_malloc(sizeof(float) * ns_g);
    G->to_host(G, gpad, saved_g, sizeof(float) * ns_g);
    const uint16_t *gpad16 = (const uint16_t *)gpad;
    for (size_t bh = 0; bh < BH; bh++)
        for (size_t j = 0; j < TT; j++) {
            if (!p_bf16) {
                gs[bh * TT + j] = gpad[bh * blk + j];
                continue;
            }
            uint32_t bits = (uint32_t)gpad16[bh * blk + j] << 16;
            memcpy(&gs[bh * TT + j], &bits, 4);
        }
    if (fp32) {
        check_elems("attention_fwd.out", go, out.c, NULL, out.n, TOL_FP32);
        check_elems("attention_fwd.probs", gs, saved.c, NULL, saved.n, TOL_FP32);
    } else {
        check_norm("attention_fwd.out", go, out.c, out.n, 8 * U_BF16);
        check_norm("attention_fwd.probs", gs, saved.c, saved.n, 8 * U_BF16);
    }
    // backward from the CPU's probabilities: only backward is compared
    Pair dout = pair_new(C, G, out.n, 0, 1, &r, 0), dqkv = pair_new(C, G, qkv.n, 9, 0, &r, 0);
    uint16_t *gpadw = (uint16_t *)gpad;
    for (size_t bh = 0; bh < BH; bh++)
        for (size_t j = 0; j < TT; j++) {
            float x = saved.c[bh * TT + j];
            if (!p_bf16) {
                gpad[bh * blk + j] = x;
                continue;
            }
            uint32_t bits;
            x = bf16_round(x);
            memcpy(&bits, &x, 4);
            gpadw[bh * blk + j] = (uint16_t)(bits >> 16);
        }
    G->to_device(G, saved_g, gpad, sizeof(float) * ns_g);
    C->attention_bwd(C, dqkv.c, dout.c, qkv.c, saved.c, B, T, H, Dh);
    G->attention_bwd(G, dqkv.g, dout.g, qkv.g, saved_g, B, T, H, Dh);
    float *gd = pair_gpu_result(G, &dqkv);
    if (fp32) check_elems("attention_bwd.dqkv", gd, dqkv.c, NULL, dqkv.n, TOL_FP32);
    else check_norm("attention_bwd.dqkv", gd, dqkv.c, dqkv.n, 16 * U_BF16);
    free(go), free(gs), free(gd), free(gpad);
    G->release(G, saved_g);
    Pair *all[] = {&qkv, &out, &saved, &dout, &dqkv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
}

TEST(attention_fp32_gemms) {
    Backend *G = gpu_backend(CUDA_GEMM_FP32), *C = backend_cpu_new();
    attention_case(C, G, 2, 257, 6, 64, 1);     // ViT-S/14 global crops
    attention_case(C, G, 8, 54, 6, 64, 1);      // ViT-S/14 local crops with 4 registers
    attention_case(C, G, 1, 261, 16, 64, 1);    // ViT-L/14 global crop with 4 registers
    attention_case(C, G, 3, 5, 2, 3, 1);        // tiny odd sizes
    backend_free(C);
    gpu_free(G);
}

TEST(attention_bf16_gemms) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
#ifdef DINO_HAVE_CUDA
    if (!emulating()) backend_cuda_set_attention(G, CUDA_ATTENTION_GEMM); // the flash path: flash_attention_*
#endif
    attention_case(C, G, 2, 257, 6, 64, 0);
    attention_case(C, G, 8, 54, 6, 64, 0);
    attention_case(C, G, 1, 261, 16, 64, 0);
    backend_free(C);
    gpu_free(G);
}

// ---- fused (flash) attention --------------------------------------------------------------------------
// The default attention of the cuda backend with bf16 GEMMs (model/cuda/attention_flash.cu). It rounds to
// bf16 where the GEMM path's cuBLAS calls do (Q, K for the scores; P, V; P, dO; dO, V; dS, K; dS, Q), with
// fp32 softmax statistics and accumulators, so the GEMM path's bounds hold: normwise 8u forward, 16u
// backward. Its saved state is checked too: LSE against the exact log-sum-exp of the scores (fp64 on the
// host), O against the cpu output.

#ifdef DINO_HAVE_CUDA
// dqkv's three parts (Q, K, V gradients) separately: one wrong part cannot hide behind the others
static void check_dqkv_parts(const char *what, const float *g, const float *c, int B, int T, int D, double tol) {
    const size_t n = (size_t)B * T * D;
    float *gp = dino_malloc(sizeof(float) * n), *cp = dino_malloc(sizeof(float) * n);
    static const char *part[3] = {"dq", "dk", "dv"};
    for (int p = 0; p < 3; p++) {
        for (size_t r = 0; r < (size_t)B * T; r++)
            for (int j = 0; j < D; j++) {
                gp[r * D + j] = g[r * 3 * D + (size_t)p * D + j];
                cp[r * D + j] = c[r * 3 * D + (size_t)p * D + j];
            }
        char name[96];
        snprintf(name, sizeof name, "%s.%s", what, part[p]);
        check_norm(name, gp, cp, n, tol);
    }
    free(gp), free(cp);
}

static void flash_case(Backend *C, Backend *G, int B, int T, int H, int Dh) {
    printf(" flash attention B=%d T=%d H=%d Dh=%d\n", B, T, H, Dh);
    CHECK(backend_cuda_attention_is_flash(G, Dh), "the flash path does not apply to Dh=%d", Dh);
    Rng r = rng_make(43, (uint64_t)B, (uint64_t)T, (uint64_t)(H * 1000 + Dh));
    const int D = H * Dh;
    const size_t ns = C->attention_saved_floats(C, B, T, H, Dh), ns_g = G->attention_saved_floats(G, B, T, H, Dh);
    const size_t n_lse = attention_flash_lse_floats(B, T, H);
    // LSE + bf16 O: B H T (1 + Dh/2) floats against the GEMM path's B H T^2 / 2 (smaller once T > Dh + 2)
    CHECK(ns_g == attention_saved_floats_flash(B, T, H, Dh) && n_lse >= (size_t)B * H * T &&
              ns_g == n_lse + ((size_t)B * T * D + 1) / 2,
          "flash saved floats %zu (cpu probabilities %zu)", ns_g, ns);
    Pair qkv = pair_new(C, G, (size_t)B * T * 3 * D, 0, 1, &r, 0);
    Pair out = pair_new(C, G, (size_t)B * T * D, 0, 0, &r, 0), saved = pair_new(C, G, ns, 0, 0, &r, 0);
    float *saved_g = G->alloc(G, sizeof(float) * ns_g);
    C->attention_fwd(C, out.c, saved.c, qkv.c, B, T, H, Dh);
    G->attention_fwd(G, out.g, saved_g, qkv.g, B, T, H, Dh);
    float *go = pair_gpu_result(G, &out), *gs = dino_malloc(sizeof(float) * ns_g);
    G->to_host(G, gs, saved_g, sizeof(float) * ns_g);
    check_norm("flash_fwd.out", go, out.c, out.n, 8 * U_BF16);
    // saved: LSE (base 2) and O in bf16
    const float scale = 1.0f / sqrtf((float)Dh);
    float *lse_c = dino_malloc(sizeof(float) * (size_t)B * H * T), *lse_g = dino_malloc(sizeof(float) * (size_t)B * H * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const float *q = qkv.h + ((size_t)b * T + i) * 3 * D + (size_t)h * Dh;
                double mx = -INFINITY, sum = 0, *s = dino_malloc(sizeof(double) * T);
                for (int j = 0; j < T; j++) {
                    const float *k = qkv.h + ((size_t)b * T + j) * 3 * D + D + (size_t)h * Dh;
                    double d = 0;
                    for (int c = 0; c < Dh; c++) d += (double)q[c] * k[c];
                    s[j] = d * scale;
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int j = 0; j < T; j++) sum += exp(s[j] - mx);
                free(s);
                const size_t e = ((size_t)b * H + h) * T + i;
                lse_c[e] = (float)(mx + log(sum));
                lse_g[e] = gs[e] * (float)M_LN2;
            }
    check_norm("flash_fwd.saved_lse", lse_g, lse_c, (size_t)B * H * T, 8 * U_BF16);
    float *o_g = dino_malloc(sizeof(float) * out.n);
    const uint16_t *o16 = (const uint16_t *)(gs + n_lse);
    for (size_t i = 0; i < out.n; i++) {
        uint32_t bits = (uint32_t)o16[i] << 16;
        memcpy(&o_g[i], &bits, 4);
    }
    check_norm("flash_fwd.saved_o", o_g, out.c, out.n, 8 * U_BF16);
    // backward, each from its own saved state
    Pair dout = pair_new(C, G, out.n, 0, 1, &r, 0), dqkv = pair_new(C, G, qkv.n, 9, 0, &r, 0);
    C->attention_bwd(C, dqkv.c, dout.c, qkv.c, saved.c, B, T, H, Dh);
    G->attention_bwd(G, dqkv.g, dout.g, qkv.g, saved_g, B, T, H, Dh);
    float *gd = pair_gpu_result(G, &dqkv);
    check_dqkv_parts("flash_bwd", gd, dqkv.c, B, T, D, 16 * U_BF16);
    free(go), free(gs), free(gd), free(lse_c), free(lse_g), free(o_g);
    G->release(G, saved_g);
    Pair *all[] = {&qkv, &out, &saved, &dout, &dqkv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
}
#endif

TEST(flash_attention_dh64) {
    if (emulating()) test_skip("the flash path is a cuda backend kernel (no CPU emulation)");
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
#ifdef DINO_HAVE_CUDA
    flash_case(C, G, 2, 37, 2, 64);  // ViT-S local crop (6x6 + cls): one KV tile, most of it padding
    flash_case(C, G, 1, 65, 2, 64);  // one live row in the last query tile, one live column in the last KV tile
    flash_case(C, G, 1, 261, 2, 64); // ViT-L global crop with 4 registers
#endif
    backend_free(C);
    gpu_free(G);
}

TEST(flash_attention_dh128) {
    if (emulating()) test_skip("the flash path is a cuda backend kernel (no CPU emulation)");
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
#ifdef DINO_HAVE_CUDA
    flash_case(C, G, 1, 37, 2, 128);
    flash_case(C, G, 1, 65, 1, 128);
    flash_case(C, G, 1, 261, 1, 128);
#endif
    backend_free(C);
    gpu_free(G);
}

TEST(flash_attention_dh80_dh96_small) {
    if (emulating()) test_skip("the flash path is a cuda backend kernel (no CPU emulation)");
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
#ifdef DINO_HAVE_CUDA
    flash_case(C, G, 1, 37, 2, 80); // the last group of O's columns is half full
    flash_case(C, G, 1, 261, 1, 80);
    flash_case(C, G, 1, 65, 1, 96);
    flash_case(C, G, 2, 17, 3, 16); // the SSL-step test's tiny model (D 48, 3 heads): O's group is half full
    flash_case(C, G, 1, 33, 2, 32);
    flash_case(C, G, 3, 1, 2, 16); // one token: one live row and column (dq, dk are 0: compared absolutely)
    flash_case(C, G, 2, 2, 1, 64);
#endif
    backend_free(C);
    gpu_free(G);
}

// Flash against the batched-GEMM path on the same backend (the A/B switch), and flash reruns bit for bit
// (no atomics: every output element has one writer, in a fixed order), also from unaligned inputs.
TEST(flash_attention_matches_gemm_path) {
    if (emulating()) test_skip("the flash path is a cuda backend kernel (no CPU emulation)");
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
#ifdef DINO_HAVE_CUDA
    const int B = 2, T = 50, H = 3, Dh = 64, D = H * Dh; // ViT-S/14 local crops (7x7 + cls), 3 heads
    Rng r = rng_make(47, 0, 0, 0);
    const size_t nq = (size_t)B * T * 3 * D, no = (size_t)B * T * D;
    float *qkv_h = dino_malloc(sizeof(float) * nq), *dout_h = dino_malloc(sizeof(float) * no);
    for (size_t i = 0; i < nq; i++) qkv_h[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < no; i++) dout_h[i] = (float)rng_normal(&r);
    float *qkv = dual_upload(G, qkv_h, sizeof(float) * nq), *dout = dual_upload(G, dout_h, sizeof(float) * no);
    // run 3 reads qkv and dO one float past a 16-byte boundary: the tile loads' scalar path, same bits
    float *qkv_odd = G->alloc(G, sizeof(float) * (nq + 1)), *dout_odd = G->alloc(G, sizeof(float) * (no + 1));
    G->to_device(G, qkv_odd + 1, qkv_h, sizeof(float) * nq);
    G->to_device(G, dout_odd + 1, dout_h, sizeof(float) * no);
    float *res_out[4], *res_dqkv[4];
    const CudaAttention path[4] = {CUDA_ATTENTION_GEMM, CUDA_ATTENTION_FLASH, CUDA_ATTENTION_FLASH, CUDA_ATTENTION_FLASH};
    for (int run = 0; run < 4; run++) {
        const float *in = run == 3 ? qkv_odd + 1 : qkv, *din = run == 3 ? dout_odd + 1 : dout;
        backend_cuda_set_attention(G, path[run]);
        CHECK(backend_cuda_attention_is_flash(G, Dh) == (path[run] == CUDA_ATTENTION_FLASH), "the switch");
        const size_t ns = G->attention_saved_floats(G, B, T, H, Dh);
        float *out = G->alloc(G, sizeof(float) * no), *saved = G->alloc(G, sizeof(float) * ns);
        float *dqkv = G->alloc(G, sizeof(float) * nq);
        G->attention_fwd(G, out, saved, in, B, T, H, Dh);
        G->attention_bwd(G, dqkv, din, in, saved, B, T, H, Dh);
        res_out[run] = dino_malloc(sizeof(float) * no), res_dqkv[run] = dino_malloc(sizeof(float) * nq);
        G->to_host(G, res_out[run], out, sizeof(float) * no);
        G->to_host(G, res_dqkv[run], dqkv, sizeof(float) * nq);
        G->release(G, out), G->release(G, saved), G->release(G, dqkv);
    }
    check_norm("flash vs gemm: out", res_out[1], res_out[0], no, 8 * U_BF16);
    check_dqkv_parts("flash vs gemm", res_dqkv[1], res_dqkv[0], B, T, D, 16 * U_BF16);
    CHECK(memcmp(res_out[1], res_out[2], sizeof(float) * no) == 0 &&
              memcmp(res_dqkv[1], res_dqkv[2], sizeof(float) * nq) == 0,
          "flash attention is not bit-identical on a rerun");
    CHECK(memcmp(res_out[1], res_out[3], sizeof(float) * no) == 0 &&
              memcmp(res_dqkv[1], res_dqkv[3], sizeof(float) * nq) == 0,
          "flash attention on inputs that are not 16-byte aligned differs");
    for (int run = 0; run < 4; run++) free(res_out[run]), free(res_dqkv[run]);
    G->release(G, qkv), G->release(G, dout), G->release(G, qkv_odd), G->release(G, dout_odd);
    free(qkv_h), free(dout_h);
#endif
    gpu_free(G);
}

// Times both paths (forward, backward) at ViT-L/14 shapes on a GPU: the A/B of the first GPU run
// (tests.log of tools/gpu_check.sh), and checks they agree. Under the layer a tiny shape, once.
TEST(attention_speed_flash_vs_gemm) {
#ifndef DINO_HAVE_CUDA
    test_skip("built without CUDA (no nvcc found)");
#else
    if (emulating()) test_skip("the CPU emulation has no device to time");
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
#ifdef DINO_CUDAEMU
    const int shapes[][4] = {{2, 37, 2, 64}}, iters = 1; // B, T, H, Dh
#else
    const int shapes[][4] = {{64, 261, 16, 64}, {256, 54, 16, 64}, {64, 257, 6, 64}, {32, 261, 8, 128}}, iters = 10;
#endif
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int B = shapes[si][0], T = shapes[si][1], H = shapes[si][2], Dh = shapes[si][3], D = H * Dh;
        const size_t nq = (size_t)B * T * 3 * D, no = (size_t)B * T * D;
        Rng r = rng_make(53, (uint64_t)B, (uint64_t)T, (uint64_t)Dh);
        float *qkv_h = dino_malloc(sizeof(float) * nq), *dout_h = dino_malloc(sizeof(float) * no);
        for (size_t i = 0; i < nq; i++) qkv_h[i] = (float)rng_normal(&r);
        for (size_t i = 0; i < no; i++) dout_h[i] = (float)rng_normal(&r);
        float *qkv = dual_upload(G, qkv_h, sizeof(float) * nq), *dout = dual_upload(G, dout_h, sizeof(float) * no);
        float *res[2];
        const double flops_fwd = 4.0 * B * H * (double)T * T * Dh; // QK^T and PV
        for (int pth = 0; pth < 2; pth++) {
            backend_cuda_set_attention(G, pth ? CUDA_ATTENTION_FLASH : CUDA_ATTENTION_GEMM);
            const size_t ns = G->attention_saved_floats(G, B, T, H, Dh);
            float *out = G->alloc(G, sizeof(float) * no), *saved = G->alloc(G, sizeof(float) * ns);
            float *dqkv = G->alloc(G, sizeof(float) * nq);
            G->attention_fwd(G, out, saved, qkv, B, T, H, Dh); // warm-up
            G->attention_bwd(G, dqkv, dout, qkv, saved, B, T, H, Dh);
            G->sync(G);
            double t0 = dino_wall_s();
            for (int it = 0; it < iters; it++) G->attention_fwd(G, out, saved, qkv, B, T, H, Dh);
            G->sync(G);
            double t1 = dino_wall_s();
            for (int it = 0; it < iters; it++) G->attention_bwd(G, dqkv, dout, qkv, saved, B, T, H, Dh);
            G->sync(G);
            double t2 = dino_wall_s();
            const double f = (t1 - t0) / iters, bw = (t2 - t1) / iters;
            printf("  attention %-5s B=%d T=%d H=%d Dh=%d: fwd %.3f ms (%.1f TFLOP/s), bwd %.3f ms (%.1f TFLOP/s), "
                   "saved %.1f MB\n", pth ? "flash" : "gemm", B, T, H, Dh, 1e3 * f, flops_fwd / f * 1e-12, 1e3 * bw,
                   2.5 * flops_fwd / bw * 1e-12, 4e-6 * ns);
            res[pth] = dino_malloc(sizeof(float) * nq);
            G->to_host(G, res[pth], dqkv, sizeof(float) * nq);
            G->release(G, out), G->release(G, saved), G->release(G, dqkv);
        }
        check_dqkv_parts("speed case: flash vs gemm", res[1], res[0], B, T, D, 16 * U_BF16);
        free(res[0]), free(res[1]), free(qkv_h), free(dout_h);
        G->release(G, qkv), G->release(G, dout);
    }
    gpu_free(G);
#endif
}

// DINO_ATTENTION picks the path at the backend's creation; a bad value is refused by name; the flash path
// applies only with bf16 GEMMs and a head dim it has kernels for (the GEMM path otherwise, with its size).
TEST(attention_switch_env_and_fallback) {
#ifndef DINO_HAVE_CUDA
    test_skip("built without CUDA (no nvcc found)");
#else
    if (emulating()) test_skip("the flash path is a cuda backend kernel (no CPU emulation)");
    if (dino_cuda_device_count() == 0) test_skip("no CUDA device on this machine");
    char err[DINO_ERRLEN] = "";
    const char *old = getenv("DINO_ATTENTION");
    char *saved_env = old ? strdup(old) : NULL;
    setenv("DINO_ATTENTION", "fused", 1);
    Backend *be = backend_cuda_new(0, err);
    CHECK(be == NULL && strstr(err, "DINO_ATTENTION=fused") && strstr(err, "flash") && strstr(err, "gemm"),
          "a bad DINO_ATTENTION: '%s'", err);
    setenv("DINO_ATTENTION", "gemm", 1);
    be = backend_cuda_new(0, err);
    CHECK(be && !backend_cuda_attention_is_flash(be, 64), "DINO_ATTENTION=gemm: %s", err);
    if (be) backend_cuda_free(be);
    unsetenv("DINO_ATTENTION");
    be = backend_cuda_new(0, err);
    CHECK(be != NULL, "%s", err);
    if (be) {
        CHECK(backend_cuda_attention_is_flash(be, 64) && backend_cuda_attention_is_flash(be, 128) &&
                  !backend_cuda_attention_is_flash(be, 48) && !backend_cuda_attention_is_flash(be, 3),
              "flash by default for the head dims it has kernels for, only those");
        CHECK(be->attention_saved_floats(be, 2, 257, 6, 64) == attention_saved_floats_flash(2, 257, 6, 64) &&
                  be->attention_saved_floats(be, 2, 257, 6, 48) == attention_saved_floats_cuda(2, 257, 6, 1),
              "saved sizes follow the path");
        backend_cuda_set_gemm_precision(be, CUDA_GEMM_FP32);
        CHECK(!backend_cuda_attention_is_flash(be, 64), "fp32 GEMMs keep the (fp32) GEMM path");
        backend_cuda_free(be);
    }
    if (saved_env) setenv("DINO_ATTENTION", saved_env, 1), free(saved_env);
#endif
}

// ---- rotary position embedding (the DINOv3 ViT) ----------------------------------------------------

static void rope_case(Backend *C, Backend *G, int B, int crop, int p, int R, int H, int Dh, Rng *r) {
    const int g = crop / p, N = g * g, T = 1 + R + N, D = H * Dh;
    printf(" rope B=%d N=%d R=%d H=%d Dh=%d\n", B, N, R, H, Dh);
    const RopeConfig rc = {.base = 100.0, .normalize = ROPE_NORMALIZE_SEPARATE, .rescale = 2.0};
    const RopeAug aug = rope_draw_aug(&rc, r);
    float *sin_h = dino_malloc(sizeof(float) * (size_t)N * Dh), *cos_h = dino_malloc(sizeof(float) * (size_t)N * Dh);
    rope_tables(&rc, Dh, g, g, &aug, sin_h, cos_h);
    float *sc = dual_upload(C, sin_h, sizeof(float) * (size_t)N * Dh), *cc = dual_upload(C, cos_h, sizeof(float) * (size_t)N * Dh);
    float *sg = dual_upload(G, sin_h, sizeof(float) * (size_t)N * Dh), *cg = dual_upload(G, cos_h, sizeof(float) * (size_t)N * Dh);
    Pair qkv = pair_new(C, G, (size_t)B * T * 3 * D, 0, 1, r, 0);
    C->rope_fwd(C, qkv.c, sc, cc, B, T, N, H, Dh), G->rope_fwd(G, qkv.g, sg, cg, B, T, N, H, Dh);
    float *out = pair_gpu_result(G, &qkv);
    check_elems("rope_fwd (in place)", out, qkv.c, NULL, qkv.n, TOL_FP32);
    free(out);
    C->rope_bwd(C, qkv.c, sc, cc, B, T, N, H, Dh), G->rope_bwd(G, qkv.g, sg, cg, B, T, N, H, Dh);
    out = pair_gpu_result(G, &qkv);
    check_elems("rope_bwd (in place)", out, qkv.c, NULL, qkv.n, TOL_FP32);
    free(out);
    C->release(C, sc), C->release(C, cc), G->release(G, sg), G->release(G, cg);
    free(sin_h), free(cos_h);
    pair_free(C, G, &qkv);
}

TEST(rope_fwd_bwd) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(47, 0, 0, 0);
    rope_case(C, G, 2, 224, 16, 4, 16, 64, &r); // ViT-L/16 global crops with 4 storage tokens
    rope_case(C, G, 8, 96, 16, 4, 16, 64, &r);  // its local crops
    rope_case(C, G, 3, 12, 4, 0, 2, 8, &r);     // tiny, no storage tokens
    backend_free(C);
    gpu_free(G);
}

// ---- ViT plumbing ---------------------------------------------------------------------------------

TEST(im2col_tokens_fwd_bwd) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(51, 0, 0, 0);
    const int crops[] = {224, 98}, Bs[] = {2, 8};
    for (int k = 0; k < 2; k++) {
        int B = Bs[k], S = crops[k], p = 14, N = (S / p) * (S / p), R = 4, D = 384, T = 1 + R + N;
        printf(" im2col/tokens B=%d crop=%d N=%d R=%d D=%d\n", B, S, N, R, D);
        Pair img = pair_new(C, G, (size_t)B * 3 * S * S, 0, 1, &r, 0);
        Pair cols = pair_new(C, G, (size_t)B * N * 3 * p * p, 0, 0, &r, 0);
        C->im2col(C, cols.c, img.c, B, 3, S, S, p), G->im2col(G, cols.g, img.g, B, 3, S, S, p);
        float *g = pair_gpu_result(G, &cols);
        check_elems("im2col (bit-exact)", g, cols.c, NULL, cols.n, 0);
        free(g);
        // tokens with registers and an iBOT mask (about 40% of patches)
        uint8_t *mask = dino_malloc((size_t)B * N);
        for (int i = 0; i < B * N; i++) mask[i] = rng_uniform(&r) < 0.4;
        uint8_t *mc = dual_upload(C, mask, (size_t)B * N), *mg = dual_upload(G, mask, (size_t)B * N);
        Pair patch = pair_new(C, G, (size_t)B * N * D, 0, 1, &r, 0), cls = pair_new(C, G, D, 0, 1, &r, 0);
        Pair reg = pair_new(C, G, (size_t)R * D, 0, 1, &r, 0), pos = pair_new(C, G, (size_t)(1 + N) * D, 0, 1, &r, 0);
        Pair mt = pair_new(C, G, D, 0, 1, &r, 0), x = pair_new(C, G, (size_t)B * T * D, 0, 0, &r, 0);
        for (int masked = 0; masked < 2; masked++) {
            C->tokens_fwd(C, x.c, patch.c, cls.c, reg.c, pos.c, mt.c, masked ? mc : NULL, B, N, R, D);
            G->tokens_fwd(G, x.g, patch.g, cls.g, reg.g, pos.g, mt.g, masked ? mg : NULL, B, N, R, D);
            g = pair_gpu_result(G, &x);
            check_elems(masked ? "tokens_fwd masked (bit-exact)" : "tokens_fwd (bit-exact)", g, x.c, NULL, x.n, 0);
            free(g);
            Pair dx = pair_new(C, G, x.n, 0, 1, &r, 0), dpatch = pair_new(C, G, patch.n, 5, 0, &r, 0);
            Pair dcls = pair_new(C, G, D, 0, 1, &r, 0), dreg = pair_new(C, G, reg.n, 0, 1, &r, 0);
            Pair dpos = pair_new(C, G, pos.n, 0, 1, &r, 0), dmt = pair_new(C, G, D, 0, 1, &r, 0);
            C->tokens_bwd(C, dpatch.c, dcls.c, dreg.c, dpos.c, dmt.c, dx.c, masked ? mc : NULL, B, N, R, D);
            G->tokens_bwd(G, dpatch.g, dcls.g, dreg.g, dpos.g, dmt.g, dx.g, masked ? mg : NULL, B, N, R, D);
            Pair *outs[] = {&dpatch, &dcls, &dreg, &dpos, &dmt};
            const char *names[] = {"tokens_bwd.dpatch", "tokens_bwd.dcls (+=)", "tokens_bwd.dreg (+=)",
                                   "tokens_bwd.dpos (+=)", "tokens_bwd.dmask_token (+=)"};
            for (int i = 0; i < 5; i++) {
                g = pair_gpu_result(G, outs[i]);
                check_elems(names[i], g, outs[i]->c, NULL, outs[i]->n, i == 0 ? 0 : TOL_FP32);
                free(g);
            }
            Pair *tmp[] = {&dx, &dpatch, &dcls, &dreg, &dpos, &dmt};
            for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) pair_free(C, G, tmp[i]);
        }
        free(mask);
        C->release(C, mc), G->release(G, mg);
        Pair *all[] = {&img, &cols, &patch, &cls, &reg, &pos, &mt, &x};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
    }
    backend_free(C);
    gpu_free(G);
}

TEST(rows_and_residual_fwd_bwd) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(61, 0, 0, 0);
    const int B = 16, S = 11, T = 261, D = 384; // stochastic depth keeps S of B images
    const size_t row = (size_t)T * D;
    int idx_h[16];
    rng_subset_sorted(&r, idx_h, S, B);
    int *ic = dual_upload(C, idx_h, sizeof idx_h), *ig = dual_upload(G, idx_h, sizeof idx_h);
    Pair x = pair_new(C, G, (size_t)B * row, 0, 1, &r, 0), sub = pair_new(C, G, (size_t)S * row, 0, 0, &r, 0);
    C->gather_rows(C, sub.c, x.c, ic, S, row), G->gather_rows(G, sub.g, x.g, ig, S, row);
    float *g = pair_gpu_result(G, &sub);
    check_elems("gather_rows (bit-exact)", g, sub.c, NULL, sub.n, 0);
    free(g);
    Pair in = pair_new(C, G, sub.n, 0, 1, &r, 0);
    for (int use_idx = 0; use_idx < 2; use_idx++) {
        C->scatter_add_rows(C, x.c, in.c, use_idx ? ic : NULL, S, row);
        G->scatter_add_rows(G, x.g, in.g, use_idx ? ig : NULL, S, row);
    }
    g = pair_gpu_result(G, &x);
    check_elems("scatter_add_rows (bit-exact)", g, x.c, NULL, x.n, 0);
    free(g);
    Pair gamma = pair_new(C, G, D, 0.3f, 0.1f, &r, 0), br = pair_new(C, G, sub.n, 0, 1, &r, 0);
    const float scale = (float)B / S;
    for (int variant = 0; variant < 3; variant++) { // subset + gamma, subset without gamma, all rows
        const int *i_c = variant < 2 ? ic : NULL, *i_g = variant < 2 ? ig : NULL, n = variant < 2 ? S : B;
        const float *gc = variant == 1 ? NULL : gamma.c, *gg = variant == 1 ? NULL : gamma.g;
        Pair brn = pair_new(C, G, (size_t)n * row, 0, 1, &r, 0);
        C->residual_fwd(C, x.c, brn.c, gc, i_c, n, T, D, scale);
        G->residual_fwd(G, x.g, brn.g, gg, i_g, n, T, D, scale);
        g = pair_gpu_result(G, &x);
        check_elems("residual_fwd", g, x.c, NULL, x.n, TOL_FP32);
        free(g);
        Pair dx = pair_new(C, G, x.n, 0, 1, &r, 0), dbr = pair_new(C, G, brn.n, 4, 0, &r, 0);
        Pair dgamma = pair_new(C, G, D, 0, 0.2f, &r, 0);
        C->residual_bwd(C, dbr.c, variant == 1 ? NULL : dgamma.c, dx.c, brn.c, gc, i_c, n, T, D, scale);
        G->residual_bwd(G, dbr.g, variant == 1 ? NULL : dgamma.g, dx.g, brn.g, gg, i_g, n, T, D, scale);
        g = pair_gpu_result(G, &dbr);
        check_elems("residual_bwd.dbr", g, dbr.c, NULL, dbr.n, TOL_FP32);
        free(g);
        g = pair_gpu_result(G, &dgamma);
        check_elems("residual_bwd.dgamma (+=)", g, dgamma.c, NULL, D, TOL_FP32);
        free(g);
        pair_free(C, G, &dx), pair_free(C, G, &dbr), pair_free(C, G, &dgamma), pair_free(C, G, &brn);
    }
    C->release(C, ic), G->release(G, ig);
    Pair *all[] = {&x, &sub, &in, &gamma, &br};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
    backend_free(C);
    gpu_free(G);
}

// ---- residual + LayerNorm (residual_layernorm_fwd; docs/cuda-backend.md "Residual + LayerNorm") ----------
// The fused op against the unfused sequence on the same GPU backend (copy, residual_fwd, gather_rows,
// layernorm_fwd through the table): every output bit for bit, since the fused kernel stores bf16 at the
// same points and its LayerNorm reads the very fp32 stream values. Then against the CPU (the same
// composition in fp32): fp32 outputs within TOL_FP32, a bf16 LayerNorm output within its rounding (2^-9
// relative, bound u = 2^-8 of |c| + rms). Shapes: rows and D not multiples of the kernel's 8 rows per
// block and 32 lanes, subsets of either side, gamma NULL, in place, the final norm (all rows after a
// subset's residual).
typedef struct {
    const char *name;
    int B, T, D, n, ln_n;
    int idx[8], ln_idx[8]; // used when use_idx / use_ln_idx
    int use_idx, use_ln_idx, gamma, in_place, bf16;
} ResLnCase;

typedef struct {
    float *x_out, *out, *mean, *rstd, *xs;
} ResLnOut;

static void resln_out_free(ResLnOut *o) { free(o->x_out), free(o->out), free(o->mean), free(o->rstd), free(o->xs); }

// unfused: the four ops through the table instead of the fused op
static void resln_run(Backend *be, const ResLnCase *k, const float *x_h, const float *br_h, const float *gamma_h,
                      const float *w_h, const float *b_h, int unfused, ResLnOut *o) {
    const size_t row = (size_t)k->T * k->D, nx = (size_t)k->B * row, nb = (size_t)k->n * row;
    const size_t nl = (size_t)k->ln_n * row, nr = (size_t)k->ln_n * k->T;
    const DinoDtype dt = k->bf16 ? DINO_BF16 : DINO_F32;
    float *x_in = dual_upload(be, x_h, sizeof(float) * nx);
    float *x_out = k->in_place ? x_in : be->alloc(be, sizeof(float) * nx);
    float *br = be->alloc_act(be, nb, dt, NULL), *out = be->alloc_act(be, nl, dt, NULL);
    be->to_device(be, br, br_h, sizeof(float) * nb);
    float *gamma = k->gamma ? dual_upload(be, gamma_h, sizeof(float) * k->D) : NULL;
    float *w = dual_upload(be, w_h, sizeof(float) * k->D), *b = dual_upload(be, b_h, sizeof(float) * k->D);
    int *idx = k->use_idx ? dual_upload(be, k->idx, sizeof(int) * k->n) : NULL;
    int *ln_idx = k->use_ln_idx ? dual_upload(be, k->ln_idx, sizeof(int) * k->ln_n) : NULL;
    float *mean = be->alloc(be, sizeof(float) * nr), *rstd = be->alloc(be, sizeof(float) * nr);
    float *xs = ln_idx ? be->alloc(be, sizeof(float) * nl) : NULL;
    const float scale = (float)k->B / (float)k->n, eps = 1e-6f;
    if (!unfused) {
        be->residual_layernorm_fwd(be, x_out, out, mean, rstd, xs, x_in, br, gamma, idx, k->n, scale, w, b, ln_idx,
                                   k->ln_n, k->B, k->T, k->D, eps);
    } else {
        if (x_out != x_in) be->copy(be, x_out, x_in, sizeof(float) * nx);
        be->residual_fwd(be, x_out, br, gamma, idx, k->n, k->T, k->D, scale);
        if (ln_idx) be->gather_rows(be, xs, x_out, ln_idx, k->ln_n, row);
        be->layernorm_fwd(be, out, mean, rstd, ln_idx ? xs : x_out, w, b, (int)nr, k->D, eps);
    }
    *o = (ResLnOut){dino_malloc(sizeof(float) * nx), dino_malloc(sizeof(float) * nl), dino_malloc(sizeof(float) * nr),
                    dino_malloc(sizeof(float) * nr), xs ? dino_malloc(sizeof(float) * nl) : NULL};
    be->to_host(be, o->x_out, x_out, sizeof(float) * nx);
    be->to_host(be, o->out, out, sizeof(float) * nl);
    be->to_host(be, o->mean, mean, sizeof(float) * nr);
    be->to_host(be, o->rstd, rstd, sizeof(float) * nr);
    if (xs) be->to_host(be, o->xs, xs, sizeof(float) * nl);
    void *all[] = {x_in, k->in_place ? NULL : x_out, br, out, gamma, w, b, idx, ln_idx, mean, rstd, xs};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]) be->release(be, all[i]);
}

static void check_same_bits(const char *what, const char *part, const float *a, const float *b, size_t n) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0 && !bad++) first = i;
    CHECK(bad == 0, "%s %s: %zu of %zu values differ; first [%zu] %.9g vs %.9g", what, part, bad, n, first,
          (double)a[first], (double)b[first]);
}

static void resln_same_bits(const char *what, const ResLnCase *k, const ResLnOut *a, const ResLnOut *b) {
    const size_t row = (size_t)k->T * k->D, nr = (size_t)k->ln_n * k->T;
    check_same_bits(what, "x_out", a->x_out, b->x_out, (size_t)k->B * row);
    check_same_bits(what, "out", a->out, b->out, (size_t)k->ln_n * row);
    check_same_bits(what, "mean", a->mean, b->mean, nr);
    check_same_bits(what, "rstd", a->rstd, b->rstd, nr);
    if (a->xs) check_same_bits(what, "xs", a->xs, b->xs, (size_t)k->ln_n * row);
}

TEST(residual_layernorm_fused_matches_unfused) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    const ResLnCase cases[] = {
        // the student's LN2 after LN1's residual: two different subsets, bf16 branch and output
        {"subsets idx != ln_idx, gamma, bf16", 5, 7, 100, 3, 3, {0, 2, 4}, {1, 2, 3}, 1, 1, 1, 0, 1},
        // the teacher / no drop path: all rows, gamma NULL (no LayerScale), fp32 output
        {"all rows, gamma NULL, fp32", 3, 11, 70, 3, 3, {0}, {0}, 0, 0, 0, 0, 0},
        // in place, one subset for both
        {"in place, idx == ln_idx", 6, 5, 33, 4, 4, {0, 1, 3, 5}, {0, 1, 3, 5}, 1, 1, 1, 1, 1},
        // the final norm: every row after a subset's residual
        {"final norm after a subset", 4, 9, 64, 3, 4, {0, 2, 3}, {0}, 1, 0, 1, 0, 0}, // scale 4/3: not exact
        // ViT-S/14 rows at 224 px, no drop path
        {"ViT-S rows, all", 2, 257, 384, 2, 2, {0}, {0}, 0, 0, 1, 0, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const ResLnCase *k = &cases[c];
        printf(" residual_layernorm_fwd: %s (B=%d T=%d D=%d n=%d ln_n=%d)\n", k->name, k->B, k->T, k->D, k->n, k->ln_n);
        Rng r = rng_make(131, c, 0, 0);
        const size_t row = (size_t)k->T * k->D, nx = (size_t)k->B * row, nb = (size_t)k->n * row;
        float *x = dino_malloc(sizeof(float) * nx), *br = dino_malloc(sizeof(float) * nb);
        float *gm = dino_malloc(sizeof(float) * k->D), *w = dino_malloc(sizeof(float) * k->D);
        float *b = dino_malloc(sizeof(float) * k->D);
        for (size_t i = 0; i < nx; i++) x[i] = 0.5f + 2 * (float)rng_normal(&r);
        for (size_t i = 0; i < nb; i++) br[i] = bf16_round((float)rng_normal(&r)); // bf16-exact on every side
        for (int i = 0; i < k->D; i++) {
            gm[i] = 0.3f + 0.1f * (float)rng_normal(&r);
            w[i] = 1 + 0.3f * (float)rng_normal(&r), b[i] = 0.3f * (float)rng_normal(&r);
        }
        ResLnOut fused, unfused, cpu;
        resln_run(G, k, x, br, gm, w, b, 0, &fused);
        resln_run(G, k, x, br, gm, w, b, 1, &unfused);
        resln_same_bits("fused vs the unfused GPU ops", k, &fused, &unfused);
#ifdef DINO_HAVE_CUDA
        if (!emulating()) { // the A/B switch: the four ops behind the same table entry
            backend_cuda_set_fuse_resln(G, 0);
            ResLnOut off;
            resln_run(G, k, x, br, gm, w, b, 0, &off);
            backend_cuda_set_fuse_resln(G, 1);
            resln_same_bits("DINO_CUDA_FUSE_RESLN=0 vs fused", k, &off, &fused);
            resln_out_free(&off);
        }
#endif
        resln_run(C, k, x, br, gm, w, b, 0, &cpu);
        const size_t nl = (size_t)k->ln_n * row, nr = (size_t)k->ln_n * k->T;
        check_elems("x_out", fused.x_out, cpu.x_out, NULL, nx, TOL_FP32);
        check_elems("out", fused.out, cpu.out, NULL, nl, k->bf16 ? U_BF16 : TOL_FP32);
        check_elems("mean", fused.mean, cpu.mean, NULL, nr, TOL_FP32);
        check_elems("rstd", fused.rstd, cpu.rstd, NULL, nr, TOL_FP32);
        if (k->use_ln_idx) check_elems("xs", fused.xs, cpu.xs, NULL, nl, TOL_FP32);
        resln_out_free(&fused), resln_out_free(&unfused), resln_out_free(&cpu);
        free(x), free(br), free(gm), free(w), free(b);
    }
    backend_free(C);
    gpu_free(G);
}

// The backward counterpart (layernorm_residual_bwd) on the same cases: LayerNorm backward into the
// stream gradient (through a zeroed scratch and a scatter-add for a row subset) then residual_bwd, against
// those ops on the same GPU backend bit for bit (dx, dbr, and the accumulated dw, db, dgamma) and against
// the CPU within bounds.
typedef struct {
    float *dx, *dw, *db, *dbr, *dgamma;
} ResLnGrads;

static void resln_grads_free(ResLnGrads *o) { free(o->dx), free(o->dw), free(o->db), free(o->dbr), free(o->dgamma); }

static void resln_bwd_run(Backend *be, const ResLnCase *k, float *const *in_h, int unfused, ResLnGrads *o) {
    // in_h: dx, dout, x_ln, mean, rstd, w, dw, db, br, gamma, dgamma (host)
    const size_t row = (size_t)k->T * k->D, nx = (size_t)k->B * row, nb = (size_t)k->n * row;
    const size_t nl = (size_t)k->ln_n * row, nr = (size_t)k->ln_n * k->T, D = (size_t)k->D;
    const DinoDtype dt = k->bf16 ? DINO_BF16 : DINO_F32;
    float *dx = dual_upload(be, in_h[0], sizeof(float) * nx);
    float *dout = be->alloc_act(be, nl, dt, NULL), *br = be->alloc_act(be, nb, dt, NULL);
    float *dbr = be->alloc_act(be, nb, dt, NULL);
    be->to_device(be, dout, in_h[1], sizeof(float) * nl), be->to_device(be, br, in_h[8], sizeof(float) * nb);
    float *x_ln = dual_upload(be, in_h[2], sizeof(float) * nl), *mean = dual_upload(be, in_h[3], sizeof(float) * nr);
    float *rstd = dual_upload(be, in_h[4], sizeof(float) * nr), *w = dual_upload(be, in_h[5], sizeof(float) * D);
    float *dw = dual_upload(be, in_h[6], sizeof(float) * D), *db = dual_upload(be, in_h[7], sizeof(float) * D);
    float *gamma = k->gamma ? dual_upload(be, in_h[9], sizeof(float) * D) : NULL;
    float *dgamma = k->gamma ? dual_upload(be, in_h[10], sizeof(float) * D) : NULL;
    int *idx = k->use_idx ? dual_upload(be, k->idx, sizeof(int) * k->n) : NULL;
    int *ln_idx = k->use_ln_idx ? dual_upload(be, k->ln_idx, sizeof(int) * k->ln_n) : NULL;
    const float scale = (float)k->B / (float)k->n;
    if (!unfused) {
        be->layernorm_residual_bwd(be, dx, dw, db, dbr, dgamma, dout, x_ln, mean, rstd, w, ln_idx, k->ln_n, br, gamma,
                                   idx, k->n, scale, k->B, k->T, k->D);
    } else {
        if (ln_idx) { // as the ViT did: a zeroed scratch, then scatter-added
            float *scratch = be->alloc(be, sizeof(float) * nl);
            be->layernorm_bwd(be, scratch, dw, db, dout, x_ln, mean, rstd, w, (int)nr, k->D);
            be->scatter_add_rows(be, dx, scratch, ln_idx, k->ln_n, row);
            be->release(be, scratch);
        } else {
            be->layernorm_bwd(be, dx, dw, db, dout, x_ln, mean, rstd, w, (int)nr, k->D);
        }
        be->residual_bwd(be, dbr, dgamma, dx, br, gamma, idx, k->n, k->T, k->D, scale);
    }
    *o = (ResLnGrads){dino_malloc(sizeof(float) * nx), dino_malloc(sizeof(float) * D), dino_malloc(sizeof(float) * D),
                      dino_malloc(sizeof(float) * nb), k->gamma ? dino_malloc(sizeof(float) * D) : NULL};
    be->to_host(be, o->dx, dx, sizeof(float) * nx);
    be->to_host(be, o->dw, dw, sizeof(float) * D), be->to_host(be, o->db, db, sizeof(float) * D);
    be->to_host(be, o->dbr, dbr, sizeof(float) * nb);
    if (dgamma) be->to_host(be, o->dgamma, dgamma, sizeof(float) * D);
    void *all[] = {dx, dout, br, dbr, x_ln, mean, rstd, w, dw, db, gamma, dgamma, idx, ln_idx};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]) be->release(be, all[i]);
}

static void resln_grads_same_bits(const char *what, const ResLnCase *k, const ResLnGrads *a, const ResLnGrads *b) {
    check_same_bits(what, "dx", a->dx, b->dx, (size_t)k->B * k->T * k->D);
    check_same_bits(what, "dw", a->dw, b->dw, k->D);
    check_same_bits(what, "db", a->db, b->db, k->D);
    check_same_bits(what, "dbr", a->dbr, b->dbr, (size_t)k->n * k->T * k->D);
    if (a->dgamma) check_same_bits(what, "dgamma", a->dgamma, b->dgamma, k->D);
}

TEST(layernorm_residual_bwd_fused_matches_unfused) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    const ResLnCase cases[] = {
        {"subsets idx != ln_idx, gamma, bf16", 5, 7, 100, 3, 3, {0, 2, 4}, {1, 2, 3}, 1, 1, 1, 0, 1},
        {"all rows, gamma NULL, fp32", 3, 11, 70, 3, 3, {0}, {0}, 0, 0, 0, 0, 0},
        {"one subset for both", 6, 5, 33, 4, 4, {0, 1, 3, 5}, {0, 1, 3, 5}, 1, 1, 1, 0, 1},
        {"all LayerNorm rows, residual subset", 4, 9, 64, 3, 4, {0, 2, 3}, {0}, 1, 0, 1, 0, 0}, // scale 4/3
        {"ViT-S rows, all", 2, 257, 384, 2, 2, {0}, {0}, 0, 0, 1, 0, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const ResLnCase *k = &cases[c];
        printf(" layernorm_residual_bwd: %s (B=%d T=%d D=%d n=%d ln_n=%d)\n", k->name, k->B, k->T, k->D, k->n, k->ln_n);
        Rng r = rng_make(137, c, 0, 0);
        const size_t row = (size_t)k->T * k->D, nx = (size_t)k->B * row, nb = (size_t)k->n * row;
        const size_t nl = (size_t)k->ln_n * row, nr = (size_t)k->ln_n * k->T;
        const size_t sizes[11] = {nx, nl, nl, nr, nr, k->D, k->D, k->D, nb, k->D, k->D};
        float *in[11];
        for (int i = 0; i < 11; i++) {
            in[i] = dino_malloc(sizeof(float) * sizes[i]);
            for (size_t j = 0; j < sizes[i]; j++) {
                float v = (float)rng_normal(&r);
                if (i == 1 || i == 8) v = bf16_round(v);                    // dout, br: bf16-exact everywhere
                if (i == 2) v = 0.5f + 2 * v;                               // x_ln
                if (i == 3) v = 0.5f + 0.1f * v;                            // mean
                if (i == 4) v = 0.8f + 0.1f * fabsf(v);                     // rstd
                if (i == 5 || i == 9) v = (i == 5 ? 1 : 0.3f) + 0.3f * v;   // w, gamma
                in[i][j] = v;
            }
        }
        ResLnGrads fused, unfused, cpu;
        resln_bwd_run(G, k, in, 0, &fused);
        resln_bwd_run(G, k, in, 1, &unfused);
        resln_grads_same_bits("fused vs the unfused GPU ops", k, &fused, &unfused);
#ifdef DINO_HAVE_CUDA
        if (!emulating()) {
            backend_cuda_set_fuse_resln(G, 0);
            ResLnGrads off;
            resln_bwd_run(G, k, in, 0, &off);
            backend_cuda_set_fuse_resln(G, 1);
            resln_grads_same_bits("DINO_CUDA_FUSE_RESLN=0 vs fused", k, &off, &fused);
            resln_grads_free(&off);
        }
#endif
        resln_bwd_run(C, k, in, 0, &cpu);
        check_elems("dx (+=)", fused.dx, cpu.dx, NULL, nx, TOL_FP32);
        check_elems("dw (+=)", fused.dw, cpu.dw, NULL, k->D, TOL_FP32);
        check_elems("db (+=)", fused.db, cpu.db, NULL, k->D, TOL_FP32);
        check_elems("dbr", fused.dbr, cpu.dbr, NULL, nb, k->bf16 ? U_BF16 : TOL_FP32);
        if (k->gamma) check_elems("dgamma (+=)", fused.dgamma, cpu.dgamma, NULL, k->D, TOL_FP32);
        resln_grads_free(&fused), resln_grads_free(&unfused), resln_grads_free(&cpu);
        for (int i = 0; i < 11; i++) free(in[i]);
    }
    backend_free(C);
    gpu_free(G);
}

// ---- elementwise and reductions -------------------------------------------------------------------

TEST(axpy_scale_sum_squares) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(71, 0, 0, 0);
    const size_t n = 22 * 1000 * 1000 + 7; // about ViT-S's parameter count
    Pair y = pair_new(C, G, n, 0, 1, &r, 0), x = pair_new(C, G, n, 0, 1, &r, 0);
    C->axpy(C, y.c, -0.37f, x.c, n), G->axpy(G, y.g, -0.37f, x.g, n);
    C->scale(C, y.c, 1.7f, n), G->scale(G, y.g, 1.7f, n);
    float *g = pair_gpu_result(G, &y);
    check_elems("axpy+scale", g, y.c, NULL, n, TOL_FP32);
    // sum of squares of the GPU's own values on both backends: both accumulate the same floats in
    // double, only the summation order differs (relative error ~sqrt(n) * 2^-53)
    C->to_device(C, y.c, g, sizeof(float) * n);
    double sc = C->sum_squares(C, y.c, n), sg = G->sum_squares(G, y.g, n), sg2 = G->sum_squares(G, y.g, n);
    printf("  sum_squares cpu %.17g gpu %.17g\n", sc, sg);
    CHECK(fabs(sg - sc) <= 1e-12 * sc, "sum_squares: gpu %.17g cpu %.17g", sg, sc);
    CHECK(sg == sg2, "sum_squares is not deterministic: %.17g then %.17g", sg, sg2);
    CHECK(G->sum_squares(G, y.g, 0) == 0.0 && G->sum_squares(G, y.g, 1) == (double)g[0] * g[0],
          "sum_squares of 0 / 1 elements");
    free(g);
    pair_free(C, G, &y), pair_free(C, G, &x);
    backend_free(C);
    gpu_free(G);
}

// The MFU denominator (bench_step): a dense bf16 GEMM timed on the device; a rate comes back, and the
// run leaves the backend usable.
TEST(measure_bf16_rate) {
#ifdef DINO_HAVE_CUDA
    if (emulating()) test_skip("the CPU emulation has no device to time");
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
#ifdef DINO_CUDAEMU
    const int n = 128; // fibers on the CPU: a small GEMM
#else
    const int n = 4096;
#endif
    double tf = backend_cuda_measure_bf16_tflops(G, n, 3);
    printf("  bf16 rate on a %d^3 GEMM: %.4g TFLOP/s\n", n, tf);
    CHECK(tf > 0 && isfinite(tf), "measured bf16 rate %g", tf);
    float one = 1.0f, back = 0.0f, *d = G->alloc(G, sizeof one);
    G->to_device(G, d, &one, sizeof one);
    G->to_host(G, &back, d, sizeof one);
    CHECK(back == 1.0f, "the backend is unusable after the measurement");
    G->release(G, d);
    gpu_free(G);
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}

// ---- the whole ViT ---------------------------------------------------------------------------------

typedef struct {
    Backend *be;
    float *P, *G;
    VitActs *acts[2];
    float *img[2], *dxn[2];
    uint8_t *mask[2];
} VitRun;

// Forward + backward of both crop groups on one backend; returns the host copies of x_norm per group
// and of the gradients.
static void vit_run(Backend *be, const Vit *vit, size_t total, const float *P_host, const int *B, const int *crop,
                    float *const *img_h, float *const *dxn_h, uint8_t *const *mask_h, int *const *subsets,
                    VitActsMode mode, float **xn_out, float *G_out) {
    VitRun v = {.be = be};
    v.P = dual_upload(be, P_host, sizeof(float) * total);
    v.G = be->alloc(be, sizeof(float) * total);
    for (int g = 0; g < 2; g++) {
        v.acts[g] = vit_acts_new(be, vit, B[g], crop[g], mode);
        if (vit->cfg.rope) { // DINOv3: group 1 as local crops, a RoPE augmentation draw per block and group
            vit_acts_set_local_crops(v.acts[g], g == 1);
            RopeAug *aug = dino_malloc(sizeof(RopeAug) * (size_t)vit->cfg.depth);
            vit_draw_rope_aug(vit, rng_make(83, (uint64_t)g, 0, 0), aug);
            vit_acts_set_rope_aug(be, vit, v.acts[g], aug);
            free(aug);
        }
        int T = vit_acts_tokens(v.acts[g]), N = T - 1 - vit->cfg.n_registers;
        size_t nimg = (size_t)B[g] * 3 * crop[g] * crop[g], nx = (size_t)B[g] * T * vit->cfg.dim;
        v.img[g] = dual_upload(be, img_h[g], sizeof(float) * nimg);
        v.dxn[g] = dual_upload(be, dxn_h[g], sizeof(float) * nx);
        v.mask[g] = mask_h[g] ? dual_upload(be, mask_h[g], (size_t)B[g] * N) : NULL;
    }
    for (int g = 0; g < 2; g++) {
        const float *xn = vit_forward(be, vit, v.P, v.acts[g], v.img[g], v.mask[g], subsets[g]);
        size_t nx = (size_t)B[g] * vit_acts_tokens(v.acts[g]) * vit->cfg.dim;
        be->to_host(be, xn_out[g], xn, sizeof(float) * nx);
        vit_backward(be, vit, v.P, v.G, v.acts[g], v.dxn[g]);
    }
    be->to_host(be, G_out, v.G, sizeof(float) * total);
    for (int g = 0; g < 2; g++) {
        vit_acts_free(be, v.acts[g]);
        be->release(be, v.img[g]), be->release(be, v.dxn[g]);
        if (v.mask[g]) be->release(be, v.mask[g]);
    }
    be->release(be, v.P), be->release(be, v.G);
}

// vs_emulation: the reference is the CPU's bf16 emulation (DINO_CUDA_OPS_EMULATE's bf16 GEMM inputs and
// backend_cpu_emulate_bf16's activation storage) instead of the fp32 CPU, at the tighter tol_emu.
static void vit_parity_vs(const char *ffn, int registers, float drop, int fp32, int dinov3, int vs_emulation,
                          double tol_emu);
static void vit_parity_of(const char *ffn, int registers, float drop, int fp32, int dinov3) {
    vit_parity_vs(ffn, registers, drop, fp32, dinov3, 0, 0);
}
static void vit_parity_vs(const char *ffn, int registers, float drop, int fp32, int dinov3, int vs_emulation,
                          double tol_emu) {
    Backend *G = gpu_backend(fp32 ? CUDA_GEMM_FP32 : CUDA_GEMM_BF16);
    Backend *C = vs_emulation ? emulated_backend(CUDA_GEMM_BF16, "rn") : backend_cpu_new();
#ifdef DINO_HAVE_CUDA
    // the emulation models the batched-GEMM attention's rounding points (the flash path's differ: with it
    // the SSL steps' register tokens land at 1.6x the quarter bound)
    if (vs_emulation && !emulating()) backend_cuda_set_attention(G, CUDA_ATTENTION_GEMM);
#endif
    VitConfig cfg;
    char err[DINO_ERRLEN];
    // vit_tiny's width and heads (D=192, H=3, Dh=64), 3 blocks, patch 14, trained at 98 px
    CHECK(vit_config_from_arch(&cfg, "vit_tiny", 14, 98, registers, ffn, err) == 0, "%s", err);
    cfg.depth = 3;
    cfg.drop_path_rate = drop;
    if (dinov3) { // RoPE with rescale augmentation, masked k bias, both CLS norms untied, layernormbf16
        cfg.rope = 1;
        cfg.rope_cfg = (RopeConfig){.base = 100.0, .rescale = 2.0};
        cfg.mask_k_bias = cfg.untie_cls_and_patch_norms = cfg.untie_global_and_local_cls_norm = 1;
        cfg.ln_eps = 1e-5f;
    }
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "backbone.");
    Rng r = rng_make(81, (uint64_t)registers, (uint64_t)(drop * 100), 0);
    // random parameters of unit-scale activations (fan-in scaled weights, LayerScale ~0.3 so that the
    // blocks matter, perturbed norms and biases)
    float *P = dino_calloc(tab.total, sizeof(float));
    for (int i = 0; i < tab.n; i++) {
        const TensorSpec *t = &tab.t[i];
        float *p = P + t->offset;
        int is_norm_w = strstr(t->name, "norm") && strstr(t->name, "weight");
        float std = t->ndim == 2 && strstr(t->name, "weight") ? 1.0f / sqrtf((float)t->shape[1])
                    : strstr(t->name, "patch_embed.proj.weight") ? 1.0f / sqrtf(3.0f * 14 * 14)
                                                                 : 0.3f;
        for (size_t j = 0; j < t->numel; j++)
            p[j] = is_norm_w ? 1.0f + 0.1f * (float)rng_normal(&r)
                   : strstr(t->name, ".ls") ? 0.3f + 0.1f * (float)rng_normal(&r)
                                            : std * (float)rng_normal(&r);
    }
    // group 0: 4 images at 98 px (the training grid), iBOT masks; group 1: 6 images at 42 px
    // (interpolated position embedding)
    const int B[2] = {4, 6}, crop[2] = {98, 42};
    float *img[2], *dxn[2], *xn_c[2], *xn_g[2];
    uint8_t *mask[2] = {NULL, NULL};
    int *subsets[2] = {NULL, NULL};
    size_t nx[2];
    for (int g = 0; g < 2; g++) {
        int N = (crop[g] / 14) * (crop[g] / 14), T = 1 + registers + N;
        size_t nimg = (size_t)B[g] * 3 * crop[g] * crop[g];
        nx[g] = (size_t)B[g] * T * cfg.dim;
        img[g] = dino_malloc(sizeof(float) * nimg), dxn[g] = dino_malloc(sizeof(float) * nx[g]);
        xn_c[g] = dino_malloc(sizeof(float) * nx[g]), xn_g[g] = dino_malloc(sizeof(float) * nx[g]);
        for (size_t i = 0; i < nimg; i++) img[g][i] = (float)rng_normal(&r);
        for (size_t i = 0; i < nx[g]; i++) dxn[g][i] = (float)rng_normal(&r);
        if (g == 0) {
            mask[g] = dino_malloc((size_t)B[g] * N);
            for (int i = 0; i < B[g] * N; i++) mask[g][i] = rng_uniform(&r) < 0.3;
        }
        if (drop > 0) {
            int S = vit_drop_subset_size(&vit, B[g]);
            CHECK(S < B[g], "the test wants stochastic depth active (S=%d B=%d)", S, B[g]);
            subsets[g] = dino_malloc(sizeof(int) * cfg.depth * 2 * S);
            vit_draw_drop_subsets(&vit, B[g], rng_make(82, (uint64_t)g, 0, 0), subsets[g]);
        }
    }
    float *Gc = dino_calloc(tab.total, sizeof(float)), *Gg = dino_calloc(tab.total, sizeof(float));
    float *Gg2 = dino_calloc(tab.total, sizeof(float));
    vit_run(C, &vit, tab.total, P, B, crop, img, dxn, mask, subsets, VIT_ACTS_STORE_ALL, xn_c, Gc);
    vit_run(G, &vit, tab.total, P, B, crop, img, dxn, mask, subsets, VIT_ACTS_STORE_ALL, xn_g, Gg);
    // fp32 GEMMs: a chain of a dozen fp32 ops per block, each within a few 1e-6 normwise (sqrt(K) 2^-24
    // for a GEMM of depth K), through 3 blocks forward and back: 5e-5 / 1e-4, still 30x below what one
    // bf16 GEMM adds, so a kernel bug cannot hide. bf16 GEMMs: ~u per GEMM, chained the same way.
    double tol_fwd = fp32 ? 5e-5 : 8 * U_BF16, tol_bwd = fp32 ? 1e-4 : 16 * U_BF16;
    if (vs_emulation) tol_fwd = tol_bwd = tol_emu;
    check_norm("vit x_norm (98 px, masked)", xn_g[0], xn_c[0], nx[0], tol_fwd);
    check_norm("vit x_norm (42 px)", xn_g[1], xn_c[1], nx[1], tol_fwd);
    for (int i = 0; i < tab.n; i++) {
        const TensorSpec *t = &tab.t[i];
        check_norm(t->name, Gg + t->offset, Gc + t->offset, t->numel, tol_bwd);
    }
    // run to run: bit-identical gradients (deterministic reductions, fixed cuBLAS algorithms)
    float *xn_g2[2] = {dino_malloc(sizeof(float) * nx[0]), dino_malloc(sizeof(float) * nx[1])};
    vit_run(G, &vit, tab.total, P, B, crop, img, dxn, mask, subsets, VIT_ACTS_STORE_ALL, xn_g2, Gg2);
    CHECK(memcmp(Gg, Gg2, sizeof(float) * tab.total) == 0, "CUDA ViT gradients differ between two identical runs");
    CHECK(memcmp(xn_g[0], xn_g2[0], sizeof(float) * nx[0]) == 0, "CUDA ViT outputs differ between identical runs");
#ifdef DINO_HAVE_CUDA
    // fc1 + GELU (w12 + SwiGLU) fused, the default, against the unfused kernels (DINO_CUDA_FUSE_EPILOGUES=0, the
    // A/B of a GPU run): the same roundings, so the same bits forward and backward (backward re-derives act
    // with gelu_fwd / swiglu_fwd); the DINOv3 ViT's SwiGLU is the plain SwiGLU case's op again
    if (!emulating() && !fp32 && !vs_emulation && !dinov3) {
        CHECK(backend_cuda_set_fuse_epilogues(G, -1) == 1, "the fusion is not on by default");
        backend_cuda_set_fuse_epilogues(G, 0);
        vit_run(G, &vit, tab.total, P, B, crop, img, dxn, mask, subsets, VIT_ACTS_STORE_ALL, xn_g2, Gg2);
        backend_cuda_set_fuse_epilogues(G, 1);
        const int same = memcmp(Gg, Gg2, sizeof(float) * tab.total) == 0 &&
                         memcmp(xn_g[0], xn_g2[0], sizeof(float) * nx[0]) == 0 &&
                         memcmp(xn_g[1], xn_g2[1], sizeof(float) * nx[1]) == 0;
        CHECK(same, "CUDA ViT results change with the fused epilogues (%s) switched off", ffn);
        if (same) printf("  ViT with the FFN's first linear + %s fused = unfused, bit for bit\n", ffn);
    }
#endif
#ifdef DINO_CUDAEMU
    // the claim behind the bit-for-bit checks: no kernel depends on the order in which the hardware runs
    // its blocks and threads, nor on how the streams interleave (the layer runs them in other orders)
    const char *orders[][2] = {{"forward", "eager"}, {"reverse", "delay"}, {"random", "random"}};
    for (int o = 0; o < 3; o++) {
        setenv("CUDAEMU_ORDER", orders[o][0], 1), setenv("CUDAEMU_STREAMS", orders[o][1], 1);
        vit_run(G, &vit, tab.total, P, B, crop, img, dxn, mask, subsets, VIT_ACTS_STORE_ALL, xn_g2, Gg2);
        CHECK(memcmp(Gg, Gg2, sizeof(float) * tab.total) == 0 && memcmp(xn_g[0], xn_g2[0], sizeof(float) * nx[0]) == 0,
              "CUDA ViT results change with the layer's thread order %s / stream order %s", orders[o][0], orders[o][1]);
    }
    unsetenv("CUDAEMU_ORDER"), unsetenv("CUDAEMU_STREAMS");
#endif
    // activation recomputation in backward: the same kernels on the same inputs, so the same bits
    vit_run(G, &vit, tab.total, P, B, crop, img, dxn, mask, subsets, VIT_ACTS_RECOMPUTE, xn_g2, Gg2);
    CHECK(memcmp(Gg, Gg2, sizeof(float) * tab.total) == 0, "CUDA ViT gradients change with recomputation");
    CHECK(memcmp(xn_g[1], xn_g2[1], sizeof(float) * nx[1]) == 0, "CUDA ViT outputs change with recomputation");
#ifdef DINO_HAVE_CUDA
    // residual + LayerNorm as one kernel (default) or the unfused ops (DINO_CUDA_FUSE_RESLN=0): the same bits,
    // forward and backward, with drop path (two subsets per block; the path without, the teacher's, in the
    // SSL steps below), the DINOv3 prefix norms too
    if (!emulating() && !fp32 && !vs_emulation && drop > 0) {
        backend_cuda_set_fuse_resln(G, 0);
        vit_run(G, &vit, tab.total, P, B, crop, img, dxn, mask, subsets, VIT_ACTS_STORE_ALL, xn_g2, Gg2);
        backend_cuda_set_fuse_resln(G, 1);
        CHECK(memcmp(Gg, Gg2, sizeof(float) * tab.total) == 0, "CUDA ViT gradients: fused residual + LayerNorm != unfused");
        for (int g = 0; g < 2; g++)
            CHECK(memcmp(xn_g[g], xn_g2[g], sizeof(float) * nx[g]) == 0,
                  "CUDA ViT outputs (group %d): fused residual + LayerNorm != unfused", g);
        printf("  residual + LayerNorm fused = unfused, bit for bit (outputs and gradients)\n");
    }
#endif
    for (int g = 0; g < 2; g++) {
        free(img[g]), free(dxn[g]), free(xn_c[g]), free(xn_g[g]), free(xn_g2[g]), free(mask[g]), free(subsets[g]);
    }
    free(P), free(Gc), free(Gg), free(Gg2);
    vit_free(&vit);
    param_table_free(&tab);
    backend_free(C);
    gpu_free(G);
}

static void vit_parity(const char *ffn, int registers, float drop, int fp32) {
    vit_parity_of(ffn, registers, drop, fp32, 0);
}

TEST(vit_mlp_registers_masks_droppath_fp32_gemm) { vit_parity("mlp", 4, 0.4f, 1); }
// the DINOv3 ViT: storage tokens, RoPE (augmented), SwiGLU64 (w1|w2), masked k bias, untied norms
TEST(vit_dinov3_rope_storage_swiglu64_droppath_fp32_gemm) { vit_parity_of("swiglu64", 4, 0.4f, 1, 1); }
TEST(vit_mlp_registers_masks_droppath_bf16) { vit_parity("mlp", 4, 0.4f, 0); }
TEST(vit_swiglu_plain_bf16) { vit_parity("swiglu", 0, 0.0f, 0); }
TEST(vit_dinov3_rope_storage_swiglu64_droppath_bf16) { vit_parity_of("swiglu64", 4, 0.4f, 0, 1); }
// bf16 activations: the CPU's emulation (bf16 GEMM inputs, activations rounded where the GPU stores bf16)
// predicts the GPU. Op by op they agree bit for bit but for rare one-ulp flips where fp32 summation order
// tips a value across a rounding boundary (bf16_activation_ops_match_cpu_emulation); through a ViT each
// flip perturbs what follows, which tips more values, so the two settle at a fraction of u apart (measured
// under the execution layer: 1e-5 to 8e-4 = u/400 to u/5 forward, from the flips left where an fp32 path
// or a GEMM that OpenBLAS sums in another order differs in the last bits (the elementwise, LayerNorm and
// softmax ones are gone: model/cpu/bf16_emulation.c), up to 0.5u in the gradients; the fp32 CPU is u
// forward and 1.5u in the gradients from the same GPU run). Bound 2u, a quarter of the fp32 comparison's 8u / 16u.
TEST(vit_bf16_gpu_matches_cpu_emulation) { vit_parity_vs("mlp", 4, 0.4f, 0, 0, 1, 2 * U_BF16); }
TEST(vit_dinov3_bf16_gpu_matches_cpu_emulation) { vit_parity_vs("swiglu64", 4, 0.4f, 0, 1, 1, 2 * U_BF16); }

// ---- bf16 activation buffers, op by op ---------------------------------------------------------------
// Each op that accepts bf16 activations (model/backend.h) on buffers from alloc_act(DINO_BF16): the GPU
// stores them in bf16, the CPU's bf16 emulation (backend_cpu_emulate_bf16 under the GEMM-input rounding of
// DINO_CUDA_OPS_EMULATE) rounds the fp32 result where the GPU stores. From the same bf16-exact inputs both
// round the same value, so a bf16 output must agree bit for bit except where fp32 summation order tips a
// value across a rounding boundary: then by one bf16 ulp (<= 2^-7 relative). Attention rounds inside too
// (its bf16 probabilities): a flipped probability moves a product by a bf16 ulp of it, which for an
// element near 0 after cancellation is more than that element's ulp but within u = 2^-8 of the tensor's
// scale. Bound per element: 2^-7 |c| + 2^-8 rms(c), and at most 1% of the elements unequal on a GPU
// (its tensor cores and device erff/expf differ from the CPU's by ~1e-6 relative, a flip needs the value
// within that of a boundary). Under the execution layer (in-order cuBLAS, the host's libm, no FMA
// contraction) none may differ: the emulation computes each kernel's own expressions in its warp's
// summation order (model/cpu/bf16_emulation.c; the attention softmax here). Without the emulation's
// rounding almost every element differs.
typedef struct {
    size_t n;
    float *c, *g; // on the emulating CPU, on the GPU
} ActPair;
#ifdef DINO_CUDAEMU
static const int under_layer = 1;
#else
static const int under_layer = 0;
#endif

static ActPair act_pair(Backend *C, Backend *G, size_t n, float std, Rng *r) {
    ActPair p = {.n = n, .c = C->alloc_act(C, n, DINO_BF16, NULL), .g = G->alloc_act(G, n, DINO_BF16, NULL)};
    float *h = dino_malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) h[i] = bf16_round(std * (float)rng_normal(r));
    C->to_device(C, p.c, h, sizeof(float) * n);
    G->to_device(G, p.g, h, sizeof(float) * n);
    free(h);
    return p;
}

static void check_act(const char *what, Backend *C, Backend *G, const ActPair *p) {
    float *c = dino_malloc(sizeof(float) * p->n), *g = dino_malloc(sizeof(float) * p->n);
    C->to_host(C, c, p->c, sizeof(float) * p->n);
    G->to_host(G, g, p->g, sizeof(float) * p->n);
    const double r = rms(c, p->n);
    size_t bad = 0, unequal = 0, wi = 0;
    double worst = 0;
    for (size_t i = 0; i < p->n; i++) {
        const double e = fabs((double)g[i] - c[i]), tol = fabs((double)c[i]) / 128.0 + r / 256.0;
        unequal += g[i] != c[i];
        if (!(e <= tol)) bad++;
        if (e / tol > worst || isnan(g[i])) worst = isnan(g[i]) ? INFINITY : e / tol, wi = i;
    }
    printf("  %-34s n=%-7zu unequal=%zu (%.3g%%)  worst err/tol=%.3g\n", what, p->n, unequal, 100.0 * unequal / p->n,
           worst);
    CHECK(bad == 0, "%s: %zu elements beyond one bf16 ulp; worst [%zu] gpu %.9g cpu %.9g", what, bad, wi, (double)g[wi],
          (double)c[wi]);
    CHECK(unequal <= (under_layer ? 0 : p->n / 100), "%s: %zu of %zu elements not bit-identical to the emulation", what,
          unequal, p->n);
    free(c), free(g);
}

static void act_pair_free(Backend *C, Backend *G, ActPair *p) { C->release(C, p->c), G->release(G, p->g); }

TEST(bf16_activation_ops_match_cpu_emulation) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = emulated_backend(CUDA_GEMM_BF16, "rn");
#ifdef DINO_HAVE_CUDA
    // the emulation models the batched-GEMM attention's rounding points; the flash path: its own check below
    if (!emulating()) backend_cuda_set_attention(G, CUDA_ATTENTION_GEMM);
#endif
    Rng r = rng_make(131, 0, 0, 0);
    const int B = 2, T = 37, H = 2, Dh = 32, D = H * Dh, Hf = 96, rows = B * T, N = 30;
    const float ws = 1.0f / sqrtf((float)D);
    // linear: forward with and without bias; backward with a bf16 dout and with an fp32 one (dbr's case)
    ActPair x = act_pair(C, G, (size_t)rows * D, 1.0f, &r), h1 = act_pair(C, G, (size_t)rows * Hf, 0, &r);
    ActPair h2 = act_pair(C, G, (size_t)rows * Hf, 0, &r), dh = act_pair(C, G, (size_t)rows * Hf, 1.0f, &r);
    ActPair dx = act_pair(C, G, (size_t)rows * D, 0, &r);
    Pair W = pair_new(C, G, (size_t)Hf * D, 0, ws, &r, 0), b = pair_new(C, G, Hf, 0, 0.5f, &r, 0);
    Pair dW = pair_new(C, G, (size_t)Hf * D, 0, 0, &r, 0), db = pair_new(C, G, Hf, 0, 0, &r, 0);
    Pair dh32 = pair_new(C, G, (size_t)rows * Hf, 0, 1.0f, &r, 1);
    C->linear_fwd(C, h1.c, x.c, W.c, b.c, rows, D, Hf), G->linear_fwd(G, h1.g, x.g, W.g, b.g, rows, D, Hf);
    check_act("linear_fwd (bias)", C, G, &h1);
    C->linear_fwd(C, h2.c, x.c, W.c, NULL, rows, D, Hf), G->linear_fwd(G, h2.g, x.g, W.g, NULL, rows, D, Hf);
    check_act("linear_fwd (no bias)", C, G, &h2);
    C->linear_bwd(C, dx.c, dW.c, db.c, dh.c, x.c, W.c, rows, D, Hf);
    G->linear_bwd(G, dx.g, dW.g, db.g, dh.g, x.g, W.g, rows, D, Hf);
    check_act("linear_bwd.din", C, G, &dx);
    C->linear_bwd(C, dx.c, dW.c, NULL, dh32.c, x.c, W.c, rows, D, Hf);
    G->linear_bwd(G, dx.g, dW.g, NULL, dh32.g, x.g, W.g, rows, D, Hf);
    check_act("linear_bwd.din (fp32 dout)", C, G, &dx);
    float *g = pair_gpu_result(G, &dW);
    check_elems("linear_bwd.dW (bf16 operands)", g, dW.c, NULL, dW.n, 1e-4);
    free(g), g = pair_gpu_result(G, &db);
    check_elems("linear_bwd.db", g, db.c, NULL, db.n, 1e-5);
    free(g);
    // GELU, SwiGLU
    C->gelu_fwd(C, h2.c, h1.c, h1.n), G->gelu_fwd(G, h2.g, h1.g, h1.n);
    check_act("gelu_fwd", C, G, &h2);
    C->gelu_bwd(C, h2.c, dh.c, h1.c, h1.n), G->gelu_bwd(G, h2.g, dh.g, h1.g, h1.n);
    check_act("gelu_bwd", C, G, &h2);
    ActPair sw = act_pair(C, G, (size_t)rows * Hf / 2, 0, &r), dsw = act_pair(C, G, (size_t)rows * Hf / 2, 1.0f, &r);
    C->swiglu_fwd(C, sw.c, h1.c, rows, Hf / 2), G->swiglu_fwd(G, sw.g, h1.g, rows, Hf / 2);
    check_act("swiglu_fwd", C, G, &sw);
    C->swiglu_bwd(C, h2.c, dsw.c, h1.c, rows, Hf / 2), G->swiglu_bwd(G, h2.g, dsw.g, h1.g, rows, Hf / 2);
    check_act("swiglu_bwd", C, G, &h2);
    // LayerNorm of the fp32 stream into bf16; its backward from a bf16 dout into the fp32 stream gradient
    Pair xs = pair_new(C, G, (size_t)rows * D, 0.3f, 1.0f, &r, 0), lw = pair_new(C, G, D, 1.0f, 0.1f, &r, 0);
    Pair lb = pair_new(C, G, D, 0, 0.1f, &r, 0), mean = pair_new(C, G, rows, 0, 0, &r, 0);
    Pair rstd = pair_new(C, G, rows, 0, 0, &r, 0), dxs = pair_new(C, G, (size_t)rows * D, 0, 0, &r, 0);
    Pair dlw = pair_new(C, G, D, 0, 0, &r, 0), dlb = pair_new(C, G, D, 0, 0, &r, 0);
    C->layernorm_fwd(C, dx.c, mean.c, rstd.c, xs.c, lw.c, lb.c, rows, D, 1e-6f);
    G->layernorm_fwd(G, dx.g, mean.g, rstd.g, xs.g, lw.g, lb.g, rows, D, 1e-6f);
    check_act("layernorm_fwd", C, G, &dx);
    ActPair dln = act_pair(C, G, (size_t)rows * D, 1.0f, &r);
    C->layernorm_bwd(C, dxs.c, dlw.c, dlb.c, dln.c, xs.c, mean.c, rstd.c, lw.c, rows, D);
    G->layernorm_bwd(G, dxs.g, dlw.g, dlb.g, dln.g, xs.g, mean.g, rstd.g, lw.g, rows, D);
    g = pair_gpu_result(G, &dxs);
    check_elems("layernorm_bwd.dx (bf16 dout)", g, dxs.c, NULL, dxs.n, TOL_FP32);
    free(g), g = pair_gpu_result(G, &dlw);
    check_elems("layernorm_bwd.dw (bf16 dout)", g, dlw.c, NULL, dlw.n, TOL_FP32);
    free(g);
    // residual: the fp32 stream += a bf16 branch; its backward into a bf16 branch gradient
    Pair gam = pair_new(C, G, D, 0.3f, 0.1f, &r, 0), dgam = pair_new(C, G, D, 0, 0, &r, 0);
    C->residual_fwd(C, xs.c, dln.c, gam.c, NULL, B, T, D, 1.5f), G->residual_fwd(G, xs.g, dln.g, gam.g, NULL, B, T, D, 1.5f);
    g = pair_gpu_result(G, &xs);
    check_elems("residual_fwd (bf16 branch)", g, xs.c, NULL, xs.n, TOL_FP32);
    free(g);
    C->residual_bwd(C, dx.c, dgam.c, xs.c, dln.c, gam.c, NULL, B, T, D, 1.5f);
    G->residual_bwd(G, dx.g, dgam.g, xs.g, dln.g, gam.g, NULL, B, T, D, 1.5f);
    check_act("residual_bwd.dbr", C, G, &dx);
    g = pair_gpu_result(G, &dgam);
    check_elems("residual_bwd.dgamma (bf16 branch)", g, dgam.c, NULL, dgam.n, TOL_FP32);
    free(g);
    // residual + LayerNorm in one op: a bf16 branch into the fp32 stream, the LayerNorm stored in bf16; its
    // backward from a bf16 dout into a bf16 branch gradient
    Pair xo = pair_new(C, G, xs.n, 0, 0, &r, 0);
    C->residual_layernorm_fwd(C, xo.c, dx.c, mean.c, rstd.c, NULL, xs.c, dln.c, gam.c, NULL, B, 1.5f, lw.c, lb.c, NULL,
                              B, B, T, D, 1e-6f);
    G->residual_layernorm_fwd(G, xo.g, dx.g, mean.g, rstd.g, NULL, xs.g, dln.g, gam.g, NULL, B, 1.5f, lw.g, lb.g, NULL,
                              B, B, T, D, 1e-6f);
    check_act("residual_layernorm_fwd.out", C, G, &dx);
    C->layernorm_residual_bwd(C, dxs.c, dlw.c, dlb.c, dx.c, dgam.c, dln.c, xo.c, mean.c, rstd.c, lw.c, NULL, B, dln.c,
                              gam.c, NULL, B, 1.5f, B, T, D);
    G->layernorm_residual_bwd(G, dxs.g, dlw.g, dlb.g, dx.g, dgam.g, dln.g, xo.g, mean.g, rstd.g, lw.g, NULL, B, dln.g,
                              gam.g, NULL, B, 1.5f, B, T, D);
    check_act("layernorm_residual_bwd.dbr", C, G, &dx);
    pair_free(C, G, &xo);
    // attention and RoPE on a bf16 qkv
    ActPair qkv = act_pair(C, G, (size_t)rows * 3 * D, 1.0f, &r), dqkv = act_pair(C, G, (size_t)rows * 3 * D, 0, &r);
    ActPair att = act_pair(C, G, (size_t)rows * D, 0, &r);
    Pair sn = pair_new(C, G, (size_t)N * Dh, 0, 0.7f, &r, 0), cs = pair_new(C, G, (size_t)N * Dh, 0, 0.7f, &r, 0);
    C->rope_fwd(C, qkv.c, sn.c, cs.c, B, T, N, H, Dh), G->rope_fwd(G, qkv.g, sn.g, cs.g, B, T, N, H, Dh);
    check_act("rope_fwd (in place)", C, G, &qkv);
    float *sc = C->alloc(C, sizeof(float) * C->attention_saved_floats(C, B, T, H, Dh));
    float *sg = G->alloc(G, sizeof(float) * G->attention_saved_floats(G, B, T, H, Dh));
    C->attention_fwd(C, att.c, sc, qkv.c, B, T, H, Dh), G->attention_fwd(G, att.g, sg, qkv.g, B, T, H, Dh);
    check_act("attention_fwd.out", C, G, &att);
    C->attention_bwd(C, dqkv.c, dln.c, qkv.c, sc, B, T, H, Dh), G->attention_bwd(G, dqkv.g, dln.g, qkv.g, sg, B, T, H, Dh);
    check_act("attention_bwd.dqkv", C, G, &dqkv);
    C->rope_bwd(C, dqkv.c, sn.c, cs.c, B, T, N, H, Dh), G->rope_bwd(G, dqkv.g, sn.g, cs.g, B, T, N, H, Dh);
    check_act("rope_bwd (in place)", C, G, &dqkv);
    C->release(C, sc), G->release(G, sg);
#ifdef DINO_HAVE_CUDA
    if (!emulating()) { // the flash path on bf16 buffers: the fp32-buffer run's outputs rounded once, bit for bit
        backend_cuda_set_attention(G, CUDA_ATTENTION_FLASH); // (it rounds Q, K, V, dO to bf16 as it loads them)
        const size_t nq = qkv.n, no = att.n;
        float *h = dino_malloc(sizeof(float) * nq), *o16 = dino_malloc(sizeof(float) * nq);
        float *o32 = dino_malloc(sizeof(float) * nq);
        float *q32 = G->alloc(G, sizeof(float) * nq), *a32 = G->alloc(G, sizeof(float) * no);
        float *d32 = G->alloc(G, sizeof(float) * no), *dq32 = G->alloc(G, sizeof(float) * nq);
        float *s32 = G->alloc(G, sizeof(float) * G->attention_saved_floats(G, B, T, H, Dh));
        float *s16 = G->alloc(G, sizeof(float) * G->attention_saved_floats(G, B, T, H, Dh));
        G->to_host(G, h, qkv.g, sizeof(float) * nq), G->to_device(G, q32, h, sizeof(float) * nq);
        G->to_host(G, h, dln.g, sizeof(float) * no), G->to_device(G, d32, h, sizeof(float) * no);
        G->attention_fwd(G, a32, s32, q32, B, T, H, Dh), G->attention_fwd(G, att.g, s16, qkv.g, B, T, H, Dh);
        G->attention_bwd(G, dq32, d32, q32, s32, B, T, H, Dh), G->attention_bwd(G, dqkv.g, dln.g, qkv.g, s16, B, T, H, Dh);
        const char *what[2] = {"flash attention_fwd.out", "flash attention_bwd.dqkv"};
        for (int k = 0; k < 2; k++) {
            const size_t n = k ? nq : no;
            G->to_host(G, o32, k ? dq32 : a32, sizeof(float) * n), G->to_host(G, o16, k ? dqkv.g : att.g, sizeof(float) * n);
            size_t diff = 0;
            for (size_t i = 0; i < n; i++) diff += bf16_round(o32[i]) != o16[i];
            printf("  %-34s n=%-7zu differ from bf16(fp32-buffer run): %zu\n", what[k], n, diff);
            CHECK(diff == 0, "%s: %zu of %zu elements differ from the fp32-buffer run rounded to bf16", what[k], diff, n);
        }
        float *bufs[] = {q32, a32, d32, dq32, s32, s16};
        for (int i = 0; i < 6; i++) G->release(G, bufs[i]);
        free(h), free(o16), free(o32);
    }
#endif
    // the patch embedding: im2col of fp32 images into bf16 columns, the GEMM into a bf16 patch, tokens_fwd
    // from it into the fp32 stream (a masked image), tokens_bwd into a bf16 dpatch, the GEMM's backward
    const int pp_ = 4, gi = 12, NP = (gi / pp_) * (gi / pp_), KP = 3 * pp_ * pp_, R = 2, TP = 1 + R + NP;
    Pair img = pair_new(C, G, (size_t)B * 3 * gi * gi, 0, 1.0f, &r, 0), Wp = pair_new(C, G, (size_t)D * KP, 0, 0.15f, &r, 0);
    Pair bp = pair_new(C, G, D, 0, 0.1f, &r, 0), tok = pair_new(C, G, (size_t)B * TP * D, 0, 0, &r, 0);
    Pair cls = pair_new(C, G, D, 0, 0.3f, &r, 0), reg = pair_new(C, G, (size_t)R * D, 0, 0.3f, &r, 0);
    Pair pos = pair_new(C, G, (size_t)(1 + NP) * D, 0, 0.3f, &r, 0), mtok = pair_new(C, G, D, 0, 0.3f, &r, 0);
    Pair dtok = pair_new(C, G, (size_t)B * TP * D, 0, 1.0f, &r, 0), dWp = pair_new(C, G, (size_t)D * KP, 0, 0, &r, 0);
    Pair dbp = pair_new(C, G, D, 0, 0, &r, 0), dcls = pair_new(C, G, D, 0, 0, &r, 0), dreg = pair_new(C, G, (size_t)R * D, 0, 0, &r, 0);
    Pair dpos = pair_new(C, G, (size_t)(1 + NP) * D, 0, 0, &r, 0), dmtok = pair_new(C, G, D, 0, 0, &r, 0);
    ActPair cols = act_pair(C, G, (size_t)B * NP * KP, 0, &r), patch = act_pair(C, G, (size_t)B * NP * D, 0, &r);
    ActPair dpatch = act_pair(C, G, (size_t)B * NP * D, 0, &r);
    uint8_t mh[2 * 9];
    for (int i = 0; i < B * NP; i++) mh[i] = i < NP ? (i % 3 == 0) : 0; // image 0 masked in part
    uint8_t *mc = C->alloc(C, sizeof mh), *mg = G->alloc(G, sizeof mh);
    C->to_device(C, mc, mh, sizeof mh), G->to_device(G, mg, mh, sizeof mh);
    C->im2col(C, cols.c, img.c, B, 3, gi, gi, pp_), G->im2col(G, cols.g, img.g, B, 3, gi, gi, pp_);
    check_act("im2col (bf16 cols)", C, G, &cols);
    C->linear_fwd(C, patch.c, cols.c, Wp.c, bp.c, B * NP, KP, D), G->linear_fwd(G, patch.g, cols.g, Wp.g, bp.g, B * NP, KP, D);
    check_act("patch embedding (bf16 patch)", C, G, &patch);
    C->tokens_fwd(C, tok.c, patch.c, cls.c, reg.c, pos.c, mtok.c, mc, B, NP, R, D);
    G->tokens_fwd(G, tok.g, patch.g, cls.g, reg.g, pos.g, mtok.g, mg, B, NP, R, D);
    g = pair_gpu_result(G, &tok);
    check_elems("tokens_fwd (bf16 patch)", g, tok.c, NULL, tok.n, 0); // one fp32 add each: exact
    free(g);
    C->tokens_bwd(C, dpatch.c, dcls.c, dreg.c, dpos.c, dmtok.c, dtok.c, mc, B, NP, R, D);
    G->tokens_bwd(G, dpatch.g, dcls.g, dreg.g, dpos.g, dmtok.g, dtok.g, mg, B, NP, R, D);
    check_act("tokens_bwd (bf16 dpatch)", C, G, &dpatch);
    C->linear_bwd(C, NULL, dWp.c, dbp.c, dpatch.c, cols.c, Wp.c, B * NP, KP, D);
    G->linear_bwd(G, NULL, dWp.g, dbp.g, dpatch.g, cols.g, Wp.g, B * NP, KP, D);
    g = pair_gpu_result(G, &dWp);
    check_elems("patch embedding dW (bf16 operands)", g, dWp.c, NULL, dWp.n, 1e-4);
    free(g);
    C->release(C, mc), G->release(G, mg);
    ActPair *ap[] = {&x, &h1, &h2, &dh, &dx, &sw, &dsw, &dln, &qkv, &dqkv, &att, &cols, &patch, &dpatch};
    for (size_t i = 0; i < sizeof ap / sizeof ap[0]; i++) act_pair_free(C, G, ap[i]);
    Pair *pp[] = {&W, &b, &dW, &db, &dh32, &xs, &lw, &lb, &mean, &rstd, &dxs, &dlw, &dlb, &gam, &dgam, &sn, &cs,
                  &img, &Wp, &bp, &tok, &cls, &reg, &pos, &mtok, &dtok, &dWp, &dbp, &dcls, &dreg, &dpos, &dmtok};
    for (size_t i = 0; i < sizeof pp / sizeof pp[0]; i++) pair_free(C, G, pp[i]);
    backend_free(C);
    gpu_free(G);
}

// ---- fused epilogues: the FFN's first linear and its activation in one op (docs/cuda-backend.md) ----------
// linear_gelu_fwd and linear_swiglu_fwd against the unfused sequence on the same GPU (the switch off, and
// linear_fwd + gelu_fwd / swiglu_fwd called by hand): the fused kernel rounds pre where bias_to_act_kernel
// does and applies the activation to pre as stored, so pre and act are the SAME BITS; for bf16 buffers (the
// fused path) and fp32 ones (the unfused path, both ways), with a bias and without, at shapes whose element
// counts are not multiples of the kernels' blocks or cuBLAS's tiles. Against the CPU: the bf16 buffers
// against the CPU's bf16 emulation (the bf16-activation bound of check_act), the fp32 buffers against the
// fp32 CPU (the GEMM bound on bf16-exact inputs, propagated: GELU's slope is below 1.13; SwiGLU's act moves
// by |g| 1.1 da + (|a| + 1) dg).
#ifdef DINO_HAVE_CUDA
static void linear_act(Backend *be, int swiglu, int fused, float *pre, float *act, const float *x, const float *W,
                       const float *b, int rows, int n_in, int Hd) {
    if (fused && swiglu) be->linear_swiglu_fwd(be, pre, act, x, W, b, rows, n_in, Hd);
    else if (fused) be->linear_gelu_fwd(be, pre, act, x, W, b, rows, n_in, Hd);
    else if (swiglu) be->linear_fwd(be, pre, x, W, b, rows, n_in, 2 * Hd), be->swiglu_fwd(be, act, pre, rows, Hd);
    else be->linear_fwd(be, pre, x, W, b, rows, n_in, Hd), be->gelu_fwd(be, act, pre, (size_t)rows * Hd);
}

static void linear_act_case(Backend *G, Backend *E, Backend *C, int swiglu, int rows, int n_in, int Hd, int bias,
                            int bf16, Rng *r) {
    Backend *R = bf16 ? E : C; // the CPU reference
    const int n_out = swiglu ? 2 * Hd : Hd;
    const size_t nx = (size_t)rows * n_in, nw = (size_t)n_out * n_in, ny = (size_t)rows * n_out, na = (size_t)rows * Hd;
    printf(" linear_%s rows=%d n_in=%d Hd=%d %s, %s\n", swiglu ? "swiglu" : "gelu", rows, n_in, Hd,
           bias ? "bias" : "no bias", bf16 ? "bf16 buffers" : "fp32 buffers");
    float *xh = dino_malloc(sizeof(float) * nx), *wh = dino_malloc(sizeof(float) * nw), *bh = dino_malloc(sizeof(float) * n_out);
    for (size_t i = 0; i < nx; i++) xh[i] = bf16_round((float)rng_normal(r));
    for (size_t i = 0; i < nw; i++) wh[i] = bf16_round((float)rng_normal(r) / sqrtf((float)n_in));
    for (int i = 0; i < n_out; i++) bh[i] = 0.5f * (float)rng_normal(r);
    Backend *be2[2] = {G, R};
    float *x[2], *W[2], *b[2], *pre[2], *act[2];
    for (int k = 0; k < 2; k++) {
        Backend *be = be2[k];
        x[k] = bf16 ? be->alloc_act(be, nx, DINO_BF16, NULL) : be->alloc(be, sizeof(float) * nx);
        pre[k] = bf16 ? be->alloc_act(be, ny, DINO_BF16, NULL) : be->alloc(be, sizeof(float) * ny);
        act[k] = bf16 ? be->alloc_act(be, na, DINO_BF16, NULL) : be->alloc(be, sizeof(float) * na);
        W[k] = dual_upload(be, wh, sizeof(float) * nw);
        b[k] = bias ? dual_upload(be, bh, sizeof(float) * n_out) : NULL;
        be->to_device(be, x[k], xh, sizeof(float) * nx);
    }
    // GPU: fused, the switch off, the two ops by hand (outputs cleared before each)
    float *gp[3], *ga[3];
    for (int v = 0; v < 3; v++) {
        G->zero(G, pre[0], sizeof(float) * ny), G->zero(G, act[0], sizeof(float) * na);
        backend_cuda_set_fuse_epilogues(G, v == 0);
        linear_act(G, swiglu, v < 2, pre[0], act[0], x[0], W[0], b[0], rows, n_in, Hd);
        gp[v] = dino_malloc(sizeof(float) * ny), ga[v] = dino_malloc(sizeof(float) * na);
        G->to_host(G, gp[v], pre[0], sizeof(float) * ny), G->to_host(G, ga[v], act[0], sizeof(float) * na);
    }
    backend_cuda_set_fuse_epilogues(G, 1);
    size_t nonzero = 0;
    for (size_t i = 0; i < na; i++) nonzero += gp[0][i] != 0 && gp[0][ny - 1 - i] != 0 && ga[0][i] != 0;
    CHECK(nonzero > na / 2, "fused: pre and act mostly zero (%zu of %zu set)", nonzero, na);
    for (int v = 1; v < 3; v++) {
        const int same_pre = memcmp(gp[0], gp[v], sizeof(float) * ny) == 0, same_act = memcmp(ga[0], ga[v], sizeof(float) * na) == 0;
        CHECK(same_pre && same_act, "fused pre/act differ from the unfused %s (pre %s, act %s)",
              v == 1 ? "switch-off path" : "two ops", same_pre ? "equal" : "differs", same_act ? "equal" : "differs");
    }
    printf("  fused = unfused bit for bit (pre %zu, act %zu elements)\n", ny, na);
    // the CPU reference (the composition)
    linear_act(R, swiglu, 1, pre[1], act[1], x[1], W[1], b[1], rows, n_in, Hd);
    if (bf16) {
        ActPair pp = {ny, pre[1], pre[0]}, pa = {na, act[1], act[0]};
        check_act("fused pre vs emulation", E, G, &pp);
        check_act("fused act vs emulation", E, G, &pa);
    } else {
        float *cp = dino_malloc(sizeof(float) * ny), *ca = dino_malloc(sizeof(float) * na);
        C->to_host(C, cp, pre[1], sizeof(float) * ny), C->to_host(C, ca, act[1], sizeof(float) * na);
        float *s = gemm_scale(C, 0, 1, rows, n_out, n_in, xh, n_in, nx, wh, n_in, nw);
        for (size_t i = 0; i < ny; i++) s[i] += 1e-6f * (bias ? fabsf(bh[i % n_out]) : 0.0f); // the fp32 bias add
        check_elems("fused pre vs cpu", gp[0], cp, s, ny, TOL_GEMM_EXACT_IN);
        float *sa = dino_malloc(sizeof(float) * na);
        for (size_t i = 0; i < na; i++) {
            const size_t rr = i / Hd, j = i % Hd, ia = rr * n_out + j, ig = ia + Hd;
            sa[i] = swiglu ? 1.1f * fabsf(cp[ig]) * s[ia] + (fabsf(cp[ia]) + 1) * s[ig] : 2 * s[i];
            sa[i] = 2 * sa[i] + 1e-6f * fabsf(ca[i]); // and the fp32 erf / exp
        }
        check_elems("fused act vs cpu", ga[0], ca, sa, na, TOL_GEMM_EXACT_IN);
        free(cp), free(ca), free(s), free(sa);
    }
    for (int k = 0; k < 2; k++) {
        Backend *be = be2[k];
        be->release(be, x[k]), be->release(be, pre[k]), be->release(be, act[k]), be->release(be, W[k]);
        if (b[k]) be->release(be, b[k]);
    }
    for (int v = 0; v < 3; v++) free(gp[v]), free(ga[v]);
    free(xh), free(wh), free(bh);
}
#endif

TEST(fused_epilogues_equal_unfused) {
#ifndef DINO_HAVE_CUDA
    test_skip("built without CUDA (no nvcc found)");
#else
    if (emulating()) test_skip("the fusion is a cuda backend kernel (the emulation is the composition itself)");
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *E = emulated_backend(CUDA_GEMM_BF16, "rn"), *C = backend_cpu_new();
    Rng r = rng_make(151, 0, 0, 0);
    // vit_tiny's fc1 on 129 rows; a 37-token image; one row; n_in 18 (cuBLASLt declines the fp32 path's bias)
    const int shapes[][3] = {{129, 192, 768}, {37, 64, 96}, {1, 16, 24}, {7, 18, 36}};
    for (int swiglu = 0; swiglu < 2; swiglu++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
            for (int bf16 = 1; bf16 >= 0; bf16--)
                for (int bias = 1; bias >= 0; bias--) {
                    if (k == 0 && !bias) continue; // the large shape with a bias only
                    const int Hd = swiglu ? shapes[k][2] / 2 : shapes[k][2];
                    linear_act_case(G, E, C, swiglu, shapes[k][0], shapes[k][1], Hd, bias, bf16, &r);
                }
    // the environment switch: 0 and 1 accepted, another value refused with a message
    char err[DINO_ERRLEN] = "";
    const char *old = getenv("DINO_CUDA_FUSE_EPILOGUES");
    char *saved_env = old ? strdup(old) : NULL;
    setenv("DINO_CUDA_FUSE_EPILOGUES", "yes", 1);
    Backend *be = backend_cuda_new(0, err);
    CHECK(be == NULL && strstr(err, "DINO_CUDA_FUSE_EPILOGUES=yes"), "a bad DINO_CUDA_FUSE_EPILOGUES: '%s'", err);
    for (int on = 0; on < 2; on++) {
        setenv("DINO_CUDA_FUSE_EPILOGUES", on ? "1" : "0", 1);
        be = backend_cuda_new(0, err);
        CHECK(be != NULL && backend_cuda_set_fuse_epilogues(be, -1) == on, "DINO_CUDA_FUSE_EPILOGUES=%d: %s", on, err);
        if (be) backend_cuda_free(be);
    }
    if (saved_env) setenv("DINO_CUDA_FUSE_EPILOGUES", saved_env, 1), free(saved_env);
    else unsetenv("DINO_CUDA_FUSE_EPILOGUES");
    backend_free(C), backend_free(E);
    gpu_free(G);
#endif
}

// The memory plan counts the cuda layout exactly: a ViT's activations (bf16 branch buffers, fp32 stream)
// on the plan backend with the cuda layout take the bytes the cuda backend really allocates (device memory
// in use before and after, less cudaMalloc's rounding of each buffer to 256 bytes), about 0.6x the fp32
// layout; with fp32 GEMMs the cuda backend keeps fp32 activations, as the cpu layout.
TEST(plan_counts_bf16_activation_layout) {
#ifndef DINO_HAVE_CUDA
    test_skip("built without CUDA (no nvcc found)");
#else
    if (emulating()) test_skip("the emulation has no device memory to measure");
    VitConfig cfg;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&cfg, "vit_tiny", 14, 98, 4, "mlp", err) == 0, "%s", err);
    cfg.depth = 3;
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "backbone.");
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (int mode = 0; mode < 2; mode++) {
            Backend *G = gpu_backend(fp32 ? CUDA_GEMM_FP32 : CUDA_GEMM_BF16), *P = backend_plan_new(!fp32);
            size_t free0, free1, total;
            backend_cuda_mem_info(G, &free0, &total);
            VitActs *ag = vit_acts_new(G, &vit, 4, 98, (VitActsMode)mode);
            backend_cuda_mem_info(G, &free1, &total);
            VitActs *ap = vit_acts_new(P, &vit, 4, 98, (VitActsMode)mode);
            Backend *F = backend_plan_new(0);
            VitActs *af = vit_acts_new(F, &vit, 4, 98, (VitActsMode)mode);
            const size_t real = free0 - free1, planned = backend_plan_live_bytes(P), fp32_bytes = backend_plan_live_bytes(F);
            printf("  %s GEMMs, %s: cuda %zu bytes, plan %zu (acts %zu), fp32 layout %zu (%.2fx)\n", fp32 ? "fp32" : "bf16",
                   mode ? "recompute" : "stored", real, planned, vit_acts_bytes(ag), fp32_bytes,
                   (double)planned / fp32_bytes);
            CHECK(vit_acts_bytes(ag) == planned && vit_acts_bytes(ap) == planned, "vit_acts_bytes %zu / %zu, plan %zu",
                  vit_acts_bytes(ag), vit_acts_bytes(ap), planned);
            CHECK(real >= planned && real - planned <= 256 * 300, "cuda allocated %zu bytes, the plan says %zu", real,
                  planned);
            if (!fp32) CHECK(planned < 0.75 * fp32_bytes, "bf16 layout %zu bytes, not well below fp32's %zu", planned, fp32_bytes);
            vit_acts_free(G, ag), vit_acts_free(P, ap), vit_acts_free(F, af);
            // the parameters' bf16 weight copy: 2 bytes per parameter on both (none with fp32 GEMMs)
            float *pg = G->alloc(G, sizeof(float) * tab.total), *pp = P->alloc(P, sizeof(float) * tab.total);
            size_t f2, f3;
            backend_cuda_mem_info(G, &f2, &total);
            const size_t live0 = backend_plan_live_bytes(P), cg = G->param_copy_register(G, pg, tab.total);
            backend_cuda_mem_info(G, &f3, &total);
            const size_t cp = P->param_copy_register(P, pp, tab.total);
            CHECK(cg == cp && cp == (fp32 ? 0 : 2 * tab.total) && backend_plan_live_bytes(P) - live0 == cp &&
                      f2 - f3 >= cg && f2 - f3 - cg <= 256,
                  "weight copy: cuda %zu bytes (%zu allocated), plan %zu (%zu counted)", cg, f2 - f3, cp,
                  backend_plan_live_bytes(P) - live0);
            G->release(G, pg), P->release(P, pp);
            CHECK(backend_plan_live_bytes(P) == live0 - sizeof(float) * tab.total, "the plan kept the copy after release");
            backend_free(P), backend_free(F);
            gpu_free(G);
        }
    vit_free(&vit);
    param_table_free(&tab);
#endif
}

// ---- the DINOv2 objective: heads, losses, optimizer (fp32 paths: TOL_FP32 per element) ------------
// Sizes of the reference heads: K = 65536 prototypes, bottleneck 256, rows 2B = 64 teacher CLS rows or
// 10B = 320 student rows (B = 32), KoLeo / KDE on B x D with D 384 (ViT-S) and 1024 (ViT-L).

// A scalar (loss) within 1e-5 relative.
static void check_scalar(const char *what, Backend *G, const float *g_dev, Backend *C, const float *c_mem) {
    float g, c;
    G->to_host(G, &g, g_dev, sizeof g);
    C->to_host(C, &c, c_mem, sizeof c);
    printf("  %-34s gpu %.9g cpu %.9g  err/tol=%.3g\n", what, (double)g, (double)c,
           fabs((double)g - c) / (TOL_FP32 * fabs((double)c) + 1e-300));
    CHECK(fabsf(g - c) <= TOL_FP32 * fabsf(c) && !isnan(g), "%s: gpu %.9g cpu %.9g", what, (double)g, (double)c);
}

static void check_pair(const char *what, Backend *G, const Pair *p, double rtol) {
    float *g = pair_gpu_result(G, p);
    check_elems(what, g, p->c, NULL, p->n, rtol);
    free(g);
}

TEST(l2norm_weightnorm_fwd_bwd) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(101, 0, 0, 0);
    const float eps = 1e-12f;
    const int rows_list[2] = {64, 320};
    for (int t = 0; t < 2; t++) {
        const int rows = rows_list[t], n = 256;
        printf(" l2norm rows=%d n=%d\n", rows, n);
        Pair x = pair_new(C, G, (size_t)rows * n, 0, 1, &r, 0), dout = pair_new(C, G, (size_t)rows * n, 0, 1, &r, 0);
        // row 3 all zeros: the clamp branch (norm <= eps) in both directions
        memset(x.h + 3 * n, 0, sizeof(float) * n);
        C->to_device(C, x.c, x.h, sizeof(float) * x.n), G->to_device(G, x.g, x.h, sizeof(float) * x.n);
        Pair out = pair_new(C, G, x.n, 0, 0, &r, 0), nrm = pair_new(C, G, (size_t)rows, 0, 0, &r, 0);
        Pair dx = pair_new(C, G, x.n, 0, 0, &r, 0);
        C->l2norm_fwd(C, out.c, nrm.c, x.c, rows, n, eps), G->l2norm_fwd(G, out.g, nrm.g, x.g, rows, n, eps);
        C->l2norm_bwd(C, dx.c, dout.c, x.c, nrm.c, rows, n, eps);
        G->l2norm_bwd(G, dx.g, dout.g, x.g, nrm.g, rows, n, eps);
        check_pair("l2norm out", G, &out, TOL_FP32);
        check_pair("l2norm norm", G, &nrm, TOL_FP32);
        check_pair("l2norm dx", G, &dx, TOL_FP32);
        Pair *all[] = {&x, &dout, &out, &nrm, &dx};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
    }
    const int K = K_PROTOTYPES, n = 256;
    printf(" weightnorm K=%d n=%d\n", K, n);
    Pair g = pair_new(C, G, K, 1, 0.2f, &r, 0), v = pair_new(C, G, (size_t)K * n, 0, 0.06f, &r, 0);
    Pair W = pair_new(C, G, v.n, 0, 0, &r, 0), vn = pair_new(C, G, K, 0, 0, &r, 0);
    Pair dW = pair_new(C, G, v.n, 0, 1, &r, 0);
    Pair dg = pair_new(C, G, K, 0, 1, &r, 0), dv = pair_new(C, G, v.n, 0, 1, &r, 0); // accumulated into
    C->weightnorm_fwd(C, W.c, vn.c, g.c, v.c, K, n), G->weightnorm_fwd(G, W.g, vn.g, g.g, v.g, K, n);
    C->weightnorm_bwd(C, dg.c, dv.c, dW.c, g.c, v.c, vn.c, K, n);
    G->weightnorm_bwd(G, dg.g, dv.g, dW.g, g.g, v.g, vn.g, K, n);
    check_pair("weightnorm W", G, &W, TOL_FP32);
    check_pair("weightnorm vnorm", G, &vn, TOL_FP32);
    check_pair("weightnorm dg (accumulated)", G, &dg, TOL_FP32);
    check_pair("weightnorm dv (accumulated)", G, &dv, TOL_FP32);
    Pair *all[] = {&g, &v, &W, &vn, &dW, &dg, &dv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
    backend_free(C);
    gpu_free(G);
}

TEST(softmax_center_col_sum_center_update_entropy) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(102, 0, 0, 0);
    const int K = K_PROTOTYPES;
    const int rows_list[2] = {64, 320};
    for (int t = 0; t < 2; t++) {
        const int rows = rows_list[t];
        printf(" softmax_center rows=%d K=%d\n", rows, K);
        // teacher logits of a few units (a weight-normalized head on unit vectors), temperature 0.04
        Pair z = pair_new(C, G, (size_t)rows * K, 0, 2, &r, 0), center = pair_new(C, G, K, 0, 0.5f, &r, 0);
        Pair P = pair_new(C, G, z.n, 0, 0, &r, 0), sum = pair_new(C, G, K, 0, 0, &r, 0);
        Pair ent = pair_new(C, G, 1, 0, 0, &r, 0);
        for (int with_center = 0; with_center < 2; with_center++) {
            C->softmax_center(C, P.c, z.c, with_center ? center.c : NULL, rows, K, 0.04f);
            G->softmax_center(G, P.g, z.g, with_center ? center.g : NULL, rows, K, 0.04f);
            check_pair(with_center ? "softmax_center P" : "softmax_center P (no centre)", G, &P, TOL_FP32);
        }
        C->entropy_mean(C, ent.c, P.c, rows, K), G->entropy_mean(G, ent.g, P.g, rows, K);
        check_scalar("entropy_mean", G, ent.g, C, ent.c);
        C->col_sum(C, sum.c, z.c, rows, K), G->col_sum(G, sum.g, z.g, rows, K);
        check_pair("col_sum", G, &sum, TOL_FP32);
        C->center_update(C, center.c, sum.c, K, 1.0f / rows, 0.9f);
        G->center_update(G, center.g, sum.g, K, 1.0f / rows, 0.9f);
        check_pair("center_update", G, &center, TOL_FP32);
        Pair *all[] = {&z, &center, &P, &sum, &ent};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
    }
    backend_free(C);
    gpu_free(G);
}

// A stand-in for `world` ranks that all hold the same data: the sum over ranks is world times the
// buffer (in the backend's memory, as the real collectives). Exercises the Sinkhorn op's calls of the
// collective on device buffers, the shift's division by world and n_global.
static void twin_allreduce(Collective *c, float *buf, size_t n) {
    Backend *be = c->ctx;
    be->scale(be, buf, (float)c->world, n);
}

TEST(sinkhorn_single_and_collective) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(103, 0, 0, 0);
    const int K = K_PROTOTYPES;
    const int rows_list[2] = {64, 320};
    for (int t = 0; t < 2; t++) {
        const int rows = rows_list[t];
        Pair z = pair_new(C, G, (size_t)rows * K, 0, 2, &r, 0), P = pair_new(C, G, z.n, 0, 0, &r, 0);
        for (int world = 1; world <= 2; world++) {
            printf(" sinkhorn rows=%d K=%d world=%d\n", rows, K, world);
            Collective cc = {.ctx = C, .rank = 0, .world = world, .allreduce_sum_f32 = twin_allreduce};
            Collective cg = {.ctx = G, .rank = 0, .world = world, .allreduce_sum_f32 = twin_allreduce};
            const float n_global = (float)rows * world;
            C->sinkhorn(C, world > 1 ? &cc : NULL, P.c, z.c, rows, K, 0.07f, 3, n_global);
            G->sinkhorn(G, world > 1 ? &cg : NULL, P.g, z.g, rows, K, 0.07f, 3, n_global);
            check_pair("sinkhorn P", G, &P, TOL_FP32);
        }
        pair_free(C, G, &z), pair_free(C, G, &P);
    }
    backend_free(C);
    gpu_free(G);
}

// The teacher targets' default kernels (fewer passes over the logits: an exponential or a quotient
// recomputed instead of stored and read back) against the earlier ones (DINO_CUDA_TARGETS_UNFUSED=1):
// the same float operations in the same order, so the same bits (softmax_center with and without the
// centre; Sinkhorn-Knopp with 1 and 3 iterations, alone and with a collective). The cpu comparison of
// both is the two tests above.
TEST(teacher_targets_fewer_passes_same_bits) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(105, 0, 0, 0);
    const int K = K_PROTOTYPES, rows = 72;
    Pair z = pair_new(C, G, (size_t)rows * K, 0, 2, &r, 0), center = pair_new(C, G, K, 0, 0.5f, &r, 0);
    Pair P = pair_new(C, G, z.n, 0, 0, &r, 0);
    float *out[2];
    for (int c = 0; c < 2 + 4; c++) { // 0, 1: softmax_center without, with centre; 2..5: Sinkhorn (iterations, world)
        const int n_iter = c < 4 ? 1 : 3, world = 1 + (c % 2);
        Collective cg = {.ctx = G, .rank = 0, .world = world, .allreduce_sum_f32 = twin_allreduce};
        for (int unfused = 0; unfused < 2; unfused++) {
            if (unfused) CHECK(setenv("DINO_CUDA_TARGETS_UNFUSED", "1", 1) == 0, "setenv");
            G->zero(G, P.g, sizeof(float) * P.n);
            if (c < 2) G->softmax_center(G, P.g, z.g, c ? center.g : NULL, rows, K, 0.04f);
            else G->sinkhorn(G, world > 1 ? &cg : NULL, P.g, z.g, rows, K, 0.07f, n_iter, (float)rows * world);
            out[unfused] = pair_gpu_result(G, &P);
            unsetenv("DINO_CUDA_TARGETS_UNFUSED");
        }
        size_t diff = 0;
        for (size_t i = 0; i < P.n; i++) diff += memcmp(&out[0][i], &out[1][i], sizeof(float)) != 0;
        printf(" %s%s: %zu of %zu values differ\n", c < 2 ? "softmax_center" : "sinkhorn",
               c < 2 ? (c ? " (centre)" : "") : (world > 1 ? " (collective)" : ""), diff, P.n);
        CHECK(diff == 0, "case %d: the fewer-pass kernels change %zu values", c, diff);
        double sum = 0;
        for (size_t i = 0; i < (size_t)K; i++) sum += out[0][i];
        CHECK(fabs(sum - 1) < 1e-3, "case %d: row 0 sums to %.6f", c, sum);
        free(out[0]), free(out[1]);
    }
    pair_free(C, G, &z), pair_free(C, G, &center), pair_free(C, G, &P);
    backend_free(C);
    gpu_free(G);
}

TEST(softmax_ce_loss_and_gradient) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(104, 0, 0, 0);
    const int K = K_PROTOTYPES, B = 32;
    // (student rows, target rows): local crops vs the 2 global targets (t[r % t_rows]), globals vs globals
    const int rows_list[2] = {10 * B, 2 * B}, trows_list[2] = {2 * B, 2 * B};
    for (int t = 0; t < 2; t++) {
        const int rows = rows_list[t], t_rows = trows_list[t];
        printf(" softmax_ce rows=%d t_rows=%d K=%d\n", rows, t_rows, K);
        Pair s = pair_new(C, G, (size_t)rows * K, 0, 0.5f, &r, 0), zt = pair_new(C, G, (size_t)t_rows * K, 0, 2, &r, 0);
        Pair T = pair_new(C, G, zt.n, 0, 0, &r, 0), w = pair_new(C, G, (size_t)rows, 1, 0.3f, &r, 0);
        Pair loss = pair_new(C, G, (size_t)rows, 0, 0, &r, 0), ds = pair_new(C, G, s.n, 0, 0, &r, 0);
        // soft targets as the teacher makes them
        C->softmax_center(C, T.c, zt.c, NULL, t_rows, K, 0.04f);
        G->to_device(G, T.g, T.c, sizeof(float) * T.n); // the same targets on both (host memory on the CPU)
        C->softmax_ce(C, loss.c, ds.c, s.c, T.c, w.c, rows, t_rows, K, 0.1f, 0.37f);
        G->softmax_ce(G, loss.g, ds.g, s.g, T.g, w.g, rows, t_rows, K, 0.1f, 0.37f);
        check_pair("softmax_ce loss", G, &loss, TOL_FP32);
        check_pair("softmax_ce ds (weighted)", G, &ds, TOL_FP32);
        C->softmax_ce(C, NULL, ds.c, s.c, T.c, NULL, rows, t_rows, K, 0.1f, 1.0f);
        G->softmax_ce(G, NULL, ds.g, s.g, T.g, NULL, rows, t_rows, K, 0.1f, 1.0f);
        check_pair("softmax_ce ds (w NULL, no loss)", G, &ds, TOL_FP32);
        Pair *all[] = {&s, &zt, &T, &w, &loss, &ds};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
    }
    backend_free(C);
    gpu_free(G);
}

TEST(koleo_kde_fwd_bwd) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(105, 0, 0, 0);
    const int Bs[2] = {32, 64}, Ds[2] = {384, 1024};
    for (int t = 0; t < 2; t++) {
        const int B = Bs[t], D = Ds[t];
        printf(" koleo / kde B=%d D=%d\n", B, D);
        // clustered features (a shared mean plus noise), as a CLS batch that is partly collapsed
        Pair x = pair_new(C, G, (size_t)B * D, 0.3f, 1, &r, 0), dx = pair_new(C, G, x.n, 0, 1, &r, 0);
        Pair loss = pair_new(C, G, 1, 0, 0, &r, 0);
        C->koleo(C, loss.c, dx.c, x.c, B, D, 0.1f), G->koleo(G, loss.g, dx.g, x.g, B, D, 0.1f);
        check_scalar("koleo loss", G, loss.g, C, loss.c);
        check_pair("koleo dx (accumulated)", G, &dx, TOL_FP32);
        C->koleo(C, loss.c, NULL, x.c, B, D, 0.1f), G->koleo(G, loss.g, NULL, x.g, B, D, 0.1f);
        check_scalar("koleo loss (no gradient)", G, loss.g, C, loss.c);
        C->kde(C, loss.c, dx.c, x.c, B, D, 5.0f, 0.05f), G->kde(G, loss.g, dx.g, x.g, B, D, 5.0f, 0.05f);
        check_scalar("kde loss", G, loss.g, C, loss.c);
        check_pair("kde dx (accumulated)", G, &dx, TOL_FP32);
        pair_free(C, G, &x), pair_free(C, G, &dx), pair_free(C, G, &loss);
    }
    backend_free(C);
    gpu_free(G);
}

// Gram anchoring (fused forward + backward) with the backend's default bf16 GEMM setting: the op runs
// its GEMMs in fp32 regardless, so the fp32 tolerance holds.
TEST(gram_loss_fwd_bwd) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(108, 0, 0, 0);
    const int Bs[2] = {3, 2}, Ns[2] = {49, 100}, Ds[2] = {64, 384};
    for (int c = 0; c < 2; c++) {
        const int B = Bs[c], N = Ns[c], D = Ds[c];
        const size_t n = (size_t)B * N * D;
        printf(" gram B=%d N=%d D=%d\n", B, N, D);
        // the teacher's features: the student's plus as much noise, so that the signs of S and T often differ
        // ds starts at the size of the gradient (~1e-5), so that the accumulation is tested but does not hide it
        Pair s = pair_new(C, G, n, 0.2f, 1, &r, 0), ds = pair_new(C, G, n, 0, 1e-5f, &r, 0);
        Pair t = pair_new(C, G, n, 0, 1.0f, &r, 0), loss = pair_new(C, G, 1, 0, 0, &r, 0);
        for (size_t i = 0; i < n; i++) t.h[i] += s.h[i];
        C->to_device(C, t.c, t.h, sizeof(float) * n), G->to_device(G, t.g, t.h, sizeof(float) * n);
        for (int neg = 0; neg <= 2; neg++) {
            C->gram_loss(C, loss.c, ds.c, s.c, t.c, B, N, D, 1, neg, 0.7f);
            G->gram_loss(G, loss.g, ds.g, s.g, t.g, B, N, D, 1, neg, 0.7f);
            check_scalar(neg == 0 ? "gram loss" : neg == 1 ? "gram loss (remove_neg)" : "gram loss (teacher neg)", G,
                         loss.g, C, loss.c);
            check_pair("gram ds (accumulated)", G, &ds, TOL_FP32);
        }
        C->gram_loss(C, loss.c, NULL, s.c, t.c, B, N, D, 0, 0, 1.0f);
        G->gram_loss(G, loss.g, NULL, s.g, t.g, B, N, D, 0, 0, 1.0f);
        check_scalar("gram loss (unnormalized, no gradient)", G, loss.g, C, loss.c);
        pair_free(C, G, &s), pair_free(C, G, &ds), pair_free(C, G, &t), pair_free(C, G, &loss);
    }
    backend_free(C);
    gpu_free(G);
}

TEST(adamw_ema) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(106, 0, 0, 0);
    const size_t n = 3 * 1000 * 1000 + 5;
    Pair p = pair_new(C, G, n, 0, 0.02f, &r, 0), t = pair_new(C, G, n, 0, 0.02f, &r, 0);
    Pair m = pair_new(C, G, n, 0, 0, &r, 0), v = pair_new(C, G, n, 0, 0, &r, 0);
    for (long step = 1; step <= 3; step++) {
        // a fresh gradient each step, scaled over decades as real gradients are
        Pair g = pair_new(C, G, n, 0, step == 2 ? 1e-3f : 1.0f, &r, 0);
        C->adamw(C, p.c, g.c, m.c, v.c, n, 1e-3f, 0.04f, 0.9f, 0.999f, 1e-8f, step);
        G->adamw(G, p.g, g.g, m.g, v.g, n, 1e-3f, 0.04f, 0.9f, 0.999f, 1e-8f, step);
        C->ema(C, t.c, p.c, n, 0.992f), G->ema(G, t.g, p.g, n, 0.992f);
        pair_free(C, G, &g);
    }
    // subrange (ZeRO-1 shards call the ops on [lo, hi) of the flat buffers)
    Pair g = pair_new(C, G, n, 0, 1, &r, 0);
    const size_t lo = 1000003, len = 777777;
    C->adamw(C, p.c + lo, g.c + lo, m.c + lo, v.c + lo, len, 2e-3f, 0.1f, 0.9f, 0.999f, 1e-8f, 4);
    G->adamw(G, p.g + lo, g.g + lo, m.g + lo, v.g + lo, len, 2e-3f, 0.1f, 0.9f, 0.999f, 1e-8f, 4);
    C->ema(C, t.c + lo, p.c + lo, len, 0.5f), G->ema(G, t.g + lo, p.g + lo, len, 0.5f);
    check_pair("adamw p", G, &p, TOL_FP32);
    check_pair("adamw m", G, &m, TOL_FP32);
    check_pair("adamw v", G, &v, TOL_FP32);
    check_pair("ema teacher", G, &t, TOL_FP32);
    Pair *all[] = {&p, &t, &m, &v, &g};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
    backend_free(C);
    gpu_free(G);
}

// ---- the step's scalar block (model/step_scalars.h) -------------------------------------------------
// Every *_ss op against the cpu backend, and against its by-value twin on the same backend (the values
// it derives on the device from the block are the bits the host derived): sums of squares into the block,
// clip coefficients and AdamW's count, clipping, AdamW, EMA, softmax centering, the NaN flag and what it
// guards.
static DinoStepScalars block_read(Backend *be, const DinoStepScalars *d) {
    DinoStepScalars h;
    be->to_host(be, &h, d, sizeof h);
    return h;
}

TEST(step_scalar_ops) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    Rng r = rng_make(110, 0, 0, 0);
    const size_t n = 1000 * 1000 + 3;
    DinoStepScalars h;
    memset(&h, 0, sizeof h);
    AdamW opt = {.beta1 = 0.9f, .beta2 = 0.999f, .step = 2};
    adamw_fill_scalars(&opt, &h, 1.3e-3, 7e-4, 0.05);
    h.in.momentum = 0.991, h.in.teacher_temp = 0.055, h.in.adam_step_set = -1, h.state.adam_step = 2;
    DinoStepScalars *sc = C->alloc(C, sizeof h), *sg = G->alloc(G, sizeof h);
    C->to_device(C, sc, &h, sizeof h), G->to_device(G, sg, &h, sizeof h);
    // sums of squares of two runs into group 0, one into group 1: the host's sum of the read-back sums
    Pair x = pair_new(C, G, n, 0, 0.3f, &r, 0);
    const size_t n1 = n / 3;
    C->sum_squares_ss(C, x.c, n, 0, sc), C->sum_squares_ss(C, x.c + 5, n - 5, 0, sc), C->sum_squares_ss(C, x.c, n1, 1, sc);
    G->sum_squares_ss(G, x.g, n, 0, sg), G->sum_squares_ss(G, x.g + 5, n - 5, 0, sg), G->sum_squares_ss(G, x.g, n1, 1, sg);
    DinoStepScalars bg = block_read(G, sg), bc = block_read(C, sc);
    double host0 = 0;
    host0 += G->sum_squares(G, x.g, n);
    host0 += G->sum_squares(G, x.g + 5, n - 5);
    CHECK(bg.out.grad_ss[0] == host0 && bg.out.grad_ss[1] == G->sum_squares(G, x.g, n1) && bg.out.grad_ss[2] == 0,
          "sums in the block %.17g %.17g, read back and added on the host %.17g %.17g", bg.out.grad_ss[0],
          bg.out.grad_ss[1], host0, G->sum_squares(G, x.g, n1));
    for (int g = 0; g < 2; g++) CHECK_CLOSE(bg.out.grad_ss[g], bc.out.grad_ss[g], 0, 1e-12);
    // clip coefficients, count, bias corrections
    C->update_prepare_ss(C, 3, 0.8, opt.beta1, opt.beta2, sc), G->update_prepare_ss(G, 3, 0.8, opt.beta1, opt.beta2, sg);
    bg = block_read(G, sg), bc = block_read(C, sc);
    for (int g = 0; g < 3; g++) {
        CHECK(bg.out.clip_coef[g] == clip_coef(sqrt(bg.out.grad_ss[g]), 0.8), "group %d: clip coefficient %.17g", g,
              bg.out.clip_coef[g]);
        CHECK_CLOSE(bg.out.clip_coef[g], bc.out.clip_coef[g], 0, 1e-12);
    }
    CHECK(bg.out.clip_coef[0] < 1 && bg.out.clip_coef[2] == 1, "group 0 clipped, group 2 (no gradient) not");
    CHECK(bg.state.adam_step == 3 && bg.out.bias1 == 1.0 - pow(0.9f, 3.0) && bg.out.bias2 == 1.0 - pow(0.999f, 3.0) &&
              memcmp(&bg.out.bias1, &bc.out.bias1, 2 * sizeof(double)) == 0,
          "step 3: count %g, bias corrections %.17g %.17g", bg.state.adam_step, bg.out.bias1, bg.out.bias2);
    // clipping: the by-value scale with the same coefficient, bit for bit; a coefficient of 1 touches nothing
    Pair y = pair_new(C, G, n, 0, 0.3f, &r, 0);
    G->copy(G, y.g, x.g, sizeof(float) * n);
    C->clip_scale_ss(C, x.c, n, 0, sc), G->clip_scale_ss(G, x.g, n, 0, sg);
    G->scale(G, y.g, (float)bg.out.clip_coef[0], n);
    float *xg = pair_gpu_result(G, &x), *yg = pair_gpu_result(G, &y);
    CHECK(memcmp(xg, yg, sizeof(float) * n) == 0, "clip_scale_ss differs from scale by the same coefficient");
    G->clip_scale_ss(G, x.g, n, 2, sg);
    free(yg), yg = pair_gpu_result(G, &x);
    CHECK(memcmp(xg, yg, sizeof(float) * n) == 0, "a clip coefficient of 1 changed the gradients");
    free(xg), free(yg);
    check_pair("clip_scale_ss", G, &x, TOL_FP32);
    // AdamW (a block's layer-wise lr multiplier, then a last layer) and the EMA, against the by-value ops
    Pair p = pair_new(C, G, n, 0, 0.02f, &r, 0), m = pair_new(C, G, n, 0, 1e-3f, &r, 0);
    Pair v = pair_new(C, G, n, 1e-4f, 0, &r, 0), t = pair_new(C, G, n, 0, 0.02f, &r, 0);
    float *p2 = G->alloc(G, sizeof(float) * n), *m2 = G->alloc(G, sizeof(float) * n), *v2 = G->alloc(G, sizeof(float) * n);
    float *t2 = G->alloc(G, sizeof(float) * n);
    G->copy(G, p2, p.g, sizeof(float) * n), G->copy(G, m2, m.g, sizeof(float) * n), G->copy(G, v2, v.g, sizeof(float) * n);
    G->copy(G, t2, t.g, sizeof(float) * n);
    const float lm = 0.6561f, wm = 1.0f;
    const size_t lo = 333333;
    C->adamw_ss(C, p.c, x.c, m.c, v.c, lo, lm, wm, 0, 0.9f, 0.999f, 1e-8f, sc);
    G->adamw_ss(G, p.g, x.g, m.g, v.g, lo, lm, wm, 0, 0.9f, 0.999f, 1e-8f, sg);
    G->adamw(G, p2, x.g, m2, v2, lo, (float)(1.3e-3 * lm), (float)(0.05 * wm), 0.9f, 0.999f, 1e-8f, 3);
    C->adamw_ss(C, p.c + lo, x.c + lo, m.c + lo, v.c + lo, n - lo, 1.0f, 0.0f, 1, 0.9f, 0.999f, 1e-8f, sc);
    G->adamw_ss(G, p.g + lo, x.g + lo, m.g + lo, v.g + lo, n - lo, 1.0f, 0.0f, 1, 0.9f, 0.999f, 1e-8f, sg);
    G->adamw(G, p2 + lo, x.g + lo, m2 + lo, v2 + lo, n - lo, (float)(7e-4 * 1.0f), 0.0f, 0.9f, 0.999f, 1e-8f, 3);
    C->ema_ss(C, t.c, p.c, n, sc), G->ema_ss(G, t.g, p.g, n, sg), G->ema(G, t2, p2, n, (float)0.991);
    const Pair *mine[4] = {&p, &m, &v, &t};
    float *twin[4] = {p2, m2, v2, t2};
    const char *names[4] = {"adamw_ss p", "adamw_ss m", "adamw_ss v", "ema_ss teacher"};
    for (int k = 0; k < 4; k++) {
        float *a = pair_gpu_result(G, mine[k]), *b = dino_malloc(sizeof(float) * n);
        G->to_host(G, b, twin[k], sizeof(float) * n);
        CHECK(memcmp(a, b, sizeof(float) * n) == 0, "%s differs from the by-value op with the host's values", names[k]);
        free(a), free(b);
        check_pair(names[k], G, mine[k], TOL_FP32);
    }
    // softmax centering at the block's temperature
    const int rows = 9, K = 1000;
    Pair z = pair_new(C, G, (size_t)rows * K, 0, 1, &r, 0), P = pair_new(C, G, (size_t)rows * K, 0, 0, &r, 0);
    Pair cen = pair_new(C, G, K, 0, 0.1f, &r, 0);
    float *P2 = G->alloc(G, sizeof(float) * rows * K);
    C->softmax_center_ss(C, P.c, z.c, cen.c, rows, K, sc), G->softmax_center_ss(G, P.g, z.g, cen.g, rows, K, sg);
    G->softmax_center(G, P2, z.g, cen.g, rows, K, (float)0.055);
    float *Pa = pair_gpu_result(G, &P), *Pb = dino_malloc(sizeof(float) * rows * K);
    G->to_host(G, Pb, P2, sizeof(float) * rows * K);
    CHECK(memcmp(Pa, Pb, sizeof(float) * rows * K) == 0, "softmax_center_ss differs from softmax_center at its temperature");
    free(Pa), free(Pb);
    check_pair("softmax_center_ss", G, &P, TOL_FP32);
    // the NaN flag: none in finite data; an infinity in the last element or a NaN in the first raise it
    const float bad[2] = {INFINITY, NAN};
    for (int k = 0; k < 2; k++) {
        Backend *be = k ? C : G;
        DinoStepScalars *s = k ? sc : sg;
        float *buf = k ? x.c : x.g;
        be->nonfinite_check_ss(be, buf, n, s);
        CHECK(block_read(be, s).out.nonfinite == 0, "%s: a finite buffer raised the NaN flag", be->name);
        be->to_device(be, buf + (k ? 0 : n - 1), &bad[k], sizeof(float));
        be->nonfinite_check_ss(be, buf, n, s);
        CHECK(block_read(be, s).out.nonfinite == 1, "%s: %g did not raise the NaN flag", be->name, bad[k]);
    }
    // the flag raised: AdamW and the EMA do nothing, the revert copies; lowered, the revert does nothing
    float *before = pair_gpu_result(G, &p), *tb = pair_gpu_result(G, &t), *mb = pair_gpu_result(G, &m);
    G->update_prepare_ss(G, 3, 0.8, opt.beta1, opt.beta2, sg);
    CHECK(block_read(G, sg).state.adam_step == 3, "a flagged step advanced AdamW's count");
    G->adamw_ss(G, p.g, y.g, m.g, v.g, n, 1.0f, 1.0f, 0, 0.9f, 0.999f, 1e-8f, sg);
    G->ema_ss(G, t.g, y.g, n, sg);
    float *after = pair_gpu_result(G, &p), *ta = pair_gpu_result(G, &t), *ma = pair_gpu_result(G, &m);
    CHECK(memcmp(before, after, sizeof(float) * n) == 0 && memcmp(tb, ta, sizeof(float) * n) == 0 &&
              memcmp(mb, ma, sizeof(float) * n) == 0,
          "a flagged step changed the parameters, the teacher or the moments");
    G->revert_if_nonfinite_ss(G, p.g, y.g, n, sg);
    free(after), after = pair_gpu_result(G, &p), yg = pair_gpu_result(G, &y);
    CHECK(memcmp(after, yg, sizeof(float) * n) == 0, "revert_if_nonfinite_ss with the flag raised did not copy");
    G->zero(G, &sg->out, sizeof sg->out);
    G->revert_if_nonfinite_ss(G, p.g, t.g, n, sg);
    free(after), after = pair_gpu_result(G, &p);
    CHECK(memcmp(after, yg, sizeof(float) * n) == 0, "revert_if_nonfinite_ss without the flag changed its target");
    free(before), free(after), free(tb), free(ta), free(mb), free(ma), free(yg);
    Pair *all[] = {&x, &y, &p, &m, &v, &t, &z, &P, &cen};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(C, G, all[i]);
    G->release(G, p2), G->release(G, m2), G->release(G, v2), G->release(G, t2), G->release(G, P2);
    C->release(C, sc), G->release(G, sg);
    backend_free(C);
    gpu_free(G);
}

// The loss ops whose weight comes from the step's scalar block (the DINO local-crop weight, the Gram weight:
// DINOv3 schedules move them per step) give the bits of their by-value twins with the weight the host
// derives ((float)(weight * w) / div, (float)w), on both backends: a replayed graph takes a moving weight
// along. Fails when the op ignores the block (the weights here are not 1).
TEST(loss_weight_ss_ops) {
    Backend *bes[2] = {backend_cpu_new(), gpu_backend(CUDA_GEMM_BF16)};
    const int rows = 12, t_rows = 4, K = 300, B = 2, N = 9, D = 16;
    Rng r = rng_make(111, 0, 0, 0);
    float *s = dino_malloc(sizeof(float) * rows * K), *t = dino_malloc(sizeof(float) * t_rows * K);
    float *gs = dino_malloc(sizeof(float) * B * N * D), *gt = dino_malloc(sizeof(float) * B * N * D);
    for (int i = 0; i < rows * K; i++) s[i] = (float)rng_normal(&r);
    for (int i = 0; i < t_rows * K; i++) t[i] = (float)rng_uniform(&r) / K;
    for (int i = 0; i < B * N * D; i++) gs[i] = (float)rng_normal(&r), gt[i] = (float)rng_normal(&r);
    DinoStepScalars h;
    memset(&h, 0, sizeof h);
    h.in.dino_local_weight = 0.37, h.in.gram_weight = 0.6;
    const float weight = 0.9f, div = 12.0f;
    for (int k = 0; k < 2; k++) {
        Backend *be = bes[k];
        DinoStepScalars *ss = be->alloc(be, sizeof h);
        be->to_device(be, ss, &h, sizeof h);
        float *ds = be->alloc(be, sizeof(float) * rows * K), *dv = be->alloc(be, sizeof(float) * rows * K);
        float *ls = be->alloc(be, sizeof(float) * rows), *lv = be->alloc(be, sizeof(float) * rows);
        float *sd = be->alloc(be, sizeof(float) * rows * K), *td = be->alloc(be, sizeof(float) * t_rows * K);
        be->to_device(be, sd, s, sizeof(float) * rows * K), be->to_device(be, td, t, sizeof(float) * t_rows * K);
        be->softmax_ce_ss(be, ls, ds, sd, td, NULL, rows, t_rows, K, 0.1f, weight, div, ss);
        be->softmax_ce(be, lv, dv, sd, td, NULL, rows, t_rows, K, 0.1f, (float)((double)weight * 0.37) / div);
        float *hs = dino_malloc(sizeof(float) * rows * K), *hv = dino_malloc(sizeof(float) * rows * K);
        be->to_host(be, hs, ds, sizeof(float) * rows * K), be->to_host(be, hv, dv, sizeof(float) * rows * K);
        CHECK(memcmp(hs, hv, sizeof(float) * rows * K) == 0, "%s: softmax_ce_ss differs from softmax_ce", be->name);
        be->to_host(be, hs, ls, sizeof(float) * rows), be->to_host(be, hv, lv, sizeof(float) * rows);
        CHECK(memcmp(hs, hv, sizeof(float) * rows) == 0, "%s: softmax_ce_ss's losses differ", be->name);
        // the Gram loss: its gradient accumulated onto the same start
        float *a1 = be->alloc(be, sizeof(float) * B * N * D), *a2 = be->alloc(be, sizeof(float) * B * N * D);
        float *gsd = be->alloc(be, sizeof(float) * B * N * D), *gtd = be->alloc(be, sizeof(float) * B * N * D);
        be->to_device(be, gsd, gs, sizeof(float) * B * N * D), be->to_device(be, gtd, gt, sizeof(float) * B * N * D);
        be->to_device(be, a1, gt, sizeof(float) * B * N * D), be->to_device(be, a2, gt, sizeof(float) * B * N * D);
        be->gram_loss_ss(be, ls, a1, gsd, gtd, B, N, D, 1, 0, 1.0f, ss);
        be->gram_loss(be, lv, a2, gsd, gtd, B, N, D, 1, 0, (float)0.6);
        be->to_host(be, hs, a1, sizeof(float) * B * N * D), be->to_host(be, hv, a2, sizeof(float) * B * N * D);
        CHECK(memcmp(hs, hv, sizeof(float) * B * N * D) == 0, "%s: gram_loss_ss differs from gram_loss", be->name);
        float l1, l2;
        be->to_host(be, &l1, ls, sizeof l1), be->to_host(be, &l2, lv, sizeof l2);
        CHECK(l1 == l2 && isfinite(l1) && l1 > 0, "%s: Gram losses %g %g", be->name, l1, l2);
        void *bufs[] = {ss, ds, dv, ls, lv, sd, td, a1, a2, gsd, gtd};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->release(be, bufs[i]);
        free(hs), free(hv);
    }
    free(s), free(t), free(gs), free(gt);
    backend_free(bes[0]);
    gpu_free(bes[1]);
}

// A training step with NaN losses leaves the whole state (student, teacher, moments, centres, AdamW's
// count) bit for bit as it was, on the GPU as on the CPU (tests/step_scalars_check.h), with graphs on (the
// same bits as off; the late read of the flags is host logic, tested on the cpu: step_scalars.*).
TEST(nan_steps_leave_the_state_bit_identical) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
#ifdef DINO_HAVE_CUDA
    if (!emulating()) backend_cuda_set_graphs(G, 1);
#endif
    ss_nan_steps_leave_state(G, 0);
    gpu_free(G);
}

// The same in graph replay mode: a step (ssl_step = ssl_step_issue + ssl_step_finish) is one segment whose
// update is issued before the host has seen the loss; the device's NaN flag alone keeps a NaN step from
// applying (state bit for bit, AdamW's count on host and device), and the good step after two NaN steps
// gives the bits of the run without them.
TEST(nan_steps_replay_leave_the_state_bit_identical) {
#ifdef DINO_HAVE_CUDA
    if (emulating()) test_skip("graphs are a property of the CUDA backend");
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
    backend_cuda_set_graphs(G, CUDA_GRAPHS_REPLAY);
    const CudaGraphStats before = backend_cuda_graph_stats(G);
    ss_nan_steps_leave_state(G, 0);
    const CudaGraphStats after = backend_cuda_graph_stats(G);
    printf("  %lld graph launches, %lld replayed\n", after.launches - before.launches, after.replays - before.replays);
    CHECK(after.launches > before.launches, "replay mode, yet no graph launched");
    gpu_free(G);
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}

#ifdef DINO_HAVE_CUDA
// With graphs on, the update (ssl_update) is ONE segment with no host wait; recorded once, it replays with
// other values in the scalar block (lr, weight decay, momentum; the teacher temperature for softmax
// centering) and gives the eager bits of those values: no per-step value is in the kernels' arguments.
static void update_replays(void) {
    if (emulating()) test_skip("graphs are a property of the CUDA backend");
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
    char err[DINO_ERRLEN];
    SslConfig cfg;
    ss_small_config(&cfg);
    SslModel m;
    CHECK(ssl_model_init(&m, G, &cfg, 7, err) == 0, "%s", err);
    SsBatch b0 = ss_batch(&cfg, 0, 0), b1 = ss_batch(&cfg, 1, 0), b2 = ss_batch(&cfg, 2, 0);
    SslStepStats st;
    CHECK(ssl_step(&m, G, NULL, &b0.b, &b0.sv, &st, err) == 0, "%s", err); // eager: the scratch grows here
    backend_cuda_set_graphs(G, 1);
    CHECK(ssl_forward_backward(&m, G, NULL, &b1.b, &b1.sv, &st, err) == 0, "%s", err);
    G->sync(G);
    const CudaGraphStats s0 = backend_cuda_graph_stats(G);
    ssl_update(&m, G, &b1.sv, &st);
    const CudaGraphStats s1 = backend_cuda_graph_stats(G);
    G->sync(G);
    const CudaGraphStats s2 = backend_cuda_graph_stats(G);
    printf("  update with graphs on: %lld host waits, %lld graph launches (%lld nodes) until the next sync\n",
           s1.host_waits - s0.host_waits, s2.launches - s0.launches, s2.nodes - s0.nodes);
    CHECK(s1.host_waits == s0.host_waits, "the update waited for the device %lld times", s1.host_waits - s0.host_waits);
    CHECK(s1.launches == s0.launches && s2.launches == s0.launches + 1,
          "the update took %lld graph launches (%lld before the sync), expected one segment", s2.launches - s0.launches,
          s1.launches - s0.launches);
    CHECK(ssl_read_step_stats(&m, G, &st) == 0 && st.grad_norm[0] > 0, "step 1's statistics");
    backend_cuda_set_graphs(G, 0);

    // step 2's update recorded once (nothing runs), then launched with two sets of values
    CHECK(ssl_forward_backward(&m, G, NULL, &b2.b, &b2.sv, &st, err) == 0, "%s", err);
    SsState s_fwd = ss_state_read(&m, G);
    backend_cuda_record_begin(G);
    ssl_update(&m, G, &b2.sv, &st);
    void *exec = backend_cuda_record_end(G);
    SsState s_rec = ss_state_read(&m, G);
    CHECK(memcmp(s_rec.student, s_fwd.student, sizeof(float) * m.tab.total) == 0, "recording the update ran it");
    ss_state_free(&s_rec);
    const ScheduleValues sv[2] = {b2.sv, {.lr = 3 * b2.sv.lr, .wd = 0.11, .momentum = 0.95, .teacher_temp = 0.02,
                                          .last_layer_lr = 0.5 * b2.sv.last_layer_lr}};
    SsState replayed[2], eager[2];
    for (int k = 0; k < 2; k++) {
        ss_state_write(&m, G, &s_fwd);
        DinoStepScalars blk = s_fwd.block;
        blk.in.lr = sv[k].lr, blk.in.wd = sv[k].wd, blk.in.momentum = sv[k].momentum;
        blk.in.last_layer_lr = sv[k].last_layer_lr;
        G->to_device(G, &m.scalars->in, &blk.in, sizeof blk.in);
        backend_cuda_record_launch(G, exec);
        replayed[k] = ss_state_read(&m, G);
        ss_state_write(&m, G, &s_fwd);
        ssl_update(&m, G, &sv[k], &st); // eager (sv[1]: uploaded again by the update, as distillation does)
        ssl_read_step_stats(&m, G, &st);
        eager[k] = ss_state_read(&m, G);
        replayed[k].step = eager[k].step; // the host's count: a replay does not move it
        ss_state_check_same(&m, &eager[k], &replayed[k], k ? "the recording launched with other values vs eager"
                                                           : "the recording launched vs eager");
    }
    CHECK(memcmp(eager[0].student, eager[1].student, sizeof(float) * m.tab.total) != 0 &&
              memcmp(eager[0].teacher, eager[1].teacher, sizeof(float) * m.tab.total) != 0,
          "the two sets of values gave the same update: the check above proves nothing");
    backend_cuda_record_free(G, exec);
    for (int k = 0; k < 2; k++) ss_state_free(&replayed[k]), ss_state_free(&eager[k]);
    ss_state_free(&s_fwd);

    // softmax centering recorded once, launched at two temperatures
    const int rows = 6, K = 300;
    Rng r = rng_make(111, 0, 0, 0);
    float *zh = dino_malloc(sizeof(float) * rows * K), *Pa = dino_malloc(sizeof(float) * rows * K);
    float *Pb = dino_malloc(sizeof(float) * rows * K);
    for (int i = 0; i < rows * K; i++) zh[i] = (float)rng_normal(&r);
    float *z = dual_upload(G, zh, sizeof(float) * rows * K), *P = G->alloc(G, sizeof(float) * rows * K);
    float *P2 = G->alloc(G, sizeof(float) * rows * K);
    DinoStepScalars *blk = G->alloc(G, sizeof *blk);
    backend_cuda_record_begin(G);
    G->softmax_center_ss(G, P, z, NULL, rows, K, blk);
    exec = backend_cuda_record_end(G);
    for (int k = 0; k < 2; k++) {
        const double temp = k ? 0.07 : 0.04;
        G->to_device(G, &blk->in.teacher_temp, &temp, sizeof temp);
        backend_cuda_record_launch(G, exec);
        G->softmax_center(G, P2, z, NULL, rows, K, (float)temp);
        G->to_host(G, Pa, P, sizeof(float) * rows * K), G->to_host(G, Pb, P2, sizeof(float) * rows * K);
        CHECK(memcmp(Pa, Pb, sizeof(float) * rows * K) == 0, "softmax centering recorded, launched at temperature %g: "
              "not the eager bits", temp);
    }
    backend_cuda_record_free(G, exec);
    G->release(G, z), G->release(G, P), G->release(G, P2), G->release(G, blk);
    free(zh), free(Pa), free(Pb);
    ss_batch_free(&b0), ss_batch_free(&b1), ss_batch_free(&b2);
    ssl_model_free(&m, G);
    gpu_free(G);
}
#endif
TEST(ssl_update_one_segment_no_host_wait_replays_new_scalars) {
#ifdef DINO_HAVE_CUDA
    update_replays();
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}

// Every tensor of weights g (gpu) against c (cpu) after steps from init, normwise:
// ||g - c|| <= tol_p * ||c|| + frac * ||c - init|| (see ssl_parity below). Returns the worst error / tolerance.
static double check_params_after_steps(const ParamTable *tab, const char *what, const float *gw, const float *cw,
                                       const float *init, int dim, double tol_p, double frac) {
    double worst = 0;
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        const float *g = gw + t->offset, *c = cw + t->offset, *p0 = init + t->offset;
        double e = 0, nc = 0, du = 0;
        // the key bias of attention has an exactly zero gradient (a constant added to a row of scores
        // leaves its softmax unchanged), so AdamW moves it by +-lr along the sign of rounding noise on
        // any backend: it is left out ([D, 2D) of qkv.bias)
        const int is_qkv_bias = strstr(t->name, "attn.qkv.bias") != NULL;
        const size_t k0 = (size_t)dim, k1 = 2 * (size_t)dim;
        for (size_t j = 0; j < t->numel; j++) {
            if (is_qkv_bias && j >= k0 && j < k1) continue;
            e += ((double)g[j] - c[j]) * ((double)g[j] - c[j]);
            nc += (double)c[j] * c[j];
            du += ((double)c[j] - p0[j]) * ((double)c[j] - p0[j]);
        }
        e = sqrt(e), nc = sqrt(nc), du = sqrt(du);
        double tol = tol_p * nc + frac * du;
        if (tol > 0 && e / tol > worst) worst = e / tol;
        CHECK(e <= tol && !isnan(e), "%s %s: ||gpu - cpu|| %.3g > %.3g (||cpu|| %.3g, ||update|| %.3g)", what, t->name,
              e, tol, nc, du);
    }
    return worst;
}

// ---- one whole SSL step (train/ssl_step.h) on both backends ---------------------------------------
// A tiny model (vit_test: D 48, 2 blocks, a register, drop-path), 4 images x (2 global 16 px + 2 local
// 8 px) crops, iBOT masks, the DINO and iBOT heads shared (K 1024), two steps of forward, backward,
// clipping, AdamW, EMA. Compared: the five logged losses of each step and every student and teacher
// tensor after step 2.
// Tolerances (u = 2^-8):
//  - losses: |gpu - cpu| <= tol_loss * (|cpu| + 0.01): with bf16 GEMMs 8u at step 1 (a dozen chained
//    GEMMs, ~u each, normwise, as vit_parity's forward bound) and 16u at step 2 (after an update made
//    from bf16 gradients); 1e-4 with fp32 GEMMs.
//  - parameters, per tensor, normwise: ||gpu - cpu|| <= tol_p * ||cpu|| + frac * ||cpu - init||. The
//    first AdamW steps move every element by about lr * sign(gradient), so an element whose gradient is
//    within GEMM rounding of 0 may move the other way: with bf16 GEMMs frac = 1/2 of the update's norm
//    (with DINO_CUDA_OPS_EMULATE=rn / trunc the worst tensor, the register tokens whose gradients are
//    small, reaches 0.52 / 0.74 of the whole tolerance), with fp32 GEMMs 1/20. A dropped or wrong update is off by >= its whole
//    norm (sqrt(2) times it when uncorrelated), so the bf16 case catches gross errors and the fp32-GEMM
//    case, where the GEMMs cannot hide anything, checks the kernels' logic tightly. tol_p = 16u (bf16) /
//    1e-5 (fp32) covers parameters that barely moved.
// With cfg->gram (DINOv3 Gram anchoring, 24-px Gram crops resampled 6x6 -> 4x4, the Gram teacher the
// initial EMA teacher, weight 1.5, local-crop weight 0.7) the Gram loss is a sixth compared value.
typedef struct {
    double loss[2][6];
    float *student, *teacher;
} SslRun;

static void ssl_parity_run(Backend *be, const SslConfig *cfg, const float *gcrops, const float *lcrops,
                           const float *gram_crops, uint8_t *const *masks, float *init_out, SslRun *out) {
    SslModel m;
    char err[DINO_ERRLEN];
    CHECK(ssl_model_init(&m, be, cfg, 7, err) == 0, "%s", err);
    if (cfg->gram) ssl_gram_from_teacher(&m, be);
    const size_t total = m.tab.total;
    if (init_out) be->to_host(be, init_out, m.student, sizeof(float) * total);
    float *pinned[3] = {NULL, NULL, NULL};
    if (cfg->staged_upload) { // as the trainer: both batches' crops in page-locked memory, staged ahead
        const size_t ng = sizeof(float) * 2 * cfg->batch * 3 * cfg->global_crop * cfg->global_crop;
        const size_t nl = sizeof(float) * cfg->n_local * cfg->batch * 3 * cfg->local_crop * cfg->local_crop;
        const size_t ngg = sizeof(float) * 2 * cfg->batch * 3 * cfg->gram_crop * cfg->gram_crop;
        pinned[0] = be->host_alloc(be, ng), pinned[1] = be->host_alloc(be, nl);
        memcpy(pinned[0], gcrops, ng), memcpy(pinned[1], lcrops, nl);
        if (cfg->gram) pinned[2] = be->host_alloc(be, ngg), memcpy(pinned[2], gram_crops, ngg);
        for (int it = 0; it < 2; it++) {
            if (cfg->gram) ssl_stage_gram(&m, be, pinned[2], 1);
            ssl_stage_batch(&m, be, pinned[0], pinned[1], masks[it], 1);
        }
    }
    for (int it = 0; it < 2; it++) {
        SslBatch b = {.global_crops = gcrops, .local_crops = lcrops, .masks = masks[it],
                      .drop_key = rng_make(5, 14, (uint64_t)it, 0), .staged = cfg->staged_upload,
                      .gram_crops = gram_crops, .gram_weight = cfg->gram ? 1.5 : 0, .dino_local_weight = 0.7};
        ScheduleValues sv = {.lr = 5e-4, .wd = 0.04, .momentum = 0.9, .teacher_temp = 0.04, .last_layer_lr = 5e-4};
        SslStepStats st;
        CHECK(ssl_step(&m, be, NULL, &b, &sv, &st, err) == 0, "step %d: %s", it, err);
        double l[6] = {st.dino_local_crops_loss, st.dino_global_crops_loss, st.koleo_loss, st.ibot_loss, st.total_loss,
                       st.gram_loss};
        if (cfg->gram) CHECK(st.gram_loss > 0, "step %d: no Gram loss", it);
        memcpy(out->loss[it], l, sizeof l);
    }
    out->student = dino_malloc(sizeof(float) * total), out->teacher = dino_malloc(sizeof(float) * total);
    be->to_host(be, out->student, m.student, sizeof(float) * total);
    be->to_host(be, out->teacher, m.teacher, sizeof(float) * total);
    ssl_model_free(&m, be);
    for (int k = 0; k < 3; k++)
        if (pinned[k]) be->host_free(be, pinned[k]);
}

// vs_emulation: the reference is the CPU's bf16 emulation (as vit_parity_vs), at the loss bound tol_emu
// (both steps) instead of 8u / 16u, and a third of the parameter bound; the GPU on the batched-GEMM
// attention, whose rounding points the emulation models. A GPU's tensor cores sum in their own order:
// recalibrate from its ratios as docs/cuda-backend.md says. Under the execution layer the emulation
// predicts every bf16 value of the forward pass bit for bit (the kernels' own expressions and warp
// summation orders), and the backward's fp32 gradient paths (loss kernels, LayerNorm backward, block
// sums) differ in the last bits, which tips a few GEMM-input roundings: a handful of one-ulp flips,
// which AdamW's sign-like first steps turn into lr-sized moves of near-zero-gradient elements. There
// the bounds are tight: step-1 losses u / 100, step-2 losses u, parameters a twelfth of the fp32
// comparison's (measured: step 1 equal, step 2 within 0.034 of u, parameters 0.061 of the bound; over
// 12 other data draws, before the patch embedding went bf16: step 1 within 0.005 of its bound,
// parameters within 0.78). An emulation that
// misses a kernel's expression fails them: with the reference's GELU (erfc form, vectorised exp)
// instead of the kernel's, one flip in the DINO head's backward spread to 2.5x the parameter bound (it
// was 0.63 of the looser one, which let it pass after the Gram merge changed this test's iBOT masks).
static void ssl_parity_vs(Centering centering, int use_kde, int fp32, int gram, int vs_emulation, double tol_emu);
static void ssl_parity(Centering centering, int use_kde, int fp32, int gram) {
    ssl_parity_vs(centering, use_kde, fp32, gram, 0, 0);
}
static void ssl_parity_vs(Centering centering, int use_kde, int fp32, int gram, int vs_emulation, double tol_emu) {
    Backend *G = gpu_backend(fp32 ? CUDA_GEMM_FP32 : CUDA_GEMM_BF16);
    Backend *C = vs_emulation ? emulated_backend(CUDA_GEMM_BF16, "rn") : backend_cpu_new();
#ifdef DINO_HAVE_CUDA
    // the emulation models the batched-GEMM attention's rounding points (the flash path's differ: with it
    // the SSL steps' register tokens land at 1.6x the quarter bound)
    if (vs_emulation && !emulating()) backend_cuda_set_attention(G, CUDA_ATTENTION_GEMM);
#endif
    char err[DINO_ERRLEN];
    VitConfig vc;
    const int B = 4, NL = 2, GC = 16, LC = 8, P = 4, N = (GC / P) * (GC / P);
    CHECK(vit_config_from_arch(&vc, "vit_test", P, GC, 1, "mlp", err) == 0, "%s", err);
    vc.dim = 48, vc.heads = 3, vc.depth = 2, vc.ffn_hidden = 96, vc.layerscale = 0.5f, vc.drop_path_rate = 0.2f;
    SslConfig cfg;
    ssl_config_default(&cfg, &vc);
    cfg.dino_head = (HeadConfig){.in_dim = 48, .hidden = 96, .bottleneck = 32, .K = 1024, .nlayers = 3};
    cfg.batch = B, cfg.n_local = NL, cfg.global_crop = GC, cfg.local_crop = LC;
    cfg.centering = centering;
    cfg.use_kde = use_kde;
    const int GG = 24;
    if (gram) cfg.gram = 1, cfg.gram_crop = GG, cfg.gram_normalize = 1, cfg.gram_img_level = 1, cfg.reweight_dino_local = 1;
    Rng r = rng_make(107, (uint64_t)centering, (uint64_t)use_kde, (uint64_t)gram);
    float *gcrops = dino_malloc(sizeof(float) * 2 * B * 3 * GC * GC);
    float *lcrops = dino_malloc(sizeof(float) * NL * B * 3 * LC * LC);
    for (int i = 0; i < 2 * B * 3 * GC * GC; i++) gcrops[i] = (float)rng_normal(&r);
    for (int i = 0; i < NL * B * 3 * LC * LC; i++) lcrops[i] = (float)rng_normal(&r);
    float *gram_crops = dino_malloc(sizeof(float) * 2 * B * 3 * GG * GG);
    for (int i = 0; i < 2 * B * 3 * GG * GG; i++) gram_crops[i] = (float)rng_normal(&r);
    uint8_t *masks[2];
    for (int it = 0; it < 2; it++) { // about 30% of the tokens of half the images
        masks[it] = dino_calloc((size_t)2 * B * N, 1);
        for (int i = 0; i < 2 * B; i += 2)
            for (int j = 0; j < N; j++) masks[it][(size_t)i * N + j] = rng_uniform(&r) < 0.3;
    }
    ParamTable tab;
    SslRun rc, rg;
    {
        SslModel probe; // the table, for the tensor names and sizes
        CHECK(ssl_model_init(&probe, C, &cfg, 7, err) == 0, "%s", err);
        tab = probe.tab;
        probe.tab = (ParamTable){0};
        ssl_model_free(&probe, C);
    }
    float *init = dino_malloc(sizeof(float) * tab.total);
    ssl_parity_run(C, &cfg, gcrops, lcrops, gram_crops, masks, init, &rc);
    ssl_parity_run(G, &cfg, gcrops, lcrops, gram_crops, masks, NULL, &rg);
    double tol_p = fp32 ? 1e-5 : 16 * U_BF16, frac = fp32 ? 0.05 : 0.5;
    if (vs_emulation) tol_p = 16 * U_BF16 / 3, frac = 0.5 / 3; // a third of the fp32 comparison's
    if (vs_emulation && under_layer) tol_p = 16 * U_BF16 / 12, frac = 0.5 / 12; // a twelfth
    const char *names[6] = {"dino_local", "dino_global", "koleo/kde", "ibot", "total", "gram"};
    for (int it = 0; it < 2; it++)
        for (int k = 0; k < (gram ? 6 : 5); k++) {
            double g = rg.loss[it][k], c = rc.loss[it][k], tol_loss = fp32 ? 1e-4 : (it == 0 ? 8 : 16) * U_BF16;
            if (vs_emulation) tol_loss = under_layer ? (it == 0 ? U_BF16 / 100 : U_BF16) : tol_emu;
            printf("  step %d %-12s gpu %.7g cpu %.7g  err/tol=%.3g\n", it, names[k], g, c,
                   fabs(g - c) / (tol_loss * (fabs(c) + 0.01)));
            CHECK(fabs(g - c) <= tol_loss * (fabs(c) + 0.01), "step %d %s loss: gpu %.9g cpu %.9g", it, names[k], g, c);
        }
    double worst = fmax(check_params_after_steps(&tab, "student", rg.student, rc.student, init, vc.dim, tol_p, frac),
                        check_params_after_steps(&tab, "teacher", rg.teacher, rc.teacher, init, vc.dim, tol_p, frac));
    printf("  parameters after 2 steps: worst error / tolerance %.3g over %d tensors x 2\n", worst, tab.n);
    // the trainer's GPU path: batches uploaded ahead from page-locked memory on the copy stream, student
    // activations recomputed in backward: the same bits as the plain GPU run
    SslConfig cfg_s = cfg;
    cfg_s.staged_upload = 1, cfg_s.recompute_activations = 1;
    SslRun rs;
    ssl_parity_run(G, &cfg_s, gcrops, lcrops, gram_crops, masks, NULL, &rs);
    CHECK(memcmp(rs.loss, rg.loss, sizeof rs.loss) == 0, "staged + recomputed GPU steps: the losses changed");
    CHECK(memcmp(rs.student, rg.student, sizeof(float) * tab.total) == 0 &&
              memcmp(rs.teacher, rg.teacher, sizeof(float) * tab.total) == 0,
          "staged + recomputed GPU steps: the parameters changed");
    free(rs.student), free(rs.teacher);
#ifdef DINO_HAVE_CUDA
    // residual + LayerNorm as one kernel (default) or the unfused ops (DINO_CUDA_FUSE_RESLN=0): two whole
    // steps (student with drop path, teacher without) give the same bits
    if (!emulating() && !fp32 && !vs_emulation && centering == CENTERING_SOFTMAX) {
        backend_cuda_set_fuse_resln(G, 0);
        ssl_parity_run(G, &cfg, gcrops, lcrops, gram_crops, masks, NULL, &rs);
        backend_cuda_set_fuse_resln(G, 1);
        CHECK(memcmp(rs.loss, rg.loss, sizeof rs.loss) == 0, "unfused residual + LayerNorm: the losses changed");
        CHECK(memcmp(rs.student, rg.student, sizeof(float) * tab.total) == 0 &&
                  memcmp(rs.teacher, rg.teacher, sizeof(float) * tab.total) == 0,
              "unfused residual + LayerNorm: the parameters changed");
        printf("  two steps with residual + LayerNorm fused = unfused, bit for bit\n");
        free(rs.student), free(rs.teacher);
    }
#endif
#ifdef DINO_CUDAEMU
    // the same staged steps with the layer running blocks, threads and streams in other orders
    setenv("CUDAEMU_ORDER", "reverse", 1), setenv("CUDAEMU_STREAMS", "random", 1);
    ssl_parity_run(G, &cfg_s, gcrops, lcrops, gram_crops, masks, NULL, &rs);
    unsetenv("CUDAEMU_ORDER"), unsetenv("CUDAEMU_STREAMS");
    CHECK(memcmp(rs.loss, rg.loss, sizeof rs.loss) == 0 && memcmp(rs.student, rg.student, sizeof(float) * tab.total) == 0,
          "staged GPU steps change with the layer's thread / stream order");
    free(rs.student), free(rs.teacher);
#endif
    free(rc.student), free(rc.teacher), free(rg.student), free(rg.teacher), free(init);
    free(gcrops), free(lcrops), free(gram_crops), free(masks[0]), free(masks[1]);
    param_table_free(&tab);
    backend_free(C);
    gpu_free(G);
}

// The fp32-GEMM case also runs DINOv3 Gram anchoring (Gram teacher pass, resampling, loss and gradient,
// local-crop reweighting, staged Gram crops): the tight tolerances cover it at no extra case.
TEST(ssl_step_softmax_koleo_fp32_gemm) { ssl_parity(CENTERING_SOFTMAX, 0, 1, 1); }
TEST(ssl_step_softmax_koleo_bf16) { ssl_parity(CENTERING_SOFTMAX, 0, 0, 0); }
TEST(ssl_step_sinkhorn_kde_bf16) { ssl_parity(CENTERING_SINKHORN, 1, 0, 0); }
// the CPU's bf16 emulation predicts the GPU's losses (two whole steps, bf16 activations)
TEST(ssl_step_bf16_gpu_matches_cpu_emulation) { ssl_parity_vs(CENTERING_SOFTMAX, 0, 0, 0, 1, 2 * U_BF16); }

// ---- a distillation step (train/distill_teacher.h, ssl_student_forward_backward) on both backends -----
// The frozen teacher (vit_test D 64, no register, its own heads: bottleneck 24, K 256, Sinkhorn-Knopp,
// random init: checkpoint_path 'ignore') turns 4 images' global crops and iBOT masks into DINO and iBOT
// targets (backbone, head bottlenecks, last layers, centering); a smaller student (D 48, a register,
// drop-path, bottleneck 32, same K) takes two steps against them: ssl_student_forward_backward (unmasked
// global crops, 2 local crops, KoLeo) and ssl_update. fp32 GEMMs, so the bounds are ssl_step's fp32 ones:
// targets normwise and losses 1e-4, parameters as ssl_parity (tol_p 1e-5, 1/20 of the update's norm).
#ifndef DINO_GPU_SUBSET
typedef struct {
    double loss[2][6]; // dino local, dino global, koleo, ibot, total, teacher entropy
    float *P[2], *student;
    int n_masked[2];
} DistillRun;

static void distill_parity_run(Backend *be, const Config *tcfg, const SslConfig *cfg, const float *gcrops,
                               const float *lcrops, uint8_t *const *masks, int max_masked, float *init_out,
                               DistillRun *out) {
    char err[DINO_ERRLEN];
    const int B = cfg->batch;
    DistillTeacher t;
    CHECK(distill_teacher_init(&t, be, tcfg, CENTERING_SINKHORN, 0.9f, B, B, cfg->global_crop, max_masked,
                               max_masked, "ignore", 0, err) == 0, "%s", err);
    CHECK(t.Kd == cfg->dino_head.K && t.Ki == cfg->ibot_head.K && t.nbd != cfg->dino_head.bottleneck &&
              t.vit_cfg.dim != cfg->vit.dim, "the teacher should differ from the student but for K");
    SslModel m;
    CHECK(ssl_model_init(&m, be, cfg, 7, err) == 0, "%s", err);
    const size_t total = m.tab.total;
    if (init_out) be->to_host(be, init_out, m.student, sizeof(float) * total);
    for (int it = 0; it < 2; it++) {
        const float teacher_temp = 0.04f;
        float *P = dino_malloc(sizeof(float) * (size_t)2 * B * t.Kd);
        float *Pi = dino_malloc(sizeof(float) * (size_t)(max_masked + 1) * t.Ki);
        const int nm = distill_teacher_targets(&t, be, NULL, gcrops, masks[it], teacher_temp, P, Pi);
        out->n_masked[it] = nm;
        out->P[it] = dino_malloc(sizeof(float) * ((size_t)2 * B * t.Kd + (size_t)nm * t.Ki)); // DINO then iBOT rows
        memcpy(out->P[it], P, sizeof(float) * (size_t)2 * B * t.Kd);
        memcpy(out->P[it] + (size_t)2 * B * t.Kd, Pi, sizeof(float) * (size_t)nm * t.Ki);
        SslBatch b = {.global_crops = gcrops, .local_crops = lcrops, .masks = masks[it],
                      .drop_key = rng_make(5, 15, (uint64_t)it, 0)};
        SslTargets tg = {.dino = P, .ibot = Pi};
        ScheduleValues sv = {.lr = 5e-4, .wd = 0.04, .momentum = 0.9, .teacher_temp = teacher_temp, .last_layer_lr = 5e-4};
        SslStepStats st;
        CHECK(ssl_student_forward_backward(&m, be, &b, &tg, &st, err) == 0, "step %d: %s", it, err);
        ssl_update(&m, be, &sv, &st);
        double l[6] = {st.dino_local_crops_loss, st.dino_global_crops_loss, st.koleo_loss, st.ibot_loss, st.total_loss,
                       st.teacher_entropy};
        memcpy(out->loss[it], l, sizeof l);
        free(P), free(Pi);
    }
    out->student = dino_malloc(sizeof(float) * total);
    be->to_host(be, out->student, m.student, sizeof(float) * total);
    ssl_model_free(&m, be);
    distill_teacher_free(&t, be);
}
#endif

TEST(distill_student_step_fp32_gemm) {
#ifdef DINO_GPU_SUBSET
    test_skip("the GPU subset build has no trainer config (train/config.c)");
#else
    Backend *G = gpu_backend(CUDA_GEMM_FP32), *C = backend_cpu_new();
    char err[DINO_ERRLEN];
    const int B = 4, NL = 2, GC = 16, LC = 8, P = 4, N = (GC / P) * (GC / P), K = 256, max_masked = B * N;
    // the teacher, from its own config as a distillation run reads distillation.full_cfg_path
    char *ov[] = {"student.arch=vit_test", "student.embed_dim=64", "student.depth=2", "student.num_heads=2",
                  "student.patch_size=4", "student.drop_path_rate=0", "crops.global_crops_size=16",
                  "crops.local_crops_size=8", "crops.local_crops_number=2", "train.batch_size_per_gpu=4",
                  "dino.head_n_prototypes=256", "dino.head_hidden_dim=64", "dino.head_bottleneck_dim=24",
                  "ibot.separate_head=true", "ibot.head_n_prototypes=256", "ibot.head_hidden_dim=64",
                  "ibot.head_bottleneck_dim=24"};
    Config tcfg;
    CHECK(config_load(&tcfg, test_src_path("configs/demo.yaml"), (int)(sizeof ov / sizeof ov[0]), ov, err) == 0, "%s", err);
    // the student, smaller
    VitConfig vc;
    CHECK(vit_config_from_arch(&vc, "vit_test", P, GC, 1, "mlp", err) == 0, "%s", err);
    vc.dim = 48, vc.heads = 3, vc.depth = 2, vc.ffn_hidden = 96, vc.layerscale = 0.5f, vc.drop_path_rate = 0.2f;
    SslConfig cfg;
    ssl_config_default(&cfg, &vc);
    cfg.dino_head = (HeadConfig){.in_dim = 48, .hidden = 96, .bottleneck = 32, .K = K, .nlayers = 3};
    cfg.ibot_separate_head = 1, cfg.ibot_head = cfg.dino_head;
    cfg.batch = B, cfg.n_local = NL, cfg.global_crop = GC, cfg.local_crop = LC, cfg.max_masked = max_masked;
    cfg.student_only = 1;
    Rng r = rng_make(109, 0, 0, 0);
    float *gcrops = dino_malloc(sizeof(float) * 2 * B * 3 * GC * GC);
    float *lcrops = dino_malloc(sizeof(float) * NL * B * 3 * LC * LC);
    for (int i = 0; i < 2 * B * 3 * GC * GC; i++) gcrops[i] = (float)rng_normal(&r);
    for (int i = 0; i < NL * B * 3 * LC * LC; i++) lcrops[i] = (float)rng_normal(&r);
    uint8_t *masks[2];
    for (int it = 0; it < 2; it++) { // about 30% of the tokens of half the images
        masks[it] = dino_calloc((size_t)2 * B * N, 1);
        for (int i = 0; i < 2 * B; i += 2)
            for (int j = 0; j < N; j++) masks[it][(size_t)i * N + j] = rng_uniform(&r) < 0.3;
    }
    ParamTable tab;
    {
        SslModel probe; // the table, for the tensor names and sizes
        CHECK(ssl_model_init(&probe, C, &cfg, 7, err) == 0, "%s", err);
        tab = probe.tab;
        probe.tab = (ParamTable){0};
        ssl_model_free(&probe, C);
    }
    float *init = dino_malloc(sizeof(float) * tab.total);
    DistillRun rc, rg;
    distill_parity_run(C, &tcfg, &cfg, gcrops, lcrops, masks, max_masked, init, &rc);
    distill_parity_run(G, &tcfg, &cfg, gcrops, lcrops, masks, max_masked, NULL, &rg);
    const double tol = 1e-4;
    for (int it = 0; it < 2; it++) {
        CHECK(rg.n_masked[it] == rc.n_masked[it] && rc.n_masked[it] > 0, "step %d: %d vs %d masked tokens", it,
              rg.n_masked[it], rc.n_masked[it]);
        const size_t n = (size_t)2 * B * K + (size_t)rc.n_masked[it] * K;
        double e = 0, nc = 0;
        for (size_t j = 0; j < n; j++)
            e += ((double)rg.P[it][j] - rc.P[it][j]) * ((double)rg.P[it][j] - rc.P[it][j]), nc += (double)rc.P[it][j] * rc.P[it][j];
        e = sqrt(e), nc = sqrt(nc);
        printf("  step %d teacher targets (DINO + %d iBOT rows) err/tol=%.3g\n", it, rc.n_masked[it], e / (tol * nc));
        CHECK(e <= tol * nc && !isnan(e), "step %d teacher targets: ||gpu - cpu|| %.3g > %.3g", it, e, tol * nc);
    }
    const char *names[6] = {"dino_local", "dino_global", "koleo", "ibot", "total", "t_entropy"};
    for (int it = 0; it < 2; it++)
        for (int k = 0; k < 6; k++) {
            double g = rg.loss[it][k], c = rc.loss[it][k];
            printf("  step %d %-12s gpu %.7g cpu %.7g  err/tol=%.3g\n", it, names[k], g, c,
                   fabs(g - c) / (tol * (fabs(c) + 0.01)));
            CHECK(fabs(g - c) <= tol * (fabs(c) + 0.01), "step %d %s: gpu %.9g cpu %.9g", it, names[k], g, c);
        }
    const double worst = check_params_after_steps(&tab, "student", rg.student, rc.student, init, vc.dim, 1e-5, 0.05);
    printf("  student after 2 steps: worst error / tolerance %.3g over %d tensors\n", worst, tab.n);
    for (int it = 0; it < 2; it++) free(rc.P[it]), free(rg.P[it]), free(masks[it]);
    free(rc.student), free(rg.student), free(init), free(gcrops), free(lcrops);
    param_table_free(&tab);
    backend_free(C);
    gpu_free(G);
#endif
}

// ---- CUDA graphs (docs/cuda-backend.md, "CUDA graphs") ----------------------------------------------
#ifdef DINO_HAVE_CUDA

// SSL steps (3 unless said) with schedule values that change every step (a value baked into a replayed
// graph would show; const_sched: the same values every step), iBOT masks with the same count on steps
// 0-1 and another count on step 2 (a new shape: new graphs), then the count of step 0 again. Returns the
// losses and final weights; with graphs on, the segments' statistics per step.
#define GRAPH_STEPS_MAX 6
typedef struct {
    double loss[GRAPH_STEPS_MAX][5];
    float *student, *teacher;
    CudaGraphStats per_step[GRAPH_STEPS_MAX];
} GraphRun;

static CudaGraphStats graph_stats_since(Backend *be, CudaGraphStats before) {
    const CudaGraphStats a = backend_cuda_graph_stats(be);
    return (CudaGraphStats){a.launches - before.launches,       a.nodes - before.nodes,
                            a.instantiations - before.instantiations, a.updates - before.updates,
                            a.replays - before.replays,         a.verified - before.verified,
                            a.host_waits - before.host_waits};
}

static void graph_run_ex(Backend *be, const SslConfig *cfg, int graphs, int steps, int const_sched, const float *gcrops,
                         const float *lcrops, uint8_t *const *masks, GraphRun *out) {
    SslModel m;
    char err[DINO_ERRLEN];
    memset(out, 0, sizeof *out);
    CHECK(ssl_model_init(&m, be, cfg, 7, err) == 0, "%s", err);
    float *pinned[2] = {NULL, NULL};
    if (cfg->staged_upload) {
        const size_t ng = sizeof(float) * 2 * cfg->batch * 3 * cfg->global_crop * cfg->global_crop;
        const size_t nl = sizeof(float) * cfg->n_local * cfg->batch * 3 * cfg->local_crop * cfg->local_crop;
        pinned[0] = be->host_alloc(be, ng), pinned[1] = be->host_alloc(be, nl);
        memcpy(pinned[0], gcrops, ng), memcpy(pinned[1], lcrops, nl);
        ssl_stage_batch(&m, be, pinned[0], pinned[1], masks[0], 1);
    }
    backend_cuda_set_graphs(be, graphs);
    for (int it = 0; it < steps; it++) {
        if (cfg->staged_upload && it + 1 < steps) ssl_stage_batch(&m, be, pinned[0], pinned[1], masks[it + 1], 1);
        SslBatch b = {.global_crops = gcrops, .local_crops = lcrops, .masks = masks[it],
                      .drop_key = rng_make(5, 14, (uint64_t)it, 0), .staged = cfg->staged_upload};
        const int k = const_sched ? 1 : it;
        const double lr = 5e-4 * (1 + 0.3 * k);
        ScheduleValues sv = {.lr = lr, .wd = 0.04 + 0.01 * k, .momentum = 0.9 + 0.02 * k,
                             .teacher_temp = 0.04 + 0.01 * k, .last_layer_lr = k == 0 ? 0 : lr};
        SslStepStats st;
        const CudaGraphStats before = backend_cuda_graph_stats(be);
        CHECK(ssl_step(&m, be, NULL, &b, &sv, &st, err) == 0, "step %d: %s", it, err);
        be->sync(be);
        out->per_step[it] = graph_stats_since(be, before);
        double l[5] = {st.dino_local_crops_loss, st.dino_global_crops_loss, st.koleo_loss, st.ibot_loss, st.total_loss};
        memcpy(out->loss[it], l, sizeof l);
    }
    const size_t total = m.tab.total;
    out->student = dino_malloc(sizeof(float) * total), out->teacher = dino_malloc(sizeof(float) * total);
    be->to_host(be, out->student, m.student, sizeof(float) * total);
    be->to_host(be, out->teacher, m.teacher, sizeof(float) * total);
    backend_cuda_set_graphs(be, 0);
    ssl_model_free(&m, be);
    for (int k = 0; k < 2; k++)
        if (pinned[k]) be->host_free(be, pinned[k]);
}

static void graph_run(Backend *be, const SslConfig *cfg, int graphs, const float *gcrops, const float *lcrops,
                      uint8_t *const *masks, GraphRun *out) {
    graph_run_ex(be, cfg, graphs, 3, 0, gcrops, lcrops, masks, out);
}

// The graph tests' model (a 2-block ViT with stochastic depth, iBOT, local crops) and batch; masks of
// GRAPH_STEPS_MAX steps: 5 tokens of every other image (6 on step 2: another shape), at places that vary.
static void graph_case(SslConfig *cfg, float **gcrops_out, float **lcrops_out, uint8_t **masks) {
    char err[DINO_ERRLEN];
    VitConfig vc;
    const int B = 4, NL = 2, GC = 16, LC = 8, P = 4, N = (GC / P) * (GC / P);
    CHECK(vit_config_from_arch(&vc, "vit_test", P, GC, 1, "mlp", err) == 0, "%s", err);
    vc.dim = 48, vc.heads = 3, vc.depth = 2, vc.ffn_hidden = 96, vc.layerscale = 0.5f, vc.drop_path_rate = 0.2f;
    ssl_config_default(cfg, &vc);
    cfg->dino_head = (HeadConfig){.in_dim = 48, .hidden = 96, .bottleneck = 32, .K = 256, .nlayers = 3};
    cfg->batch = B, cfg->n_local = NL, cfg->global_crop = GC, cfg->local_crop = LC;
    Rng r = rng_make(108, 0, 0, 0);
    float *gcrops = dino_malloc(sizeof(float) * 2 * B * 3 * GC * GC);
    float *lcrops = dino_malloc(sizeof(float) * NL * B * 3 * LC * LC);
    for (int i = 0; i < 2 * B * 3 * GC * GC; i++) gcrops[i] = (float)rng_normal(&r);
    for (int i = 0; i < NL * B * 3 * LC * LC; i++) lcrops[i] = (float)rng_normal(&r);
    for (int it = 0; it < GRAPH_STEPS_MAX; it++) {
        masks[it] = dino_calloc((size_t)2 * B * N, 1);
        for (int i = 0; i < 2 * B; i += 2)
            for (int k = 0; k < (it == 2 ? 6 : 5); k++) masks[it][(size_t)i * N + (size_t)(k * 3 + it + i) % N] = 1;
    }
    *gcrops_out = gcrops, *lcrops_out = lcrops;
}

// Eager and graph-launched steps give the same bits (losses, student, teacher), plain and staged as the
// trainer runs them (staged: with segments also cut every 4 linear ops); a repeated shape launches existing execs with new arguments (updates, no new
// instantiation); a new iBOT mask count instantiates new graphs.
static void graphs_same_bits(void) {
    if (emulating()) test_skip("graphs are a property of the CUDA backend");
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
    char err[DINO_ERRLEN];
    SslConfig cfg;
    float *gcrops, *lcrops;
    uint8_t *masks[GRAPH_STEPS_MAX];
    graph_case(&cfg, &gcrops, &lcrops, masks);
    long long plain_launches = 0;
    for (int staged = 0; staged < 2; staged++) {
        SslConfig c = cfg;
        c.staged_upload = staged;
        GraphRun eager, graph;
        graph_run(G, &c, 0, gcrops, lcrops, masks, &eager);
        if (staged) setenv("DINO_CUDA_GRAPH_CHUNK", "4", 1); // segments also cut every 4 linear ops
        graph_run(G, &c, 1, gcrops, lcrops, masks, &graph);
        unsetenv("DINO_CUDA_GRAPH_CHUNK");
        if (staged)
            CHECK(graph.per_step[1].launches > plain_launches, "chunks of 4 linear ops: %lld launches, unchunked %lld",
                  graph.per_step[1].launches, plain_launches);
        else
            plain_launches = graph.per_step[1].launches;
        size_t total;
        {
            SslModel probe;
            CHECK(ssl_model_init(&probe, G, &c, 7, err) == 0, "%s", err);
            total = probe.tab.total;
            ssl_model_free(&probe, G);
        }
        for (int it = 0; it < 3; it++) {
            const CudaGraphStats *s = &graph.per_step[it];
            printf("  %s step %d: total loss eager %.9g graphs %.9g; %lld graph launches, %lld nodes, %lld new "
                   "instantiations, %lld updated execs\n",
                   staged ? "staged" : "plain", it, eager.loss[it][4], graph.loss[it][4], s->launches, s->nodes,
                   s->instantiations, s->updates);
            CHECK(eager.per_step[it].launches == 0, "graphs off, yet %lld graph launches", eager.per_step[it].launches);
        }
        CHECK(memcmp(eager.loss, graph.loss, sizeof eager.loss) == 0, "graph-launched steps: the losses changed");
        CHECK(memcmp(eager.student, graph.student, sizeof(float) * total) == 0 &&
                  memcmp(eager.teacher, graph.teacher, sizeof(float) * total) == 0,
              "graph-launched steps: the weights changed");
        CHECK(graph.per_step[1].instantiations == 0 && graph.per_step[1].updates > 0,
              "step 1 repeats step 0's shapes: expected only updated execs, got %lld new instantiations",
              graph.per_step[1].instantiations);
        CHECK(graph.per_step[2].instantiations > 0, "step 2 has another mask count, yet no new graph was instantiated");
        CHECK(graph.per_step[1].nodes > 10 * graph.per_step[1].launches,
              "expected far fewer graph launches (%lld) than nodes (%lld)", graph.per_step[1].launches,
              graph.per_step[1].nodes);
        free(eager.student), free(eager.teacher), free(graph.student), free(graph.teacher);
    }
    for (int it = 0; it < GRAPH_STEPS_MAX; it++) free(masks[it]);
    free(gcrops), free(lcrops);
    gpu_free(G);
}

static size_t ssl_total_floats(Backend *be, const SslConfig *c) {
    char err[DINO_ERRLEN];
    SslModel probe;
    CHECK(ssl_model_init(&probe, be, c, 7, err) == 0, "%s", err);
    const size_t total = probe.tab.total;
    ssl_model_free(&probe, be);
    return total;
}

static int same_run(const GraphRun *a, const GraphRun *b, int steps, size_t total) {
    return memcmp(a->loss, b->loss, sizeof(double) * 5 * (size_t)steps) == 0 &&
           memcmp(a->student, b->student, sizeof(float) * total) == 0 &&
           memcmp(a->teacher, b->teacher, sizeof(float) * total) == 0;
}

// Replay (CUDA_GRAPHS_REPLAY): 5 SSL steps, staged as the trainer runs them, give the bits of the eager
// steps (losses, student, teacher). A step (ssl_step: ssl_step_issue, then ssl_step_finish's one wait) is
// ONE segment: one graph launch, its read-backs (losses, entropies, the scalar block's grad norms and NaN
// flag) landing in one page-locked block. Steps 0-1 warm up (a scratch buffer that grows drops the cached
// execs); step 2 has another iBOT mask count (a new shape): recorded into a new exec; steps 3 and 4 return
// to the first count (step 4's masked tokens at other places: the same shape) and are launched from the
// cached exec: no recording, no update, no instantiation, whether the schedule values stay (const_sched)
// or move every step (they are read from the step's scalar block, not baked into the kernels'
// arguments); CUDA_GRAPHS_VERIFY records them anyway and finds them identical to the cached exec.
static void graphs_replay_same_bits(int const_sched) {
    if (emulating()) test_skip("graphs are a property of the CUDA backend");
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
    SslConfig c;
    float *gcrops, *lcrops;
    uint8_t *masks[GRAPH_STEPS_MAX];
    graph_case(&c, &gcrops, &lcrops, masks);
    c.staged_upload = 1;
    const int steps = 5;
    const size_t total = ssl_total_floats(G, &c);
    GraphRun eager, replay, verify = {0};
    graph_run_ex(G, &c, CUDA_GRAPHS_OFF, steps, const_sched, gcrops, lcrops, masks, &eager);
    graph_run_ex(G, &c, CUDA_GRAPHS_REPLAY, steps, const_sched, gcrops, lcrops, masks, &replay);
    graph_run_ex(G, &c, CUDA_GRAPHS_VERIFY, steps, const_sched, gcrops, lcrops, masks, &verify);
    for (int it = 0; it < steps; it++) {
        const CudaGraphStats *s = &replay.per_step[it];
        printf("  step %d: %lld launches (%lld replayed, %lld updated, %lld instantiated), %lld nodes, %lld host "
               "waits; verify mode: %lld verified\n",
               it, s->launches, s->replays, s->updates, s->instantiations, s->nodes, s->host_waits,
               verify.per_step[it].verified);
        CHECK(s->launches == 1, "step %d: %lld graph launches, expected the step as one segment", it, s->launches);
        // the step's one wait for its read-backs, and the test's be->sync (step 0 also allocates the staging)
        CHECK(it == 0 || s->host_waits == 2, "step %d: %lld host waits, expected 2", it, s->host_waits);
    }
    CHECK(same_run(&eager, &replay, steps, total), "replayed steps differ from eager");
    CHECK(same_run(&eager, &verify, steps, total), "verify mode differs from eager");
    const CudaGraphStats *s2 = &replay.per_step[2];
    CHECK(s2->instantiations == 1 && s2->replays == 0, "step 2 has another mask count, yet %lld instantiations, "
          "%lld replayed", s2->instantiations, s2->replays);
    for (int it = 3; it < steps; it++) {
        const CudaGraphStats *s = &replay.per_step[it];
        CHECK(s->replays == 1 && s->updates == 0 && s->instantiations == 0 && s->nodes > 100,
              "step %d repeats step 1's shapes (schedule values %s): %lld replayed, %lld updated, %lld instantiated, "
              "%lld nodes", it, const_sched ? "constant" : "moving", s->replays, s->updates, s->instantiations, s->nodes);
        CHECK(verify.per_step[it].verified == 1 && verify.per_step[it].replays == 0,
              "verify mode, step %d: %lld of %lld launches verified", it, verify.per_step[it].verified,
              verify.per_step[it].launches);
    }
    free(verify.student), free(verify.teacher);
    free(eager.student), free(eager.teacher), free(replay.student), free(replay.teacher);
    for (int it = 0; it < GRAPH_STEPS_MAX; it++) free(masks[it]);
    free(gcrops), free(lcrops);
    gpu_free(G);
}
// Replay's staging: host inputs (to_device) are copied into the page-locked staging when the op is called
// and a launched graph reads them when it runs, so the staging may only be reused after a host wait.
// Segments that end without one (here at upload_wait, as a step starts) stage at growing offsets: 8 of
// them, each a different host vector scaled on the device, give each its own result (the layer also
// reports a staging rewritten before a launched graph read it: the mutant graph_replay_staging_reused).
static void graphs_replay_staging(void) {
    if (emulating()) test_skip("graphs are a property of the CUDA backend");
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
    const int n = 64, reps = 8;
    float *d = G->alloc(G, sizeof(float) * n * reps), *gate = G->alloc(G, sizeof(float) * n);
    float *pinned = G->host_alloc(G, sizeof(float) * n), host[64], *back = dino_malloc(sizeof(float) * n * reps);
    const int ticket = G->upload_async(G, gate, pinned, sizeof(float) * n); // its event ends the segments below
    backend_cuda_set_graphs(G, CUDA_GRAPHS_REPLAY);
    const CudaGraphStats before = backend_cuda_graph_stats(G);
    for (int i = 0; i < reps; i++) {
        for (int k = 0; k < n; k++) host[k] = (float)(100 * i + k);
        G->to_device(G, d + (size_t)i * n, host, sizeof host); // the host vector is reused at once
        G->scale(G, d + (size_t)i * n, 2.0f, (size_t)n);
        G->upload_wait(G, ticket); // ends the segment: launched, not waited for
    }
    G->sync(G);
    const CudaGraphStats st = graph_stats_since(G, before);
    backend_cuda_set_graphs(G, CUDA_GRAPHS_OFF);
    G->to_host(G, back, d, sizeof(float) * n * reps);
    int bad = 0;
    for (int i = 0; i < reps; i++)
        for (int k = 0; k < n; k++) bad += back[(size_t)i * n + k] != 2.0f * (float)(100 * i + k);
    printf("  %d segments: %lld launches, %lld replayed; %d wrong values\n", reps, st.launches, st.replays, bad);
    CHECK(st.launches == reps && bad == 0, "%lld launches, %d wrong values", st.launches, bad);
    free(back);
    G->host_free(G, pinned);
    G->release(G, d), G->release(G, gate);
    gpu_free(G);
}
#endif
TEST(cuda_graphs_replay_staging_per_segment) {
#ifdef DINO_HAVE_CUDA
    graphs_replay_staging();
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}
// A setting that changes what an op enqueues without changing its arguments (the attention path: flash or
// batched GEMMs) must drop the cached segments: the same attention_fwd call after the switch is recorded
// anew, not replayed with the other path's kernels. In verify mode a stale cache stops the program (the
// mutant graph_replay_setting_kept); here both paths' outputs are checked against the cpu.
#ifdef DINO_HAVE_CUDA
static void graphs_replay_setting_change(void) {
    if (emulating()) test_skip("graphs are a property of the CUDA backend");
    Backend *G = gpu_backend(CUDA_GEMM_BF16), *C = backend_cpu_new();
    const int B = 1, T = 37, H = 2, Dh = 64, D = H * Dh;
    const size_t nq = (size_t)B * T * 3 * D, no = (size_t)B * T * D;
    backend_cuda_set_attention(G, CUDA_ATTENTION_GEMM);
    const size_t sg = G->attention_saved_floats(G, B, T, H, Dh);
    backend_cuda_set_attention(G, CUDA_ATTENTION_FLASH);
    const size_t sf = G->attention_saved_floats(G, B, T, H, Dh);
    float *q = dino_malloc(sizeof(float) * nq), *ref = dino_malloc(sizeof(float) * no), *out = dino_malloc(sizeof(float) * no);
    Rng r = rng_make(112, 0, 0, 0);
    for (size_t i = 0; i < nq; i++) q[i] = (float)rng_normal(&r);
    float *cq = C->alloc(C, sizeof(float) * nq), *co = C->alloc(C, sizeof(float) * no);
    float *cs = C->alloc(C, sizeof(float) * C->attention_saved_floats(C, B, T, H, Dh));
    C->to_device(C, cq, q, sizeof(float) * nq);
    C->attention_fwd(C, co, cs, cq, B, T, H, Dh);
    C->to_host(C, ref, co, sizeof(float) * no);
    float *gq = G->alloc(G, sizeof(float) * nq), *go = G->alloc(G, sizeof(float) * no);
    float *gs = G->alloc(G, sizeof(float) * (sf > sg ? sf : sg));
    G->to_device(G, gq, q, sizeof(float) * nq);
    backend_cuda_set_graphs(G, CUDA_GRAPHS_VERIFY);
    // gemm (its pointer arrays grow: that call is not cached), flash, flash (a verified replay), gemm, gemm
    for (int k = 0; k < 5; k++) {
        const int flash = k == 1 || k == 2;
        if (k == 0 || k == 1 || k == 3) backend_cuda_set_attention(G, flash ? CUDA_ATTENTION_FLASH : CUDA_ATTENTION_GEMM);
        G->attention_fwd(G, go, gs, gq, B, T, H, Dh);
        G->to_host(G, out, go, sizeof(float) * no);
        double err = 0;
        for (size_t i = 0; i < no; i++) err = fmax(err, fabs(out[i] - ref[i]));
        printf("  %s path, call %d: max |cuda - cpu| %.3g\n", flash ? "flash" : "gemm", k, err);
        CHECK(err < 0.05, "%s path: max error %g against the cpu", flash ? "flash" : "gemm", err);
    }
    const CudaGraphStats st = backend_cuda_graph_stats(G);
    printf("  %lld launches, %lld verified, %lld instantiated\n", st.launches, st.verified, st.instantiations);
    CHECK(st.verified == 2, "the repeated calls (2 and 4) were not both verified replays (%lld)", st.verified);
    backend_cuda_set_graphs(G, CUDA_GRAPHS_OFF);
    G->release(G, gq), G->release(G, go), G->release(G, gs);
    free(q), free(ref), free(out);
    backend_free(C);
    gpu_free(G);
}
#endif
TEST(cuda_graphs_replay_setting_change_records_anew) {
#ifdef DINO_HAVE_CUDA
    graphs_replay_setting_change();
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}
TEST(ssl_steps_cuda_graphs_replay_same_bits) {
#ifdef DINO_HAVE_CUDA
    graphs_replay_same_bits(1);
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}
TEST(ssl_steps_cuda_graphs_replay_moving_schedule_same_bits) {
#ifdef DINO_HAVE_CUDA
    graphs_replay_same_bits(0);
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}
TEST(ssl_steps_cuda_graphs_same_bits) {
#ifdef DINO_HAVE_CUDA
    graphs_same_bits();
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}

// ---- the bf16 weight copy (model/cuda/weight_copy.cu, docs/cuda-backend.md "bf16 weight copy") ----------

#ifdef DINO_HAVE_CUDA
static void expect_copy_fresh(Backend *G, const char *after) {
    const size_t bad = backend_cuda_weight_copy_stale(G);
    CHECK(bad == 0, "after %s: the bf16 copy of %zu weights is not the rounding of their fp32 master", after, bad);
}

// out (bf16 activations) and din of one linear layer reading W, as host floats (rows x n_out, rows x n_in).
static void linear_through(Backend *G, const float *W, const float *in, const float *dout, int rows, int n_in,
                           int n_out, float *out_h, float *din_h) {
    float *out = G->alloc_act(G, (size_t)rows * n_out, DINO_BF16, NULL);
    float *din = G->alloc_act(G, (size_t)rows * n_in, DINO_BF16, NULL);
    float *dW = G->alloc(G, sizeof(float) * (size_t)n_out * n_in);
    G->linear_fwd(G, out, in, W, NULL, rows, n_in, n_out);
    G->linear_bwd(G, din, dW, NULL, dout, in, W, rows, n_in, n_out);
    G->to_host(G, out_h, out, sizeof(float) * (size_t)rows * n_out);
    G->to_host(G, din_h, din, sizeof(float) * (size_t)rows * n_in);
    G->release(G, out), G->release(G, din), G->release(G, dW);
}

// Every write through the backend into a registered buffer leaves its copy the exact bf16 rounding of the
// master (adamw and ema storing it in their own kernel, whole and on sub-ranges as ZeRO-1 shards); a
// write behind the backend's back leaves it stale, which the verifier counts exactly and a linear layer
// shows (its output differs from the per-GEMM conversion), until param_copy_changed.
static void weight_copy_writes(void) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
    Rng r = rng_make(110, 0, 0, 0);
    const int rows = 33, n_in = 48, n_out = 40;
    const size_t nW = (size_t)n_out * n_in, n = 3 * nW + 5, off = 16 * 40; // W at a tensor-aligned offset
    float *h = dino_malloc(sizeof(float) * n), *h2 = dino_malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) h[i] = 0.05f * (float)rng_normal(&r), h2[i] = 0.05f * (float)rng_normal(&r);
    float *P = G->alloc(G, sizeof(float) * n), *Q = dual_upload(G, h2, sizeof(float) * n);
    float *gr = dual_upload(G, h2, sizeof(float) * n), *m = G->alloc(G, sizeof(float) * n);
    float *v = G->alloc(G, sizeof(float) * n);
    G->to_device(G, P, h, sizeof(float) * n);
    CHECK(G->param_copy_register(G, P, n) == 2 * n, "param_copy_register: no copy of %zu floats", n);
    CHECK(backend_cuda_weight_copies(G) == 1, "%d copies registered, expected 1", backend_cuda_weight_copies(G));
    expect_copy_fresh(G, "param_copy_register of a filled buffer");
    G->to_device(G, P + 3, h2, sizeof(float) * 1000);
    expect_copy_fresh(G, "to_device into the middle");
    G->copy(G, P + 1001, Q, sizeof(float) * 777);
    expect_copy_fresh(G, "copy into the middle");
    G->zero(G, P + 17, sizeof(float) * 50);
    expect_copy_fresh(G, "zero");
    G->axpy(G, P, 0.37f, Q, n);
    expect_copy_fresh(G, "axpy");
    G->scale(G, P + 5, 1.7f, n - 9);
    expect_copy_fresh(G, "scale");
    for (long step = 1; step <= 2; step++) {
        G->adamw(G, P, gr, m, v, n, 1e-2f, 0.04f, 0.9f, 0.999f, 1e-8f, step);
        expect_copy_fresh(G, "adamw");
        G->ema(G, P, Q, n, 0.9f);
        expect_copy_fresh(G, "ema");
    }
    const size_t lo = 1003, len = 2 * nW - 1003; // a ZeRO-1 shard
    G->adamw(G, P + lo, gr + lo, m + lo, v + lo, len, 1e-2f, 0.04f, 0.9f, 0.999f, 1e-8f, 3);
    expect_copy_fresh(G, "adamw on a sub-range");
    G->ema(G, P + lo, Q + lo, len, 0.5f);
    expect_copy_fresh(G, "ema on a sub-range");

    // a linear layer with W in P reads the copy: the same bits as with W converted per GEMM (an
    // unregistered buffer holding the same values)
    float *in = G->alloc_act(G, (size_t)rows * n_in, DINO_BF16, NULL), *dout = G->alloc_act(G, (size_t)rows * n_out, DINO_BF16, NULL);
    float *hin = dino_malloc(sizeof(float) * rows * n_in), *hdo = dino_malloc(sizeof(float) * rows * n_out);
    for (int i = 0; i < rows * n_in; i++) hin[i] = (float)rng_normal(&r);
    for (int i = 0; i < rows * n_out; i++) hdo[i] = (float)rng_normal(&r);
    G->to_device(G, in, hin, sizeof(float) * rows * n_in), G->to_device(G, dout, hdo, sizeof(float) * rows * n_out);
    float *W2 = G->alloc(G, sizeof(float) * nW);
    float *o1 = dino_malloc(sizeof(float) * rows * n_out), *o2 = dino_malloc(sizeof(float) * rows * n_out);
    float *d1 = dino_malloc(sizeof(float) * rows * n_in), *d2 = dino_malloc(sizeof(float) * rows * n_in);
    G->copy(G, W2, P + off, sizeof(float) * nW);
    linear_through(G, P + off, in, dout, rows, n_in, n_out, o1, d1);
    linear_through(G, W2, in, dout, rows, n_in, n_out, o2, d2);
    CHECK(memcmp(o1, o2, sizeof(float) * rows * n_out) == 0 && memcmp(d1, d2, sizeof(float) * rows * n_in) == 0,
          "linear layer: W from the bf16 copy differs from W converted per GEMM");

    // behind the backend's back (as NCCL writes): new weights over W, no notification
    float *old = dino_malloc(sizeof(float) * nW), *neww = dino_malloc(sizeof(float) * nW);
    G->to_host(G, old, P + off, sizeof(float) * nW);
    size_t want = 0;
    for (size_t i = 0; i < nW; i++) {
        neww[i] = old[i] * 1.5f + 0.01f;
        want += bf16_round(neww[i]) != bf16_round(old[i]);
    }
    G->sync(G);
    CHECK(cudaMemcpy(P + off, neww, sizeof(float) * nW, cudaMemcpyHostToDevice) == cudaSuccess, "cudaMemcpy");
    const size_t stale = backend_cuda_weight_copy_stale(G);
    printf("  a write behind the backend: %zu stale weights counted, %zu expected\n", stale, want);
    CHECK(want > 0 && stale == want, "the verifier counts %zu stale weights, expected %zu", stale, want);
    G->to_device(G, W2, neww, sizeof(float) * nW);
    linear_through(G, P + off, in, dout, rows, n_in, n_out, o1, d1);
    linear_through(G, W2, in, dout, rows, n_in, n_out, o2, d2);
    CHECK(memcmp(o1, o2, sizeof(float) * rows * n_out) != 0, "a stale copy went unnoticed by the linear layer's output");
    G->param_copy_changed(G, P + off, nW);
    expect_copy_fresh(G, "param_copy_changed");
    linear_through(G, P + off, in, dout, rows, n_in, n_out, o1, d1);
    CHECK(memcmp(o1, o2, sizeof(float) * rows * n_out) == 0 && memcmp(d1, d2, sizeof(float) * rows * n_in) == 0,
          "after param_copy_changed the linear layer still differs from W converted per GEMM");
    G->release(G, P);
    CHECK(backend_cuda_weight_copies(G) == 0, "releasing the buffer left its copy registered");
    void *bufs[] = {Q, gr, m, v, in, dout, W2};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) G->release(G, bufs[i]);
    free(h), free(h2), free(hin), free(hdo), free(o1), free(o2), free(d1), free(d2), free(old), free(neww);
    gpu_free(G);
}

// SSL steps (Gram anchoring on: student, teacher and Gram teacher have copies) with the weight copy and with
// W converted per GEMM (DINO_CUDA_WEIGHT_COPY=0's path). zero: two ZeRO-1 ranks in this process on one
// backend, each updating its shard, the other's shard copied in behind the backend (as NCCL) and announced
// with param_copy_changed, unless `forget` (a trainer that misses a notification).
typedef struct {
    double loss[3][2];
    float *student, *teacher;
    size_t total, stale_after_forget;
} WcRun;

static void wc_run(Backend *G, int copy, int zero, int forget, WcRun *out) {
    backend_cuda_set_weight_copy(G, copy);
    // every GEMM verifies the copy it reads (the ZeRO-1 runs, three of two ranks, verify once at the end)
    backend_cuda_set_weight_copy_check(G, copy && !forget && !zero);
    char err[DINO_ERRLEN];
    VitConfig vc;
    const int B = 2, NL = 2, GC = 16, LC = 8, P = 4, N = (GC / P) * (GC / P), GG = 24, R = zero ? 2 : 1;
    CHECK(vit_config_from_arch(&vc, "vit_test", P, GC, 1, "mlp", err) == 0, "%s", err);
    vc.dim = 48, vc.heads = 3, vc.depth = 2, vc.ffn_hidden = 96, vc.layerscale = 0.5f, vc.drop_path_rate = 0.2f;
    SslConfig cfg;
    ssl_config_default(&cfg, &vc);
    cfg.dino_head = (HeadConfig){.in_dim = 48, .hidden = 96, .bottleneck = 32, .K = 256, .nlayers = 3};
    cfg.batch = B, cfg.n_local = NL, cfg.global_crop = GC, cfg.local_crop = LC;
    cfg.gram = 1, cfg.gram_crop = GG, cfg.gram_normalize = 1, cfg.gram_img_level = 1;
    if (zero) cfg.zero_world = 2;
    Rng r = rng_make(111, 0, 0, 0);
    float *gcrops = dino_malloc(sizeof(float) * 2 * B * 3 * GC * GC), *lcrops = dino_malloc(sizeof(float) * NL * B * 3 * LC * LC);
    float *gram_crops = dino_malloc(sizeof(float) * 2 * B * 3 * GG * GG);
    for (int i = 0; i < 2 * B * 3 * GC * GC; i++) gcrops[i] = (float)rng_normal(&r);
    for (int i = 0; i < NL * B * 3 * LC * LC; i++) lcrops[i] = (float)rng_normal(&r);
    for (int i = 0; i < 2 * B * 3 * GG * GG; i++) gram_crops[i] = (float)rng_normal(&r);
    uint8_t *mask = dino_calloc((size_t)2 * B * N, 1);
    for (int j = 0; j < N; j += 3) mask[j] = 1;
    SslModel m[2];
    for (int k = 0; k < R; k++) {
        cfg.zero_rank = k;
        CHECK(ssl_model_init(&m[k], G, &cfg, 7, err) == 0, "%s", err);
        ssl_gram_from_teacher(&m[k], G);
    }
    CHECK(backend_cuda_weight_copies(G) == (copy ? 3 * R : 0), "%d buffers with a copy, expected %d",
          backend_cuda_weight_copies(G), copy ? 3 * R : 0);
    out->stale_after_forget = 0;
    memset(out->loss, 0, sizeof out->loss);
    for (int it = 0; it < (zero ? 2 : 3); it++) { // ZeRO-1: a step after the first all-gather is enough
        SslBatch b = {.global_crops = gcrops, .local_crops = lcrops, .masks = mask, .drop_key = rng_make(5, 15, (uint64_t)it, 0),
                      .gram_crops = gram_crops, .gram_weight = 1.5, .dino_local_weight = 0.7};
        ScheduleValues sv = {.lr = 5e-3, .wd = 0.04, .momentum = 0.9, .teacher_temp = 0.04, .last_layer_lr = 5e-3};
        for (int k = 0; k < R; k++) {
            SslStepStats st;
            CHECK(ssl_forward_backward(&m[k], G, NULL, &b, &sv, &st, err) == 0, "step %d: %s", it, err);
            out->loss[it][k] = st.total_loss;
        }
        for (int k = 0; k < R; k++) {
            SslStepStats st;
            ssl_update_shard(&m[k], G, &sv, NULL, NULL, &st);
        }
        if (!zero) continue;
        G->sync(G);
        for (int k = 0; k < 2; k++) { // rank k's shard into the other rank's buffers, behind the backend
            SslModel *src = &m[k], *dst = &m[1 - k];
            const size_t lo = src->shard_begin, len = src->shard_end - src->shard_begin;
            CHECK(cudaMemcpy(dst->student + lo, src->student + lo, sizeof(float) * len, cudaMemcpyDeviceToDevice) == cudaSuccess &&
                      cudaMemcpy(dst->teacher + lo, src->teacher + lo, sizeof(float) * len, cudaMemcpyDeviceToDevice) == cudaSuccess,
                  "cudaMemcpy");
            if (forget) continue;
            G->param_copy_changed(G, dst->student + lo, len);
            G->param_copy_changed(G, dst->teacher + lo, len);
        }
        if (forget && it == 0) out->stale_after_forget = backend_cuda_weight_copy_stale(G);
    }
    const size_t total = out->total = m[0].tab.total;
    out->student = dino_malloc(sizeof(float) * total), out->teacher = dino_malloc(sizeof(float) * total);
    G->to_host(G, out->student, m[0].student, sizeof(float) * total);
    G->to_host(G, out->teacher, m[0].teacher, sizeof(float) * total);
    if (copy && !forget) expect_copy_fresh(G, "3 SSL steps");
    for (int k = 0; k < R; k++) ssl_model_free(&m[k], G);
    CHECK(backend_cuda_weight_copies(G) == 0, "the models are freed, yet %d copies remain", backend_cuda_weight_copies(G));
    free(gcrops), free(lcrops), free(gram_crops), free(mask);
    backend_cuda_set_weight_copy_check(G, 0);
    backend_cuda_set_weight_copy(G, 1);
}

static void weight_copy_steps(int zero) {
    Backend *G = gpu_backend(CUDA_GEMM_BF16);
    WcRun with, without;
    wc_run(G, 1, zero, 0, &with);
    wc_run(G, 0, zero, 0, &without);
    const size_t total = with.total;
    for (int it = 0; it < 3; it++)
        printf("  step %d: total loss with the copy %.9g, converted per GEMM %.9g\n", it, with.loss[it][0], without.loss[it][0]);
    CHECK(memcmp(with.loss, without.loss, sizeof with.loss) == 0, "the bf16 weight copy changed the losses");
    CHECK(memcmp(with.student, without.student, sizeof(float) * total) == 0 &&
              memcmp(with.teacher, without.teacher, sizeof(float) * total) == 0,
          "the bf16 weight copy changed the weights");
    if (zero) { // a trainer that forgets to announce the all-gathered shards: caught
        WcRun forgot;
        wc_run(G, 1, zero, 1, &forgot);
        printf("  all-gather without param_copy_changed: %zu stale weights; step 2 loss %.9g (%.9g with it)\n",
               forgot.stale_after_forget, forgot.loss[1][0], with.loss[1][0]);
        CHECK(forgot.stale_after_forget > 0, "a forgotten param_copy_changed left no stale copy to find");
        CHECK(memcmp(forgot.loss[1], with.loss[1], sizeof with.loss[1]) != 0,
              "a forgotten param_copy_changed did not change the next step: the A/B could not catch it");
        free(forgot.student), free(forgot.teacher);
    }
    free(with.student), free(with.teacher), free(without.student), free(without.teacher);
    gpu_free(G);
}
#endif

TEST(weight_copy_kept_current_by_every_write) {
#ifdef DINO_HAVE_CUDA
    if (emulating()) test_skip("the bf16 weight copy is the CUDA backend's");
    weight_copy_writes();
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}

TEST(weight_copy_ssl_steps_same_bits) {
#ifdef DINO_HAVE_CUDA
    if (emulating()) test_skip("the bf16 weight copy is the CUDA backend's");
    weight_copy_steps(0);
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}

TEST(weight_copy_zero1_two_ranks_same_bits) {
#ifdef DINO_HAVE_CUDA
    if (emulating()) test_skip("the bf16 weight copy is the CUDA backend's");
    weight_copy_steps(1);
#else
    test_skip("built without CUDA (no nvcc found)");
#endif
}

// ---- the trainer with backend: cuda ----------------------------------------------------------------

#ifndef DINO_GPU_SUBSET
// test_train.c's tiny run (synthetic 64 px JPEG tiles, a 2-block ViT), `iters` iterations on `backend`.
static int tiny_train_ex(const char *backend, const char *tiles, const char *out, int iters, char **extra, int n_extra,
                         TrainResult *res_out, char *err);
static int tiny_train(const char *backend, const char *tiles, const char *out, int iters, char *err) {
    return tiny_train_ex(backend, tiles, out, iters, NULL, 0, NULL, err);
}
// The same with more overrides (after the others) and the result.
static int tiny_train_ex(const char *backend, const char *tiles, const char *out, int iters, char **extra, int n_extra,
                         TrainResult *res_out, char *err) {
    Config cfg;
    char src[4300], outkv[4300], be[64];
    snprintf(src, sizeof src, "data.sources=[%s]", tiles);
    snprintf(outkv, sizeof outkv, "train.output_dir=%s", out);
    snprintf(be, sizeof be, "backend=%s", backend);
    char *ov[] = {src, outkv, be, "student.arch=vit_test", "student.embed_dim=24", "student.depth=2",
                  "student.num_heads=2", "student.patch_size=8", "student.drop_path_rate=0.2",
                  "student.num_register_tokens=1", "crops.global_crops_size=32", "crops.local_crops_size=16",
                  "crops.local_crops_number=2", "dino.head_n_prototypes=64", "dino.head_hidden_dim=32",
                  "dino.head_bottleneck_dim=16", "ibot.head_n_prototypes=64", "ibot.head_hidden_dim=32",
                  "ibot.head_bottleneck_dim=16", "train.batch_size_per_gpu=4", "train.OFFICIAL_EPOCH_LENGTH=6",
                  "train.num_workers=2", "optim.epochs=2", "optim.warmup_epochs=1", "optim.base_lr=0.01",
                  "teacher.warmup_teacher_temp_epochs=1", "checkpoint.every_n_iterations=0",
                  "evaluation.eval_period_iterations=0"};
    if (config_load(&cfg, test_src_path("configs/demo.yaml"), (int)(sizeof ov / sizeof ov[0]), ov, err)) return -1;
    for (int i = 0; i < n_extra; i++)
        if (config_override(&cfg, extra[i], err)) return -1;
    if (n_extra && config_validate(&cfg, err)) return -1;
    Dist d;
    if (dist_init(&d, 0, err)) return -1;
    TrainOptions opt = {.max_iterations = iters, .quiet = 1};
    TrainResult res;
    int rc = train_run(&cfg, &d, &opt, &res, err);
    dist_finalize(&d);
    if (res_out) *res_out = res;
    return rc;
}

static const char *tiny_tiles(void) {
    static char spec[4200];
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/tiles", test_tmpdir());
    mkdir(dir, 0755);
    for (int i = 0; i < 24; i++) {
        snprintf(path, sizeof path, "%s/t%03d.jpg", dir, i);
        write_synth_jpeg(path, 11, i, 4, 64);
    }
    snprintf(spec, sizeof spec, "folder:%s", dir);
    return spec;
}

// The "loss" of each line of <out>/training_metrics.jsonl; returns how many.
static __attribute__((unused)) int read_losses(const char *out, double *loss, int cap) {
    char path[4200], line[8192];
    snprintf(path, sizeof path, "%s/training_metrics.jsonl", out);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s", path);
    int n = 0;
    while (f && n < cap && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss\":");
        if (p) loss[n++] = strtod(p + 7, NULL);
    }
    if (f) fclose(f);
    return n;
}
#endif

// Runs everywhere a build lacks CUDA or a device: `backend: cuda` must be refused with a message that
// names the problem, before anything is written.
TEST(trainer_backend_cuda_refused_without_device) {
#ifdef DINO_GPU_SUBSET
    test_skip("the GPU subset build has no trainer");
#else
#ifdef DINO_HAVE_CUDA
    if (dino_cuda_device_count() > 0) test_skip("a CUDA device is present (trainer_backend_cuda_tracks_cpu runs)");
#endif
    char err[DINO_ERRLEN] = "", out[4200];
    snprintf(out, sizeof out, "%s/refused", test_tmpdir());
    int rc = tiny_train("cuda", tiny_tiles(), out, 1, err);
    printf("  refused: %s\n", err);
    CHECK(rc != 0, "train_run started with backend cuda and no device");
#ifdef DINO_HAVE_CUDA
    CHECK(strstr(err, "no CUDA device") != NULL, "unhelpful message: '%s'", err);
#else
    CHECK(strstr(err, "no CUDA support") != NULL, "unhelpful message: '%s'", err);
#endif
#endif
}

// 3 iterations of the tiny run on cuda and on cpu: the logged losses track each other within the
// bf16-GEMM tolerance of ssl_step_*_bf16 (8u relative at the first iteration, whose loss does not
// depend on any update; 16u after two updates), and the run ends cleanly (backend freed).
TEST(trainer_backend_cuda_tracks_cpu) {
#if !defined(DINO_HAVE_CUDA) || defined(DINO_GPU_SUBSET)
    test_skip("built without CUDA, or the GPU subset build (no trainer)");
#else
    if (dino_cuda_device_count() == 0) test_skip("no CUDA device on this machine");
    char err[DINO_ERRLEN], out_c[4200], out_g[4200];
    const char *tiles = tiny_tiles();
    snprintf(out_c, sizeof out_c, "%s/run_cpu", test_tmpdir());
    snprintf(out_g, sizeof out_g, "%s/run_cuda", test_tmpdir());
    CHECK(tiny_train("cpu", tiles, out_c, 3, err) == 0, "cpu run: %s", err);
    CHECK(tiny_train("cuda", tiles, out_g, 3, err) == 0, "cuda run: %s", err);
    double lc[8], lg[8];
    int nc = read_losses(out_c, lc, 8), ng = read_losses(out_g, lg, 8);
    CHECK(nc == 3 && ng == 3, "expected 3 logged iterations, got cpu %d cuda %d", nc, ng);
    for (int i = 0; i < nc && i < ng; i++) {
        double tol = (i == 0 ? 8 : 16) * U_BF16 * (fabs(lc[i]) + 0.01);
        printf("  iteration %d loss cpu %.7g cuda %.7g  err/tol=%.3g\n", i, lc[i], lg[i], fabs(lg[i] - lc[i]) / tol);
        CHECK(fabs(lg[i] - lc[i]) <= tol && isfinite(lg[i]), "iteration %d: cuda loss %.9g, cpu %.9g", i, lg[i], lc[i]);
    }
#endif
}

#if defined(DINO_HAVE_CUDA) && !defined(DINO_GPU_SUBSET)
// <out>/training_metrics.jsonl without the timing keys (which differ from run to run), into buf.
static void metrics_untimed(const char *out, char *buf, size_t cap) {
    char path[4200];
    snprintf(path, sizeof path, "%s/training_metrics.jsonl", out);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s", path);
    size_t n = f ? fread(buf, 1, cap - 1, f) : 0;
    buf[n] = 0;
    if (f) fclose(f);
    const char *timed[] = {"\"images_per_s\":", "\"data_wait_share\":", "\"iter_time\":", "\"data_time\":"};
    for (size_t k = 0; k < sizeof timed / sizeof timed[0]; k++)
        for (char *p; (p = strstr(buf, timed[k]));) { // the key and its value, through the next comma
            char *e = p + strcspn(p, ",}");
            if (*e == ',') e++;
            memmove(p, e, strlen(e) + 1);
        }
}
#endif

// compute_precision.cuda_graphs (replay, the default mode): a run stopped at iteration 1 and resumed to 2
// ends with the checkpoint of one run of 2 iterations, bit for bit, and that is the checkpoint of the same
// run with graphs off; the logged metrics (but the timings) are the same too.
TEST(trainer_cuda_graphs_resume_exactly) {
#if !defined(DINO_HAVE_CUDA) || defined(DINO_GPU_SUBSET)
    test_skip("built without CUDA, or the GPU subset build (no trainer)");
#else
    if (dino_cuda_device_count() == 0) test_skip("no CUDA device on this machine");
    char err[DINO_ERRLEN], out[3][4200], ck[3][4200];
    const char *tiles = tiny_tiles();
    const char *names[3] = {"graphs_once", "graphs_resumed", "eager"};
    for (int k = 0; k < 3; k++) {
        snprintf(out[k], sizeof out[k], "%s/%s", test_tmpdir(), names[k]);
        char *extra[] = {k == 2 ? "compute_precision.cuda_graphs=false" : "compute_precision.cuda_graphs=true",
                         "checkpoint.every_n_iterations=1"};
        TrainResult res;
        if (k == 1) { // stopped after 1 iteration, then resumed
            CHECK(tiny_train_ex("cuda", tiles, out[k], 1, extra, 2, &res, err) == 0, "%s: %s", names[k], err);
            CHECK(res.end_iteration == 1, "%s: first part ended at %lld", names[k], (long long)res.end_iteration);
        }
        CHECK(tiny_train_ex("cuda", tiles, out[k], k == 1 ? 1 : 2, extra, 2, &res, err) == 0, "%s: %s", names[k], err);
        CHECK(res.end_iteration == 2 && res.start_iteration == (k == 1 ? 1 : 0), "%s: ran %lld..%lld", names[k],
              (long long)res.start_iteration, (long long)res.end_iteration);
        snprintf(ck[k], sizeof ck[k], "%s", res.last_checkpoint);
        printf("  %s: %lld graph launches\n", names[k], (long long)res.cuda_graph_launches);
        CHECK(k == 2 ? res.cuda_graph_launches == 0 : res.cuda_graph_launches > 0, "%s: %lld graph launches", names[k],
              (long long)res.cuda_graph_launches);
    }
    for (int k = 1; k < 3; k++) {
        Ckpt a, b;
        CHECK(ckpt_open(&a, ck[0], err) == 0, "%s", err);
        CHECK(ckpt_open(&b, ck[k], err) == 0, "%s", err);
        int diff = 0;
        for (int i = 0; i < a.st.n; i++) {
            const StTensor *ta = &a.st.t[i], *tb = st_get(&b.st, ta->name);
            if (!tb || tb->nbytes != ta->nbytes || memcmp(ta->data, tb->data, ta->nbytes) != 0)
                if (diff++ < 5) printf("  %s: tensor %s differs from %s\n", names[k], ta->name, names[0]);
        }
        printf("  %s vs %s: %d tensors, %d differ\n", names[k], names[0], a.st.n, diff);
        CHECK(a.st.n > 10 && a.st.n == b.st.n && diff == 0, "%s: %d of %d tensors differ", names[k], diff, a.st.n);
        ckpt_close(&a), ckpt_close(&b);
    }
    static char mg[1 << 16], me[1 << 16];
    metrics_untimed(out[0], mg, sizeof mg), metrics_untimed(out[2], me, sizeof me);
    printf("  metrics with graphs: %.200s...\n", mg);
    CHECK(strlen(mg) > 100 && strcmp(mg, me) == 0, "the metrics with graphs on differ from those with graphs off:\n%s\n%s",
          mg, me);
#endif
}

// The trainer in graph replay mode (one process: each step issued whole, one launch, then one wait): a NaN
// input at iteration 1 (DINOTRAIN_INJECT_NAN) is counted as a skipped step as with graphs off, and the run
// ends with the same checkpoint, every tensor bit for bit, and the same metrics but the timings.
TEST(trainer_cuda_graphs_replay_nan_step_counted) {
#if !defined(DINO_HAVE_CUDA) || defined(DINO_GPU_SUBSET)
    test_skip("built without CUDA, or the GPU subset build (no trainer)");
#else
    if (dino_cuda_device_count() == 0) test_skip("no CUDA device on this machine");
    char err[DINO_ERRLEN], out[2][4200], ck[2][4200];
    const char *tiles = tiny_tiles();
    const char *names[2] = {"replay_nan", "eager_nan"};
    setenv("DINOTRAIN_INJECT_NAN", "1", 1);
    setenv("DINO_CUDA_GRAPH_MODE", "replay", 1);
    for (int k = 0; k < 2; k++) {
        snprintf(out[k], sizeof out[k], "%s/%s", test_tmpdir(), names[k]);
        char *extra[] = {k == 0 ? "compute_precision.cuda_graphs=true" : "compute_precision.cuda_graphs=false"};
        TrainResult res;
        CHECK(tiny_train_ex("cuda", tiles, out[k], 3, extra, 1, &res, err) == 0, "%s: %s", names[k], err);
        snprintf(ck[k], sizeof ck[k], "%s", res.last_checkpoint);
        printf("  %s: %lld skipped steps, %lld graph launches\n", names[k], (long long)res.skipped_steps,
               (long long)res.cuda_graph_launches);
        CHECK(res.end_iteration == 3 && res.skipped_steps == 1, "%s: %lld skipped steps in 0..%lld, expected 1",
              names[k], (long long)res.skipped_steps, (long long)res.end_iteration);
        CHECK(k == 1 ? res.cuda_graph_launches == 0 : res.cuda_graph_launches > 0, "%s: %lld graph launches",
              names[k], (long long)res.cuda_graph_launches);
    }
    unsetenv("DINOTRAIN_INJECT_NAN");
    unsetenv("DINO_CUDA_GRAPH_MODE");
    Ckpt a, b;
    CHECK(ckpt_open(&a, ck[0], err) == 0 && ckpt_open(&b, ck[1], err) == 0, "%s", err);
    int diff = 0;
    for (int i = 0; i < a.st.n; i++) {
        const StTensor *ta = &a.st.t[i], *tb = st_get(&b.st, ta->name);
        if (!tb || tb->nbytes != ta->nbytes || memcmp(ta->data, tb->data, ta->nbytes) != 0)
            if (diff++ < 5) printf("  tensor %s differs\n", ta->name);
    }
    CHECK(a.st.n > 10 && a.st.n == b.st.n && diff == 0, "replay vs eager with a NaN step: %d of %d tensors differ",
          diff, a.st.n);
    ckpt_close(&a), ckpt_close(&b);
    static char mg[1 << 16], me[1 << 16];
    metrics_untimed(out[0], mg, sizeof mg), metrics_untimed(out[1], me, sizeof me);
    CHECK(strstr(mg, "\"skipped\": 1") != NULL, "the NaN step is not logged as skipped:\n%s", mg);
    CHECK(strlen(mg) > 100 && strcmp(mg, me) == 0, "the metrics in replay mode differ from eager:\n%s\n%s", mg, me);
#endif
}

// The issue's proof: 50 iterations of the shipped demo config (configs/demo.yaml, its tiny ViT, reading the
// bundled slide directly) on cuda and on cpu; the logged losses track each other: within 5% over the first
// 10 iterations (the bf16 GEMMs' rounding has not compounded yet) and 15% at the last (the two runs drift
// apart as any two precisions do, but the curves must keep the same course), all finite. Under the CUDA
// execution layer (a fiber per CUDA thread on 2 CPU cores) 20 iterations at batch 4 with 2 local crops.
TEST(trainer_demo_config_50_iterations_tracks_cpu) {
#if !defined(DINO_HAVE_CUDA) || defined(DINO_GPU_SUBSET)
    test_skip("built without CUDA, or the GPU subset build (no trainer)");
#else
    if (dino_cuda_device_count() == 0) test_skip("no CUDA device on this machine");
#ifdef DINO_CUDAEMU
    // under the CPU execution layer: the demo's model and data at a quarter of its batch, 20 iterations
    enum { ITERS = 20 };
#else
    enum { ITERS = 50 };
#endif
    double loss[2][ITERS + 1];
    for (int k = 0; k < 2; k++) {
        const char *backend = k ? "cuda" : "cpu";
        char err[DINO_ERRLEN], out[4200], src[4300], outkv[4300], be[64];
        snprintf(out, sizeof out, "%s/demo_%s", test_tmpdir(), backend);
        snprintf(src, sizeof src, "data.sources=[wsi:%s]", test_src_path("data/demo/CMU-1-Small-Region.svs"));
        snprintf(outkv, sizeof outkv, "train.output_dir=%s", out);
        snprintf(be, sizeof be, "backend=%s", backend);
        char *ov[] = {src, outkv, be, "checkpoint.every_n_iterations=0", "log.every_n_iterations=1",
#ifdef DINO_CUDAEMU
                      "train.batch_size_per_gpu=4", "crops.local_crops_number=2"
#endif
        };
        Config cfg;
        CHECK(config_load(&cfg, test_src_path("configs/demo.yaml"), (int)(sizeof ov / sizeof ov[0]), ov, err) == 0, "%s",
              err);
        Dist d;
        CHECK(dist_init(&d, 0, err) == 0, "%s", err);
        TrainOptions opt = {.max_iterations = ITERS, .quiet = 1};
        TrainResult res;
        CHECK(train_run(&cfg, &d, &opt, &res, err) == 0, "%s run: %s", backend, err);
        dist_finalize(&d);
        CHECK(read_losses(out, loss[k], ITERS + 1) == ITERS, "%s: expected %d logged iterations", backend, ITERS);
    }
    for (int i = 0; i < ITERS; i++) {
        double rel = fabs(loss[1][i] - loss[0][i]) / fabs(loss[0][i]);
        if (i < 10 || i == ITERS - 1 || i % 10 == 9) printf("  iteration %2d loss cpu %.6f cuda %.6f\n", i, loss[0][i], loss[1][i]);
        CHECK(isfinite(loss[1][i]), "iteration %d: cuda loss %g", i, loss[1][i]);
        if (i < 10) CHECK(rel <= 0.05, "iteration %d: cuda %.6f vs cpu %.6f (more than 5%%)", i, loss[1][i], loss[0][i]);
    }
    double rel = fabs(loss[1][ITERS - 1] - loss[0][ITERS - 1]) / fabs(loss[0][ITERS - 1]);
    CHECK(rel <= 0.15, "last iteration: cuda %.6f vs cpu %.6f (more than 15%%)", loss[1][ITERS - 1], loss[0][ITERS - 1]);
#endif
}

// ---- construction ------------------------------------------------------------------------------------

// Runs on every machine with nvcc: without a device the backend must refuse with a message, not crash.
TEST(backend_new_reports_missing_device) {
#ifndef DINO_HAVE_CUDA
    test_skip("built without CUDA (no nvcc found)");
#else
    char err[DINO_ERRLEN] = "";
    int n = dino_cuda_device_count();
    if (n == 0) {
        CHECK(backend_cuda_new(0, err) == NULL, "backend created without a device");
        CHECK(strstr(err, "no CUDA device") != NULL, "unhelpful message: '%s'", err);
    } else {
        CHECK(backend_cuda_new(n + 3, err) == NULL, "backend created on a device that does not exist");
        CHECK(strstr(err, "does not exist") != NULL, "unhelpful message: '%s'", err);
        Backend *be = backend_cuda_new(0, err);
        CHECK(be != NULL, "%s", err);
        printf("device: %s\n", be ? backend_cuda_device_name(be) : "?");
        backend_cuda_free(be);
    }
#endif
}

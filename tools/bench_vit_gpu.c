// ViT forward + backward throughput on a backend, with DINOv2's multi-crop batch: per image
// `--global` crops of --global-size px and `--local` crops of --local-size px (2 x 224 + 8 x 98 by
// default), every crop through the student's forward and backward (no teacher, no head, no stochastic
// depth: the same work as tests/torch_ref/bench_vit_gpu_torch.py). Prints images/s, the step split and
// the model FLOPs utilisation (MFU) against the card's measured dense bf16 matmul rate, and one
// machine-readable RESULT line for tools/gpu_check.sh.
//
//   bench_vit_gpu --backend cuda --arch vit_large --batch 32
//   bench_vit_gpu --backend cuda --peak-only          (just the bf16 matmul rate)
//   bench_vit_gpu --backend cpu --arch vit_small --batch 1 --depth 2 --iters 1   (a smoke test)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/threads.h"
#include "common/check.h"
#include "common/rng.h"
#include "model/backend.h"
#include "model/vit.h"
#include "tools/bench_backend.h"
#ifdef DINO_HAVE_CUDA
#include "model/cuda/backend_cuda.h"
#endif


// ---- per-op profile (--op-profile): a Backend that wraps another, syncing around every op ------------
// Syncing after each op serialises the stream, so the sum is a little above the real step time; the
// split says where the time goes (GEMMs vs LayerNorm vs attention vs plumbing), per op and shape.

typedef struct {
    char name[64];
    double seconds, flops;
    long calls;
} ProfEntry;

static Backend *prof_inner;
static ProfEntry prof_tab[256];
static int prof_n;
static double prof_t0;

static void prof_begin(void) {
    prof_inner->sync(prof_inner);
    prof_t0 = dino_wall_s();
}
static void prof_end(const char *name, double flops) {
    prof_inner->sync(prof_inner);
    double dt = dino_wall_s() - prof_t0;
    int i = 0;
    while (i < prof_n && strcmp(prof_tab[i].name, name) != 0) i++;
    if (i == prof_n) {
        if (prof_n == 256) return;
        snprintf(prof_tab[prof_n++].name, sizeof prof_tab[0].name, "%s", name);
    }
    prof_tab[i].seconds += dt, prof_tab[i].flops += flops, prof_tab[i].calls++;
}

#define PROF_CALL(label, flops, call) \
    do {                              \
        prof_begin();                 \
        call;                         \
        prof_end(label, flops);       \
    } while (0)

static void p_copy(Backend *be, void *d, const void *s, size_t n) { PROF_CALL("copy", 0, prof_inner->copy(prof_inner, d, s, n)); }
static void p_zero(Backend *be, void *p, size_t n) { PROF_CALL("zero", 0, prof_inner->zero(prof_inner, p, n)); }
static void p_to_device(Backend *be, void *d, const void *s, size_t n) {
    PROF_CALL("to_device", 0, prof_inner->to_device(prof_inner, d, s, n));
}
static void p_gemm(Backend *be, int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                   int ldb, float beta, float *C, int ldc) {
    PROF_CALL("gemm (pos-embed interpolation)", 2.0 * M * N * K,
              prof_inner->gemm(prof_inner, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc));
}
static void p_linear_fwd(Backend *be, float *out, const float *in, const float *W, const float *b, int rows, int n_in,
                         int n_out) {
    char nm[64];
    snprintf(nm, sizeof nm, "linear_fwd %d->%d", n_in, n_out);
    PROF_CALL(nm, 2.0 * rows * n_in * n_out, prof_inner->linear_fwd(prof_inner, out, in, W, b, rows, n_in, n_out));
}
static void p_linear_gelu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                              int rows, int n_in, int n_out) {
    char nm[64];
    snprintf(nm, sizeof nm, "linear_gelu_fwd %d->%d", n_in, n_out);
    PROF_CALL(nm, 2.0 * rows * n_in * n_out,
              prof_inner->linear_gelu_fwd(prof_inner, pre, act, in, W, b, rows, n_in, n_out));
}
static void p_linear_swiglu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                                int rows, int n_in, int Hd) {
    char nm[64];
    snprintf(nm, sizeof nm, "linear_swiglu_fwd %d->2x%d", n_in, Hd);
    PROF_CALL(nm, 4.0 * rows * n_in * Hd,
              prof_inner->linear_swiglu_fwd(prof_inner, pre, act, in, W, b, rows, n_in, Hd));
}
static void p_linear_bwd(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in,
                         const float *W, int rows, int n_in, int n_out) {
    char nm[64];
    snprintf(nm, sizeof nm, "linear_bwd %d->%d", n_in, n_out);
    PROF_CALL(nm, (din ? 4.0 : 2.0) * rows * n_in * n_out,
              prof_inner->linear_bwd(prof_inner, din, dW, db, dout, in, W, rows, n_in, n_out));
}
static void p_ln_fwd(Backend *be, float *out, float *mean, float *rstd, const float *x, const float *w, const float *b,
                     int rows, int D, float eps) {
    PROF_CALL("layernorm_fwd", 0, prof_inner->layernorm_fwd(prof_inner, out, mean, rstd, x, w, b, rows, D, eps));
}
static void p_ln_bwd(Backend *be, float *dx, float *dw, float *db, const float *dout, const float *x, const float *mean,
                     const float *rstd, const float *w, int rows, int D) {
    PROF_CALL("layernorm_bwd", 0, prof_inner->layernorm_bwd(prof_inner, dx, dw, db, dout, x, mean, rstd, w, rows, D));
}
static void p_gelu_fwd(Backend *be, float *o, const float *x, size_t n) { PROF_CALL("gelu_fwd", 0, prof_inner->gelu_fwd(prof_inner, o, x, n)); }
static void p_gelu_bwd(Backend *be, float *dx, const float *d, const float *x, size_t n) {
    PROF_CALL("gelu_bwd", 0, prof_inner->gelu_bwd(prof_inner, dx, d, x, n));
}
static void p_swiglu_fwd(Backend *be, float *o, const float *in, int rows, int Hd) {
    PROF_CALL("swiglu_fwd", 0, prof_inner->swiglu_fwd(prof_inner, o, in, rows, Hd));
}
static void p_swiglu_bwd(Backend *be, float *din, const float *d, const float *in, int rows, int Hd) {
    PROF_CALL("swiglu_bwd", 0, prof_inner->swiglu_bwd(prof_inner, din, d, in, rows, Hd));
}
static void p_att_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh) {
    char nm[64];
    snprintf(nm, sizeof nm, "attention_fwd T=%d", T);
    PROF_CALL(nm, 4.0 * B * H * T * T * Dh, prof_inner->attention_fwd(prof_inner, out, saved, qkv, B, T, H, Dh));
}
static void p_att_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B, int T,
                      int H, int Dh) {
    char nm[64];
    snprintf(nm, sizeof nm, "attention_bwd T=%d", T);
    PROF_CALL(nm, 8.0 * B * H * T * T * Dh, prof_inner->attention_bwd(prof_inner, dqkv, dout, qkv, saved, B, T, H, Dh));
}
static void p_im2col(Backend *be, float *cols, const float *img, int B, int C, int Hi, int Wi, int p) {
    PROF_CALL("im2col", 0, prof_inner->im2col(prof_inner, cols, img, B, C, Hi, Wi, p));
}
static void p_tokens_fwd(Backend *be, float *x, const float *patch, const float *cls, const float *reg, const float *pos,
                         const float *mt, const uint8_t *mask, int B, int N, int R, int D) {
    PROF_CALL("tokens_fwd", 0, prof_inner->tokens_fwd(prof_inner, x, patch, cls, reg, pos, mt, mask, B, N, R, D));
}
static void p_tokens_bwd(Backend *be, float *dpatch, float *dcls, float *dreg, float *dpos, float *dmt, const float *dx,
                         const uint8_t *mask, int B, int N, int R, int D) {
    PROF_CALL("tokens_bwd", 0, prof_inner->tokens_bwd(prof_inner, dpatch, dcls, dreg, dpos, dmt, dx, mask, B, N, R, D));
}
static void p_gather(Backend *be, float *o, const float *in, const int *idx, int n, size_t len) {
    PROF_CALL("gather_rows", 0, prof_inner->gather_rows(prof_inner, o, in, idx, n, len));
}
static void p_res_fwd(Backend *be, float *x, const float *br, const float *g, const int *idx, int n, int T, int D,
                      float sc) {
    PROF_CALL("residual_fwd", 0, prof_inner->residual_fwd(prof_inner, x, br, g, idx, n, T, D, sc));
}
static void p_res_bwd(Backend *be, float *dbr, float *dg, const float *dx, const float *br, const float *g,
                      const int *idx, int n, int T, int D, float sc) {
    PROF_CALL("residual_bwd", 0, prof_inner->residual_bwd(prof_inner, dbr, dg, dx, br, g, idx, n, T, D, sc));
}
static void p_res_ln_fwd(Backend *be, float *xo, float *out, float *mean, float *rstd, float *xs, const float *xi,
                         const float *br, const float *g, const int *idx, int n, float sc, const float *w,
                         const float *b, const int *ln_idx, int ln_n, int B, int T, int D, float eps) {
    PROF_CALL("residual_layernorm_fwd", 0,
              prof_inner->residual_layernorm_fwd(prof_inner, xo, out, mean, rstd, xs, xi, br, g, idx, n, sc, w, b, ln_idx,
                                                 ln_n, B, T, D, eps));
}
static void p_scatter(Backend *be, float *x, const float *in, const int *idx, int n, size_t len) {
    PROF_CALL("scatter_add_rows", 0, prof_inner->scatter_add_rows(prof_inner, x, in, idx, n, len));
}
static void p_axpy(Backend *be, float *y, float a, const float *x, size_t n) { PROF_CALL("axpy", 0, prof_inner->axpy(prof_inner, y, a, x, n)); }

static Backend *profiling_backend(Backend *inner) {
    Backend *p = dino_malloc(sizeof *p);
    *p = *inner; // memory ops and anything not wrapped go straight to the inner backend
    prof_inner = inner;
    p->copy = p_copy, p->zero = p_zero, p->to_device = p_to_device, p->gemm = p_gemm;
    p->linear_fwd = p_linear_fwd, p->linear_bwd = p_linear_bwd, p->layernorm_fwd = p_ln_fwd;
    p->linear_gelu_fwd = p_linear_gelu_fwd, p->linear_swiglu_fwd = p_linear_swiglu_fwd;
    p->layernorm_bwd = p_ln_bwd, p->gelu_fwd = p_gelu_fwd, p->gelu_bwd = p_gelu_bwd, p->swiglu_fwd = p_swiglu_fwd;
    p->swiglu_bwd = p_swiglu_bwd, p->attention_fwd = p_att_fwd, p->attention_bwd = p_att_bwd, p->im2col = p_im2col;
    p->tokens_fwd = p_tokens_fwd, p->tokens_bwd = p_tokens_bwd, p->gather_rows = p_gather;
    p->residual_fwd = p_res_fwd, p->residual_bwd = p_res_bwd, p->scatter_add_rows = p_scatter, p->axpy = p_axpy;
    p->residual_layernorm_fwd = p_res_ln_fwd;
    return p;
}

static int prof_cmp(const void *a, const void *b) {
    double x = ((const ProfEntry *)a)->seconds, y = ((const ProfEntry *)b)->seconds;
    return (x < y) - (x > y);
}

static void prof_report(int steps, double step_s) {
    double total = 0;
    for (int i = 0; i < prof_n; i++) total += prof_tab[i].seconds;
    qsort(prof_tab, (size_t)prof_n, sizeof prof_tab[0], prof_cmp);
    printf("per-op profile (synchronised after every op; sum %.2f ms/step vs %.2f ms unprofiled):\n",
           1e3 * total / steps, 1e3 * step_s);
    for (int i = 0; i < prof_n; i++) {
        const ProfEntry *e = &prof_tab[i];
        char rate[32] = "";
        if (e->flops > 0) snprintf(rate, sizeof rate, "%8.1f TFLOP/s", e->flops / e->seconds / 1e12);
        printf("OPPROF %-32s %9.3f ms/step %5.1f%% %6ld calls/step %s\n", e->name, 1e3 * e->seconds / steps,
               100 * e->seconds / total, e->calls / steps, rate);
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench_vit_gpu [--backend cuda|cpu] [--arch vit_small|vit_base|vit_large|vit_giant2]\n"
            "                     [--batch IMAGES] [--global 2] [--local 8] [--global-size 224] [--local-size 98]\n"
            "                     [--patch 14] [--registers 0] [--ffn mlp|swiglu] [--depth L] [--iters 10]\n"
            "                     [--warmup 3] [--gemm bf16|fp32] [--peak-only] [--no-peak] [--op-profile]\n"
            "                     [--recompute]   (activations recomputed per block in backward)\n");
    exit(2);
}

// The spec sheet's dense bf16 rate (TFLOP/s), for reference next to the measured one (design note 13).
static double nominal_bf16_tflops(const char *name) {
    if (strstr(name, "H100") || strstr(name, "H200") || strstr(name, "GH200")) return 989;
    if (strstr(name, "A100")) return 312;
    if (strstr(name, "L40S")) return 362;
    return -1;
}

int main(int argc, char **argv) {
    dino_prefer_passive_openmp(argv);
    const char *backend = "cuda", *arch = "vit_small", *ffn = "mlp", *gemm = "bf16";
    int batch = 8, n_global = 2, n_local = 8, gsize = 224, lsize = 98, patch = 14, registers = 0, depth = 0;
    int iters = 10, warmup = 3, peak_only = 0, no_peak = 0, op_profile = 0, recompute = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG_S(flag, var) else if (strcmp(a, flag) == 0 && v) { var = v; i++; }
#define ARG_I(flag, var) else if (strcmp(a, flag) == 0 && v) { var = atoi(v); i++; }
        if (0) {}
        ARG_S("--backend", backend) ARG_S("--arch", arch) ARG_S("--ffn", ffn) ARG_S("--gemm", gemm)
        ARG_I("--batch", batch) ARG_I("--global", n_global) ARG_I("--local", n_local) ARG_I("--global-size", gsize)
        ARG_I("--local-size", lsize) ARG_I("--patch", patch) ARG_I("--registers", registers) ARG_I("--depth", depth)
        ARG_I("--iters", iters) ARG_I("--warmup", warmup)
        else if (strcmp(a, "--peak-only") == 0) peak_only = 1;
        else if (strcmp(a, "--no-peak") == 0) no_peak = 1;
        else if (strcmp(a, "--op-profile") == 0) op_profile = 1;
        else if (strcmp(a, "--recompute") == 0) recompute = 1;
        else usage();
#undef ARG_S
#undef ARG_I
    }
    if (batch <= 0 || iters <= 0 || warmup < 0 || n_global < 0 || n_local < 0 || n_global + n_local == 0) usage();

    char err[DINO_ERRLEN];
    const char *device;
    double peak;
    Backend *be = bench_open_backend(backend, !no_peak, &device, &peak, err);
    if (!be) {
        fprintf(stderr, "bench_vit_gpu: %s\n", err);
        return 1;
    }
#ifdef DINO_HAVE_CUDA
    if (strcmp(backend, "cuda") == 0) {
        backend_cuda_set_gemm_precision(be, strcmp(gemm, "fp32") == 0 ? CUDA_GEMM_FP32 : CUDA_GEMM_BF16);
        if (peak > 0) {
            printf("device %s: measured dense bf16 matmul %.1f TFLOP/s (8192^3 cublasGemmEx, median of 20); "
                   "nominal %.0f\n",
                   device, peak, nominal_bf16_tflops(device));
            printf("PEAK device=\"%s\" measured_bf16_tflops=%.1f nominal_bf16_tflops=%.0f\n", device, peak,
                   nominal_bf16_tflops(device));
        }
    }
#endif
    if (peak_only) return peak > 0 ? 0 : 1;

    VitConfig cfg;
    if (vit_config_from_arch(&cfg, arch, patch, gsize, registers, ffn, err)) {
        fprintf(stderr, "bench_vit_gpu: %s\n", err);
        return 2;
    }
    if (depth > 0) cfg.depth = depth;
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "backbone.");
    float *P_host = dino_calloc(tab.total, sizeof(float));
    vit_init_weights(&vit, P_host, 1);
    for (int l = 0; l < cfg.depth && cfg.layerscale > 0; l++) { // LayerScale 1e-5 would make blocks near-no-ops
        for (int d = 0; d < cfg.dim; d++) P_host[vit.blocks[l].ls1 + d] = P_host[vit.blocks[l].ls2 + d] = 0.1f;
    }
    float *P = be->alloc(be, sizeof(float) * tab.total), *G = be->alloc(be, sizeof(float) * tab.total);
    be->to_device(be, P, P_host, sizeof(float) * tab.total);

    // two crop groups: all global crops of the batch in one, all local crops in the other
    const int nimg[2] = {batch * n_global, batch * n_local}, crop[2] = {gsize, lsize};
    VitActs *acts[2] = {NULL, NULL};
    float *img[2] = {NULL, NULL}, *dxn[2] = {NULL, NULL};
    Rng r = rng_make(2, 0, 0, 0);
    double flops = 0;
    size_t act_bytes = 0;
    for (int g = 0; g < 2; g++) {
        if (!nimg[g]) continue;
        acts[g] = vit_acts_new(be, &vit, nimg[g], crop[g], recompute ? VIT_ACTS_RECOMPUTE : VIT_ACTS_STORE_ALL);
        act_bytes += vit_acts_bytes(acts[g]);
        size_t ni = (size_t)nimg[g] * 3 * crop[g] * crop[g], nx = (size_t)nimg[g] * vit_acts_tokens(acts[g]) * cfg.dim;
        size_t nmax = ni > nx ? ni : nx;
        float *h = dino_malloc(sizeof(float) * nmax);
        for (size_t i = 0; i < ni; i++) h[i] = (float)rng_normal(&r);
        img[g] = be->alloc(be, sizeof(float) * ni);
        be->to_device(be, img[g], h, sizeof(float) * ni);
        for (size_t i = 0; i < nx; i++) h[i] = 1e-3f * (float)rng_normal(&r);
        dxn[g] = be->alloc(be, sizeof(float) * nx);
        be->to_device(be, dxn[g], h, sizeof(float) * nx);
        free(h);
        flops += vit_flops(&cfg, nimg[g], crop[g], 1);
    }
    size_t nparams = 0;
    for (int i = 0; i < tab.n; i++) nparams += tab.t[i].numel;
    printf("%s on %s: %s/%d, %.1fM params, depth %d, batch %d images x (%d x %d px + %d x %d px), GEMMs %s\n",
           backend, device, arch, patch, nparams / 1e6, cfg.depth, batch, n_global, gsize, n_local, lsize, gemm);

    double t_fwd = 0, t_bwd = 0, t_step = 0, best_step = 1e30;
    for (int it = 0; it < warmup + iters; it++) {
        be->zero(be, G, sizeof(float) * tab.total);
        be->sync(be);
        double t0 = dino_wall_s();
        for (int g = 0; g < 2; g++)
            if (acts[g]) vit_forward(be, &vit, P, acts[g], img[g], NULL, NULL);
        be->sync(be);
        double t1 = dino_wall_s();
        for (int g = 1; g >= 0; g--)
            if (acts[g]) vit_backward(be, &vit, P, G, acts[g], dxn[g]);
        be->sync(be);
        double t2 = dino_wall_s();
        if (it >= warmup) {
            t_fwd += t1 - t0, t_bwd += t2 - t1, t_step += t2 - t0;
            if (t2 - t0 < best_step) best_step = t2 - t0;
        }
    }
    // Note: the forward of group 1 overwrote nothing that the backward of group 0 needs: each group
    // has its own activations.
    t_fwd /= iters, t_bwd /= iters, t_step /= iters;
    double ips = batch / t_step, tflops = flops / t_step / 1e12;
    double mfu = peak > 0 ? tflops / peak : -1, nominal = nominal_bf16_tflops(device);
    double gn = be->sum_squares(be, G, tab.total);
    char mfu_s[96] = "MFU n/a (no measured peak)";
    if (peak > 0)
        snprintf(mfu_s, sizeof mfu_s, "MFU %.1f%% of measured bf16 (%.1f%% of nominal)", 100 * mfu,
                 nominal > 0 ? 100 * tflops / nominal : -1.0);
    printf("step %.2f ms (best %.2f): forward %.2f ms, backward %.2f ms; %.2f images/s; %.3f TFLOP/s model; %s; "
           "|grad|^2 = %.4g\n",
           1e3 * t_step, 1e3 * best_step, 1e3 * t_fwd, 1e3 * t_bwd, ips, tflops, mfu_s, gn);
    printf("RESULT impl=c backend=%s arch=%s batch=%d img_per_s=%.2f step_ms=%.2f fwd_ms=%.2f bwd_ms=%.2f "
           "model_tflops=%.2f peak_tflops=%.1f mfu=%.4f recompute=%d act_gib=%.2f\n",
           backend, arch, batch, ips, 1e3 * t_step, 1e3 * t_fwd, 1e3 * t_bwd, tflops, peak, mfu, recompute,
           act_bytes / 1073741824.0);

    if (op_profile) { // two more steps through the profiling wrapper
        Backend *pb = profiling_backend(be);
        const int steps = 2;
        for (int it = 0; it < steps; it++) {
            pb->zero(pb, G, sizeof(float) * tab.total);
            for (int g = 0; g < 2; g++)
                if (acts[g]) vit_forward(pb, &vit, P, acts[g], img[g], NULL, NULL);
            for (int g = 1; g >= 0; g--)
                if (acts[g]) vit_backward(pb, &vit, P, G, acts[g], dxn[g]);
        }
        be->sync(be);
        prof_report(steps, t_step);
        free(pb);
    }

    for (int g = 0; g < 2; g++) {
        if (!acts[g]) continue;
        vit_acts_free(be, acts[g]);
        be->release(be, img[g]);
        be->release(be, dxn[g]);
    }
    be->release(be, P);
    be->release(be, G);
    free(P_host);
    vit_free(&vit);
    param_table_free(&tab);
#ifdef DINO_HAVE_CUDA
    if (strcmp(backend, "cuda") == 0) backend_cuda_free(be);
    else backend_free(be);
#else
    backend_free(be);
#endif
    return 0;
}

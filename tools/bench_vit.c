// bench_vit: times forward + backward of the student ViT on one step's crops on the CPU backend.
// Default: ViT-S/14 (img_size 224), B = 8 images, each with 2 global 224 px and 8 local 98 px crops
// (two crop groups of 2B and 8B images), random weights, no drop path. Threads: OMP_NUM_THREADS.
// tools/bench_vit.sh runs this and the same model in PyTorch (tests/torch_ref/bench_vit_torch.py).
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/threads.h"
#include "common/check.h"
#include "common/rng.h"
#include "model/backend.h"
#include "model/params.h"
#include "model/vit.h"


// ---- --profile: a backend that forwards to the CPU backend and times every op -----------------------

static Backend *inner;
enum { P_GEMM, P_LIN_F, P_LIN_B, P_LN_F, P_LN_B, P_GELU_F, P_GELU_B, P_SWIGLU_F, P_SWIGLU_B, P_ATT_F, P_ATT_B,
       P_IM2COL, P_TOK_F, P_TOK_B, P_GATHER, P_RES_F, P_RES_B, P_RES_LN_F, P_SCATTER, P_COPY, P_ZERO, P_AXPY, P_N };
static const char *prof_names[P_N] = {"gemm", "linear_fwd", "linear_bwd", "layernorm_fwd", "layernorm_bwd",
                                      "gelu_fwd", "gelu_bwd", "swiglu_fwd", "swiglu_bwd", "attention_fwd",
                                      "attention_bwd", "im2col", "tokens_fwd", "tokens_bwd", "gather_rows",
                                      "residual_fwd", "residual_bwd", "residual_layernorm_fwd", "scatter_add_rows", "copy",
                                      "zero", "axpy"};
static double prof_s[P_N];
static int prof_calls[P_N];

#define TIMED(id, call)                                                                            \
    do {                                                                                           \
        double t0_ = dino_wall_s();                                                                      \
        call;                                                                                      \
        prof_s[id] += dino_wall_s() - t0_;                                                               \
        prof_calls[id]++;                                                                          \
    } while (0)

static void p_gemm(Backend *be, int tA, int tB, int M, int N, int K, float al, const float *A, int lda,
                   const float *Bm, int ldb, float beta, float *C, int ldc) {
    TIMED(P_GEMM, inner->gemm(inner, tA, tB, M, N, K, al, A, lda, Bm, ldb, beta, C, ldc));
}
static void p_lin_f(Backend *be, float *out, const float *in, const float *W, const float *b, int rows, int I, int O) {
    TIMED(P_LIN_F, inner->linear_fwd(inner, out, in, W, b, rows, I, O));
}
static void p_lin_b(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in, const float *W,
                    int rows, int I, int O) {
    TIMED(P_LIN_B, inner->linear_bwd(inner, din, dW, db, dout, in, W, rows, I, O));
}
static void p_ln_f(Backend *be, float *out, float *mean, float *rstd, const float *x, const float *w, const float *b,
                   int rows, int D, float eps) {
    TIMED(P_LN_F, inner->layernorm_fwd(inner, out, mean, rstd, x, w, b, rows, D, eps));
}
static void p_ln_b(Backend *be, float *dx, float *dw, float *db, const float *dout, const float *x, const float *mean,
                   const float *rstd, const float *w, int rows, int D) {
    TIMED(P_LN_B, inner->layernorm_bwd(inner, dx, dw, db, dout, x, mean, rstd, w, rows, D));
}
static void p_gelu_f(Backend *be, float *out, const float *x, size_t n) { TIMED(P_GELU_F, inner->gelu_fwd(inner, out, x, n)); }
static void p_gelu_b(Backend *be, float *dx, const float *dout, const float *x, size_t n) {
    TIMED(P_GELU_B, inner->gelu_bwd(inner, dx, dout, x, n));
}
static void p_swiglu_f(Backend *be, float *out, const float *in, int rows, int Hd) {
    TIMED(P_SWIGLU_F, inner->swiglu_fwd(inner, out, in, rows, Hd));
}
static void p_swiglu_b(Backend *be, float *din, const float *dout, const float *in, int rows, int Hd) {
    TIMED(P_SWIGLU_B, inner->swiglu_bwd(inner, din, dout, in, rows, Hd));
}
static size_t p_att_saved(Backend *be, int B, int T, int H, int Dh) {
    return inner->attention_saved_floats(inner, B, T, H, Dh);
}
static void p_att_f(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh) {
    TIMED(P_ATT_F, inner->attention_fwd(inner, out, saved, qkv, B, T, H, Dh));
}
static void p_att_b(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B, int T,
                    int H, int Dh) {
    TIMED(P_ATT_B, inner->attention_bwd(inner, dqkv, dout, qkv, saved, B, T, H, Dh));
}
static void p_im2col(Backend *be, float *cols, const float *img, int B, int C, int Hi, int Wi, int p) {
    TIMED(P_IM2COL, inner->im2col(inner, cols, img, B, C, Hi, Wi, p));
}
static void p_tok_f(Backend *be, float *x, const float *patch, const float *cls, const float *reg, const float *pos,
                    const float *mt, const uint8_t *mask, int B, int N, int R, int D) {
    TIMED(P_TOK_F, inner->tokens_fwd(inner, x, patch, cls, reg, pos, mt, mask, B, N, R, D));
}
static void p_tok_b(Backend *be, float *dpatch, float *dcls, float *dreg, float *dpos, float *dmt, const float *dx,
                    const uint8_t *mask, int B, int N, int R, int D) {
    TIMED(P_TOK_B, inner->tokens_bwd(inner, dpatch, dcls, dreg, dpos, dmt, dx, mask, B, N, R, D));
}
static void p_gather(Backend *be, float *out, const float *in, const int *idx, int n, size_t len) {
    TIMED(P_GATHER, inner->gather_rows(inner, out, in, idx, n, len));
}
static void p_res_f(Backend *be, float *x, const float *br, const float *g, const int *idx, int n, int T, int D,
                    float sc) {
    TIMED(P_RES_F, inner->residual_fwd(inner, x, br, g, idx, n, T, D, sc));
}
static void p_res_b(Backend *be, float *dbr, float *dg, const float *dx, const float *br, const float *g,
                    const int *idx, int n, int T, int D, float sc) {
    TIMED(P_RES_B, inner->residual_bwd(inner, dbr, dg, dx, br, g, idx, n, T, D, sc));
}
static void p_res_ln_f(Backend *be, float *xo, float *out, float *mean, float *rstd, float *xs, const float *xi,
                      const float *br, const float *g, const int *idx, int n, float sc, const float *w, const float *b,
                      const int *ln_idx, int ln_n, int B, int T, int D, float eps) {
    TIMED(P_RES_LN_F, inner->residual_layernorm_fwd(inner, xo, out, mean, rstd, xs, xi, br, g, idx, n, sc, w, b, ln_idx,
                                                    ln_n, B, T, D, eps));
}
static void p_scatter(Backend *be, float *x, const float *in, const int *idx, int n, size_t len) {
    TIMED(P_SCATTER, inner->scatter_add_rows(inner, x, in, idx, n, len));
}
static void p_copy(Backend *be, void *d, const void *s, size_t n) { TIMED(P_COPY, inner->copy(inner, d, s, n)); }
static void p_zero(Backend *be, void *p, size_t n) { TIMED(P_ZERO, inner->zero(inner, p, n)); }
static void p_axpy(Backend *be, float *y, float a, const float *x, size_t n) { TIMED(P_AXPY, inner->axpy(inner, y, a, x, n)); }

static Backend *profiling_backend(Backend *be) {
    inner = be;
    Backend *p = dino_malloc(sizeof *p);
    *p = *be; // memory ops, scale, sum_squares pass through untimed
    p->gemm = p_gemm, p->linear_fwd = p_lin_f, p->linear_bwd = p_lin_b, p->layernorm_fwd = p_ln_f;
    p->layernorm_bwd = p_ln_b, p->gelu_fwd = p_gelu_f, p->gelu_bwd = p_gelu_b, p->swiglu_fwd = p_swiglu_f;
    p->swiglu_bwd = p_swiglu_b, p->attention_saved_floats = p_att_saved, p->attention_fwd = p_att_f;
    p->attention_bwd = p_att_b, p->im2col = p_im2col, p->tokens_fwd = p_tok_f, p->tokens_bwd = p_tok_b;
    p->gather_rows = p_gather, p->residual_fwd = p_res_f, p->residual_bwd = p_res_b, p->scatter_add_rows = p_scatter;
    p->residual_layernorm_fwd = p_res_ln_f;
    p->copy = p_copy, p->zero = p_zero, p->axpy = p_axpy;
    return p;
}

static void print_profile(int iters) {
    double total = 0;
    for (int i = 0; i < P_N; i++) total += prof_s[i];
    printf("per-op time (timed iterations, ms/iter):\n");
    for (int i = 0; i < P_N; i++)
        if (prof_calls[i])
            printf("  %-18s %9.1f ms %5.1f%%  (%d calls)\n", prof_names[i], 1e3 * prof_s[i] / iters,
                   100 * prof_s[i] / total, prof_calls[i] / iters);
}

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s [--batch B] [--iters N] [--warmup W] [--drop-path RATE] [--arch vit_small] [--patch 14]\n"
            "          [--global-size 224] [--local-size 98] [--n-global 2] [--n-local 8] [--registers R]\n"
            "          [--ffn mlp|swiglufused] [--profile 1]\n"
            "Times forward+backward of both crop groups; threads = OMP_NUM_THREADS.\n",
            prog);
    exit(2);
}

static float *random_device(Backend *be, size_t n, Rng *r) {
    float *h = dino_malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) h[i] = (float)rng_normal(r);
    float *d = be->alloc(be, sizeof(float) * n);
    be->to_device(be, d, h, sizeof(float) * n);
    free(h);
    return d;
}

int main(int argc, char **argv) {
    dino_prefer_passive_openmp(argv);
    int B = 8, iters = 3, warmup = 1, patch = 14, gsize = 224, lsize = 98, n_global = 2, n_local = 8, regs = 0;
    int profile = 0;
    double drop = 0.0;
    const char *arch = "vit_small", *ffn = "mlp";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage(argv[0]);
        const char *v = argv[++i];
        if (!strcmp(a, "--batch")) B = atoi(v);
        else if (!strcmp(a, "--iters")) iters = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--drop-path")) drop = strtod(v, NULL);
        else if (!strcmp(a, "--arch")) arch = v;
        else if (!strcmp(a, "--patch")) patch = atoi(v);
        else if (!strcmp(a, "--global-size")) gsize = atoi(v);
        else if (!strcmp(a, "--local-size")) lsize = atoi(v);
        else if (!strcmp(a, "--n-global")) n_global = atoi(v);
        else if (!strcmp(a, "--n-local")) n_local = atoi(v);
        else if (!strcmp(a, "--registers")) regs = atoi(v);
        else if (!strcmp(a, "--ffn")) ffn = v;
        else if (!strcmp(a, "--profile")) profile = atoi(v);
        else usage(argv[0]);
    }
    if (B < 1 || iters < 1 || warmup < 0 || n_global < 1 || n_local < 0) usage(argv[0]);

    char err[DINO_ERRLEN];
    VitConfig cfg;
    if (vit_config_from_arch(&cfg, arch, patch, gsize, regs, ffn, err) != 0) {
        fprintf(stderr, "bench_vit: %s\n", err);
        return 1;
    }
    cfg.drop_path_rate = drop;
    if (vit_config_check(&cfg, err) || vit_check_crop(&cfg, gsize, err) || vit_check_crop(&cfg, lsize, err)) {
        fprintf(stderr, "bench_vit: %s\n", err);
        return 1;
    }

    Backend *cpu = backend_cpu_new();
    Backend *be = profile ? profiling_backend(cpu) : cpu;
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "");
    float *P = dino_calloc(tab.total, sizeof(float));
    vit_init_weights(&vit, P, 1);
    float *dP = be->alloc(be, sizeof(float) * tab.total), *dG = be->alloc(be, sizeof(float) * tab.total);
    be->to_device(be, dP, P, sizeof(float) * tab.total);
    free(P);

    // the two crop groups of one step: n_global*B images at gsize, n_local*B at lsize
    const int n_groups = n_local > 0 ? 2 : 1;
    const int gB[2] = {n_global * B, n_local * B}, gcrop[2] = {gsize, lsize};
    VitActs *acts[2];
    float *img[2], *dxn[2];
    int *subsets[2];
    Rng r = rng_make(7, 0, 0, 0);
    size_t tokens = 0;
    for (int k = 0; k < n_groups; k++) {
        acts[k] = vit_acts_new(be, &vit, gB[k], gcrop[k], VIT_ACTS_STORE_ALL);
        img[k] = random_device(be, (size_t)gB[k] * 3 * gcrop[k] * gcrop[k], &r);
        const int T = vit_acts_tokens(acts[k]);
        dxn[k] = random_device(be, (size_t)gB[k] * T * cfg.dim, &r);
        subsets[k] = dino_malloc(sizeof(int) * (size_t)cfg.depth * 2 * vit_drop_subset_size(&vit, gB[k]));
        tokens += (size_t)gB[k] * T;
    }
    printf("bench_vit: %s/%d%s, B=%d images x (%d x %dpx + %d x %dpx), %zu tokens/step, drop_path %.2f, "
           "%d threads, %zu params\n",
           arch, patch, cfg.ffn == VIT_FFN_SWIGLU ? " swiglu" : "", B, n_global, gsize, n_local, lsize, tokens, drop,
           omp_get_max_threads(), (size_t)tab.total);

    double total = 0, best = 1e30, cpu_total = 0;
    for (int it = 0; it < warmup + iters; it++) {
        double t0 = dino_wall_s(), c0 = dino_cpu_s();
        be->zero(be, dG, sizeof(float) * tab.total);
        for (int k = 0; k < n_groups; k++) {
            const int *sub = NULL;
            if (drop > 0) {
                vit_draw_drop_subsets(&vit, gB[k], rng_make(7, (uint64_t)it, (uint64_t)k, 1), subsets[k]);
                sub = subsets[k];
            }
            vit_forward(be, &vit, dP, acts[k], img[k], NULL, sub);
        }
        for (int k = n_groups - 1; k >= 0; k--) vit_backward(be, &vit, dP, dG, acts[k], dxn[k]);
        be->sync(be);
        double dt = dino_wall_s() - t0, dc = dino_cpu_s() - c0;
        printf("  iter %d%s: %.1f ms\n", it, it < warmup ? " (warmup)" : "", 1e3 * dt);
        fflush(stdout);
        if (it + 1 == warmup) memset(prof_s, 0, sizeof prof_s), memset(prof_calls, 0, sizeof prof_calls);
        if (it >= warmup) {
            total += dt;
            cpu_total += dc;
            if (dt < best) best = dt;
        }
    }
    // the best iteration is the least disturbed by other load on a shared machine
    double ms = 1e3 * total / iters;
    double checksum = be->sum_squares(be, dG, tab.total);
    printf("RESULT impl=c ms_per_iter=%.1f images_per_s=%.3f best_ms=%.1f best_images_per_s=%.3f cpu_ms=%.1f "
           "(grad sum of squares %.6g)\n", ms, B / (ms / 1e3), 1e3 * best, B / best, 1e3 * cpu_total / iters, checksum);

    if (profile) print_profile(iters);
    for (int k = 0; k < n_groups; k++) {
        vit_acts_free(be, acts[k]);
        be->release(be, img[k]);
        be->release(be, dxn[k]);
        free(subsets[k]);
    }
    be->release(be, dP);
    be->release(be, dG);
    vit_free(&vit);
    param_table_free(&tab);
    if (profile) free(be);
    backend_free(cpu);
    return 0;
}

// Finite-difference gradient checks: every CPU backend op of the ViT, then a whole 2-block ViT with
// registers, iBOT masking, stochastic depth and two crop sizes (interpolated position embedding).
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/backend.h"
#include "model/vit.h"
#include "tests/gradcheck.h"
#include "tests/vit_gradcheck.h"

// ---- single ops -----------------------------------------------------------------------------------

typedef struct {
    Backend *be;
    int rows, n_in, n_out, D, H, Dh, B, T;
    float *x, *w, *b, *out, *wout, *aux1, *aux2, *aux3;
    int kind;
} OpCtx;

enum { OP_LINEAR, OP_LN, OP_GELU, OP_SWIGLU, OP_ATTN };

static double op_loss(void *vctx) {
    OpCtx *c = vctx;
    Backend *be = c->be;
    size_t nout = 0;
    switch (c->kind) {
    case OP_LINEAR:
        be->linear_fwd(be, c->out, c->x, c->w, c->b, c->rows, c->n_in, c->n_out);
        nout = (size_t)c->rows * c->n_out;
        break;
    case OP_LN:
        be->layernorm_fwd(be, c->out, c->aux1, c->aux2, c->x, c->w, c->b, c->rows, c->D, 1e-6f);
        nout = (size_t)c->rows * c->D;
        break;
    case OP_GELU:
        be->gelu_fwd(be, c->out, c->x, (size_t)c->rows * c->D);
        nout = (size_t)c->rows * c->D;
        break;
    case OP_SWIGLU:
        be->swiglu_fwd(be, c->out, c->x, c->rows, c->D);
        nout = (size_t)c->rows * c->D;
        break;
    case OP_ATTN:
        be->attention_fwd(be, c->out, c->aux1, c->x, c->B, c->T, c->H, c->Dh);
        nout = (size_t)c->B * c->T * c->H * c->Dh;
        break;
    }
    return gc_dot(c->out, c->wout, nout);
}

TEST(grad_linear) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(1, 0, 0, 0);
    OpCtx c = {.be = be, .rows = 5, .n_in = 7, .n_out = 6, .kind = OP_LINEAR};
    float x[35], w[42], b[6], out[30], wout[30], dx[35], dw[42] = {0}, db[6] = {0};
    gc_fill_normal(x, 35, 1, &r);
    gc_fill_normal(w, 42, 0.5f, &r);
    gc_fill_normal(b, 6, 0.5f, &r);
    gc_fill_normal(wout, 30, 1, &r);
    c.x = x, c.w = w, c.b = b, c.out = out, c.wout = wout;
    be->linear_bwd(be, dx, dw, db, wout, x, w, 5, 7, 6);
    gradcheck("linear.x", op_loss, &c, x, dx, 35, 100, 1e-2f, 1e-4, 1e-3, &r);
    gradcheck("linear.W", op_loss, &c, w, dw, 42, 100, 1e-2f, 1e-4, 1e-3, &r);
    gradcheck("linear.b", op_loss, &c, b, db, 6, 100, 1e-2f, 1e-4, 1e-3, &r);
    backend_free(be);
}

TEST(grad_layernorm) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(2, 0, 0, 0);
    enum { R = 4, D = 9 };
    OpCtx c = {.be = be, .rows = R, .D = D, .kind = OP_LN};
    float x[R * D], w[D], b[D], out[R * D], wout[R * D], mean[R], rstd[R], dx[R * D] = {0}, dw[D] = {0}, db[D] = {0};
    gc_fill_normal(x, R * D, 2, &r);
    for (int i = 0; i < D; i++) w[i] = 1 + 0.3f * (float)rng_normal(&r), b[i] = 0.2f * (float)rng_normal(&r);
    gc_fill_normal(wout, R * D, 1, &r);
    c.x = x, c.w = w, c.b = b, c.out = out, c.wout = wout, c.aux1 = mean, c.aux2 = rstd;
    op_loss(&c);
    be->layernorm_bwd(be, dx, dw, db, wout, x, mean, rstd, w, R, D);
    gradcheck("ln.x", op_loss, &c, x, dx, R * D, 100, 1e-2f, 1e-3, 1e-2, &r);
    gradcheck("ln.w", op_loss, &c, w, dw, D, 100, 1e-2f, 1e-3, 1e-2, &r);
    gradcheck("ln.b", op_loss, &c, b, db, D, 100, 1e-2f, 1e-3, 1e-2, &r);
    backend_free(be);
}

TEST(grad_gelu_swiglu) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(3, 0, 0, 0);
    enum { R = 3, D = 8 };
    float x[R * 2 * D], out[R * 2 * D], wout[R * 2 * D], dx[R * 2 * D];
    gc_fill_normal(x, R * 2 * D, 1.5f, &r);
    gc_fill_normal(wout, R * 2 * D, 1, &r);
    OpCtx c = {.be = be, .rows = R, .D = 2 * D, .kind = OP_GELU, .x = x, .out = out, .wout = wout};
    be->gelu_bwd(be, dx, wout, x, R * 2 * D);
    gradcheck("gelu", op_loss, &c, x, dx, R * 2 * D, 100, 1e-2f, 1e-4, 1e-3, &r);
    c.kind = OP_SWIGLU;
    c.D = D;
    be->swiglu_bwd(be, dx, wout, x, R, D);
    gradcheck("swiglu", op_loss, &c, x, dx, R * 2 * D, 100, 1e-2f, 1e-4, 1e-3, &r);
    backend_free(be);
}

TEST(grad_attention) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(4, 0, 0, 0);
    enum { B = 2, T = 5, H = 2, Dh = 3, D = H * Dh };
    float qkv[B * T * 3 * D], out[B * T * D], wout[B * T * D], dqkv[B * T * 3 * D];
    float *saved = calloc(be->attention_saved_floats(be, B, T, H, Dh), sizeof(float));
    gc_fill_normal(qkv, B * T * 3 * D, 1, &r);
    gc_fill_normal(wout, B * T * D, 1, &r);
    OpCtx c = {.be = be, .B = B, .T = T, .H = H, .Dh = Dh, .kind = OP_ATTN, .x = qkv, .out = out, .wout = wout,
               .aux1 = saved};
    op_loss(&c);
    be->attention_bwd(be, dqkv, wout, qkv, saved, B, T, H, Dh);
    gradcheck("attention.qkv", op_loss, &c, qkv, dqkv, B * T * 3 * D, 1000, 1e-2f, 1e-4, 1e-3, &r);
    // attention never mixes images: image 1's output does not depend on image 0's inputs
    float o1[T * D];
    op_loss(&c);
    memcpy(o1, out + T * D, sizeof o1);
    for (int i = 0; i < T * 3 * D; i++) qkv[i] += 1.0f;
    op_loss(&c);
    CHECK(memcmp(o1, out + T * D, sizeof o1) == 0, "attention leaks across images");
    free(saved);
    backend_free(be);
}

// ---- the whole ViT --------------------------------------------------------------------------------

static void vit_gradcheck(VitConfig cfg, int use_masks, int use_drop) {
    Backend *be = backend_cpu_new();
    VitCtx c = {.be = be, .n_groups = 2, .B = {3, 4}, .crop = {16, 8}};
    ParamTable tab;
    param_table_init(&tab);
    vit_build(&c.vit, &cfg, &tab, "backbone.");
    c.P = calloc(tab.total, sizeof(float));
    float *G = calloc(tab.total, sizeof(float));
    Rng r = rng_make(5, 0, 0, 0);
    vit_random_weights(&tab, c.P, &r);
    for (int g = 0; g < 2; g++) {
        int B = c.B[g], S = c.crop[g], N = (S / cfg.patch) * (S / cfg.patch);
        c.acts[g] = vit_acts_new(be, &c.vit, B, S, VIT_ACTS_STORE_ALL);
        c.img[g] = malloc(sizeof(float) * B * 3 * S * S);
        gc_fill_normal(c.img[g], (size_t)B * 3 * S * S, 1, &r);
        size_t nout = (size_t)B * vit_acts_tokens(c.acts[g]) * cfg.dim;
        c.wout[g] = malloc(sizeof(float) * nout);
        gc_fill_normal(c.wout[g], nout, 1, &r);
        if (use_masks && g == 0) {
            c.mask[g] = calloc((size_t)B * N, 1);
            for (int i = 0; i < B * N; i++) c.mask[g][i] = (i % 3) == 1;
        }
        if (use_drop) {
            int k = vit_drop_subset_size(&c.vit, B);
            CHECK(k < B, "drop path must keep fewer than B images in this test (k=%d B=%d)", k, B);
            c.subsets[g] = malloc(sizeof(int) * cfg.depth * 2 * k);
            vit_draw_drop_subsets(&c.vit, B, rng_make(9, (uint64_t)g, 0, 0), c.subsets[g]);
        }
    }
    vit_gradcheck_and_free(&c, &tab, G, &r);
}

static VitConfig tiny_config(const char *ffn, int registers, double drop) {
    VitConfig cfg;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&cfg, "vit_test", 4, 16, registers, ffn, err) == 0, "%s", err);
    cfg.dim = 12, cfg.heads = 2, cfg.depth = 2;
    cfg.ffn_hidden = strcmp(ffn, "mlp") == 0 ? 20 : 16;
    cfg.drop_path_rate = drop;
    return cfg;
}

TEST(grad_vit_mlp_registers_masks_droppath) { vit_gradcheck(tiny_config("mlp", 4, 0.4), 1, 1); }

TEST(grad_vit_swiglu_plain) { vit_gradcheck(tiny_config("swiglu", 0, 0.0), 0, 0); }

TEST(grad_vit_antialias_interp) {
    VitConfig cfg = tiny_config("mlp", 1, 0.3);
    cfg.interpolate_offset = 0.0f;
    cfg.interpolate_antialias = 1;
    vit_gradcheck(cfg, 1, 1);
}

TEST(vit_refuses_bad_configs) {
    VitConfig cfg;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&cfg, "vit_enormous", 14, 224, 0, "mlp", err) == -1, "unknown arch accepted");
    CHECK(strstr(err, "vit_enormous") != NULL, "message does not name the arch: %s", err);
    CHECK(vit_config_from_arch(&cfg, "vit_small", 14, 224, 0, "moe", err) == -1, "unknown ffn accepted");
    CHECK(vit_config_from_arch(&cfg, "vit_small", 14, 224, 0, "mlp", err) == 0, "%s", err);
    cfg.heads = 5;
    CHECK(vit_config_check(&cfg, err) == -1 && strstr(err, "divisible"), "dim %% heads accepted: %s", err);
    cfg.heads = 6;
    CHECK(vit_check_crop(&cfg, 100, err) == -1 && strstr(err, "multiple"), "crop 100 / patch 14 accepted");
    CHECK(vit_check_crop(&cfg, 98, err) == 0, "crop 98 refused: %s", err);
    CHECK(vit_config_from_arch(&cfg, "vit_small", 14, 225, 0, "mlp", err) == -1, "img_size 225 accepted");
    CHECK(vit_config_from_arch(&cfg, "vit_large", 14, 224, 4, "swiglufused", err) == 0, "%s", err);
    CHECK(cfg.ffn_hidden == 2736, "ViT-L SwiGLU hidden %d, the reference has 2736", cfg.ffn_hidden);
    CHECK(vit_config_from_arch(&cfg, "vit_giant2", 14, 224, 4, "swiglufused", err) == 0, "%s", err);
    CHECK(cfg.ffn_hidden == 4096 && cfg.dim == 1536 && cfg.depth == 40 && cfg.heads == 24, "ViT-g shape wrong");
}

TEST(vit_param_count_matches_reference) {
    // ViT-S/14 at 224 px without registers, counted by hand from the reference architecture
    VitConfig cfg;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&cfg, "vit_small", 14, 224, 0, "mlp", err) == 0, "%s", err);
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "");
    size_t n = 0;
    for (int i = 0; i < tab.n; i++) n += tab.t[i].numel;
    // 384*(1 + 257 + 1) tokens + patch 384*588+384 + 12 blocks * 1,774,464 + final norm 768
    size_t expect = 384 * 259 + 384 * 588 + 384 + 12 * (size_t)(2 * 384 + 3 * 384 * 384 + 3 * 384 + 384 * 384 + 384 + 384 +
                                                                  2 * 384 + 1536 * 384 + 1536 + 384 * 1536 + 384 + 384) + 768;
    CHECK(n == expect, "ViT-S/14 has %zu parameters, expected %zu", n, expect);
    vit_free(&vit);
    param_table_free(&tab);
}

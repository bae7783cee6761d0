// The DINOv3 ViT (axial RoPE, storage tokens, untied local-CLS norm, masked k bias, SwiGLU w1/w2/w3):
// finite differences of the rope op and of the whole model, and parity with a float64 transcription of
// the official code (tests/torch_ref/dinov3_vit.py, fixtures by tests/make_dinov3_vit_fixtures.py).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/backend.h"
#include "model/rope.h"
#include "tests/gradcheck.h"
#include "tests/vit_gradcheck.h"

// ---- the rope op ----------------------------------------------------------------------------------

typedef struct {
    Backend *be;
    int B, T, N, H, Dh;
    const float *sin, *cos;
    float *qkv, *out, *wout;
} RopeCtx;

static double rope_loss(void *vctx) {
    RopeCtx *c = vctx;
    const size_t n = (size_t)c->B * c->T * 3 * c->H * c->Dh;
    memcpy(c->out, c->qkv, sizeof(float) * n);
    c->be->rope_fwd(c->be, c->out, c->sin, c->cos, c->B, c->T, c->N, c->H, c->Dh);
    return gc_dot(c->out, c->wout, n);
}

// rc NULL: random tables (not tiled, not unit length): the op is linear for any tables, and halves that
// differ catch a sin index that the official tiled tables would hide.
static void rope_gradcheck(int B, int R, int gh, int gw, int H, int Dh, const RopeConfig *rc, int augmented) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(11, (uint64_t)gh, (uint64_t)Dh, (uint64_t)augmented);
    const int N = gh * gw, T = 1 + R + N;
    const size_t n = (size_t)B * T * 3 * H * Dh;
    float *sin_t = malloc(sizeof(float) * (size_t)N * Dh), *cos_t = malloc(sizeof(float) * (size_t)N * Dh);
    if (rc) {
        const RopeAug aug = augmented ? rope_draw_aug(rc, &r) : rope_aug_identity();
        rope_tables(rc, Dh, gh, gw, &aug, sin_t, cos_t);
    } else {
        gc_fill_normal(sin_t, (size_t)N * Dh, 1, &r);
        gc_fill_normal(cos_t, (size_t)N * Dh, 1, &r);
    }
    float *qkv = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * n);
    float *g = malloc(sizeof(float) * n);
    gc_fill_normal(qkv, n, 1, &r);
    gc_fill_normal(w, n, 1, &r);
    RopeCtx c = {be, B, T, N, H, Dh, sin_t, cos_t, qkv, out, w};
    memcpy(g, w, sizeof(float) * n);
    be->rope_bwd(be, g, sin_t, cos_t, B, T, N, H, Dh);
    gradcheck("rope.qkv", rope_loss, &c, qkv, g, n, 2000, 1e-2f, 1e-4, 1e-3, &r);
    // the v part and the CLS/storage tokens pass unchanged; a rotation keeps each pair's length
    rope_loss(&c);
    const int D = H * Dh;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *x = qkv + ((size_t)b * T + t) * 3 * D, *y = out + ((size_t)b * T + t) * 3 * D;
            CHECK(memcmp(x + 2 * D, y + 2 * D, sizeof(float) * D) == 0, "rope changed v of token %d", t);
            if (t < 1 + R) CHECK(memcmp(x, y, sizeof(float) * 2 * D) == 0, "rope changed prefix token %d", t);
            else if (rc)
                for (int k = 0; k < 2 * H; k++)
                    for (int j = 0; j < Dh / 2; j++) {
                        const float *a = x + k * Dh, *o = y + k * Dh;
                        double l0 = (double)a[j] * a[j] + (double)a[j + Dh / 2] * a[j + Dh / 2];
                        double l1 = (double)o[j] * o[j] + (double)o[j + Dh / 2] * o[j + Dh / 2];
                        CHECK_CLOSE(l1, l0, 1e-5, 1e-5);
                    }
        }
    free(sin_t), free(cos_t), free(qkv), free(out), free(w), free(g);
    backend_free(be);
}

TEST(rope_op_finite_differences) {
    const RopeConfig rc = {.base = 100.0, .normalize = ROPE_NORMALIZE_SEPARATE};
    rope_gradcheck(2, 2, 3, 3, 2, 8, &rc, 0);
    const RopeConfig aug = {.base = 100.0, .normalize = ROPE_NORMALIZE_SEPARATE, .shift = 0.3, .jitter = 1.5,
                            .rescale = 2.0};
    rope_gradcheck(3, 0, 2, 4, 3, 4, &aug, 1);
    rope_gradcheck(2, 1, 2, 3, 2, 8, NULL, 0);
}

// The tables of a 2 x 3 grid worked out from the official formulas: coordinates (i + 0.5) / H * 2 - 1,
// angles 2 pi coord / period, [rows' Dh/4 | columns' Dh/4] tiled twice.
TEST(rope_tables_follow_the_official_formulas) {
    const int Dh = 8, gh = 2, gw = 3;
    float s[6 * 8], c[6 * 8];
    double periods[2];
    for (int mode = 0; mode < 3; mode++) {
        RopeConfig rc = {.base = 100.0, .normalize = ROPE_NORMALIZE_SEPARATE};
        if (mode == 1) rc = (RopeConfig){.min_period = 0.5, .max_period = 4.0, .normalize = ROPE_NORMALIZE_MAX};
        RopeAug aug = rope_aug_identity();
        if (mode == 2) aug = (RopeAug){{0.1, -0.2}, {1.2, 0.9}, 1.7}, rc.normalize = ROPE_NORMALIZE_MIN;
        rope_periods(&rc, Dh, periods);
        const double expect_p[2] = {mode == 1 ? 0.5 : 1.0, mode == 1 ? 4.0 : 10.0}; // 100^(2*1/4) = 10
        for (int i = 0; i < 2; i++) CHECK_CLOSE(periods[i], expect_p[i], 1e-12, 1e-12);
        rope_tables(&rc, Dh, gh, gw, &aug, s, c);
        const double dy = mode == 0 ? gh : mode == 1 ? 3 : 2, dx = mode == 0 ? gw : mode == 1 ? 3 : 2;
        for (int y = 0; y < gh; y++)
            for (int x = 0; x < gw; x++) {
                double cy = ((2 * (y + 0.5) / dy - 1) + aug.shift[0]) * aug.jitter[0] * aug.rescale;
                double cx = ((2 * (x + 0.5) / dx - 1) + aug.shift[1]) * aug.jitter[1] * aug.rescale;
                const double ang[4] = {2 * M_PI * cy / expect_p[0], 2 * M_PI * cy / expect_p[1],
                                       2 * M_PI * cx / expect_p[0], 2 * M_PI * cx / expect_p[1]};
                for (int j = 0; j < Dh; j++) {
                    CHECK_CLOSE(s[(y * gw + x) * Dh + j], sin(ang[j % 4]), 1e-6, 0);
                    CHECK_CLOSE(c[(y * gw + x) * Dh + j], cos(ang[j % 4]), 1e-6, 0);
                }
            }
    }
}

TEST(rope_config_errors_name_the_key) {
    char err[DINO_ERRLEN];
    RopeConfig rc = {.base = 100.0};
    CHECK(rope_config_check(&rc, 6, err) == -1 && strstr(err, "multiple of 4"), "head dim 6 accepted: %s", err);
    CHECK(rope_config_check(&rc, 8, err) == 0, "%s", err);
    rc.min_period = 1, rc.max_period = 2;
    CHECK(rope_config_check(&rc, 8, err) == -1 && strstr(err, "pos_embed_rope_base"), "base and periods accepted");
    rc.base = 0;
    CHECK(rope_config_check(&rc, 8, err) == 0, "%s", err);
    rc.rescale = 0.5;
    CHECK(rope_config_check(&rc, 8, err) == -1 && strstr(err, "rescale"), "rescale 0.5 accepted: %s", err);
}

// ---- parity with the transcription of the official ViT ------------------------------------------------

#include "common/safetensors.h"
#include "model/params.h"
#include "model/vit.h"
#include "tests/fixture_util.h"

#define PARITY_TOL 1e-4

static int meta_group_int(const StFile *f, int k, const char *what) {
    char key[64];
    snprintf(key, sizeof key, "g%d.%s", k, what);
    return meta_int(f, key);
}

static void config_from_fixture(const StFile *f, VitConfig *c) {
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(c, "vit_test", meta_int(f, "patch"), meta_int(f, "img_size"),
                               meta_int(f, "n_storage_tokens"), "mlp", err) == 0, "%s", err);
    c->dim = meta_int(f, "dim");
    c->depth = meta_int(f, "depth");
    c->heads = meta_int(f, "heads");
    CHECK(vit_ffn_width(meta_req(f, "ffn_layer"), c->dim, meta_double(f, "ffn_ratio"), &c->ffn, &c->ffn_hidden,
                        err) == 0, "%s", err);
    c->layerscale = (float)meta_double(f, "layerscale");
    c->drop_path_rate = meta_double(f, "drop_path_rate");
    c->qkv_bias = meta_int(f, "qkv_bias");
    c->proj_bias = meta_int(f, "proj_bias");
    c->ffn_bias = meta_int(f, "ffn_bias");
    c->ln_eps = strcmp(meta_req(f, "norm_layer"), "layernormbf16") == 0 ? 1e-5f : 1e-6f;
    c->rope = 1;
    c->rope_cfg.base = meta_double(f, "rope_base");
    c->rope_cfg.min_period = meta_double(f, "rope_min_period");
    c->rope_cfg.max_period = meta_double(f, "rope_max_period");
    const char *nc = meta_req(f, "rope_normalize_coords");
    c->rope_cfg.normalize = !strcmp(nc, "min") ? ROPE_NORMALIZE_MIN : !strcmp(nc, "max") ? ROPE_NORMALIZE_MAX
                                                                                          : ROPE_NORMALIZE_SEPARATE;
    c->mask_k_bias = meta_int(f, "mask_k_bias");
    c->untie_cls_and_patch_norms = meta_int(f, "untie_cls_and_patch_norms");
    c->untie_global_and_local_cls_norm = meta_int(f, "untie_global_and_local_cls_norm");
}

static void run_fixture(const char *name, VitActsMode mode) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/dinov3_vit_%s.safetensors", name);
    StFile f;
    VitConfig cfg;
    ParamTable tab;
    Vit vit;
    Backend *be = vit_fixture_open(path, config_from_fixture, &f, &cfg, &tab, &vit);
    if (!be) return;
    float *P = fixture_weights(&f, &tab);
    float *dP = be->alloc(be, sizeof(float) * tab.total), *dG = be->alloc(be, sizeof(float) * tab.total);
    be->to_device(be, dP, P, sizeof(float) * tab.total);

    const int n_groups = meta_int(&f, "n_groups"), D = cfg.dim, Dh = D / cfg.heads;
    CHECK(n_groups >= 1 && n_groups <= 4, "bad n_groups %d", n_groups);
    VitActs *acts[4] = {0};
    float *d_img[4] = {0}, *d_dx[4] = {0};
    uint8_t *d_mask[4] = {0};
    for (int k = 0; k < n_groups && k < 4; k++) {
        char key[64];
        const int B = meta_group_int(&f, k, "batch"), crop = meta_group_int(&f, k, "crop");
        const int g = crop / cfg.patch, N = g * g, T = 1 + cfg.n_registers + N;
        const size_t nx = (size_t)B * T * D;
        snprintf(key, sizeof key, "in.g%d.images", k);
        const StTensor *img = fixture_tensor(&f, key, ST_F32, sizeof(float) * B * 3 * crop * crop);
        snprintf(key, sizeof key, "out.g%d.x_norm", k);
        const StTensor *xref = fixture_tensor(&f, key, ST_F32, sizeof(float) * nx);
        snprintf(key, sizeof key, "in.g%d.d_xnorm", k);
        const StTensor *dxn = fixture_tensor(&f, key, ST_F32, sizeof(float) * nx);
        snprintf(key, sizeof key, "out.g%d.rope_sin", k);
        const StTensor *ts = fixture_tensor(&f, key, ST_F32, sizeof(float) * cfg.depth * N * Dh);
        snprintf(key, sizeof key, "out.g%d.rope_cos", k);
        const StTensor *tc = fixture_tensor(&f, key, ST_F32, sizeof(float) * cfg.depth * N * Dh);
        if (!img || !xref || !dxn || !ts || !tc) goto done;
        snprintf(key, sizeof key, "in.g%d.masks", k);
        const StTensor *mask = st_get(&f, key);
        snprintf(key, sizeof key, "in.g%d.subsets", k);
        const StTensor *sub = st_get(&f, key);
        snprintf(key, sizeof key, "in.g%d.aug", k);
        const StTensor *augt = st_get(&f, key);

        acts[k] = vit_acts_new(be, &vit, B, crop, mode);
        vit_acts_set_local_crops(acts[k], meta_group_int(&f, k, "local"));
        RopeAug *aug = NULL;
        if (augt) {
            CHECK(augt->dtype == ST_F64 && augt->nbytes == sizeof(double) * cfg.depth * 5, "%s: f64 [depth,5]", key);
            const double *a = augt->data;
            aug = dino_malloc(sizeof(RopeAug) * cfg.depth);
            for (int l = 0; l < cfg.depth; l++)
                aug[l] = (RopeAug){{a[5 * l], a[5 * l + 1]}, {a[5 * l + 2], a[5 * l + 3]}, a[5 * l + 4]};
        }
        vit_acts_set_rope_aug(be, &vit, acts[k], aug);
        // the per-block tables against the transcription's
        float *s_t = dino_malloc(sizeof(float) * N * Dh), *c_t = dino_malloc(sizeof(float) * N * Dh);
        double worst_tab = 0;
        for (int l = 0; l < cfg.depth; l++) {
            rope_tables(&cfg.rope_cfg, Dh, g, g, aug ? &aug[l] : NULL, s_t, c_t);
            double e1 = rel_err(s_t, (const float *)ts->data + (size_t)l * N * Dh, (size_t)N * Dh, NULL);
            double e2 = rel_err(c_t, (const float *)tc->data + (size_t)l * N * Dh, (size_t)N * Dh, NULL);
            worst_tab = fmax(worst_tab, fmax(e1, e2));
        }
        CHECK(worst_tab <= 1e-6, "group %d: rope tables rel err %.3e", k, worst_tab);
        free(s_t), free(c_t), free(aug);
        d_img[k] = be->alloc(be, img->nbytes);
        be->to_device(be, d_img[k], img->data, img->nbytes);
        if (mask) {
            CHECK(mask->dtype == ST_U8 && mask->nbytes == (size_t)B * N, "group %d: masks must be u8 [B*N]", k);
            d_mask[k] = be->alloc(be, mask->nbytes);
            be->to_device(be, d_mask[k], mask->data, mask->nbytes);
        }
        const int *subsets = NULL;
        if (sub) {
            const int S = vit_drop_subset_size(&vit, B);
            CHECK(S == meta_group_int(&f, k, "subset_size"), "group %d: subset size %d differs", k, S);
            CHECK(sub->dtype == ST_I32 && sub->nbytes == sizeof(int) * (size_t)cfg.depth * 2 * S, "bad subsets");
            subsets = sub->data;
        }
        const float *out = vit_forward(be, &vit, dP, acts[k], d_img[k], d_mask[k], subsets);
        float *xh = dino_malloc(sizeof(float) * nx);
        be->to_host(be, xh, out, sizeof(float) * nx);
        double maxabs, e = rel_err(xh, xref->data, nx, &maxabs);
        printf("  %-28s group %d (B=%d crop=%d%s%s%s%s): x_norm rel err %.2e, tables %.1e\n", name, k, B, crop,
               mask ? " masked" : "", sub ? " drop-path" : "", augt ? " rope-aug" : "",
               meta_group_int(&f, k, "local") ? " local" : "", e, worst_tab);
        CHECK(e <= PARITY_TOL, "%s group %d: x_norm rel err %.3e > %.0e", name, k, e, PARITY_TOL);
        free(xh);
        d_dx[k] = be->alloc(be, dxn->nbytes);
        be->to_device(be, d_dx[k], dxn->data, dxn->nbytes);
    }
    for (int k = 0; k < n_groups && k < 4; k++) vit_backward(be, &vit, dP, dG, acts[k], d_dx[k]);
    float *G = dino_malloc(sizeof(float) * tab.total);
    be->to_host(be, G, dG, sizeof(float) * tab.total);
    const char *worst_name;
    const double worst_g = fixture_check_grads(&f, &tab, G, name, PARITY_TOL, &worst_name);
    for (int i = 0; i < tab.n; i++) {
        const TensorSpec *s = &tab.t[i];
        if (strstr(s->name, "attn.qkv.bias") && cfg.mask_k_bias)
            for (int j = D; j < 2 * D; j++)
                CHECK(G[s->offset + j] == 0.0f, "%s: the masked k bias got a gradient", s->name);
    }
    printf("  %-28s worst gradient rel err %.2e (%s) over %d tensors\n", name, worst_g, worst_name, tab.n);
    free(G);
done:
    for (int k = 0; k < 4; k++) {
        if (acts[k]) vit_acts_free(be, acts[k]);
        if (d_img[k]) be->release(be, d_img[k]);
        if (d_mask[k]) be->release(be, d_mask[k]);
        if (d_dx[k]) be->release(be, d_dx[k]);
    }
    be->release(be, dP), be->release(be, dG);
    free(P);
    vit_fixture_close(be, &f, &tab, &vit);
}

// patch 4, 2 storage tokens, SwiGLU64, masked k bias, local CLS norm, layernormbf16, rescale 2 per block
TEST(parity_swiglu64_untied_rescale) { run_fixture("swiglu64_untied_rescale", VIT_ACTS_STORE_ALL); }
// patch 16, MLP ratio 3, no qkv bias, min/max periods, "max" coordinates, shift + jitter + rescale, cls_norm
TEST(parity_p16_mlp_minmax_shift_jitter) { run_fixture("p16_mlp_minmax_shift_jitter", VIT_ACTS_STORE_ALL); }
// stochastic depth with RoPE, both CLS norms untied; recomputed blocks in backward (the tables must persist)
TEST(parity_droppath_both_untied_recompute) { run_fixture("droppath_both_untied", VIT_ACTS_RECOMPUTE); }
TEST(parity_swiglu64_untied_rescale_recompute) { run_fixture("swiglu64_untied_rescale", VIT_ACTS_RECOMPUTE); }

// ---- finite differences of the whole DINOv3 ViT -------------------------------------------------------

// Storage tokens, RoPE with per-block rescale/shift/jitter draws, SwiGLU32 (w1|w2 as one Linear), masked k
// bias, both CLS norms untied (the second group local), iBOT masks, stochastic depth, two crop sizes.
TEST(grad_dinov3_vit_finite_differences) {
    Backend *be = backend_cpu_new();
    VitConfig cfg;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&cfg, "vit_test", 4, 12, 2, "mlp", err) == 0, "%s", err);
    cfg.dim = 16, cfg.heads = 2, cfg.depth = 2;
    CHECK(vit_ffn_width("swiglu32", cfg.dim, 4.0, &cfg.ffn, &cfg.ffn_hidden, err) == 0 && cfg.ffn_hidden == 64,
          "swiglu32 of 64: %d (%s)", cfg.ffn_hidden, err);
    cfg.drop_path_rate = 0.4;
    cfg.ln_eps = 1e-5f;
    cfg.rope = 1;
    cfg.rope_cfg = (RopeConfig){.base = 100.0, .shift = 0.2, .jitter = 1.3, .rescale = 2.0};
    cfg.mask_k_bias = cfg.untie_cls_and_patch_norms = cfg.untie_global_and_local_cls_norm = 1;
    VitCtx c = {.be = be, .n_groups = 2, .B = {3, 3}, .crop = {12, 8}};
    ParamTable tab;
    param_table_init(&tab);
    vit_build(&c.vit, &cfg, &tab, "backbone.");
    c.P = calloc(tab.total, sizeof(float));
    float *G = calloc(tab.total, sizeof(float));
    Rng r = rng_make(21, 0, 0, 0);
    vit_random_weights(&tab, c.P, &r);
    RopeAug aug[2];
    for (int g = 0; g < 2; g++) {
        const int B = c.B[g], S = c.crop[g], N = (S / 4) * (S / 4);
        c.acts[g] = vit_acts_new(be, &c.vit, B, S, VIT_ACTS_STORE_ALL);
        vit_acts_set_local_crops(c.acts[g], g == 1);
        vit_draw_rope_aug(&c.vit, rng_make(3, (uint64_t)g, 0, 0), aug);
        CHECK(aug[0].rescale != aug[1].rescale && aug[0].rescale != 1.0, "rescale draws %g %g", aug[0].rescale,
              aug[1].rescale);
        vit_acts_set_rope_aug(be, &c.vit, c.acts[g], aug);
        c.img[g] = malloc(sizeof(float) * B * 3 * S * S);
        gc_fill_normal(c.img[g], (size_t)B * 3 * S * S, 1, &r);
        const size_t nout = (size_t)B * vit_acts_tokens(c.acts[g]) * cfg.dim;
        c.wout[g] = malloc(sizeof(float) * nout);
        gc_fill_normal(c.wout[g], nout, 1, &r);
        if (g == 0) {
            c.mask[g] = calloc((size_t)B * N, 1);
            for (int i = 0; i < B * N; i++) c.mask[g][i] = (i % 3) == 1;
        }
        const int k = vit_drop_subset_size(&c.vit, B);
        c.subsets[g] = malloc(sizeof(int) * cfg.depth * 2 * k);
        vit_draw_drop_subsets(&c.vit, B, rng_make(9, (uint64_t)g, 0, 0), c.subsets[g]);
    }
    vit_gradcheck_and_free(&c, &tab, G, &r);
}

// The official names, shapes and the ViT-L/16 distilled parameter count; configurations that cannot work.
TEST(dinov3_names_and_refusals) {
    VitConfig cfg;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&cfg, "vit_large", 16, 224, 4, "mlp", err) == 0, "%s", err);
    cfg.rope = 1;
    cfg.rope_cfg = (RopeConfig){.base = 100.0, .rescale = 2.0};
    cfg.mask_k_bias = 1;
    cfg.ln_eps = 1e-5f;
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "");
    const char *want[] = {"cls_token", "storage_tokens", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
                          "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
                          "blocks.0.attn.proj.weight", "blocks.0.ls1.gamma", "blocks.0.mlp.fc1.weight",
                          "blocks.23.mlp.fc2.bias", "blocks.23.ls2.gamma", "norm.weight", "norm.bias"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) CHECK(param_find(&tab, want[i]), "no %s", want[i]);
    CHECK(!param_find(&tab, "pos_embed") && !param_find(&tab, "register_tokens"), "DINOv2 names in the DINOv3 ViT");
    size_t n = 0;
    for (int i = 0; i < tab.n; i++) n += tab.t[i].numel;
    // the official vit_large(patch_size=16, n_storage_tokens=4, mask_k_bias=True, layerscale_init=1e-5):
    // 303,154,176 parameters (counted on the official module; its buffers are not parameters)
    size_t block = 2 * 1024 + 3 * 1024 * 1024 + 3 * 1024 + 1024 * 1024 + 1024 + 1024 + 2 * 1024 + 4096 * 1024 + 4096 +
                   1024 * 4096 + 1024 + 1024;
    size_t expect = 1024 * (1 + 4 + 1) + 1024 * 768 + 1024 + 24 * block + 2 * 1024;
    CHECK(n == expect, "ViT-L/16 (DINOv3) has %zu parameters, expected %zu", n, expect);
    vit_free(&vit);
    param_table_free(&tab);
    // SwiGLU variants: the official widths (ViT-7B: dim 4096, ffn_ratio 3, swiglu64 -> 8192)
    VitFfn ffn;
    int h;
    CHECK(vit_ffn_width("swiglu64", 4096, 3.0, &ffn, &h, err) == 0 && h == 8192 && ffn == VIT_FFN_SWIGLU, "7B: %d", h);
    CHECK(vit_ffn_width("swiglu", 1024, 4.0, &ffn, &h, err) == 0 && h == 2736, "swiglu 1024: %d", h);
    CHECK(vit_ffn_width("swiglu128", 384, 4.0, &ffn, &h, err) == 0 && h == 1024, "swiglu128 384: %d", h);
    CHECK(vit_ffn_width("mlp", 1152, 3.777777778, &ffn, &h, err) == 0 && h == 4352, "so400m mlp: %d", h);
    CHECK(vit_ffn_width("geglu", 384, 4.0, &ffn, &h, err) == -1 && strstr(err, "geglu"), "geglu accepted");
    // w1/w2 must be adjacent: a SwiGLU width that is not a multiple of 16 is refused with the way out
    CHECK(vit_config_from_arch(&cfg, "vit_test", 4, 16, 0, "swiglu", err) == 0, "%s", err);
    cfg.dim = 36, cfg.heads = 3; // Dh 12; hidden (144*2/3 = 96) fine; make it 104 to break alignment
    cfg.ffn_hidden = 104;
    cfg.rope = 1, cfg.rope_cfg = (RopeConfig){.base = 100.0};
    CHECK(vit_config_check(&cfg, err) == -1 && strstr(err, "swiglu64"), "unaligned SwiGLU accepted: %s", err);
    cfg.ffn_hidden = 96;
    CHECK(vit_config_check(&cfg, err) == 0, "%s", err);
    cfg.rope = 0, cfg.mask_k_bias = 1;
    CHECK(vit_config_check(&cfg, err) == -1 && strstr(err, "pos_embed_type"), "mask_k_bias without rope: %s", err);
}

// ---- configuration and the trainer ---------------------------------------------------------------------

#include <sys/stat.h>

#include "dist/dist.h"
#include "tests/synth_files.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/train.h"

static int load_cfg(Config *cfg, int n, char **ov, char *err) {
    return config_load(cfg, test_src_path("configs/demo.yaml"), n, ov, err);
}

// The student. keys turn into the DINOv3 ViT; bad combinations are refused naming the key.
TEST(config_keys_select_the_dinov3_vit) {
    Config cfg;
    VitConfig v;
    char err[DINO_ERRLEN];
    char *ov[] = {"student.arch=vit_large", "student.embed_dim=0", "student.depth=0", "student.num_heads=0",
                  "student.patch_size=16", "crops.global_crops_size=224",
                  "crops.local_crops_size=96", "student.pos_embed_type=rope", "student.n_storage_tokens=4",
                  "student.pos_embed_rope_rescale_coords=2", "student.mask_k_bias=true",
                  "student.untie_global_and_local_cls_norm=true", "student.norm_layer=layernormbf16",
                  "student.ffn_layer=swiglu64", "student.ffn_ratio=3"};
    CHECK(load_cfg(&cfg, (int)(sizeof ov / sizeof ov[0]), ov, err) == 0, "%s", err);
    CHECK(config_to_vit(&cfg, &v, err) == 0, "%s", err);
    CHECK(v.rope && v.rope_cfg.base == 100.0 && v.rope_cfg.rescale == 2.0 && v.rope_cfg.shift == 0 &&
              v.rope_cfg.min_period == 0 && v.n_registers == 4 && v.mask_k_bias && v.untie_global_and_local_cls_norm &&
              !v.untie_cls_and_patch_norms && v.ln_eps == 1e-5f,
          "DINOv3 keys not carried into the ViT config");
    // swiglu64 at ratio 3: int(1024*3) = 3072 -> int(2048) -> 2048
    CHECK(v.ffn == VIT_FFN_SWIGLU && v.ffn_hidden == 2048, "ffn hidden %d", v.ffn_hidden);
    // the defaults stay the DINOv2 ViT
    CHECK(load_cfg(&cfg, 0, NULL, err) == 0 && config_to_vit(&cfg, &v, err) == 0, "%s", err);
    CHECK(!v.rope && v.ln_eps == 1e-6f && !v.mask_k_bias, "the default is no longer the DINOv2 ViT");
    struct { char *ov[3]; const char *key; } bad[] = {
        {{"student.mask_k_bias=true"}, "student.mask_k_bias"},
        {{"student.pos_embed_type=rope", "student.pos_embed_rope_min_period=0.5"}, "student.pos_embed_rope_min_period"},
        {{"student.pos_embed_type=rope", "student.pos_embed_rope_min_period=0.5", "student.pos_embed_rope_max_period=4"},
         "student.pos_embed_rope_base"},
        {{"student.pos_embed_type=rope", "student.pos_embed_rope_rescale_coords=0.5"},
         "student.pos_embed_rope_rescale_coords"},
        {{"student.n_storage_tokens=4", "student.num_register_tokens=2"}, "student.n_storage_tokens"},
        {{"student.pos_embed_type=rope", "student.num_heads=3", "student.embed_dim=18"}, "student.num_heads"},
        {{"student.pos_embed_type=rope", "student.pos_embed_rope_normalize_coords=diagonal"},
         "student.pos_embed_rope_normalize_coords"},
        {{"student.ffn_ratio=0"}, "student.ffn_ratio"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int n = 0;
        while (n < 3 && bad[i].ov[n]) n++;
        err[0] = 0;
        CHECK(load_cfg(&cfg, n, bad[i].ov, err) == -1 && strstr(err, bad[i].key), "case %zu accepted or message "
              "without %s: %s", i, bad[i].key, err);
    }
    // null and numbers both read (YAML null is how the released configs say "off")
    char *nul[] = {"student.pos_embed_type=ropenew", "student.pos_embed_rope_base=null",
                   "student.pos_embed_rope_min_period=0.5", "student.pos_embed_rope_max_period=~"};
    CHECK(load_cfg(&cfg, 4, nul, err) == -1 && strstr(err, "pos_embed_rope_min_period"), "null max period: %s", err);
    nul[3] = "student.pos_embed_rope_max_period=8";
    CHECK(load_cfg(&cfg, 4, nul, err) == 0 && config_to_vit(&cfg, &v, err) == 0, "%s", err);
    CHECK(v.rope && v.rope_cfg.base == 0 && v.rope_cfg.min_period == 0.5 && v.rope_cfg.max_period == 8,
          "min/max periods not carried");
}

static void tiny_dinov3_config(Config *cfg, const char *tiles, const char *out) {
    char err[DINO_ERRLEN], src[4300], outkv[4300];
    snprintf(src, sizeof src, "data.sources=[%s]", tiles);
    snprintf(outkv, sizeof outkv, "train.output_dir=%s", out);
    char *ov[] = {src, outkv, "student.arch=vit_test", "student.embed_dim=32", "student.depth=2",
                  "student.num_heads=2", "student.patch_size=8", "student.drop_path_rate=0.2",
                  "student.pos_embed_type=rope", "student.n_storage_tokens=2", "student.pos_embed_rope_rescale_coords=2",
                  "student.pos_embed_rope_shift_coords=0.1", "student.mask_k_bias=true",
                  "student.untie_global_and_local_cls_norm=true", "student.norm_layer=layernormbf16",
                  "student.ffn_layer=swiglu32", "crops.global_crops_size=32", "crops.local_crops_size=16",
                  "crops.local_crops_number=2", "dino.head_n_prototypes=64", "dino.head_hidden_dim=32",
                  "dino.head_bottleneck_dim=16", "ibot.head_n_prototypes=64", "ibot.head_hidden_dim=32",
                  "ibot.head_bottleneck_dim=16", "train.batch_size_per_gpu=4", "train.OFFICIAL_EPOCH_LENGTH=4",
                  "train.num_workers=2", "optim.epochs=2", "optim.warmup_epochs=1", "optim.base_lr=0.01",
                  "teacher.warmup_teacher_temp_epochs=1", "checkpoint.every_n_iterations=3",
                  "checkpoint.keep_last=3", "evaluation.eval_period_iterations=0"};
    CHECK(load_cfg(cfg, (int)(sizeof ov / sizeof ov[0]), ov, err) == 0, "%s", err);
}

static int run(const Config *cfg, int64_t max_it, TrainResult *res, char *err) {
    return run_trainer(cfg, max_it, 1, res, err);
}

// A DINOv3-ViT run (RoPE with per-block augmentation, storage tokens, untied local CLS norm, masked k bias)
// trains, writes the official names into its checkpoint, and resumes bit for bit (the augmentation draws
// come from the step's key, not from state).
TEST(trainer_runs_and_resumes_the_dinov3_vit) {
    const char *tmp = test_tmpdir();
    char outa[4200], outb[4200], ca[4300];
    const char *spec = make_tiles(tmp, 16);
    snprintf(outa, sizeof outa, "%s/a", tmp);
    snprintf(outb, sizeof outb, "%s/b", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    tiny_dinov3_config(&cfg, spec, outa);
    CHECK(run(&cfg, 0, &res, err) == 0, "%s", err);
    CHECK(res.end_iteration == 8 && res.skipped_steps == 0 && isfinite(res.last_total_loss), "ran to %lld, loss %g",
          (long long)res.end_iteration, res.last_total_loss);
    snprintf(ca, sizeof ca, "%s", res.last_checkpoint);
    tiny_dinov3_config(&cfg, spec, outb);
    check_resume_equals(&cfg, 5, 8, ca);
    Ckpt a;
    CHECK(ckpt_open(&a, ca, err) == 0, "%s", err);
    int n_seen = 0;
    for (int i = 0; i < a.st.n; i++) {
        const char *name = a.st.t[i].name;
        n_seen += strstr(name, "storage_tokens") || strstr(name, "local_cls_norm.weight") ||
                  strstr(name, "blocks.1.mlp.w2.weight");
        CHECK(!strstr(name, "pos_embed") && !strstr(name, "register_tokens"), "DINOv2 name %s", name);
    }
    CHECK(n_seen >= 3, "official DINOv3 names missing from the checkpoint (%d seen)", n_seen);
    ckpt_close(&a);
}

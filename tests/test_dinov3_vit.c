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

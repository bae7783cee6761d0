// The range-restricted optimizer loops (train/optim.h) that ZeRO-1 runs on each rank's shard: updating
// the parts of a model one range at a time, with the moments of each range held separately (as on two
// ranks), gives bit for bit the whole-model step; clipping's partial sums add up to the whole norm.
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"
#include "dist/dist.h"
#include "model/backend.h"
#include "model/params.h"
#include "model/vit.h"
#include "tests/harness.h"
#include "train/optim.h"

// A small table with every kind of multiplier: patch embed (lr x 0.2), block layers (layer-wise decay),
// a norm (no weight decay), a head and its last layer (last_layer_lr). Odd sizes: ranges cut tensors.
static void build_table(ParamTable *tab) {
    param_table_init(tab);
    int64_t s0[2] = {5, 7}, s1[1] = {9}, s2[2] = {6, 11}, s3[2] = {13, 3}, s4[2] = {4, 10};
    param_add(tab, "backbone.patch_embed.proj.weight", PARAM_BACKBONE, 0, 2, s0);
    param_add(tab, "backbone.blocks.0.norm1.bias", PARAM_BACKBONE, 1, 1, s1);
    param_add(tab, "backbone.blocks.0.mlp.fc1.weight", PARAM_BACKBONE, 1, 2, s2);
    param_add(tab, "backbone.norm.weight", PARAM_BACKBONE, 2, 1, s1);
    param_add(tab, "dino_head.mlp.0.weight", PARAM_DINO_HEAD, 0, 2, s3);
    param_add(tab, "dino_head.last_layer.weight", PARAM_DINO_HEAD, 0, 2, s4);
    optim_assign_param_groups(tab, 0.9f, 0.2f);
}

// Random values in the tensors, zeros in the alignment padding (as the model's buffers).
static void fill(const ParamTable *tab, float *x, size_t n, uint64_t key, float scale) {
    memset(x, 0, sizeof(float) * n);
    for (int i = 0; i < tab->n; i++) {
        Rng r = rng_make(key, (uint64_t)i, 0, 0);
        for (size_t j = 0; j < tab->t[i].numel; j++) x[tab->t[i].offset + j] = scale * (float)rng_normal(&r);
    }
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, sizeof(float) * n) == 0; }

// Full step vs two ranges [0, cut) and [cut, padded) with their own moments, over a few steps.
static void halves_equal_full(size_t cut) {
    Backend *be = backend_cpu_new();
    ParamTable tab;
    build_table(&tab);
    const size_t total = tab.total, padded = dist_shard(total, 2, 0, PARAM_ALIGN).padded;
    CHECK(cut > 0 && cut < total, "cut %zu outside (0, %zu)", cut, total);
    float *p_full = dino_calloc(padded, sizeof(float)), *p_half = dino_calloc(padded, sizeof(float));
    float *p0 = dino_calloc(padded, sizeof(float)), *g = dino_calloc(padded, sizeof(float));
    fill(&tab, p0, padded, 1, 0.5f);
    memcpy(p_full, p0, sizeof(float) * padded);
    memcpy(p_half, p0, sizeof(float) * padded);
    AdamW full, a, b;
    adamw_init(&full, be, 0, total, 0.9f, 0.999f, 1e-8f);
    adamw_init(&a, be, 0, cut, 0.9f, 0.999f, 1e-8f);
    adamw_init(&b, be, cut, padded, 0.9f, 0.999f, 1e-8f);
    CHECK(a.n == cut && b.n == padded - cut && b.base == cut, "moments sized to their range");
    const TensorSpec *last = param_find(&tab, "dino_head.last_layer.weight");
    for (int step = 0; step < 4; step++) {
        fill(&tab, g, padded, 100 + (uint64_t)step, 0.01f);
        // the first step freezes the last layer (last_layer_lr = 0), as in the reference's first epoch
        double lr = 1e-3 * (step + 1), llr = step == 0 ? 0.0 : lr, wd = 0.04 + 0.01 * step;
        adamw_step(&full, be, &tab, p_full, g, lr, llr, wd);
        adamw_step_range(&a, be, &tab, p_half, g, lr, llr, wd, 0, cut);
        adamw_step_range(&b, be, &tab, p_half, g, lr, llr, wd, cut, padded);
        if (step == 0)
            CHECK(same_bits(p_full + last->offset, p0 + last->offset, last->numel), "frozen last layer moved");
        CHECK(full.step == step + 1 && a.step == full.step && b.step == full.step, "step counts");
        CHECK(same_bits(p_full, p_half, padded), "step %d: parameters differ (cut %zu)", step, cut);
        CHECK(same_bits(full.m, a.m, cut) && same_bits(full.m + cut, b.m, total - cut), "step %d: m differs", step);
        CHECK(same_bits(full.v, a.v, cut) && same_bits(full.v + cut, b.v, total - cut), "step %d: v differs", step);
    }
    // the steps did something, to every tensor, and the padding stayed zero
    for (int i = 0; i < tab.n; i++) {
        const TensorSpec *t = &tab.t[i];
        CHECK(!same_bits(p_full + t->offset, p0 + t->offset, t->numel), "%s not updated", t->name);
    }
    for (size_t j = total; j < padded; j++) CHECK(p_half[j] == 0 && b.m[j - cut] == 0, "padding %zu touched", j);
    adamw_free(&full, be), adamw_free(&a, be), adamw_free(&b, be);
    free(p_full), free(p_half), free(p0), free(g);
    param_table_free(&tab);
    backend_free(be);
}

TEST(adamw_step_range_halves_equal_full_step_at_shard_boundary) {
    ParamTable tab;
    build_table(&tab);
    size_t cut = dist_shard(tab.total, 2, 1, PARAM_ALIGN).begin;
    param_table_free(&tab);
    halves_equal_full(cut);
}

TEST(adamw_step_range_halves_equal_full_step_mid_tensor) {
    ParamTable tab;
    build_table(&tab);
    const TensorSpec *t = param_find(&tab, "backbone.blocks.0.mlp.fc1.weight");
    size_t cut = t->offset + 7; // not aligned, inside a tensor
    param_table_free(&tab);
    halves_equal_full(cut);
}

TEST(clip_and_ema_ranges_add_up_to_the_whole) {
    Backend *be = backend_cpu_new();
    ParamTable tab;
    build_table(&tab);
    const size_t total = tab.total, cut = param_find(&tab, "backbone.blocks.0.mlp.fc1.weight")->offset + 5;
    float *g_full = dino_malloc(sizeof(float) * total), *g_half = dino_malloc(sizeof(float) * total);
    fill(&tab, g_full, total, 7, 1.0f);
    memcpy(g_half, g_full, sizeof(float) * total);
    const ParamGroup groups[2] = {PARAM_BACKBONE, PARAM_DINO_HEAD};
    for (int k = 0; k < 2; k++) {
        double ss = grad_sum_squares_range(be, &tab, g_half, groups[k], 0, cut) +
                    grad_sum_squares_range(be, &tab, g_half, groups[k], cut, total);
        double max_norm = 0.5 * sqrt(ss); // clips by one half
        double norm = clip_grad_norm_group(be, &tab, g_full, groups[k], max_norm);
        CHECK_CLOSE(sqrt(ss), norm, 0, 1e-12);
        double coef = clip_coef(sqrt(ss), max_norm);
        CHECK_CLOSE(coef, 0.5, 1e-6, 0);
        grad_scale_range(be, &tab, g_half, groups[k], coef, 0, cut);
        grad_scale_range(be, &tab, g_half, groups[k], coef, cut, total);
        CHECK_CLOSE(sqrt(grad_sum_squares_range(be, &tab, g_full, groups[k], 0, total)), max_norm, 0, 1e-5);
    }
    CHECK(same_bits(g_full, g_half, total), "clipping by ranges differs from the whole-model clip");
    CHECK(clip_coef(1.0, 3.0) == 1.0, "no clipping below max_norm");
    // EMA by ranges
    float *t_full = dino_malloc(sizeof(float) * total), *t_half = dino_malloc(sizeof(float) * total);
    fill(&tab, t_full, total, 8, 1.0f);
    memcpy(t_half, t_full, sizeof(float) * total);
    ema_update(be, &tab, t_full, g_full, 0.996);
    ema_update_range(be, &tab, t_half, g_full, 0.996, 0, cut);
    ema_update_range(be, &tab, t_half, g_full, 0.996, cut, total);
    CHECK(same_bits(t_full, t_half, total), "EMA by ranges differs");
    free(g_full), free(g_half), free(t_full), free(t_half);
    param_table_free(&tab);
    backend_free(be);
}

// Clipping and the EMA touch a real model in one backend call per group (tensors that touch in the flat
// buffer are one run): a handful of GPU launches and read-backs per step, not one per tensor. And the
// merged calls give the per-tensor answer.
static int g_calls;
static double (*g_sum_squares)(Backend *, const float *, size_t);
static double counting_sum_squares(Backend *be, const float *x, size_t n) {
    g_calls++;
    return g_sum_squares(be, x, n);
}

TEST(clip_norms_one_call_per_group_on_a_real_model) {
    char err[DINO_ERRLEN];
    VitConfig vc;
    CHECK(vit_config_from_arch(&vc, "vit_small", 14, 224, 4, "mlp", err) == 0, "%s", err);
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &vc, &tab, "backbone.");
    optim_assign_param_groups(&tab, 0.9f, 0.2f);
    Backend *be = backend_cpu_new();
    g_sum_squares = be->sum_squares;
    be->sum_squares = counting_sum_squares;
    float *G = calloc(tab.total, sizeof(float));
    Rng r = rng_make(3, 0, 0, 0);
    for (int i = 0; i < tab.n; i++)
        for (size_t j = 0; j < tab.t[i].numel; j++) G[tab.t[i].offset + j] = (float)rng_normal(&r);
    g_calls = 0;
    double ss = grad_sum_squares_range(be, &tab, G, PARAM_BACKBONE, 0, tab.total);
    CHECK(g_calls == 1, "%d sum_squares calls for the ViT-S backbone (%d tensors), expected 1", g_calls, tab.n);
    double per_tensor = 0;
    for (int i = 0; i < tab.n; i++) per_tensor += g_sum_squares(be, G + tab.t[i].offset, tab.t[i].numel);
    CHECK_CLOSE(ss, per_tensor, 0, 1e-12);
    // a ZeRO-1 shard boundary inside a tensor: still one run on each side
    g_calls = 0;
    double halves = grad_sum_squares_range(be, &tab, G, PARAM_BACKBONE, 0, tab.total / 2 + 3) +
                    grad_sum_squares_range(be, &tab, G, PARAM_BACKBONE, tab.total / 2 + 3, tab.total);
    CHECK(g_calls == 2, "%d calls for two shards", g_calls);
    CHECK_CLOSE(halves, per_tensor, 0, 1e-12);
    free(G);
    backend_free(be);
    vit_free(&vit);
    param_table_free(&tab);
}

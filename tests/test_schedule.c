// Schedules (values hand-derived from the reference's formulas) and the reference's parameter groups on
// a ViT-L-like table.
#include <math.h>
#include <string.h>

#include "common/check.h"
#include "model/head.h"
#include "model/vit.h"
#include "tests/harness.h"
#include "train/optim.h"
#include "train/schedule.h"

TEST(cosine_scheduler_matches_reference_formula) {
    // CosineScheduler(base=1, final=0.1, total=10, warmup=4, start=0.2): linspace(0.2, 1, 4) then
    // 0.1 + 0.45 (1 + cos(pi k / 6)), k = 0..5; >= 10 -> 0.1
    CosineSchedule s = {1.0, 0.1, 10, 4, 0, 0.2};
    const double expect[10] = {0.2, 0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1.0, 1.0, 0.1 + 0.45 * (1 + cos(M_PI / 6)),
                               0.1 + 0.45 * (1 + cos(M_PI * 2 / 6)), 0.55, 0.1 + 0.45 * (1 + cos(M_PI * 4 / 6)),
                               0.1 + 0.45 * (1 + cos(M_PI * 5 / 6))};
    for (int i = 0; i < 10; i++) CHECK_CLOSE(cosine_schedule_at(&s, i), expect[i], 1e-12, 1e-12);
    CHECK_CLOSE(cosine_schedule_at(&s, 10), 0.1, 0, 0);
    CHECK_CLOSE(cosine_schedule_at(&s, 1000), 0.1, 0, 0);
    // freeze iterations give 0 first
    CosineSchedule f = {1.0, 0.0, 6, 2, 2, 0.5};
    CHECK_CLOSE(cosine_schedule_at(&f, 0), 0, 0, 0);
    CHECK_CLOSE(cosine_schedule_at(&f, 2), 0.5, 1e-15, 0);
    CHECK_CLOSE(cosine_schedule_at(&f, 3), 1.0, 1e-15, 0);
    CHECK_CLOSE(cosine_schedule_at(&f, 4), 1.0, 1e-15, 0);
    CHECK_CLOSE(cosine_schedule_at(&f, 5), 0.5, 1e-15, 0);
}

TEST(dinov2_default_schedules) {
    // vitl16_short: base_lr 4e-3, 32 GPUs x 64 = 2048 -> lr = 4e-3 sqrt(2) = 5.657e-3
    ScheduleConfig c = schedule_config_default(4e-3, 2048);
    CHECK_CLOSE(c.lr, 4e-3 * sqrt(2.0), 1e-15, 0);
    CHECK_CLOSE(scaled_lr(2e-4, 3072), 3.4641016e-4, 1e-10, 0);
    const double lr = c.lr;
    ScheduleValues v = schedule_at(&c, 0);
    CHECK_CLOSE(v.lr, 0, 0, 0);
    CHECK_CLOSE(v.wd, 0.04, 1e-15, 0);
    CHECK_CLOSE(v.momentum, 0.992, 1e-15, 0);
    CHECK_CLOSE(v.teacher_temp, 0.04, 1e-15, 0);
    CHECK_CLOSE(v.last_layer_lr, 0, 0, 0);
    // warmup: linspace(0, lr, 12500) -> it * lr / 12499
    v = schedule_at(&c, 1000);
    CHECK_CLOSE(v.lr, 1000 * lr / 12499, 1e-15, 1e-12);
    CHECK_CLOSE(v.last_layer_lr, 0, 0, 0);
    v = schedule_at(&c, 1250);
    CHECK_CLOSE(v.last_layer_lr, 1250 * lr / 12499, 1e-15, 1e-12); // the lr schedule itself, not shifted
    v = schedule_at(&c, 1249);
    CHECK_CLOSE(v.last_layer_lr, 0, 0, 0); // frozen for the first 1250 iterations
    CHECK(v.lr > 0, "lr must not be frozen");
    v = schedule_at(&c, 12499);
    CHECK_CLOSE(v.lr, lr, 1e-15, 1e-12);
    // cosine: 1e-6 + (lr - 1e-6)/2 (1 + cos(pi k / 112500)), k = it - 12500
    v = schedule_at(&c, 12500 + 56250);
    CHECK_CLOSE(v.lr, 1e-6 + (lr - 1e-6) / 2, 1e-15, 1e-12);
    // wd: 0.4 + (0.04 - 0.4)/2 (1 + cos(pi it / 125000))
    v = schedule_at(&c, 31250);
    CHECK_CLOSE(v.wd, 0.4 - 0.18 * (1 + cos(M_PI / 4)), 1e-15, 1e-12);
    CHECK_CLOSE(v.momentum, 1 - 0.004 * (1 + cos(M_PI / 4)), 1e-15, 1e-12);
    // teacher temp: linspace(0.04, 0.07, 37500), then 0.07
    v = schedule_at(&c, 18000);
    CHECK_CLOSE(v.teacher_temp, 0.04 + 18000 * 0.03 / 37499, 1e-15, 1e-12);
    v = schedule_at(&c, 37499);
    CHECK_CLOSE(v.teacher_temp, 0.07, 1e-15, 0);
    v = schedule_at(&c, 40000);
    CHECK_CLOSE(v.teacher_temp, 0.07, 1e-15, 0);
    // after the end: final values
    v = schedule_at(&c, 125000);
    CHECK_CLOSE(v.lr, 1e-6, 0, 0);
    CHECK_CLOSE(v.wd, 0.4, 0, 0);
    CHECK_CLOSE(v.momentum, 1.0, 0, 0);
}

TEST(param_groups_vit_large) {
    VitConfig vc;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&vc, "vit_large", 16, 224, 0, "mlp", err) == 0, "%s", err);
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &vc, &tab, "backbone.");
    Head h;
    HeadConfig hc = {.in_dim = 1024, .hidden = 32, .bottleneck = 16, .K = 64, .nlayers = 3};
    head_build(&h, &hc, &tab, "dino_head.", PARAM_DINO_HEAD);
    optim_assign_param_groups(&tab, 0.9f, 0.2f);
    struct {
        const char *name;
        double lr_mult, wd_mult;
        int last;
    } expect[] = {
        {"backbone.blocks.0.attn.qkv.weight", pow(0.9, 24), 1, 0}, // 0.0798
        {"backbone.blocks.0.attn.qkv.bias", pow(0.9, 24), 0, 0},
        {"backbone.blocks.23.mlp.fc1.weight", 0.9, 1, 0},
        {"backbone.blocks.23.norm1.weight", 0.9, 0, 0},
        {"backbone.blocks.5.ls1.gamma", pow(0.9, 19), 0, 0},
        {"backbone.norm.weight", 1.0, 0, 0},
        {"backbone.norm.bias", 1.0, 0, 0},
        {"backbone.patch_embed.proj.weight", pow(0.9, 25) * 0.2, 1, 0}, // 0.01436
        {"backbone.patch_embed.proj.bias", pow(0.9, 25) * 0.2, 0, 0},
        {"backbone.pos_embed", pow(0.9, 25), 1, 0},
        {"backbone.cls_token", pow(0.9, 25), 1, 0},
        {"backbone.mask_token", pow(0.9, 25), 1, 0},
        {"dino_head.mlp.0.weight", 1, 1, 0},
        {"dino_head.mlp.4.bias", 1, 0, 0},
        {"dino_head.last_layer.weight_g", 1, 1, 1},
        {"dino_head.last_layer.weight_v", 1, 1, 1},
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        const TensorSpec *t = param_find(&tab, expect[i].name);
        CHECK(t != NULL, "%s missing", expect[i].name);
        if (!t) continue;
        CHECK_CLOSE(t->lr_mult, expect[i].lr_mult, 1e-7, 1e-6);
        CHECK_CLOSE(t->wd_mult, expect[i].wd_mult, 0, 0);
        CHECK(t->is_last_layer == expect[i].last, "%s: is_last_layer %d", t->name, t->is_last_layer);
    }
    CHECK_CLOSE(param_find(&tab, "backbone.patch_embed.proj.weight")->lr_mult, 0.01436, 1e-5, 0);
    vit_free(&vit);
    param_table_free(&tab);
}

// Schedules: DINOv2's (values hand-derived from the reference's formulas), DINOv3's against the values of
// a transcription of the official schedulers (tests/fixtures/schedules_dinov3.txt, written by
// tests/make_schedule_fixtures.py), the `schedules:` config section; and the reference's parameter groups
// on a ViT-L-like table.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/head.h"
#include "model/vit.h"
#include "tests/harness.h"
#include "train/config.h"
#include "train/optim.h"
#include "train/schedule.h"

TEST(cosine_scheduler_matches_reference_formula) {
    // CosineScheduler(base=1, final=0.1, total=10, warmup=4, start=0.2): linspace(0.2, 1, 4) then
    // 0.1 + 0.45 (1 + cos(pi k / 6)), k = 0..5; >= 10 -> 0.1
    CosineSchedule s = {1.0, 0.1, 10, 4, 0, 0.2, 0.0};
    const double expect[10] = {0.2, 0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1.0, 1.0, 0.1 + 0.45 * (1 + cos(M_PI / 6)),
                               0.1 + 0.45 * (1 + cos(M_PI * 2 / 6)), 0.55, 0.1 + 0.45 * (1 + cos(M_PI * 4 / 6)),
                               0.1 + 0.45 * (1 + cos(M_PI * 5 / 6))};
    for (int i = 0; i < 10; i++) CHECK_CLOSE(cosine_schedule_at(&s, i), expect[i], 1e-12, 1e-12);
    CHECK_CLOSE(cosine_schedule_at(&s, 10), 0.1, 0, 0);
    CHECK_CLOSE(cosine_schedule_at(&s, 1000), 0.1, 0, 0);
    // freeze iterations give 0 first
    CosineSchedule f = {1.0, 0.0, 6, 2, 2, 0.5, 0.0};
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

// ---- DINOv3 (fixture values from the transcription of the official code) ------------------------------

static FILE *open_fixture(void) {
    const char *path = test_src_path("tests/fixtures/schedules_dinov3.txt");
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s (run tests/make_schedule_fixtures.py)", path);
    return f;
}

// Relative 1e-13: the C code follows numpy's operation order, so only libm's cos may differ (by an ulp).
#define CHECK_VALUE(got, want, what, it) \
    CHECK(fabs((got) - (want)) <= 1e-13 * fabs(want) + 1e-18, "%s at it %ld: %.17g, official %.17g", what, it, (got), (want))

TEST(dinov3_schedulers_match_official) {
    FILE *f = open_fixture();
    char line[4096];
    int kind = 0, n_sched = 0, n_values = 0;
    WarmupCosineSchedule w = {0};
    CosineSchedule cs = {0};
    while (fgets(line, sizeof line, f)) {
        if (line[0] == 'W') {
            CHECK(sscanf(line, "W %lf %lf %lf %ld %ld %ld", &w.start, &w.peak, &w.end, &w.warmup, &w.total, &w.cosine) == 6,
                  "bad W line: %s", line);
            kind = 'W', n_sched++;
        } else if (line[0] == 'C') {
            CHECK(sscanf(line, "C %lf %lf %ld %ld %lf %ld %lf", &cs.base, &cs.final, &cs.total, &cs.warmup, &cs.start_warmup,
                         &cs.freeze, &cs.trunc_extra) == 7, "bad C line: %s", line);
            kind = 'C', n_sched++;
        } else if (line[0] == 'v') {
            long it;
            double want;
            CHECK(sscanf(line, "v %ld %lf", &it, &want) == 2, "bad v line: %s", line);
            double got = kind == 'W' ? warmup_cosine_at(&w, it) : cosine_schedule_at(&cs, it);
            CHECK_VALUE(got, want, kind == 'W' ? "linear_warmup_cosine_decay" : "CosineScheduler", it);
            n_values++;
        }
    }
    fclose(f);
    CHECK(n_sched == 13 && n_values >= 400, "fixture read incompletely: %d schedules, %d values", n_sched, n_values);
}

// Each R block: a config given as overrides, its world size, and build_schedulers_v2's five schedules.
TEST(dinov3_schedules_section_matches_official) {
    FILE *f = open_fixture();
    static char line[8192];
    int n_runs = 0, n_values = 0;
    ScheduleConfig sc = {0};
    while (fgets(line, sizeof line, f)) {
        if (line[0] == 'R') {
            char *over[64];
            int n = 0, world = atoi(line + 2);
            for (char *tok = strtok(line + 2, " \n"); tok; tok = strtok(NULL, " \n"))
                if (strchr(tok, '=') && n < 64) over[n++] = tok;
            over[n++] = "optim.warmup_epochs=0"; // the DINOv2 keys must stay valid for the short runs
            Config cfg;
            char err[DINO_ERRLEN];
            CHECK(config_load_string(&cfg, "", "fixture", n, over, err) == 0, "%s", err);
            CHECK(cfg.schedules.enabled, "setting schedules keys must enable the section");
            sc = config_to_schedule(&cfg, world);
            CHECK(sc.v3, "config_to_schedule: schedules section not used");
            n_runs++;
        } else if (line[0] == 'r') {
            long it;
            double want[5];
            CHECK(sscanf(line, "r %ld %lf %lf %lf %lf %lf", &it, &want[0], &want[1], &want[2], &want[3], &want[4]) == 6,
                  "bad r line: %s", line);
            ScheduleValues v = schedule_at(&sc, it);
            CHECK_VALUE(v.lr, want[0], "lr", it);
            CHECK_VALUE(v.wd, want[1], "weight_decay", it);
            CHECK_VALUE(v.momentum, want[2], "momentum", it);
            CHECK_VALUE(v.teacher_temp, want[3], "teacher_temp", it);
            CHECK_VALUE(v.last_layer_lr, want[4], "last_layer_lr", it);
            n_values++;
        }
    }
    fclose(f);
    CHECK(n_runs == 4 && n_values > 150, "fixture read incompletely: %d runs, %d iterations", n_runs, n_values);
}

TEST(schedules_section_switches_and_round_trips) {
    char err[DINO_ERRLEN];
    Config a, b;
    // DINOv2 by default, and a resolved DINOv2 config read back stays DINOv2
    CHECK(config_load_string(&a, "optim:\n  epochs: 3\n  warmup_epochs: 1\n", "a", 0, NULL, err) == 0, "%s", err);
    CHECK(!a.schedules.enabled, "schedules enabled by default");
    CHECK(!config_to_schedule(&a, 1).v3, "DINOv2 config got v3 schedules");
    char *y = config_to_yaml(&a);
    CHECK(config_load_string(&b, y, "resolved", 0, NULL, err) == 0, "%s", err);
    free(y);
    CHECK(!b.schedules.enabled && config_equal(&a, &b, NULL), "resolved DINOv2 config changed on reading back");
    // a `schedules:` section (nested as the official YAML) enables it; its resolved form reads back equal
    const char *v3 = "optim:\n  epochs: 3\n  warmup_epochs: 1\nschedules:\n  lr:\n    peak: 2.0e-4\n    end: 1.0e-5\n"
                     "    warmup_epochs: 1\n    cosine_epochs: 1\n  teacher_temp:\n    warmup_epochs: 0\n";
    CHECK(config_load_string(&a, v3, "v3", 0, NULL, err) == 0, "%s", err);
    CHECK(a.schedules.enabled && a.schedules.lr.peak == 2e-4 && a.schedules.lr.cosine_epochs == 1, "section not read");
    y = config_to_yaml(&a);
    CHECK(config_load_string(&b, y, "resolved", 0, NULL, err) == 0, "%s", err);
    free(y);
    const char *diff = NULL;
    CHECK(config_equal(&a, &b, &diff), "resolved v3 config differs on reading back at %s", diff ? diff : "?");
    // the lr scaling rule scales peak and end (4 sqrt(B/1024)), not start
    a.train.batch_size_per_gpu = 64;
    ScheduleConfig s = config_to_schedule(&a, 4);
    CHECK_CLOSE(s.lr3.peak, 2e-4 * 4 * sqrt(256.0 / 1024), 1e-18, 1e-15);
    CHECK_CLOSE(s.lr3.end, 1e-5 * 2, 1e-18, 1e-15);
    // schedules.enabled=false in the same source wins, whatever the order
    char *off[] = {"schedules.enabled=false", "schedules.lr.peak=1e-3"};
    CHECK(config_load_string(&a, "", "x", 2, off, err) == 0, "%s", err);
    CHECK(!a.schedules.enabled, "schedules.enabled=false was overridden by a later schedules key");
    // a warm-up + cosine longer than the run is refused, naming the key
    char *bad[] = {"optim.epochs=4", "optim.warmup_epochs=0", "schedules.teacher_temp.warmup_epochs=0",
                   "schedules.lr.warmup_epochs=2", "schedules.lr.cosine_epochs=3"};
    CHECK(config_load_string(&a, "", "x", 5, bad, err) != 0 && strstr(err, "schedules.lr.cosine_epochs"),
          "bad schedule accepted or wrong message: %s", err);
}

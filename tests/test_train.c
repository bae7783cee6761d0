// The trainer end to end on a tiny model and synthetic tiles: exact resume, corrupt-checkpoint
// fallback, the NaN guard, and configs refused before anything runs.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/check.h"
#include "data/decode.h"
#include "data/loader.h"
#include "data/synth.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/train.h"
#include "tests/harness.h"
#include "tests/synth_files.h"
#include "tests/test_util.h"

// A tiny run: 2 epochs of 6 iterations, checkpoints every 3.
static void tiny_config(Config *cfg, const char *tiles, const char *out) {
    char err[DINO_ERRLEN];
    char src[4300], outkv[4300];
    snprintf(src, sizeof src, "data.sources=[%s]", tiles);
    snprintf(outkv, sizeof outkv, "train.output_dir=%s", out);
    char *ov[] = {src,
                  outkv,
                  "student.arch=vit_test",
                  "student.embed_dim=24",
                  "student.depth=2",
                  "student.num_heads=2",
                  "student.patch_size=8",
                  "student.drop_path_rate=0.2",
                  "student.num_register_tokens=1",
                  "crops.global_crops_size=32",
                  "crops.local_crops_size=16",
                  "crops.local_crops_number=2",
                  "dino.head_n_prototypes=64",
                  "dino.head_hidden_dim=32",
                  "dino.head_bottleneck_dim=16",
                  "ibot.head_n_prototypes=64",
                  "ibot.head_hidden_dim=32",
                  "ibot.head_bottleneck_dim=16",
                  "train.batch_size_per_gpu=4",
                  "train.OFFICIAL_EPOCH_LENGTH=6",
                  "train.num_workers=2",
                  "optim.epochs=2",
                  "optim.warmup_epochs=1",
                  "optim.base_lr=0.01",
                  "teacher.warmup_teacher_temp_epochs=1",
                  "checkpoint.every_n_iterations=3",
                  "checkpoint.keep_last=3",
                  "evaluation.eval_period_iterations=0"};
    CHECK(config_load(cfg, test_src_path("configs/demo.yaml"), (int)(sizeof ov / sizeof ov[0]), ov, err) == 0, "%s",
          err);
}

static int run(const Config *cfg, int64_t max_it, TrainResult *res, char *err) {
    return run_trainer(cfg, max_it, 1, res, err);
}

TEST(resume_is_bit_exact) {
    const char *tmp = test_tmpdir();
    char outa[4200], outb[4200], ca[4300], cb[4300];
    const char *spec = make_tiles(tmp, 24);
    snprintf(outa, sizeof outa, "%s/a", tmp);
    snprintf(outb, sizeof outb, "%s/b", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;

    tiny_config(&cfg, spec, outa);
    CHECK(run(&cfg, 0, &res, err) == 0, "%s", err);
    CHECK(res.end_iteration == 12 && res.skipped_steps == 0, "ran to %lld", (long long)res.end_iteration);
    snprintf(ca, sizeof ca, "%s", res.last_checkpoint);
    CHECK(isfinite(res.last_total_loss) && res.last_total_loss > 0, "loss %g", res.last_total_loss);

    // the same run, stopped after 5 iterations (--iterations 5: periodic checkpoint at 3, and one where it
    // stops, at 5), then started again from 5
    tiny_config(&cfg, spec, outb);
    CHECK(run(&cfg, 5, &res, err) == 0, "%s", err);
    CHECK(res.end_iteration == 5, "first part ended at %lld", (long long)res.end_iteration);
    CHECK(res.last_checkpoint[0] && strstr(res.last_checkpoint, "5"), "no checkpoint where the run stopped (%s)",
          res.last_checkpoint);
    CHECK(run(&cfg, 0, &res, err) == 0, "%s", err);
    CHECK(res.start_iteration == 5 && res.end_iteration == 12, "resumed %lld..%lld", (long long)res.start_iteration,
          (long long)res.end_iteration);

    snprintf(cb, sizeof cb, "%s", res.last_checkpoint);
    CHECK(strstr(ca, "/a/") && strstr(cb, "/b/"), "checkpoint paths %s %s", ca, cb);
    check_same_checkpoint(ca, cb);
}

// A value of a metrics line ("key": number), NAN when absent.
static double metric_of(const char *line, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(line, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

// A `schedules:` section drives the trainer: the logged lr, last-layer lr, wd, momentum and teacher
// temperature of every iteration are DINOv3's (tests/test_schedule.c checks those against the official code).
TEST(dinov3_schedules_drive_the_trainer) {
    const char *tmp = test_tmpdir();
    char out[4200], mpath[4300];
    const char *spec = make_tiles(tmp, 16);
    snprintf(out, sizeof out, "%s/run", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    tiny_config(&cfg, spec, out);
    char *ov[] = {"schedules.lr.start=0.001", "schedules.lr.peak=0.002", "schedules.lr.end=0.0001",
                  "schedules.lr.warmup_epochs=1", "schedules.lr.cosine_epochs=0", "schedules.lr.freeze_last_layer_epochs=1",
                  "schedules.weight_decay.start=0.01", "schedules.weight_decay.peak=0.02", "schedules.weight_decay.end=0.03",
                  "schedules.momentum.start=0.9", "schedules.momentum.peak=0.95", "schedules.momentum.end=0.99",
                  "schedules.momentum.warmup_epochs=1", "schedules.teacher_temp.warmup_epochs=0",
                  "schedules.teacher_temp.peak=0.06", "schedules.teacher_temp.end=0.05", "log.every_n_iterations=1",
                  "optim.scaling_rule=sqrt_wrt_1024"};
    override_config(&cfg, (int)(sizeof ov / sizeof ov[0]), ov);
    CHECK(run(&cfg, 8, &res, err) == 0, "%s", err);
    ScheduleConfig sc = config_to_schedule(&cfg, 1);
    CHECK(sc.v3, "schedules section not used");
    snprintf(mpath, sizeof mpath, "%s/training_metrics.jsonl", out);
    FILE *f = fopen(mpath, "r");
    CHECK(f != NULL, "no metrics at %s", mpath);
    char line[8192];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        long it = (long)metric_of(line, "iteration");
        ScheduleValues v = schedule_at(&sc, it);
        CHECK_CLOSE(metric_of(line, "lr"), v.lr, 0, 1e-5);
        CHECK_CLOSE(metric_of(line, "last_layer_lr"), v.last_layer_lr, 0, 1e-5);
        CHECK_CLOSE(metric_of(line, "wd"), v.wd, 0, 1e-5);
        CHECK_CLOSE(metric_of(line, "momentum"), v.momentum, 0, 1e-5);
        CHECK_CLOSE(metric_of(line, "teacher_temp"), v.teacher_temp, 0, 1e-5);
        n++;
    }
    if (f) fclose(f);
    CHECK(n == 8, "%d metrics lines", n);
    // and they are not DINOv2's: the lr at iteration 0 is schedules.lr.start scaled, not 0
    CHECK_CLOSE(schedule_at(&sc, 0).lr, 0.001, 0, 1e-12);
    CHECK_CLOSE(schedule_at(&sc, 7).lr, 0.0001 * 4 * sqrt(4.0 / 1024), 0, 1e-12);
    CHECK(schedule_at(&sc, 5).last_layer_lr == 0 && schedule_at(&sc, 6).last_layer_lr > 0, "last layer frozen 1 epoch");
}

// DINOv3 Gram anchoring in the trainer: the Gram teacher copied from the EMA teacher at iteration 0,
// refreshed once after iteration 3, at 48 px (patch features resampled 6x6 -> 4x4), its weight on a cosine
// ramp, the local DINO loss reweighted; the run stopped at 5 and resumed ends bit for bit where the
// uninterrupted run does (the Gram teacher and its update count are in the checkpoint).
static void gram_config(Config *cfg, const char *spec, const char *out) {
    tiny_config(cfg, spec, out);
    char *ov[] = {"gram.use_loss=true", "gram.it_load_ema_teacher=0", "gram.rep_update=true",
                  "gram.update_frequency=4", "gram.it_first_update=4", "gram.max_updates=1", "gram.img_level=true",
                  "crops.gram_teacher_crops_size=48", "crops.gram_teacher_no_distortions=true",
                  "gram.loss_weight_schedule.start=0", "gram.loss_weight_schedule.peak=0",
                  "gram.loss_weight_schedule.end=2.0", "gram.loss_weight_schedule.warmup_epochs=0",
                  "gram.loss_weight_schedule.cosine_epochs=1", "dino.reweight_dino_local_loss=true",
                  "dino.local_loss_weight_schedule.start=1", "dino.local_loss_weight_schedule.peak=1",
                  "dino.local_loss_weight_schedule.end=0.5", "dino.local_loss_weight_schedule.warmup_epochs=1",
                  "dino.local_loss_weight_schedule.cosine_epochs=1", "log.every_n_iterations=1"};
    override_config(cfg, (int)(sizeof ov / sizeof ov[0]), ov);
}

TEST(gram_anchoring_resume_is_bit_exact) {
    const char *tmp = test_tmpdir();
    char outa[4200], outb[4200], ca[4300], mpath[4300];
    const char *spec = make_tiles(tmp, 24);
    snprintf(outa, sizeof outa, "%s/a", tmp);
    snprintf(outb, sizeof outb, "%s/b", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    gram_config(&cfg, spec, outa);
    CHECK(run(&cfg, 0, &res, err) == 0, "%s", err);
    CHECK(res.end_iteration == 12 && res.skipped_steps == 0, "ran to %lld", (long long)res.end_iteration);
    snprintf(ca, sizeof ca, "%s", res.last_checkpoint);

    // the logged Gram loss: 0 at iteration 0 (weight 0: not computed), positive once the weight is
    gram_config(&cfg, spec, outa);
    snprintf(mpath, sizeof mpath, "%s/training_metrics.jsonl", outa);
    FILE *f = fopen(mpath, "r");
    CHECK(f != NULL, "no metrics at %s", mpath);
    char line[8192];
    int n = 0, positive = 0;
    while (f && fgets(line, sizeof line, f)) {
        long it = (long)metric_of(line, "iteration");
        CHECK_CLOSE(metric_of(line, "gram_weight"), config_gram_weight_at(&cfg, it), 0, 1e-9);
        CHECK_CLOSE(metric_of(line, "dino_local_weight"), config_dino_local_weight_at(&cfg, it), 0, 1e-9);
        if (it == 0) CHECK(metric_of(line, "gram") == 0, "Gram loss at weight 0: %s", line);
        if (it > 0) positive += metric_of(line, "gram") > 0;
        n++;
    }
    if (f) fclose(f);
    CHECK(n == 12 && positive == 11, "%d lines, %d with a Gram loss", n, positive);
    CHECK_CLOSE(config_gram_weight_at(&cfg, 11), 2.0, 0, 1e-12);
    CHECK_CLOSE(config_dino_local_weight_at(&cfg, 11), 0.5, 0, 1e-12);

    Ckpt c;
    CHECK(ckpt_open(&c, ca, err) == 0, "%s", err);
    int64_t updates = -1, ready = -1;
    CHECK(ckpt_get_int(&c, "gram.updates", &updates, err) == 0 && updates == 1, "gram.updates %lld", (long long)updates);
    CHECK(ckpt_get_int(&c, "gram.ready", &ready, err) == 0 && ready == 1, "gram.ready %lld", (long long)ready);
    const StTensor *g = st_get(&c.st, "gram_teacher.backbone.norm.weight"), *t = st_get(&c.st, "teacher.backbone.norm.weight");
    CHECK(g && t && g->nbytes == t->nbytes, "Gram teacher not in the checkpoint");
    // frozen since the update after iteration 3: no longer the EMA teacher
    if (g && t) CHECK(memcmp(g->data, t->data, g->nbytes) != 0, "the Gram teacher follows the EMA teacher");
    CHECK(!st_get(&c.st, "gram_teacher.dino_head.last_layer.weight_g"), "heads in the Gram teacher");
    ckpt_close(&c);

    gram_config(&cfg, spec, outb);
    check_resume_equals(&cfg, 5, 12, ca);
}

// gram.ckpt: the Gram teacher of a run is the EMA teacher's backbone of an earlier run's checkpoint (as
// DINOv3's Gram phase starts from its pre-training), frozen (rep_update false), and checkpointed with it.
TEST(gram_teacher_from_a_checkpoint) {
    const char *tmp = test_tmpdir();
    char outa[4200], outb[4200], ckpt_a[4300], kv[4400];
    const char *spec = make_tiles(tmp, 16);
    snprintf(outa, sizeof outa, "%s/a", tmp);
    snprintf(outb, sizeof outb, "%s/b", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    tiny_config(&cfg, spec, outa);
    CHECK(run(&cfg, 3, &res, err) == 0, "%s", err);
    snprintf(ckpt_a, sizeof ckpt_a, "%s", res.last_checkpoint);
    tiny_config(&cfg, spec, outb);
    snprintf(kv, sizeof kv, "gram.ckpt=%s", ckpt_a);
    char *ov[] = {"gram.use_loss=true", kv, "gram.rep_update=false", "gram.loss_weight=1.5"};
    override_config(&cfg, (int)(sizeof ov / sizeof ov[0]), ov);
    CHECK(run(&cfg, 3, &res, err) == 0, "%s", err);
    Ckpt a, b;
    CHECK(ckpt_open(&a, ckpt_a, err) == 0, "%s", err);
    CHECK(ckpt_open(&b, res.last_checkpoint, err) == 0, "%s", err);
    int n = 0, same = 0;
    for (int i = 0; i < b.st.n; i++) {
        const StTensor *g = &b.st.t[i];
        if (strncmp(g->name, "gram_teacher.", 13) != 0) continue;
        char name[300];
        snprintf(name, sizeof name, "teacher.%s", g->name + 13);
        const StTensor *t = st_get(&a.st, name);
        n++;
        same += t && t->nbytes == g->nbytes && memcmp(t->data, g->data, g->nbytes) == 0;
    }
    CHECK(n > 10 && same == n, "%d of %d Gram teacher tensors equal the first run's EMA teacher", same, n);
    ckpt_close(&a);
    ckpt_close(&b);
}

// A Gram weight with no Gram teacher is refused, naming the keys; so is a config that never sets one.
TEST(gram_teacher_never_set_is_refused) {
    const char *tmp = test_tmpdir();
    char out[4200];
    const char *spec = make_tiles(tmp, 12);
    snprintf(out, sizeof out, "%s/run", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    tiny_config(&cfg, spec, out);
    CHECK(config_override(&cfg, "gram.use_loss=true", err) == 0, "%s", err);
    CHECK(config_validate(&cfg, err) != 0 && strstr(err, "gram.it_load_ema_teacher"), "accepted: %s", err);
    CHECK(config_override(&cfg, "gram.it_load_ema_teacher=2", err) == 0, "%s", err);
    CHECK(config_validate(&cfg, err) == 0, "%s", err);
    CHECK(run(&cfg, 4, &res, err) != 0 && strstr(err, "Gram teacher was never set"), "ran: %s", err);
    CHECK(config_override(&cfg, "gram.ckpt=/nonexistent/ckpt", err) == 0, "%s", err);
    CHECK(run(&cfg, 4, &res, err) != 0 && strstr(err, "gram.ckpt") && strstr(err, "/nonexistent/ckpt"), "ran: %s", err);
}

// A high-resolution phase (docs/high-resolution.md) continuing the tiny run whose checkpoints are in
// `from`: two (global, local) size pairs, 32/16 and 48/24 px, with the pos-embed grid of the earlier run.
static void highres_config(Config *cfg, const char *tiles, const char *out, const char *from, int frozen) {
    char hk[4300];
    tiny_config(cfg, tiles, out);
    snprintf(hk, sizeof hk, "hrft.checkpoint_path=%s", from);
    char *ov[] = {hk, "student.img_size=32", "crops.global_crops_size=[32, 48]", "crops.local_crops_size=[16, 24]",
                  "crops.global_local_crop_pairs_ratios=[0.5, 0.5]", "train.batch_size_per_gpu=2",
                  "train.OFFICIAL_EPOCH_LENGTH=8", "optim.epochs=1", "checkpoint.every_n_iterations=4",
                  "log.every_n_iterations=1", "schedules.lr.start=0", "schedules.lr.peak=0",
                  frozen ? "schedules.lr.end=0" : "schedules.lr.end=0.002", "schedules.lr.warmup_epochs=0",
                  "schedules.lr.cosine_epochs=1", "schedules.lr.freeze_last_layer_epochs=0",
                  "schedules.teacher_temp.start=0.07", "schedules.teacher_temp.warmup_epochs=0",
                  frozen ? "schedules.momentum.start=1" : "schedules.momentum.start=0.99",
                  frozen ? "schedules.momentum.peak=1" : "schedules.momentum.peak=0.99",
                  frozen ? "schedules.momentum.end=1" : "schedules.momentum.end=0.99"};
    override_config(cfg, (int)(sizeof ov / sizeof ov[0]), ov);
}

// Tensors `pa` of checkpoint a equal tensors `pb` of checkpoint b, bit for bit (over a's names with pa).
static void check_same_tensors(const char *a, const char *pa, const char *b, const char *pb) {
    Ckpt ca, cb;
    char err[DINO_ERRLEN], name[512];
    CHECK(ckpt_open(&ca, a, err) == 0, "%s", err);
    CHECK(ckpt_open(&cb, b, err) == 0, "%s", err);
    int n = 0, diff = 0;
    for (int i = 0; i < ca.st.n; i++) {
        const StTensor *ta = &ca.st.t[i];
        if (strncmp(ta->name, pa, strlen(pa)) != 0) continue;
        snprintf(name, sizeof name, "%s%s", pb, ta->name + strlen(pa));
        const StTensor *tb = st_get(&cb.st, name);
        CHECK(tb && tb->nbytes == ta->nbytes, "%s missing or resized", name);
        n++;
        if (tb && tb->nbytes == ta->nbytes && memcmp(ta->data, tb->data, ta->nbytes) != 0 && diff++ < 3)
            test_fail_at(__FILE__, __LINE__, "%s of %s differs from %s of %s", ta->name, a, name, b);
    }
    CHECK(n > 10 && diff == 0, "%d tensors compared, %d differ", n, diff);
    ckpt_close(&ca);
    ckpt_close(&cb);
}

TEST(highres_phase_continues_a_run_and_resumes_exactly) {
    const char *tmp = test_tmpdir();
    char outa[4200], outh1[4200], outh2[4200], outh3[4200], ca[4300], ch1[4300], mpath[4300];
    const char *spec = make_tiles(tmp, 24);
    snprintf(outa, sizeof outa, "%s/a", tmp);
    snprintf(outh1, sizeof outh1, "%s/h1", tmp);
    snprintf(outh2, sizeof outh2, "%s/h2", tmp);
    snprintf(outh3, sizeof outh3, "%s/h3", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    // the earlier run: 12 iterations of 32/16 px crops
    tiny_config(&cfg, spec, outa);
    CHECK(run(&cfg, 0, &res, err) == 0, "%s", err);
    snprintf(ca, sizeof ca, "%s", res.last_checkpoint);

    // the high-resolution phase, uninterrupted: 8 iterations from iteration 0
    highres_config(&cfg, spec, outh1, outa, 0);
    CHECK(run(&cfg, 0, &res, err) == 0, "%s", err);
    CHECK(res.start_iteration == 0 && res.end_iteration == 8 && res.skipped_steps == 0, "ran %lld..%lld",
          (long long)res.start_iteration, (long long)res.end_iteration);
    snprintf(ch1, sizeof ch1, "%s", res.last_checkpoint);

    // the same, stopped after 3 iterations and resumed: bit for bit the same end
    highres_config(&cfg, spec, outh2, outa, 0);
    check_resume_equals(&cfg, 3, 8, ch1);

    // the pair of each iteration: the keyed draw, both pairs used, the crops made at those sides
    const double ratios[2] = {0.5, 0.5};
    const int gs[2] = {32, 48}, ls[2] = {16, 24};
    int seen[2] = {0, 0}, lines = 0;
    snprintf(mpath, sizeof mpath, "%s/training_metrics.jsonl", outh1);
    FILE *f = fopen(mpath, "r");
    CHECK(f != NULL, "no metrics at %s", mpath);
    char line[8192];
    while (f && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"iteration\": "), *g = strstr(line, "\"global_crop\": "),
                   *l = strstr(line, "\"local_crop\": ");
        CHECK(p && g && l, "metrics line without the crop sides: %.200s", line);
        if (!p || !g || !l) break;
        long it = strtol(p + 13, NULL, 10);
        int k = loader_pair_at((uint64_t)cfg.train.seed, it, 2, ratios);
        CHECK(atoi(g + 15) == gs[k] && atoi(l + 14) == ls[k], "iteration %ld: crops %d/%d, drawn pair %d (%d/%d)", it,
              atoi(g + 15), atoi(l + 14), k, gs[k], ls[k]);
        seen[k]++, lines++;
    }
    if (f) fclose(f);
    CHECK(lines == 8 && seen[0] > 0 && seen[1] > 0, "%d lines; pair 0 drawn %d times, pair 1 %d", lines, seen[0], seen[1]);

    // what the phase starts from: with lr 0 and momentum 1 nothing moves, so after one iteration student and
    // teacher are still the earlier run's teacher, at iteration 1 of a fresh optimizer
    highres_config(&cfg, spec, outh3, outa, 1);
    CHECK(run(&cfg, 1, &res, err) == 0, "%s", err);
    check_same_tensors(ca, "teacher.", res.last_checkpoint, "student.");
    check_same_tensors(ca, "teacher.", res.last_checkpoint, "teacher.");
    Ckpt c;
    int64_t it = -1, step = -1;
    CHECK(ckpt_open(&c, res.last_checkpoint, err) == 0, "%s", err);
    CHECK(ckpt_get_int(&c, "iteration", &it, err) == 0 && ckpt_get_int(&c, "adamw.step", &step, err) == 0, "%s", err);
    CHECK(it == 1 && step == 1, "iteration %lld, adamw.step %lld (want 1, 1: a fresh start)", (long long)it, (long long)step);
    ckpt_close(&c);

    // a path that holds no checkpoint is refused, naming the key
    highres_config(&cfg, spec, outh3, tmp, 0);
    snprintf(outh3 + strlen(outh3), 16, "x");
    char kv[4300];
    snprintf(kv, sizeof kv, "train.output_dir=%s", outh3);
    CHECK(config_override(&cfg, kv, err) == 0, "%s", err);
    CHECK(run(&cfg, 1, &res, err) != 0 && strstr(err, "hrft.checkpoint_path"), "bad hrft path: %s", err);
}

TEST(corrupt_newest_checkpoint_falls_back) {
    const char *tmp = test_tmpdir();
    char out[4200];
    const char *spec = make_tiles(tmp, 16);
    snprintf(out, sizeof out, "%s/run", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    tiny_config(&cfg, spec, out);
    CHECK(run(&cfg, 6, &res, err) == 0, "%s", err); // checkpoints at 3 and 6
    int64_t *its = NULL;
    int n = ckpt_list(out, &its);
    CHECK(n == 2 && its[0] == 3 && its[1] == 6, "checkpoints: %d", n);
    free(its);
    // damage the newest checkpoint's tensors in the middle
    char path[4400];
    Ckpt c;
    CHECK(ckpt_open_latest(&c, out, NULL, err) == 1, "%s", err);
    snprintf(path, sizeof path, "%s", c.dir);
    ckpt_close(&c);
    char tensors[4500];
    snprintf(tensors, sizeof tensors, "%s/tensors.safetensors", path);
    FILE *f = fopen(tensors, "r+b");
    CHECK(f != NULL, "no %s (checkpoint layout changed?)", tensors);
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size / 2, SEEK_SET);
    unsigned char junk[64];
    memset(junk, 0xA5, sizeof junk);
    fwrite(junk, 1, sizeof junk, f);
    fclose(f);
    CHECK(run(&cfg, 0, &res, err) == 0, "%s", err);
    CHECK(res.start_iteration == 3 && res.end_iteration == 12, "resumed from %lld (expected the older checkpoint, 3)",
          (long long)res.start_iteration);
}

// --iterations N (max_iterations) ends the run with a checkpoint where it stops, between periodic ones
// (issue #14: the work since the last periodic checkpoint was lost).
TEST(stop_after_n_iterations_saves_a_checkpoint) {
    const char *tmp = test_tmpdir();
    char out[4200];
    const char *spec = make_tiles(tmp, 16);
    snprintf(out, sizeof out, "%s/run", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    tiny_config(&cfg, spec, out);
    CHECK(run(&cfg, 4, &res, err) == 0, "%s", err); // periodic checkpoint at 3, stop at 4
    int64_t *its = NULL;
    int n = ckpt_list(out, &its);
    CHECK(n == 2 && its[0] == 3 && its[1] == 4, "checkpoints: %d, newest at %lld (expected 3 and 4)", n,
          n ? (long long)its[n - 1] : -1LL);
    free(its);
    CHECK(run(&cfg, 0, &res, err) == 0, "%s", err);
    CHECK(res.start_iteration == 4 && res.end_iteration == 12, "resumed %lld..%lld", (long long)res.start_iteration,
          (long long)res.end_iteration);
}

// The collapse diagnostics on a run made to collapse (a teacher temperature of 2: uniform targets, the
// "head uniform" collapse): off by default the run goes on and reports it; train.stop_on_collapse stops it
// at the third log line in a row past the warm-up, writes no checkpoint while the diagnostics warn, and
// keeps the last good one (issue #14).
TEST(collapse_diagnostics_and_stop_on_collapse) {
    const char *tmp = test_tmpdir();
    char out[4200], out2[4200], metrics[4300];
    const char *spec = make_tiles(tmp, 16);
    snprintf(out, sizeof out, "%s/run", tmp);
    snprintf(out2, sizeof out2, "%s/stop", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    // LayerScale 1: with the default 1e-5 this tiny backbone's CLS is constant at init (backbone constant)
    char *ov[] = {"teacher.warmup_teacher_temp=2.0", "teacher.teacher_temp=2.0", "log.every_n_iterations=1",
                  "student.layerscale=1.0"};
    tiny_config(&cfg, spec, out);
    for (int i = 0; i < 4; i++) CHECK(config_override(&cfg, ov[i], err) == 0, "%s", err);
    CHECK(run(&cfg, 0, &res, err) == 0, "%s", err);
    CHECK(res.end_iteration == 12 && res.collapse && !strcmp(res.collapse, "head uniform"),
          "ran to %lld, collapse %s (margin %g)", (long long)res.end_iteration, res.collapse ? res.collapse : "none",
          res.margin);
    CHECK(res.margin < 0.01 * log(64.0) && res.prototypes >= 1, "margin %g prototypes %d", res.margin, res.prototypes);
    // the metrics carry the diagnostics on every log line
    snprintf(metrics, sizeof metrics, "%s/training_metrics.jsonl", out);
    FILE *f = fopen(metrics, "r");
    char line[8192];
    int with_margin = 0, with_collapse = 0, with_init = 0;
    while (f && fgets(line, sizeof line, f)) {
        with_margin += strstr(line, "\"dino_margin\"") && strstr(line, "\"prototype_usage\"") &&
                       strstr(line, "\"rankme_cls\"") && strstr(line, "\"agreement\"") && strstr(line, "\"ibot_margin\"");
        with_collapse += strstr(line, "\"collapse\": \"head uniform\"") != NULL;
        with_init += strstr(line, "\"rankme_cls_init\"") != NULL;
    }
    if (f) fclose(f);
    CHECK(with_margin == 12 && with_collapse == 6 && with_init == 1, "metrics: %d lines with the diagnostics, %d naming "
          "the collapse (want 6: after the 6-iteration warm-up), %d with the init RankMe", with_margin, with_collapse, with_init);

    tiny_config(&cfg, spec, out2);
    char *ov2[] = {"teacher.warmup_teacher_temp=2.0", "teacher.teacher_temp=2.0", "log.every_n_iterations=1",
                   "student.layerscale=1.0", "train.stop_on_collapse=true"};
    for (int i = 0; i < 5; i++) CHECK(config_override(&cfg, ov2[i], err) == 0, "%s", err);
    CHECK(run(&cfg, 0, &res, err) != 0, "a collapsed run with stop_on_collapse did not stop");
    CHECK(strstr(err, "collapse at iteration 9: head uniform") && strstr(err, "last good checkpoint (iteration 6)"),
          "message: %s", err);
    CHECK(res.end_iteration == 9, "stopped at %lld", (long long)res.end_iteration);
    int64_t *its = NULL;
    int n = ckpt_list(out2, &its);
    CHECK(n == 2 && its[0] == 3 && its[1] == 6, "checkpoints: %d, newest %lld (want 3 and 6: none while it warned)", n,
          n ? (long long)its[n - 1] : -1LL);
    free(its);
}

TEST(nan_loss_is_skipped_then_stops_the_run) {
    const char *tmp = test_tmpdir();
    char out[4200];
    const char *spec = make_tiles(tmp, 16);
    snprintf(out, sizeof out, "%s/run", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    tiny_config(&cfg, spec, out);
    setenv("DINOTRAIN_INJECT_NAN", "4", 1); // one bad step: skipped, the run goes on
    int rc = run(&cfg, 0, &res, err);
    CHECK(rc == 0, "%s", err);
    CHECK(res.skipped_steps == 1 && res.end_iteration == 12, "skipped %lld", (long long)res.skipped_steps);
    CHECK(isfinite(res.last_total_loss), "loss %g after a skipped step", res.last_total_loss);

    snprintf(out, sizeof out, "%s/run2", tmp);
    tiny_config(&cfg, spec, out);
    setenv("DINOTRAIN_INJECT_NAN", "4,5,6,7,8,9,10", 1); // a diverged run: stops, checkpoint 3 intact
    rc = run(&cfg, 0, &res, err);
    unsetenv("DINOTRAIN_INJECT_NAN");
    CHECK(rc == -1 && strstr(err, "consecutive"), "a diverged run must stop: rc %d, %s", rc, err);
    // the newest checkpoint (6, taken while the bad steps were being skipped) is valid and finite
    Ckpt c;
    CHECK(ckpt_open_latest(&c, out, NULL, err) == 1 && c.iteration == 6, "last good checkpoint: %s", err);
    int nonfinite = 0;
    for (int i = 0; i < c.st.n; i++) {
        const float *v = c.st.t[i].data;
        for (size_t j = 0; j < c.st.t[i].nbytes / 4; j++) nonfinite += !isfinite(v[j]);
    }
    CHECK(nonfinite == 0, "%d non-finite values in the checkpoint", nonfinite);
    ckpt_close(&c);
}

TEST(bad_config_refused_before_start) {
    const char *tmp = test_tmpdir();
    char cmd[9000], cfgpath[4200], log[4300];
    snprintf(cfgpath, sizeof cfgpath, "%s/bad.yaml", tmp);
    FILE *f = fopen(cfgpath, "w");
    fprintf(f, "base: %s\noptim:\n  base_lrr: 0.1\ntrain:\n  output_dir: %s/out\n", test_src_path("configs/demo.yaml"),
            tmp);
    fclose(f);
    snprintf(log, sizeof log, "%s/log.txt", tmp);
    snprintf(cmd, sizeof cmd, "./dinotrain %s > %s 2>&1", cfgpath, log);
    int rc = system(cmd);
    CHECK(rc != 0, "dinotrain accepted an unknown key");
    char buf[4096] = {0};
    f = fopen(log, "r");
    CHECK(f != NULL, "no log");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
    }
    CHECK(strstr(buf, "base_lrr") && strstr(buf, "did you mean") && strstr(buf, "bad.yaml"),
          "message should name the key, the file and the fix: %s", buf);
    struct stat st;
    char outdir[4300];
    snprintf(outdir, sizeof outdir, "%s/out", tmp);
    CHECK(stat(outdir, &st) != 0, "output_dir was created although the config was refused");
}

TEST(missing_data_source_named) {
    const char *tmp = test_tmpdir();
    char out[4200], missing[4200];
    snprintf(out, sizeof out, "%s/run", tmp);
    snprintf(missing, sizeof missing, "%s/no_such_folder", tmp);
    Config cfg;
    char err[DINO_ERRLEN], spec[4300];
    snprintf(spec, sizeof spec, "folder:%s", missing);
    tiny_config(&cfg, spec, out);
    TrainResult res;
    CHECK(run(&cfg, 0, &res, err) == -1, "a missing source must fail");
    CHECK(strstr(err, "no_such_folder") != NULL, "error does not name the source: %s", err);
}

// student.pretrained_weights from an exported teacher, and the periodic k-NN evaluation.
TEST(pretrained_init_and_periodic_knn) {
    const char *tmp = test_tmpdir();
    char outa[4200], outb[4200], exp[4200], cmd[13000], kv[5][4400];
    const char *spec = make_tiles(tmp, 16);
    snprintf(outa, sizeof outa, "%s/a", tmp);
    snprintf(outb, sizeof outb, "%s/b", tmp);
    snprintf(exp, sizeof exp, "%s/export", tmp);
    Config cfg;
    char err[DINO_ERRLEN];
    TrainResult res;
    tiny_config(&cfg, spec, outa);
    CHECK(run(&cfg, 6, &res, err) == 0, "%s", err);
    snprintf(cmd, sizeof cmd, "./dinoexport --format dinov2 --out %s %s > %s/export.log 2>&1", exp, outa, tmp);
    CHECK(system(cmd) == 0, "dinoexport failed (see %s/export.log)", tmp);

    // a labeled set for k-NN: two texture classes in sub-folders
    char lab[4200];
    snprintf(lab, sizeof lab, "%s/labeled", tmp);
    mkdir(lab, 0755);
    for (int c = 0; c < 2; c++) {
        char dir[4300];
        snprintf(dir, sizeof dir, "%s/class%d", lab, c);
        mkdir(dir, 0755);
        for (int i = 0; i < 6; i++) {
            char path[4400];
            snprintf(path, sizeof path, "%s/%d.jpg", dir, i);
            write_synth_jpeg(path, 3, 4 * i + c, 4, 64);
        }
    }
    // lr is 0 at iteration 0 (linear warmup from 0): after one step the student is still the import
    tiny_config(&cfg, spec, outb);
    snprintf(kv[0], sizeof kv[0], "student.pretrained_weights=%s/model.safetensors", exp);
    snprintf(kv[1], sizeof kv[1], "evaluation.knn_train=folder:%s", lab);
    snprintf(kv[2], sizeof kv[2], "evaluation.knn_test=folder:%s", lab);
    snprintf(kv[3], sizeof kv[3], "evaluation.eval_period_iterations=1");
    snprintf(kv[4], sizeof kv[4], "checkpoint.every_n_iterations=1");
    for (int i = 0; i < 5; i++) CHECK(config_override(&cfg, kv[i], err) == 0, "%s: %s", kv[i], err);
    CHECK(config_validate(&cfg, err) == 0, "%s", err);
    CHECK(run(&cfg, 1, &res, err) == 0, "%s", err);

    Ckpt a, b;
    CHECK(ckpt_open_latest(&a, outa, NULL, err) == 1, "%s", err);
    CHECK(ckpt_open_latest(&b, outb, NULL, err) == 1 && b.iteration == 1, "%s", err);
    int compared = 0, differ = 0;
    for (int i = 0; i < a.st.n; i++) {
        const char *name = a.st.t[i].name;
        if (strncmp(name, "teacher.backbone.", 17) != 0 || strstr(name, "mask_token")) continue;
        char sname[300];
        snprintf(sname, sizeof sname, "student.%s", name + 8);
        const StTensor *s = st_get(&b.st, sname);
        CHECK(s && s->nbytes == a.st.t[i].nbytes, "%s missing", sname);
        if (s && s->nbytes == a.st.t[i].nbytes) {
            compared++;
            differ += memcmp(s->data, a.st.t[i].data, s->nbytes) != 0;
        }
    }
    CHECK(compared > 10 && differ == 0, "%d of %d backbone tensors differ from the imported teacher", differ, compared);
    ckpt_close(&a);
    ckpt_close(&b);

    // the k-NN scores are in the metrics file
    char mpath[4400], buf[65536] = {0};
    snprintf(mpath, sizeof mpath, "%s/training_metrics.jsonl", outb);
    FILE *f = fopen(mpath, "r");
    CHECK(f != NULL, "no metrics file %s", mpath);
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
    }
    CHECK(strstr(buf, "knn_top1_k20") != NULL, "no k-NN record in the metrics: %s", buf);

    // a backbone of another width is refused, naming a tensor
    tiny_config(&cfg, spec, outb);
    CHECK(config_override(&cfg, kv[0], err) == 0, "%s", err);
    CHECK(config_override(&cfg, "student.embed_dim=32", err) == 0, "%s", err);
    CHECK(run(&cfg, 1, &res, err) == -1 && strstr(err, "pretrained") && strstr(err, "shape"),
          "a width mismatch must be refused with the tensor named: %s", err);
}

// Bad tiles among the good ones (truncated JPEGs, headers declaring 60000 x 60000): the run finishes, the
// console line shows how many reads were skipped (the count the metrics file records), and a pixel budget
// below the tiles' size (data.max_image_pixels) ends the run with a message naming the key.
TEST(bad_tiles_skipped_and_shown_on_the_console_line) {
    struct rlimit guard = memory_guard_begin((int64_t)4 << 30); // a regression fails, the box keeps its memory
    const char *tmp = test_tmpdir();
    char out[4200], dir[4300], path[4400], log[4300], err[DINO_ERRLEN];
    const char *spec = make_tiles(tmp, 16);
    snprintf(dir, sizeof dir, "%s/tiles", tmp);
    uint8_t buf[512];
    snprintf(path, sizeof path, "%s/bad_cut3.jpg", dir);
    FILE *f = fopen(path, "wb");
    fwrite("\xFF\xD8\xFF", 1, 3, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/bad_huge.tif", dir);
    f = fopen(path, "wb");
    fwrite(buf, 1, craft_tiff_header(buf, 483, 60000, 60000), f);
    fclose(f);
    size_t n;
    uint8_t *jpg = craft_jpeg_declaring(60000, 60000, &n);
    snprintf(path, sizeof path, "%s/bad_huge.jpg", dir);
    f = fopen(path, "wb");
    fwrite(jpg, 1, n, f);
    fclose(f);
    free(jpg);

    snprintf(out, sizeof out, "%s/run", tmp);
    Config cfg;
    TrainResult res;
    tiny_config(&cfg, spec, out);
    CHECK(config_override(&cfg, "log.every_n_iterations=3", err) == 0, "%s", err);
    snprintf(log, sizeof log, "%s/console.txt", tmp);
    fflush(stdout);
    int saved = dup(1), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    close(fd);
    int rc = run_trainer(&cfg, 0, 0, &res, err);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    CHECK(rc == 0 && res.end_iteration == 12, "the run with bad tiles failed: %s", err);
    static char text[1 << 16];
    f = fopen(log, "r");
    n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    text[n] = 0;
    if (f) fclose(f);
    // the last console line ("12/12 ...") and the last metrics record agree on the count
    const char *last = strstr(text, "12/12 (100.0%)");
    const char *shown = last ? strstr(last, "| corrupt ") : NULL;
    CHECK(shown != NULL, "the final console line does not show the corrupt tiles:\n%s", text);
    long long on_console = shown ? atoll(shown + 10) : -1;
    char mpath[4400];
    static char metrics[1 << 16];
    snprintf(mpath, sizeof mpath, "%s/training_metrics.jsonl", out);
    f = fopen(mpath, "r");
    n = f ? fread(metrics, 1, sizeof metrics - 1, f) : 0;
    metrics[n] = 0;
    if (f) fclose(f);
    const char *rec = NULL;
    for (const char *q = metrics; (q = strstr(q, "\"corrupt_tiles\": ")); q++) rec = q;
    long long in_metrics = rec ? atoll(rec + 17) : -1;
    CHECK(on_console > 0 && on_console == in_metrics, "corrupt tiles: %lld on the console, %lld in the metrics",
          on_console, in_metrics);
    // before any bad read the segment is absent
    CHECK(!strstr(text, "| corrupt 0"), "a zero count is shown:\n%s", text);

    // a budget below 64 x 64: every tile refused, the run stops naming the key
    snprintf(out, sizeof out, "%s/run2", tmp);
    tiny_config(&cfg, spec, out);
    CHECK(config_override(&cfg, "data.max_image_pixels=4000", err) == 0, "%s", err);
    CHECK(config_validate(&cfg, err) == 0, "%s", err);
    CHECK(run(&cfg, 0, &res, err) == -1 && strstr(err, "over the 4 kpx budget (data.max_image_pixels = 4000)"),
          "a budget below the tiles must stop the run: %s", err);
    CHECK(config_override(&cfg, "data.max_image_pixels=0", err) == 0 && config_validate(&cfg, err) != 0 &&
              strstr(err, "data.max_image_pixels"), "a zero budget must be refused: %s", err);
    memory_guard_end(guard);
}

// Checks of the step's scalar block (model/step_scalars.h) shared by the cpu tests (test_step_scalars.c)
// and the cuda ones under the execution layer (test_cuda_ops.c): a training step whose loss is not finite
// leaves the whole training state bit for bit as it was, on any backend.
#pragma once
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"
#include "tests/harness.h"
#include "train/ssl_step.h"

// The training state of an SslModel on the host: everything a step may change.
typedef struct {
    float *student, *teacher, *m, *v, *centres, *grads; // grads: an update clips them in place
    long step;
    DinoStepScalars block;
} SsState;

static inline SsState ss_state_read(SslModel *m, Backend *be) {
    const size_t total = m->tab.total, Kd = (size_t)m->dino_center.K, Ki = (size_t)m->ibot_center.K;
    SsState s = {.student = dino_malloc(sizeof(float) * total), .teacher = dino_malloc(sizeof(float) * total),
                 .m = dino_malloc(sizeof(float) * m->opt.n), .v = dino_malloc(sizeof(float) * m->opt.n),
                 .centres = dino_malloc(sizeof(float) * (Kd + Ki)), .grads = dino_malloc(sizeof(float) * total),
                 .step = m->opt.step};
    be->to_host(be, s.grads, m->grads, sizeof(float) * total);
    be->to_host(be, s.student, m->student, sizeof(float) * total);
    be->to_host(be, s.teacher, m->teacher, sizeof(float) * total);
    be->to_host(be, s.m, m->opt.m, sizeof(float) * m->opt.n);
    be->to_host(be, s.v, m->opt.v, sizeof(float) * m->opt.n);
    be->to_host(be, s.centres, m->dino_center.center, sizeof(float) * Kd);
    be->to_host(be, s.centres + Kd, m->ibot_center.center, sizeof(float) * Ki);
    be->to_host(be, &s.block, m->scalars, sizeof s.block);
    return s;
}

// Puts a state read by ss_state_read back (the host's AdamW count included).
static inline void ss_state_write(SslModel *m, Backend *be, const SsState *s) {
    const size_t total = m->tab.total, Kd = (size_t)m->dino_center.K, Ki = (size_t)m->ibot_center.K;
    be->to_device(be, m->student, s->student, sizeof(float) * total);
    be->to_device(be, m->teacher, s->teacher, sizeof(float) * total);
    be->to_device(be, m->grads, s->grads, sizeof(float) * total);
    be->to_device(be, m->opt.m, s->m, sizeof(float) * m->opt.n);
    be->to_device(be, m->opt.v, s->v, sizeof(float) * m->opt.n);
    be->to_device(be, m->dino_center.center, s->centres, sizeof(float) * Kd);
    be->to_device(be, m->ibot_center.center, s->centres + Kd, sizeof(float) * Ki);
    be->to_device(be, m->scalars, &s->block, sizeof s->block);
    m->opt.step = s->step;
}

static inline void ss_state_free(SsState *s) { free(s->student), free(s->teacher), free(s->m), free(s->v), free(s->centres), free(s->grads); }

// Every part bit for bit (and AdamW's count on the host and on the device).
static inline void ss_state_check_same(const SslModel *m, const SsState *a, const SsState *b, const char *what) {
    const size_t total = m->tab.total, nc = (size_t)m->dino_center.K + m->ibot_center.K;
    CHECK(memcmp(a->student, b->student, sizeof(float) * total) == 0, "%s: the student changed", what);
    CHECK(memcmp(a->teacher, b->teacher, sizeof(float) * total) == 0, "%s: the teacher changed", what);
    CHECK(memcmp(a->m, b->m, sizeof(float) * m->opt.n) == 0 && memcmp(a->v, b->v, sizeof(float) * m->opt.n) == 0,
          "%s: AdamW's moments changed", what);
    CHECK(memcmp(a->centres, b->centres, sizeof(float) * nc) == 0, "%s: the centres changed", what);
    CHECK(a->step == b->step, "%s: AdamW's count on the host %ld, expected %ld", what, b->step, a->step);
    CHECK(a->block.state.adam_step == b->block.state.adam_step, "%s: AdamW's count on the device %g, expected %g", what,
          b->block.state.adam_step, a->block.state.adam_step);
}

// A small model of every part the update touches: drop-path, masks (iBOT with softmax centering), KoLeo.
static inline void ss_small_config(SslConfig *cfg) {
    char err[DINO_ERRLEN];
    VitConfig vc;
    CHECK(vit_config_from_arch(&vc, "vit_test", 4, 16, 1, "mlp", err) == 0, "%s", err);
    vc.dim = 32, vc.heads = 2, vc.depth = 1, vc.ffn_hidden = 64, vc.layerscale = 0.5f, vc.drop_path_rate = 0.2f;
    ssl_config_default(cfg, &vc);
    cfg->dino_head = (HeadConfig){.in_dim = 32, .hidden = 64, .bottleneck = 16, .K = 128, .nlayers = 3};
    cfg->batch = 4, cfg->n_local = 1, cfg->global_crop = 16, cfg->local_crop = 8;
    cfg->clip_grad = 0.5f; // clipping active
}

// Batch `it` of a fixed sequence (crops, masks, drop key); nan: one NaN pixel in a global crop.
typedef struct {
    float *g, *l;
    uint8_t *masks;
    SslBatch b;
    ScheduleValues sv;
} SsBatch;

static inline SsBatch ss_batch(const SslConfig *c, int it, int nan) {
    const int B = c->batch, NL = c->n_local, GC = c->global_crop, LC = c->local_crop, N = (GC / 4) * (GC / 4);
    SsBatch s = {.g = dino_malloc(sizeof(float) * 2 * B * 3 * GC * GC),
                 .l = dino_malloc(sizeof(float) * NL * B * 3 * LC * LC),
                 .masks = dino_calloc((size_t)2 * B * N, 1)};
    Rng r = rng_make(109, (uint64_t)it, 0, 0);
    for (int i = 0; i < 2 * B * 3 * GC * GC; i++) s.g[i] = (float)rng_normal(&r);
    for (int i = 0; i < NL * B * 3 * LC * LC; i++) s.l[i] = (float)rng_normal(&r);
    if (nan) s.g[3 * GC * GC + 17] = NAN;
    for (int i = 0; i < 2 * B; i += 2)
        for (int k = 0; k < 5; k++) s.masks[(size_t)i * N + (size_t)(k * 3 + it + i) % N] = 1;
    s.b = (SslBatch){.global_crops = s.g, .local_crops = s.l, .masks = s.masks, .drop_key = rng_make(5, 15, (uint64_t)it, 0)};
    // every schedule value differs from step to step
    s.sv = (ScheduleValues){.lr = 1e-3 * (1 + it) / 3.0, .wd = 0.04 + 0.01 * it, .momentum = 0.99 - 0.013 * it,
                            .teacher_temp = 0.04 + 0.007 * it, .last_layer_lr = it == 0 ? 0 : 7e-4 / (it + 0.3)};
    return s;
}

static inline void ss_batch_free(SsBatch *s) { free(s->g), free(s->l), free(s->masks); }

// A good step, then NaN steps: each leaves the state bit-identical (ssl_step returns -1); the good step
// after them gives the bits of a run in which the NaN steps never happened (AdamW's count did not move).
// read_late: the NaN steps' statistics are read only after the following good step's update (the host
// learns of the NaN late, as with deferred read-backs).
static inline void ss_nan_steps_leave_state(Backend *be, int read_late) {
    char err[DINO_ERRLEN];
    SslConfig cfg;
    ss_small_config(&cfg);
    SslModel a, b;
    CHECK(ssl_model_init(&a, be, &cfg, 7, err) == 0 && ssl_model_init(&b, be, &cfg, 7, err) == 0, "%s", err);
    SsBatch b0 = ss_batch(&cfg, 0, 0), bn = ss_batch(&cfg, 1, 1), b2 = ss_batch(&cfg, 2, 0);
    SslStepStats st;
    CHECK(ssl_step(&a, be, NULL, &b0.b, &b0.sv, &st, err) == 0, "%s", err);
    CHECK(ssl_step(&b, be, NULL, &b0.b, &b0.sv, &st, err) == 0, "%s", err);
    SsState before = ss_state_read(&a, be);
    DinoStepScalars late[2]; // read_late: the blocks as a replayed step's graph would copy them
    for (int k = 0; k < 2; k++) { // two NaN steps in a row
        if (read_late) {
            CHECK(ssl_forward_backward(&a, be, NULL, &bn.b, &bn.sv, &st, err) != 0, "a NaN batch passed");
            ssl_update(&a, be, &bn.sv, &st);
            be->to_host(be, &late[k], a.scalars, sizeof late[k]);
        } else {
            CHECK(ssl_step(&a, be, NULL, &bn.b, &bn.sv, &st, err) != 0, "a NaN batch passed");
            SsState after = ss_state_read(&a, be);
            ss_state_check_same(&a, &before, &after, "a NaN step");
            ss_state_free(&after);
        }
    }
    // the good step: in `a` after the NaN steps, in `b` directly
    CHECK(ssl_forward_backward(&a, be, NULL, &b2.b, &b2.sv, &st, err) == 0, "%s", err);
    ssl_update(&a, be, &b2.sv, &st);
    if (read_late) // the host learns of the two NaN steps only now
        for (int k = 0; k < 2; k++)
            CHECK(ssl_step_stats_from_block(&a, &late[k], &st) != 0, "NaN step %d read as applied", k);
    CHECK(ssl_read_step_stats(&a, be, &st) == 0, "a good step read as not applied");
    CHECK(ssl_step(&b, be, NULL, &b2.b, &b2.sv, &st, err) == 0, "%s", err);
    SsState sa = ss_state_read(&a, be), sb = ss_state_read(&b, be);
    CHECK(sb.step == 2 && sb.block.state.adam_step == 2, "two steps applied: count %ld on the host, %g on the device",
          sb.step, sb.block.state.adam_step);
    ss_state_check_same(&a, &sb, &sa, read_late ? "NaN steps read late, then a good step, vs the good step alone"
                                                : "NaN steps then a good step vs the good step alone");
    ss_state_free(&before), ss_state_free(&sa), ss_state_free(&sb);
    ss_batch_free(&b0), ss_batch_free(&bn), ss_batch_free(&b2);
    ssl_model_free(&a, be), ssl_model_free(&b, be);
}

// The frozen distillation teacher (see distill_teacher.h).
#include "train/distill_teacher.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/check.h"
#include "train/checkpoint.h"
#include "train/pretrained.h"

static int is_dir(const char *p) {
    struct stat s;
    return stat(p, &s) == 0 && S_ISDIR(s.st_mode);
}

// weights: a training output dir (its newest valid checkpoint), one checkpoint dir, or a weights file.
static int load_weights(DistillTeacher *t, float *host, const char *weights, int verbose, char *err) {
    char e2[DINO_ERRLEN], probe[4200];
    if (strcmp(weights, "ignore") == 0) { // dinov3's test setting: the teacher keeps its random init
        if (verbose) printf("dinotrain: note: distillation.checkpoint_path is 'ignore': the teacher is randomly initialised (tests only)\n");
        return 0;
    }
    if (is_dir(weights)) {
        Ckpt c;
        snprintf(probe, sizeof probe, "%s/state.json", weights);
        int rc = access(probe, R_OK) == 0 ? ckpt_open(&c, weights, e2) : ckpt_open_latest(&c, weights, stderr, e2) == 1 ? 0 : -1;
        if (rc) {
            dino_seterr(err, "distillation.checkpoint_path %s: %s", weights,
                        e2[0] ? e2 : "no checkpoint in it (give a training output_dir, a checkpoint dir or a weights file)");
            return -1;
        }
        // the run's EMA teacher, heads included
        rc = ckpt_read_param_table(&c, "teacher.", &t->tab, host, e2);
        if (rc) dino_seterr(err, "distillation.checkpoint_path %s: %s (does distillation.full_cfg_path describe it?)", c.dir, e2);
        else if (verbose) printf("dinotrain: teacher from %s (iteration %lld), backbone and heads\n", c.dir, (long long)c.iteration);
        ckpt_close(&c);
        return rc;
    }
    PretrainedOptions po = {.verbose = verbose};
    if (pretrained_load(&t->vit, &t->tab, "backbone.", host, weights, &po, NULL, e2)) {
        dino_seterr(err, "distillation.checkpoint_path: %s", e2);
        return -1;
    }
    if (verbose)
        printf("dinotrain: note: the teacher's heads are not in %s: they keep their fresh init (targets from "
               "random heads; a training checkpoint carries the trained ones)\n", weights);
    return 0;
}

int distill_teacher_init(DistillTeacher *t, Backend *be, const Config *tcfg, Centering centering,
                         float center_momentum, int B, int Bs, int crop, int max_masked, int max_masked_s,
                         const char *weights, int verbose, char *err) {
    memset(t, 0, sizeof *t);
    char e2[DINO_ERRLEN];
    SslConfig sc; // the teacher's model as its own run builds it
    if (config_to_ssl(tcfg, &sc, e2)) {
        dino_seterr(err, "distillation.full_cfg_path: %s", e2);
        return -1;
    }
    t->vit_cfg = sc.vit;
    if (vit_check_crop(&t->vit_cfg, crop, e2)) {
        dino_seterr(err, "distillation teacher: global crops of %d px: %s", crop, e2);
        return -1;
    }
    t->separate_ibot = sc.ibot_separate_head;
    t->centering = centering;
    t->B = B, t->Bs = Bs, t->crop = crop;
    const int p = t->vit_cfg.patch;
    t->Ng = (crop / p) * (crop / p);
    t->Tg = 1 + t->vit_cfg.n_registers + t->Ng;
    t->max_masked = max_masked > 0 ? max_masked : 0;
    t->max_masked_s = max_masked_s > 0 ? max_masked_s : 0;
    param_table_init(&t->tab);
    vit_build(&t->vit, &t->vit_cfg, &t->tab, "backbone.");
    sc.dino_head.in_dim = sc.ibot_head.in_dim = t->vit_cfg.dim;
    head_build(&t->dino_head, &sc.dino_head, &t->tab, "dino_head.", PARAM_DINO_HEAD);
    if (t->separate_ibot) head_build(&t->ibot_head, &sc.ibot_head, &t->tab, "ibot_head.", PARAM_IBOT_HEAD);
    float *host = dino_calloc(t->tab.total, sizeof(float));
    const uint64_t seed = (uint64_t)tcfg->train.seed; // fresh heads (weights file) as the teacher's run inits them
    vit_init_weights(&t->vit, host, seed);
    head_init_weights(&t->dino_head, host, seed ^ 0xd1u);
    if (t->separate_ibot) head_init_weights(&t->ibot_head, host, seed ^ 0x1b07u);
    if (load_weights(t, host, weights, verbose, err)) {
        free(host);
        distill_teacher_free(t, be);
        return -1;
    }
    t->params = be->alloc(be, sizeof(float) * t->tab.total);
    be->param_copy_register(be, t->params, t->tab.total); // frozen: converted once, here, not per GEMM
    be->to_device(be, t->params, host, sizeof(float) * t->tab.total);
    free(host);
    const Head *ih = t->separate_ibot ? &t->ibot_head : &t->dino_head;
    t->Kd = t->dino_head.cfg.K, t->Ki = ih->cfg.K, t->nbd = t->dino_head.cfg.bottleneck, t->nbi = ih->cfg.bottleneck;
    const int D = t->vit_cfg.dim, MM = t->max_masked, MS = t->max_masked_s;
    teacher_center_init(be, &t->dino_center, t->Kd, center_momentum);
    teacher_center_init(be, &t->ibot_center, t->Ki, center_momentum);
    t->acts = vit_acts_new(be, &t->vit, 2 * B, crop, VIT_ACTS_FORWARD_ONLY);
    if (t->separate_ibot) {
        t->f_dino = head_acts_new(be, &t->dino_head, 2 * B, 0);
        t->f_ibot = head_acts_new(be, &t->ibot_head, MM + 1, 0);
        t->l_dino = head_acts_new(be, &t->dino_head, 2 * Bs, 0);
        t->l_ibot = head_acts_new(be, &t->ibot_head, MS + 1, 0);
    } else { // one head: DINO rows then iBOT rows in one pass, as the SSL step
        t->f_dino = head_acts_new(be, &t->dino_head, 2 * B + MM, 0);
        t->l_dino = head_acts_new(be, &t->dino_head, 2 * Bs + MS, 0);
    }
    t->img = be->alloc(be, sizeof(float) * (size_t)2 * B * 3 * crop * crop);
    t->t_in = be->alloc(be, sizeof(float) * (size_t)(2 * B + MM) * D);
    t->z_in = be->alloc(be, sizeof(float) * ((size_t)2 * Bs * t->nbd + (size_t)(MS + 1) * t->nbi));
    t->zi_in = t->z_in + (size_t)2 * Bs * t->nbd;
    t->P_dino = be->alloc(be, sizeof(float) * (size_t)2 * Bs * t->Kd);
    t->P_ibot = be->alloc(be, sizeof(float) * (size_t)(MS + 1) * t->Ki);
    t->idx_cls = be->alloc(be, sizeof(int) * (size_t)2 * B);
    t->idx_mask = be->alloc(be, sizeof(int) * (size_t)(MM + 1));
    t->idx_host = dino_malloc(sizeof(int) * (size_t)(2 * B + MM + 1));
    // the CLS rows swapped [g2; g1]: row c*B+i is the target for the student's crop c (ssl_step.c)
    for (int r = 0; r < 2 * B; r++) t->idx_host[r] = ((r + B) % (2 * B)) * t->Tg;
    be->to_device(be, t->idx_cls, t->idx_host, sizeof(int) * (size_t)2 * B);
    return 0;
}

void distill_teacher_free(DistillTeacher *t, Backend *be) {
    if (t->acts) vit_acts_free(be, t->acts);
    HeadActs *ha[4] = {t->f_dino, t->f_ibot, t->l_dino, t->l_ibot};
    for (int i = 0; i < 4; i++)
        if (ha[i]) head_acts_free(be, ha[i]);
    void *bufs[] = {t->params, t->img, t->t_in, t->z_in, t->P_dino, t->P_ibot, t->idx_cls, t->idx_mask};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->release(be, bufs[i]);
    if (t->dino_center.center) teacher_center_free(be, &t->dino_center);
    if (t->ibot_center.center) teacher_center_free(be, &t->ibot_center);
    free(t->idx_host);
    vit_free(&t->vit);
    param_table_free(&t->tab);
    memset(t, 0, sizeof *t);
}

int distill_teacher_features(DistillTeacher *t, Backend *be, const float *global_crops, const uint8_t *masks,
                             float *z_dino, float *z_ibot) {
    const int B = t->B, D = t->vit_cfg.dim, Ng = t->Ng, R = t->vit_cfg.n_registers;
    be->to_device(be, t->img, global_crops, sizeof(float) * (size_t)2 * B * 3 * t->crop * t->crop);
    int n_m = 0;
    if (masks && z_ibot)
        for (int i = 0; i < 2 * B; i++)
            for (int n = 0; n < Ng; n++)
                if (masks[(size_t)i * Ng + n]) {
                    DINO_ASSERT(n_m < t->max_masked, "distillation teacher: more than %d masked tokens", t->max_masked);
                    t->idx_host[n_m++] = i * t->Tg + 1 + R + n;
                }
    if (n_m) be->to_device(be, t->idx_mask, t->idx_host, sizeof(int) * (size_t)n_m);
    // the teacher as in the SSL step: unmasked global crops, no stochastic depth
    const float *xt = vit_forward(be, &t->vit, t->params, t->acts, t->img, NULL, NULL);
    be->gather_rows(be, t->t_in, xt, t->idx_cls, 2 * B, (size_t)D);
    if (n_m) be->gather_rows(be, t->t_in + (size_t)2 * B * D, xt, t->idx_mask, n_m, (size_t)D);
    if (t->separate_ibot) {
        be->to_host(be, z_dino, head_forward_bottleneck(be, &t->dino_head, t->params, t->f_dino, t->t_in, 2 * B),
                    sizeof(float) * (size_t)2 * B * t->nbd);
        if (n_m)
            be->to_host(be, z_ibot,
                        head_forward_bottleneck(be, &t->ibot_head, t->params, t->f_ibot, t->t_in + (size_t)2 * B * D, n_m),
                        sizeof(float) * (size_t)n_m * t->nbi);
    } else {
        const float *z = head_forward_bottleneck(be, &t->dino_head, t->params, t->f_dino, t->t_in, 2 * B + n_m);
        be->to_host(be, z_dino, z, sizeof(float) * (size_t)2 * B * t->nbd);
        if (n_m) be->to_host(be, z_ibot, z + (size_t)2 * B * t->nbd, sizeof(float) * (size_t)n_m * t->nbi);
    }
    return n_m;
}

void distill_teacher_targets_from_features(DistillTeacher *t, Backend *be, Collective *coll, const float *z_dino,
                                           const float *z_ibot, int n_m, float teacher_temp, float *P_dino,
                                           float *P_ibot) {
    const int Bs = t->Bs;
    DINO_ASSERT(n_m <= t->max_masked_s, "distillation teacher: %d masked tokens, room for %d", n_m, t->max_masked_s);
    be->to_device(be, t->z_in, z_dino, sizeof(float) * (size_t)2 * Bs * t->nbd);
    if (n_m) be->to_device(be, t->zi_in, z_ibot, sizeof(float) * (size_t)n_m * t->nbi);
    const float *l_dino, *l_ibot = NULL;
    if (t->separate_ibot) {
        l_dino = head_forward_last_layer(be, &t->dino_head, t->params, t->l_dino, t->z_in, 2 * Bs);
        if (n_m) l_ibot = head_forward_last_layer(be, &t->ibot_head, t->params, t->l_ibot, t->zi_in, n_m);
    } else { // z_in and zi_in are contiguous: one pass over both, as the SSL step
        l_dino = head_forward_last_layer(be, &t->dino_head, t->params, t->l_dino, t->z_in, 2 * Bs + n_m);
        l_ibot = l_dino + (size_t)2 * Bs * t->Kd;
    }
    dino_teacher_targets(be, coll, t->centering, &t->dino_center, t->P_dino, l_dino, 2 * Bs, teacher_temp);
    be->to_host(be, P_dino, t->P_dino, sizeof(float) * (size_t)2 * Bs * t->Kd);
    // every rank takes part in the iBOT sums (Sinkhorn-Knopp counts), with or without masked tokens
    if (P_ibot) {
        ibot_teacher_targets(be, coll, t->centering, &t->ibot_center, t->P_ibot, l_ibot, n_m, teacher_temp);
        if (n_m) be->to_host(be, P_ibot, t->P_ibot, sizeof(float) * (size_t)n_m * t->Ki);
    }
}

int distill_teacher_targets(DistillTeacher *t, Backend *be, Collective *coll, const float *global_crops,
                            const uint8_t *masks, float teacher_temp, float *P_dino, float *P_ibot) {
    DINO_ASSERT(t->B == t->Bs, "distill_teacher_targets: the share is not the student's batch");
    float *zd = dino_malloc(sizeof(float) * (size_t)2 * t->B * t->nbd);
    float *zi = dino_malloc(sizeof(float) * ((size_t)t->max_masked * t->nbi + 1));
    int n_m = distill_teacher_features(t, be, global_crops, masks, zd, P_ibot ? zi : NULL);
    distill_teacher_targets_from_features(t, be, coll, zd, zi, n_m, teacher_temp, P_dino, P_ibot);
    free(zd);
    free(zi);
    return n_m;
}

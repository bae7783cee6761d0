// Multi-student distillation (see distill.h). Per iteration, on every rank:
//   loader -> this rank's share of the global batch -> frozen teacher: backbone and head MLPs -> the
//   normalised bottleneck features of the share's DINO rows and masked tokens
//   -> all-gather (world): crops, masks, features -> this rank's part of its student's batch
//   -> the teacher's last layers and centering over the student's ranks -> targets
//   -> student forward/backward against the targets -> gradients averaged over the student's ranks
//   -> clip + AdamW + EMA -> metrics, checkpoint (the student's first rank).
#include "train/distill.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/clock.h"
#include "data/loader.h"
#include "data/masking.h"
#include "data/source.h"
#include "train/checkpoint.h"
#include "train/distill_teacher.h"
#include "train/metrics.h"
#include "train/pretrained.h"
#include "train/ssl_step.h"
#ifdef DINO_HAVE_CUDA
#include "model/cuda/backend_cuda.h"
#include "model/cuda/cuda_device.h"
#endif

#define MAX_CONSECUTIVE_BAD_STEPS 5
#define RNG_STREAM_DROP_PATH 0x64726f70ULL // as train.c

int distill_student_config(const Config *cfg, int index, Config *s, char *err) {
    const CfgMultiDistillation *md = &cfg->multidistillation;
    const CfgStudentRef *ref = &md->students[index];
    char e2[DINO_ERRLEN];
    if (config_load(s, ref->config_path, 0, NULL, e2)) {
        dino_seterr(err, "multidistillation.students[%d] '%s': %s", index, ref->name, e2);
        return -1;
    }
    config_apply_own_keys(s, cfg); // default <- student file <- main file <- command line, as dinov3
    // what every student must share: one batch, one teacher, checkpoints in step
    s->data = cfg->data;
    s->crops = cfg->crops;
    s->augment = cfg->augment;
    s->ibot.mask_sample_probability = cfg->ibot.mask_sample_probability;
    memcpy(s->ibot.mask_ratio_min_max, cfg->ibot.mask_ratio_min_max, sizeof s->ibot.mask_ratio_min_max);
    s->train.seed = cfg->train.seed;
    s->train.OFFICIAL_EPOCH_LENGTH = cfg->train.OFFICIAL_EPOCH_LENGTH;
    s->train.num_workers = cfg->train.num_workers;
    snprintf(s->train.centering, CFG_NAME, "%s", cfg->train.centering);
    s->optim.epochs = cfg->optim.epochs;
    s->teacher.warmup_teacher_temp = cfg->teacher.warmup_teacher_temp;
    s->teacher.teacher_temp = cfg->teacher.teacher_temp;
    s->teacher.warmup_teacher_temp_epochs = cfg->teacher.warmup_teacher_temp_epochs;
    s->log = cfg->log;
    s->checkpoint = cfg->checkpoint;
    snprintf(s->backend, CFG_NAME, "%s", cfg->backend);
    snprintf(s->param_dtype, CFG_NAME, "%s", cfg->param_dtype);
    s->collective_timeout_s = cfg->collective_timeout_s;
    s->zero1 = false; // the optimizer of a student is not sharded here
    s->distillation = cfg->distillation;
    s->multidistillation = cfg->multidistillation;
    s->evaluation.eval_period_iterations = 0;
    char out_dir[2 * CFG_STR];
    snprintf(out_dir, sizeof out_dir, "%s/%s", cfg->train.output_dir, ref->name);
    if (strlen(out_dir) >= CFG_STR) {
        dino_seterr(err, "train.output_dir/%s: path too long", ref->name);
        return -1;
    }
    memcpy(s->train.output_dir, out_dir, strlen(out_dir) + 1);
    s->train.batch_size_per_gpu = md->global_batch_size / (ref->ranks_range[1] - ref->ranks_range[0]);
    if (config_validate(s, e2)) {
        dino_seterr(err, "student '%s' (%s) merged with the main config: %s", ref->name, ref->config_path, e2);
        return -1;
    }
    return 0;
}

// ---- the run ----------------------------------------------------------------------------------------

typedef struct {
    const Config *main;
    Config scfg, tcfg, dcfg; // the student's config, the teacher's, the data side (main, batch = share)
    const CfgStudentRef *ref;
    Dist *world, group;
    int group_started;
    Backend *be;
    SslModel m;
    DistillTeacher teacher;
    Collective group_coll;
    float *stage;
    size_t stage_floats;
    TileSource *src;
    Loader *loader;
    ScheduleConfig sched, tsched;
    MetricsLog *metrics;
    int W, ns, q;           // world, the student's ranks, this rank among them
    int G, Bt, Bs;          // global batch, share per rank, student batch per rank
    int Ng, nL, gsz, lsz;   // tokens per global crop, local crops, floats per global / local crop
    int Kd, Ki, nbd, nbi;   // prototypes and bottleneck widths (DINO, iBOT rows)
    int share_mm, student_mm; // masked-token capacities (share, student batch)
    int with_masks, quiet;
    MaskGenerator maskgen;  // this rank's iBOT masks for its share (the loader's are the same on every rank)
    MaskBatch share_masks;
    // host buffers: share, gathered (world), student batch
    float *Z_share, *Zi_share, *glob_all, *loc_all, *Z_all, *Zi_all, *glob_s, *loc_s, *Z_s, *Zi_s, *P_s, *Pi_s;
    uint8_t *mask_share, *mask_all, *mask_s;
    int64_t *n_all;
    int64_t total;
} Distill;

static float *stage_buf(Distill *x, size_t n) {
    if (n > x->stage_floats) {
        free(x->stage);
        x->stage = dino_malloc(sizeof(float) * n);
        x->stage_floats = n;
    }
    return x->stage;
}

// The teacher's centering sums (Sinkhorn-Knopp, centres) over the student's ranks, which hold the global
// batch once (dinov3 sums over the process subgroup), through host memory (any backend).
static void group_sum(Collective *c, float *buf, size_t n) {
    Distill *x = c->ctx;
    char err[DINO_ERRLEN];
    float *h = stage_buf(x, n);
    x->be->to_host(x->be, h, buf, sizeof(float) * n);
    if (dist_allreduce_sum_f32(&x->group, h, n, err)) dist_abort(x->world, "%s", err);
    x->be->to_device(x->be, buf, h, sizeof(float) * n);
}

static int create_backend(Distill *x, char *err) {
    if (strcmp(x->main->backend, "cpu") == 0) {
        x->be = backend_cpu_new();
        return 0;
    }
#ifdef DINO_HAVE_CUDA
    char e2[DINO_ERRLEN];
    const int n_dev = dino_cuda_device_count();
    if (n_dev == 0) {
        dino_seterr(err, "backend 'cuda': rank %d sees no CUDA device; set backend: cpu", x->world->rank);
        return -1;
    }
    x->be = backend_cuda_new(x->world->local_rank % n_dev, e2);
    if (!x->be) {
        dino_seterr(err, "backend 'cuda' on rank %d: %s", x->world->rank, e2);
        return -1;
    }
    backend_cuda_set_gemm_precision(x->be, strcmp(x->main->param_dtype, "fp32") == 0 ? CUDA_GEMM_FP32 : CUDA_GEMM_BF16);
    return 0;
#else
    dino_seterr(err, "backend '%s': this build has no CUDA support; set backend: cpu", x->main->backend);
    return -1;
#endif
}

static int read_tile(void *ctx, int64_t index, uint64_t seed, Image *out, char *err) {
    return source_read_rgb(ctx, index, seed, out, err);
}

// The data side: the main config's sources, crops and masks, this rank's share of the global batch.
static int open_data(Distill *x, char *err) {
    const Config *c = &x->dcfg;
    if (c->data.n_sources == 0) {
        dino_seterr(err, "data.sources is empty: name at least one tile source (see docs/data-sources.md)");
        return -1;
    }
    char spec[CFG_MAX_SOURCES * (CFG_STR + 1)] = "", e2[DINO_ERRLEN];
    for (int i = 0; i < c->data.n_sources; i++) {
        if (i) strcat(spec, "+");
        strcat(spec, c->data.sources[i]);
    }
    x->src = source_open(spec, e2);
    if (!x->src || source_count(x->src) <= 0) {
        dino_seterr(err, "data source '%s': %s", spec, x->src ? "holds no tiles" : e2);
        return -1;
    }
    double smin = c->crops.global_crops_scale[0] > 0 ? c->crops.global_crops_scale[0] : 1.0;
    source_set_min_side(x->src, (int)ceil(c->crops.global_crops_size.v[0] / sqrt(smin)));
    source_set_max_pixels(x->src, c->data.max_image_pixels);
    LoaderConfig lc;
    config_to_loader(c, x->world->rank, x->W, &lc);
    lc.mask_probability = 0; // the masks are drawn per share here (next_batch)
    x->loader = loader_create(&lc, source_count(x->src), read_tile, x->src, e2);
    if (!x->loader) {
        dino_seterr(err, "data loader: %s", e2);
        return -1;
    }
    return 0;
}

static int load_pretrained_student(Distill *x, char *err) {
    const size_t n = x->m.tab.total;
    float *host = dino_malloc(sizeof(float) * n);
    x->be->to_host(x->be, host, x->m.student, sizeof(float) * n);
    PretrainedOptions po = {.verbose = 0};
    char e2[DINO_ERRLEN];
    int rc = pretrained_load(&x->m.vit, &x->m.tab, "backbone.", host, x->scfg.student.pretrained_weights, &po, NULL, e2);
    if (rc) dino_seterr(err, "student '%s': student.pretrained_weights: %s", x->ref->name, e2);
    else {
        x->be->to_device(x->be, x->m.student, host, sizeof(float) * n);
        x->be->to_device(x->be, x->m.teacher, host, sizeof(float) * n);
    }
    free(host);
    return rc;
}

// ---- checkpoints (the student's first rank writes; the format of a normal run) -----------------------

static int save_checkpoint(Distill *x, int64_t iterations_done, char *path_out, char *err) {
    Backend *be = x->be;
    const ParamTable *tab = &x->m.tab;
    const size_t n = tab->total;
    float *host = dino_malloc(sizeof(float) * 4 * n);
    be->to_host(be, host, x->m.student, sizeof(float) * n);
    be->to_host(be, host + n, x->m.teacher, sizeof(float) * n);
    be->to_host(be, host + 2 * n, x->m.opt.m, sizeof(float) * n);
    be->to_host(be, host + 3 * n, x->m.opt.v, sizeof(float) * n);
    CkptWriter *w = ckpt_writer_new();
    ckpt_writer_param_table(w, "student.", tab, host);
    ckpt_writer_param_table(w, "teacher.", tab, host + n); // the student's EMA: what dinoexport exports
    ckpt_writer_param_table(w, "adamw_m.", tab, host + 2 * n);
    ckpt_writer_param_table(w, "adamw_v.", tab, host + 3 * n);
    // the frozen teacher's centres (softmax centering keeps state; the same on every rank)
    const int Kd = x->teacher.dino_center.K, Ki = x->teacher.ibot_center.K;
    float *cd = dino_malloc(sizeof(float) * (size_t)(Kd + Ki));
    be->to_host(be, cd, x->teacher.dino_center.center, sizeof(float) * (size_t)Kd);
    be->to_host(be, cd + Kd, x->teacher.ibot_center.center, sizeof(float) * (size_t)Ki);
    int64_t sd[1] = {Kd}, si[1] = {Ki};
    ckpt_writer_tensor(w, "dino_center", 1, sd, cd);
    ckpt_writer_tensor(w, "ibot_center", 1, si, cd + Kd);
    const int64_t position = loader_position(x->loader);
    LoaderStats ls = loader_stats(x->loader);
    ckpt_writer_int(w, "iteration", iterations_done);
    ckpt_writer_int(w, "adamw.step", x->m.opt.step);
    ckpt_writer_int(w, "loader.position", position);
    ckpt_writer_int(w, "loader.samples", position * x->G); // the global batch is the same on any world
    ckpt_writer_int(w, "loader.reads", ls.reads);
    ckpt_writer_int(w, "loader.corrupt", ls.corrupt);
    ckpt_writer_int(w, "world_size", x->W);
    ckpt_writer_int(w, "seed", x->scfg.train.seed);
    ckpt_writer_str(w, "distillation.student", x->ref->name);
    ckpt_writer_str(w, "distillation.teacher", x->main->distillation.checkpoint_path);
    char *yaml = config_to_yaml(&x->scfg);
    ckpt_writer_str(w, "config", yaml);
    free(yaml);
    int rc = ckpt_save(w, x->scfg.train.output_dir, iterations_done, x->scfg.checkpoint.keep_last, path_out, err);
    ckpt_writer_free(w);
    free(host);
    free(cd);
    return rc;
}

static int load_set(Distill *x, const Ckpt *c, const char *prefix, float *dev, char *err) {
    float *host = dino_calloc(x->m.tab.total, sizeof(float));
    int rc = ckpt_read_param_table(c, prefix, &x->m.tab, host, err);
    if (!rc) x->be->to_device(x->be, dev, host, sizeof(float) * x->m.tab.total);
    free(host);
    return rc;
}

static int load_center(Distill *x, const Ckpt *c, const char *name, TeacherCenter *tc, char *err) {
    float *h = dino_malloc(sizeof(float) * (size_t)tc->K);
    int64_t shape[1] = {tc->K};
    int rc = ckpt_read_tensor(c, name, 1, shape, h, err);
    if (!rc) x->be->to_device(x->be, tc->center, h, sizeof(float) * (size_t)tc->K);
    free(h);
    return rc;
}

// Every student resumes at the same iteration: the newest one all of them have a checkpoint of (a crash
// can leave one student a checkpoint ahead). Returns it (0: from scratch), or -1.
static int64_t resume(Distill *x, char *err) {
    const char *dir = x->scfg.train.output_dir;
    Ckpt c;
    char e2[DINO_ERRLEN] = "";
    int found = ckpt_open_latest(&c, dir, x->q == 0 ? stderr : NULL, e2);
    int64_t mine = found == 1 ? c.iteration : 0;
    if (found == 1) ckpt_close(&c);
    if (found < 0) mine = -1;
    int64_t *all = dino_malloc(sizeof(int64_t) * (size_t)x->W);
    if (dist_allgather(x->world, &mine, all, sizeof mine, e2)) dist_abort(x->world, "%s", e2);
    int64_t it = INT64_MAX;
    int broken = 0;
    for (int r = 0; r < x->W; r++) {
        if (all[r] < 0) broken = 1;
        if (all[r] < it) it = all[r];
    }
    free(all);
    if (broken) {
        dino_seterr(err, "cannot resume: %s", found < 0 ? e2 : "another student's checkpoints are all damaged");
        return -1;
    }
    if (it == 0) return 0;
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s/ckpt_%09lld", dir, CKPT_DIR, (long long)it);
    if (ckpt_open(&c, path, e2)) {
        dino_seterr(err, "cannot resume student '%s' at iteration %lld (the newest iteration every student has "
                         "a checkpoint of): %s",
                    x->ref->name, (long long)it, e2);
        return -1;
    }
    int64_t step = 0, samples = 0;
    int rc = load_set(x, &c, "student.", x->m.student, e2);
    if (!rc) rc = load_set(x, &c, "teacher.", x->m.teacher, e2);
    if (!rc) rc = load_set(x, &c, "adamw_m.", x->m.opt.m, e2);
    if (!rc) rc = load_set(x, &c, "adamw_v.", x->m.opt.v, e2);
    if (!rc) rc = load_center(x, &c, "dino_center", &x->teacher.dino_center, e2);
    if (!rc) rc = load_center(x, &c, "ibot_center", &x->teacher.ibot_center, e2);
    if (!rc) rc = ckpt_get_int(&c, "adamw.step", &step, e2);
    if (!rc) rc = ckpt_get_int(&c, "loader.samples", &samples, e2);
    if (rc) {
        dino_seterr(err, "cannot resume from %s: %s", c.dir, e2);
        ckpt_close(&c);
        return -1;
    }
    x->m.opt.step = step;
    loader_set_position(x->loader, samples / x->G);
    ckpt_close(&c);
    return it;
}

// ---- one iteration's batch ---------------------------------------------------------------------------

void distill_take_part(void *dst, const void *all, size_t item, int crops, int Bt, int Bs, int first) {
    for (int c = 0; c < crops; c++)
        for (int i = 0; i < Bs; i++) {
            const int g = first + i, r = g / Bt, j = g % Bt;
            memcpy((char *)dst + ((size_t)c * Bs + i) * item,
                   (const char *)all + (((size_t)r * crops + c) * Bt + j) * item, item);
        }
}

int distill_take_ibot_rows(float *dst, const float *rows_all, const uint8_t *masks_all, int Bt, int Ng, int share_rows,
                           int K, int first, int Bs) {
    int n = 0;
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < Bs; i++) {
            const int g = first + i, r = g / Bt, j = g % Bt;
            const uint8_t *mr = masks_all + (size_t)r * 2 * Bt * Ng;
            int before = 0; // rows of rank r that come before image (c, j)
            for (int k = 0; k < c * Bt + j; k++)
                for (int t = 0; t < Ng; t++) before += mr[(size_t)k * Ng + t] != 0;
            int cnt = 0;
            for (int t = 0; t < Ng; t++) cnt += mr[((size_t)c * Bt + j) * Ng + t] != 0;
            memcpy(dst + (size_t)n * K, rows_all + ((size_t)r * share_rows + before) * K, sizeof(float) * (size_t)cnt * K);
            n += cnt;
        }
    return n;
}

// Loads this rank's share, runs the teacher on it and assembles the student's batch and targets.
static int next_batch(Distill *x, int64_t it, char *err) {
    char e2[DINO_ERRLEN];
    const Batch *b = loader_next(x->loader, e2);
    if (!b) {
        dino_seterr(err, "data: %s", e2);
        return -1;
    }
    const int Bt = x->Bt, W = x->W;
    // The loader keys its masks by the batch index alone (every rank of a data-parallel run draws the same
    // ones); a student's batch spans several shares, so each share draws its own, keyed by its rank too.
    const uint8_t *masks = NULL;
    if (x->with_masks) {
        const Config *M = x->main;
        const uint64_t seed = (uint64_t)M->train.seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)x->world->rank);
        mask_batch_make(&x->maskgen, M->ibot.mask_sample_probability, M->ibot.mask_ratio_min_max[0],
                        M->ibot.mask_ratio_min_max[1], seed, b->index, &x->share_masks);
        masks = x->share_masks.masks;
    }
    distill_teacher_features(&x->teacher, x->be, b->global_crops, masks, x->Z_share, x->with_masks ? x->Zi_share : NULL);
    const size_t gbytes = sizeof(float) * (size_t)2 * Bt * x->gsz, lbytes = sizeof(float) * (size_t)x->nL * Bt * x->lsz;
    const size_t mbytes = (size_t)2 * Bt * x->Ng, zbytes = sizeof(float) * (size_t)2 * Bt * x->nbd;
    const size_t zibytes = sizeof(float) * (size_t)x->share_mm * x->nbi;
    if (masks) memcpy(x->mask_share, masks, mbytes);
    else memset(x->mask_share, 0, mbytes);
    if (W == 1) {
        memcpy(x->glob_all, b->global_crops, gbytes);
        if (lbytes) memcpy(x->loc_all, b->local_crops, lbytes);
        memcpy(x->mask_all, x->mask_share, mbytes);
        memcpy(x->Z_all, x->Z_share, zbytes);
        if (x->with_masks) memcpy(x->Zi_all, x->Zi_share, zibytes);
    } else {
        int rc = dist_allgather(x->world, b->global_crops, x->glob_all, gbytes, e2);
        if (!rc && lbytes) rc = dist_allgather(x->world, b->local_crops, x->loc_all, lbytes, e2);
        if (!rc) rc = dist_allgather(x->world, x->mask_share, x->mask_all, mbytes, e2);
        if (!rc) rc = dist_allgather(x->world, x->Z_share, x->Z_all, zbytes, e2);
        if (!rc && x->with_masks) rc = dist_allgather(x->world, x->Zi_share, x->Zi_all, zibytes, e2);
        if (rc) dist_abort(x->world, "%s", e2);
    }
    const int first = x->q * x->Bs;
    distill_take_part(x->glob_s, x->glob_all, sizeof(float) * (size_t)x->gsz, 2, Bt, x->Bs, first);
    if (x->nL) distill_take_part(x->loc_s, x->loc_all, sizeof(float) * (size_t)x->lsz, x->nL, Bt, x->Bs, first);
    distill_take_part(x->mask_s, x->mask_all, (size_t)x->Ng, 2, Bt, x->Bs, first);
    distill_take_part(x->Z_s, x->Z_all, sizeof(float) * (size_t)x->nbd, 2, Bt, x->Bs, first);
    int n_m = 0;
    if (x->with_masks) n_m = distill_take_ibot_rows(x->Zi_s, x->Zi_all, x->mask_all, Bt, x->Ng, x->share_mm, x->nbi, first, x->Bs);
    const float tt = (float)schedule_at(&x->tsched, (long)it).teacher_temp;
    distill_teacher_targets_from_features(&x->teacher, x->be, &x->group_coll, x->Z_s, x->Zi_s, n_m, tt, x->P_s,
                                          x->with_masks ? x->Pi_s : NULL);
    return 0;
}

static void mean_over_group(Distill *x, double *v, int n) {
    if (x->group.world == 1) return;
    char err[DINO_ERRLEN];
    if (dist_allreduce_sum_f64(&x->group, v, (size_t)n, err)) dist_abort(x->world, "%s", err);
    for (int i = 0; i < n; i++) v[i] /= x->group.world;
}

// The student's gradients averaged over its ranks (through host memory: any backend).
static void average_grads(Distill *x) {
    if (x->group.world == 1) return;
    char err[DINO_ERRLEN];
    const size_t n = x->m.tab.total;
    float *h = stage_buf(x, n);
    x->be->to_host(x->be, h, x->m.grads, sizeof(float) * n);
    if (dist_allreduce_sum_f32(&x->group, h, n, err)) dist_abort(x->world, "%s", err);
    const float inv = 1.0f / (float)x->group.world;
    for (size_t i = 0; i < n; i++) h[i] *= inv;
    x->be->to_device(x->be, x->m.grads, h, sizeof(float) * n);
}

static int setup(Distill *x, char *err) {
    const Config *M = x->main;
    const CfgMultiDistillation *md = &M->multidistillation;
    char e2[DINO_ERRLEN];
    x->W = x->world->world;
    const int last = md->students[md->n_students - 1].ranks_range[1];
    if (last != x->W) {
        dino_seterr(err, "multidistillation.students: the ranks ranges cover ranks [0, %d) but the job has %d "
                         "processes (start it with %d)",
                    last, x->W, last);
        return -1;
    }
    if (M->crops.global_crops_size.n != 1 || M->crops.local_crops_size.n > 1) {
        dino_seterr(err, "crops.global_crops_size: a distillation run takes one crop size pair (%d given): several "
                         "pairs (the high-resolution phase) are not implemented for distillation",
                    M->crops.global_crops_size.n);
        return -1;
    }
    int s = 0;
    while (x->world->rank >= md->students[s].ranks_range[1]) s++;
    x->ref = &md->students[s];
    x->ns = x->ref->ranks_range[1] - x->ref->ranks_range[0];
    x->G = md->global_batch_size;
    if (x->G % x->W) {
        dino_seterr(err, "multidistillation.global_batch_size %d is not divisible by the %d ranks of the job (each "
                         "loads and runs the teacher on an equal share)",
                    x->G, x->W);
        return -1;
    }
    x->Bt = x->G / x->W, x->Bs = x->G / x->ns;
    if (dist_split(x->world, s, &x->group, e2)) {
        dino_seterr(err, "student groups: %s", e2);
        return -1;
    }
    x->group_started = 1;
    x->q = x->group.rank;
    if (distill_student_config(M, s, &x->scfg, err)) return -1;
    if (config_load(&x->tcfg, M->distillation.full_cfg_path, 0, NULL, e2)) {
        dino_seterr(err, "distillation.full_cfg_path: %s", e2);
        return -1;
    }
    // the data side: the main config with the share as its batch and the teacher's patch grid for masks
    x->dcfg = *M;
    x->dcfg.train.batch_size_per_gpu = x->Bt;
    x->dcfg.student.patch_size = x->tcfg.student.patch_size;
    if (x->scfg.student.patch_size != x->tcfg.student.patch_size) {
        dino_seterr(err, "student '%s' (%s): student.patch_size %d differs from the teacher's %d (%s): the iBOT "
                         "targets are per patch (dinov3 asserts the same)",
                    x->ref->name, x->ref->config_path, x->scfg.student.patch_size, x->tcfg.student.patch_size,
                    M->distillation.full_cfg_path);
        return -1;
    }
    if (create_backend(x, err)) return -1;
    x->group_coll = (Collective){.ctx = x, .rank = x->group.rank, .world = x->group.world, .allreduce_sum_f32 = group_sum};

    const Config *S = &x->scfg;
    x->with_masks = M->ibot.loss_weight > 0 && M->ibot.mask_sample_probability > 0;
    const int gcrop = M->crops.global_crops_size.v[0], lcrop = M->crops.local_crops_size.v[0];
    x->gsz = 3 * gcrop * gcrop;
    x->lsz = 3 * lcrop * lcrop;
    x->nL = M->crops.local_crops_number;
    const int grid = gcrop / x->tcfg.student.patch_size;
    x->Ng = grid * grid;
    x->share_mm = x->with_masks ? mask_batch_upperbound(2 * x->Bt, x->Ng, M->ibot.mask_sample_probability,
                                                        M->ibot.mask_ratio_min_max[0], M->ibot.mask_ratio_min_max[1])
                                : 0;
    if (x->with_masks && x->share_mm < 1) x->share_mm = 1;
    if (x->with_masks) {
        mask_generator_init(&x->maskgen, gcrop, x->tcfg.student.patch_size);
        mask_batch_alloc(&x->share_masks, 2 * x->Bt, x->Ng);
    }
    // the student's images come from at most ceil(Bs / Bt) + 1 shares
    int shares = (x->Bs + x->Bt - 1) / x->Bt + 1;
    if (shares > x->W) shares = x->W;
    x->student_mm = x->with_masks ? shares * x->share_mm : 0;
    if (x->student_mm > 2 * x->Bs * x->Ng) x->student_mm = 2 * x->Bs * x->Ng;

    Centering centering = strcmp(M->train.centering, "sinkhorn_knopp") == 0 ? CENTERING_SINKHORN : CENTERING_SOFTMAX;
    SslConfig sc;
    if (config_to_ssl(S, &sc, e2)) {
        dino_seterr(err, "student '%s': %s", x->ref->name, e2);
        return -1;
    }
    sc.max_masked = x->student_mm > 0 ? x->student_mm : 1;
    sc.staged_upload = 0;
    sc.student_only = 1; // the targets come from the frozen teacher: no EMA-teacher forward
    if (distill_teacher_init(&x->teacher, x->be, &x->tcfg, centering, sc.center_momentum, x->Bt, x->Bs,
                             gcrop, x->share_mm, x->student_mm, M->distillation.checkpoint_path,
                             x->world->rank == 0 && !x->quiet, err))
        return -1;
    x->Kd = x->teacher.Kd, x->Ki = x->teacher.Ki, x->nbd = x->teacher.nbd, x->nbi = x->teacher.nbi;
    const int sKi = sc.ibot_separate_head ? sc.ibot_head.K : sc.dino_head.K;
    if (sc.dino_head.K != x->Kd || (x->with_masks && sKi != x->Ki)) {
        dino_seterr(err, "student '%s' (%s): heads of %d (DINO) / %d (iBOT) prototypes, the teacher's (%s) %d / %d: "
                         "they must match (the targets are the teacher's prototypes)",
                    x->ref->name, x->ref->config_path, sc.dino_head.K, sKi, M->distillation.full_cfg_path, x->Kd, x->Ki);
        return -1;
    }
    if (ssl_model_init(&x->m, x->be, &sc, (uint64_t)S->train.seed, e2)) {
        dino_seterr(err, "student '%s': %s", x->ref->name, e2);
        return -1;
    }
    if (S->student.pretrained_weights[0] && load_pretrained_student(x, err)) return -1;
    if (open_data(x, err)) return -1;
    if (x->q == 0 && config_save_resolved(S, e2)) {
        dino_seterr(err, "%s", e2);
        return -1;
    }
    x->sched = config_to_schedule(S, x->ns);
    x->tsched = config_to_schedule(M, x->W);
    x->total = config_total_iterations(M);

    const int W = x->W, Bt = x->Bt, Bs = x->Bs;
    // features travel between ranks (bottleneck widths), K-wide targets stay on the student's rank
    x->Z_share = dino_malloc(sizeof(float) * (size_t)2 * Bt * x->nbd);
    x->Zi_share = dino_calloc((size_t)(x->share_mm + 1) * x->nbi, sizeof(float));
    x->mask_share = dino_calloc((size_t)2 * Bt * x->Ng, 1);
    x->glob_all = dino_malloc(sizeof(float) * (size_t)W * 2 * Bt * x->gsz);
    x->loc_all = dino_malloc(sizeof(float) * ((size_t)W * x->nL * Bt * x->lsz + 1));
    x->mask_all = dino_malloc((size_t)W * 2 * Bt * x->Ng);
    x->Z_all = dino_malloc(sizeof(float) * (size_t)W * 2 * Bt * x->nbd);
    x->Zi_all = dino_malloc(sizeof(float) * ((size_t)W * x->share_mm * x->nbi + 1));
    x->glob_s = dino_malloc(sizeof(float) * (size_t)2 * Bs * x->gsz);
    x->loc_s = dino_malloc(sizeof(float) * ((size_t)x->nL * Bs * x->lsz + 1));
    x->mask_s = dino_malloc((size_t)2 * Bs * x->Ng);
    x->Z_s = dino_malloc(sizeof(float) * (size_t)2 * Bs * x->nbd);
    x->Zi_s = dino_malloc(sizeof(float) * ((size_t)x->student_mm * x->nbi + 1));
    x->P_s = dino_malloc(sizeof(float) * (size_t)2 * Bs * x->Kd);
    x->Pi_s = dino_malloc(sizeof(float) * ((size_t)x->student_mm * x->Ki + 1));
    return 0;
}

static void teardown(Distill *x) {
    if (x->metrics) metrics_close(x->metrics);
    if (x->loader) loader_destroy(x->loader);
    if (x->src) source_close(x->src);
    if (x->m.work) ssl_model_free(&x->m, x->be);
    if (x->teacher.params) distill_teacher_free(&x->teacher, x->be);
    if (x->be) backend_free(x->be);
    if (x->group_started) dist_finalize(&x->group);
    if (x->share_masks.masks) mask_batch_free(&x->share_masks);
    void *bufs[] = {x->Z_share, x->Zi_share, x->mask_share, x->glob_all, x->loc_all, x->mask_all, x->Z_all, x->Zi_all,
                    x->glob_s,  x->loc_s,    x->mask_s,     x->Z_s,      x->Zi_s, x->P_s,
                    x->Pi_s,    x->stage};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
}

int distill_run(const Config *cfg, Dist *world, const TrainOptions *opt, TrainResult *res, char *name_out,
                char *err) {
    TrainOptions no_opt = {0};
    if (!opt) opt = &no_opt;
    memset(res, 0, sizeof *res);
    Distill *x = dino_calloc(1, sizeof *x);
    x->main = cfg, x->world = world, x->quiet = opt->quiet;
    int rc = -1;
    char e2[DINO_ERRLEN];
    if (setup(x, err)) goto out;
    if (name_out) snprintf(name_out, CFG_NAME, "%s", x->ref->name);
    int64_t start = 0;
    if (!opt->no_resume && (start = resume(x, err)) < 0) goto out;
    int64_t end = x->total;
    if (opt->max_iterations > 0 && start + opt->max_iterations < end) end = start + opt->max_iterations;
    res->start_iteration = res->end_iteration = start;
    const Config *S = &x->scfg;
    if (x->q == 0) {
        char path[4096];
        config_output_path(S, S->log.metrics_file, path, sizeof path);
        if (!(x->metrics = metrics_open(path, start, e2))) {
            dino_seterr(err, "%s", e2);
            goto out;
        }
        if (!opt->quiet) {
            printf("dinotrain: student '%s' on ranks [%d, %d): %s ViT (dim %d, depth %d), %lld parameters, batch %d x %d "
                   "ranks; teacher share %d per rank; iterations %lld..%lld of %lld -> %s\n",
                   x->ref->name, x->ref->ranks_range[0], x->ref->ranks_range[1], x->m.cfg.vit.arch, x->m.cfg.vit.dim,
                   x->m.cfg.vit.depth, (long long)x->m.tab.total, x->Bs, x->ns, x->Bt, (long long)start, (long long)end,
                   (long long)x->total, S->train.output_dir);
            fflush(stdout);
        }
    }
    const int log_every = S->log.every_n_iterations, ckpt_every = S->checkpoint.every_n_iterations;
    int64_t bad_in_row = 0;
    for (int64_t it = start; it < end; it++) {
        double t0 = dino_wall_s();
        if (next_batch(x, it, err)) goto out; // every rank: the teacher's collectives are world-wide
        double t_data = dino_wall_s() - t0;
        ScheduleValues sv = schedule_at(&x->sched, (long)it);
        SslBatch sb = {.global_crops = x->glob_s, .local_crops = x->loc_s, .masks = x->with_masks ? x->mask_s : NULL,
                       // keyed by the rank within the student: its draws do not depend on where its ranks sit
                       .drop_key = rng_make((uint64_t)S->train.seed, RNG_STREAM_DROP_PATH, (uint64_t)it,
                                            (uint64_t)x->q)};
        SslTargets tg = {.dino = x->P_s, .ibot = x->with_masks ? x->Pi_s : NULL};
        SslStepStats st;
        int finite = ssl_student_forward_backward(&x->m, x->be, &sb, &tg, &st, e2) == 0;
        average_grads(x);
        if (x->group.world > 1) {
            int64_t bad = !finite;
            if (dist_allreduce_sum_i64(&x->group, &bad, 1, e2)) dist_abort(world, "%s", e2);
            finite = bad == 0;
        }
        if (finite) {
            ssl_update(&x->m, x->be, &sv, &st);
            ssl_read_step_stats(&x->m, x->be, &st); // the grad norms
            bad_in_row = 0;
        } else {
            res->skipped_steps++;
            if (++bad_in_row >= MAX_CONSECUTIVE_BAD_STEPS) dist_abort(world, "student '%s': %d consecutive iterations "
                                                                             "with a NaN/Inf loss (last %lld)",
                                                                      x->ref->name, MAX_CONSECUTIVE_BAD_STEPS, (long long)it);
        }
        double logged[7] = {st.total_loss, st.dino_local_crops_loss, st.dino_global_crops_loss, st.ibot_loss,
                            st.koleo_loss, st.teacher_entropy,      st.student_cls_std};
        mean_over_group(x, logged, 7);
        res->last_total_loss = logged[0];
        res->end_iteration = it + 1;
        const double step_time = dino_wall_s() - t0;
        if (x->metrics) {
            metrics_begin(x->metrics, it);
            metrics_add(x->metrics, "loss", logged[0]);
            metrics_add(x->metrics, "dino_local", logged[1]);
            metrics_add(x->metrics, "dino_global", logged[2]);
            metrics_add(x->metrics, "ibot", logged[3]);
            metrics_add(x->metrics, x->m.cfg.use_kde ? "kde" : "koleo", logged[4]);
            metrics_add(x->metrics, "teacher_entropy", logged[5]);
            metrics_add(x->metrics, "student_cls_std", logged[6]);
            metrics_add(x->metrics, "lr", sv.lr);
            metrics_add(x->metrics, "last_layer_lr", sv.last_layer_lr);
            metrics_add(x->metrics, "wd", sv.wd);
            metrics_add(x->metrics, "momentum", sv.momentum);
            metrics_add(x->metrics, "teacher_temp", schedule_at(&x->tsched, (long)it).teacher_temp);
            metrics_add(x->metrics, "grad_norm_backbone", st.grad_norm[0]);
            metrics_add(x->metrics, "images_per_s", (double)x->G / step_time);
            metrics_add(x->metrics, "iter_time", step_time);
            metrics_add(x->metrics, "data_time", t_data);
            metrics_add_int(x->metrics, "skipped", finite ? 0 : 1);
            if (metrics_end(x->metrics, e2)) dist_abort(world, "%s", e2);
        }
        if (x->q == 0 && !opt->quiet && ((it + 1) % log_every == 0 || it + 1 == end)) {
            printf("dinotrain [%s]: it %lld/%lld loss %.4f (dino local %.4f global %.4f, ibot %.4f, koleo %.4f) lr %.3g "
                   "teacher entropy %.3f, %.1f img/s\n",
                   x->ref->name, (long long)(it + 1), (long long)x->total, logged[0], logged[1], logged[2], logged[3],
                   logged[4], sv.lr, logged[5], (double)x->G / step_time);
            fflush(stdout);
        }
        const int want_ckpt = (ckpt_every > 0 && (it + 1) % ckpt_every == 0) || it + 1 == x->total || it + 1 == end;
        if (want_ckpt) {
            int ckpt_rc = x->q == 0 ? save_checkpoint(x, it + 1, res->last_checkpoint, e2) : 0;
            if (ckpt_rc) dist_abort(world, "student '%s': checkpoint: %s", x->ref->name, e2);
        }
    }
    if (x->W > 1 && dist_barrier(world, e2)) dist_abort(world, "%s", e2);
    rc = 0;
out:
    teardown(x);
    free(x);
    return rc;
}

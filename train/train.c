// The training loop (see train.h). One iteration: next batch from the loader (built ahead by worker
// threads), schedules at this iteration, student/teacher forward + backward, gradients averaged over
// ranks, clip + AdamW + EMA, metrics, and every N iterations an atomic checkpoint.
//
// Exact resume: every random draw of the run is keyed by (seed, sample or iteration index) and every
// schedule is a function of the iteration, so a checkpoint needs only the tensors (student, teacher,
// AdamW moments, centres), the iteration and the loader position to continue bit for bit.
#include "common/clock.h"
#include "train/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <sys/stat.h>

#include "common/check.h"
#include "data/loader.h"
#include "data/source.h"
#include "train/checkpoint.h"
#include "train/collapse.h"
#include "train/eval.h"
#include "train/metrics.h"
#include "train/pretrained.h"
#include "train/ssl_step.h"
#ifdef DINO_HAVE_CUDA
#include "model/cuda/backend_cuda.h"
#include "model/cuda/cuda_device.h"
#endif
#ifdef DINO_HAVE_NCCL
#include "dist/nccl.h"
#endif

#define MAX_CONSECUTIVE_BAD_STEPS 5
#define RNG_STREAM_DROP_PATH 0x64726f70ULL

typedef struct {
    const Config *cfg;
    Dist *d;
    Backend *be;
    SslModel m;
    Collective coll;
    // backend cuda with world > 1: the collectives run on device memory, through NCCL when the build has
    // it (nccl), else staged through host memory and the MPI path (stage: the fallback's host buffer)
    int device_comm;
    void *nccl; // DistNccl *
    Collective dev_coll;
    float *stage;
    size_t stage_floats;
    TileSource *src;
    Loader *loader;
    // the batch of the next iteration, taken from the loader and staged during this one (its upload
    // overlaps this step): checkpoints record the loader position as if it were still in the loader
    int prefetched;
    int64_t prefetched_reads, prefetched_corrupt;
    int crop_g[2], crop_l[2], crop_gram[2]; // crop sides of the batch staged for iteration it, at [it & 1] (size pairs)
    ScheduleConfig sched;
    MetricsLog *metrics;
    DistGrads *grads_sync; // bucketed gradient averaging over ranks (NULL for one process)
    int64_t total;
    int quiet;
    double knn_init, knn_last; // k-NN top-1 (k = 20) at init and at the last evaluation (NaN: none)
    int64_t gram_updates;      // Gram teacher refreshes from the EMA teacher so far (gram.max_updates)
} Run;

// Gradient buckets: cut at tensor boundaries, dist.grad_bucket_mb each, issued from the backward pass as
// soon as the layers they hold are done (SslModel.grad_ready), so averaging overlaps the rest of it.
static void grads_ready(void *ctx, size_t offset) {
    Run *r = ctx;
    char err[DINO_ERRLEN];
    if (dist_grads_ready_from(r->grads_sync, offset, err)) dist_abort(r->d, "%s", err);
}

static int start_grad_sync(Run *r, char *err) {
    if (r->d->world == 1) return 0;
    // backend cuda: buckets through NCCL on device memory; without NCCL, staged_grads_average instead
    if (r->device_comm && !r->nccl) return 0;
    const ParamTable *tab = &r->m.tab;
    size_t *cuts = dino_malloc(sizeof(size_t) * (size_t)tab->n);
    for (int i = 0; i < tab->n; i++) cuts[i] = tab->t[i].offset;
    // ZeRO-1 reduce-scatters the padded buffer (each rank averages its shard); else all-reduce.
    int zero = r->m.cfg.zero_world > 1;
    size_t n = zero ? r->m.buffer_floats : tab->total;
    size_t bucket_floats = (size_t)(r->cfg->grad_bucket_mb * 1024 * 1024 / sizeof(float));
    if (bucket_floats < 1) bucket_floats = 1;
    r->grads_sync = dist_grads_new(r->d, r->nccl, r->m.grads, n, cuts, tab->n, bucket_floats, zero, err);
    free(cuts);
    if (!r->grads_sync) return -1;
#ifdef DINO_HAVE_CUDA
    if (r->nccl) dist_grads_set_stream(r->grads_sync, backend_cuda_stream(r->be)); // after the backward's kernels
#endif
    r->m.grad_ready = grads_ready;
    r->m.grad_ready_ctx = r;
    return 0;
}

// ---- setup ----------------------------------------------------------------------------------------

static int read_tile(void *ctx, int64_t index, uint64_t seed, Image *out, char *err) {
    return source_read_rgb(ctx, index, seed, out, err);
}

static void *crops_alloc(void *be, size_t bytes) { return ((Backend *)be)->host_alloc(be, bytes); }
static void crops_free(void *be, void *p) { ((Backend *)be)->host_free(be, p); }

static int open_data(Run *r, char *err) {
    const Config *cfg = r->cfg;
    if (cfg->data.n_sources == 0) {
        dino_seterr(err, "%s: data.sources is empty: name at least one tile source (see docs/data-sources.md)",
                    cfg->origin.n_files > 1 ? cfg->origin.files[1] : "config");
        return -1;
    }
    char spec[CFG_MAX_SOURCES * (CFG_STR + 1)] = "";
    for (int i = 0; i < cfg->data.n_sources; i++) {
        if (i) strcat(spec, "+");
        strcat(spec, cfg->data.sources[i]);
    }
    char e2[DINO_ERRLEN];
    r->src = source_open(spec, e2);
    if (!r->src) {
        dino_seterr(err, "data source: %s", e2);
        return -1;
    }
    if (source_count(r->src) <= 0) {
        dino_seterr(err, "data source '%s' holds no tiles", spec);
        return -1;
    }
    // Scaled JPEG decoding never loses resolution that a global crop at its smallest scale would use.
    double smin = cfg->crops.global_crops_scale[0] > 0 ? cfg->crops.global_crops_scale[0] : 1.0;
    source_set_min_side(r->src, (int)ceil(config_max_global_crop(cfg) / sqrt(smin)));
    source_set_max_pixels(r->src, cfg->data.max_image_pixels);
    if (cfg->crops.extended_context) { // crops at about native resolution: decode whole, read the larger region
        source_set_min_side(r->src, 0);
        source_set_context(r->src, cfg->crops.context_factor);
    }
    HsvFilter hsv;
    config_to_hsv_filter(cfg, &hsv);
    source_set_hsv_filter(r->src, &hsv);
    LoaderConfig lc;
    config_to_loader(cfg, r->d->rank, r->d->world, &lc);
    // the batches' crops in the backend's page-locked memory: a GPU uploads them from there
    lc.crops_alloc = crops_alloc, lc.crops_free = crops_free, lc.crops_ctx = r->be;
    r->loader = loader_create(&lc, source_count(r->src), read_tile, r->src, e2);
    if (!r->loader) {
        dino_seterr(err, "data loader: %s", e2);
        return -1;
    }
    return 0;
}

// student.pretrained_weights: the backbone of student and teacher from released weights (any of the
// three namings), heads fresh. A resumed run then overwrites both with its checkpoint.
static int load_pretrained(Run *r, char *err) {
    const size_t n = r->m.tab.total;
    float *host = dino_malloc(sizeof(float) * n);
    r->be->to_host(r->be, host, r->m.student, sizeof(float) * n);
    PretrainedOptions po = {.verbose = r->d->rank == 0 && !r->quiet};
    char e2[DINO_ERRLEN];
    int rc = pretrained_load(&r->m.vit, &r->m.tab, "backbone.", host, r->cfg->student.pretrained_weights, &po, NULL, e2);
    if (rc) dino_seterr(err, "student.pretrained_weights: %s", e2);
    else {
        r->be->to_device(r->be, r->m.student, host, sizeof(float) * n);
        r->be->to_device(r->be, r->m.teacher, host, sizeof(float) * n);
    }
    free(host);
    return rc;
}

// ---- Gram anchoring (docs/gram-anchoring.md) --------------------------------------------------------

// The Gram teacher's backbone tensors as prefix + name, from the host copy `flat` (ParamTable layout).
static void write_gram_teacher(CkptWriter *w, const ParamTable *tab, const float *flat) {
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        if (t->group != PARAM_BACKBONE) continue;
        char name[PARAM_NAME_MAX + 64];
        snprintf(name, sizeof name, "gram_teacher.%s", t->name);
        ckpt_writer_tensor(w, name, t->ndim, t->shape, flat + t->offset);
    }
}

// Reads the backbone tensors prefix + name of checkpoint c into the Gram teacher.
static int read_gram_teacher(Run *r, const Ckpt *c, const char *prefix, char *err) {
    const ParamTable *tab = &r->m.tab;
    float *host = dino_calloc(r->m.backbone_floats, sizeof(float));
    int rc = 0;
    for (int i = 0; i < tab->n && !rc; i++) {
        const TensorSpec *t = &tab->t[i];
        if (t->group != PARAM_BACKBONE) continue;
        char name[PARAM_NAME_MAX + 64];
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        rc = ckpt_read_tensor(c, name, t->ndim, t->shape, host + t->offset, err);
    }
    if (!rc) r->be->to_device(r->be, r->m.gram_teacher, host, sizeof(float) * r->m.backbone_floats);
    free(host);
    return rc;
}

// gram.ckpt: one of our checkpoint directories (its EMA teacher's backbone; the dinov3 way of starting a
// Gram teacher from an earlier run), or a backbone safetensors file in any naming (as pretrained_weights).
static int load_gram_ckpt(Run *r, char *err) {
    const char *path = r->cfg->gram.ckpt;
    char e2[DINO_ERRLEN];
    struct stat sb;
    if (stat(path, &sb) != 0) {
        dino_seterr(err, "gram.ckpt: %s: %s", path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(sb.st_mode)) {
        Ckpt c;
        if (ckpt_open(&c, path, e2)) {
            dino_seterr(err, "gram.ckpt: %s", e2);
            return -1;
        }
        int rc = read_gram_teacher(r, &c, "teacher.", e2);
        ckpt_close(&c);
        if (rc) {
            dino_seterr(err, "gram.ckpt: %s", e2);
            return -1;
        }
    } else {
        const size_t n = r->m.tab.total;
        float *host = dino_calloc(n, sizeof(float));
        PretrainedOptions po = {.verbose = r->d->rank == 0 && !r->quiet};
        int rc = pretrained_load(&r->m.vit, &r->m.tab, "backbone.", host, path, &po, NULL, e2);
        if (!rc) r->be->to_device(r->be, r->m.gram_teacher, host, sizeof(float) * r->m.backbone_floats);
        free(host);
        if (rc) {
            dino_seterr(err, "gram.ckpt: %s", e2);
            return -1;
        }
    }
    r->m.gram_ready = 1;
    return 0;
}

// After iteration `it` (optimizer step and EMA done): dinov3's repeated Gram teacher update.
static void gram_after_step(Run *r, int64_t it) {
    const CfgGram *g = &r->cfg->gram;
    if (!g->use_loss || !g->rep_update) return;
    if (it + 1 < g->it_first_update || (it + 1) % g->update_frequency != 0) return;
    if (g->max_updates >= 0 && r->gram_updates >= g->max_updates) return;
    ssl_gram_from_teacher(&r->m, r->be);
    r->gram_updates++;
    if (r->d->rank == 0 && !r->quiet)
        printf("dinotrain: Gram teacher updated from the EMA teacher after iteration %lld (update %lld)\n",
               (long long)it, (long long)r->gram_updates);
}

// evaluation.eval_period_iterations: k-NN (k = 10, 20) of the teacher's CLS features on labeled tile
// sets, logged with the metrics (rank 0 only: the teacher is replicated).
// At iteration 0 (a fresh run) the same evaluation of the network at init, the baseline a run must beat
// (keys knn_*_init).
static void periodic_knn(Run *r, int64_t iterations_done) {
    const CfgEvaluation *ev = &r->cfg->evaluation;
    if (r->d->rank != 0 || ev->eval_period_iterations <= 0 || !ev->knn_train[0] || !ev->knn_test[0]) return;
    if (iterations_done % ev->eval_period_iterations != 0) return;
    const int init = iterations_done == 0;
    EmbedModel em;
    embed_model_wrap(&em, r->be, &r->m.vit, r->m.teacher);
    const int ks[2] = {10, 20};
    EvalScores sc[2];
    char e2[DINO_ERRLEN];
    if (eval_knn_tilesets(&em, ev->knn_train, ev->knn_test, ks, 2, 32, sc, e2)) {
        fprintf(stderr, "dinotrain: k-NN evaluation at iteration %lld failed: %s\n", (long long)iterations_done, e2);
    } else {
        if (!r->quiet)
            printf("dinotrain: k-NN at iteration %lld%s: top-1 %.4f (k=10), %.4f (k=20), balanced %.4f (k=20)\n",
                   (long long)iterations_done, init ? " (init)" : "", sc[0].accuracy, sc[1].accuracy,
                   sc[1].balanced_accuracy);
        if (init) r->knn_init = sc[1].accuracy;
        else r->knn_last = sc[1].accuracy;
        if (r->metrics) {
            metrics_begin(r->metrics, iterations_done - 1);
            metrics_add(r->metrics, init ? "knn_top1_k10_init" : "knn_top1_k10", sc[0].accuracy);
            metrics_add(r->metrics, init ? "knn_top1_k20_init" : "knn_top1_k20", sc[1].accuracy);
            metrics_add(r->metrics, init ? "knn_balanced_k20_init" : "knn_balanced_k20", sc[1].balanced_accuracy);
            metrics_end(r->metrics, e2);
        }
    }
    embed_model_close(&em);
}

// ---- checkpoints ----------------------------------------------------------------------------------

// ZeRO-1 (dist.zero1 on several ranks): every rank updates only its shard of the flat buffers (the
// gradients are reduce-scattered, the AdamW moments exist for the shard only) and then all-gathers student
// and teacher. Checkpoints stay unsharded: the moments are gathered for rank 0 to write.
static int sharded(const Run *r) { return r->m.cfg.zero_world > 1; }

static void sum_f64_over_ranks(void *ctx, double *v, int n) {
    Dist *d = ctx;
    char err[DINO_ERRLEN];
    if (dist_allreduce_sum_f64(d, v, (size_t)n, err)) dist_abort(d, "%s", err);
}

// The AdamW moments in the ParamTable layout (tab.total floats each) on the host of rank 0 (NULL on the
// other ranks). Sharded, every rank must call it: it gathers the shards.
static float *moments_to_host(Run *r) {
    Backend *be = r->be;
    const size_t total = r->m.tab.total;
    const AdamW *opt = &r->m.opt;
    float *out = NULL;
    if (!sharded(r)) {
        if (r->d->rank != 0) return NULL;
        out = dino_malloc(sizeof(float) * 2 * total);
        be->to_host(be, out, opt->m, sizeof(float) * total);
        be->to_host(be, out + total, opt->v, sizeof(float) * total);
        return out;
    }
    const size_t padded = r->m.buffer_floats, shard = opt->n;
    float *mine = dino_malloc(sizeof(float) * shard), *all = dino_malloc(sizeof(float) * padded);
    if (r->d->rank == 0) out = dino_malloc(sizeof(float) * 2 * total);
    for (int k = 0; k < 2; k++) {
        char err[DINO_ERRLEN];
        be->to_host(be, mine, k ? opt->v : opt->m, sizeof(float) * shard);
        if (dist_allgather(r->d, mine, all, sizeof(float) * shard, err)) dist_abort(r->d, "%s", err);
        if (out) memcpy(out + k * total, all, sizeof(float) * total);
    }
    free(mine);
    free(all);
    return out;
}

// Rank 0: writes student, teacher, the moments (host, from moments_to_host), centres and counters.
static int save_checkpoint(Run *r, int64_t iterations_done, const float *moments, char *path_out, char *err) {
    Backend *be = r->be;
    const ParamTable *tab = &r->m.tab;
    float *host = dino_malloc(sizeof(float) * 2 * tab->total);
    be->to_host(be, host, r->m.student, sizeof(float) * tab->total);
    be->to_host(be, host + tab->total, r->m.teacher, sizeof(float) * tab->total);
    CkptWriter *w = ckpt_writer_new();
    ckpt_writer_param_table(w, "student.", tab, host);
    ckpt_writer_param_table(w, "teacher.", tab, host + tab->total);
    ckpt_writer_param_table(w, "adamw_m.", tab, moments);
    ckpt_writer_param_table(w, "adamw_v.", tab, moments + tab->total);
    const int Kd = r->m.dino_center.K, Ki = r->m.ibot_center.K;
    float *cd = dino_malloc(sizeof(float) * (size_t)Kd), *ci = dino_malloc(sizeof(float) * (size_t)Ki);
    be->to_host(be, cd, r->m.dino_center.center, sizeof(float) * (size_t)Kd);
    be->to_host(be, ci, r->m.ibot_center.center, sizeof(float) * (size_t)Ki);
    int64_t sd[1] = {Kd}, si[1] = {Ki};
    ckpt_writer_tensor(w, "dino_center", 1, sd, cd);
    ckpt_writer_tensor(w, "ibot_center", 1, si, ci);
    float *gram_host = NULL;
    if (r->m.gram_teacher && r->m.gram_ready) {
        gram_host = dino_malloc(sizeof(float) * r->m.backbone_floats);
        be->to_host(be, gram_host, r->m.gram_teacher, sizeof(float) * r->m.backbone_floats);
        write_gram_teacher(w, tab, gram_host);
    }
    if (r->m.gram_teacher) {
        ckpt_writer_int(w, "gram.ready", r->m.gram_ready);
        ckpt_writer_int(w, "gram.updates", r->gram_updates);
    }
    LoaderStats ls = loader_stats(r->loader);
    const int64_t position = loader_position(r->loader) - r->prefetched;
    ckpt_writer_int(w, "iteration", iterations_done);
    ckpt_writer_int(w, "adamw.step", r->m.opt.step);
    ckpt_writer_int(w, "loader.position", position);
    // the global sample position: lets a run resume on another number of ranks or batch per rank
    ckpt_writer_int(w, "loader.samples", position * r->cfg->train.batch_size_per_gpu * (int64_t)r->d->world);
    ckpt_writer_int(w, "loader.reads", ls.reads - r->prefetched_reads);
    ckpt_writer_int(w, "loader.corrupt", ls.corrupt - r->prefetched_corrupt);
    ckpt_writer_int(w, "world_size", r->d->world);
    ckpt_writer_int(w, "seed", r->cfg->train.seed);
    char *yaml = config_to_yaml(r->cfg);
    ckpt_writer_str(w, "config", yaml);
    free(yaml);
    int rc = ckpt_save(w, r->cfg->train.output_dir, iterations_done, r->cfg->checkpoint.keep_last, path_out, err);
    ckpt_writer_free(w);
    free(host);
    free(gram_host);
    free(cd);
    free(ci);
    return rc;
}

// Reads one tensor set (ParamTable layout) and copies its floats [begin, end) to dev.
static int load_tensor_set(Run *r, const Ckpt *c, const char *prefix, float *dev, size_t begin, size_t end,
                           char *err) {
    const ParamTable *tab = &r->m.tab;
    float *host = dino_calloc(tab->total, sizeof(float));
    if (ckpt_read_param_table(c, prefix, tab, host, err)) {
        free(host);
        return -1;
    }
    if (end > tab->total) end = tab->total; // ZeRO-1 padding past the last tensor stays zero
    if (end > begin) r->be->to_device(r->be, dev, host + begin, sizeof(float) * (end - begin));
    free(host);
    return 0;
}

static int load_center(Run *r, const Ckpt *c, const char *name, TeacherCenter *tc, char *err) {
    float *h = dino_malloc(sizeof(float) * (size_t)tc->K);
    int64_t shape[1] = {tc->K};
    int rc = ckpt_read_tensor(c, name, 1, shape, h, err);
    if (!rc) r->be->to_device(r->be, tc->center, h, sizeof(float) * (size_t)tc->K);
    free(h);
    return rc;
}

// hrft.checkpoint_path (DINOv3's high-resolution adaptation, as the official student.resume_from_teacher_chkpt):
// student and teacher both start as the earlier run's teacher; the AdamW moments, the centres, the
// iteration and the loader position stay fresh. The path is a checkpoint directory or an output_dir.
static int load_hrft(Run *r, char *err) {
    const char *path = r->cfg->hrft.checkpoint_path;
    Ckpt c;
    char e2[DINO_ERRLEN], e3[DINO_ERRLEN];
    if (ckpt_open(&c, path, e2)) {
        int found = ckpt_open_latest(&c, path, r->d->rank == 0 ? stderr : NULL, e3);
        if (found <= 0) {
            dino_seterr(err, "hrft.checkpoint_path = %s: neither a checkpoint (%s) nor a run directory holding one (%s)",
                        path, e2, found == 0 ? "no checkpoint in it" : e3);
            return -1;
        }
    }
    const size_t total = r->m.tab.total;
    int rc = load_tensor_set(r, &c, "teacher.", r->m.student, 0, total, e2);
    if (!rc) rc = load_tensor_set(r, &c, "teacher.", r->m.teacher, 0, total, e2);
    if (rc) dino_seterr(err, "hrft.checkpoint_path: %s (the model must be the earlier run's: same arch, heads and "
                             "student.img_size)", e2);
    else if (r->d->rank == 0 && !r->quiet)
        printf("dinotrain: high-resolution phase: student and teacher from the teacher of %s (iteration %lld)\n", c.dir,
               (long long)c.iteration);
    ckpt_close(&c);
    return rc;
}

// Resumes from the newest valid checkpoint; returns the iteration to start at (0 when none), or -1.
static int64_t resume(Run *r, char *err) {
    Ckpt c;
    char e2[DINO_ERRLEN];
    int found = ckpt_open_latest(&c, r->cfg->train.output_dir, r->d->rank == 0 ? stderr : NULL, e2);
    if (found < 0) {
        dino_seterr(err, "cannot resume: %s", e2);
        return -1;
    }
    if (found == 0) return 0;
    int64_t it = 0, pos = 0, step = 0;
    const size_t total = r->m.tab.total, lo = r->m.shard_begin, hi = r->m.shard_end;
    int rc = load_tensor_set(r, &c, "student.", r->m.student, 0, total, e2);
    if (!rc) rc = load_tensor_set(r, &c, "teacher.", r->m.teacher, 0, total, e2);
    if (!rc) rc = load_tensor_set(r, &c, "adamw_m.", r->m.opt.m, lo, hi, e2); // moments: this rank's part
    if (!rc) rc = load_tensor_set(r, &c, "adamw_v.", r->m.opt.v, lo, hi, e2);
    if (!rc) rc = load_center(r, &c, "dino_center", &r->m.dino_center, e2);
    if (!rc) rc = load_center(r, &c, "ibot_center", &r->m.ibot_center, e2);
    if (!rc) rc = ckpt_get_int(&c, "iteration", &it, e2);
    if (!rc) rc = ckpt_get_int(&c, "adamw.step", &step, e2);
    if (!rc) rc = ckpt_get_int(&c, "loader.position", &pos, e2);
    if (rc) {
        dino_seterr(err, "cannot resume from %s: %s", c.dir, e2);
        ckpt_close(&c);
        return -1;
    }
    // The loader position counts batches of one rank; the global sample position carries over to
    // another number of ranks (exactly when the global batch is unchanged).
    int64_t samples = 0;
    if (ckpt_get_int(&c, "loader.samples", &samples, e2) == 0) {
        int64_t global_batch = (int64_t)r->cfg->train.batch_size_per_gpu * r->d->world;
        if (samples % global_batch && r->d->rank == 0)
            fprintf(stderr, "dinotrain: the global batch changed: resuming at sample %lld of the data order\n",
                    (long long)(samples / global_batch * global_batch));
        pos = samples / global_batch;
    }
    if (r->m.gram_teacher) { // the Gram teacher as it was (a checkpoint of a run without Gram: unchanged)
        int64_t ready = 0, updates = 0;
        if (ckpt_get_int(&c, "gram.ready", &ready, e2) == 0 && ready) {
            if (read_gram_teacher(r, &c, "gram_teacher.", e2)) {
                dino_seterr(err, "cannot resume from %s: %s", c.dir, e2);
                ckpt_close(&c);
                return -1;
            }
            r->m.gram_ready = 1;
        }
        if (ckpt_get_int(&c, "gram.updates", &updates, e2) == 0) r->gram_updates = updates;
    }
    r->m.opt.step = step;
    loader_set_position(r->loader, pos);
    if (r->d->rank == 0 && !r->quiet) printf("dinotrain: resumed from %s at iteration %lld\n", c.dir, (long long)it);
    ckpt_close(&c);
    return it;
}

static int inject_nan_at(int64_t it);

// Takes the next batch from the loader (for iteration `it`) and stages it on the model; the loader's
// buffers are free again when this returns.
static int stage_next_batch(Run *r, int64_t it, int with_masks, char *err) {
    const Batch *batch = loader_next(r->loader, err);
    if (!batch) return -1;
    if (inject_nan_at(it)) batch->global_crops[0] = NAN; // the loader's buffer is ours until loader_next
    if (r->m.cfg.gram) ssl_stage_gram_pair(&r->m, r->be, batch->pair, batch->gram_crops, 1); // at the pair's Gram size
    // the crops are uploaded straight from the loader's page-locked buffer (see the sync in the loop), at
    // the batch's size pair (high-resolution phase: one drawn per batch index, the same on every rank)
    ssl_stage_batch_pair(&r->m, r->be, batch->pair, batch->global_crops, batch->local_crops,
                         with_masks ? batch->masks.masks : NULL, 1);
    r->crop_g[it & 1] = batch->G, r->crop_l[it & 1] = batch->L, r->crop_gram[it & 1] = batch->Gg;
    r->prefetched_reads = batch->reads;
    r->prefetched_corrupt = batch->corrupt;
    return 0;
}

// ---- fault injection for tests: DINOTRAIN_INJECT_NAN="3,4" poisons the input of those iterations ------

static int inject_nan_at(int64_t it) {
    const char *s = getenv("DINOTRAIN_INJECT_NAN");
    if (!s) return 0;
    while (*s) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s) return 0;
        if (v == it) return 1;
        s = *end ? end + 1 : end;
    }
    return 0;
}

// ---- backend and device collectives ---------------------------------------------------------------

#ifdef DINO_HAVE_CUDA
static float *stage_buffer(Run *r, size_t n) {
    if (n > r->stage_floats) {
        free(r->stage);
        r->stage = dino_malloc(sizeof(float) * n);
        r->stage_floats = n;
    }
    return r->stage;
}

// The objective's reductions (centres, Sinkhorn sums) with backend cuda and world > 1: device buffers.
static void run_collective_sum(Collective *c, float *buf, size_t n) {
    Run *r = c->ctx;
    char err[DINO_ERRLEN];
    if (r->nccl) {
        r->dev_coll.allreduce_sum_f32(&r->dev_coll, buf, n);
        return;
    }
    // FALLBACK (no NCCL in this build): copy to the host, MPI all-reduce, copy back
    float *h = stage_buffer(r, n);
    r->be->to_host(r->be, h, buf, sizeof(float) * n);
    if (dist_allreduce_sum_f32(r->d, h, n, err)) dist_abort(r->d, "%s", err);
    r->be->to_device(r->be, buf, h, sizeof(float) * n);
    r->be->sync(r->be); // the staging buffer may be reused right away
}
#endif

int train_ssl_config(const Config *cfg, int world, int rank, SslConfig *sc, char *err) {
    if (config_to_ssl(cfg, sc, err)) return -1;
    if (sc->ibot_loss_weight > 0) { // head buffers for the most masked tokens a batch can have
        int g = config_max_global_crop(cfg) / cfg->student.patch_size; // the largest pair's grid
        sc->max_masked = mask_batch_upperbound(2 * sc->batch, g * g, cfg->ibot.mask_sample_probability,
                                               cfg->ibot.mask_ratio_min_max[0], cfg->ibot.mask_ratio_min_max[1]);
        if (sc->max_masked < 1) sc->max_masked = 1;
    }
    if (cfg->zero1 && world > 1) {
        sc->zero_world = world;
        sc->zero_rank = rank;
    }
    return 0;
}

// backend: cpu (the reference) or cuda (GPU local_rank % device count), and the collectives that go with it.
static int create_backend(Run *r, char *err) {
    const char *name = r->cfg->backend;
    if (strcmp(name, "cpu") == 0) {
        r->be = backend_cpu_new();
        r->coll = dist_collective(r->d);
        return 0;
    }
    if (strcmp(name, "cuda") != 0) {
        dino_seterr(err, "backend '%s' is unknown (cpu or cuda)", name);
        return -1;
    }
#ifndef DINO_HAVE_CUDA
    dino_seterr(err, "backend 'cuda': this build of dinotrain has no CUDA support (nvcc was not found when it was "
                     "configured); rebuild with the CUDA toolkit installed, or set backend: cpu");
    return -1;
#else
    char e2[DINO_ERRLEN];
    const int n_dev = dino_cuda_device_count();
    if (n_dev == 0) {
        dino_seterr(err, "backend 'cuda': rank %d sees no CUDA device (no GPU, no driver, or CUDA_VISIBLE_DEVICES is "
                         "empty); set backend: cpu to train on the CPU",
                    r->d->rank);
        return -1;
    }
    r->be = backend_cuda_new(r->d->local_rank % n_dev, e2);
    if (!r->be) {
        dino_seterr(err, "backend 'cuda' on rank %d: %s", r->d->rank, e2);
        return -1;
    }
    // compute_precision.param_dtype: bf16 tensor-core GEMMs (default), or true fp32 ones (debugging)
    backend_cuda_set_gemm_precision(r->be, strcmp(r->cfg->param_dtype, "fp32") == 0 ? CUDA_GEMM_FP32 : CUDA_GEMM_BF16);
    // compute_precision.cuda_graphs (DINO_CUDA_GRAPHS=0|1 overrides): one process only, since the
    // collectives' NCCL stream joins the compute stream through events (not captured here)
    const char *graphs_env = getenv("DINO_CUDA_GRAPHS");
    const int graphs = graphs_env && *graphs_env ? strcmp(graphs_env, "0") != 0 : r->cfg->cuda_graphs;
    if (graphs && r->d->world > 1 && r->d->rank == 0)
        fprintf(stderr, "dinotrain: compute_precision.cuda_graphs ignored: %d processes (CUDA graphs are used "
                        "with one process only)\n",
                r->d->world);
    // on: replay cached segments (DINO_CUDA_GRAPH_MODE=record|verify: the other modes, backend_cuda.h)
    const int graph_mode = backend_cuda_graph_mode_on(e2);
    if (graph_mode < 0) {
        dino_seterr(err, "backend 'cuda': %s", e2);
        return -1;
    }
    backend_cuda_set_graphs(r->be, graphs && r->d->world == 1 ? graph_mode : CUDA_GRAPHS_OFF);
    r->coll = dist_collective(r->d); // world 1: never called
    if (r->d->world > 1) {
        r->device_comm = 1;
#ifdef DINO_HAVE_NCCL
        DistNccl *nc = dist_nccl_new(r->d->rank, r->d->world, r->d->local_rank, r->d->timeout_s, e2);
        if (!nc) {
            dino_seterr(err, "backend 'cuda': NCCL: %s", e2);
            return -1;
        }
        dist_nccl_set_compute_stream(nc, backend_cuda_stream(r->be));
        r->nccl = nc;
        r->dev_coll = dist_nccl_collective(nc);
#endif
        r->coll = (Collective){.ctx = r, .rank = r->d->rank, .world = r->d->world,
                               .allreduce_sum_f32 = run_collective_sum};
    }
    return 0;
#endif
}

static void free_backend(Run *r) {
#ifdef DINO_HAVE_CUDA
    if (r->be && strcmp(r->be->name, "cuda") == 0 && !r->quiet) {
        const CudaGraphStats g = backend_cuda_graph_stats(r->be);
        if (g.launches)
            printf("dinotrain: CUDA graphs: %lld launches of %lld nodes (%.1f per launch), %lld instantiated "
                   "(new shapes), %lld updated execs, %lld replayed without recording\n",
                   g.launches, g.nodes, (double)g.nodes / (double)g.launches, g.instantiations, g.updates, g.replays);
    }
#endif
#ifdef DINO_HAVE_NCCL
    if (r->nccl) dist_nccl_free(r->nccl);
#endif
    free(r->stage);
    if (r->be) backend_free(r->be); // calls the destroy hook (streams, handles)
}

#ifdef DINO_HAVE_NCCL
static void nccl_check(Run *r, int rc, const char *err) {
    if (rc) dist_abort(r->d, "%s", err);
}
#endif

// FALLBACK for backend cuda in a build without NCCL (DistGrads buckets need host buffers or NCCL):
// after the backward pass, the gradients are copied to the host, averaged with the MPI collective
// (all-reduce, or ZeRO-1's reduce-scatter: then only this rank's shard is averaged), and copied back.
static void staged_grads_average(Run *r) {
#ifdef DINO_HAVE_CUDA
    char err[DINO_ERRLEN];
    const size_t n = sharded(r) ? r->m.buffer_floats : r->m.tab.total;
    const size_t lo = sharded(r) ? r->m.shard_begin : 0, len = sharded(r) ? n / (size_t)r->d->world : n;
    float *h = stage_buffer(r, n);
    r->be->to_host(r->be, h, r->m.grads, sizeof(float) * n);
    int rc = sharded(r) ? dist_reduce_scatter_sum_f32(r->d, h, n, err) : dist_allreduce_sum_f32(r->d, h, n, err);
    if (rc) dist_abort(r->d, "%s", err);
    r->be->to_device(r->be, r->m.grads + lo, h + lo, sizeof(float) * len);
    r->be->scale(r->be, r->m.grads + lo, 1.0f / (float)r->d->world, len);
    r->be->sync(r->be); // the staging buffer may be reused right away
#else
    (void)r;
#endif
}

// The other ranks' shards of buf (padded floats) arrived without the backend: its bf16 weight copy.
static void others_shards_changed(Run *r, float *buf, size_t padded) {
    const size_t shard = padded / (size_t)r->d->world, lo = (size_t)r->d->rank * shard;
    r->be->param_copy_changed(r->be, buf, lo);
    r->be->param_copy_changed(r->be, buf + lo + shard, padded - lo - shard);
}

// ZeRO-1: every rank's shard of buf (padded floats) copied to all ranks.
static void shards_allgather(Run *r, float *buf, size_t padded) {
    char err[DINO_ERRLEN];
    if (!r->device_comm) {
        if (dist_allgather_shards_f32(r->d, buf, padded, err)) dist_abort(r->d, "%s", err);
        others_shards_changed(r, buf, padded);
        return;
    }
    const size_t shard = padded / (size_t)r->d->world, lo = (size_t)r->d->rank * shard;
    (void)shard, (void)lo; // unused in builds without CUDA
#ifdef DINO_HAVE_NCCL
    if (r->nccl) { // in place: send = recv + rank * shard
        void *st = backend_cuda_stream(r->be);
        nccl_check(r, dist_nccl_allgather(r->nccl, buf + lo, buf, shard, st, err), err);
        nccl_check(r, dist_nccl_sync(r->nccl, "parameter all-gather", err), err);
        others_shards_changed(r, buf, padded); // NCCL wrote device memory behind the backend
        return;
    }
#endif
#ifdef DINO_HAVE_CUDA
    // FALLBACK (no NCCL): stage through host memory and the MPI all-gather
    float *h = stage_buffer(r, padded);
    r->be->to_host(r->be, h + lo, buf + lo, sizeof(float) * shard);
    if (dist_allgather_shards_f32(r->d, h, padded, err)) dist_abort(r->d, "%s", err);
    r->be->to_device(r->be, buf, h, sizeof(float) * padded);
    r->be->sync(r->be);
#endif
}

// ---- the loop -------------------------------------------------------------------------------------

static int all_finite_over_ranks(Run *r, int finite, char *err) {
    if (r->d->world == 1) return finite;
    int64_t bad = finite ? 0 : 1;
    if (dist_allreduce_sum_i64(r->d, &bad, 1, err)) dist_abort(r->d, "%s", err);
    return bad == 0;
}

static void mean_over_ranks(Run *r, double *v, int n) {
    if (r->d->world == 1) return;
    char err[DINO_ERRLEN];
    if (dist_allreduce_sum_f64(r->d, v, (size_t)n, err)) dist_abort(r->d, "%s", err);
    for (int i = 0; i < n; i++) v[i] /= r->d->world;
}

int train_run(const Config *cfg_in, Dist *d, const TrainOptions *opt, TrainResult *res, char *err) {
    TrainOptions no_opt = {0};
    if (!opt) opt = &no_opt;
    memset(res, 0, sizeof *res);
    Config *cfg = dino_malloc(sizeof *cfg);
    *cfg = *cfg_in;
    config_apply_lr_scaling(cfg, d->world);
    Run r = {.cfg = cfg, .d = d, .quiet = opt->quiet, .knn_init = NAN, .knn_last = NAN};
    r.total = config_total_iterations(cfg);
    int rc = -1;
    char e2[DINO_ERRLEN];

    if (create_backend(&r, err)) {
        free_backend(&r);
        free(cfg);
        return -1;
    }
    SslConfig sc;
    if (train_ssl_config(cfg, d->world, d->rank, &sc, e2)) {
        dino_seterr(err, "model: %s", e2);
        goto out;
    }
    sc.staged_upload = 1;
    if (ssl_model_init(&r.m, r.be, &sc, (uint64_t)cfg->train.seed, e2)) {
        dino_seterr(err, "model: %s", e2);
        goto out;
    }
    if (cfg->student.pretrained_weights[0] && load_pretrained(&r, err)) goto out;
    if (cfg->gram.use_loss && cfg->gram.ckpt[0] && load_gram_ckpt(&r, err)) goto out;
    if (open_data(&r, err)) goto out;
    if (d->rank == 0 && config_save_resolved(cfg, e2)) {
        dino_seterr(err, "%s", e2);
        goto out;
    }
    r.sched = config_to_schedule(cfg, d->world);
    if (start_grad_sync(&r, e2)) {
        dino_seterr(err, "gradient all-reduce: %s", e2);
        goto out;
    }

    int64_t start = 0;
    if (!opt->no_resume) {
        start = resume(&r, err);
        if (start < 0) goto out;
    }
    // a fresh high-resolution phase; once it has a checkpoint of its own, resuming continues that instead
    if (start == 0 && cfg->hrft.checkpoint_path[0] && load_hrft(&r, err)) goto out;
    int64_t end = r.total;
    if (opt->max_iterations > 0 && start + opt->max_iterations < end) end = start + opt->max_iterations;
    res->start_iteration = start;
    res->end_iteration = start;

    char metrics_path[4096];
    config_output_path(cfg, cfg->log.metrics_file, metrics_path, sizeof metrics_path);
    if (d->rank == 0) {
        r.metrics = metrics_open(metrics_path, start, e2);
        if (!r.metrics) {
            dino_seterr(err, "%s", e2);
            goto out;
        }
    }
    if (d->rank == 0 && !opt->quiet) {
        char desc[256];
        dist_describe(d, desc, sizeof desc);
        printf("dinotrain: %s, %s ViT (dim %d, depth %d, heads %d, patch %d), %lld parameters, %lld tiles, "
               "batch %d x %d ranks%s, iterations %lld..%lld of %lld\n",
               desc, sc.vit.arch, sc.vit.dim, sc.vit.depth, sc.vit.heads, sc.vit.patch, (long long)r.m.tab.total,
               (long long)source_count(r.src), sc.batch, d->world,
               sharded(&r) ? " (ZeRO-1: optimizer sharded over ranks)" : "", (long long)start, (long long)end,
               (long long)r.total);
        // where the memory went (dinotrain --plan-memory gives the same figures before a launch)
        SslMemory mem = ssl_memory(&r.m);
        const double gib = 1073741824.0;
        printf("dinotrain: %s memory: weights %.2f GiB, gradients %.2f, AdamW moments %.2f, activations %.2f "
               "(student, %s) + %.2f (teacher)\n",
               r.be->name, mem.weights / gib, mem.grads / gib, mem.optimizer / gib, mem.student_acts / gib,
               sc.recompute_activations ? "recomputed" : "stored", mem.teacher_acts / gib);
        fflush(stdout);
    }

    const int B = sc.batch, Kd = r.m.dino_center.K, Ki = r.m.ibot_center.K;
    const int tty = d->rank == 0 && !opt->quiet && metrics_stdout_is_tty();
    double t_start = dino_wall_s(), t_window = t_start, data_window = 0;
    int64_t window_steps = 0, bad_in_row = 0;
    const int log_every = cfg->log.every_n_iterations > 0 ? cfg->log.every_n_iterations : 10;
    const int ckpt_every = cfg->checkpoint.every_n_iterations;
    // collapse diagnostics (train/collapse.h) on the last diag_steps steps of each logging window (rank 0):
    // they copy the teacher's tokens and the DINO targets to the host
    const int D = sc.vit.dim, diag_steps = log_every < 8 ? log_every : 8;
    const int warmup_epochs = cfg->schedules.enabled ? cfg->schedules.lr.warmup_epochs : cfg->optim.warmup_epochs;
    const int64_t warmup_its = (int64_t)warmup_epochs * cfg->train.OFFICIAL_EPOCH_LENGTH;
    CollapseTracker ct;
    collapse_init(&ct, Kd, D, 2 * B, diag_steps);
    SslDiag diag = {.teacher_argmax = dino_malloc(sizeof(int) * 2 * B),
                    .teacher_cls = dino_malloc(sizeof(float) * (size_t)2 * B * D),
                    .teacher_patch = dino_malloc(sizeof(float) * (size_t)2 * B * D)};
    CollapseReport rep = {.margin = NAN, .usage = NAN, .rankme_cls = NAN};
    double rankme_init = NAN;
    int init_logged = 0, have_report = 0;
    if (start == 0) periodic_knn(&r, 0);

    for (int64_t it = start; it < end; it++) {
        double t0 = dino_wall_s();
        // This iteration's batch was staged during the last one (the first is staged here); the next
        // one is staged now, so that its upload runs beside this step on a GPU.
        if (!r.prefetched && stage_next_batch(&r, it, sc.ibot_loss_weight > 0, e2)) {
            dino_seterr(err, "data: %s", e2);
            goto out_loop;
        }
        r.prefetched = 0, r.prefetched_reads = r.prefetched_corrupt = 0;
        // loader_next hands this batch's buffer back to the workers: its upload must be done (the wait
        // also covers the last update, a few milliseconds; the GPU has no other work queued here)
        r.be->sync(r.be);
        if (it + 1 < end && stage_next_batch(&r, it + 1, sc.ibot_loss_weight > 0, e2)) {
            dino_seterr(err, "data: %s", e2);
            goto out_loop;
        }
        r.prefetched = it + 1 < end;
        double t_data = dino_wall_s() - t0;
        ScheduleValues sv = schedule_at(&r.sched, (long)it);
        if (cfg->gram.use_loss && cfg->gram.it_load_ema_teacher == it) {
            ssl_gram_from_teacher(&r.m, r.be);
            if (d->rank == 0 && !opt->quiet)
                printf("dinotrain: EMA teacher copied into the Gram teacher before iteration %lld\n", (long long)it);
        }
        const double gram_weight = config_gram_weight_at(cfg, (long)it);
        if (gram_weight != 0 && !r.m.gram_ready) {
            dino_seterr(err, "iteration %lld: the Gram loss weight is %g but the Gram teacher was never set: give "
                             "gram.ckpt, or gram.it_load_ema_teacher <= %lld",
                        (long long)it, gram_weight, (long long)it);
            goto out_loop;
        }
        SslBatch sb = {.staged = 1,
                       .gram_weight = gram_weight,
                       .dino_local_weight = config_dino_local_weight_at(cfg, (long)it),
                       .drop_key = rng_make((uint64_t)cfg->train.seed, RNG_STREAM_DROP_PATH, (uint64_t)it,
                                            (uint64_t)d->rank)};
        // diagnosed: the last diag_steps of each logging window, the run's last steps, and (fresh runs) the
        // first diag_steps, whose teacher is still the network at init (the RankMe baseline)
        const int64_t in_window = (it + 1) % log_every;
        const int is_log = (it + 1) % log_every == 0 || it + 1 == end;
        const int init_window = start == 0 && it < diag_steps;
        if (d->rank == 0 && (in_window == 0 || in_window > log_every - diag_steps || init_window || end - it <= diag_steps))
            sb.diag = &diag;

        SslStepStats st;
        int finite, early_buckets = 0;
        if (d->world == 1 && !sharded(&r) && !r.grads_sync && !r.device_comm) {
            // one process: the whole step issued (one graph launch in replay mode), then one wait for its
            // losses, grad norms and NaN flag; the device's flag keeps a NaN step from applying
            // (docs/cuda-backend.md, "CUDA graphs")
            ssl_step_issue(&r.m, r.be, &r.coll, &sb, &sv, &st, e2);
            finite = ssl_step_finish(&r.m, r.be, &st, e2) == 0;
        } else {
            finite = ssl_forward_backward(&r.m, r.be, &r.coll, &sb, &sv, &st, e2) == 0;
            // the buckets not yet issued by the backward pass, then the average over ranks (every rank takes
            // part even when its loss is not finite: all ranks issue the same buckets in the same order)
            early_buckets = r.grads_sync ? dist_grads_issued(r.grads_sync) : 0;
            if (r.grads_sync && dist_grads_wait(r.grads_sync, e2)) dist_abort(d, "%s", e2);
            if (!r.grads_sync && r.device_comm) staged_grads_average(&r); // cuda without NCCL: the fallback
            const int finite_here = finite;
            finite = all_finite_over_ranks(&r, finite, e2);
            if (finite_here && !finite) ssl_mark_nonfinite(&r.m, r.be); // another rank's loss: every rank skips
            // the update runs every step: after a non-finite loss it is a no-op on the device (the step's NaN
            // flag), centres included (docs/cuda-backend.md, "CUDA graphs")
            if (sharded(&r)) { // ZeRO-1: this rank's shard holds the average; update it, share the result
                const size_t padded = r.m.buffer_floats;
                ssl_update_shard(&r.m, r.be, &sv, sum_f64_over_ranks, d, &st);
                shards_allgather(&r, r.m.student, padded);
                shards_allgather(&r, r.m.teacher, padded);
            } else {
                ssl_update(&r.m, r.be, &sv, &st);
            }
            ssl_read_step_stats(&r.m, r.be, &st); // the grad norms (the flag is known here already)
        }
        if (finite) {
            bad_in_row = 0;
        } else {
            res->skipped_steps++;
            bad_in_row++;
            if (d->rank == 0)
                fprintf(stderr, "dinotrain: iteration %lld: non-finite loss, update not applied (%lld in a row)\n",
                        (long long)it, (long long)bad_in_row);
            if (bad_in_row >= MAX_CONSECUTIVE_BAD_STEPS) {
                dino_seterr(err,
                            "%d consecutive iterations with a NaN/Inf loss (last at iteration %lld): stopping; the last "
                            "checkpoint in %s/%s is intact",
                            MAX_CONSECUTIVE_BAD_STEPS, (long long)it, cfg->train.output_dir, CKPT_DIR);
                goto out_loop;
            }
        }
        gram_after_step(&r, it); // keyed on the iteration, applied step or not (the EMA teacher is as it is)
        double logged[10] = {st.total_loss,    st.dino_local_crops_loss, st.dino_global_crops_loss, st.ibot_loss,
                            st.koleo_loss,    st.teacher_entropy,       st.student_cls_std,        t_data,
                            st.ibot_teacher_entropy,   st.gram_loss};
        mean_over_ranks(&r, logged, 10);
        if (sb.diag && finite) {
            collapse_add(&ct, diag.teacher_argmax, diag.teacher_cls, diag.teacher_patch, diag.agreement);
            if (init_window && it + 1 == diag_steps) { // the network at init: the RankMe baseline
                rankme_init = collapse_rankme(ct.cls, ct.steps * ct.rows_per_step, D);
                if (!is_log) ct.steps = ct.next = 0; // the window restarts
            }
        }
        int collapse_stop = 0;
        if (is_log) {
            const double ibot_margin = sc.ibot_loss_weight > 0 && st.n_masked ? log((double)Ki) - logged[8] : NAN;
            if (d->rank == 0) collapse_report(&ct, log((double)Kd) - logged[5], ibot_margin, it + 1 > warmup_its, &rep);
            have_report = 1;
            double flag[1] = {d->rank == 0 && rep.confirmed && cfg->train.stop_on_collapse};
            if (d->world > 1 && dist_allreduce_sum_f64(d, flag, 1, e2)) dist_abort(d, "%s", e2);
            collapse_stop = flag[0] > 0;
        }
        res->last_total_loss = logged[0];
        res->end_iteration = it + 1;
        window_steps++;
        data_window += t_data;

        double t_now = dino_wall_s();
        double step_time = t_now - t0;
        if (r.metrics) {
            metrics_begin(r.metrics, it);
            metrics_add(r.metrics, "loss", logged[0]);
            metrics_add(r.metrics, "dino_local", logged[1]);
            metrics_add(r.metrics, "dino_global", logged[2]);
            metrics_add(r.metrics, "ibot", logged[3]);
            metrics_add(r.metrics, sc.use_kde ? "kde" : "koleo", logged[4]);
            if (cfg->gram.use_loss) {
                metrics_add(r.metrics, "gram", logged[9]);
                metrics_add(r.metrics, "gram_weight", sb.gram_weight);
            }
            if (cfg->dino.reweight_dino_local_loss) metrics_add(r.metrics, "dino_local_weight", sb.dino_local_weight);
            metrics_add(r.metrics, "lr", sv.lr);
            metrics_add(r.metrics, "last_layer_lr", sv.last_layer_lr);
            metrics_add(r.metrics, "wd", sv.wd);
            metrics_add(r.metrics, "momentum", sv.momentum);
            metrics_add(r.metrics, "teacher_temp", sv.teacher_temp);
            if (config_n_pairs(cfg) > 1) {
                metrics_add_int(r.metrics, "global_crop", r.crop_g[it & 1]);
                metrics_add_int(r.metrics, "local_crop", r.crop_l[it & 1]);
                if (cfg->gram.use_loss) metrics_add_int(r.metrics, "gram_crop", r.crop_gram[it & 1]);
            }
            metrics_add(r.metrics, "teacher_entropy", logged[5]);
            metrics_add(r.metrics, "student_cls_std", logged[6]);
            metrics_add(r.metrics, "grad_norm_backbone", st.grad_norm[0]);
            metrics_add(r.metrics, "images_per_s", (double)B * d->world / step_time);
            metrics_add(r.metrics, "data_wait_share", t_data / step_time);
            metrics_add(r.metrics, "iter_time", step_time);
            metrics_add(r.metrics, "data_time", t_data);
            metrics_add_int(r.metrics, "corrupt_tiles", loader_stats(r.loader).corrupt);
            metrics_add_int(r.metrics, "skipped", finite ? 0 : 1);
            if (r.grads_sync) {
                metrics_add_int(r.metrics, "grad_buckets", dist_grads_nbuckets(r.grads_sync));
                metrics_add_int(r.metrics, "grad_buckets_overlapped", early_buckets);
            }
            if (is_log) { // collapse diagnostics (train/collapse.h), per log line
                metrics_add(r.metrics, "dino_margin", rep.margin);
                if (!isnan(rep.ibot_margin)) metrics_add(r.metrics, "ibot_margin", rep.ibot_margin);
                metrics_add(r.metrics, "prototype_usage", rep.usage);
                metrics_add_int(r.metrics, "prototypes_used", rep.prototypes);
                metrics_add(r.metrics, "prototype_top_share", rep.top_share);
                metrics_add(r.metrics, "agreement", rep.agreement);
                metrics_add(r.metrics, "rankme_cls", rep.rankme_cls);
                metrics_add(r.metrics, "rankme_patch", rep.rankme_patch);
                metrics_add(r.metrics, "feature_std_cls", rep.std_cls);
                metrics_add(r.metrics, "feature_std_patch", rep.std_patch);
                if (!isnan(rankme_init) && !init_logged++) metrics_add(r.metrics, "rankme_cls_init", rankme_init);
                if (rep.collapse) metrics_add_str(r.metrics, "collapse", rep.collapse);
            }
            if (metrics_end(r.metrics, e2)) {
                dino_seterr(err, "%s", e2);
                goto out_loop;
            }
        }
        if (d->rank == 0 && !opt->quiet && ((it + 1) % log_every == 0 || it + 1 == end)) {
            double win = t_now - t_window;
            ProgressInfo p = {.iteration = it + 1,
                              .total = r.total,
                              .loss = logged[0],
                              .dino_local = logged[1],
                              .dino_global = logged[2],
                              .ibot = sc.ibot_loss_weight > 0 ? logged[3] : NAN,
                              .koleo = (sc.use_kde ? sc.kde_loss_weight : sc.koleo_loss_weight) > 0 ? logged[4] : NAN,
                              .regularizer = sc.use_kde ? "kde" : "koleo",
                              .lr = sv.lr,
                              .wd = sv.wd,
                              .momentum = sv.momentum,
                              .teacher_temp = sv.teacher_temp,
                              .images_per_s = win > 0 ? (double)window_steps * B * d->world / win : 0,
                              .data_wait_share = win > 0 ? data_window / win : 0,
                              .eta_s = metrics_eta_seconds(it + 1 - start, t_now - t_start, r.total - it - 1),
                              .corrupt_tiles = loader_stats(r.loader).corrupt,
                              .margin = rep.margin,
                              .usage = rep.usage,
                              .agreement = rep.agreement,
                              .collapse = rep.collapse};
            char line[512];
            metrics_format_line(line, sizeof line, &p, tty ? 20 : 0);
            printf(tty ? "\r%s\033[K" : "%s\n", line);
            if (tty && it + 1 == end) printf("\n");
            fflush(stdout);
            t_window = t_now;
            window_steps = 0;
            data_window = 0;
        }
        periodic_knn(&r, it + 1);
        if (collapse_stop) {
            char last[64] = "none";
            int64_t *its = NULL;
            int n = d->rank == 0 ? ckpt_list(cfg->train.output_dir, &its) : 0;
            if (n > 0) snprintf(last, sizeof last, "iteration %lld", (long long)its[n - 1]);
            free(its);
            dino_seterr(err,
                        "collapse at iteration %lld: %s (margin %.4f of ln K = %.3f, %d prototypes used of %d, "
                        "teacher CLS RankMe %.2f); stopping (train.stop_on_collapse); the last good checkpoint "
                        "(%s) is kept in %s/%s",
                        (long long)(it + 1), rep.collapse, rep.margin, log((double)Kd), rep.prototypes, Kd,
                        rep.rankme_cls, last, cfg->train.output_dir, CKPT_DIR);
            goto out_loop;
        }
        // periodic, the schedule's end, and where this run stops (--iterations N): no work is lost. With
        // train.stop_on_collapse, none while the diagnostics warn: the newest checkpoint is the last good one
        const int want_ckpt = (ckpt_every > 0 && (it + 1) % ckpt_every == 0) || it + 1 == r.total || it + 1 == end;
        const int suspect = cfg->train.stop_on_collapse && rep.collapse;
        if (want_ckpt && suspect && d->rank == 0 && !opt->quiet)
            printf("dinotrain: no checkpoint at iteration %lld: the collapse diagnostics warn (%s)\n", (long long)(it + 1),
                   rep.collapse);
        if (want_ckpt && !suspect) {
            float *moments = moments_to_host(&r); // every rank: gathers ZeRO-1 shards
            int ckpt_rc = d->rank == 0 ? save_checkpoint(&r, it + 1, moments, res->last_checkpoint, e2) : 0;
            free(moments);
            if (ckpt_rc) {
                dino_seterr(err, "checkpoint: %s", e2);
                goto out_loop;
            }
        }
    }
    if (d->world > 1 && dist_barrier(d, e2)) dist_abort(d, "%s", e2);
    if (d->rank == 0 && !opt->quiet && have_report) {
        // the verdict: learned (head not uniform, more than one prototype, the teacher's CLS features of
        // higher rank than at init) or collapsed, with the numbers
        const int learned = !rep.collapse && (isnan(rankme_init) || rep.rankme_cls > rankme_init);
        printf("dinotrain: verdict: %s: margin %.3f of ln K = %.3f, prototypes used %d of %d (%.1f%%), "
               "teacher CLS RankMe %.2f (at init %.2f)",
               learned ? "learned" : rep.collapse ? "collapsed" : "not learned (RankMe not above init)", rep.margin,
               log((double)Kd), rep.prototypes, Kd, 100 * rep.usage, rep.rankme_cls, rankme_init);
        if (rep.collapse) printf(" [%s]", rep.collapse);
        if (!isnan(r.knn_init) && !isnan(r.knn_last)) printf(", k-NN top-1 %.3f (at init %.3f)", r.knn_last, r.knn_init);
        printf("\n");
        fflush(stdout);
    }
    res->collapse = rep.collapse;
    res->margin = rep.margin, res->usage = rep.usage, res->prototypes = rep.prototypes;
    res->rankme_cls = rep.rankme_cls, res->rankme_init = rankme_init;
    rc = 0;
out_loop:
    collapse_free(&ct);
    free(diag.teacher_argmax), free(diag.teacher_cls), free(diag.teacher_patch);
out:
#ifdef DINO_HAVE_CUDA
    if (r.be && strcmp(r.be->name, "cuda") == 0) res->cuda_graph_launches = backend_cuda_graph_stats(r.be).launches;
#endif
    if (r.grads_sync) dist_grads_free(r.grads_sync);
    if (r.metrics) metrics_close(r.metrics);
    if (r.loader) loader_destroy(r.loader);
    if (r.src) source_close(r.src);
    if (r.m.work) ssl_model_free(&r.m, r.be);
    free_backend(&r);
    free(cfg);
    return rc;
}

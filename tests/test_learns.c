// It learns: a tiny ViT trained with the DINOv2 objective (softmax centering, EMA
// teacher, AdamW with the reference's schedules, stochastic depth) on a synthetic set of textured
// classes reaches a k-NN accuracy on held-out images far above chance and far above the same network at
// init. Textures (stripes of two orientations, checkerboards, dots) have random frequencies, phases,
// grey levels and a slight tint, so only the texture names the class; augmentation = random crops,
// flips and brightness/contrast jitter.
// Two runs: the whole objective, and DINO + iBOT without KoLeo, because KoLeo on its own (DINO and iBOT
// weights 0) spreads the CLS features enough to pass the first: only the second tells a broken DINO/iBOT
// loss from a working one. Measured with this seed: KoLeo alone 0.90, init 0.48.
// Every run also checks the head (issue #14): the teacher's entropy margin ln K - H well above zero (a
// uniform teacher learns nothing however healthy the CLS std looks) and more than a few prototypes used
// (the teacher's argmax over the last 8 batches), and the backbone: k-NN and linear probe over init.
// A third test trains with the recipe of configs/demo.yaml (its head, temperatures, schedules, EMA,
// LayerScale, batch, crops) on the textures: the demo's recipe must learn here. DINO_LEARNS_CONFIG=path
// names another config for that test (the old demo recipe fails it: docs/small-scale.md).
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>

#include "common/check.h"
#include "tests/harness.h"
#include "train/collapse.h"
#include "train/config.h"
#include "train/linear_probe.h"
#include "train/ssl_step.h"

enum { N_CLASSES = 4, IMG = 24, GCROP = 16, LCROP = 8 };

// One image [3,IMG,IMG] of class cls, values roughly in [-2, 2].
static void make_image(float *img, int cls, Rng *r) {
    const double period = rng_uniform_range(r, 4.0, 8.0), f = 2 * M_PI / period;
    const double ph1 = rng_uniform_range(r, 0, 2 * M_PI), ph2 = rng_uniform_range(r, 0, 2 * M_PI);
    double c0[3], c1[3];
    const double g0 = rng_uniform_range(r, 0.0, 0.4), g1 = rng_uniform_range(r, 0.6, 1.0);
    for (int c = 0; c < 3; c++) // grey levels with a slight random tint
        c0[c] = g0 + 0.1 * (rng_uniform(r) - 0.5), c1[c] = g1 + 0.1 * (rng_uniform(r) - 0.5);
    double blobs[24][3];
    int n_blobs = 10 + (int)rng_below(r, 8);
    for (int k = 0; k < n_blobs; k++)
        blobs[k][0] = rng_uniform_range(r, 0, IMG), blobs[k][1] = rng_uniform_range(r, 0, IMG),
        blobs[k][2] = rng_uniform_range(r, 1.2, 2.2);
    for (int y = 0; y < IMG; y++)
        for (int x = 0; x < IMG; x++) {
            double v;
            switch (cls) {
            case 0: v = 0.5 + 0.5 * sin(f * y + ph1); break;                  // horizontal stripes
            case 1: v = 0.5 + 0.5 * sin(f * x + ph1); break;                  // vertical stripes
            case 2: v = 0.5 + 0.5 * sin(f * x + ph1) * sin(f * y + ph2); break; // checkerboard
            default: {                                                        // dots
                v = 0;
                for (int k = 0; k < n_blobs; k++) {
                    double dx = x - blobs[k][0], dy = y - blobs[k][1];
                    v += exp(-(dx * dx + dy * dy) / (2 * blobs[k][2] * blobs[k][2]));
                }
                v = v > 1 ? 1 : v;
            }
            }
            for (int c = 0; c < 3; c++)
                img[(size_t)c * IMG * IMG + y * IMG + x] =
                    (float)((c0[c] + (c1[c] - c0[c]) * v + 0.05 * rng_normal(r) - 0.5) / 0.25);
        }
}

// A random crop of side S with a random horizontal flip and colour jitter (per-channel gain and offset).
static void augment(float *out, const float *img, int S, Rng *r) {
    int oy = (int)rng_below(r, IMG - S + 1), ox = (int)rng_below(r, IMG - S + 1), flip = rng_below(r, 2);
    for (int c = 0; c < 3; c++) {
        float gain = (float)rng_uniform_range(r, 0.88, 1.12), off = (float)rng_uniform_range(r, -0.24, 0.24);
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                int sx = flip ? S - 1 - x : x;
                out[(size_t)c * S * S + y * S + x] = gain * img[(size_t)c * IMG * IMG + (oy + y) * IMG + ox + sx] + off;
            }
    }
}

static void center_crop(float *out, const float *img, int S) {
    int o = (IMG - S) / 2;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < S; y++)
            memcpy(out + (size_t)c * S * S + y * S, img + (size_t)c * IMG * IMG + (o + y) * IMG + o, sizeof(float) * S);
}

// k-NN (cosine, k = 10, majority vote) accuracy of test features against train features.
static double knn_accuracy(const float *ftr, const int *ytr, int ntr, const float *fte, const int *yte, int nte, int D) {
    enum { KNN = 10 };
    int correct = 0;
    double *sim = malloc(sizeof(double) * ntr);
    for (int i = 0; i < nte; i++) {
        const float *q = fte + (size_t)i * D;
        double nq = 0;
        for (int d = 0; d < D; d++) nq += (double)q[d] * q[d];
        for (int j = 0; j < ntr; j++) {
            const float *t = ftr + (size_t)j * D;
            double dot = 0, nt = 0;
            for (int d = 0; d < D; d++) dot += (double)q[d] * t[d], nt += (double)t[d] * t[d];
            sim[j] = dot / sqrt(nq * nt + 1e-30);
        }
        int votes[N_CLASSES] = {0};
        for (int k = 0; k < KNN; k++) {
            int best = 0;
            for (int j = 1; j < ntr; j++)
                if (sim[j] > sim[best]) best = j;
            votes[ytr[best]]++;
            sim[best] = -INFINITY;
        }
        int pred = 0;
        for (int c = 1; c < N_CLASSES; c++)
            if (votes[c] > votes[pred]) pred = c;
        correct += pred == yte[i];
    }
    free(sim);
    return (double)correct / nte;
}

typedef struct {
    double knn_init, knn, probe_init, probe, margin, lnK;
    int prototypes;
} LearnResult;

// Linear probe (L-BFGS, train/linear_probe.c) accuracy on the teacher's CLS features.
static double probe_accuracy(const float *ftr, const int *ytr, int ntr, const float *fte, const int *yte, int nte, int D) {
    const double lambdas[] = {1e-4, 1e-3, 1e-2, 1e-1};
    int *pred = malloc(sizeof(int) * nte);
    double lam;
    linear_probe(ftr, ytr, ntr, fte, nte, D, N_CLASSES, lambdas, 4, 7, pred, &lam);
    int correct = 0;
    for (int i = 0; i < nte; i++) correct += pred[i] == yte[i];
    free(pred);
    return (double)correct / nte;
}

static void evaluate2(SslModel *m, Backend *be, const float *train_imgs, const int *ytr, int ntr, const float *test_imgs,
                      const int *yte, int nte, double *knn, double *probe) {
    const int D = m->cfg.vit.dim;
    float *crops = malloc(sizeof(float) * (size_t)(ntr > nte ? ntr : nte) * 3 * GCROP * GCROP);
    float *ftr = malloc(sizeof(float) * (size_t)ntr * D), *fte = malloc(sizeof(float) * (size_t)nte * D);
    for (int i = 0; i < ntr; i++) center_crop(crops + (size_t)i * 3 * GCROP * GCROP, train_imgs + (size_t)i * 3 * IMG * IMG, GCROP);
    ssl_embed(m, be, 1, crops, ntr, GCROP, ftr);
    for (int i = 0; i < nte; i++) center_crop(crops + (size_t)i * 3 * GCROP * GCROP, test_imgs + (size_t)i * 3 * IMG * IMG, GCROP);
    ssl_embed(m, be, 1, crops, nte, GCROP, fte);
    *knn = knn_accuracy(ftr, ytr, ntr, fte, yte, nte, D);
    *probe = probe_accuracy(ftr, ytr, ntr, fte, yte, nte, D);
    free(crops), free(ftr), free(fte);
}

// Trains cfg (batch, local crops, heads ...) with schedule sc for STEPS steps from a fixed seed on the
// textures; the teacher's k-NN and linear probe at init and after, the head's margin and prototype usage.
static void train_textures(SslConfig *cfg, ScheduleConfig sc, int STEPS, LearnResult *res) {
    // DINO_LEARNS_SEED: another seed for data, init and draws (the sweep's seed check; CI uses 2024)
    const char *seed_env = getenv("DINO_LEARNS_SEED");
    const uint64_t seed = seed_env && seed_env[0] ? strtoull(seed_env, NULL, 10) : 2024;
    enum { N_TRAIN_POOL = 512, N_KNN_TRAIN = 200, N_TEST = 200, DIAG = 8 };
    const int B = cfg->batch, N_LOCAL = cfg->n_local;
    // a tiny model: threads cost more than they save (and the CI machine's 2 cores are shared)
    omp_set_num_threads(1);
    // data: a pool for SSL training, labelled k-NN train and test sets (disjoint draws)
    float *pool = malloc(sizeof(float) * (size_t)N_TRAIN_POOL * 3 * IMG * IMG);
    float *tr = malloc(sizeof(float) * (size_t)N_KNN_TRAIN * 3 * IMG * IMG);
    float *te = malloc(sizeof(float) * (size_t)N_TEST * 3 * IMG * IMG);
    int ytr[N_KNN_TRAIN], yte[N_TEST];
    for (int i = 0; i < N_TRAIN_POOL; i++) {
        Rng r = rng_make(seed, 1, (uint64_t)i, 0);
        make_image(pool + (size_t)i * 3 * IMG * IMG, i % N_CLASSES, &r);
    }
    for (int i = 0; i < N_KNN_TRAIN; i++) {
        Rng r = rng_make(seed, 2, (uint64_t)i, 0);
        ytr[i] = i % N_CLASSES;
        make_image(tr + (size_t)i * 3 * IMG * IMG, ytr[i], &r);
    }
    for (int i = 0; i < N_TEST; i++) {
        Rng r = rng_make(seed, 3, (uint64_t)i, 0);
        yte[i] = i % N_CLASSES;
        make_image(te + (size_t)i * 3 * IMG * IMG, yte[i], &r);
    }
    char err[DINO_ERRLEN];
    cfg->global_crop = GCROP, cfg->local_crop = LCROP;
    Backend *be = backend_cpu_new();
    SslModel m;
    CHECK(ssl_model_init(&m, be, cfg, seed, err) == 0, "%s", err);
    const int D = cfg->vit.dim, K = cfg->dino_head.K;
    evaluate2(&m, be, tr, ytr, N_KNN_TRAIN, te, yte, N_TEST, &res->knn_init, &res->probe_init);

    const int N = (GCROP / cfg->vit.patch) * (GCROP / cfg->vit.patch);
    float *gcrops = malloc(sizeof(float) * 2 * B * 3 * GCROP * GCROP);
    float *lcrops = malloc(sizeof(float) * (N_LOCAL > 0 ? N_LOCAL : 1) * B * 3 * LCROP * LCROP);
    uint8_t *masks = malloc((size_t)2 * B * N);
    CollapseTracker ct;
    collapse_init(&ct, K, D, 2 * B, DIAG);
    SslDiag diag = {.teacher_argmax = malloc(sizeof(int) * 2 * B), .teacher_cls = malloc(sizeof(float) * 2 * B * D),
                    .teacher_patch = malloc(sizeof(float) * 2 * B * D)};
    clock_t t0 = clock();
    SslStepStats st = {0};
    double ent_sum = 0;
    for (int it = 0; it < STEPS; it++) {
        Rng pick = rng_make(seed, 10, (uint64_t)it, 0);
        for (int b = 0; b < B; b++) {
            const float *img = pool + (size_t)rng_below(&pick, N_TRAIN_POOL) * 3 * IMG * IMG;
            for (int c = 0; c < 2; c++) {
                Rng r = rng_make(seed, 11, (uint64_t)it, (uint64_t)(b * 16 + c));
                augment(gcrops + ((size_t)c * B + b) * 3 * GCROP * GCROP, img, GCROP, &r);
            }
            for (int c = 0; c < N_LOCAL; c++) {
                Rng r = rng_make(seed, 12, (uint64_t)it, (uint64_t)(b * 16 + c));
                augment(lcrops + ((size_t)c * B + b) * 3 * LCROP * LCROP, img, LCROP, &r);
            }
        }
        // iBOT masks: half of the global-crop images, ratios in [0.1, 0.5]
        memset(masks, 0, (size_t)2 * B * N);
        for (int i = 0; i < B; i++) {
            Rng r = rng_make(seed, 13, (uint64_t)it, (uint64_t)i);
            int img = (int)rng_below(&r, 2 * B), k = 1 + (int)(N * rng_uniform_range(&r, 0.1, 0.5));
            int perm[64];
            rng_permutation(&r, perm, N);
            for (int j = 0; j < k && j < N; j++) masks[(size_t)img * N + perm[j]] = 1;
        }
        SslBatch batch = {.global_crops = gcrops, .local_crops = lcrops, .masks = masks,
                          .drop_key = rng_make(seed, 14, (uint64_t)it, 0), .diag = it >= STEPS - DIAG ? &diag : NULL};
        ScheduleValues sv = schedule_at(&sc, it);
        CHECK(ssl_step(&m, be, NULL, &batch, &sv, &st, err) == 0, "step %d: %s", it, err);
        if (batch.diag) {
            collapse_add(&ct, diag.teacher_argmax, diag.teacher_cls, diag.teacher_patch, diag.agreement);
            ent_sum += st.teacher_entropy;
        }
        if (it % 250 == 0 || it == STEPS - 1)
            printf("it %4d  lr %.2e  total %.4f (local %.4f global %.4f koleo %.4f ibot %.4f)  teacher entropy %.3f  "
                   "student CLS std %.4f\n",
                   it, sv.lr, st.total_loss, st.dino_local_crops_loss, st.dino_global_crops_loss, st.koleo_loss,
                   st.ibot_loss, st.teacher_entropy, st.student_cls_std);
    }
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    res->lnK = log((double)K);
    CollapseReport rep;
    collapse_report(&ct, res->lnK - ent_sum / DIAG, NAN, 1, &rep);
    res->margin = rep.margin, res->prototypes = rep.prototypes;
    evaluate2(&m, be, tr, ytr, N_KNN_TRAIN, te, yte, N_TEST, &res->knn, &res->probe);
    printf("%d classes (chance %.2f), %d steps (%.1f s CPU): k-NN %.3f -> %.3f, linear probe %.3f -> %.3f; head: "
           "margin %.3f of ln K = %.3f, %d prototypes of %d over the last %d batches, agreement %.2f, teacher RankMe "
           "%.2f%s%s\n",
           N_CLASSES, 1.0 / N_CLASSES, STEPS, secs, res->knn_init, res->knn, res->probe_init, res->probe, res->margin,
           res->lnK, res->prototypes, K, DIAG, rep.agreement, rep.rankme_cls, rep.collapse ? ", collapse: " : "",
           rep.collapse ? rep.collapse : "");
    CHECK(st.student_cls_std > 0.02, "student CLS features collapsed (std %.4f)", st.student_cls_std);
    collapse_free(&ct);
    free(diag.teacher_argmax), free(diag.teacher_cls), free(diag.teacher_patch);
    ssl_model_free(&m, be);
    backend_free(be);
    free(pool), free(tr), free(te), free(gcrops), free(lcrops), free(masks);
}

// The head must not collapse: margin at least min_margin_frac of ln K, at least min_prototypes used.
static void check_head(const LearnResult *r, double min_margin_frac, int min_prototypes) {
    CHECK(r->margin >= min_margin_frac * r->lnK, "head uniform: teacher entropy margin %.4f below %.2f of ln K = %.3f",
          r->margin, min_margin_frac, r->lnK);
    CHECK(r->prototypes >= min_prototypes, "prototype usage: %d distinct teacher argmax prototypes over the last 8 "
          "batches, below %d", r->prototypes, min_prototypes);
}

// The test's own recipe (a sharp teacher throughout: short runs need it).
static void learn(float koleo_weight, double base_lr, int STEPS, double min_acc, double min_gain) {
    VitConfig vc;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&vc, "vit_test", 4, GCROP, 0, "mlp", err) == 0, "%s", err);
    vc.dim = 48, vc.heads = 3, vc.depth = 2, vc.ffn_hidden = 96, vc.layerscale = 1.0f, vc.drop_path_rate = 0.1;
    SslConfig cfg;
    ssl_config_default(&cfg, &vc);
    cfg.dino_head = (HeadConfig){.in_dim = 48, .hidden = 96, .bottleneck = 32, .K = 256, .nlayers = 3};
    cfg.batch = 16, cfg.n_local = 4;
    cfg.koleo_loss_weight = koleo_weight;
    ScheduleConfig sc = schedule_config_default(base_lr, 1024);
    sc.epoch_length = 20;
    sc.epochs = STEPS / 20;
    sc.warmup_epochs = 3, sc.warmup_teacher_temp_epochs = 10, sc.freeze_last_layer_epochs = 1;
    sc.momentum_teacher = 0.99;
    sc.warmup_teacher_temp = sc.teacher_temp = 0.04;
    LearnResult r;
    train_textures(&cfg, sc, STEPS, &r);
    CHECK(r.knn >= min_acc, "trained k-NN accuracy %.3f below %.2f", r.knn, min_acc);
    CHECK(r.knn >= r.knn_init + min_gain, "training did not improve k-NN accuracy by %.2f: %.3f at init, %.3f trained",
          min_gain, r.knn_init, r.knn);
    check_head(&r, 0.1, N_CLASSES);
}

// The whole objective (DINO + iBOT + KoLeo 0.1). Measured: init 0.48, trained 0.885 (1500 steps: 0.91,
// 0.915 with another seed); KoLeo alone would pass too, hence the next test.
TEST(full_objective_learns_textures) { learn(0.1f, 1e-3, 1000, 0.8, 0.3); }

// DINO + iBOT alone: the check that the distillation losses themselves learn. Measured: init 0.48,
// trained 0.765 (0.71 with another seed); a missing or broken DINO/iBOT signal stays near the init.
TEST(dino_ibot_alone_learns_textures) { learn(0.0f, 1e-3, 1500, 0.62, 0.12); }

// The demo's recipe (configs/demo.yaml, or DINO_LEARNS_CONFIG): everything but the architecture and the
// crop sizes (the test's tiny ViT on 24 px textures) comes from the config: heads, K, centering,
// temperatures and their warm-up, lr and its scaling and warm-up, weight decay, EMA momentum, LayerScale,
// stochastic depth, KoLeo, batch, local crops, run length. It must learn: a head that is not uniform,
// several prototypes, the teacher above init on k-NN and linear probe. The demo recipe before issue #14
// (K = 1024, LayerScale 1e-5, teacher 0.04 -> 0.07) fails it: head uniform (docs/small-scale.md).
TEST(demo_recipe_learns_textures) {
    const char *path = getenv("DINO_LEARNS_CONFIG");
    if (!path || !path[0]) path = test_src_path("configs/demo.yaml");
    char *ov[] = {"student.arch=vit_test", "student.embed_dim=48", "student.depth=2", "student.num_heads=3",
                  "student.patch_size=4", "crops.global_crops_size=16", "crops.local_crops_size=8"};
    Config c;
    char err[DINO_ERRLEN];
    if (config_load(&c, path, (int)(sizeof ov / sizeof ov[0]), ov, err)) {
        CHECK(0, "%s: %s", path, err);
        return;
    }
    SslConfig cfg;
    if (config_to_ssl(&c, &cfg, err)) {
        CHECK(0, "%s", err);
        return;
    }
    ScheduleConfig sc = config_to_schedule(&c, 1);
    const int steps = (int)config_total_iterations(&c);
    printf("recipe %s: batch %d, %d local crops, K %d, %s, teacher temperature %.3f -> %.3f, lr %.2e, momentum %.4f, "
           "LayerScale %g, %d steps\n",
           path, cfg.batch, cfg.n_local, cfg.dino_head.K, c.train.centering, c.teacher.warmup_teacher_temp,
           c.teacher.teacher_temp, sc.lr, c.teacher.momentum_teacher, cfg.vit.layerscale, steps);
    LearnResult r;
    train_textures(&cfg, sc, steps, &r);
    check_head(&r, 0.1, N_CLASSES);
    CHECK(r.knn >= r.knn_init + 0.1, "k-NN %.3f not 0.1 above init %.3f", r.knn, r.knn_init);
    CHECK(r.probe >= r.probe_init + 0.05, "linear probe %.3f not 0.05 above init %.3f", r.probe, r.probe_init);
}

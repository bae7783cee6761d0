// Activation storage modes of the ViT (model/vit.h): recomputation in backward and forward-only
// activations must give the same numbers, bit for bit, as storing everything, and hold the memory
// they claim (counted by a backend that records every allocation).
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/backend.h"
#include "model/attention_layout.h"
#include "model/vit.h"
#include "tests/gradcheck.h"
#include "train/config.h"
#include "train/memory_plan.h"
#include "train/ssl_step.h"
#include "train/train.h"

// ---- a CPU backend that counts what is allocated ----------------------------------------------------

static size_t g_live_bytes;
static void *(*g_cpu_alloc)(Backend *, size_t);
static void (*g_cpu_release)(Backend *, void *);
typedef struct {
    void *p;
    size_t bytes;
} Alloc;
static Alloc g_allocs[4096];
static int g_n_allocs;

static void *counting_alloc(Backend *be, size_t bytes) {
    void *p = g_cpu_alloc(be, bytes);
    CHECK(g_n_allocs < (int)(sizeof g_allocs / sizeof g_allocs[0]), "too many allocations for the counter");
    g_allocs[g_n_allocs++] = (Alloc){p, bytes};
    g_live_bytes += bytes;
    return p;
}
static void counting_release(Backend *be, void *p) {
    for (int i = 0; i < g_n_allocs; i++)
        if (g_allocs[i].p == p) {
            g_live_bytes -= g_allocs[i].bytes;
            g_allocs[i] = g_allocs[--g_n_allocs];
            break;
        }
    g_cpu_release(be, p);
}
static Backend *counting_backend(void) {
    Backend *be = backend_cpu_new();
    g_cpu_alloc = be->alloc, g_cpu_release = be->release;
    be->alloc = counting_alloc, be->release = counting_release;
    g_live_bytes = 0, g_n_allocs = 0;
    return be;
}

// ---- the ViT alone --------------------------------------------------------------------------------

static VitConfig small_config(const char *ffn, int registers, double drop, int depth) {
    VitConfig cfg;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&cfg, "vit_test", 4, 16, registers, ffn, err) == 0, "%s", err);
    cfg.dim = 16, cfg.heads = 2, cfg.depth = depth;
    cfg.ffn_hidden = 24;
    cfg.drop_path_rate = drop;
    cfg.layerscale = 0.5f;
    return cfg;
}

typedef struct {
    int B, crop;
    float *img, *dout;
    uint8_t *mask;
    int *subsets;
} Group;

// Forward both crop groups, then backward in reverse order (the SSL step's order), in `mode`; returns
// the gradient buffer (host) and the outputs in out[g] (host).
enum { RUN_SHARE = 1, RUN_BACKWARD_IN_ORDER = 2 }; // group 1 borrows group 0's scratch; backward 0 then 1
static float *run_flags(Backend *be, const Vit *vit, const float *P, size_t total, Group *grp, int n,
                        VitActsMode mode, float **out, size_t *bytes, int flags) {
    const int D = vit->cfg.dim;
    float *G = calloc(total, sizeof(float));
    VitActs *a[2];
    *bytes = 0;
    for (int g = 0; g < n; g++) {
        size_t before = g_live_bytes;
        a[g] = vit_acts_new_sharing(be, vit, grp[g].B, grp[g].crop, mode, g && (flags & RUN_SHARE) ? a[0] : NULL);
        CHECK(g_live_bytes - before == vit_acts_bytes(a[g]), "activations hold %zu bytes but report %zu",
              g_live_bytes - before, vit_acts_bytes(a[g]));
        *bytes += vit_acts_bytes(a[g]);
    }
    for (int g = 0; g < n; g++) {
        const float *xn = vit_forward(be, vit, P, a[g], grp[g].img, grp[g].mask, grp[g].subsets);
        size_t nout = (size_t)grp[g].B * vit_acts_tokens(a[g]) * D;
        out[g] = malloc(sizeof(float) * nout);
        memcpy(out[g], xn, sizeof(float) * nout);
    }
    if (mode != VIT_ACTS_FORWARD_ONLY)
        for (int k = 0; k < n; k++) {
            int g = flags & RUN_BACKWARD_IN_ORDER ? k : n - 1 - k;
            vit_backward(be, vit, P, G, a[g], grp[g].dout);
        }
    for (int g = 0; g < n; g++) vit_acts_free(be, a[g]);
    return G;
}
static float *run(Backend *be, const Vit *vit, const float *P, size_t total, Group *grp, int n, VitActsMode mode,
                  float **out, size_t *bytes) {
    return run_flags(be, vit, P, total, grp, n, mode, out, bytes, 0);
}

static void modes_agree(VitConfig cfg, int use_masks) {
    Backend *be = counting_backend();
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "backbone.");
    float *P = calloc(tab.total, sizeof(float));
    Rng r = rng_make(77, 0, 0, 0);
    for (int i = 0; i < tab.n; i++) {
        const TensorSpec *t = &tab.t[i];
        for (size_t j = 0; j < t->numel; j++) P[t->offset + j] = 0.3f * (float)rng_normal(&r);
    }
    Group grp[2] = {{.B = 4, .crop = 16}, {.B = 6, .crop = 8}}; // the second with an interpolated pos-embed
    for (int g = 0; g < 2; g++) {
        int B = grp[g].B, S = grp[g].crop, N = (S / cfg.patch) * (S / cfg.patch);
        int T = 1 + cfg.n_registers + N;
        grp[g].img = malloc(sizeof(float) * B * 3 * S * S);
        gc_fill_normal(grp[g].img, (size_t)B * 3 * S * S, 1, &r);
        grp[g].dout = malloc(sizeof(float) * B * T * cfg.dim);
        gc_fill_normal(grp[g].dout, (size_t)B * T * cfg.dim, 1, &r);
        if (use_masks && g == 0) {
            grp[g].mask = calloc((size_t)B * N, 1);
            for (int i = 0; i < B * N; i++) grp[g].mask[i] = (i % 3) == 1;
        }
        if (cfg.drop_path_rate > 0) {
            int k = vit_drop_subset_size(&vit, B);
            CHECK(k < B, "drop path must keep fewer than B images here");
            grp[g].subsets = malloc(sizeof(int) * cfg.depth * 2 * k);
            vit_draw_drop_subsets(&vit, B, rng_make(9, (uint64_t)g, 0, 0), grp[g].subsets);
        }
    }
    float *out_all[2], *out_rec[2], *out_fwd[2];
    size_t b_all, b_rec, b_fwd;
    float *G_all = run(be, &vit, P, tab.total, grp, 2, VIT_ACTS_STORE_ALL, out_all, &b_all);
    float *G_rec = run(be, &vit, P, tab.total, grp, 2, VIT_ACTS_RECOMPUTE, out_rec, &b_rec);
    float *G_fwd = run(be, &vit, P, tab.total, grp, 2, VIT_ACTS_FORWARD_ONLY, out_fwd, &b_fwd);
    CHECK(g_live_bytes == 0, "%zu bytes of activations not released", g_live_bytes);

    for (int g = 0; g < 2; g++) {
        size_t n = (size_t)grp[g].B * (1 + cfg.n_registers + (grp[g].crop / cfg.patch) * (grp[g].crop / cfg.patch)) *
                   cfg.dim;
        CHECK(memcmp(out_all[g], out_rec[g], sizeof(float) * n) == 0, "group %d: recompute changes the output", g);
        CHECK(memcmp(out_all[g], out_fwd[g], sizeof(float) * n) == 0, "group %d: forward-only changes the output", g);
    }
    double gn = 0;
    for (int i = 0; i < tab.n; i++) {
        const TensorSpec *t = &tab.t[i];
        CHECK(memcmp(G_all + t->offset, G_rec + t->offset, sizeof(float) * t->numel) == 0,
              "%s: recomputed gradient differs from the stored one", t->name);
        for (size_t j = 0; j < t->numel; j++) gn += (double)G_all[t->offset + j] * G_all[t->offset + j];
    }
    CHECK(gn > 0, "no gradient at all: the comparison would be empty");

    // Memory: recomputation keeps one block's intermediates instead of depth; forward-only also drops
    // the block inputs and the backward scratch.
    CHECK(b_rec < b_all && b_fwd < b_rec, "bytes: store-all %zu, recompute %zu, forward-only %zu", b_all, b_rec, b_fwd);
    // Per group: recomputation holds one full set of a block's intermediates (x_mid, xs1, ln1, att, proj,
    // xs2, ln2, fc2: 8 D wide; qkv 3D; fc1; act; LayerNorm statistics; attention probabilities); stored
    // activations hold each block's set but for xs1, xs2, ln1, ln2 and act, which backward derives again
    // into buffers shared by the blocks (xs and ln D wide, act Hf). store-all - recompute = depth x stored
    // - full + shared.
    size_t expect = 0;
    for (int g = 0; g < 2; g++) {
        size_t rows = (size_t)grp[g].B * (1 + cfg.n_registers + (grp[g].crop / cfg.patch) * (grp[g].crop / cfg.patch));
        size_t D = (size_t)cfg.dim, Hf = (size_t)cfg.ffn_hidden, fo = cfg.ffn == VIT_FFN_MLP ? Hf : 2 * Hf;
        size_t T = rows / (size_t)grp[g].B;
        size_t full = rows * D * 8 + rows * 4 + rows * 3 * D + rows * fo + rows * Hf +
                      be->attention_saved_floats(be, grp[g].B, (int)T, cfg.heads, cfg.dim / cfg.heads);
        size_t stored = full - rows * (4 * D + Hf), shared = rows * (2 * D + Hf);
        expect += ((size_t)cfg.depth * stored - full + shared) * sizeof(float);
    }
    CHECK(b_all - b_rec == expect, "recompute saves %zu bytes, expected %zu", b_all - b_rec, expect);

    // Group 1 (fewer rows) borrowing group 0's backward scratch and re-derive buffers: the same bits, in
    // either backward order, and exactly those buffers fewer.
    for (int mode = VIT_ACTS_STORE_ALL; mode <= VIT_ACTS_RECOMPUTE; mode++) {
        const float *G_ref = mode == VIT_ACTS_STORE_ALL ? G_all : G_rec;
        const size_t b_ref = mode == VIT_ACTS_STORE_ALL ? b_all : b_rec;
        const size_t rows1 = (size_t)grp[1].B * (1 + cfg.n_registers + (grp[1].crop / cfg.patch) * (grp[1].crop / cfg.patch));
        const size_t D = (size_t)cfg.dim, Hf = (size_t)cfg.ffn_hidden, fo = cfg.ffn == VIT_FFN_MLP ? Hf : 2 * Hf;
        size_t saved = rows1 * (6 * D + fo + Hf) * sizeof(float); // dx, dS_a, dS_b, dqkv, dfc1, dact
        if (mode == VIT_ACTS_STORE_ALL) saved += rows1 * (2 * D + Hf) * sizeof(float); // xs, ln, act
        for (int order = 0; order < 2; order++) {
            // the gradients add up in backward order: compare with an unshared run in the same order
            float *o_sh[2], *o_un[2];
            size_t b_sh, b_un;
            const int of = order ? RUN_BACKWARD_IN_ORDER : 0;
            float *G_un = order ? run_flags(be, &vit, P, tab.total, grp, 2, (VitActsMode)mode, o_un, &b_un, of) : NULL;
            float *G_sh = run_flags(be, &vit, P, tab.total, grp, 2, (VitActsMode)mode, o_sh, &b_sh, RUN_SHARE | of);
            CHECK(memcmp(G_sh, order ? G_un : G_ref, sizeof(float) * tab.total) == 0,
                  "mode %d order %d: sharing changes the gradients", mode, order);
            CHECK(b_ref - b_sh == saved, "mode %d: sharing saves %zu bytes, expected %zu", mode, b_ref - b_sh, saved);
            free(G_sh), free(o_sh[0]), free(o_sh[1]);
            if (G_un) free(G_un), free(o_un[0]), free(o_un[1]);
        }
    }
    CHECK(g_live_bytes == 0, "%zu bytes of activations not released", g_live_bytes);

    for (int g = 0; g < 2; g++) {
        free(out_all[g]), free(out_rec[g]), free(out_fwd[g]);
        free(grp[g].img), free(grp[g].dout), free(grp[g].mask), free(grp[g].subsets);
    }
    free(G_all), free(G_rec), free(G_fwd), free(P);
    vit_free(&vit);
    param_table_free(&tab);
    backend_free(be);
}

TEST(recompute_equals_store_all_mlp_masks_droppath) { modes_agree(small_config("mlp", 4, 0.4, 3), 1); }
TEST(recompute_equals_store_all_swiglu_plain) { modes_agree(small_config("swiglu", 0, 0.0, 4), 0); }

// ---- the whole SSL step ---------------------------------------------------------------------------

// Two SSL steps with the student's activations recomputed, and then also with the batches staged ahead
// (ssl_stage_batch, as the trainer feeds a GPU), give the same student, teacher and losses, bit for bit,
// as storing them and uploading each batch in the step (drop path, masks, registers, both crop sizes);
// recomputation in less memory.
TEST(ssl_step_recompute_and_staging_bit_identical) {
    VitConfig vc = small_config("mlp", 1, 0.3, 3);
    SslConfig cfg;
    ssl_config_default(&cfg, &vc);
    cfg.dino_head = (HeadConfig){.in_dim = vc.dim, .hidden = 20, .bottleneck = 8, .K = 32, .nlayers = 3};
    cfg.batch = 4, cfg.n_local = 2, cfg.global_crop = 16, cfg.local_crop = 8;
    const int B = 4, G = 16, L = 8, N = 16;
    Rng r = rng_make(31, 0, 0, 0);
    // one image more than a batch: step s reads from image s on
    float *gimg = malloc(sizeof(float) * (2 * B + 1) * 3 * G * G), *limg = malloc(sizeof(float) * (2 * B + 1) * 3 * L * L);
    gc_fill_normal(gimg, (size_t)(2 * B + 1) * 3 * G * G, 1, &r);
    gc_fill_normal(limg, (size_t)(2 * B + 1) * 3 * L * L, 1, &r);
    uint8_t masks[2 * 4 * 16] = {0};
    for (int i = 0; i < 2 * B * N; i++) masks[i] = (i % 5) == 2 && i < B * N;
    float *params[3][2];
    double loss[3][2];
    size_t live[3];
    for (int rec = 0; rec < 3; rec++) {
        Backend *be = counting_backend();
        cfg.recompute_activations = rec > 0;
        cfg.staged_upload = rec == 2;
        SslModel m;
        char err[DINO_ERRLEN];
        CHECK(ssl_model_init(&m, be, &cfg, 3, err) == 0, "%s", err);
        live[rec] = g_live_bytes;
        if (rec == 2) { // both batches staged before the first step (the most the staging holds)
            for (int s = 0; s < 2; s++)
                ssl_stage_batch(&m, be, gimg + (size_t)s * 3 * G * G, limg + (size_t)s * 3 * L * L, s ? masks : NULL, s);
        }
        for (int s = 0; s < 2; s++) {
            // step s sees the crops shifted by s images' worth (distinct batches) and masks on step 1 only
            SslBatch b = {.global_crops = gimg + (size_t)s * 3 * G * G, .local_crops = limg + (size_t)s * 3 * L * L,
                          .masks = s ? masks : NULL, .drop_key = rng_make(5, (uint64_t)s, 0, 0), .staged = rec == 2};
            ScheduleValues sv = {.lr = 1e-3, .wd = 0.04, .momentum = 0.99, .teacher_temp = 0.05, .last_layer_lr = 1e-3};
            SslStepStats st;
            CHECK(ssl_step(&m, be, NULL, &b, &sv, &st, err) == 0, "%s", err);
            loss[rec][s] = st.total_loss;
        }
        for (int k = 0; k < 2; k++) {
            params[rec][k] = malloc(sizeof(float) * m.tab.total);
            be->to_host(be, params[rec][k], k ? m.teacher : m.student, sizeof(float) * m.tab.total);
        }
        size_t total = m.tab.total;
        if (rec) {
            CHECK(memcmp(params[0][0], params[rec][0], sizeof(float) * total) == 0, "student differs (variant %d)", rec);
            CHECK(memcmp(params[0][1], params[rec][1], sizeof(float) * total) == 0, "teacher differs (variant %d)", rec);
            // and the step moved the student: the comparison is not between two untouched inits
            float *init = calloc(total, sizeof(float));
            vit_init_weights(&m.vit, init, 3);
            CHECK(memcmp(init, params[rec][0], sizeof(float) * m.vit.norm_b) != 0, "the steps changed nothing");
            free(init);
        }
        ssl_model_free(&m, be);
        backend_free(be);
    }
    for (int rec = 1; rec < 3; rec++)
        for (int s = 0; s < 2; s++)
            CHECK(loss[0][s] == loss[rec][s], "variant %d step %d loss %.9g vs %.9g", rec, s, loss[rec][s], loss[0][s]);
    CHECK(loss[0][0] != loss[0][1], "the two steps saw the same loss: not distinct batches");
    CHECK(live[1] < live[0], "recomputation does not save memory: %zu vs %zu bytes", live[1], live[0]);
    for (int rec = 0; rec < 3; rec++) free(params[rec][0]), free(params[rec][1]);
    free(gimg), free(limg);
}

// ---- the memory plan (dinotrain --plan-memory) -----------------------------------------------------

// The plan backend counts exactly what the same training state allocates on a real backend, and the
// categories add up.
TEST(memory_plan_counts_real_allocations) {
    char err[DINO_ERRLEN];
    Config cfg;
    const char *ov[] = {"train.batch_size_per_gpu=3", "dist.zero1=true"};
    CHECK(config_load(&cfg, test_src_path("configs/demo.yaml"), 2, (char **)ov, err) == 0, "%s", err);
    for (int rec = 0; rec < 2; rec++) {
        cfg.recompute_activations = rec;
        MemoryPlan p;
        CHECK(memory_plan(&cfg, 4, &p, err) == 0, "%s", err);
        SslConfig sc;
        CHECK(train_ssl_config(&cfg, 4, 0, &sc, err) == 0, "%s", err);
        Backend *be = counting_backend();
        SslModel m;
        CHECK(ssl_model_init(&m, be, &sc, 0, err) == 0, "%s", err);
        CHECK(g_live_bytes == p.total, "plan says %zu bytes, the CPU backend allocated %zu", p.total, g_live_bytes);
        SslMemory r = ssl_memory(&m);
        CHECK(memcmp(&r, &p.model, sizeof r) == 0, "the categories differ between the plan and the real model");
        CHECK(p.model.weights == 2 * p.model.grads, "weights %zu, gradients %zu", p.model.weights, p.model.grads);
        // ZeRO-1 over 4 ranks: each holds about a quarter of the moments
        CHECK(p.model.optimizer * 4 >= p.model.weights && p.model.optimizer * 4 <= p.model.weights + 4 * 256,
              "moments %zu for weights %zu over 4 ranks", p.model.optimizer, p.model.weights);
        CHECK(p.other > 0 && p.model.student_acts > p.model.teacher_acts, "categories: other %zu student %zu teacher %zu",
              p.other, p.model.student_acts, p.model.teacher_acts);
        ssl_model_free(&m, be);
        CHECK(g_live_bytes == 0, "%zu bytes left after ssl_model_free", g_live_bytes);
        backend_free(be);
    }
}

// The real model of a two-pair config: moving to pair 1 allocates exactly the plan's bytes (the largest
// pair), moving back to pair 0 and ssl_model_free release what it allocated.
static void check_pair_switch(const Config *two, size_t planned) {
    char err[DINO_ERRLEN];
    SslConfig sc;
    CHECK(train_ssl_config(two, 1, 0, &sc, err) == 0, "%s", err);
    Backend *be = counting_backend();
    SslModel m;
    CHECK(ssl_model_init(&m, be, &sc, 0, err) == 0, "%s", err);
    const size_t at0 = g_live_bytes;
    ssl_use_pair(&m, be, 1);
    CHECK(g_live_bytes == planned && g_live_bytes > at0, "pair 1: %zu bytes live, plan %zu, pair 0 %zu", g_live_bytes,
          planned, at0);
    ssl_use_pair(&m, be, 0);
    CHECK(g_live_bytes == at0, "back at pair 0: %zu bytes live, was %zu", g_live_bytes, at0);
    ssl_model_free(&m, be);
    CHECK(g_live_bytes == 0, "%zu bytes left after ssl_model_free", g_live_bytes);
    backend_free(be);
}

// Size pairs (high-resolution phase): one pair's activations at a time, every other buffer sized for the
// largest sides, so the plan of pairs 32/16 + 48/24 is exactly the plan of the one pair 48/24 (same
// pos-embed grid); and the model really frees a pair's activations when it moves to another.
TEST(memory_plan_counts_the_largest_size_pair) {
    char err[DINO_ERRLEN];
    Config two, one;
    const char *ov2[] = {"train.batch_size_per_gpu=3", "student.img_size=112", "crops.global_crops_size=[112, 160]",
                         "crops.local_crops_size=[48, 64]", "crops.global_local_crop_pairs_ratios=[0.5, 0.5]"};
    const char *ov1[] = {"train.batch_size_per_gpu=3", "student.img_size=112", "crops.global_crops_size=160",
                         "crops.local_crops_size=64"};
    CHECK(config_load(&two, test_src_path("configs/demo.yaml"), 5, (char **)ov2, err) == 0, "%s", err);
    CHECK(config_load(&one, test_src_path("configs/demo.yaml"), 4, (char **)ov1, err) == 0, "%s", err);
    MemoryPlan p2, p1;
    CHECK(memory_plan(&two, 1, &p2, err) == 0, "%s", err);
    CHECK(memory_plan(&one, 1, &p1, err) == 0, "%s", err);
    CHECK(p2.total == p1.total && p2.pair == 1, "two pairs: %zu bytes at pair %d; the largest alone: %zu", p2.total,
          p2.pair, p1.total);
    CHECK(memcmp(&p2.model, &p1.model, sizeof p1.model) == 0, "categories differ");
    // the real model: moving to pair 1 and back frees what it allocated
    check_pair_switch(&two, p2.total);
}

// With Gram anchoring per size pair (crops.gram_teacher_crops_size a list, 1.5x each global): the plan is
// the largest pair's with its Gram teacher (activations at 240 px, resampling 15x15 -> 10x10), the same as
// that pair alone; the real model's pair switch frees the Gram teacher's per-pair buffers too.
TEST(memory_plan_counts_the_largest_pairs_gram_teacher) {
    char err[DINO_ERRLEN];
    Config two, one, nogram;
    const char *ov2[] = {"train.batch_size_per_gpu=3", "student.img_size=112", "crops.global_crops_size=[128, 160]",
                         "crops.local_crops_size=[48, 64]", "crops.global_local_crop_pairs_ratios=[0.5, 0.5]",
                         "gram.use_loss=true", "gram.it_load_ema_teacher=0", "crops.gram_teacher_crops_size=[192, 240]"};
    const char *ov1[] = {"train.batch_size_per_gpu=3", "student.img_size=112", "crops.global_crops_size=160",
                         "crops.local_crops_size=64", "gram.use_loss=true", "gram.it_load_ema_teacher=0",
                         "crops.gram_teacher_crops_size=240"};
    CHECK(config_load(&two, test_src_path("configs/demo.yaml"), 8, (char **)ov2, err) == 0, "%s", err);
    CHECK(config_load(&one, test_src_path("configs/demo.yaml"), 7, (char **)ov1, err) == 0, "%s", err);
    CHECK(config_load(&nogram, test_src_path("configs/demo.yaml"), 5, (char **)ov2, err) == 0, "%s", err);
    MemoryPlan p2, p1, p0;
    CHECK(memory_plan(&two, 1, &p2, err) == 0, "%s", err);
    CHECK(memory_plan(&one, 1, &p1, err) == 0, "%s", err);
    CHECK(memory_plan(&nogram, 1, &p0, err) == 0, "%s", err);
    CHECK(p2.total == p1.total && p2.pair == 1, "two pairs: %zu bytes at pair %d; the largest alone: %zu", p2.total,
          p2.pair, p1.total);
    CHECK(memcmp(&p2.model, &p1.model, sizeof p1.model) == 0, "categories differ");
    CHECK(p2.model.teacher_acts > p0.model.teacher_acts, "Gram teacher activations not counted");
    check_pair_switch(&two, p2.total);
}

// On cuda the plan counts the CUDA backend's own layout (model/attention_layout.h): the flash path's LSE and
// bf16 O where the head dim has kernels (demo.yaml's 64), else bf16 probabilities in 16-byte aligned blocks.
TEST(memory_plan_uses_the_cuda_layout_on_cuda) {
    CHECK(attention_block_elems(257, 1) == 66056 && attention_block_elems(257, 0) == 66052 &&
              attention_block_elems(50, 1) == 2504 && attention_block_elems(16, 0) == 256,
          "block sizes");
    CHECK(attention_saved_floats_cuda(2, 257, 6, 1) == (size_t)2 * 6 * 66056 / 2 &&
              attention_saved_floats_cuda(3, 5, 1, 1) == (3 * 32 + 1) / 2,
          "saved floats");
    char err[DINO_ERRLEN];
    Config cfg;
    const char *ov_cpu[] = {"train.batch_size_per_gpu=3"}, *ov_cuda[] = {"train.batch_size_per_gpu=3", "backend=cuda"};
    MemoryPlan pc, pg;
    CHECK(config_load(&cfg, test_src_path("configs/demo.yaml"), 1, (char **)ov_cpu, err) == 0, "%s", err);
    CHECK(memory_plan(&cfg, 1, &pc, err) == 0, "%s", err);
    CHECK(config_load(&cfg, test_src_path("configs/demo.yaml"), 2, (char **)ov_cuda, err) == 0, "%s", err);
    CHECK(memory_plan(&cfg, 1, &pg, err) == 0, "%s", err);
    // the cuda layout also holds the GEMMs' bf16 copy of student and teacher: half their fp32 bytes
    CHECK(pg.model.student_acts < pc.model.student_acts && 2 * pg.model.weights == 3 * pc.model.weights,
          "cuda student activations %zu, cpu %zu; weights cuda %zu, cpu %zu", pg.model.student_acts,
          pc.model.student_acts, pg.model.weights, pc.model.weights);
}

// --plan-memory --fit: the largest batch whose plan fits, exactly (the plan grows with the batch).
TEST(memory_plan_max_batch_is_exact) {
    char err[DINO_ERRLEN];
    Config cfg;
    CHECK(config_load(&cfg, test_src_path("configs/demo.yaml"), 0, NULL, err) == 0, "%s", err);
    MemoryPlan p10, p11;
    cfg.train.batch_size_per_gpu = 10;
    CHECK(memory_plan(&cfg, 1, &p10, err) == 0, "%s", err);
    cfg.train.batch_size_per_gpu = 11;
    CHECK(memory_plan(&cfg, 1, &p11, err) == 0, "%s", err);
    CHECK(p11.total > p10.total, "the plan does not grow with the batch");
    cfg.train.batch_size_per_gpu = 3; // the config's own batch does not matter
    CHECK(memory_plan_max_batch(&cfg, 1, p10.total, err) == 10, "exactly the bytes of batch 10");
    CHECK(memory_plan_max_batch(&cfg, 1, p11.total - 1, err) == 10, "one byte short of batch 11");
    CHECK(memory_plan_max_batch(&cfg, 1, 1024, err) == 0, "1 KiB fits no batch");
}

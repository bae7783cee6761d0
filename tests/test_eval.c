// Feature evaluation: the k-NN vote math against hand-computed cases, accuracy / balanced accuracy,
// the linear probe on separable data, tile-set listing and splitting, and dinoeval end to end on
// synthetic textures with a random exported ViT.
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "common/check.h"
#include "common/rng.h"
#include "common/safetensors.h"
#include "model/backend_open.h"
#include "model/export_names.h"
#include "model/vit.h"
#include "tests/harness.h"
#include "train/eva_probe.h"
#include "train/eval.h"

#pragma GCC diagnostic ignored "-Wformat-truncation" // short temporary paths in large buffers

// Three training points around a test point at (1, 0): one very close of class 0, two farther of
// class 1. Majority says 1; the reference's weights exp(sim / 0.07) say 0; at T = 1 they say 1.
TEST(knn_vote_by_hand) {
    const double a0 = acos(0.99), a1 = acos(0.5);
    float train[3 * 2] = {(float)cos(a0), (float)sin(a0), (float)cos(a1), (float)sin(a1), (float)cos(a1), -(float)sin(a1)};
    int y[3] = {0, 1, 1};
    float test[2] = {1, 0};
    // by hand: T = 0.07: class 0 exp(0.99/0.07) = 1.39e6 > class 1 2 exp(0.5/0.07) = 2.5e3
    //          T = 1:    class 0 exp(0.99) = 2.69 < class 1 2 exp(0.5) = 3.30
    CHECK(exp(0.99 / 0.07) > 2 * exp(0.5 / 0.07) && exp(0.99) < 2 * exp(0.5), "the hand case itself");
    int pred = -1;
    knn_predict(train, y, 3, test, 1, 2, 2, 3, 0.07f, &pred);
    CHECK(pred == 0, "k=3 T=0.07 predicted %d, expected 0", pred);
    knn_predict(train, y, 3, test, 1, 2, 2, 3, 1.0f, &pred);
    CHECK(pred == 1, "k=3 T=1 predicted %d, expected 1", pred);
    knn_predict(train, y, 3, test, 1, 2, 2, 1, 1.0f, &pred);
    CHECK(pred == 0, "k=1 predicted %d, expected 0 (the nearest)", pred);
    // k larger than the training set uses all of it
    knn_predict(train, y, 3, test, 1, 2, 2, 20, 1.0f, &pred);
    CHECK(pred == 1, "k=20 (> n) T=1 predicted %d, expected 1", pred);
    // a neighbour outside the top k does not vote: four points, k = 2
    float tr4[4 * 2] = {1, 0, 0.96f, 0.28f, 0, 1, 0, -1}; // sims 1, 0.96, 0, 0
    int y4[4] = {1, 1, 0, 0};
    knn_predict(tr4, y4, 4, test, 1, 2, 2, 2, 0.07f, &pred);
    CHECK(pred == 1, "top-2 vote predicted %d", pred);
    knn_predict(tr4, y4, 4, test, 1, 2, 3, 4, 100.0f, &pred); // near-uniform weights: 2 vs 2 -> tie
    CHECK(pred == 0 || pred == 1, "pred %d out of range", pred);
}

TEST(scores_by_hand) {
    int truth[6] = {0, 0, 0, 0, 1, 2}, pred[6] = {0, 0, 0, 0, 0, 2};
    EvalScores s;
    eval_scores(pred, truth, 6, 3, &s);
    CHECK_CLOSE(s.accuracy, 5.0 / 6.0, 1e-12, 0);
    CHECK_CLOSE(s.balanced_accuracy, (1.0 + 0.0 + 1.0) / 3.0, 1e-12, 0);
    // a class absent from the test set does not count
    int t2[2] = {0, 0}, p2[2] = {0, 1};
    eval_scores(p2, t2, 2, 3, &s);
    CHECK_CLOSE(s.balanced_accuracy, 0.5, 1e-12, 0);
}

// Classes that differ only along one direction among noisy ones: the probe must find it, and the
// L2 strength is one of those given.
TEST(linear_probe_separable) {
    enum { D = 16, C = 3, NTR = 90, NTE = 60 };
    static float tr[NTR * D], te[NTE * D];
    static int ytr[NTR], yte[NTE], pred[NTE];
    Rng r = rng_make(1, 2, 3, 4);
    for (int i = 0; i < NTR + NTE; i++) {
        float *x = i < NTR ? tr + (size_t)i * D : te + (size_t)(i - NTR) * D;
        int c = i % C;
        for (int k = 0; k < D; k++) x[k] = (float)(3.0 * rng_normal(&r)); // big nuisance dimensions
        x[5] = (float)(2.0 * c + 0.3 * rng_normal(&r));                   // the class, in one small one
        if (i < NTR) ytr[i] = c;
        else yte[i - NTR] = c;
    }
    const double lambdas[3] = {1e-3, 1e-2, 1e-1};
    double chosen = -1;
    linear_probe(tr, ytr, NTR, te, NTE, D, C, lambdas, 3, 0, pred, &chosen);
    EvalScores s;
    eval_scores(pred, yte, NTE, C, &s);
    CHECK(s.accuracy >= 0.95, "linear probe accuracy %.3f", s.accuracy);
    CHECK(chosen == 1e-3 || chosen == 1e-2 || chosen == 1e-1, "chosen lambda %g", chosen);
    // k-NN on the same data is fooled by the nuisance dimensions: the probe is doing real work
    l2_normalize_rows(tr, NTR, D);
    l2_normalize_rows(te, NTE, D);
    knn_predict(tr, ytr, NTR, te, NTE, D, C, 10, 0.07f, pred);
    EvalScores k;
    eval_scores(pred, yte, NTE, C, &k);
    CHECK(k.accuracy < s.accuracy, "k-NN %.3f >= probe %.3f on nuisance-dominated data", k.accuracy, s.accuracy);
}

// The eva-style probe (train/eva_probe.h): learns a separable problem, stops early once the validation
// score stops improving, keeps the best step's weights, and is deterministic for a seed.
TEST(eva_probe_learns_and_stops_early) {
    enum { D = 16, C = 3, NTR = 300, NTE = 150 };
    static float tr[NTR * D], te[NTE * D];
    static int ytr[NTR], yte[NTE], pred[NTE], pred2[NTE];
    Rng r = rng_make(5, 6, 7, 8);
    for (int i = 0; i < NTR + NTE; i++) {
        float *x = i < NTR ? tr + (size_t)i * D : te + (size_t)(i - NTR) * D;
        int c = i % C;
        for (int k = 0; k < D; k++) x[k] = (float)rng_normal(&r);
        x[c] += 3.0f; // class c lifts dimension c
        if (i < NTR) ytr[i] = c;
        else yte[i - NTR] = c;
    }
    EvaProbeOptions o = eva_probe_defaults();
    CHECK(o.lr == 3e-4 && o.batch == 256 && o.max_steps == 12500, "defaults: lr %g batch %d steps %d", o.lr, o.batch,
          o.max_steps);
    EvaProbeInfo info, info2;
    eva_probe(tr, ytr, NTR, te, NTE, D, C, &o, 1, pred, &info);
    EvalScores s;
    eval_scores(pred, yte, NTE, C, &s);
    CHECK(s.balanced_accuracy >= 0.9, "eva probe balanced accuracy %.3f", s.balanced_accuracy);
    CHECK(info.steps < o.max_steps && info.best_step <= info.steps && info.steps - info.best_step >= o.patience,
          "early stopping: ran %d steps, best at %d (patience %d)", info.steps, info.best_step, o.patience);
    CHECK(info.val_balanced >= 0.85, "validation balanced accuracy %.3f", info.val_balanced);
    eva_probe(tr, ytr, NTR, te, NTE, D, C, &o, 1, pred2, &info2);
    CHECK(!memcmp(pred, pred2, sizeof pred) && info.steps == info2.steps, "not deterministic for a seed");
}

// ---- tile sets and dinoeval end to end ---------------------------------------------------------------------

static void write_jpeg(const char *path, const uint8_t *rgb, int w, int h) {
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    unsigned long len = 0;
    CHECK(tjCompress2(tj, rgb, w, 0, h, TJPF_RGB, &buf, &len, TJSAMP_444, 92, 0) == 0, "jpeg encode");
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(buf, 1, len, f) == len && fclose(f) == 0, "write %s", path);
    tjFree(buf);
    tjDestroy(tj);
}

// Distinct textures per class (stripes, checkers, blobs of colour) with noise.
static void texture(uint8_t *px, int w, int h, int cls, uint64_t seed) {
    Rng r = rng_make(seed, 0x74657874ULL, (uint64_t)cls, 1);
    const int phase = (int)rng_below(&r, 8);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                double v;
                if (cls == 0) v = (((x + phase) / 3) % 2) ? 210 : 50;
                else if (cls == 1) v = ((((x + phase) / 5) + (y / 5)) % 2) ? 60 + 120 * (c == 1) : 200;
                else v = 120 + 80 * sin(0.4 * (y + phase)) * (c == 2 ? 1 : -1);
                v += 20 * rng_normal(&r);
                px[((size_t)y * w + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
}

static const char *make_textures_seeded(int per_class, uint64_t seed) {
    const char *dir = test_tmpdir();
    static const char *names[3] = {"stripes", "checkers", "waves"};
    char p[4200];
    for (int c = 0; c < 3; c++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[c]);
        mkdir(p, 0777);
        for (int i = 0; i < per_class; i++) {
            uint8_t px[32 * 32 * 3];
            texture(px, 32, 32, c, seed + (uint64_t)i);
            snprintf(p, sizeof p, "%s/%s/%02d.jpg", dir, names[c], i);
            write_jpeg(p, px, 32, 32);
        }
    }
    return dir;
}

static const char *make_textures(int per_class) { return make_textures_seeded(per_class, 1000); }

TEST(tileset_folder_csv_split) {
    const char *dir = make_textures(5);
    char err[DINO_ERRLEN];
    TileSet s;
    CHECK(tileset_open(&s, dir, 1, err) == 0, "%s", err);
    CHECK(s.n == 15 && s.n_classes == 3, "n %d classes %d", s.n, s.n_classes);
    CHECK(!strcmp(s.classes[0], "checkers") && !strcmp(s.classes[2], "waves"), "classes not sorted");
    for (int i = 0; i < s.n; i++) CHECK(strstr(s.paths[i], s.classes[s.labels[i]]) != NULL, "label of %s", s.paths[i]);
    TileSet tr, te, tr2, te2;
    tileset_split(&s, 0.4, 7, &tr, &te);
    CHECK(tr.n == 9 && te.n == 6, "split %d / %d", tr.n, te.n);
    int per[3] = {0};
    for (int i = 0; i < te.n; i++) per[te.labels[i]]++;
    CHECK(per[0] == 2 && per[1] == 2 && per[2] == 2, "split not stratified");
    tileset_split(&s, 0.4, 7, &tr2, &te2);
    for (int i = 0; i < te.n; i++) CHECK(!strcmp(te.paths[i], te2.paths[i]), "split not reproducible");
    // a CSV naming the same files with labels, relative paths and a header
    char csv[4200];
    snprintf(csv, sizeof csv, "%s/labels.csv", dir);
    FILE *f = fopen(csv, "w");
    fprintf(f, "path,label\n");
    for (int i = 0; i < s.n; i++) fprintf(f, "%s,%s\n", s.paths[i] + strlen(dir) + 1, s.classes[s.labels[i]]);
    fclose(f);
    TileSet c;
    CHECK(tileset_open(&c, csv, 1, err) == 0, "%s", err);
    CHECK(c.n == s.n && c.n_classes == 3, "csv n %d", c.n);
    for (int i = 0; i < c.n && i < s.n; i++)
        CHECK(!strcmp(c.paths[i], s.paths[i]) && c.labels[i] == s.labels[i], "csv row %d: %s", i, c.paths[i]);
    // a class unknown to the training set is refused
    char *two[2] = {"checkers", "stripes"};
    CHECK(tileset_align_classes(&c, two, 2, err) != 0 && strstr(err, "waves"), "unknown class accepted: %s", err);
    tileset_free(&s), tileset_free(&tr), tileset_free(&te), tileset_free(&tr2), tileset_free(&te2), tileset_free(&c);
}

// A random ViT (patch 8, 32 px, width 32, 2 heads) written as plain backbone safetensors at dir/name.
static void write_random_backbone(const char *dir, const char *name, const char *prefix, float layerscale, char *ck) {
    VitConfig cfg;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&cfg, "vit_test", 8, 32, 0, "mlp", err) == 0, "%s", err);
    if (layerscale > 0) cfg.layerscale = layerscale;
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, prefix);
    float *P = dino_calloc(tab.total, sizeof(float));
    vit_init_weights(&vit, P, 3);
    StWriter *w = st_writer_new();
    for (int i = 0; i < tab.n; i++) st_writer_add(w, tab.t[i].name, ST_F32, tab.t[i].ndim, tab.t[i].shape, P + tab.t[i].offset);
    snprintf(ck, 4200, "%s/%s", dir, name);
    CHECK(st_writer_write(w, ck, err) == 0, "%s", err);
    st_writer_free(w);
    free(P);
    vit_free(&vit);
    param_table_free(&tab);
}

TEST(dinoeval_textures_far_above_chance) {
    const char *dir = make_textures(12);
    // a random ViT written as plain backbone safetensors, then exported
    char ck[4200], cmd[9000];
    write_random_backbone(dir, "backbone.safetensors", "backbone.", 1.0f, ck);
    snprintf(cmd, sizeof cmd, "./dinoexport %s %s/model --heads 2 > /dev/null && ./dinoeval --backend cpu %s/model --train %s "
             "--test-fraction 0.5 --seed 1 --resize 0 --crop 32 --eva --eva-seeds 3 --eva-steps 3000", ck, dir, dir, dir);
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    static char out[8192];
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    CHECK(p && pclose(p) == 0, "failed: %s\n%s", cmd, out);
    printf("%s", out);
    const char *keys[4] = {"linear probe", "k-NN k=10", "k-NN k=20", "eva linear: "};
    CHECK(strstr(out, "+-") && strstr(out, "over 3 seeds"), "no eva mean +- std: %s", out);
    for (int k = 0; k < 4; k++) {
        const char *l = strstr(out, keys[k]);
        double acc = -1, bal = -1;
        if (l) {
            const char *a = strstr(l, "accuracy ");
            const char *b = strstr(l, "balanced accuracy ");
            if (a) acc = atof(a + 9);
            if (b) bal = atof(b + 18);
        }
        // chance is 1/3: require more than twice that
        CHECK(acc >= 0.7 && bal >= 0.7, "%s: accuracy %.3f balanced %.3f", keys[k], acc, bal);
    }
}

// The trainer's hook: k-NN of an in-memory model on two labeled folders.
TEST(knn_on_tilesets_in_memory_model) {
    char train[4200], test[4200], err[DINO_ERRLEN];
    snprintf(train, sizeof train, "%s", make_textures_seeded(8, 2000));
    snprintf(test, sizeof test, "%s", make_textures_seeded(6, 3000));
    VitConfig cfg;
    CHECK(vit_config_from_arch(&cfg, "vit_test", 8, 32, 4, "swiglu", err) == 0, "%s", err);
    cfg.layerscale = 1.0f; // at the init's 1e-5 the CLS token barely sees the image
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "teacher.backbone.");
    float *P = dino_calloc(tab.total, sizeof(float));
    vit_init_weights(&vit, P, 9);
    Backend *be = backend_cpu_new();
    float *dev = be->alloc(be, sizeof(float) * tab.total);
    be->to_device(be, dev, P, sizeof(float) * tab.total);
    EmbedModel m;
    embed_model_wrap(&m, be, &vit, dev);
    m.pre.resize = 0; // 32 px tiles are the model's input
    int ks[2] = {10, 20};
    EvalScores s[2];
    CHECK(eval_knn_tilesets(&m, train, test, ks, 2, 8, s, err) == 0, "%s", err);
    for (int i = 0; i < 2; i++)
        CHECK(s[i].accuracy >= 0.7 && s[i].balanced_accuracy >= 0.7, "k=%d accuracy %.3f balanced %.3f", ks[i],
              s[i].accuracy, s[i].balanced_accuracy);
    // a test set with a class the training set lacks is refused
    char bad[4300];
    snprintf(bad, sizeof bad, "%s/extra", test);
    mkdir(bad, 0777);
    snprintf(bad, sizeof bad, "%s/extra/x.jpg", test);
    uint8_t px[32 * 32 * 3] = {0};
    write_jpeg(bad, px, 32, 32);
    CHECK(eval_knn_tilesets(&m, train, test, ks, 1, 8, s, err) != 0 && strstr(err, "extra"), "unknown class: %s", err);
    embed_model_close(&m);
    be->release(be, dev);
    backend_free(be);
    free(P);
    vit_free(&vit);
    param_table_free(&tab);
}

// The programs' --backend names: cpu always works, auto falls back to it, cuda works only with a build
// and a device, anything else is refused with the accepted names.
TEST(backend_open_names_and_refusals) {
    char err[DINO_ERRLEN] = "";
    Backend *be = backend_open("cpu", err);
    CHECK(be && strcmp(be->name, "cpu") == 0, "cpu: %s", err);
    backend_free(be);
    be = backend_open("auto", err);
    CHECK(be != NULL, "auto: %s", err);
    backend_free(be);
    CHECK(backend_open("tpu", err) == NULL && strstr(err, "unknown backend 'tpu'") && strstr(err, "cpu, cuda or auto"),
          "tpu accepted or unhelpful message: %s", err);
    be = backend_open("cuda", err);
    if (be) {
        CHECK(strcmp(be->name, "cuda") == 0, "cuda opened '%s'", be->name);
        backend_free(be);
    } else {
        CHECK(strstr(err, "backend 'cuda'") && (strstr(err, "no CUDA") || strstr(err, "cuda backend")),
              "unhelpful message: %s", err);
        printf("  cuda refused here: %s\n", err);
    }
}

// ---- an export's JSON configs are checked -------------------------------------------------------------

static int run_capture(const char *cmd, char *out, size_t cap) {
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, cap - 1, p) : 0;
    out[n] = 0;
    return p ? pclose(p) : -1;
}

static void write_text_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f && fputs(text, f) >= 0 && fclose(f) == 0, "write %s", path);
}

// Each bad value in an export's preprocessor_config.json / config.json (HF) or pretrained_cfg (timm)
// stops dinoembed with a message naming the file and the key, not the trainer (issue #15: an image_std
// of zeros gave NaN features with exit 0; a crop of 100000 died "out of memory" naming dinotrain;
// shortest_edge 0, negative, huge or NaN was taken).
TEST(export_config_values_are_range_checked) {
    const char *dir = make_textures(2);
    char ck[4200], cmd[9000], path[4300];
    static char out[16384];
    write_random_backbone(dir, "backbone.safetensors", "", 0, ck);
    snprintf(cmd, sizeof cmd, "./dinoexport %s %s/hf --heads 2 >/dev/null 2>&1 && ./dinoexport %s %s/timm --heads 2 "
             "--format timm >/dev/null 2>&1", ck, dir, ck, dir);
    CHECK(run_capture(cmd, out, sizeof out) == 0, "dinoexport failed");
    struct { const char *edge, *crop, *std, *want; } pre[] = {
        {"36", "32", "0.229, 0.224, 0.225", NULL},  // what dinoexport writes: accepted
        {"36", "32", "0, 0, 0", "image_std"},
        {"36", "100000", "0.229, 0.224, 0.225", "crop_size.height"},
        {"0", "32", "0.229, 0.224, 0.225", "size.shortest_edge"},
        {"-5", "32", "0.229, 0.224, 0.225", "size.shortest_edge"},
        {"100000000", "32", "0.229, 0.224, 0.225", "size.shortest_edge"},
        {"NaN", "32", "0.229, 0.224, 0.225", "size.shortest_edge"},
    };
    for (size_t k = 0; k < sizeof pre / sizeof pre[0]; k++) {
        char text[1024];
        snprintf(text, sizeof text,
                 "{\"image_processor_type\": \"BitImageProcessor\", \"do_resize\": true, \"size\": {\"shortest_edge\": %s},"
                 " \"resample\": 3, \"do_center_crop\": true, \"crop_size\": {\"height\": %s, \"width\": %s},"
                 " \"do_rescale\": true, \"rescale_factor\": 0.00392156862745098, \"do_normalize\": true,"
                 " \"image_mean\": [0.485, 0.456, 0.406], \"image_std\": [%s], \"do_convert_rgb\": true}\n",
                 pre[k].edge, pre[k].crop, pre[k].crop, pre[k].std);
        snprintf(path, sizeof path, "%s/hf/preprocessor_config.json", dir);
        write_text_file(path, text);
        snprintf(cmd, sizeof cmd, "./dinoembed --backend cpu %s/hf --tiles %s/stripes -o %s/f.npy 2>&1", dir, dir, dir);
        int rc = run_capture(cmd, out, sizeof out);
        if (!pre[k].want) {
            CHECK(rc == 0, "valid preprocessor_config.json refused:\n%s", out);
            continue;
        }
        printf("  %s", out);
        CHECK(rc != 0, "%s: bad value accepted (exit 0):\n%s", pre[k].want, out);
        CHECK(strstr(out, "preprocessor_config.json") && strstr(out, pre[k].want) && !strstr(out, "dinotrain"),
              "the message must name the file and %s (and not dinotrain):\n%s", pre[k].want, out);
    }
    // config.json: a head count that is no head count
    snprintf(path, sizeof path, "%s/hf/preprocessor_config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/hf/config.json", dir);
    write_text_file(path, "{\"model_type\": \"dinov2\", \"num_attention_heads\": 0, \"image_size\": 32, \"patch_size\": 8}\n");
    int rc = run_capture(cmd, out, sizeof out);
    printf("  %s", out);
    CHECK(rc != 0 && strstr(out, "config.json") && strstr(out, "num_attention_heads"), "heads 0 (exit %d):\n%s", rc, out);
    // timm's pretrained_cfg is the timm export's preprocessing: checked the same way
    snprintf(path, sizeof path, "%s/timm/config.json", dir);
    FILE *f = fopen(path, "r");
    static char text[8192];
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[n] = 0;
    char *std = strstr(text, "\"std\": [");
    CHECK(std != NULL, "timm config.json without pretrained_cfg.std:\n%s", text);
    if (std) memcpy(std + 8, "0.000", 5); // the first std of 0.229 becomes 0.000
    write_text_file(path, text);
    snprintf(cmd, sizeof cmd, "./dinoembed --backend cpu %s/timm --tiles %s/stripes -o %s/g.npy 2>&1", dir, dir, dir);
    rc = run_capture(cmd, out, sizeof out);
    printf("  %s", out);
    CHECK(rc != 0 && strstr(out, "config.json") && strstr(out, "pretrained_cfg.std"), "timm std 0 (exit %d):\n%s", rc,
          out);
}

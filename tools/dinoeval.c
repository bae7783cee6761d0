// dinoeval: k-NN and linear-probe evaluation of a backbone's features on a labeled tile set.
//
//   dinoeval MODEL --train SPEC [--test SPEC | --test-fraction F --seed S] [options]
//
// SPEC: a folder with one sub-folder of images per class, or a CSV `path,label` (data/tileset.h).
// k-NN as the reference's knn.py: cosine similarity of L2-normalized features, the k nearest training
// tiles vote with weight exp(sim / 0.07). Linear probe: multinomial logistic regression on
// standardized features, full-batch L-BFGS, L2 strength chosen on a held-out 20% of the training set.
// --eva: the eva-style offline protocol as well (train/eva_probe.h: one linear layer, AdamW lr 3e-4, batch
// 256, up to 12,500 steps, early stopping on a validation split of the training set, balanced accuracy),
// over several seeds with mean and std. Prints accuracy and balanced accuracy of each.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/threads.h"
#include "common/check.h"
#include "train/eva_probe.h"
#include "train/eval.h"

static void usage(void) {
    fprintf(stderr,
            "usage: dinoeval [--model] MODEL --train SPEC [--test SPEC | --test-fraction F] [options]\n"
            "  --seed S                 split / probe seed (default 0)\n"
            "  --feature cls|mean|cls+mean  (default cls)\n"
            "  --k 10,20                k-NN neighbour counts   --temperature 0.07\n"
            "  --no-linear              skip the linear probe\n"
            "  --eva                    also the eva-style protocol (AdamW linear layer, early stopping)\n"
            "  --eva-seeds N (5) --eva-steps N (12500) --eva-lr X (3e-4) --eva-batch N (256)\n"
            "  --eva-val-every N (250) --eva-patience N (1250 steps) --eva-val-fraction F (0.2)\n"
            "  --batch N --resize N --crop N --heads N --backend auto|cpu|cuda   as dinoembed\n");
}

int main(int argc, char **argv) {
    dino_prefer_passive_openmp(argv);
    const char *model = NULL, *train_spec = NULL, *test_spec = NULL, *kspec = "10,20", *backend = "auto";
    double test_fraction = -1, T = 0.07;
    uint64_t seed = 0;
    FeatureKind kind = FEAT_CLS;
    int batch = 16, resize = -1, crop = -1, heads = 0, linear = 1, eva = 0, eva_seeds = 5;
    EvaProbeOptions eo = eva_probe_defaults();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && (++i, 1))
        if (OPT("--train")) train_spec = v;
        else if (OPT("--model")) model = v;
        else if (OPT("--test")) test_spec = v;
        else if (OPT("--test-fraction")) test_fraction = atof(v);
        else if (OPT("--seed")) seed = strtoull(v, NULL, 10);
        else if (OPT("--k")) kspec = v;
        else if (OPT("--temperature")) T = atof(v);
        else if (OPT("--batch")) batch = atoi(v);
        else if (OPT("--resize")) resize = atoi(v);
        else if (OPT("--crop")) crop = atoi(v);
        else if (OPT("--heads")) heads = atoi(v);
        else if (OPT("--backend")) backend = v;
        else if (OPT("--feature")) {
            if (feature_kind_parse(v, &kind)) {
                fprintf(stderr, "dinoeval: unknown --feature '%s'\n", v);
                return 2;
            }
        } else if (OPT("--eva-seeds")) eva = 1, eva_seeds = atoi(v);
        else if (OPT("--eva-steps")) eva = 1, eo.max_steps = atoi(v);
        else if (OPT("--eva-lr")) eva = 1, eo.lr = atof(v);
        else if (OPT("--eva-batch")) eva = 1, eo.batch = atoi(v);
        else if (OPT("--eva-val-every")) eva = 1, eo.val_every = atoi(v);
        else if (OPT("--eva-patience")) eva = 1, eo.patience = atoi(v);
        else if (OPT("--eva-val-fraction")) eva = 1, eo.val_fraction = atof(v);
        else if (!strcmp(a, "--eva")) eva = 1;
        else if (!strcmp(a, "--no-linear")) linear = 0;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (a[0] != '-' && !model) model = a;
        else {
            fprintf(stderr, "dinoeval: unknown or incomplete option '%s'\n", a);
            usage();
            return 2;
        }
#undef OPT
    }
    if (!model || !train_spec || (!test_spec && !(test_fraction > 0 && test_fraction < 1)) || !(T > 0) ||
        (eva && (eva_seeds < 1 || eo.max_steps < 1 || !(eo.lr > 0) || eo.batch < 1 || eo.val_every < 1 ||
                 eo.patience < 1 || !(eo.val_fraction >= 0 && eo.val_fraction < 1)))) {
        usage();
        return 2;
    }
    int ks[8], nk = 0;
    for (const char *p = kspec; *p && nk < 8;) {
        ks[nk++] = atoi(p);
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    char err[DINO_ERRLEN];
    TileSet all, train, test;
    if (tileset_open(&all, train_spec, 1, err)) {
        fprintf(stderr, "dinoeval: %s\n", err);
        return 1;
    }
    if (test_spec) {
        train = all;
        if (tileset_open(&test, test_spec, 1, err) || tileset_align_classes(&test, train.classes, train.n_classes, err)) {
            fprintf(stderr, "dinoeval: %s\n", err);
            return 1;
        }
    } else {
        tileset_split(&all, test_fraction, seed, &train, &test);
        tileset_free(&all);
    }
    if (train.n_classes < 2 || test.n == 0) {
        fprintf(stderr, "dinoeval: need at least 2 classes and a non-empty test set (got %d classes, %d test tiles)\n",
                train.n_classes, test.n);
        return 1;
    }
    EmbedModel m;
    if (embed_model_open(&m, model, heads, backend, err)) {
        fprintf(stderr, "dinoeval: %s\n", err);
        return 1;
    }
    if (resize >= 0) m.pre.resize = resize;
    if (crop > 0) m.pre.crop = crop;
    if (preprocess_check(&m.pre, "dinoeval's preprocessing", err)) {
        fprintf(stderr, "dinoeval: %s\n", err);
        return 1;
    }
    const int FD = feature_dim(&m, kind), C = train.n_classes;
    float *ftr = dino_malloc(sizeof(float) * (size_t)train.n * FD), *fte = dino_malloc(sizeof(float) * (size_t)test.n * FD);
    if (embed_tileset(&m, &train, kind, batch, ftr, err) || embed_tileset(&m, &test, kind, batch, fte, err)) {
        fprintf(stderr, "dinoeval: %s\n", err);
        return 1;
    }
    printf("dinoeval: %s: %d train / %d test tiles, %d classes, %s features of width %d\n", model, train.n, test.n, C,
           kind == FEAT_CLS ? "cls" : kind == FEAT_MEAN_PATCH ? "mean-patch" : "cls+mean-patch", FD);
    int *pred = dino_malloc(sizeof(int) * (size_t)test.n);
    EvalScores s;
    if (linear) { // on the raw features (the probe standardizes them itself)
        const double lambdas[] = {1e-4, 1e-3, 1e-2, 1e-1, 1.0};
        double chosen;
        linear_probe(ftr, train.labels, train.n, fte, test.n, FD, C, lambdas, 5, seed, pred, &chosen);
        eval_scores(pred, test.labels, test.n, C, &s);
        printf("linear probe (L2 %g): accuracy %.4f  balanced accuracy %.4f\n", chosen, s.accuracy, s.balanced_accuracy);
    }
    if (eva) { // on the raw features, as eva; mean and std over seeds
        double sb = 0, sb2 = 0, sa = 0, sa2 = 0;
        printf("eva linear (AdamW lr %g, batch %d, <= %d steps, early stopping on %.0f%% validation, patience %d; "
               "%d seeds): steps",
               eo.lr, eo.batch, eo.max_steps, 100 * eo.val_fraction, eo.patience, eva_seeds);
        for (int k = 0; k < eva_seeds; k++) {
            EvaProbeInfo info;
            eva_probe(ftr, train.labels, train.n, fte, test.n, FD, C, &eo, seed + (uint64_t)k, pred, &info);
            eval_scores(pred, test.labels, test.n, C, &s);
            sb += s.balanced_accuracy, sb2 += s.balanced_accuracy * s.balanced_accuracy;
            sa += s.accuracy, sa2 += s.accuracy * s.accuracy;
            printf(" %d (best %d)", info.steps, info.best_step);
        }
        const double mb = sb / eva_seeds, ma = sa / eva_seeds;
        const double db = eva_seeds > 1 ? sqrt(fmax(0, (sb2 - eva_seeds * mb * mb) / (eva_seeds - 1))) : 0;
        const double da = eva_seeds > 1 ? sqrt(fmax(0, (sa2 - eva_seeds * ma * ma) / (eva_seeds - 1))) : 0;
        printf("\neva linear: balanced accuracy %.4f +- %.4f  accuracy %.4f +- %.4f (mean +- std over %d seeds)\n", mb,
               db, ma, da, eva_seeds);
    }
    l2_normalize_rows(ftr, train.n, FD);
    l2_normalize_rows(fte, test.n, FD);
    for (int j = 0; j < nk; j++) {
        if (ks[j] < 1) continue;
        knn_predict(ftr, train.labels, train.n, fte, test.n, FD, C, ks[j], (float)T, pred);
        eval_scores(pred, test.labels, test.n, C, &s);
        printf("k-NN k=%d (T=%g): accuracy %.4f  balanced accuracy %.4f\n", ks[j], T, s.accuracy, s.balanced_accuracy);
    }
    free(pred);
    free(ftr);
    free(fte);
    embed_model_close(&m);
    tileset_free(&train);
    tileset_free(&test);
    return 0;
}

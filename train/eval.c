// Evaluation of features: see eval.h.
#include "train/eval.h"

#include <stdlib.h>

#include "common/check.h"

void eval_scores(const int *pred, const int *truth, int n, int n_classes, EvalScores *out) {
    int *tot = dino_calloc((size_t)n_classes, sizeof(int)), *hit = dino_calloc((size_t)n_classes, sizeof(int));
    int right = 0;
    for (int i = 0; i < n; i++) {
        right += pred[i] == truth[i];
        if (truth[i] >= 0 && truth[i] < n_classes) {
            tot[truth[i]]++;
            hit[truth[i]] += pred[i] == truth[i];
        }
    }
    double bal = 0;
    int present = 0;
    for (int c = 0; c < n_classes; c++)
        if (tot[c]) {
            bal += (double)hit[c] / tot[c];
            present++;
        }
    out->accuracy = n ? (double)right / n : 0;
    out->balanced_accuracy = present ? bal / present : 0;
    free(tot);
    free(hit);
}

int eval_knn_tilesets(EmbedModel *m, const char *train_spec, const char *test_spec, const int *ks, int n_k, int batch,
                      EvalScores *scores, char *err) {
    TileSet tr, te;
    if (tileset_open(&tr, train_spec, 1, err)) return -1;
    if (tileset_open(&te, test_spec, 1, err)) {
        tileset_free(&tr);
        return -1;
    }
    if (tileset_align_classes(&te, tr.classes, tr.n_classes, err)) {
        tileset_free(&tr);
        tileset_free(&te);
        return -1;
    }
    const int D = m->vit.cfg.dim;
    float *ftr = dino_malloc(sizeof(float) * (size_t)tr.n * D), *fte = dino_malloc(sizeof(float) * (size_t)te.n * D);
    int *pred = dino_malloc(sizeof(int) * (size_t)te.n);
    int rc = -1;
    if (embed_tileset(m, &tr, FEAT_CLS, batch, ftr, err) == 0 && embed_tileset(m, &te, FEAT_CLS, batch, fte, err) == 0) {
        l2_normalize_rows(ftr, tr.n, D);
        l2_normalize_rows(fte, te.n, D);
        for (int i = 0; i < n_k; i++) {
            knn_predict(ftr, tr.labels, tr.n, fte, te.n, D, tr.n_classes, ks[i], 0.07f, pred);
            eval_scores(pred, te.labels, te.n, tr.n_classes, &scores[i]);
        }
        rc = 0;
    }
    free(ftr);
    free(fte);
    free(pred);
    tileset_free(&tr);
    tileset_free(&te);
    return rc;
}

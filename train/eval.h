// Evaluation of a backbone's features on labelled tile sets: accuracy and balanced accuracy, and the
// trainer's periodic k-NN. The pieces: data/tileset.h (labelled sets), train/embed_model.h (features of
// an export or of the teacher), train/knn.h (k-NN as the reference's knn.py), train/linear_probe.h.
#pragma once
#include <stdint.h>

#include "data/tileset.h"
#include "train/embed_model.h"
#include "train/knn.h"
#include "train/linear_probe.h"

typedef struct {
    double accuracy;           // fraction of test items predicted right
    double balanced_accuracy;  // mean over classes present in the test set of per-class recall
} EvalScores;

void eval_scores(const int *pred, const int *truth, int n, int n_classes, EvalScores *out);

// The trainer's periodic check (evaluation.eval_period_iterations): k-NN of m's CLS features, training
// set train_spec, test set test_spec (labelled tile sets as tileset_open), T = 0.07. scores[i] for k = ks[i].
int eval_knn_tilesets(EmbedModel *m, const char *train_spec, const char *test_spec, const int *ks, int n_k,
                      int batch, EvalScores *scores, char *err);

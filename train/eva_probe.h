// The eva-style offline linear evaluation (kaiko-ai's eva, "offline" patch classification): frozen
// embeddings, one linear layer trained with cross-entropy by AdamW (lr 3e-4, torch's default weight decay
// 0.01, betas 0.9/0.999), mini-batches of 256, cosine learning-rate decay to 0 over at most 12,500 steps,
// early stopping on a validation split (balanced accuracy, checked every val_every steps, stop after
// `patience` steps without improvement; the best weights are kept), then balanced accuracy on the test
// set. Several seeds (split, init, batch order) give a mean and a std. dinoeval --eva runs it.
#pragma once
#include <stdint.h>

typedef struct {
    double lr;           // 3e-4
    double weight_decay; // 0.01 (AdamW's torch default; eva does not set it)
    int batch;           // 256
    int max_steps;       // 12500
    int val_every;       // steps between validations (default 250)
    int patience;        // steps without a better validation score before stopping (default 1250)
    double val_fraction; // share of the training set held out for validation, per class (0.2)
} EvaProbeOptions;

EvaProbeOptions eva_probe_defaults(void);

typedef struct {
    int steps;            // steps run (< max_steps: stopped early)
    int best_step;        // the step whose weights were kept
    double val_balanced;  // the best validation balanced accuracy
} EvaProbeInfo;

// Trains on train [n_train, D] (labels 0..C-1), predicts test [n_test, D] into pred. Features are used as
// given (eva does not standardise them). Deterministic for a seed.
void eva_probe(const float *train, const int *ytrain, int n_train, const float *test, int n_test, int D, int C,
               const EvaProbeOptions *o, uint64_t seed, int *pred, EvaProbeInfo *info);

// The eva-style offline linear probe (eva_probe.h): a linear layer by mini-batch AdamW with early stopping.
#include "train/eva_probe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"

EvaProbeOptions eva_probe_defaults(void) {
    return (EvaProbeOptions){.lr = 3e-4, .weight_decay = 0.01, .batch = 256, .max_steps = 12500, .val_every = 250,
                             .patience = 1250, .val_fraction = 0.2};
}

static void predict(const float *X, int n, int D, int C, const float *W, const float *b, int *pred) {
    for (int i = 0; i < n; i++) {
        const float *x = X + (size_t)i * D;
        int best = 0;
        double bz = -INFINITY;
        for (int c = 0; c < C; c++) {
            double z = b[c];
            const float *w = W + (size_t)c * D;
            for (int d = 0; d < D; d++) z += (double)w[d] * x[d];
            if (z > bz) bz = z, best = c;
        }
        pred[i] = best;
    }
}

static double balanced(const int *pred, const int *y, int n, int C) {
    int *hit = dino_calloc((size_t)C, sizeof(int)), *tot = dino_calloc((size_t)C, sizeof(int));
    for (int i = 0; i < n; i++) tot[y[i]]++, hit[y[i]] += pred[i] == y[i];
    double s = 0;
    int k = 0;
    for (int c = 0; c < C; c++)
        if (tot[c]) s += (double)hit[c] / tot[c], k++;
    free(hit), free(tot);
    return k ? s / k : 0;
}

void eva_probe(const float *train, const int *ytrain, int n_train, const float *test, int n_test, int D, int C,
               const EvaProbeOptions *o, uint64_t seed, int *pred, EvaProbeInfo *info) {
    Rng r = rng_make(seed, 0xE7A, 0, 0);
    // validation split, per class (at least one item of a class with >= 2 stays in the fit set)
    int *perm = dino_malloc(sizeof(int) * (size_t)n_train), *is_val = dino_calloc((size_t)n_train, sizeof(int));
    rng_permutation(&r, perm, n_train);
    int *per_class = dino_calloc((size_t)C, sizeof(int)), *taken = dino_calloc((size_t)C, sizeof(int));
    for (int i = 0; i < n_train; i++) per_class[ytrain[i]]++;
    for (int j = 0; j < n_train; j++) {
        int i = perm[j], c = ytrain[i];
        int want = (int)floor(o->val_fraction * per_class[c] + 0.5);
        if (want >= per_class[c]) want = per_class[c] - 1;
        if (taken[c] < want) is_val[i] = 1, taken[c]++;
    }
    int n_fit = 0, n_val = 0;
    int *fit = dino_malloc(sizeof(int) * (size_t)n_train), *val = dino_malloc(sizeof(int) * (size_t)n_train);
    for (int i = 0; i < n_train; i++) {
        if (is_val[i]) val[n_val++] = i;
        else fit[n_fit++] = i;
    }
    float *Xv = dino_malloc(sizeof(float) * (size_t)(n_val ? n_val : 1) * D);
    int *yv = dino_malloc(sizeof(int) * (size_t)(n_val ? n_val : 1)), *pv = dino_malloc(sizeof(int) * (size_t)(n_val ? n_val : 1));
    for (int j = 0; j < n_val; j++) memcpy(Xv + (size_t)j * D, train + (size_t)val[j] * D, sizeof(float) * D), yv[j] = ytrain[val[j]];

    // torch.nn.Linear's init: U(-1/sqrt(D), 1/sqrt(D)) for weight and bias
    const size_t P = (size_t)C * D + C;
    float *theta = dino_malloc(sizeof(float) * P), *best = dino_malloc(sizeof(float) * P);
    float *m1 = dino_calloc(P, sizeof(float)), *m2 = dino_calloc(P, sizeof(float)), *g = dino_malloc(sizeof(float) * P);
    const double bound = 1 / sqrt((double)D);
    for (size_t k = 0; k < P; k++) theta[k] = (float)rng_uniform_range(&r, -bound, bound);
    memcpy(best, theta, sizeof(float) * P);
    float *W = theta, *bias = theta + (size_t)C * D;
    double *z = dino_malloc(sizeof(double) * C);
    int *order = dino_malloc(sizeof(int) * (size_t)n_fit);
    rng_permutation(&r, order, n_fit);
    int pos = 0, step = 0, best_step = 0, since = 0;
    double best_val = -1;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    for (step = 1; step <= o->max_steps && n_fit > 0; step++) {
        memset(g, 0, sizeof(float) * P);
        const int nb = n_fit < o->batch ? n_fit : o->batch;
        for (int k = 0; k < nb; k++) {
            if (pos == n_fit) rng_permutation(&r, order, n_fit), pos = 0; // a new pass, reshuffled
            const int i = fit[order[pos++]];
            const float *x = train + (size_t)i * D;
            double zmax = -INFINITY, sum = 0;
            for (int c = 0; c < C; c++) {
                double s = bias[c];
                const float *w = W + (size_t)c * D;
                for (int d = 0; d < D; d++) s += (double)w[d] * x[d];
                z[c] = s;
                if (s > zmax) zmax = s;
            }
            for (int c = 0; c < C; c++) sum += z[c] = exp(z[c] - zmax);
            for (int c = 0; c < C; c++) { // d(mean CE)/dz = (softmax - onehot) / nb
                const float dz = (float)((z[c] / sum - (c == ytrain[i])) / nb);
                float *gw = g + (size_t)c * D;
                for (int d = 0; d < D; d++) gw[d] += dz * x[d];
                g[(size_t)C * D + c] += dz;
            }
        }
        // AdamW (torch): decoupled decay on every parameter, cosine lr to 0 over max_steps
        const double lr = 0.5 * o->lr * (1 + cos(M_PI * (step - 1) / o->max_steps));
        const double c1 = 1 - pow(b1, step), c2 = 1 - pow(b2, step);
        for (size_t k = 0; k < P; k++) {
            m1[k] = (float)(b1 * m1[k] + (1 - b1) * g[k]);
            m2[k] = (float)(b2 * m2[k] + (1 - b2) * (double)g[k] * g[k]);
            theta[k] = (float)(theta[k] * (1 - lr * o->weight_decay) - lr * (m1[k] / c1) / (sqrt(m2[k] / c2) + eps));
        }
        if (n_val > 0 && (step % o->val_every == 0 || step == o->max_steps)) {
            predict(Xv, n_val, D, C, W, bias, pv);
            const double v = balanced(pv, yv, n_val, C);
            if (v > best_val) best_val = v, best_step = step, since = 0, memcpy(best, theta, sizeof(float) * P);
            else if ((since += o->val_every) >= o->patience) break;
        }
    }
    if (step > o->max_steps) step = o->max_steps;
    if (n_val == 0) memcpy(best, theta, sizeof(float) * P), best_step = step;
    predict(test, n_test, D, C, best, best + (size_t)C * D, pred);
    if (info) *info = (EvaProbeInfo){.steps = step, .best_step = best_step, .val_balanced = best_val};
    free(perm), free(is_val), free(per_class), free(taken), free(fit), free(val), free(Xv), free(yv), free(pv);
    free(theta), free(best), free(m1), free(m2), free(g), free(z), free(order);
}

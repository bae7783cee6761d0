// Linear probe: see linear_probe.h.
#include "train/linear_probe.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"
#include "train/eval.h"

typedef struct {
    const float *X; // [n, D] standardized
    const int *y;
    int n, D, C;
    double lambda;
    float *W, *Z; // scratch: W [C, D] float copy, Z [n, C] logits / probabilities
} Probe;

// f(theta) and its gradient; theta = [W (C*D) | b (C)].
static double probe_fg(Probe *p, const double *th, double *g) {
    const int n = p->n, D = p->D, C = p->C;
    for (size_t i = 0; i < (size_t)C * D; i++) p->W[i] = (float)th[i];
    const double *b = th + (size_t)C * D;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, C, D, 1.0f, p->X, D, p->W, D, 0.0f, p->Z, C);
    double f = 0;
    for (int i = 0; i < n; i++) {
        float *z = p->Z + (size_t)i * C;
        double mx = -INFINITY;
        for (int c = 0; c < C; c++) mx = fmax(mx, z[c] + b[c]);
        double se = 0;
        for (int c = 0; c < C; c++) se += exp(z[c] + b[c] - mx);
        f += mx + log(se) - (z[p->y[i]] + b[p->y[i]]);
        for (int c = 0; c < C; c++) z[c] = (float)((exp(z[c] + b[c] - mx) / se - (c == p->y[i])) / n); // dlogits
    }
    f /= n;
    // dW = dZ^T X (into W as float scratch), db = column sums of dZ
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, D, n, 1.0f, p->Z, C, p->X, D, 0.0f, p->W, D);
    double reg = 0;
    for (size_t i = 0; i < (size_t)C * D; i++) {
        g[i] = p->W[i] + p->lambda * th[i];
        reg += th[i] * th[i];
    }
    for (int c = 0; c < C; c++) {
        double s = 0;
        for (int i = 0; i < n; i++) s += p->Z[(size_t)i * C + c];
        g[(size_t)C * D + c] = s;
    }
    return f + 0.5 * p->lambda * reg;
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// Full-batch L-BFGS (two-loop recursion) with a backtracking Armijo line search.
static void lbfgs(Probe *p, double *th) {
    enum { MEM = 10, MAXIT = 300 };
    const size_t n = (size_t)p->C * p->D + p->C;
    double *g = dino_malloc(sizeof(double) * n), *d = dino_malloc(sizeof(double) * n);
    double *th2 = dino_malloc(sizeof(double) * n), *g2 = dino_malloc(sizeof(double) * n);
    double *S = dino_malloc(sizeof(double) * n * MEM), *Y = dino_malloc(sizeof(double) * n * MEM);
    double rho[MEM], alpha[MEM];
    int m = 0, head = 0;
    double f = probe_fg(p, th, g);
    for (int it = 0; it < MAXIT; it++) {
        double gmax = 0;
        for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(g[i]));
        if (gmax < 1e-6) break;
        for (size_t i = 0; i < n; i++) d[i] = -g[i];
        for (int j = 0; j < m; j++) { // newest to oldest
            int k = (head - 1 - j + MEM) % MEM;
            alpha[k] = rho[k] * dot(S + (size_t)k * n, d, n);
            for (size_t i = 0; i < n; i++) d[i] -= alpha[k] * Y[(size_t)k * n + i];
        }
        if (m) {
            int k = (head - 1 + MEM) % MEM;
            double gamma = dot(S + (size_t)k * n, Y + (size_t)k * n, n) / dot(Y + (size_t)k * n, Y + (size_t)k * n, n);
            for (size_t i = 0; i < n; i++) d[i] *= gamma;
        } else {
            double gn = sqrt(dot(g, g, n));
            for (size_t i = 0; i < n; i++) d[i] /= gn > 1 ? gn : 1;
        }
        for (int j = m - 1; j >= 0; j--) { // oldest to newest
            int k = (head - 1 - j + MEM) % MEM;
            double beta = rho[k] * dot(Y + (size_t)k * n, d, n);
            for (size_t i = 0; i < n; i++) d[i] += (alpha[k] - beta) * S[(size_t)k * n + i];
        }
        double gd = dot(g, d, n);
        if (gd >= 0) { // not a descent direction: restart from steepest descent
            for (size_t i = 0; i < n; i++) d[i] = -g[i];
            gd = -dot(g, g, n);
            m = 0;
        }
        double step = 1, f2 = f;
        int ok = 0;
        for (int ls = 0; ls < 40; ls++, step *= 0.5) {
            for (size_t i = 0; i < n; i++) th2[i] = th[i] + step * d[i];
            f2 = probe_fg(p, th2, g2);
            if (f2 <= f + 1e-4 * step * gd) {
                ok = 1;
                break;
            }
        }
        if (!ok) break;
        double *s = S + (size_t)head * n, *yv = Y + (size_t)head * n;
        for (size_t i = 0; i < n; i++) {
            s[i] = th2[i] - th[i];
            yv[i] = g2[i] - g[i];
        }
        double sy = dot(s, yv, n);
        if (sy > 1e-12) {
            rho[head] = 1.0 / sy;
            head = (head + 1) % MEM;
            if (m < MEM) m++;
        }
        memcpy(th, th2, sizeof(double) * n);
        memcpy(g, g2, sizeof(double) * n);
        double df = f - f2;
        f = f2;
        if (df < 1e-10 * fmax(1.0, fabs(f))) break;
    }
    free(g);
    free(d);
    free(th2);
    free(g2);
    free(S);
    free(Y);
}

static void probe_fit(const float *X, const int *y, int n, int D, int C, double lambda, double *th) {
    Probe p = {X, y, n, D, C, lambda, dino_malloc(sizeof(float) * (size_t)C * D), dino_malloc(sizeof(float) * (size_t)n * C)};
    memset(th, 0, sizeof(double) * ((size_t)C * D + C));
    lbfgs(&p, th);
    free(p.W);
    free(p.Z);
}

static void probe_predict(const float *X, int n, int D, int C, const double *th, int *pred) {
    for (int i = 0; i < n; i++) {
        int arg = 0;
        double best = -INFINITY;
        for (int c = 0; c < C; c++) {
            double z = th[(size_t)C * D + c];
            for (int k = 0; k < D; k++) z += th[(size_t)c * D + k] * X[(size_t)i * D + k];
            if (z > best) {
                best = z;
                arg = c;
            }
        }
        pred[i] = arg;
    }
}

static void gather_rows(float *dst, const float *src, const int *idx, int n, int D) {
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * D, src + (size_t)idx[i] * D, sizeof(float) * D);
}

void linear_probe(const float *train, const int *ytrain, int n_train, const float *test, int n_test, int D,
                  int n_classes, const double *lambdas, int n_lambdas, uint64_t seed, int *pred, double *chosen_lambda) {
    const int C = n_classes;
    // standardize with the training set's statistics
    double *mu = dino_calloc((size_t)D, sizeof(double)), *sd = dino_calloc((size_t)D, sizeof(double));
    for (int i = 0; i < n_train; i++)
        for (int k = 0; k < D; k++) mu[k] += train[(size_t)i * D + k];
    for (int k = 0; k < D; k++) mu[k] /= n_train;
    for (int i = 0; i < n_train; i++)
        for (int k = 0; k < D; k++) {
            double v = train[(size_t)i * D + k] - mu[k];
            sd[k] += v * v;
        }
    for (int k = 0; k < D; k++) sd[k] = sqrt(sd[k] / n_train) + 1e-6;
    float *Xtr = dino_malloc(sizeof(float) * (size_t)n_train * D), *Xte = dino_malloc(sizeof(float) * (size_t)(n_test ? n_test : 1) * D);
    for (int i = 0; i < n_train; i++)
        for (int k = 0; k < D; k++) Xtr[(size_t)i * D + k] = (float)((train[(size_t)i * D + k] - mu[k]) / sd[k]);
    for (int i = 0; i < n_test; i++)
        for (int k = 0; k < D; k++) Xte[(size_t)i * D + k] = (float)((test[(size_t)i * D + k] - mu[k]) / sd[k]);
    double *th = dino_malloc(sizeof(double) * ((size_t)C * D + C));
    double best_lambda = lambdas[0];
    if (n_lambdas > 1) {
        // held-out 20% per class for choosing lambda
        int *fit = dino_malloc(sizeof(int) * (size_t)n_train), *val = dino_malloc(sizeof(int) * (size_t)n_train);
        int nf = 0, nv = 0;
        int *members = dino_malloc(sizeof(int) * (size_t)n_train), *perm = dino_malloc(sizeof(int) * (size_t)n_train);
        for (int c = 0; c < C; c++) {
            int m = 0;
            for (int i = 0; i < n_train; i++)
                if (ytrain[i] == c) members[m++] = i;
            Rng r = rng_make(seed, 0x70726f6265ULL, (uint64_t)c, 0); // "probe"
            rng_permutation(&r, perm, m);
            int k = m >= 5 ? m / 5 : (m >= 2 ? 1 : 0);
            for (int j = 0; j < m; j++) {
                if (j < k) val[nv++] = members[perm[j]];
                else fit[nf++] = members[perm[j]];
            }
        }
        if (nv > 0) {
            float *Xf = dino_malloc(sizeof(float) * (size_t)nf * D), *Xv = dino_malloc(sizeof(float) * (size_t)nv * D);
            int *yf = dino_malloc(sizeof(int) * (size_t)nf), *yv = dino_malloc(sizeof(int) * (size_t)nv),
                *pv = dino_malloc(sizeof(int) * (size_t)nv);
            gather_rows(Xf, Xtr, fit, nf, D);
            gather_rows(Xv, Xtr, val, nv, D);
            for (int i = 0; i < nf; i++) yf[i] = ytrain[fit[i]];
            for (int i = 0; i < nv; i++) yv[i] = ytrain[val[i]];
            double best_acc = -1;
            for (int l = 0; l < n_lambdas; l++) {
                probe_fit(Xf, yf, nf, D, C, lambdas[l], th);
                probe_predict(Xv, nv, D, C, th, pv);
                EvalScores s;
                eval_scores(pv, yv, nv, C, &s);
                if (s.balanced_accuracy > best_acc) { // ties: the smaller lambda listed first wins
                    best_acc = s.balanced_accuracy;
                    best_lambda = lambdas[l];
                }
            }
            free(Xf);
            free(Xv);
            free(yf);
            free(yv);
            free(pv);
        }
        free(fit);
        free(val);
        free(members);
        free(perm);
    }
    probe_fit(Xtr, ytrain, n_train, D, C, best_lambda, th);
    probe_predict(Xte, n_test, D, C, th, pred);
    if (chosen_lambda) *chosen_lambda = best_lambda;
    free(th);
    free(Xtr);
    free(Xte);
    free(mu);
    free(sd);
}

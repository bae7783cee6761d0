// Collapse diagnostics: prototype usage, agreement, RankMe, feature std, and the verdict (collapse.h).
#include "train/collapse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"

void collapse_init(CollapseTracker *t, int K, int D, int rows_per_step, int max_steps) {
    memset(t, 0, sizeof *t);
    t->K = K, t->D = D, t->rows_per_step = rows_per_step, t->max_steps = max_steps;
    const size_t rows = (size_t)rows_per_step * max_steps;
    t->argmax = dino_calloc(rows, sizeof(int));
    t->cls = dino_calloc(rows * D, sizeof(float));
    t->patch = dino_calloc(rows * D, sizeof(float));
}

void collapse_free(CollapseTracker *t) {
    free(t->argmax), free(t->cls), free(t->patch);
    memset(t, 0, sizeof *t);
}

void collapse_add(CollapseTracker *t, const int *argmax, const float *cls, const float *patch, double agreement) {
    const size_t R = (size_t)t->rows_per_step, D = (size_t)t->D, s = (size_t)t->next;
    memcpy(t->argmax + s * R, argmax, sizeof(int) * R);
    memcpy(t->cls + s * R * D, cls, sizeof(float) * R * D);
    memcpy(t->patch + s * R * D, patch, sizeof(float) * R * D);
    t->next = (t->next + 1) % t->max_steps;
    if (t->steps < t->max_steps) t->steps++;
    t->agree_sum += agreement, t->agree_n++;
}

// Eigenvalues of the symmetric matrix A [n,n] (destroyed) by cyclic Jacobi rotations, into ev[n].
static void sym_eigenvalues(double *A, int n, double *ev) {
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < n; i++) {
            diag += A[(size_t)i * n + i] * A[(size_t)i * n + i];
            for (int j = i + 1; j < n; j++) off += A[(size_t)i * n + j] * A[(size_t)i * n + j];
        }
        if (off <= 1e-22 * (diag + 1e-300)) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = A[(size_t)p * n + q];
                if (fabs(apq) < 1e-300) continue;
                double app = A[(size_t)p * n + p], aqq = A[(size_t)q * n + q];
                double theta = (aqq - app) / (2 * apq);
                double tt = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(tt * tt + 1), s = tt * c;
                for (int k = 0; k < n; k++) { // columns p, q
                    double akp = A[(size_t)k * n + p], akq = A[(size_t)k * n + q];
                    A[(size_t)k * n + p] = c * akp - s * akq;
                    A[(size_t)k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) { // rows p, q
                    double apk = A[(size_t)p * n + k], aqk = A[(size_t)q * n + k];
                    A[(size_t)p * n + k] = c * apk - s * aqk;
                    A[(size_t)q * n + k] = s * apk + c * aqk;
                }
            }
    }
    for (int i = 0; i < n; i++) ev[i] = A[(size_t)i * n + i];
}

double collapse_rankme(const float *X, int n, int D) {
    if (n <= 0 || D <= 0) return NAN;
    // the singular values of X are the square roots of the eigenvalues of the smaller Gram matrix
    const int m = n < D ? n : D;
    double *G = dino_calloc((size_t)m * m, sizeof(double)), *ev = dino_malloc(sizeof(double) * m);
    for (int a = 0; a < m; a++)
        for (int b = a; b < m; b++) {
            double s = 0;
            if (n <= D)
                for (int k = 0; k < D; k++) s += (double)X[(size_t)a * D + k] * X[(size_t)b * D + k];
            else
                for (int k = 0; k < n; k++) s += (double)X[(size_t)k * D + a] * X[(size_t)k * D + b];
            G[(size_t)a * m + b] = G[(size_t)b * m + a] = s;
        }
    sym_eigenvalues(G, m, ev);
    double sum = 0;
    for (int i = 0; i < m; i++) sum += ev[i] = sqrt(ev[i] > 0 ? ev[i] : 0);
    double h = 0;
    if (sum > 0)
        for (int i = 0; i < m; i++) {
            double p = ev[i] / sum + 1e-7; // the paper's epsilon
            h -= p * log(p);
        }
    free(G), free(ev);
    return sum > 0 ? exp(h) : 0;
}

double collapse_feature_std(const float *X, int n, int D) {
    if (n < 2) return NAN;
    double *mean = dino_calloc((size_t)D, sizeof(double)), *sq = dino_calloc((size_t)D, sizeof(double));
    for (int i = 0; i < n; i++) {
        const float *x = X + (size_t)i * D;
        double nn = 0;
        for (int d = 0; d < D; d++) nn += (double)x[d] * x[d];
        nn = 1 / sqrt(nn + 1e-24);
        for (int d = 0; d < D; d++) mean[d] += x[d] * nn, sq[d] += x[d] * nn * x[d] * nn;
    }
    double s = 0;
    for (int d = 0; d < D; d++) {
        double m = mean[d] / n, v = sq[d] / n - m * m;
        s += sqrt(v > 0 ? v * n / (n - 1) : 0);
    }
    free(mean), free(sq);
    return s / D;
}

void collapse_report(CollapseTracker *t, double margin, double ibot_margin, int past_warmup, CollapseReport *r) {
    memset(r, 0, sizeof *r);
    r->margin = margin, r->ibot_margin = ibot_margin;
    const int rows = t->steps * t->rows_per_step;
    r->usage = r->top_share = r->agreement = r->rankme_cls = r->rankme_patch = r->std_cls = r->std_patch = NAN;
    if (rows > 0) {
        int *count = dino_calloc((size_t)t->K, sizeof(int)), top = 0;
        for (int i = 0; i < rows; i++) {
            if (!count[t->argmax[i]]++) r->prototypes++;
            if (count[t->argmax[i]] > top) top = count[t->argmax[i]];
        }
        free(count);
        r->top_share = (double)top / rows;
        r->usage = (double)r->prototypes / t->K;
        r->rankme_cls = collapse_rankme(t->cls, rows, t->D);
        r->rankme_patch = collapse_rankme(t->patch, rows, t->D);
        r->std_cls = collapse_feature_std(t->cls, rows, t->D);
        r->std_patch = collapse_feature_std(t->patch, rows, t->D);
    }
    if (t->agree_n) r->agreement = t->agree_sum / t->agree_n;
    t->agree_sum = 0, t->agree_n = 0;
    // the verdict: the most basic failure first
    const double lnK = log((double)t->K);
    if (rows > 0 && r->rankme_cls < COLLAPSE_MIN_RANKME && r->std_cls < COLLAPSE_MIN_FEATURE_STD)
        r->collapse = "backbone constant";
    else if (margin < COLLAPSE_MIN_MARGIN_FRAC * lnK)
        r->collapse = "head uniform";
    else if (rows > t->rows_per_step && (r->prototypes <= COLLAPSE_MAX_PROTOTYPES || r->top_share > COLLAPSE_MAX_TOP_SHARE))
        r->collapse = "one prototype";
    if (!past_warmup) r->collapse = NULL; // the head is near uniform at init: no verdict during the warm-up
    t->bad_in_row = r->collapse ? t->bad_in_row + 1 : 0;
    r->confirmed = t->bad_in_row >= COLLAPSE_PATIENCE;
}

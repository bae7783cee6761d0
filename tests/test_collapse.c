// Collapse diagnostics (train/collapse.h): RankMe and feature std on matrices with known answers, and the
// verdict for each kind of collapse (head uniform, one prototype, backbone constant), with its patience
// and the warm-up that never confirms.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "tests/harness.h"
#include "train/collapse.h"

TEST(rankme_known_values) {
    enum { N = 32, D = 8 };
    float X[N * D];
    // rank one: every row the same direction, any scale
    for (int i = 0; i < N; i++)
        for (int d = 0; d < D; d++) X[i * D + d] = (float)((i + 1) * (d + 1));
    double r1 = collapse_rankme(X, N, D);
    CHECK(fabs(r1 - 1) < 1e-3, "rank-one RankMe %.6f, want 1", r1);
    CHECK(collapse_feature_std(X, N, D) < 1e-6, "rank-one std %g", collapse_feature_std(X, N, D));
    // orthogonal rows of equal norm (D of them, repeated): all singular values equal -> RankMe = D
    memset(X, 0, sizeof X);
    for (int i = 0; i < N; i++) X[i * D + i % D] = 3;
    double rD = collapse_rankme(X, N, D);
    CHECK(fabs(rD - D) < 1e-3 * D, "isotropic RankMe %.4f, want %d", rD, D);
    // fewer rows than dims: the Gram matrix of the rows; 4 orthogonal rows -> 4
    double r4 = collapse_rankme(X, 4, D);
    CHECK(fabs(r4 - 4) < 1e-3 * 4, "4 orthogonal rows: RankMe %.4f", r4);
    // two singular values 1 and 3 (p = 1/4, 3/4): exp(H)
    float Y[2 * 2] = {1, 0, 0, 3};
    double want = exp(-(0.25 * log(0.25) + 0.75 * log(0.75)));
    CHECK(fabs(collapse_rankme(Y, 2, 2) - want) < 1e-4, "RankMe %.6f, want %.6f", collapse_rankme(Y, 2, 2), want);
    // random Gaussian rows: close to D, well above 1; feature std ~ 1/sqrt(D) per dimension
    Rng r = rng_make(7, 0, 0, 0);
    for (int i = 0; i < N * D; i++) X[i] = (float)rng_normal(&r);
    double rg = collapse_rankme(X, N, D), sg = collapse_feature_std(X, N, D);
    CHECK(rg > 0.7 * D && rg <= D + 1e-6, "Gaussian RankMe %.3f", rg);
    CHECK(sg > 0.5 / sqrt(D) && sg < 1.5 / sqrt(D), "Gaussian feature std %.4f", sg);
}

// Feeds `steps` diagnosed steps: argmax per row from pick(row), features random or constant.
static void feed(CollapseTracker *t, int steps, int one_prototype, int constant_features, Rng *r) {
    const int R = t->rows_per_step, D = t->D;
    int *am = malloc(sizeof(int) * R);
    float *f = malloc(sizeof(float) * R * D), *g = malloc(sizeof(float) * R * D);
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < R; i++) am[i] = one_prototype ? 5 : (int)rng_below(r, (uint64_t)t->K);
        for (int i = 0; i < R * D; i++) f[i] = constant_features ? (float)(i % D + 1) : (float)rng_normal(r);
        for (int i = 0; i < R * D; i++) g[i] = (float)rng_normal(r);
        collapse_add(t, am, f, g, 0.5);
    }
    free(am), free(f), free(g);
}

TEST(verdicts_name_what_collapsed) {
    CollapseTracker t;
    CollapseReport rep;
    Rng r = rng_make(3, 0, 0, 0);
    const double lnK = log(256.0);
    collapse_init(&t, 256, 16, 16, 4);
    // healthy: margin well above zero, many prototypes, varied features
    feed(&t, 4, 0, 0, &r);
    collapse_report(&t, 1.5, 0.8, 1, &rep);
    CHECK(!rep.collapse && !rep.confirmed, "healthy run flagged: %s", rep.collapse ? rep.collapse : "");
    CHECK(rep.prototypes > 40 && fabs(rep.usage - rep.prototypes / 256.0) < 1e-12, "usage %d", rep.prototypes);
    CHECK(fabs(rep.agreement - 0.5) < 1e-12 && rep.rankme_cls > 8, "agreement %g RankMe %g", rep.agreement,
          rep.rankme_cls);
    // head uniform: margin below 1% of ln K; confirmed only at the third log line in a row
    for (int line = 1; line <= COLLAPSE_PATIENCE; line++) {
        feed(&t, 1, 0, 0, &r);
        collapse_report(&t, 0.002 * lnK, NAN, 1, &rep);
        CHECK(rep.collapse && !strcmp(rep.collapse, "head uniform"), "line %d: %s", line, rep.collapse ? rep.collapse : "none");
        CHECK(rep.confirmed == (line == COLLAPSE_PATIENCE), "line %d confirmed %d", line, rep.confirmed);
    }
    // a healthy line resets the count
    collapse_report(&t, 1.0, NAN, 1, &rep);
    CHECK(!rep.collapse && !rep.confirmed, "not reset");
    // during the warm-up: nothing named, nothing confirmed
    for (int line = 0; line < 5; line++) collapse_report(&t, 0.0, NAN, 0, &rep);
    CHECK(!rep.collapse && !rep.confirmed, "warm-up flagged");
    // one prototype: sharp targets (margin large) but every image on prototype 5
    feed(&t, 4, 1, 0, &r);
    collapse_report(&t, 0.9 * lnK, NAN, 1, &rep);
    CHECK(rep.collapse && !strcmp(rep.collapse, "one prototype") && rep.prototypes == 1, "one prototype: %s (%d)",
          rep.collapse ? rep.collapse : "none", rep.prototypes);
    // one prototype in all but name: a few others, but the most used one takes > 90% of the rows
    {
        int am[16];
        float f[16 * 16], g[16 * 16];
        for (int s = 0; s < 4; s++) {
            for (int i = 0; i < 16; i++) am[i] = (s == 0 && i < 3) ? 10 + i : 7;
            for (int i = 0; i < 16 * 16; i++) f[i] = (float)rng_normal(&r), g[i] = (float)rng_normal(&r);
            collapse_add(&t, am, f, g, 0.9);
        }
        collapse_report(&t, 0.9 * lnK, NAN, 1, &rep);
        CHECK(rep.prototypes == 4 && fabs(rep.top_share - 61.0 / 64) < 1e-12, "prototypes %d top share %g",
              rep.prototypes, rep.top_share);
        CHECK(rep.collapse && !strcmp(rep.collapse, "one prototype"), "dominant prototype: %s",
              rep.collapse ? rep.collapse : "none");
    }
    // backbone constant: the teacher's CLS the same for every image
    feed(&t, 4, 0, 1, &r);
    collapse_report(&t, 1.0, NAN, 1, &rep);
    CHECK(rep.collapse && !strcmp(rep.collapse, "backbone constant") && rep.rankme_cls < 1.01, "constant: %s (RankMe %g)",
          rep.collapse ? rep.collapse : "none", rep.rankme_cls);
    collapse_free(&t);
}

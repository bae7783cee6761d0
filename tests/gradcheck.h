// Finite-difference gradient checking for tests: central differences of a scalar loss computed in
// double, compared with analytic gradients per element (|a - n| <= atol + rtol * max(|a|, |n|)).
#pragma once
#include <math.h>
#include <stddef.h>

#include "common/rng.h"
#include "tests/harness.h"

typedef double (*GcLossFn)(void *ctx);

// Checks up to `max_checks` coordinates of x[n] (all when n <= max_checks, else a random sample),
// perturbing x in place (restored afterwards). Returns the number of mismatches (each also reported).
static inline int gradcheck(const char *what, GcLossFn loss, void *ctx, float *x, const float *grad, size_t n,
                            int max_checks, float h, double atol, double rtol, Rng *rng) {
    int bad = 0;
    size_t count = n <= (size_t)max_checks ? n : (size_t)max_checks;
    for (size_t c = 0; c < count; c++) {
        size_t i = n <= (size_t)max_checks ? c : (size_t)rng_below(rng, (uint32_t)n);
        float x0 = x[i];
        x[i] = x0 + h;
        double lp = loss(ctx);
        x[i] = x0 - h;
        double lm = loss(ctx);
        x[i] = x0;
        double num = (lp - lm) / (2.0 * (double)h);
        double ana = grad[i];
        double tol = atol + rtol * fmax(fabs(num), fabs(ana));
        if (!(fabs(num - ana) <= tol)) {
            if (bad < 5)
                test_fail_at(__FILE__, __LINE__, "%s[%zu]: analytic %.6g vs numeric %.6g", what, i, ana, num);
            bad++;
        }
    }
    if (bad > 5) test_fail_at(__FILE__, __LINE__, "%s: %d mismatches in total", what, bad);
    return bad;
}

static inline void gc_fill_normal(float *x, size_t n, float std, Rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = std * (float)rng_normal(r);
}

// sum_i a[i] * w[i] in double
static inline double gc_dot(const float *a, const float *w, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * w[i];
    return s;
}

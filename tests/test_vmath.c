// The vectorizable exp/erfc of the CPU backend against libm in double precision.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "model/cpu/vmath.h"
#include "tests/harness.h"

TEST(expf_within_two_ulp) {
    double worst = 0;
    for (float x = -87.0f; x < 88.0f; x += 0.00731f) {
        double ref = exp((double)x), got = dino_expf(x);
        double rel = fabs(got - ref) / ref;
        if (rel > worst) worst = rel;
    }
    CHECK(worst < 2.5e-7, "dino_expf worst relative error %.3g", worst);
    CHECK(dino_expf(-1000.0f) < 1e-37f && dino_expf(-1000.0f) >= 0, "underflow must go to ~0");
    CHECK(dino_expf(0.0f) == 1.0f, "exp(0) = %g", dino_expf(0.0f));
}

// Relative error within a few float ulps where erfc > 1e-4; beyond, exp(-x^2) of a float argument near -40
// carries the argument's own rounding (a few 1e-6), irrelevant to GELU = 0.5 x erfc(-x/sqrt2) ~ 0 there.
TEST(erfc_relative_error_everywhere) {
    double worst = 0, worst_tail = 0;
    for (float x = -6.0f; x < 9.0f; x += 0.00173f) {
        double ref = erfc((double)x), got = dino_erfcf(x);
        double rel = fabs(got - ref) / ref;
        if (x < 2.75f) worst = fmax(worst, rel);
        else worst_tail = fmax(worst_tail, rel);
    }
    CHECK(worst < 1e-6, "dino_erfcf worst relative error %.3g", worst);
    CHECK(worst_tail < 1e-5, "dino_erfcf worst relative error in the tail %.3g", worst_tail);
}

// NaN in, NaN out, for every NaN (quiet, signalling, negative), alone and in a vectorised loop; no
// undefined behaviour on the way (san.vmath.* runs this under UBSan: before, the exponent's integer was
// taken from rintf(NaN) and shifted left while negative).
TEST(expf_nan_in_nan_out_without_undefined_behaviour) {
    const uint32_t nan_bits[5] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFFBFFFFFu, 0x7FFFFFFFu};
    enum { N = 64 };
    float in[N], out[N];
    for (int i = 0; i < N; i++) {
        if (i % 7 == 3) memcpy(&in[i], &nan_bits[(i / 7) % 5], sizeof(float));
        else in[i] = -80.0f + 2.5f * (float)i;
    }
#pragma omp simd
    for (int i = 0; i < N; i++) out[i] = dino_expf(in[i]);
    for (int i = 0; i < N; i++) {
        if (i % 7 == 3) CHECK(isnan(out[i]) && isnan(dino_expf(in[i])), "NaN input %d gave %g", i, out[i]);
        else CHECK(out[i] == dino_expf(in[i]) && out[i] > 0, "input %g: %g vectorised, %g alone", in[i], out[i], dino_expf(in[i]));
    }
    // infinities clamp like any large argument
    CHECK(dino_expf(-INFINITY) >= 0 && dino_expf(-INFINITY) < 1e-37f, "exp(-inf) = %g", dino_expf(-INFINITY));
    CHECK(dino_expf(INFINITY) > 1e38f, "exp(inf) = %g", dino_expf(INFINITY));
    CHECK(isnan(dino_erfcf(NAN)), "erfc(NaN) = %g", dino_erfcf(NAN));
}

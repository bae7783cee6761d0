// The vectorizable exp/erfc of the CPU backend against libm in double precision.
#include <math.h>

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

// exp and erfc that the compiler can vectorize (libm's expf/erff are scalar calls unless -ffast-math,
// which the reference backend does not use). Accuracy: dino_expf about 1 ulp (Cephes polynomial with
// Cody-Waite range reduction); dino_erfcf relative error below 1.2e-7 over the whole line (Numerical
// Recipes' Chebyshev fit), so GELU = 0.5 x erfc(-x/sqrt2) stays exact to float precision in both tails.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

// Range reduction x = n ln2 + r with n = round(x / ln2) taken by the 1.5 * 2^23 trick: adding it leaves n
// in the low mantissa bits of t, and 2^n is built from those bits with unsigned integer arithmetic. No
// float-to-int conversion and no signed shift, so every input is defined behaviour: NaN passes the clamp,
// makes t, r and p NaN, and comes out as NaN (the scale built from its bits is then irrelevant).
static inline float dino_expf(float x) {
    x = x < -87.33654f ? -87.33654f : x > 88.72283f ? 88.72283f : x;
    float t = x * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    uint32_t bits = (tb - 0x4B400000u + 127u) << 23; // n + 127 in [1, 255] for any finite x
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float dino_erfcf(float x) {
    float z = fabsf(x);
    float t = 1.0f / (1.0f + 0.5f * z);
    float poly = -1.26551223f +
                 t * (1.00002368f +
                      t * (0.37409196f +
                           t * (0.09678418f +
                                t * (-0.18628806f +
                                     t * (0.27886807f +
                                          t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
    float e = t * dino_expf(-z * z + poly);
    return x >= 0 ? e : 2.0f - e;
}

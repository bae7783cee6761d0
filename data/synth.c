#include "data/synth.h"

#include <math.h>

#include "common/check.h"
#include "common/rng.h"

#define RNG_TAG_SYNTH 0x53594eULL // "SYN"

static uint8_t clamp8(double v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : lrint(v)); }

void synth_tile(uint64_t seed, int64_t index, int n_classes, int size, Image *out) {
    int cls = (int)(index % (n_classes > 0 ? n_classes : 1));
    Rng cr = rng_make(seed, RNG_TAG_SYNTH, 1u << 30, (uint64_t)cls); // the class's look
    Rng r = rng_make(seed, RNG_TAG_SYNTH, (uint64_t)index, 0);       // this tile's variation
    // Class parameters: eosin-like background, haematoxylin-like nuclei, a stripe texture.
    double bg[3] = {230 - 30 * rng_uniform(&cr), 150 + 50 * rng_uniform(&cr), 190 + 30 * rng_uniform(&cr)};
    double nu[3] = {80 + 50 * rng_uniform(&cr), 40 + 40 * rng_uniform(&cr), 120 + 60 * rng_uniform(&cr)};
    double angle = M_PI * rng_uniform(&cr), freq = 0.02 + 0.15 * rng_uniform(&cr);
    double density = 0.0005 + 0.004 * rng_uniform(&cr), radius = 2 + 6 * rng_uniform(&cr);
    double phase = 2 * M_PI * rng_uniform(&r), shade = 0.9 + 0.2 * rng_uniform(&r);
    image_alloc(out, size, size);
    double ca = cos(angle), sa = sin(angle);
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            double t = 0.5 + 0.5 * sin(freq * 2 * M_PI * (x * ca + y * sa) + phase);
            for (int c = 0; c < 3; c++)
                out->px[3 * ((size_t)y * size + x) + c] = clamp8(shade * (bg[c] - 35 * t) + 6 * (rng_uniform(&r) - 0.5));
        }
    int nuclei = (int)(density * size * size);
    for (int k = 0; k < nuclei; k++) {
        double cx = size * rng_uniform(&r), cy = size * rng_uniform(&r);
        double rad = radius * (0.7 + 0.6 * rng_uniform(&r));
        int x0 = (int)floor(cx - rad), x1 = (int)ceil(cx + rad), y0 = (int)floor(cy - rad), y1 = (int)ceil(cy + rad);
        for (int y = y0 < 0 ? 0 : y0; y <= y1 && y < size; y++)
            for (int x = x0 < 0 ? 0 : x0; x <= x1 && x < size; x++) {
                double d = hypot(x - cx, y - cy) / rad;
                if (d > 1) continue;
                uint8_t *p = out->px + 3 * ((size_t)y * size + x);
                double a = d < 0.8 ? 1 : (1 - d) / 0.2; // soft edge
                for (int c = 0; c < 3; c++) p[c] = clamp8((1 - a) * p[c] + a * shade * nu[c]);
            }
    }
}

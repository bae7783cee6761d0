#include "common/rng.h"

#include <math.h>
#include <stdlib.h>

#include "common/check.h"

// SplitMix64: passes BigCrush, one add and a finalizer per draw, trivially seekable by key.
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

Rng rng_make(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
    uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ULL);
    h = mix64(h ^ (a + 0x632be59bd9b4e019ULL));
    h = mix64(h ^ (b + 0x85157af5ULL));
    h = mix64(h ^ (c + 0x2545f4914f6cdd1dULL));
    return (Rng){h};
}

uint64_t rng_u64(Rng *r) {
    r->state += 0x9e3779b97f4a7c15ULL;
    return mix64(r->state);
}

uint32_t rng_u32(Rng *r) { return (uint32_t)(rng_u64(r) >> 32); }

double rng_uniform(Rng *r) { return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

double rng_uniform_range(Rng *r, double lo, double hi) { return lo + (hi - lo) * rng_uniform(r); }

double rng_normal(Rng *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint32_t rng_below(Rng *r, uint32_t n) {
    // Lemire's multiply-shift with rejection: exact uniformity.
    uint64_t m = (uint64_t)rng_u32(r) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t t = (uint32_t)(-n) % n;
        while (low < t) {
            m = (uint64_t)rng_u32(r) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

void rng_permutation(Rng *r, int *out, int n) {
    for (int i = 0; i < n; i++) out[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(r, (uint32_t)i + 1);
        int t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}

void rng_subset_sorted(Rng *r, int *out, int k, int n) {
    DINO_ASSERT(k >= 0 && k <= n, "rng_subset_sorted: k=%d n=%d", k, n);
    int *perm = dino_malloc(sizeof(int) * (size_t)n);
    rng_permutation(r, perm, n);
    // selection by sorting the first k picks (k is at most a batch size: insertion sort is fine)
    for (int i = 0; i < k; i++) {
        int v = perm[i], j = i;
        while (j > 0 && out[j - 1] > v) { out[j] = out[j - 1]; j--; }
        out[j] = v;
    }
    free(perm);
}

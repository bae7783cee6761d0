// Counter-based random numbers. Every random draw in dinotrain comes from a generator keyed by what it
// is for (seed, step, sample index, layer, ...), never by thread or rank, so results do not depend on
// the number of threads or ranks and a resumed run redraws exactly the same numbers.
#pragma once
#include <stdint.h>

typedef struct { uint64_t state; } Rng;

// Mixes a seed and up to three stream ids into an independent generator.
Rng rng_make(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);
uint64_t rng_u64(Rng *r);
uint32_t rng_u32(Rng *r);
double rng_uniform(Rng *r);                  // [0, 1)
double rng_uniform_range(Rng *r, double lo, double hi);
double rng_normal(Rng *r);                   // standard normal (Box-Muller)
uint32_t rng_below(Rng *r, uint32_t n);      // uniform integer in [0, n), unbiased
void rng_permutation(Rng *r, int *out, int n); // uniform random permutation of 0..n-1
// Samples k distinct indices of 0..n-1 uniformly, returned sorted ascending (k <= n).
void rng_subset_sorted(Rng *r, int *out, int k, int n);

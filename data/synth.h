// Synthetic tissue-like tiles for tests and benchmarks: each class has its own texture (stripe
// orientation and frequency, nucleus density and size, stain colours), drawn from an Rng keyed by
// (seed, tile index), so tile i is the same whoever makes it.
#pragma once
#include <stdint.h>

#include "data/image.h"

// Fills *out (allocated by the call) with tile `index` of size x size; its class is index % n_classes.
void synth_tile(uint64_t seed, int64_t index, int n_classes, int size, Image *out);

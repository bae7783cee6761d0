// Test helper: synthetic tissue-like tiles (data/synth.h) written as JPEG files.
#pragma once
#include <stdio.h>
#include <stdlib.h>

#include "common/check.h"
#include "data/decode.h"
#include "data/synth.h"
#include "tests/harness.h"

// Writes tile `index` of generator `seed` (class index % n_classes) as a size x size JPEG at path.
static inline void write_synth_jpeg(const char *path, uint64_t seed, int64_t index, int n_classes, int size) {
    Image im;
    synth_tile(seed, index, n_classes, size, &im);
    uint8_t *jpg;
    size_t len;
    char err[DINO_ERRLEN];
    CHECK(encode_jpeg(&im, 90, &jpg, &len, err) == 0, "%s", err);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(jpg, 1, len, f) == len, "cannot write %s", path);
    if (f) fclose(f);
    free(jpg);
    image_free(&im);
}

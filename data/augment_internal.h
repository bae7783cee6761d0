// Private to data/augment*.c: the scratch buffers one worker reuses for every crop.
#pragma once
#include <stddef.h>
#include <stdint.h>

struct AugmentScratch {
    uint8_t *crop, *crop2; // S x S x 3 working crop and a spare (rotation)
    size_t crop_cap;
    uint8_t *tmp;          // horizontal-pass output of the resize
    size_t tmp_cap;
    void *coef;            // resize coefficients and bounds
    size_t coef_cap;
    int32_t *acc;          // vertical-pass accumulators
    size_t acc_cap;
    int32_t *strip;        // 8 transposed rows for the horizontal pass
    size_t strip_cap;
    float *fbuf;           // blur intermediate
    size_t fbuf_cap;
};

// Grows *p to at least `need` bytes (contents not kept).
void augment_scratch_grow(void **p, size_t *cap, size_t need);

// iBOT block masks for the global crops, as dinov2/data/masking.py (MaskingGenerator) and
// dinov2/data/collate.py (collate_data_and_cast) make them, with keyed random draws.
#pragma once
#include <stdint.h>

#include "common/rng.h"

typedef struct {
    int grid;               // G = global_crops_size / patch_size; masks are G x G
    int n_tokens;           // N = G * G
    double max_num_patches; // the reference's 0.5 * img // p * img // p (98 for 224/16, 128 for 224/14)
    double min_num_patches; // 4
    double log_aspect[2];   // log(0.3), log(1 / 0.3)
} MaskGenerator;

void mask_generator_init(MaskGenerator *g, int global_crops_size, int patch_size);
// MaskingGenerator._mask: adds one rectangular block of at most max_k new patches (10 tries);
// returns how many patches it added (0: no try fitted).
int mask_add_block(const MaskGenerator *g, uint8_t *mask, double max_k, Rng *rng);
// One G x G mask (row-major, 0/1) with at most `target` patches in blocks; returns the count.
int mask_generate(const MaskGenerator *g, int target, uint8_t *mask, Rng *rng);

// What collate_data_and_cast delivers for the masks of one batch (per rank).
typedef struct {
    int n_crops;          // 2B global-crop images, crop-major: [g1 of all B, g2 of all B]
    int n_tokens;         // N
    uint8_t *masks;       // [2B * N] (collated_masks.flatten())
    int32_t *indices;     // [n_masked_patches] flat indices into masks (mask_indices_list)
    float *weights;       // [n_masked_patches] 1 / (masked tokens of that image) (masks_weight)
    int n_masked_patches; // n_masked_patches
    int upperbound;       // sum over masked images of int(N * ratio_max_i): a static buffer size
    int n_masked_images;  // int(2B * mask_probability)
} MaskBatch;

void mask_batch_alloc(MaskBatch *m, int n_crops, int n_tokens);
void mask_batch_free(MaskBatch *m);
// Masks for batch `batch_index`: int(2B * p) images get stratified ratios in
// linspace(ratio_min, ratio_max, n + 1), the rest none, then the images are shuffled.
// Every draw comes from rng_make(seed, MASK stream, batch_index, 0).
void mask_batch_make(const MaskGenerator *g, double mask_probability, double ratio_min, double ratio_max,
                     uint64_t seed, int64_t batch_index, MaskBatch *m);
// torch.linspace(lo, hi, n) in float32 (up to the last-bit differences of torch's vector kernels).
void mask_linspace_f32(double lo, double hi, int n, float *out);

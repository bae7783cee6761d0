// iBOT block masking (BEiT-style) and the per-batch mask policy of the DINOv2 collate function.
#include "data/masking.h"

#include <math.h>
#include <string.h>

#include "common/check.h"

#define MASK_STREAM 0x4d41534bULL

void mask_generator_init(MaskGenerator *g, int img, int patch) {
    DINO_ASSERT(img > 0 && patch > 0 && img % patch == 0, "mask_generator_init: %d not a multiple of %d", img, patch);
    g->grid = img / patch;
    g->n_tokens = g->grid * g->grid;
    // train.py: max_num_patches = 0.5 * img_size // patch_size * img_size // patch_size (left to right)
    g->max_num_patches = floor(floor(floor(0.5 * img / patch) * img) / patch);
    g->min_num_patches = 4;
    g->log_aspect[0] = log(0.3);
    g->log_aspect[1] = log(1 / 0.3);
}

static double uniform(Rng *r, double a, double b) { return a + (b - a) * rng_uniform(r); } // random.uniform
static int randint(Rng *r, int a, int b) { return a + (int)rng_below(r, (uint32_t)(b - a + 1)); } // inclusive

// MaskingGenerator._mask: one block of up to max_k new patches, 10 tries.
int mask_add_block(const MaskGenerator *g, uint8_t *mask, double max_k, Rng *r) {
    int G = g->grid, delta = 0;
    for (int attempt = 0; attempt < 10; attempt++) {
        double target_area = uniform(r, g->min_num_patches, max_k);
        double aspect = exp(uniform(r, g->log_aspect[0], g->log_aspect[1]));
        int h = (int)nearbyint(sqrt(target_area * aspect));
        int w = (int)nearbyint(sqrt(target_area / aspect));
        if (w < G && h < G) {
            int top = randint(r, 0, G - h), left = randint(r, 0, G - w);
            int already = 0;
            for (int i = top; i < top + h; i++)
                for (int j = left; j < left + w; j++) already += mask[i * G + j];
            int fresh = h * w - already;
            if (0 < fresh && fresh <= max_k) {
                for (int i = top; i < top + h; i++)
                    for (int j = left; j < left + w; j++)
                        if (!mask[i * G + j]) {
                            mask[i * G + j] = 1;
                            delta++;
                        }
            }
            if (delta > 0) break;
        }
    }
    return delta;
}

int mask_generate(const MaskGenerator *g, int target, uint8_t *mask, Rng *r) {
    memset(mask, 0, (size_t)g->n_tokens);
    int count = 0;
    while (count < target) {
        double max_k = fmin((double)(target - count), g->max_num_patches);
        int delta = mask_add_block(g, mask, max_k, r);
        if (delta == 0) break;
        count += delta;
    }
    return count;
}

void mask_linspace_f32(double lo, double hi, int n, float *out) {
    for (int i = 0; i < n; i++) out[i] = n == 1 ? (float)lo : (float)(lo + (hi - lo) * i / (n - 1));
    if (n > 1) out[n - 1] = (float)hi;
}

void mask_batch_alloc(MaskBatch *m, int n_crops, int n_tokens) {
    memset(m, 0, sizeof *m);
    m->n_crops = n_crops;
    m->n_tokens = n_tokens;
    size_t total = (size_t)n_crops * n_tokens;
    m->masks = dino_calloc(total, 1);
    m->indices = dino_malloc(sizeof(int32_t) * total);
    m->weights = dino_malloc(sizeof(float) * total);
}

void mask_batch_free(MaskBatch *m) {
    free(m->masks);
    free(m->indices);
    free(m->weights);
    memset(m, 0, sizeof *m);
}

void mask_batch_make(const MaskGenerator *g, double mask_probability, double ratio_min, double ratio_max,
                     uint64_t seed, int64_t batch_index, MaskBatch *m) {
    DINO_ASSERT(m->n_tokens == g->n_tokens, "mask_batch_make: %d tokens, generator has %d", m->n_tokens, g->n_tokens);
    int B2 = m->n_crops, N = m->n_tokens;
    Rng r = rng_make(seed, MASK_STREAM, (uint64_t)batch_index, 0);
    int n_masked = (int)(B2 * mask_probability);
    float *probs = dino_malloc(sizeof(float) * (size_t)(n_masked + 1));
    mask_linspace_f32(ratio_min, ratio_max, n_masked + 1, probs);
    // masks are generated in list order, then the list is shuffled (random.shuffle)
    uint8_t *gen = dino_calloc((size_t)B2 * N, 1);
    m->upperbound = 0;
    for (int i = 0; i < n_masked; i++) {
        float pmin = probs[i], pmax = probs[i + 1]; // float32 tensors in the reference
        float ratio = pmin + (pmax - pmin) * (float)rng_uniform(&r);
        mask_generate(g, (int)((float)N * ratio), gen + (size_t)i * N, &r);
        m->upperbound += (int)((float)N * pmax);
    }
    int *perm = dino_malloc(sizeof(int) * (size_t)B2);
    rng_permutation(&r, perm, B2);
    for (int j = 0; j < B2; j++) memcpy(m->masks + (size_t)j * N, gen + (size_t)perm[j] * N, (size_t)N);
    m->n_masked_images = n_masked;
    int k = 0;
    for (int j = 0; j < B2; j++) {
        const uint8_t *row = m->masks + (size_t)j * N;
        int cnt = 0;
        for (int t = 0; t < N; t++) cnt += row[t];
        float w = 1.0f / (float)(cnt > 1 ? cnt : 1);
        for (int t = 0; t < N; t++)
            if (row[t]) {
                m->indices[k] = j * N + t;
                m->weights[k] = w;
                k++;
            }
    }
    m->n_masked_patches = k;
    free(probs);
    free(gen);
    free(perm);
}

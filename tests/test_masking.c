// iBOT masks: generator statistics and the collate batch policy (dinov2/data/masking.py, collate.py).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "data/masking.h"
#include "tests/harness.h"

TEST(generator_constants_match_reference) {
    MaskGenerator g;
    mask_generator_init(&g, 224, 16);
    CHECK(g.grid == 14 && g.n_tokens == 196 && g.max_num_patches == 98, "224/16: %d %d %g", g.grid, g.n_tokens,
          g.max_num_patches);
    mask_generator_init(&g, 224, 14);
    CHECK(g.grid == 16 && g.n_tokens == 256 && g.max_num_patches == 128, "224/14: %g", g.max_num_patches);
}

TEST(single_blocks_are_rectangles_with_bounded_aspect) {
    MaskGenerator g;
    mask_generator_init(&g, 224, 16);
    int G = g.grid;
    uint8_t mask[196];
    double sum_log_aspect = 0;
    int n = 0;
    for (int t = 0; t < 3000; t++) {
        Rng r = rng_make(5, 1, (uint64_t)t, 0);
        memset(mask, 0, sizeof mask);
        double max_k = 4 + t % 60;
        int delta = mask_add_block(&g, mask, max_k, &r);
        if (!delta) continue;
        int y0 = G, y1 = -1, x0 = G, x1 = -1, cnt = 0;
        for (int i = 0; i < G; i++)
            for (int j = 0; j < G; j++)
                if (mask[i * G + j]) {
                    cnt++;
                    if (i < y0) y0 = i;
                    if (i > y1) y1 = i;
                    if (j < x0) x0 = j;
                    if (j > x1) x1 = j;
                }
        int h = y1 - y0 + 1, w = x1 - x0 + 1;
        CHECK(cnt == delta && cnt == h * w, "block is not a filled rectangle (%d cells, %dx%d)", cnt, h, w);
        CHECK(cnt <= max_k, "block of %d exceeds max %g", cnt, max_k);
        CHECK(h < G && w < G, "block %dx%d not smaller than the grid", h, w);
        double a = (double)h / w;
        // aspect exp(U(log .3, log 3.33)) before rounding sides to integers
        CHECK(a >= 0.19 && a <= 5.01, "aspect %g", a);
        sum_log_aspect += log(a);
        n++;
    }
    CHECK(n > 2500, "too few blocks placed: %d", n);
    CHECK_CLOSE(sum_log_aspect / n, 0.0, 0.05, 0); // symmetric aspect distribution
}

TEST(masks_never_exceed_target_and_mostly_reach_it) {
    MaskGenerator g;
    mask_generator_init(&g, 224, 16);
    uint8_t mask[196];
    double reach = 0;
    for (int t = 0; t < 2000; t++) {
        Rng r = rng_make(9, 2, (uint64_t)t, 0);
        int target = 19 + t % 80; // int(196 * 0.1) .. int(196 * 0.5)
        int c = mask_generate(&g, target, mask, &r);
        int ones = 0;
        for (int i = 0; i < 196; i++) ones += mask[i];
        CHECK(c == ones, "returned count %d, mask has %d", c, ones);
        CHECK(c <= target, "count %d exceeds target %d", c, target);
        reach += (double)c / target;
    }
    CHECK(reach / 2000 > 0.9, "masks reach only %.3f of their target on average", reach / 2000);
    Rng r = rng_make(1, 1, 1, 1);
    CHECK(mask_generate(&g, 0, mask, &r) == 0, "target 0 must give an empty mask");
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

TEST(batch_policy_matches_collate) {
    MaskGenerator g;
    mask_generator_init(&g, 224, 16);
    const int B = 16, B2 = 2 * B, N = 196;
    MaskBatch m;
    mask_batch_alloc(&m, B2, N);
    float probs[B + 1];
    mask_linspace_f32(0.1, 0.5, B + 1, probs);
    int expect_upper = 0;
    for (int i = 0; i < B; i++) expect_upper += (int)((float)N * probs[i + 1]);
    double ratio_sum = 0;
    int masked_total = 0;
    int position_hits[2 * 16] = {0};
    for (int b = 0; b < 200; b++) {
        mask_batch_make(&g, 0.5, 0.1, 0.5, 77, b, &m);
        CHECK(m.n_masked_images == B, "n_masked_images %d", m.n_masked_images);
        CHECK(m.upperbound == expect_upper, "upperbound %d, expected %d", m.upperbound, expect_upper);
        int counts[32], nonempty = 0, k = 0;
        for (int j = 0; j < B2; j++) {
            counts[j] = 0;
            for (int t = 0; t < N; t++) counts[j] += m.masks[j * N + t];
            if (counts[j]) {
                nonempty++;
                position_hits[j]++;
            }
            double wsum = 0;
            for (int t = 0; t < N; t++)
                if (m.masks[j * N + t]) {
                    CHECK(m.indices[k] == j * N + t, "index %d: %d, expected %d", k, m.indices[k], j * N + t);
                    wsum += m.weights[k];
                    k++;
                }
            if (counts[j]) CHECK_CLOSE(wsum, 1.0, 1e-5, 0);
            ratio_sum += counts[j] / (double)N;
        }
        CHECK(k == m.n_masked_patches, "n_masked_patches %d, counted %d", m.n_masked_patches, k);
        CHECK(k <= m.upperbound, "masked %d > upperbound %d", k, m.upperbound);
        CHECK(nonempty == B, "exactly int(2B * 0.5) images must be masked, got %d", nonempty);
        // stratified: the i-th smallest of the masked counts is <= int(N * probs[i + 1])
        qsort(counts, B2, sizeof(int), cmp_int);
        for (int i = 0; i < B; i++)
            CHECK(counts[B + i] <= (int)((float)N * probs[i + 1]), "count %d above stratum %d", counts[B + i], i);
        CHECK(counts[B] >= 4, "smallest masked image has %d patches", counts[B]);
        masked_total += k;
    }
    // mean ratio of masked images ~ mean of U(0.1, 0.5) = 0.3, a little below (blocks fall short)
    double mean_ratio = ratio_sum / (200.0 * B);
    CHECK(mean_ratio > 0.27 && mean_ratio <= 0.30, "mean mask ratio of masked images %g", mean_ratio);
    // the shuffle spreads masks over both global crops and all images
    for (int j = 0; j < B2; j++)
        CHECK(position_hits[j] > 60 && position_hits[j] < 140, "row %d masked %d/200", j, position_hits[j]);
    // keyed: same batch index, same masks; another index, other masks
    MaskBatch m2;
    mask_batch_alloc(&m2, B2, N);
    mask_batch_make(&g, 0.5, 0.1, 0.5, 77, 5, &m);
    mask_batch_make(&g, 0.5, 0.1, 0.5, 77, 5, &m2);
    CHECK(!memcmp(m.masks, m2.masks, (size_t)B2 * N), "same key must give the same masks");
    mask_batch_make(&g, 0.5, 0.1, 0.5, 77, 6, &m2);
    CHECK(memcmp(m.masks, m2.masks, (size_t)B2 * N), "another batch index must give other masks");
    mask_batch_free(&m);
    mask_batch_free(&m2);
}

// The stratified ratios equal torch.linspace(0.1, 0.5, n + 1) in float32 to within 2 ulp
// (torch's own result depends on its vector width; fixtures from tests/make_augment_fixtures.py).
TEST(linspace_matches_torch) {
    FILE *f = fopen(test_src_path("tests/fixtures/augment_ops.txt"), "r");
    CHECK(f, "missing tests/fixtures/augment_ops.txt");
    FILE *b = fopen(test_src_path("tests/fixtures/augment_ops.bin"), "rb");
    CHECK(b, "missing tests/fixtures/augment_ops.bin");
    char line[512], name[64], dtype[8];
    int checked = 0;
    while (fgets(line, sizeof line, f)) {
        int ndim, pos;
        if (sscanf(line, "%63s %7s %d%n", name, dtype, &ndim, &pos) != 3 || strncmp(name, "linspace", 8)) continue;
        char *p = line + pos;
        long n = strtol(p, &p, 10), off = strtol(p, &p, 10);
        float want[300], got[300];
        CHECK(n <= 300, "linspace fixture too long");
        fseek(b, off, SEEK_SET);
        CHECK(fread(want, sizeof(float), (size_t)n, b) == (size_t)n, "short read");
        mask_linspace_f32(0.1, 0.5, (int)n, got);
        for (int i = 0; i < n; i++) CHECK_CLOSE(got[i], want[i], 2.5 * 6e-8, 0);
        checked++;
    }
    fclose(f);
    fclose(b);
    CHECK(checked >= 5, "only %d linspace fixtures", checked);
}

// The batch loader: thread-count independence, resume by position, rank partition of the order,
// crop-major layout, corrupt tiles skipped / counted / limited.
#include <math.h>
#include <string.h>

#include "common/check.h"
#include "data/loader.h"
#include "tests/harness.h"

typedef struct {
    int fail_mod; // tiles with index % fail_mod == 0 fail (0: none)
} FakeSource;

// A deterministic textured tile per index, sizes vary with the index.
static int fake_read(void *ctx, int64_t index, uint64_t seed, Image *out, char *err) {
    const FakeSource *fs = ctx;
    if (fs->fail_mod && index % fs->fail_mod == 0) {
        dino_seterr(err, "fake tile %lld is corrupt", (long long)index);
        return -1;
    }
    image_alloc(out, 48 + (int)(index % 7), 40 + (int)(index % 5));
    for (int y = 0; y < out->h; y++)
        for (int x = 0; x < out->w; x++) {
            uint8_t *p = out->px + ((size_t)y * out->w + x) * 3;
            p[0] = (uint8_t)(index * 37 + x * 5);
            p[1] = (uint8_t)(index * 11 + y * 7 + x);
            p[2] = (uint8_t)((x ^ y) * 9 + index);
        }
    return 0;
}

static LoaderConfig small_config(int threads) {
    LoaderConfig c;
    loader_config_default(&c);
    c.batch_size = 4;
    c.seed = 1234;
    c.n_threads = threads;
    c.prefetch = 2;
    c.patch_size = 8;
    c.aug.global_size = 32;
    c.aug.local_size = 16;
    c.aug.n_local = 3;
    c.aug.blur_kernel = 5;
    c.aug.blur_p[0] = 0.5; // exercise every op
    return c;
}

typedef struct {
    float *g, *l;
    uint8_t *masks;
    int64_t sample[4], tile[4];
    int n_masked;
} Snap;

static size_t gsize(const Batch *b) { return (size_t)2 * b->B * 3 * b->G * b->G; }
static size_t lsize(const Batch *b) { return (size_t)b->n_local * b->B * 3 * b->L * b->L; }

static void snap(const Batch *b, Snap *s) {
    s->g = dino_malloc(gsize(b) * sizeof(float));
    s->l = dino_malloc(lsize(b) * sizeof(float));
    s->masks = dino_malloc((size_t)b->masks.n_crops * b->masks.n_tokens);
    memcpy(s->g, b->global_crops, gsize(b) * sizeof(float));
    memcpy(s->l, b->local_crops, lsize(b) * sizeof(float));
    memcpy(s->masks, b->masks.masks, (size_t)b->masks.n_crops * b->masks.n_tokens);
    memcpy(s->sample, b->sample, sizeof s->sample);
    memcpy(s->tile, b->tile, sizeof s->tile);
    s->n_masked = b->masks.n_masked_patches;
}

static int same(const Batch *b, const Snap *s) {
    return !memcmp(s->g, b->global_crops, gsize(b) * sizeof(float)) &&
           !memcmp(s->l, b->local_crops, lsize(b) * sizeof(float)) &&
           !memcmp(s->masks, b->masks.masks, (size_t)b->masks.n_crops * b->masks.n_tokens) &&
           !memcmp(s->sample, b->sample, sizeof s->sample) && !memcmp(s->tile, b->tile, sizeof s->tile) &&
           s->n_masked == b->masks.n_masked_patches;
}

static void unsnap(Snap *s) {
    free(s->g);
    free(s->l);
    free(s->masks);
}

#define NB 6

TEST(batches_identical_for_0_1_4_threads) {
    FakeSource fs = {0};
    char err[DINO_ERRLEN];
    Snap ref[NB];
    int threads[3] = {0, 1, 4};
    for (int t = 0; t < 3; t++) {
        LoaderConfig c = small_config(threads[t]);
        Loader *l = loader_create(&c, 50, fake_read, &fs, err);
        CHECK(l, "loader_create: %s", err);
        for (int i = 0; i < NB; i++) {
            const Batch *b = loader_next(l, err);
            CHECK(b, "loader_next: %s", err);
            CHECK(b->index == i, "batch index %lld, expected %d", (long long)b->index, i);
            if (t == 0) snap(b, &ref[i]);
            else CHECK(same(b, &ref[i]), "batch %d differs with %d threads", i, threads[t]);
        }
        CHECK(loader_position(l) == NB, "position %lld", (long long)loader_position(l));
        loader_destroy(l);
    }
    // consecutive batches differ
    CHECK(memcmp(ref[0].g, ref[1].g, sizeof(float) * 2 * 4 * 3 * 32 * 32), "batches 0 and 1 are equal");
    for (int i = 0; i < NB; i++) unsnap(&ref[i]);
}

TEST(set_position_reproduces_batches) {
    FakeSource fs = {0};
    char err[DINO_ERRLEN];
    LoaderConfig c = small_config(3);
    Loader *a = loader_create(&c, 37, fake_read, &fs, err);
    CHECK(a, "%s", err);
    Snap ref[NB];
    for (int i = 0; i < NB; i++) snap(loader_next(a, err), &ref[i]);
    // a fresh loader resumed at 3 (as from a checkpoint), then the same loader rewound to 1
    Loader *b = loader_create(&c, 37, fake_read, &fs, err);
    loader_set_position(b, 3);
    CHECK(loader_position(b) == 3, "position after set");
    for (int i = 3; i < NB; i++) CHECK(same(loader_next(b, err), &ref[i]), "resumed batch %d differs", i);
    loader_set_position(a, 1);
    for (int i = 1; i < NB; i++) CHECK(same(loader_next(a, err), &ref[i]), "rewound batch %d differs", i);
    loader_destroy(a);
    loader_destroy(b);
    for (int i = 0; i < NB; i++) unsnap(&ref[i]);
}

TEST(order_is_a_permutation_per_epoch_and_ranks_partition_it) {
    int64_t sizes[] = {1, 2, 3, 7, 100, 1000, 4097};
    for (int k = 0; k < 7; k++) {
        int64_t n = sizes[k];
        char *seen = dino_calloc((size_t)n, 1);
        int same_pos = 0, differs_next_epoch = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t t = loader_tile_at(9, n, i);
            CHECK(t >= 0 && t < n, "tile %lld out of range", (long long)t);
            CHECK(!seen[t], "tile %lld twice in epoch 0 (n = %lld)", (long long)t, (long long)n);
            seen[t] = 1;
            same_pos += t == i;
            differs_next_epoch += loader_tile_at(9, n, i + n) != t;
        }
        if (n >= 100) {
            CHECK(same_pos < n / 10, "order looks unshuffled (%d fixed points of %lld)", same_pos, (long long)n);
            CHECK(differs_next_epoch > n / 2, "epoch 1 repeats epoch 0");
        }
        free(seen);
    }
    // 3 ranks: disjoint, together they cover positions 0 .. 3*B*nb - 1
    FakeSource fs = {0};
    char err[DINO_ERRLEN];
    const int world = 3, nb = 4, B = 4;
    int covered[3 * 4 * 4] = {0};
    for (int r = 0; r < world; r++) {
        LoaderConfig c = small_config(2);
        c.rank = r;
        c.world = world;
        Loader *l = loader_create(&c, 20, fake_read, &fs, err);
        CHECK(l, "%s", err);
        for (int i = 0; i < nb; i++) {
            const Batch *b = loader_next(l, err);
            for (int s = 0; s < B; s++) {
                int64_t g = b->sample[s];
                CHECK(g % world == r, "rank %d got sample %lld", r, (long long)g);
                CHECK(g >= 0 && g < world * nb * B, "sample %lld out of range", (long long)g);
                covered[g]++;
                CHECK(b->tile[s] == loader_tile_at(c.seed, 20, g), "tile of sample %lld", (long long)g);
            }
        }
        loader_destroy(l);
    }
    for (int g = 0; g < world * nb * B; g++) CHECK(covered[g] == 1, "sample %d covered %d times", g, covered[g]);
}

TEST(crop_major_layout_matches_direct_augmentation) {
    FakeSource fs = {0};
    char err[DINO_ERRLEN];
    LoaderConfig c = small_config(2);
    Loader *l = loader_create(&c, 50, fake_read, &fs, err);
    loader_next(l, err);
    const Batch *b = loader_next(l, err); // batch 1
    CHECK(b, "%s", err);
    AugmentScratch *s = augment_scratch_new(&c.aug);
    CropPlan plans[5];
    int G = 32, L = 16;
    float *out = dino_malloc(sizeof(float) * 3 * G * G);
    for (int slot = 0; slot < 4; slot++) {
        Image img;
        CHECK(fake_read(&fs, b->tile[slot], 0, &img, err) == 0, "read");
        augment_plan_sample(&c.aug, c.seed, b->sample[slot], img.w, img.h, plans);
        for (int k = 0; k < 5; k++) {
            int S = k < 2 ? G : L;
            augment_apply(&c.aug, &plans[k], &img, out, s);
            const float *in_batch = k < 2 ? b->global_crops + ((size_t)k * 4 + slot) * 3 * G * G
                                          : b->local_crops + ((size_t)(k - 2) * 4 + slot) * 3 * L * L;
            CHECK(!memcmp(out, in_batch, sizeof(float) * 3 * S * S), "crop %d of image %d misplaced", k, slot);
        }
        image_free(&img);
    }
    // masks: int(2B * 0.5) = 4 of the 8 global crops are masked
    int masked_rows = 0;
    for (int j = 0; j < 8; j++) {
        int cnt = 0;
        for (int t = 0; t < 16; t++) cnt += b->masks.masks[j * 16 + t];
        masked_rows += cnt > 0;
    }
    CHECK(b->masks.n_masked_images == 4 && masked_rows <= 4, "masked rows %d", masked_rows);
    free(out);
    augment_scratch_free(s);
    loader_destroy(l);
}

// Gram anchoring: the Gram teacher's crops only when asked; the student's crops do not change; with no
// distortions they are the global crops' geometry alone (equal to the global crops when nothing else
// applies), at gram_size when larger.
TEST(gram_teacher_crops) {
    FakeSource fs = {0};
    char err[DINO_ERRLEN];
    LoaderConfig c = small_config(2);
    Loader *l = loader_create(&c, 50, fake_read, &fs, err);
    const Batch *b = loader_next(l, err);
    CHECK(b && b->gram_crops == NULL && b->Gg == 0, "Gram crops without gram_size");
    Snap plain;
    snap(b, &plain);
    loader_destroy(l);

    c.aug.gram_size = 32; // the global size, colour distortions kept: the global crops themselves
    l = loader_create(&c, 50, fake_read, &fs, err);
    b = loader_next(l, err);
    CHECK(b && b->gram_crops && b->Gg == 32, "no Gram crops");
    CHECK(same(b, &plain), "Gram crops changed the student's batch");
    CHECK(!memcmp(b->gram_crops, b->global_crops, gsize(b) * sizeof(float)), "Gram crops != global crops");
    loader_destroy(l);

    c.aug.gram_no_distortions = 1; // now they differ (jitter p 0.8 on 8 crops)...
    l = loader_create(&c, 50, fake_read, &fs, err);
    b = loader_next(l, err);
    CHECK(memcmp(b->gram_crops, b->global_crops, gsize(b) * sizeof(float)), "distortions not removed");
    // ... and equal a direct crop of the same box and flip without colour ops, at 48 px too
    loader_destroy(l);
    c.aug.gram_size = 48;
    l = loader_create(&c, 50, fake_read, &fs, err);
    b = loader_next(l, err);
    CHECK(same(b, &plain), "48-px Gram crops changed the student's batch");
    AugmentConfig plain_aug = c.aug;
    plain_aug.jitter_p = plain_aug.gray_p = plain_aug.solarize_p = 0;
    plain_aug.blur_p[0] = plain_aug.blur_p[1] = plain_aug.blur_p[2] = 0;
    AugmentScratch *s = augment_scratch_new(&c.aug);
    CropPlan plans[5], gp;
    float *out = dino_malloc(sizeof(float) * 3 * 48 * 48);
    for (int slot = 0; slot < 4; slot++) {
        Image img;
        CHECK(fake_read(&fs, b->tile[slot], 0, &img, err) == 0, "read");
        augment_plan_sample(&c.aug, c.seed, b->sample[slot], img.w, img.h, plans);
        for (int k = 0; k < 2; k++) {
            gp = plans[k];
            gp.out_size = 48;
            gp.jitter = gp.gray = gp.blur = gp.solarize = 0;
            augment_apply(&plain_aug, &gp, &img, out, s);
            CHECK(!memcmp(out, b->gram_crops + ((size_t)k * 4 + slot) * 3 * 48 * 48, sizeof(float) * 3 * 48 * 48),
                  "Gram crop %d of image %d", k, slot);
        }
        image_free(&img);
    }
    free(out);
    augment_scratch_free(s);
    unsnap(&plain);
    loader_destroy(l);
}

TEST(corrupt_tiles_are_skipped_counted_and_limited) {
    FakeSource fs = {5}; // 20 % of tiles are corrupt
    char err[DINO_ERRLEN];
    LoaderConfig c = small_config(2);
    c.max_corrupt_fraction = 0.5;
    c.corrupt_min_reads = 10;
    Loader *l = loader_create(&c, 40, fake_read, &fs, err);
    int64_t expect_corrupt = 0, expect_reads = 0;
    for (int i = 0; i < 10; i++) {
        const Batch *b = loader_next(l, err);
        CHECK(b, "loader_next: %s", err);
        for (int s = 0; s < 4; s++) {
            CHECK(b->tile[s] % 5 != 0, "a corrupt tile was used");
            // the replacement is the first readable tile at g, g + 1, ...
            int64_t g = b->sample[s], a = 0;
            while (loader_tile_at(c.seed, 40, g + a) % 5 == 0) a++;
            CHECK(b->tile[s] == loader_tile_at(c.seed, 40, g + a), "wrong replacement for sample %lld", (long long)g);
            expect_corrupt += a;
            expect_reads += a + 1;
        }
    }
    LoaderStats st = loader_stats(l);
    CHECK(st.batches == 10 && st.corrupt == expect_corrupt && st.reads == expect_reads,
          "stats %lld batches, %lld/%lld corrupt, expected %lld/%lld", (long long)st.batches, (long long)st.corrupt,
          (long long)st.reads, (long long)expect_corrupt, (long long)expect_reads);
    CHECK(st.corrupt > 0, "the test set has no corrupt tile in its first batches");
    loader_destroy(l);

    // a tighter limit ends the run with a clear message, at the same batch whatever the threads
    int failed_at[2] = {-1, -1};
    for (int t = 0; t < 2; t++) {
        c.n_threads = t ? 3 : 0;
        c.max_corrupt_fraction = 0.1;
        l = loader_create(&c, 40, fake_read, &fs, err);
        for (int i = 0; i < 20; i++)
            if (!loader_next(l, err)) {
                failed_at[t] = i;
                break;
            }
        CHECK(failed_at[t] >= 0, "limit 0.1 with 20%% corrupt tiles never tripped");
        CHECK(strstr(err, "max_corrupt_fraction") && strstr(err, "corrupt"), "unclear message: %s", err);
        loader_destroy(l);
    }
    CHECK(failed_at[0] == failed_at[1], "limit tripped at batch %d vs %d", failed_at[0], failed_at[1]);

    // nothing readable: a clear error, not a hang
    FakeSource all_bad = {1};
    c.n_threads = 2;
    c.max_corrupt_fraction = 1.0;
    l = loader_create(&c, 10, fake_read, &all_bad, err);
    CHECK(!loader_next(l, err), "an unreadable dataset must fail");
    CHECK(strstr(err, "could not be read"), "message: %s", err);
    loader_destroy(l);
}

TEST(bad_config_is_rejected) {
    FakeSource fs = {0};
    char err[DINO_ERRLEN];
    LoaderConfig c = small_config(1);
    c.patch_size = 7;
    CHECK(!loader_create(&c, 10, fake_read, &fs, err) && strstr(err, "patch"), "patch 7 on 32 px: %s", err);
    c = small_config(1);
    CHECK(!loader_create(&c, 0, fake_read, &fs, err) && strstr(err, "empty"), "empty source: %s", err);
    c.aug.blur_p[1] = 1.5;
    CHECK(!loader_create(&c, 10, fake_read, &fs, err) && strstr(err, "probability"), "bad prob: %s", err);
}

// A 256 px smooth tile; the scaled read box-averages scale x scale blocks (like a DCT-domain decode).
static void smooth_pixel(int64_t index, int x, int y, uint8_t *p) {
    p[0] = (uint8_t)(128 + 100 * sin(x / 17.0 + index));
    p[1] = (uint8_t)(128 + 90 * cos(y / 23.0 - x / 41.0));
    p[2] = (uint8_t)((x + y + index * 9) / 2 % 256);
}
static int big_read(void *ctx, int64_t index, uint64_t seed, Image *out, char *err) {
    image_alloc(out, 256, 256);
    for (int y = 0; y < 256; y++)
        for (int x = 0; x < 256; x++) smooth_pixel(index, x, y, out->px + (y * 256 + x) * 3);
    return 0;
}
static int big_size(void *ctx, int64_t index, uint64_t seed, int *w, int *h, char *err) {
    *w = *h = 256;
    return 0;
}
static int big_read_scaled(void *ctx, int64_t index, uint64_t seed, int scale, Image *out, char *err) {
    int n = 256 / scale;
    image_alloc(out, n, n);
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++)
            for (int c = 0; c < 3; c++) {
                int sum = 0;
                for (int dy = 0; dy < scale; dy++)
                    for (int dx = 0; dx < scale; dx++) {
                        uint8_t p[3];
                        smooth_pixel(index, x * scale + dx, y * scale + dy, p);
                        sum += p[c];
                    }
                out->px[(y * n + x) * 3 + c] = (uint8_t)((sum + scale * scale / 2) / (scale * scale));
            }
    return 0;
}

TEST(scaled_decode_is_deterministic_and_close_to_full_resolution) {
    char err[DINO_ERRLEN];
    LoaderConfig c = small_config(0);
    c.aug.jitter_p = 0; // compare the geometry: no colour op amplifies the resampling differences
    c.aug.blur_p[0] = c.aug.blur_p[1] = c.aug.blur_p[2] = 0;
    c.aug.solarize_p = 0;
    Loader *full = loader_create(&c, 30, big_read, NULL, err);
    Loader *sc0 = loader_create_scaled(&c, 30, big_read, big_size, big_read_scaled, 8, NULL, err);
    CHECK(full && sc0, "%s", err);
    c.n_threads = 3;
    Loader *sc3 = loader_create_scaled(&c, 30, big_read, big_size, big_read_scaled, 8, NULL, err);
    double diff = 0;
    size_t count = 0;
    for (int i = 0; i < 4; i++) {
        const Batch *a = loader_next(full, err), *b = loader_next(sc0, err);
        Snap sb;
        snap(b, &sb);
        const Batch *b3 = loader_next(sc3, err);
        CHECK(same(b3, &sb), "scaled batch %d differs between 0 and 3 threads", i);
        for (size_t j = 0; j < gsize(a); j++) diff += fabs(a->global_crops[j] - b->global_crops[j]);
        for (size_t j = 0; j < lsize(a); j++) diff += fabs(a->local_crops[j] - b->local_crops[j]);
        count += gsize(a) + lsize(a);
        unsnap(&sb);
    }
    LoaderStats st = loader_stats(sc0);
    CHECK(st.scaled > 0, "no image was decoded at a reduced scale");
    CHECK(loader_stats(full).scaled == 0, "the plain loader must not scale");
    // one 8-bit level ~ 0.017 after normalization: the reduced decode stays within ~2 levels on average
    printf("  scaled images %lld of %lld, mean |diff| vs full resolution %.4f\n", (long long)st.scaled,
           (long long)(st.batches * 4), diff / count);
    CHECK(diff / count < 0.035, "scaled crops differ from full resolution by %.4f on average", diff / count);
    loader_destroy(full);
    loader_destroy(sc0);
    loader_destroy(sc3);
    // the decode scale keeps every crop at least its output size
    CropPlan p[2] = {{.box = {0, 0, 100, 130}, .out_size = 24}, {.box = {0, 0, 60, 50}, .out_size = 12}};
    CHECK(augment_decode_scale(p, 2, 8) == 4, "scale %d", augment_decode_scale(p, 2, 8));
    CHECK(augment_decode_scale(p, 2, 2) == 2, "max scale not respected");
    p[1].out_size = 40;
    CHECK(augment_decode_scale(p, 2, 8) == 1, "a crop smaller than 2x its output forbids scaling");
}

// High-resolution phase: batch b is made at the size pair drawn from (seed, b) alone, so every rank makes
// it at the same sides, and a loader set to a position makes the same batches; the crops and the iBOT
// masks have the drawn pair's sides.
TEST(size_pairs_drawn_per_batch_alike_on_every_rank) {
    FakeSource fs = {0};
    char err[DINO_ERRLEN];
    const int NP = 10, gs[2] = {32, 48}, ls[2] = {16, 24};
    Snap ref[10];
    int seen[2] = {0, 0};
    for (int rank = 0; rank < 2; rank++) {
        LoaderConfig c = small_config(2);
        c.rank = rank, c.world = 2;
        c.n_pairs = 2;
        c.pair_global[0] = 32, c.pair_local[0] = 16, c.pair_ratio[0] = 0.5;
        c.pair_global[1] = 48, c.pair_local[1] = 24, c.pair_ratio[1] = 0.5;
        Loader *l = loader_create(&c, 50, fake_read, &fs, err);
        CHECK(l, "%s", err);
        for (int i = 0; i < NP; i++) {
            const Batch *b = loader_next(l, err);
            CHECK(b, "%s", err);
            int k = loader_pair_at(c.seed, i, 2, c.pair_ratio);
            CHECK(b->pair == k && b->G == gs[k] && b->L == ls[k], "rank %d batch %d: pair %d %d/%d, drawn %d", rank, i,
                  b->pair, b->G, b->L, k);
            CHECK(b->masks.n_tokens == (gs[k] / 8) * (gs[k] / 8), "masks of %d tokens at %d px", b->masks.n_tokens, gs[k]);
            if (rank == 0) seen[k]++, snap(b, &ref[i]);
            if (rank == 1 && i == 0) { // the first global crop of image 0 is the direct augmentation at the pair's size
                AugmentConfig a = c.aug;
                a.global_size = gs[k], a.local_size = ls[k];
                Image img;
                CropPlan plans[5];
                CHECK(fake_read(&fs, b->tile[0], 0, &img, err) == 0, "read");
                augment_plan_sample(&a, c.seed, b->sample[0], img.w, img.h, plans);
                AugmentScratch *s = augment_scratch_new(&a);
                float *out = dino_malloc(sizeof(float) * 3 * gs[k] * gs[k]);
                augment_apply(&a, &plans[0], &img, out, s);
                CHECK(!memcmp(out, b->global_crops, sizeof(float) * 3 * gs[k] * gs[k]), "global crop not at %d px", gs[k]);
                free(out);
                augment_scratch_free(s);
                image_free(&img);
            }
        }
        if (rank == 0) { // resumed at batch 4: the same batches, sizes included
            loader_set_position(l, 4);
            for (int i = 4; i < NP; i++) CHECK(same(loader_next(l, err), &ref[i]), "resumed batch %d differs", i);
        }
        loader_destroy(l);
    }
    CHECK(seen[0] > 0 && seen[1] > 0, "pairs drawn %d and %d times", seen[0], seen[1]);
    for (int i = 0; i < NP; i++) unsnap(&ref[i]);
}

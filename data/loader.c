// Threaded batch loader. Work items are (batch, slot) pairs taken in order from a shared counter;
// a ring of `prefetch` batches bounds how far ahead the workers run. The worker that finishes the
// last image of a batch also makes its masks. Nothing a worker computes depends on which worker it
// is: every draw is keyed by the sample or batch index.
#include "data/loader.h"

#include <pthread.h>
#include <string.h>

#include "common/check.h"

#define PERM_STREAM 0x5045524dULL
#define READ_STREAM 0x52454144ULL
#define PAIR_STREAM 0x50414952ULL
#define MAX_SKIP 64 // consecutive unreadable tiles before a batch fails

void loader_config_default(LoaderConfig *c) {
    memset(c, 0, sizeof *c);
    c->batch_size = 32;
    c->rank = 0;
    c->world = 1;
    c->seed = 0;
    c->n_threads = 4;
    c->prefetch = 3;
    c->patch_size = 16;
    c->mask_probability = 0.5;
    c->mask_ratio[0] = 0.1;
    c->mask_ratio[1] = 0.5;
    c->max_corrupt_fraction = 0.01;
    c->corrupt_min_reads = 1000;
    augment_config_default(&c->aug);
}

// ---- the sample order -------------------------------------------------------------------------------

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// A balanced Feistel network on 2*half bits, cycle-walked into [0, n): a keyed permutation in O(1)
// memory (datasets of 10^8 tiles need no permutation table) with random access by position.
static int64_t permute(uint64_t seed, uint64_t epoch, int64_t n, int64_t x) {
    if (n <= 1) return 0;
    int bits = 0;
    while (((int64_t)1 << bits) < n) bits++;
    int half = (bits + 1) / 2;
    uint64_t mask = ((uint64_t)1 << half) - 1;
    uint64_t keys[6];
    for (int i = 0; i < 6; i++) {
        Rng r = rng_make(seed, PERM_STREAM, epoch, (uint64_t)i);
        keys[i] = rng_u64(&r);
    }
    uint64_t v = (uint64_t)x;
    do {
        uint64_t L = v >> half, R = v & mask;
        for (int i = 0; i < 6; i++) {
            uint64_t t = L ^ (mix64(R ^ keys[i]) & mask);
            L = R;
            R = t;
        }
        v = (L << half) | R;
    } while (v >= (uint64_t)n);
    return (int64_t)v;
}

int loader_pair_at(uint64_t seed, int64_t batch_index, int n_pairs, const double *ratios) {
    if (n_pairs <= 1) return 0;
    double total = 0;
    for (int k = 0; k < n_pairs; k++) total += ratios[k];
    Rng r = rng_make(seed, PAIR_STREAM, (uint64_t)batch_index, 0);
    double u = rng_uniform(&r) * total, acc = 0;
    for (int k = 0; k < n_pairs - 1; k++) {
        acc += ratios[k];
        if (u < acc) return k;
    }
    return n_pairs - 1;
}

int64_t loader_tile_at(uint64_t seed, int64_t n, int64_t g) {
    return permute(seed, (uint64_t)(g / n), n, g % n);
}

// ---- state ------------------------------------------------------------------------------------------

typedef struct {
    Batch b;
    int done;            // images finished
    int ready;           // masks made, deliverable
    char err[DINO_ERRLEN]; // first read error seen in this batch
    int failed;          // a sample found no readable tile within MAX_SKIP positions
} Slot;

typedef struct {
    AugmentScratch *scratch;
    CropPlan *plans;
} WorkerRes;

struct Loader {
    LoaderConfig cfg;
    int64_t n_tiles;
    LoaderReadFn read;
    LoaderSizeFn size;               // optional scaled decoding
    LoaderReadScaledFn read_scaled;
    int max_decode_scale;
    void *ctx;
    MaskGenerator maskgen[LOADER_MAX_PAIRS]; // one per size pair (the iBOT grid follows the global size)
    int R;                // ring size
    Slot *slots;
    WorkerRes *res;       // per worker (one extra for the caller's thread)
    pthread_t *threads;
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t cond_space, cond_ready;
    int64_t base;         // next batch to deliver (a delivered batch stays held until the next call)
    int held;             // the batch `base - 1` was handed out and is still held
    int64_t next_item;    // next (batch * B + slot) to build
    int stop;
    LoaderStats stats;
};

// The augmentation of size pair k: the config's with that pair's sides.
static AugmentConfig pair_aug(const LoaderConfig *c, int k) {
    AugmentConfig a = c->aug;
    a.global_size = c->pair_global[k];
    a.local_size = c->pair_local[k];
    return a;
}

static void slot_reset(const Loader *l, Slot *s, int64_t index) {
    const LoaderConfig *c = &l->cfg;
    s->b.index = index;
    s->b.pair = loader_pair_at(c->seed, index, c->n_pairs, c->pair_ratio);
    s->b.G = c->pair_global[s->b.pair];
    s->b.L = c->pair_local[s->b.pair];
    s->b.reads = s->b.corrupt = s->b.scaled = 0;
    s->done = s->ready = s->failed = 0;
    s->err[0] = 0;
}

// Reads, augments and stores image `slot_i` of batch `s`.
static void build_image(Loader *l, Slot *s, int slot_i, WorkerRes *w) {
    const LoaderConfig *c = &l->cfg;
    Batch *b = &s->b;
    const AugmentConfig aug = pair_aug(c, b->pair);
    int64_t g = (b->index * c->batch_size + slot_i) * c->world + c->rank;
    Image img = {0};
    char err[DINO_ERRLEN];
    int64_t reads = 0, corrupt = 0, tile = -1;
    int scale = 1;
    for (int a = 0; a < MAX_SKIP; a++) {
        int64_t t = loader_tile_at(c->seed, l->n_tiles, g + a);
        Rng rr = rng_make(c->seed, READ_STREAM, (uint64_t)(g + a), 0);
        uint64_t read_seed = rng_u64(&rr);
        reads++;
        err[0] = 0;
        int rc, fw = 0, fh = 0;
        scale = 1;
        if (l->size) { // plan on the header's size, then decode as small as the crops allow
            rc = l->size(l->ctx, t, read_seed, &fw, &fh, err);
            if (rc == 0 && fw > 0 && fh > 0) {
                augment_plan_sample(&aug, c->seed, g, fw, fh, w->plans);
                int n_plans = 2 + aug.n_local;
                if (aug.gram_size) // the Gram crops may be larger than the global ones
                    for (int k = 0; k < 2; k++) augment_plan_gram(&aug, &w->plans[k], &w->plans[n_plans++]);
                scale = augment_decode_scale(w->plans, n_plans, l->max_decode_scale);
                rc = scale > 1 ? l->read_scaled(l->ctx, t, read_seed, scale, &img, err)
                               : l->read(l->ctx, t, read_seed, &img, err);
                int want_w = (fw + scale - 1) / scale, want_h = (fh + scale - 1) / scale;
                if (rc == 0 && scale > 1 && (img.w != want_w || img.h != want_h)) {
                    snprintf(err, DINO_ERRLEN, "scaled decode gave %dx%d for a %dx%d tile at 1/%d", img.w, img.h, fw,
                             fh, scale);
                    rc = -1;
                }
                if (rc == 0 && scale == 1 && (img.w != fw || img.h != fh)) {
                    snprintf(err, DINO_ERRLEN, "decode gave %dx%d, header said %dx%d", img.w, img.h, fw, fh);
                    rc = -1;
                }
            } else if (rc == 0) {
                rc = -1;
            }
        } else {
            rc = l->read(l->ctx, t, read_seed, &img, err);
        }
        if (rc == 0 && img.px && img.w > 0 && img.h > 0) {
            tile = t;
            break;
        }
        if (img.px) image_free(&img);
        corrupt++;
        pthread_mutex_lock(&l->mu);
        if (!s->err[0])
            snprintf(s->err, sizeof s->err, "tile %lld: %.400s", (long long)t, err[0] ? err : "read failed");
        pthread_mutex_unlock(&l->mu);
    }
    if (tile >= 0) {
        int B = c->batch_size, G = b->G, L = b->L;
        if (!l->size) augment_plan_sample(&aug, c->seed, g, img.w, img.h, w->plans);
        for (int k = 0; k < 2; k++)
            augment_apply_scaled(&aug, &w->plans[k], &img, scale,
                                 b->global_crops + ((size_t)k * B + slot_i) * 3 * G * G, w->scratch);
        for (int k = 0; k < aug.n_local; k++)
            augment_apply_scaled(&aug, &w->plans[2 + k], &img, scale,
                                 b->local_crops + ((size_t)k * B + slot_i) * 3 * L * L, w->scratch);
        const int Gg = aug.gram_size;
        for (int k = 0; Gg && k < 2; k++) {
            CropPlan gp;
            augment_plan_gram(&aug, &w->plans[k], &gp);
            augment_apply_scaled(&aug, &gp, &img, scale, b->gram_crops + ((size_t)k * B + slot_i) * 3 * Gg * Gg,
                                 w->scratch);
        }
        image_free(&img);
    }
    b->sample[slot_i] = g;
    b->tile[slot_i] = tile;
    pthread_mutex_lock(&l->mu);
    b->reads += reads;
    b->corrupt += corrupt;
    b->scaled += tile >= 0 && scale > 1;
    if (tile < 0) s->failed = 1;
    s->done++;
    int last = s->done == c->batch_size;
    pthread_mutex_unlock(&l->mu);
    if (last) {
        b->masks.n_tokens = l->maskgen[b->pair].n_tokens; // the buffers hold the largest pair's
        mask_batch_make(&l->maskgen[b->pair], c->mask_probability, c->mask_ratio[0], c->mask_ratio[1], c->seed, b->index,
                        &b->masks);
        pthread_mutex_lock(&l->mu);
        s->ready = 1;
        pthread_cond_broadcast(&l->cond_ready);
        pthread_mutex_unlock(&l->mu);
    }
}

static void *worker_main(void *arg) {
    Loader *l = ((void **)arg)[0];
    WorkerRes *w = ((void **)arg)[1];
    free(arg);
    int B = l->cfg.batch_size;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        // the held batch's slot is not free until the consumer releases it
        while (!l->stop && l->next_item / B >= l->base - l->held + l->R) pthread_cond_wait(&l->cond_space, &l->mu);
        if (l->stop) break;
        int64_t item = l->next_item++;
        Slot *s = &l->slots[(item / B) % l->R];
        pthread_mutex_unlock(&l->mu);
        build_image(l, s, (int)(item % B), w);
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static void start_workers(Loader *l) {
    l->stop = 0;
    for (int i = 0; i < l->cfg.n_threads; i++) {
        void **arg = dino_malloc(2 * sizeof(void *));
        arg[0] = l;
        arg[1] = &l->res[i];
        int rc = pthread_create(&l->threads[i], NULL, worker_main, arg);
        DINO_ASSERT(rc == 0, "loader: pthread_create failed (%s)", strerror(rc));
    }
    l->n_started = l->cfg.n_threads;
}

static void stop_workers(Loader *l) {
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->cond_space);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->n_started; i++) pthread_join(l->threads[i], NULL);
    l->n_started = 0;
}

static void reset_ring(Loader *l, int64_t position) {
    l->base = position;
    l->held = 0;
    l->next_item = position * l->cfg.batch_size;
    for (int i = 0; i < l->R; i++) {
        int64_t b = position + i;
        slot_reset(l, &l->slots[b % l->R], b);
    }
}

Loader *loader_create(const LoaderConfig *c, int64_t n_tiles, LoaderReadFn read, void *ctx, char *err) {
    return loader_create_scaled(c, n_tiles, read, NULL, NULL, 1, ctx, err);
}

Loader *loader_create_scaled(const LoaderConfig *c, int64_t n_tiles, LoaderReadFn read, LoaderSizeFn size,
                             LoaderReadScaledFn read_scaled, int max_decode_scale, void *ctx, char *err) {
    LoaderConfig cfg = *c;
    if (cfg.n_pairs <= 1) { // one pair: aug's sizes
        cfg.n_pairs = 1;
        cfg.pair_global[0] = cfg.aug.global_size;
        cfg.pair_local[0] = cfg.aug.local_size;
        cfg.pair_ratio[0] = 1.0;
    }
    if (cfg.n_pairs > LOADER_MAX_PAIRS) {
        dino_seterr(err, "loader: %d size pairs, at most %d", cfg.n_pairs, LOADER_MAX_PAIRS);
        return NULL;
    }
    int maxG = 0, maxL = 0;
    for (int k = 0; k < cfg.n_pairs; k++) {
        AugmentConfig a = pair_aug(&cfg, k);
        if (augment_config_check(&a, err)) return NULL;
        if (!(cfg.pair_ratio[k] > 0)) {
            dino_seterr(err, "loader: size pair %d has ratio %g (must be > 0)", k, cfg.pair_ratio[k]);
            return NULL;
        }
        if (cfg.patch_size > 0 && a.global_size % cfg.patch_size) {
            dino_seterr(err, "loader: global crop size %d is not a multiple of the patch size %d", a.global_size,
                        cfg.patch_size);
            return NULL;
        }
        maxG = a.global_size > maxG ? a.global_size : maxG;
        maxL = a.local_size > maxL ? a.local_size : maxL;
    }
    c = &cfg;
    if (!read || !size != !read_scaled ||
        (max_decode_scale != 1 && max_decode_scale != 2 && max_decode_scale != 4 && max_decode_scale != 8)) {
        dino_seterr(err, "loader: need a read callback, size and read_scaled together, "
                         "max_decode_scale 1/2/4/8 (got %d)", max_decode_scale);
        return NULL;
    }
    if (n_tiles <= 0) {
        dino_seterr(err, "loader: the tile source is empty");
        return NULL;
    }
    if (c->batch_size <= 0 || c->world <= 0 || c->rank < 0 || c->rank >= c->world || c->n_threads < 0 ||
        c->prefetch < 1) {
        dino_seterr(err, "loader: bad batch_size %d / rank %d of %d / threads %d / prefetch %d", c->batch_size,
                    c->rank, c->world, c->n_threads, c->prefetch);
        return NULL;
    }
    if (c->patch_size <= 0 || c->aug.global_size % c->patch_size) {
        dino_seterr(err, "loader: global crop size %d is not a multiple of the patch size %d", c->aug.global_size,
                    c->patch_size);
        return NULL;
    }
    if (!(c->mask_probability >= 0 && c->mask_probability <= 1 && c->mask_ratio[0] >= 0 &&
          c->mask_ratio[0] <= c->mask_ratio[1] && c->mask_ratio[1] <= 1)) {
        dino_seterr(err, "loader: mask probability %g / ratio [%g, %g] out of range", c->mask_probability,
                    c->mask_ratio[0], c->mask_ratio[1]);
        return NULL;
    }
    if (!(c->max_corrupt_fraction >= 0 && c->max_corrupt_fraction <= 1)) {
        dino_seterr(err, "loader: max_corrupt_fraction %g not in [0, 1]", c->max_corrupt_fraction);
        return NULL;
    }
    Loader *l = dino_calloc(1, sizeof *l);
    l->cfg = *c;
    l->n_tiles = n_tiles;
    l->read = read;
    l->size = size;
    l->read_scaled = read_scaled;
    l->max_decode_scale = max_decode_scale;
    l->ctx = ctx;
    for (int k = 0; k < c->n_pairs; k++) mask_generator_init(&l->maskgen[k], c->pair_global[k], c->patch_size);
    l->R = c->prefetch;
    l->slots = dino_calloc((size_t)l->R, sizeof(Slot));
    // every slot can hold a batch of the largest sides
    int B = c->batch_size, G = maxG, Ls = maxL;
    const int max_tokens = (maxG / c->patch_size) * (maxG / c->patch_size);
    for (int i = 0; i < l->R; i++) {
        Batch *b = &l->slots[i].b;
        b->B = B;
        b->n_local = c->aug.n_local;
        const size_t ng = sizeof(float) * 2 * (size_t)B * 3 * G * G;
        const size_t nl = sizeof(float) * ((size_t)c->aug.n_local * B * 3 * Ls * Ls + 1);
        b->global_crops = c->crops_alloc ? c->crops_alloc(c->crops_ctx, ng) : dino_malloc(ng);
        b->local_crops = c->crops_alloc ? c->crops_alloc(c->crops_ctx, nl) : dino_malloc(nl);
        b->Gg = c->aug.gram_size;
        if (b->Gg) {
            const size_t ngg = sizeof(float) * 2 * (size_t)B * 3 * b->Gg * b->Gg;
            b->gram_crops = c->crops_alloc ? c->crops_alloc(c->crops_ctx, ngg) : dino_malloc(ngg);
        }
        b->sample = dino_malloc(sizeof(int64_t) * (size_t)B);
        b->tile = dino_malloc(sizeof(int64_t) * (size_t)B);
        mask_batch_alloc(&b->masks, 2 * B, max_tokens);
    }
    l->res = dino_calloc((size_t)c->n_threads + 1, sizeof(WorkerRes));
    AugmentConfig largest = c->aug;
    largest.global_size = maxG, largest.local_size = maxL;
    for (int i = 0; i <= c->n_threads; i++) {
        l->res[i].scratch = augment_scratch_new(&largest);
        l->res[i].plans = dino_malloc(sizeof(CropPlan) * (size_t)(4 + c->aug.n_local)); // + 2 Gram crops
    }
    l->threads = dino_calloc((size_t)c->n_threads + 1, sizeof(pthread_t));
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cond_space, NULL);
    pthread_cond_init(&l->cond_ready, NULL);
    reset_ring(l, 0);
    start_workers(l);
    return l;
}

const Batch *loader_next(Loader *l, char *err) {
    int B = l->cfg.batch_size;
    pthread_mutex_lock(&l->mu);
    if (l->held) { // release the batch handed out last time: its slot takes batch base - 1 + R
        int64_t freed = l->base - 1;
        slot_reset(l, &l->slots[freed % l->R], freed + l->R);
        l->held = 0;
        pthread_cond_broadcast(&l->cond_space);
    }
    Slot *s = &l->slots[l->base % l->R];
    if (l->cfg.n_threads == 0) { // synchronous mode: build it here
        pthread_mutex_unlock(&l->mu);
        for (int i = 0; i < B; i++) build_image(l, s, i, &l->res[0]);
        pthread_mutex_lock(&l->mu);
        l->next_item = (l->base + 1) * B;
    }
    while (!s->ready) pthread_cond_wait(&l->cond_ready, &l->mu);
    l->base++;
    l->held = 1;
    pthread_mutex_unlock(&l->mu);

    LoaderStats *st = &l->stats;
    st->batches++;
    st->reads += s->b.reads;
    st->corrupt += s->b.corrupt;
    st->scaled += s->b.scaled;
    if (s->failed) {
        dino_seterr(err, "loader: batch %lld: %d consecutive tiles of the sample order could not be read (%.400s)",
                    (long long)s->b.index, MAX_SKIP, s->err);
        return NULL;
    }
    if (st->reads >= l->cfg.corrupt_min_reads &&
        (double)st->corrupt > l->cfg.max_corrupt_fraction * (double)st->reads) {
        dino_seterr(err,
                    "loader: %lld of %lld tile reads failed (%.2f%%), above the limit max_corrupt_fraction = %g "
                    "(latest: %.300s)",
                    (long long)st->corrupt, (long long)st->reads, 100.0 * st->corrupt / st->reads,
                    l->cfg.max_corrupt_fraction, s->err[0] ? s->err : "none in this batch");
        return NULL;
    }
    return &s->b;
}

int64_t loader_position(const Loader *l) { return l->base; }

void loader_set_position(Loader *l, int64_t next_batch) {
    DINO_ASSERT(next_batch >= 0, "loader_set_position: negative position %lld", (long long)next_batch);
    stop_workers(l);
    reset_ring(l, next_batch);
    start_workers(l);
}

LoaderStats loader_stats(const Loader *l) { return l->stats; }

void loader_destroy(Loader *l) {
    if (!l) return;
    stop_workers(l);
    for (int i = 0; i < l->R; i++) {
        Batch *b = &l->slots[i].b;
        if (l->cfg.crops_free) {
            l->cfg.crops_free(l->cfg.crops_ctx, b->global_crops);
            l->cfg.crops_free(l->cfg.crops_ctx, b->local_crops);
            if (b->gram_crops) l->cfg.crops_free(l->cfg.crops_ctx, b->gram_crops);
        } else {
            free(b->global_crops);
            free(b->local_crops);
            free(b->gram_crops);
        }
        free(b->sample);
        free(b->tile);
        mask_batch_free(&b->masks);
    }
    for (int i = 0; i <= l->cfg.n_threads; i++) {
        augment_scratch_free(l->res[i].scratch);
        free(l->res[i].plans);
    }
    free(l->slots);
    free(l->res);
    free(l->threads);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cond_space);
    pthread_cond_destroy(&l->cond_ready);
    free(l);
}
